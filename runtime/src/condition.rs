//! Is the pipeline making progress? A pure decision from what the pod already knows (its
//! assignment, each partition's lag and last progress, the group's lag when it holds nothing,
//! commit results, sink reachability), and the remedy it calls for. `source::kafka::watch` feeds
//! it once a second and acts on the answer; nothing here reads a clock or a socket.

use std::time::Duration;

use crate::offsets::TopicPartition;

/// The pipeline's condition, worst first when several hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Kafka refuses the pipeline's principal: a login, a TLS handshake or a missing ACL,
    /// within the last `Health::ACCESS_DENIED_FOR`. Needs a person (credentials, ACLs).
    AccessDenied,
    /// An output cannot be reached (its last write or connection attempt failed).
    SinkDown,
    /// Offset commits have failed for longer than `commits_failing_after`.
    CommitsFailing,
    /// Assigned partitions have lag and have made no progress for longer than `stalled_after`.
    Stalled,
    /// A member of a group that has lag, holding no partition for longer than `starved_after`.
    Starved,
    /// Holding no partition while the group has lag (or its lag is unknown), not yet for
    /// `starved_after`: a rebalance may be on. Never `Healthy`: nothing is being done here.
    Unassigned,
    /// Nothing to do: no lag anywhere this pod can see.
    Idle,
    /// Making progress.
    Healthy,
}

impl Condition {
    /// Every condition, in the order of the metric's label values.
    pub const ALL: [Condition; 8] = [
        Condition::Healthy,
        Condition::Idle,
        Condition::Unassigned,
        Condition::Starved,
        Condition::Stalled,
        Condition::SinkDown,
        Condition::CommitsFailing,
        Condition::AccessDenied,
    ];

    /// The name in `/status`, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Condition::Healthy => "Healthy",
            Condition::Idle => "Idle",
            Condition::Starved => "Starved",
            Condition::Unassigned => "Unassigned",
            Condition::Stalled => "Stalled",
            Condition::SinkDown => "SinkDown",
            Condition::AccessDenied => "AccessDenied",
            Condition::CommitsFailing => "CommitsFailing",
        }
    }

    /// Whether the remedy (leave and rejoin the group) applies.
    pub fn wants_rejoin(self) -> bool {
        matches!(self, Condition::Starved | Condition::Stalled)
    }
}

/// How long each condition may last before it is declared, and how the remedy proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// No partition while the group has lag.
    pub starved_after: Duration,
    /// Lag and no progress on an assigned partition.
    pub stalled_after: Duration,
    /// Failing commits.
    pub commits_failing_after: Duration,
    /// Rejoins tried before `/healthz` fails.
    pub rejoin_attempts: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            starved_after: Duration::from_secs(30),
            stalled_after: Duration::from_secs(60),
            commits_failing_after: Duration::from_secs(60),
            rejoin_attempts: 2,
        }
    }
}

/// One assigned partition, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSeen {
    /// Which.
    pub tp: TopicPartition,
    /// Events between the committed offset (or where it started) and the high watermark, as
    /// last known; `None` while unknown.
    pub lag: Option<i64>,
    /// How long ago it last made progress (a commit that moved, or assignment).
    pub since_progress: Duration,
}

/// What the pod knows at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Consuming (not starting, draining or stopped).
    pub consuming: bool,
    /// Assigned partitions.
    pub partitions: Vec<PartitionSeen>,
    /// With no partition: the group's total lag over its topics' partitions (`None`: unknown).
    pub group_lag: Option<i64>,
    /// With no partition: for how long.
    pub unassigned_for: Duration,
    /// Outputs that cannot be reached.
    pub sinks_down: Vec<String>,
    /// What Kafka refused lately (`group g`, `topic t`, `login`, `tls`).
    pub access_denied: Vec<String>,
    /// For how long commits have been failing (`None`: the last one worked).
    pub commits_failing_for: Option<Duration>,
}

/// The condition `seen` shows, with the partitions or outputs behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The condition.
    pub condition: Condition,
    /// What it is about: stalled partitions, unreachable outputs (empty otherwise).
    pub subjects: Vec<String>,
}

