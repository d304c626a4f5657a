//! Sentence embeddings with all-MiniLM-L6-v2, the way sentence-transformers
//! computes them: the host tokenizes, runs the encoder, mean-pools over the
//! attention mask and L2-normalises; this service only validates and shapes
//! the JSON.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wasmbento_sdk::nn::{self, Model};
use wasmbento_sdk::{Apis, Error, Service};

/// The model name this service declares in its bento.toml.
const MODEL: &str = "all-minilm-l6-v2";
/// A bound on one request's work; larger batches should be split by the client.
const MAX_TEXTS: usize = 256;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EncodeRequest {
    /// The sentences to embed (1 to 256).
    texts: Vec<String>,
}

#[derive(Serialize, JsonSchema)]
struct EncodeResponse {
    /// One unit-length vector of 384 floats per input text, in order.
    embeddings: Vec<Vec<f32>>,
}

struct Embedder;

impl Service for Embedder {
    fn apis(apis: &mut Apis) {
        apis.api("encode", "Embeds sentences into 384-dimensional unit vectors (all-MiniLM-L6-v2).", encode);
    }
}

fn encode(request: EncodeRequest) -> Result<EncodeResponse, Error> {
    if request.texts.is_empty() {
        return Err(Error::bad_input("texts: must hold at least one text"));
    }
    if request.texts.len() > MAX_TEXTS {
        return Err(Error::bad_input(format!(
            "texts: at most {MAX_TEXTS} texts per request, got {}",
            request.texts.len()
        )));
    }
    let model = Model::load(MODEL)?;
    let inputs = model.tokenize(&request.texts)?;
    let outputs = model.compute(inputs)?;
    let embeddings = nn::rows_f32(outputs.get("sentence_embedding")?)?;
    if embeddings.len() != request.texts.len() {
        return Err(Error::internal("the model returned a different number of embeddings"));
    }
    Ok(EncodeResponse { embeddings })
}

wasmbento_sdk::export_service!(Embedder);
