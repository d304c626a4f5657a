//! The scaling decision for one component, with Kubernetes HPA v2 semantics
//! and zero as a state of its own.
//!
//! [`Autoscaler::decide`] takes an [`Observation`] (a time on any clock, the
//! current replica count, metric totals across replicas, and the demand:
//! requests in flight or waiting) and returns a [`Decision`] whose reason
//! states the numbers behind it. It holds no clock of its own, so tests
//! drive it on a virtual one.
//!
//! The steps, in order:
//! 1. **Zero.** At zero replicas, any demand wakes the component at once
//!    (to `max(1, min_replicas)`), skipping windows and rate limits (Ray
//!    Serve's cold-start fast path). With `scale_to_zero_after` set, a
//!    component that has seen no demand for that long goes to zero, whatever
//!    its count and independently of the scale-down window (KEDA's cooldown).
//! 2. **Proposals.** Per metric, `desired = ceil(current × average / target)`
//!    (= `ceil(total / target)`), or `current` while `|1 − average/target|`
//!    is within the tolerance. The largest proposal wins; the result is
//!    clamped to `[max(min_replicas, 1), max_replicas]`.
//! 3. **Stabilization.** Scale up only to the *minimum* recommendation of
//!    the scale-up window, down only to the *maximum* of the scale-down
//!    window: `clamp(current, min(up window), max(down window))`.
//! 4. **Rate limits.** Each `Pods`/`Percent` policy allows so much change
//!    per period, counted from the replicas at the start of the period
//!    (`current − added + removed` within it); `select_policy` picks the
//!    most permissive (`max`), the least (`min`), or freezes (`disabled`).

use std::collections::{BTreeMap, VecDeque};

use super::policy::{Metric, RateKind, ScalingPolicy, ScalingRules, SelectPolicy};

/// What the autoscaler sees at one moment.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Seconds on any monotonic clock.
    pub now: f64,
    /// Replicas the component has now.
    pub current: u32,
    /// Metric totals across all replicas (the autoscaler divides by `current`).
    pub totals: BTreeMap<Metric, f64>,
    /// Requests in flight plus requests waiting.
    pub demand: u64,
}

/// A scaling decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub at: f64,
    pub current: u32,
    pub desired: u32,
    pub reason: String,
}

/// Decision state for one component: recent recommendations (for the
/// stabilization windows) and recent scale events (for the rate limits).
#[derive(Debug, Clone)]
pub struct Autoscaler {
    policy: ScalingPolicy,
    recommendations: VecDeque<(f64, u32)>,
    /// Applied changes: (time, replicas added (+) or removed (−)).
    events: VecDeque<(f64, i64)>,
    last_demand: Option<f64>,
}

impl Autoscaler {
    pub fn new(policy: ScalingPolicy) -> Autoscaler {
        Autoscaler { policy, recommendations: VecDeque::new(), events: VecDeque::new(), last_demand: None }
    }

    pub fn policy(&self) -> &ScalingPolicy {
        &self.policy
    }

    /// Replaces the policy; history (windows, rate periods, idle time) is kept,
    /// so a replaced policy takes effect at the next decision without a jump.
    pub fn set_policy(&mut self, policy: ScalingPolicy) {
        self.policy = policy;
    }

    /// Decides the replica count for `obs`, assuming the caller applies it.
    pub fn decide(&mut self, obs: &Observation) -> Decision {
        let (desired, reason) = self.compute(obs);
        let change = desired as i64 - obs.current as i64;
        if change != 0 {
            self.events.push_back((obs.now, change));
        }
        Decision { at: obs.now, current: obs.current, desired, reason }
    }