/// Decides the condition: the worst of those that hold.
pub fn decide(seen: &Observation, bounds: &Bounds) -> Verdict {
    let verdict = |condition, subjects| Verdict {
        condition,
        subjects,
    };
    // A refusal needs a person whatever else holds, starting or not.
    if !seen.access_denied.is_empty() {
        return verdict(Condition::AccessDenied, seen.access_denied.clone());
    }
    if !seen.consuming {
        // Starting, draining or stopped: no claim about progress, but a member without a
        // partition is not healthy.
        let condition = if seen.partitions.is_empty() {
            Condition::Unassigned
        } else {
            Condition::Healthy
        };
        return verdict(condition, Vec::new());
    }
    if !seen.sinks_down.is_empty() {
        return verdict(Condition::SinkDown, seen.sinks_down.clone());
    }
    if seen
        .commits_failing_for
        .is_some_and(|d| d > bounds.commits_failing_after)
    {
        return verdict(Condition::CommitsFailing, Vec::new());
    }
    let stalled: Vec<String> = seen
        .partitions
        .iter()
        .filter(|p| p.lag.is_some_and(|l| l > 0) && p.since_progress > bounds.stalled_after)
        .map(|p| p.tp.to_string())
        .collect();
    if !stalled.is_empty() {
        return verdict(Condition::Stalled, stalled);
    }
    if seen.partitions.is_empty() {
        return match seen.group_lag {
            Some(lag) if lag > 0 && seen.unassigned_for > bounds.starved_after => {
                verdict(Condition::Starved, Vec::new())
            }
            Some(0) => verdict(Condition::Idle, Vec::new()),
            // Lag within the bound, or the broker did not say: not starved (yet), and surely
            // not healthy.
            _ => verdict(Condition::Unassigned, Vec::new()),
        };
    }
    if seen.partitions.iter().all(|p| p.lag == Some(0)) {
        return verdict(Condition::Idle, Vec::new());
    }
    verdict(Condition::Healthy, Vec::new())
}

/// What to do about a condition, step by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Leave the group and join again (and, for `Stalled`, re-seek to the committed offsets).
    Rejoin {
        /// Which attempt (1-based).
        attempt: u32,
    },
    /// The remedies did not help: `/healthz` fails so the pod is restarted.
    GiveUp,
}

/// The remedy's memory: attempts so far, when the next may run, since when all is well.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remedy {
    attempts: u32,
    /// Time (as the caller counts it) before which no new attempt runs.
    not_before: Duration,
    gave_up: bool,
    /// Since when no rejoin-worthy condition holds.
    clear_since: Option<Duration>,
}

