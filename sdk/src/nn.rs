//! Helpers over the standard `wasi:nn` imports.
//!
//! The tensor work runs in the host: a guest loads a model by the name its
//! bento declares, builds input tensors (or lets the host tokenize text), and
//! reads the outputs back. From `plugins/embedder`:
//!
//! ```ignore
//! use wasmbento_sdk::nn::{self, Model};
//!
//! let model = Model::load("all-minilm-l6-v2")?;   // declared in bento.toml [models]
//! let inputs = model.tokenize(&texts)?;           // input_ids, attention_mask, token_type_ids
//! let outputs = model.compute(inputs)?;
//! let embeddings: Vec<Vec<f32>> = nn::rows_f32(outputs.get("sentence_embedding")?)?;
//! ```
//!
//! Models whose inputs are not text take tensors built with [`tensor_f32`]
//! or [`tensor_i64`]. Errors from the host map to [`Error`]: an invalid
//! argument (wrong shapes, ids outside the vocabulary) is a 400, anything
//! else a 500.

use crate::Error;
use crate::bindings::wasi::nn::{
    errors,
    graph::{self, Graph},
    inference::GraphExecutionContext,
    tensor::{Tensor, TensorType},
};
use crate::bindings::wasmbento::service::tokenizer;

/// A model loaded by name, as declared in the bento's `models`.
pub struct Model {
    name: String,
    graph: Graph,
}

/// Named output tensors of one inference.
pub struct Outputs(Vec<(String, Tensor)>);

impl Model {
    /// Loads the model the bento declares as `name`. The host keeps one copy
    /// of its weights however many instances load it.
    pub fn load(name: &str) -> Result<Model, Error> {
        let graph = graph::load_by_name(name).map_err(|e| nn_error(name, e))?;
        Ok(Model { name: name.to_string(), graph })
    }

    /// Tokenizes `texts` with the model's own tokenizer (in the host) into
    /// the model's named input tensors.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<(String, Tensor)>, Error> {
        tokenizer::tokenize(&self.name, texts).map_err(Error::internal)
    }

    /// Runs the model on `inputs`.
    pub fn compute(&self, inputs: Vec<(String, Tensor)>) -> Result<Outputs, Error> {
        let context: GraphExecutionContext =
            self.graph.init_execution_context().map_err(|e| nn_error(&self.name, e))?;
        let outputs = context.compute(inputs).map_err(|e| nn_error(&self.name, e))?;
        Ok(Outputs(outputs))
    }
}

impl Outputs {
    /// The output called `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor, Error> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::internal(format!("the model returned no output named {name:?}")))
    }
}

/// Makes an FP32 tensor of the given dimensions.
pub fn tensor_f32(dims: &[u32], values: &[f32]) -> Tensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new(dims, TensorType::Fp32, &bytes)
}

/// Makes an I64 tensor of the given dimensions.
pub fn tensor_i64(dims: &[u32], values: &[i64]) -> Tensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new(dims, TensorType::I64, &bytes)
}

/// Reads an FP32 tensor as rows of its last dimension (a 2-D tensor of
/// `[n, d]` becomes `n` rows of `d` values).
pub fn rows_f32(tensor: &Tensor) -> Result<Vec<Vec<f32>>, Error> {
    if tensor.ty() != TensorType::Fp32 {
        return Err(Error::internal("expected an FP32 tensor"));
    }
    let dims = tensor.dimensions();
    let width = *dims.last().ok_or_else(|| Error::internal("tensor has no dimensions"))? as usize;
    let data = tensor.data();
    let values: Vec<f32> =
        data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if width == 0 {
        return Ok(Vec::new());
    }
    Ok(values.chunks(width).map(<[f32]>::to_vec).collect())
}

fn nn_error(model: &str, e: errors::Error) -> Error {
    use errors::ErrorCode;
    let code = e.code();
    let message = format!("model {model:?}: {:?}: {}", code, e.data());
    match code {
        ErrorCode::InvalidArgument => Error::bad_input(message),
        _ => Error::internal(message),
    }
}
