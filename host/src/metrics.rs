//! Prometheus metrics of the data plane, served at `GET /metrics`.
//!
//! Names follow BentoML's (`bentoml_service_request_*`) under the
//! `wasmbento_` prefix: request count and duration by deployment, API and
//! status, and requests in progress by deployment and API. Per device
//! (`cpu`, `cuda:N`): the bytes of model weights held there, and the
//! device's memory, total and free (available, for the CPU), read at each
//! scrape; GPUs appear once a runner has asked for one.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// BentoML's default duration buckets, in seconds.
const DURATION_BUCKETS: [f64; 15] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub deployment: String,
    pub api: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceMemoryLabels {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// `total` or `free`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub deployment: String,
    pub api: String,
}

/// The host's metrics and their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RequestLabels, Histogram>,
    pub in_progress: Family<ApiLabels, Gauge>,
    /// Items per forward pass, by model (adaptive batching).
    pub batch_size: crate::runner::BatchSizes,
    /// Replicas by deployment, component and kind (current, desired).
    pub replicas: crate::scale::controller::ReplicaGauges,
    /// Bytes of model weights held on each device.
    pub device_weights: crate::runner::DeviceWeights,
    /// Memory of each device, total and free.
    pub device_memory: Family<DeviceMemoryLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wasmbento");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS.iter().copied())
        });
        let in_progress = Family::<ApiLabels, Gauge>::default();
        registry.register("request", "Requests answered", requests.clone());
        registry.register("request_duration_seconds", "Time to answer a request", duration.clone());
        registry.register("request_in_progress", "Requests being handled", in_progress.clone());
        let batch_size = crate::runner::batch_size_family();
        registry.register("runner_batch_size", "Items per forward pass", batch_size.clone());
        let replicas = crate::scale::controller::ReplicaGauges::default();
        registry.register("replicas", "Replicas of each component, current and desired", replicas.clone());
        let device_weights = crate::runner::DeviceWeights::default();
        registry.register(
            "device_weights_bytes",
            "Bytes of model weights held on each device",
            device_weights.clone(),
        );
        let device_memory = Family::<DeviceMemoryLabels, Gauge>::default();
        registry.register(
            "device_memory_bytes",
            "Memory of each device, total and free",
            device_memory.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            duration,
            in_progress,
            batch_size,
            replicas,
            device_weights,
            device_memory,
        }
    }
}

impl Metrics {
    /// Reads each device's memory now.
    fn refresh_devices(&self) {
        let set = |device: String, kind, bytes: u64| {
            self.device_memory.get_or_create(&DeviceMemoryLabels { device, kind }).set(bytes as i64);
        };
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        set("cpu".into(), "total", system.total_memory());
        set("cpu".into(), "free", system.available_memory());
        for gpu in crate::devices::gpu_memory() {
            let device = crate::devices::Device::Cuda(gpu.ordinal).to_string();
            set(device.clone(), "total", gpu.memory_total_bytes);
            set(device, "free", gpu.memory_free_bytes);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        self.refresh_devices();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap())
            .expect("writing to a String cannot fail");
        out
    }
}
