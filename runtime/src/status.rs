//! What a running pod knows about itself, for the admin endpoint: liveness, readiness, and the
//! `/status` document (assignment, per-partition offsets and lag, worker states, the plugin).
//!
//! `Health` is shared by the pipeline's threads. Each piece is written by the one thread that
//! owns it (the poll loop its heartbeat and lifecycle, a worker its probe, librdkafka's
//! statistics callback the watermarks) and read when the endpoint is asked, so nothing here
//! costs the event path more than an atomic store per plugin call.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::metrics::Metrics;
use crate::offsets::TopicPartition;
use crate::sync::lock;

/// Where the run is in its life: `Starting -> Consuming -> Draining -> Stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    /// Loading the plugin, opening instances, joining the group.
    Starting,
    /// Running.
    Consuming,
    /// Stopping: draining in-flight events, flushing, committing.
    Draining,
    /// Done.
    Stopped,
}

impl Lifecycle {
    const ALL: [Lifecycle; 4] = [
        Lifecycle::Starting,
        Lifecycle::Consuming,
        Lifecycle::Draining,
        Lifecycle::Stopped,
    ];
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerState {
    /// Waiting for events.
    Idle,
    /// Inside a `process` call.
    Processing,
    /// Inside a `flush` call.
    Flushing,
    /// Inside an `assigned` or `revoked` call.
    Rebalancing,
    /// Closed its instance and ended.
    Stopped,
    /// Its thread ended unexpectedly: the pod is not live.
    Exited,
    /// Waiting for the schema registry to decode its events.
    WaitingForRegistry,
}

impl WorkerState {
    const ALL: [WorkerState; 7] = [
        WorkerState::Idle,
        WorkerState::Processing,
        WorkerState::Flushing,
        WorkerState::Rebalancing,
        WorkerState::Stopped,
        WorkerState::Exited,
        WorkerState::WaitingForRegistry,
    ];
}

/// One worker's state, written by its thread.
#[derive(Debug)]
pub struct WorkerProbe {
    base: Instant,
    state: AtomicU8,
    /// Since when (ms after `base`) the worker is in its state.
    since_ms: AtomicU64,
    busy_ns: AtomicU64,
    events: AtomicU64,
}

impl WorkerProbe {
    fn new(base: Instant) -> Self {
        WorkerProbe {
            base,
            state: AtomicU8::new(WorkerState::Idle as u8),
            since_ms: AtomicU64::new(base.elapsed().as_millis() as u64),
            busy_ns: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }

    /// The worker enters `state`.
    pub fn set(&self, state: WorkerState) {
        self.set_at(state, Instant::now());
    }

    /// The worker entered `state` at `at` (a clock reading the caller already has).
    pub fn set_at(&self, state: WorkerState, at: Instant) {
        let since = at.saturating_duration_since(self.base).as_millis() as u64;
        self.since_ms.store(since, Ordering::Relaxed);
        self.state.store(state as u8, Ordering::Release);
    }

    /// A plugin call that began at `started` ended at `ended` after `events` events; the worker
    /// is idle again.
    pub fn done(&self, started: Instant, ended: Instant, events: usize) {
        let busy = ended.saturating_duration_since(started);
        self.busy_ns
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        self.set_at(WorkerState::Idle, ended);
    }

    fn state(&self) -> WorkerState {
        WorkerState::ALL[self.state.load(Ordering::Acquire) as usize]
    }
}

/// Marks the worker `Exited` if its thread ends without saying `Stopped` (a panic in the host).
#[derive(Debug)]
pub struct ExitGuard(pub Arc<WorkerProbe>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if self.0.state() != WorkerState::Stopped {
            self.0.set(WorkerState::Exited);
        }
    }
}

/// An assigned partition as the dispatcher sees it right now.
#[derive(Debug, Clone)]
pub struct PartitionLive {
    /// Which partition.
    pub tp: TopicPartition,
    /// The workers its events go to.
    pub workers: Vec<usize>,
    /// Events read and not yet through the plugin.
    pub in_flight: usize,
    /// Events read while paused, waiting.
    pub held: usize,
    /// Paused for backpressure, or while its state restores.
    pub paused: bool,
    /// Its state is being restored (off the poll thread); its events wait.
    pub restoring: bool,
}

/// Reads the dispatcher's partitions (set by the pipeline once it has a dispatcher).
pub type PartitionView = Box<dyn Fn() -> Vec<PartitionLive> + Send + Sync>;

/// Offsets librdkafka's statistics reported for a partition.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerOffsets {
    /// Low watermark (-1: unknown).
    pub low: i64,
    /// High watermark (-1: unknown).
    pub high: i64,
    /// The group's committed offset as librdkafka last saw it (-1: none).
    pub committed: i64,
    /// The broker leading the partition (-1: unknown).
    pub leader: i32,
}

