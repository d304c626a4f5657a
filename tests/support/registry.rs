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
        let dir = tempfile::tempdir().unwrap();
        // A free port: bound, read and released for the registry to take.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
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
