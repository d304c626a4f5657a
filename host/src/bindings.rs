//! Host bindings for the `wasmbento:service/service` world (see `wit/`).
//!
//! Every import is async so that host calls (model inference above all) await
//! instead of blocking an executor thread; `trappable` lets a host function
//! fail the instance, e.g. on a dangling resource handle.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "wasmbento:service/service",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi:nn/tensor.tensor": crate::nn::Tensor,
        "wasi:nn/graph.graph": crate::nn::Graph,
        "wasi:nn/inference.graph-execution-context": crate::nn::ExecutionContext,
        "wasi:nn/errors.error": crate::nn::Error,
    },
});
