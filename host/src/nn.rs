//! Host side of `wasi:nn` and of wasmbento's own guest imports (logging,
//! tokenizer).
//!
//! Graphs are loaded only by name (`load-by-name`), and only the models a
//! bento declares in its manifest are reachable: the [`ModelSet`] of a
//! deployment maps the names the guest uses to shared [`Runner`]s. Nothing is
//! loaded per instance; weights never pass through guest memory.
//!
//! Tensors are host resources. Inputs handed to `compute` are moved out of
//! the instance's resource table, not copied; outputs and tokenizer results
//! are pushed into it, and the guest copies out only what it reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::Resource;

use crate::bindings::wasi::nn::{errors, graph, inference, tensor};
use crate::bindings::wasmbento::service::{logging, metrics, tokenizer};
use crate::instance::HostState;
use crate::runner::{self, ElementType, Runner, RunnerError};

/// The models one deployment may load, by the names its guest uses.
#[derive(Default)]
pub struct ModelSet {
    models: BTreeMap<String, Arc<Runner>>,
}

impl ModelSet {
    pub fn new(models: BTreeMap<String, Arc<Runner>>) -> ModelSet {
        ModelSet { models }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Runner>> {
        self.models.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

/// `wasi:nn/tensor.tensor`: a host tensor.
pub type Tensor = runner::Tensor;

/// `wasi:nn/graph.graph`: a handle on a shared runner.
pub struct Graph {
    runner: Arc<Runner>,
}

/// `wasi:nn/inference.graph-execution-context`.
pub struct ExecutionContext {
    runner: Arc<Runner>,
}

/// `wasi:nn/errors.error`.
pub struct Error {
    code: errors::ErrorCode,
    message: String,
}

type Fallible<T> = wasmtime::Result<Result<T, Resource<Error>>>;

impl HostState {
    fn nn_error<T>(&mut self, code: errors::ErrorCode, message: impl Into<String>) -> Fallible<T> {
        Ok(Err(self.table.push(Error { code, message: message.into() })?))
    }
}

fn to_element(ty: tensor::TensorType) -> ElementType {
    use tensor::TensorType as T;
    match ty {
        T::Fp32 => ElementType::F32,
        T::I64 => ElementType::I64,
        T::I32 => ElementType::I32,
        T::U8 => ElementType::U8,
        T::Fp16 => ElementType::F16,
        T::Bf16 => ElementType::BF16,
        T::Fp64 => ElementType::F64,
    }
}

fn from_element(ty: ElementType) -> tensor::TensorType {
    use tensor::TensorType as T;
    match ty {
        ElementType::F32 => T::Fp32,
        ElementType::I64 => T::I64,
        ElementType::I32 => T::I32,
        ElementType::U8 => T::U8,
        ElementType::F16 => T::Fp16,
        ElementType::BF16 => T::Bf16,
        ElementType::F64 => T::Fp64,
    }
}

impl tensor::Host for HostState {}

impl tensor::HostTensor for HostState {
    async fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: tensor::TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<Tensor>> {
        let tensor =
            Tensor { dims: dimensions.iter().map(|&d| d as usize).collect(), ty: to_element(ty), data };
        Ok(self.table.push(tensor)?)
    }

    async fn dimensions(&mut self, this: Resource<Tensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&this)?.dims.iter().map(|&d| d as u32).collect())
    }

    async fn ty(&mut self, this: Resource<Tensor>) -> wasmtime::Result<tensor::TensorType> {
        Ok(from_element(self.table.get(&this)?.ty))
    }

    async fn data(&mut self, this: Resource<Tensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&this)?.data.clone())
    }

    async fn drop(&mut self, this: Resource<Tensor>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl errors::Host for HostState {}

impl errors::HostError for HostState {
    async fn code(&mut self, this: Resource<Error>) -> wasmtime::Result<errors::ErrorCode> {
        Ok(self.table.get(&this)?.code)
    }

    async fn data(&mut self, this: Resource<Error>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.message.clone())
    }

    async fn drop(&mut self, this: Resource<Error>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl graph::Host for HostState {
    async fn load(
        &mut self,
        _builder: Vec<Vec<u8>>,
        _encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> Fallible<Resource<Graph>> {
        self.nn_error(
            errors::ErrorCode::UnsupportedOperation,
            "loading a model from bytes is not supported: declare it in bento.toml and use load-by-name",
        )
    }

    async fn load_by_name(&mut self, name: String) -> Fallible<Resource<Graph>> {
        match self.models.get(&name) {
            Some(runner) => {
                let runner = Arc::clone(runner);
                Ok(Ok(self.table.push(Graph { runner })?))
            }
            None => {
                let declared: Vec<&str> = self.models.names().collect();
                let message =
                    format!("model {name:?} is not declared by this bento (declared: {declared:?})");
                self.nn_error(errors::ErrorCode::NotFound, message)
            }
        }
    }
}

impl graph::HostGraph for HostState {
    async fn init_execution_context(
        &mut self,
        this: Resource<Graph>,
    ) -> Fallible<Resource<ExecutionContext>> {
        let runner = Arc::clone(&self.table.get(&this)?.runner);
        Ok(Ok(self.table.push(ExecutionContext { runner })?))
    }

    async fn drop(&mut self, this: Resource<Graph>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl inference::Host for HostState {}

impl inference::HostGraphExecutionContext for HostState {
    async fn compute(
        &mut self,
        this: Resource<ExecutionContext>,
        inputs: Vec<(String, Resource<Tensor>)>,
    ) -> Fallible<Vec<(String, Resource<Tensor>)>> {
        let runner = Arc::clone(&self.table.get(&this)?.runner);
        let mut named = Vec::with_capacity(inputs.len());
        for (name, handle) in inputs {
            let tensor = self.table.delete(handle)?;
            if let Err(e) = tensor.check_len() {
                return self.nn_error(errors::ErrorCode::InvalidArgument, format!("{name}: {e}"));
            }
            named.push((name, tensor));
        }
        match runner.compute(named).await {
            Ok(outputs) => {
                let mut handles = Vec::with_capacity(outputs.len());
                for (name, tensor) in outputs {
                    handles.push((name, self.table.push(tensor)?));
                }
                Ok(Ok(handles))
            }
            Err(RunnerError::InvalidInput(m)) => self.nn_error(errors::ErrorCode::InvalidArgument, m),
            Err(RunnerError::Runtime(m)) => self.nn_error(errors::ErrorCode::RuntimeError, m),
            Err(refusal @ (RunnerError::Overloaded(_) | RunnerError::Timeout(_))) => {
                // The guest sees a wasi:nn error; the host answers 503 or 504
                // for the call, however the guest reports it.
                let message = refusal.to_string();
                self.runner_refusal = Some(refusal);
                self.nn_error(errors::ErrorCode::RuntimeError, message)
            }
        }
    }

    async fn drop(&mut self, this: Resource<ExecutionContext>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl tokenizer::Host for HostState {
    async fn tokenize(
        &mut self,
        model: String,
        texts: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Resource<Tensor>)>, String>> {
        let Some(runner) = self.models.get(&model) else {
            return Ok(Err(format!("model {model:?} is not declared by this bento")));
        };
        let Some(tokenizer) = runner.tokenizer() else {
            return Ok(Err(format!("model {model:?} has no tokenizer.json")));
        };
        let tensors = match tokenizer.encode(&texts) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        let mut handles = Vec::with_capacity(tensors.len());
        for (name, tensor) in tensors {
            handles.push((name, self.table.push(tensor)?));
        }
        Ok(Ok(handles))
    }
}

impl logging::Host for HostState {
    async fn log(&mut self, level: logging::Level, message: String) -> wasmtime::Result<()> {
        use logging::Level as L;
        match level {
            L::Trace => tracing::trace!(target: "guest", "{message}"),
            L::Debug => tracing::debug!(target: "guest", "{message}"),
            L::Info => tracing::info!(target: "guest", "{message}"),
            L::Warn => tracing::warn!(target: "guest", "{message}"),
            L::Error => tracing::error!(target: "guest", "{message}"),
        }
        Ok(())
    }
}

/// Custom gauges of one deployment: the last value reported under each name.
#[derive(Default)]
pub struct CustomGauges {
    values: std::sync::Mutex<BTreeMap<String, f64>>,
}

/// Names a deployment may report at most (a guest cannot grow this without bound).
const MAX_GAUGES: usize = 64;

impl CustomGauges {
    /// Records a value; returns false (and records nothing) for a bad name or value.
    pub fn set(&self, name: &str, value: f64) -> bool {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && value.is_finite();
        let mut values = self.values.lock().unwrap();
        if !valid || (values.len() >= MAX_GAUGES && !values.contains_key(name)) {
            return false;
        }
        values.insert(name.to_string(), value);
        true
    }

    /// Every gauge's last value.
    pub fn snapshot(&self) -> BTreeMap<String, f64> {
        self.values.lock().unwrap().clone()
    }
}

impl metrics::Host for HostState {
    async fn set_gauge(&mut self, name: String, value: f64) -> wasmtime::Result<()> {
        if !self.gauges.set(&name, value) {
            tracing::debug!(target: "guest", name, value, "ignored an invalid gauge");
        }
        Ok(())
    }
}
