//! The dispatcher driven by a fake source (records pauses, resumes and commits) and fake
//! workers (queue what they are sent; a flush, revoke or handoff processes it as a plugin
//! worker would): assign, hand-out by ordering, the capacity pause, release and drain, resize.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rdkafka::Timestamp;

use super::*;
use crate::message::Bytes;
use crate::offsets::UnitId;
use crate::sync::lock;

/// What the dispatcher asked of the source.
#[derive(Debug, Default)]
struct FakeSource {
    calls: Mutex<Vec<String>>,
    commits: Mutex<Vec<(TopicPartition, i64)>>,
}

impl FakeSource {
    fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

impl Source for FakeSource {
    fn pause(&self, tp: &TopicPartition) -> Result<(), String> {
        lock(&self.calls).push(format!("pause {tp}"));
        Ok(())
    }
    fn resume(&self, tp: &TopicPartition) -> Result<(), String> {
        lock(&self.calls).push(format!("resume {tp}"));
        Ok(())
    }
    fn commit(&self, commits: &[(TopicPartition, i64)]) -> Result<bool, String> {
        lock(&self.commits).extend(commits.iter().cloned());
        Ok(true)
    }
}

/// One fake worker: what it was told, and the events queued for it.
#[derive(Debug, Default)]
struct FakeWorker {
    assigned: Vec<TopicPartition>,
    revoked: Vec<TopicPartition>,
    queued: Vec<Delivery>,
    /// Units it had events of since its last flush.
    pending: HashSet<(TopicPartition, UnitId)>,
    /// Every event it processed: (partition, offset).
    seen: Vec<(i32, i64)>,
}

/// Workers that process their queue when asked to flush, revoke, hand off or stand at a barrier
/// (or when a test calls `process`), marking their parts of units processed as a real worker's
/// flush does.
#[derive(Debug)]
struct FakeWorkers {
    workers: Mutex<Vec<FakeWorker>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    /// A worker that never answers a revoke (a plugin stuck in a call).
    stuck: bool,
    /// The replies a stuck worker holds on to.
    unanswered: Mutex<Vec<mpsc::SyncSender<()>>>,
}

impl FakeWorkers {
    fn new(n: usize, tracker: Arc<Mutex<OffsetTracker>>) -> FakeWorkers {
        FakeWorkers {
            workers: Mutex::new((0..n).map(|_| FakeWorker::default()).collect()),
            tracker,
            stuck: false,
            unanswered: Mutex::default(),
        }
    }

    /// Worker `id` hands its queue to the plugin (events leave the in-flight count).
    fn process(&self, id: usize) {
        let mut workers = lock(&self.workers);
        let w = &mut workers[id];
        for d in std::mem::take(&mut w.queued) {
            d.in_flight.fetch_sub(1, AtomicOrdering::AcqRel);
            let tp = TopicPartition::new(d.message.topic(), d.message.partition());
            w.seen.push((tp.partition, d.message.offset()));
            w.pending.insert((tp, d.unit));
        }
    }

    /// Worker `id` processes its queue and flushes: its parts of units are processed.
    fn flush(&self, id: usize) {
        self.process(id);
        self.flush_pending(id);
    }

    /// The plugin's flush: the parts of units worker `id` has had are processed.
    fn flush_pending(&self, id: usize) {
        let mut workers = lock(&self.workers);
        let mut tracker = lock(&self.tracker);
        for (tp, unit) in workers[id].pending.drain() {
            tracker.processed(&tp, unit);
        }
    }

    fn with<T>(&self, id: usize, f: impl FnOnce(&FakeWorker) -> T) -> T {
        f(&lock(&self.workers)[id])
    }