/// The [`SinkProbe::output`] of the schema registry: not an output, but events wait on it the
/// same way.
pub const REGISTRY: &str = "schema-registry";

/// A sink whose reachability counts for readiness.
#[derive(Debug, Clone)]
pub struct SinkProbe {
    /// The output name (or `dead-letters`).
    pub output: String,
    /// `kafka`, `postgres`, `mysql`.
    pub kind: &'static str,
    /// Whether the sink can currently write.
    pub reachable: Arc<AtomicBool>,
}

/// The run's health, shared by its threads.
pub struct Health {
    pipeline: String,
    started: Instant,
    started_unix: f64,
    lifecycle: AtomicU8,
    plugin_open: AtomicBool,
    group_joined: AtomicBool,
    /// ms after `started` of the poll loop's last turn.
    heartbeat_ms: AtomicU64,
    /// How long the poll loop may go without a turn before `/healthz` fails.
    liveness_ms: u64,
    workers: Mutex<Vec<Arc<WorkerProbe>>>,
    sinks: Mutex<Vec<SinkProbe>>,
    partitions: OnceLock<PartitionView>,
    broker_offsets: Mutex<HashMap<TopicPartition, BrokerOffsets>>,
    brokers: Mutex<Vec<BrokerStatus>>,
    committed: Mutex<HashMap<TopicPartition, i64>>,
    plugin: Mutex<Option<PluginStatus>>,
    capacity: Mutex<Option<Capacity>>,
    events_in: OnceLock<Arc<dyn Fn() -> u64 + Send + Sync>>,
    /// The pipeline's condition (`condition::decide`), since when, and what it is about.
    condition: Mutex<(Condition, Instant, Vec<String>)>,
    /// Why the remedies gave up: `/healthz` fails with it.
    gave_up: Mutex<Option<String>>,
    /// When the current streak of failed commits began.
    commits_failing_since: Mutex<Option<Instant>>,
    /// Kafka's recent refusals: subject -> (message, last seen).
    refusals: Mutex<BTreeMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("pipeline", &self.pipeline)
            .field("lifecycle", &self.lifecycle())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// A run of `pipeline` starting now; the poll loop must turn at least every `liveness`.
    pub fn new(pipeline: &str, liveness: Duration) -> Health {
        Health {
            pipeline: pipeline.to_owned(),
            started: Instant::now(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            lifecycle: AtomicU8::new(Lifecycle::Starting as u8),
            plugin_open: AtomicBool::new(false),
            group_joined: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            liveness_ms: liveness.as_millis() as u64,
            workers: Mutex::default(),
            sinks: Mutex::default(),
            partitions: OnceLock::new(),
            broker_offsets: Mutex::default(),
            brokers: Mutex::default(),
            committed: Mutex::default(),
            plugin: Mutex::new(None),
            capacity: Mutex::default(),
            events_in: OnceLock::new(),
            // A starting pod holds no partition: never `Healthy` before the first verdict.
            condition: Mutex::new((Condition::Unassigned, Instant::now(), Vec::new())),
            gave_up: Mutex::default(),
            commits_failing_since: Mutex::default(),
            refusals: Mutex::default(),
        }
    }

    /// The condition now: what, for how long, about what.
    pub fn condition(&self) -> (Condition, Duration, Vec<String>) {
        let c = lock(&self.condition);
        (c.0, c.1.elapsed(), c.2.clone())
    }

    /// A new condition (or new subjects of the same one).
    pub fn set_condition(&self, condition: Condition, subjects: Vec<String>) {
        let mut c = lock(&self.condition);
        let since = if c.0 == condition {
            c.1
        } else {
            Instant::now()
        };
        *c = (condition, since, subjects);
    }

    /// The remedies gave up: `/healthz` fails from now on with `why`.
    pub fn give_up(&self, why: String) {
        *lock(&self.gave_up) = Some(why);
    }

    /// A commit failed (`true`) or worked (`false`).
    pub fn commit_result(&self, failed: bool) {
        let mut since = self
            .commits_failing_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !failed {
            *since = None;
        } else if since.is_none() {
            *since = Some(Instant::now());
        }
    }

    /// For how long commits have been failing.
    pub fn commits_failing_for(&self) -> Option<Duration> {
        lock(&self.commits_failing_since).map(|at| at.elapsed())
    }

    /// librdkafka's last reported offsets of `tp`.
    pub fn broker_offsets(&self, tp: &TopicPartition) -> Option<BrokerOffsets> {
        lock(&self.broker_offsets).get(tp).copied()
    }

    /// When the run started (seconds since the epoch).
    pub fn started_unix(&self) -> f64 {
        self.started_unix
    }

    /// Where the run is.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::ALL[self.lifecycle.load(Ordering::Acquire) as usize]
    }

