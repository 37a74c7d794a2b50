//! A `source: file` run: the file (or stdin) is one partition and its lines are the offsets; the
//! events go down the same path as a Kafka run's (`crate::pipeline`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rdkafka::Timestamp;

use crate::config::{Action, ClassPolicy, Ordering, PipelineSpec, SourceSpec};
use crate::error_policy::{self, Attempt, Class, Verdict};
use crate::message::{Bytes, Message};
use crate::offsets::TopicPartition;
use crate::pipeline::{Setup, start};
use crate::run::{RunError, Summary};
use crate::shutdown::Shutdown;
use crate::source::file::{Batch, FileSource};
use crate::source::kafka::{Slot, hand_out};
use crate::status::{Lifecycle, PartitionLive};
use crate::telemetry::{Draining, EventSkipped, Failed, PartitionsAssigned, StopReason};
use crate::worker::{Command, Delivery, Positions};

/// How long a file run waits, after its last line, for the sinks to acknowledge what it emitted.
pub(crate) const FILE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    // A file run never resizes its pool: the workers it starts with are the ones it has.
    let senders = running
        .pool
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .senders();
    let tp = TopicPartition::new(source.topic(), 0);
    let topic: Arc<str> = source.topic().into();
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
    let state = running.shared.state.clone();
    if let Some(state) = &state {
        // No changelog: the stores start empty, as the file starts at its first line.
        state
            .open(partitions, &Default::default(), "")
            .map_err(RunError::Setup)?;
    }
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
    let mut blank_lines = 0;
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
    if let Some(state) = state {
        state.close(partitions, false);
    }
    drop(senders);
    let result = running.finish(FILE_DRAIN_TIMEOUT, fatal);
    if let Some(err) = source_error {
        return Err(err.into());
    }
    let mut summary = result?;
    summary.blank_lines = blank_lines;
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
