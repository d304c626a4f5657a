//! The BERT-family sentence encoder format, shared by every device.
//!
//! Reads a Hugging Face-format directory (`config.json`, `model.safetensors`,
//! and the sentence-transformers files `1_Pooling/config.json`,
//! `modules.json`) and says what `SentenceTransformer.encode` computes: the
//! encoder's last hidden state, mean-pooled over the attention mask, then
//! L2-normalised when the model's modules include `Normalize`. The order of
//! operations is [`super::encoder::encode`]; the devices' primitives are in
//! [`super::cpu`] and [`super::cuda`].
//!
//! Inputs are `input_ids`, `attention_mask` and (optionally)
//! `token_type_ids`, I64 `[batch, seq]`. The output is `sentence_embedding`,
//! FP32 `[batch, hidden]`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::encoder::{EncoderShape, Norm, Projection};
use super::{NamedTensor, RunnerError, Tensor};

/// The `config.json` keys a BERT encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

/// A BERT model directory, read and checked: what every backend needs
/// before it loads the weights its own way.
#[derive(Debug, Clone)]
pub struct BertModel {
    pub config: BertConfig,
    pub pooling: Pooling,
    pub normalize: bool,
    /// `model.safetensors`.
    pub weights: PathBuf,
    /// What the weights take in memory as FP32.
    pub weight_bytes: u64,
    /// `"bert."` for checkpoints saved from `BertForX`, else empty.
    prefix: &'static str,
}

/// Where each weight lives in a Hugging Face BERT checkpoint (without the
/// `bert.` prefix and the `.weight`/`.bias` suffix).
pub mod names {
    use super::{Norm, Projection};

    pub const WORD: &str = "embeddings.word_embeddings";
    pub const POSITION: &str = "embeddings.position_embeddings";
    pub const TOKEN_TYPE: &str = "embeddings.token_type_embeddings";
    pub const EMBEDDING_NORM: &str = "embeddings.LayerNorm";

    pub fn projection(layer: usize, which: Projection) -> String {
        let part = match which {
            Projection::Query => "attention.self.query",
            Projection::Key => "attention.self.key",
            Projection::Value => "attention.self.value",
            Projection::AttentionOut => "attention.output.dense",
            Projection::Intermediate => "intermediate.dense",
            Projection::Output => "output.dense",
        };
        format!("encoder.layer.{layer}.{part}")
    }

    pub fn norm(layer: usize, which: Norm) -> String {
        let part = match which {
            Norm::Attention => "attention.output.LayerNorm",
            Norm::Output => "output.LayerNorm",
        };
        format!("encoder.layer.{layer}.{part}")
    }
}

impl BertModel {
    /// Reads and checks the configuration of the model in `dir`.
    pub fn read(dir: &Path) -> Result<BertModel> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        if config.hidden_act != "gelu" {
            bail!("hidden_act {:?} is not supported (only \"gelu\")", config.hidden_act);
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            bail!("hidden_size must be a multiple of num_attention_heads");
        }
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            bail!("{} is missing (only safetensors weights are supported)", weights.display());
        }
        // SAFETY: the file lives in the store, which nothing rewrites in place.
        let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::new(&weights)? };
        let prefix = if tensors.get(&format!("bert.{}.weight", names::WORD)).is_ok() { "bert." } else { "" };
        let elements: usize = tensors
            .tensors()
            .iter()
            .filter(|(name, _)| name.starts_with(prefix) && !name.ends_with("position_ids"))
            .map(|(_, view)| view.shape().iter().product::<usize>())
            .sum();
        let (pooling, normalize) = sentence_transformer_head(dir)?;
        Ok(BertModel { config, pooling, normalize, weights, weight_bytes: elements as u64 * 4, prefix })
    }

    /// The checkpoint's own name of a weight, e.g. `tensor(names::WORD, "weight")`.
    pub fn tensor(&self, name: &str, suffix: &str) -> String {
        format!("{}{name}.{suffix}", self.prefix)
    }

    /// The prefix of every weight (`"bert"` or empty), for candle's `VarBuilder::pp`.
    pub fn prefix(&self) -> &str {
        self.prefix.trim_end_matches('.')
    }

    pub fn shape(&self) -> EncoderShape {
        EncoderShape {
            layers: self.config.num_hidden_layers,
            heads: self.config.num_attention_heads,
            pooling: self.pooling,
            normalize: self.normalize,
        }
    }

    pub fn describe(&self, device: &str) -> String {
        format!(
            "BERT encoder on {device}: {} layers, hidden {}, {:?} pooling{}",
            self.config.num_hidden_layers,
            self.config.hidden_size,
            self.pooling,
            if self.normalize { ", normalized" } else { "" }
        )
    }

    /// Checks a padded batch against the model's vocabulary and positions.
    pub fn check(&self, batch: &Batch) -> Result<()> {
        if batch.seq > self.config.max_position_embeddings {
            bail!(
                "sequence of {} tokens exceeds the model's {} positions",
                batch.seq,
                self.config.max_position_embeddings
            );
        }
        if let Some(bad) = batch.ids.iter().find(|&&id| id < 0 || id as usize >= self.config.vocab_size) {
            bail!("input_ids holds {bad}, outside the vocabulary of {}", self.config.vocab_size);
        }
        if let Some(bad) = batch.types.iter().find(|&&t| t < 0 || t as usize >= self.config.type_vocab_size) {
            bail!("token_type_ids holds {bad}, outside 0..{}", self.config.type_vocab_size);
        }
        Ok(())
    }

    /// A backend's `compute`: reads the input tensors, checks them, runs
    /// `forward` on the batch and names its output.
    pub fn compute(
        &self,
        inputs: &[NamedTensor],
        forward: impl FnOnce(&Batch) -> Result<Vec<f32>>,
    ) -> Result<Vec<NamedTensor>, RunnerError> {
        let batch = Batch::from_inputs(inputs)?;
        let values = self
            .check(&batch)
            .and_then(|()| forward(&batch))
            .map_err(|e| RunnerError::Runtime(format!("{e:#}")))?;
        let out = Tensor::from_f32(vec![batch.batch, self.config.hidden_size], &values);
        Ok(vec![("sentence_embedding".to_string(), out)])
    }
}

