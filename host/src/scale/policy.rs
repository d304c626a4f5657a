//! Scaling policies as JSON: BentoCloud's shape, extended with the
//! Kubernetes HPA v2 `behavior` rules.
//!
//! ```json
//! {"min_replicas": 0, "max_replicas": 4, "scale_to_zero_after": 30,
//!  "policy": {"metrics": [{"type": "concurrency", "value": 8}],
//!             "scale_up_stabilization_window": 0,
//!             "scale_down_stabilization_window": 300}}
//! ```
//!
//! Every field but the replica bounds has a default, and the defaults are
//! Kubernetes': tolerance 0.1, windows 0 s up / 300 s down, scale-up limited
//! to the larger of +4 replicas or +100 % per 15 s, scale-down to −100 % per
//! 15 s. [`ScalingPolicy::from_json`] names the field and the rule that a bad
//! policy breaks.

use serde::{Deserialize, Serialize};

/// The most replicas a policy may ask for.
pub const MAX_REPLICAS: u32 = 1000;

/// How a component scales. Omitted fields take their defaults (one replica,
/// no scale to zero, the metrics policy's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingPolicy {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Seconds without any request before going to zero replicas (only with
    /// `min_replicas = 0`; `None` never goes to zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_to_zero_after: Option<f64>,
    /// Requests that may wait while the component is at zero (the
    /// cold-start buffer); beyond it they get 503. `None`: the traffic
    /// queue's `max_length`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<usize>,
    pub policy: MetricsPolicy,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        ScalingPolicy {
            min_replicas: 1,
            max_replicas: 1,
            scale_to_zero_after: None,
            max_pending: None,
            policy: MetricsPolicy::default(),
        }
    }
}

/// What the autoscaler looks at and how fast it may move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsPolicy {
    /// Targets; the largest proposal across them wins.
    pub metrics: Vec<MetricTarget>,
    /// Seconds over which scale-up recommendations are smoothed (the
    /// minimum of the window is used).
    pub scale_up_stabilization_window: f64,
    /// Seconds over which scale-down recommendations are smoothed (the
    /// maximum of the window is used).
    pub scale_down_stabilization_window: f64,
    /// No change while `|1 − value/target| ≤ tolerance`.
    pub tolerance: f64,
    /// Rate limits on adding replicas.
    pub scale_up: ScalingRules,
    /// Rate limits on removing replicas.
    pub scale_down: ScalingRules,
}

impl Default for MetricsPolicy {
    fn default() -> Self {
        MetricsPolicy {
            metrics: vec![MetricTarget { metric: Metric::Concurrency, value: 8.0 }],
            scale_up_stabilization_window: 0.0,
            scale_down_stabilization_window: 300.0,
            tolerance: 0.1,
            scale_up: ScalingRules {
                policies: vec![
                    RatePolicy { kind: RateKind::Pods, value: 4, period_seconds: 15.0 },
                    RatePolicy { kind: RateKind::Percent, value: 100, period_seconds: 15.0 },
                ],
                select_policy: SelectPolicy::Max,
            },
            scale_down: ScalingRules {
                policies: vec![RatePolicy { kind: RateKind::Percent, value: 100, period_seconds: 15.0 }],
                select_policy: SelectPolicy::Max,
            },
        }
    }
}

/// A target value for one metric, per replica:
/// `{"type": "concurrency", "value": 8}` or
/// `{"type": "custom", "name": "tokens", "value": 100}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawTarget", into = "RawTarget")]
pub struct MetricTarget {
    pub metric: Metric,
    /// The target average per replica (requests in flight, queued requests,
    /// requests per second, CPU %, memory MiB, or the custom gauge's unit).
    pub value: f64,
}

/// The wire form of [`MetricTarget`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(rename = "type")]
    kind: MetricKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    value: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MetricKind {
    Concurrency,
    Queue,
    Qps,
    Cpu,
    Memory,
    Custom,
}

impl TryFrom<RawTarget> for MetricTarget {
    type Error = String;

    fn try_from(raw: RawTarget) -> Result<Self, String> {
        let metric = match (raw.kind, raw.name) {
            (MetricKind::Custom, Some(name)) if !name.is_empty() => Metric::Custom { name },
            (MetricKind::Custom, _) => return Err("a custom metric needs a non-empty \"name\"".into()),
            (_, Some(_)) => return Err("\"name\" is only for custom metrics".into()),
            (MetricKind::Concurrency, None) => Metric::Concurrency,
            (MetricKind::Queue, None) => Metric::Queue,
            (MetricKind::Qps, None) => Metric::Qps,
            (MetricKind::Cpu, None) => Metric::Cpu,
            (MetricKind::Memory, None) => Metric::Memory,
        };
        Ok(MetricTarget { metric, value: raw.value })
    }
}

