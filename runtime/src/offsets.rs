//! At-least-once bookkeeping: which offsets of each partition are fully done, and therefore
//! which offset may be committed.
//!
//! Work is tracked in *units*: a unit covers a contiguous run of offsets of one partition (what
//! the dispatcher handed out of one poll burst) and is complete when every worker that got a part
//! of it has finished with its part **and** every record it emitted has been acknowledged by its
//! sink. (With `ordering: partition` a unit has one part; with `key` or `none` its events are
//! spread over several workers, which finish in any order.) The committable offset of a partition is
//! one past the last offset of the longest prefix of complete units: the partition's low
//! watermark. Acknowledgements may arrive in any order, even before the emit count they answer is
//! added (callers add counts before marking a unit processed); a unit whose record failed blocks its
//! partition until the record is retried and acknowledged, so no offset ever moves past an event
//! that was not fully handled.

use std::collections::{HashMap, VecDeque};

/// A topic partition (for a file source: the file's topic name and partition 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

impl TopicPartition {
    /// `topic` / `partition`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Identifies a unit of one partition (sequence number within the partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnitId {
    seq: u64,
    generation: u64,
}

#[derive(Debug, Clone)]
struct Unit {
    last_offset: i64,
    /// Records emitted minus records acknowledged. Acks may be counted before their records
    /// (a producer can report delivery before the worker adds its count), so this may dip
    /// below zero meanwhile; the unit cannot complete until it is processed, and it is marked
    /// processed only after every count was added.
    outstanding: i64,
    /// Parts (workers) not yet done with the unit.
    parts_left: u32,
}

#[derive(Debug, Default)]
struct PartitionState {
    generation: u64,
    /// Sequence number of `units[0]`.
    front_seq: u64,
    units: VecDeque<Unit>,
    /// One past the last offset of the complete prefix (what may be committed).
    committable: Option<i64>,
    /// What was last handed out by [`OffsetTracker::take_commits`].
    committed: Option<i64>,
    /// What the broker last confirmed ([`OffsetTracker::commit_confirmed`]).
    confirmed: Option<i64>,
    last_read: Option<i64>,
}

impl PartitionState {
    fn unit(&mut self, id: UnitId) -> Option<&mut Unit> {
        if id.generation != self.generation || id.seq < self.front_seq {
            return None;
        }
        self.units.get_mut((id.seq - self.front_seq) as usize)
    }

    fn advance(&mut self) {
        while let Some(front) = self.units.front() {
            if front.parts_left > 0 || front.outstanding > 0 {
                break;
            }
            self.committable = Some(front.last_offset + 1);
            self.units.pop_front();
            self.front_seq += 1;
        }
    }
}

/// See [`OffsetTracker::processed_snapshot`].
#[derive(Debug, Clone, Default)]
pub struct ProcessedSnapshot {
    /// Per partition: generation, end of the processed prefix (unit sequence), next offset.
    prefixes: HashMap<TopicPartition, (u64, u64, Option<i64>)>,
}

impl ProcessedSnapshot {
    /// Whether `unit` of `tp` lies in the processed prefix (of the current assignment).
    pub fn covers(&self, tp: &TopicPartition, unit: UnitId) -> bool {
        self.prefixes
            .get(tp)
            .is_some_and(|(generation, seq_end, _)| {
                unit.generation == *generation && unit.seq < *seq_end
            })
    }

    /// Whether `unit` belongs to an earlier assignment of `tp` (or `tp` is no longer assigned).
    pub fn is_stale(&self, tp: &TopicPartition, unit: UnitId) -> bool {
        self.prefixes
            .get(tp)
            .is_none_or(|(generation, _, _)| unit.generation != *generation)
    }

    /// The offset after each partition's processed prefix.
    pub fn next_offsets(&self) -> impl Iterator<Item = (&TopicPartition, i64)> {
        self.prefixes
            .iter()
            .filter_map(|(tp, (_, _, next))| next.map(|n| (tp, n)))
    }
}

