//! The API service scales with its policy: to zero after idle (dropping the
//! compiled component), back at once on the first request (which waits in
//! the cold-start buffer), up under a burst, with every change an event.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmbento::deployment::DeploymentSpec;
use wasmbento::manifest::Traffic;
use wasmbento_tests::{ADMIN_TOKEN, build_plugin, serve_options, temp_store};

async fn wait_replicas(d: &wasmbento::deployment::Deployment, n: u32) {
    let mut rx = d.watch_replicas();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r == n))
        .await
        .unwrap_or_else(|_| panic!("replicas never reached {n}; events: {:?}", d.events()))
        .unwrap();
}

/// The misbehave bento as deployment `m`: one call at a time per replica,
/// 10 s timeout.
async fn serve_one_slot_per_replica() -> (tempfile::TempDir, wasmbento::server::RunningServer) {
    let (home, store) = temp_store();
    build_plugin(&store, "tests/plugins/misbehave").await.unwrap();
    let mut options = serve_options(&[]);
    let traffic = Traffic { timeout: 10.0, max_concurrency: Some(1), ..Traffic::default() };
    options.deployments = vec![DeploymentSpec {
        bento: "misbehave".parse().unwrap(),
        name: Some("m".into()),
        traffic: Some(traffic),
        resources: None,
    }];
    let server = wasmbento::server::start(&store, options).await.unwrap();
    server.wait_ready().await.unwrap();
    (home, server)
}

