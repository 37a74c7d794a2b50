//! Following the CPU quota: when the container's CPU quota asks for another worker count (the
//! source's loop re-reads it every few seconds, `cpu::CpuWatch`), the pool is resized (Grab's
//! GOMAXPROCS lesson, made live for in-place pod resizes).
//!
//! A partition moves between workers only at a unit boundary. With `ordering: partition` its
//! old worker gives it up ahead of its queue (a handoff, served after the plugin call it is in):
//! it calls `revoked` and flushes (so everything it derived is emitted and its units are marked
//! processed) and hands back the partition's events still queued, unprocessed; the new worker
//! gets `assigned`, then those events in order, then the next ones. So a resize waits for one
//! plugin call, not for a deep queue. With `ordering: key | none` every worker holds every
//! partition and a unit is split over them: every worker hands every partition back the same
//! way, and the returned events are spread again over the new set of workers (which gets
//! `assigned`), each unit's parts counted anew in the tracker.
//!
//! Resizing runs on the source's thread, the only thread that hands events to workers, so nothing
//! reaches a worker mid-move; events held for a paused partition go to its new worker. Offsets
//! are untouched (the tracker counts units, not workers): nothing is lost or committed early.

use std::collections::HashMap;
use std::time::Instant;

use super::Dispatcher;
use super::units::key_worker;
use crate::config::Ordering;
use crate::cpu::CpuLimit;
use crate::offsets::{TopicPartition, UnitId};
use crate::pool::Workers;
use crate::status::Capacity;
use crate::sync::lock;
use crate::telemetry::WorkersResized;
use crate::worker::Delivery;

/// Resizes the pool to the worker count `cpu` asks for, moving partitions between workers
/// first (see the module docs). Nothing happens if the count is already right. A worker that
/// cannot be opened stops the growth there (logged); the pool keeps what it has.
pub(crate) fn follow<W: Workers>(d: &mut Dispatcher<W>, cpu: CpuLimit) {
    let from = d.workers.len();
    let wanted = cpu.workers();
    d.ctx
        .telemetry
        .metrics
        .cpu_quota_cores
        .set(cpu.quota_cpus.unwrap_or(0.0));
    if wanted == from || from == 0 {
        return;
    }
    let started = Instant::now();
    let mut to = wanted;
    while d.workers.len() < to {
        if let Err(err) = d.workers.grow(to) {
            tracing::warn!("cannot add a worker to follow the CPU quota: {err}");
            to = d.workers.len();
        }
    }
    if to == from {
        return; // nothing could be added: the pool stays as it is
    }
    let moved = match d.settings.ordering {
        Ordering::Partition => rebalance_pinned(d, to),
        Ordering::Key | Ordering::None => respread(d, from, to),
    };
    while d.workers.len() > to {
        d.workers.shrink();
    }
    d.load.truncate(to);
    d.next_worker = 0;
    d.ctx.telemetry.health.set_capacity(Capacity {
        workers: to,
        cpu_quota: cpu.quota_cpus,
        host_cpus: cpu.host_cpus,
    });
    d.ctx.telemetry.emit(WorkersResized {
        from,
        to,
        quota_cpus: cpu.quota_cpus,
        moved,
        took: started.elapsed(),
    });
}

