//! Traffic control end to end: a concurrency limit with a bounded queue,
//! served fifo or lifo, 503 + Retry-After when full, 504 at the deadline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmbento::deployment::DeploymentSpec;
use wasmbento::manifest::Traffic;
use wasmbento::traffic::{QueueConfig, Strategy};
use wasmbento_tests::{build_plugin, error_message, serve_options, temp_store};

fn spec(name: &str, timeout: f64, max_length: usize, strategy: Strategy) -> DeploymentSpec {
    let traffic = Traffic {
        timeout,
        max_concurrency: Some(1),
        queue: QueueConfig { max_length, strategy },
        ..Traffic::default()
    };
    DeploymentSpec {
        bento: "misbehave".parse().unwrap(),
        name: Some(name.into()),
        traffic: Some(traffic),
        resources: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_order_overflow_and_deadlines() {
    let (_home, store) = temp_store();
    build_plugin(&store, "tests/plugins/misbehave").await.unwrap();
    let mut options = serve_options(&[]);
    options.deployments = vec![
        spec("fifo", 10.0, 2, Strategy::Fifo),
        spec("lifo", 10.0, 2, Strategy::Lifo),
        spec("tight", 0.5, 4, Strategy::Deadline),
        spec("paced", 2.0, 4, Strategy::Deadline),
    ];
    let server = wasmbento::server::start(&store, options).await.unwrap();
    server.wait_ready().await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();

    for (deployment, expected) in [("fifo", ["first", "b", "c"]), ("lifo", ["first", "c", "b"])] {
        let gate = Arc::clone(server.state.deployments.get(deployment).unwrap().gate());
        let finished = Arc::new(Mutex::new(Vec::new()));
        let send = |tag: &'static str, ms: u64| {
            let (http, finished) = (http.clone(), Arc::clone(&finished));
            let url = format!("{base}/{deployment}/sleep");
            tokio::spawn(async move {
                let res = http.post(url).json(&json!({"ms": ms, "tag": tag})).send().await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                let body: Value = res.json().await.unwrap();
                finished.lock().unwrap().push(body["tag"].as_str().unwrap().to_string());
            })
        };
        // One runs (for a while), two wait, in a known order.
        let first = send("first", 400);
        while gate.running() < 1 {
            tokio::task::yield_now().await;
        }
        let b = send("b", 1);
        while gate.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let c = send("c", 1);
        while gate.waiting() < 2 {
            tokio::task::yield_now().await;
        }

        // The queue holds two: the next is turned away with Retry-After.
        let res = http
            .post(format!("{base}/{deployment}/sleep"))
            .json(&json!({"ms": 1, "tag": "d"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry_after >= 1);
        assert!(error_message(&res.json().await.unwrap()).contains("queue is full"));

        for t in [first, b, c] {
            t.await.unwrap();
        }
        assert_eq!(*finished.lock().unwrap(), expected, "{deployment}");
        assert_eq!((gate.running(), gate.waiting()), (0, 0));
    }

    // A 0.5 s deadline: the running call is interrupted (504); the one queued
    // behind it is not started with no time left but answered 504 from the
    // queue (the deadline strategy), both on time.
    let gate = Arc::clone(server.state.deployments.get("tight").unwrap().gate());
    let slow = {
        let http = http.clone();
        let url = format!("{base}/tight/sleep");
        tokio::spawn(async move {
            let sent = std::time::Instant::now();
            let res = http.post(url).json(&json!({"ms": 5000, "tag": "slow"})).send().await.unwrap();
            (res, sent.elapsed())
        })
    };
    while gate.running() < 1 {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    let res = http
        .post(format!("{base}/tight/sleep"))
        .json(&json!({"ms": 1, "tag": "queued"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    let m = error_message(&res.json().await.unwrap());
    assert!(m.contains("queue"), "{m}");
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    let (res, took) = slow.await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(took < Duration::from_millis(900), "a sleeping guest was not stopped at its deadline: {took:?}");
    assert!(error_message(&res.json().await.unwrap()).contains("did not answer within"));
    assert_eq!((gate.running(), gate.waiting()), (0, 0));

    // And the deployment serves normally afterwards.
    let res = http
        .post(format!("{base}/tight/sleep"))
        .json(&json!({"ms": 1, "tag": "after"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // The deadline strategy with a known call time: after a 1.5 s call, one
    // waiting behind another 1.5 s call has about 0.5 s of its 2 s left when
    // the slot frees, less than a call takes, so it is dropped then (504)
    // instead of being started to run late; fifo would have started it.
    let paced = |ms: u64, tag: &'static str| {
        let (http, url) = (http.clone(), format!("{base}/paced/sleep"));
        tokio::spawn(async move {
            let res = http.post(url).json(&json!({"ms": ms, "tag": tag})).send().await.unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        })
    };
    assert_eq!(paced(1500, "learn").await.unwrap().0, StatusCode::OK);
    let gate = Arc::clone(server.state.deployments.get("paced").unwrap().gate());
    let busy = paced(1500, "busy");
    while gate.running() < 1 {
        tokio::task::yield_now().await;
    }
    let late = paced(1, "late");
    let (status, body) = late.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(error_message(&body).contains("dropped from the queue"), "{body}");
    assert_eq!(busy.await.unwrap().0, StatusCode::OK);
    server.shutdown().await.unwrap();
}
