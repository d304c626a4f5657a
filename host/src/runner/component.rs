//! A runner: the component of a deployment that executes one model.
//!
//! Calls pass the runner's own [`Gate`] (its `max_concurrency` per replica
//! and its bounded queue), wait at most the runner's `timeout`, and join the
//! runner's job queue, from which its workers take batches ([`batcher`]).
//!
//! A replica is one worker thread over the model's weights. Scaling up
//! spawns workers (loading the weights first if this runner does not hold
//! them); scaling down sends `Stop`s behind the work already queued, so
//! every admitted call is answered (drain). At zero the runner waits for its
//! running calls to finish, stops every worker and lets go of the weights,
//! which the [`ModelCache`] frees once no other runner holds them; calls
//! arriving meanwhile wait in the gate until the autoscaler wakes it.
//!
//! The runner reports one custom gauge, `pending_items`: items (rows)
//! submitted and not yet answered, which a scaling policy can target.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;

use super::batcher::{self, Job, Work};
use super::{Backend, Batching, ModelCache, NamedTensor, RunnerError, TextTokenizer};
use crate::devices::Device;
use crate::manifest::{RunnerBatching, RunnerTraffic};
use crate::nn::CustomGauges;
use crate::store::StoredModel;
use crate::tag::Tag;
use crate::traffic::{Gate, Rejection};

/// Where a runner's weights come from.
enum Source {
    /// A stored model on a device, through the host's cache (unloaded at zero).
    Stored { model: StoredModel, cache: Arc<ModelCache>, device: Device },
    /// A backend made by the caller (benchmarks, tests); always in memory.
    Fixed(Arc<dyn Backend>),
}

/// What the worker threads share with the runner.
struct Workers {
    queue: Mutex<mpsc::Receiver<Work>>,
    /// Worker threads alive (including those told to stop and draining).
    live: AtomicUsize,
    /// The runner's own hold on the weights; `None` at zero. Changes to it
    /// and to `loaded` happen under this lock.
    backend: Mutex<Option<Arc<dyn Backend>>>,
    /// Whether this runner's workers or the runner itself hold the weights.
    loaded: watch::Sender<bool>,
}

impl Workers {
    /// Called by each worker thread as it exits, after dropping its weights.
    fn retire(&self) {
        let backend = self.backend.lock().unwrap();
        if self.live.fetch_sub(1, Ordering::SeqCst) == 1 && backend.is_none() {
            super::cache::return_freed_memory();
            self.loaded.send_replace(false);
        }
    }
}

/// Replica bookkeeping, changed only by scaling.
#[derive(Default)]
struct Scale {
    /// Workers spawned and not told to stop.
    workers: u32,
    /// Bumped by every change, so a pending unload knows it was overtaken.
    generation: u64,
}

/// One model's runner in one deployment.
pub struct Runner {
    name: String,
    tag: Tag,
    source: Source,
    tokenizer: Option<Arc<TextTokenizer>>,
    /// Read by the workers before each batch, so a change applies at once.
    batching: Arc<RwLock<Batching>>,
    /// The host's batching, which the runner's own settings override.
    default_batching: Batching,
    histogram: Histogram,
    gate: Arc<Gate>,
    timeout: RwLock<Duration>,
    jobs: mpsc::Sender<Work>,
    workers: Arc<Workers>,
    scale: Mutex<Scale>,
    replicas: watch::Sender<u32>,
    pending_items: AtomicUsize,
    gauges: Arc<CustomGauges>,
}

/// A runner's state, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunnerStatus {
    pub model: String,
    /// Where the replicas run: `cpu` or `cuda:N`.
    pub device: String,
    pub replicas: u32,
    /// Whether this runner holds the model's weights in memory.
    pub loaded: bool,
    pub running: usize,
    pub waiting: usize,
    pub pending_items: usize,
}

impl Runner {
    /// The runner named `name` (the name the guest loads) of a stored model,
    /// whose replicas run on `device`, at zero replicas: nothing but the
    /// tokenizer is loaded yet. Batching is the host's default as
    /// `batching` overrides it.
    pub fn new(
        name: &str,
        model: StoredModel,
        cache: Arc<ModelCache>,
        device: Device,
        traffic: &RunnerTraffic,
        batching: &RunnerBatching,
    ) -> Result<Arc<Runner>> {
        let tokenizer = cache.tokenizer(&model)?;
        let (defaults, sizes) = (cache.batching().clone(), cache.batch_sizes().clone());
        let tag = model.tag();
        let source = Source::Stored { model, cache, device };
        let runner = Runner::build(name, tag, source, tokenizer, defaults, &sizes, traffic);
        runner.set_batching(batching);
        Ok(runner)
    }

