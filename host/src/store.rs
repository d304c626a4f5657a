//! The local store of models, bentos and compiled components.
//!
//! Everything the host keeps on disk lives under one root, `$WASMBENTO_HOME`
//! (default: `wasmbento` in the user's data directory). The root is an OCI
//! image layout ([`crate::oci::layout`]), so standard tools read it
//! (`skopeo inspect --raw oci:$WASMBENTO_HOME:bento/embedder:0.1.0`):
//!
//! ```text
//! oci-layout, index.json       the layout; tags are bento/<name>:<version>, model/<name>:<version>
//! blobs/sha256/<hex>           components, bento manifests, model files, configs, manifests
//! cache/models/<hex>/          a model's files by name (hard links to its blobs), for the runners
//! cache/compiled/<digest>-<engine>.cwasm  precompiled components
//! deployments/<name>.json      a deployment's traffic and scaling
//! tmp/                         staging; nothing here is visible as stored
//! ```
//!
//! The format of bentos and models is in [`crate::oci::media`]. A model's
//! files are stored once however many bentos use it. Entries appear
//! atomically: blobs are staged, checked and renamed in, and a tag is added
//! last. `latest` resolves to the most recently created version. All access
//! goes through [`Store`].

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use oci_client::manifest::{OciDescriptor, OciImageManifest};

use crate::manifest::BentoManifest;
use crate::oci::layout::{Blob, Layout};
use crate::oci::media;
use crate::tag::Tag;

/// Tags of models in the layout: `model/<name>:<version>`.
const MODEL_REF: &str = "model/";
/// Tags of bentos in the layout: `bento/<name>:<version>`.
const BENTO_REF: &str = "bento/";