    fn compute(&mut self, obs: &Observation) -> (u32, String) {
        let p = &self.policy;
        let now = obs.now;
        if obs.demand > 0 || self.last_demand.is_none() {
            self.last_demand = Some(now);
        }
        let floor = p.min_replicas.max(1).min(p.max_replicas);

        // 1. Zero is its own state.
        if obs.current == 0 {
            if obs.demand > 0 {
                self.recommendations.clear();
                return (
                    floor,
                    format!("woke from zero: {} request(s) waiting; windows skipped", obs.demand),
                );
            }
            if p.min_replicas == 0 {
                return (0, "at zero replicas with no demand".into());
            }
            return (p.min_replicas, format!("below min_replicas {}", p.min_replicas));
        }
        if let (0, Some(after)) = (p.min_replicas, p.scale_to_zero_after) {
            let idle = now - self.last_demand.unwrap_or(now);
            if obs.demand == 0 && idle >= after {
                self.recommendations.clear();
                return (0, format!("no demand for {idle:.1}s ≥ scale_to_zero_after {after}s"));
            }
        }

        // 2. A proposal per metric; the largest wins.
        let current = obs.current;
        let mut reasons = Vec::new();
        let mut raw: Option<u32> = None;
        for target in &p.policy.metrics {
            let Some(&total) = obs.totals.get(&target.metric) else {
                reasons.push(format!("{}: no data", target.metric));
                continue;
            };
            let average = total / current as f64;
            let ratio = average / target.value;
            let proposal = if (1.0 - ratio).abs() <= p.policy.tolerance {
                current
            } else {
                (total / target.value).ceil().min(u32::MAX as f64) as u32
            };
            reasons.push(format!(
                "{} {average:.2}/replica vs target {} (ratio {ratio:.2}) → {proposal}",
                target.metric, target.value
            ));
            raw = Some(raw.map_or(proposal, |r| r.max(proposal)));
        }
        let raw = raw.unwrap_or(current).clamp(floor, p.max_replicas);

        // 3. Stabilization windows.
        self.recommendations.push_back((now, raw));
        let horizon = p.policy.scale_up_stabilization_window.max(p.policy.scale_down_stabilization_window);
        while self.recommendations.front().is_some_and(|(t, _)| *t < now - horizon) {
            self.recommendations.pop_front();
        }
        let within = |window: f64| {
            self.recommendations.iter().filter(move |(t, _)| *t >= now - window).map(|(_, r)| *r)
        };
        let up_bound = within(p.policy.scale_up_stabilization_window).min().unwrap_or(raw);
        let down_bound = within(p.policy.scale_down_stabilization_window).max().unwrap_or(raw);
        let stabilized = current.max(up_bound).min(down_bound);
        if stabilized != raw {
            let (dir, window) = if raw > current {
                ("up", p.policy.scale_up_stabilization_window)
            } else {
                ("down", p.policy.scale_down_stabilization_window)
            };
            reasons.push(format!("{dir} window {window}s holds {raw} at {stabilized}"));
        }

        // 4. Rate limits.
        let desired = if stabilized > current {
            let limit = self.limit(now, current, &p.policy.scale_up, true);
            if limit < stabilized {
                reasons.push(format!("scale-up rate limit allows {limit}"));
            }
            stabilized.min(limit)
        } else if stabilized < current {
            let limit = self.limit(now, current, &p.policy.scale_down, false);
            if limit > stabilized {
                reasons.push(format!("scale-down rate limit allows {limit}"));
            }
            stabilized.max(limit)
        } else {
            stabilized
        };
        (desired.clamp(floor, p.max_replicas), reasons.join("; "))
    }

