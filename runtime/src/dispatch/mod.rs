//! The dispatcher: between a source and the worker pool, written once for every source. It owns
//! the partitions a run holds ([`Slot`]s); turns each partition's events into offset units and
//! hands them to the workers by the pipeline's `ordering` (`units`); pauses a partition with
//! `capacity` events in flight, holds what was read meanwhile and resumes it as its workers
//! catch up; assigns partitions (state restored, workers told) and releases them (drained,
//! flushed, acknowledged, committed, state closed); makes the transaction's commit point; and
//! resizes the pool (`resize`).
//!
//! It reaches its source only through [`Source`] (pause, resume, commit) and its workers only
//! through [`Workers`]: a Kafka run's source is the consumer (`source::kafka`), a file run's its
//! reader (`source::file`); the unit tests drive it with a fake of each.

mod resize;
#[cfg(test)]
mod tests;
mod units;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Ordering;
use crate::cpu::CpuLimit;
use crate::fatal::Fatal;
use crate::message::Message;
use crate::offsets::{OffsetTracker, TopicPartition};
use crate::pool::{WorkerPool, Workers};
use crate::sink::kafka::KafkaSink;
use crate::state::{RESTORE_CANCELLED, StateStores};
use crate::status::{PartitionLive, PartitionView};
use crate::sync::lock;
use crate::telemetry::{
    CommitFailed, CommitPoint, Draining, OffsetsCommitted, PartitionPaused, PartitionsAssigned,
    PartitionsRevoked, StopReason, Telemetry,
};
use crate::worker::Delivery;
use units::Plan;

/// What the dispatcher asks of the source it serves, on the source's own thread (a Kafka run's
/// poll thread, rebalance callbacks included; a file run's reading loop).
pub(crate) trait Source {
    /// Stops reading `tp`: it has `capacity` events in flight (what was read meanwhile is held).
    fn pause(&self, tp: &TopicPartition) -> Result<(), String>;
    /// Reads `tp` again.
    fn resume(&self, tp: &TopicPartition) -> Result<(), String>;
    /// Commits `commits` (per partition, the offset after its last complete unit) before their
    /// partitions are released; returns once the commit is settled, saying whether the source
    /// keeps positions at all (a file does not: nothing is reported as committed).
    fn commit(&self, commits: &[(TopicPartition, i64)]) -> Result<bool, String>;
    /// Puts `commits` into `sink`'s open transaction and commits it (exactly-once Kafka outputs).
    fn commit_transaction(
        &self,
        sink: &KafkaSink,
        commits: &[(TopicPartition, i64)],
        timeout: Duration,
    ) -> Result<(), String> {
        let _ = (sink, commits, timeout);
        Err("this source cannot commit into a transaction".into())
    }
}

/// One assigned partition, as the dispatcher sees it.
#[derive(Debug)]
struct Slot {
    /// The workers its events may go to: one with `ordering: partition`, else all of them.
    workers: Vec<usize>,
    /// Its events handed to workers and not yet given to the plugin.
    in_flight: Arc<AtomicUsize>,
    /// Events read while the partition was full, in order; the partition is paused meanwhile.
    held: VecDeque<Message>,
    paused: bool,
    /// Its state is being restored (off the poll thread): it stays paused, what was read is
    /// held, and its workers are told `assigned` once the restore is done.
    restoring: bool,
    /// Exactly-once: events below this offset are already in the database; they are read and
    /// dropped.
    skip_below: i64,
}

/// A restore of newly assigned partitions, running on a thread of its own so the poll thread
/// keeps polling (a restore longer than `max.poll.interval.ms` would otherwise cost the group
/// membership).
struct Restore {
    partitions: Vec<TopicPartition>,
    fresh: HashSet<TopicPartition>,
    why: String,
    cancel: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<(), String>>,
}