    /// A runner around a backend made by the caller, with one replica.
    pub fn with_backend(
        name: &str,
        tag: Tag,
        backend: Arc<dyn Backend>,
        tokenizer: Option<Arc<TextTokenizer>>,
        batching: Batching,
        batch_sizes: &super::BatchSizes,
        traffic: &RunnerTraffic,
    ) -> Result<Arc<Runner>> {
        let source = Source::Fixed(Arc::clone(&backend));
        let runner = Runner::build(name, tag, source, tokenizer, batching, batch_sizes, traffic);
        runner.apply(1, backend)?;
        Ok(runner)
    }

    fn build(
        name: &str,
        tag: Tag,
        source: Source,
        tokenizer: Option<Arc<TextTokenizer>>,
        batching: Batching,
        batch_sizes: &super::BatchSizes,
        traffic: &RunnerTraffic,
    ) -> Arc<Runner> {
        let (jobs, queue) = mpsc::channel();
        let gate = Gate::new(traffic.max_concurrency, traffic.queue.clone());
        gate.set_replicas(0);
        Arc::new(Runner {
            name: name.to_string(),
            histogram: batch_sizes.get_or_create(&super::ModelLabels { model: tag.to_string() }).clone(),
            tag,
            source,
            tokenizer,
            batching: Arc::new(RwLock::new(batching.clone())),
            default_batching: batching,
            gate,
            timeout: RwLock::new(traffic.timeout_duration()),
            jobs,
            workers: Arc::new(Workers {
                queue: Mutex::new(queue),
                live: AtomicUsize::new(0),
                backend: Mutex::new(None),
                loaded: watch::Sender::new(false),
            }),
            scale: Mutex::default(),
            replicas: watch::Sender::new(0),
            pending_items: AtomicUsize::new(0),
            gauges: Arc::default(),
        })
    }

