//! One copy of each model's weights per device, for as long as someone uses it.
//!
//! Runners ask the cache for a model's weights on their device when they get
//! their first replica and let go of them at zero. The cache keeps only a
//! weak handle: the weights live while at least one runner (of any
//! deployment) holds them, are shared by all of them, and are freed when the
//! last lets go. Loading happens at most once at a time per model and
//! device; concurrent first uses wait for that one load. What the weights
//! take is counted per device in `wasmbento_device_weights_bytes`.
//!
//! Tokenizers are small and needed even while the weights are unloaded
//! (a guest tokenizes before it computes), so they are kept once loaded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use anyhow::Result;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{Backend, BatchSizes, Batching, NamedTensor, RunnerError, TextTokenizer};
use crate::devices::Device;
use crate::store::StoredModel;
use crate::tag::Tag;

/// Bytes of model weights held on each device.
pub type DeviceWeights = Family<DeviceLabels, Gauge>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DeviceLabels {
    /// `cpu` or `cuda:N`.
    pub device: String,
}

/// A model on a device.
type Key = (Tag, Device);

/// The models loaded in this host, by exact tag and device.
pub struct ModelCache {
    weights: Mutex<HashMap<Key, Weak<dyn Backend>>>,
    /// One load at a time per model and device.
    loading: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    tokenizers: Mutex<HashMap<Tag, Option<Arc<TextTokenizer>>>>,
    /// Models whose files were checked against their digests in this process.
    verified: Mutex<std::collections::HashSet<String>>,
    batch_sizes: BatchSizes,
    device_weights: DeviceWeights,
    batching: Batching,
}

impl ModelCache {
    /// A cache whose runners batch as `batching` says and report batch sizes
    /// into `batch_sizes`, counting weights per device in `device_weights`.
    pub fn new(batch_sizes: BatchSizes, device_weights: DeviceWeights, mut batching: Batching) -> ModelCache {
        batching.max_batch_size = batching.max_batch_size.max(1);
        ModelCache {
            weights: Mutex::default(),
            loading: Mutex::default(),
            tokenizers: Mutex::default(),
            verified: Mutex::default(),
            batch_sizes,
            device_weights,
            batching,
        }
    }

    pub fn batching(&self) -> &Batching {
        &self.batching
    }

    pub fn batch_sizes(&self) -> &BatchSizes {
        &self.batch_sizes
    }

    /// The model's weights on `device`, loaded (off the executor) unless
    /// some runner holds them there already.
    pub async fn weights(&self, model: &StoredModel, device: Device) -> Result<Arc<dyn Backend>> {
        let tag = model.tag();
        let key = (tag.clone(), device);
        let lock = Arc::clone(self.loading.lock().unwrap().entry(key.clone()).or_default());
        let _one_load = lock.lock().await;
        if let Some(backend) = self.weights.lock().unwrap().get(&key).and_then(Weak::upgrade) {
            return Ok(backend);
        }
        let started = Instant::now();
        let (dir, tag2) = (model.dir.clone(), tag.clone());
        let check = !self.verified.lock().unwrap().contains(&model.digest);
        let files = model.info.files.clone();
        let backend = tokio::task::spawn_blocking(move || {
            // Weights are checked once per process: a corrupt store must not
            // serve wrong answers quietly.
            if check {
                verify_files(&dir, &files).map_err(|e| anyhow::anyhow!("model {tag2}: {e:#}"))?;
            }
            super::load_backend(&tag2, &dir, device)
        })
        .await??;
        self.verified.lock().unwrap().insert(model.digest.clone());
        tracing::info!(model = %tag, %device, took_ms = started.elapsed().as_millis() as u64, backend = %backend.describe(), "weights loaded");
        let backend: Arc<dyn Backend> = Arc::new(Counted::new(backend, &self.device_weights));
        self.weights.lock().unwrap().insert(key, Arc::downgrade(&backend));
        Ok(backend)
    }

    /// The model's tokenizer, if it ships a `tokenizer.json`.
    pub fn tokenizer(&self, model: &StoredModel) -> Result<Option<Arc<TextTokenizer>>> {
        let tag = model.tag();
        if let Some(t) = self.tokenizers.lock().unwrap().get(&tag) {
            return Ok(t.clone());
        }
        let tokenizer = if model.dir.join("tokenizer.json").is_file() {
            Some(Arc::new(TextTokenizer::load(&model.dir)?))
        } else {
            None
        };
        self.tokenizers.lock().unwrap().insert(tag, tokenizer.clone());
        Ok(tokenizer)
    }

    /// How many copies of weights are in memory now (one per model and device).
    pub fn loaded(&self) -> usize {
        self.weights.lock().unwrap().values().filter(|w| w.strong_count() > 0).count()
    }

    /// Whether this model's weights are in memory now, on any device.
    pub fn is_loaded(&self, tag: &Tag) -> bool {
        self.weights.lock().unwrap().iter().any(|((t, _), w)| t == tag && w.strong_count() > 0)
    }
}

/// Weights as the cache hands them out: counted in their device's gauge
/// for as long as any runner holds them.
struct Counted {
    backend: Arc<dyn Backend>,
    gauge: Gauge,
    bytes: i64,
}

impl Counted {
    fn new(backend: Arc<dyn Backend>, gauges: &DeviceWeights) -> Counted {
        let gauge = gauges.get_or_create(&DeviceLabels { device: backend.device().to_string() }).clone();
        let bytes = backend.weight_bytes() as i64;
        gauge.inc_by(bytes);
        Counted { backend, gauge, bytes }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

impl Backend for Counted {
    fn describe(&self) -> String {
        self.backend.describe()
    }
    fn compute(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError> {
        self.backend.compute(inputs)
    }
    fn batchable(&self) -> bool {
        self.backend.batchable()
    }
    fn device(&self) -> Device {
        self.backend.device()
    }
    fn weight_bytes(&self) -> u64 {
        self.backend.weight_bytes()
    }
}

/// Checks each file of a model against the digest its manifest records.
fn verify_files(dir: &std::path::Path, files: &[crate::store::FileInfo]) -> Result<()> {
    use sha2::Digest;
    for f in files {
        let path = dir.join(&f.path);
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != f.digest {
            anyhow::bail!(
                "{} is corrupt in the store (hashes to {actual}, expected {}); delete the model and import or pull it again",
                f.path,
                f.digest
            );
        }
    }
    Ok(())
}

/// Hands memory freed by dropped weights back to the operating system.
///
/// Large tensors are allocated with `mmap` and unmapped when freed, but the
/// allocator may keep smaller freed chunks in its arenas; trimming returns
/// them, so unloading shows in the resident set size (all-MiniLM-L6-v2:
/// 94 MiB returned with the trim, 86 MiB without).
pub(super) fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
