//! `wasmbento build`: compile a plugin to a component and store it as a bento.
//!
//! Runs `cargo build --target wasm32-wasip2 --release` in the plugin
//! directory, asks the component for its APIs (`describe`), resolves the
//! models its `bento.toml` declares to exact versions in the store, and
//! writes component + completed manifest into the store.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};

use crate::instance::Runtime;
use crate::manifest::{BentoManifest, ComponentInfo, SourceManifest};
use crate::store::{Store, StoredBento, digest_of, rfc3339};
use crate::tag::Tag;

/// The target every plugin is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Builds the plugin in `dir` and stores the bento.
pub async fn build(store: &Store, runtime: &Runtime, dir: &Path) -> Result<StoredBento> {
    if !dir.is_dir() {
        bail!("{} is not a directory (expected a plugin crate with a bento.toml)", dir.display());
    }
    let manifest_path = dir.join("bento.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {} (every plugin needs one)", manifest_path.display()))?;
    let source = SourceManifest::parse(&text).with_context(|| format!("in {}", manifest_path.display()))?;

    // Resolve models first: a missing model should fail before a long build.
    let mut models = std::collections::BTreeMap::new();
    for (alias, tag) in &source.models {
        let tag: Tag = tag.parse()?;
        let model = store
            .model(&tag)
            .with_context(|| format!("{} declares models.{alias} = {tag:?}", manifest_path.display()))?;
        models.insert(alias.clone(), model.tag().to_string());
    }

    let wasm = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || cargo_build(&dir)).await??
    };
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let digest = digest_of(&bytes);

    // Compile once now: this checks the component links against the host,
    // asks it for its APIs, and leaves the compiled form in the cache.
    let (component, _) = {
        let (runtime, wasm, digest) = (runtime.clone(), wasm.clone(), digest.clone());
        tokio::task::spawn_blocking(move || runtime.load(&wasm, &digest)).await??
    };
    let apis = component.describe().await.context("asking the component for its APIs")?;
    if apis.is_empty() {
        bail!("the component describes no APIs");
    }
    for api in &apis {
        if api.name.is_empty()
            || !api.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            bail!(
                "API name {:?} is not a valid route segment (lowercase letters, digits, '-', '_')",
                api.name
            );
        }
    }

    let manifest = BentoManifest {
        name: source.name,
        version: source.version,
        description: source.description,
        created: rfc3339(SystemTime::now()),
        component: ComponentInfo { digest, size: bytes.len() as u64 },
        models,
        traffic: source.traffic,
        scaling: source.scaling,
        runners: source.runners,
        resources: source.resources,
        apis,
    };
    store.put_bento(&manifest, &wasm)
}

/// Runs cargo and returns the path of the component it produced.
fn cargo_build(dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running cargo (is the Rust toolchain installed?)")?;
    let stdout = child.stdout.take().expect("piped");
    let mut wasm = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if !is_cdylib {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            for f in files.iter().filter_map(|f| f.as_str()) {
                if f.ends_with(".wasm") {
                    wasm = Some(PathBuf::from(f));
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo build failed ({status}); if the target is missing, run `rustup target add {TARGET}`");
    }
    wasm.ok_or_else(|| anyhow!("cargo built no .wasm (is the plugin a cdylib crate?)"))
}
