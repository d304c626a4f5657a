//! The deployments a host serves: deployed at start or through the admin
//! API, undeployed through it.
//!
//! Deploying prepares the bento (component linked or loaded from the compile
//! cache), starts the API service's autoscaler, and loads the models in the
//! background; each runner gets its autoscaler once its first replica is up.
//! Undeploying removes the deployment from routing at once and stops its
//! autoscalers; calls already running finish (they hold the deployment),
//! and its stored configuration is deleted.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::task::JoinHandle;

use crate::deployment::{Deployment, DeploymentSpec};
use crate::instance::Runtime;
use crate::runner::ModelCache;
use crate::scale::controller::{self, Component, ReplicaGauges, ReplicaLabels};
use crate::store::Store;

/// Why a deployment could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Another deployment has the name (409).
    #[error("a deployment named {0:?} exists already; undeploy it first or choose another name")]
    Exists(String),
    /// The name is taken by a route (400).
    #[error("the deployment name \"admin\" is reserved for the admin API; choose another name")]
    Reserved,
    /// The bento, its models or its component could not be prepared.
    #[error(transparent)]
    Prepare(#[from] anyhow::Error),
}

struct Served {
    deployment: Arc<Deployment>,
    /// The API service's autoscaler, and the task that loads the models and
    /// then runs the runners' autoscalers.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Every deployment of this host, by name.
pub struct Fleet {
    served: RwLock<BTreeMap<String, Served>>,
    store: Store,
    runtime: Runtime,
    models: Arc<ModelCache>,
    gauges: ReplicaGauges,
    autoscale_interval: Duration,
}

impl Fleet {
    pub fn new(
        store: Store,
        runtime: Runtime,
        models: Arc<ModelCache>,
        gauges: ReplicaGauges,
        autoscale_interval: Duration,
    ) -> Fleet {
        Fleet { served: RwLock::default(), store, runtime, models, gauges, autoscale_interval }
    }

    /// Prepares and starts serving a deployment; its models load in the
    /// background (see [`Deployment::wait_ready`]).
    pub async fn deploy(&self, spec: &DeploymentSpec) -> Result<Arc<Deployment>, DeployError> {
        let name = spec.name.clone().unwrap_or_else(|| spec.bento.name.clone());
        if name == "admin" {
            return Err(DeployError::Reserved);
        }
        if self.get(&name).is_some() {
            return Err(DeployError::Exists(name));
        }
        let (store, runtime, spec2) = (self.store.clone(), self.runtime.clone(), spec.clone());
        let (deployment, stored) =
            tokio::task::spawn_blocking(move || Deployment::prepare(&store, &runtime, &spec2))
                .await
                .map_err(anyhow::Error::from)??;
        let deployment = Arc::new(deployment);
        let mut served = self.served.write().unwrap();
        // Checked again: another deploy of the name may have won meanwhile.
        if served.contains_key(deployment.name()) {
            return Err(DeployError::Exists(deployment.name().to_string()));
        }
        let (interval, gauges) = (self.autoscale_interval, self.gauges.clone());
        let api =
            tokio::spawn(controller::run(Component::Api(Arc::clone(&deployment)), interval, gauges.clone()));
        let (cache, d) = (Arc::clone(&self.models), Arc::clone(&deployment));
        let runners = tokio::spawn(async move {
            if let Err(e) = d.load_models(&cache, stored).await {
                tracing::error!(deployment = d.name(), error = %format!("{e:#}"), "loading models failed; the deployment stays unready");
                return;
            }
            // Aborting this task drops the set, which stops the runners' autoscalers.
            let mut autoscalers = tokio::task::JoinSet::new();
            for runner in d.runners().into_values() {
                let component = Component::Runner(Arc::clone(&d), runner);
                autoscalers.spawn(controller::run(component, interval, gauges.clone()));
            }
            while autoscalers.join_next().await.is_some() {}
        });
        let entry = Served { deployment: Arc::clone(&deployment), tasks: vec![api, runners] };
        served.insert(deployment.name().to_string(), entry);
        Ok(deployment)
    }

    /// Stops routing to a deployment and stops its autoscalers; running
    /// calls finish. Its stored configuration is deleted.
    pub fn undeploy(&self, name: &str) -> Result<Option<Arc<Deployment>>> {
        let Some(served) = self.served.write().unwrap().remove(name) else { return Ok(None) };
        self.store.delete_deployment_config(name)?;
        // Its replica gauges go with it.
        let components = std::iter::once("api".to_string())
            .chain(served.deployment.runners().into_keys().map(|r| format!("runner:{r}")));
        for component in components {
            for kind in ["current", "desired"] {
                let labels = ReplicaLabels {
                    deployment: name.to_string(),
                    component: component.clone(),
                    kind: kind.into(),
                };
                self.gauges.remove(&labels);
            }
        }
        served.deployment.record("undeployed", "removed from routing; running calls finish".into());
        Ok(Some(Arc::clone(&served.deployment)))
    }

    /// The store deployments come from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn get(&self, name: &str) -> Option<Arc<Deployment>> {
        self.served.read().unwrap().get(name).map(|s| Arc::clone(&s.deployment))
    }

    /// Every deployment, by name.
    pub fn all(&self) -> Vec<Arc<Deployment>> {
        self.served.read().unwrap().values().map(|s| Arc::clone(&s.deployment)).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.served.read().unwrap().keys().cloned().collect()
    }

    /// Stops every autoscaler (at shutdown).
    pub fn stop(&self) {
        for served in self.served.read().unwrap().values() {
            for task in &served.tasks {
                task.abort();
            }
        }
    }
}

/// Deploys every spec, refusing two deployments of one name.
pub async fn deploy_all(fleet: &Fleet, specs: &[DeploymentSpec]) -> Result<()> {
    for spec in specs {
        match fleet.deploy(spec).await {
            Ok(_) => {}
            Err(DeployError::Exists(name)) => {
                bail!("two deployments are named {name:?}; give one another name with name=bento")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deploys again what the admin API deployed before the host stopped (and
/// was not undeployed), unless the command line serves the name already. A
/// deployment that can no longer be prepared (its bento deleted) is logged
/// and skipped: the rest of the host still starts.
pub async fn restore(fleet: &Fleet) -> Result<()> {
    for (name, config) in fleet.store().deployment_configs()? {
        if !config.restore || fleet.get(&name).is_some() {
            continue;
        }
        let bento = match config.bento.parse() {
            Ok(bento) => bento,
            Err(e) => {
                tracing::error!(deployment = %name, "not restored: bento {:?}: {e}", config.bento);
                continue;
            }
        };
        let spec = DeploymentSpec { bento, name: Some(name.clone()), traffic: None, resources: None };
        match fleet.deploy(&spec).await {
            Ok(_) => tracing::info!(deployment = %name, bento = %config.bento, "restored"),
            Err(e) => tracing::error!(deployment = %name, error = %format!("{e:#}"), "not restored"),
        }
    }
    Ok(())
}
