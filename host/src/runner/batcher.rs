//! Adaptive batching: concurrent calls on one model become one forward pass.
//!
//! Each runner has one worker thread fed by a queue. The worker takes the
//! first waiting call, then every call already waiting behind it, up to
//! `max_batch_size` *items* (rows: a call carrying 20 texts counts 20), and
//! runs them as one batch. Under light load a call runs alone at once (no
//! waiting window is added); under load the calls that queued while the
//! previous batch ran go together, so batches grow with the load.
//!
//! Merging is for encoder inputs: 2-D integer tensors `[rows, seq]` with the
//! same names in every call. Shorter sequences are padded on the right with
//! zeros, which the attention mask (also padded with zeros) hides from
//! attention and pooling, so every call gets the result it would get alone.
//! Outputs are split back by rows. Calls that cannot be merged run alone.
//!
//! A latency objective (`max_latency`, BentoML's `max_latency_ms`) is kept
//! with BentoML's cost model: a batch of size `n` takes `o_a·n + o_b`,
//! fitted by least squares to the batches actually run. For encoder inputs
//! `n` counts padded tokens (rows × longest sequence) rather than rows, as
//! the work does: one batch of long texts then does not make later short
//! ones look slow. A call whose wait so far plus its predicted batch time
//! exceeds the objective fails at once ([`RunnerError::Overloaded`], HTTP
//! 503) instead of running late.

use std::collections::VecDeque;
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use super::{Backend, ElementType, NamedTensor, RunnerError, Tensor};

/// What a runner's workers take from its queue.
pub enum Work {
    Job(Job),
    /// One worker finishes what it holds and exits (a replica removed).
    Stop,
}

/// One call waiting for a worker.
pub struct Job {
    pub inputs: Vec<NamedTensor>,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<NamedTensor>, RunnerError>>,
    pub arrived: Instant,
    /// The call's slot in the runner's gate: held until the job is answered,
    /// so a caller that timed out frees nothing while its batch still runs.
    pub permit: Option<crate::traffic::Permit>,
}

impl Job {
    pub fn new(
        inputs: Vec<NamedTensor>,
        arrived: Instant,
    ) -> (Job, tokio::sync::oneshot::Receiver<Result<Vec<NamedTensor>, RunnerError>>) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        (Job { inputs, reply, arrived, permit: None }, answer)
    }
}

/// `seconds = a·n + b` for a batch of size `n` ([`work`]), fitted to recent
/// batches.
#[derive(Debug, Default)]
pub struct CostModel {
    samples: VecDeque<(f64, f64)>,
    fit: Option<(f64, f64)>,
}

/// Batches the fit looks back on.
const COST_SAMPLES: usize = 64;

impl CostModel {
    /// Records that a batch of `items` took `took`.
    pub fn observe(&mut self, items: usize, took: Duration) {
        if self.samples.len() == COST_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((items as f64, took.as_secs_f64()));
        let n = self.samples.len() as f64;
        let (sx, sy) = self.samples.iter().fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
        let (mx, my) = (sx / n, sy / n);
        let (sxx, sxy) = self
            .samples
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (x - mx), b + (x - mx) * (y - my)));
        // With one batch size seen so far, all of the time is per item.
        let a = if sxx > 0.0 { (sxy / sxx).max(0.0) } else { my / mx.max(1.0) };
        let b = (my - a * mx).max(0.0);
        self.fit = Some((a, b));
    }

    /// Predicted time of a batch of `items`; `None` before any observation.
    pub fn predict(&self, items: usize) -> Option<Duration> {
        self.fit.map(|(a, b)| Duration::from_secs_f64(a * items as f64 + b))
    }
}

/// The size of a batch for the cost model: padded tokens (rows × longest
/// sequence) when every call is mergeable, else one per row or call.
fn work(batch: &[Job]) -> usize {
    let seq = |j: &Job| j.inputs.first().and_then(|(_, t)| t.dims.get(1).copied());
    let longest = batch.iter().map(|j| j.rows().and(seq(j))).collect::<Option<Vec<_>>>();
    let rows: usize = batch.iter().map(|j| j.rows().unwrap_or(1)).sum();
    match longest.and_then(|l| l.into_iter().max()) {
        Some(seq) => rows * seq.max(1),
        None => rows,
    }
}

