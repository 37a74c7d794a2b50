//! The capacity policy: given a pipeline's partitions, its replica bounds, the VPA's CPU
//! recommendation and what happened before, decide the next step. Pure code: inputs in, a
//! decision and the next state out; the controller does the I/O.
//!
//! The rules:
//! - Replicas are always a divisor of the partition count, so every pod owns the same number of
//!   partitions (no pod with one partition more than the others sets the pace).
//! - Pods grow vertically first (the VPA). When the VPA's *uncapped* target (what it would give
//!   a pod without `maxAllowed`) presses against `maxAllowed` for `up_window_s`, replicas step up
//!   to the next divisor; with none left within the bounds the policy reports `ScalingLimited`.
//! - When the load would fit comfortably in fewer pods (the per-pod CPU at the next lower divisor
//!   at most `down_fill` of `maxAllowed`) for the longer `down_window_s`, replicas step down one
//!   divisor: up fast, down slowly.
//! - The VPA's recommendation is per pod and built from days of history, so right after a
//!   replica step it still describes the old shape (after a step up it keeps pressing, after a
//!   step down it looks relieved). Where the pods' live CPU usage is known (metrics API), it
//!   must agree: pressure needs the pods to use at least `up_fill` of `maxAllowed` now, relief
//!   needs today's total usage to fit the fewer pods. Without it the policy would cascade
//!   (the capacity simulation shows 2 -> 24 replicas in an hour, then back down to 2).
//! - Replicas and resources never change in the same rollout: while a rollout is in progress
//!   nothing changes, and a replica step waits `cooldown_s` after the previous change of either
//!   kind so the VPA can observe the new shape.

/// Millicores of CPU.
pub type Millis = u64;

/// Tuning of the policy (defaults suit pipelines whose load changes over tens of minutes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    /// How long the uncapped target must press against `maxAllowed` before stepping up.
    pub up_window_s: u64,
    /// How long the load must fit in fewer pods before stepping down.
    pub down_window_s: u64,
    /// Step down only if each of the fewer pods would need at most this share of `maxAllowed`.
    pub down_fill: f64,
    /// Pressure needs the pods' live usage at or above this share of `maxAllowed`.
    pub up_fill: f64,
    /// Quiet time after any change (replicas or resources) before a replica step.
    pub cooldown_s: u64,
    /// Apply new requests (operator mode) only when they differ by more than this share (the
    /// VPA updater's own threshold is 10%).
    pub resource_change_min: f64,
    /// `appliedBy: in-place`: the fast loop's tuning.
    pub fast: FastLoop,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            up_window_s: 300,
            down_window_s: 1800,
            down_fill: 0.7,
            up_fill: 0.85,
            cooldown_s: 600,
            resource_change_min: 0.10,
            fast: FastLoop::default(),
        }
    }
}

/// The VPA's CPU recommendation for the pipeline's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    /// The target, capped to `[minAllowed, maxAllowed]`.
    pub target: Millis,
    /// The target without the caps.
    pub uncapped_target: Millis,
}

/// Who applies resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppliedBy {
    /// The VPA's updater (the policy only steps replicas).
    Vpa,
    /// The operator, in its own rollouts (the VPA only recommends).
    Operator,
}

/// What kind of change happened last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Replicas changed.
    Replicas,
    /// Resources changed.
    Resources,
}

/// What the policy remembers between reconciles (kept in the custom resource's status).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// Since when (s) the uncapped target presses against `maxAllowed`.
    pub pressure_since: Option<u64>,
    /// Since when (s) the load fits in fewer pods.
    pub relief_since: Option<u64>,
    /// The last change and when (s).
    pub last_change: Option<(u64, Change)>,
}

/// Everything a decision depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// Now, in seconds.
    pub now_s: u64,
    /// Partitions of the source topics (what replicas must divide).
    pub partitions: u32,
    /// Current replicas.
    pub replicas: u32,
    /// Fewest replicas allowed.
    pub min_replicas: u32,
    /// Most replicas allowed.
    pub max_replicas: u32,
    /// The VPA's `maxAllowed` CPU per pod.
    pub max_allowed: Millis,
    /// The VPA's recommendation, once it has one.
    pub recommendation: Option<Recommendation>,
    /// The CPU request the pods run with now.
    pub applied_request: Millis,
    /// The CPU all the pipeline's pods use now (metrics API), if known.
    pub usage: Option<Millis>,
    /// Who applies resources.
    pub applied_by: AppliedBy,
    /// Operator mode: the VPA's memory target moved more than `resource_change_min` from the
    /// memory the pods run with (a resource rollout is due even if CPU did not move).
    pub memory_moved: bool,
    /// A rollout (of either kind) has not finished.
    pub rollout_in_progress: bool,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing changes.
    Hold,
    /// Roll out this many replicas.
    ScaleTo(u32),
    /// Roll out pods with this CPU request, and the VPA's memory target (operator mode).
    SetRequest(Millis),
}