    /// The name the guest loads the model by.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tag(&self) -> &Tag {
        &self.tag
    }

    /// The model's tokenizer, if it ships one.
    pub fn tokenizer(&self) -> Option<&TextTokenizer> {
        self.tokenizer.as_deref()
    }

    /// The runner's admission gate.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Gauges the runner reports (`pending_items`).
    pub fn gauges(&self) -> &CustomGauges {
        &self.gauges
    }

    pub fn replicas(&self) -> u32 {
        *self.replicas.borrow()
    }

    /// Where the replicas run.
    pub fn device(&self) -> Device {
        match &self.source {
            Source::Stored { device, .. } => *device,
            Source::Fixed(backend) => backend.device(),
        }
    }

    /// Watches the replica count.
    pub fn watch_replicas(&self) -> watch::Receiver<u32> {
        self.replicas.subscribe()
    }

    /// Watches whether the runner holds the weights (false once the last
    /// worker has gone after a scale to zero).
    pub fn watch_loaded(&self) -> watch::Receiver<bool> {
        self.workers.loaded.subscribe()
    }

    pub fn status(&self) -> RunnerStatus {
        RunnerStatus {
            model: self.tag.to_string(),
            device: self.device().to_string(),
            replicas: self.replicas(),
            loaded: *self.workers.loaded.borrow(),
            running: self.gate.running(),
            waiting: self.gate.waiting(),
            pending_items: self.pending_items.load(Ordering::Relaxed),
        }
    }

    /// Applies new batching settings from the next batch on; the host's
    /// defaults fill what `batching` leaves out.
    pub fn set_batching(&self, batching: &RunnerBatching) {
        *self.batching.write().unwrap() = batching.over(&self.default_batching);
    }

    /// The batching in force.
    pub fn batching(&self) -> Batching {
        self.batching.read().unwrap().clone()
    }

    /// Applies new traffic settings; calls already admitted keep theirs.
    pub fn set_traffic(&self, traffic: &RunnerTraffic) {
        *self.timeout.write().unwrap() = traffic.timeout_duration();
        self.gate.reconfigure(traffic.max_concurrency, traffic.queue.clone());
    }

    /// Sets the replica count. Adding replicas loads the weights first if
    /// the runner does not hold them (the only slow step, off the executor).
    pub async fn set_replicas(self: &Arc<Self>, replicas: u32) -> Result<()> {
        if replicas == 0 {
            self.scale_to_zero();
            return Ok(());
        }
        let held = self.workers.backend.lock().unwrap().clone();
        let backend = match (held, &self.source) {
            (Some(backend), _) => backend,
            (None, Source::Fixed(backend)) => Arc::clone(backend),
            (None, Source::Stored { model, cache, device }) => cache.weights(model, *device).await?,
        };
        self.apply(replicas, backend)
    }

    /// Holds `backend` and runs `replicas` workers over it.
    fn apply(&self, replicas: u32, backend: Arc<dyn Backend>) -> Result<()> {
        {
            let mut held = self.workers.backend.lock().unwrap();
            *held = Some(Arc::clone(&backend));
            self.workers.loaded.send_replace(true);
        }
        let mut scale = self.scale.lock().unwrap();
        scale.generation += 1;
        while scale.workers > replicas {
            let _ = self.jobs.send(Work::Stop);
            scale.workers -= 1;
        }
        while scale.workers < replicas {
            self.spawn_worker(Arc::clone(&backend))?;
            scale.workers += 1;
        }
        drop(scale);
        self.gate.set_replicas(replicas as usize);
        self.replicas.send_replace(replicas);
        Ok(())
    }

    fn spawn_worker(&self, backend: Arc<dyn Backend>) -> Result<()> {
        let workers = Arc::clone(&self.workers);
        let (histogram, batching) = (self.histogram.clone(), Arc::clone(&self.batching));
        workers.live.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new().name(format!("runner {}", self.tag)).spawn(move || {
            batcher::run_worker(
                backend.as_ref(),
                &workers.queue,
                &|| batching.read().unwrap().clone(),
                |n| histogram.observe(n as f64),
            );
            drop(backend);
            workers.retire();
        });
        if let Err(e) = spawned {
            self.workers.live.fetch_sub(1, Ordering::SeqCst);
            return Err(e).context("spawning a runner worker");
        }
        Ok(())
    }

    /// Admits nothing new, and once the running calls are answered stops
    /// every worker and lets go of the weights, unless woken meanwhile.
    fn scale_to_zero(self: &Arc<Self>) {
        self.gate.set_replicas(0);
        self.replicas.send_replace(0);
        let generation = {
            let mut scale = self.scale.lock().unwrap();
            scale.generation += 1;
            scale.generation
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.gate.wait_idle().await;
            let mut scale = this.scale.lock().unwrap();
            if scale.generation != generation {
                return;
            }
            let mut held = this.workers.backend.lock().unwrap();
            *held = None;
            for _ in 0..scale.workers {
                let _ = this.jobs.send(Work::Stop);
            }
            scale.workers = 0;
            if this.workers.live.load(Ordering::SeqCst) == 0 {
                this.workers.loaded.send_replace(false);
            }
        });
    }

    /// Runs the model on the runner's workers, batched with concurrent calls,
    /// within the runner's timeout (queueing included).
    pub async fn compute(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, RunnerError> {
        let arrived = Instant::now();
        let items = inputs.first().and_then(|(_, t)| t.dims.first().copied()).unwrap_or(1).max(1);
        let _pending = Pending::add(self, items);
        let timeout = *self.timeout.read().unwrap();
        let deadline = arrived + timeout;
        let permit = self.gate.admit(deadline).await.map_err(|rejection| match rejection {
            Rejection::QueueFull { .. } => {
                RunnerError::Overloaded(format!("runner {}: {rejection}", self.name))
            }
            _ => RunnerError::Timeout(format!("runner {}: {rejection}", self.name)),
        })?;
        let (mut job, answer) = Job::new(inputs, arrived);
        job.permit = Some(permit);
        self.jobs
            .send(Work::Job(job))
            .map_err(|_| RunnerError::Runtime(format!("runner {} has stopped", self.name)))?;
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                Err(RunnerError::Runtime(format!("runner {}: the backend failed (panicked)", self.name)))
            }
            Err(_) => Err(RunnerError::Timeout(format!(
                "runner {} did not answer within its timeout ({timeout:.1?})",
                self.name
            ))),
        }
    }
}

impl Runner {
    /// Runs the model on the calling thread, unbatched and outside traffic
    /// control (benchmarks). Fails when the runner holds no weights.
    pub fn compute_blocking(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError> {
        let backend = self.workers.backend.lock().unwrap().clone();
        let backend =
            backend.ok_or_else(|| RunnerError::Runtime(format!("runner {} is at zero", self.name)))?;
        backend.compute(inputs)
    }
}

/// Counts a call's items as pending while it lives.
struct Pending<'a> {
    runner: &'a Runner,
    items: usize,
}

