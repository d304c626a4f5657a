//! Serving benchmarks; results and how to read them: docs/benchmarks.md.
//!
//! `cargo bench -p wasmbento-tests --bench serving` (set `WASMBENTO_MINILM_DIR`
//! to the all-MiniLM-L6-v2 directory, or let scripts/bench.sh do it).
//!
//! Every figure is a median over repetitions measured in this run, and every
//! comparison is a ratio against a baseline measured in the same run: this
//! machine is noisy, absolute numbers move, ratios much less.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wasmbento::instance::{CallOptions, Runtime, RuntimeOptions, ServiceComponent};
use wasmbento::nn::ModelSet;
// The benchmarks' sentences are the ones `check-device` measures.
use wasmbento::device_check::SENTENCES;
use wasmbento::runner::ModelCache;
use wasmbento::store::Store;
use wasmbento_tests::{build_plugin, serve_options};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[((xs.len() as f64 - 1.0) * p).round() as usize]
}

fn options() -> CallOptions {
    CallOptions {
        deadline: Instant::now() + Duration::from_secs(60),
        memory_limit: 256 << 20,
        gauges: Arc::default(),
    }
}

/// Median µs of `iters` sequential calls, over `reps` repetitions.
async fn per_call_us(
    component: &ServiceComponent,
    models: &Arc<ModelSet>,
    api: &str,
    input: &[u8],
    iters: usize,
    reps: usize,
) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..reps {
        let started = Instant::now();
        for _ in 0..iters {
            component.call(Arc::clone(models), api, input, &options()).await.unwrap();
        }
        samples.push(started.elapsed().as_secs_f64() * 1e6 / iters as f64);
    }
    median(samples)
}

/// Requests per second and latencies (ms) of `clients` concurrent HTTP clients.
async fn http_throughput(url: &str, clients: usize, window: Duration) -> (f64, Vec<f64>) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url) = (http.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = c;
            while started.elapsed() < window {
                let t = Instant::now();
                let res = http
                    .post(&url)
                    .json(&json!({"texts": [SENTENCES[i % SENTENCES.len()]]}))
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success());
                res.bytes().await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                i += 1;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    (lat.len() as f64 / started.elapsed().as_secs_f64(), lat)
}

/// Calls per second of tokenize + forward at the given concurrency, unbatched.
async fn direct_throughput(runner: &Arc<wasmbento::runner::Runner>, clients: usize, window: Duration) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let runner = Arc::clone(runner);
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut done = 0usize;
            let mut i = c;
            while started.elapsed() < window {
                let texts = vec![SENTENCES[i % SENTENCES.len()].to_string()];
                let inputs = runner.tokenizer().unwrap().encode(&texts).unwrap();
                runner.compute_blocking(&inputs).unwrap();
                done += 1;
                i += 1;
            }
            done
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// Mean of the `wasmbento_runner_batch_size` histogram in a metrics text.
fn mean_batch_size(metrics: &str) -> f64 {
    let value = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let count = value("wasmbento_runner_batch_size_count");
    if count == 0.0 { 0.0 } else { value("wasmbento_runner_batch_size_sum") / count }
}

/// A backend that skips the forward pass and returns zero vectors of the
/// right shape: what is left of a call is the host's and the guest's cost.
struct NoForward {
    hidden: usize,
}

impl wasmbento::runner::Backend for NoForward {
    fn describe(&self) -> String {
        "no forward pass".into()
    }

    fn compute(
        &self,
        inputs: &[wasmbento::runner::NamedTensor],
    ) -> Result<Vec<wasmbento::runner::NamedTensor>, wasmbento::runner::RunnerError> {
        let batch = inputs[0].1.dims[0];
        let zeros = vec![0.0f32; batch * self.hidden];
        Ok(vec![(
            "sentence_embedding".into(),
            wasmbento::runner::Tensor::from_f32(vec![batch, self.hidden], &zeros),
        )])
    }
}

fn minilm_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("WASMBENTO_MINILM_DIR").expect("set WASMBENTO_MINILM_DIR (scripts/bench.sh does)"),
    )
}

