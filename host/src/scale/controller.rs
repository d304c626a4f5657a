//! Drives one component of a deployment (its API service or one of its
//! runners) with its autoscaler; every component has a controller of its own.
//!
//! Every tick (and at once when a request starts waiting, so a component at
//! zero wakes without waiting for the tick) the controller observes the
//! component's admission gate (calls running and waiting, the call rate) and
//! its custom gauges, asks the [`Autoscaler`] for a replica count and applies
//! it.
//!
//! * An API-service replica is admission capacity: `max_concurrency`
//!   instances at once. At zero the compiled component is dropped from memory.
//! * A runner replica is a worker thread over the model's weights. At zero
//!   the weights are let go of (and freed when no other runner shares them);
//!   waking loads them again.
//!
//! Scaling down only lowers capacity, so running calls finish (drain) and
//! nothing accepted is dropped. Requests arriving at zero wait in the gate's
//! queue (the cold-start buffer, bounded by `max_pending` and by their
//! deadlines) and are released no faster than the new capacity admits.
//!
//! Each change is an event with its reason (admin API, logs) and the
//! desired and current counts are Prometheus gauges.
//!
//! The `cpu` (percent of one core) and `memory` (MiB resident) metrics are
//! the host process's, via sysinfo: every deployment in the process sees the
//! same totals, which suits the one-deployment-per-host setups that scale
//! across machines on Kubernetes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{Autoscaler, Metric, Observation, ScalingPolicy};
use crate::deployment::Deployment;
use crate::runner::Runner;
use crate::traffic::Gate;

/// Gauges of replicas by deployment, component and kind (`current`, `desired`).
pub type ReplicaGauges = Family<ReplicaLabels, Gauge>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReplicaLabels {
    pub deployment: String,
    pub component: String,
    pub kind: String,
}

/// The host process's CPU and memory use.
pub struct ProcessUsage {
    system: sysinfo::System,
    pid: Option<sysinfo::Pid>,
    /// Process CPU time and wall time at the previous sample.
    last: (Duration, Instant),
}

impl Default for ProcessUsage {
    fn default() -> Self {
        ProcessUsage {
            system: sysinfo::System::new(),
            pid: sysinfo::get_current_pid().ok(),
            last: (process_cpu_time(), Instant::now()),
        }
    }
}

/// CPU time used by this process so far (all threads).
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0;
    if ok { Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32) } else { Duration::ZERO }
}

impl ProcessUsage {
    /// CPU in percent of one core since the previous sample, and resident
    /// memory in MiB.
    pub fn sample(&mut self) -> Option<(f64, f64)> {
        let (cpu_now, wall_now) = (process_cpu_time(), Instant::now());
        let (cpu_then, wall_then) = std::mem::replace(&mut self.last, (cpu_now, wall_now));
        let wall = wall_now.duration_since(wall_then).as_secs_f64().max(1e-6);
        let cpu = cpu_now.saturating_sub(cpu_then).as_secs_f64() / wall * 100.0;
        let pid = self.pid?;
        let what = sysinfo::ProcessRefreshKind::nothing().with_memory();
        self.system.refresh_processes_specifics(sysinfo::ProcessesToUpdate::Some(&[pid]), false, what);
        let memory = self.system.process(pid)?.memory() as f64 / (1024.0 * 1024.0);
        Some((cpu, memory))
    }
}

/// What one controller drives.
#[derive(Clone)]
pub enum Component {
    /// The deployment's API service.
    Api(Arc<Deployment>),
    /// One of the deployment's runners.
    Runner(Arc<Deployment>, Arc<Runner>),
}

impl Component {
    fn deployment(&self) -> &Arc<Deployment> {
        match self {
            Component::Api(d) | Component::Runner(d, _) => d,
        }
    }

    /// `api` or `runner:<model name>`: the label in metrics and events.
    pub fn label(&self) -> String {
        match self {
            Component::Api(_) => "api".into(),
            Component::Runner(_, r) => format!("runner:{}", r.name()),
        }
    }

    fn gate(&self) -> &Arc<Gate> {
        match self {
            Component::Api(d) => d.gate(),
            Component::Runner(_, r) => r.gate(),
        }
    }

    fn policy(&self) -> ScalingPolicy {
        let config = self.deployment().config();
        match self {
            Component::Api(_) => config.scaling,
            Component::Runner(_, r) => config.runners.get(r.name()).cloned().unwrap_or_default().scaling,
        }
    }

