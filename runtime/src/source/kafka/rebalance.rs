//! Rebalances: librdkafka's callbacks (run inside `poll` on the poll thread). On assign a
//! partition gets a slot and its workers; on revoke its events are drained, flushed,
//! acknowledged and committed (or committed into the open transaction) before it is released.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};

use super::commit::{commit, commit_transaction};
use super::dispatch::{Dispatch, Slot};
use crate::config::{Ordering, StartFrom};
use crate::offsets::TopicPartition;
use crate::telemetry::{
    CommitFailed, CommitPoint, OffsetsCommitted, PartitionsAssigned, PartitionsRevoked, Telemetry,
};
use crate::worker::Command;

pub(crate) struct RebalanceContext {
    pub(crate) dispatch: Arc<Mutex<Dispatch>>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) start: StartPlan,
    /// Partitions of the assignment in progress that start from `start-from` (placed in
    /// `pre_rebalance`): their state is reset in `post_rebalance`, never ahead of the input.
    pub(crate) fresh: Mutex<(HashSet<TopicPartition>, &'static str)>,
    /// The brokers' connections and the leaders as the statistics said last (`statistics.rs`).
    pub(crate) brokers: Mutex<super::statistics::BrokerWatch>,
}

/// Where newly assigned partitions start: `source.kafka.start-from` for partitions the group has
/// no committed offset for, and for every partition (once per process) with `sluice run
/// --reset`. Set on the assignment itself (before librdkafka fetches anything), so nothing is
/// read from anywhere else first.
pub(crate) struct StartPlan {
    pub(crate) from: StartFrom,
    pub(crate) reset: bool,
    /// Partitions `--reset` already placed: a rebalance that hands one back does not rewind it
    /// again.
    pub(crate) placed: Mutex<HashSet<TopicPartition>>,
    /// The pipeline has state: partitions without a committed offset are found even when
    /// `auto.offset.reset` places them, so their state starts empty too.
    pub(crate) state: bool,
}

