//! The file source: a file (or stdin) is one partition and its lines are the offsets; `reader`
//! turns it into batches of events, and [`run`] feeds them to the dispatcher on the one event
//! path, through the same workers, outputs and sinks, error policy and offset tracker as a Kafka
//! run's. A full partition pauses the reading; committing is a no-op (a file has no group to
//! commit to): at the end every line must be fully handled, or the run fails.

pub mod reader;

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Timestamp;

use crate::config::{Action, ClassPolicy, Ordering, PipelineSpec, SourceSpec};
use crate::dispatch::{Context, Dispatcher, Settings, Source, partition_view};
use crate::error::RunError;
use crate::error_policy::{self, Attempt, Class, Verdict};
use crate::message::{Bytes, Message};
use crate::offsets::TopicPartition;
use crate::pipeline::{Setup, Summary, start};
use crate::pool::Workers;
use crate::shutdown::Shutdown;
use crate::status::Lifecycle;
use crate::sync::lock;
use crate::telemetry::{EventSkipped, Failed, StopReason};
use crate::worker::Positions;
use reader::{Batch, FileSource};

/// How long a file run waits, after its last line, for the sinks to acknowledge what it emitted.
const FILE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The dispatcher's view of a file: reading stops while its one partition is paused; nothing is
/// committed.
#[derive(Debug, Default)]
struct Lines {
    paused: Cell<bool>,
}

impl Source for Lines {
    fn pause(&self, _: &TopicPartition) -> Result<(), String> {
        self.paused.set(true);
        Ok(())
    }

    fn resume(&self, _: &TopicPartition) -> Result<(), String> {
        self.paused.set(false);
        Ok(())
    }

    fn commit(&self, _: &[(TopicPartition, i64)]) -> Result<bool, String> {
        Ok(false)
    }
}

/// A `source: file` run, to the end of its input (or SIGTERM / SIGINT, or a fatal error).
pub fn run(spec: &PipelineSpec, shutdown: &Shutdown) -> Result<Summary, RunError> {
    let SourceSpec::File(file) = &spec.source else {
        return Err(RunError::Setup(
            "source::file::run needs a `source: file` spec".into(),
        ));
    };
    let input = spec.resolve(&file.path);
    let mut reader = FileSource::open(file, &input)?;
    let path = input.display().to_string();
    let (mut running, pool) = start(
        spec,
        &Setup {
            // The loop turns at least once per batch, or while waiting for the workers.
            liveness: Duration::from_secs(60),
            admin: true,
            group: &spec.name,
            batch_size: file.batch_size,
            replay: false,
            // One partition in order is one worker's work.
            one_worker: spec.ordering == Ordering::Partition,
            positions: Positions::Lines(path.clone()),
        },
    )?;
    let (telemetry, failure) = (running.telemetry.clone(), running.failure.clone());
    // A file is read once from its first line: no plugin upgrades (`POST /plugin` says so).
    drop(running.upgrades.take());
    // A file run never resizes its pool: the workers it starts with are the ones it has.
    let workers = pool.len();
    let dispatcher = Arc::new(Mutex::new(Dispatcher::new(
        pool,
        Settings {
            ordering: spec.ordering,
            // Memory stays bounded: reading pauses while this many events are with the workers.
            capacity: file.batch_size * workers * 4,
            drain_timeout: FILE_DRAIN_TIMEOUT,
        },
        Context {
            tracker: running.tracker.clone(),
            failure: failure.clone(),
            telemetry: telemetry.clone(),
            state: running.shared.state.clone(),
            resume_from: None,
            transactions: None,
        },
    )));
    telemetry
        .health
        .set_partition_view(partition_view(&dispatcher));
    let tp = TopicPartition::new(reader.topic(), 0);
    let topic: Arc<str> = reader.topic().into();
    let source = Lines::default();
    // No changelog: the stores start empty, as the file starts at its first line.
    lock(&dispatcher)
        .assign(&source, std::slice::from_ref(&tp), &HashSet::new(), "")
        .map_err(RunError::Setup)?;
    telemetry.health.set_lifecycle(Lifecycle::Consuming);

    let invalid_input = Class::InvalidInput.policy(&spec.error_policy);
    let mut batch = Batch::default();
    let mut source_error = None;
    let mut end_of_input = false;
    let mut blank_lines = 0;
    while !shutdown.requested() && !failure.is_set() {
        telemetry.health.heartbeat();
        lock(&dispatcher).release_held(&source);
        if source.paused.get() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if let Err(err) = reader.next_batch(&mut batch) {
            source_error = Some(err);
            break;
        }
        blank_lines += batch.blank;
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
        // The batch's bytes are copied once into a buffer its events share.
        let data: Arc<[u8]> = Arc::from(&batch.data[..]);
        let messages: Vec<Message> = batch
            .events
            .iter_mut()
            .map(|e| {
                Message::new(
                    topic.clone(),
                    tp.partition,
                    e.offset,
                    e.timestamp_ms
                        .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
                    e.key.take().map(|k| Bytes::Own(k.into_boxed_slice())),
                    Some(Bytes::Shared(data.clone(), e.payload.clone())),
                    None,
                )
            })
            .collect();
        lock(&dispatcher).dispatch(&source, messages);
    }

    // Drain: every worker finishes what is queued, calls `revoked` and flushes; then the sinks
    // acknowledge what was emitted.
    let fatal = failure.get();
    let reason = if fatal.is_some() {
        StopReason::Fatal
    } else if end_of_input {
        StopReason::EndOfInput
    } else {
        StopReason::Signal
    };
    let mut d = lock(&dispatcher);
    let incomplete = d.drain(&source, reason);
    let result = running.finish(d.workers_mut(), FILE_DRAIN_TIMEOUT, fatal);
    if let Some(err) = source_error {
        return Err(err.into());
    }
    let mut summary = result?;
    summary.blank_lines = blank_lines;
    // The no-op commit: nothing may be left incomplete after a clean stop.
    if incomplete > 0 {
        return Err(RunError::Fatal(format!(
            "{path}: {incomplete} batch(es) of lines not fully handled when the run stopped (an output did not acknowledge them)"
        )));
    }
    Ok(summary)
}
