//! `wasmbento serve`: prepare deployments, load their models, serve HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::deployment::DeploymentSpec;
use crate::http::{AppState, router};
use crate::instance::{Runtime, RuntimeOptions};
use crate::runner::ModelCache;
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
    /// Bearer token the data-plane APIs require; `None`: they are open.
    pub api_token: Option<String>,
}

/// A server that is accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub runtime: Runtime,
    /// The loaded models, shared by every deployment.
    pub models: Arc<ModelCache>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Prepares every deployment, binds the address and starts serving. Model
/// loading continues in the background; `/readyz` says when it is done.
pub async fn start(store: &Store, options: ServeOptions) -> Result<RunningServer> {
    let runtime = Runtime::new(&options.runtime, &store.compiled_cache_dir())?;
    tracing::info!(pooling = runtime.pooling(), "engine ready");
    let metrics = crate::metrics::Metrics::default();
    let batching =
        crate::runner::Batching { max_batch_size: options.max_batch_size, max_latency: options.max_latency };
    let models =
        Arc::new(ModelCache::new(metrics.batch_size.clone(), metrics.device_weights.clone(), batching));

    let fleet = crate::fleet::Fleet::new(
        store.clone(),
        runtime.clone(),
        Arc::clone(&models),
        metrics.replicas.clone(),
        options.autoscale_interval,
    );
    crate::fleet::deploy_all(&fleet, &options.deployments).await?;
    crate::fleet::restore(&fleet).await?;
    if fleet.names().is_empty() {
        tracing::warn!("no bento named: serving none until one is deployed through the admin API");
    }

    let admin_token = match options.admin_token {
        Some(token) if !token.is_empty() => token,
        _ => kept_admin_token(store)?,
    };
    let state =
        Arc::new(AppState::new(fleet, metrics, options.max_request_bytes, admin_token, options.api_token));
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
    Ok(RunningServer { addr, state, runtime, models, shutdown: Some(tx), task })
}

impl RunningServer {
    /// Waits until every deployment is ready (or one failed to load).
    pub async fn wait_ready(&self) -> Result<()> {
        for deployment in self.state.deployments.all() {
            deployment.wait_ready().await?;
        }
        Ok(())
    }

    /// Stops accepting, finishes in-flight requests and returns.
    pub async fn shutdown(mut self) -> Result<()> {
        self.state.deployments.stop();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await??;
        Ok(())
    }
}

/// 32 random bytes from the OS, as hex.
/// The admin token kept in `$WASMBENTO_HOME/admin-token`: made and logged
/// once, on the first start without a configured token, so that restarts
/// keep the token clients hold. Only the owner may read the file.
fn kept_admin_token(store: &Store) -> Result<String> {
    let path = store.root().join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(kept) if !kept.trim().is_empty() => return Ok(kept.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = random_token()?;
    let mut file = tempfile::NamedTempFile::new_in(store.root())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(&path).map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!("no admin token configured; generated one, kept in {}: {token}", path.display());
    Ok(token)
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
        .context("reading /dev/urandom for an admin token")?;
    Ok(hex::encode(bytes))
}
