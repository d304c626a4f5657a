//! BERT-family sentence encoders on the CPU, with candle.
//!
//! The model format (configuration, weight names, inputs) is [`super::bert`]
//! and the order of operations [`super::encoder::encode`], both shared with
//! the GPU backend; this module holds the weights in host memory and
//! provides the CPU primitives.

use anyhow::Result;
use candle_core::{D, DType, Device, Module, Tensor as CTensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use super::bert::{BertModel, names};
use super::encoder::{EncoderOps, Norm, Projection, encode};
use super::{Backend, NamedTensor, RunnerError};

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

/// A loaded encoder: one copy of the weights in host memory, shared by
/// every call.
pub struct CpuEncoder {
    model: BertModel,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
}

impl CpuEncoder {
    /// Loads the encoder's weights (memory-mapped, converted to FP32).
    pub fn load(model: BertModel) -> Result<CpuEncoder> {
        let device = Device::Cpu;
        // SAFETY: the file lives in the store, which nothing rewrites in place.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&model.weights], DType::F32, &device)? };
        let vb = if model.prefix().is_empty() { vb } else { vb.pp(model.prefix()) };
        let c = &model.config;
        let h = c.hidden_size;
        let ln = |name: &str| candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp(name));
        let linear = |i: usize, o: usize, l: usize, which: Projection| {
            candle_nn::linear(i, o, vb.pp(names::projection(l, which)))
        };
        let word = candle_nn::embedding(c.vocab_size, h, vb.pp(names::WORD))?;
        let position = candle_nn::embedding(c.max_position_embeddings, h, vb.pp(names::POSITION))?;
        let token_type = candle_nn::embedding(c.type_vocab_size, h, vb.pp(names::TOKEN_TYPE))?;
        let embedding_norm = ln(names::EMBEDDING_NORM)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            layers.push(Layer {
                query: linear(h, h, l, Projection::Query)?,
                key: linear(h, h, l, Projection::Key)?,
                value: linear(h, h, l, Projection::Value)?,
                attention_out: linear(h, h, l, Projection::AttentionOut)?,
                attention_norm: ln(&names::norm(l, Norm::Attention))?,
                intermediate: linear(h, c.intermediate_size, l, Projection::Intermediate)?,
                output: linear(c.intermediate_size, h, l, Projection::Output)?,
                output_norm: ln(&names::norm(l, Norm::Output))?,
            });
        }
        Ok(CpuEncoder { model, word, position, token_type, embedding_norm, layers, device })
    }
}

/// The CPU primitives, with candle. The mask carries its padding bias for
/// the attention scores.
impl EncoderOps for CpuEncoder {
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

    fn cls_pool(&self, x: &CTensor, _: &Self::Mask) -> Result<CTensor> {
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

impl Backend for CpuEncoder {
    fn describe(&self) -> String {
        self.model.describe("the CPU (candle)")
    }

    fn batchable(&self) -> bool {
        true
    }

    fn weight_bytes(&self) -> u64 {
        self.model.weight_bytes
    }

    fn compute(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError> {
        self.model.compute(inputs, |batch| encode(self, &self.model.shape(), batch))
    }
}