impl Job {
    /// Rows (items) of a mergeable call; `None` if it cannot be merged.
    fn rows(&self) -> Option<usize> {
        let mut rows = None;
        for (_, t) in &self.inputs {
            if t.dims.len() != 2 || !matches!(t.ty, ElementType::I64 | ElementType::I32) {
                return None;
            }
            if *rows.get_or_insert(t.dims[0]) != t.dims[0] {
                return None;
            }
        }
        rows
    }
}

/// Runs one worker until it takes a [`Work::Stop`] or every sender is gone.
/// Workers of one runner share `queue`; whoever holds its lock collects the
/// next batch, with the runner's batching settings as they are then
/// (`settings`: they can change while the worker runs). `on_batch` sees the
/// items of each forward pass.
pub fn run_worker(
    backend: &dyn Backend,
    queue: &Mutex<mpsc::Receiver<Work>>,
    settings: &dyn Fn() -> super::Batching,
    on_batch: impl Fn(usize),
) {
    let mut carried: Option<Job> = None;
    let mut cost = CostModel::default();
    loop {
        let (batch, stop, limits) = {
            let jobs = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let first = match carried.take() {
                Some(job) => job,
                None => match jobs.recv() {
                    Ok(Work::Job(job)) => job,
                    Ok(Work::Stop) | Err(_) => return,
                },
            };
            // Read once there is work: the wait may have outlived a change.
            let super::Batching { max_batch_size, max_latency } = settings();
            let max_batch_size = max_batch_size.max(1);
            let split = backend.batchable() && max_batch_size > 1;
            let (batch, stop) = collect(first, &jobs, split, max_batch_size, &mut carried);
            (batch, stop, Limits { max_batch_size, max_latency, split })
        };
        run_batch(backend, batch, &mut cost, &limits, &on_batch);
        if stop {
            // What was taken is answered before leaving.
            if let Some(job) = carried.take() {
                run_batch(backend, vec![job], &mut cost, &limits, &on_batch);
            }
            return;
        }
    }
}

/// The batch starting with `first`: every mergeable call already waiting,
/// up to `max_batch_size` items. A call that does not fit is `carried` to
/// the next batch; a `Stop` ends the batch and is returned as `true`.
fn collect(
    first: Job,
    jobs: &mpsc::Receiver<Work>,
    batching: bool,
    max_batch_size: usize,
    carried: &mut Option<Job>,
) -> (Vec<Job>, bool) {
    let mut batch = vec![first];
    let (true, Some(mut rows)) = (batching, batch[0].rows()) else { return (batch, false) };
    while rows < max_batch_size {
        match jobs.try_recv() {
            Ok(Work::Job(next)) => match next.rows() {
                Some(r) if rows + r <= max_batch_size && same_names(&batch[0], &next) => {
                    rows += r;
                    batch.push(next);
                }
                _ => {
                    *carried = Some(next);
                    break;
                }
            },
            Ok(Work::Stop) => return (batch, true),
            Err(_) => break,
        }
    }
    (batch, false)
}

/// Runs one batch and answers its calls. Calls whose caller went away are
/// skipped; a panicking backend fails the batch, not the worker.
struct Limits {
    max_batch_size: usize,
    max_latency: Option<Duration>,
    /// Whether a call larger than `max_batch_size` may be split by rows.
    split: bool,
}

