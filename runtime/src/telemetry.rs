//! Telemetry as small typed events: each one logs (once, with its partitions) and counts, so the
//! log line and the metric can never disagree. Call sites build an event and `emit` it; they
//! never touch a metric or write a lifecycle log line themselves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::offsets::TopicPartition;
use crate::status::Health;

/// A run's metrics and health.
#[derive(Debug)]
pub struct Telemetry {
    /// The Prometheus metrics.
    pub metrics: Metrics,
    /// Liveness, readiness, status.
    pub health: Health,
}

impl Telemetry {
    /// Telemetry for pipeline `pipeline`.
    pub fn new(pipeline: &str, metrics_enabled: bool, liveness: Duration) -> Telemetry {
        let metrics = Metrics::new(pipeline, metrics_enabled);
        let health = Health::new(pipeline, liveness);
        metrics.start_time_seconds.set(health.started_unix());
        Telemetry { metrics, health }
    }

    /// Emits `event`.
    pub fn emit(&self, event: impl InternalEvent) {
        event.emit(self);
    }
}

/// Something that happened, logged and counted in one place.
pub trait InternalEvent {
    /// Logs and counts the event.
    fn emit(self, t: &Telemetry);
}

/// `topic/partition` list for a log line.
struct Partitions<'a>(&'a [TopicPartition]);

impl std::fmt::Display for Partitions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, TopicPartition { topic, partition }) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{topic}/{partition}")?;
        }
        Ok(())
    }
}

/// The consumer group assigned partitions to this pod.
#[derive(Debug)]
pub struct PartitionsAssigned<'a> {
    /// The new partitions.
    pub partitions: &'a [TopicPartition],
}

impl InternalEvent for PartitionsAssigned<'_> {
    fn emit(self, t: &Telemetry) {
        tracing::info!(partitions = %Partitions(self.partitions), count = self.partitions.len(), "assigned");
        t.metrics.rebalances.with_label_values(&["assign"]).inc();
        t.health.set_group_joined();
    }
}

/// The group took partitions away: they are drained, flushed and committed before release.
#[derive(Debug)]
pub struct PartitionsRevoked<'a> {
    /// The partitions.
    pub partitions: &'a [TopicPartition],
    /// Kafka transactions: their offsets commit with the open transaction.
    pub into_transaction: bool,
}

impl InternalEvent for PartitionsRevoked<'_> {
    fn emit(self, t: &Telemetry) {
        let (partitions, count) = (Partitions(self.partitions), self.partitions.len());
        if self.into_transaction {
            tracing::info!(partitions = %partitions, count, "revoked: draining into the transaction");
        } else {
            tracing::info!(partitions = %partitions, count, "revoked: draining");
        }
        t.metrics.rebalances.with_label_values(&["revoke"]).inc();
    }
}

/// Why the pipeline stops.
#[derive(Debug, Clone, Copy)]
pub enum StopReason {
    /// SIGTERM / SIGINT.
    Signal,
    /// A fatal error.
    Fatal,
    /// A dead-letter replay read to its end.
    ReplayDone,
    /// A file source read to its end.
    EndOfInput,
    /// A Kafka credential file changed: the run starts again with new clients.
    CredentialsRotated,
}

/// The pipeline stops fetching and drains every partition (not ready from here on).
#[derive(Debug)]
pub struct Draining<'a> {
    /// Why.
    pub reason: StopReason,
    /// The partitions being drained.
    pub partitions: &'a [TopicPartition],
}

impl InternalEvent for Draining<'_> {
    fn emit(self, t: &Telemetry) {
        let reason = match self.reason {
            StopReason::Signal => "signal",
            StopReason::Fatal => "fatal error",
            StopReason::ReplayDone => "replay done",
            StopReason::EndOfInput => "end of input",
            StopReason::CredentialsRotated => "credentials rotated",
        };
        t.health.set_lifecycle(crate::status::Lifecycle::Draining);
        t.metrics.ready.set(0);
        tracing::info!(reason, partitions = %Partitions(self.partitions), "draining");
    }
}

/// When offsets were committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPoint {
    /// The commit interval (logged at debug: it happens every second).
    Interval,
    /// Partitions revoked, or the final drain.
    Release,
    /// A Kafka transaction committed with them.
    Transaction,
}

/// The group committed offsets.
#[derive(Debug)]
pub struct OffsetsCommitted<'a> {
    /// What was committed: the next offset to read per partition (may be empty).
    pub commits: &'a [(TopicPartition, i64)],
    /// When.
    pub point: CommitPoint,
    /// `Release`: the partitions released, whose final position is logged (even when nothing
    /// new was committed for them).
    pub released: &'a [TopicPartition],
}

