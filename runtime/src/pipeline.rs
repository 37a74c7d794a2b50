//! The Kafka pipeline: a consumer group in, the plugin on a pool of workers, outputs out, and
//! offsets committed only for what is fully done.
//!
//! One thread polls the consumer (so rebalance callbacks and the main queue are always served:
//! no split partition queues) and dispatches each event to the worker its partition is pinned
//! to. A partition with `partition-capacity` events in flight is paused, and resumed when its
//! worker catches up, so memory stays bounded whatever the input rate. Every
//! `commit-interval-ms` the workers flush their plugin instance and the offsets of complete units
//! (processed, flushed and acknowledged by every sink) are committed. On revoke the revoked
//! partitions are drained, flushed, acknowledged and committed before they are released; on
//! SIGTERM/SIGINT every partition is, then the consumer leaves the group. A fatal error stops the
//! pipeline with nothing committed past the failing event.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, Timestamp, TopicPartitionList};
use sluice_plugin_api::abi::OpenContext;

use crate::config::{
    Action, ClassPolicy, KafkaSourceSpec, Ordering, OutputSpec, PipelineSpec, SourceSpec,
};
use crate::cpu::CpuLimit;
use crate::dead_letter::DeadLetters;
use crate::error_policy::{self, Attempt, Class, Verdict};
use crate::fatal::Fatal;
use crate::offsets::{OffsetTracker, TopicPartition};
use crate::run::{RunError, Summary, open_local_output, prepare};
use crate::shutdown::Shutdown;
use crate::sink::kafka::KafkaSink;
use crate::sink::table::{Dialect, SinkContext, TableSink};
use crate::source::file::{Batch, FileSource};
use crate::status::{BrokerOffsets, Capacity, Lifecycle, PartitionLive, PluginStatus, SinkProbe};
use crate::telemetry::{
    CommitFailed, CommitPoint, Draining, EventSkipped, Failed, OffsetsCommitted, PartitionPaused,
    PartitionsAssigned, PartitionsRevoked, StopReason, Stopped, Telemetry,
};
use crate::worker::{Command, Delivery, OutputTarget, Positions, Worker, WorkerShared};

/// One assigned partition, as the dispatcher sees it.
#[derive(Debug)]
struct Slot {
    /// The workers its events may go to: one with `ordering: partition`, else all of them.
    workers: Vec<usize>,
    in_flight: Arc<AtomicUsize>,
    /// Events read while the partition was full, in order; the partition is paused meanwhile.
    held: VecDeque<OwnedMessage>,
    paused: bool,
    /// Exactly-once: events below this offset are already in the database; they are read and
    /// dropped.
    skip_below: i64,
}

/// Exactly-once: reads where each partition resumes (the offsets stored with the rows).
type ResumeFrom = Box<dyn Fn() -> Result<HashMap<TopicPartition, i64>, String> + Send>;

/// Dispatch state, shared with the rebalance callbacks (which run inside `poll`).
struct Dispatch {
    slots: HashMap<TopicPartition, Slot>,
    load: Vec<usize>,
    workers: Vec<mpsc::Sender<Command>>,
    ordering: Ordering,
    /// Rotates the first worker of `ordering: none` hand-outs.
    next_worker: usize,
    tracker: Arc<Mutex<OffsetTracker>>,
    failure: Fatal,
    drain_timeout: Duration,
    /// Partitions revoked since the current poll burst began.
    revoked_log: Vec<TopicPartition>,
    /// Exactly-once outputs: where assigned partitions resume.
    resume_from: Option<ResumeFrom>,
    /// Kafka transactions: the producer whose transaction carries the offsets.
    transactions: Option<Arc<KafkaSink>>,
    telemetry: Arc<Telemetry>,
}

struct RebalanceContext {
    dispatch: Arc<Mutex<Dispatch>>,
    telemetry: Arc<Telemetry>,
}

impl ClientContext for RebalanceContext {
    /// librdkafka's statistics (every `admin.lag-interval-ms`): the watermarks and committed
    /// offsets behind the lag, and whether the group is joined.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        if stats["cgrp"]["state"] == "up" {
            self.telemetry.health.set_group_joined();
        }
        let mut offsets = HashMap::new();
        for (topic, t) in stats["topics"].as_object().into_iter().flatten() {
            for p in t["partitions"]
                .as_object()
                .into_iter()
                .flat_map(|p| p.values())
            {
                let partition = p["partition"].as_i64().unwrap_or(-1);
                if partition < 0 {
                    continue; // librdkafka's internal "unassigned" partition
                }
                let get = |k: &str| p[k].as_i64().unwrap_or(-1);
                offsets.insert(
                    TopicPartition::new(topic.clone(), partition as i32),
                    BrokerOffsets {
                        low: get("lo_offset"),
                        high: get("hi_offset"),
                        committed: get("committed_offset"),
                    },
                );
            }
        }
        self.telemetry.health.set_broker_offsets(offsets);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
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
fn revoke(
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
    match commit(consumer, &commits) {
        Ok(()) => dispatch.telemetry.emit(OffsetsCommitted {
            commits: &commits,
            point: CommitPoint::Release,
            released: partitions,
        }),
        Err(err) => dispatch.telemetry.emit(CommitFailed {
            error: &err,
            retried: false,
        }),
    }
}

