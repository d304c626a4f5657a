//! Guests cannot hurt the host: traps, endless loops and memory bombs fail
//! their own call and the next call works. No state survives between calls.
//! A second start loads the compiled component from the cache.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmbento::compile_cache::Loaded;
use wasmbento_tests::{build_plugin, error_message, serve_options, temp_store};

async fn post(http: &reqwest::Client, url: &str, body: Value) -> (StatusCode, Value) {
    let res = http.post(url).json(&body).send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_guests_fail_alone() {
    let (_home, store) = temp_store();
    let bento = build_plugin(&store, "tests/plugins/misbehave").await.unwrap();
    let timeout = Duration::from_secs_f64(bento.manifest.traffic.timeout);
    let server = wasmbento::server::start(&store, serve_options(&["misbehave"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let base = format!("http://{}/misbehave", server.addr);
    let http = reqwest::Client::new();
    let healthy = || async {
        let (s, body) = post(&http, &format!("{base}/count"), json!({})).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body
    };

    // A fresh instance per call: a global counter is 1 every time.
    for _ in 0..3 {
        assert_eq!(healthy().await, json!({"calls": 1}));
    }

    // The WASI sandbox grants nothing: no environment, no files.
    let (s, body) = post(&http, &format!("{base}/sandbox"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, json!({"env_vars": 0, "read_root": false, "read_file": false, "write_file": false}));

    // A trap is a 500 naming it; the guest's panic message is included.
    let (s, body) = post(&http, &format!("{base}/trap"), json!({})).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let m = error_message(&body);
    assert!(m.contains("trapped") && m.contains("deliberate trap"), "{m}");
    healthy().await;

    // An endless loop is interrupted at the deadline: 504, on time.
    let started = Instant::now();
    let (s, body) = post(&http, &format!("{base}/spin"), json!({})).await;
    let took = started.elapsed();
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(error_message(&body).contains("did not answer within"), "{body}");
    assert!(took >= timeout && took < timeout + Duration::from_millis(750), "took {took:?}");
    healthy().await;

    // Two loops at once do not starve other calls: the loops yield.
    let spin = |http: reqwest::Client, url: String| async move { post(&http, &url, json!({})).await.0 };
    let a = tokio::spawn(spin(http.clone(), format!("{base}/spin")));
    let b = tokio::spawn(spin(http.clone(), format!("{base}/spin")));
    let started = Instant::now();
    healthy().await;
    assert!(
        started.elapsed() < timeout,
        "a healthy call waited {:?} behind spinning guests",
        started.elapsed()
    );
    assert_eq!(a.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(b.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);

    // Memory past the limit: 500 naming the limit. Below it: fine.
    let (s, body) = post(&http, &format!("{base}/alloc"), json!({"mib": 200})).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error_message(&body).contains("memory limit of 64 MiB"), "{body}");
    let (s, body) = post(&http, &format!("{base}/alloc"), json!({"mib": 8})).await;
    assert_eq!((s, body), (StatusCode::OK, json!({"ok": true})));

    // A service-reported failure is a 500 with its message.
    let (s, body) = post(&http, &format!("{base}/fail"), json!({})).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error_message(&body).contains("deliberate failure"), "{body}");

    assert_eq!(healthy().await, json!({"calls": 1}));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_start_loads_the_compiled_component_from_the_cache() {
    let (_home, store) = temp_store();
    build_plugin(&store, "plugins/hello").await.unwrap();
    // `build` compiles and caches; start from an empty cache.
    std::fs::remove_dir_all(store.compiled_cache_dir()).unwrap();

    let first = wasmbento::server::start(&store, serve_options(&["hello"])).await.unwrap();
    assert_eq!(first.state.deployments.get("hello").unwrap().loaded(), Loaded::Compiled);
    first.shutdown().await.unwrap();
    let artifacts = std::fs::read_dir(store.compiled_cache_dir()).unwrap().count();
    assert_eq!(artifacts, 1);

    let second = wasmbento::server::start(&store, serve_options(&["hello"])).await.unwrap();
    assert_eq!(second.state.deployments.get("hello").unwrap().loaded(), Loaded::FromCache);
    second.wait_ready().await.unwrap();
    let res = reqwest::Client::new()
        .post(format!("http://{}/hello/greet", second.addr))
        .json(&json!({"name": "cache"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    second.shutdown().await.unwrap();
}
