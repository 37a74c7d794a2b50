//! Workers: each owns one plugin instance on its own OS thread (plugin calls block and may be
//! slow, so they never run on an async executor). Events arrive in order through the worker's
//! inbox, so whatever the dispatcher sends one worker (a whole partition, or one key's events)
//! keeps its order end to end.
//!
//! Every event carries the offset unit the dispatcher registered for it. A worker's part of a
//! unit is marked *processed* only by the next `flush` (or `revoked`), because a plugin may
//! buffer what it derived from it until then; records the plugin emits from `flush` acknowledge
//! every unit since the previous flush, records emitted from `process` every unit of the batch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use prometheus::{Counter, IntCounter};

use rdkafka::message::Headers;
use sluice_plugin_api::abi::{Event, Header, Partition, Record};
use sluice_plugin_api::host::{CallError, Collector, EventErrorKind, Instance, Refusal, no_state};

use crate::config::{Action, ClassPolicy, ErrorPolicy};
use crate::dead_letter::{DeadLetters, Failure};
use crate::error_policy::{self, Attempt, Class, Verdict};
use crate::fatal::Fatal;
use crate::message::Message;
use crate::offsets::{OffsetTracker, TopicPartition, UnitId};
use crate::schema::{DecodeError, Decoded, Decoder, Encoder, RAW_VALUE_HEADER, SCHEMA_ID_HEADER};
use crate::sink::kafka::{Ack, KafkaSink, Units};
use crate::sink::local::LocalOutput;
use crate::sink::table::TableSink;
use crate::state::StateStores;
use crate::status::{ExitGuard, WorkerProbe, WorkerState};
use crate::sync::lock;
use crate::telemetry::{
    EventDeadLettered, EventFailed, EventSkipped, Failed, RegistryReachability, Telemetry,
};

/// Accepts and drops records and state writes (reads see the stores): the rerun that finds a
/// panicking event changes nothing.
struct Discard<'a>(&'a str, Option<&'a StateStores>);

impl Collector for Discard<'_> {
    fn emit(&mut self, _output: &str, _record: &Record<'_>) -> Result<(), Refusal> {
        Ok(())
    }
    fn event_error(&mut self, _index: usize, _kind: EventErrorKind, _message: &str) {}
    fn log(&mut self, level: u32, message: &str) {
        crate::plugin::log_line(self.0, level, message);
    }
    fn state_get(
        &mut self,
        partition: (&str, i32),
        store: &str,
        key: &[u8],
        value: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let state = self.1.ok_or_else(|| no_state(store))?;
        state.get(partition, store, key, value)
    }
    fn state_put(
        &mut self,
        _partition: (&str, i32),
        store: &str,
        _key: &[u8],
        _value: Option<&[u8]>,
    ) -> Result<(), String> {
        self.1.map(|_| ()).ok_or_else(|| no_state(store))
    }
    fn state_scan(
        &mut self,
        partition: (&str, i32),
        store: &str,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), String> {
        let state = self.1.ok_or_else(|| no_state(store))?;
        state.scan(partition, store, prefix, visit)
    }
}

/// Where an output name leads.
#[derive(Debug)]
pub enum OutputTarget {
    /// A Kafka topic; values encoded by `encoder` (schema-registry formats) when set.
    Kafka(String, Option<Encoder>),
    /// stdout or a file: written synchronously, so nothing to acknowledge later.
    Local(Mutex<LocalOutput>),
    /// A database table: rows are acknowledged once their batch is committed.
    Table(TableSink),
}

/// How a source's positions read in messages: Kafka offsets, or a file's lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    /// `topic/partition offsets A-B`, `topic/partition@OFFSET`.
    Offsets,
    /// `PATH lines A-B`, `PATH:LINE` (a line is its offset + 1).
    Lines(String),
}

impl Positions {
    /// Events `from` to `to` of `tp`.
    pub fn range(&self, tp: &TopicPartition, from: i64, to: i64) -> String {
        match self {
            Positions::Offsets => format!("{tp} offsets {from}-{to}"),
            Positions::Lines(path) => format!("{path} lines {}-{}", from + 1, to + 1),
        }
    }

    /// One event of `tp`.
    pub fn at(&self, tp: &TopicPartition, offset: i64) -> String {
        match self {
            Positions::Offsets => format!("{tp}@{offset}"),
            Positions::Lines(path) => format!("{path}:{}", offset + 1),
        }
    }
}

/// One event handed to a worker.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub message: Message,
    /// The offset unit it belongs to.
    pub unit: UnitId,
    /// Its partition's in-flight counter, decremented once the plugin has had the event.
    pub in_flight: Arc<AtomicUsize>,
}