/// A padded batch of token sequences, `[batch, seq]` row-major.
#[derive(Debug, Clone)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<i64>,
    /// 1 for tokens, 0 for padding.
    pub mask: Vec<i64>,
    pub types: Vec<i64>,
}

impl Batch {
    fn from_inputs(inputs: &[NamedTensor]) -> Result<Batch, RunnerError> {
        let find = |name: &str| inputs.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let ids =
            find("input_ids").ok_or_else(|| RunnerError::invalid("missing input tensor \"input_ids\""))?;
        let [batch, seq] = ids.dims[..] else {
            return Err(RunnerError::invalid(format!(
                "input_ids must be 2-D [batch, seq], got {:?}",
                ids.dims
            )));
        };
        let read = |name: &str, t: &Tensor| -> Result<Vec<i64>, RunnerError> {
            if t.dims != ids.dims {
                return Err(RunnerError::invalid(format!(
                    "{name} has dimensions {:?}, input_ids {:?}",
                    t.dims, ids.dims
                )));
            }
            t.to_i64().map_err(|e| RunnerError::invalid(format!("{name}: {e}")))
        };
        let id_values = read("input_ids", ids)?;
        let mask = match find("attention_mask") {
            Some(t) => read("attention_mask", t)?,
            None => vec![1; batch * seq],
        };
        let types = match find("token_type_ids") {
            Some(t) => read("token_type_ids", t)?,
            None => vec![0; batch * seq],
        };
        Ok(Batch { batch, seq, ids: id_values, mask, types })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Pooling and normalization from the sentence-transformers files; mean
/// pooling without normalization when they are absent.
fn sentence_transformer_head(dir: &Path) -> Result<(Pooling, bool)> {
    #[derive(Deserialize)]
    struct Module {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        path: String,
    }
    #[derive(Deserialize, Default)]
    struct PoolingConfig {
        #[serde(default)]
        pooling_mode_cls_token: bool,
        #[serde(default)]
        pooling_mode_mean_tokens: bool,
    }
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok((Pooling::Mean, false));
    }
    let modules: Vec<Module> = read_json(&modules_path)?;
    let normalize = modules.iter().any(|m| m.kind.ends_with("Normalize"));
    let pooling = match modules.iter().find(|m| m.kind.ends_with("Pooling")) {
        Some(m) => {
            let cfg_path = dir.join(&m.path).join("config.json");
            let cfg: PoolingConfig =
                if cfg_path.is_file() { read_json(&cfg_path)? } else { PoolingConfig::default() };
            if cfg.pooling_mode_cls_token && !cfg.pooling_mode_mean_tokens {
                Pooling::Cls
            } else {
                Pooling::Mean
            }
        }
        None => Pooling::Mean,
    };
    Ok((pooling, normalize))
}

/// Whether a directory looks like a BERT-family model the backends can load.
pub fn is_bert_dir(dir: &Path) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        model_type: String,
    }
    read_json::<Probe>(&dir.join("config.json"))
        .map(|p| matches!(p.model_type.as_str(), "bert" | ""))
        .unwrap_or(false)
}