/// `ordering: partition`: the partitions of workers at or above `to` move to the least loaded
/// remaining workers, then partitions move from the most to the least loaded worker until no two
/// differ by more than one. Returns how many moved.
fn rebalance_pinned<W: Workers>(dispatch: &mut Dispatcher<W>, to: usize) -> usize {
    dispatch.load.resize(dispatch.load.len().max(to), 0);
    let mut pinned: Vec<(TopicPartition, usize)> = dispatch
        .slots
        .iter()
        .filter_map(|(tp, slot)| slot.workers.first().map(|w| (tp.clone(), *w)))
        .collect();
    pinned.sort();
    let plan = plan_moves(&pinned, to);
    if plan.is_empty() {
        return 0;
    }
    // Each old worker gives its moving partitions up ahead of its queue (after the plugin call
    // it is in): `revoked`, flush, and back come their queued events, still unprocessed.
    let mut leaving: HashMap<usize, Vec<TopicPartition>> = HashMap::new();
    for (tp, from, _) in &plan {
        leaving.entry(*from).or_default().push(tp.clone());
    }
    let mut queued: HashMap<TopicPartition, Vec<Delivery>> = HashMap::new();
    for (worker, partitions) in leaving {
        let Some(reply) = dispatch.workers.handoff(worker, partitions) else {
            continue;
        };
        for delivery in reply.recv().unwrap_or_default() {
            let tp = TopicPartition::new(delivery.message.topic(), delivery.message.partition());
            queued.entry(tp).or_default().push(delivery);
        }
    }
    // The new worker gets `assigned`, then those events, then whatever comes next.
    let moved = plan.len();
    let mut arriving: HashMap<usize, (Vec<TopicPartition>, Vec<Delivery>)> = HashMap::new();
    for (tp, from, to) in plan {
        if let Some(slot) = dispatch.slots.get_mut(&tp) {
            slot.workers = vec![to];
            dispatch.load[from] -= 1;
            dispatch.load[to] += 1;
        }
        let entry = arriving.entry(to).or_default();
        entry.1.extend(queued.remove(&tp).unwrap_or_default());
        entry.0.push(tp);
    }
    for (worker, (partitions, events)) in arriving {
        dispatch.workers.assigned(worker, partitions);
        send_by_unit(&dispatch.workers, worker, events);
    }
    moved
}

/// Which pinned partitions move where so that `to` workers share them evenly, moving as few as
/// possible: `(partition, from, to)`.
pub(crate) fn plan_moves(
    pinned: &[(TopicPartition, usize)],
    to: usize,
) -> Vec<(TopicPartition, usize, usize)> {
    let mut load = vec![0usize; to];
    let mut keep: Vec<(TopicPartition, usize)> = Vec::new();
    let mut homeless = Vec::new();
    for (tp, w) in pinned {
        if *w < to {
            load[*w] += 1;
            keep.push((tp.clone(), *w));
        } else {
            homeless.push((tp.clone(), *w));
        }
    }
    let least = |load: &[usize]| (0..load.len()).min_by_key(|w| load[*w]).unwrap_or(0);
    let mut moves = Vec::new();
    for (tp, from) in homeless {
        let target = least(&load);
        load[target] += 1;
        moves.push((tp, from, target));
    }
    // Even out: take from the most loaded worker while it has two more than the least.
    loop {
        let max = (0..to)
            .max_by_key(|w| (load[*w], usize::MAX - *w))
            .unwrap_or(0);
        let min = least(&load);
        if load[max] < load[min] + 2 {
            break;
        }
        let Some(i) = keep.iter().rposition(|(_, w)| *w == max) else {
            break;
        };
        let (tp, from) = keep.remove(i);
        load[max] -= 1;
        load[min] += 1;
        moves.push((tp, from, min));
    }
    moves
}

