//! A model's own tokenizer (`tokenizer.json`), parsed once per host.

use std::path::Path;

use anyhow::{Result, anyhow};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::{NamedTensor, Tensor};

/// Tokenizes batches the way sentence-transformers does for this model:
/// truncation at the model's `max_seq_length` and padding to the longest
/// sequence of the batch (not to the fixed length some `tokenizer.json`
/// files carry).
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; the maximum length comes from
    /// `sentence_bert_config.json`, else `config.json`'s positions.
    pub fn load(dir: &Path) -> Result<TextTokenizer> {
        let mut inner = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("loading {}: {e}", dir.join("tokenizer.json").display()))?;
        let max_len = max_seq_length(dir)?;
        let pad_id = inner.get_padding().map(|p| p.pad_id).unwrap_or(0);
        let pad_token = inner.get_padding().map(|p| p.pad_token.clone()).unwrap_or_else(|| "[PAD]".into());
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token,
            ..PaddingParams::default()
        }));
        inner
            .with_truncation(Some(TruncationParams { max_length: max_len, ..TruncationParams::default() }))
            .map_err(|e| anyhow!("setting truncation: {e}"))?;
        Ok(TextTokenizer { inner, max_len })
    }

    /// The longest sequence (in tokens, special tokens included).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The model inputs for `texts`: `input_ids`, `attention_mask`,
    /// `token_type_ids`, each I64 `[texts, longest]`.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<NamedTensor>, String> {
        if texts.is_empty() {
            return Err("no texts to tokenize".into());
        }
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self.inner.encode_batch(inputs, true).map_err(|e| e.to_string())?;
        let rows = encodings.len();
        let cols = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols);
        let mut types = Vec::with_capacity(rows * cols);
        for e in &encodings {
            ids.extend(e.get_ids().iter().map(|&v| v as i64));
            mask.extend(e.get_attention_mask().iter().map(|&v| v as i64));
            types.extend(e.get_type_ids().iter().map(|&v| v as i64));
        }
        let dims = vec![rows, cols];
        Ok(vec![
            ("input_ids".into(), Tensor::from_i64(dims.clone(), &ids)),
            ("attention_mask".into(), Tensor::from_i64(dims.clone(), &mask)),
            ("token_type_ids".into(), Tensor::from_i64(dims, &types)),
        ])
    }
}

fn max_seq_length(dir: &Path) -> Result<usize> {
    #[derive(serde::Deserialize)]
    struct SentenceBert {
        max_seq_length: usize,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        max_position_embeddings: usize,
    }
    let st = dir.join("sentence_bert_config.json");
    if st.is_file() {
        let cfg: SentenceBert = serde_json::from_slice(&std::fs::read(&st)?)?;
        return Ok(cfg.max_seq_length);
    }
    let cfg: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
    Ok(cfg.max_position_embeddings)
}