fn run_batch(
    backend: &dyn Backend,
    mut batch: Vec<Job>,
    cost: &mut CostModel,
    limits: &Limits,
    on_batch: &impl Fn(usize),
) {
    batch.retain(|job| !job.reply.is_closed());
    if let Some(max) = limits.max_latency {
        batch = reject_late(batch, cost, max, Instant::now());
    }
    let items: usize = batch.iter().map(|j| j.rows().unwrap_or(1)).sum();
    let size = work(&batch);
    let started = Instant::now();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match batch.len() {
        0 => false,
        1 => {
            let job = batch.pop().unwrap();
            let result = match job.rows() {
                // One call above max_batch_size runs in slices of it, so no
                // forward pass is larger (memory grows with the batch).
                Some(rows) if limits.split && rows > limits.max_batch_size => {
                    compute_in_slices(backend, &job.inputs, rows, limits.max_batch_size, on_batch)
                }
                _ => {
                    on_batch(items);
                    backend.compute(&job.inputs)
                }
            };
            let _ = job.reply.send(result);
            true
        }
        _ => {
            run_merged(backend, batch, on_batch);
            true
        }
    }));
    match ran {
        Ok(true) => cost.observe(size, started.elapsed()),
        Ok(false) => {}
        // The batch's reply channels were dropped: its callers see an error.
        Err(_) => tracing::error!("a runner backend panicked; its batch failed"),
    }
}

/// Fails the calls that would finish past `max` after arrival, keeping the rest.
fn reject_late(batch: Vec<Job>, cost: &CostModel, max: Duration, now: Instant) -> Vec<Job> {
    let Some(predicted) = cost.predict(work(&batch)) else { return batch };
    let mut kept = Vec::with_capacity(batch.len());
    for job in batch {
        let waited = now.saturating_duration_since(job.arrived);
        if waited + predicted > max {
            let _ = job.reply.send(Err(RunnerError::Overloaded(format!(
                "waited {waited:.1?} and a batch would take about {predicted:.1?}: past the {max:.1?} latency objective"
            ))));
        } else {
            kept.push(job);
        }
    }
    kept
}

fn same_names(a: &Job, b: &Job) -> bool {
    fn names(j: &Job) -> Vec<&str> {
        let mut n: Vec<&str> = j.inputs.iter().map(|(n, _)| n.as_str()).collect();
        n.sort_unstable();
        n
    }
    names(a) == names(b)
}

fn run_merged(backend: &dyn Backend, batch: Vec<Job>, on_batch: &impl Fn(usize)) {
    let rows: Vec<usize> = batch.iter().map(|j| j.rows().expect("checked when batched")).collect();
    let total: usize = rows.iter().sum();
    let seq = batch.iter().flat_map(|j| j.inputs.iter().map(|(_, t)| t.dims[1])).max().unwrap_or(0);
    let names: Vec<String> = batch[0].inputs.iter().map(|(n, _)| n.clone()).collect();
    let mut merged = Vec::new();
    for name in names {
        let mut values = Vec::with_capacity(total * seq);
        for i in 0..batch.len() {
            let t = &batch[i].inputs.iter().find(|(n, _)| *n == name).expect("same names").1;
            let v = match t.to_i64() {
                Ok(v) => v,
                Err(e) => return fail_all(batch, RunnerError::invalid(format!("{name}: {e}"))),
            };
            let t = &batch[i].inputs.iter().find(|(n, _)| *n == name).expect("same names").1;
            let width = t.dims[1];
            for row in v.chunks(width.max(1)).take(t.dims[0]) {
                values.extend_from_slice(row);
                values.resize(values.len() + (seq - width), 0);
            }
        }
        merged.push((name, Tensor::from_i64(vec![total, seq], &values)));
    }
    on_batch(total);
    let outputs = match backend.compute(&merged) {
        Ok(outputs) => outputs,
        // One bad call must not fail the others: rerun them one by one.
        Err(_) => {
            for job in batch {
                let _ = job.reply.send(backend.compute(&job.inputs));
            }
            return;
        }
    };
    let mut offset = 0;
    for (job, n) in batch.into_iter().zip(rows) {
        let mine: Result<Vec<NamedTensor>, RunnerError> = outputs
            .iter()
            .map(|(name, t)| split_rows(t, total, offset, n).map(|t| (name.clone(), t)))
            .collect();
        offset += n;
        let _ = job.reply.send(mine);
    }
}

