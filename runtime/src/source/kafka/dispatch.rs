//! Dispatch: the partitions a pipeline owns (`Slot`s), how a burst of events becomes offset
//! units handed to the workers (`hand_out`, by `ordering`), pausing a full partition and
//! releasing what it held, and what `/status` reads of it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::consumer::tpl_of;
use super::rebalance::RebalanceContext;
use crate::config::Ordering;
use crate::fatal::Fatal;
use crate::message::Message;
use crate::offsets::{OffsetTracker, TopicPartition};
use crate::pool::WorkerPool;
use crate::sink::kafka::KafkaSink;
use crate::status::PartitionLive;
use crate::telemetry::{PartitionPaused, Telemetry};
use crate::worker::{Command, Delivery};

/// One assigned partition, as the dispatcher sees it.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The workers its events may go to: one with `ordering: partition`, else all of them.
    pub(crate) workers: Vec<usize>,
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// Events read while the partition was full, in order; the partition is paused meanwhile.
    pub(crate) held: VecDeque<Message>,
    pub(crate) paused: bool,
    /// Exactly-once: events below this offset are already in the database; they are read and
    /// dropped.
    pub(crate) skip_below: i64,
}

/// Exactly-once: reads where each partition resumes (the offsets stored with the rows).
pub(crate) type ResumeFrom = Box<dyn Fn() -> Result<HashMap<TopicPartition, i64>, String> + Send>;

/// Dispatch state, shared with the rebalance callbacks (which run inside `poll`).
pub(crate) struct Dispatch {
    pub(crate) slots: HashMap<TopicPartition, Slot>,
    /// Partitions pinned to each worker (`ordering: partition`).
    pub(crate) load: Vec<usize>,
    /// The workers' inboxes, by id (refreshed when the pool is resized).
    pub(crate) workers: Vec<mpsc::Sender<Command>>,
    /// The pool itself, to grow and shrink (`resize`).
    pub(crate) pool: Arc<Mutex<WorkerPool>>,
    pub(crate) ordering: Ordering,
    /// Rotates the first worker of `ordering: none` hand-outs.
    pub(crate) next_worker: usize,
    pub(crate) tracker: Arc<Mutex<OffsetTracker>>,
    pub(crate) failure: Fatal,
    pub(crate) drain_timeout: Duration,
    /// Partitions revoked since the current poll burst began.
    pub(crate) revoked_log: Vec<TopicPartition>,
    /// Exactly-once outputs: where assigned partitions resume.
    pub(crate) resume_from: Option<ResumeFrom>,
    /// Kafka transactions: the producer whose transaction carries the offsets.
    pub(crate) transactions: Option<Arc<KafkaSink>>,
    pub(crate) telemetry: Arc<Telemetry>,
    /// The state stores: opened (restored) on assign, closed on revoke.
    pub(crate) state: Option<Arc<crate::state::StateStores>>,
}

/// What `/status` and the sampled gauges read of the dispatcher: its slots, without waiting
/// long for the lock (a revoke holds it while it drains: then the last reading is shown).
pub(crate) fn partition_view(dispatch: Weak<Mutex<Dispatch>>) -> crate::status::PartitionView {
    let last: Mutex<Vec<PartitionLive>> = Mutex::default();
    Box::new(move || {
        let Some(dispatch) = dispatch.upgrade() else {
            return Vec::new();
        };
        let deadline = Instant::now() + Duration::from_millis(50);
        loop {
            match dispatch.try_lock() {
                Ok(d) => {
                    let live: Vec<PartitionLive> = d
                        .slots
                        .iter()
                        .map(|(tp, slot)| PartitionLive {
                            tp: tp.clone(),
                            workers: slot.workers.clone(),
                            in_flight: slot.in_flight.load(AtomicOrdering::Acquire),
                            held: slot.held.len(),
                            paused: slot.paused,
                        })
                        .collect();
                    live.clone_into(&mut last.lock().unwrap_or_else(|e| e.into_inner()));
                    return live;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            }
        }
    })
}

/// Hands `messages` (consecutive events of `tp`, in offset order) to the slot's workers as one
/// offset unit: all to the pinned worker, by key hash, or spread evenly, per the ordering. Returns
/// the events per worker.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hand_out(
    tracker: &mut OffsetTracker,
    ordering: Ordering,
    next_worker: &mut usize,
    tp: &TopicPartition,
    slot: &Slot,
    messages: Vec<Message>,
    outgoing: &mut [Vec<Delivery>],
) -> Result<(), String> {
    let Some(last) = messages.last() else {
        return Ok(());
    };
    let n = slot.workers.len().max(1);
    let len = messages.len();
    let target = |i: usize, m: &Message| -> usize {
        match ordering {
            Ordering::Partition => 0,
            Ordering::Key => key_worker(m, n),
            Ordering::None => (*next_worker + i / len.div_ceil(n)) % n,
        }
    };
    let targets: Vec<usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| slot.workers[target(i, m)])
        .collect();
    if ordering == Ordering::None {
        *next_worker = (*next_worker + 1) % n;
    }
    let mut parts: Vec<usize> = targets.clone();
    parts.sort_unstable();
    parts.dedup();
    let unit = tracker
        .begin_parts(tp, last.offset(), parts.len() as u32)
        .map_err(|e| format!("offset bookkeeping: {e}"))?;
    slot.in_flight.fetch_add(len, AtomicOrdering::AcqRel);
    for (message, worker) in messages.into_iter().zip(targets) {
        outgoing[worker].push(Delivery {
            message,
            unit,
            in_flight: slot.in_flight.clone(),
        });
    }
    Ok(())
}