impl InternalEvent for OffsetsCommitted<'_> {
    fn emit(self, t: &Telemetry) {
        t.health.commit_result(false);
        if !self.commits.is_empty() {
            t.metrics.commits.inc();
            t.health.committed(self.commits);
        }
        let show = |offsets: &mut dyn Iterator<Item = (&TopicPartition, Option<i64>)>| {
            offsets
                .map(
                    |(
                        TopicPartition {
                            topic,
                            partition: p,
                        },
                        o,
                    )| match o {
                        Some(o) => format!("{topic}/{p}@{o}"),
                        None => format!("{topic}/{p}@-"),
                    },
                )
                .collect::<Vec<_>>()
                .join(" ")
        };
        if self.point == CommitPoint::Release {
            let offsets = show(
                &mut self
                    .released
                    .iter()
                    .map(|tp| (tp, t.health.committed_offset(tp))),
            );
            tracing::info!(partitions = %Partitions(self.released), offsets = %offsets, "committed");
        } else if !self.commits.is_empty() {
            let offsets = show(&mut self.commits.iter().map(|(tp, o)| (tp, Some(*o))));
            tracing::debug!(offsets = %offsets, point = ?self.point, "committed");
        }
    }
}

/// An offset commit failed (retried at the next interval).
#[derive(Debug)]
pub struct CommitFailed<'a> {
    /// The error.
    pub error: &'a str,
    /// Whether it is retried.
    pub retried: bool,
}

impl InternalEvent for CommitFailed<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics.commit_failures.inc();
        t.health.commit_result(true);
        if self.retried {
            tracing::warn!("commit failed, will retry: {}", self.error);
        } else {
            tracing::warn!("commit failed: {}", self.error);
        }
    }
}

/// The run is over.
#[derive(Debug)]
pub struct Stopped;

impl InternalEvent for Stopped {
    fn emit(self, t: &Telemetry) {
        t.health.set_lifecycle(crate::status::Lifecycle::Stopped);
        t.metrics.ready.set(0);
        tracing::info!("stopped");
    }
}

/// A partition reached `partition-capacity` and was paused.
#[derive(Debug)]
pub struct PartitionPaused<'a> {
    /// Which.
    pub tp: &'a TopicPartition,
}

impl InternalEvent for PartitionPaused<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics.partition_pauses.inc();
        tracing::debug!(topic = %self.tp.topic, partition = self.tp.partition, "paused: partition-capacity reached");
    }
}

/// The worker pool was resized to follow the container's CPU quota.
#[derive(Debug)]
pub struct WorkersResized {
    /// Workers before.
    pub from: usize,
    /// Workers after.
    pub to: usize,
    /// The quota that asked for it, in CPUs (`None`: no quota, the host's CPUs).
    pub quota_cpus: Option<f64>,
    /// Partitions that moved to another worker.
    pub moved: usize,
    /// How long the poll loop spent on it (queued events of the moved partitions processed and
    /// flushed first).
    pub took: std::time::Duration,
}

impl InternalEvent for WorkersResized {
    fn emit(self, t: &Telemetry) {
        t.metrics.worker_resizes.inc();
        tracing::info!(
            from = self.from,
            to = self.to,
            quota_cpus = ?self.quota_cpus,
            moved_partitions = self.moved,
            took_ms = self.took.as_millis() as u64,
            "workers resized to follow the CPU quota"
        );
    }
}

/// An event failed; counted once per event, whatever the policy then does with it.
#[derive(Debug)]
pub struct EventFailed {
    /// Its error-policy class.
    pub class: &'static str,
}

impl InternalEvent for EventFailed {
    fn emit(self, t: &Telemetry) {
        t.metrics
            .event_failures
            .with_label_values(&[self.class])
            .inc();
    }
}

/// Where a failed event was.
#[derive(Debug, Clone, Copy)]
pub struct Failed<'a> {
    /// What failed, for the log line: "failed event", "row the database rejected".
    pub what: &'a str,
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset (none for a record emitted by `flush`).
    pub offset: Option<i64>,
    /// Its error-policy class.
    pub class: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub message: &'a str,
    /// The output that rejected it (sink rejections).
    pub output: Option<&'a str>,
    /// Where, as the source names it: `topic/partition@offset`, or `file:line` for a file.
    pub at: &'a str,
}