    fn gauges(&self) -> BTreeMap<String, f64> {
        match self {
            Component::Api(d) => d.gauges().snapshot(),
            Component::Runner(_, r) => r.gauges().snapshot(),
        }
    }

    fn replicas(&self) -> u32 {
        match self {
            Component::Api(d) => d.replicas(),
            Component::Runner(_, r) => r.replicas(),
        }
    }

    async fn set_replicas(&self, replicas: u32, reason: &str, current: &Gauge) -> anyhow::Result<()> {
        match self {
            // The deployment sets the gauge and records the event itself,
            // before anyone watching its replicas hears of the change.
            Component::Api(d) => d.set_replicas(replicas, reason),
            Component::Runner(d, r) => {
                r.set_replicas(replicas).await?;
                current.set(replicas as i64);
                d.record("scale", reason.to_string());
                Ok(())
            }
        }
    }
}

/// Runs until the task is aborted.
pub async fn run(component: Component, interval: Duration, gauges: ReplicaGauges) {
    let gate = Arc::clone(component.gate());
    let label = component.label();
    let mut autoscaler = Autoscaler::new(component.policy());
    let origin = Instant::now();
    let (mut last_at, mut last_admitted) = (origin, gate.admitted());
    let gauge = |kind: &str| {
        gauges
            .get_or_create(&ReplicaLabels {
                deployment: component.deployment().name().to_string(),
                component: label.clone(),
                kind: kind.into(),
            })
            .clone()
    };
    let current_gauge = gauge("current");
    match &component {
        Component::Api(d) => d.report_replicas(current_gauge.clone()),
        Component::Runner(_, r) => {
            current_gauge.set(r.replicas() as i64);
        }
    }
    let desired_gauge = gauge("desired");
    desired_gauge.set(component.replicas() as i64);
    let mut usage = ProcessUsage::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = gate.waiting_started.notified() => {}
        }
        let policy = component.policy();
        if &policy != autoscaler.policy() {
            autoscaler.set_policy(policy);
        }
        let now = Instant::now();
        let admitted = gate.admitted();
        // Requests that came and went between two ticks are demand too: a
        // steady stream of short calls must not look idle.
        let admitted_since = admitted - last_admitted;
        let qps = admitted_since as f64 / now.duration_since(last_at).as_secs_f64().max(1e-3);
        (last_at, last_admitted) = (now, admitted);
        let (running, waiting) = (gate.running() as f64, gate.waiting() as f64);
        let refused = gate.take_refused_at_zero();
        let mut totals = BTreeMap::from([
            (Metric::Concurrency, running + waiting),
            (Metric::Queue, waiting),
            (Metric::Qps, qps),
        ]);
        for (name, value) in component.gauges() {
            totals.insert(Metric::Custom { name }, value);
        }
        if let Some((cpu, memory)) = usage.sample() {
            totals.insert(Metric::Cpu, cpu);
            totals.insert(Metric::Memory, memory);
        }
        let observation = Observation {
            now: now.duration_since(origin).as_secs_f64(),
            current: component.replicas(),
            totals,
            demand: (running + waiting) as u64 + refused + admitted_since,
        };
        let decision = autoscaler.decide(&observation);
        desired_gauge.set(decision.desired as i64);
        if decision.desired != decision.current {
            let what = match &component {
                Component::Api(_) => "api replicas".to_string(),
                Component::Runner(_, r) => format!("runner {} replicas", r.name()),
            };
            let reason = format!("{what} {} → {}: {}", decision.current, decision.desired, decision.reason);
            if let Err(e) = component.set_replicas(decision.desired, &reason, &current_gauge).await {
                component.deployment().record(
                    "scale-failed",
                    format!("could not apply {label} replicas {}: {e:#}", decision.desired),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_usage_reports_cpu_and_resident_memory() {
        let mut usage = ProcessUsage::default();
        let (_, memory) = usage.sample().expect("this process is visible to itself");
        assert!(memory > 1.0, "{memory} MiB resident");
        // Burn some CPU, then the next sample shows it.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let (cpu, _) = usage.sample().unwrap();
        assert!(cpu > 10.0 && cpu.is_finite(), "{cpu} % CPU while spinning");
    }
}
