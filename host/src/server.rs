//! `wasmbento serve`: prepare deployments, load their models, serve HTTP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::deployment::{Deployment, DeploymentSpec};
use crate::http::{AppState, router};
use crate::instance::{Runtime, RuntimeOptions};
use crate::runner::ModelCache;
use crate::scale::controller::Component;
use crate::store::Store;

/// Default largest request body: 4 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub deployments: Vec<DeploymentSpec>,
    pub addr: SocketAddr,
    pub max_request_bytes: usize,
    pub runtime: RuntimeOptions,
    /// Items per forward pass at most (1 turns batching off).
    pub max_batch_size: usize,
    /// A runner's latency objective per call (BentoML's `max_latency_ms`).
    pub max_latency: Option<std::time::Duration>,
    /// How often each deployment's autoscaler decides.
    pub autoscale_interval: std::time::Duration,
    /// Bearer token of the admin API; one is generated (and logged once)
    /// when none is given.
    pub admin_token: Option<String>,
}

/// A server that is accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub runtime: Runtime,
    /// The loaded models, shared by every deployment.
    pub models: Arc<ModelCache>,
    controllers: Vec<JoinHandle<()>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Prepares every deployment, binds the address and starts serving. Model
/// loading continues in the background; `/readyz` says when it is done.
pub async fn start(store: &Store, options: ServeOptions) -> Result<RunningServer> {
    if options.deployments.is_empty() {
        bail!("nothing to serve: name at least one bento");
    }
    let runtime = Runtime::new(&options.runtime, &store.compiled_cache_dir())?;
    tracing::info!(pooling = runtime.pooling(), "engine ready");
    let metrics = crate::metrics::Metrics::default();
    let batching =
        crate::runner::Batching { max_batch_size: options.max_batch_size, max_latency: options.max_latency };
    let models = Arc::new(ModelCache::new(metrics.batch_size.clone(), batching));

    let mut deployments = BTreeMap::new();
    let mut pending = Vec::new();
    for spec in &options.deployments {
        let (store, runtime, spec2) = (store.clone(), runtime.clone(), spec.clone());
        let (deployment, models) =
            tokio::task::spawn_blocking(move || Deployment::prepare(&store, &runtime, &spec2)).await??;
        let deployment = Arc::new(deployment);
        if deployment.name() == "admin" {
            bail!("\"admin\" is reserved for the admin API; serve the bento under another name (name=bento)");
        }
        if deployments.insert(deployment.name().to_string(), Arc::clone(&deployment)).is_some() {
            bail!("two deployments are named {:?}; give one another name with name=bento", deployment.name());
        }
        pending.push((deployment, models));
    }
    let replica_gauges = metrics.replicas.clone();
    let mut controllers = Vec::new();
    for (deployment, stored) in pending {
        let (cache, gauges) = (Arc::clone(&models), replica_gauges.clone());
        let interval = options.autoscale_interval;
        controllers.push(tokio::spawn(crate::scale::controller::run(
            Component::Api(Arc::clone(&deployment)),
            interval,
            gauges.clone(),
        )));
        // Runners get their controllers once their first replica is up;
        // aborting this task stops them too.
        controllers.push(tokio::spawn(async move {
            if let Err(e) = deployment.load_models(&cache, stored).await {
                tracing::error!(deployment = deployment.name(), error = %format!("{e:#}"), "loading models failed; the deployment stays unready");
                return;
            }
            let mut runners = tokio::task::JoinSet::new();
            for runner in deployment.runners().into_values() {
                let component = Component::Runner(Arc::clone(&deployment), runner);
                runners.spawn(crate::scale::controller::run(component, interval, gauges.clone()));
            }
            while runners.join_next().await.is_some() {}
        }));
    }

    let admin_token = match options.admin_token {
        Some(token) if !token.is_empty() => token,
        _ => {
            let token = random_token()?;
            tracing::warn!("no admin token configured; generated one for this run: {token}");
            token
        }
    };
    let state = Arc::new(AppState::new(deployments, metrics, options.max_request_bytes, admin_token));
    let listener =
        TcpListener::bind(options.addr).await.with_context(|| format!("binding {}", options.addr))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = router(Arc::clone(&state));
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    Ok(RunningServer { addr, state, runtime, models, controllers, shutdown: Some(tx), task })
}

impl RunningServer {
    /// Waits until every deployment is ready (or one failed to load).
    pub async fn wait_ready(&self) -> Result<()> {
        for deployment in self.state.deployments.values() {
            deployment.wait_ready().await?;
        }
        Ok(())
    }

    /// Stops accepting, finishes in-flight requests and returns.
    pub async fn shutdown(mut self) -> Result<()> {
        for c in &self.controllers {
            c.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await??;
        Ok(())
    }
}

/// 32 random bytes from the OS, as hex.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
        .context("reading /dev/urandom for an admin token")?;
    Ok(hex::encode(bytes))
}