/// `ordering: key`: which of `n` workers an event goes to, by its key's hash.
pub(crate) fn key_worker(m: &Message, n: usize) -> usize {
    match m.key() {
        Some(key) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            (h.finish() % n as u64) as usize
        }
        // Null keys are one key: they keep their order among themselves.
        None => m.partition().unsigned_abs() as usize % n,
    }
}

/// Dispatches a burst of events to the workers, one offset unit per partition, pausing full
/// partitions. Events of a partition revoked during the burst are dropped: whoever owns it now
/// reads them again from the committed offset.
pub(crate) fn dispatch_burst(
    consumer: &BaseConsumer<RebalanceContext>,
    dispatch: &Mutex<Dispatch>,
    burst: Vec<Message>,
    capacity: usize,
) {
    if burst.is_empty() {
        return;
    }
    let mut d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
    let Dispatch {
        slots,
        workers,
        revoked_log,
        ordering,
        next_worker,
        tracker,
        failure,
        telemetry,
        ..
    } = &mut *d;
    // Accepted events per partition, in offset order; partitions in first-seen order.
    let mut accepted: Vec<(TopicPartition, Vec<Message>)> = Vec::new();
    let mut tp = TopicPartition::new(String::new(), -1);
    let mut index = 0;
    for message in burst {
        // Consecutive events mostly share a partition: look it up only when it changes.
        if tp.partition != message.partition() || tp.topic != message.topic() {
            tp = TopicPartition::new(message.topic(), message.partition());
            index = match accepted.iter().position(|(t, _)| *t == tp) {
                Some(i) => i,
                None => {
                    accepted.push((tp.clone(), Vec::new()));
                    accepted.len() - 1
                }
            };
        }
        if revoked_log.contains(&tp) {
            continue;
        }
        let Some(slot) = slots.get_mut(&tp) else {
            continue; // not (or no longer) ours
        };
        if message.offset() < slot.skip_below {
            continue; // exactly-once: already in the database
        }
        let pending = slot.in_flight.load(AtomicOrdering::Acquire) + accepted[index].1.len();
        if slot.paused || pending >= capacity {
            if !slot.paused {
                if let Err(err) = consumer.pause(&tpl_of(&tp)) {
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, "pause failed: {err}");
                }
                slot.paused = true;
                telemetry.emit(PartitionPaused { tp: &tp });
            }
            slot.held.push_back(message);
            continue;
        }
        accepted[index].1.push(message);
    }
    let mut outgoing: Vec<Vec<Delivery>> = workers.iter().map(|_| Vec::new()).collect();
    let mut tracker = tracker.lock().unwrap_or_else(|e| e.into_inner());
    for (tp, messages) in accepted {
        let Some(slot) = slots.get(&tp) else { continue };
        if let Err(err) = hand_out(
            &mut tracker,
            *ordering,
            next_worker,
            &tp,
            slot,
            messages,
            &mut outgoing,
        ) {
            failure.set(err);
            return;
        }
    }
    drop(tracker);
    for (worker, events) in outgoing.into_iter().enumerate() {
        if !events.is_empty() {
            let _ = workers[worker].send(Command::Events(events));
        }
    }
}

/// Hands held events of paused partitions to their workers as room frees up, and resumes a
/// partition once everything it held is handed over.
pub(crate) fn release_held(
    consumer: &BaseConsumer<RebalanceContext>,
    dispatch: &Mutex<Dispatch>,
    capacity: usize,
) {
    let mut d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
    let Dispatch {
        slots,
        workers,
        ordering,
        next_worker,
        tracker,
        failure,
        ..
    } = &mut *d;
    let mut outgoing: Vec<Vec<Delivery>> = workers.iter().map(|_| Vec::new()).collect();
    for (tp, slot) in slots.iter_mut().filter(|(_, s)| s.paused) {
        let room = capacity.saturating_sub(slot.in_flight.load(AtomicOrdering::Acquire));
        let take = room.min(slot.held.len());
        if take > 0 {
            let messages: Vec<Message> = slot.held.drain(..take).collect();
            let mut tracker = tracker.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(err) = hand_out(
                &mut tracker,
                *ordering,
                next_worker,
                tp,
                slot,
                messages,
                &mut outgoing,
            ) {
                failure.set(err);
                return;
            }
        }
        // Resume at half capacity, so a slow partition does not flap between pause and resume.
        if slot.held.is_empty() && slot.in_flight.load(AtomicOrdering::Acquire) <= capacity / 2 {
            match consumer.resume(&tpl_of(tp)) {
                Ok(()) => slot.paused = false,
                Err(err) => {
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, "resume failed: {err}")
                }
            }
        }
    }
    for (worker, events) in outgoing.into_iter().enumerate() {
        if !events.is_empty() {
            let _ = workers[worker].send(Command::Events(events));
        }
    }
}