/// Forgets the slots of revoked `partitions` (their events still in this poll burst are dropped)
/// and returns which workers held which of them.
fn release_slots(
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
fn revoke_in_transaction(
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
    if let Err(err) = commit_transaction(dispatch, consumer) {
        dispatch
            .failure
            .set(format!("transaction commit on revoke failed: {err}"));
    }
    let mut tracker = dispatch.tracker.lock().unwrap_or_else(|e| e.into_inner());
    for tp in partitions {
        tracker.revoke(tp);
    }
}

/// Transactions: a commit point. Every worker finishes what is queued and flushes, every record
/// is delivered, so every dispatched event is complete; then the offsets after them go into the
/// transaction, which commits. The poll loop waits meanwhile (bounded by the drain timeout).
/// After a fatal error the transaction is aborted instead.
fn commit_transaction(
    dispatch: &Dispatch,
    consumer: &BaseConsumer<RebalanceContext>,
) -> Result<(), String> {
    let Some(sink) = &dispatch.transactions else {
        return Ok(());
    };
    let timeout = dispatch.drain_timeout;
    let deadline = Instant::now() + timeout;
    let failed = || dispatch.failure.is_set();
    let replies: Vec<_> = dispatch
        .workers
        .iter()
        .map(|w| {
            let (tx, rx) = mpsc::sync_channel(1);
            let _ = w.send(Command::Barrier(tx));
            rx
        })
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
    if failed()
        || sink
            .flush(deadline.saturating_duration_since(Instant::now()))
            .is_err()
    {
        let _ = sink.abort_transaction(timeout);
        return Err("not every record was delivered: transaction aborted".into());
    }
    let mut tracker = dispatch.tracker.lock().unwrap_or_else(|e| e.into_inner());
    if tracker.total_in_flight() > 0 {
        drop(tracker);
        let _ = sink.abort_transaction(timeout);
        return Err("events still incomplete at the commit point: transaction aborted".into());
    }
    let commits = tracker.take_commits();
    drop(tracker);
    let mut tpl = TopicPartitionList::new();
    for (TopicPartition { topic, partition }, offset) in &commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
    }
    let group = consumer
        .group_metadata()
        .ok_or("no consumer group metadata for the transaction")?;
    sink.commit_transaction(&tpl, &group, timeout)
        .map_err(|e| format!("transaction commit failed: {e}"))?;
    dispatch.telemetry.emit(OffsetsCommitted {
        commits: &commits,
        point: CommitPoint::Transaction,
        released: &[],
    });
    Ok(())
}

fn commit(
    consumer: &BaseConsumer<RebalanceContext>,
    commits: &[(TopicPartition, i64)],
) -> Result<(), String> {
    if commits.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (TopicPartition { topic, partition }, offset) in commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn client_config(
    bootstrap: &str,
    properties: &std::collections::BTreeMap<String, String>,
    from_env: &std::collections::BTreeMap<String, String>,
    field: &str,
) -> Result<ClientConfig, RunError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in properties {
        config.set(k, v);
    }
    for (k, var) in from_env {
        let value = std::env::var(var).map_err(|_| {
            RunError::Setup(format!("{field}.properties-from-env.{k}: environment variable `{var}` is not set: export it"))
        })?;
        config.set(k, value);
    }
    Ok(config)
}

/// `sluice dlq replay --through`: the pipeline reads its dead-letter topic instead of its
/// source, hands the plugin only the selected dead letters (without their `sluice.*`
/// provenance headers), and stops once it has read as far as the topic reached when the replay
/// began; then it drains and commits as on SIGTERM.
pub struct ReplayUntil {
    /// Which dead letters the plugin gets; the others are read and passed over.
    pub keep: Box<dyn Fn(&OwnedMessage) -> bool + Send>,
    /// Where each partition of the dead-letter topic ended when the replay began.
    pub end: HashMap<TopicPartition, i64>,
}

