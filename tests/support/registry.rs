//! A real OCI registry for tests: Debian's `docker-registry` (distribution
//! 2.8) on a free loopback port, with filesystem storage in a temporary
//! directory and, optionally, htpasswd basic auth. Stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRegistry {
    /// `127.0.0.1:<port>`
    pub addr: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl TestRegistry {
    /// Starts a registry; with `user`, requests need that user's basic auth.
    pub fn start(user: Option<(&str, &str)>) -> TestRegistry {
        TestRegistry::start_with(user, "")
    }

    /// Starts a registry whose `Location` headers are relative, as it must
    /// be behind a proxy.
    pub fn start_behind_proxy() -> TestRegistry {
        TestRegistry::start_with(None, "  relativeurls: true\n")
    }

    fn start_with(user: Option<(&str, &str)>, http_extra: &str) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        // A free port: bound, read and released for the registry to take.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{http_extra}",
            dir.path().join("data").display()
        );
        if let Some((name, password)) = user {
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(dir.path().join("htpasswd"), format!("{name}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new(binary())
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting docker-registry: {e}; install it (apt-get install docker-registry)")
            });
        let registry = TestRegistry { addr, dir, child };
        registry.wait_up();
        registry
    }

    /// Waits until `/v2/` answers (200, or 401 with auth on).
    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "docker-registry did not start on {}", self.addr);
            // Polling a condition, with a deadline: the process gives no other signal.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where the registry keeps a blob's bytes (distribution's filesystem layout).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    pub fn storage(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    std::env::var_os("WASMBENTO_DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| "docker-registry".into())
}

/// Runs `skopeo` with `args`; returns stdout, panicking with stderr on failure.
pub fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running skopeo: {e}; install it (apt-get install skopeo)"));
    assert!(out.status.success(), "skopeo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A bearer-token front for a registry, as Docker Hub, GHCR and Harbor do
/// it: requests without a valid token get 401 with a `Bearer` challenge
/// naming a token endpoint; the endpoint trades basic credentials for a
/// token; requests with the token are forwarded to the registry.
pub struct TokenProxy {
    pub addr: String,
    /// Tokens handed out.
    pub tokens_issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// What went through, for tests of the client's behaviour.
    pub seen: std::sync::Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`TokenProxy`] saw, and how it misbehaves on request.
#[derive(Default)]
pub struct Seen {
    /// The largest request body forwarded, in bytes.
    pub largest_request: std::sync::atomic::AtomicUsize,
    /// `PATCH` requests forwarded (upload chunks).
    pub patches: std::sync::atomic::AtomicUsize,
    /// While set, blob downloads larger than 64 KiB break off halfway, as a
    /// dropped connection does.
    pub break_downloads: std::sync::atomic::AtomicBool,
}

impl TokenProxy {
    pub async fn start(upstream: &str, user: &str, password: &str) -> TokenProxy {
        use axum::body::Bytes;
        use axum::extract::{Request, State};
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::{IntoResponse, Response};
        use base64::Engine as _;

        #[derive(Clone)]
        struct Front {
            upstream: String,
            me: String,
            basic: String,
            token: String,
            issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
            seen: std::sync::Arc<Seen>,
            http: reqwest::Client,
        }

        async fn token(State(f): State<Front>, headers: HeaderMap) -> Response {
            let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            if presented != Some(f.basic.as_str()) {
                return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
            }
            f.issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            axum::Json(serde_json::json!({"token": f.token, "access_token": f.token, "expires_in": 300}))
                .into_response()
        }

        async fn forward(State(f): State<Front>, request: Request) -> Response {
            let bearer = format!("Bearer {}", f.token);
            let ok = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
                == Some(bearer.as_str());
            if !ok {
                let challenge = format!("Bearer realm=\"http://{}/token\",service=\"test-registry\"", f.me);
                return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], "token needed")
                    .into_response();
            }
            let (parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            use std::sync::atomic::Ordering::SeqCst;
            f.seen.largest_request.fetch_max(body.len(), SeqCst);
            if parts.method == axum::http::Method::PATCH {
                f.seen.patches.fetch_add(1, SeqCst);
            }
            let breaking = f.seen.break_downloads.load(SeqCst) && path.contains("/blobs/sha256:");
            let mut req = f.http.request(parts.method.clone(), format!("http://{}{path}", f.upstream));
            for (name, value) in &parts.headers {
                if name != header::HOST && name != header::AUTHORIZATION {
                    req = req.header(name, value);
                }
            }
            let res = req.body(body).send().await.unwrap();
            let mut out = Response::builder().status(res.status());
            for (name, value) in res.headers() {
                out = out.header(name, value);
            }
            let bytes = res.bytes().await.unwrap();
            if breaking && bytes.len() > 64 << 10 {
                // Half the body, then the connection breaks.
                let half = bytes.slice(..bytes.len() / 2);
                let chunks: Vec<Result<Bytes, std::io::Error>> =
                    vec![Ok(half), Err(std::io::Error::other("connection dropped"))];
                return out.body(axum::body::Body::from_stream(futures_util::stream::iter(chunks))).unwrap();
            }
            out.body(axum::body::Body::from(bytes)).unwrap()
        }

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::new(Seen::default());
        let front = Front {
            upstream: upstream.to_string(),
            me: addr.clone(),
            basic,
            token: format!("token-{}", std::process::id()),
            issued: issued.clone(),
            seen: seen.clone(),
            http: reqwest::Client::new(),
        };
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .fallback(forward)
            .with_state(front);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TokenProxy { addr, tokens_issued: issued, seen, task }
    }
}

impl Drop for TokenProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
