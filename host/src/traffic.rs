//! Traffic control for one component: a concurrency limit with a bounded
//! queue in front of it.
//!
//! A request takes a [`Permit`] before it runs and holds it until its
//! instance has really stopped (the permit is dropped after the call's future,
//! which owns the store): a request that timed out cannot free its slot while
//! its guest still runs, so nothing "barges" past the limit.
//!
//! Beyond `max_concurrency`, requests wait in a queue of at most
//! `queue.max_length`, served by strategy:
//! * `fifo`: oldest first;
//! * `lifo`: newest first (under overload the newest are the most likely
//!   still wanted; old ones run into their deadlines);
//! * `deadline`: oldest first, but a request whose remaining time is shorter
//!   than the typical service time is dropped (504) instead of started late.
//!
//! A full queue answers 503 with a `Retry-After` estimated from the queue
//! length and the observed service time; a request still queued at its
//! deadline answers 504.
//!
//! At zero replicas the queue is the cold-start buffer (Knative's activator):
//! its bound is `max_pending` from the scaling policy instead of the queue
//! length, and waiting requests are released no faster than the new
//! capacity admits.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Queue settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Requests that may wait; beyond it requests get 503.
    pub max_length: usize,
    pub strategy: Strategy,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { max_length: 1024, strategy: Strategy::Fifo }
    }
}

/// Which waiting request runs next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Fifo,
    Lifo,
    Deadline,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The queue is full (503 with `Retry-After`). At zero replicas the
    /// queue is the cold-start buffer; the component is woken all the same.
    #[error("{}", queue_full(*length, *retry_after, *at_zero))]
    QueueFull { length: usize, retry_after: Duration, at_zero: bool },
    /// The deadline passed while the request waited (504).
    #[error("the request waited {0:.1?} in the queue and reached its deadline")]
    Timeout(Duration),
    /// The deadline strategy dropped it: too little time left to finish (504).
    #[error("dropped from the queue: {left:.1?} left before the deadline, a call takes about {typical:.1?}")]
    CannotMeetDeadline { left: Duration, typical: Duration },
}

fn queue_full(length: usize, retry_after: Duration, at_zero: bool) -> String {
    let retry = retry_after.as_secs();
    if at_zero {
        format!(
            "no replica is up yet and the cold-start buffer is full ({length} waiting, max_pending); it is starting: retry after {retry}s"
        )
    } else {
        format!("the queue is full ({length} waiting); retry after {retry}s")
    }
}

struct Waiter {
    id: u64,
    deadline: Instant,
    /// Carries the permit itself, so a grant that is never received (the
    /// request went away) returns its slot when the channel is dropped.
    grant: oneshot::Sender<Result<Permit, Rejection>>,
}

struct State {
    /// `max_concurrency`: slots per replica (`None`: unbounded).
    per_replica: Option<usize>,
    /// Replicas the autoscaler granted; zero admits nothing (requests wait).
    replicas: usize,
    /// Slots in all: `per_replica × replicas`, derived.
    limit: Option<usize>,
    /// Requests admitted so far (for the request rate).
    admitted: u64,
    /// Requests refused at zero replicas since the autoscaler last looked:
    /// demand, though none waits.
    refused_at_zero: u64,
    queue: QueueConfig,
    /// The queue's bound at zero replicas (`None`: the queue's `max_length`).
    max_pending: Option<usize>,
    running: usize,
    waiting: VecDeque<Waiter>,
    next_id: u64,
    /// Exponentially weighted mean service time, in seconds.
    service_time: f64,
}

/// The admission gate of one component.
pub struct Gate {
    state: Mutex<State>,
    /// Signalled when a request starts waiting, so an autoscaler can wake a
    /// component at zero at once instead of at its next tick.
    pub waiting_started: tokio::sync::Notify,
    /// Signalled when the last running request finishes.
    idle: tokio::sync::Notify,
}

impl State {
    fn set_limit(&mut self) {
        self.limit = if self.replicas == 0 { Some(0) } else { self.per_replica.map(|p| p * self.replicas) };
    }
}

/// A running slot; dropping it lets the next waiting request run.
pub struct Permit {
    gate: Arc<Gate>,
    started: Instant,
    /// False for a permit that never took a slot (an undelivered grant).
    armed: bool,
}

impl Gate {
    /// A gate allowing `max_concurrency` at once per replica, with one
    /// replica (`None`: no limit, no queue while there are replicas).
    pub fn new(max_concurrency: Option<u32>, queue: QueueConfig) -> Arc<Gate> {
        let mut state = State {
            per_replica: max_concurrency.map(|n| n as usize),
            replicas: 1,
            limit: None,
            admitted: 0,
            refused_at_zero: 0,
            queue,
            max_pending: None,
            running: 0,
            waiting: VecDeque::new(),
            next_id: 0,
            service_time: 0.0,
        };
        state.set_limit();
        Arc::new(Gate {
            state: Mutex::new(state),
            waiting_started: tokio::sync::Notify::new(),
            idle: tokio::sync::Notify::new(),
        })
    }