/// `ordering: key | none`: every partition's events are spread over every worker, so a new
/// count moves them all. Every current worker gives every partition up ahead of its queue
/// (`revoked`, flush, its queued events back); the `to` workers get `assigned`, then the
/// returned events, spread again by key (or evenly) in offset order, each unit's parts counted
/// anew. Returns how many partitions moved.
fn respread<W: Workers>(dispatch: &mut Dispatcher<W>, from: usize, to: usize) -> usize {
    let mut all: Vec<TopicPartition> = dispatch.slots.keys().cloned().collect();
    all.sort();
    if all.is_empty() {
        return 0;
    }
    let replies: Vec<_> = (0..from)
        .filter_map(|w| dispatch.workers.handoff(w, all.clone()))
        .collect();
    // Per unit: its returned events and how many workers returned part of it.
    let mut returned: HashMap<(TopicPartition, UnitId), (u32, Vec<Delivery>)> = HashMap::new();
    for reply in replies {
        let mut parts: HashMap<(TopicPartition, UnitId), Vec<Delivery>> = HashMap::new();
        for delivery in reply.recv().unwrap_or_default() {
            let tp = TopicPartition::new(delivery.message.topic(), delivery.message.partition());
            parts.entry((tp, delivery.unit)).or_default().push(delivery);
        }
        for (key, events) in parts {
            let entry = returned.entry(key).or_default();
            entry.0 += 1;
            entry.1.extend(events);
        }
    }
    for slot in dispatch.slots.values_mut() {
        slot.workers = (0..to).collect();
    }
    for worker in 0..to {
        dispatch.workers.assigned(worker, all.clone());
    }
    let mut outgoing: Vec<Vec<Delivery>> = (0..to).map(|_| Vec::new()).collect();
    let mut units: Vec<_> = returned.into_iter().collect();
    units.sort_by_key(|((tp, _), (_, events))| {
        (tp.clone(), events.iter().map(|d| d.message.offset()).min())
    });
    let mut tracker = lock(&dispatch.ctx.tracker);
    for (i, ((tp, unit), (removed, mut events))) in units.into_iter().enumerate() {
        events.sort_by_key(|d| d.message.offset());
        let mut added = vec![false; to];
        for delivery in events {
            let worker = match dispatch.settings.ordering {
                Ordering::Key => key_worker(&delivery.message, to),
                _ => i % to,
            };
            added[worker] = true;
            outgoing[worker].push(delivery);
        }
        let added = added.iter().filter(|a| **a).count() as u32;
        tracker.repart(&tp, unit, removed, added);
    }
    drop(tracker);
    for (worker, events) in outgoing.into_iter().enumerate() {
        send_by_unit(&dispatch.workers, worker, events);
    }
    all.len()
}

/// Sends returned events one unit per inbox message, as they were first sent: a worker serves
/// flushes and handoffs between messages, so one message must not hold a whole backlog.
fn send_by_unit(workers: &impl Workers, worker: usize, events: Vec<Delivery>) {
    let mut chunk: Vec<Delivery> = Vec::new();
    for delivery in events {
        if chunk.last().is_some_and(|last| {
            last.unit != delivery.unit || last.message.partition() != delivery.message.partition()
        }) {
            workers.events(worker, std::mem::take(&mut chunk));
        }
        chunk.push(delivery);
    }
    if !chunk.is_empty() {
        workers.events(worker, chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned(workers: &[usize]) -> Vec<(TopicPartition, usize)> {
        workers
            .iter()
            .enumerate()
            .map(|(p, w)| (TopicPartition::new("t", p as i32), *w))
            .collect()
    }

    fn after(pinned: &[(TopicPartition, usize)], to: usize) -> (Vec<usize>, usize) {
        let moves = plan_moves(pinned, to);
        let mut load = vec![0; to];
        for (tp, w) in pinned {
            let w = moves
                .iter()
                .find(|(m, _, _)| m == tp)
                .map_or(*w, |(_, _, to)| *to);
            load[w] += 1;
        }
        (load, moves.len())
    }

    #[test]
    fn growing_moves_only_what_the_new_workers_need() {
        // 12 partitions on 2 workers, 6 each; to 3 workers: 4 each, 4 moves (2 from each).
        let p = pinned(&[0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
        let (load, moves) = after(&p, 3);
        assert_eq!(load, vec![4, 4, 4]);
        assert_eq!(moves, 4);
    }

    #[test]
    fn shrinking_moves_the_leaving_workers_partitions_and_evens_out() {
        // 5 partitions on 3 workers (2, 2, 1); to 2 workers: worker 2's one moves, 3 and 2.
        let p = pinned(&[0, 1, 2, 0, 1]);
        let (load, moves) = after(&p, 2);
        assert_eq!(load.iter().sum::<usize>(), 5);
        assert!(load.iter().max().unwrap() - load.iter().min().unwrap() <= 1);
        assert_eq!(moves, 1);
        // To one worker: everything ends on worker 0.
        let (load, moves) = after(&p, 1);
        assert_eq!((load, moves), (vec![5], 3));
    }

    #[test]
    fn a_balanced_pool_of_the_same_size_moves_nothing() {
        let p = pinned(&[0, 1, 0, 1]);
        assert!(plan_moves(&p, 2).is_empty());
        assert!(plan_moves(&[], 4).is_empty());
    }
}