    /// Moves the run to `state`.
    pub fn set_lifecycle(&self, state: Lifecycle) {
        self.lifecycle.store(state as u8, Ordering::Release);
    }

    /// The plugin now running (after an upgrade or a rollback), and what became of the upgrade.
    pub fn set_plugin(&self, plugin: PluginStatus) {
        *lock(&self.plugin) = Some(plugin);
    }

    /// What `/status` shows of the plugin.
    pub fn plugin(&self) -> Option<PluginStatus> {
        lock(&self.plugin).clone()
    }

    /// Every plugin instance is open.
    pub fn set_plugin_open(&self, plugin: PluginStatus, capacity: Capacity) {
        *lock(&self.plugin) = Some(plugin);
        self.set_capacity(capacity);
        self.plugin_open.store(true, Ordering::Release);
    }

    /// The worker count or the CPU quota changed.
    pub fn set_capacity(&self, capacity: Capacity) {
        *lock(&self.capacity) = Some(capacity);
    }

    /// The consumer joined its group.
    pub fn set_group_joined(&self) {
        self.group_joined.store(true, Ordering::Release);
    }

    /// The poll loop turned.
    pub fn heartbeat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A probe for a new worker.
    pub fn add_worker(&self) -> Arc<WorkerProbe> {
        let probe = Arc::new(WorkerProbe::new(self.started));
        lock(&self.workers).push(probe.clone());
        probe
    }

    /// The highest-numbered worker was stopped on purpose (the pool shrank).
    pub fn remove_last_worker(&self) {
        lock(&self.workers).pop();
    }

    /// A sink to check for readiness.
    pub fn add_sink(&self, probe: SinkProbe) {
        lock(&self.sinks).push(probe);
    }

    /// Where the dispatcher's partitions are read from.
    pub fn set_partition_view(&self, view: PartitionView) {
        let _ = self.partitions.set(view);
    }

    /// Where the total of events handed to the plugin is read from.
    pub fn set_events_in(&self, read: Arc<dyn Fn() -> u64 + Send + Sync>) {
        let _ = self.events_in.set(read);
    }

    /// librdkafka's statistics reported these offsets.
    pub fn set_broker_offsets(&self, offsets: HashMap<TopicPartition, BrokerOffsets>) {
        *self
            .broker_offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = offsets;
    }

    /// librdkafka's statistics reported these brokers.
    pub fn set_brokers(&self, brokers: Vec<BrokerStatus>) {
        *lock(&self.brokers) = brokers;
    }

    /// The group committed these offsets.
    pub fn committed(&self, commits: &[(TopicPartition, i64)]) {
        let mut committed = lock(&self.committed);
        for (tp, offset) in commits {
            committed.insert(tp.clone(), *offset);
        }
    }

