//! Scaling: policies (JSON, live-replaceable) and the autoscaler's decisions.
//!
//! The decision logic is clock-free and side-effect free: it is tested on a
//! virtual clock, and the same numbers can drive replicas in this host or a
//! Kubernetes HPA across machines.

pub mod autoscaler;
pub mod controller;
pub mod policy;

pub use autoscaler::{Autoscaler, Decision, Observation};
pub use policy::{Metric, MetricTarget, MetricsPolicy, PolicyError, ScalingPolicy};
