//! Deployments: a bento being served under a name, with its configuration.
//!
//! A deployment owns its linked component, its traffic settings and the
//! runners of the models its bento declares. The component is compiled (or
//! loaded from the compile cache) before serving starts; models load in the
//! background and the deployment is *ready* once all of them are in memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::compile_cache::Loaded;
use crate::instance::{CallFailure, CallOptions, Runtime, ServiceComponent};
use crate::manifest::{ApiSpec, BentoManifest, Traffic};
use crate::nn::ModelSet;
use crate::runner::Runners;
use crate::store::{Store, StoredModel};
use crate::tag::Tag;
use crate::traffic::{Gate, Rejection};

/// What to serve: a bento, optionally under another name.
#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    pub bento: Tag,
    /// Defaults to the bento's name.
    pub name: Option<String>,
    /// Overrides the bento's `traffic` defaults.
    pub traffic: Option<Traffic>,
}

impl std::str::FromStr for DeploymentSpec {
    type Err = anyhow::Error;

    /// `bento[:version]` or `name=bento[:version]`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, bento) = match s.split_once('=') {
            Some((name, bento)) => {
                crate::tag::check_part(s, "deployment name", name)?;
                (Some(name.to_string()), bento)
            }
            None => (None, s),
        };
        Ok(DeploymentSpec { bento: bento.parse()?, name, traffic: None })
    }
}

/// A bento being served.
pub struct Deployment {
    name: String,
    bento: BentoManifest,
    component: ServiceComponent,
    loaded: Loaded,
    traffic: Traffic,
    gate: Arc<Gate>,
    readiness: watch::Sender<Readiness>,
}

/// Where a deployment's models stand.
#[derive(Clone)]
pub enum Readiness {
    Loading,
    Ready(Arc<ModelSet>),
    Failed(String),
}

impl Deployment {
    /// Resolves the bento and its models in the store and links the
    /// component. Models are not loaded yet: see [`Deployment::load_models`].
    pub fn prepare(
        store: &Store,
        runtime: &Runtime,
        spec: &DeploymentSpec,
    ) -> Result<(Deployment, Vec<(String, StoredModel)>)> {
        let stored = store.bento(&spec.bento)?;
        let bento = stored.manifest;
        let name = spec.name.clone().unwrap_or_else(|| bento.name.clone());
        let mut models = Vec::new();
        for (alias, tag) in &bento.models {
            let tag: Tag = tag.parse().with_context(|| format!("bento {}: models.{alias}", bento.tag()))?;
            let model =
                store.model(&tag).with_context(|| format!("bento {} needs model {tag}", bento.tag()))?;
            models.push((alias.clone(), model));
        }
        let (component, loaded) = runtime
            .load(&stored.component_path, &bento.component.digest)
            .with_context(|| format!("loading the component of bento {}", bento.tag()))?;
        tracing::info!(deployment = %name, bento = %bento.tag(), ?loaded, "deployment prepared");
        let traffic = spec.traffic.clone().unwrap_or_else(|| bento.traffic.clone());
        traffic.validate().map_err(anyhow::Error::msg)?;
        let gate = Gate::new(traffic.max_concurrency, traffic.queue.clone());
        let deployment = Deployment {
            name,
            bento,
            component,
            loaded,
            traffic,
            gate,
            readiness: watch::Sender::new(Readiness::Loading),
        };
        Ok((deployment, models))
    }

    /// Loads (or reuses) the runners of the bento's models; the deployment is
    /// ready afterwards.
    pub async fn load_models(&self, runners: &Runners, models: Vec<(String, StoredModel)>) -> Result<()> {
        let mut set = BTreeMap::new();
        for (alias, model) in models {
            match runners.get_or_load(&model).await {
                Ok(runner) => set.insert(alias, runner),
                Err(e) => {
                    let message = format!("loading model {}: {e:#}", model.tag());
                    self.readiness.send_replace(Readiness::Failed(message));
                    return Err(e);
                }
            };
        }
        self.readiness.send_replace(Readiness::Ready(Arc::new(ModelSet::new(set))));
        tracing::info!(deployment = %self.name, "deployment ready");
        Ok(())
    }

    /// Waits until the models are loaded or failed to load.
    pub async fn wait_ready(&self) -> Result<()> {
        let mut rx = self.readiness.subscribe();
        let state = rx.wait_for(|r| !matches!(r, Readiness::Loading)).await?.clone();
        match state {
            Readiness::Failed(message) => anyhow::bail!("deployment {}: {message}", self.name),
            _ => Ok(()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn bento(&self) -> &BentoManifest {
        &self.bento
    }

    /// Whether the component was compiled at start or loaded from the cache.
    pub fn loaded(&self) -> Loaded {
        self.loaded
    }

    pub fn is_ready(&self) -> bool {
        matches!(*self.readiness.borrow(), Readiness::Ready(_))
    }

    /// Why the deployment cannot answer yet, if it cannot.
    pub fn not_ready_reason(&self) -> Option<String> {
        match &*self.readiness.borrow() {
            Readiness::Ready(_) => None,
            Readiness::Loading => Some("loading models".into()),
            Readiness::Failed(message) => Some(message.clone()),
        }
    }

    /// The API service's admission gate (running and waiting requests).
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    pub fn api(&self, name: &str) -> Option<&ApiSpec> {
        self.bento.apis.iter().find(|a| a.name == name)
    }

    /// Calls an API in a fresh instance, within the deployment's timeout and
    /// concurrency limit.
    pub async fn call(&self, api: &str, input: &[u8]) -> Result<Vec<u8>, DeploymentError> {
        let models = match &*self.readiness.borrow() {
            Readiness::Ready(models) => Arc::clone(models),
            Readiness::Loading => {
                return Err(DeploymentError::NotReady("its models are loading".into()));
            }
            Readiness::Failed(message) => return Err(DeploymentError::NotReady(message.clone())),
        };
        let started = Instant::now();
        let timeout = Duration::from_secs_f64(self.traffic.timeout);
        let deadline = started + timeout;
        // Waiting for a slot counts against the same deadline. The permit
        // is dropped only after the call, whose future owns the instance.
        let _permit = self.gate.admit(deadline).await?;
        let options = CallOptions { deadline, memory_limit: (self.traffic.memory_limit_mib as usize) << 20 };
        self.component.call(models, api, input, &options).await.map_err(|failure| match failure {
            // The deadline counts from the request's arrival, queueing included.
            CallFailure::Timeout(_) => DeploymentError::Call(CallFailure::Timeout(started.elapsed())),
            other => DeploymentError::Call(other),
        })
    }
}

/// Why a deployment could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("the deployment is not ready: {0}")]
    NotReady(String),
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Call(#[from] CallFailure),
}
