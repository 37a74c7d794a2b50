//! Dead letters: an event (or a rejected record) that failed for good, written to the
//! pipeline's dead-letter topic (or file) with its original key, value and headers plus
//! provenance headers, so that it can be inspected and replayed (`sluice dlq replay`, for a
//! topic).
//!
//! A dead letter is a record like any other: it acknowledges the units of the event it stands
//! for, so the event's offset is committed only once the dead letter is in the topic. A file's
//! dead letters are written synchronously (one JSON line each, like a `format: json` output),
//! so there is nothing to acknowledge later.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_plugin_api::abi::{Header, Record};

use crate::sink::SinkError;
use crate::sink::kafka::{Ack, KafkaSink};
use crate::sink::local::LocalOutput;
use crate::sync::lock;

/// Provenance header names, all prefixed `sluice.`.
pub mod header {
    /// The failure class: `invalid-input`, `event-error`, `plugin-panic`, `sink-rejection`.
    pub const CLASS: &str = "sluice.failure.class";
    /// The error message.
    pub const MESSAGE: &str = "sluice.failure.message";
    /// How many times the event was tried.
    pub const ATTEMPTS: &str = "sluice.failure.attempts";
    /// When it was dead-lettered, milliseconds since the Unix epoch.
    pub const TIME: &str = "sluice.failure.time-ms";
    /// The plugin's name.
    pub const PLUGIN: &str = "sluice.plugin.name";
    /// The plugin's version.
    pub const PLUGIN_VERSION: &str = "sluice.plugin.version";
    /// The pipeline's name.
    pub const PIPELINE: &str = "sluice.pipeline";
    /// Source topic of the event.
    pub const TOPIC: &str = "sluice.source.topic";
    /// Source partition.
    pub const PARTITION: &str = "sluice.source.partition";
    /// Source offset (absent for a sink rejection of a record derived from several events).
    pub const OFFSET: &str = "sluice.source.offset";
    /// The output that rejected the record (sink rejections only).
    pub const OUTPUT: &str = "sluice.output";
}

/// Where dead letters are written.
#[derive(Debug, Clone)]
pub enum DeadLetterTarget {
    /// A Kafka topic, through the pipeline's producer.
    Topic {
        /// The shared producer.
        sink: Arc<KafkaSink>,
        /// The dead-letter topic.
        topic: String,
    },
    /// A file of JSON lines (`error-policy.dead-letter-file`).
    File(Arc<Mutex<LocalOutput>>),
}

/// Where dead letters go and what they say about the plugin.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    /// Where they are written.
    pub target: DeadLetterTarget,
    /// `topic NAME` or `file PATH`, for messages.
    pub label: String,
    /// Pipeline name.
    pub pipeline: String,
    /// The plugin (name and version, as it runs now).
    pub plugin: crate::plugin::PluginLabel,
}

/// Why and where from.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// Policy class.
    pub class: &'static str,
    /// Error message.
    pub message: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset, when one event is known.
    pub offset: Option<i64>,
    /// The rejecting output, for sink rejections.
    pub output: Option<&'a str>,
}

impl DeadLetters {
    /// Whether a dead letter is acknowledged later (a topic's delivery report): then the caller
    /// counts it as emitted for its units before sending it.
    pub fn acknowledged_later(&self) -> bool {
        matches!(self.target, DeadLetterTarget::Topic { .. })
    }

    /// Sends a dead letter carrying `key`, `value` (None: a tombstone) and `headers` as they
    /// were, plus the provenance of `failure`, on behalf of `ack`'s units. For a topic the caller
    /// counts it as emitted for those units first ([`DeadLetters::acknowledged_later`]).
    pub fn send(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
        failure: &Failure<'_>,
        ack: Arc<Ack>,
    ) -> Result<(), SinkError> {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut provenance: Vec<(&str, String)> = vec![
            (header::CLASS, failure.class.to_owned()),
            (header::MESSAGE, failure.message.to_owned()),
            (header::ATTEMPTS, failure.attempts.to_string()),
            (header::TIME, time.to_string()),
            (header::PIPELINE, self.pipeline.clone()),
            (header::PLUGIN, self.plugin.name()),
            (header::PLUGIN_VERSION, self.plugin.version()),
            (header::TOPIC, failure.topic.to_owned()),
            (header::PARTITION, failure.partition.to_string()),
        ];
        if let Some(offset) = failure.offset {
            provenance.push((header::OFFSET, offset.to_string()));
        }
        if let Some(output) = failure.output {
            provenance.push((header::OUTPUT, output.to_owned()));
        }
        let mut all: Vec<Header<'_>> = headers.to_vec();
        all.extend(provenance.iter().map(|(k, v)| Header::new(k, v.as_bytes())));
        let to = match &self.target {
            DeadLetterTarget::Topic { topic, .. } => topic.as_str(),
            DeadLetterTarget::File(_) => "dead-letters",
        };
        let mut record = Record::to(to).headers(&all).key_opt(key);
        record = match value {
            Some(v) => record.value(v),
            None => record.tombstone(),
        };
        match &self.target {
            DeadLetterTarget::Topic { sink, topic } => sink.send(topic, &record, ack),
            DeadLetterTarget::File(file) => {
                let mut file = lock(file);
                file.write(to, &record)
                    // Written before the event's offset may be committed.
                    .and_then(|()| file.flush())
                    .map_err(|e| SinkError::DeadLetterFile {
                        path: file.target().display().to_string(),
                        message: e.to_string(),
                    })
            }
        }
    }
}
