//! APIs as typed functions, and the glue between them and the `api` export.

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

use crate::bindings::exports::wasmbento::service::api::{ApiInfo, CallError};

/// A service: a type that lists its APIs.
pub trait Service: 'static {
    /// Registers every API of the service on `apis`.
    fn apis(apis: &mut Apis);
}

/// Why an API call failed. `BadInput` becomes HTTP 400, `Internal` 500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The caller sent something unacceptable; the message names the field.
    BadInput(String),
    /// The service itself failed.
    Internal(String),
}

impl Error {
    /// A 400: the request was understood but is not acceptable.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Error::BadInput(message.into())
    }

    /// A 500: something went wrong inside the service.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadInput(m) => write!(f, "bad input: {m}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

type Handler = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, CallError>>;

struct Entry {
    name: String,
    doc: String,
    // Schemas are only generated for `describe`, never on the call path.
    input_schema: fn() -> String,
    output_schema: fn() -> String,
    handler: Handler,
}

/// The APIs of a service, filled in by [`Service::apis`].
#[derive(Default)]
pub struct Apis {
    entries: Vec<Entry>,
}

impl Apis {
    /// Adds an API called `name` (a route segment: lowercase letters, digits,
    /// `-`, `_`). The input is decoded from JSON, and a decoding error becomes
    /// a 400 naming the field, e.g. `texts[1]: invalid type: integer ...`.
    pub fn api<I, O, F>(&mut self, name: &str, doc: &str, handler: F) -> &mut Self
    where
        I: DeserializeOwned + JsonSchema,
        O: Serialize + JsonSchema,
        F: Fn(I) -> Result<O, Error> + 'static,
    {
        let handler: Handler = Box::new(move |bytes: &[u8]| {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let input: I = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                CallError::BadInput(if path == "." { inner.to_string() } else { format!("{path}: {inner}") })
            })?;
            let output = handler(input).map_err(|e| match e {
                Error::BadInput(m) => CallError::BadInput(m),
                Error::Internal(m) => CallError::Internal(m),
            })?;
            serde_json::to_vec(&output).map_err(|e| CallError::Internal(e.to_string()))
        });
        self.entries.push(Entry {
            name: name.to_string(),
            doc: doc.to_string(),
            input_schema: schema_of::<I>,
            output_schema: schema_of::<O>,
            handler,
        });
        self
    }
}

/// The schema of `T` with every subschema inlined, so it can be embedded in
/// the host's OpenAPI document as it is.
fn schema_of<T: JsonSchema>() -> String {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    serde_json::to_string(&generator.into_root_schema_for::<T>()).expect("a JSON schema serializes")
}

fn collect<S: Service>() -> Apis {
    let mut apis = Apis::default();
    S::apis(&mut apis);
    apis
}

#[doc(hidden)]
pub fn __describe<S: Service>() -> Vec<ApiInfo> {
    collect::<S>()
        .entries
        .into_iter()
        .map(|e| ApiInfo {
            name: e.name,
            doc: e.doc,
            input_schema: (e.input_schema)(),
            output_schema: (e.output_schema)(),
        })
        .collect()
}

#[doc(hidden)]
pub fn __call<S: Service>(api: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
    let apis = collect::<S>();
    match apis.entries.iter().find(|e| e.name == api) {
        Some(entry) => (entry.handler)(input),
        None => Err(CallError::UnknownApi(api.to_string())),
    }
}
