//! A tiny BERT sentence encoder written to disk in Hugging Face format, with
//! seeded random weights: the real loading code runs on it in milliseconds.

use std::collections::HashMap;
use std::path::Path;

use serde_json::json;

/// Shape of the tiny model.
pub const HIDDEN: usize = 32;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const INTERMEDIATE: usize = 64;
pub const MAX_POSITIONS: usize = 64;
/// `max_seq_length` in sentence_bert_config.json (truncation point).
pub const MAX_SEQ: usize = 16;

/// The vocabulary: specials, then words (ids in this order).
pub const WORDS: &[&str] = &[
    "the", "a", "man", "woman", "is", "eating", "food", "riding", "horse", "cat", "dog", "play", "##s",
    "##ing", "guitar", "on", "street", "monkey", "drum", ".", ",", "!", "?", "hello", "world", "bento",
    "wasm",
];
const SPECIALS: &[&str] = &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

pub fn vocab() -> Vec<String> {
    SPECIALS.iter().chain(WORDS).map(|s| s.to_string()).collect()
}

/// A tiny deterministic generator (SplitMix64) for weights.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// The weights by safetensors name, as (shape, values).
pub fn weights(seed: u64) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    let mut w = HashMap::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let values = (0..n).map(|_| offset + scale * rng.next_f32()).collect();
        w.insert(name, (shape, values));
    };
    let v = vocab().len();
    put("embeddings.word_embeddings.weight".into(), vec![v, HIDDEN], 0.5, 0.0);
    put("embeddings.position_embeddings.weight".into(), vec![MAX_POSITIONS, HIDDEN], 0.5, 0.0);
    put("embeddings.token_type_embeddings.weight".into(), vec![2, HIDDEN], 0.5, 0.0);
    put("embeddings.LayerNorm.weight".into(), vec![HIDDEN], 0.1, 1.0);
    put("embeddings.LayerNorm.bias".into(), vec![HIDDEN], 0.1, 0.0);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for m in
            ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
        {
            put(format!("{p}.{m}.weight"), vec![HIDDEN, HIDDEN], 0.3, 0.0);
            put(format!("{p}.{m}.bias"), vec![HIDDEN], 0.1, 0.0);
        }
        put(format!("{p}.attention.output.LayerNorm.weight"), vec![HIDDEN], 0.1, 1.0);
        put(format!("{p}.attention.output.LayerNorm.bias"), vec![HIDDEN], 0.1, 0.0);
        put(format!("{p}.intermediate.dense.weight"), vec![INTERMEDIATE, HIDDEN], 0.3, 0.0);
        put(format!("{p}.intermediate.dense.bias"), vec![INTERMEDIATE], 0.1, 0.0);
        put(format!("{p}.output.dense.weight"), vec![HIDDEN, INTERMEDIATE], 0.3, 0.0);
        put(format!("{p}.output.dense.bias"), vec![HIDDEN], 0.1, 0.0);
        put(format!("{p}.output.LayerNorm.weight"), vec![HIDDEN], 0.1, 1.0);
        put(format!("{p}.output.LayerNorm.bias"), vec![HIDDEN], 0.1, 0.0);
    }
    w
}

/// Writes the model directory (config, weights, tokenizer, sentence-transformers files).
pub fn write(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let vocab = vocab();
    let config = json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "vocab_size": vocab.len(), "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("sentence_bert_config.json"), json!({"max_seq_length": MAX_SEQ}).to_string())
        .unwrap();
    let modules = json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]);
    std::fs::write(dir.join("modules.json"), modules.to_string()).unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        json!({"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": true}).to_string(),
    )
    .unwrap();

    let device = candle_core::Device::Cpu;
    let tensors: HashMap<String, candle_core::Tensor> = weights(seed)
        .into_iter()
        .map(|(name, (shape, values))| (name, candle_core::Tensor::from_vec(values, shape, &device).unwrap()))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();

    let vocab_map: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, w)| (w.clone(), json!(i))).collect();
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    // Padding to a fixed length, as all-MiniLM-L6-v2's file does: the host
    // must override it with longest-in-batch padding.
    let tokenizer = json!({
        "version": "1.0",
        "truncation": {"max_length": 8, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 12}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab_map},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}
