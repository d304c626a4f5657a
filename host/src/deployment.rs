//! Deployments: a bento being served under a name, with its configuration.
//!
//! A deployment owns its linked component, its traffic settings and the
//! runners of the models its bento declares. The component is compiled (or
//! loaded from the compile cache) before serving starts; models load in the
//! background and the deployment is *ready* once all of them are in memory.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::compile_cache::Loaded;
use crate::devices::{Device, Placement, Resources};
use crate::instance::{CallFailure, CallOptions, Runtime, ServiceComponent};
use crate::manifest::{ApiSpec, BentoManifest, RunnerBatching, RunnerConfig, RunnerTraffic, Traffic};
use crate::nn::ModelSet;
use crate::runner::{ModelCache, Runner};
use crate::scale::ScalingPolicy;
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
    /// Overrides the bento's `[resources]`.
    pub resources: Option<Resources>,
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
        Ok(DeploymentSpec { bento: bento.parse()?, name, traffic: None, resources: None })
    }
}

/// A bento being served.
pub struct Deployment {
    name: String,
    bento: BentoManifest,
    /// `None` at zero replicas: the compiled component is dropped from
    /// memory and reloaded from the compile cache on wake.
    component: RwLock<Option<ServiceComponent>>,
    runtime: Runtime,
    component_path: std::path::PathBuf,
    loaded: Loaded,
    replicas: watch::Sender<u32>,
    /// `wasmbento_replicas{kind="current"}`, set before watchers hear of a change.
    replicas_gauge: std::sync::OnceLock<prometheus_client::metrics::gauge::Gauge>,
    store: Store,
    config: RwLock<DeploymentConfig>,
    gate: Arc<Gate>,
    readiness: watch::Sender<Readiness>,
    events: Mutex<VecDeque<Event>>,
    gauges: Arc<crate::nn::CustomGauges>,
    /// The runner of each model, by the name the guest uses; set once the
    /// models are loaded.
    runners: std::sync::OnceLock<BTreeMap<String, Arc<Runner>>>,
}

/// A deployment's own configuration: the bento's defaults as overridden
/// through the admin API. Persisted in the store, so it survives restarts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The bento, `name:version`.
    pub bento: String,
    pub traffic: Traffic,
    pub scaling: ScalingPolicy,
    /// Each model's runner, by the name the guest uses.
    #[serde(default)]
    pub runners: BTreeMap<String, RunnerConfig>,
    /// What each runner replica asks for; the bento's `[resources]` unless
    /// the deployment overrides them.
    #[serde(default)]
    pub resources: Resources,
    /// Created through the admin API: deployed again when the host
    /// restarts, until undeployed (deployments named on the command line
    /// are the command line's to repeat).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restore: bool,
}

/// Something that happened to a deployment, for `GET .../events`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// RFC 3339.
    pub at: String,
    pub kind: &'static str,
    pub message: String,
}