/// Runs a call of `rows` rows as forward passes of at most `max` rows each
/// and joins the outputs back along the first axis.
fn compute_in_slices(
    backend: &dyn Backend,
    inputs: &[NamedTensor],
    rows: usize,
    max: usize,
    on_batch: &impl Fn(usize),
) -> Result<Vec<NamedTensor>, RunnerError> {
    let mut joined: Vec<NamedTensor> = Vec::new();
    for start in (0..rows).step_by(max) {
        let n = max.min(rows - start);
        let slice: Vec<NamedTensor> = inputs
            .iter()
            .map(|(name, t)| split_rows(t, rows, start, n).map(|t| (name.clone(), t)))
            .collect::<Result<_, _>>()?;
        on_batch(n);
        let outputs = backend.compute(&slice)?;
        if joined.is_empty() {
            joined = outputs;
            continue;
        }
        for ((name, all), (other, part)) in joined.iter_mut().zip(outputs) {
            if *name != other || all.dims[1..] != part.dims[1..] || all.ty != part.ty {
                return Err(RunnerError::Runtime(format!(
                    "slices of one call gave different outputs ({name}, {other})"
                )));
            }
            all.dims[0] += part.dims[0];
            all.data.extend_from_slice(&part.data);
        }
    }
    Ok(joined)
}

/// Rows `offset..offset + n` of a `[total, ...]` tensor.
fn split_rows(t: &Tensor, total: usize, offset: usize, n: usize) -> Result<Tensor, RunnerError> {
    if t.dims.first() != Some(&total) || total == 0 {
        return Err(RunnerError::Runtime(format!(
            "output of dimensions {:?} has no batch axis of {total}",
            t.dims
        )));
    }
    let row_bytes = t.data.len() / total;
    let mut dims = t.dims.clone();
    dims[0] = n;
    Ok(Tensor { dims, ty: t.ty, data: t.data[offset * row_bytes..(offset + n) * row_bytes].to_vec() })
}