/// The store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    layout: Layout,
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
    /// The model's files by name.
    pub dir: PathBuf,
    /// Digest of the model's OCI manifest.
    pub digest: String,
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
    /// Digest of the bento's OCI manifest.
    pub digest: String,
    /// The OCI manifest itself.
    pub oci: OciImageManifest,
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
        for sub in ["tmp", "cache/compiled", "cache/models"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating the store at {}", root.display()))?;
        }
        let layout = Layout::open(&root, root.join("tmp"))?;
        Ok(Store { root, layout })
    }

    /// The OCI image layout the store keeps its content in.
    pub fn layout(&self) -> &Layout {
        &self.layout
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
        self.import_model_dir_with(src, tag, source, &|_| {})
    }

    /// [`Store::import_model_dir`], reporting bytes copied to `progress` as it goes.
    pub fn import_model_dir_with(
        &self,
        src: &Path,
        tag: &Tag,
        source: &str,
        progress: &dyn Fn(u64),
    ) -> Result<StoredModel> {
        if !src.is_dir() {
            bail!("{} is not a directory", src.display());
        }
        let _writing = self.layout.writing()?;
        let mut files = Vec::new();
        store_tree(&self.layout, src, src, &mut files, progress)?;
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
        self.put_model(info)
    }

    /// Tags a model whose files are in the layout already.
    pub fn put_model(&self, info: ModelInfo) -> Result<StoredModel> {
        let reference = format!("{MODEL_REF}{}:{}", info.name, info.version);
        if let Some(existing) = self.layout.resolve(&reference)? {
            let existing = self.stored_model(&existing.digest)?;
            if same_files(&existing.info.files, &info.files) {
                return Ok(existing);
            }
            bail!(
                "model {}:{} already exists with different files; pick another version",
                info.name,
                info.version
            );
        }
        let config = self.layout.put_bytes(&serde_json::to_vec_pretty(&info)?)?;
        let layers = info
            .files
            .iter()
            .map(|f| {
                let blob = Blob { digest: f.digest.clone(), size: f.size };
                with_annotation(blob.descriptor(media::MODEL_FILE), media::TITLE, &f.path)
            })
            .collect();
        let created = BTreeMap::from([(media::CREATED.to_string(), info.created.clone())]);
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.into()),
            config: config.descriptor(media::MODEL_CONFIG),
            layers,
            subject: None,
            artifact_type: Some(media::MODEL_ARTIFACT.into()),
            annotations: Some(created.clone()),
        };
        let blob = self.layout.put_manifest(&reference, &serde_json::to_vec_pretty(&manifest)?, created)?;
        self.stored_model(&blob.digest)
    }

    /// Finds a model by tag (`latest` resolves to the newest).
    pub fn model(&self, tag: &Tag) -> Result<StoredModel> {
        let digest = self.resolve(MODEL_REF, tag)?.ok_or_else(|| {
            anyhow!("model {tag} is not in the store; add it with `wasmbento models import` or `models pull`")
        })?;
        self.stored_model(&digest)
    }

    /// Every stored model, sorted by name then version.
    pub fn models(&self) -> Result<Vec<StoredModel>> {
        self.layout.tagged(MODEL_REF)?.values().map(|e| self.stored_model(&e.digest)).collect()
    }

    /// A model by the digest of its manifest, with its files laid out by name.
    pub fn stored_model(&self, digest: &str) -> Result<StoredModel> {
        let manifest = self.layout.read_manifest(digest)?;
        if manifest.config.media_type != media::MODEL_CONFIG {
            bail!("{digest} is not a model (config {})", manifest.config.media_type);
        }
        let info: ModelInfo = serde_json::from_slice(&self.layout.read_blob(&manifest.config.digest)?)
            .with_context(|| format!("parsing the config of model {digest}"))?;
        let dir = self.model_files(digest, &info)?;
        Ok(StoredModel { info, dir, digest: digest.to_string() })
    }

    /// `cache/models/<hex>/`: the model's files by name, hard links to the
    /// blobs (copies where links are not possible), made once.
    fn model_files(&self, digest: &str, info: &ModelInfo) -> Result<PathBuf> {
        let dir = self.root.join("cache/models").join(crate::oci::sha256_hex(digest)?);
        if dir.is_dir() {
            return Ok(dir);
        }
        let scratch = self.scratch_dir()?;
        for file in &info.files {
            let rel = safe_relative_path(&file.path)?;
            let dest = scratch.path().join(rel);
            fs::create_dir_all(dest.parent().expect("a file has a parent"))?;
            let blob = self.layout.blob_path(&file.digest)?;
            if !blob.is_file() {
                bail!(
                    "model {}:{}: file {} ({}) is missing from the store",
                    info.name,
                    info.version,
                    file.path,
                    file.digest
                );
            }
            if fs::hard_link(&blob, &dest).is_err() {
                fs::copy(&blob, &dest)?;
            }
        }
        match fs::rename(scratch.keep(), &dir) {
            Ok(()) => Ok(dir),
            // Another process laid it out first.
            Err(_) if dir.is_dir() => Ok(dir),
            Err(e) => Err(e).with_context(|| format!("laying out {}", dir.display())),
        }
    }

    /// Deletes a model unless a bento uses it; frees its blobs that nothing
    /// else uses.
    pub fn delete_model(&self, tag: &Tag) -> Result<StoredModel> {
        let model = self.model(tag)?;
        for bento in self.bentos()? {
            if bento.model_digests()?.contains(&model.digest) {
                bail!(
                    "model {} is used by bento {}; delete the bento first",
                    model.tag(),
                    bento.manifest.tag()
                );
            }
        }
        self.layout.untag(&format!("{MODEL_REF}{}", model.tag()))?;
        let _ = fs::remove_dir_all(&model.dir);
        self.layout.collect_garbage()?;
        Ok(model)
    }

    /// The digest tagged `<prefix><name>:<version>`; `latest` is the most
    /// recently created version.
    fn resolve(&self, prefix: &str, tag: &Tag) -> Result<Option<String>> {
        if !tag.is_latest() {
            return Ok(self.layout.resolve(&format!("{prefix}{tag}"))?.map(|e| e.digest));
        }
        let versions = self.layout.tagged(&format!("{prefix}{}:", tag.name))?;
        let created = |e: &oci_client::manifest::ImageIndexEntry| {
            e.annotations.as_ref().and_then(|a| a.get(media::CREATED)).cloned().unwrap_or_default()
        };
        Ok(versions.values().max_by_key(|e| created(e)).map(|e| e.digest.clone()))
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

    /// Every stored deployment configuration, by deployment name.
    pub fn deployment_configs(&self) -> Result<Vec<(String, crate::deployment::DeploymentConfig)>> {
        let dir = self.root.join("deployments");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut configs = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json"))
            else {
                continue; // temporary files of a write in progress, or killed
            };
            if let Some(config) = self.deployment_config(name)? {
                configs.push((name.to_string(), config));
            }
        }
        configs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(configs)
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
        let _writing = self.layout.writing()?;
        let wasm = self.layout.put_file(component)?;
        if wasm.digest != manifest.component.digest {
            bail!(
                "the component changed while it was stored ({} vs {})",
                wasm.digest,
                manifest.component.digest
            );
        }
        let toml = self.layout.put_bytes(manifest.to_toml().as_bytes())?;
        // The CNCF Wasm artifact config.
        let config = serde_json::json!({
            "created": manifest.created,
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [wasm.digest],
        });
        let config = self.layout.put_bytes(&serde_json::to_vec_pretty(&config)?)?;
        let mut annotations = BTreeMap::from([
            (media::CREATED.to_string(), manifest.created.clone()),
            (media::TITLE.to_string(), manifest.tag().to_string()),
        ]);
        for (alias, tag) in &manifest.models {
            let model = self.model(&tag.parse()?)?;
            annotations
                .insert(format!("{}{alias}", media::MODEL_REF_PREFIX), format!("{tag}@{}", model.digest));
        }
        let oci = OciImageManifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.into()),
            config: config.descriptor(media::WASM_CONFIG),
            layers: vec![
                with_annotation(wasm.descriptor(media::WASM_LAYER), media::TITLE, "service.wasm"),
                with_annotation(toml.descriptor(media::BENTO_MANIFEST), media::TITLE, "bento.toml"),
            ],
            subject: None,
            artifact_type: None,
            annotations: Some(annotations),
        };
        let created = BTreeMap::from([(media::CREATED.to_string(), manifest.created.clone())]);
        let reference = format!("{BENTO_REF}{}", manifest.tag());
        let blob = self.layout.put_manifest(&reference, &serde_json::to_vec_pretty(&oci)?, created)?;
        self.stored_bento(&blob.digest)
    }

    /// Finds a bento by tag (`latest` resolves to the newest).
    pub fn bento(&self, tag: &Tag) -> Result<StoredBento> {
        let digest = self.resolve(BENTO_REF, tag)?.ok_or_else(|| {
            anyhow!(
                "bento {tag} is not in the store; build it with `wasmbento build <plugin dir>` or pull it"
            )
        })?;
        self.stored_bento(&digest)
    }

    /// Every stored bento, sorted by name then version.
    pub fn bentos(&self) -> Result<Vec<StoredBento>> {
        self.layout.tagged(BENTO_REF)?.values().map(|e| self.stored_bento(&e.digest)).collect()
    }

    /// A bento by the digest of its manifest.
    pub fn stored_bento(&self, digest: &str) -> Result<StoredBento> {
        let oci = self.layout.read_manifest(digest)?;
        let layer = |media_type: &str| {
            oci.layers
                .iter()
                .find(|l| l.media_type == media_type)
                .ok_or_else(|| anyhow!("{digest} is not a bento: no {media_type} layer"))
        };
        let component_path = self.layout.blob_path(&layer(media::WASM_LAYER)?.digest)?;
        let toml = self.layout.read_blob(&layer(media::BENTO_MANIFEST)?.digest)?;
        let manifest = BentoManifest::parse(std::str::from_utf8(&toml)?)
            .with_context(|| format!("parsing the bento.toml of {digest}"))?;
        Ok(StoredBento { manifest, component_path, digest: digest.to_string(), oci })
    }

    /// Tags an artifact fetched into the layout (a pull, an import from
    /// another layout): a model as `model/<name>:<version>`, a bento as
    /// `bento/<name>:<version>` after each model it names, which must be in
    /// the layout already. Checks what it tags; returns the kind and tag.
    pub fn tag_fetched(&self, digest: &str) -> Result<(&'static str, Tag)> {
        let bytes = self.layout.read_blob(digest)?;
        let manifest: OciImageManifest = serde_json::from_slice(&bytes)?;
        let created = |m: &OciImageManifest| {
            BTreeMap::from([(media::CREATED.to_string(), annotation(m, media::CREATED))])
        };
        match manifest.config.media_type.as_str() {
            media::MODEL_CONFIG => {
                let model = self.stored_model(digest)?;
                self.layout.put_manifest(
                    &format!("{MODEL_REF}{}", model.tag()),
                    &bytes,
                    created(&manifest),
                )?;
                Ok(("model", model.tag()))
            }
            media::WASM_CONFIG => {
                let bento = self.stored_bento(digest)?;
                let component = self.layout.blob_path(&bento.manifest.component.digest)?;
                if component != bento.component_path {
                    bail!("the component layer is not the component bento.toml names");
                }
                // Models first: a bento is tagged only when it can run.
                let models = bento.models()?;
                for (model_tag, model_digest) in models.values() {
                    let model = self.stored_model(model_digest)?;
                    if &model.tag() != model_tag {
                        bail!("the bento names model {model_tag} but {model_digest} is {}", model.tag());
                    }
                }
                for (model_tag, model_digest) in models.values() {
                    let model_bytes = self.layout.read_blob(model_digest)?;
                    let model_manifest: OciImageManifest = serde_json::from_slice(&model_bytes)?;
                    self.layout.put_manifest(
                        &format!("{MODEL_REF}{model_tag}"),
                        &model_bytes,
                        created(&model_manifest),
                    )?;
                }
                let tag = bento.manifest.tag();
                self.layout.put_manifest(&format!("{BENTO_REF}{tag}"), &bytes, created(&manifest))?;
                Ok(("bento", tag))
            }
            other => bail!("{digest} is not a wasmbento bento or model (config media type {other})"),
        }
    }

    /// Copies an artifact (a bento with its models, or a model) from another
    /// OCI image layout, e.g. one `skopeo copy` wrote; `name` is its
    /// `org.opencontainers.image.ref.name` there. Every blob is checked.
    pub fn import_layout(&self, dir: &Path, name: &str) -> Result<(&'static str, Tag, String)> {
        if !dir.join("oci-layout").is_file() {
            bail!("{} is not an OCI image layout (no oci-layout file)", dir.display());
        }
        let source = Layout::open(dir, self.root.join("tmp"))?;
        let entry = source.resolve(name)?.ok_or_else(|| {
            let names: Vec<String> = source.tagged("").map(|t| t.into_keys().collect()).unwrap_or_default();
            anyhow!("{} has no manifest named {name:?} (names: {})", dir.display(), names.join(", "))
        })?;
        let _writing = self.layout.writing()?;
        kind_of(&source.read_manifest(&entry.digest)?)
            .with_context(|| format!("{}:{name}", dir.display()))?;
        let manifest = self.copy_artifact(&source, &entry.digest)?;
        for (model_tag, model_digest) in model_refs(&manifest)?.values() {
            if !source.has_blob(model_digest) {
                bail!(
                    "model {model_tag} ({model_digest}), which the bento uses, is not in {}; copy it there too",
                    dir.display()
                );
            }
            self.copy_artifact(&source, model_digest)?;
        }
        let (kind, tag) = self.tag_fetched(&entry.digest)?;
        Ok((kind, tag, entry.digest))
    }

    /// Copies a manifest and its blobs from `source`, checking each digest.
    fn copy_artifact(&self, source: &Layout, digest: &str) -> Result<OciImageManifest> {
        let manifest = source.read_manifest(digest)?;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if self.layout.has_blob(&blob.digest) {
                continue;
            }
            let mut input = fs::File::open(source.blob_path(&blob.digest)?).with_context(|| {
                format!("blob {} is missing from {}", blob.digest, source.root().display())
            })?;
            let mut writer = self.layout.writer()?;
            io::copy(&mut input, &mut writer)?;
            writer.commit(Some(&blob.digest))?;
        }
        let bytes = source.read_blob(digest)?;
        self.layout.put_bytes(&bytes)?;
        Ok(manifest)
    }

    /// Deletes a bento (its models stay) and frees the blobs nothing else uses.
    pub fn delete_bento(&self, tag: &Tag) -> Result<StoredBento> {
        let bento = self.bento(tag)?;
        self.layout.untag(&format!("{BENTO_REF}{}", bento.manifest.tag()))?;
        self.layout.collect_garbage()?;
        Ok(bento)
    }
}