impl Remedy {
    /// At time `now`, with `verdict`: the next step. One attempt per bound at most. A rejoin
    /// restarts the partitions' clocks, so the condition clearing right after one proves
    /// nothing: the count resets only after three bounds without the condition. Giving up is
    /// final: `/healthz` fails until the pod is restarted.
    pub fn next(&mut self, now: Duration, verdict: &Verdict, bounds: &Bounds) -> Action {
        if !verdict.condition.wants_rejoin() {
            let since = *self.clear_since.get_or_insert(now);
            if now.saturating_sub(since) > bounds.starved_after.max(bounds.stalled_after) * 3 {
                self.attempts = 0;
            }
            return Action::None;
        }
        self.clear_since = None;
        if self.gave_up || now < self.not_before {
            return Action::None;
        }
        if self.attempts >= bounds.rejoin_attempts {
            self.gave_up = true;
            return Action::GiveUp;
        }
        self.attempts += 1;
        let bound = match verdict.condition {
            Condition::Starved => bounds.starved_after,
            _ => bounds.stalled_after,
        };
        self.not_before = now + bound;
        Action::Rejoin {
            attempt: self.attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn partition(p: i32, lag: Option<i64>, since: u64) -> PartitionSeen {
        PartitionSeen {
            tp: TopicPartition::new("t", p),
            lag,
            since_progress: S * since as u32,
        }
    }

    fn consuming(partitions: Vec<PartitionSeen>) -> Observation {
        Observation {
            consuming: true,
            partitions,
            ..Observation::default()
        }
    }

    fn condition(seen: &Observation) -> Condition {
        decide(seen, &Bounds::default()).condition
    }

    #[test]
    fn progress_or_nothing_to_do_is_fine() {
        assert_eq!(
            condition(&consuming(vec![partition(0, Some(50), 3)])),
            Condition::Healthy
        );
        assert_eq!(
            condition(&consuming(vec![partition(0, Some(0), 900)])),
            Condition::Idle,
            "no lag: no progress needed"
        );
        assert_eq!(
            condition(&consuming(vec![partition(0, None, 900)])),
            Condition::Healthy,
            "lag unknown: not declared stalled"
        );
        assert_eq!(
            condition(&Observation::default()),
            Condition::Unassigned,
            "starting, no partition: not healthy"
        );
    }

    #[test]
    fn lag_without_progress_past_the_bound_is_stalled_naming_the_partitions() {
        let seen = consuming(vec![partition(0, Some(5), 61), partition(1, Some(5), 3)]);
        let verdict = decide(&seen, &Bounds::default());
        assert_eq!(verdict.condition, Condition::Stalled);
        assert_eq!(verdict.subjects, ["t/0"]);
        assert_eq!(
            condition(&consuming(vec![partition(0, Some(5), 59)])),
            Condition::Healthy,
            "within the bound"
        );
    }

    #[test]
    fn no_partitions_while_the_group_has_lag_is_starved_after_the_bound() {
        let mut seen = consuming(Vec::new());
        seen.group_lag = Some(100);
        seen.unassigned_for = S * 30;
        assert_eq!(
            condition(&seen),
            Condition::Unassigned,
            "a rebalance may be on, but nothing is done here"
        );
        seen.unassigned_for = S * 61;
        assert_eq!(condition(&seen), Condition::Starved);
        seen.group_lag = Some(0);
        assert_eq!(condition(&seen), Condition::Idle);
        seen.group_lag = None;
        assert_eq!(
            condition(&seen),
            Condition::Unassigned,
            "unknown lag: not starved, not healthy"
        );
    }

    #[test]
    fn sinks_and_commits_come_first() {
        let mut seen = consuming(vec![partition(0, Some(5), 500)]);
        seen.commits_failing_for = Some(S * 61);
        assert_eq!(condition(&seen), Condition::CommitsFailing);
        seen.sinks_down = vec!["rides".into()];
        let verdict = decide(&seen, &Bounds::default());
        assert_eq!(
            (verdict.condition, verdict.subjects),
            (Condition::SinkDown, vec!["rides".to_owned()])
        );
        seen.sinks_down.clear();
        seen.commits_failing_for = Some(S * 10);
        assert_eq!(condition(&seen), Condition::Stalled);
    }

    /// Bounds for the remedy tests: stalled after 10 s, starved after 5 s.
    fn remedy_bounds(rejoin_attempts: u32) -> Bounds {
        Bounds {
            starved_after: S * 5,
            stalled_after: S * 10,
            rejoin_attempts,
            ..Bounds::default()
        }
    }

    fn verdict(condition: Condition) -> Verdict {
        Verdict {
            condition,
            subjects: Vec::new(),
        }
    }

    #[test]
    fn the_remedy_waits_a_bound_between_attempts_and_gives_up_for_good() {
        let bounds = remedy_bounds(2);
        let (stalled, healthy) = (verdict(Condition::Stalled), verdict(Condition::Healthy));
        let mut remedy = Remedy::default();
        assert_eq!(
            remedy.next(S * 100, &stalled, &bounds),
            Action::Rejoin { attempt: 1 }
        );
        assert_eq!(remedy.next(S * 105, &stalled, &bounds), Action::None);
        // The rejoin restarted the clocks: healthy a while, then stalled again.
        assert_eq!(remedy.next(S * 106, &healthy, &bounds), Action::None);
        assert_eq!(
            remedy.next(S * 117, &stalled, &bounds),
            Action::Rejoin { attempt: 2 }
        );
        assert_eq!(remedy.next(S * 120, &stalled, &bounds), Action::None);
        assert_eq!(remedy.next(S * 127, &stalled, &bounds), Action::GiveUp);
        assert_eq!(remedy.next(S * 500, &stalled, &bounds), Action::None);
        assert_eq!(remedy.next(S * 501, &healthy, &bounds), Action::None);
        assert_eq!(remedy.next(S * 532, &healthy, &bounds), Action::None);
        assert_eq!(
            remedy.next(S * 533, &stalled, &bounds),
            Action::None,
            "given up for good: the pod waits for its restart"
        );
    }

    #[test]
    fn the_count_of_attempts_resets_after_three_bounds_of_health() {
        let bounds = remedy_bounds(1);
        let (stalled, healthy) = (verdict(Condition::Stalled), verdict(Condition::Healthy));
        let mut remedy = Remedy::default();
        assert_eq!(
            remedy.next(S * 100, &stalled, &bounds),
            Action::Rejoin { attempt: 1 }
        );
        assert_eq!(remedy.next(S * 101, &healthy, &bounds), Action::None);
        assert_eq!(remedy.next(S * 132, &healthy, &bounds), Action::None);
        assert_eq!(
            remedy.next(S * 133, &stalled, &bounds),
            Action::Rejoin { attempt: 1 },
            "30 s of health (3 x 10 s): a new episode"
        );
    }
}
