//! `hf://` imports go to the hub named by `HF_ENDPOINT`: here a hub on
//! loopback that serves the tiny BERT's files through the hub's HTTP API
//! (repository info, recursive tree, HEAD and GET of `resolve/` URLs).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use wasmbento::hub::HubRef;
use wasmbento_tests::{temp_store, tiny_bert};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

struct Hub {
    files: BTreeMap<String, Vec<u8>>,
    /// Every request, as "METHOD path".
    seen: Mutex<Vec<String>>,
}

async fn repo_info(
    State(hub): State<Arc<Hub>>,
    Path((owner, name, rev)): Path<(String, String, String)>,
) -> Response {
    hub.seen.lock().unwrap().push(format!("GET info {owner}/{name}@{rev}"));
    if (owner.as_str(), name.as_str()) != ("acme", "tiny-bert") {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"error": "Repository not found"}))).into_response();
    }
    axum::Json(json!({"id": "acme/tiny-bert", "sha": SHA})).into_response()
}

async fn tree(State(hub): State<Arc<Hub>>, Path((_, _, _rev)): Path<(String, String, String)>) -> Response {
    let entries: Vec<_> = hub
        .files
        .iter()
        .map(|(path, bytes)| json!({"type": "file", "oid": format!("{:040x}", bytes.len()), "size": bytes.len(), "path": path}))
        .collect();
    axum::Json(entries).into_response()
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    method: Method,
    Path((_, _, rev, path)): Path<(String, String, String, String)>,
) -> Response {
    hub.seen.lock().unwrap().push(format!("{method} {path}@{rev}"));
    let Some(bytes) = hub.files.get(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, format!("\"{:x}\"", bytes.len()).parse().unwrap());
    headers.insert("x-repo-commit", SHA.parse().unwrap());
    headers.insert(header::CONTENT_LENGTH, bytes.len().into());
    if method == Method::HEAD {
        return (headers, ()).into_response();
    }
    (headers, bytes.clone()).into_response()
}

#[test]
fn imports_from_the_hub_named_by_hf_endpoint() {
    let model_dir = tempfile::tempdir().unwrap();
    tiny_bert::write(model_dir.path(), 3);
    let mut files = BTreeMap::new();
    for rel in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        files.insert(rel.to_string(), std::fs::read(model_dir.path().join(rel)).unwrap());
    }
    // Not wanted: the import skips weights in other formats.
    files.insert("pytorch_model.bin".into(), vec![0; 1000]);
    let hub = Arc::new(Hub { files, seen: Mutex::new(Vec::new()) });

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/api/models/{owner}/{name}/revision/{rev}", get(repo_info))
        .route("/api/models/{owner}/{name}/tree/{rev}", get(tree))
        .route("/{owner}/{name}/resolve/{rev}/{*path}", get(resolve).head(resolve))
        .with_state(Arc::clone(&hub));
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });

    let hf_home = tempfile::tempdir().unwrap();
    // SAFETY: this binary's only test sets these before any thread reads the environment.
    unsafe {
        std::env::set_var("HF_ENDPOINT", format!("http://{addr}"));
        std::env::set_var("HF_HOME", hf_home.path());
        std::env::remove_var("HF_TOKEN");
    }

    let (_home, store) = temp_store();
    let source = "hf://acme/tiny-bert@main";
    let hub_ref = HubRef::parse(source).unwrap().unwrap();
    let model =
        rt.block_on(wasmbento::hub::import(&store, &hub_ref, source, &"tiny".parse().unwrap())).unwrap();

    let mut imported: Vec<&str> = model.info.files.iter().map(|f| f.path.as_str()).collect();
    imported.sort();
    assert_eq!(
        imported,
        [
            "1_Pooling/config.json",
            "config.json",
            "model.safetensors",
            "modules.json",
            "sentence_bert_config.json",
            "tokenizer.json"
        ]
    );
    for f in &model.info.files {
        assert_eq!(std::fs::read(model.dir.join(&f.path)).unwrap(), hub.files[&f.path], "{}", f.path);
    }
    assert_eq!(model.info.source, source);
    let seen = hub.seen.lock().unwrap().clone();
    assert!(seen.contains(&"GET info acme/tiny-bert@main".to_string()), "{seen:?}");
    assert!(!seen.iter().any(|s| s.contains("pytorch_model.bin")), "{seen:?}");

    // A repository the hub does not have: a clear error, nothing stored.
    let missing = HubRef::parse("hf://acme/absent").unwrap().unwrap();
    let err = rt
        .block_on(wasmbento::hub::import(&store, &missing, "hf://acme/absent", &"absent".parse().unwrap()))
        .unwrap_err();
    assert!(format!("{err:#}").contains("acme/absent"), "{err:#}");
    assert!(store.model(&"absent".parse().unwrap()).is_err());
    let left: Vec<String> = std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}