    /// The furthest the rules let the count move from `current` now.
    fn limit(&self, now: f64, current: u32, rules: &ScalingRules, up: bool) -> u32 {
        if rules.select_policy == SelectPolicy::Disabled {
            return current;
        }
        let proposals = rules.policies.iter().map(|r| {
            let (mut added, mut removed) = (0i64, 0i64);
            for (t, change) in &self.events {
                if *t > now - r.period_seconds {
                    if *change > 0 { added += change } else { removed -= change }
                }
            }
            let start = (current as i64 - added + removed).max(0) as f64;
            let v = r.value as f64;
            let proposal = match (r.kind, up) {
                (RateKind::Pods, true) => start + v,
                (RateKind::Percent, true) => (start * (1.0 + v / 100.0)).ceil(),
                (RateKind::Pods, false) => start - v,
                (RateKind::Percent, false) => (start * (1.0 - v / 100.0)).trunc(),
            };
            proposal.clamp(0.0, u32::MAX as f64) as u32
        });
        // `max` means the most change: the highest count up, the lowest down.
        match (rules.select_policy, up) {
            (SelectPolicy::Max, true) | (SelectPolicy::Min, false) => proposals.max().unwrap_or(current),
            _ => proposals.min().unwrap_or(current),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scale::policy::{MetricTarget, MetricsPolicy, RatePolicy};

    fn policy(min: u32, max: u32) -> ScalingPolicy {
        ScalingPolicy {
            min_replicas: min,
            max_replicas: max,
            policy: MetricsPolicy::default(),
            ..ScalingPolicy::default()
        }
    }

    /// An observation of `inflight` requests in flight in total.
    fn obs(now: f64, current: u32, inflight: f64) -> Observation {
        Observation {
            now,
            current,
            totals: BTreeMap::from([(Metric::Concurrency, inflight)]),
            demand: inflight as u64,
        }
    }

    /// Runs the autoscaler every `step` seconds from 0 to `until`, applying
    /// each decision; `load(t)` is total in-flight at time t.
    fn simulate(
        a: &mut Autoscaler,
        start: u32,
        until: f64,
        step: f64,
        load: impl Fn(f64) -> f64,
    ) -> Vec<(f64, u32)> {
        let mut current = start;
        let mut out = Vec::new();
        let mut t = 0.0;
        while t <= until {
            current = a.decide(&obs(t, current, load(t))).desired;
            out.push((t, current));
            t += step;
        }
        out
    }

    #[test]
    fn tolerance_keeps_the_count_inside_ten_percent() {
        let mut a = Autoscaler::new(policy(1, 10));
        // Target 8 per replica; 4 replicas; 8.7 average is within 10%.
        assert_eq!(a.decide(&obs(0.0, 4, 4.0 * 8.7)).desired, 4);
        assert_eq!(a.decide(&obs(1.0, 4, 4.0 * 7.3)).desired, 4);
        // 9 average: outside, ceil(36/8) = 5.
        let d = a.decide(&obs(2.0, 4, 36.0));
        assert_eq!(d.desired, 5, "{}", d.reason);
        assert!(d.reason.contains("concurrency 9.00/replica vs target 8"), "{}", d.reason);
    }

    #[test]
    fn the_largest_proposal_across_metrics_wins() {
        let mut p = policy(1, 20);
        p.policy.metrics.push(MetricTarget { metric: Metric::Qps, value: 10.0 });
        p.policy
            .metrics
            .push(MetricTarget { metric: Metric::Custom { name: "tokens".into() }, value: 100.0 });
        let mut a = Autoscaler::new(p);
        let o = Observation {
            now: 0.0,
            current: 4,
            totals: BTreeMap::from([
                (Metric::Concurrency, 8.0),                        // → 1
                (Metric::Qps, 65.0),                               // → 7
                (Metric::Custom { name: "tokens".into() }, 250.0), // → 3
            ]),
            demand: 8,
        };
        let d = a.decide(&o);
        assert_eq!(d.desired, 7, "{}", d.reason);
        assert!(d.reason.contains("qps") && d.reason.contains("custom:tokens"), "{}", d.reason);

        // cpu (% of one core) and memory (MiB) are targets like any other.
        let mut p = policy(1, 20);
        p.policy.metrics = vec![
            MetricTarget { metric: Metric::Cpu, value: 50.0 },
            MetricTarget { metric: Metric::Memory, value: 512.0 },
        ];
        let usage = |cpu: f64, memory: f64| Observation {
            now: 0.0,
            current: 2,
            totals: BTreeMap::from([(Metric::Cpu, cpu), (Metric::Memory, memory)]),
            demand: 1,
        };
        let d = Autoscaler::new(p.clone()).decide(&usage(180.0, 600.0)); // cpu → 4, memory → 2
        assert_eq!(d.desired, 4, "{}", d.reason);
        let d = Autoscaler::new(p).decide(&usage(40.0, 2600.0)); // memory → 6
        assert_eq!(d.desired, 6, "{}", d.reason);
        assert!(d.reason.contains("memory"), "{}", d.reason);
    }

    #[test]
    fn scale_down_waits_for_the_whole_window() {
        let mut a = Autoscaler::new(policy(1, 10)); // down window 300 s
        let trace = simulate(&mut a, 4, 400.0, 5.0, |t| if t < 10.0 { 32.0 } else { 8.0 });
        let at = |time: f64| trace.iter().find(|(t, _)| *t >= time).unwrap().1;
        assert_eq!(at(5.0), 4);
        assert_eq!(at(300.0), 4, "scaled down before the window passed");
        // The last high recommendation (t = 5) leaves the window at 305 s.
        assert_eq!(at(310.0), 1);
    }

    #[test]
    fn the_up_window_takes_the_minimum_of_recent_recommendations() {
        let mut p = policy(1, 10);
        p.policy.scale_up_stabilization_window = 30.0;
        let mut a = Autoscaler::new(p);
        // A 10 s spike does not scale up; a sustained rise does, after 30 s.
        let trace =
            simulate(
                &mut a,
                1,
                120.0,
                5.0,
                |t| if (10.0..20.0).contains(&t) || t >= 60.0 { 32.0 } else { 4.0 },
            );
        assert!(trace.iter().filter(|(t, _)| *t < 60.0).all(|(_, r)| *r == 1), "{trace:?}");
        assert_eq!(trace.iter().find(|(t, _)| *t == 85.0).unwrap().1, 1, "{trace:?}");
        assert_eq!(trace.iter().find(|(t, _)| *t == 90.0).unwrap().1, 4, "{trace:?}");
    }

    #[test]
    fn pods_and_percent_rate_policies() {
        // Default scale-up: max(+4 pods, +100 %) per 15 s. From 1 under a huge load: 5, then 10, 20.
        let mut a = Autoscaler::new(policy(1, 100));
        let trace = simulate(&mut a, 1, 30.0, 15.0, |_| 800.0);
        assert_eq!(trace.iter().map(|(_, r)| *r).collect::<Vec<_>>(), [5, 10, 20]);

        // select_policy min: the least permissive of the two.
        let mut p = policy(1, 100);
        p.policy.scale_up.select_policy = SelectPolicy::Min;
        let mut a = Autoscaler::new(p);
        let trace = simulate(&mut a, 10, 15.0, 15.0, |_| 800.0);
        assert_eq!(trace.iter().map(|(_, r)| *r).collect::<Vec<_>>(), [14, 18]);

        // Within one period, changes add up: two decisions 5 s apart stay within +4 in total.
        let mut p = policy(1, 100);
        p.policy.scale_up = ScalingRules {
            policies: vec![RatePolicy { kind: RateKind::Pods, value: 4, period_seconds: 15.0 }],
            select_policy: SelectPolicy::Max,
        };
        let mut a = Autoscaler::new(p);
        let trace = simulate(&mut a, 2, 20.0, 5.0, |_| 800.0);
        assert_eq!(trace.iter().map(|(_, r)| *r).collect::<Vec<_>>(), [6, 6, 6, 10, 10]);

        // Disabled: never up.
        let mut p = policy(1, 100);
        p.policy.scale_up.select_policy = SelectPolicy::Disabled;
        let mut a = Autoscaler::new(p);
        assert_eq!(a.decide(&obs(0.0, 3, 800.0)).desired, 3);
        // Disabled down: never down, even with nothing to do (but to zero,
        // which is its own state, stays possible).
        let mut p = policy(1, 100);
        p.policy.scale_down_stabilization_window = 0.0;
        p.policy.scale_down.select_policy = SelectPolicy::Disabled;
        let mut a = Autoscaler::new(p);
        assert_eq!(a.decide(&obs(0.0, 8, 0.0)).desired, 8);
        assert_eq!(a.decide(&obs(400.0, 8, 0.0)).desired, 8);

        // Scale-down by at most 50 % per 60 s once the window allows it.
        let mut p = policy(1, 100);
        p.policy.scale_down_stabilization_window = 0.0;
        p.policy.scale_down = ScalingRules {
            policies: vec![RatePolicy { kind: RateKind::Percent, value: 50, period_seconds: 60.0 }],
            select_policy: SelectPolicy::Max,
        };
        let mut a = Autoscaler::new(p);
        let trace = simulate(&mut a, 16, 120.0, 60.0, |_| 1.0);
        assert_eq!(trace.iter().map(|(_, r)| *r).collect::<Vec<_>>(), [8, 4, 2]);
    }

    #[test]
    fn zero_after_idle_and_instant_wake() {
        let mut p = policy(0, 4);
        p.scale_to_zero_after = Some(30.0);
        let mut a = Autoscaler::new(p);
        // Busy until t = 10, then idle: zero at t = 40, not before,
        // whatever the 300 s scale-down window says.
        let trace = simulate(&mut a, 2, 60.0, 5.0, |t| if t <= 10.0 { 16.0 } else { 0.0 });
        let at = |time: f64| trace.iter().find(|(t, _)| *t == time).unwrap().1;
        assert_eq!(at(35.0), 2);
        assert_eq!(at(40.0), 0);
        assert_eq!(at(60.0), 0);

        // The first request wakes it at once, skipping windows and rate limits.
        let d = a.decide(&Observation { now: 61.0, current: 0, demand: 1, ..Default::default() });
        assert_eq!(d.desired, 1);
        assert!(d.reason.contains("woke from zero"), "{}", d.reason);

        // min_replicas 0 without scale_to_zero_after never goes to zero by itself.
        let mut a = Autoscaler::new(policy(0, 4));
        let trace = simulate(&mut a, 1, 1000.0, 50.0, |_| 0.0);
        assert!(trace.iter().all(|(_, r)| *r == 1), "{trace:?}");
        // ... and a min above zero wakes to min.
        let mut a = Autoscaler::new(policy(2, 4));
        assert_eq!(
            a.decide(&Observation { now: 0.0, current: 0, demand: 1, ..Default::default() }).desired,
            2
        );
    }

    #[test]
    fn periodic_load_does_not_make_it_flap() {
        // Load alternates every 20 s between 40 and 4 in flight (5 and 1
        // replicas' worth). HPA semantics hold the peak instead of following it.
        let periodic = |t: f64| if ((t / 20.0) as u64).is_multiple_of(2) { 40.0 } else { 4.0 };
        let mut a = Autoscaler::new(policy(1, 10));
        let trace = simulate(&mut a, 1, 600.0, 5.0, periodic);
        let changes = trace.windows(2).filter(|w| w[0].1 != w[1].1).count();
        assert_eq!(changes, 0, "{trace:?}"); // up to 5 at once, then held
        assert!(trace.iter().all(|(_, r)| *r == 5), "{trace:?}");

        // Without a down window it would flap on every half period.
        let mut p = policy(1, 10);
        p.policy.scale_down_stabilization_window = 0.0;
        let mut a = Autoscaler::new(p);
        let trace = simulate(&mut a, 1, 600.0, 5.0, periodic);
        let changes = trace.windows(2).filter(|w| w[0].1 != w[1].1).count();
        assert!(changes > 20, "{changes} changes");
    }

    #[test]
    fn a_replaced_policy_applies_at_the_next_decision() {
        let mut a = Autoscaler::new(policy(1, 10));
        assert_eq!(a.decide(&obs(0.0, 2, 16.0)).desired, 2);
        let mut p = policy(1, 10);
        p.policy.metrics = vec![MetricTarget { metric: Metric::Concurrency, value: 2.0 }];
        a.set_policy(p);
        assert_eq!(a.decide(&obs(1.0, 2, 16.0)).desired, 6); // 8 wanted; +4 pods per 15 s allows 6
        a.set_policy(policy(1, 3));
        assert_eq!(a.decide(&obs(2.0, 4, 16.0)).desired, 3, "max_replicas applies at once");
    }
}
