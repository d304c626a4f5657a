//! The admin API: bearer token, reading and replacing traffic and scaling
//! JSON live (behaviour changes without a restart), events, and the
//! configuration surviving a restart.

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmbento_tests::{ADMIN_TOKEN, build_plugin, error_message, serve_options, temp_store};

struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(format!("{}/admin/v1{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (res.status(), res.json().await.unwrap())
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let res = self
            .http
            .put(format!("{}/admin/v1{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status(), res.json().await.unwrap())
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req =
            self.http.request(method, format!("{}/admin/v1{path}", self.base)).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        (res.status(), res.json().await.unwrap())
    }

    async fn sleep(&self, ms: u64) -> StatusCode {
        let url = format!("{}/m/sleep", self.base);
        self.http.post(url).json(&json!({"ms": ms, "tag": "t"})).send().await.unwrap().status()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_read_replaced_live_and_kept_across_restarts() {
    let (_home, store) = temp_store();
    build_plugin(&store, "tests/plugins/misbehave").await.unwrap();
    let server = wasmbento::server::start(&store, serve_options(&["m=misbehave"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let admin = Admin { http: reqwest::Client::new(), base: format!("http://{}", server.addr) };

    // No token, a wrong token: 401 with a JSON error.
    let res = admin.http.get(format!("{}/admin/v1/deployments", admin.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert!(error_message(&res.json().await.unwrap()).contains("Bearer"));
    // The scheme is case-insensitive.
    let res = admin
        .http
        .get(format!("{}/admin/v1/deployments", admin.base))
        .header("authorization", format!("bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = admin
        .http
        .get(format!("{}/admin/v1/deployments", admin.base))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Without the token nothing under /admin/v1 answers, not even 404 or 405.
    let res = admin.http.get(format!("{}/admin/v1/nope", admin.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = admin.http.post(format!("{}/admin/v1/deployments/m", admin.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(admin.get("/nope").await.0, StatusCode::NOT_FOUND);
    // The data plane stays open.
    assert_eq!(admin.sleep(1).await, StatusCode::OK);

    let (s, list) = admin.get("/deployments").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["name"], "m");
    assert_eq!(list[0]["bento"], "misbehave:0.1.0");
    assert_eq!(admin.get("/deployments/nope").await.0, StatusCode::NOT_FOUND);

    let (_, traffic) = admin.get("/deployments/m/traffic").await;
    assert_eq!(traffic["timeout"], 2.0); // from the bento's bento.toml
    // Under the 2 s timeout a 700 ms call succeeds.
    assert_eq!(admin.sleep(700).await, StatusCode::OK);

    // Bad traffic JSON: 400 naming the field and the rule; nothing changes.
    for (body, needle) in [
        (json!({"timeout": -1}), "traffic.timeout must be a positive number"),
        (json!({"max_concurrency": "x"}), "max_concurrency: invalid type: string"),
        (json!({"queue": {"strategy": "random"}}), "queue.strategy: unknown variant `random`"),
        (json!({"timeout": 1, "colour": 1}), "unknown field `colour`"),
        (json!({"timeout": 1e300}), "up to 86400"),
        (json!([]), "must be a JSON object"),
        (json!(null), "must be a JSON object"),
    ] {
        let (s, reply) = admin.put("/deployments/m/traffic", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{reply}");
        let m = error_message(&reply);
        assert!(m.contains(needle), "{m}");
    }
    assert_eq!(admin.get("/deployments/m/traffic").await.1["timeout"], 2.0);
    let res = admin
        .http
        .put(format!("{}/admin/v1/deployments/m/traffic", admin.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .body(r#"{"timeout": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A new timeout takes effect at once.
    let (s, reply) = admin.put("/deployments/m/traffic", json!({"timeout": 0.3, "max_concurrency": 4})).await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    assert_eq!(reply["max_concurrency"], 4);
    assert_eq!(admin.sleep(700).await, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(admin.sleep(1).await, StatusCode::OK);

    // Scaling policies: validated, stored, returned.
    let (s, reply) = admin.put("/deployments/m/scaling", json!({"min_replicas": 3, "max_replicas": 1})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_message(&reply).contains("min_replicas: 3 must not exceed max_replicas (1)"));
    let policy = json!({"min_replicas": 0, "max_replicas": 4, "scale_to_zero_after": 30,
        "policy": {"metrics": [{"type": "concurrency", "value": 8}], "scale_up_stabilization_window": 0,
                   "scale_down_stabilization_window": 300}});
    let (s, reply) = admin.put("/deployments/m/scaling", policy).await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    assert_eq!(admin.get("/deployments/m/scaling").await.1["scale_to_zero_after"], 30.0);

    let (_, events) = admin.get("/deployments/m/events").await;
    let kinds: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["traffic", "scaling"]);
    assert!(events[0]["message"].as_str().unwrap().contains("\"timeout\":0.3"));

    // A restart keeps both.
    server.shutdown().await.unwrap();
    let server = wasmbento::server::start(&store, serve_options(&["m=misbehave"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let admin = Admin { http: admin.http, base: format!("http://{}", server.addr) };
    let (_, traffic) = admin.get("/deployments/m/traffic").await;
    assert_eq!((traffic["timeout"].as_f64(), traffic["max_concurrency"].as_u64()), (Some(0.3), Some(4)));
    assert_eq!(admin.get("/deployments/m/scaling").await.1["max_replicas"], 4);
    assert_eq!(admin.sleep(700).await, StatusCode::GATEWAY_TIMEOUT);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_policies_are_read_replaced_live_and_kept_across_restarts() {
    let (_home, store) = temp_store();
    wasmbento_tests::import_tiny_bert(&store, "all-minilm-l6-v2", 3);
    build_plugin(&store, "plugins/embedder").await.unwrap();
    let server = wasmbento::server::start(&store, serve_options(&["embedder"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let admin = Admin { http: reqwest::Client::new(), base: format!("http://{}", server.addr) };
    let runner = "/deployments/embedder/runners/all-minilm-l6-v2";

    // The bento's [runners] defaults.
    let (s, traffic) = admin.get(&format!("{runner}/traffic")).await;
    assert_eq!(s, StatusCode::OK, "{traffic}");
    assert_eq!((traffic["timeout"].as_f64(), traffic["max_concurrency"].as_u64()), (Some(30.0), Some(64)));
    let (_, scaling) = admin.get(&format!("{runner}/scaling")).await;
    assert_eq!(scaling["max_replicas"], 2);
    assert_eq!(scaling["policy"]["metrics"][0]["name"], "pending_items");
    let (_, show) = admin.get("/deployments/embedder").await;
    assert_eq!(show["runners"]["all-minilm-l6-v2"]["replicas"], 1, "{show}");
    assert_eq!(show["runners"]["all-minilm-l6-v2"]["loaded"], true, "{show}");
    let (_, batching) = admin.get(&format!("{runner}/batching")).await;
    assert_eq!(batching, json!({"max_batch_size": 32}));

    // Batching replaced live: at most 2 items per pass from the next batch
    // on, so one call of 8 texts runs as 4 passes (1 pass at 32).
    let (s, reply) = admin.put(&format!("{runner}/batching"), json!({"max_batch_size": 2})).await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    let (_, show) = admin.get("/deployments/embedder").await;
    // max_latency_ms left out: the host's default (none in the tests).
    let effective = &show["runners"]["all-minilm-l6-v2"]["batching"];
    assert_eq!(*effective, json!({"max_batch_size": 2, "max_latency_ms": null}), "{show}");
    let scrape = || {
        let (http, url) = (admin.http.clone(), format!("{}/metrics", admin.base));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let histogram = |metrics: &str, part: &str| {
        let series = format!(r#"wasmbento_runner_batch_size_{part}{{model="all-minilm-l6-v2:"#);
        wasmbento_tests::metric(metrics, &series).unwrap_or(0.0)
    };
    let before = scrape().await;
    let texts: Vec<String> = (0..8).map(|i| format!("text {i}")).collect();
    let res = admin.http.post(format!("{}/embedder/encode", admin.base)).json(&json!({"texts": texts}));
    assert_eq!(res.send().await.unwrap().status(), StatusCode::OK);
    let after = scrape().await;
    let (passes, items) = (
        histogram(&after, "count") - histogram(&before, "count"),
        histogram(&after, "sum") - histogram(&before, "sum"),
    );
    assert_eq!((passes, items), (4.0, 8.0), "max_batch_size 2 was not applied");

    // Unknown runners and bad JSON.
    let (s, reply) = admin.get("/deployments/embedder/runners/nope/traffic").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(error_message(&reply).contains("runners: all-minilm-l6-v2"), "{reply}");
    for (path, body, needle) in [
        ("traffic", json!({"timeout": 0}), "traffic.timeout must be a positive number"),
        ("traffic", json!({"memory_limit_mib": 5}), "unknown field `memory_limit_mib`"),
        ("scaling", json!({"min_replicas": 2, "max_replicas": 1}), "min_replicas: 2 must not exceed"),
        ("scaling", json!({"max_pending": -1}), "max_pending: invalid value"),
        (
            "scaling",
            json!({"max_replicas": 500}),
            "runners.all-minilm-l6-v2.scaling.max_replicas: a runner has at most 64",
        ),
        (
            "batching",
            json!({"max_batch_size": 0}),
            "runners.all-minilm-l6-v2.batching.max_batch_size must be 1",
        ),
        ("batching", json!({"max_batch": 4}), "unknown field `max_batch`"),
        ("batching", json!({"max_latency_ms": -5}), "max_latency_ms: invalid value"),
    ] {
        let (s, reply) = admin.put(&format!("{runner}/{path}"), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{reply}");
        let m = error_message(&reply);
        assert!(m.contains(needle), "{m}");
    }

    // A policy with scale to zero takes effect at once: the runner goes to zero.
    let policy = json!({"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after": 0.2, "max_pending": 8});
    let (s, reply) = admin.put(&format!("{runner}/scaling"), policy).await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    let r = server.state.deployments.get("embedder").unwrap().runner("all-minilm-l6-v2").unwrap();
    let mut loaded = r.watch_loaded();
    tokio::time::timeout(std::time::Duration::from_secs(10), loaded.wait_for(|l| !l)).await.unwrap().unwrap();
    let (s, reply) = admin.put(&format!("{runner}/traffic"), json!({"timeout": 5})).await;
    assert_eq!(s, StatusCode::OK, "{reply}");

    // A restart keeps both; the runner starts with one replica and goes back to zero.
    server.shutdown().await.unwrap();
    let server = wasmbento::server::start(&store, serve_options(&["embedder"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let admin = Admin { http: admin.http, base: format!("http://{}", server.addr) };
    assert_eq!(admin.get(&format!("{runner}/traffic")).await.1["timeout"], 5.0);
    assert_eq!(admin.get(&format!("{runner}/batching")).await.1, json!({"max_batch_size": 2}));
    let (_, scaling) = admin.get(&format!("{runner}/scaling")).await;
    assert_eq!((scaling["min_replicas"].as_u64(), scaling["max_pending"].as_u64()), (Some(0), Some(8)));
    let r = server.state.deployments.get("embedder").unwrap().runner("all-minilm-l6-v2").unwrap();
    let mut loaded = r.watch_loaded();
    tokio::time::timeout(std::time::Duration::from_secs(10), loaded.wait_for(|l| !l)).await.unwrap().unwrap();
    let (_, events) = admin.get("/deployments/embedder/events").await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().starts_with("runner all-minilm-l6-v2 replicas 1 → 0")),
        "{events}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bentos_are_deployed_and_undeployed_at_run_time() {
    use reqwest::Method;
    let (_home, store) = temp_store();
    build_plugin(&store, "plugins/hello").await.unwrap();
    build_plugin(&store, "tests/plugins/misbehave").await.unwrap();
    // A host serving nothing yet.
    let server = wasmbento::server::start(&store, serve_options(&[])).await.unwrap();
    let admin = Admin { http: reqwest::Client::new(), base: format!("http://{}", server.addr) };
    let greet = |name: &'static str| {
        let (http, url) = (admin.http.clone(), format!("{}/{name}/greet", admin.base));
        async move { http.post(url).json(&json!({"name": "Bo"})).send().await.unwrap().status() }
    };
    assert_eq!(greet("hello").await, StatusCode::NOT_FOUND);

    let (s, reply) = admin.send(Method::POST, "/deployments", Some(json!({"bento": "hello"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{reply}");
    assert_eq!(reply["name"], "hello");
    server.state.deployments.get("hello").unwrap().wait_ready().await.unwrap();
    assert_eq!(greet("hello").await, StatusCode::OK);
    let docs: Value =
        admin.http.get(format!("{}/docs.json", admin.base)).send().await.unwrap().json().await.unwrap();
    assert!(docs["paths"].get("/hello/greet").is_some(), "{docs}");

    // Refusals name the problem and change nothing.
    for (body, status, needle) in [
        (json!({"bento": "hello"}), StatusCode::CONFLICT, "exists already"),
        (json!({"bento": "nope"}), StatusCode::NOT_FOUND, "nope"),
        (json!({"bento": "Hello"}), StatusCode::BAD_REQUEST, "bento: invalid tag"),
        (json!({"bento": "hello", "name": "admin"}), StatusCode::BAD_REQUEST, "reserved"),
        (json!({"bento": "hello", "name": "a b"}), StatusCode::BAD_REQUEST, "name: invalid tag"),
        (json!({"bento": "hello", "replicas": 2}), StatusCode::BAD_REQUEST, "unknown field `replicas`"),
        (json!({"bento": "hello", "traffic": {"timeout": 0}}), StatusCode::BAD_REQUEST, "traffic.timeout"),
        (json!({"bento": "hello", "resources": {"gpu": 2}}), StatusCode::BAD_REQUEST, "resources.gpu"),
        (
            json!({"bento": "hello", "resources": [null, null, 2]}),
            StatusCode::BAD_REQUEST,
            "resources: expected an object",
        ),
        (json!({"bento": "hello", "traffic": []}), StatusCode::BAD_REQUEST, "traffic: expected an object"),
    ] {
        let (s, reply) = admin.send(Method::POST, "/deployments", Some(body)).await;
        assert_eq!(s, status, "{reply}");
        let m = error_message(&reply);
        assert!(m.contains(needle), "{m}");
    }
    assert_eq!(admin.get("/deployments").await.1.as_array().unwrap().len(), 1);

    // Undeploying lets a running call finish, then the name is gone, with its stored configuration.
    let (s, _) =
        admin.send(Method::POST, "/deployments", Some(json!({"bento": "misbehave", "name": "m"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    server.state.deployments.get("m").unwrap().wait_ready().await.unwrap();
    assert_eq!(admin.put("/deployments/m/traffic", json!({"timeout": 1.5})).await.0, StatusCode::OK);
    let d = server.state.deployments.get("m").unwrap();
    let running = {
        let url = format!("{}/m/sleep", admin.base);
        let http = admin.http.clone();
        tokio::spawn(async move {
            http.post(url).json(&json!({"ms": 600, "tag": "t"})).send().await.unwrap().status()
        })
    };
    while d.gate().running() < 1 {
        tokio::task::yield_now().await;
    }
    let (s, reply) = admin.send(Method::DELETE, "/deployments/m", None).await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    assert_eq!(running.await.unwrap(), StatusCode::OK);
    assert_eq!(admin.sleep(1).await, StatusCode::NOT_FOUND);
    assert_eq!(admin.get("/deployments/m").await.0, StatusCode::NOT_FOUND);
    assert_eq!(admin.send(Method::DELETE, "/deployments/m", None).await.0, StatusCode::NOT_FOUND);
    let metrics =
        admin.http.get(format!("{}/metrics", admin.base)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains(r#"wasmbento_replicas{deployment="m""#), "{metrics}");
    assert!(metrics.contains(r#"wasmbento_replicas{deployment="hello""#), "{metrics}");
    let (s, _) =
        admin.send(Method::POST, "/deployments", Some(json!({"bento": "misbehave", "name": "m"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        admin.get("/deployments/m/traffic").await.1["timeout"],
        2.0,
        "the old configuration came back"
    );
    assert_eq!(greet("hello").await, StatusCode::OK);
    assert_eq!(admin.put("/deployments/m/traffic", json!({"timeout": 7.0})).await.0, StatusCode::OK);
    let (s, _) = admin.send(Method::DELETE, "/deployments/hello", None).await;
    assert_eq!(s, StatusCode::OK);
    server.shutdown().await.unwrap();

    // A restart serving nothing on its command line brings back what the
    // admin API deployed (with its configuration), not what it undeployed.
    let server = wasmbento::server::start(&store, serve_options(&[])).await.unwrap();
    server.wait_ready().await.unwrap();
    let admin = Admin { http: reqwest::Client::new(), base: format!("http://{}", server.addr) };
    let names: Vec<Value> =
        admin.get("/deployments").await.1.as_array().unwrap().iter().map(|d| d["name"].clone()).collect();
    assert_eq!(names, [json!("m")]);
    assert_eq!(admin.get("/deployments/m/traffic").await.1["timeout"], 7.0);
    assert_eq!(admin.sleep(1).await, StatusCode::OK);
    server.shutdown().await.unwrap();
}

/// A host killed with SIGKILL while policies are being replaced keeps a
/// whole configuration, one of those it acknowledged or was writing, and
/// the next start serves with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_mid_write_leaves_a_whole_configuration() {
    let (home, store) = temp_store();
    build_plugin(&store, "tests/plugins/misbehave").await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut host = std::process::Command::new(wasmbento_tests::wasmbento_bin())
        .args(["serve", "m=misbehave", "--port", &port.to_string(), "--admin-token", ADMIN_TOKEN])
        .env("WASMBENTO_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let admin = Admin { http: reqwest::Client::new(), base: format!("http://127.0.0.1:{port}") };
    let started = std::time::Instant::now();
    let ready = |http: reqwest::Client, url: String| async move {
        http.get(url).send().await.is_ok_and(|r| r.status() == StatusCode::OK)
    };
    while !ready(admin.http.clone(), format!("{}/readyz", admin.base)).await {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "serve never became ready");
        assert!(host.try_wait().unwrap().is_none(), "serve exited");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Four writers replace the traffic as fast as they can; the host dies
    // after 40 acknowledged writes, with others in flight.
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let (http, base, acknowledged) = (admin.http.clone(), admin.base.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            for i in 1..=1000u32 {
                let timeout = f64::from(w * 1000 + i);
                let put = http.put(format!("{base}/admin/v1/deployments/m/traffic")).bearer_auth(ADMIN_TOKEN);
                match put.json(&json!({"timeout": timeout})).send().await {
                    Ok(res) if res.status() == StatusCode::OK => {
                        acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        }));
    }
    while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < 40 {
        tokio::task::yield_now().await;
    }
    host.kill().unwrap(); // SIGKILL
    host.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }

    let path = home.path().join("deployments").join("m.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("a whole JSON document");
    let timeout = saved["traffic"]["timeout"].as_f64().unwrap();
    assert!(timeout >= 1.0 && timeout.fract() == 0.0, "{saved}");
    let server = wasmbento::server::start(&store, serve_options(&["m=misbehave"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let admin = Admin { http: reqwest::Client::new(), base: format!("http://{}", server.addr) };
    assert_eq!(admin.get("/deployments/m/traffic").await.1["timeout"], timeout);
    server.shutdown().await.unwrap();
}

/// Without a configured token, the first start makes one and keeps it
/// (owner-only); the next start uses the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_admin_token_is_kept_for_later_starts() {
    let (home, store) = temp_store();
    let mut options = serve_options(&[]);
    options.admin_token = None;
    let server = wasmbento::server::start(&store, options.clone()).await.unwrap();
    server.shutdown().await.unwrap();
    let path = home.path().join("admin-token");
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "{token:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    let server = wasmbento::server::start(&store, options).await.unwrap();
    let url = format!("http://{}/admin/v1/deployments", server.addr);
    let http = reqwest::Client::new();
    assert_eq!(http.get(&url).bearer_auth(&token).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        http.get(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), token, "the token changed");
    server.shutdown().await.unwrap();
}
