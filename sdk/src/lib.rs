//! Guest SDK for wasmbento services.
//!
//! A service is a plain Rust type that lists its APIs: typed functions from a
//! `serde` input to a `serde` output. [`export_service!`] turns it into the
//! `wasmbento:service/api` export of a Wasm component, and the host serves each
//! API as `POST /{deployment}/{api}`.
//!
//! ```ignore
//! use serde::{Deserialize, Serialize};
//! use schemars::JsonSchema;
//! use wasmbento_sdk::{Apis, Error, Service};
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct GreetIn { name: String }
//! #[derive(Serialize, JsonSchema)]
//! struct GreetOut { message: String }
//!
//! struct Hello;
//! impl Service for Hello {
//!     fn apis(apis: &mut Apis) {
//!         apis.api("greet", "Greets someone by name.", |input: GreetIn| {
//!             if input.name.is_empty() {
//!                 return Err(Error::bad_input("name: must not be empty"));
//!             }
//!             Ok(GreetOut { message: format!("Hello, {}!", input.name) })
//!         });
//!     }
//! }
//! wasmbento_sdk::export_service!(Hello);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`, or let
//! `wasmbento build <dir>` do that and store the bento. The host creates a
//! fresh instance for every call: globals start from their initial values each
//! time, so keep no state between calls.
//!
//! Input and output types derive `serde` and `schemars::JsonSchema` (the
//! schemas become the OpenAPI document the host serves).
//!
//! Models are reached through the standard `wasi:nn` interfaces; [`nn`] wraps
//! them in a few helpers.

pub mod log;
pub mod metrics;
pub mod nn;
mod service;

pub use service::{Apis, Error, Service};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "wasmbento:service/service",
        pub_export_macro: true,
        export_macro_name: "__export_world_service",
        default_bindings_module: "wasmbento_sdk::bindings",
        generate_all,
    });
}

#[doc(hidden)]
pub use service::{__call, __describe};

/// Exports `$service` (a type implementing [`Service`]) as this component's
/// `wasmbento:service/api`. Use it once, in the plugin's crate root.
#[macro_export]
macro_rules! export_service {
    ($service:ty) => {
        #[doc(hidden)]
        struct __WasmbentoExport;

        impl $crate::bindings::exports::wasmbento::service::api::Guest for __WasmbentoExport {
            fn describe() -> ::std::vec::Vec<$crate::bindings::exports::wasmbento::service::api::ApiInfo> {
                $crate::__describe::<$service>()
            }

            fn call(
                api: ::std::string::String,
                input: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<
                ::std::vec::Vec<u8>,
                $crate::bindings::exports::wasmbento::service::api::CallError,
            > {
                $crate::__call::<$service>(&api, &input)
            }
        }

        $crate::bindings::__export_world_service!(__WasmbentoExport with_types_in $crate::bindings);
    };
}
