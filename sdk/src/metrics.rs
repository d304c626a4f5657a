//! Gauges for autoscaling: a policy can target them by name.

/// Sets gauge `name` (lowercase letters, digits, `_`) to `value`; the host
/// keeps the last value per deployment.
pub fn gauge(name: &str, value: f64) {
    crate::bindings::wasmbento::service::metrics::set_gauge(name, value);
}
