//! BERT-family sentence encoders on the CPU, with candle.
//!
//! Reads a Hugging Face-format directory (`config.json`, `model.safetensors`,
//! and the sentence-transformers files `1_Pooling/config.json`,
//! `modules.json`) and computes what `SentenceTransformer.encode` returns:
//! the encoder's last hidden state, mean-pooled over the attention mask, then
//! L2-normalised when the model's modules include `Normalize`.
//!
//! The order of operations is [`super::encoder::encode`], shared with other
//! devices; this module provides the weights and the CPU primitives.
//!
//! Inputs are `input_ids`, `attention_mask` and (optionally)
//! `token_type_ids`, I64 `[batch, seq]`. The output is `sentence_embedding`,
//! FP32 `[batch, hidden]`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Module, Tensor as CTensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::encoder::{EncoderOps, EncoderShape, Norm, Projection, encode};
use super::{Backend, NamedTensor, RunnerError, Tensor};

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

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A loaded encoder: one copy of the weights, shared by every call.
pub struct BertEncoder {
    config: BertConfig,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    pooling: Pooling,
    normalize: bool,
    device: Device,
}

impl BertEncoder {
    /// Loads the encoder from a model directory.
    pub fn load(dir: &Path) -> Result<BertEncoder> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        if config.hidden_act != "gelu" {
            bail!("hidden_act {:?} is not supported (only \"gelu\")", config.hidden_act);
        }
        if config.hidden_size % config.num_attention_heads != 0 {
            bail!("hidden_size must be a multiple of num_attention_heads");
        }
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            bail!("{} is missing (only safetensors weights are supported)", weights.display());
        }
        let device = Device::Cpu;
        // SAFETY: the file lives in the store, which nothing rewrites in place.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device)? };
        // Checkpoints saved from BertForX prefix every weight with `bert.`.
        let vb =
            if vb.contains_tensor("bert.embeddings.word_embeddings.weight") { vb.pp("bert") } else { vb };
        let h = config.hidden_size;
        let ln = |vb: VarBuilder| candle_nn::layer_norm(h, config.layer_norm_eps, vb);
        let emb = vb.pp("embeddings");
        let word = candle_nn::embedding(config.vocab_size, h, emb.pp("word_embeddings"))?;
        let position =
            candle_nn::embedding(config.max_position_embeddings, h, emb.pp("position_embeddings"))?;
        let token_type = candle_nn::embedding(config.type_vocab_size, h, emb.pp("token_type_embeddings"))?;
        let embedding_norm = ln(emb.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let att = l.pp("attention");
            layers.push(Layer {
                query: candle_nn::linear(h, h, att.pp("self.query"))?,
                key: candle_nn::linear(h, h, att.pp("self.key"))?,
                value: candle_nn::linear(h, h, att.pp("self.value"))?,
                attention_out: candle_nn::linear(h, h, att.pp("output.dense"))?,
                attention_norm: ln(att.pp("output.LayerNorm"))?,
                intermediate: candle_nn::linear(h, config.intermediate_size, l.pp("intermediate.dense"))?,
                output: candle_nn::linear(config.intermediate_size, h, l.pp("output.dense"))?,
                output_norm: ln(l.pp("output.LayerNorm"))?,
            });
        }
        let (pooling, normalize) = sentence_transformer_head(dir)?;
        Ok(BertEncoder {
            config,
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            pooling,
            normalize,
            device,
        })
    }

    /// The width of the sentence vectors.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Sentence embeddings for a padded batch: `ids`, `mask`, `types` are
    /// `[batch, seq]` row-major.
    pub fn embed(
        &self,
        batch: usize,
        seq: usize,
        ids: &[i64],
        mask: &[i64],
        types: &[i64],
    ) -> Result<Vec<f32>> {
        if seq > self.config.max_position_embeddings {
            bail!(
                "sequence of {seq} tokens exceeds the model's {} positions",
                self.config.max_position_embeddings
            );
        }
        if let Some(bad) = ids.iter().find(|&&id| id < 0 || id as usize >= self.config.vocab_size) {
            bail!("input_ids holds {bad}, outside the vocabulary of {}", self.config.vocab_size);
        }
        if let Some(bad) = types.iter().find(|&&t| t < 0 || t as usize >= self.config.type_vocab_size) {
            bail!("token_type_ids holds {bad}, outside 0..{}", self.config.type_vocab_size);
        }
        let shape = EncoderShape {
            layers: self.config.num_hidden_layers,
            heads: self.config.num_attention_heads,
            pooling: self.pooling,
            normalize: self.normalize,
        };
        encode(self, &shape, batch, seq, ids, mask, types)
    }
}

