//! The smallest useful service: one API, no model.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wasmbento_sdk::{Apis, Error, Service};

#[derive(Deserialize, JsonSchema)]
struct GreetRequest {
    /// Who to greet.
    name: String,
}

#[derive(Serialize, JsonSchema)]
struct Greeting {
    message: String,
}

struct Hello;

impl Service for Hello {
    fn apis(apis: &mut Apis) {
        apis.api("greet", "Greets someone by name.", |input: GreetRequest| {
            if input.name.trim().is_empty() {
                return Err(Error::bad_input("name: must not be empty"));
            }
            Ok(Greeting { message: format!("Hello, {}!", input.name) })
        });
    }
}

wasmbento_sdk::export_service!(Hello);