impl StoredBento {
    /// The models the bento names, by the names the guest uses: their tags
    /// and manifest digests.
    pub fn models(&self) -> Result<BTreeMap<String, (Tag, String)>> {
        model_refs(&self.oci).with_context(|| format!("bento {}", self.digest))
    }

    fn model_digests(&self) -> Result<Vec<String>> {
        Ok(self.models()?.into_values().map(|(_, d)| d).collect())
    }
}

/// `"bento"` or `"model"` by a manifest's config media type; anything else
/// is refused, naming what it is.
pub fn kind_of(manifest: &OciImageManifest) -> Result<&'static str> {
    match manifest.config.media_type.as_str() {
        media::MODEL_CONFIG => Ok("model"),
        media::WASM_CONFIG => Ok("bento"),
        other => bail!("not a wasmbento bento or model (config media type {other})"),
    }
}

/// The models a bento's manifest names (`dev.wasmbento.model.<alias>` =
/// `<tag>@<digest>`), by alias.
pub fn model_refs(manifest: &OciImageManifest) -> Result<BTreeMap<String, (Tag, String)>> {
    let mut out = BTreeMap::new();
    for (key, value) in manifest.annotations.iter().flatten() {
        let Some(alias) = key.strip_prefix(media::MODEL_REF_PREFIX) else { continue };
        let (tag, digest) =
            value.split_once('@').ok_or_else(|| anyhow!("annotation {key} is not <tag>@<digest>"))?;
        crate::oci::sha256_hex(digest)?;
        out.insert(alias.to_string(), (tag.parse()?, digest.to_string()));
    }
    Ok(out)
}