/// Events kept per deployment.
const EVENTS_KEPT: usize = 256;

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
        // Precedence: an explicit override, then what the admin API stored,
        // then the bento's defaults.
        let stored_config = store.deployment_config(&name)?.filter(|c| c.bento == bento.tag().to_string());
        let mut config = stored_config.unwrap_or_else(|| DeploymentConfig {
            bento: bento.tag().to_string(),
            traffic: bento.traffic.clone(),
            scaling: bento.scaling.clone(),
            runners: BTreeMap::new(),
            resources: bento.resources.clone(),
            restore: false,
        });
        // Every model has a runner configuration, and only models do.
        config.runners.retain(|alias, _| bento.models.contains_key(alias));
        for alias in bento.models.keys() {
            if !config.runners.contains_key(alias) {
                let defaults = bento.runners.get(alias).cloned().unwrap_or_default();
                config.runners.insert(alias.clone(), defaults);
            }
        }
        if let Some(traffic) = &spec.traffic {
            config.traffic = traffic.clone();
        }
        config.traffic.validate().map_err(anyhow::Error::msg)?;
        if let Some(resources) = &spec.resources {
            resources.validate().map_err(anyhow::Error::msg)?;
            config.resources = resources.clone();
        }
        let gate = Gate::new(config.traffic.max_concurrency, config.traffic.queue.clone());
        gate.set_max_pending(config.scaling.max_pending);
        let deployment = Deployment {
            name,
            bento,
            component: RwLock::new(Some(component)),
            runtime: runtime.clone(),
            component_path: stored.component_path.clone(),
            loaded,
            replicas: watch::Sender::new(1),
            replicas_gauge: std::sync::OnceLock::new(),
            store: store.clone(),
            config: RwLock::new(config),
            gate,
            readiness: watch::Sender::new(Readiness::Loading),
            events: Mutex::new(VecDeque::new()),
            gauges: Arc::default(),
            runners: std::sync::OnceLock::new(),
        };
        Ok((deployment, models))
    }

    /// Makes the runner of each of the bento's models and gives it its first
    /// replica (loading the weights, or sharing them with another deployment
    /// that has them); the deployment is ready afterwards.
    pub async fn load_models(
        &self,
        cache: &Arc<ModelCache>,
        models: Vec<(String, StoredModel)>,
    ) -> Result<()> {
        let configs = self.config().runners;
        let mut runners = BTreeMap::new();
        for (alias, model) in models {
            let tag = model.tag();
            let device = match self.place_runner(&alias, &model) {
                Ok(device) => device,
                Err(why) => {
                    let message = format!("placing the runner of model {tag}: {why}");
                    self.warn("placement", message.clone());
                    self.readiness.send_replace(Readiness::Failed(message.clone()));
                    anyhow::bail!(message);
                }
            };
            let config = configs.get(&alias).cloned().unwrap_or_default();
            let made = async {
                let runner =
                    Runner::new(&alias, model, Arc::clone(cache), device, &config.traffic, &config.batching)?;
                runner.gate().set_max_pending(config.scaling.max_pending);
                runner.set_replicas(1).await?;
                anyhow::Ok(runner)
            };
            match made.await {
                Ok(runner) => runners.insert(alias, runner),
                Err(e) => {
                    let message = format!("loading model {tag}: {e:#}");
                    self.readiness.send_replace(Readiness::Failed(message));
                    return Err(e);
                }
            };
        }
        let _ = self.runners.set(runners.clone());
        self.readiness.send_replace(Readiness::Ready(Arc::new(ModelSet::new(runners))));
        tracing::info!(deployment = %self.name, "deployment ready");
        Ok(())
    }

    /// Decides where a runner runs from the deployment's resources and
    /// records it: a GPU only where the CUDA backend can run (driver,
    /// cuBLAS and NVRTC present, kernels compiled), else the CPU with a
    /// warning, or a refusal when the GPU is required.
    fn place_runner(&self, name: &str, model: &StoredModel) -> Result<Device, String> {
        let resources = self.config().resources;
        if resources.gpu == 0 {
            return Ok(Device::Cpu);
        }
        let weights: u64 = model.info.files.iter().map(|f| f.size).sum();
        let usable = crate::runner::cuda::usable_gpus();
        let placement =
            crate::devices::place(&resources, usable.as_deref().map_err(String::as_str), weights)?;
        let message = match &placement {
            Placement::Gpu { ordinal } => format!("runner {name}: on GPU {ordinal}"),
            Placement::Cpu { warning } => {
                format!("runner {name}: {}", warning.as_deref().unwrap_or("on the CPU"))
            }
        };
        if matches!(placement, Placement::Cpu { warning: Some(_) }) {
            self.warn("placement", message);
        } else {
            self.record("placement", message);
        }
        Ok(placement.device())
    }

    /// The runners, by the name the guest uses (empty until loaded).
    pub fn runners(&self) -> BTreeMap<String, Arc<Runner>> {
        self.runners.get().cloned().unwrap_or_default()
    }

    /// One runner by the name the guest uses.
    pub fn runner(&self, name: &str) -> Option<Arc<Runner>> {
        self.runners.get().and_then(|r| r.get(name)).cloned()
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

    /// The custom gauges the service reported.
    pub fn gauges(&self) -> &crate::nn::CustomGauges {
        &self.gauges
    }

    /// The linked component, reloaded from the compile cache if it was
    /// dropped at zero replicas.
    fn component(&self) -> Result<ServiceComponent> {
        if let Some(c) = self.component.read().unwrap().as_ref() {
            return Ok(c.clone());
        }
        let mut slot = self.component.write().unwrap();
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let (component, _) = self.runtime.load(&self.component_path, &self.bento.component.digest)?;
        *slot = Some(component.clone());
        Ok(component)
    }

    /// Whether the compiled component is in memory.
    pub fn component_loaded(&self) -> bool {
        self.component.read().unwrap().is_some()
    }

    /// Replicas of the API service now.
    pub fn replicas(&self) -> u32 {
        *self.replicas.borrow()
    }

    /// Watches the replica count.
    pub fn watch_replicas(&self) -> watch::Receiver<u32> {
        self.replicas.subscribe()
    }

    /// Applies a replica count: admission capacity follows at once (fewer
    /// replicas drain: running calls finish); at zero the compiled component
    /// is dropped, and it is reloaded (from the cache) when waking. `reason`
    /// is recorded as a `scale` event before anyone watching hears of it.
    pub fn set_replicas(&self, replicas: u32, reason: &str) -> Result<()> {
        if replicas > 0 {
            self.component()?;
        }
        self.gate.set_replicas(replicas as usize);
        if replicas == 0 {
            *self.component.write().unwrap() = None;
        }
        if let Some(gauge) = self.replicas_gauge.get() {
            gauge.set(replicas as i64);
        }
        self.record("scale", reason.to_string());
        self.replicas.send_replace(replicas);
        Ok(())
    }

    /// Reports the replica count into `gauge` from now on.
    pub fn report_replicas(&self, gauge: prometheus_client::metrics::gauge::Gauge) {
        gauge.set(self.replicas() as i64);
        let _ = self.replicas_gauge.set(gauge);
    }

    /// The current configuration.
    pub fn config(&self) -> DeploymentConfig {
        self.config.read().unwrap().clone()
    }

    /// Keeps this deployment across restarts (see [`DeploymentConfig::restore`]).
    pub fn keep_across_restarts(&self) -> Result<()> {
        let config = {
            let mut config = self.config.write().unwrap();
            config.restore = true;
            config.clone()
        };
        self.store.save_deployment_config(&self.name, &config)
    }

    /// Replaces the traffic settings at once (running calls keep theirs) and
    /// persists them.
    pub fn set_traffic(&self, traffic: Traffic) -> Result<()> {
        traffic.validate().map_err(anyhow::Error::msg)?;
        let config = {
            let mut config = self.config.write().unwrap();
            config.traffic = traffic.clone();
            config.clone()
        };
        self.gate.reconfigure(traffic.max_concurrency, traffic.queue.clone());
        self.store.save_deployment_config(&self.name, &config)?;
        self.record("traffic", format!("traffic replaced: {}", serde_json::to_string(&traffic)?));
        Ok(())
    }

    /// Replaces the scaling policy and persists it.
    pub fn set_scaling(&self, scaling: ScalingPolicy) -> Result<()> {
        scaling.validate()?;
        let config = {
            let mut config = self.config.write().unwrap();
            config.scaling = scaling.clone();
            config.clone()
        };
        self.gate.set_max_pending(scaling.max_pending);
        self.store.save_deployment_config(&self.name, &config)?;
        self.record("scaling", format!("scaling policy replaced: {}", serde_json::to_string(&scaling)?));
        Ok(())
    }

    /// Replaces a runner's traffic settings at once and persists them.
    pub fn set_runner_traffic(&self, name: &str, traffic: RunnerTraffic) -> Result<()> {
        traffic.validate().map_err(anyhow::Error::msg)?;
        let runner = self.runner(name).with_context(|| format!("no runner named {name:?}"))?;
        self.update_runner(name, |c| c.traffic = traffic.clone())?;
        runner.set_traffic(&traffic);
        self.record(
            "traffic",
            format!("runner {name} traffic replaced: {}", serde_json::to_string(&traffic)?),
        );
        Ok(())
    }

    /// Replaces a runner's batching settings (from its next batch on) and
    /// persists them.
    pub fn set_runner_batching(&self, name: &str, batching: RunnerBatching) -> Result<()> {
        batching.validate().map_err(anyhow::Error::msg)?;
        let runner = self.runner(name).with_context(|| format!("no runner named {name:?}"))?;
        self.update_runner(name, |c| c.batching = batching.clone())?;
        runner.set_batching(&batching);
        let json = serde_json::to_string(&batching)?;
        self.record("batching", format!("runner {name} batching replaced: {json}"));
        Ok(())
    }

    /// Replaces a runner's scaling policy and persists it.
    pub fn set_runner_scaling(&self, name: &str, scaling: ScalingPolicy) -> Result<()> {
        scaling.validate()?;
        RunnerConfig::check_runner_replicas(&scaling).map_err(anyhow::Error::msg)?;
        let runner = self.runner(name).with_context(|| format!("no runner named {name:?}"))?;
        self.update_runner(name, |c| c.scaling = scaling.clone())?;
        runner.gate().set_max_pending(scaling.max_pending);
        let json = serde_json::to_string(&scaling)?;
        self.record("scaling", format!("runner {name} scaling policy replaced: {json}"));
        Ok(())
    }

    fn update_runner(&self, name: &str, change: impl FnOnce(&mut RunnerConfig)) -> Result<()> {
        let config = {
            let mut config = self.config.write().unwrap();
            change(config.runners.entry(name.to_string()).or_default());
            config.clone()
        };
        self.store.save_deployment_config(&self.name, &config)
    }

    /// Appends an event (and logs it).
    pub fn record(&self, kind: &'static str, message: String) {
        tracing::info!(deployment = %self.name, kind, "{message}");
        self.push_event(kind, message);
    }

    /// Appends an event that deserves attention (and logs it as a warning).
    pub fn warn(&self, kind: &'static str, message: String) {
        tracing::warn!(deployment = %self.name, kind, "{message}");
        self.push_event(kind, message);
    }

    fn push_event(&self, kind: &'static str, message: String) {
        let mut events = self.events.lock().unwrap();
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(Event { at: crate::store::rfc3339(std::time::SystemTime::now()), kind, message });
    }

    /// Recent events, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().iter().cloned().collect()
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
        let traffic = self.config.read().unwrap().traffic.clone();
        // Validated to (0, a day]; the fallback only guards against a bug.
        let timeout = Duration::try_from_secs_f64(traffic.timeout).unwrap_or(Duration::from_secs(60));
        let deadline = started + timeout;
        // Waiting for a slot counts against the same deadline. The permit
        // is dropped only after the call, whose future owns the instance.
        let _permit = self.gate.admit(deadline).await?;
        let options = CallOptions {
            deadline,
            memory_limit: (traffic.memory_limit_mib as usize) << 20,
            gauges: Arc::clone(&self.gauges),
        };
        let component = self.component().map_err(|e| CallFailure::Host(format!("{e:#}")))?;
        component.call(models, api, input, &options).await.map_err(|failure| match failure {
            // The deadline counts from the request's arrival, queueing included.
            CallFailure::Timeout(_) => DeploymentError::Call(CallFailure::Timeout(timeout)),
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
