//! The Kafka source: a consumer group in, a thin adapter over the dispatcher (`crate::dispatch`).
//! One thread polls the consumer (so rebalance callbacks and the main queue are always served:
//! no split partition queues) and hands each burst to the dispatcher, which pauses a partition
//! with `partition-capacity` events in flight through this source and resumes it as its workers
//! catch up, so memory stays bounded whatever the input rate. Every `commit-interval-ms` the
//! workers flush their plugin instance and the offsets of complete units (processed, flushed and
//! acknowledged by every sink) are committed. On revoke the dispatcher releases the partitions
//! (drained, flushed, acknowledged and committed) before librdkafka lets them go; on
//! SIGTERM/SIGINT every partition is, then the consumer leaves the group. A fatal error stops
//! the pipeline with nothing committed past the failing event.
//!
//! `consumer` (creation, and the dispatcher's [`crate::dispatch::Source`]: pause, resume,
//! commit), `rebalance` (librdkafka's callbacks: start offsets, assign and release),
//! `statistics` (librdkafka's statistics), `commit` (the commit cycle), `answers` (the broker's
//! answers to asynchronous commits), `watch` (is it making progress), `upgrade` (plugin
//! upgrades without a restart); the loop is [`run_with`].

mod answers;
mod commit;
mod consumer;
mod rebalance;
mod statistics;
mod upgrade;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use crate::config::{OutputSpec, PipelineSpec, SourceSpec};
use crate::cpu::CpuWatch;
use crate::dispatch::{Context, Dispatcher, ResumeFrom, Settings, partition_view};
use crate::error::RunError;
use crate::message::{Message, TopicNames};
use crate::offsets::TopicPartition;
use crate::pipeline::{Setup, Summary, start};
use crate::shutdown::Shutdown;
use crate::status::Lifecycle;
use crate::sync::lock;
use crate::telemetry::StopReason;
use crate::worker::{OutputTarget, Positions, WorkerShared};
use commit::CommitCycle;
use consumer::{KafkaConsumer, create_consumer};

/// How long a poll turn goes on gathering events after its first one when they come slower than a
/// burst fills: at low rates every fetch response would otherwise be a burst of a few events and
/// wake the workers (at 5,000 events/s, hundreds of wake-ups a second for a few events each).
/// Gathered, a worker is woken at most once per turn, for at most this much added latency; at
/// full speed the burst fills first and nothing waits.
const GATHER: Duration = Duration::from_millis(5);

