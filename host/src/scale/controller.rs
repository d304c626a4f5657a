//! Drives a deployment's API-service replicas with its autoscaler.
//!
//! Every tick (and at once when a request starts waiting, so a component at
//! zero wakes without waiting for the tick) the controller observes the
//! deployment's admission gate (requests running and waiting, the request
//! rate), asks the [`Autoscaler`] for a replica count and applies it. An
//! API-service replica is admission capacity: `max_concurrency` instances
//! at once. Scaling down only lowers capacity, so running calls finish
//! (drain) and nothing accepted is dropped; at zero the compiled component
//! is dropped from memory, and requests arriving then wait in the gate's
//! queue (the cold-start buffer, bounded by its length and their deadlines)
//! and are released no faster than the new capacity admits.
//!
//! Each change is an event with its reason (admin API, logs) and the
//! desired and current counts are Prometheus gauges.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{Autoscaler, Metric, Observation};
use crate::deployment::Deployment;

/// Gauges of replicas by deployment, component and kind (`current`, `desired`).
pub type ReplicaGauges = Family<ReplicaLabels, Gauge>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReplicaLabels {
    pub deployment: String,
    pub component: String,
    pub kind: String,
}

/// Runs until the task is aborted.
pub async fn run(deployment: Arc<Deployment>, interval: Duration, gauges: ReplicaGauges) {
    let gate = Arc::clone(deployment.gate());
    let mut autoscaler = Autoscaler::new(deployment.config().scaling);
    let origin = Instant::now();
    let (mut last_at, mut last_admitted) = (origin, gate.admitted());
    let gauge = |kind: &str| {
        gauges
            .get_or_create(&ReplicaLabels {
                deployment: deployment.name().to_string(),
                component: "api".into(),
                kind: kind.into(),
            })
            .clone()
    };
    deployment.report_replicas(gauge("current"));
    let desired_gauge = gauge("desired");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = gate.waiting_started.notified() => {}
        }
        let policy = deployment.config().scaling;
        if &policy != autoscaler.policy() {
            autoscaler.set_policy(policy);
        }
        let now = Instant::now();
        let admitted = gate.admitted();
        let qps = (admitted - last_admitted) as f64 / now.duration_since(last_at).as_secs_f64().max(1e-3);
        (last_at, last_admitted) = (now, admitted);
        let (running, waiting) = (gate.running() as f64, gate.waiting() as f64);
        let observation = Observation {
            now: now.duration_since(origin).as_secs_f64(),
            current: deployment.replicas(),
            totals: BTreeMap::from([
                (Metric::Concurrency, running + waiting),
                (Metric::Queue, waiting),
                (Metric::Qps, qps),
            ]),
            demand: (running + waiting) as u64,
        };
        let decision = autoscaler.decide(&observation);
        desired_gauge.set(decision.desired as i64);
        if decision.desired != decision.current {
            match deployment.set_replicas(decision.desired) {
                Ok(()) => deployment.record(
                    "scale",
                    format!("api replicas {} → {}: {}", decision.current, decision.desired, decision.reason),
                ),
                Err(e) => deployment
                    .record("scale-failed", format!("could not apply {} replicas: {e:#}", decision.desired)),
            }
        }
    }
}