    fn answered(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = tx.send(());
        rx
    }
}

impl Workers for FakeWorkers {
    fn len(&self) -> usize {
        lock(&self.workers).len()
    }
    fn events(&self, worker: usize, events: Vec<Delivery>) {
        lock(&self.workers)[worker].queued.extend(events);
    }
    fn assigned(&self, worker: usize, partitions: Vec<TopicPartition>) {
        lock(&self.workers)[worker].assigned.extend(partitions);
    }
    fn revoke(&self, worker: usize, partitions: Vec<TopicPartition>) -> mpsc::Receiver<()> {
        if self.stuck {
            let (tx, rx) = mpsc::sync_channel(1);
            lock(&self.unanswered).push(tx);
            return rx;
        }
        self.flush(worker);
        lock(&self.workers)[worker].revoked.extend(partitions);
        self.answered()
    }
    fn barrier(&self, worker: usize) -> mpsc::Receiver<()> {
        self.flush(worker);
        self.answered()
    }
    fn flush_round(&self) -> Vec<mpsc::Receiver<()>> {
        (0..self.len())
            .map(|w| {
                self.flush(w);
                self.answered()
            })
            .collect()
    }
    fn handoff(
        &self,
        worker: usize,
        partitions: Vec<TopicPartition>,
    ) -> Option<mpsc::Receiver<Vec<Delivery>>> {
        let mut workers = lock(&self.workers);
        let w = workers.get_mut(worker)?;
        // Their queued events go back unprocessed; then `revoked` and the flush.
        let (theirs, ours): (Vec<Delivery>, Vec<Delivery>) =
            std::mem::take(&mut w.queued).into_iter().partition(|d| {
                partitions
                    .iter()
                    .any(|tp| tp.partition == d.message.partition())
            });
        w.queued = ours;
        w.revoked.extend(partitions);
        drop(workers);
        self.flush_pending(worker);
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = tx.send(theirs);
        Some(rx)
    }
    fn grow(&mut self, _of: usize) -> Result<(), String> {
        lock(&self.workers).push(FakeWorker::default());
        Ok(())
    }
    fn shrink(&mut self) {
        let gone = lock(&self.workers).pop();
        assert!(
            gone.is_some_and(|w| w.queued.is_empty()),
            "a worker was stopped with events still queued"
        );
    }
}

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new("in", p)
}

fn event(p: i32, offset: i64, key: &str) -> Message {
    Message::new(
        Arc::from("in"),
        p,
        offset,
        Timestamp::NotAvailable,
        Some(Bytes::Own(key.as_bytes().into())),
        Some(Bytes::Own(b"{}".as_slice().into())),
        None,
    )
}

fn dispatcher(workers: usize, ordering: Ordering, capacity: usize) -> Dispatcher<FakeWorkers> {
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    Dispatcher::new(
        FakeWorkers::new(workers, tracker.clone()),
        Settings {
            ordering,
            capacity,
            drain_timeout: Duration::from_millis(200),
        },
        Context {
            tracker,
            failure: Fatal::default(),
            telemetry: Arc::new(Telemetry::new("test", false, Duration::from_secs(60))),
            state: None,
            resume_from: None,
            transactions: None,
        },
    )
}

fn assign(d: &mut Dispatcher<FakeWorkers>, partitions: &[i32]) {
    let all: Vec<TopicPartition> = partitions.iter().map(|p| tp(*p)).collect();
    d.assign(&FakeSource::default(), &all, &HashSet::new(), "")
        .unwrap();
}

#[test]
fn assign_pins_partitions_to_the_least_loaded_worker_and_tells_it() {
    let mut d = dispatcher(2, Ordering::Partition, 100);
    assign(&mut d, &[0, 1, 2]);
    assert_eq!(
        d.workers.with(0, |w| w.assigned.clone()),
        vec![tp(0), tp(2)]
    );
    assert_eq!(d.workers.with(1, |w| w.assigned.clone()), vec![tp(1)]);
    // Assigning a partition held already changes nothing.
    assign(&mut d, &[1]);
    assert_eq!(d.workers.with(1, |w| w.assigned.len()), 1);
    assert_eq!(d.partitions(), vec![tp(0), tp(1), tp(2)]);

    // With ordering key or none every worker holds every partition.
    let mut d = dispatcher(3, Ordering::Key, 100);
    assign(&mut d, &[0, 1]);
    for w in 0..3 {
        assert_eq!(
            d.workers.with(w, |w| w.assigned.clone()),
            vec![tp(0), tp(1)]
        );
    }
}

