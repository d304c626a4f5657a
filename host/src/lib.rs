//! wasmbento: serve inference services as WebAssembly components.
//!
//! A request's path through the host reads like the architecture:
//!
//! * [`http`]: routes, request checks, failure → status code;
//! * [`fleet`]: the deployments served, deployed and undeployed at run time;
//! * [`deployment`]: which bento, which configuration, readiness;
//! * [`instance`]: wasmtime engine, compiled components, a fresh instance per call;
//! * [`nn`]: the `wasi:nn` host and the other guest imports;
//! * [`runner`]: native model execution shared by all instances (candle on
//!   the CPU, cuBLAS and NVRTC kernels on NVIDIA GPUs).
//!
//! Scaling: [`traffic`] (admission gates and queues) and [`scale`] (policies,
//! the autoscaler, one controller per component).
//!
//! Beside it: [`store`] (models and bentos on disk), [`builder`] (plugin →
//! bento), [`hub`] (model import), [`devices`] (CPUs, memory, GPUs;
//! placement), [`device_check`] (a device against the CPU),
//! [`compile_cache`], [`metrics`], [`openapi`], [`server`] (wiring) and
//! [`cli`].

pub mod admin;
pub mod bindings;
pub mod builder;
pub mod cli;
pub mod compile_cache;
pub mod deployment;
pub mod device_check;
pub mod devices;
pub mod fleet;
pub mod http;
pub mod hub;
pub mod instance;
pub mod json;
pub mod manifest;
pub mod metrics;
pub mod nn;
pub mod oci;
pub mod openapi;
pub mod runner;
pub mod scale;
pub mod server;
pub mod store;
pub mod tag;
pub mod traffic;
