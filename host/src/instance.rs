//! Wasm execution: one engine, components compiled once, a fresh instance
//! for every call.
//!
//! * [`Runtime`] owns the wasmtime [`Engine`] and the [`Linker`] with every
//!   host capability. It uses the pooling allocator when the machine's
//!   virtual address space allows it (probed at start; the fallback is
//!   logged as a warning), copy-on-write memory images, and epoch
//!   interruption for deadlines.
//! * Components are compiled once and cached on disk as precompiled
//!   artifacts keyed by content digest and the engine's compatibility hash
//!   (see [`crate::compile_cache`]).
//! * [`ServiceComponent`] holds the `InstancePre` of one bento. [`ServiceComponent::call`]
//!   instantiates it in a new [`Store`], runs one call and drops both: nothing
//!   of an instance survives between calls.
//!
//! WASI is a sandbox here: no preopened directories, no environment, no
//! network, no inherited stdio (guest stdout/stderr are captured, truncated,
//! and attached to failures and debug logs).
//!
//! Guest failures never hurt the host: a trap fails the call, a guest that
//! runs past its deadline is interrupted at the next epoch tick (it yields to
//! the executor every tick meanwhile, so a loop never holds a thread), and a
//! memory limit per store turns a memory bomb into a failed call.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncWrite;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::exports::wasmbento::service::api::CallError;
use crate::bindings::{Service, ServicePre};
use crate::compile_cache::{CompileCache, Loaded};
use crate::manifest::ApiSpec;
use crate::nn::ModelSet;
use crate::runner::RunnerError;

/// How often the engine's epoch advances: the granularity of deadlines and
/// of a running guest's yields to the executor.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Guest stdout+stderr kept per call; the rest is dropped.
const GUEST_OUTPUT_CAP: usize = 16 * 1024;

/// Settings of the [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Use the pooling allocator if the machine allows it.
    pub pooling: bool,
    /// Instances that may exist at once (pool size).
    pub max_instances: u32,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { pooling: true, max_instances: 1000 }
    }
}

/// The engine, the linker with every host capability, and the compile cache.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: CompileCache,
    pooling: bool,
}

impl Runtime {
    /// Creates the engine; `cache_dir` holds precompiled components.
    pub fn new(options: &RuntimeOptions, cache_dir: &Path) -> Result<Runtime> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true).memory_init_cow(true);

        let (engine, pooling) = if options.pooling {
            let mut pooled = config.clone();
            pooled
                .allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(options.max_instances)));
            match Engine::new(&pooled) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        "the pooling allocator is unavailable (not enough virtual address space?); \
                         falling back to on-demand allocation, which instantiates more slowly"
                    );
                    (Engine::new(&config)?, false)
                }
            }
        } else {
            (Engine::new(&config)?, false)
        };
        start_epoch_ticker(&engine);

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Service::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());
        let cache = CompileCache::new(cache_dir.to_path_buf(), engine_key);
        Ok(Runtime { engine, linker: Arc::new(linker), cache, pooling })
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles (or loads the cached compilation of) a component file and
    /// links it. `digest` is the file's `sha256:` digest.
    pub fn load(&self, path: &Path, digest: &str) -> Result<(ServiceComponent, Loaded)> {
        let (component, loaded) = self.cache.load(&self.engine, path, digest)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("linking the component")?;
        let pre = ServicePre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export wasmbento:service/api")?;
        Ok((ServiceComponent { engine: self.engine.clone(), pre }, loaded))
    }
}

fn pool_config(max_instances: u32) -> PoolingAllocationConfig {
    let n = max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // A Rust component holds a few core instances, tables and memories.
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n);
    pool
}