    /// The group's committed offset of `tp` as far as this pod knows (its own commits, or
    /// what librdkafka last fetched).
    pub fn committed_offset(&self, tp: &TopicPartition) -> Option<i64> {
        let ours = self
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tp)
            .copied()
            .unwrap_or(-1);
        let theirs = self
            .broker_offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tp)
            .map_or(-1, |b| b.committed);
        let offset = ours.max(theirs);
        (offset >= 0).then_some(offset)
    }

    /// Why the pod is not live, if it is not: the poll loop stalled or a worker thread died.
    pub fn liveness(&self) -> Result<(), String> {
        let lifecycle = self.lifecycle();
        if lifecycle == Lifecycle::Stopped {
            return Ok(());
        }
        let now = self.started.elapsed().as_millis() as u64;
        let beat = self.heartbeat_ms.load(Ordering::Relaxed);
        if lifecycle != Lifecycle::Starting && now.saturating_sub(beat) > self.liveness_ms {
            return Err(format!(
                "the poll loop has not turned for {} ms (limit {} ms)",
                now - beat,
                self.liveness_ms
            ));
        }
        let workers = lock(&self.workers);
        if let Some(i) = workers
            .iter()
            .position(|w| w.state() == WorkerState::Exited)
        {
            return Err(format!("worker {i} ended unexpectedly"));
        }
        if let Some(why) = &*lock(&self.gave_up) {
            return Err(why.clone());
        }
        Ok(())
    }

    /// How long a Kafka refusal counts after it was last seen (librdkafka retries a refused
    /// login within its reconnect backoff, at most 10 s, and a group lookup every second).
    pub const ACCESS_DENIED_FOR: Duration = Duration::from_secs(30);

    /// Records a refusal by Kafka; true when it is news (not seen within
    /// [`ACCESS_DENIED_FOR`](Self::ACCESS_DENIED_FOR)): worth a log line.
    pub fn access_denied(&self, refusal: &crate::kafka_access::Refusal) -> bool {
        let now = Instant::now();
        let previous =
            lock(&self.refusals).insert(refusal.subject.clone(), (refusal.message.clone(), now));
        previous.is_none_or(|(_, seen)| now.duration_since(seen) > Self::ACCESS_DENIED_FOR)
    }

    /// Kafka's refusals seen within [`ACCESS_DENIED_FOR`](Self::ACCESS_DENIED_FOR): (subject,
    /// message).
    pub fn refusals(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        let mut refusals = lock(&self.refusals);
        refusals.retain(|_, (_, seen)| now.duration_since(*seen) <= Self::ACCESS_DENIED_FOR);
        refusals
            .iter()
            .map(|(subject, (message, _))| (subject.clone(), message.clone()))
            .collect()
    }

    /// Why the pod is not ready, if it is not.
    pub fn readiness(&self) -> Readiness {
        let sinks = lock(&self.sinks);
        let unreachable: Vec<String> = sinks
            .iter()
            .filter(|s| !s.reachable.load(Ordering::Acquire))
            .map(|s| s.output.clone())
            .collect();
        Readiness {
            plugin_open: self.plugin_open.load(Ordering::Acquire),
            group_joined: self.group_joined.load(Ordering::Acquire),
            unreachable_sinks: unreachable,
            refusals: self.refusals().into_iter().map(|(_, m)| m).collect(),
            lifecycle: self.lifecycle(),
        }
    }

    /// Sets the sampled gauges of `metrics` from the current state (called before a scrape).
    pub fn refresh(&self, metrics: &Metrics) {
        let partitions = self.partition_status(metrics);
        for vec in [
            &metrics.consumer_lag,
            &metrics.committed_offset,
            &metrics.high_watermark,
            &metrics.in_flight_events,
            &metrics.held_events,
            &metrics.partition_paused,
        ] {
            vec.reset();
        }
        metrics.assigned_partitions.set(partitions.len() as i64);
        for p in &partitions {
            let labels = [p.topic.as_str(), &p.partition.to_string()];
            if let Some(lag) = p.lag {
                metrics.consumer_lag.with_label_values(&labels).set(lag);
            }
            if let Some(committed) = p.committed {
                metrics
                    .committed_offset
                    .with_label_values(&labels)
                    .set(committed);
            }
            if let Some(high) = p.high_watermark {
                metrics.high_watermark.with_label_values(&labels).set(high);
            }
            metrics
                .in_flight_events
                .with_label_values(&labels)
                .set(p.in_flight as i64);
            metrics
                .held_events
                .with_label_values(&labels)
                .set(p.held as i64);
            metrics
                .partition_paused
                .with_label_values(&labels)
                .set(i64::from(p.paused));
        }
        for s in lock(&self.sinks).iter() {
            metrics
                .sink_reachable
                .with_label_values(&[&s.output])
                .set(i64::from(s.reachable.load(Ordering::Acquire)));
        }
        metrics.ready.set(i64::from(self.readiness().ready()));
    }

    fn partition_status(&self, metrics: &Metrics) -> Vec<PartitionStatus> {
        let live = self.partitions.get().map(|view| view()).unwrap_or_default();
        let broker = self
            .broker_offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let committed = self
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out: Vec<PartitionStatus> = live
            .into_iter()
            .map(|p| {
                let b = broker.get(&p.tp).copied().unwrap_or(BrokerOffsets {
                    low: -1,
                    high: -1,
                    committed: -1,
                    leader: -1,
                });
                // Ours is current right after a commit; librdkafka's after another member's.
                let committed = committed.get(&p.tp).copied().unwrap_or(-1).max(b.committed);
                let committed = (committed >= 0).then_some(committed);
                let high = (b.high >= 0).then_some(b.high);
                // Nothing committed yet: the group starts at the low watermark.
                let from = committed.or((b.low >= 0).then_some(b.low));
                let lag = high.zip(from).map(|(h, c)| (h - c).max(0));
                let events = metrics.enabled.then(|| {
                    metrics
                        .events_consumed
                        .with_label_values(&[p.tp.topic.as_str(), &p.tp.partition.to_string()])
                        .get()
                });
                PartitionStatus {
                    topic: p.tp.topic,
                    partition: p.tp.partition,
                    workers: p.workers,
                    committed,
                    high_watermark: high,
                    lag,
                    in_flight: p.in_flight,
                    held: p.held,
                    paused: p.paused,
                    restoring: p.restoring,
                    events,
                    leader: (b.leader >= 0).then_some(b.leader),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// The `/status` document.
    pub fn status(&self, metrics: &Metrics) -> Status {
        let readiness = self.readiness();
        let live = self.liveness().err();
        let workers = lock(&self.workers);
        let now_ms = self.started.elapsed().as_millis() as u64;
        let partitions = self.partition_status(metrics);
        let worker_status = workers
            .iter()
            .enumerate()
            .map(|(id, w)| WorkerStatus {
                id,
                state: w.state(),
                state_seconds: now_ms.saturating_sub(w.since_ms.load(Ordering::Relaxed)) as f64
                    / 1000.0,
                busy_seconds: w.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
                events: w.events.load(Ordering::Relaxed),
                partitions: partitions
                    .iter()
                    .filter(|p| p.workers.contains(&id))
                    .map(|p| format!("{}/{}", p.topic, p.partition))
                    .collect(),
            })
            .collect();
        let sinks = self
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| SinkStatus {
                output: s.output.clone(),
                kind: s.kind.to_owned(),
                reachable: s.reachable.load(Ordering::Acquire),
            })
            .collect();
        let (condition, for_time, subjects) = self.condition();
        Status {
            pipeline: self.pipeline.clone(),
            condition: ConditionStatus {
                name: condition.name().to_owned(),
                seconds: for_time.as_secs_f64(),
                subjects,
            },
            lifecycle: readiness.lifecycle,
            ready: readiness.ready(),
            not_ready: readiness.reasons(),
            live,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            plugin: lock(&self.plugin).clone(),
            capacity: self
                .capacity
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            totals: Totals {
                events_consumed: self.events_in.get().map_or(0, |read| read()),
                records_emitted: Metrics::by_label(&metrics.records_emitted),
                event_failures: Metrics::by_label(&metrics.event_failures),
                dead_letters: Metrics::sum(&metrics.dead_letters),
                events_skipped: Metrics::sum(&metrics.events_skipped),
                rebalances: Metrics::sum(&metrics.rebalances),
                partition_pauses: metrics.partition_pauses.get(),
            },
            partitions,
            workers: worker_status,
            sinks,
            brokers: self
                .brokers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// The readiness conditions.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Every plugin instance is open.
    pub plugin_open: bool,
    /// The consumer joined its group.
    pub group_joined: bool,
    /// Outputs whose sink cannot currently write.
    pub unreachable_sinks: Vec<String>,
    /// What Kafka refused lately, explained.
    pub refusals: Vec<String>,
    /// Where the run is (ready only while `Consuming`).
    pub lifecycle: Lifecycle,
}

impl Readiness {
    /// All conditions hold.
    pub fn ready(&self) -> bool {
        self.reasons().is_empty()
    }

    /// What keeps the pod from being ready.
    pub fn reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.lifecycle {
            Lifecycle::Consuming => {}
            Lifecycle::Starting => out.push("starting".to_owned()),
            Lifecycle::Draining => out.push("draining".to_owned()),
            Lifecycle::Stopped => out.push("stopped".to_owned()),
        }
        if !self.plugin_open {
            out.push("plugin not open".to_owned());
        }
        if !self.group_joined {
            out.push("consumer group not joined".to_owned());
        }
        out.extend(self.refusals.iter().cloned());
        for sink in &self.unreachable_sinks {
            if sink == REGISTRY {
                out.push("schema registry unreachable".to_owned());
            } else {
                out.push(format!("output {sink} unreachable"));
            }
        }
        out
    }
}

/// The loaded plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The ABI version it was built against.
    pub abi_version: String,
    /// The library file.
    pub path: String,
    /// The library's sha256.
    pub sha256: String,
    /// The last plugin upgrade without a restart (`POST /plugin`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upgrade: Option<UpgradeStatus>,
}

/// What became of the last plugin upgrade.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpgradeStatus {
    /// "name version" before.
    pub from: String,
    /// "name version" asked for.
    pub to: String,
    /// `watching` (running the new version through its first events), `upgraded` (kept),
    /// `rolled-back` (back to `from`) or `refused` (nothing changed).
    pub outcome: String,
    /// Why, in one line.
    pub message: String,
}

/// The worker count and what it was derived from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capacity {
    /// Worker threads.
    pub workers: usize,
    /// The container's CPU quota, if any.
    pub cpu_quota: Option<f64>,
    /// CPUs the host offers.
    pub host_cpus: usize,
}

