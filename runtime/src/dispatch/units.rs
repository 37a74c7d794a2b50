//! Offset units: a partition's consecutive events handed out together, registered in the
//! tracker as one unit with one part per worker that gets some of them. Which worker an event
//! goes to follows the pipeline's `ordering`: the partition's pinned worker, its key's hash, or
//! evenly in order.

use std::sync::atomic::Ordering as AtomicOrdering;

use super::Slot;
use crate::config::Ordering;
use crate::message::Message;
use crate::offsets::{OffsetTracker, TopicPartition};
use crate::worker::Delivery;

/// Hands `messages` (consecutive events of `tp`, in offset order) to the slot's workers as one
/// offset unit: all to the pinned worker, by key hash, or spread evenly, per the ordering. Returns
/// the events per worker.
#[allow(clippy::too_many_arguments)] // the dispatcher's fields, borrowed apart
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
