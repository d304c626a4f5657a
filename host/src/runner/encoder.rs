//! The BERT-family encoder as a sequence of primitive operations, written
//! once for every device.
//!
//! [`encode`] is the model: embeddings, then per layer self-attention with
//! the padding mask, residual adds, layer norms and the GELU feed-forward,
//! then pooling and normalisation. A device implements [`EncoderOps`], the
//! primitives and its own copy of the weights: the CPU with candle
//! ([`super::cpu`]), NVIDIA GPUs with cuBLAS GEMMs and NVRTC-compiled kernels
//! ([`super::cuda`]). The order of operations is tested on every machine;
//! only the primitives differ.

use anyhow::Result;

use super::bert::{Batch, Pooling};

/// The projections of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    Query,
    Key,
    Value,
    /// Attention output (before its residual add).
    AttentionOut,
    /// Feed-forward up-projection.
    Intermediate,
    /// Feed-forward down-projection.
    Output,
}

/// The layer norms of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    Attention,
    Output,
}

/// What [`encode`] needs to know of the model's shape.
#[derive(Debug, Clone, Copy)]
pub struct EncoderShape {
    pub layers: usize,
    pub heads: usize,
    pub pooling: Pooling,
    pub normalize: bool,
}

/// The primitives one device provides, over its own activations `Self::T`
/// (`[batch, seq, hidden]` until pooling, `[batch, hidden]` after).
pub trait EncoderOps {
    type T;
    /// The attention mask in the device's form.
    type Mask;