/// Advances the epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasmbento-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// Per-call limits and context.
#[derive(Clone)]
pub struct CallOptions {
    /// When the call must have finished.
    pub deadline: Instant,
    /// Linear memory the instance may grow to, in bytes.
    pub memory_limit: usize,
    /// Where the guest's custom gauges go.
    pub gauges: Arc<crate::nn::CustomGauges>,
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallFailure {
    /// The service rejected the input (400).
    #[error("{0}")]
    BadInput(String),
    /// The service has no such API (404).
    #[error("unknown API {0:?}")]
    UnknownApi(String),
    /// The service reported an internal error (500).
    #[error("the service failed: {0}")]
    Internal(String),
    /// The instance trapped (500).
    #[error("the service trapped: {0}")]
    Trap(String),
    /// The instance tried to grow its memory past the limit (500).
    #[error("the service exceeded its memory limit of {limit_mib} MiB and was stopped")]
    MemoryLimit { limit_mib: u64 },
    /// A runner refused a model call: its queue was full or the call could
    /// not meet its latency objective (503).
    #[error("the model is overloaded: {0}")]
    Overloaded(String),
    /// A runner did not answer a model call within its timeout (504).
    #[error("the model did not answer in time: {0}")]
    RunnerTimeout(String),
    /// The deadline passed; the instance was interrupted (504).
    #[error("the service did not answer within its timeout ({0:.1?}) and was stopped")]
    Timeout(Duration),
    /// The host could not run the call (500).
    #[error("the host could not run the service: {0}")]
    Host(String),
}

/// One bento's component, linked and ready to instantiate.
#[derive(Clone)]
pub struct ServiceComponent {
    engine: Engine,
    pre: ServicePre<HostState>,
}

impl ServiceComponent {
    /// Runs one call in a fresh instance.
    pub async fn call(
        &self,
        models: Arc<ModelSet>,
        api: &str,
        input: &[u8],
        options: &CallOptions,
    ) -> Result<Vec<u8>, CallFailure> {
        let started = Instant::now();
        let (mut store, output) = self.new_store(models, options);
        let pre = &self.pre;
        let run = async {
            let service = pre.instantiate_async(&mut store).await?;
            service.wasmbento_service_api().call_call(&mut store, api, input).await
        };
        let outcome = tokio::time::timeout_at(options.deadline.into(), run).await;
        let guest_output = output.text();
        if !guest_output.is_empty() {
            tracing::debug!(api, output = %guest_output, "guest output");
        }
        // However the guest reported it, a refused model call is a 503 and
        // a model call that timed out a 504.
        if let (Some(refusal), Err(_) | Ok(Err(_)) | Ok(Ok(Err(_)))) =
            (store.data().runner_refusal.clone(), &outcome)
        {
            return Err(match refusal {
                RunnerError::Timeout(m) => CallFailure::RunnerTimeout(m),
                RunnerError::Overloaded(m) => CallFailure::Overloaded(m),
                other => CallFailure::Overloaded(other.to_string()),
            });
        }
        match outcome {
            Err(_) => Err(CallFailure::Timeout(started.elapsed())),
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(CallError::BadInput(m)))) => Err(CallFailure::BadInput(m)),
            Ok(Ok(Err(CallError::UnknownApi(m)))) => Err(CallFailure::UnknownApi(m)),
            Ok(Ok(Err(CallError::Internal(m)))) => Err(CallFailure::Internal(m)),
            Ok(Err(error)) => Err(classify(error, store.data(), started, &guest_output)),
        }
    }

    /// Asks the component for its APIs (used by `wasmbento build`).
    pub async fn describe(&self) -> Result<Vec<ApiSpec>> {
        let options = CallOptions {
            deadline: Instant::now() + Duration::from_secs(10),
            memory_limit: 256 << 20,
            gauges: Arc::default(),
        };
        let (mut store, _) = self.new_store(Arc::new(ModelSet::default()), &options);
        let service = self.pre.instantiate_async(&mut store).await?;
        let apis = service.wasmbento_service_api().call_describe(&mut store).await?;
        Ok(apis
            .into_iter()
            .map(|a| ApiSpec {
                name: a.name,
                doc: a.doc,
                input_schema: a.input_schema,
                output_schema: a.output_schema,
            })
            .collect())
    }

    fn new_store(&self, models: Arc<ModelSet>, options: &CallOptions) -> (Store<HostState>, GuestOutput) {
        let output = GuestOutput::default();
        let wasi = WasiCtxBuilder::new().stdout(output.clone()).stderr(output.clone()).build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { limit: options.memory_limit, hit: false },
            models,
            runner_refusal: None,
            gauges: Arc::clone(&options.gauges),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let deadline = options.deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yield every tick so a busy guest never holds an executor thread.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        (store, output)
    }
}

fn classify(error: wasmtime::Error, state: &HostState, started: Instant, guest_output: &str) -> CallFailure {
    if state.limiter.hit {
        return CallFailure::MemoryLimit { limit_mib: (state.limiter.limit >> 20) as u64 };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallFailure::Timeout(started.elapsed()),
        Some(trap) => {
            // A Rust guest's panic prints "thread ... panicked at FILE:\nMESSAGE\nnote: ...".
            let said: Vec<&str> = guest_output
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("note: run with"))
                .collect();
            let said = said.join(" ");
            let said = &said[said.floor_char_boundary(said.len().saturating_sub(500))..];
            if said.is_empty() {
                CallFailure::Trap(trap.to_string())
            } else {
                CallFailure::Trap(format!("{trap} (the guest printed: {said})"))
            }
        }
        None => CallFailure::Host(format!("{error:#}")),
    }
}

/// Everything one instance's host calls can reach.
pub struct HostState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    limiter: MemoryLimiter,
    /// The models this bento declared, by the names the guest uses.
    pub(crate) models: Arc<ModelSet>,
    /// Set when a runner refused a call (overloaded) or timed out.
    pub(crate) runner_refusal: Option<RunnerError>,
    /// The deployment's custom gauges.
    pub(crate) gauges: Arc<crate::nn::CustomGauges>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps linear memory per store and remembers whether the cap was hit, so
/// the failure can name the limit instead of the allocator's abort.
struct MemoryLimiter {
    limit: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Captures guest stdout/stderr up to [`GUEST_OUTPUT_CAP`] bytes and accepts
/// (discards) the rest, so a chatty guest never fails on a full pipe.
#[derive(Clone, Default)]
struct GuestOutput(Arc<Mutex<Vec<u8>>>);

impl GuestOutput {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut kept = self.0.lock().unwrap();
        let room = GUEST_OUTPUT_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..buf.len().min(room)]);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_falls_back_to_on_demand_when_the_pool_cannot_be_reserved() {
        let cache = tempfile::tempdir().unwrap();
        // Far more slots than any address space holds: the reservation fails.
        let options = RuntimeOptions { pooling: true, max_instances: 10_000_000 };
        let runtime = Runtime::new(&options, cache.path()).unwrap();
        assert!(!runtime.pooling());

        let options = RuntimeOptions { pooling: false, max_instances: 10 };
        assert!(!Runtime::new(&options, cache.path()).unwrap().pooling());
    }
}