impl Restore {
    fn start(
        state: &Arc<StateStores>,
        partitions: Vec<TopicPartition>,
        fresh: HashSet<TopicPartition>,
        why: String,
    ) -> Result<Restore, String> {
        let cancel = Arc::new(AtomicBool::new(false));
        let handle = std::thread::Builder::new()
            .name("sluice-restore".into())
            .spawn({
                let (state, cancel) = (state.clone(), cancel.clone());
                let (partitions, fresh, why) = (partitions.clone(), fresh.clone(), why.clone());
                move || state.open(&partitions, &fresh, &why, &cancel)
            })
            .map_err(|e| format!("state: cannot start the restore thread: {e}"))?;
        Ok(Restore {
            partitions,
            fresh,
            why,
            cancel,
            handle,
        })
    }
}

/// What becomes of one run of a burst (consecutive events of one partition), in order: the first
/// `dropped` are dropped, the next `handed` handed out as `plan`'s unit, the last `held` held.
#[derive(Debug)]
struct Run {
    tp: TopicPartition,
    dropped: usize,
    handed: usize,
    held: usize,
    plan: Option<Plan>,
}

/// Exactly-once tables: reads where each partition resumes (the offsets stored with the rows).
pub(crate) type ResumeFrom = Box<dyn Fn() -> Result<HashMap<TopicPartition, i64>, String> + Send>;

/// How the dispatcher hands events out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) ordering: Ordering,
    /// Events a partition may have in flight before it is paused.
    pub(crate) capacity: usize,
    /// How long a release may wait for the workers and the sinks.
    pub(crate) drain_timeout: Duration,
}

/// What the dispatcher shares with the rest of the run.
pub(crate) struct Context {
    pub(crate) tracker: Arc<Mutex<OffsetTracker>>,
    pub(crate) failure: Fatal,
    pub(crate) telemetry: Arc<Telemetry>,
    /// The state stores: opened (restored) on assign, closed on release.
    pub(crate) state: Option<Arc<StateStores>>,
    /// Exactly-once tables: where assigned partitions resume.
    pub(crate) resume_from: Option<ResumeFrom>,
    /// Kafka transactions: the producer whose transaction carries the offsets.
    pub(crate) transactions: Option<Arc<KafkaSink>>,
}

/// The dispatcher of one run. Shared (behind a mutex) by a Kafka run's poll loop and its
/// rebalance callbacks; a file run's loop alone uses its own.
pub(crate) struct Dispatcher<W: Workers = WorkerPool> {
    slots: HashMap<TopicPartition, Slot>,
    /// Partitions pinned to each worker (`ordering: partition`).
    load: Vec<usize>,
    workers: W,
    settings: Settings,
    /// Rotates the first worker of `ordering: none` hand-outs.
    next_worker: usize,
    /// Partitions released since the current turn began: their events still in a burst are
    /// dropped (whoever owns them now reads them again from the committed offset).
    released_in_turn: Vec<TopicPartition>,
    /// What `/status` showed last: read while a release holds the dispatcher (taken as the
    /// release begins, so the partitions being drained stay in view).
    shown: Arc<Mutex<Vec<PartitionLive>>>,
    /// Restores running off the poll thread.
    restores: Vec<Restore>,
    ctx: Context,
}

