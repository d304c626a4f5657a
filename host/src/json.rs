//! JSON decoding whose errors name the field (`policy.metrics[0].value: ...`).

use serde::de::DeserializeOwned;

/// Decodes `bytes`; on failure the message starts with the path of the
/// offending field, when there is one.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." { inner.to_string() } else { format!("{path}: {inner}") }
    })
}