/// The CPU primitives, with candle. The mask carries its padding bias for
/// the attention scores.
impl EncoderOps for BertEncoder {
    type T = CTensor;
    type Mask = (CTensor, CTensor);

    fn mask(&self, batch: usize, seq: usize, mask: &[i64]) -> Result<Self::Mask> {
        let values: Vec<f32> = mask.iter().map(|&m| if m != 0 { 1.0 } else { 0.0 }).collect();
        let mask = CTensor::from_vec(values, (batch, seq), &self.device)?;
        // Padding positions get a large negative score before the softmax.
        let bias = ((mask.clone() - 1.0)? * 1e4)?.reshape((batch, 1, 1, seq))?;
        Ok((mask, bias))
    }

    fn embed(&self, batch: usize, seq: usize, ids: &[i64], types: &[i64]) -> Result<CTensor> {
        let dev = &self.device;
        let to_u32 = |v: &[i64]| v.iter().map(|&x| x as u32).collect::<Vec<u32>>();
        let ids = CTensor::from_vec(to_u32(ids), (batch, seq), dev)?;
        let types = CTensor::from_vec(to_u32(types), (batch, seq), dev)?;
        let positions = CTensor::arange(0u32, seq as u32, dev)?;
        Ok(self
            .word
            .forward(&ids)?
            .broadcast_add(&self.position.forward(&positions)?)?
            .add(&self.token_type.forward(&types)?)?)
    }

    fn embedding_norm(&self, x: &CTensor) -> Result<CTensor> {
        Ok(self.embedding_norm.forward(x)?)
    }

    fn project(&self, layer: usize, which: Projection, x: &CTensor) -> Result<CTensor> {
        let l = &self.layers[layer];
        let linear = match which {
            Projection::Query => &l.query,
            Projection::Key => &l.key,
            Projection::Value => &l.value,
            Projection::AttentionOut => &l.attention_out,
            Projection::Intermediate => &l.intermediate,
            Projection::Output => &l.output,
        };
        Ok(linear.forward(x)?)
    }

    fn norm(&self, layer: usize, which: Norm, x: &CTensor) -> Result<CTensor> {
        let l = &self.layers[layer];
        let norm = match which {
            Norm::Attention => &l.attention_norm,
            Norm::Output => &l.output_norm,
        };
        Ok(norm.forward(x)?)
    }

    fn add(&self, a: &CTensor, b: &CTensor) -> Result<CTensor> {
        Ok((a + b)?)
    }

    fn gelu(&self, x: &CTensor) -> Result<CTensor> {
        Ok(x.gelu_erf()?)
    }

    fn attention(
        &self,
        q: &CTensor,
        k: &CTensor,
        v: &CTensor,
        mask: &Self::Mask,
        heads: usize,
    ) -> Result<CTensor> {
        let (batch, seq, hidden) = q.dims3()?;
        let head_dim = hidden / heads;
        let split = |t: &CTensor| -> candle_core::Result<CTensor> {
            t.reshape((batch, seq, heads, head_dim))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (split(q)?, split(k)?, split(v)?);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask.1)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs.matmul(&v)?.transpose(1, 2)?.reshape((batch, seq, hidden))?)
    }

    fn mean_pool(&self, x: &CTensor, mask: &Self::Mask) -> Result<CTensor> {
        let m = mask.0.unsqueeze(2)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        Ok(summed.broadcast_div(&counts)?)
    }

    fn cls_pool(&self, x: &CTensor) -> Result<CTensor> {
        Ok(x.narrow(1, 0, 1)?.squeeze(1)?)
    }

    fn l2_normalize(&self, x: &CTensor) -> Result<CTensor> {
        let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(x.broadcast_div(&norm)?)
    }

    fn to_host(&self, x: &CTensor) -> Result<Vec<f32>> {
        Ok(x.flatten_all()?.to_vec1::<f32>()?)
    }
}

impl Backend for BertEncoder {
    fn describe(&self) -> String {
        format!(
            "BERT encoder on CPU (candle): {} layers, hidden {}, {:?} pooling{}",
            self.config.num_hidden_layers,
            self.config.hidden_size,
            self.pooling,
            if self.normalize { ", normalized" } else { "" }
        )
    }

    fn batchable(&self) -> bool {
        true
    }

    fn compute(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError> {
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
        let values = self
            .embed(batch, seq, &id_values, &mask, &types)
            .map_err(|e| RunnerError::Runtime(format!("{e:#}")))?;
        let out = Tensor::from_f32(vec![batch, self.hidden_size()], &values);
        Ok(vec![("sentence_embedding".to_string(), out)])
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

/// Whether a directory looks like a BERT-family model this backend can load.
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