impl StartPlan {
    /// Sets the start offsets of the partitions of `tpl` that need one; returns the partitions
    /// that start from `start-from` and why.
    fn place(
        &self,
        consumer: &BaseConsumer<RebalanceContext>,
        tpl: &TopicPartitionList,
    ) -> Result<(HashSet<TopicPartition>, &'static str), String> {
        let explicit = matches!(self.from, StartFrom::Time { .. } | StartFrom::Offsets(_));
        if !self.reset && !explicit && !self.state {
            // earliest / latest without committed offsets: auto.offset.reset
            return Ok((HashSet::new(), ""));
        }
        let mut placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        let tp_of = |e: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>| {
            TopicPartition::new(e.topic(), e.partition())
        };
        let candidates: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(tp_of)
            .filter(|tp| !placed.contains(tp))
            .collect();
        if candidates.is_empty() {
            return Ok((HashSet::new(), ""));
        }
        let timeout = Duration::from_secs(10);
        let (needs, why): (HashSet<TopicPartition>, &str) = if self.reset {
            (candidates.into_iter().collect(), "--reset")
        } else {
            let mut query = TopicPartitionList::new();
            for tp in &candidates {
                query.add_partition(&tp.topic, tp.partition);
            }
            let committed = consumer.committed_offsets(query, timeout).map_err(|e| {
                format!("start-from: cannot read the group's committed offsets ({e}): is the broker reachable?")
            })?;
            let needs = committed
                .elements()
                .iter()
                .filter(|e| matches!(e.offset(), Offset::Invalid))
                .map(tp_of)
                .collect();
            (needs, "no committed offset")
        };
        if needs.is_empty() || (!self.reset && !explicit) {
            // Earliest / latest: auto.offset.reset places them; only the state needs to know.
            return Ok((needs, why));
        }
        let positions: HashMap<TopicPartition, Offset> = match &self.from {
            StartFrom::Earliest => needs
                .iter()
                .map(|tp| (tp.clone(), Offset::Beginning))
                .collect(),
            StartFrom::Latest => needs.iter().map(|tp| (tp.clone(), Offset::End)).collect(),
            StartFrom::Offsets(offsets) => needs
                .iter()
                .map(|tp| {
                    let at = offsets.get(&(tp.topic.clone(), tp.partition));
                    (
                        tp.clone(),
                        at.map_or(Offset::Beginning, |o| Offset::Offset(*o)),
                    )
                })
                .collect(),
            StartFrom::Time { ms, text } => {
                let mut query = TopicPartitionList::new();
                for tp in &needs {
                    query
                        .add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*ms))
                        .map_err(|e| format!("start-from: {tp}: {e}"))?;
                }
                let found = consumer.offsets_for_times(query, timeout).map_err(|e| {
                    format!(
                        "start-from: {text}: the broker did not answer the lookup by time ({e})"
                    )
                })?;
                found
                    .elements()
                    .iter()
                    .map(|e| {
                        // No event at or after the time: the end.
                        let at = match e.offset() {
                            Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                            _ => Offset::End,
                        };
                        (tp_of(e), at)
                    })
                    .collect()
            }
        };
        for mut e in tpl.elements() {
            let tp = tp_of(&e);
            let Some(at) = positions.get(&tp) else {
                continue;
            };
            e.set_offset(*at)
                .map_err(|err| format!("start-from: {tp}: {err}"))?;
            let offset = match at {
                Offset::Offset(o) => o.to_string(),
                Offset::Beginning => "earliest".into(),
                Offset::End => "latest".into(),
                other => format!("{other:?}"),
            };
            tracing::info!(partition = %tp, offset, why, "starting the partition from start-from");
            if self.reset {
                placed.insert(tp);
            }
        }
        Ok((needs, why))
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            match self.start.place(consumer, tpl) {
                Ok(fresh) => *self.fresh.lock().unwrap_or_else(|e| e.into_inner()) = fresh,
                Err(err) => {
                    use crate::status::Lifecycle;
                    if matches!(
                        self.telemetry.health.lifecycle(),
                        Lifecycle::Draining | Lifecycle::Stopped
                    ) {
                        // Handed partitions while stopping (another member left at the same
                        // time): nothing of them is processed or committed here, and the group
                        // hands them on when this pod leaves. Not a failure of the run.
                        tracing::warn!("partitions assigned while stopping are not started: {err}");
                    } else {
                        // Never start somewhere else than asked: the pipeline stops.
                        let dispatch = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
                        dispatch.failure.set(err);
                    }
                }
            }
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions: Vec<TopicPartition> = tpl
                .elements()
                .iter()
                .map(|e| TopicPartition::new(e.topic(), e.partition()))
                .collect();
            let mut dispatch = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
            revoke(&mut dispatch, consumer, &partitions);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps a partition's pause flag across unassign and assign: a partition
            // revoked while paused would come back paused, and our fresh slot would never resume it.
            if let Err(err) = consumer.resume(tpl) {
                tracing::warn!("resume of newly assigned partitions failed: {err}");
            }
            let mut dispatch = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
            let stored = match dispatch.resume_from.as_ref().map(|read| read()) {
                None => HashMap::new(),
                Some(Ok(stored)) => stored,
                Some(Err(err)) => {
                    dispatch.failure.set(format!(
                        "exactly-once: cannot read the stored offsets ({err}): is the database reachable?"
                    ));
                    return;
                }
            };
            if let Some(state) = dispatch.state.clone() {
                let new: Vec<TopicPartition> = tpl
                    .elements()
                    .iter()
                    .map(|e| TopicPartition::new(e.topic(), e.partition()))
                    .filter(|tp| !dispatch.slots.contains_key(tp))
                    .collect();
                let (fresh, why) =
                    std::mem::take(&mut *self.fresh.lock().unwrap_or_else(|e| e.into_inner()));
                // Restored before the partitions get slots: none of their events is dispatched
                // (or even polled into a burst) before their state is there.
                if let Err(err) = state.open(&new, &fresh, why) {
                    dispatch.failure.set(err);
                    return;
                }
            }
            let mut per_worker: HashMap<usize, Vec<TopicPartition>> = HashMap::new();
            let mut assigned = Vec::new();
            for e in tpl.elements() {
                let tp = TopicPartition::new(e.topic(), e.partition());
                if dispatch.slots.contains_key(&tp) {
                    continue;
                }
                let workers = match dispatch.ordering {
                    Ordering::Partition => {
                        let worker = (0..dispatch.load.len())
                            .min_by_key(|w| dispatch.load[*w])
                            .unwrap_or(0);
                        dispatch.load[worker] += 1;
                        vec![worker]
                    }
                    Ordering::Key | Ordering::None => (0..dispatch.workers.len()).collect(),
                };
                dispatch
                    .tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .assign(tp.clone());
                dispatch.slots.insert(
                    tp.clone(),
                    Slot {
                        workers: workers.clone(),
                        in_flight: Arc::default(),
                        held: VecDeque::new(),
                        paused: false,
                        skip_below: stored.get(&tp).copied().unwrap_or(0),
                    },
                );
                for worker in workers {
                    per_worker.entry(worker).or_default().push(tp.clone());
                }
                assigned.push(tp);
            }
            self.telemetry.emit(PartitionsAssigned {
                partitions: &assigned,
            });
            for (worker, partitions) in per_worker {
                tracing::debug!(worker, partitions = ?partitions, "partitions pinned to worker");
                let _ = dispatch.workers[worker].send(Command::Assigned(partitions));
            }
        }
    }
}