impl Failed<'_> {
    /// The source offset, or `-` for a record emitted by `flush`.
    fn offset_text(&self) -> String {
        self.offset
            .map_or_else(|| "-".to_owned(), |o| o.to_string())
    }
}

/// A failed event was skipped by policy.
#[derive(Debug)]
pub struct EventSkipped<'a>(pub Failed<'a>);

impl InternalEvent for EventSkipped<'_> {
    fn emit(self, t: &Telemetry) {
        let f = self.0;
        t.metrics.events_skipped.with_label_values(&[f.class]).inc();
        tracing::warn!(at = f.at, topic = %f.topic, partition = f.partition, offset = %f.offset_text(), class = f.class, attempts = f.attempts, output = f.output.unwrap_or("-"), "skipped {}: {}", f.what, f.message);
    }
}

/// A failed event was written to the dead-letter topic or file.
#[derive(Debug)]
pub struct EventDeadLettered<'a> {
    /// The event.
    pub failed: Failed<'a>,
    /// Where: `topic NAME` or `file PATH`.
    pub to: &'a str,
}

impl InternalEvent for EventDeadLettered<'_> {
    fn emit(self, t: &Telemetry) {
        let f = self.failed;
        t.metrics.dead_letters.with_label_values(&[f.class]).inc();
        tracing::warn!(at = f.at, topic = %f.topic, partition = f.partition, offset = %f.offset_text(), class = f.class, attempts = f.attempts, output = f.output.unwrap_or("-"), dead_letters = %self.to, "dead-lettered {}: {}", f.what, f.message);
    }
}

/// A sink cannot write (connection lost, broker down): retrying; workers wait on it.
#[derive(Debug)]
pub struct SinkUnavailable<'a> {
    /// What is down, for the log line: "database", "broker".
    pub what: &'a str,
    /// The output.
    pub output: &'a str,
    /// The error.
    pub error: &'a str,
    /// Its reachability flag (readiness).
    pub reachable: &'a AtomicBool,
    /// Whether this is the first failure of an outage (logged once per outage).
    pub first: bool,
}

impl InternalEvent for SinkUnavailable<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics
            .sink_failures
            .with_label_values(&[self.output, "transient"])
            .inc();
        self.reachable.store(false, Ordering::Release);
        if self.first {
            tracing::warn!(output = %self.output, "{} unavailable, retrying: workers wait on it (a partition pauses once partition-capacity of its events are in flight) and nothing past it is committed: {}", self.what, self.error);
        }
    }
}

/// A sink that was unavailable writes again.
#[derive(Debug)]
pub struct SinkRecovered<'a> {
    /// What was down.
    pub what: &'a str,
    /// The output.
    pub output: &'a str,
    /// Its reachability flag.
    pub reachable: &'a AtomicBool,
}

/// The Kafka producer lost every broker connection, or got one back (librdkafka's statistics,
/// every `admin.lag-interval-ms`). Logs the edge once; the flag drives readiness and
/// `sluice_sink_reachable`.
#[derive(Debug)]
pub struct ProducerReachability<'a> {
    /// Whether some broker connection is up.
    pub up: bool,
    /// The Kafka outputs, for the log line.
    pub outputs: &'a str,
    /// Their reachability flag.
    pub reachable: &'a AtomicBool,
}

impl InternalEvent for ProducerReachability<'_> {
    fn emit(self, _t: &Telemetry) {
        if self.reachable.swap(self.up, Ordering::AcqRel) == self.up {
            return;
        }
        if self.up {
            tracing::info!(outputs = %self.outputs, "broker reachable again: producing");
        } else {
            tracing::warn!(outputs = %self.outputs, "no broker reachable: records wait in the producer (up to message.timeout.ms) and partitions pause when full");
        }
    }
}

/// The schema registry stopped answering a worker, or answered again. Logs the edge once; the
/// flag drives readiness and `sluice_sink_reachable{output="schema-registry"}`.
#[derive(Debug)]
pub struct RegistryReachability<'a> {
    /// Whether it answered.
    pub up: bool,
    /// The error, when it did not.
    pub error: &'a str,
    /// Its reachability flag.
    pub reachable: &'a AtomicBool,
}

impl InternalEvent for RegistryReachability<'_> {
    fn emit(self, _t: &Telemetry) {
        if self.reachable.swap(self.up, Ordering::AcqRel) == self.up {
            return;
        }
        if self.up {
            tracing::info!("schema registry reachable again: decoding");
        } else {
            tracing::warn!(
                "{}: events wait for it (their partitions pause once full) and nothing past them is committed",
                self.error
            );
        }
    }
}