impl From<MetricTarget> for RawTarget {
    fn from(t: MetricTarget) -> RawTarget {
        let (kind, name) = match t.metric {
            Metric::Concurrency => (MetricKind::Concurrency, None),
            Metric::Queue => (MetricKind::Queue, None),
            Metric::Qps => (MetricKind::Qps, None),
            Metric::Cpu => (MetricKind::Cpu, None),
            Metric::Memory => (MetricKind::Memory, None),
            Metric::Custom { name } => (MetricKind::Custom, Some(name)),
        };
        RawTarget { kind, name, value: t.value }
    }
}

/// The metrics a policy can target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Requests in flight (BentoCloud's main target).
    Concurrency,
    /// Requests waiting in the component's queue.
    Queue,
    /// Requests per second.
    Qps,
    /// CPU use in percent of one core.
    Cpu,
    /// Resident memory in MiB.
    Memory,
    /// A gauge a guest or runner reports under `name`.
    Custom { name: String },
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Metric::Concurrency => f.write_str("concurrency"),
            Metric::Queue => f.write_str("queue"),
            Metric::Qps => f.write_str("qps"),
            Metric::Cpu => f.write_str("cpu"),
            Metric::Memory => f.write_str("memory"),
            Metric::Custom { name } => write!(f, "custom:{name}"),
        }
    }
}

/// HPA's `HPAScalingRules`: rate policies and how to choose among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingRules {
    pub policies: Vec<RatePolicy>,
    #[serde(default)]
    pub select_policy: SelectPolicy,
}

/// At most `value` replicas (or percent) of change per `period_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatePolicy {
    #[serde(rename = "type")]
    pub kind: RateKind,
    pub value: u32,
    pub period_seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKind {
    Pods,
    Percent,
}

/// Which rate policy applies: the one allowing the most change (`max`,
/// the default), the least (`min`), or none at all (`disabled`: no change
/// in that direction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectPolicy {
    #[default]
    Max,
    Min,
    Disabled,
}

/// A policy that breaks a rule; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

