//! Runners: native model executors shared by every instance.
//!
//! Tensor work never runs in Wasm. A guest's `wasi:nn` calls reach a
//! [`Runner`]: one per model a deployment declares, a component with its own
//! traffic control and replicas. A runner replica is a worker thread over the
//! model's weights; at zero replicas the runner lets go of the weights, and
//! the [`ModelCache`], which holds each model at most once per host however
//! many runners use it, frees them when the last user lets go.
//!
//! # Blocking work and the async executor
//!
//! The host implements the `wasi:nn` WIT itself (`bindgen!` with async
//! imports, see [`crate::nn`]) rather than using `wasmtime-wasi-nn`, whose
//! host calls are synchronous and whose backends are keyed by the fixed
//! `graph-encoding` enum. [`Runner::compute`] hands the call to the runner's
//! own worker thread and awaits the answer, so a long inference never stalls
//! the executor threads that serve HTTP and drive other instances, and the
//! worker merges concurrent calls into batches ([`batcher`]).
//!
//! # Backends
//!
//! A [`Backend`] runs one model on one device. Today: BERT-family encoders
//! ([`bert`]), whose order of operations ([`encoder`]) runs on the CPU with
//! candle ([`cpu`]) or on an NVIDIA GPU with cuBLAS and NVRTC kernels
//! ([`cuda`]). Where a runner's weights go is decided from the deployment's
//! resources ([`crate::devices::place`]); the [`ModelCache`] keeps one copy
//! per device.

mod batcher;
pub mod bert;
mod cache;
mod component;
pub mod cpu;
pub mod cuda;
pub mod encoder;
mod tokenize;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

pub use cache::{DeviceLabels, DeviceWeights, ModelCache};
pub use component::{Runner, RunnerStatus};
pub use tokenize::TextTokenizer;

use crate::devices::Device;
use crate::tag::Tag;

/// Element types of host tensors (the subset of `wasi:nn` types we run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F32,
    I64,
    I32,
    U8,
    /// Carried through, not computed on by today's backends.
    F16,
    BF16,
    F64,
}

impl ElementType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::I64 | ElementType::F64 => 8,
            ElementType::F16 | ElementType::BF16 => 2,
            ElementType::U8 => 1,
        }
    }
}

/// A dense, row-major, little-endian tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dims: Vec<usize>,
    pub ty: ElementType,
    pub data: Vec<u8>,
}

/// A tensor with the name of the model input or output it belongs to.
pub type NamedTensor = (String, Tensor);

impl Tensor {
    /// An FP32 tensor from values.
    pub fn from_f32(dims: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor { dims, ty: ElementType::F32, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// An I64 tensor from values.
    pub fn from_i64(dims: Vec<usize>, values: &[i64]) -> Tensor {
        Tensor { dims, ty: ElementType::I64, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// The number of elements the dimensions describe.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Integer values, widened to i64 (I64, I32 or U8 tensors).
    pub fn to_i64(&self) -> Result<Vec<i64>, String> {
        self.check_len()?;
        Ok(match self.ty {
            ElementType::I64 => {
                self.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
            }
            ElementType::I32 => {
                self.data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect()
            }
            ElementType::U8 => self.data.iter().map(|&b| b as i64).collect(),
            other => return Err(format!("expected an integer tensor, got {other:?}")),
        })
    }

    /// FP32 values.
    pub fn to_f32(&self) -> Result<Vec<f32>, String> {
        self.check_len()?;
        if self.ty != ElementType::F32 {
            return Err(format!("expected an FP32 tensor, got {:?}", self.ty));
        }
        Ok(self.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }

    /// Checks that the data length matches dimensions × element size.
    pub fn check_len(&self) -> Result<(), String> {
        let expected = self.len().checked_mul(self.ty.size()).ok_or("tensor dimensions overflow")?;
        if expected != self.data.len() {
            return Err(format!(
                "tensor data holds {} bytes, dimensions {:?} of {:?} need {expected}",
                self.data.len(),
                self.dims,
                self.ty
            ));
        }
        Ok(())
    }
}

/// Why a runner call failed; maps onto `wasi:nn` error codes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunnerError {
    /// The inputs do not fit the model (`invalid-argument`).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The backend failed (`runtime-error`).
    #[error("runtime error: {0}")]
    Runtime(String),
    /// The call could not meet the runner's latency objective, or the
    /// runner's queue is full; it was not run (HTTP 503).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The runner did not answer within its timeout (HTTP 504).
    #[error("timeout: {0}")]
    Timeout(String),
}

impl RunnerError {
    pub fn invalid(message: impl Into<String>) -> Self {
        RunnerError::InvalidInput(message.into())
    }
}

/// Runs one loaded model on one kind of hardware.
pub trait Backend: Send + Sync + 'static {
    /// One line about what runs where, for logs.
    fn describe(&self) -> String;

    /// Runs the model. Called on the runner's worker thread, never on the executor.
    fn compute(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError>;

    /// Whether calls can be merged along the first axis of 2-D integer
    /// inputs padded with zeros (encoders with an attention mask).
    fn batchable(&self) -> bool {
        false
    }

    /// Where the weights live.
    fn device(&self) -> Device {
        Device::Cpu
    }

    /// Memory the weights take on [`Backend::device`], for `/metrics`.
    fn weight_bytes(&self) -> u64 {
        0
    }
}

/// Items in one forward pass at most (BentoML's `max_batch_size` counts the
/// same way: a call with 20 texts is 20).
pub const DEFAULT_MAX_BATCH_SIZE: usize = 32;

/// Batch sizes by model, for `/metrics`.
pub type BatchSizes = Family<ModelLabels, Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

/// A histogram family with BentoML's batch-size buckets (powers of two).
pub fn batch_size_family() -> BatchSizes {
    Family::new_with_constructor(|| {
        Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 10))
    })
}

/// How runners batch.
#[derive(Debug, Clone)]
pub struct Batching {
    /// Items per forward pass at most (1: no batching).
    pub max_batch_size: usize,
    /// Latency objective per call, arrival to result (`None`: none).
    pub max_latency: Option<std::time::Duration>,
}

impl Default for Batching {
    fn default() -> Self {
        // BentoML's max_latency_ms default: 60 s.
        Batching {
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            max_latency: Some(std::time::Duration::from_secs(60)),
        }
    }
}

/// Loads the model in `dir` onto `device` with the backend that fits it.
pub fn load_backend(tag: &Tag, dir: &Path, device: Device) -> Result<Arc<dyn Backend>> {
    if !bert::is_bert_dir(dir) {
        bail!(
            "model {tag}: no backend for this model (only BERT-family encoders with config.json are supported)"
        );
    }
    let model = bert::BertModel::read(dir)?;
    Ok(match device {
        Device::Cpu => Arc::new(cpu::CpuEncoder::load(model)?),
        Device::Cuda(ordinal) => Arc::new(cuda::CudaEncoder::load(model, ordinal)?),
    })
}