    /// `mask` is `[batch, seq]`, 1 for tokens and 0 for padding.
    fn mask(&self, batch: usize, seq: usize, mask: &[i64]) -> Result<Self::Mask>;
    /// Word + position + token type embeddings (not yet normalised).
    fn embed(&self, batch: usize, seq: usize, ids: &[i64], types: &[i64]) -> Result<Self::T>;
    fn embedding_norm(&self, x: &Self::T) -> Result<Self::T>;
    /// `x · Wᵀ + b` with layer `layer`'s weights.
    fn project(&self, layer: usize, which: Projection, x: &Self::T) -> Result<Self::T>;
    fn norm(&self, layer: usize, which: Norm, x: &Self::T) -> Result<Self::T>;
    fn add(&self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    /// GELU, the exact (erf) form.
    fn gelu(&self, x: &Self::T) -> Result<Self::T>;
    /// Multi-head scaled dot-product attention; padding gets no weight.
    fn attention(
        &self,
        q: &Self::T,
        k: &Self::T,
        v: &Self::T,
        mask: &Self::Mask,
        heads: usize,
    ) -> Result<Self::T>;
    /// Mean over the tokens the mask keeps.
    fn mean_pool(&self, x: &Self::T, mask: &Self::Mask) -> Result<Self::T>;
    /// The first token's state.
    fn cls_pool(&self, x: &Self::T, mask: &Self::Mask) -> Result<Self::T>;
    fn l2_normalize(&self, x: &Self::T) -> Result<Self::T>;
    /// The values, row-major, in host memory.
    fn to_host(&self, x: &Self::T) -> Result<Vec<f32>>;
}

/// Sentence embeddings, `[batch, hidden]` row-major, for a padded batch.
pub fn encode<O: EncoderOps>(ops: &O, shape: &EncoderShape, input: &Batch) -> Result<Vec<f32>> {
    use Projection::*;
    let (batch, seq) = (input.batch, input.seq);
    let mask = ops.mask(batch, seq, &input.mask)?;
    let mut x = ops.embedding_norm(&ops.embed(batch, seq, &input.ids, &input.types)?)?;
    for l in 0..shape.layers {
        let (q, k, v) = (ops.project(l, Query, &x)?, ops.project(l, Key, &x)?, ops.project(l, Value, &x)?);
        let context = ops.attention(&q, &k, &v, &mask, shape.heads)?;
        let attended =
            ops.norm(l, Norm::Attention, &ops.add(&ops.project(l, AttentionOut, &context)?, &x)?)?;
        let inner = ops.gelu(&ops.project(l, Intermediate, &attended)?)?;
        x = ops.norm(l, Norm::Output, &ops.add(&ops.project(l, Output, &inner)?, &attended)?)?;
    }
    let pooled = match shape.pooling {
        Pooling::Mean => ops.mean_pool(&x, &mask)?,
        Pooling::Cls => ops.cls_pool(&x, &mask)?,
    };
    let out = if shape.normalize { ops.l2_normalize(&pooled)? } else { pooled };
    ops.to_host(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records the operations instead of computing them.
    #[derive(Default)]
    struct Trace(RefCell<Vec<String>>);

    impl Trace {
        fn op(&self, what: String) -> Result<()> {
            self.0.borrow_mut().push(what);
            Ok(())
        }
    }

    impl EncoderOps for Trace {
        type T = ();
        type Mask = ();
        fn mask(&self, _: usize, _: usize, _: &[i64]) -> Result<()> {
            self.op("mask".into())
        }
        fn embed(&self, _: usize, _: usize, _: &[i64], _: &[i64]) -> Result<()> {
            self.op("embed".into())
        }
        fn embedding_norm(&self, _: &()) -> Result<()> {
            self.op("embedding_norm".into())
        }
        fn project(&self, layer: usize, which: Projection, _: &()) -> Result<()> {
            self.op(format!("{layer}:{which:?}"))
        }
        fn norm(&self, layer: usize, which: Norm, _: &()) -> Result<()> {
            self.op(format!("{layer}:norm {which:?}"))
        }
        fn add(&self, _: &(), _: &()) -> Result<()> {
            self.op("add".into())
        }
        fn gelu(&self, _: &()) -> Result<()> {
            self.op("gelu".into())
        }
        fn attention(&self, _: &(), _: &(), _: &(), _: &(), heads: usize) -> Result<()> {
            self.op(format!("attention/{heads}"))
        }
        fn mean_pool(&self, _: &(), _: &()) -> Result<()> {
            self.op("mean_pool".into())
        }
        fn cls_pool(&self, _: &(), _: &()) -> Result<()> {
            self.op("cls_pool".into())
        }
        fn l2_normalize(&self, _: &()) -> Result<()> {
            self.op("l2_normalize".into())
        }
        fn to_host(&self, _: &()) -> Result<Vec<f32>> {
            self.op("to_host".into())?;
            Ok(Vec::new())
        }
    }

    fn one_token() -> Batch {
        Batch { batch: 1, seq: 1, ids: vec![1], mask: vec![1], types: vec![0] }
    }

    #[test]
    fn the_encoder_is_one_sequence_of_primitives() {
        let trace = Trace::default();
        let shape = EncoderShape { layers: 2, heads: 12, pooling: Pooling::Mean, normalize: true };
        encode(&trace, &shape, &one_token()).unwrap();
        let layer = |l: usize| {
            [
                format!("{l}:Query"),
                format!("{l}:Key"),
                format!("{l}:Value"),
                "attention/12".into(),
                format!("{l}:AttentionOut"),
                "add".into(),
                format!("{l}:norm Attention"),
                format!("{l}:Intermediate"),
                "gelu".into(),
                format!("{l}:Output"),
                "add".into(),
                format!("{l}:norm Output"),
            ]
        };
        let mut expected: Vec<String> = vec!["mask".into(), "embed".into(), "embedding_norm".into()];
        expected.extend(layer(0));
        expected.extend(layer(1));
        expected.extend(["mean_pool".into(), "l2_normalize".into(), "to_host".into()]);
        assert_eq!(*trace.0.borrow(), expected);

        let trace = Trace::default();
        let cls = EncoderShape { layers: 0, heads: 1, pooling: Pooling::Cls, normalize: false };
        encode(&trace, &cls, &one_token()).unwrap();
        assert_eq!(*trace.0.borrow(), ["mask", "embed", "embedding_norm", "cls_pool", "to_host"]);
    }
}