impl<'a> Pending<'a> {
    fn add(runner: &'a Runner, items: usize) -> Pending<'a> {
        let now = runner.pending_items.fetch_add(items, Ordering::SeqCst) + items;
        runner.gauges.set("pending_items", now as f64);
        Pending { runner, items }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let now = self.runner.pending_items.fetch_sub(self.items, Ordering::SeqCst) - self.items;
        self.runner.gauges.set("pending_items", now as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Tensor, batch_size_family};
    use crate::traffic::{QueueConfig, Strategy};

    /// Answers each call only when the test says so.
    struct Held {
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Backend for Held {
        fn describe(&self) -> String {
            "held".into()
        }

        fn compute(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError> {
            self.release.lock().unwrap().recv().map_err(|_| RunnerError::Runtime("released".into()))?;
            Ok(inputs.to_vec())
        }
    }

    fn held_runner(traffic: RunnerTraffic) -> (Arc<Runner>, mpsc::Sender<()>) {
        let (release, rx) = mpsc::channel();
        let backend = Arc::new(Held { release: Mutex::new(rx) });
        let tag: Tag = "held:1".parse().unwrap();
        let runner = Runner::with_backend(
            "held",
            tag,
            backend,
            None,
            Batching { max_batch_size: 1, max_latency: None },
            &batch_size_family(),
            &traffic,
        )
        .unwrap();
        (runner, release)
    }

    fn input() -> Vec<NamedTensor> {
        vec![("x".into(), Tensor::from_f32(vec![3, 1], &[1.0, 2.0, 3.0]))]
    }

    #[tokio::test]
    async fn a_runner_timeout_answers_on_time_and_keeps_the_slot_until_the_work_is_done() {
        let traffic = RunnerTraffic { timeout: 0.1, ..RunnerTraffic::default() };
        let (runner, release) = held_runner(traffic);
        let started = Instant::now();
        let err = runner.compute(input()).await.unwrap_err();
        assert!(matches!(err, RunnerError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        // The backend still holds the call: its slot is not free.
        assert_eq!(runner.gate().running(), 1);
        release.send(()).unwrap();
        runner.gate().wait_idle().await;
        assert_eq!(runner.status().pending_items, 0);
    }

    #[tokio::test]
    async fn a_full_runner_queue_is_overloaded_and_pending_items_are_reported() {
        let traffic = RunnerTraffic {
            max_concurrency: Some(1),
            queue: QueueConfig { max_length: 0, strategy: Strategy::Fifo },
            ..RunnerTraffic::default()
        };
        let (runner, release) = held_runner(traffic);
        let r = Arc::clone(&runner);
        let first = tokio::spawn(async move { r.compute(input()).await });
        while runner.gate().running() < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(runner.gauges().snapshot().get("pending_items"), Some(&3.0));
        let err = runner.compute(input()).await.unwrap_err();
        assert!(matches!(err, RunnerError::Overloaded(_)), "{err}");
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), input());
        assert_eq!(runner.gauges().snapshot().get("pending_items"), Some(&0.0));
    }

    #[tokio::test]
    async fn at_zero_the_workers_stop_and_calls_wait_for_the_wake() {
        let (runner, release) = held_runner(RunnerTraffic::default());
        assert_eq!(runner.status().replicas, 1);
        let mut loaded = runner.watch_loaded();
        assert!(*loaded.borrow());
        runner.set_replicas(0).await.unwrap();
        loaded.wait_for(|l| !l).await.unwrap();
        assert_eq!(runner.workers.live.load(Ordering::SeqCst), 0);

        let r = Arc::clone(&runner);
        let call = tokio::spawn(async move { r.compute(input()).await });
        runner.gate().waiting_started.notified().await;
        assert_eq!(runner.status().waiting, 1);
        runner.set_replicas(2).await.unwrap();
        assert_eq!(runner.workers.live.load(Ordering::SeqCst), 2);
        release.send(()).unwrap();
        assert_eq!(call.await.unwrap().unwrap(), input());
    }

    #[tokio::test]
    async fn scaling_down_drains_what_was_admitted() {
        let (runner, release) = held_runner(RunnerTraffic::default());
        runner.set_replicas(2).await.unwrap();
        let calls: Vec<_> = (0..2)
            .map(|_| {
                let r = Arc::clone(&runner);
                tokio::spawn(async move { r.compute(input()).await })
            })
            .collect();
        while runner.gate().running() < 2 {
            tokio::task::yield_now().await;
        }
        runner.set_replicas(0).await.unwrap();
        for _ in 0..2 {
            release.send(()).unwrap();
        }
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap(), input());
        }
        runner.watch_loaded().wait_for(|l| !l).await.unwrap();
    }
}