/// `sluice dlq replay --through`: the pipeline reads its dead-letter topic instead of its
/// source, hands the plugin only the selected dead letters (without their `sluice.*`
/// provenance headers), and stops once it has read as far as the topic reached when the replay
/// began; then it drains and commits as on SIGTERM.
pub struct ReplayUntil {
    /// Which dead letters the plugin gets; the others are read and passed over.
    pub keep: Box<dyn Fn(&Message) -> bool + Send>,
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
    let (mut running, pool) = start(
        spec,
        &Setup {
            // The poll loop may block for a revoke's drain plus a transaction commit.
            liveness: drain_timeout * 2 + Duration::from_secs(30),
            // A replay is a one-off command, not a pod: it serves no endpoint.
            admin: replay.is_none(),
            group: &source.group_id,
            batch_size: source.batch_size,
            replay: replay.is_some(),
            one_worker: false,
            positions: Positions::Offsets,
        },
    )?;
    let telemetry = running.telemetry.clone();
    let failure = running.failure.clone();
    // Plugin upgrades without a restart (`POST /plugin`), when the admin endpoint takes them.
    let mut upgrader = running
        .upgrades
        .take()
        .map(|requests| upgrade::Upgrader::new(requests, spec));
    let dispatcher = Arc::new(Mutex::new(Dispatcher::new(
        pool,
        Settings {
            ordering: spec.ordering,
            capacity: source.partition_capacity,
            drain_timeout,
        },
        Context {
            tracker: running.tracker.clone(),
            failure: failure.clone(),
            telemetry: telemetry.clone(),
            state: running.shared.state.clone(),
            resume_from: exactly_once(spec, &running.shared),
            transactions: spec
                .producer
                .transactional_id
                .is_some()
                .then(|| running.shared.sink.clone())
                .flatten(),
        },
    )));
    telemetry
        .health
        .set_partition_view(partition_view(&dispatcher));
    let consumer = create_consumer(
        spec,
        source,
        dispatcher.clone(),
        telemetry.clone(),
        running.stats_interval.as_deref(),
    )?;
    let topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Setup(format!("cannot subscribe to {topics:?}: {e}")))?;

    // Workers follow the CPU quota unless the spec fixes their number.
    let mut cpu_watch = spec.workers.is_none().then(CpuWatch::new);
    let mut cycle = CommitCycle::new(
        &consumer,
        Duration::from_millis(source.commit_interval_ms),
        spec.producer.transactional_id.is_some(),
    );
    // Is it making progress? With the admin endpoint on (librdkafka's statistics give the lag).
    let mut watch = (running.stats_interval.is_some() && replay.is_none())
        .then(|| watch::Watch::new(&spec.admin, &source.topics, &telemetry));
    let mut replay_done_now = false;
    let mut secrets = crate::kafka_client::SecretWatch::of(spec);
    let mut rotated = None;
    let mut topic_names = TopicNames::default();
    telemetry.health.set_lifecycle(Lifecycle::Consuming);
    while !shutdown.requested() && !failure.is_set() {
        telemetry.health.heartbeat();
        // Drain what librdkafka has ready in one burst, then hand each worker its share in one
        // message: one wake-up per burst, not per event.
        let burst_limit = {
            let mut d = lock(&dispatcher);
            d.begin_turn();
            d.finish_restores();
            d.release_held(&consumer);
            source.batch_size * d.worker_count()
        };
        let mut burst = Vec::new();
        let mut wait = Duration::from_millis(50);
        let mut gather_until = None;
        while burst.len() < burst_limit {
            match consumer.poll(wait) {
                Some(Ok(message)) => {
                    let topic = topic_names.get(rdkafka::Message::topic(&message));
                    burst.push(Message::from_kafka(&message, topic));
                }
                Some(Err(err)) => {
                    if !consumer.context().access.report(&err, &err.to_string()) {
                        tracing::warn!("consumer: {err}");
                    }
                }
                None => break,
            }
            // After the first event, what arrives within GATHER joins the burst. In whole
            // milliseconds: librdkafka waits in milliseconds, and rdkafka's poll spins through a
            // timeout's sub-millisecond rest (a queue poll of 0 ms, again and again).
            let until = *gather_until.get_or_insert_with(|| Instant::now() + GATHER);
            let rest = until.saturating_duration_since(Instant::now());
            wait = Duration::from_millis(rest.as_micros().div_ceil(1000) as u64);
        }
        if let Some(replay) = &replay {
            burst.retain(|m| (replay.keep)(m));
        }
        lock(&dispatcher).dispatch(&consumer, burst);
        if let Some(replay) = &replay {
            if replay_done(&consumer, &dispatcher, &replay.end) {
                tracing::info!("replay: read to where the dead-letter topic ended");
                replay_done_now = true;
                break;
            }
        }
        cycle.turn(&consumer, &dispatcher);
        if let Some(file) = secrets.changed() {
            rotated = Some(file.to_path_buf());
            break;
        }
        if let Some(watch) = &mut watch {
            watch.turn(&consumer, &dispatcher, &telemetry);
        }
        if let Some(upgrader) = &mut upgrader {
            upgrader.turn(spec, &consumer, &dispatcher, &running.shared);
        }
        // The CPU quota changed (an in-place resize): the pool follows, between flush rounds.
        if cycle.idle() {
            if let Some(cpu) = cpu_watch.as_mut().and_then(CpuWatch::due) {
                lock(&dispatcher).resize(cpu);
            }
        }
    }

    // Stop: drain and commit every partition, then leave the group.
    let fatal = failure.get();
    let reason = if fatal.is_some() {
        StopReason::Fatal
    } else if replay_done_now {
        StopReason::ReplayDone
    } else if let Some(file) = &rotated {
        tracing::info!(
            file = %file.display(),
            "a Kafka credential changed: draining and committing, then starting again with new clients"
        );
        StopReason::CredentialsRotated
    } else {
        StopReason::Signal
    };
    lock(&dispatcher).drain(&consumer, reason);
    cycle.close();
    consumer.unsubscribe();
    drop(consumer);
    let mut d = lock(&dispatcher);
    let mut summary = running.finish(d.workers_mut(), drain_timeout, fatal)?;
    summary.credentials_rotated = rotated.is_some();
    Ok(summary)
}

/// Replays: every partition of the dead-letter topic is assigned here, read up to its end, and
/// nothing is held back in a paused partition.
fn replay_done(
    consumer: &KafkaConsumer,
    dispatcher: &Mutex<Dispatcher>,
    end: &HashMap<TopicPartition, i64>,
) -> bool {
    {
        let d = lock(dispatcher);
        if d.partitions().len() < end.values().filter(|e| **e > 0).count() || d.holds_events() {
            return false;
        }
    }
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

/// The reader of stored offsets, when the pipeline has an exactly-once output: that output's
/// writer reads them (the rebalance callback opens no connection of its own).
fn exactly_once(spec: &PipelineSpec, shared: &Arc<WorkerShared>) -> Option<ResumeFrom> {
    let name = spec.outputs.iter().find_map(|(name, o)| match o {
        OutputSpec::Postgres(t) if t.exactly_once => Some(name.clone()),
        _ => None,
    })?;
    let shared = shared.clone();
    let read: ResumeFrom = Box::new(move || match shared.outputs.get(&name) {
        Some((OutputTarget::Table(table), _)) => table.stored_offsets(),
        _ => Err(format!("output `{name}` is not a table")),
    });
    Some(read)
}