/// Why the tracker refused a call: each is a bug in the caller, reported rather than ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    /// Offsets of a partition must be registered in increasing order.
    #[error("{topic}/{partition}: offset {offset} registered after {last}: offsets must increase")]
    NotIncreasing {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The new offset.
        offset: i64,
        /// The last registered offset.
        last: i64,
    },
    /// The partition is not assigned.
    #[error("{topic}/{partition}: not assigned")]
    NotAssigned {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
}

/// Per-partition low watermarks for at-least-once commits.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionState>,
    generation: u64,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a newly assigned partition. Forgets any earlier state for it: units from
    /// an earlier assignment are ignored from now on.
    pub fn assign(&mut self, tp: TopicPartition) {
        self.generation += 1;
        self.partitions.insert(
            tp,
            PartitionState {
                generation: self.generation,
                ..Default::default()
            },
        );
    }

    /// Stops tracking a revoked partition; returns its final committable offset unless the
    /// broker already confirmed it (one handed out but not yet confirmed is returned: the
    /// asynchronous commit carrying it may still fail).
    pub fn revoke(&mut self, tp: &TopicPartition) -> Option<i64> {
        let state = self.partitions.remove(tp)?;
        state.committable.filter(|c| Some(*c) != state.confirmed)
    }

    /// Registers a unit covering offsets up to `last_offset` (inclusive), read from `tp`, handled
    /// by one worker.
    pub fn begin(&mut self, tp: &TopicPartition, last_offset: i64) -> Result<UnitId, OffsetError> {
        self.begin_parts(tp, last_offset, 1)
    }

    /// Registers a unit covering offsets up to `last_offset` (inclusive), read from `tp`, whose
    /// events are split over `parts` workers: it is processed once each part is.
    pub fn begin_parts(
        &mut self,
        tp: &TopicPartition,
        last_offset: i64,
        parts: u32,
    ) -> Result<UnitId, OffsetError> {
        let state = self
            .partitions
            .get_mut(tp)
            .ok_or_else(|| OffsetError::NotAssigned {
                topic: tp.topic.clone(),
                partition: tp.partition,
            })?;
        if let Some(last) = state.last_read {
            if last_offset <= last {
                return Err(OffsetError::NotIncreasing {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: last_offset,
                    last,
                });
            }
        }
        state.last_read = Some(last_offset);
        let id = UnitId {
            seq: state.front_seq + state.units.len() as u64,
            generation: state.generation,
        };
        state.units.push_back(Unit {
            last_offset,
            outstanding: 0,
            parts_left: parts.max(1),
        });
        Ok(id)
    }

    /// The unit emitted `records` more records that its sinks must acknowledge. Must be called
    /// before [`OffsetTracker::processed`] for the unit.
    pub fn emitted(&mut self, tp: &TopicPartition, unit: UnitId, records: u32) {
        if let Some(u) = self.partitions.get_mut(tp).and_then(|s| s.unit(unit)) {
            u.outstanding += i64::from(records);
        }
    }

    /// A worker is done with its part of the unit: nothing more will be emitted for that part.
    pub fn processed(&mut self, tp: &TopicPartition, unit: UnitId) {
        if let Some(state) = self.partitions.get_mut(tp) {
            if let Some(u) = state.unit(unit) {
                u.parts_left = u.parts_left.saturating_sub(1);
                state.advance();
            }
        }
    }

    /// `removed` unprocessed parts of the unit were taken back from their workers and its
    /// events handed out again as `added` parts (a pool resize under `ordering: key | none`).
    pub fn repart(&mut self, tp: &TopicPartition, unit: UnitId, removed: u32, added: u32) {
        if let Some(state) = self.partitions.get_mut(tp) {
            if let Some(u) = state.unit(unit) {
                u.parts_left = u.parts_left.saturating_sub(removed) + added;
                state.advance();
            }
        }
    }

    /// A sink acknowledged one record of the unit. Acks for revoked partitions are ignored.
    pub fn acked(&mut self, tp: &TopicPartition, unit: UnitId) {
        if let Some(state) = self.partitions.get_mut(tp) {
            if let Some(u) = state.unit(unit) {
                u.outstanding -= 1;
                state.advance();
            }
        }
    }

    /// The offset that may be committed for `tp` (the next offset to read), if any.
    pub fn committable(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp).and_then(|s| s.committable)
    }

    /// For exactly-once sinks: per partition, the longest prefix of units every worker is done
    /// with (whether or not their records are acknowledged yet), and the offset after it.
    pub fn processed_snapshot(&self) -> ProcessedSnapshot {
        let mut prefixes = HashMap::new();
        for (tp, s) in &self.partitions {
            let mut seq_end = s.front_seq;
            let mut next = s.committable;
            for u in &s.units {
                if u.parts_left > 0 {
                    break;
                }
                seq_end += 1;
                next = Some(u.last_offset + 1);
            }
            prefixes.insert(tp.clone(), (s.generation, seq_end, next));
        }
        ProcessedSnapshot { prefixes }
    }

    /// Whether a partition has work in flight but has had nothing committed since it was
    /// assigned: a start or a rebalance that met a backlog.
    pub fn awaits_first_commit(&self) -> bool {
        self.partitions
            .values()
            .any(|s| s.committed.is_none() && !s.units.is_empty())
    }

    /// Units of `tp` not yet complete.
    pub fn in_flight(&self, tp: &TopicPartition) -> usize {
        self.partitions.get(tp).map_or(0, |s| s.units.len())
    }

    /// Units not yet complete, over all partitions.
    pub fn total_in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.units.len()).sum()
    }

    /// A commit of offsets from [`OffsetTracker::take_commits`] failed: hand them out again.
    pub fn commit_failed(&mut self, commits: &[(TopicPartition, i64)]) {
        for (tp, offset) in commits {
            if let Some(state) = self.partitions.get_mut(tp) {
                if state.committed == Some(*offset) {
                    state.committed = None;
                }
            }
        }
    }

    /// The offset the broker last confirmed as committed for `tp`.
    pub fn confirmed(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp).and_then(|s| s.confirmed)
    }

    /// The broker confirmed a commit of offsets from [`OffsetTracker::take_commits`].
    pub fn commit_confirmed(&mut self, commits: &[(TopicPartition, i64)]) {
        for (tp, offset) in commits {
            if let Some(state) = self.partitions.get_mut(tp) {
                state.confirmed = state.confirmed.max(Some(*offset));
            }
        }
    }

    /// The committable offsets that moved since the last call, marked as handed out.
    pub fn take_commits(&mut self) -> Vec<(TopicPartition, i64)> {
        let mut out = Vec::new();
        for (tp, state) in &mut self.partitions {
            if let Some(c) = state.committable {
                if state.committed != Some(c) {
                    state.committed = Some(c);
                    out.push((tp.clone(), c));
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    #[test]
    fn commits_only_the_complete_prefix() {
        let mut t = OffsetTracker::new();
        t.assign(tp(0));
        let a = t.begin(&tp(0), 9).unwrap(); // offsets 0..=9
        let b = t.begin(&tp(0), 19).unwrap();
        t.emitted(&tp(0), a, 2);
        t.emitted(&tp(0), b, 1);
        t.processed(&tp(0), b);
        t.acked(&tp(0), b);
        assert_eq!(t.committable(&tp(0)), None, "b is done but a is not");
        t.processed(&tp(0), a);
        t.acked(&tp(0), a);
        assert_eq!(t.committable(&tp(0)), None, "a still waits for one ack");
        t.acked(&tp(0), a);
        assert_eq!(
            t.committable(&tp(0)),
            Some(20),
            "a and b complete: commit the next offset"
        );
        assert_eq!(t.in_flight(&tp(0)), 0);
    }

    #[test]
    fn acks_counted_before_their_emit_count_still_add_up() {
        let mut t = OffsetTracker::new();
        t.assign(tp(0));
        let u = t.begin(&tp(0), 3).unwrap();
        t.acked(&tp(0), u);
        t.acked(&tp(0), u);
        t.emitted(&tp(0), u, 3);
        t.processed(&tp(0), u);
        assert_eq!(
            t.committable(&tp(0)),
            None,
            "one record still unacknowledged"
        );
        t.acked(&tp(0), u);
        assert_eq!(t.committable(&tp(0)), Some(4));
    }

    #[test]
    fn a_unit_that_emitted_nothing_completes_when_processed() {
        let mut t = OffsetTracker::new();
        t.assign(tp(1));
        let u = t.begin(&tp(1), 41).unwrap();
        assert_eq!(t.committable(&tp(1)), None);
        t.processed(&tp(1), u);
        assert_eq!(t.committable(&tp(1)), Some(42));
    }

    #[test]
    fn a_partition_awaits_its_first_commit_while_it_has_work() {
        let mut t = OffsetTracker::new();
        t.assign(tp(0));
        assert!(!t.awaits_first_commit(), "nothing read yet");
        let u = t.begin(&tp(0), 4).unwrap();
        assert!(t.awaits_first_commit());
        t.processed(&tp(0), u);
        assert!(!t.awaits_first_commit(), "complete, if not yet handed out");
        t.begin(&tp(0), 9).unwrap();
        assert!(t.awaits_first_commit());
        assert_eq!(t.take_commits(), [(tp(0), 5)]);
        assert!(
            !t.awaits_first_commit(),
            "committed once: the interval rules"
        );
        t.assign(tp(0));
        t.begin(&tp(0), 12).unwrap();
        assert!(t.awaits_first_commit(), "assigned again");
    }

    #[test]
    fn take_commits_hands_out_each_move_once() {
        let mut t = OffsetTracker::new();
        t.assign(tp(0));
        t.assign(tp(1));
        let u0 = t.begin(&tp(0), 4).unwrap();
        let u1 = t.begin(&tp(1), 7).unwrap();
        t.processed(&tp(0), u0);
        t.processed(&tp(1), u1);
        assert_eq!(t.take_commits(), [(tp(0), 5), (tp(1), 8)]);
        assert_eq!(t.take_commits(), []);
        let v = t.begin(&tp(0), 5).unwrap();
        t.processed(&tp(0), v);
        assert_eq!(t.take_commits(), [(tp(0), 6)]);
        t.commit_failed(&[(tp(0), 6)]);
        assert_eq!(
            t.take_commits(),
            [(tp(0), 6)],
            "a failed commit is handed out again"
        );
    }

    #[test]
    fn revoke_returns_the_uncommitted_final_offset_and_ignores_late_acks() {
        let mut t = OffsetTracker::new();
        t.assign(tp(0));
        let u = t.begin(&tp(0), 2).unwrap();
        t.processed(&tp(0), u);
        assert_eq!(t.revoke(&tp(0)), Some(3));
        // Reassigned: an ack for a unit of the old assignment must not complete a new unit.
        t.assign(tp(0));
        let old_ack = UnitId { seq: 0, ..u };
        let fresh = t.begin(&tp(0), 10).unwrap();
        t.emitted(&tp(0), fresh, 1);
        t.processed(&tp(0), fresh);
        t.acked(&tp(0), old_ack);
        assert_eq!(t.committable(&tp(0)), None);
        t.acked(&tp(0), fresh);
        assert_eq!(t.committable(&tp(0)), Some(11));
        assert_eq!(t.take_commits(), [(tp(0), 11)]);
        t.commit_confirmed(&[(tp(0), 11)]);
        assert_eq!(t.revoke(&tp(0)), None, "already confirmed");
    }

    #[test]
    fn revoke_commits_again_what_the_broker_has_not_confirmed() {
        let mut t = OffsetTracker::new();
        t.assign(tp(0));
        let u = t.begin(&tp(0), 2).unwrap();
        t.processed(&tp(0), u);
        assert_eq!(t.take_commits(), [(tp(0), 3)]);
        assert_eq!(t.revoke(&tp(0)), Some(3), "handed out, not answered");
    }

    #[test]
    fn a_unit_split_over_workers_waits_for_every_part() {
        let mut t = OffsetTracker::new();
        t.assign(tp(0));
        let a = t.begin_parts(&tp(0), 9, 3).unwrap();
        let b = t.begin(&tp(0), 12).unwrap();
        t.processed(&tp(0), b);
        t.processed(&tp(0), a);
        t.processed(&tp(0), a);
        assert_eq!(
            t.committable(&tp(0)),
            None,
            "one part of a is still running"
        );
        t.emitted(&tp(0), a, 1);
        t.processed(&tp(0), a);
        assert_eq!(
            t.committable(&tp(0)),
            None,
            "a's last part emitted a record"
        );
        t.acked(&tp(0), a);
        assert_eq!(t.committable(&tp(0)), Some(13));
    }

    #[test]
    fn a_unit_handed_out_again_waits_for_its_new_parts() {
        let mut t = OffsetTracker::new();
        t.assign(tp(0));
        // Split over 2 workers; one processed its part, the other's part came back unprocessed
        // and went out again as 3 parts (a pool resize).
        let a = t.begin_parts(&tp(0), 9, 2).unwrap();
        t.processed(&tp(0), a);
        t.repart(&tp(0), a, 1, 3);
        t.processed(&tp(0), a);
        t.processed(&tp(0), a);
        assert_eq!(t.committable(&tp(0)), None, "one new part is still running");
        t.processed(&tp(0), a);
        assert_eq!(t.committable(&tp(0)), Some(10));
    }

    #[test]
    fn refuses_decreasing_offsets_and_unassigned_partitions() {
        let mut t = OffsetTracker::new();
        assert_eq!(
            t.begin(&tp(0), 1),
            Err(OffsetError::NotAssigned {
                topic: "t".into(),
                partition: 0
            })
        );
        t.assign(tp(0));
        t.begin(&tp(0), 5).unwrap();
        let err = t.begin(&tp(0), 5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t/0: offset 5 registered after 5: offsets must increase"
        );
    }

    /// Random interleavings: the committable offset never passes an incomplete unit and ends at
    /// the end once everything is acknowledged.
    #[test]
    fn never_passes_an_incomplete_unit_under_any_ack_order() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _round in 0..200 {
            let mut t = OffsetTracker::new();
            t.assign(tp(0));
            let units: Vec<(UnitId, i64, u32)> = (0..20)
                .map(|i| {
                    let last = i * 10 + 9;
                    let id = t.begin(&tp(0), last).unwrap();
                    let records = rand(4) as u32;
                    t.emitted(&tp(0), id, records);
                    (id, last, records)
                })
                .collect();
            // Every event: one `processed` and `records` acks, in a random global order.
            let mut steps: Vec<(usize, bool)> = Vec::new();
            for (i, (_, _, records)) in units.iter().enumerate() {
                steps.push((i, true));
                steps.extend(std::iter::repeat_n((i, false), *records as usize));
            }
            let mut remaining: Vec<(bool, u32)> =
                units.iter().map(|(_, _, r)| (false, *r)).collect();
            while !steps.is_empty() {
                let (i, is_processed) = steps.swap_remove(rand(steps.len()));
                if is_processed {
                    t.processed(&tp(0), units[i].0);
                    remaining[i].0 = true;
                } else {
                    t.acked(&tp(0), units[i].0);
                    remaining[i].1 -= 1;
                }
                let first_incomplete = remaining.iter().position(|(p, r)| !*p || *r > 0);
                let expected = match first_incomplete {
                    Some(0) => None,
                    Some(i) => Some(units[i - 1].1 + 1),
                    None => Some(units[19].1 + 1),
                };
                assert_eq!(t.committable(&tp(0)), expected);
            }
            assert_eq!(t.committable(&tp(0)), Some(200));
        }
    }
}
