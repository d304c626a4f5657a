//! The HTTP surface end to end with the hello plugin: real component, real
//! HTTP over loopback.

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmbento_tests::{build_plugin, error_message, get_status, serve_options, temp_store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_answers_and_bad_input_gets_clear_errors() {
    let (_home, store) = temp_store();
    let bento = build_plugin(&store, "plugins/hello").await.unwrap();
    assert_eq!(bento.manifest.apis.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["greet"]);

    let server = wasmbento::server::start(&store, serve_options(&["hello"])).await.unwrap();
    server.wait_ready().await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();

    // The API works and the request id comes back.
    let res = http
        .post(format!("{base}/hello/greet"))
        .header("x-request-id", "test-123")
        .json(&json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-request-id"], "test-123");
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"message": "Hello, Ada!"}));

    // A generated request id when none is sent.
    let res = http.post(format!("{base}/hello/greet")).json(&json!({"name": "Bo"})).send().await.unwrap();
    assert!(!res.headers()["x-request-id"].is_empty());

    let call = |path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut req = http.post(format!("{base}{path}")).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            (status, error_message(&body))
        }
    };
    let json_ct = Some("application/json");
    let ok_body = br#"{"name":"x"}"#.to_vec();

    let (s, m) = call("/nope/greet", json_ct, ok_body.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(m.contains("no deployment named \"nope\""), "{m}");

    let (s, m) = call("/hello/nope", json_ct, ok_body.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(m.contains("no API named \"nope\"") && m.contains("greet"), "{m}");

    let (s, m) = call("/hello/greet", None, ok_body.clone()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(m.contains("Content-Type"), "{m}");

    let (s, m) = call("/hello/greet", Some("text/plain"), ok_body.clone()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(m.contains("text/plain"), "{m}");

    let (s, m) = call("/hello/greet", json_ct, b"{\"name\": ".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(m.contains("not valid JSON"), "{m}");

    let (s, m) = call("/hello/greet", json_ct, br#"{"name": 42}"#.to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(m.starts_with("name: invalid type: integer `42`"), "{m}");

    let (s, m) = call("/hello/greet", json_ct, b"{}".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(m.contains("missing field `name`"), "{m}");

    let (s, m) = call("/hello/greet", json_ct, br#"{"name": "  "}"#.to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(m.contains("name: must not be empty"), "{m}");

    // Over the 64 KiB limit of the test server: with and without a length.
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(70 * 1024)).into_bytes();
    let (s, m) = call("/hello/greet", json_ct, big.clone()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(m.contains("65536 bytes"), "{m}");
    let status_line = post_chunked(server.addr, "/hello/greet", &big).await;
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");

    // Nothing was lost: the service still answers.
    let res = http.post(format!("{base}/hello/greet")).json(&json!({"name": "again"})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Wrong method and unknown routes: JSON errors too.
    let res = http.get(format!("{base}/hello/greet")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "POST");
    assert!(error_message(&res.json().await.unwrap()).contains("the Allow header lists"));
    let res = http.post(format!("{base}/a/b/c")).json(&json!({})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(error_message(&res.json().await.unwrap()).contains("POST /{deployment}/{api}"));

    // Probes, metrics and docs.
    assert_eq!(get_status(&http, &format!("{base}/livez")).await, StatusCode::OK);
    assert_eq!(get_status(&http, &format!("{base}/readyz")).await, StatusCode::OK);

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let ok_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("wasmbento_request_total{")
                && l.contains("status=\"200\"")
                && l.contains("api=\"greet\"")
        })
        .unwrap_or_else(|| panic!("no request counter in:\n{metrics}"));
    assert!(ok_line.ends_with(" 3"), "{ok_line}");
    assert!(metrics.contains("status=\"400\""), "{metrics}");
    assert!(metrics.contains("wasmbento_request_duration_seconds_bucket{"), "{metrics}");
    assert!(metrics.contains("wasmbento_request_in_progress{"), "{metrics}");

    let docs: Value = http.get(format!("{base}/docs.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(docs["openapi"], "3.1.0");
    let op = &docs["paths"]["/hello/greet"]["post"];
    assert_eq!(op["requestBody"]["content"]["application/json"]["schema"]["required"], json!(["name"]));
    assert_eq!(
        op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["message"]["type"],
        "string"
    );

    server.shutdown().await.unwrap();
}

/// POSTs `body` with chunked transfer encoding (no Content-Length) and
/// returns the response's status line.
async fn post_chunked(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(8 * 1024) {
        // The server may answer and close before reading everything.
        if conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
            || conn.write_all(chunk).await.is_err()
            || conn.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).lines().next().unwrap_or("").to_string()
}

/// With an API token configured, the APIs need it (401 with a Bearer
/// challenge otherwise, even for unknown routes); probes and `/metrics` stay
/// open, and the admin API still takes its own token only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_token_guards_the_data_plane_but_not_the_probes() {
    let (_home, store) = temp_store();
    build_plugin(&store, "plugins/hello").await.unwrap();
    let mut options = serve_options(&["hello"]);
    options.api_token = Some("api-secret".into());
    let server = wasmbento::server::start(&store, options).await.unwrap();
    server.wait_ready().await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let greet = |token: Option<&str>| {
        let mut req = http.post(format!("{base}/hello/greet")).json(&json!({"name": "Ada"}));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        async move { req.send().await.unwrap() }
    };
    let res = greet(None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert!(error_message(&res.json().await.unwrap()).contains("this API needs Authorization"));
    assert_eq!(greet(Some("wrong")).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(greet(Some(wasmbento_tests::ADMIN_TOKEN)).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(greet(Some("api-secret")).await.status(), StatusCode::OK);
    assert_eq!(get_status(&http, &format!("{base}/nope")).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get_status(&http, &format!("{base}/docs.json")).await, StatusCode::UNAUTHORIZED);
    for open in ["/livez", "/readyz", "/metrics"] {
        assert_eq!(get_status(&http, &format!("{base}{open}")).await, StatusCode::OK, "{open}");
    }
    let admin = http.get(format!("{base}/admin/v1/deployments")).bearer_auth("api-secret");
    assert_eq!(admin.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    server.shutdown().await.unwrap();
}