impl std::fmt::Debug for ReplayUntil {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayUntil")
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// Runs a `source: kafka` spec until SIGTERM/SIGINT (or a fatal error).
pub fn run(spec: &PipelineSpec, shutdown: &Shutdown) -> Result<Summary, RunError> {
    run_with(spec, shutdown, None)
}

/// [`run`], or a dead-letter replay through the pipeline that stops by itself.
pub fn run_with(
    spec: &PipelineSpec,
    shutdown: &Shutdown,
    replay: Option<ReplayUntil>,
) -> Result<Summary, RunError> {
    let SourceSpec::Kafka(source) = &spec.source else {
        return Err(RunError::Setup(
            "pipeline::run needs a `source: kafka` spec".into(),
        ));
    };
    let drain_timeout = Duration::from_millis(source.drain_timeout_ms);
    let running = start(
        spec,
        &Setup {
            // The poll loop may block for a revoke's drain plus a transaction commit.
            liveness: drain_timeout * 2 + Duration::from_secs(30),
            // A replay is a one-off command, not a pod: it serves no endpoint.
            admin: replay.is_none(),
            bootstrap_servers: Some(&source.bootstrap_servers),
            group: &source.group_id,
            batch_size: source.batch_size,
            replay: replay.is_some(),
            one_worker: false,
            positions: Positions::Offsets,
        },
    )?;
    let Running {
        telemetry,
        tracker,
        failure,
        shared,
        senders,
        flush_senders,
        stats_interval,
        ..
    } = &running;
    let (telemetry, tracker, failure, shared) = (
        telemetry.clone(),
        tracker.clone(),
        failure.clone(),
        shared.clone(),
    );
    let (senders, flush_senders) = (senders.clone(), flush_senders.clone());
    let stats_interval = stats_interval.clone();
    let worker_count = senders.len();

    let dispatch = Arc::new(Mutex::new(Dispatch {
        slots: HashMap::new(),
        load: vec![0; worker_count],
        workers: senders.clone(),
        ordering: spec.ordering,
        next_worker: 0,
        tracker: tracker.clone(),
        failure: failure.clone(),
        drain_timeout,
        revoked_log: Vec::new(),
        resume_from: exactly_once(spec, &source.group_id),
        transactions: spec
            .producer
            .transactional_id
            .is_some()
            .then(|| shared.sink.clone())
            .flatten(),
        telemetry: telemetry.clone(),
    }));
    telemetry
        .health
        .set_partition_view(partition_view(Arc::downgrade(&dispatch)));
    let consumer = create_consumer(
        spec,
        source,
        dispatch.clone(),
        telemetry.clone(),
        stats_interval.as_deref(),
    )?;
    let topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Setup(format!("cannot subscribe to {topics:?}: {e}")))?;

    let burst_limit = source.batch_size * worker_count;
    let transactional = spec.producer.transactional_id.is_some();
    let commit_every = Duration::from_millis(source.commit_interval_ms);
    let mut next_commit = Instant::now() + commit_every;
    let mut flush_round: Option<Vec<mpsc::Receiver<()>>> = None;
    let mut replay_done_now = false;
    telemetry.health.set_lifecycle(Lifecycle::Consuming);
    while !shutdown.requested() && !failure.is_set() {
        telemetry.health.heartbeat();
        release_held(&consumer, &dispatch, source.partition_capacity);
        // Drain what librdkafka has ready in one burst, then hand each worker its share in one
        // message: one wake-up per burst, not per event.
        dispatch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revoked_log
            .clear();
        let mut burst = Vec::new();
        let mut wait = Duration::from_millis(50);
        while burst.len() < burst_limit {
            match consumer.poll(wait) {
                Some(Ok(message)) => burst.push(message.detach()),
                Some(Err(err)) => tracing::warn!("consumer: {err}"),
                None => break,
            }
            wait = Duration::ZERO;
        }
        if let Some(replay) = &replay {
            burst.retain(|m| (replay.keep)(m));
        }
        dispatch_burst(&consumer, &dispatch, burst, source.partition_capacity);
        if let Some(replay) = &replay {
            if replay_done(&consumer, &dispatch, &replay.end) {
                tracing::info!("replay: read to where the dead-letter topic ended");
                replay_done_now = true;
                break;
            }
        }
        // Transactions: a blocking commit point per interval.
        if transactional && Instant::now() >= next_commit {
            let d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(err) = commit_transaction(&d, &consumer) {
                d.failure.set(err);
            }
            next_commit = Instant::now() + commit_every;
            continue;
        }
        // Commit cycle: flush every worker (without blocking the poll loop), then commit.
        if flush_round.is_none() && Instant::now() >= next_commit {
            flush_round = Some(
                senders
                    .iter()
                    .zip(&flush_senders)
                    .map(|(tx, flush)| {
                        let (reply, rx) = mpsc::sync_channel(1);
                        let _ = flush.send(reply);
                        let _ = tx.send(Command::Nudge); // wakes an idle worker
                        rx
                    })
                    .collect(),
            );
        }
        if let Some(round) = &flush_round {
            if round
                .iter()
                .all(|rx| !matches!(rx.try_recv(), Err(mpsc::TryRecvError::Empty)))
            {
                flush_round = None;
                next_commit = Instant::now() + commit_every;
                let commits = tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_commits();
                match commit(&consumer, &commits) {
                    Ok(()) => telemetry.emit(OffsetsCommitted {
                        commits: &commits,
                        point: CommitPoint::Interval,
                        released: &[],
                    }),
                    Err(err) => {
                        telemetry.emit(CommitFailed {
                            error: &err,
                            retried: true,
                        });
                        tracker
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .commit_failed(&commits);
                    }
                }
            }
        }
    }