/// Drains, flushes and commits `partitions`, then forgets them. Bounded by the drain timeout.
pub(crate) fn revoke(
    dispatch: &mut Dispatch,
    consumer: &BaseConsumer<RebalanceContext>,
    partitions: &[TopicPartition],
) {
    if dispatch.transactions.is_some() {
        return revoke_in_transaction(dispatch, consumer, partitions);
    }
    let per_worker = release_slots(dispatch, partitions);
    if per_worker.is_empty() {
        return;
    }
    dispatch.telemetry.emit(PartitionsRevoked {
        partitions,
        into_transaction: false,
    });
    let deadline = Instant::now() + dispatch.drain_timeout;
    let replies: Vec<_> = per_worker
        .into_iter()
        .map(|(worker, parts)| {
            let (tx, rx) = mpsc::sync_channel(1);
            let _ = dispatch.workers[worker].send(Command::Revoke(parts, tx));
            rx
        })
        .collect();
    for rx in replies {
        let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
    // Wait for the sinks to acknowledge what the revoked partitions emitted.
    let drained;
    loop {
        let in_flight: usize = {
            let tracker = dispatch.tracker.lock().unwrap_or_else(|e| e.into_inner());
            partitions.iter().map(|tp| tracker.in_flight(tp)).sum()
        };
        // After a fatal error the failing unit never completes: commit what is complete now.
        let failed = dispatch.failure.is_set();
        if in_flight == 0 || failed || Instant::now() >= deadline {
            if in_flight > 0 && !failed {
                tracing::warn!(in_flight, "drain timeout: committing only what is complete");
            }
            drained = in_flight == 0;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let commits: Vec<(TopicPartition, i64)> = {
        let mut tracker = dispatch.tracker.lock().unwrap_or_else(|e| e.into_inner());
        partitions
            .iter()
            .filter_map(|tp| tracker.revoke(tp).map(|o| (tp.clone(), o)))
            .collect()
    };
    let committed = match commit(consumer, &commits) {
        Ok(()) => {
            dispatch.telemetry.emit(OffsetsCommitted {
                commits: &commits,
                point: CommitPoint::Release,
                released: partitions,
            });
            true
        }
        Err(err) => {
            dispatch.telemetry.emit(CommitFailed {
                error: &err,
                retried: false,
            });
            false
        }
    };
    if let Some(state) = &dispatch.state {
        state.close(
            partitions,
            committed && drained && !dispatch.failure.is_set(),
        );
    }
}

/// Forgets the slots of revoked `partitions` (their events still in this poll burst are dropped)
/// and returns which workers held which of them.
pub(crate) fn release_slots(
    dispatch: &mut Dispatch,
    partitions: &[TopicPartition],
) -> HashMap<usize, Vec<TopicPartition>> {
    dispatch.revoked_log.extend(partitions.iter().cloned());
    let mut per_worker: HashMap<usize, Vec<TopicPartition>> = HashMap::new();
    for tp in partitions {
        if let Some(slot) = dispatch.slots.remove(tp) {
            if let [worker] = slot.workers[..] {
                dispatch.load[worker] -= 1;
            }
            for worker in slot.workers {
                per_worker.entry(worker).or_default().push(tp.clone());
            }
        }
    }
    per_worker
}

/// Transactions: the revoked partitions' workers call `revoked` and flush, then the open
/// transaction commits with every partition's offsets (so the revoked ones' too), then they are
/// forgotten.
pub(crate) fn revoke_in_transaction(
    dispatch: &mut Dispatch,
    consumer: &BaseConsumer<RebalanceContext>,
    partitions: &[TopicPartition],
) {
    let per_worker = release_slots(dispatch, partitions);
    if per_worker.is_empty() {
        return;
    }
    dispatch.telemetry.emit(PartitionsRevoked {
        partitions,
        into_transaction: true,
    });
    for (worker, parts) in per_worker {
        let (tx, _rx) = mpsc::sync_channel(1);
        let _ = dispatch.workers[worker].send(Command::Revoke(parts, tx));
    }
    let committed = match commit_transaction(dispatch, consumer) {
        Ok(()) => true,
        Err(err) => {
            dispatch
                .failure
                .set(format!("transaction commit on revoke failed: {err}"));
            false
        }
    };
    {
        let mut tracker = dispatch.tracker.lock().unwrap_or_else(|e| e.into_inner());
        for tp in partitions {
            tracker.revoke(tp);
        }
    }
    if let Some(state) = &dispatch.state {
        state.close(partitions, committed && !dispatch.failure.is_set());
    }
}