/// Why the policy decided what it decided (for status conditions and events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Nothing to do.
    Steady,
    /// No recommendation yet.
    NoRecommendation,
    /// A rollout is still in progress.
    RolloutInProgress,
    /// The last change is too recent.
    CoolingDown,
    /// Pressure seen, window not over yet.
    PressureBuilding,
    /// Relief seen, window not over yet.
    ReliefBuilding,
    /// Pods at `maxAllowed` for the whole window: more replicas.
    PressureSustained,
    /// Load fits in fewer pods for the whole window: fewer replicas.
    ReliefSustained,
    /// Replicas outside the bounds or not a divisor: brought back.
    Realign,
    /// Operator mode: the recommendation moved enough to apply.
    NewRequest,
}

/// A decision: what to do, why, whether scaling is limited, and the state to remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// Pods press against `maxAllowed` but no divisor of the partitions is left within the
    /// bounds (the `ScalingLimited` condition).
    pub scaling_limited: bool,
    /// The state for the next decision.
    pub state: State,
}

/// The divisors of `partitions` within `[min, max]`, ascending.
pub fn aligned_replicas(partitions: u32, min: u32, max: u32) -> Vec<u32> {
    (min.max(1)..=max.min(partitions))
        .filter(|r| partitions % r == 0)
        .collect()
}

/// Decides the next step.
pub fn decide(config: &PolicyConfig, inputs: &Inputs, state: State) -> Decision {
    let aligned = aligned_replicas(inputs.partitions, inputs.min_replicas, inputs.max_replicas);
    let mut next = state;
    let hold = |reason, state, limited| Decision {
        action: Action::Hold,
        reason,
        scaling_limited: limited,
        state,
    };
    if inputs.rollout_in_progress {
        return hold(Reason::RolloutInProgress, state, false);
    }
    // Replicas that are not aligned (a spec change, a manual edit) come back first: the
    // nearest aligned count at or above, else the largest.
    if !aligned.contains(&inputs.replicas) {
        if let Some(&to) = aligned
            .iter()
            .find(|r| **r >= inputs.replicas)
            .or(aligned.last())
        {
            return Decision {
                action: Action::ScaleTo(to),
                reason: Reason::Realign,
                scaling_limited: false,
                state: State {
                    pressure_since: None,
                    relief_since: None,
                    last_change: Some((inputs.now_s, Change::Replicas)),
                },
            };
        }
        // No divisor within the bounds at all.
        return hold(Reason::Steady, state, true);
    }
    let Some(rec) = inputs.recommendation else {
        return hold(Reason::NoRecommendation, state, false);
    };

    // Pressure: the VPA would give a pod more than it may have, and the pods are that busy now.
    let max_allowed = inputs.max_allowed as f64;
    let usage = inputs.usage.map(|u| u as f64);
    let pressed = rec.uncapped_target >= inputs.max_allowed
        && usage.is_none_or(|u| u / f64::from(inputs.replicas) >= config.up_fill * max_allowed);
    next.pressure_since = if pressed {
        state.pressure_since.or(Some(inputs.now_s))
    } else {
        None
    };
    // Relief: the whole load, spread over the next lower divisor, fits with room to spare.
    let lower = aligned
        .iter()
        .rev()
        .find(|r| **r < inputs.replicas)
        .copied();
    let relieved = !pressed
        && lower.is_some_and(|l| {
            let total = rec.uncapped_target as f64 * f64::from(inputs.replicas);
            let fits = |total: f64| total / f64::from(l) <= config.down_fill * max_allowed;
            fits(total) && usage.is_none_or(fits)
        });
    next.relief_since = if relieved {
        state.relief_since.or(Some(inputs.now_s))
    } else {
        None
    };
    let higher = aligned.iter().find(|r| **r > inputs.replicas).copied();
    let limited = pressed && higher.is_none();
    let cooling = state
        .last_change
        .is_some_and(|(at, _)| inputs.now_s < at + config.cooldown_s);

    let step = |to: u32, reason| Decision {
        action: Action::ScaleTo(to),
        reason,
        scaling_limited: false,
        state: State {
            pressure_since: None,
            relief_since: None,
            last_change: Some((inputs.now_s, Change::Replicas)),
        },
    };
    if let (Some(since), Some(to)) = (next.pressure_since, higher) {
        if inputs.now_s >= since + config.up_window_s {
            if cooling {
                return hold(Reason::CoolingDown, next, false);
            }
            return step(to, Reason::PressureSustained);
        }
        return hold(Reason::PressureBuilding, next, false);
    }
    if let (Some(since), Some(to)) = (next.relief_since, lower) {
        if inputs.now_s >= since + config.down_window_s {
            if cooling {
                return hold(Reason::CoolingDown, next, false);
            }
            return step(to, Reason::ReliefSustained);
        }
        return hold(Reason::ReliefBuilding, next, false);
    }
    // Operator mode: apply the recommendation in its own rollout when it moved enough.
    if inputs.applied_by == AppliedBy::Operator {
        let applied = inputs.applied_request.max(1) as f64;
        let change = (rec.target as f64 - applied).abs() / applied;
        if change > config.resource_change_min || inputs.memory_moved {
            // Right after a replica step the recommendation still describes the old shape.
            if cooling
                && state
                    .last_change
                    .is_some_and(|(_, c)| c == Change::Replicas)
            {
                return hold(Reason::CoolingDown, next, limited);
            }
            return Decision {
                action: Action::SetRequest(rec.target),
                reason: Reason::NewRequest,
                scaling_limited: limited,
                state: State {
                    last_change: Some((inputs.now_s, Change::Resources)),
                    ..next
                },
            };
        }
    }
    hold(Reason::Steady, next, limited)
}