/// One assigned partition in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionStatus {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Workers its events go to.
    pub workers: Vec<usize>,
    /// The group's committed offset.
    pub committed: Option<i64>,
    /// The broker's high watermark.
    pub high_watermark: Option<i64>,
    /// `high_watermark - committed`.
    pub lag: Option<i64>,
    /// Events read and not yet through the plugin.
    pub in_flight: usize,
    /// Events read while paused, waiting.
    pub held: usize,
    /// Paused for backpressure, or while its state restores.
    pub paused: bool,
    /// Its state is being restored; its events wait (absent when not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restoring: bool,
    /// Events of this partition handed to the plugin (absent with `admin.metrics: false`).
    pub events: Option<u64>,
    /// The broker (node id) leading it, as librdkafka last saw it.
    #[serde(default)]
    pub leader: Option<i32>,
}

/// A broker of the cluster as the source's client sees it, in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerStatus {
    /// Node id.
    pub id: i32,
    /// `host:port`.
    pub address: String,
    /// librdkafka's connection state: `UP` when connected; `INIT` for a broker not needed yet;
    /// `DOWN`, `TRY_CONNECT`, `CONNECT`: the connection is lost and being retried; `GONE`: a
    /// lost broker the cluster's metadata no longer lists (stopped, or fenced by the controller).
    pub state: String,
    /// For how long.
    pub state_seconds: f64,
    /// Assigned partitions it leads.
    pub leads: Vec<String>,
}

