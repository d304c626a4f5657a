//! The hardware of this host, and where a runner replica goes.
//!
//! [`discover`] reports CPUs and memory (sysinfo) and each NVIDIA GPU (name,
//! memory total and free, compute capability) through the CUDA driver,
//! which `cudarc` loads at run time: the host builds and runs without any
//! CUDA installation. When no GPU is found, the reason says which step
//! failed (no driver library, the driver found no device, a device that
//! could not be opened).
//!
//! [`place`] decides where a runner replica runs from the deployment's
//! [`Resources`], BentoML-style: a replica that asks for a GPU goes to the
//! device with the most free memory (of the requested `gpu_type`, if any);
//! with no such device it falls back to the CPU with a warning, or refuses
//! when the deployment says the GPU is required.

use serde::{Deserialize, Serialize};

/// One NVIDIA GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// `(major, minor)`, e.g. `(9, 0)` for an H100 or H200.
    pub compute_capability: (i32, i32),
}

/// What this host has.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    /// Logical CPUs.
    pub cpus: usize,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub gpus: Vec<GpuInfo>,
    /// Why `gpus` is empty, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_gpu_reason: Option<String>,
}

/// CPUs, memory and GPUs of this host.
pub fn discover() -> HostInfo {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (gpus, no_gpu_reason) = match discover_gpus() {
        Ok(gpus) => (gpus, None),
        Err(reason) => (Vec::new(), Some(reason)),
    };
    HostInfo {
        cpus,
        memory_total_bytes: system.total_memory(),
        memory_available_bytes: system.available_memory(),
        gpus,
        no_gpu_reason,
    }
}

static GPUS: std::sync::OnceLock<Result<Vec<GpuInfo>, String>> = std::sync::OnceLock::new();

/// The GPUs found when first asked (device discovery opens a context per
/// device: once per process is enough). Only placing a runner that asks
/// for a GPU asks, so a host serving on the CPU never touches a GPU.
pub fn gpus() -> &'static Result<Vec<GpuInfo>, String> {
    GPUS.get_or_init(discover_gpus)
}

/// The GPUs found so far with their memory as it is now: none until a
/// runner asked for a GPU, or where discovery found none. Opens each
/// device's context (cheap while a runner holds it): call it off the
/// async executor.
pub fn gpu_memory() -> Vec<GpuInfo> {
    let Some(Ok(found)) = GPUS.get() else { return Vec::new() };
    found
        .iter()
        .map(|gpu| {
            let mut now = gpu.clone();
            // The primary context, which discovery opened already.
            let read = cudarc::driver::CudaContext::new(gpu.ordinal).and_then(|ctx| ctx.mem_get_info());
            if let Ok((free, total)) = read {
                (now.memory_free_bytes, now.memory_total_bytes) = (free as u64, total as u64);
            }
            now
        })
        .collect()
}

/// The GPUs the CUDA driver reports, or why there are none.
pub fn discover_gpus() -> Result<Vec<GpuInfo>, String> {
    use cudarc::driver::{CudaContext, result};
    // With no driver library, cudarc panics instead of returning an error:
    // look for the library first.
    // SAFETY: only tries to open the driver's shared library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no NVIDIA driver: the CUDA driver library (libcuda.so) was not found".into());
    }
    let count =
        CudaContext::device_count().map_err(|e| format!("the CUDA driver failed to count devices: {e}"))?;
    if count <= 0 {
        return Err("the NVIDIA driver is installed but reports no device".into());
    }
    let mut gpus = Vec::new();
    for ordinal in 0..count as usize {
        let opened = CudaContext::new(ordinal).and_then(|ctx| {
            ctx.bind_to_thread()?;
            let (free, total) = result::mem_get_info()?;
            Ok(GpuInfo {
                ordinal,
                name: ctx.name()?,
                memory_total_bytes: total as u64,
                memory_free_bytes: free as u64,
                compute_capability: ctx.compute_capability()?,
            })
        });
        match opened {
            Ok(gpu) => gpus.push(gpu),
            Err(e) => return Err(format!("GPU {ordinal} could not be opened: {e}")),
        }
    }
    Ok(gpus)
}

/// What a deployment's runners ask for (BentoML's `resources`): in
/// `bento.toml` as `[resources]`, overridable per deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// CPUs, e.g. `"2"` or `"500m"` (informational in one host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory, e.g. `"4Gi"` (informational in one host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// GPUs per runner replica (0 or 1 today).
    pub gpu: u32,
    /// A GPU model to match, case-insensitively, against device names
    /// (`"h200"`, `"nvidia-tesla-t4"`: dashes match spaces).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    /// Refuse to start rather than fall back to the CPU.
    pub gpu_required: bool,
}

impl Resources {
    pub fn validate(&self) -> Result<(), String> {
        if self.gpu > 1 {
            return Err(format!("resources.gpu: a runner replica uses at most 1 GPU, got {}", self.gpu));
        }
        if self.gpu_required && self.gpu == 0 {
            return Err("resources.gpu_required: needs resources.gpu = 1".into());
        }
        Ok(())
    }
}

/// A device a runner's weights live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    Cpu,
    /// An NVIDIA GPU, by its CUDA ordinal.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    /// `cpu` or `cuda:N`.
    fn from_str(s: &str) -> Result<Device, String> {
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        s.strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("{s:?} is not a device (cpu or cuda:N)"))
    }
}

/// Where a runner replica runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    Cpu {
        /// Set when a GPU was asked for and none fits.
        warning: Option<String>,
    },
    Gpu {
        ordinal: usize,
    },
}

impl Placement {
    pub fn device(&self) -> Device {
        match self {
            Placement::Cpu { .. } => Device::Cpu,
            Placement::Gpu { ordinal } => Device::Cuda(*ordinal),
        }
    }
}

