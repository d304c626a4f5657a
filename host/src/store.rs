//! The local store of models, bentos and compiled components.
//!
//! Everything the host keeps on disk lives under one root, `$WASMBENTO_HOME`
//! (default: `wasmbento` in the user's data directory):
//!
//! ```text
//! models/<name>/<version>/        model files (config.json, model.safetensors, ...)
//! models/<name>/<version>/model.json   what was imported, from where, file digests
//! bentos/<name>/<version>/bento.toml   the bento manifest
//! bentos/<name>/<version>/service.wasm the component
//! cache/compiled/<digest>-<engine>.cwasm  precompiled components
//! deployments/<name>.json              a deployment's traffic and scaling
//! ```
//!
//! Entries appear atomically: they are written under `tmp/` and renamed into
//! place, so a crash never leaves a half-written model or bento visible.
//! `latest` resolves to the most recently created version. All access goes
//! through [`Store`], so the on-disk format is this module's business alone.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::BentoManifest;
use crate::tag::Tag;

const MODEL_INFO: &str = "model.json";
const BENTO_MANIFEST: &str = "bento.toml";
const BENTO_COMPONENT: &str = "service.wasm";

/// The store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What `model.json` records about an imported model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// Where it was imported from (a directory or an `hf://` reference).
    pub source: String,
    pub created: String,
    pub files: Vec<FileInfo>,
}

/// One file of a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileInfo {
    /// Path relative to the model directory, `/`-separated.
    pub path: String,
    pub size: u64,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// A model resolved to a directory of the store.
#[derive(Debug, Clone)]
pub struct StoredModel {
    pub info: ModelInfo,
    pub dir: PathBuf,
}

impl StoredModel {
    pub fn tag(&self) -> Tag {
        Tag { name: self.info.name.clone(), version: self.info.version.clone() }
    }
}

/// A bento resolved to its manifest and component file.
#[derive(Debug, Clone)]
pub struct StoredBento {
    pub manifest: BentoManifest,
    pub component_path: PathBuf,
}

impl Store {
    /// The store at `$WASMBENTO_HOME`, or in the user's data directory.
    pub fn from_env() -> Result<Store> {
        let root = match std::env::var_os("WASMBENTO_HOME") {
            Some(home) if !home.is_empty() => PathBuf::from(home),
            _ => dirs::data_dir()
                .ok_or_else(|| anyhow!("no data directory for this user; set WASMBENTO_HOME"))?
                .join("wasmbento"),
        };
        Store::open(root)
    }

    /// The store rooted at `root`, created if missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for sub in ["models", "bentos", "tmp", "cache/compiled"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating the store at {}", root.display()))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where precompiled components are cached.
    pub fn compiled_cache_dir(&self) -> PathBuf {
        self.root.join("cache/compiled")
    }

