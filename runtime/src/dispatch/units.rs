//! Offset units: a partition's consecutive events handed out together, registered in the
//! tracker as one unit with one part per worker that gets some of them. Which worker an event
//! goes to follows the pipeline's `ordering`: the partition's pinned worker, its key's hash, or
//! evenly in order. A unit is planned on its events by reference ([`Plan`]), then its events are
//! moved once, into their workers' outgoing lists.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use crate::config::Ordering;
use crate::message::Message;
use crate::offsets::{OffsetTracker, TopicPartition, UnitId};
use crate::worker::Delivery;

/// Which worker each event of a unit goes to.
#[derive(Debug)]
enum Targets {
    /// All to one worker (`ordering: partition`, or a single worker).
    One,
    /// Evenly in order: consecutive chunks of `chunk` events, the first to worker `first`.
    Chunks { first: usize, chunk: usize },
    /// By key hash, per event (`ordering: key`).
    Keys(Vec<u16>),
}

/// A planned unit: registered in the tracker, its events' workers decided.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The partition's workers (worker ids).
    workers: Vec<usize>,
    targets: Targets,
    unit: UnitId,
    in_flight: Arc<AtomicUsize>,
}

impl Plan {
    /// Plans `events` (consecutive events of `tp`, in offset order, at least one) over the
    /// partition's `workers` per the ordering, registers them in the tracker as one unit with a
    /// part per worker that gets any, and counts them in flight.
    pub(crate) fn new(
        tracker: &mut OffsetTracker,
        ordering: Ordering,
        next_worker: &mut usize,
        tp: &TopicPartition,
        (workers, in_flight): (&[usize], &Arc<AtomicUsize>),
        events: &[Message],
    ) -> Result<Plan, String> {
        let last = events.last().map_or(-1, Message::offset);
        let n = workers.len().max(1);
        let (targets, parts) = match ordering {
            _ if n == 1 => (Targets::One, 1),
            Ordering::Partition => (Targets::One, 1),
            Ordering::None => {
                let chunk = events.len().div_ceil(n);
                let first = *next_worker;
                *next_worker = (*next_worker + 1) % n;
                (
                    Targets::Chunks { first, chunk },
                    events.len().div_ceil(chunk),
                )
            }
            Ordering::Key => {
                let keys: Vec<u16> = events.iter().map(|m| key_worker(m, n) as u16).collect();
                let mut used = vec![false; n];
                keys.iter().for_each(|k| used[usize::from(*k)] = true);
                (Targets::Keys(keys), used.iter().filter(|u| **u).count())
            }
        };
        let unit = tracker
            .begin_parts(tp, last, parts as u32)
            .map_err(|e| format!("offset bookkeeping: {e}"))?;
        in_flight.fetch_add(events.len(), AtomicOrdering::AcqRel);
        Ok(Plan {
            workers: workers.to_vec(),
            targets,
            unit,
            in_flight: in_flight.clone(),
        })
    }

    /// Moves the unit's events (in the order planned) into their workers' outgoing lists.
    pub(crate) fn hand_out(
        &self,
        events: impl Iterator<Item = Message>,
        outgoing: &mut [Vec<Delivery>],
    ) {
        let n = self.workers.len().max(1);
        for (i, message) in events.enumerate() {
            let at = match &self.targets {
                Targets::One => 0,
                Targets::Chunks { first, chunk } => (first + i / chunk) % n,
                Targets::Keys(keys) => usize::from(keys[i]),
            };
            outgoing[self.workers[at]].push(Delivery {
                message,
                unit: self.unit,
                in_flight: self.in_flight.clone(),
            });
        }
    }
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