fn annotation(manifest: &OciImageManifest, key: &str) -> String {
    manifest.annotations.as_ref().and_then(|a| a.get(key)).cloned().unwrap_or_default()
}

fn with_annotation(mut d: OciDescriptor, key: &str, value: &str) -> OciDescriptor {
    d.annotations.get_or_insert_with(BTreeMap::new).insert(key.to_string(), value.to_string());
    d
}

/// A layer title as a path inside a model directory: relative, no `..`.
fn safe_relative_path(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if !ok {
        bail!("model file path {path:?} is not a plain relative path");
    }
    Ok(p.to_path_buf())
}

/// Stores the regular files below `dir` as blobs, recording their paths
/// relative to `base`. Hidden files (`.git`, `.gitattributes`) are skipped.
fn store_tree(
    layout: &Layout,
    base: &Path,
    dir: &Path,
    files: &mut Vec<FileInfo>,
    progress: &dyn Fn(u64),
) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = fs::metadata(&path)?;
        if meta.is_dir() {
            store_tree(layout, base, &path, files, progress)?;
        } else if meta.is_file() {
            let input = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let blob = layout
                .put_reader(Counting { inner: input, progress })
                .with_context(|| format!("copying {}", path.display()))?;
            let rel = path.strip_prefix(base).expect("walked below base");
            let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>();
            files.push(FileInfo { path: rel.join("/"), size: blob.size, digest: blob.digest });
        }
    }
    Ok(())
}

