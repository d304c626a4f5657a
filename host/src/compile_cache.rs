//! Precompiled components on disk.
//!
//! Compiling a component takes most of a second; loading its precompiled
//! form takes well under a millisecond. Artifacts are keyed by the
//! component's content digest and the engine's compatibility hash (wasmtime
//! version, compiler settings, CPU features), so a changed component or
//! engine never loads a stale artifact. Writes go to a temporary file and are
//! renamed into place, so a crash leaves no half-written artifact.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Whether a component was compiled now or loaded from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Compiled,
    FromCache,
}

/// The cache directory and the engine it serves.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    pub fn new(dir: PathBuf, engine_key: String) -> CompileCache {
        CompileCache { dir, engine_key }
    }

    fn artifact_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for the file at `path` whose digest is `digest`.
    pub fn load(&self, engine: &Engine, path: &Path, digest: &str) -> Result<(Component, Loaded)> {
        let artifact = self.artifact_path(digest);
        if artifact.is_file() {
            // SAFETY: the artifact was written by `Component::serialize` of an
            // engine with the same compatibility hash, into the host's own
            // store; wasmtime still checks its header before use.
            match unsafe { Component::deserialize_file(engine, &artifact) } {
                Ok(component) => return Ok((component, Loaded::FromCache)),
                Err(e) => {
                    tracing::warn!(artifact = %artifact.display(), error = %e, "recompiling: cached artifact unusable")
                }
            }
        }
        let started = std::time::Instant::now();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let actual = crate::store::digest_of(&bytes);
        anyhow::ensure!(actual == digest, "{} has digest {actual}, expected {digest}", path.display());
        let component =
            Component::new(engine, &bytes).map_err(anyhow::Error::from).context("compiling the component")?;
        tracing::info!(digest, took_ms = started.elapsed().as_millis() as u64, "component compiled");
        std::fs::create_dir_all(&self.dir)?;
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::fs::write(tmp.path(), component.serialize()?)?;
        tmp.persist(&artifact).map_err(|e| e.error)?;
        Ok((component, Loaded::Compiled))
    }
}
