//! The `wasmbento` command line as a user runs it, against a real registry:
//! import, build, push with `--json`, list, delete, pull with `--quiet`,
//! login refused on a wrong password, and `serve` of a registry reference
//! pulling it on demand.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmbento_tests::registry::TestRegistry;
use wasmbento_tests::{embeddings, texts, tiny_bert, wasmbento_bin, workspace_root};

/// Runs `wasmbento args...` with `home` as its store.
fn run(home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    run_with(home, args, stdin, &[])
}

/// [`run`] with more environment variables.
fn run_with(home: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(wasmbento_bin());
    cmd.args(args).env("WASMBENTO_HOME", home).env_remove("RUST_LOG").current_dir(workspace_root());
    // Never the docker credentials of whoever runs the tests.
    cmd.env("DOCKER_CONFIG", home.join("no-docker-config"));
    cmd.envs(env.iter().copied());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running wasmbento");
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs it, asserting success; returns stdout.
fn ok(home: &Path, args: &[&str]) -> String {
    let out = run(home, args, None);
    assert!(out.status.success(), "wasmbento {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json(home: &Path, args: &[&str]) -> Value {
    let out = ok(home, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("wasmbento {args:?}: {e}: {out}"))
}

fn tags(list: &Value, key: &str) -> Vec<String> {
    list.as_array().unwrap().iter().map(|x| x[key].as_str().unwrap_or_default().to_string()).collect()
}

#[test]
fn push_list_delete_pull_and_serve_from_the_command_line() {
    let registry = TestRegistry::start(None);
    let home = tempfile::tempdir().unwrap();
    let model = tempfile::tempdir().unwrap();
    tiny_bert::write(model.path(), 12);
    ok(
        home.path(),
        &["models", "import", model.path().to_str().unwrap(), "--name", "all-minilm-l6-v2", "--quiet"],
    );
    ok(home.path(), &["build", "plugins/embedder"]);

    let reference = format!("{}/team/embedder", registry.addr);
    let pushed = json(home.path(), &["push", "embedder", &reference, "--json"]);
    assert_eq!(pushed["kind"], "bento", "{pushed}");
    assert!(pushed["digest"].as_str().unwrap().starts_with("sha256:"), "{pushed}");
    let bentos = json(home.path(), &["list", "--json"]);
    assert_eq!(tags(&bentos, "name"), ["embedder"]);
    let version = bentos[0]["version"].as_str().unwrap().to_string();

    // Deleted locally, then pulled back, quietly: nothing on stdout or stderr.
    ok(home.path(), &["delete", &format!("embedder:{version}")]);
    ok(home.path(), &["models", "delete", "all-minilm-l6-v2"]);
    assert_eq!(json(home.path(), &["list", "--json"]), Value::Array(vec![]));
    assert_eq!(json(home.path(), &["models", "list", "--json"]), Value::Array(vec![]));
    let pulled = run(home.path(), &["pull", &format!("{reference}:{version}"), "--quiet"], None);
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    assert!(pulled.stdout.is_empty() && pulled.stderr.is_empty(), "--quiet printed something");
    assert_eq!(tags(&json(home.path(), &["list", "--json"]), "name"), ["embedder"]);
    assert_eq!(json(home.path(), &["models", "list", "--json"]).as_array().unwrap().len(), 1);

    // A model alone, through `models push` and `models pull --json`.
    let models = format!("{}/team/models/all-minilm-l6-v2", registry.addr);
    let listed = json(home.path(), &["models", "list", "--json"]);
    let model_version = listed[0]["version"].as_str().expect("a model version").to_string();
    ok(home.path(), &["models", "push", "all-minilm-l6-v2", &models, "--quiet"]);
    let elsewhere = tempfile::tempdir().unwrap();
    let pulled = json(elsewhere.path(), &["models", "pull", &format!("{models}:{model_version}"), "--json"]);
    assert_eq!(pulled["kind"], "model", "{pulled}");
    assert_eq!(pulled["tag"], format!("all-minilm-l6-v2:{model_version}"), "{pulled}");
    assert_eq!(json(elsewhere.path(), &["models", "list", "--json"]).as_array().unwrap().len(), 1);

    // A refusal is an error naming what went wrong, and exits non-zero.
    let missing = run(home.path(), &["pull", &format!("{reference}:9.9.9"), "--quiet"], None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("9.9.9"));

    // `serve` of a registry reference in an empty store pulls it first.
    let fresh = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(wasmbento_bin())
        .args(["serve", &format!("{reference}:{version}"), "--port", &port.to_string()])
        .args(["--admin-token", "t"])
        .env("WASMBENTO_HOME", fresh.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answered = runtime.block_on(async {
        let http = reqwest::Client::new();
        let started = Instant::now();
        // Readiness is polled: the pull and the model load take their time.
        while started.elapsed() < Duration::from_secs(120) {
            if let Ok(res) = http.get(format!("{base}/readyz")).send().await
                && res.status().is_success()
            {
                let res = http.post(format!("{base}/embedder/encode")).json(&texts(&["a dog"])).send().await;
                return Some(res.unwrap().json::<Value>().await.unwrap());
            }
            assert!(server.try_wait().unwrap().is_none(), "serve exited");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    server.kill().unwrap();
    server.wait().unwrap();
    let body = answered.expect("serve never became ready");
    assert_eq!(embeddings(&body)[0].len(), tiny_bert::HIDDEN, "{body}");
}

#[test]
fn login_checks_the_password_and_keeps_it_for_that_registry_only() {
    let registry = TestRegistry::start(Some(("alice", "s3cret")));
    let home = tempfile::tempdir().unwrap();
    let wrong =
        run(home.path(), &["login", &registry.addr, "-u", "alice", "--password-stdin"], Some("nope\n"));
    assert!(!wrong.status.success());
    let message = String::from_utf8_lossy(&wrong.stderr);
    assert!(message.contains(&registry.addr), "{message}");
    assert!(!home.path().join("auth.json").exists(), "refused credentials were saved");

    let right =
        run(home.path(), &["login", &registry.addr, "-u", "alice", "--password-stdin"], Some("s3cret\n"));
    assert!(right.status.success(), "{}", String::from_utf8_lossy(&right.stderr));
    let saved = std::fs::read_to_string(home.path().join("auth.json")).unwrap();
    assert!(saved.contains(&registry.addr), "{saved}");

    // Without a login, the user's docker config.json is used, for the
    // registry it names.
    let fresh = tempfile::tempdir().unwrap();
    let model = tempfile::tempdir().unwrap();
    tiny_bert::write(model.path(), 13);
    ok(fresh.path(), &["models", "import", model.path().to_str().unwrap(), "--name", "tiny:1", "--quiet"]);
    let target = format!("{}/team/models/tiny:1", registry.addr);
    let push = ["models", "push", "tiny:1", target.as_str(), "--quiet"];
    let anonymous = run(fresh.path(), &push, None);
    assert!(!anonymous.status.success(), "pushed without credentials");
    let docker = tempfile::tempdir().unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    let config = serde_json::json!({"auths": {
        "other.example.com": {"auth": "bm90OmZvcnlvdQ=="},
        (registry.addr.clone()): {"auth": auth},
    }});
    std::fs::write(docker.path().join("config.json"), config.to_string()).unwrap();
    let pushed = run_with(fresh.path(), &push, None, &[("DOCKER_CONFIG", docker.path())]);
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
}

/// `check-device` refuses bad arguments before touching any hardware, and
/// says why there is no GPU to check.
#[test]
fn check_device_explains_what_it_cannot_do() {
    let home = tempfile::tempdir().unwrap();
    let model = tempfile::tempdir().unwrap();
    tiny_bert::write(model.path(), 14);
    let dir = model.path().to_str().unwrap();
    let fails = |args: &[&str], needle: &str| {
        let out = run(home.path(), args, None);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    };
    fails(&["check-device", "/nonexistent", "--device", "cpu"], "/nonexistent is not a directory");
    fails(&["check-device", "/tmp", "--device", "cpu"], "not a BERT-family model directory");
    fails(&["check-device", dir, "--seconds", "1e20"], "--seconds must be more than 0 and at most 3600");
    fails(&["check-device", dir, "--seconds", "-1"], "--seconds must be more than 0");
    if let Err(why) = wasmbento::devices::discover_gpus() {
        fails(&["check-device", dir], &format!("no GPU to check ({why})"));
    }
    let out = ok(home.path(), &["check-device", dir, "--device", "cpu", "--seconds", "0.05", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["passed"], true, "{report}");
}