/// One worker in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Worker index.
    pub id: usize,
    /// What it is doing.
    pub state: WorkerState,
    /// For how long.
    pub state_seconds: f64,
    /// Seconds spent in plugin calls.
    pub busy_seconds: f64,
    /// Events it processed.
    pub events: u64,
    /// `topic/partition` it gets events of.
    pub partitions: Vec<String>,
}

/// One sink in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkStatus {
    /// Output name.
    pub output: String,
    /// `kafka`, `postgres`, `mysql`.
    pub kind: String,
    /// Whether it can currently write.
    pub reachable: bool,
}

/// Counters since the start, in `/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Events handed to the plugin.
    pub events_consumed: u64,
    /// Records emitted per output.
    pub records_emitted: BTreeMap<String, u64>,
    /// Failed events per class.
    pub event_failures: BTreeMap<String, u64>,
    /// Failed events dead-lettered.
    pub dead_letters: u64,
    /// Failed events skipped.
    pub events_skipped: u64,
    /// Rebalance callbacks.
    pub rebalances: u64,
    /// Backpressure pauses.
    pub partition_pauses: u64,
}

/// The pipeline's condition in `/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConditionStatus {
    /// `Healthy`, `Idle`, `Unassigned`, `Starved`, `Stalled`, `SinkDown`, `CommitsFailing`, `AccessDenied`.
    pub name: String,
    /// For how long.
    pub seconds: f64,
    /// The stalled partitions or unreachable outputs.
    pub subjects: Vec<String>,
}