/// Chooses a device for a runner replica that needs `weights_bytes` of
/// device memory, among the GPUs found or given the reason none can be used.
pub fn place(
    resources: &Resources,
    gpus: Result<&[GpuInfo], &str>,
    weights_bytes: u64,
) -> Result<Placement, String> {
    if resources.gpu == 0 {
        return Ok(Placement::Cpu { warning: None });
    }
    let gpus = match gpus {
        Ok(gpus) => gpus,
        Err(why) => return fallback(resources, why.to_string()),
    };
    let wanted = resources.gpu_type.as_deref().map(normalize);
    let candidates: Vec<&GpuInfo> = gpus
        .iter()
        .filter(|g| wanted.as_ref().is_none_or(|w| normalize(&g.name).contains(w.as_str())))
        .collect();
    let best = candidates.iter().max_by_key(|g| g.memory_free_bytes);
    let why = match best {
        Some(g) if g.memory_free_bytes >= weights_bytes => return Ok(Placement::Gpu { ordinal: g.ordinal }),
        Some(g) => format!(
            "GPU {} ({}) has {} MiB free, the weights need {} MiB",
            g.ordinal,
            g.name,
            g.memory_free_bytes >> 20,
            weights_bytes.div_ceil(1 << 20)
        ),
        None if gpus.is_empty() => "this host has no GPU".to_string(),
        None => format!(
            "no GPU matches gpu_type {:?} (GPUs: {})",
            resources.gpu_type.as_deref().unwrap_or_default(),
            gpus.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    };
    fallback(resources, why)
}

/// The CPU with a warning, or a refusal when the GPU is required.
fn fallback(resources: &Resources, why: String) -> Result<Placement, String> {
    if resources.gpu_required {
        Err(format!("the deployment requires a GPU: {why}"))
    } else {
        Ok(Placement::Cpu { warning: Some(format!("a GPU was asked for, running on the CPU: {why}")) })
    }
}

fn normalize(name: &str) -> String {
    name.to_lowercase().replace(['-', '_'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(ordinal: usize, name: &str, free_mib: u64) -> GpuInfo {
        GpuInfo {
            ordinal,
            name: name.into(),
            memory_total_bytes: 80 << 30,
            memory_free_bytes: free_mib << 20,
            compute_capability: (9, 0),
        }
    }

    #[test]
    fn discovery_reports_the_host_and_says_why_there_is_no_gpu() {
        let info = discover();
        assert!(info.cpus >= 1 && info.memory_total_bytes > 0);
        // Either GPUs, or a reason; never neither.
        assert_eq!(info.gpus.is_empty(), info.no_gpu_reason.is_some(), "{info:?}");
    }

    #[test]
    fn devices_read_as_they_print() {
        for device in [Device::Cpu, Device::Cuda(0), Device::Cuda(3)] {
            assert_eq!(device.to_string().parse::<Device>(), Ok(device));
        }
        assert!("gpu".parse::<Device>().unwrap_err().contains("cpu or cuda:N"));
        assert!("cuda:x".parse::<Device>().is_err());
    }

    #[test]
    fn the_gpu_with_the_most_free_memory_wins() {
        let gpus = [gpu(0, "NVIDIA H200", 1000), gpu(1, "NVIDIA H200", 9000), gpu(2, "Tesla T4", 12000)];
        let wants = Resources { gpu: 1, ..Resources::default() };
        assert_eq!(place(&wants, Ok(&gpus), 100 << 20), Ok(Placement::Gpu { ordinal: 2 }));
        let h200 = Resources { gpu: 1, gpu_type: Some("nvidia-h200".into()), ..Resources::default() };
        assert_eq!(place(&h200, Ok(&gpus), 100 << 20), Ok(Placement::Gpu { ordinal: 1 }));
        let cpu = Resources::default();
        assert_eq!(place(&cpu, Ok(&gpus), 0), Ok(Placement::Cpu { warning: None }));
    }

    #[test]
    fn without_a_fitting_gpu_it_falls_back_or_refuses() {
        let wants = Resources { gpu: 1, ..Resources::default() };
        match place(&wants, Ok(&[]), 1) {
            Ok(Placement::Cpu { warning: Some(w) }) => assert!(w.contains("no GPU"), "{w}"),
            other => panic!("expected a CPU fallback, got {other:?}"),
        }
        let small = [gpu(0, "Tesla T4", 50)];
        let required = Resources { gpu: 1, gpu_required: true, ..Resources::default() };
        let err = place(&required, Ok(&small), 100 << 20).unwrap_err();
        assert!(err.contains("50 MiB free") && err.contains("100 MiB"), "{err}");
        let a100 =
            Resources { gpu: 1, gpu_type: Some("a100".into()), gpu_required: true, ..Resources::default() };
        assert!(place(&a100, Ok(&small), 1).unwrap_err().contains("no GPU matches gpu_type \"a100\""));
        // No usable GPU at all: the reason travels into the warning or refusal.
        match place(&wants, Err("no NVIDIA driver"), 1) {
            Ok(Placement::Cpu { warning: Some(w) }) => assert!(w.ends_with("no NVIDIA driver"), "{w}"),
            other => panic!("expected a CPU fallback, got {other:?}"),
        }
        let err = place(&required, Err("cuBLAS (libcublas.so) was not found"), 1).unwrap_err();
        assert_eq!(err, "the deployment requires a GPU: cuBLAS (libcublas.so) was not found");
        assert!(Resources { gpu: 2, ..Resources::default() }.validate().is_err());
        assert!(Resources { gpu_required: true, ..Resources::default() }.validate().is_err());
    }
}