#[test]
fn a_burst_is_handed_out_by_ordering_one_unit_per_partition() {
    let source = FakeSource::default();
    // Partition: all of a partition's events to its pinned worker, in order.
    let mut d = dispatcher(2, Ordering::Partition, 100);
    assign(&mut d, &[0, 1]);
    d.dispatch(
        &source,
        vec![event(0, 0, "a"), event(1, 0, "b"), event(0, 1, "c")],
    );
    d.workers.process(0);
    d.workers.process(1);
    assert_eq!(d.workers.with(0, |w| w.seen.clone()), vec![(0, 0), (0, 1)]);
    assert_eq!(d.workers.with(1, |w| w.seen.clone()), vec![(1, 0)]);

    // Key: one key's events always reach the same worker, in offset order.
    let mut d = dispatcher(3, Ordering::Key, 100);
    assign(&mut d, &[0]);
    let burst = (0..30).map(|o| event(0, o, ["x", "y", "z", "w"][o as usize % 4]));
    d.dispatch(&source, burst.collect());
    let mut owner: HashMap<String, usize> = HashMap::new();
    for w in 0..3 {
        d.workers.process(w);
        let seen = d.workers.with(w, |w| w.seen.clone());
        assert!(
            seen.windows(2).all(|p| p[0].1 < p[1].1),
            "out of order: {seen:?}"
        );
        for (_, offset) in seen {
            let key = ["x", "y", "z", "w"][offset as usize % 4].to_owned();
            assert_eq!(
                *owner.entry(key).or_insert(w),
                w,
                "a key reached two workers"
            );
        }
    }

    // None: spread evenly over the workers.
    let mut d = dispatcher(2, Ordering::None, 100);
    assign(&mut d, &[0]);
    d.dispatch(&source, (0..10).map(|o| event(0, o, "k")).collect());
    assert_eq!(d.workers.with(0, |w| w.queued.len()), 5);
    assert_eq!(d.workers.with(1, |w| w.queued.len()), 5);
    // The unit is complete only once both parts are processed.
    d.workers.flush(0);
    assert_eq!(lock(d.tracker()).committable(&tp(0)), None);
    d.workers.flush(1);
    assert_eq!(lock(d.tracker()).committable(&tp(0)), Some(10));
    assert!(source.calls().is_empty());
}

#[test]
fn a_full_partition_is_paused_holds_what_was_read_and_resumes_at_half_capacity() {
    let source = FakeSource::default();
    let mut d = dispatcher(1, Ordering::Partition, 4);
    assign(&mut d, &[0, 1]);
    d.dispatch(&source, (0..7).map(|o| event(0, o, "k")).collect());
    d.dispatch(&source, vec![event(1, 0, "k")]);
    // Four in flight, three held, paused once; the other partition goes on.
    assert_eq!(d.workers.with(0, |w| w.queued.len()), 5);
    assert!(d.holds_events());
    assert_eq!(source.calls(), vec!["pause in/0"]);
    // More read meanwhile is held behind them, in order.
    d.dispatch(&source, vec![event(0, 7, "k")]);
    assert_eq!(source.calls(), vec!["pause in/0"]);
    // No room yet: nothing moves.
    d.release_held(&source);
    assert_eq!(d.workers.with(0, |w| w.queued.len()), 5);
    // The worker takes its queue: the four held go out, and the partition (4 in flight, above
    // half its capacity) stays paused.
    d.workers.process(0);
    d.release_held(&source);
    assert!(!d.holds_events());
    assert_eq!(source.calls(), vec!["pause in/0"]);
    d.workers.process(0);
    d.release_held(&source);
    assert_eq!(source.calls(), vec!["pause in/0", "resume in/0"]);
    let offsets: Vec<i64> = d.workers.with(0, |w| {
        w.seen.iter().filter(|s| s.0 == 0).map(|s| s.1).collect()
    });
    assert_eq!(offsets, (0..8).collect::<Vec<_>>());
}

#[test]
fn a_release_drains_commits_the_complete_units_and_forgets_the_partitions() {
    let source = FakeSource::default();
    let mut d = dispatcher(2, Ordering::Partition, 100);
    assign(&mut d, &[0, 1]);
    d.dispatch(
        &source,
        vec![event(0, 0, "a"), event(0, 1, "a"), event(1, 5, "b")],
    );
    assert_eq!(d.release(&source, &[tp(0)]), 0);
    assert_eq!(*lock(&source.commits), vec![(tp(0), 2)]);
    assert_eq!(d.workers.with(0, |w| w.revoked.clone()), vec![tp(0)]);
    assert_eq!(d.partitions(), vec![tp(1)]);
    // Events of the released partition still in this turn's burst are dropped; after the turn
    // they are not ours either.
    d.dispatch(&source, vec![event(0, 2, "a")]);
    d.begin_turn();
    d.dispatch(&source, vec![event(0, 3, "a")]);
    assert_eq!(d.workers.with(0, |w| w.queued.len()), 0);

    // The stop drains every partition.
    assert_eq!(d.drain(&source, StopReason::Signal), 0);
    assert_eq!(*lock(&source.commits), vec![(tp(0), 2), (tp(1), 6)]);
    assert!(d.partitions().is_empty());
}

#[test]
fn a_release_that_times_out_commits_only_what_is_complete() {
    let source = FakeSource::default();
    let mut d = dispatcher(1, Ordering::Partition, 100);
    assign(&mut d, &[0]);
    d.dispatch(&source, vec![event(0, 0, "a"), event(0, 1, "a")]);
    d.workers.flush(0); // the first unit is complete
    d.dispatch(&source, vec![event(0, 2, "a")]);
    d.workers.stuck = true;
    assert_eq!(d.release(&source, &[tp(0)]), 1);
    // Offset 2 was never handled: the commit stops short of it.
    assert_eq!(*lock(&source.commits), vec![(tp(0), 2)]);
}