fn fail_all(batch: Vec<Job>, error: RunnerError) {
    for job in batch {
        let _ = job.reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Batches of at most `n` items, no latency objective.
    pub(super) fn fixed(n: usize) -> crate::runner::Batching {
        crate::runner::Batching { max_batch_size: n, max_latency: None }
    }

    /// Output row = masked sum of the row's ids; records batch sizes.
    struct Summer {
        batches: Mutex<Vec<usize>>,
    }

    impl Backend for Summer {
        fn describe(&self) -> String {
            "summer".into()
        }

        fn batchable(&self) -> bool {
            true
        }

        fn compute(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError> {
            let get = |n: &str| inputs.iter().find(|(name, _)| name == n).unwrap().1.clone();
            let (ids, mask) = (get("input_ids"), get("attention_mask"));
            let (rows, seq) = (ids.dims[0], ids.dims[1]);
            self.batches.lock().unwrap().push(rows);
            let (ids, mask) = (ids.to_i64().unwrap(), mask.to_i64().unwrap());
            let sums: Vec<f32> = (0..rows)
                .map(|r| (0..seq).map(|c| (ids[r * seq + c] * mask[r * seq + c]) as f32).sum())
                .collect();
            Ok(vec![("sums".into(), Tensor::from_f32(vec![rows, 1], &sums))])
        }
    }

    fn call(rows: &[&[i64]]) -> Vec<NamedTensor> {
        let seq = rows.iter().map(|r| r.len()).max().unwrap();
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for r in rows {
            ids.extend_from_slice(r);
            ids.resize(ids.len() + seq - r.len(), 0);
            mask.extend(std::iter::repeat_n(1, r.len()));
            mask.resize(mask.len() + seq - r.len(), 0);
        }
        let dims = vec![rows.len(), seq];
        vec![
            ("input_ids".into(), Tensor::from_i64(dims.clone(), &ids)),
            ("attention_mask".into(), Tensor::from_i64(dims, &mask)),
        ]
    }

    #[test]
    fn waiting_calls_are_merged_padded_and_split_back() {
        let backend = Arc::new(Summer { batches: Mutex::new(Vec::new()) });
        let (tx, rx) = mpsc::channel::<Work>();
        let submit = |inputs| {
            let (job, answer) = Job::new(inputs, Instant::now());
            tx.send(Work::Job(job)).unwrap();
            answer
        };
        // Everything waits before the worker starts; max_batch_size is 8 items.
        let answers = [
            submit(call(&[&[1, 2]])),                         // 1 item, seq 2
            submit(call(&[&[10], &[20, 30, 40]])),            // 2 items, seq 3
            submit(call(&[&[5, 5, 5, 5, 5]])),                // 1 item, seq 5
            submit(call(&[&[7]])),                            // 1 item: 5 so far
            submit(call(&[&[1, 1], &[2, 2], &[3, 3], &[4]])), // 4 items: 9 > 8, next batch
            submit(call(&[&[100]])),                          // 5 in the second batch
        ];
        drop(tx);
        run_worker(backend.as_ref(), &Mutex::new(rx), &|| fixed(8), |_| {});
        let results: Vec<Vec<f32>> =
            answers.into_iter().map(|a| a.blocking_recv().unwrap().unwrap()[0].1.to_f32().unwrap()).collect();
        assert_eq!(
            results,
            vec![vec![3.0], vec![10.0, 90.0], vec![25.0], vec![7.0], vec![2.0, 4.0, 6.0, 4.0], vec![100.0]]
        );
        assert_eq!(*backend.batches.lock().unwrap(), [5, 5]);
    }

    #[test]
    fn a_call_larger_than_max_batch_size_runs_in_slices_with_the_same_result() {
        let backend = Arc::new(Summer { batches: Mutex::new(Vec::new()) });
        let (tx, rx) = mpsc::channel::<Work>();
        let rows: Vec<Vec<i64>> = (1..=7).map(|i| vec![i; i as usize]).collect();
        let refs: Vec<&[i64]> = rows.iter().map(|r| r.as_slice()).collect();
        let (job, answer) = Job::new(call(&refs), Instant::now());
        tx.send(Work::Job(job)).unwrap();
        drop(tx);
        run_worker(backend.as_ref(), &Mutex::new(rx), &|| fixed(3), |_| {});
        let sums = answer.blocking_recv().unwrap().unwrap()[0].1.to_f32().unwrap();
        assert_eq!(sums, (1..=7).map(|i| (i * i) as f32).collect::<Vec<_>>());
        assert_eq!(*backend.batches.lock().unwrap(), [3, 3, 1]);
    }

    #[test]
    fn max_batch_size_one_never_merges() {
        let backend = Arc::new(Summer { batches: Mutex::new(Vec::new()) });
        let (tx, rx) = mpsc::channel::<Work>();
        let mut answers = Vec::new();
        for i in 0..4 {
            let (job, answer) = Job::new(call(&[&[i]]), Instant::now());
            tx.send(Work::Job(job)).unwrap();
            answers.push(answer);
        }
        drop(tx);
        run_worker(backend.as_ref(), &Mutex::new(rx), &|| fixed(1), |_| {});
        assert_eq!(*backend.batches.lock().unwrap(), [1, 1, 1, 1]);
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.blocking_recv().unwrap().unwrap()[0].1.to_f32().unwrap(), [i as f32]);
        }
    }

    #[test]
    fn the_cost_model_fits_a_line_through_batches() {
        let mut cost = CostModel::default();
        assert_eq!(cost.predict(4), None);
        cost.observe(4, Duration::from_millis(40));
        // One size seen: all of it per item.
        assert_eq!(cost.predict(8), Some(Duration::from_millis(80)));
        for (n, ms) in [(1, 13), (8, 41), (16, 77), (32, 149)] {
            cost.observe(n, Duration::from_millis(ms));
        }
        // Least squares over all five: 4.2104 ms per item plus 12.6326 ms.
        let p = cost.predict(24).unwrap().as_secs_f64() * 1e3;
        assert!((p - 113.683).abs() < 0.01, "{p}");
    }

    #[test]
    fn the_cost_model_counts_padded_tokens() {
        let now = Instant::now();
        let job = |rows: &[&[i64]]| Job::new(call(rows), now).0;
        // Two calls merge into 3 rows padded to the longest, 4 tokens.
        assert_eq!(work(&[job(&[&[1, 2, 3, 4]]), job(&[&[1], &[1, 2]])]), 12);
        // A call that cannot be merged counts one.
        let scalar = Job::new(vec![("x".into(), Tensor::from_f32(vec![1], &[1.0]))], now).0;
        assert_eq!(work(&[scalar]), 1);
        // One long batch does not make short ones look slow.
        let uniform = |rows: usize, seq: usize| {
            let rows = vec![vec![7i64; seq]; rows];
            job(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>())
        };
        let mut cost = CostModel::default();
        cost.observe(work(&[uniform(4, 256)]), Duration::from_millis(400));
        cost.observe(work(&[uniform(8, 8)]), Duration::from_millis(30));
        let short = cost.predict(work(&[uniform(64, 8)])).unwrap();
        assert!(short < Duration::from_millis(250), "{short:?}");
    }

    #[test]
    fn a_call_that_cannot_meet_the_objective_fails_fast() {
        let mut cost = CostModel::default();
        cost.observe(1, Duration::from_millis(100));
        let now = Instant::now();
        let job = |waited_ms: u64| Job::new(call(&[&[1]]), now - Duration::from_millis(waited_ms));
        let ((fresh, fresh_answer), (stale, stale_answer)) = (job(0), job(900));
        // Two items: about 200 ms; the stale one has waited 900 ms of 1 s.
        let kept = reject_late(vec![fresh, stale], &cost, Duration::from_secs(1), now);
        assert_eq!(kept.len(), 1);
        match stale_answer.blocking_recv().unwrap() {
            Err(RunnerError::Overloaded(m)) => assert!(m.contains("latency objective"), "{m}"),
            other => panic!("expected Overloaded, got {:?}", other.map(|_| ())),
        }
        drop(kept);
        assert!(fresh_answer.blocking_recv().is_err(), "the kept call was not answered by reject_late");
    }
}