    /// A fresh scratch directory under `tmp/`, on the same file system as the
    /// store so that finished entries can be renamed into place.
    pub fn scratch_dir(&self) -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new().prefix("wip-").tempdir_in(self.root.join("tmp"))?)
    }

    // ---- models ----

    /// Copies a model directory into the store as `name` (with `version`, or
    /// a version derived from the files' digests when none is given).
    /// Importing the same files twice yields the same version.
    pub fn import_model_dir(&self, src: &Path, tag: &Tag, source: &str) -> Result<StoredModel> {
        if !src.is_dir() {
            bail!("{} is not a directory", src.display());
        }
        let scratch = self.scratch_dir()?;
        let mut files = Vec::new();
        copy_tree(src, src, scratch.path(), &mut files)?;
        if files.is_empty() {
            bail!("{} holds no files", src.display());
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let version = if tag.is_latest() { content_version(&files) } else { tag.version.clone() };
        let info = ModelInfo {
            name: tag.name.clone(),
            version,
            source: source.to_string(),
            created: rfc3339(SystemTime::now()),
            files,
        };
        let dest = self.root.join("models").join(&info.name).join(&info.version);
        if dest.exists() {
            let existing = self.read_model_info(&dest)?;
            if same_files(&existing.files, &info.files) {
                return Ok(StoredModel { info: existing, dir: dest });
            }
            bail!(
                "model {}:{} already exists with different files; pick another version",
                info.name,
                info.version
            );
        }
        fs::write(scratch.path().join(MODEL_INFO), serde_json::to_vec_pretty(&info)?)?;
        publish(scratch, &dest)?;
        Ok(StoredModel { info, dir: dest })
    }

    /// Finds a model by tag (`latest` resolves to the newest).
    pub fn model(&self, tag: &Tag) -> Result<StoredModel> {
        let versions = self.root.join("models").join(&tag.name);
        let dir = if tag.is_latest() {
            newest(&versions, |dir| Ok(self.read_model_info(dir)?.created))?
        } else {
            Some(versions.join(&tag.version)).filter(|d| d.is_dir())
        };
        let dir = dir.ok_or_else(|| {
            anyhow!("model {tag} is not in the store; add it with `wasmbento models import`")
        })?;
        Ok(StoredModel { info: self.read_model_info(&dir)?, dir })
    }

    /// Every stored model, sorted by name then version.
    pub fn models(&self) -> Result<Vec<StoredModel>> {
        let mut out = Vec::new();
        for dir in entries(&self.root.join("models"), 2)? {
            out.push(StoredModel { info: self.read_model_info(&dir)?, dir });
        }
        Ok(out)
    }

    fn read_model_info(&self, dir: &Path) -> Result<ModelInfo> {
        let path = dir.join(MODEL_INFO);
        let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?)
    }

    // ---- deployment configurations ----

    /// The stored configuration of a deployment, if any.
    pub fn deployment_config(&self, name: &str) -> Result<Option<crate::deployment::DeploymentConfig>> {
        let path = self.root.join("deployments").join(format!("{name}.json"));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Deletes a deployment's stored configuration (none is fine).
    pub fn delete_deployment_config(&self, name: &str) -> Result<()> {
        let path = self.root.join("deployments").join(format!("{name}.json"));
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("deleting {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Stores a deployment's configuration atomically: the old file or the
    /// new one is there in full after a crash at any point, never a mix.
    pub fn save_deployment_config(
        &self,
        name: &str,
        config: &crate::deployment::DeploymentConfig,
    ) -> Result<()> {
        let dir = self.root.join("deployments");
        fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        tmp.write_all(&serde_json::to_vec_pretty(config)?)?;
        tmp.as_file().sync_all()?;
        tmp.persist(dir.join(format!("{name}.json"))).map_err(|e| e.error)?;
        // Make the rename itself durable.
        fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }

    // ---- bentos ----

    /// Stores a built bento. Rebuilding the same version replaces it.
    pub fn put_bento(&self, manifest: &BentoManifest, component: &Path) -> Result<StoredBento> {
        let scratch = self.scratch_dir()?;
        fs::copy(component, scratch.path().join(BENTO_COMPONENT))
            .with_context(|| format!("copying {}", component.display()))?;
        fs::write(scratch.path().join(BENTO_MANIFEST), manifest.to_toml())?;
        let dest = self.root.join("bentos").join(&manifest.name).join(&manifest.version);
        if dest.exists() {
            // Move the old one aside first so the swap is a pair of renames.
            let old = self.scratch_dir()?;
            fs::rename(&dest, old.path().join("old"))?;
        }
        publish(scratch, &dest)?;
        self.bento(&manifest.tag())
    }

    /// Finds a bento by tag (`latest` resolves to the newest).
    pub fn bento(&self, tag: &Tag) -> Result<StoredBento> {
        let versions = self.root.join("bentos").join(&tag.name);
        let dir = if tag.is_latest() {
            newest(&versions, |dir| Ok(self.read_bento(dir)?.manifest.created))?
        } else {
            Some(versions.join(&tag.version)).filter(|d| d.is_dir())
        };
        let dir = dir.ok_or_else(|| {
            anyhow!("bento {tag} is not in the store; build it with `wasmbento build <plugin dir>`")
        })?;
        self.read_bento(&dir)
    }

    /// Every stored bento, sorted by name then version.
    pub fn bentos(&self) -> Result<Vec<StoredBento>> {
        entries(&self.root.join("bentos"), 2)?.iter().map(|d| self.read_bento(d)).collect()
    }

    fn read_bento(&self, dir: &Path) -> Result<StoredBento> {
        let path = dir.join(BENTO_MANIFEST);
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let manifest = BentoManifest::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(StoredBento { manifest, component_path: dir.join(BENTO_COMPONENT) })
    }
}

/// Renames a finished scratch directory to `dest`.
fn publish(scratch: tempfile::TempDir, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest.parent().expect("store entries have a parent"))?;
    let path = scratch.keep();
    fs::rename(&path, dest).with_context(|| format!("moving into {}", dest.display()))?;
    Ok(())
}

/// Directories exactly `depth` levels below `dir`, sorted.
fn entries(dir: &Path, depth: usize) -> Result<Vec<PathBuf>> {
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for d in level {
            let Ok(read) = fs::read_dir(&d) else { continue };
            for e in read {
                let e = e?;
                if e.file_type()?.is_dir() {
                    next.push(e.path());
                }
            }
        }
        level = next;
    }
    level.sort();
    Ok(level)
}