    /// Changes the limits in place; waiting requests keep their places, and
    /// a raised limit lets them run at once.
    pub fn reconfigure(self: &Arc<Self>, max_concurrency: Option<u32>, queue: QueueConfig) {
        let mut state = self.state.lock().unwrap();
        state.per_replica = max_concurrency.map(|n| n as usize);
        state.queue = queue;
        state.set_limit();
        self.dispatch(&mut state);
    }

    /// Sets the replica count: capacity becomes `replicas × max_concurrency`.
    /// Fewer replicas take effect as running requests finish (they drain;
    /// none is stopped); zero admits nothing and requests wait.
    pub fn set_replicas(self: &Arc<Self>, replicas: usize) {
        let mut state = self.state.lock().unwrap();
        state.replicas = replicas;
        state.set_limit();
        self.dispatch(&mut state);
    }

    /// Bounds the queue at zero replicas (the cold-start buffer); `None`
    /// uses the queue's `max_length`.
    pub fn set_max_pending(&self, max_pending: Option<usize>) {
        self.state.lock().unwrap().max_pending = max_pending;
    }

    /// Waits until no request is running (a drain).
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Requests refused at zero replicas since the last call (demand the
    /// autoscaler must wake for, although nothing waits).
    pub fn take_refused_at_zero(&self) -> u64 {
        std::mem::take(&mut self.state.lock().unwrap().refused_at_zero)
    }

    /// Requests admitted since the gate was made.
    pub fn admitted(&self) -> u64 {
        self.state.lock().unwrap().admitted
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.state.lock().unwrap().running
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.state.lock().unwrap().waiting.len()
    }

    /// Waits for a slot until `deadline`.
    pub async fn admit(self: &Arc<Self>, deadline: Instant) -> Result<Permit, Rejection> {
        let arrived = Instant::now();
        let (id, rx) = {
            let mut state = self.state.lock().unwrap();
            if state.limit.is_none_or(|limit| state.running < limit) {
                state.running += 1;
                state.admitted += 1;
                return Ok(self.permit());
            }
            // Requests that went away while waiting do not hold places.
            state.waiting.retain(|w| !w.grant.is_closed());
            let bound = match (state.replicas, state.max_pending) {
                (0, Some(pending)) => pending,
                _ => state.queue.max_length,
            };
            if state.waiting.len() >= bound {
                let at_zero = state.replicas == 0;
                let rejection = Rejection::QueueFull {
                    length: state.waiting.len(),
                    retry_after: retry_after(&state),
                    at_zero,
                };
                if at_zero {
                    // Refused, but still demand: wake the component.
                    state.refused_at_zero += 1;
                    drop(state);
                    self.waiting_started.notify_one();
                }
                return Err(rejection);
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state.waiting.push_back(Waiter { id, deadline, grant: tx });
            (id, rx)
        };
        self.waiting_started.notify_one();
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(granted)) => granted,
            // Timed out (a permit granted meanwhile went back with the channel).
            _ => {
                let mut state = self.state.lock().unwrap();
                state.waiting.retain(|w| w.id != id);
                Err(Rejection::Timeout(arrived.elapsed()))
            }
        }
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit { gate: Arc::clone(self), started: Instant::now(), armed: true }
    }

    /// Hands free slots to waiting requests, by strategy.
    fn dispatch(self: &Arc<Self>, state: &mut State) {
        let now = Instant::now();
        while state.limit.is_none_or(|limit| state.running < limit) {
            let next = match state.queue.strategy {
                Strategy::Fifo => state.waiting.pop_front(),
                Strategy::Lifo => state.waiting.pop_back(),
                Strategy::Deadline => {
                    let typical = Duration::from_secs_f64(state.service_time);
                    let mut found = None;
                    while let Some(w) = state.waiting.pop_front() {
                        let left = w.deadline.saturating_duration_since(now);
                        if left < typical {
                            let _ = w.grant.send(Err(Rejection::CannotMeetDeadline { left, typical }));
                            continue;
                        }
                        found = Some(w);
                        break;
                    }
                    found
                }
            };
            let Some(waiter) = next else { break };
            state.running += 1;
            if let Err(Ok(mut undelivered)) = waiter.grant.send(Ok(self.permit())) {
                // The request went away: the slot was never taken.
                undelivered.armed = false;
                state.running -= 1;
            } else {
                state.admitted += 1;
            }
        }
    }

