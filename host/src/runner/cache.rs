//! One copy of each model's weights per host, for as long as someone uses it.
//!
//! Runners ask the cache for a model's weights when they get their first
//! replica and let go of them at zero. The cache keeps only a weak handle:
//! the weights live while at least one runner (of any deployment) holds them,
//! are shared by all of them, and are freed when the last lets go. Loading
//! happens at most once at a time per model; concurrent first uses wait for
//! that one load.
//!
//! Tokenizers are small and needed even while the weights are unloaded
//! (a guest tokenizes before it computes), so they are kept once loaded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use anyhow::Result;

use super::{Backend, BatchSizes, Batching, TextTokenizer};
use crate::store::StoredModel;
use crate::tag::Tag;

/// The models loaded in this host, by exact tag.
pub struct ModelCache {
    weights: Mutex<HashMap<Tag, Weak<dyn Backend>>>,
    /// One load at a time per model.
    loading: Mutex<HashMap<Tag, Arc<tokio::sync::Mutex<()>>>>,
    tokenizers: Mutex<HashMap<Tag, Option<Arc<TextTokenizer>>>>,
    /// Models whose files were checked against their digests in this process.
    verified: Mutex<std::collections::HashSet<String>>,
    batch_sizes: BatchSizes,
    batching: Batching,
}

impl ModelCache {
    /// A cache whose runners batch as `batching` says and report batch sizes
    /// into `batch_sizes`.
    pub fn new(batch_sizes: BatchSizes, mut batching: Batching) -> ModelCache {
        batching.max_batch_size = batching.max_batch_size.max(1);
        ModelCache {
            weights: Mutex::default(),
            loading: Mutex::default(),
            tokenizers: Mutex::default(),
            verified: Mutex::default(),
            batch_sizes,
            batching,
        }
    }

    pub fn batching(&self) -> &Batching {
        &self.batching
    }

    pub fn batch_sizes(&self) -> &BatchSizes {
        &self.batch_sizes
    }

    /// The model's weights, loaded (off the executor) unless some runner
    /// holds them already.
    pub async fn weights(&self, model: &StoredModel) -> Result<Arc<dyn Backend>> {
        let tag = model.tag();
        let lock = Arc::clone(self.loading.lock().unwrap().entry(tag.clone()).or_default());
        let _one_load = lock.lock().await;
        if let Some(backend) = self.weights.lock().unwrap().get(&tag).and_then(Weak::upgrade) {
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
            super::load_backend(&tag2, &dir)
        })
        .await??;
        self.verified.lock().unwrap().insert(model.digest.clone());
        tracing::info!(model = %tag, took_ms = started.elapsed().as_millis() as u64, backend = %backend.describe(), "weights loaded");
        self.weights.lock().unwrap().insert(tag, Arc::downgrade(&backend));
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

    /// How many models have their weights in memory now.
    pub fn loaded(&self) -> usize {
        self.weights.lock().unwrap().values().filter(|w| w.strong_count() > 0).count()
    }

    /// Whether this model's weights are in memory now.
    pub fn is_loaded(&self, tag: &Tag) -> bool {
        self.weights.lock().unwrap().get(tag).is_some_and(|w| w.strong_count() > 0)
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