/// The fast vertical loop's tuning: pods resized in place from a short window of their live
/// usage, quick to rise and slow to fall, with aligned replica steps when a pod would have to
/// leave `[minCpus, maxAllowed]` (or outgrow its node). `sluice capacity simulate` runs it as
/// the `in-place` strategy; the defaults are what the simulation was tuned to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastLoop {
    /// Minutes of per-pod usage whose median the recommendation follows.
    pub window_min: usize,
    /// Minutes of per-pod usage whose highest value, over the limit's burst, the request always
    /// carries (headroom for bursts shorter than a resize).
    pub history_min: usize,
    /// Headroom over that peak.
    pub margin: f64,
    /// Minutes the recommendation must stay below 80% of the request before it shrinks.
    pub fall_after_min: usize,
    /// Minutes a pod size beyond `maxAllowed` or the node's free CPU must last before replicas
    /// step up.
    pub step_up_after_min: usize,
    /// Minutes the load must fit one divisor fewer (at 70% of `maxAllowed`) before a step down,
    /// which goes straight to the fewest pods the load fits.
    pub step_down_after_min: usize,
    /// Most replica changes in any 24 hours.
    pub steps_per_day: u32,
    /// A step up goes to the fewest pods that each need at most this share of `maxAllowed`.
    pub up_fill: f64,
}

impl Default for FastLoop {
    fn default() -> Self {
        FastLoop {
            window_min: 10,
            history_min: 60,
            margin: 1.1,
            fall_after_min: 10,
            step_up_after_min: 1,
            step_down_after_min: 120,
            steps_per_day: 4,
            up_fill: 0.6,
        }
    }
}

/// A deferred CPU resize is answered (patched back, and counted as load) once it has been
/// pending this long: the kubelet may still apply it meanwhile; the VPA's updater evicts a pod
/// whose resize has been deferred for 5 minutes (an infeasible one at once).
pub const DEFER_GRACE_S: u64 = 120;
/// A pod placed this recently whose resize is deferred was placed where its template's size
/// fits, not the loop's: its node says nothing about load. It is held, not stepped for.
pub const FRESH_S: u64 = 600;
/// How long a pod patched back after a deferral is not asked to grow again.
pub const HOLD_S: u64 = 600;

/// What the fast loop remembers from one minute to the next (the operator keeps it in the
/// pipeline's `status.policy.fast`, so a restarted or newly elected operator goes on from it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FastState {
    /// The fullest pod's usage, last `window_min` minutes (cores).
    pub window: std::collections::VecDeque<f64>,
    /// Minutes the recommendation has been below 80% of the request.
    pub low_for: usize,
    /// Minutes a pod would have had to outgrow `maxAllowed` or its node.
    pub high_for: usize,
    /// Minutes the load has fitted one divisor fewer.
    pub fits_for: usize,
    /// Minutes of the replica steps of the last 24 hours.
    pub steps: Vec<u64>,
}

/// What the fast loop sees, once a minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastInputs<'a> {
    /// Minutes since some fixed point.
    pub now_min: u64,
    /// Partitions of the source topics.
    pub partitions: u32,
    /// The replica counts allowed (divisors of the partitions), ascending.
    pub aligned: &'a [u32],
    /// Replicas now.
    pub replicas: u32,
    /// Each pod's CPU request now (cores).
    pub request: f64,
    /// Each pod's CPU limit now (cores).
    pub limit: f64,
    /// The CPU usage of the fullest pod (the metrics API; cores).
    pub fullest_usage: f64,
    /// Pods that run and report usage: fewer than `replicas` while one is missing (its
    /// partitions are spread over the others).
    pub running: u32,
    /// CPU a pod can grow into on its node (cores; the operator does not know it and passes
    /// infinity, then learns of a full node from `deferred`).
    pub node_free: f64,
    /// `minCpus`.
    pub min_cpus: f64,
    /// `maxAllowed` (cores).
    pub max_allowed: f64,
    /// A resize was asked and has not landed yet.
    pub resize_pending: bool,
    /// A node deferred or refused a resize (`PodResizePending`): the pods cannot grow where
    /// they are, which counts as outgrowing the node.
    pub deferred: bool,
    /// A replica is missing (a spot node reclaimed, a pod not placed): no replica step.
    pub hold_replicas: bool,
}

