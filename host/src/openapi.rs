//! The OpenAPI 3.1 document (`GET /docs.json`), built from the JSON schemas
//! each API's component reports.

use serde_json::{Value, json};

use crate::deployment::Deployment;

/// The document for a set of deployments.
pub fn document<'a>(deployments: impl IntoIterator<Item = &'a Deployment>) -> Value {
    let mut paths = serde_json::Map::new();
    for d in deployments {
        for api in &d.bento().apis {
            let path = format!("/{}/{}", d.name(), api.name);
            let operation = json!({
                "post": {
                    "operationId": format!("{}.{}", d.name(), api.name),
                    "summary": api.doc,
                    "tags": [d.name()],
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": schema(&api.input_schema)}}
                    },
                    "responses": {
                        "200": {"description": "Success", "content": {"application/json": {"schema": schema(&api.output_schema)}}},
                        "400": error_response("The input is not valid JSON or does not match the schema"),
                        "404": error_response("No such deployment or API"),
                        "413": error_response("The request body is too large"),
                        "415": error_response("The request body is not application/json"),
                        "500": error_response("The service failed, trapped or ran out of memory"),
                        "503": error_response("The deployment is not ready"),
                        "504": error_response("The service did not answer in time"),
                    }
                }
            });
            paths.insert(path, operation);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "wasmbento", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}}
        }}}
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// A component's schema text as JSON, without the `$schema` key OpenAPI does
/// not need (OpenAPI 3.1 uses JSON Schema 2020-12, as schemars does).
fn schema(text: &str) -> Value {
    let mut value: Value = serde_json::from_str(text).unwrap_or_else(|_| json!({}));
    if let Some(obj) = value.as_object_mut() {
        obj.remove("$schema");
    }
    value
}