/// What a worker is told to do, in order.
#[derive(Debug)]
pub enum Command {
    /// Events of assigned partitions; a partition's events in offset order.
    Events(Vec<Delivery>),
    /// Partitions newly pinned to this worker.
    Assigned(Vec<TopicPartition>),
    /// Finish everything queued, call `revoked` and `flush`, then reply.
    Revoke(Vec<TopicPartition>, mpsc::SyncSender<()>),
    /// Wake up: a request may be waiting on the worker's request channel.
    Nudge,
    /// Finish everything queued, call `flush`, then reply (a transaction's commit point).
    Barrier(mpsc::SyncSender<()>),
    /// Plugin upgrade: put this instance in place of the current one (whose partitions were
    /// released first), close the old one, reply.
    Swap(Box<Instance>, mpsc::SyncSender<()>),
    /// Close the instance and end the thread.
    Stop,
}

/// What the poll thread asks of a worker ahead of its queued events (served between two inbox
/// messages, so never in the middle of a unit).
#[derive(Debug)]
pub enum Request {
    /// Flush the instance, then reply (the commit cycle).
    Flush(mpsc::SyncSender<()>),
    /// Give these partitions up now: call `revoked` and flush, then reply with their events still
    /// queued here, unprocessed and in order, for their new worker (a pool resize).
    Handoff(Vec<TopicPartition>, mpsc::SyncSender<Vec<Delivery>>),
}

/// Shared by every worker of a pipeline.
#[derive(Debug)]
pub struct WorkerShared {
    /// The plugin's name and version, for messages (an upgrade changes it).
    pub plugin: crate::plugin::PluginLabel,
    /// Outputs by name, with the counter of records emitted to each.
    pub outputs: HashMap<String, (OutputTarget, IntCounter)>,
    /// The Kafka producer, if any output is a topic (or dead letters are on).
    pub sink: Option<Arc<KafkaSink>>,
    /// Where dead letters go, if any class says `dead-letter`.
    pub dead_letters: Option<DeadLetters>,
    /// Offset bookkeeping.
    pub tracker: Arc<Mutex<OffsetTracker>>,
    /// The first fatal error; once set, nothing more is marked processed.
    pub failure: Fatal,
    /// The error policy.
    pub policy: ErrorPolicy,
    /// Events handed to the plugin.
    pub events_in: AtomicU64,
    /// Of those, events the plugin failed (an event error or a panic): a plugin upgrade's
    /// error rate is read from these two.
    pub events_failed: AtomicU64,
    /// Dead-letter replays: the plugin does not see the `sluice.*` provenance headers.
    pub strip_provenance: bool,
    /// Metrics and health.
    pub telemetry: Arc<Telemetry>,
    /// How positions read in error messages.
    pub positions: Positions,
    /// The state stores, when the spec declares any.
    pub state: Option<Arc<StateStores>>,
    /// Decodes event values before the plugin sees them (`source.kafka.format` other than raw).
    pub decoder: Option<Decoder>,
}

/// A value decoded for the plugin: `None` for a tombstone, else its schema id and JSON, or why
/// its schema does not decode it.
type DecodedValue = Option<Result<(u32, Decoded), String>>;

/// An event error a plugin call reported: index into the call's events, kind, message.
type EventFailure = (usize, EventErrorKind, String);

/// Routes a call's records to outputs on behalf of some units.
struct Emitter<'a> {
    shared: &'a WorkerShared,
    /// What this call's records acknowledge (one allocation per call, not per record).
    ack: Arc<Ack>,
    errors: Vec<EventFailure>,
    /// Records handed to remote sinks (Kafka, tables) for `ack`'s units during this call.
    sent: u32,
    /// The output the last record went to: a call's records mostly go to one output, so the
    /// name is compared, not hashed, per record.
    last: Option<(&'a str, &'a (OutputTarget, IntCounter))>,
}

impl Emitter<'_> {
    fn new(shared: &WorkerShared, ack: Ack) -> Emitter<'_> {
        Self::shared(shared, Arc::new(ack))
    }

    fn shared(shared: &WorkerShared, ack: Arc<Ack>) -> Emitter<'_> {
        Emitter {
            shared,
            ack,
            errors: Vec::new(),
            sent: 0,
            last: None,
        }
    }

    /// Adds this call's records to its units' outstanding counts (one lock per call).
    fn count_sent(&self) {
        if self.sent == 0 {
            return;
        }
        let mut tracker = self
            .shared
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (tp, unit) in self.ack.units() {
            tracker.emitted(tp, unit, self.sent);
        }
    }
}