    fn release(self: &Arc<Self>, service_time: Duration) {
        let mut state = self.state.lock().unwrap();
        state.running -= 1;
        if state.running == 0 {
            self.idle.notify_waiters();
        }
        let s = service_time.as_secs_f64();
        state.service_time = if state.service_time == 0.0 { s } else { 0.8 * state.service_time + 0.2 * s };
        self.dispatch(&mut state);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.gate.release(self.started.elapsed());
        }
    }
}

/// Seconds until a retry may find room: the queue drained at the observed
/// rate, at least one.
fn retry_after(state: &State) -> Duration {
    let slots = state.limit.unwrap_or(1).max(1) as f64; // at zero: as if one replica
    let seconds = (state.waiting.len() as f64 * state.service_time / slots).ceil();
    Duration::from_secs(seconds.clamp(1.0, 3600.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_length: usize, strategy: Strategy) -> QueueConfig {
        QueueConfig { max_length, strategy }
    }

    /// Queues `n` requests behind a held slot; returns the order they run in.
    async fn order(strategy: Strategy, n: usize) -> Vec<usize> {
        let gate = Gate::new(Some(1), queue(16, strategy));
        let held = gate.admit(Instant::now() + Duration::from_secs(5)).await.unwrap();
        let ran = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..n {
            let (g, ran) = (Arc::clone(&gate), Arc::clone(&ran));
            tasks.push(tokio::spawn(async move {
                let permit = g.admit(Instant::now() + Duration::from_secs(5)).await.unwrap();
                ran.lock().unwrap().push(i);
                drop(permit);
            }));
            // Each is queued before the next arrives.
            while gate.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(ran).unwrap().into_inner().unwrap()
    }

    #[tokio::test]
    async fn fifo_and_lifo_orders() {
        assert_eq!(order(Strategy::Fifo, 4).await, [0, 1, 2, 3]);
        assert_eq!(order(Strategy::Lifo, 4).await, [3, 2, 1, 0]);
    }

    #[tokio::test]
    async fn a_full_queue_rejects_with_retry_after() {
        let gate = Gate::new(Some(1), queue(1, Strategy::Fifo));
        let far = Instant::now() + Duration::from_secs(5);
        let _held = gate.admit(far).await.unwrap();
        let g = Arc::clone(&gate);
        let queued = tokio::spawn(async move { g.admit(far).await.map(drop) });
        while gate.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        match gate.admit(far).await {
            Err(Rejection::QueueFull { length: 1, retry_after, .. }) => {
                assert!(retry_after >= Duration::from_secs(1))
            }
            other => panic!("expected a full queue, got {:?}", other.map(|_| ())),
        }
        queued.abort();
    }

    #[tokio::test]
    async fn a_deadline_in_the_queue_is_a_timeout_and_frees_the_place() {
        let gate = Gate::new(Some(1), queue(4, Strategy::Fifo));
        let held = gate.admit(Instant::now() + Duration::from_secs(5)).await.unwrap();
        let err = gate.admit(Instant::now() + Duration::from_millis(20)).await.map(drop).unwrap_err();
        assert!(matches!(err, Rejection::Timeout(_)), "{err}");
        assert_eq!(gate.waiting(), 0);
        drop(held);
        assert_eq!(gate.running(), 0);
        // The slot is free again.
        drop(gate.admit(Instant::now() + Duration::from_secs(1)).await.unwrap());
    }

    #[tokio::test]
    async fn the_deadline_strategy_drops_what_cannot_finish_in_time() {
        let gate = Gate::new(Some(1), queue(4, Strategy::Deadline));
        // Teach it that a call takes ~200 ms.
        {
            let mut state = gate.state.lock().unwrap();
            state.service_time = 0.2;
        }
        let held = gate.admit(Instant::now() + Duration::from_secs(5)).await.unwrap();
        let g = Arc::clone(&gate);
        let tight =
            tokio::spawn(async move { g.admit(Instant::now() + Duration::from_millis(300)).await.map(drop) });
        while gate.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let g = Arc::clone(&gate);
        let roomy =
            tokio::spawn(async move { g.admit(Instant::now() + Duration::from_secs(5)).await.map(drop) });
        while gate.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        // Hold the slot until the tight one has < 200 ms left.
        tokio::time::sleep_until((Instant::now() + Duration::from_millis(150)).into()).await;
        drop(held);
        let err = tight.await.unwrap().unwrap_err();
        assert!(matches!(err, Rejection::CannotMeetDeadline { .. }), "{err}");
        roomy.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn no_limit_means_no_queue() {
        let gate = Gate::new(None, queue(0, Strategy::Fifo));
        let far = Instant::now() + Duration::from_secs(1);
        let permits: Vec<_> = futures_join(&gate, far, 50).await;
        assert_eq!(gate.running(), 50);
        drop(permits);
        assert_eq!(gate.running(), 0);
    }

    async fn futures_join(gate: &Arc<Gate>, deadline: Instant, n: usize) -> Vec<Permit> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(gate.admit(deadline).await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_waiter_that_went_away_holds_no_slot() {
        let gate = Gate::new(Some(1), queue(4, Strategy::Fifo));
        let far = Instant::now() + Duration::from_secs(5);
        let held = gate.admit(far).await.unwrap();
        let g = Arc::clone(&gate);
        let gone = tokio::spawn(async move { g.admit(far).await.map(drop) });
        while gate.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        drop(held);
        assert_eq!(gate.running(), 0, "the departed waiter kept a slot");
        drop(gate.admit(far).await.unwrap());
    }

    #[tokio::test]
    async fn zero_replicas_hold_requests_until_capacity_returns() {
        let gate = Gate::new(None, queue(4, Strategy::Fifo));
        gate.set_replicas(0);
        let far = Instant::now() + Duration::from_secs(5);
        let g = Arc::clone(&gate);
        let held = tokio::spawn(async move { g.admit(far).await.map(drop) });
        gate.waiting_started.notified().await;
        assert_eq!((gate.running(), gate.waiting()), (0, 1));
        gate.set_replicas(1);
        held.await.unwrap().unwrap();
        assert_eq!(gate.admitted(), 1);
    }

    /// Knative's activator rule: a wake lets through what the new capacity
    /// admits, not the whole buffer at once.
    #[tokio::test]
    async fn a_wake_releases_no_more_than_the_new_capacity() {
        let gate = Gate::new(Some(2), queue(8, Strategy::Fifo));
        gate.set_replicas(0);
        let far = Instant::now() + Duration::from_secs(5);
        let (done, _) = tokio::sync::broadcast::channel::<()>(1);
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let (g, mut done) = (Arc::clone(&gate), done.subscribe());
                tokio::spawn(async move {
                    let permit = g.admit(far).await.unwrap();
                    let _ = done.recv().await;
                    drop(permit);
                })
            })
            .collect();
        while gate.waiting() < 5 {
            tokio::task::yield_now().await;
        }
        gate.set_replicas(1);
        assert_eq!((gate.running(), gate.waiting()), (2, 3));
        gate.set_replicas(2);
        assert_eq!((gate.running(), gate.waiting()), (4, 1));
        done.send(()).unwrap();
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!((gate.admitted(), gate.running()), (5, 0));
    }

    #[tokio::test]
    async fn max_pending_bounds_the_buffer_at_zero_only() {
        let gate = Gate::new(None, queue(4, Strategy::Fifo));
        gate.set_max_pending(Some(1));
        gate.set_replicas(0);
        let far = Instant::now() + Duration::from_secs(5);
        let g = Arc::clone(&gate);
        let first = tokio::spawn(async move { g.admit(far).await.map(drop) });
        gate.waiting_started.notified().await;
        let err = gate.admit(far).await.map(drop).unwrap_err();
        assert!(matches!(err, Rejection::QueueFull { length: 1, at_zero: true, .. }), "{err}");
        assert!(err.to_string().contains("cold-start buffer"), "{err}");
        assert_eq!(gate.take_refused_at_zero(), 1, "a refusal at zero is demand");
        assert_eq!(gate.take_refused_at_zero(), 0);
        // With capacity, the queue's own length applies again.
        gate.set_replicas(1);
        first.await.unwrap().unwrap();
        gate.reconfigure(Some(1), queue(4, Strategy::Fifo));
        let held = gate.admit(far).await.unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let g = Arc::clone(&gate);
                tokio::spawn(async move { g.admit(far).await.map(drop) })
            })
            .collect();
        while gate.waiting() < 3 {
            tokio::task::yield_now().await;
        }
        drop(held);
        for w in waiters {
            w.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_permit_goes() {
        let gate = Gate::new(None, queue(4, Strategy::Fifo));
        gate.wait_idle().await; // nothing running: at once
        let far = Instant::now() + Duration::from_secs(5);
        let (a, b) = (gate.admit(far).await.unwrap(), gate.admit(far).await.unwrap());
        let g = Arc::clone(&gate);
        let drained = tokio::spawn(async move { g.wait_idle().await });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!drained.is_finished(), "one request still runs");
        drop(b);
        drained.await.unwrap();
        assert_eq!(gate.running(), 0);
    }

    #[tokio::test]
    async fn raising_the_limit_lets_waiters_run() {
        let gate = Gate::new(Some(1), queue(4, Strategy::Fifo));
        let far = Instant::now() + Duration::from_secs(5);
        let _held = gate.admit(far).await.unwrap();
        let g = Arc::clone(&gate);
        let waiter = tokio::spawn(async move { g.admit(far).await.map(drop) });
        while gate.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        gate.reconfigure(Some(2), queue(4, Strategy::Fifo));
        waiter.await.unwrap().unwrap();
    }
}