/// The `/status` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Pipeline name.
    pub pipeline: String,
    /// Whether it makes progress (`condition::decide`).
    #[serde(default)]
    pub condition: ConditionStatus,
    /// Where the run is.
    pub lifecycle: Lifecycle,
    /// Whether `/readyz` says ready.
    pub ready: bool,
    /// Why not, if not.
    pub not_ready: Vec<String>,
    /// Why the pod is not live, if it is not.
    pub live: Option<String>,
    /// Seconds since the start.
    pub uptime_seconds: f64,
    /// The plugin (once loaded).
    pub plugin: Option<PluginStatus>,
    /// Workers and CPU quota (once started).
    pub capacity: Option<Capacity>,
    /// Counters since the start.
    pub totals: Totals,
    /// Assigned partitions.
    pub partitions: Vec<PartitionStatus>,
    /// Workers.
    pub workers: Vec<WorkerStatus>,
    /// Sinks.
    pub sinks: Vec<SinkStatus>,
    /// The Kafka cluster's brokers as the source's client sees them (empty for a file source).
    #[serde(default)]
    pub brokers: Vec<BrokerStatus>,
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `12.3s`, `4m05s`, `2h03m`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Status {
    /// The status as a readable table (`sluice status`).
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let ready = if self.ready {
            "ready".to_owned()
        } else {
            format!("NOT READY ({})", self.not_ready.join(", "))
        };
        let _ = writeln!(
            out,
            "pipeline {}  {:?}  {ready}  up {}",
            self.pipeline,
            self.lifecycle,
            human_duration(self.uptime_seconds)
        );
        if !self.condition.name.is_empty() {
            let about = if self.condition.subjects.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.condition.subjects.join(" "))
            };
            let _ = writeln!(
                out,
                "condition {} for {}{about}",
                self.condition.name,
                human_duration(self.condition.seconds)
            );
        }
        if let Some(why) = &self.live {
            let _ = writeln!(out, "NOT LIVE: {why}");
        }
        if let Some(p) = &self.plugin {
            let _ = writeln!(
                out,
                "plugin   {} {} (ABI {})  {}",
                p.name, p.version, p.abi_version, p.path
            );
            if let Some(u) = &p.last_upgrade {
                let _ = writeln!(
                    out,
                    "upgrade  {} -> {}: {} ({})",
                    u.from, u.to, u.outcome, u.message
                );
            }
        }
        if let Some(c) = &self.capacity {
            let quota = c
                .cpu_quota
                .map_or_else(|| "no CPU quota".to_owned(), |q| format!("CPU quota {q}"));
            let _ = writeln!(
                out,
                "workers  {} ({quota}, {} host CPUs)",
                c.workers, c.host_cpus
            );
        }
        let t = &self.totals;
        let emitted: Vec<String> = t
            .records_emitted
            .iter()
            .map(|(o, n)| format!("{o}={n}"))
            .collect();
        let failures: Vec<String> = t
            .event_failures
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "events   in {}  out {}  failed {}  dead-lettered {}  skipped {}  rebalances {}  pauses {}",
            t.events_consumed,
            if emitted.is_empty() {
                "0".to_owned()
            } else {
                emitted.join(" ")
            },
            if failures.is_empty() {
                "0".to_owned()
            } else {
                failures.join(" ")
            },
            t.dead_letters,
            t.events_skipped,
            t.rebalances,
            t.partition_pauses
        );
        let _ = writeln!(out);
        let rows: Vec<[String; 9]> = self
            .partitions
            .iter()
            .map(|p| {
                [
                    p.topic.clone(),
                    p.partition.to_string(),
                    opt(p.committed),
                    opt(p.high_watermark),
                    opt(p.lag),
                    p.in_flight.to_string(),
                    p.held.to_string(),
                    match (p.restoring, p.paused) {
                        (true, _) => "restoring",
                        (false, true) => "yes",
                        (false, false) => "no",
                    }
                    .to_owned(),
                    p.workers
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect();
        table(
            &mut out,
            [
                "TOPIC",
                "PARTITION",
                "COMMITTED",
                "HIGH",
                "LAG",
                "IN FLIGHT",
                "HELD",
                "PAUSED",
                "WORKERS",
            ],
            &rows,
        );
        if self.partitions.is_empty() {
            let _ = writeln!(out, "(no partitions assigned)");
        }
        let _ = writeln!(out);
        let rows: Vec<[String; 5]> = self
            .workers
            .iter()
            .map(|w| {
                [
                    w.id.to_string(),
                    format!("{:?} for {}", w.state, human_duration(w.state_seconds)).to_lowercase(),
                    format!("{:.1}s", w.busy_seconds),
                    w.events.to_string(),
                    w.partitions.join(" "),
                ]
            })
            .collect();
        table(
            &mut out,
            ["WORKER", "STATE", "BUSY", "EVENTS", "PARTITIONS"],
            &rows,
        );
        if !self.sinks.is_empty() {
            let _ = writeln!(out);
            let rows: Vec<[String; 3]> = self
                .sinks
                .iter()
                .map(|s| {
                    [
                        s.output.clone(),
                        s.kind.clone(),
                        if s.reachable {
                            "reachable"
                        } else {
                            "UNREACHABLE"
                        }
                        .to_owned(),
                    ]
                })
                .collect();
            table(&mut out, ["OUTPUT", "KIND", "STATE"], &rows);
        }
        if !self.brokers.is_empty() {
            let _ = writeln!(out);
            let rows: Vec<[String; 4]> = self
                .brokers
                .iter()
                .map(|b| {
                    [
                        format!("{} {}", b.id, b.address),
                        format!("{} for {}", b.state, human_duration(b.state_seconds)),
                        b.leads.len().to_string(),
                        b.leads.join(" "),
                    ]
                })
                .collect();
            table(
                &mut out,
                ["BROKER", "CONNECTION", "LEADS", "PARTITIONS"],
                &rows,
            );
        }
        out
    }
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(out: &mut String, head: [&str; N], rows: &[[String; N]]) {
    use std::fmt::Write as _;
    let mut widths = head.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(head.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        let h = Health::new("p", Duration::from_secs(60));
        h.set_partition_view(Box::new(|| {
            vec![PartitionLive {
                tp: TopicPartition::new("in", 0),
                workers: vec![0],
                in_flight: 3,
                held: 0,
                paused: false,
                restoring: false,
            }]
        }));
        h
    }

    #[test]
    fn lag_is_the_high_watermark_minus_the_newest_committed_offset() {
        let h = health();
        let m = Metrics::new("p", true);
        h.set_broker_offsets(HashMap::from([(
            TopicPartition::new("in", 0),
            BrokerOffsets {
                low: 0,
                high: 100,
                committed: 40,
                leader: 1,
            },
        )]));
        assert_eq!(h.status(&m).partitions[0].lag, Some(60));
        h.committed(&[(TopicPartition::new("in", 0), 70)]);
        let p = &h.status(&m).partitions[0];
        assert_eq!((p.committed, p.lag), (Some(70), Some(30)));
        // Nothing committed yet: the lag counts from the low watermark.
        let fresh = health();
        fresh.set_broker_offsets(HashMap::from([(
            TopicPartition::new("in", 0),
            BrokerOffsets {
                low: 5,
                high: 9,
                committed: -1,
                leader: -1,
            },
        )]));
        let p = &fresh.status(&m).partitions[0];
        assert_eq!((p.committed, p.lag), (None, Some(4)));
    }

    #[test]
    fn ready_only_while_consuming_with_everything_up() {
        let h = health();
        let reachable = Arc::new(AtomicBool::new(true));
        h.add_sink(SinkProbe {
            output: "rows".into(),
            kind: "postgres",
            reachable: reachable.clone(),
        });
        assert_eq!(
            h.readiness().reasons(),
            ["starting", "plugin not open", "consumer group not joined"]
        );
        h.set_plugin_open(
            PluginStatus {
                name: "x".into(),
                version: "1".into(),
                abi_version: "1.0".into(),
                path: "/x.so".into(),
                sha256: String::new(),
                last_upgrade: None,
            },
            Capacity {
                workers: 1,
                cpu_quota: None,
                host_cpus: 2,
            },
        );
        h.set_group_joined();
        h.set_lifecycle(Lifecycle::Consuming);
        assert!(h.readiness().ready());
        reachable.store(false, Ordering::Release);
        assert_eq!(h.readiness().reasons(), ["output rows unreachable"]);
        reachable.store(true, Ordering::Release);
        h.set_lifecycle(Lifecycle::Draining);
        assert_eq!(h.readiness().reasons(), ["draining"]);
    }

    #[test]
    fn a_worker_that_dies_or_a_stalled_poll_loop_is_not_live() {
        let h = Health::new("p", Duration::from_millis(50));
        let w = h.add_worker();
        h.set_lifecycle(Lifecycle::Consuming);
        h.heartbeat();
        assert_eq!(h.liveness(), Ok(()));
        drop(ExitGuard(w.clone()));
        assert_eq!(h.liveness(), Err("worker 0 ended unexpectedly".to_owned()));
        w.set(WorkerState::Stopped);
        std::thread::sleep(Duration::from_millis(80));
        assert!(
            h.liveness()
                .unwrap_err()
                .contains("poll loop has not turned")
        );
    }

    #[test]
    fn a_scrape_samples_the_state_gauges() {
        let h = health();
        let m = Metrics::new("p", true);
        h.add_sink(SinkProbe {
            output: "out".into(),
            kind: "kafka",
            reachable: Arc::new(AtomicBool::new(true)),
        });
        h.refresh(&m);
        let text = m.encode();
        assert!(
            text.contains("sluice_in_flight_events{partition=\"0\",topic=\"in\",pipeline=\"p\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sluice_sink_reachable{output=\"out\",pipeline=\"p\"} 1"),
            "{text}"
        );
        assert!(text.contains("sluice_ready{pipeline=\"p\"} 0"), "{text}");
    }

    #[test]
    fn renders_a_table() {
        let h = health();
        let m = Metrics::new("p", true);
        h.add_worker();
        let text = h.status(&m).render();
        assert!(text.contains("TOPIC  PARTITION  COMMITTED"), "{text}");
        assert!(text.contains("in     0          -"), "{text}");
        assert!(text.contains("idle for"), "{text}");
    }
}