impl<W: Workers> std::fmt::Debug for Dispatcher<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("slots", &self.slots.len())
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl<W: Workers> Dispatcher<W> {
    pub(crate) fn new(workers: W, settings: Settings, ctx: Context) -> Self {
        Dispatcher {
            slots: HashMap::new(),
            load: vec![0; workers.len()],
            workers,
            settings,
            next_worker: 0,
            released_in_turn: Vec::new(),
            shown: Arc::default(),
            restores: Vec::new(),
            ctx,
        }
    }

    pub(crate) fn tracker(&self) -> &Mutex<OffsetTracker> {
        &self.ctx.tracker
    }

    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.ctx.telemetry
    }

    pub(crate) fn failure(&self) -> &Fatal {
        &self.ctx.failure
    }

    /// The workers (to stop them at the end of the run).
    pub(crate) fn workers_mut(&mut self) -> &mut W {
        &mut self.workers
    }

    /// How many workers events go to.
    pub(crate) fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The partitions held, in order.
    pub(crate) fn partitions(&self) -> Vec<TopicPartition> {
        let mut all: Vec<TopicPartition> = self.slots.keys().cloned().collect();
        all.sort();
        all
    }

    /// The partitions whose state is being restored.
    pub(crate) fn restoring(&self) -> Vec<TopicPartition> {
        let mut restoring: Vec<TopicPartition> = self
            .slots
            .iter()
            .filter(|(_, s)| s.restoring)
            .map(|(tp, _)| tp.clone())
            .collect();
        restoring.sort();
        restoring
    }

    /// Whether a paused partition still holds events not handed out.
    pub(crate) fn holds_events(&self) -> bool {
        self.slots.values().any(|s| !s.held.is_empty())
    }

    /// A new turn of the source's loop begins: partitions released in the last one may be read
    /// again.
    pub(crate) fn begin_turn(&mut self) {
        self.released_in_turn.clear();
    }

    /// Takes `partitions` on (those not held yet): each gets its slot and workers (one by load
    /// with `ordering: partition`, else all), the tracker starts counting their units and their
    /// workers call `assigned`. `fresh` are the partitions that start from `start-from` (their
    /// state starts empty), for the reason `why`. State backed by changelogs is restored off the
    /// poll thread: the partitions stay paused (what was read meanwhile held) and their workers
    /// are told only once it is done ([`Dispatcher::finish_restores`]); none of their events
    /// is handed out before their state is there.
    pub(crate) fn assign(
        &mut self,
        source: &impl Source,
        partitions: &[TopicPartition],
        fresh: &HashSet<TopicPartition>,
        why: &str,
    ) -> Result<(), String> {
        let stored = match &self.ctx.resume_from {
            None => HashMap::new(),
            Some(read) => read().map_err(|err| {
                format!("exactly-once: cannot read the stored offsets ({err}): is the database reachable?")
            })?,
        };
        let new: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| !self.slots.contains_key(tp))
            .cloned()
            .collect();
        let mut restoring = false;
        if let Some(state) = &self.ctx.state {
            if state.has_changelog() && !new.is_empty() {
                for tp in &new {
                    source.pause(tp)?;
                }
                let fresh = new
                    .iter()
                    .filter(|tp| fresh.contains(tp))
                    .cloned()
                    .collect();
                self.restores
                    .push(Restore::start(state, new.clone(), fresh, why.to_owned())?);
                restoring = true;
            } else {
                state.open(&new, fresh, why, &AtomicBool::new(false))?;
            }
        }
        let mut per_worker: HashMap<usize, Vec<TopicPartition>> = HashMap::new();
        for tp in &new {
            let workers = match self.settings.ordering {
                Ordering::Partition => {
                    let worker = (0..self.load.len())
                        .min_by_key(|w| self.load[*w])
                        .unwrap_or(0);
                    self.load[worker] += 1;
                    vec![worker]
                }
                Ordering::Key | Ordering::None => (0..self.workers.len()).collect(),
            };
            lock(&self.ctx.tracker).assign(tp.clone());
            for worker in &workers {
                per_worker.entry(*worker).or_default().push(tp.clone());
            }
            self.slots.insert(
                tp.clone(),
                Slot {
                    workers,
                    in_flight: Arc::default(),
                    held: VecDeque::new(),
                    paused: restoring,
                    restoring,
                    skip_below: stored.get(tp).copied().unwrap_or(0),
                },
            );
        }
        self.ctx
            .telemetry
            .emit(PartitionsAssigned { partitions: &new });
        if !restoring {
            for (worker, partitions) in per_worker {
                tracing::debug!(worker, partitions = ?partitions, "partitions pinned to worker");
                self.workers.assigned(worker, partitions);
            }
        }
        Ok(())
    }

    /// Takes the restores that ended: their partitions' workers call `assigned`, and
    /// [`Dispatcher::release_held`] hands out what was read meanwhile and resumes them. A
    /// restore that failed fails the run.
    pub(crate) fn finish_restores(&mut self) {
        let (done, running): (Vec<Restore>, Vec<Restore>) = std::mem::take(&mut self.restores)
            .into_iter()
            .partition(|r| r.handle.is_finished());
        self.restores = running;
        for restore in done {
            let result = restore
                .handle
                .join()
                .unwrap_or_else(|_| Err("state: the restore thread panicked".into()));
            if let Err(err) = result {
                self.ctx.failure.set(err);
                continue;
            }
            let mut per_worker: HashMap<usize, Vec<TopicPartition>> = HashMap::new();
            for tp in &restore.partitions {
                if let Some(slot) = self.slots.get_mut(tp) {
                    slot.restoring = false;
                    for worker in &slot.workers {
                        per_worker.entry(*worker).or_default().push(tp.clone());
                    }
                }
            }
            for (worker, partitions) in per_worker {
                tracing::debug!(worker, partitions = ?partitions, "partitions pinned to worker");
                self.workers.assigned(worker, partitions);
            }
        }
    }

    /// Stops the restores of `released` partitions before their state is closed: a restore
    /// holding one of them is cancelled and joined; what it restored for partitions still held
    /// is restored again.
    fn stop_restores(&mut self, released: &[TopicPartition]) {
        let (hit, keep): (Vec<Restore>, Vec<Restore>) = std::mem::take(&mut self.restores)
            .into_iter()
            .partition(|r| r.partitions.iter().any(|tp| released.contains(tp)));
        self.restores = keep;
        for restore in hit {
            restore.cancel.store(true, AtomicOrdering::Relaxed);
            let result = restore
                .handle
                .join()
                .unwrap_or_else(|_| Err("state: the restore thread panicked".into()));
            let rest: Vec<TopicPartition> = restore
                .partitions
                .iter()
                .filter(|tp| !released.contains(tp))
                .cloned()
                .collect();
            match result {
                // Done before the cancel: the released ones are open and close as usual.
                Ok(()) => {
                    let mut per_worker: HashMap<usize, Vec<TopicPartition>> = HashMap::new();
                    for tp in &rest {
                        if let Some(slot) = self.slots.get_mut(tp) {
                            slot.restoring = false;
                            for worker in &slot.workers {
                                per_worker.entry(*worker).or_default().push(tp.clone());
                            }
                        }
                    }
                    for (worker, partitions) in per_worker {
                        self.workers.assigned(worker, partitions);
                    }
                }
                Err(err) if err == RESTORE_CANCELLED => {
                    if rest.is_empty() {
                        continue;
                    }
                    let fresh = rest
                        .iter()
                        .filter(|tp| restore.fresh.contains(tp))
                        .cloned()
                        .collect();
                    let state = self.ctx.state.as_ref().expect("a restore has state");
                    match Restore::start(state, rest, fresh, restore.why) {
                        Ok(again) => self.restores.push(again),
                        Err(err) => self.ctx.failure.set(err),
                    }
                }
                Err(err) => self.ctx.failure.set(err),
            }
        }
    }

    /// Hands a burst of events (of any partitions, each partition's in offset order) to the
    /// workers: each run of consecutive events of one partition becomes one offset unit, and
    /// each worker gets its share of the burst in one message. A partition with `capacity`
    /// events in flight is paused and the rest of its events held. Events of partitions not held
    /// (or released in this turn) are dropped. The burst is read twice by reference (runs,
    /// plans) and its events moved once, into their workers' lists or a slot's held ones.
    pub(crate) fn dispatch(&mut self, source: &impl Source, burst: Vec<Message>) {
        let mut runs: Vec<Run> = Vec::new();
        let mut start = 0;
        while start < burst.len() {
            let first = &burst[start];
            let end = start
                + burst[start..]
                    .iter()
                    .take_while(|m| m.same_partition(first))
                    .count();
            match self.plan_run(source, &burst[start..end]) {
                Ok(run) => runs.push(run),
                Err(err) => {
                    self.ctx.failure.set(err);
                    return;
                }
            }
            start = end;
        }
        let mut outgoing = self.outgoing();
        let mut events = burst.into_iter();
        for run in runs {
            events.by_ref().take(run.dropped).for_each(drop);
            if let Some(plan) = &run.plan {
                plan.hand_out(events.by_ref().take(run.handed), &mut outgoing);
            }
            if run.held > 0 {
                if let Some(slot) = self.slots.get_mut(&run.tp) {
                    slot.held.extend(events.by_ref().take(run.held));
                }
            }
        }
        self.send(outgoing);
    }

    /// What becomes of `events` (consecutive events of one partition): dropped (not ours, or
    /// below an exactly-once table's stored offset), handed out as one unit (planned and
    /// registered now), or held behind a full partition (paused here).
    fn plan_run(&mut self, source: &impl Source, events: &[Message]) -> Result<Run, String> {
        let tp = TopicPartition::new(events[0].topic(), events[0].partition());
        let released = self.released_in_turn.contains(&tp);
        let Some(slot) = self.slots.get_mut(&tp).filter(|_| !released) else {
            return Ok(Run {
                tp,
                dropped: events.len(),
                handed: 0,
                held: 0,
                plan: None,
            });
        };
        let dropped = events
            .iter()
            .take_while(|m| m.offset() < slot.skip_below)
            .count();
        let room = if slot.paused {
            0
        } else {
            let in_flight = slot.in_flight.load(AtomicOrdering::Acquire);
            self.settings.capacity.saturating_sub(in_flight)
        };
        let handed = room.min(events.len() - dropped);
        let held = events.len() - dropped - handed;
        if held > 0 && !slot.paused {
            if let Err(err) = source.pause(&tp) {
                tracing::warn!(partition = %tp, "pause failed: {err}");
            }
            slot.paused = true;
            self.ctx.telemetry.emit(PartitionPaused { tp: &tp });
        }
        let plan = if handed > 0 {
            Some(Plan::new(
                &mut lock(&self.ctx.tracker),
                self.settings.ordering,
                &mut self.next_worker,
                &tp,
                (&slot.workers, &slot.in_flight),
                &events[dropped..dropped + handed],
            )?)
        } else {
            None
        };
        Ok(Run {
            tp,
            dropped,
            handed,
            held,
            plan,
        })
    }

    /// Hands held events of paused partitions to their workers once their workers are down to
    /// half the partition's capacity (then up to the capacity, in one unit), and resumes a
    /// partition once everything it held is handed over and its workers are down to half its
    /// capacity again: a slow partition neither flaps between pause and resume nor trickles out
    /// in small units.
    pub(crate) fn release_held(&mut self, source: &impl Source) {
        let capacity = self.settings.capacity;
        let mut outgoing = self.outgoing();
        let paused: Vec<TopicPartition> = self
            .slots
            .iter()
            .filter(|(_, s)| s.paused && !s.restoring)
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in paused {
            let Some(slot) = self.slots.get_mut(&tp) else {
                continue;
            };
            let in_flight = slot.in_flight.load(AtomicOrdering::Acquire);
            if in_flight > capacity / 2 {
                continue;
            }
            let take = (capacity - in_flight).min(slot.held.len());
            if take > 0 {
                let events: Vec<Message> = slot.held.drain(..take).collect();
                let planned = Plan::new(
                    &mut lock(&self.ctx.tracker),
                    self.settings.ordering,
                    &mut self.next_worker,
                    &tp,
                    (&slot.workers, &slot.in_flight),
                    &events,
                );
                match planned {
                    Ok(plan) => plan.hand_out(events.into_iter(), &mut outgoing),
                    Err(err) => {
                        self.ctx.failure.set(err);
                        return;
                    }
                }
            }
            if slot.held.is_empty() && slot.in_flight.load(AtomicOrdering::Acquire) <= capacity / 2
            {
                match source.resume(&tp) {
                    Ok(()) => slot.paused = false,
                    Err(err) => tracing::warn!(partition = %tp, "resume failed: {err}"),
                }
            }
        }
        self.send(outgoing);
    }

    /// One outgoing list per worker.
    fn outgoing(&self) -> Vec<Vec<Delivery>> {
        (0..self.workers.len()).map(|_| Vec::new()).collect()
    }

    /// Sends each worker its events in one message.
    fn send(&self, outgoing: Vec<Vec<Delivery>>) {
        for (worker, events) in outgoing.into_iter().enumerate() {
            if !events.is_empty() {
                self.workers.events(worker, events);
            }
        }
    }

    /// Every worker flushes ahead of its queued events (the commit cycle's round).
    pub(crate) fn flush_round(&self) -> Vec<std::sync::mpsc::Receiver<()>> {
        self.workers.flush_round()
    }

    /// Releases `partitions` (a revoke): their workers finish what is queued, call `revoked`
    /// and flush, the sinks acknowledge what they emitted (all bounded by the drain timeout),
    /// the positions after their complete units are committed (into the open transaction with
    /// Kafka transactions) and their state is closed; then they are forgotten. Returns the
    /// units of them still incomplete when it ended (the drain timeout ran out, or a fatal error
    /// stopped them): their offsets were not committed.
    pub(crate) fn release(&mut self, source: &impl Source, partitions: &[TopicPartition]) -> usize {
        *lock(&self.shown) = self.live();
        self.stop_restores(partitions);
        let per_worker = self.forget(partitions);
        if per_worker.is_empty() {
            return 0;
        }
        let into_transaction = self.ctx.transactions.is_some();
        self.ctx.telemetry.emit(PartitionsRevoked {
            partitions,
            into_transaction,
        });
        if into_transaction {
            return self.release_in_transaction(source, partitions, per_worker);
        }
        let deadline = Instant::now() + self.settings.drain_timeout;
        let replies: Vec<_> = per_worker
            .into_iter()
            .map(|(worker, parts)| self.workers.revoke(worker, parts))
            .collect();
        for rx in replies {
            let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        // Wait for the sinks to acknowledge what the released partitions emitted.
        let incomplete = loop {
            let in_flight: usize = {
                let tracker = lock(&self.ctx.tracker);
                partitions.iter().map(|tp| tracker.in_flight(tp)).sum()
            };
            // After a fatal error the failing unit never completes: commit what is complete now.
            let failed = self.ctx.failure.is_set();
            if in_flight == 0 || failed || Instant::now() >= deadline {
                if in_flight > 0 && !failed {
                    tracing::warn!(in_flight, "drain timeout: committing only what is complete");
                }
                break in_flight;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let commits: Vec<(TopicPartition, i64)> = {
            let mut tracker = lock(&self.ctx.tracker);
            partitions
                .iter()
                .filter_map(|tp| tracker.revoke(tp).map(|o| (tp.clone(), o)))
                .collect()
        };
        let committed = match source.commit(&commits) {
            Ok(kept) => {
                if kept {
                    self.ctx.telemetry.emit(OffsetsCommitted {
                        commits: &commits,
                        point: CommitPoint::Release,
                        released: partitions,
                    });
                }
                true
            }
            Err(err) => {
                self.ctx.telemetry.emit(CommitFailed {
                    error: &err,
                    retried: false,
                });
                false
            }
        };
        if let Some(state) = &self.ctx.state {
            let clean = committed && incomplete == 0 && !self.ctx.failure.is_set();
            state.close(partitions, clean);
        }
        incomplete
    }

    /// Transactions: the released partitions' workers call `revoked` and flush, then the open
    /// transaction commits with every partition's offsets (the released ones' too).
    fn release_in_transaction(
        &mut self,
        source: &impl Source,
        partitions: &[TopicPartition],
        per_worker: HashMap<usize, Vec<TopicPartition>>,
    ) -> usize {
        for (worker, parts) in per_worker {
            // The commit point's barrier waits for these too.
            drop(self.workers.revoke(worker, parts));
        }
        let committed = match self.commit_point(source) {
            Ok(()) => true,
            Err(err) => {
                self.ctx
                    .failure
                    .set(format!("transaction commit on revoke failed: {err}"));
                false
            }
        };
        let incomplete = {
            let mut tracker = lock(&self.ctx.tracker);
            let incomplete = partitions.iter().map(|tp| tracker.in_flight(tp)).sum();
            for tp in partitions {
                tracker.revoke(tp);
            }
            incomplete
        };
        if let Some(state) = &self.ctx.state {
            state.close(partitions, committed && !self.ctx.failure.is_set());
        }
        incomplete
    }

    /// The stop: every partition is released (drained, flushed, acknowledged, committed);
    /// returns the units left incomplete.
    pub(crate) fn drain(&mut self, source: &impl Source, reason: StopReason) -> usize {
        let all = self.partitions();
        self.ctx.telemetry.emit(Draining {
            reason,
            partitions: &all,
        });
        self.release(source, &all)
    }

    /// Forgets the slots of `partitions` (their events still in this turn's burst are dropped)
    /// and returns which workers held which of them.
    fn forget(&mut self, partitions: &[TopicPartition]) -> HashMap<usize, Vec<TopicPartition>> {
        self.released_in_turn.extend(partitions.iter().cloned());
        let mut per_worker: HashMap<usize, Vec<TopicPartition>> = HashMap::new();
        for tp in partitions {
            if let Some(slot) = self.slots.remove(tp) {
                if let [worker] = slot.workers[..] {
                    self.load[worker] -= 1;
                }
                if slot.restoring {
                    continue; // its workers never heard of it
                }
                for worker in slot.workers {
                    per_worker.entry(worker).or_default().push(tp.clone());
                }
            }
        }
        per_worker
    }

    /// Transactions: a commit point. Every worker finishes what is queued and flushes, every
    /// record is delivered, so every dispatched event is complete; then the offsets after them
    /// go into the transaction, which commits. The source's loop waits meanwhile (bounded by the
    /// drain timeout). On failure the transaction is aborted.
    pub(crate) fn commit_point(&self, source: &impl Source) -> Result<(), String> {
        let Some(sink) = &self.ctx.transactions else {
            return Ok(());
        };
        let timeout = self.settings.drain_timeout;
        let deadline = Instant::now() + timeout;
        let replies: Vec<_> = (0..self.workers.len())
            .map(|w| self.workers.barrier(w))
            .collect();
        for rx in replies {
            if rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_err()
            {
                let _ = sink.abort_transaction(timeout);
                return Err(
                    "workers did not finish within the drain timeout: transaction aborted".into(),
                );
            }
        }
        if self.ctx.failure.is_set()
            || sink
                .flush(deadline.saturating_duration_since(Instant::now()))
                .is_err()
        {
            let _ = sink.abort_transaction(timeout);
            return Err("not every record was delivered: transaction aborted".into());
        }
        let commits = {
            let mut tracker = lock(&self.ctx.tracker);
            if tracker.total_in_flight() > 0 {
                drop(tracker);
                let _ = sink.abort_transaction(timeout);
                return Err(
                    "events still incomplete at the commit point: transaction aborted".into(),
                );
            }
            tracker.take_commits()
        };
        source.commit_transaction(sink, &commits, timeout)?;
        lock(&self.ctx.tracker).commit_confirmed(&commits);
        self.ctx.telemetry.emit(OffsetsCommitted {
            commits: &commits,
            point: CommitPoint::Transaction,
            released: &[],
        });
        Ok(())
    }

    /// Resizes the pool to the worker count `cpu` asks for (see `resize`).
    pub(crate) fn resize(&mut self, cpu: CpuLimit) {
        resize::follow(self, cpu);
    }

    /// What `/status` shows of the partitions.
    fn live(&self) -> Vec<PartitionLive> {
        self.slots
            .iter()
            .map(|(tp, slot)| PartitionLive {
                tp: tp.clone(),
                workers: slot.workers.clone(),
                in_flight: slot.in_flight.load(AtomicOrdering::Acquire),
                held: slot.held.len(),
                paused: slot.paused,
                restoring: slot.restoring,
            })
            .collect()
    }
}

/// What `/status` and the sampled gauges read of a dispatcher: its slots, without waiting long
/// for the lock (a release holds it while it drains: then the last reading is shown, the
/// partitions being released among them).
pub(crate) fn partition_view<W: Workers + Send + 'static>(
    dispatcher: &Arc<Mutex<Dispatcher<W>>>,
) -> PartitionView {
    let last = lock(dispatcher).shown.clone();
    let dispatcher = Arc::downgrade(dispatcher);
    Box::new(move || {
        let Some(dispatcher) = dispatcher.upgrade() else {
            return Vec::new();
        };
        let deadline = Instant::now() + Duration::from_millis(50);
        loop {
            match dispatcher.try_lock() {
                Ok(d) => {
                    let live = d.live();
                    live.clone_into(&mut lock(&last));
                    return live;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return lock(&last).clone(),
            }
        }
    })
}