    // Stop: drain and commit every partition, then leave the group.
    let fatal = failure.get();
    {
        let mut d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<TopicPartition> = d.slots.keys().cloned().collect();
        all.sort();
        telemetry.emit(Draining {
            reason: if fatal.is_some() {
                StopReason::Fatal
            } else if replay_done_now {
                StopReason::ReplayDone
            } else {
                StopReason::Signal
            },
            partitions: &all,
        });
        revoke(&mut d, &consumer, &all);
    }
    consumer.unsubscribe();
    drop(consumer);
    dispatch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .workers
        .clear();
    drop((senders, flush_senders, shared));
    running.finish(drain_timeout, fatal)
}

/// How long a file run waits, after its last line, for the sinks to acknowledge what it emitted.
const FILE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A `source: file` run. The file (or stdin) is one partition and its lines are the offsets:
/// events go through the same workers, outputs and sinks (stdout, files, Kafka topics, tables),
/// error policy and offset tracker as a Kafka run's, and the admin endpoint serves it the same
/// way. Committing is a no-op (a file has no group to commit to): at the end, every line must be
/// fully handled (processed, flushed, acknowledged by every sink), or the run fails.
pub fn run_file(spec: &PipelineSpec, shutdown: &Shutdown) -> Result<Summary, RunError> {
    let SourceSpec::File(file) = &spec.source else {
        return Err(RunError::Setup(
            "pipeline::run_file needs a `source: file` spec".into(),
        ));
    };
    let input = spec.resolve(&file.path);
    let mut source = FileSource::open(file, &input)?;
    let path = input.display().to_string();
    let running = start(
        spec,
        &Setup {
            // The loop turns at least once per batch, or while waiting for the workers.
            liveness: Duration::from_secs(60),
            admin: true,
            bootstrap_servers: None,
            group: &spec.name,
            batch_size: file.batch_size,
            replay: false,
            // One partition in order is one worker's work.
            one_worker: spec.ordering == Ordering::Partition,
            positions: Positions::Lines(path.clone()),
        },
    )?;
    let (telemetry, tracker, failure) = (
        running.telemetry.clone(),
        running.tracker.clone(),
        running.failure.clone(),
    );
    let senders = running.senders.clone();
    let tp = TopicPartition::new(source.topic(), 0);
    tracker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .assign(tp.clone());
    let slot = Slot {
        workers: (0..senders.len()).collect(),
        in_flight: Arc::default(),
        held: VecDeque::new(),
        paused: false,
        skip_below: 0,
    };
    {
        // `/status` shows the file as the one partition it is.
        let (tp, workers, in_flight) = (tp.clone(), slot.workers.clone(), slot.in_flight.clone());
        telemetry.health.set_partition_view(Box::new(move || {
            vec![PartitionLive {
                tp: tp.clone(),
                workers: workers.clone(),
                in_flight: in_flight.load(AtomicOrdering::Acquire),
                held: 0,
                paused: false,
            }]
        }));
    }
    let partitions = std::slice::from_ref(&tp);
    telemetry.emit(PartitionsAssigned { partitions });
    for tx in &senders {
        let _ = tx.send(Command::Assigned(vec![tp.clone()]));
    }
    telemetry.health.set_lifecycle(Lifecycle::Consuming);

    // Memory stays bounded: reading waits while this many events are with the workers.
    let capacity = file.batch_size * senders.len() * 4;
    let invalid_input = Class::InvalidInput.policy(&spec.error_policy);
    let mut next_worker = 0;
    let mut batch = Batch::default();
    let mut source_error = None;
    let mut end_of_input = false;
    while !shutdown.requested() && !failure.is_set() {
        telemetry.health.heartbeat();
        if slot.in_flight.load(AtomicOrdering::Acquire) >= capacity {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if let Err(err) = source.next_batch(&mut batch) {
            source_error = Some(err);
            break;
        }
        if batch.is_empty() {
            end_of_input = true;
            break;
        }
        for bad in &batch.undecodable {
            // A line that does not decode fails the same way every time: no retry changes it.
            let policy = ClassPolicy {
                retries: 0,
                ..invalid_input
            };
            match error_policy::decide(&policy, bad.message.clone(), || Attempt::Stop, |_| {}) {
                Verdict::Settled {
                    action: Action::Skip,
                    ..
                } => telemetry.emit(EventSkipped(Failed {
                    what: "undecodable line",
                    topic: &tp.topic,
                    partition: tp.partition,
                    offset: Some(bad.line as i64 - 1),
                    class: Class::InvalidInput.name(),
                    attempts: 1,
                    message: &bad.message,
                    output: None,
                    at: &format!("{path}:{}", bad.line),
                })),
                // Dead letters of undecodable lines would need the line's bytes: the spec check
                // allows only fail and skip for them.
                _ => {
                    failure.set(format!(
                        "{path}:{}: {}: fix the input or set `error-policy.invalid-input: skip`",
                        bad.line, bad.message
                    ));
                    break;
                }
            }
        }
        if failure.is_set() || batch.events.is_empty() {
            continue;
        }
        let messages: Vec<OwnedMessage> = batch
            .events
            .iter()
            .map(|e| {
                OwnedMessage::new(
                    Some(batch.payload(e).to_vec()),
                    e.key.clone(),
                    tp.topic.clone(),
                    e.timestamp_ms
                        .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
                    tp.partition,
                    e.offset,
                    None,
                )
            })
            .collect();
        let mut outgoing: Vec<Vec<Delivery>> = senders.iter().map(|_| Vec::new()).collect();
        let handed = hand_out(
            &mut tracker.lock().unwrap_or_else(|e| e.into_inner()),
            spec.ordering,
            &mut next_worker,
            &tp,
            &slot,
            messages,
            &mut outgoing,
        );
        if let Err(err) = handed {
            failure.set(err);
            break;
        }
        for (tx, events) in senders.iter().zip(outgoing) {
            if !events.is_empty() {
                let _ = tx.send(Command::Events(events));
            }
        }
    }

    // Drain: every worker finishes what is queued, calls `revoked` and flushes; then the sinks
    // acknowledge what was emitted.
    let fatal = failure.get();
    telemetry.emit(Draining {
        reason: if fatal.is_some() {
            StopReason::Fatal
        } else if end_of_input {
            StopReason::EndOfInput
        } else {
            StopReason::Signal
        },
        partitions,
    });
    let replies: Vec<_> = senders
        .iter()
        .map(|tx| {
            let (reply, rx) = mpsc::sync_channel(1);
            let _ = tx.send(Command::Revoke(vec![tp.clone()], reply));
            rx
        })
        .collect();
    for rx in replies {
        let _ = rx.recv();
    }
    drop(senders);
    let result = running.finish(FILE_DRAIN_TIMEOUT, fatal);
    if let Some(err) = source_error {
        return Err(err.into());
    }
    let summary = result?;
    // The no-op commit: nothing may be left incomplete after a clean stop.
    let incomplete = tracker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .in_flight(&tp);
    if incomplete > 0 {
        return Err(RunError::Fatal(format!(
            "{path}: {incomplete} batch(es) of lines not fully handled when the run stopped (an output did not acknowledge them)"
        )));
    }
    Ok(summary)
}

/// How a source wants its pipeline set up.
#[derive(Debug)]
struct Setup<'a> {
    /// How long the source's loop may go without turning before `/healthz` fails.
    liveness: Duration,
    /// Serve `admin.listen`, if the spec sets it.
    admin: bool,
    /// The producer's bootstrap servers when `producer.bootstrap-servers` is not set.
    bootstrap_servers: Option<&'a str>,
    /// The consumer group (or, for a file, the pipeline's name): exactly-once tables key their
    /// stored offsets by it.
    group: &'a str,
    /// Events per plugin call.
    batch_size: usize,
    /// A dead-letter replay: the plugin does not see the provenance headers.
    replay: bool,
    /// One worker whatever the CPU quota (a file is one partition, kept in order).
    one_worker: bool,
    /// How positions read in error messages.
    positions: Positions,
}