impl ScalingPolicy {
    /// Parses and validates a policy; errors name the field (`policy.metrics[0].value`).
    pub fn from_json(text: &[u8]) -> Result<ScalingPolicy, PolicyError> {
        let policy: ScalingPolicy = crate::json::decode(text).map_err(PolicyError)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let fail = |m: String| Err(PolicyError(m));
        if self.max_replicas == 0 {
            return fail("max_replicas: must be at least 1".into());
        }
        if self.max_replicas > MAX_REPLICAS {
            return fail(format!("max_replicas: at most {MAX_REPLICAS}, got {}", self.max_replicas));
        }
        if self.min_replicas > self.max_replicas {
            return fail(format!(
                "min_replicas: {} must not exceed max_replicas ({})",
                self.min_replicas, self.max_replicas
            ));
        }
        if let Some(after) = self.scale_to_zero_after {
            if !(after.is_finite() && after > 0.0) {
                return fail(format!(
                    "scale_to_zero_after: must be a positive number of seconds, got {after}"
                ));
            }
            if self.min_replicas > 0 {
                return fail("scale_to_zero_after: only applies with min_replicas = 0".into());
            }
        }
        let p = &self.policy;
        for (name, v) in [
            ("policy.scale_up_stabilization_window", p.scale_up_stabilization_window),
            ("policy.scale_down_stabilization_window", p.scale_down_stabilization_window),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return fail(format!("{name}: must be a number of seconds ≥ 0, got {v}"));
            }
        }
        if !(p.tolerance.is_finite() && (0.0..1.0).contains(&p.tolerance)) {
            return fail(format!("policy.tolerance: must be in [0, 1), got {}", p.tolerance));
        }
        if p.metrics.is_empty() {
            return fail("policy.metrics: must name at least one metric".into());
        }
        for (i, m) in p.metrics.iter().enumerate() {
            if !(m.value.is_finite() && m.value > 0.0) {
                return fail(format!(
                    "policy.metrics[{i}].value: must be a positive number, got {}",
                    m.value
                ));
            }
        }
        for (dir, rules) in [("scale_up", &p.scale_up), ("scale_down", &p.scale_down)] {
            if rules.policies.is_empty() && rules.select_policy != SelectPolicy::Disabled {
                return fail(format!(
                    "policy.{dir}.policies: at least one policy, or select_policy \"disabled\""
                ));
            }
            for (i, r) in rules.policies.iter().enumerate() {
                if r.value == 0 {
                    return fail(format!("policy.{dir}.policies[{i}].value: must be at least 1"));
                }
                if !(r.period_seconds.is_finite() && r.period_seconds > 0.0) {
                    return fail(format!(
                        "policy.{dir}.policies[{i}].period_seconds: must be positive, got {}",
                        r.period_seconds
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_with_kubernetes_defaults() {
        let text = br#"{"min_replicas":0,"max_replicas":4,"scale_to_zero_after":30,
            "policy":{"metrics":[{"type":"concurrency","value":8}],
                      "scale_up_stabilization_window":0,"scale_down_stabilization_window":300}}"#;
        let p = ScalingPolicy::from_json(text).unwrap();
        assert_eq!((p.min_replicas, p.max_replicas, p.scale_to_zero_after), (0, 4, Some(30.0)));
        assert_eq!(p.policy.tolerance, 0.1);
        assert_eq!(p.policy.scale_up, MetricsPolicy::default().scale_up);
        assert_eq!(p.policy.scale_down.policies[0].kind, RateKind::Percent);

        // It round-trips through its own JSON.
        let again = ScalingPolicy::from_json(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(again, p);

        let custom = br#"{"min_replicas":1,"max_replicas":2,"policy":{"metrics":[{"type":"custom","name":"tokens","value":100}]}}"#;
        let p = ScalingPolicy::from_json(custom).unwrap();
        assert_eq!(p.policy.metrics[0].metric, Metric::Custom { name: "tokens".into() });
    }

    #[test]
    fn bad_policies_name_the_field_and_the_rule() {
        for (text, needle) in [
            (r#"{"min_replicas":3,"max_replicas":1}"#, "min_replicas: 3 must not exceed max_replicas (1)"),
            (r#"{"min_replicas":0,"max_replicas":0}"#, "max_replicas: must be at least 1"),
            (
                r#"{"min_replicas":0,"max_replicas":2,"policy":{"metrics":[{"type":"gpu","value":1}]}}"#,
                "policy.metrics[0].type: unknown variant `gpu`",
            ),
            (
                r#"{"min_replicas":0,"max_replicas":2,"policy":{"scale_down_stabilization_window":-5}}"#,
                "policy.scale_down_stabilization_window: must be a number of seconds ≥ 0",
            ),
            (
                r#"{"min_replicas":0,"max_replicas":2,"policy":{"metrics":[{"type":"qps","value":0}]}}"#,
                "policy.metrics[0].value: must be a positive number",
            ),
            (
                r#"{"min_replicas":1,"max_replicas":2,"scale_to_zero_after":10}"#,
                "scale_to_zero_after: only applies with min_replicas = 0",
            ),
            (r#"{"min_replicas":"one","max_replicas":2}"#, "min_replicas: invalid type: string"),
            (r#"{"min_replicas":0,"max_replicas":2,"colour":"red"}"#, "unknown field `colour`"),
            (
                r#"{"min_replicas":0,"max_replicas":2,"policy":{"scale_up":{"policies":[{"type":"pods","value":0,"period_seconds":15}]}}}"#,
                "policy.scale_up.policies[0].value: must be at least 1",
            ),
            (
                r#"{"min_replicas":0,"max_replicas":2,"policy":{"tolerance":1.5}}"#,
                "policy.tolerance: must be in [0, 1)",
            ),
            (
                r#"{"min_replicas":0,"max_replicas":2,"policy":{"metrics":[{"type":"custom","value":1}]}}"#,
                "policy.metrics[0]: a custom metric needs a non-empty \"name\"",
            ),
            (
                r#"{"min_replicas":0,"max_replicas":2,"policy":{"metrics":[{"type":"qps","value":1,"unit":"s"}]}}"#,
                "policy.metrics[0].unit: unknown field `unit`",
            ),
        ] {
            let err = ScalingPolicy::from_json(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}\n  got: {err}\n want: {needle}");
        }
    }
}