impl Emitter<'_> {
    /// A record that does not fit its output's schema: `error-policy.sink-rejection`, at once
    /// (a retry would encode the same value the same way). Skipped and dead-lettered records count
    /// as handled; `fail` stops the pipeline before the event's offset is committed.
    fn reject(
        &mut self,
        output: &str,
        encoder: &Encoder,
        record: &Record<'_>,
        why: String,
    ) -> Result<(), Refusal> {
        let shared = self.shared;
        let class = Class::SinkRejection;
        shared.telemetry.emit(EventFailed {
            class: class.name(),
        });
        let message = format!(
            "the record does not fit schema id {} of subject `{}`: {why}",
            encoder.id, encoder.subject
        );
        let source = self.ack.units().next().map(|(tp, _)| tp.clone());
        let at = source
            .as_ref()
            .map_or_else(String::new, ToString::to_string);
        let failed = Failed {
            what: "a record its output's schema refused",
            topic: source.as_ref().map_or("", |tp| tp.topic.as_str()),
            partition: source.as_ref().map_or(-1, |tp| tp.partition),
            offset: None,
            class: class.name(),
            attempts: 1,
            message: &message,
            output: Some(output),
            at: &at,
        };
        match class.policy(&shared.policy).then {
            Action::Skip => {
                shared.telemetry.emit(EventSkipped(failed));
                Ok(())
            }
            Action::DeadLetter => {
                let (Some(dlq), Some(tp)) = (&shared.dead_letters, &source) else {
                    shared
                        .failure
                        .set("dead-letter policy without a dead-letter topic or file".into());
                    return Err(Refusal::Invalid(message));
                };
                let failure = Failure {
                    class: class.name(),
                    message: &message,
                    attempts: 1,
                    topic: &tp.topic,
                    partition: tp.partition,
                    offset: None,
                    output: Some(output),
                };
                if dlq.acknowledged_later() {
                    self.sent += 1;
                }
                match dlq.send(
                    record.key_bytes(),
                    record.value_bytes(),
                    record.header_list(),
                    &failure,
                    self.ack.clone(),
                ) {
                    Ok(()) => {
                        shared.telemetry.emit(EventDeadLettered {
                            failed,
                            to: &dlq.label,
                        });
                        Ok(())
                    }
                    Err(err) => {
                        shared.failure.set(format!(
                            "output `{output}`: cannot write the dead letter for a record its schema refused: {err}"
                        ));
                        Err(Refusal::Invalid(message))
                    }
                }
            }
            Action::Fail => {
                shared.failure.set(format!(
                    "output `{output}` ({at}): {message}: fix the plugin's records or the schema, or set `error-policy.sink-rejection` to skip or dead-letter"
                ));
                Err(Refusal::Invalid(message))
            }
        }
    }
}

impl<'a> Collector for Emitter<'a> {
    fn emit(&mut self, output: &str, record: &Record<'_>) -> Result<(), Refusal> {
        let (target, written) = match self.last {
            Some((name, found)) if name == output => found,
            _ => {
                let Some((name, found)) = self.shared.outputs.get_key_value(output) else {
                    return Err(Refusal::UnknownOutput);
                };
                self.last = Some((name.as_str(), found));
                found
            }
        };
        match target {
            OutputTarget::Local(out) => {
                let mut out = lock(out);
                out.write(output, record).map_err(|e| {
                    if out.reader_gone(&e) {
                        self.shared.failure.set_reader_gone(format!(
                            "output `{output}`: the reader of stdout went away (a closed pipe): stopping"
                        ));
                    }
                    Refusal::Invalid(format!("writing to {} failed: {e}", out.target().display()))
                })
            }
            OutputTarget::Kafka(topic, encoder) => {
                let sink = self
                    .shared
                    .sink
                    .as_ref()
                    .ok_or_else(|| Refusal::Invalid("no producer".into()))?;
                let encoded;
                let record = match (encoder, record.value_bytes()) {
                    (Some(encoder), Some(value)) => match encoder.encode(value) {
                        Ok(bytes) => {
                            encoded = bytes;
                            (*record).value(&encoded)
                        }
                        Err(why) => return self.reject(output, encoder, record, why),
                    },
                    _ => *record,
                };
                // Counted even if the send fails: such a unit must never complete.
                self.sent += 1;
                sink.send(topic, &record, self.ack.clone())
                    .map_err(|e| Refusal::Invalid(e.to_string()))
            }
            OutputTarget::Table(table) => {
                let row = table
                    .row(record)
                    .map_err(|e| Refusal::Invalid(e.to_string()))?;
                self.sent += 1;
                table
                    .send(row, record, self.ack.clone())
                    .map_err(|e| Refusal::Invalid(e.to_string()))
            }
        }?;
        written.inc();
        Ok(())
    }

    fn event_error(&mut self, index: usize, kind: EventErrorKind, message: &str) {
        self.errors.push((index, kind, message.to_owned()));
    }

    fn log(&mut self, level: u32, message: &str) {
        crate::plugin::log_line(&self.shared.plugin.to_string(), level, message);
    }

    fn state_get(
        &mut self,
        partition: (&str, i32),
        store: &str,
        key: &[u8],
        value: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let state = self.shared.state.as_ref().ok_or_else(|| no_state(store))?;
        state.get(partition, store, key, value)
    }

