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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use sluice_plugin_api::abi::OpenContext;

use crate::config::{KafkaSourceSpec, OutputSpec, PipelineSpec, SourceSpec};
use crate::cpu::CpuLimit;
use crate::local::{RunError, Summary, open_local_output, prepare};
use crate::offsets::{OffsetTracker, TopicPartition};
use crate::shutdown::Shutdown;
use crate::sink::kafka::KafkaSink;
use crate::worker::{Command, OutputTarget, Worker, WorkerShared};

/// One assigned partition, as the dispatcher sees it.
#[derive(Debug)]
struct Slot {
    worker: usize,
    in_flight: Arc<AtomicUsize>,
    /// Events read while the partition was full, in order; the partition is paused meanwhile.
    held: VecDeque<OwnedMessage>,
    paused: bool,
}

/// Dispatch state, shared with the rebalance callbacks (which run inside `poll`).
struct Dispatch {
    slots: HashMap<TopicPartition, Slot>,
    load: Vec<usize>,
    workers: Vec<mpsc::Sender<Command>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    failure: Arc<Mutex<Option<String>>>,
    drain_timeout: Duration,
    /// Partitions revoked since the current poll burst began.
    revoked_log: Vec<TopicPartition>,
}

struct RebalanceContext {
    dispatch: Arc<Mutex<Dispatch>>,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions: Vec<TopicPartition> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
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
            let mut per_worker: HashMap<usize, Vec<TopicPartition>> = HashMap::new();
            for e in tpl.elements() {
                let tp = (e.topic().to_owned(), e.partition());
                if dispatch.slots.contains_key(&tp) {
                    continue;
                }
                let worker = (0..dispatch.load.len())
                    .min_by_key(|w| dispatch.load[*w])
                    .unwrap_or(0);
                dispatch.load[worker] += 1;
                dispatch
                    .tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .assign(tp.clone());
                dispatch.slots.insert(
                    tp.clone(),
                    Slot {
                        worker,
                        in_flight: Arc::default(),
                        held: VecDeque::new(),
                        paused: false,
                    },
                );
                per_worker.entry(worker).or_default().push(tp);
            }
            for (worker, partitions) in per_worker {
                tracing::info!(worker, partitions = ?partitions, "assigned");
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
    let mut per_worker: HashMap<usize, Vec<TopicPartition>> = HashMap::new();
    dispatch.revoked_log.extend(partitions.iter().cloned());
    for tp in partitions {
        if let Some(slot) = dispatch.slots.remove(tp) {
            dispatch.load[slot.worker] -= 1;
            per_worker.entry(slot.worker).or_default().push(tp.clone());
        }
    }
    if per_worker.is_empty() {
        return;
    }
    tracing::info!(partitions = ?partitions, "revoked: draining");
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
        let failed = dispatch
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
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
    if let Err(err) = commit(consumer, &commits) {
        tracing::warn!("commit on revoke failed: {err}");
    }
}

fn commit(
    consumer: &BaseConsumer<RebalanceContext>,
    commits: &[(TopicPartition, i64)],
) -> Result<(), String> {
    if commits.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| e.to_string())?;
    tracing::debug!(?commits, "committed");
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

/// Runs a `source: kafka` spec until SIGTERM/SIGINT (or a fatal error).
pub fn run(spec: &PipelineSpec, shutdown: &Shutdown) -> Result<Summary, RunError> {
    let SourceSpec::Kafka(source) = &spec.source else {
        return Err(RunError::Setup(
            "pipeline::run needs a `source: kafka` spec".into(),
        ));
    };
    let plugin = prepare(spec)?;
    let label = plugin.label();
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();

    let mut outputs = HashMap::new();
    for (name, output) in &spec.outputs {
        let target = match (output, open_local_output(spec, name, output)?) {
            (OutputSpec::Kafka(k), _) => OutputTarget::Kafka(k.topic.clone()),
            (_, Some(local)) => OutputTarget::Local(Mutex::new(local)),
            (_, None) => return Err(RunError::Setup(format!("outputs.{name}: cannot open"))),
        };
        outputs.insert(name.clone(), (target, AtomicU64::new(0)));
    }
    let sink = if outputs
        .values()
        .any(|(o, _)| matches!(o, OutputTarget::Kafka(_)))
    {
        let bootstrap = spec
            .producer
            .bootstrap_servers
            .as_deref()
            .unwrap_or(&source.bootstrap_servers);
        let config = client_config(
            bootstrap,
            &spec.producer.properties,
            &spec.producer.properties_from_env,
            "producer",
        )?;
        Some(
            KafkaSink::new(config, tracker.clone(), failure.clone())
                .map_err(|e| RunError::Setup(format!("producer: cannot create: {e}")))?,
        )
    } else {
        None
    };
    let shared = Arc::new(WorkerShared {
        plugin: label.clone(),
        outputs,
        sink,
        tracker: tracker.clone(),
        failure: failure.clone(),
        policy: spec.error_policy.clone(),
        events_in: Default::default(),
        skipped: Default::default(),
    });

    let cpu = CpuLimit::detect();
    let worker_count = spec.workers.unwrap_or_else(|| cpu.workers());
    tracing::info!(workers = worker_count, quota_cpus = ?cpu.quota_cpus, host_cpus = cpu.host_cpus, plugin = %label, "starting");
    let config_json = spec.plugin.config.to_string();
    let mut senders = Vec::new();
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
        let worker = Worker::new(instance, shared.clone(), source.batch_size);
        let thread = std::thread::Builder::new()
            .name(format!("sluice-worker-{id}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| RunError::Setup(format!("cannot start worker thread: {e}")))?;
        senders.push(tx);
        threads.push(thread);
    }

    let dispatch = Arc::new(Mutex::new(Dispatch {
        slots: HashMap::new(),
        load: vec![0; worker_count],
        workers: senders.clone(),
        tracker: tracker.clone(),
        failure: failure.clone(),
        drain_timeout: Duration::from_millis(source.drain_timeout_ms),
        revoked_log: Vec::new(),
    }));
    let consumer = create_consumer(spec, source, dispatch.clone())?;
    let topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Setup(format!("cannot subscribe to {topics:?}: {e}")))?;

    let burst_limit = source.batch_size * worker_count;
    let commit_every = Duration::from_millis(source.commit_interval_ms);
    let mut next_commit = Instant::now() + commit_every;
    let mut flush_round: Option<Vec<mpsc::Receiver<()>>> = None;
    while !shutdown.requested() && failure.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
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
        dispatch_burst(&consumer, &dispatch, burst, source.partition_capacity);
        // Commit cycle: flush every worker (without blocking the poll loop), then commit.
        if flush_round.is_none() && Instant::now() >= next_commit {
            flush_round = Some(
                senders
                    .iter()
                    .map(|tx| {
                        let (reply, rx) = mpsc::sync_channel(1);
                        let _ = tx.send(Command::Flush(reply));
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
                if let Err(err) = commit(&consumer, &commits) {
                    tracing::warn!("commit failed, will retry: {err}");
                    tracker
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .commit_failed(&commits);
                }
            }
        }
    }

    // Stop: drain and commit every partition, then leave the group.
    let fatal = failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
    tracing::info!(
        reason = if fatal.is_some() {
            "fatal error"
        } else {
            "signal"
        },
        "draining"
    );
    {
        let mut d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<TopicPartition> = d.slots.keys().cloned().collect();
        revoke(&mut d, &consumer, &all);
    }
    consumer.unsubscribe();
    drop(consumer);
    for tx in &senders {
        let _ = tx.send(Command::Stop);
    }
    drop(senders);
    dispatch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .workers
        .clear();
    for thread in threads {
        let _ = thread.join();
    }
    if let Some(sink) = &shared.sink {
        // Their offsets were not committed (the tracker waits for acks), so nothing is lost;
        // but the stop was not clean and the next run will send them again.
        if let Err(err) = sink.flush(Duration::from_millis(source.drain_timeout_ms)) {
            failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(format!(
                "records still undelivered when the drain timeout ran out ({err}); their source offsets were not committed"
            ));
        }
    }
    if let Some(message) =
        fatal.or_else(|| failure.lock().unwrap_or_else(|e| e.into_inner()).clone())
    {
        return Err(RunError::Fatal(message));
    }
    tracing::info!("stopped");
    let mut summary = Summary {
        events_in: shared.events_in.load(Ordering::Relaxed),
        ..Default::default()
    };
    for (name, (_, written)) in &shared.outputs {
        summary
            .records_out
            .insert(name.clone(), written.load(Ordering::Relaxed));
    }
    summary.skipped_failed = shared.skipped.load(Ordering::Relaxed);
    Ok(summary)
}

fn create_consumer(
    spec: &PipelineSpec,
    source: &KafkaSourceSpec,
    dispatch: Arc<Mutex<Dispatch>>,
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
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("auto.offset.reset", "earliest"),
    ] {
        if !source.properties.contains_key(key) {
            config.set(key, default);
        }
    }
    config
        .create_with_context(RebalanceContext { dispatch })
        .map_err(|e| RunError::Setup(format!("source.kafka: cannot create the consumer: {e}")))
}

fn tpl_of(tp: &TopicPartition) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    tpl
}