impl InternalEvent for SinkRecovered<'_> {
    fn emit(self, _t: &Telemetry) {
        self.reachable.store(true, Ordering::Release);
        tracing::info!(output = %self.output, "{} reachable again: writing", self.what);
    }
}

/// A sink rejected a record for good (the record meets `error-policy.sink-rejection`).
#[derive(Debug)]
pub struct SinkRejected<'a> {
    /// The output.
    pub output: &'a str,
}

impl InternalEvent for SinkRejected<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics
            .sink_failures
            .with_label_values(&[self.output, "rejected"])
            .inc();
        t.emit(EventFailed {
            class: "sink-rejection",
        });
    }
}

/// The producer gave up on a record (after `message.timeout.ms`): the pipeline stops.
#[derive(Debug)]
pub struct DeliveryFailed<'a> {
    /// The output (or `dead-letters`).
    pub output: &'a str,
}

impl InternalEvent for DeliveryFailed<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics
            .sink_failures
            .with_label_values(&[self.output, "delivery"])
            .inc();
    }
}

/// Kafka refused a client: a login, a TLS handshake, or an operation its ACLs do not allow.
/// Logged once per distinct refusal while it recurs; the `AccessDenied` condition holds while
/// it does.
#[derive(Debug)]
pub struct KafkaAccessDenied<'a> {
    /// `source.kafka` or `producer`.
    pub client: &'static str,
    /// What Kafka refused, explained.
    pub refusal: &'a crate::kafka_access::Refusal,
}

impl InternalEvent for KafkaAccessDenied<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics
            .kafka_access_denied
            .with_label_values(&[self.client, self.refusal.kind.label()])
            .inc();
        if t.health.access_denied(self.refusal) {
            tracing::error!(
                client = self.client,
                kind = self.refusal.kind.label(),
                "{}",
                self.refusal.message
            );
        }
    }
}

/// Where a partition's state came from on assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The local copy was current (a checkpoint): only the changelog after it was read.
    Checkpoint,
    /// No usable local copy: the whole changelog was read.
    Beginning,
}

/// A partition's state stores are being restored from their changelogs.
#[derive(Debug)]
pub struct StateRestoring<'a> {
    /// The input partition.
    pub partition: &'a TopicPartition,
    /// Changelog records to read (over all its stores).
    pub records: i64,
    /// From the local checkpoint or the beginning.
    pub from: RestoreFrom,
}

impl InternalEvent for StateRestoring<'_> {
    fn emit(self, t: &Telemetry) {
        let from = match self.from {
            RestoreFrom::Checkpoint => "local checkpoint",
            RestoreFrom::Beginning => "beginning of the changelog",
        };
        tracing::info!(partition = %self.partition, records = self.records, from, "state: restoring; the partition's events wait");
        t.metrics
            .state_restore_remaining
            .with_label_values(&[&self.partition.topic, &self.partition.partition.to_string()])
            .set(self.records);
    }
}

/// Restore progress: `remaining` records left for the partition.
#[derive(Debug)]
pub struct StateRestoreProgress<'a> {
    /// The input partition.
    pub partition: &'a TopicPartition,
    /// The store the records went to.
    pub store: &'a str,
    /// Records applied since the last progress event.
    pub records: u64,
    /// Their bytes (keys and values).
    pub bytes: u64,
    /// Records still to read for the partition.
    pub remaining: i64,
}

impl InternalEvent for StateRestoreProgress<'_> {
    fn emit(self, t: &Telemetry) {
        let m = &t.metrics;
        m.state_restored_records
            .with_label_values(&[self.store])
            .inc_by(self.records);
        m.state_restored_bytes
            .with_label_values(&[self.store])
            .inc_by(self.bytes);
        m.state_restore_remaining
            .with_label_values(&[&self.partition.topic, &self.partition.partition.to_string()])
            .set(self.remaining.max(0));
    }
}

/// A partition's state is restored; its events go on.
#[derive(Debug)]
pub struct StateRestored<'a> {
    /// The input partition.
    pub partition: &'a TopicPartition,
    /// Changelog records applied.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// How long it took.
    pub took: Duration,
}

impl InternalEvent for StateRestored<'_> {
    fn emit(self, t: &Telemetry) {
        tracing::info!(
            partition = %self.partition,
            records = self.records,
            bytes = self.bytes,
            seconds = format!("{:.3}", self.took.as_secs_f64()),
            "state: restored"
        );
        t.metrics
            .state_restore_remaining
            .with_label_values(&[&self.partition.topic, &self.partition.partition.to_string()])
            .set(0);
    }
}