    fn state_put(
        &mut self,
        partition: (&str, i32),
        store: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let state = self.shared.state.as_ref().ok_or_else(|| no_state(store))?;
        let Some(changelog) = state.put(partition, store, key, value)? else {
            return Ok(());
        };
        let sink = state
            .sink()
            .ok_or_else(|| "state: no producer for the changelog".to_owned())?;
        let record = Record::to("").key(key).partition(partition.1);
        let record = match value {
            Some(value) => record.value(value),
            None => record.tombstone(),
        };
        // Counted for the call's units even if the send fails: such a unit must never complete.
        self.sent += 1;
        sink.send(&changelog, &record, self.ack.clone())
            .map_err(|e| format!("state store `{store}`: {e}"))
    }

    fn state_scan(
        &mut self,
        partition: (&str, i32),
        store: &str,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), String> {
        let state = self.shared.state.as_ref().ok_or_else(|| no_state(store))?;
        state.scan(partition, store, prefix, visit)
    }
}

/// The partition hooks a worker calls.
#[derive(Debug, Clone, Copy)]
enum Hook {
    Assigned,
    Revoked,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Assigned => "assigned",
            Hook::Revoked => "revoked",
        }
    }
}

/// One worker thread's state.
pub struct Worker {
    instance: Instance,
    shared: Arc<WorkerShared>,
    batch_size: usize,
    /// Units processed by the plugin since the last flush.
    pending: Vec<(TopicPartition, UnitId)>,
    /// Flush requests of the commit cycle and handoffs: served between inbox messages, ahead of
    /// queued events, so a commit or a resize never waits behind a deep queue.
    requests: mpsc::Receiver<Request>,
    /// Inbox messages taken out of the channel by a handoff, to run before the next ones.
    backlog: std::collections::VecDeque<Command>,
    /// What this worker is doing, for `/status` and `/healthz`.
    probe: Arc<WorkerProbe>,
    /// Seconds inside plugin calls.
    busy: Counter,
    /// Events handed to the plugin per partition (resolved once per partition).
    consumed: HashMap<TopicPartition, IntCounter>,
    /// Partitions the instance processed since they were assigned, with the committed offset
    /// it was last told of (ABI 1.3 `committed`; -1: none yet). Empty when the plugin does not
    /// want to know.
    told: HashMap<TopicPartition, i64>,
    wants_committed: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker around an open instance.
    pub fn new(
        instance: Instance,
        shared: Arc<WorkerShared>,
        batch_size: usize,
        requests: mpsc::Receiver<Request>,
        id: usize,
        probe: Arc<WorkerProbe>,
    ) -> Self {
        let busy = shared
            .telemetry
            .metrics
            .worker_busy_seconds
            .with_label_values(&[&id.to_string()]);
        Worker {
            wants_committed: instance.plugin().wants_committed(),
            instance,
            shared,
            batch_size,
            pending: Vec::new(),
            requests,
            backlog: Default::default(),
            probe,
            busy,
            consumed: HashMap::new(),
            told: HashMap::new(),
        }
    }

    /// Enters `state` for a plugin call; returns when it started (one clock reading per edge).
    fn enter(&self, state: WorkerState) -> Instant {
        let now = Instant::now();
        self.probe.set_at(state, now);
        now
    }

    /// A plugin call that began at `started` ended after handling `events` events.
    fn leave(&self, started: Instant, events: usize) -> std::time::Duration {
        let ended = Instant::now();
        let busy = ended.saturating_duration_since(started);
        self.probe.done(started, ended, events);
        if self.shared.telemetry.metrics.enabled {
            self.busy.inc_by(busy.as_secs_f64());
        }
        busy
    }

    /// Serves every waiting request. Called only between inbox messages: a unit's part arrives
    /// in one message, so no part is marked processed with events of it still queued, and a
    /// handoff returns whole parts.
    fn serve_requests(&mut self, inbox: &mpsc::Receiver<Command>) {
        while let Ok(request) = self.requests.try_recv() {
            match request {
                Request::Flush(reply) => {
                    self.flush();
                    let _ = reply.send(());
                }
                Request::Handoff(partitions, reply) => {
                    let queued = self.take_queued(inbox, &partitions);
                    self.hook(Hook::Revoked, &partitions);
                    self.flush();
                    let _ = reply.send(queued);
                }
            }
        }
    }

    /// Takes the queued events of `partitions` out of the inbox (the rest stays, in order).
    fn take_queued(
        &mut self,
        inbox: &mpsc::Receiver<Command>,
        partitions: &[TopicPartition],
    ) -> Vec<Delivery> {
        while let Ok(command) = inbox.try_recv() {
            self.backlog.push_back(command);
        }
        let mut taken = Vec::new();
        for command in &mut self.backlog {
            if let Command::Events(events) = command {
                let (theirs, ours): (Vec<Delivery>, Vec<Delivery>) =
                    std::mem::take(events).into_iter().partition(|d| {
                        partitions.iter().any(|tp| {
                            tp.partition == d.message.partition() && tp.topic == d.message.topic()
                        })
                    });
                taken.extend(theirs);
                *events = ours;
            }
        }
        self.backlog
            .retain(|c| !matches!(c, Command::Events(events) if events.is_empty()));
        taken
    }