/// The version directory with the greatest creation time.
fn newest(versions: &Path, created: impl Fn(&Path) -> Result<String>) -> Result<Option<PathBuf>> {
    let mut best: Option<(String, PathBuf)> = None;
    for dir in entries(versions, 1)? {
        let when = created(&dir)?;
        if best.as_ref().is_none_or(|(b, _)| when >= *b) {
            best = Some((when, dir));
        }
    }
    Ok(best.map(|(_, d)| d))
}

/// Copies regular files from `dir` (below `base`) to `dest`, hashing as it goes.
fn copy_tree(base: &Path, dir: &Path, dest: &Path, files: &mut Vec<FileInfo>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // .git, .gitattributes, editor files
        }
        let path = entry.path();
        let rel = path.strip_prefix(base).expect("walked below base");
        let meta = fs::metadata(&path)?;
        if meta.is_dir() {
            fs::create_dir_all(dest.join(rel))?;
            copy_tree(base, &path, dest, files)?;
        } else if meta.is_file() {
            let (size, digest) = copy_hashed(&path, &dest.join(rel))?;
            let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>();
            files.push(FileInfo { path: rel.join("/"), size, digest });
        }
    }
    Ok(())
}

fn copy_hashed(from: &Path, to: &Path) -> Result<(u64, String)> {
    let mut input = fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut output = io::BufWriter::new(fs::File::create(to)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
        size += n as u64;
    }
    output.flush()?;
    Ok((size, format!("sha256:{}", hex::encode(hasher.finalize()))))
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A version derived from the files' names and digests: 16 hex characters.
fn content_version(files: &[FileInfo]) -> String {
    let mut hasher = Sha256::new();
    for f in files {
        hasher.update(f.path.as_bytes());
        hasher.update([0]);
        hasher.update(f.digest.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

fn same_files(a: &[FileInfo], b: &[FileInfo]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.path == y.path && x.digest == y.digest)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), sortable as text.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn model_dir(content: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.json"), content).unwrap();
        fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        fs::write(dir.path().join("1_Pooling/config.json"), "{}").unwrap();
        fs::write(dir.path().join(".gitattributes"), "x").unwrap();
        dir
    }

    #[test]
    fn imports_resolve_and_dedupe() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let src = model_dir("{\"a\":1}");
        let tag: Tag = "tiny".parse().unwrap();

        let first = store.import_model_dir(src.path(), &tag, "test").unwrap();
        assert_eq!(first.info.version.len(), 16);
        let paths: Vec<_> = first.info.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["1_Pooling/config.json", "config.json"]);
        assert!(first.dir.join("1_Pooling/config.json").is_file());

        // Same files: same version, no error.
        let again = store.import_model_dir(src.path(), &tag, "test").unwrap();
        assert_eq!(again.info.version, first.info.version);

        // Different files: a new version that `latest` now finds.
        std::thread::sleep(Duration::from_millis(2)); // distinct creation times
        let other = store.import_model_dir(model_dir("{\"a\":2}").path(), &tag, "test").unwrap();
        assert_ne!(other.info.version, first.info.version);
        assert_eq!(store.model(&tag).unwrap().info.version, other.info.version);
        assert_eq!(store.models().unwrap().len(), 2);

        let err = store.model(&"absent".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("absent:latest is not in the store"), "{err}");
        // No scratch directories left behind.
        assert_eq!(fs::read_dir(home.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn explicit_version_conflict_is_an_error() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let tag: Tag = "tiny:v1".parse().unwrap();
        store.import_model_dir(model_dir("1").path(), &tag, "test").unwrap();
        let err = store.import_model_dir(model_dir("2").path(), &tag, "test").unwrap_err();
        assert!(err.to_string().contains("already exists with different files"), "{err}");
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // 2024-02-29 (leap day)
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }
}