#[tokio::main]
async fn main() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let hello = build_plugin(&store, "plugins/hello").await.unwrap();
    let model = store.import_model_dir(&minilm_dir(), &"all-minilm-l6-v2".parse().unwrap(), "bench").unwrap();
    let embedder = build_plugin(&store, "plugins/embedder").await.unwrap();
    let mut report = String::new();
    let mut line = |s: String| {
        println!("{s}");
        report.push_str(&s);
        report.push('\n');
    };

    // ---- 0. compiling a component vs loading its cached compilation ----
    line("## Compile vs load from the compile cache (median of 3 compiles, 50 loads)".into());
    line("| component | size (kB) | compile (ms) | load cached (ms) | ratio |".into());
    line("|---|---|---|---|---|".into());
    for bento in [&hello, &embedder] {
        let (path, digest) = (&bento.component_path, &bento.manifest.component.digest);
        let mut compile = Vec::new();
        for _ in 0..3 {
            let cache = tempfile::tempdir().unwrap();
            let runtime = Runtime::new(&RuntimeOptions::default(), cache.path()).unwrap();
            let t = Instant::now();
            let (_, loaded) = runtime.load(path, digest).unwrap();
            compile.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(loaded, wasmbento::compile_cache::Loaded::Compiled);
        }
        let runtime = Runtime::new(&RuntimeOptions::default(), &store.compiled_cache_dir()).unwrap();
        let mut load = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let (_, loaded) = runtime.load(path, digest).unwrap();
            load.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(loaded, wasmbento::compile_cache::Loaded::FromCache);
        }
        let (c, l) = (median(compile), median(load));
        line(format!(
            "| {} | {} | {c:.1} | {l:.3} | {:.0} |",
            bento.manifest.name,
            bento.manifest.component.size / 1000,
            c / l
        ));
    }
    line(String::new());

    // ---- 1. instantiate + call of hello, in process ----
    let greet = serde_json::to_vec(&json!({"name": "bench"})).unwrap();
    let no_models = Arc::new(ModelSet::default());
    let mut rows = Vec::new();
    for pooling in [true, false] {
        let runtime =
            Runtime::new(&RuntimeOptions { pooling, max_instances: 100 }, &store.compiled_cache_dir())
                .unwrap();
        let (component, _) = runtime.load(&hello.component_path, &hello.manifest.component.digest).unwrap();
        per_call_us(&component, &no_models, "greet", &greet, 200, 1).await; // warm up
        rows.push((pooling, per_call_us(&component, &no_models, "greet", &greet, 500, 9).await));
    }
    line("## hello: fresh instance + call, in process (median of 9 × 500 calls)".into());
    line("| allocator | µs per call | ratio to pooling |".into());
    line("|---|---|---|".into());
    for (pooling, us) in &rows {
        line(format!(
            "| {} | {us:.1} | {:.2} |",
            if *pooling { "pooling" } else { "on-demand" },
            us / rows[0].1
        ));
    }

    // ---- 2. embedder: host overhead vs candle directly ----
    let runtime = Runtime::new(&RuntimeOptions::default(), &store.compiled_cache_dir()).unwrap();
    let (component, _) = runtime.load(&embedder.component_path, &embedder.manifest.component.digest).unwrap();
    let cache = Arc::new(ModelCache::new(
        wasmbento::runner::batch_size_family(),
        Default::default(),
        wasmbento::runner::Batching { max_batch_size: 1, max_latency: None },
    ));
    let cpu = wasmbento::devices::Device::Cpu;
    let runner = wasmbento::runner::Runner::new(
        "all-minilm-l6-v2",
        model.clone(),
        cache,
        cpu,
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    runner.set_replicas(1).await.unwrap();
    let models =
        Arc::new(ModelSet::new(BTreeMap::from([("all-minilm-l6-v2".to_string(), Arc::clone(&runner))])));
    line(String::new());
    line(
        "## embedder: one call in process, and its cost outside the forward pass (median of 15 × 20 calls)"
            .into(),
    );
    line("The *outside* column runs the same component, tokenizer and wasi:nn path against a backend".into());
    line(
        "that returns zeros at once: it is the per-call cost of the host and the guest, measured directly."
            .into(),
    );
    line(String::new());
    line("| texts | candle forward (ms) | through the component (ms) | ratio | outside the forward pass (ms) | of which tokenize (ms) |".into());
    line("|---|---|---|---|---|---|".into());
    let no_forward = wasmbento::runner::Runner::with_backend(
        "all-minilm-l6-v2",
        model.tag(),
        Arc::new(NoForward { hidden: 384 }),
        Some(Arc::new(wasmbento::runner::TextTokenizer::load(&model.dir).unwrap())),
        wasmbento::runner::Batching { max_batch_size: 1, max_latency: None },
        &wasmbento::runner::batch_size_family(),
        &Default::default(),
    )
    .unwrap();
    let no_forward_models =
        Arc::new(ModelSet::new(BTreeMap::from([("all-minilm-l6-v2".to_string(), Arc::clone(&no_forward))])));
    for n in [1usize, 8] {
        let texts: Vec<String> = SENTENCES.iter().cycle().take(n).map(|s| s.to_string()).collect();
        let tokenizer = runner.tokenizer().unwrap();
        let inputs = tokenizer.encode(&texts).unwrap();
        let body = serde_json::to_vec(&json!({ "texts": texts })).unwrap();
        let (mut forward, mut through, mut outside, mut tokenize) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            runner.compute_blocking(&inputs).unwrap();
            component.call(Arc::clone(&models), "encode", &body, &options()).await.unwrap();
        }
        // Interleaved so drift hits all of them alike.
        for _ in 0..15 {
            let t = Instant::now();
            for _ in 0..20 {
                runner.compute_blocking(&inputs).unwrap();
            }
            forward.push(t.elapsed().as_secs_f64() * 1e3 / 20.0);
            let t = Instant::now();
            for _ in 0..20 {
                component.call(Arc::clone(&models), "encode", &body, &options()).await.unwrap();
            }
            through.push(t.elapsed().as_secs_f64() * 1e3 / 20.0);
            let t = Instant::now();
            for _ in 0..20 {
                component.call(Arc::clone(&no_forward_models), "encode", &body, &options()).await.unwrap();
            }
            outside.push(t.elapsed().as_secs_f64() * 1e3 / 20.0);
            let t = Instant::now();
            for _ in 0..20 {
                tokenizer.encode(&texts).unwrap();
            }
            tokenize.push(t.elapsed().as_secs_f64() * 1e3 / 20.0);
        }
        let (f, c, o, t) = (median(forward), median(through), median(outside), median(tokenize));
        line(format!("| {n} | {f:.3} | {c:.3} | {:.3} | {o:.3} | {t:.3} |", c / f));
    }

    // ---- 2b. scale from zero: hello's first request after zero vs warm ----
    {
        let server = wasmbento::server::start(&store, serve_options(&["hello"])).await.unwrap();
        server.wait_ready().await.unwrap();
        let d = Arc::clone(&server.state.deployments.get("hello").unwrap());
        let policy = wasmbento::scale::ScalingPolicy { min_replicas: 0, ..Default::default() };
        d.set_scaling(policy).unwrap();
        let url = format!("http://{}/hello/greet", server.addr);
        let http = reqwest::Client::new();
        let call = || async {
            let t = Instant::now();
            let res = http.post(&url).json(&json!({"name": "bench"})).send().await.unwrap();
            assert!(res.status().is_success());
            res.bytes().await.unwrap();
            t.elapsed().as_secs_f64() * 1e3
        };
        for _ in 0..20 {
            call().await;
        }
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for _ in 0..30 {
            d.set_replicas(0, "benchmark: to zero").unwrap();
            assert!(!d.component_loaded());
            cold.push(call().await);
            warm.push(call().await);
        }
        let (c, w) = (median(cold), median(warm));
        line(String::new());
        line("## hello over HTTP: first request at zero replicas vs a warm request (median of 30)".into());
        line(
            "At zero the compiled component is out of memory; the request waits, wakes the autoscaler,"
                .into(),
        );
        line("the component is reloaded from the compile cache, and the call runs.".into());
        line(String::new());
        line("| from zero (ms) | warm (ms) | ratio |".into());
        line("|---|---|---|".into());
        line(format!("| {c:.3} | {w:.3} | {:.2} |", c / w));
        server.shutdown().await.unwrap();
    }

    // ---- 2c. scale from zero: the embedder, whose runner reloads the weights ----
    {
        let server = wasmbento::server::start(&store, serve_options(&["embedder"])).await.unwrap();
        server.wait_ready().await.unwrap();
        let d = server.state.deployments.get("embedder").unwrap();
        let at_zero = wasmbento::scale::ScalingPolicy { min_replicas: 0, ..Default::default() };
        d.set_scaling(at_zero.clone()).unwrap();
        d.set_runner_scaling("all-minilm-l6-v2", at_zero).unwrap();
        let runner = d.runner("all-minilm-l6-v2").unwrap();
        let url = format!("http://{}/embedder/encode", server.addr);
        let http = reqwest::Client::new();
        let call = || async {
            let t = Instant::now();
            let res = http.post(&url).json(&json!({"texts": [SENTENCES[0]]})).send().await.unwrap();
            assert!(res.status().is_success());
            res.bytes().await.unwrap();
            t.elapsed().as_secs_f64() * 1e3
        };
        for _ in 0..10 {
            call().await;
        }
        let unload = || async {
            runner.set_replicas(0).await.unwrap();
            runner.watch_loaded().wait_for(|l| !l).await.unwrap();
        };
        let (mut both, mut runner_only, mut warm) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..20 {
            d.set_replicas(0, "benchmark: to zero").unwrap();
            unload().await;
            both.push(call().await);
            unload().await;
            runner_only.push(call().await);
            warm.push(call().await);
        }
        let (b, r, w) = (median(both), median(runner_only), median(warm));
        line(String::new());
        line("## embedder over HTTP: first request at zero replicas vs a warm request (median of 20)".into());
        line(
            "*API + runner at zero*: the component is reloaded from the compile cache and the runner".into(),
        );
        line("loads all-MiniLM-L6-v2's weights (87 MiB) before the call runs; *runner at zero*: the".into());
        line("weights only.".into());
        line(String::new());
        line("| API + runner at zero (ms) | runner at zero (ms) | warm (ms) | ratio (both / warm) |".into());
        line("|---|---|---|---|".into());
        line(format!("| {b:.1} | {r:.1} | {w:.1} | {:.1} |", b / w));
        server.shutdown().await.unwrap();
    }

    // ---- 3. embedder over HTTP: batching on vs off, vs candle directly ----
    line(String::new());
    line("## embedder over HTTP: one sentence per request, 5 s per point".into());
    line(
        "*candle direct*: tokenize + forward of one sentence per call, same concurrency, no batching.".into(),
    );
    line(String::new());
    line("| clients | batching | req/s | p50 (ms) | p99 (ms) | mean batch | candle direct req/s | req/s ratio to direct |".into());
    line("|---|---|---|---|---|---|---|---|".into());
    for clients in [1usize, 8, 32] {
        let direct_rps = direct_throughput(&runner, clients, Duration::from_secs(5)).await;
        for max_batch_size in [32usize, 1] {
            let mut options = serve_options(&["embedder"]);
            options.max_batch_size = max_batch_size;
            let server = wasmbento::server::start(&store, options).await.unwrap();
            server.wait_ready().await.unwrap();
            let url = format!("http://{}/embedder/encode", server.addr);
            let (rps, lat) = http_throughput(&url, clients, Duration::from_secs(5)).await;
            let mean_batch = mean_batch_size(&server.state.metrics.encode());
            line(format!(
                "| {clients} | {} | {rps:.0} | {:.2} | {:.2} | {mean_batch:.2} | {direct_rps:.0} | {:.2} |",
                if max_batch_size > 1 { "on" } else { "off" },
                percentile(lat.clone(), 0.5),
                percentile(lat, 0.99),
                rps / direct_rps
            ));
            server.shutdown().await.unwrap();
        }
    }

    if let Some(path) = std::env::var_os("WASMBENTO_BENCH_OUT") {
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, report).unwrap();
    }
}