/// Replaces deployment `m`'s scaling policy through the admin API.
async fn put_scaling(http: &reqwest::Client, base: &str, policy: &Value) {
    let url = format!("{base}/admin/v1/deployments/m/scaling");
    let res = http.put(url).bearer_auth(ADMIN_TOKEN).json(policy).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_after_idle_wake_on_demand_and_scale_up_under_a_burst() {
    let (_home, server) = serve_one_slot_per_replica().await;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let d = std::sync::Arc::clone(&server.state.deployments.get("m").unwrap());
    assert_eq!(d.replicas(), 1);

    let policy = json!({"min_replicas": 0, "max_replicas": 2, "scale_to_zero_after": 0.3,
        "policy": {"metrics": [{"type": "concurrency", "value": 1}], "scale_down_stabilization_window": 0.5}});
    put_scaling(&http, &base, &policy).await;

    // Idle: to zero, and the compiled component leaves memory.
    wait_replicas(&d, 0).await;
    assert!(!d.component_loaded());

    // The first request wakes it and is served.
    let sleep = |ms: u64, tag: &'static str| {
        let (http, url) = (http.clone(), format!("{base}/m/sleep"));
        tokio::spawn(async move {
            http.post(url).json(&json!({"ms": ms, "tag": tag})).send().await.unwrap().status()
        })
    };
    assert_eq!(sleep(1, "wake").await.unwrap(), StatusCode::OK);
    assert!(d.replicas() >= 1 && d.component_loaded());

    // A burst of two long calls against one slot per replica: a second replica.
    let (a, b) = (sleep(600, "a"), sleep(600, "b"));
    wait_replicas(&d, 2).await;
    assert_eq!(a.await.unwrap(), StatusCode::OK);
    assert_eq!(b.await.unwrap(), StatusCode::OK);

    // Idle again: back to zero; every change was an event with its reason.
    wait_replicas(&d, 0).await;
    let scale_events: Vec<String> =
        d.events().into_iter().filter(|e| e.kind == "scale").map(|e| e.message).collect();
    assert!(
        scale_events.iter().any(|m| m.starts_with("api replicas 1 → 0") && m.contains("scale_to_zero_after")),
        "{scale_events:?}"
    );
    assert!(
        scale_events.iter().any(|m| m.starts_with("api replicas 0 → 1") && m.contains("woke from zero")),
        "{scale_events:?}"
    );
    assert!(
        scale_events.iter().any(|m| m.starts_with("api replicas 1 → 2") && m.contains("concurrency")),
        "{scale_events:?}"
    );

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"wasmbento_replicas{deployment="m",component="api",kind="current"} 0"#),
        "{metrics}"
    );
    let (_, events): (StatusCode, Value) = {
        let res = http
            .get(format!("{base}/admin/v1/deployments/m/events"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (res.status(), res.json().await.unwrap())
    };
    assert!(events.as_array().unwrap().iter().any(|e| e["kind"] == "scale"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gauge_the_service_reports_drives_a_custom_metric_policy() {
    let (_home, store) = temp_store();
    build_plugin(&store, "tests/plugins/misbehave").await.unwrap();
    let server = wasmbento::server::start(&store, serve_options(&["m=misbehave"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let d = std::sync::Arc::clone(&server.state.deployments.get("m").unwrap());

    let policy = json!({"min_replicas": 1, "max_replicas": 5,
        "policy": {"metrics": [{"type": "custom", "name": "backlog", "value": 10}]}});
    put_scaling(&http, &base, &policy).await;

    // The guest reports a backlog of 25 items: ceil(25 / 10) = 3 replicas.
    let report = |name: &str, value: f64| {
        let (http, url) = (http.clone(), format!("{base}/m/gauge"));
        let body = json!({"name": name, "value": value});
        async move { http.post(url).json(&body).send().await.unwrap().status() }
    };
    assert_eq!(report("backlog", 25.0).await, StatusCode::OK);
    wait_replicas(&d, 3).await;
    assert_eq!(d.gauges().snapshot()["backlog"], 25.0);
    let event = d.events().into_iter().rev().find(|e| e.kind == "scale").unwrap();
    assert!(event.message.contains("custom:backlog"), "{}", event.message);

    // Bad names are ignored, not stored.
    assert_eq!(report("Bad-Name", 1.0).await, StatusCode::OK);
    assert!(!d.gauges().snapshot().contains_key("Bad-Name"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_drains_and_a_request_arriving_meanwhile_is_served() {
    let (_home, server) = serve_one_slot_per_replica().await;
    let (base, http) = (format!("http://{}", server.addr), reqwest::Client::new());
    let d = std::sync::Arc::clone(&server.state.deployments.get("m").unwrap());
    let sleep = |ms: u64, tag: &'static str| {
        let (http, url) = (http.clone(), format!("{base}/m/sleep"));
        tokio::spawn(async move {
            http.post(url).json(&json!({"ms": ms, "tag": tag})).send().await.unwrap().status()
        })
    };
    let policy = |max: u32| {
        json!({"min_replicas": 1, "max_replicas": max,
            "policy": {"metrics": [{"type": "concurrency", "value": 1}], "scale_down_stabilization_window": 0}})
    };
    put_scaling(&http, &base, &policy(2)).await;

    // Two long calls on two replicas.
    let (a, b) = (sleep(1500, "a"), sleep(1500, "b"));
    wait_replicas(&d, 2).await;
    while d.gate().running() < 2 {
        tokio::task::yield_now().await;
    }
    // Down to one replica while both run: neither is stopped.
    put_scaling(&http, &base, &policy(1)).await;
    wait_replicas(&d, 1).await;
    assert!(!a.is_finished() && !b.is_finished(), "a scale-down cut a running call short");
    assert_eq!(d.gate().running(), 2);
    // A request arriving now waits for the drained capacity and is served.
    let c = sleep(1, "c");
    assert_eq!(a.await.unwrap(), StatusCode::OK);
    assert_eq!(b.await.unwrap(), StatusCode::OK);
    assert_eq!(c.await.unwrap(), StatusCode::OK);
    let scale_events: Vec<String> =
        d.events().into_iter().filter(|e| e.kind == "scale").map(|e| e.message).collect();
    assert!(scale_events.iter().any(|m| m.starts_with("api replicas 2 → 1")), "{scale_events:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_at_zero_still_wakes_the_service() {
    let (_home, store) = temp_store();
    build_plugin(&store, "tests/plugins/misbehave").await.unwrap();
    let server = wasmbento::server::start(&store, serve_options(&["m=misbehave"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let (base, http) = (format!("http://{}", server.addr), reqwest::Client::new());
    let d = std::sync::Arc::clone(&server.state.deployments.get("m").unwrap());
    // No cold-start buffer at all: requests at zero are refused, not queued.
    put_scaling(
        &http,
        &base,
        &json!({"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after": 0.2, "max_pending": 0}),
    )
    .await;
    wait_replicas(&d, 0).await;
    let call = || http.post(format!("{base}/m/count")).json(&json!({})).send();
    let res = call().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("cold-start buffer"), "{body}");
    // The refusal was demand: the service wakes, and the retry is served.
    wait_replicas(&d, 1).await;
    assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    server.shutdown().await.unwrap();
}

/// Short calls that start and finish between two autoscaler ticks are
/// demand: a steady light stream keeps the service up, and only real idle
/// takes it to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_of_short_calls_keeps_the_service_from_zero() {
    let (_home, store) = temp_store();
    build_plugin(&store, "tests/plugins/misbehave").await.unwrap();
    let mut options = serve_options(&["m=misbehave"]);
    // Ticks far apart compared with a call: most ticks see nothing in flight.
    options.autoscale_interval = Duration::from_millis(250);
    let server = wasmbento::server::start(&store, options).await.unwrap();
    server.wait_ready().await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let d = std::sync::Arc::clone(&server.state.deployments.get("m").unwrap());
    put_scaling(&http, &base, &json!({"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after": 0.6}))
        .await;

    // A call of ~1 ms every 25 ms for 2.5 s: ten idle windows' worth.
    let started = std::time::Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let res = http.post(format!("{base}/m/sleep")).json(&json!({"ms": 1, "tag": "s"})).send().await;
        assert_eq!(res.unwrap().status(), StatusCode::OK);
        calls += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let to_zero = |d: &wasmbento::deployment::Deployment| {
        d.events().into_iter().filter(|e| e.kind == "scale" && e.message.contains("1 → 0")).count()
    };
    assert_eq!(to_zero(&d), 0, "went to zero under {calls} calls: {:?}", d.events());
    assert_eq!(d.replicas(), 1);

    // Truly idle: to zero.
    wait_replicas(&d, 0).await;
    assert_eq!(to_zero(&d), 1);
    server.shutdown().await.unwrap();
}

/// A `qps` target: a quick stream of calls scales out to `max_replicas`,
/// the reason names the metric, and both replica gauges say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qps_policy_scales_out_under_a_stream_of_calls() {
    let (_home, server) = serve_one_slot_per_replica().await;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let d = std::sync::Arc::clone(&server.state.deployments.get("m").unwrap());
    let policy =
        json!({"min_replicas": 1, "max_replicas": 3, "policy": {"metrics": [{"type": "qps", "value": 5}]}});
    put_scaling(&http, &base, &policy).await;
    let started = std::time::Instant::now();
    while d.replicas() < 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "no scale-out: {:?}", d.events());
        let res = http.post(format!("{base}/m/sleep")).json(&json!({"ms": 1, "tag": "q"})).send().await;
        assert_eq!(res.unwrap().status(), StatusCode::OK);
    }
    let reasons: Vec<String> =
        d.events().into_iter().filter(|e| e.kind == "scale").map(|e| e.message).collect();
    assert!(reasons.iter().any(|m| m.contains("→ 3") && m.contains("qps")), "{reasons:?}");
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for kind in ["current", "desired"] {
        let series = format!(r#"wasmbento_replicas{{deployment="m",component="api",kind="{kind}"}} 3"#);
        assert!(metrics.contains(&series), "{series} missing from {metrics}");
    }
    server.shutdown().await.unwrap();
}