#[test]
fn resizing_moves_pinned_partitions_with_their_queued_events_in_order() {
    let source = FakeSource::default();
    let mut d = dispatcher(2, Ordering::Partition, 100);
    assign(&mut d, &[0, 1, 2, 3]);
    d.dispatch(&source, (0..4).map(|p| event(p, 0, "k")).collect());
    // Grow to 4 workers: two partitions move to the new workers with their queued events.
    d.resize(CpuLimit {
        quota_cpus: Some(4.0),
        host_cpus: 8,
    });
    assert_eq!(d.worker_count(), 4);
    d.dispatch(&source, (0..4).map(|p| event(p, 1, "k")).collect());
    let mut seen: Vec<(i32, i64)> = Vec::new();
    for w in 0..4 {
        d.workers.process(w);
        let mine = d.workers.with(w, |w| w.seen.clone());
        let partitions: HashSet<i32> = mine.iter().map(|s| s.0).collect();
        assert_eq!(partitions.len(), 1, "worker {w} holds {partitions:?}");
        seen.extend(mine);
    }
    seen.sort();
    let all: Vec<(i32, i64)> = (0..4).flat_map(|p| [(p, 0), (p, 1)]).collect();
    assert_eq!(seen, all);
    // Shrink to one: everything ends on worker 0, nothing queued on a stopped worker.
    d.resize(CpuLimit {
        quota_cpus: Some(1.0),
        host_cpus: 8,
    });
    assert_eq!(d.worker_count(), 1);
    let held: HashSet<TopicPartition> = d.workers.with(0, |w| w.assigned.iter().cloned().collect());
    assert_eq!(held, (0..4).map(tp).collect());
    // Every unit completes: flushing the one worker makes every partition committable.
    d.workers.flush(0);
    assert_eq!(d.drain(&source, StopReason::Signal), 0);
    let mut commits = lock(&source.commits).clone();
    commits.sort();
    assert_eq!(commits, (0..4).map(|p| (tp(p), 2)).collect::<Vec<_>>());
}

#[test]
fn resizing_respreads_key_ordered_units_and_counts_their_parts_anew() {
    let source = FakeSource::default();
    let mut d = dispatcher(2, Ordering::Key, 100);
    assign(&mut d, &[0]);
    d.dispatch(
        &source,
        (0..20).map(|o| event(0, o, &format!("k{o}"))).collect(),
    );
    d.resize(CpuLimit {
        quota_cpus: Some(3.0),
        host_cpus: 8,
    });
    assert_eq!(d.worker_count(), 3);
    // The unit's events were handed back and spread over three workers: it completes once
    // each of its new parts is flushed, and not before.
    d.workers.flush(0);
    d.workers.flush(1);
    let queued_on_2 = d.workers.with(2, |w| w.queued.len());
    if queued_on_2 > 0 {
        assert_eq!(lock(d.tracker()).committable(&tp(0)), None);
    }
    d.workers.flush(2);
    assert_eq!(lock(d.tracker()).committable(&tp(0)), Some(20));
}

#[test]
fn status_shows_the_partitions_being_released_while_the_release_holds_the_dispatcher() {
    let mut d = dispatcher(1, Ordering::Partition, 100);
    assign(&mut d, &[0, 1]);
    d.workers.stuck = true;
    let d = Arc::new(Mutex::new(d));
    // No reading before the release: what it shows meanwhile is what the release left there.
    let view = partition_view(&d);
    let releasing = {
        let d = d.clone();
        std::thread::spawn(move || lock(&d).release(&FakeSource::default(), &[tp(0), tp(1)]))
    };
    std::thread::sleep(Duration::from_millis(60));
    let shown: Vec<TopicPartition> = view().into_iter().map(|p| p.tp).collect();
    assert_eq!(shown.len(), 2, "while draining: {shown:?}");
    releasing.join().unwrap();
    assert!(view().is_empty());
}

#[test]
fn exactly_once_drops_what_the_table_already_has() {
    let source = FakeSource::default();
    let mut d = dispatcher(1, Ordering::Partition, 100);
    d.ctx.resume_from = Some(Box::new(|| Ok(HashMap::from([(tp(0), 3)]))));
    assign(&mut d, &[0]);
    d.dispatch(&source, (0..5).map(|o| event(0, o, "k")).collect());
    d.workers.flush(0);
    assert_eq!(d.workers.with(0, |w| w.seen.clone()), vec![(0, 3), (0, 4)]);
    assert_eq!(lock(d.tracker()).committable(&tp(0)), Some(5));
}