/// What the fast loop does this minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FastAction {
    /// Nothing.
    Hold,
    /// Resize every pod's CPU request in place to this many cores.
    Resize(f64),
    /// The pods need a resize their nodes cannot take: counted, answered by a step if it lasts.
    Deferred,
    /// Step to this many replicas, each pod starting at this request (replicas and requests in
    /// one step, never two rollouts at once; the fast loop takes over from there).
    StepTo(u32, f64),
}

/// One minute of the fast loop.
pub fn fast_decide(f: &FastLoop, input: &FastInputs<'_>, state: &mut FastState) -> FastAction {
    let pods_of = |r: u32| f64::from(input.partitions.div_ceil(r.clamp(1, input.partitions)));
    let fullest = pods_of(input.replicas);
    // A pod at its limit is throttled and hides its demand: it asks for a lot more.
    let used = if input.fullest_usage >= input.limit * 0.98 {
        input.limit * 1.5
    } else {
        input.fullest_usage
    };
    // While a pod is missing the others carry its partitions: the window remembers the load
    // as the full count of pods would carry it, and the pods that run are sized for what they
    // carry now.
    let carrying = pods_of(input.running.min(input.replicas)) / fullest;
    state.window.push_back(used / carrying);
    while state.window.len() > f.window_min.max(f.history_min) {
        state.window.pop_front();
    }
    // The level a pod must carry: the median of the last `window_min` minutes (a burst of a
    // few minutes does not move it), at least the last `history_min`'s highest minute over the
    // limit's burst (headroom held for bursts too short to follow), and at once a throttled
    // pod's demand once it has lasted two minutes (a rise, not a burst).
    let recent: Vec<f64> = {
        let mut r: Vec<f64> = state
            .window
            .iter()
            .rev()
            .take(f.window_min)
            .copied()
            .collect();
        r.sort_by(f64::total_cmp);
        r
    };
    let median = recent
        .get((recent.len() * 7 / 10).min(recent.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    let burst = if input.request > 0.0 {
        (input.limit / input.request).max(1.0)
    } else {
        1.0
    };
    let highest = state.window.iter().copied().fold(0.0, f64::max);
    let throttled = |v: &f64| *v >= input.limit * 1.4;
    let rising = state
        .window
        .iter()
        .rev()
        .take(2)
        .filter(|v| throttled(v))
        .count()
        == 2;
    let peak = median
        .max(highest / burst)
        .max(if rising { used / carrying } else { 0.0 });
    let wanted = ((peak * f.margin * 10.0).ceil() / 10.0).max(input.min_cpus);
    let now = input.now_min;
    state.steps.retain(|at| now < at + 1440);
    let may_step = !input.hold_replicas
        && state.steps.len() < f.steps_per_day as usize
        && state.steps.last().is_none_or(|at| now >= at + 10);
    let step = input
        .aligned
        .iter()
        .position(|r| *r == input.replicas)
        .unwrap_or(0);
    // Replicas: up when the pods would have to outgrow maxAllowed (or the node) for a while,
    // down when the load has fitted one divisor fewer for long.
    // (A small pod its node cannot grow keeps its size and bursts to its limit: smaller pods
    // would need the same CPU elsewhere. A step answers a deferral only for large pods.)
    let large = wanted > input.max_allowed * f.up_fill;
    let too_big = wanted > input.max_allowed
        || (large && (wanted - input.request > input.node_free || input.deferred));
    state.high_for = if too_big { state.high_for + 1 } else { 0 };
    let fewer = step
        .checked_sub(1)
        .and_then(|i| input.aligned.get(i))
        .copied();
    let fits_fewer =
        fewer.is_some_and(|r| peak / fullest * pods_of(r) * f.margin <= input.max_allowed * 0.7);
    state.fits_for = if fits_fewer { state.fits_for + 1 } else { 0 };
    let next = if state.high_for >= f.step_up_after_min && step + 1 < input.aligned.len() {
        // Up to the fewest pods that carry what is wanted with room to grow (a sharp peak
        // would otherwise take a step per divisor, and the day's budget with them).
        let carries = |r: u32| wanted / fullest * pods_of(r) <= input.max_allowed * f.up_fill;
        Some(
            input.aligned[step + 1..]
                .iter()
                .position(|r| carries(*r))
                .map_or(input.aligned.len() - 1, |i| step + 1 + i),
        )
    } else if state.fits_for >= f.step_down_after_min {
        // Straight to the fewest pods the load fits (one rebalance, one step of the budget).
        let fits = |r: u32| peak / fullest * pods_of(r) * f.margin <= input.max_allowed * 0.7;
        input.aligned[..step].iter().position(|r| fits(*r))
    } else {
        None
    };
    if let Some(next) = next.filter(|_| may_step) {
        let to = input.aligned[next];
        // The new pods start at the size that carries the same load per partition: what is
        // wanted (never less than now, going up).
        let need = peak * f.margin;
        let per_pod = if to > input.replicas {
            input.request.max(need)
        } else {
            need
        };
        let request = ((per_pod / fullest * pods_of(to) * 10.0).ceil() / 10.0)
            .clamp(input.min_cpus, input.max_allowed);
        state.window.clear();
        (state.high_for, state.fits_for, state.low_for) = (0, 0, 0);
        state.steps.push(now);
        return FastAction::StepTo(to, request);
    }
    if input.resize_pending {
        return FastAction::Hold;
    }
    // Requests: up at once (within the node's free CPU), down after a while.
    let target = (((wanted * carrying) * 10.0).ceil() / 10.0).min(input.max_allowed);
    if target > input.request * 1.05 {
        state.low_for = 0;
        if target - input.request > input.node_free {
            FastAction::Deferred
        } else {
            FastAction::Resize(target)
        }
    } else if target < input.request * 0.8 {
        state.low_for += 1;
        if state.low_for >= f.fall_after_min {
            state.low_for = 0;
            FastAction::Resize(target)
        } else {
            FastAction::Hold
        }
    } else {
        state.low_for = 0;
        FastAction::Hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_input(aligned: &[u32], replicas: u32, request: f64, usage: f64) -> FastInputs<'_> {
        FastInputs {
            now_min: 0,
            partitions: 12,
            aligned,
            replicas,
            request,
            limit: request * 2.0,
            fullest_usage: usage,
            running: replicas,
            node_free: 1.2,
            min_cpus: 1.0,
            max_allowed: 4.0,
            resize_pending: false,
            deferred: false,
            hold_replicas: false,
        }
    }

    #[test]
    fn the_fast_loop_rises_at_once_falls_slowly_and_defers_what_the_node_cannot_take() {
        let f = FastLoop::default();
        let aligned = [2, 3, 4, 6, 12];
        let mut state = FastState::default();
        // 1.5 cores used on 1-core pods: up at once to 1.5 x 1.1, in tenths up: 1.7.
        let a = fast_decide(&f, &fast_input(&aligned, 4, 1.0, 1.5), &mut state);
        assert_eq!(a, FastAction::Resize(1.7));
        // Usage drops: nothing for `fall_after_min` - 1 minutes (the window still holds 1.5).
        let mut state = FastState::default();
        let mut actions = Vec::new();
        for minute in 0..30 {
            let mut input = fast_input(&aligned, 4, 3.0, if minute == 0 { 2.5 } else { 1.0 });
            input.now_min = minute;
            actions.push(fast_decide(&f, &input, &mut state));
        }
        let first = actions.iter().position(|a| *a != FastAction::Hold).unwrap();
        assert!(
            first >= f.window_min,
            "falls only once the peak left the window: {actions:?}"
        );
        // (To 1.4, not 1.1: the hour's highest minute, 2.5, over the limit's burst, x 1.1 is
        // headroom held for a burst too short to follow.)
        assert_eq!(actions[first], FastAction::Resize(1.4));
        // A rise of more than the node's free CPU is deferred (and counted by the caller)...
        let mut state = FastState {
            steps: vec![0, 20, 40, 60], // ...and with no step left today, stays deferred.
            ..FastState::default()
        };
        let mut input = fast_input(&aligned, 4, 1.0, 2.5);
        input.now_min = 100;
        assert_eq!(fast_decide(&f, &input, &mut state), FastAction::Deferred);
        // The operator does not know the node's free CPU: a node that deferred the resize of a
        // large pod says it, and the pods step to smaller ones (3 partitions each -> 2, at two
        // thirds the size).
        let mut state = FastState::default();
        let mut input = fast_input(&aligned, 4, 3.0, 2.5);
        (input.node_free, input.resize_pending, input.deferred) = (f64::INFINITY, true, true);
        assert_eq!(
            fast_decide(&f, &input, &mut state),
            FastAction::StepTo(6, 2.0)
        );
        // A small pod (wanting at most `up_fill` of maxAllowed) keeps its size and bursts to
        // its limit: smaller pods would need the same CPU on other nodes.
        let mut state = FastState::default();
        let mut input = fast_input(&aligned, 4, 1.8, 1.5);
        (input.node_free, input.resize_pending, input.deferred) = (f64::INFINITY, true, true);
        assert_eq!(fast_decide(&f, &input, &mut state), FastAction::Hold);
    }

    #[test]
    fn the_fast_loop_steps_straight_to_the_divisor_that_fits_carrying_the_load_per_partition() {
        let f = FastLoop::default();
        let aligned = [2, 3, 4, 6, 12];
        let mut state = FastState::default();
        // 4 replicas of 3 partitions, the fullest pod at 2.5 cores on 2-core requests would
        // need 2.8, within maxAllowed (4): a resize, no step.
        let input = fast_input(&aligned, 4, 2.0, 2.5);
        assert_eq!(fast_decide(&f, &input, &mut state), FastAction::Resize(2.8));
        // The fullest pod throttled at its 4-core limit counts as 6 cores: 6.6 wanted, more
        // than maxAllowed. One step, straight to the fewest pods that each need at most 60% of
        // maxAllowed: 12 pods of one partition, each at a third of what is wanted for three (in tenths
        // of a core, up).
        let mut state = FastState::default();
        let mut input = fast_input(&aligned, 4, 3.0, 3.95);
        input.limit = 4.0;
        match fast_decide(&f, &input, &mut state) {
            FastAction::StepTo(12, request) => assert_eq!(request, 2.2),
            other => panic!("{other:?}"),
        }
        // No second step within 10 minutes.
        (input.replicas, input.request, input.now_min) = (12, 2.2, 5);
        assert!(!matches!(
            fast_decide(&f, &input, &mut state),
            FastAction::StepTo(..)
        ));
        // The load goes (0.2 cores a partition): after `step_down_after_min` of fitting fewer
        // pods, one step straight to the fewest that fit (2 pods of 6 partitions at 70% of
        // maxAllowed at most), each sized for its six partitions.
        let mut state = FastState::default();
        let mut actions = Vec::new();
        for minute in 20..(20 + f.step_down_after_min as u64 + 5) {
            let mut input = fast_input(&aligned, 12, 1.0, 0.2);
            input.now_min = minute;
            actions.push(fast_decide(&f, &input, &mut state));
        }
        let steps: Vec<(usize, FastAction)> = actions
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, a)| matches!(a, FastAction::StepTo(..)))
            .collect();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!(steps[0].0 + 1, f.step_down_after_min);
        match steps[0].1 {
            FastAction::StepTo(2, request) => {
                assert_eq!(request, 1.4, "0.2 x 1.1 x 6, in tenths up")
            }
            other => panic!("{other:?}"),
        }
    }

    fn inputs(replicas: u32, uncapped: Millis) -> Inputs {
        Inputs {
            now_s: 10_000,
            partitions: 12,
            replicas,
            min_replicas: 1,
            max_replicas: 12,
            max_allowed: 2000,
            recommendation: Some(Recommendation {
                target: uncapped.min(2000),
                uncapped_target: uncapped,
            }),
            applied_request: uncapped.min(2000),
            usage: None,
            applied_by: AppliedBy::Vpa,
            memory_moved: false,
            rollout_in_progress: false,
        }
    }

    fn at(mut i: Inputs, now_s: u64) -> Inputs {
        i.now_s = now_s;
        i
    }

    #[test]
    fn aligned_replicas_are_the_divisors_within_bounds() {
        assert_eq!(aligned_replicas(12, 1, 12), [1, 2, 3, 4, 6, 12]);
        assert_eq!(aligned_replicas(12, 3, 5), [3, 4]);
        assert_eq!(aligned_replicas(7, 2, 6), Vec::<u32>::new());
        assert_eq!(aligned_replicas(8, 0, 100), [1, 2, 4, 8]);
        // Exhaustively: every count divides its partitions and lies within the bounds.
        for partitions in 1..=64 {
            for min in 0..=8 {
                for max in min..=70 {
                    for r in aligned_replicas(partitions, min, max) {
                        assert!(partitions % r == 0 && r >= min.max(1) && r <= max);
                    }
                }
            }
        }
    }

    #[test]
    fn sustained_pressure_steps_up_to_the_next_divisor_after_the_window() {
        let config = PolicyConfig::default();
        let i = inputs(4, 2400);
        let d = decide(&config, &i, State::default());
        assert_eq!(
            (d.action, d.reason),
            (Action::Hold, Reason::PressureBuilding)
        );
        assert_eq!(d.state.pressure_since, Some(10_000));
        let d = decide(&config, &at(i, 10_299), d.state);
        assert_eq!(d.action, Action::Hold, "the window is not over");
        let d = decide(&config, &at(i, 10_300), d.state);
        assert_eq!(
            (d.action, d.reason),
            (Action::ScaleTo(6), Reason::PressureSustained)
        );
        assert_eq!(d.state.last_change, Some((10_300, Change::Replicas)));
        assert_eq!(d.state.pressure_since, None);
    }

    #[test]
    fn pressure_that_stops_resets_the_window() {
        let config = PolicyConfig::default();
        let d = decide(&config, &inputs(4, 2400), State::default());
        let d = decide(&config, &at(inputs(4, 1500), 10_200), d.state);
        assert_eq!(d.state.pressure_since, None);
        let d = decide(&config, &at(inputs(4, 2400), 10_301), d.state);
        assert_eq!(
            (d.action, d.reason),
            (Action::Hold, Reason::PressureBuilding)
        );
    }

    #[test]
    fn no_divisor_left_reports_scaling_limited() {
        let config = PolicyConfig::default();
        let mut i = inputs(6, 2500);
        i.max_replicas = 8; // 12's divisors above 6 within 8: none
        let d = decide(&config, &i, State::default());
        assert!(d.scaling_limited);
        let d = decide(&config, &at(i, 20_000), d.state);
        assert_eq!(d.action, Action::Hold);
        assert!(d.scaling_limited);
        // Not pressed: not limited.
        assert!(!decide(&config, &inputs(6, 900), State::default()).scaling_limited);
    }

    #[test]
    fn relief_steps_down_one_divisor_after_the_longer_window() {
        let config = PolicyConfig::default();
        // 6 pods at 600m = 3600m; on 4 pods 900m each <= 0.7 * 2000.
        let i = inputs(6, 600);
        let d = decide(&config, &i, State::default());
        assert_eq!(d.reason, Reason::ReliefBuilding);
        let d = decide(&config, &at(i, 10_000 + 1799), d.state);
        assert_eq!(d.action, Action::Hold);
        let d = decide(&config, &at(i, 10_000 + 1800), d.state);
        assert_eq!(
            (d.action, d.reason),
            (Action::ScaleTo(4), Reason::ReliefSustained)
        );
        // 6 pods at 1000m: on 4 pods 1500m > 1400m: stay.
        assert_eq!(
            decide(&config, &inputs(6, 1000), State::default()).reason,
            Reason::Steady
        );
        // At the minimum nothing is lower.
        let mut i = inputs(2, 100);
        i.min_replicas = 2;
        assert_eq!(decide(&config, &i, State::default()).reason, Reason::Steady);
    }

    #[test]
    fn nothing_changes_during_a_rollout_or_the_cooldown() {
        let config = PolicyConfig::default();
        let mut i = inputs(4, 2400);
        i.rollout_in_progress = true;
        let state = State {
            pressure_since: Some(0),
            ..State::default()
        };
        assert_eq!(decide(&config, &i, state).reason, Reason::RolloutInProgress);
        assert_eq!(decide(&config, &i, state).state, state);
        i.rollout_in_progress = false;
        let recent = State {
            pressure_since: Some(0),
            relief_since: None,
            last_change: Some((9_900, Change::Resources)),
        };
        assert_eq!(decide(&config, &i, recent).reason, Reason::CoolingDown);
        let old = State {
            last_change: Some((9_000, Change::Resources)),
            ..recent
        };
        assert_eq!(decide(&config, &i, old).action, Action::ScaleTo(6));
    }

    #[test]
    fn operator_mode_applies_requests_in_their_own_rollout() {
        let config = PolicyConfig::default();
        let mut i = inputs(4, 1500);
        i.applied_by = AppliedBy::Operator;
        i.applied_request = 1000;
        let d = decide(&config, &i, State::default());
        assert_eq!(
            (d.action, d.reason),
            (Action::SetRequest(1500), Reason::NewRequest)
        );
        assert_eq!(d.state.last_change, Some((10_000, Change::Resources)));
        // Within 10%: nothing.
        i.applied_request = 1400;
        assert_eq!(decide(&config, &i, State::default()).action, Action::Hold);
        // Unless memory moved: then CPU comes along in the same rollout.
        i.memory_moved = true;
        assert_eq!(
            decide(&config, &i, State::default()).action,
            Action::SetRequest(1500)
        );
        i.memory_moved = false;
        // Right after a replica step the recommendation is stale: wait out the cooldown.
        i.applied_request = 1000;
        let after_step = State {
            last_change: Some((9_950, Change::Replicas)),
            ..State::default()
        };
        assert_eq!(decide(&config, &i, after_step).reason, Reason::CoolingDown);
        assert_eq!(
            decide(&config, &at(i, 9_950 + 600), after_step).action,
            Action::SetRequest(1500)
        );
        // Under sustained pressure the replica step wins; the request follows in a later rollout.
        let mut p = inputs(4, 2400);
        p.applied_by = AppliedBy::Operator;
        p.applied_request = 1000;
        let d = decide(
            &config,
            &p,
            State {
                pressure_since: Some(0),
                ..State::default()
            },
        );
        assert_eq!(d.action, Action::ScaleTo(6));
        let d = decide(&config, &at(p, 10_001), d.state);
        assert_eq!(
            d.action,
            Action::Hold,
            "not in the same rollout, and not right after"
        );
    }

    #[test]
    fn live_usage_must_agree_with_a_stale_recommendation() {
        let config = PolicyConfig::default();
        let state = State {
            pressure_since: Some(0),
            ..State::default()
        };
        // Just stepped 4 -> 6: the VPA still presses (old shape), but 6 pods use 1.2 CPUs each.
        let mut i = inputs(6, 2400);
        i.usage = Some(6 * 1200);
        let d = decide(&config, &i, state);
        assert_eq!((d.action, d.reason), (Action::Hold, Reason::Steady));
        assert_eq!(d.state.pressure_since, None, "pressure ends");
        // Busy pods (1.8 of 2 CPUs, >= 85%) confirm it.
        i.usage = Some(6 * 1800);
        assert_eq!(decide(&config, &i, state).action, Action::ScaleTo(12));
        // Just stepped down: the VPA looks relieved (400m per pod), the pods are busy: no relief.
        let relief = State {
            relief_since: Some(0),
            ..State::default()
        };
        let mut i = inputs(6, 400);
        i.usage = Some(6 * 1500);
        let d = decide(&config, &i, relief);
        assert_eq!((d.action, d.state.relief_since), (Action::Hold, None));
        // Quiet pods agree: one divisor down.
        i.usage = Some(6 * 400);
        assert_eq!(decide(&config, &i, relief).action, Action::ScaleTo(4));
    }

    #[test]
    fn misaligned_replicas_are_realigned_first() {
        let config = PolicyConfig::default();
        assert_eq!(
            decide(&config, &inputs(5, 900), State::default()).action,
            Action::ScaleTo(6)
        );
        let mut i = inputs(13, 900);
        i.max_replicas = 20;
        assert_eq!(
            decide(&config, &i, State::default()).action,
            Action::ScaleTo(12)
        );
        let mut none = inputs(3, 900);
        none.partitions = 7;
        none.min_replicas = 2;
        none.max_replicas = 6;
        let d = decide(&config, &none, State::default());
        assert_eq!(d.action, Action::Hold);
        assert!(d.scaling_limited);
    }

    /// Every reachable decision, over a grid of inputs and states: replicas only ever move to an
    /// aligned count within the bounds, by one divisor step (or a realignment), and never while
    /// a rollout runs; a resource change never comes with a replica change.
    #[test]
    fn exhaustively_replicas_stay_aligned_and_step_one_divisor() {
        let config = PolicyConfig::default();
        let states = [
            State::default(),
            State {
                pressure_since: Some(0),
                ..State::default()
            },
            State {
                relief_since: Some(0),
                ..State::default()
            },
            State {
                last_change: Some((9_990, Change::Replicas)),
                ..State::default()
            },
        ];
        for partitions in [1, 2, 6, 7, 12, 16, 24, 36] {
            for (min, max) in [(1, 64), (2, 6), (3, 3), (4, 40)] {
                let aligned = aligned_replicas(partitions, min, max);
                for replicas in 1..=40 {
                    for uncapped in [0, 300, 1400, 1999, 2000, 5000] {
                        for by in [AppliedBy::Vpa, AppliedBy::Operator] {
                            for (rollout, usage) in [
                                (false, None),
                                (true, None),
                                (false, Some(0)),
                                (false, Some(100_000)),
                            ] {
                                for state in states {
                                    let mut i = inputs(replicas, uncapped);
                                    i.usage = usage;
                                    (i.partitions, i.min_replicas, i.max_replicas) =
                                        (partitions, min, max);
                                    i.applied_by = by;
                                    i.rollout_in_progress = rollout;
                                    let d = decide(&config, &i, state);
                                    if rollout {
                                        assert_eq!(d.action, Action::Hold);
                                    }
                                    match d.action {
                                        Action::ScaleTo(to) => {
                                            assert!(aligned.contains(&to), "{i:?} -> {to}");
                                            if d.reason != Reason::Realign {
                                                let (a, b) = (replicas.min(to), replicas.max(to));
                                                assert!(
                                                    !aligned.iter().any(|r| *r > a && *r < b),
                                                    "{i:?}: {replicas} -> {to} skips a divisor"
                                                );
                                            }
                                            assert_eq!(
                                                d.state.last_change.map(|c| c.1),
                                                Some(Change::Replicas)
                                            );
                                        }
                                        Action::SetRequest(_) => {
                                            assert_eq!(by, AppliedBy::Operator);
                                            assert!(aligned.contains(&replicas));
                                        }
                                        Action::Hold => {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