/// A rewind reset a partition's state: every key was deleted (tombstones in the changelog).
#[derive(Debug)]
pub struct StateReset<'a> {
    /// The input partition.
    pub partition: &'a TopicPartition,
    /// Keys deleted (over all stores).
    pub keys: u64,
    /// Why: `--reset` or no committed offset.
    pub why: &'a str,
}

impl InternalEvent for StateReset<'_> {
    fn emit(self, t: &Telemetry) {
        let _ = t;
        tracing::info!(partition = %self.partition, keys = self.keys, why = self.why, "state: reset to empty with the rewound input");
    }
}

/// The pipeline's condition changed (`condition::decide`): logged once on entry (with what it is
/// about) and once on exit (with how long it lasted), counted, and the gauge moved.
#[derive(Debug)]
pub struct ConditionChanged<'a> {
    /// The condition left.
    pub from: crate::condition::Condition,
    /// How long it lasted.
    pub lasted: Duration,
    /// The condition entered.
    pub to: crate::condition::Condition,
    /// The stalled partitions or unreachable outputs.
    pub subjects: &'a [String],
}

impl InternalEvent for ConditionChanged<'_> {
    fn emit(self, t: &Telemetry) {
        use crate::condition::Condition;
        let (from, to) = (self.from.name(), self.to.name());
        let lasted = format!("{:.1}", self.lasted.as_secs_f64());
        match self.from {
            Condition::Healthy | Condition::Idle => {
                tracing::debug!(condition = from, seconds = lasted, "condition over")
            }
            _ => tracing::info!(condition = from, seconds = lasted, "condition over"),
        }
        let about = self.subjects.join(" ");
        match self.to {
            Condition::Healthy | Condition::Idle => {
                tracing::info!(condition = to, "condition: {to}")
            }
            Condition::AccessDenied => {
                tracing::warn!(condition = to, refused = %about, "condition: AccessDenied: Kafka refuses this pipeline's principal (see the error above); nothing past the refused work is committed")
            }
            Condition::SinkDown => {
                tracing::warn!(condition = to, outputs = %about, "condition: SinkDown: an output cannot be reached; workers wait on it and nothing past it is committed")
            }
            Condition::CommitsFailing => tracing::warn!(
                condition = to,
                "condition: CommitsFailing: offset commits keep failing; a restart would replay everything since the last one"
            ),
            Condition::Stalled => {
                tracing::warn!(condition = to, partitions = %about, "condition: Stalled: partitions with lag make no progress")
            }
            Condition::Starved => tracing::warn!(
                condition = to,
                "condition: Starved: the group has lag but this member holds no partition"
            ),
            Condition::Unassigned => tracing::info!(
                condition = to,
                "condition: Unassigned: this member holds no partition (waiting for an assignment)"
            ),
        }
        t.metrics.set_condition(self.to);
        t.metrics.condition_changes.with_label_values(&[to]).inc();
        t.health.set_condition(self.to, self.subjects.to_vec());
    }
}

/// A remedy for `Starved` or `Stalled`: leave the group and join again (a stalled partition then
/// restarts from its committed offset).
#[derive(Debug)]
pub struct RemedyTried {
    /// The condition.
    pub condition: crate::condition::Condition,
    /// Which attempt.
    pub attempt: u32,
    /// Of how many.
    pub of: u32,
}

impl InternalEvent for RemedyTried {
    fn emit(self, t: &Telemetry) {
        tracing::warn!(
            condition = self.condition.name(),
            attempt = self.attempt,
            of = self.of,
            "remedy: leaving the group and joining again (partitions restart from their committed offsets)"
        );
        t.metrics.remedies.with_label_values(&["rejoin"]).inc();
    }
}

/// The remedies did not help: `/healthz` fails from now on, so the pod is restarted.
#[derive(Debug)]
pub struct RemediesExhausted {
    /// The condition.
    pub condition: crate::condition::Condition,
    /// Attempts made.
    pub attempts: u32,
}

impl InternalEvent for RemediesExhausted {
    fn emit(self, t: &Telemetry) {
        let why = format!(
            "{} after {} rejoins: restart the pod",
            self.condition.name(),
            self.attempts
        );
        tracing::error!(
            condition = self.condition.name(),
            attempts = self.attempts,
            "remedies exhausted: /healthz fails from now on"
        );
        t.metrics.remedies.with_label_values(&["give-up"]).inc();
        t.health.give_up(why);
    }
}
