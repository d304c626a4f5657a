//! Runners: native model executors shared by every instance.
//!
//! Tensor work never runs in Wasm. A guest's `wasi:nn` calls reach a
//! [`Runner`], which owns the one copy of a model's weights in the host and
//! its tokenizer. [`Runners`] loads each model at most once per host, however
//! many deployments and concurrent instances use it.
//!
//! # Blocking work and the async executor
//!
//! The host implements the `wasi:nn` WIT itself (`bindgen!` with async
//! imports, see [`crate::nn`]) rather than using `wasmtime-wasi-nn`, whose
//! host calls are synchronous and whose backends are keyed by the fixed
//! `graph-encoding` enum. [`Runner::compute`] moves the forward pass onto
//! tokio's blocking pool and awaits it, so a long inference never stalls the
//! executor threads that serve HTTP and drive other instances, and concurrent
//! calls can later be merged into batches in this one place.
//!
//! # Backends
//!
//! A [`Backend`] runs one model on one kind of hardware. Today: BERT-family
//! encoders on the CPU with candle ([`bert`]). ONNX or GPU backends implement
//! the same trait.

pub mod bert;
mod tokenize;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use tokio::sync::OnceCell;

pub use tokenize::TextTokenizer;

use crate::store::StoredModel;
use crate::tag::Tag;

/// Element types of host tensors (the subset of `wasi:nn` types we run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F32,
    I64,
    I32,
    U8,
    /// Types that can be carried but not computed on here (FP16, BF16, FP64).
    Other,
}

impl ElementType {
    /// Bytes per element, where known.
    pub fn size(self) -> Option<usize> {
        match self {
            ElementType::F32 | ElementType::I32 => Some(4),
            ElementType::I64 => Some(8),
            ElementType::U8 => Some(1),
            ElementType::Other => None,
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
        if let Some(size) = self.ty.size() {
            let expected = self.len().checked_mul(size).ok_or("tensor dimensions overflow")?;
            if expected != self.data.len() {
                return Err(format!(
                    "tensor data holds {} bytes, dimensions {:?} of {:?} need {expected}",
                    self.data.len(),
                    self.dims,
                    self.ty
                ));
            }
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

    /// Runs the model. Called on a blocking thread, never on the executor.
    fn compute(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError>;
}

/// A loaded model: backend plus tokenizer, shared by every instance.
pub struct Runner {
    tag: Tag,
    backend: Arc<dyn Backend>,
    tokenizer: Option<TextTokenizer>,
}

impl Runner {
    /// Loads the model in `dir` with the backend that fits it.
    pub fn load(tag: Tag, dir: &Path) -> Result<Runner> {
        if !bert::is_bert_dir(dir) {
            bail!(
                "model {tag}: no backend for this model (only BERT-family encoders with config.json are supported)"
            );
        }
        let backend: Arc<dyn Backend> = Arc::new(bert::BertEncoder::load(dir)?);
        let tokenizer =
            if dir.join("tokenizer.json").is_file() { Some(TextTokenizer::load(dir)?) } else { None };
        Ok(Runner { tag, backend, tokenizer })
    }

    /// A runner around an existing backend (for other backends and tests).
    pub fn with_backend(tag: Tag, backend: Arc<dyn Backend>, tokenizer: Option<TextTokenizer>) -> Runner {
        Runner { tag, backend, tokenizer }
    }

    pub fn tag(&self) -> &Tag {
        &self.tag
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The model's tokenizer, if it ships one.
    pub fn tokenizer(&self) -> Option<&TextTokenizer> {
        self.tokenizer.as_ref()
    }

    /// Runs the model on the blocking pool (see the module docs).
    pub async fn compute(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, RunnerError> {
        let backend = Arc::clone(&self.backend);
        tokio::task::spawn_blocking(move || backend.compute(&inputs))
            .await
            .unwrap_or_else(|e| Err(RunnerError::Runtime(format!("the backend panicked: {e}"))))
    }

    /// Runs the model on the calling thread (benchmarks, tests).
    pub fn compute_blocking(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError> {
        self.backend.compute(inputs)
    }
}

/// Every model loaded in this host, by exact tag: loaded once, shared.
#[derive(Default)]
pub struct Runners {
    loaded: Mutex<HashMap<Tag, Arc<OnceCell<Arc<Runner>>>>>,
}

impl Runners {
    /// The runner for a stored model, loading it on first use. Concurrent
    /// first uses wait for one load instead of loading twice.
    pub async fn get_or_load(&self, model: &StoredModel) -> Result<Arc<Runner>> {
        let tag = model.tag();
        let cell = Arc::clone(self.loaded.lock().unwrap().entry(tag.clone()).or_default());
        let runner = cell
            .get_or_try_init(|| async {
                let dir = model.dir.clone();
                let tag2 = tag.clone();
                let started = std::time::Instant::now();
                let runner = tokio::task::spawn_blocking(move || Runner::load(tag2, &dir)).await??;
                tracing::info!(model = %tag, took_ms = started.elapsed().as_millis() as u64, backend = %runner.describe(), "model loaded");
                anyhow::Ok(Arc::new(runner))
            })
            .await?;
        Ok(Arc::clone(runner))
    }

    /// How many models are loaded.
    pub fn len(&self) -> usize {
        self.loaded.lock().unwrap().values().filter(|c| c.initialized()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
