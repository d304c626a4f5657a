//! Bentos and models through a real OCI registry (Debian's docker-registry):
//! round trip to a fresh store with the same answers, shared model blobs,
//! tampered blobs refused with nothing written, basic auth, and skopeo
//! reading what we push and what we store.

use oci_client::Reference;
use reqwest::StatusCode;
use serde_json::Value;
use wasmbento::oci::registry::{Progress, Registry, parse_reference};
use wasmbento::store::Store;
use wasmbento_tests::registry::{TestRegistry, skopeo};
use wasmbento_tests::{build_plugin, embeddings, import_tiny_bert, serve_options, temp_store, texts};

const MODEL: &str = "all-minilm-l6-v2";

/// A store with the embedder built on a tiny BERT.
async fn embedder_store() -> (tempfile::TempDir, Store) {
    let (home, store) = temp_store();
    import_tiny_bert(&store, MODEL, 11);
    build_plugin(&store, "plugins/embedder").await.unwrap();
    (home, store)
}

fn client(store: &Store, reference: &Reference) -> Registry {
    Registry::for_reference(store, reference, Progress::hidden()).unwrap()
}

/// Embeddings of two sentences from a server over `store`.
async fn answers(store: &Store) -> Vec<Vec<f32>> {
    let server = wasmbento::server::start(store, serve_options(&["embedder"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let res = reqwest::Client::new()
        .post(format!("http://{}/embedder/encode", server.addr))
        .json(&texts(&["the cat sat", "a dog"]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    server.shutdown().await.unwrap();
    embeddings(&body)
}

/// Names of the files in the store's staging directory, lock files aside.
fn staged(store: &Store) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(store.root().join("tmp")) else { return Vec::new() };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bento_round_trips_and_bentos_share_their_model() {
    let registry = TestRegistry::start(None);
    let (_a, store) = embedder_store().await;
    let before = answers(&store).await;
    let target = parse_reference(&format!("{}/team/embedder:0.1.0", registry.addr)).unwrap();
    let model = store.model(&MODEL.parse().unwrap()).unwrap();
    let model_bytes: u64 = model.info.files.iter().map(|f| f.size).sum();

    let pushed =
        client(&store, &target).push_bento(&store, &"embedder".parse().unwrap(), &target).await.unwrap();
    assert!(pushed.bytes_transferred > model_bytes, "{pushed:?}");
    // What we push is a CNCF Wasm artifact to skopeo.
    let raw: Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}", target.whole()),
    ]))
    .unwrap();
    assert_eq!(raw["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    assert_eq!(raw["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(raw["layers"][1]["mediaType"], "application/vnd.wasmbento.bento.manifest.v1+toml");

    // A second bento on the same model: its push sends none of the model's blobs.
    let original = store.bento(&"embedder".parse().unwrap()).unwrap();
    let mut twin = original.manifest.clone();
    twin.name = "twin".into();
    store.put_bento(&twin, &original.component_path).unwrap();
    let twin_ref = parse_reference(&format!("{}/team/twin:0.1.0", registry.addr)).unwrap();
    let pushed_twin =
        client(&store, &twin_ref).push_bento(&store, &"twin".parse().unwrap(), &twin_ref).await.unwrap();
    // The model's files and config were there already; only the twin's own blobs went.
    assert_eq!(pushed_twin.blobs_skipped, model.info.files.len() + 1, "{pushed_twin:?}");
    assert_eq!(pushed_twin.blobs_transferred, 3, "{pushed_twin:?}");

    // A fresh store pulls the bento, and its model with it: same answers.
    let (_b, fresh) = temp_store();
    let pulled = client(&fresh, &target).pull(&fresh, &target).await.unwrap();
    assert_eq!((pulled.kind.as_str(), pulled.tag.as_str()), ("bento", "embedder:0.1.0"));
    assert_eq!(pulled.digest, original.digest, "the manifest digest changed in transit");
    assert_eq!(fresh.models().unwrap().len(), 1);
    assert_eq!(answers(&fresh).await, before);
    // Pulling the twin fetches none of the model again.
    let twin_pulled = client(&fresh, &twin_ref).pull(&fresh, &twin_ref).await.unwrap();
    assert!(twin_pulled.blobs_skipped > model.info.files.len(), "{twin_pulled:?}");
    assert!(twin_pulled.bytes_transferred < 4096, "{twin_pulled:?}");
    // A re-pull fetches nothing.
    let again = client(&fresh, &target).pull(&fresh, &target).await.unwrap();
    assert_eq!(again.blobs_transferred, 0);
    // A blob corrupted in the store is noticed and fetched again.
    let component = original.manifest.component.digest.clone();
    let path = fresh.layout().blob_path(&component).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[7] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let repaired = client(&fresh, &target).pull(&fresh, &target).await.unwrap();
    assert_eq!(repaired.blobs_transferred, 1, "{repaired:?}");
    assert!(fresh.layout().verify_blob(&component).unwrap());

    // Delete locally, pull back into the same store.
    store.delete_bento(&"twin".parse().unwrap()).unwrap();
    let err = store.delete_model(&MODEL.parse().unwrap()).unwrap_err().to_string();
    assert!(err.contains("used by bento embedder:0.1.0"), "{err}");
    store.delete_bento(&"embedder".parse().unwrap()).unwrap();
    store.delete_model(&MODEL.parse().unwrap()).unwrap();
    assert!(store.bentos().unwrap().is_empty() && store.models().unwrap().is_empty());
    client(&store, &target).pull(&store, &target).await.unwrap();
    assert_eq!(answers(&store).await, before);

    // Concurrent pulls of one artifact into one store are safe.
    let (_c, shared) = temp_store();
    let (first, second) = (client(&shared, &target), client(&shared, &target));
    let (x, y) = tokio::join!(first.pull(&shared, &target), second.pull(&shared, &target));
    assert_eq!(x.unwrap().digest, y.unwrap().digest);
    assert_eq!(shared.bentos().unwrap().len(), 1);
    assert!(staged(&shared).is_empty(), "{:?}", staged(&shared));

    // skopeo copies the bento and its model into an OCI layout directory,
    // digests intact; a fresh store imports the bento from there and serves it.
    let copied = tempfile::tempdir().unwrap();
    let dir = copied.path().join("layout");
    let model_ref = wasmbento::oci::registry::model_reference(&target, &model.tag());
    for (from, name) in [(target.whole(), "embedder"), (model_ref.whole(), "model")] {
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{from}"),
            &format!("oci:{}:{name}", dir.display()),
        ]);
    }
    let (_d, imported) = temp_store();
    let (kind, tag, digest) = imported.import_layout(&dir, "embedder").unwrap();
    assert_eq!(
        (kind, tag.to_string(), digest),
        ("bento", "embedder:0.1.0".to_string(), original.digest.clone())
    );
    assert_eq!(answers(&imported).await, before);
    let err = imported.import_layout(&dir, "nope").unwrap_err().to_string();
    assert!(err.contains("no manifest named \"nope\""), "{err}");

    // A host with an empty store deploys the bento by its registry reference.
    let (_e, empty) = temp_store();
    let server = wasmbento::server::start(&empty, serve_options(&[])).await.unwrap();
    let http = reqwest::Client::new();
    let admin = format!("http://{}/admin/v1/deployments", server.addr);
    let res = http
        .post(&admin)
        .bearer_auth(wasmbento_tests::ADMIN_TOKEN)
        .json(&serde_json::json!({"bento": target.whole()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED, "{}", res.text().await.unwrap());
    server.state.deployments.get("embedder").unwrap().wait_ready().await.unwrap();
    let res = http
        .post(format!("http://{}/embedder/encode", server.addr))
        .json(&texts(&["the cat sat", "a dog"]))
        .send()
        .await
        .unwrap();
    assert_eq!(embeddings(&res.json().await.unwrap()), before);
    let missing = serde_json::json!({"bento": format!("{}/team/absent:1", registry.addr)});
    let res =
        http.post(&admin).bearer_auth(wasmbento_tests::ADMIN_TOKEN).json(&missing).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    server.shutdown().await.unwrap();

    // Our store is an OCI layout skopeo reads.
    let local: Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:bento/embedder:0.1.0", shared.root().display()),
    ]))
    .unwrap();
    assert_eq!(local["layers"][0]["mediaType"], "application/wasm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blobs_are_refused_and_nothing_is_written() {
    let registry = TestRegistry::start(None);
    let (_a, store) = embedder_store().await;
    let target = parse_reference(&format!("{}/t/embedder:0.1.0", registry.addr)).unwrap();
    client(&store, &target).push_bento(&store, &"embedder".parse().unwrap(), &target).await.unwrap();

    // Served tampered: flip a byte of the component in the registry's storage.
    let component = store.bento(&"embedder".parse().unwrap()).unwrap().manifest.component.digest;
    let data = registry.blob_data(&component);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let (_b, fresh) = temp_store();
    let err = format!("{:#}", client(&fresh, &target).pull(&fresh, &target).await.unwrap_err());
    assert!(err.contains("digest") || err.contains("verification"), "{err}");
    assert!(fresh.bentos().unwrap().is_empty(), "a bento was stored");
    assert!(fresh.models().unwrap().is_empty(), "a model was tagged before its bento was complete");
    assert!(!fresh.layout().has_blob(&component));
    assert!(staged(&fresh).is_empty(), "{:?}", staged(&fresh));

    // Asked for a model, given a bento: refused before any layer is fetched.
    let (_m, wrong) = temp_store();
    let err =
        format!("{:#}", client(&wrong, &target).pull_kind(&wrong, &target, Some("model")).await.unwrap_err());
    assert!(err.contains("is a bento, not a model"), "{err}");
    assert!(!wrong.layout().has_blob(&component));

    // Not a wasmbento artifact at all (an ordinary image config): refused
    // before its layer is fetched.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = wasmbento::oci::Layout::open(plain_dir.path(), plain_dir.path().join("tmp")).unwrap();
    let config = plain.put_bytes(br#"{"architecture":"amd64","os":"linux"}"#).unwrap();
    let layer = plain.put_bytes(b"not a tarball, but large enough to notice").unwrap();
    let manifest = oci_client::manifest::OciImageManifest {
        schema_version: 2,
        media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        config: config.descriptor("application/vnd.oci.image.config.v1+json"),
        layers: vec![layer.descriptor("application/vnd.oci.image.layer.v1.tar")],
        subject: None,
        artifact_type: None,
        annotations: None,
    };
    plain.put_manifest("plain", &serde_json::to_vec(&manifest).unwrap(), Default::default()).unwrap();
    let plain_ref = format!("{}/misc/plain:1", registry.addr);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:plain", plain_dir.path().display()),
        &format!("docker://{plain_ref}"),
    ]);
    let plain_ref = parse_reference(&plain_ref).unwrap();
    let err = format!("{:#}", client(&wrong, &plain_ref).pull(&wrong, &plain_ref).await.unwrap_err());
    assert!(err.contains("not a wasmbento bento or model"), "{err}");
    assert!(!wrong.layout().has_blob(&layer.digest), "the layer was fetched before the refusal");

    // Stored tampered: a corrupt blob in our store is not published.
    let (_c, other) = embedder_store().await;
    let path = other.layout().blob_path(&component).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let elsewhere = parse_reference(&format!("{}/t/elsewhere:0.1.0", registry.addr)).unwrap();
    let err = client(&other, &elsewhere).push_bento(&other, &"embedder".parse().unwrap(), &elsewhere).await;
    assert!(err.is_err(), "a corrupt component was pushed");
    let (_d, empty) = temp_store();
    assert!(client(&empty, &elsewhere).pull(&empty, &elsewhere).await.is_err(), "the manifest was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_needs_the_right_credentials_for_that_registry() {
    use oci_client::secrets::RegistryAuth;
    use wasmbento::oci::credentials::{Credentials, save};
    let registry = TestRegistry::start(Some(("alice", "s3cret")));
    let (_a, store) = embedder_store().await;
    let target = parse_reference(&format!("{}/secure/embedder:0.1.0", registry.addr)).unwrap();
    let bento = "embedder".parse().unwrap();

    let err = format!("{:#}", client(&store, &target).push_bento(&store, &bento, &target).await.unwrap_err());
    assert!(err.contains("refused") && err.contains("wasmbento login"), "{err}");

    let wrong = RegistryAuth::Basic("alice".into(), "guess".into());
    let err = format!(
        "{:#}",
        Registry::with_auth(&registry.addr, wrong, Progress::hidden()).check_login().await.unwrap_err()
    );
    assert!(err.contains("refused"), "{err}");
    let right = RegistryAuth::Basic("alice".into(), "s3cret".into());
    Registry::with_auth(&registry.addr, right, Progress::hidden()).check_login().await.unwrap();

    // Filed for another registry: not used here.
    let alice = Credentials { username: "alice".into(), password: "s3cret".into() };
    save(store.root(), "localhost:1", &alice).unwrap();
    assert!(client(&store, &target).push_bento(&store, &bento, &target).await.is_err());
    save(store.root(), &registry.addr, &alice).unwrap();
    client(&store, &target).push_bento(&store, &bento, &target).await.unwrap();

    let (_b, fresh) = temp_store();
    assert!(client(&fresh, &target).pull(&fresh, &target).await.is_err());
    save(fresh.root(), &registry.addr, &alice).unwrap();
    client(&fresh, &target).pull(&fresh, &target).await.unwrap();
    assert_eq!(fresh.bentos().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_token_flow_trades_credentials_for_a_token() {
    use wasmbento::oci::credentials::{Credentials, save};
    let registry = TestRegistry::start_behind_proxy();
    let front = wasmbento_tests::registry::TokenProxy::start(&registry.addr, "bob", "hunter2").await;
    let (_a, store) = embedder_store().await;
    let target = parse_reference(&format!("{}/tokens/embedder:0.1.0", front.addr)).unwrap();
    let bento = "embedder".parse().unwrap();

    // Anonymous: the token endpoint refuses, and the error says so.
    let err = format!("{:#}", client(&store, &target).push_bento(&store, &bento, &target).await.unwrap_err());
    assert!(err.contains("refused"), "{err}");
    assert_eq!(front.tokens_issued.load(std::sync::atomic::Ordering::SeqCst), 0);

    let bob = Credentials { username: "bob".into(), password: "hunter2".into() };
    save(store.root(), &front.addr, &bob).unwrap();
    client(&store, &target).push_bento(&store, &bento, &target).await.unwrap();
    assert!(front.tokens_issued.load(std::sync::atomic::Ordering::SeqCst) > 0);

    let (_b, fresh) = temp_store();
    save(fresh.root(), &front.addr, &bob).unwrap();
    let pulled = client(&fresh, &target).pull(&fresh, &target).await.unwrap();
    assert_eq!(pulled.tag, "embedder:0.1.0");
    assert_eq!(answers(&fresh).await, answers(&store).await);
}

/// A 9 MiB file goes up in chunks of at most 4 MiB; a download that breaks
/// off halfway leaves the store as it was (nothing tagged, nothing staged),
/// and the next pull completes with the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blobs_go_up_in_chunks_and_a_broken_pull_leaves_nothing() {
    use std::sync::atomic::Ordering::SeqCst;
    use wasmbento::oci::credentials::{Credentials, save};
    let registry = TestRegistry::start_behind_proxy();
    let front = wasmbento_tests::registry::TokenProxy::start(&registry.addr, "bob", "hunter2").await;
    let bob = Credentials { username: "bob".into(), password: "hunter2".into() };

    let (_a, store) = temp_store();
    let dir = tempfile::tempdir().unwrap();
    wasmbento_tests::tiny_bert::write(dir.path(), 4);
    let big: Vec<u8> = (0..9u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(dir.path().join("extra.bin"), &big).unwrap();
    let tag = "big-model:1".parse().unwrap();
    store.import_model_dir(dir.path(), &tag, "test").unwrap();
    save(store.root(), &front.addr, &bob).unwrap();
    let target = parse_reference(&format!("{}/team/models/big-model:1", front.addr)).unwrap();
    client(&store, &target).push_model(&store, &tag, &target).await.unwrap();
    let largest = front.seen.largest_request.load(SeqCst);
    assert!(largest <= 4 << 20, "a request of {largest} bytes");
    assert!(front.seen.patches.load(SeqCst) >= 3, "9 MiB in fewer than 3 chunks");

    let (_b, fresh) = temp_store();
    save(fresh.root(), &front.addr, &bob).unwrap();
    front.seen.break_downloads.store(true, SeqCst);
    let err = client(&fresh, &target).pull(&fresh, &target).await.unwrap_err();
    eprintln!("broken pull: {err:#}");
    assert!(fresh.models().unwrap().is_empty(), "a model was tagged after a broken pull");
    assert!(staged(&fresh).is_empty(), "left in staging: {:?}", staged(&fresh));

    front.seen.break_downloads.store(false, SeqCst);
    client(&fresh, &target).pull(&fresh, &target).await.unwrap();
    let pulled = fresh.model(&tag).unwrap();
    assert_eq!(std::fs::read(pulled.dir.join("extra.bin")).unwrap(), big);
}
