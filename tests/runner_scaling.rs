//! A runner at zero replicas lets go of its model's weights, and the
//! process's resident memory drops by about their size; the next request
//! wakes it (loading them again) and gets the same answer.
//!
//! Alone in its test binary: it measures this process's resident memory,
//! which other tests running beside it would disturb.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmbento_tests::{
    ADMIN_TOKEN, build_plugin, embeddings, error_message, max_abs_diff, metric, minilm_dir, serve_options,
    temp_store, texts,
};

const MODEL: &str = "all-minilm-l6-v2";

/// This process's resident set, in MiB (Linux).
fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_at_zero_unloads_its_weights_and_wakes_on_demand() {
    let (_home, store) = temp_store();
    store.import_model_dir(&minilm_dir(), &MODEL.parse().unwrap(), "test").unwrap();
    build_plugin(&store, "plugins/embedder").await.unwrap();
    let server = wasmbento::server::start(&store, serve_options(&["embedder"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let (base, http) = (format!("http://{}", server.addr), reqwest::Client::new());
    let encode = |body: Value| {
        let (http, url) = (http.clone(), format!("{base}/embedder/encode"));
        async move {
            let res = http.post(url).json(&body).send().await.unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let admin = |path: &str| format!("{base}/admin/v1/deployments/embedder{path}");
    let sentence = texts(&["A runner scales to zero and back."]);

    let (status, body) = encode(sentence.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = embeddings(&body);
    let runner = server.state.deployments.get("embedder").unwrap().runner(MODEL).expect("the model's runner");
    assert_eq!((runner.replicas(), runner.status().loaded), (1, true));
    assert_eq!(runner.status().device, "cpu");
    let loaded_mib = resident_mib();
    let scrape = || {
        let (http, url) = (http.clone(), format!("{base}/metrics"));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let weights = r#"wasmbento_device_weights_bytes{device="cpu"}"#;
    let metrics = scrape().await;
    let held = metric(&metrics, weights).expect("the weights gauge");
    // 22.7 M FP32 parameters.
    assert!((80e6..100e6).contains(&held), "{weights} = {held}");
    let total = metric(&metrics, r#"wasmbento_device_memory_bytes{device="cpu",kind="total"}"#);
    let free = metric(&metrics, r#"wasmbento_device_memory_bytes{device="cpu",kind="free"}"#);
    assert!(matches!((total, free), (Some(t), Some(f)) if t >= f && f > 0.0), "{metrics}");

    // To zero after 0.3 s idle.
    let policy = json!({"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after": 0.3});
    let res = http.put(admin(&format!("/runners/{MODEL}/scaling"))).bearer_auth(ADMIN_TOKEN).json(&policy);
    assert_eq!(res.send().await.unwrap().status(), StatusCode::OK);
    let mut loaded = runner.watch_loaded();
    tokio::time::timeout(Duration::from_secs(10), loaded.wait_for(|l| !l))
        .await
        .expect("the runner never unloaded its weights")
        .unwrap();
    assert!(!server.models.is_loaded(runner.tag()), "the cache still holds the weights");
    assert_eq!(metric(&scrape().await, weights), Some(0.0), "the weights are still counted");
    let unloaded_mib = resident_mib();
    eprintln!("resident: {loaded_mib:.1} MiB with the weights, {unloaded_mib:.1} MiB without");
    // all-MiniLM-L6-v2 holds 22.7 M parameters: 87 MiB in FP32.
    assert!(
        loaded_mib - unloaded_mib > 60.0,
        "resident memory went from {loaded_mib:.1} MiB to {unloaded_mib:.1} MiB only"
    );

    let show: Value =
        http.get(admin("")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(show["runners"][MODEL]["replicas"], 0, "{show}");
    assert_eq!(show["runners"][MODEL]["loaded"], false, "{show}");

    // The next request wakes the runner (loading the weights) and gets the same answer.
    let (status, body) = encode(sentence.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(max_abs_diff(&before[0], &embeddings(&body)[0]) < 1e-6);
    assert!(runner.status().loaded);

    let events: Vec<String> = server
        .state
        .deployments
        .get("embedder")
        .unwrap()
        .events()
        .into_iter()
        .filter(|e| e.kind == "scale")
        .map(|e| e.message)
        .collect();
    let prefix = format!("runner {MODEL} replicas");
    assert!(events.iter().any(|m| m.starts_with(&format!("{prefix} 1 → 0"))), "{events:?}");
    assert!(
        events.iter().any(|m| m.starts_with(&format!("{prefix} 0 → 1")) && m.contains("woke from zero")),
        "{events:?}"
    );
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let current =
        format!(r#"wasmbento_replicas{{deployment="embedder",component="runner:{MODEL}",kind="current"}}"#);
    assert!(metrics.contains(&current), "{metrics}");

    // A runner timeout shorter than loading the weights: the call waiting at
    // zero fails with 504, naming the runner.
    let traffic = json!({"timeout": 0.005});
    let res = http.put(admin(&format!("/runners/{MODEL}/traffic"))).bearer_auth(ADMIN_TOKEN).json(&traffic);
    assert_eq!(res.send().await.unwrap().status(), StatusCode::OK);
    let mut loaded = runner.watch_loaded();
    tokio::time::timeout(Duration::from_secs(10), loaded.wait_for(|l| !l)).await.unwrap().unwrap();
    let (status, body) = encode(sentence).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    let message = error_message(&body);
    assert!(message.contains(&format!("runner {MODEL}")), "{message}");

    // The runner's own gauge drives its scaling: items waiting for it
    // (`pending_items`) over 16 per replica asks for a second replica while
    // one long call is in flight.
    let traffic = json!({"timeout": 120});
    let res = http.put(admin(&format!("/runners/{MODEL}/traffic"))).bearer_auth(ADMIN_TOKEN).json(&traffic);
    assert_eq!(res.send().await.unwrap().status(), StatusCode::OK);
    let policy = json!({"min_replicas": 1, "max_replicas": 2,
        "policy": {"metrics": [{"type": "custom", "name": "pending_items", "value": 16}]}});
    let res = http.put(admin(&format!("/runners/{MODEL}/scaling"))).bearer_auth(ADMIN_TOKEN).json(&policy);
    assert_eq!(res.send().await.unwrap().status(), StatusCode::OK);
    let long = tokio::spawn(encode(texts(&["A runner scales out on its own gauge."; 128])));
    let mut replicas = runner.watch_replicas();
    tokio::time::timeout(Duration::from_secs(30), replicas.wait_for(|r| *r == 2))
        .await
        .expect("the runner never got a second replica")
        .unwrap();
    let (status, body) = long.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = server.state.deployments.get("embedder").unwrap().events();
    assert!(
        events.iter().any(|e| e.message.starts_with(&format!("{prefix} 1 → 2")) && e.message.contains("pending_items")),
        "{events:?}"
    );
    let metrics = scrape().await;
    for kind in ["current", "desired"] {
        let series = format!(
            r#"wasmbento_replicas{{deployment="embedder",component="runner:{MODEL}",kind="{kind}"}} 2"#
        );
        assert!(metrics.contains(&series), "{series} missing");
    }
    server.shutdown().await.unwrap();
}