/// What every run has, whatever its source: telemetry (and the admin endpoint), the plugin, the
/// offset tracker, the outputs and sinks, and the worker pool. A source's loop feeds the
/// workers; [`Running::finish`] stops them and flushes the sinks.
struct Running {
    telemetry: Arc<Telemetry>,
    _admin: Option<crate::admin::AdminServer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    failure: Fatal,
    shared: Arc<WorkerShared>,
    senders: Vec<mpsc::Sender<Command>>,
    flush_senders: Vec<mpsc::Sender<mpsc::SyncSender<()>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// librdkafka's statistics interval, when the admin endpoint wants lag.
    stats_interval: Option<String>,
}

/// Loads the plugin, opens the outputs and sinks, and starts the workers.
fn start(spec: &PipelineSpec, setup: &Setup<'_>) -> Result<Running, RunError> {
    let telemetry = Arc::new(Telemetry::new(
        &spec.name,
        spec.admin.metrics,
        setup.liveness,
    ));
    let admin_listen = spec.admin.listen.as_deref().filter(|_| setup.admin);
    let admin = admin_listen
        .map(|listen| crate::admin::start(listen, telemetry.clone()))
        .transpose()
        .map_err(RunError::Setup)?;
    let stats_interval = admin_listen.map(|_| spec.admin.lag_interval_ms.to_string());
    let plugin = prepare(spec)?;
    let label = plugin.label();
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let failure = Fatal::default();

    // One producer for Kafka outputs and dead letters.
    let needs_producer = spec.error_policy.dead_letter_topic.is_some()
        || spec
            .outputs
            .values()
            .any(|o| matches!(o, OutputSpec::Kafka(_)));
    let sink = if needs_producer {
        let bootstrap = spec
            .producer
            .bootstrap_servers
            .as_deref()
            .or(setup.bootstrap_servers)
            .ok_or_else(|| {
                RunError::Setup(
                    "producer.bootstrap-servers: needed for Kafka outputs and dead letters without a Kafka source".into(),
                )
            })?;
        let mut config = client_config(
            bootstrap,
            &spec.producer.properties,
            &spec.producer.properties_from_env,
            "producer",
        )?;
        if let Some(interval) = &stats_interval {
            config.set("statistics.interval.ms", interval);
        }
        let topics: HashMap<String, String> = spec
            .outputs
            .iter()
            .filter_map(|(name, o)| match o {
                OutputSpec::Kafka(k) => Some((k.topic.clone(), name.clone())),
                _ => None,
            })
            .collect();
        let sink = Arc::new(
            KafkaSink::new(
                config,
                tracker.clone(),
                failure.clone(),
                spec.producer.transactional_id.as_deref(),
                telemetry.clone(),
                &topics,
            )
            .map_err(|e| RunError::Setup(format!("producer: cannot create: {e}")))?,
        );
        if stats_interval.is_some() {
            let outputs = topics.into_values().chain(
                spec.error_policy
                    .dead_letter_topic
                    .as_ref()
                    .map(|_| "dead-letters".to_owned()),
            );
            for output in outputs {
                telemetry.health.add_sink(SinkProbe {
                    output,
                    kind: "kafka",
                    reachable: sink.reachable(),
                });
            }
        }
        Some(sink)
    } else {
        None
    };
    let dead_letters = match (&spec.error_policy.dead_letter_topic, &sink) {
        (Some(topic), Some(sink)) => Some(DeadLetters {
            sink: sink.clone(),
            topic: topic.clone(),
            pipeline: spec.name.clone(),
            plugin: plugin.name().to_owned(),
            plugin_version: plugin.version().to_owned(),
        }),
        _ => None,
    };

    let sink_context = SinkContext {
        tracker: tracker.clone(),
        failure: failure.clone(),
        on_rejection: spec.error_policy.sink_rejection,
        dead_letters: dead_letters.clone(),
        telemetry: telemetry.clone(),
        group: setup.group.to_owned(),
    };
    let mut outputs = HashMap::new();
    for (name, output) in &spec.outputs {
        let table = |dialect, t| {
            let sink = TableSink::start(name, dialect, t, sink_context.clone())
                .map_err(RunError::Setup)?;
            telemetry.health.add_sink(SinkProbe {
                output: name.clone(),
                kind: match dialect {
                    Dialect::Postgres => "postgres",
                    Dialect::Mysql => "mysql",
                },
                reachable: sink.reachable(),
            });
            Ok::<_, RunError>(OutputTarget::Table(sink))
        };
        let target = match (output, open_local_output(spec, name, output)?) {
            (OutputSpec::Kafka(k), _) => OutputTarget::Kafka(k.topic.clone()),
            (OutputSpec::Postgres(t), _) => table(Dialect::Postgres, t)?,
            (OutputSpec::Mysql(t), _) => table(Dialect::Mysql, t)?,
            (_, Some(local)) => OutputTarget::Local(Mutex::new(local)),
            (_, None) => return Err(RunError::Setup(format!("outputs.{name}: cannot open"))),
        };
        let emitted = telemetry.metrics.records_emitted.with_label_values(&[name]);
        outputs.insert(name.clone(), (target, emitted));
    }
    let shared = Arc::new(WorkerShared {
        plugin: label.clone(),
        outputs,
        sink,
        dead_letters,
        tracker: tracker.clone(),
        failure: failure.clone(),
        policy: spec.error_policy.clone(),
        events_in: Default::default(),
        strip_provenance: setup.replay,
        telemetry: telemetry.clone(),
        positions: setup.positions.clone(),
    });
    let events_in = Arc::downgrade(&shared);
    telemetry.health.set_events_in(Arc::new(move || {
        events_in
            .upgrade()
            .map_or(0, |s| s.events_in.load(AtomicOrdering::Relaxed))
    }));

    let cpu = CpuLimit::detect();
    let worker_count = if setup.one_worker {
        1
    } else {
        spec.workers.unwrap_or_else(|| cpu.workers())
    };
    tracing::info!(workers = worker_count, quota_cpus = ?cpu.quota_cpus, host_cpus = cpu.host_cpus, plugin = %label, "starting");
    let config_json = spec.plugin.config.to_string();
    let mut senders = Vec::new();
    let mut flush_senders = Vec::new();
    let mut threads = Vec::new();
    for id in 0..worker_count {
        let ctx = OpenContext::new(&spec.name, id as u32, worker_count as u32);
        let mut emitter = crate::sink::NullCollector::new(&label);
        let instance = plugin
            .plugin_ref()
            .open(&config_json, &ctx, &mut emitter)
            .map_err(|source| RunError::Open {
                plugin: label.clone(),
                spec: spec.file.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::channel();
        let (flush_tx, flush_rx) = mpsc::channel();
        flush_senders.push(flush_tx);
        let probe = telemetry.health.add_worker();
        let worker = Worker::new(
            instance,
            shared.clone(),
            setup.batch_size,
            flush_rx,
            id,
            probe,
        );
        let thread = std::thread::Builder::new()
            .name(format!("sluice-worker-{id}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| RunError::Setup(format!("cannot start worker thread: {e}")))?;
        senders.push(tx);
        threads.push(thread);
    }

    let metrics = &telemetry.metrics;
    metrics
        .plugin_info
        .with_label_values(&[plugin.name(), plugin.version(), &plugin.abi_version()])
        .set(1);
    metrics.workers.set(worker_count as i64);
    metrics.cpu_quota_cores.set(cpu.quota_cpus.unwrap_or(0.0));
    metrics.host_cpus.set(cpu.host_cpus as i64);
    telemetry.health.set_plugin_open(
        PluginStatus {
            name: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            abi_version: plugin.abi_version(),
            path: plugin.path().display().to_string(),
            sha256: plugin.sha256().to_owned(),
        },
        Capacity {
            workers: worker_count,
            cpu_quota: cpu.quota_cpus,
            host_cpus: cpu.host_cpus,
        },
    );

    Ok(Running {
        telemetry,
        _admin: admin,
        tracker,
        failure,
        shared,
        senders,
        flush_senders,
        threads,
        stats_interval,
    })
}

impl Running {
    /// Stops the workers (each closes its plugin instance), flushes the outputs and waits for
    /// the producer's deliveries up to `drain_timeout`; the run's result and summary. `fatal` is
    /// the error that stopped the source's loop, if one did.
    fn finish(self, drain_timeout: Duration, fatal: Option<String>) -> Result<Summary, RunError> {
        let Running {
            telemetry,
            _admin,
            failure,
            shared,
            senders,
            threads,
            ..
        } = self;
        // The drain is over: a database still down is not waited for any longer (its rows stay
        // uncommitted), so workers blocked on a full table queue can finish.
        let tables = || {
            shared
                .outputs
                .values()
                .filter_map(|(target, _)| match target {
                    OutputTarget::Table(t) => Some(t),
                    _ => None,
                })
        };
        tables().for_each(TableSink::give_up);
        for tx in &senders {
            let _ = tx.send(Command::Stop);
        }
        drop(senders);
        for thread in threads {
            let _ = thread.join();
        }
        tables().for_each(TableSink::close);
        for (name, (target, _)) in &shared.outputs {
            if let OutputTarget::Local(out) = target {
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(err) = out.flush() {
                    failure.set(format!(
                        "output `{name}` ({}): {err}",
                        out.target().display()
                    ));
                }
            }
        }
        if let Some(sink) = &shared.sink {
            // Their offsets were not committed (the tracker waits for acks), so nothing is lost;
            // but the stop was not clean and the next run will send them again.
            if let Err(err) = sink.flush(drain_timeout) {
                failure.set(format!(
                    "records still undelivered when the drain timeout ran out ({err}); their source offsets were not committed"
                ));
            }
        }
        if let Some(message) = fatal.or_else(|| failure.get()) {
            telemetry.health.set_lifecycle(Lifecycle::Stopped);
            return Err(RunError::Fatal(message));
        }
        telemetry.emit(Stopped);
        // The summary comes from the same counters as the metrics.
        let mut summary = Summary {
            events_in: shared.events_in.load(AtomicOrdering::Relaxed),
            ..Default::default()
        };
        for (name, (_, written)) in &shared.outputs {
            summary.records_out.insert(name.clone(), written.get());
        }
        let skipped = crate::metrics::Metrics::by_label(&telemetry.metrics.events_skipped);
        summary.skipped_invalid = skipped.get("invalid-input").copied().unwrap_or(0);
        summary.skipped_failed = skipped.values().sum::<u64>() - summary.skipped_invalid;
        summary.dead_lettered = crate::metrics::Metrics::sum(&telemetry.metrics.dead_letters);
        Ok(summary)
    }
}

/// Replays: every partition of the dead-letter topic is assigned here, read up to its end, and
/// nothing is held back in a paused partition.
fn replay_done(
    consumer: &BaseConsumer<RebalanceContext>,
    dispatch: &Mutex<Dispatch>,
    end: &HashMap<TopicPartition, i64>,
) -> bool {
    let d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
    if d.slots.len() < end.values().filter(|e| **e > 0).count()
        || d.slots.values().any(|s| !s.held.is_empty())
    {
        return false;
    }
    drop(d);
    let Ok(positions) = consumer.position() else {
        return false;
    };
    end.iter().filter(|(_, e)| **e > 0).all(
        |(
            TopicPartition {
                topic,
                partition: p,
            },
            e,
        )| {
            positions
                .find_partition(topic, *p)
                .and_then(|el| el.offset().to_raw())
                .is_some_and(|pos| pos >= *e)
        },
    )
}

/// The reader of stored offsets, when the pipeline has an exactly-once output.
fn exactly_once(spec: &PipelineSpec, group: &str) -> Option<ResumeFrom> {
    spec.outputs.values().find_map(|o| match o {
        OutputSpec::Postgres(t) if t.exactly_once => {
            let (url, table, group) = (t.url.clone(), t.offsets_table.clone(), group.to_owned());
            let read: ResumeFrom =
                Box::new(move || crate::sink::table::stored_offsets(&url, &table, &group));
            Some(read)
        }
        _ => None,
    })
}

/// What `/status` and the sampled gauges read of the dispatcher: its slots, without waiting
/// long for the lock (a revoke holds it while it drains: then the last reading is shown).
fn partition_view(dispatch: Weak<Mutex<Dispatch>>) -> crate::status::PartitionView {
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

fn create_consumer(
    spec: &PipelineSpec,
    source: &KafkaSourceSpec,
    dispatch: Arc<Mutex<Dispatch>>,
    telemetry: Arc<Telemetry>,
    stats_interval: Option<&str>,
) -> Result<BaseConsumer<RebalanceContext>, RunError> {
    let mut config = client_config(
        &source.bootstrap_servers,
        &source.properties,
        &source.properties_from_env,
        "source.kafka",
    )?;
    config
        .set("group.id", &source.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("client.id", format!("sluice-{}", spec.name));
    for (key, default) in [
        ("partition.assignment.strategy", Some("cooperative-sticky")),
        ("auto.offset.reset", Some("earliest")),
        ("statistics.interval.ms", stats_interval),
    ] {
        if let (false, Some(default)) = (source.properties.contains_key(key), default) {
            config.set(key, default);
        }
    }
    config
        .create_with_context(RebalanceContext {
            dispatch,
            telemetry,
        })
        .map_err(|e| RunError::Setup(format!("source.kafka: cannot create the consumer: {e}")))
}

fn tpl_of(tp: &TopicPartition) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.topic, tp.partition);
    tpl
}

/// Hands `messages` (consecutive events of `tp`, in offset order) to the slot's workers as one
/// offset unit: all to the pinned worker, by key hash, or spread evenly, per the ordering. Returns
/// the events per worker.
#[allow(clippy::too_many_arguments)]
fn hand_out(
    tracker: &mut OffsetTracker,
    ordering: Ordering,
    next_worker: &mut usize,
    tp: &TopicPartition,
    slot: &Slot,
    messages: Vec<OwnedMessage>,
    outgoing: &mut [Vec<Delivery>],
) -> Result<(), String> {
    let Some(last) = messages.last() else {
        return Ok(());
    };
    let n = slot.workers.len().max(1);
    let len = messages.len();
    let target = |i: usize, m: &OwnedMessage| -> usize {
        match ordering {
            Ordering::Partition => 0,
            Ordering::Key => match m.key() {
                Some(key) => {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    key.hash(&mut h);
                    (h.finish() % n as u64) as usize
                }
                // Null keys are one key: they keep their order among themselves.
                None => tp.partition.unsigned_abs() as usize % n,
            },
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

/// Dispatches a burst of events to the workers, one offset unit per partition, pausing full
/// partitions. Events of a partition revoked during the burst are dropped: whoever owns it now
/// reads them again from the committed offset.
fn dispatch_burst(
    consumer: &BaseConsumer<RebalanceContext>,
    dispatch: &Mutex<Dispatch>,
    burst: Vec<OwnedMessage>,
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
    let mut accepted: Vec<(TopicPartition, Vec<OwnedMessage>)> = Vec::new();
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
fn release_held(
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
            let messages: Vec<OwnedMessage> = slot.held.drain(..take).collect();
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