    /// The next inbox message: what a handoff set aside first.
    fn next_command(&mut self, inbox: &mpsc::Receiver<Command>, wait: bool) -> Option<Command> {
        if let Some(command) = self.backlog.pop_front() {
            return Some(command);
        }
        if wait {
            inbox.recv().ok()
        } else {
            inbox.try_recv().ok()
        }
    }

    /// Runs until [`Command::Stop`] or the sender is dropped.
    pub fn run(mut self, inbox: mpsc::Receiver<Command>) {
        let _exit = ExitGuard(self.probe.clone());
        loop {
            self.serve_requests(&inbox);
            let Some(command) = self.next_command(&inbox, true) else {
                break;
            };
            match command {
                Command::Events(mut batch) => {
                    while batch.len() < self.batch_size {
                        match self.next_command(&inbox, false) {
                            Some(Command::Events(more)) => batch.extend(more),
                            Some(other) => {
                                self.backlog.push_front(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    self.process(batch);
                }
                Command::Assigned(partitions) => self.hook(Hook::Assigned, &partitions),
                Command::Revoke(partitions, reply) => {
                    self.hook(Hook::Revoked, &partitions);
                    self.flush();
                    let _ = reply.send(());
                }
                Command::Nudge => {}
                Command::Barrier(reply) => {
                    self.flush();
                    let _ = reply.send(());
                }
                Command::Swap(instance, reply) => {
                    self.swap(*instance);
                    let _ = reply.send(());
                }
                Command::Stop => break,
            }
        }
        let shared = self.shared.clone();
        if let Err(err) = self
            .instance
            .close(&mut Emitter::new(&shared, Ack::many(Vec::new())))
        {
            tracing::warn!(plugin = %shared.plugin, "close failed: {err}");
        }
        self.probe.set(WorkerState::Stopped);
    }

    /// Puts `instance` in place of the current one and closes that (its partitions were
    /// released, so nothing of it is pending).
    fn swap(&mut self, instance: Instance) {
        let shared = self.shared.clone();
        self.wants_committed = instance.plugin().wants_committed();
        self.told.clear();
        let old = std::mem::replace(&mut self.instance, instance);
        let label = format!("{} {}", old.plugin().name(), old.plugin().version());
        if let Err(err) = old.close(&mut Emitter::new(&shared, Ack::many(Vec::new()))) {
            tracing::warn!(plugin = %label, "close failed: {err}");
        }
    }

    fn hook(&mut self, hook: Hook, partitions: &[TopicPartition]) {
        if self.shared.failure.is_set() {
            return;
        }
        let parts: Vec<Partition<'_>> = partitions
            .iter()
            .map(|tp| Partition::new(&tp.topic, tp.partition))
            .collect();
        let shared = self.shared.clone();
        let mut emitter = Emitter::new(&shared, Ack::many(self.pending.clone()));
        let started = self.enter(WorkerState::Rebalancing);
        let result = match hook {
            Hook::Assigned => self.instance.assigned(&parts, &mut emitter),
            Hook::Revoked => {
                self.told.retain(|tp, _| !partitions.contains(tp));
                self.instance.revoked(&parts, &mut emitter)
            }
        };
        self.leave(started, 0);
        emitter.count_sent(); // before the next flush marks the pending units processed
        if let Err(err) = result {
            shared.failure.set(format!(
                "plugin {} failed in {}: {err}",
                shared.plugin,
                hook.name()
            ));
        }
    }

    /// The partitions whose confirmed commit moved since the instance was last told, with it.
    fn newly_committed(&mut self) -> Vec<(TopicPartition, i64)> {
        if self.told.is_empty() {
            return Vec::new();
        }
        let tracker = lock(&self.shared.tracker);
        let mut moved = Vec::new();
        for (tp, told) in &mut self.told {
            if let Some(confirmed) = tracker.confirmed(tp).filter(|c| c > told) {
                *told = confirmed;
                moved.push((tp.clone(), confirmed));
            }
        }
        moved
    }

    fn flush(&mut self) {
        if self.shared.failure.is_set() {
            return;
        }
        let shared = self.shared.clone();
        let mut units = std::mem::take(&mut self.pending);
        // Each part is marked processed exactly once: a second mark would complete a unit whose
        // other parts are still running.
        let mut seen = std::collections::HashSet::with_capacity(units.len());
        units.retain(|(tp, unit)| seen.insert((tp.partition, *unit)));
        let mut emitter = Emitter::new(&shared, Ack::many(units.clone()));
        let committed = self.newly_committed();
        let started = self.enter(WorkerState::Flushing);
        // What is committed first (ABI 1.3): state it lets go of is written on behalf of the
        // units this flush completes.
        let result = if committed.is_empty() {
            Ok(())
        } else {
            let parts: Vec<Partition<'_>> = committed
                .iter()
                .map(|(tp, _)| Partition::new(&tp.topic, tp.partition))
                .collect();
            let offsets: Vec<i64> = committed.iter().map(|(_, o)| *o).collect();
            self.instance
                .committed(&parts, &offsets, &mut emitter)
                .map_err(|err| format!("plugin {} failed in committed: {err}", shared.plugin))
        };
        let result = result.and_then(|()| {
            self.instance
                .flush(&mut emitter)
                .map_err(|err| format!("plugin {} failed in flush: {err}", shared.plugin))
        });
        self.leave(started, 0);
        emitter.count_sent();
        match result {
            Ok(()) => {
                let mut tracker = lock(&shared.tracker);
                for (tp, unit) in units.iter() {
                    tracker.processed(tp, *unit);
                }
            }
            Err(err) => shared.failure.set(err),
        }
    }

    fn process(&mut self, batch: Vec<Delivery>) {
        let mut start = 0;
        while start < batch.len() {
            let first = &batch[start].message;
            let (topic, partition) = (first.topic(), first.partition());
            let end = batch[start..]
                .iter()
                .position(|d| d.message.partition() != partition || d.message.topic() != topic)
                .map_or(batch.len(), |n| start + n);
            for chunk in batch[start..end].chunks(self.batch_size) {
                self.process_partition(chunk);
            }
            for d in &batch[start..end] {
                d.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            start = end;
        }
    }

    /// One `process` call: its result and the event errors it reported (indices into `events`).
    fn call(
        &mut self,
        events: &[Event<'_>],
        ack: &Arc<Ack>,
    ) -> (Result<(), CallError>, Vec<EventFailure>) {
        let shared = self.shared.clone();
        let mut emitter = Emitter::shared(&shared, ack.clone());
        let started = self.enter(WorkerState::Processing);
        let result = self.instance.process(events, &mut emitter);
        let busy = self.leave(started, events.len());
        emitter.count_sent();
        let metrics = &shared.telemetry.metrics;
        if metrics.enabled && !events.is_empty() {
            metrics.batch_seconds.observe(busy.as_secs_f64());
            metrics
                .event_seconds
                .observe(busy.as_secs_f64() / events.len() as f64);
        }
        (result, emitter.errors)
    }

    /// `plugin-panic: fail` and a batch panicked: before failing, the batch is rerun one event at
    /// a time, its records thrown away (the pipeline stops, nothing of this batch is committed),
    /// to name the event that panics. The plugin sees the events before it twice (documented
    /// beside `plugin-panic`); a batch whose panic does not recur is named as a range.
    fn fail_at_panicking_event(
        &mut self,
        tp: &TopicPartition,
        events: &[Event<'_>],
        first: String,
    ) {
        let shared = self.shared.clone();
        for event in events {
            let label = shared.plugin.to_string();
            let mut discard = Discard(&label, shared.state.as_deref());
            if let Err(err @ CallError::Panicked(_)) = self
                .instance
                .process(std::slice::from_ref(event), &mut discard)
            {
                return self.fail_call(tp, event.offset(), event.offset(), &err);
            }
        }
        let (from, to) = (events[0].offset(), events[events.len() - 1].offset());
        self.fail_call(
            tp,
            from,
            to,
            &CallError::Panicked(format!(
                "{first} (no single event panicked when the batch was rerun one event at a time)"
            )),
        );
    }

    fn fail_call(&self, tp: &TopicPartition, from: i64, to: i64, err: &CallError) {
        let at = if from == to {
            self.shared.positions.at(tp, from)
        } else {
            self.shared.positions.range(tp, from, to)
        };
        self.shared.failure.set(format!(
            "plugin {} failed in process ({at}): {err}",
            self.shared.plugin
        ));
    }

    /// Applies the class's policy to a failed event: retries (the event alone, with backoff),
    /// then skip, dead-letter or fail. Returns false when the pipeline must stop.
    fn settle(
        &mut self,
        tp: &TopicPartition,
        event: &Event<'_>,
        ack: &Arc<Ack>,
        class: Class,
        message: String,
        retry: bool,
    ) -> bool {
        let shared = self.shared.clone();
        shared.telemetry.emit(EventFailed {
            class: class.name(),
        });
        let mut policy = class.policy(&shared.policy);
        if !retry {
            policy.retries = 0;
        }
        let offset = event.offset();
        let verdict = error_policy::decide_sleeping(&policy, message, || {
            let (result, errors) = self.call(std::slice::from_ref(event), ack);
            match (result, errors.into_iter().next()) {
                (Ok(()), None) => Attempt::Succeeded,
                (Ok(()), Some((_, _, m))) | (Err(CallError::Panicked(m)), _) => Attempt::Failed(m),
                (Err(err), _) => {
                    self.fail_call(tp, offset, offset, &err);
                    Attempt::Stop
                }
            }
        });
        let (action, attempts, message) = match verdict {
            Verdict::Recovered { attempts } => {
                tracing::info!(topic = %tp.topic, partition = tp.partition, offset, class = class.name(), attempts, "event succeeded on retry");
                return true;
            }
            Verdict::Stopped => return false,
            Verdict::Settled {
                action,
                attempts,
                message,
            } => (action, attempts, message),
        };
        let class_name = class.name();
        let at = shared.positions.at(tp, offset);
        let failed = Failed {
            what: "failed event",
            topic: &tp.topic,
            partition: tp.partition,
            offset: Some(offset),
            class: class_name,
            attempts,
            message: &message,
            output: None,
            at: &at,
        };
        match action {
            Action::Skip => {
                shared.telemetry.emit(EventSkipped(failed));
                true
            }
            Action::DeadLetter => {
                let Some(dlq) = &shared.dead_letters else {
                    shared
                        .failure
                        .set("dead-letter policy without a dead-letter topic or file".into());
                    return false;
                };
                let failure = Failure {
                    class: class_name,
                    message: &message,
                    attempts,
                    topic: &tp.topic,
                    partition: tp.partition,
                    offset: Some(offset),
                    output: None,
                };
                // Counted for the event's units before it can be acknowledged.
                if dlq.acknowledged_later() {
                    let mut tracker = lock(&shared.tracker);
                    for (tp, unit) in ack.units() {
                        tracker.emitted(tp, unit, 1);
                    }
                }
                // A decoded event's dead letter holds its value as it was read.
                let value =
                    (!event.is_tombstone()).then(|| event.raw_value().unwrap_or(event.payload()));
                match dlq.send(event.key(), value, event.headers(), &failure, ack.clone()) {
                    Ok(()) => {
                        shared.telemetry.emit(EventDeadLettered {
                            failed,
                            to: &dlq.label,
                        });
                        true
                    }
                    Err(err) => {
                        shared.failure.set(format!(
                            "{}: cannot write the dead letter: {err}",
                            shared.positions.at(tp, offset)
                        ));
                        false
                    }
                }
            }
            Action::Fail => {
                shared.failure.set(format!(
                    "{}: plugin {} failed this event ({class_name}, {attempts} attempt(s)): {message}: fix the input or set `error-policy.{class_name}` to skip, dead-letter or retry",
                    shared.positions.at(tp, offset),
                    shared.plugin
                ));
                false
            }
        }
    }

    /// Decodes the values of `messages` (`source.kafka.format`): per message its schema id and
    /// JSON, or why it cannot be decoded (`None` for a tombstone). While the registry does not
    /// answer, the worker waits: its events stay unprocessed, so nothing past them is committed,
    /// and their partitions pause once full. `None` when the run stops first.
    fn decode(&self, decoder: &Decoder, messages: &[&Message]) -> Option<Vec<DecodedValue>> {
        let shared = &self.shared;
        let reachable = decoder.schemas().reachable();
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let Some(value) = m.payload() else {
                out.push(None);
                continue;
            };
            let mut backoff = std::time::Duration::from_millis(100);
            let mut waited = false;
            let decoded = loop {
                match decoder.decode(value) {
                    Ok(decoded) => break Ok(decoded),
                    Err(DecodeError::Invalid(why)) => break Err(why),
                    Err(DecodeError::Unavailable(err)) => {
                        shared.telemetry.emit(RegistryReachability {
                            up: false,
                            error: &err.to_string(),
                            reachable,
                        });
                        if !waited {
                            self.probe.set(WorkerState::WaitingForRegistry);
                            waited = true;
                        }
                        if shared.failure.is_set() || decoder.schemas().given_up() {
                            self.probe.set(WorkerState::Idle);
                            return None;
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            };
            if waited {
                self.probe.set(WorkerState::Idle);
                shared.telemetry.emit(RegistryReachability {
                    up: true,
                    error: "",
                    reachable,
                });
            }
            out.push(Some(decoded));
        }
        Some(out)
    }

    fn process_partition(&mut self, deliveries: &[Delivery]) {
        let shared = self.shared.clone();
        if shared.failure.is_set() {
            return; // never marked processed: nothing from here on is committed
        }
        let first = &deliveries[0].message;
        let tp = TopicPartition::new(first.topic(), first.partition());
        let last_offset = deliveries[deliveries.len() - 1].message.offset();
        // A chunk's events belong to one unit, or to a few consecutive ones.
        let mut units: Vec<UnitId> = Vec::with_capacity(1);
        for d in deliveries {
            if units.last() != Some(&d.unit) {
                units.push(d.unit);
            }
        }
        let messages: Vec<&Message> = deliveries.iter().map(|d| &d.message).collect();
        let decoded = match &shared.decoder {
            Some(decoder) => match self.decode(decoder, &messages) {
                Some(decoded) => decoded,
                None => return, // the run stops: never marked processed
            },
            None => Vec::new(),
        };
        let ids: Vec<String> = decoded
            .iter()
            .map(|d| match d {
                Some(Ok((id, _))) => id.to_string(),
                _ => String::new(),
            })
            .collect();
        let headers: Vec<Vec<Header<'_>>> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut headers = m.headers().map_or_else(Vec::new, |hs| {
                    hs.iter()
                        .filter(|h| !(shared.strip_provenance && h.key.starts_with("sluice.")))
                        .map(|h| Header::new(h.key, h.value.unwrap_or_default()))
                        .collect()
                });
                if let (Some(Some(Ok(_))), Some(raw)) = (decoded.get(i), m.payload()) {
                    headers.push(Header::new(SCHEMA_ID_HEADER, ids[i].as_bytes()));
                    headers.push(Header::new(RAW_VALUE_HEADER, raw));
                }
                headers
            })
            .collect();
        let units_acked = match units.as_slice() {
            [unit] => Units::One(tp.clone(), *unit),
            _ => Units::Many(units.iter().map(|u| (tp.clone(), *u)).collect()),
        };
        let event_time_ms = messages
            .iter()
            .filter_map(|m| m.timestamp().to_millis())
            .min();
        let ack = Arc::new(Ack::new(units_acked, event_time_ms));
        let mut events: Vec<Event<'_>> = Vec::with_capacity(messages.len());
        for (i, (m, headers)) in messages.iter().zip(&headers).enumerate() {
            let mut e = Event::new(&tp.topic, tp.partition, m.offset()).with_headers(headers);
            e = match (m.payload(), decoded.get(i)) {
                (Some(_), Some(Some(Ok((_, Decoded::Json(json)))))) => e.with_payload(json),
                (Some(p), Some(Some(Ok((_, Decoded::Tail(from)))))) => e.with_payload(&p[*from..]),
                (Some(p), _) => e.with_payload(p),
                (None, _) => e.with_null_payload(),
            };
            if let Some(k) = m.key() {
                e = e.with_key(k);
            }
            if let Some(ts) = m.timestamp().to_millis() {
                e = e.with_timestamp_ms(ts);
            }
            // A value its schema does not decode never reaches the plugin.
            if let Some(Some(Err(why))) = decoded.get(i) {
                let class = Class::InvalidInput;
                if !self.settle(&tp, &e, &ack, class, why.clone(), false) {
                    return; // failed: the unit is never marked processed
                }
                continue;
            }
            events.push(e);
        }
        let (result, errors) = if events.is_empty() {
            (Ok(()), Vec::new()) // every value failed to decode: nothing for the plugin
        } else {
            self.call(&events, &ack)
        };
        shared
            .events_in
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        if self.wants_committed && !self.told.contains_key(&tp) {
            self.told.insert(tp.clone(), -1);
        }
        if shared.telemetry.metrics.enabled {
            let n = events.len() as u64;
            match self.consumed.get(&tp) {
                Some(counter) => counter.inc_by(n),
                None => {
                    let counter = shared
                        .telemetry
                        .metrics
                        .events_consumed
                        .with_label_values(&[tp.topic.as_str(), &tp.partition.to_string()]);
                    counter.inc_by(n);
                    self.consumed.insert(tp.clone(), counter);
                }
            }
        }
        let mut failures: Vec<(usize, Class, String)> = errors
            .into_iter()
            .map(|(i, kind, m)| (i, Class::of(kind), m))
            .collect();
        match result {
            Ok(()) => {}
            Err(CallError::Panicked(_)) if shared.policy.plugin_panic != ClassPolicy::default() => {
                // Find the events that panic: one call per event. Events before the panic may
                // emit twice (at-least-once); their event errors are collected again.
                failures.clear();
                for (i, event) in events.iter().enumerate() {
                    let (result, errors) = self.call(std::slice::from_ref(event), &ack);
                    failures.extend(errors.into_iter().map(|(_, k, m)| (i, Class::of(k), m)));
                    match result {
                        Ok(()) => {}
                        Err(CallError::Panicked(m)) => failures.push((i, Class::PluginPanic, m)),
                        Err(err) => {
                            return self.fail_call(&tp, event.offset(), event.offset(), &err);
                        }
                    }
                }
            }
            Err(CallError::Panicked(m)) if events.len() > 1 => {
                return self.fail_at_panicking_event(&tp, &events, m);
            }
            Err(err) => return self.fail_call(&tp, first.offset(), last_offset, &err),
        }
        if !failures.is_empty() {
            let failed: HashSet<usize> = failures.iter().map(|(i, _, _)| *i).collect();
            shared
                .events_failed
                .fetch_add(failed.len() as u64, Ordering::Relaxed);
        }
        for (index, class, message) in failures {
            if !self.settle(&tp, &events[index], &ack, class, message, true) {
                return; // failed: the unit is never marked processed
            }
        }
        for unit in units {
            // A unit split into several chunks is this worker's part once.
            if self
                .pending
                .last()
                .is_none_or(|(p, u)| *u != unit || *p != tp)
            {
                self.pending.push((tp.clone(), unit));
            }
        }
    }
}