#[cfg(test)]
mod stop_tests {
    use super::tests::fixed;
    use super::*;

    struct Echo;

    impl Backend for Echo {
        fn describe(&self) -> String {
            "echo".into()
        }

        fn compute(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError> {
            if inputs.is_empty() {
                panic!("no inputs");
            }
            Ok(inputs.to_vec())
        }
    }

    fn one() -> Vec<NamedTensor> {
        vec![("x".into(), Tensor::from_f32(vec![1], &[1.0]))]
    }

    #[test]
    fn a_stop_ends_the_worker_after_the_work_queued_before_it() {
        let (tx, rx) = mpsc::channel::<Work>();
        let (before, before_answer) = Job::new(one(), Instant::now());
        let (after, after_answer) = Job::new(one(), Instant::now());
        tx.send(Work::Job(before)).unwrap();
        tx.send(Work::Stop).unwrap();
        tx.send(Work::Job(after)).unwrap();
        let queue = Mutex::new(rx);
        run_worker(&Echo, &queue, &|| fixed(8), |_| {});
        assert!(before_answer.blocking_recv().unwrap().is_ok());
        // The job behind the stop is still queued for another worker.
        assert!(matches!(queue.lock().unwrap().try_recv(), Ok(Work::Job(_))));
        drop(after_answer);
    }

    #[test]
    fn abandoned_calls_are_skipped_and_a_panic_fails_only_its_batch() {
        let (tx, rx) = mpsc::channel::<Work>();
        let (gone, gone_answer) = Job::new(one(), Instant::now());
        drop(gone_answer);
        let (panics, panics_answer) = Job::new(Vec::new(), Instant::now());
        let (fine, fine_answer) = Job::new(one(), Instant::now());
        for job in [gone, panics, fine] {
            tx.send(Work::Job(job)).unwrap();
        }
        drop(tx);
        let batches = std::sync::atomic::AtomicUsize::new(0);
        run_worker(&Echo, &Mutex::new(rx), &|| fixed(1), |_| {
            batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(panics_answer.blocking_recv().is_err(), "the panicked call got an answer");
        assert!(fine_answer.blocking_recv().unwrap().is_ok(), "the worker died with the panic");
        assert_eq!(batches.into_inner(), 2, "the abandoned call was run");
    }
}