/// A reader that reports how many bytes went through it.
struct Counting<'a, R> {
    inner: R,
    progress: &'a dyn Fn(u64),
}

impl<R: io::Read> io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    crate::oci::layout::digest_of(bytes)
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
    fn a_killed_writer_leaves_the_old_configuration_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = crate::deployment::DeploymentConfig {
            bento: "hello:0.1.0".into(),
            traffic: Default::default(),
            scaling: Default::default(),
            runners: Default::default(),
            resources: Default::default(),
            restore: true,
        };
        store.save_deployment_config("d", &config).unwrap();
        // What a writer killed mid-write leaves: a partial temporary file
        // beside the configuration, which is untouched until the rename.
        let deployments = dir.path().join("deployments");
        std::fs::write(deployments.join(".tmpKILLED"), br#"{"bento": "hello:0.1.0", "traff"#).unwrap();
        assert_eq!(store.deployment_config("d").unwrap(), Some(config.clone()));
        let all = store.deployment_configs().unwrap();
        assert_eq!(all, vec![("d".to_string(), config)]);
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
        // No staging files or scratch directories left behind (only lock files).
        let left: Vec<_> = fs::read_dir(home.path().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // The store is an OCI layout: one tag per model version, files shared.
        let tags: Vec<String> = store
            .layout()
            .index()
            .unwrap()
            .manifests
            .iter()
            .filter_map(|m| crate::oci::layout::ref_name_of(m).map(str::to_string))
            .collect();
        assert_eq!(tags.len(), 2);
        assert!(tags.iter().all(|t| t.starts_with("model/tiny:")), "{tags:?}");
        // 1_Pooling/config.json is the same in both versions: one blob.
        let pooling: Vec<_> =
            store.models().unwrap().iter().map(|m| m.info.files[0].digest.clone()).collect();
        assert_eq!(pooling[0], pooling[1]);

        // Deleting a version frees only what no other version uses.
        store.delete_model(&first.tag()).unwrap();
        assert!(store.layout().has_blob(&pooling[0]));
        assert!(store.model(&first.tag()).is_err());
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