/// Dispatches a burst of events to the workers their partitions are pinned to, pausing full
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
        ..
    } = &mut *d;
    let mut outgoing: Vec<Vec<(OwnedMessage, Arc<AtomicUsize>)>> =
        workers.iter().map(|_| Vec::new()).collect();
    let mut tp: TopicPartition = (String::new(), -1);
    for message in burst {
        // Consecutive events mostly share a partition: allocate its key only when it changes.
        if tp.1 != message.partition() || tp.0 != message.topic() {
            tp = (message.topic().to_owned(), message.partition());
        }
        if revoked_log.contains(&tp) {
            continue;
        }
        let Some(slot) = slots.get_mut(&tp) else {
            continue; // not (or no longer) ours
        };
        if slot.paused || slot.in_flight.load(Ordering::Acquire) >= capacity {
            if !slot.paused {
                if let Err(err) = consumer.pause(&tpl_of(&tp)) {
                    tracing::warn!(topic = %tp.0, partition = tp.1, "pause failed: {err}");
                }
                slot.paused = true;
            }
            slot.held.push_back(message);
            continue;
        }
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        outgoing[slot.worker].push((message, slot.in_flight.clone()));
    }
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
    let Dispatch { slots, workers, .. } = &mut *d;
    for (tp, slot) in slots.iter_mut().filter(|(_, s)| s.paused) {
        let mut events = Vec::new();
        while slot.in_flight.load(Ordering::Acquire) < capacity {
            let Some(message) = slot.held.pop_front() else {
                break;
            };
            slot.in_flight.fetch_add(1, Ordering::AcqRel);
            events.push((message, slot.in_flight.clone()));
        }
        if !events.is_empty() {
            let _ = workers[slot.worker].send(Command::Events(events));
        }
        // Resume at half capacity, so a slow partition does not flap between pause and resume.
        if slot.held.is_empty() && slot.in_flight.load(Ordering::Acquire) <= capacity / 2 {
            match consumer.resume(&tpl_of(tp)) {
                Ok(()) => slot.paused = false,
                Err(err) => tracing::warn!(topic = %tp.0, partition = tp.1, "resume failed: {err}"),
            }
        }
    }
}
