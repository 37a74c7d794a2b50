//! Sinks write what the plugin emits. [`local`] holds stdout and file outputs; an output's kind
//! comes from the pipeline spec, never from the plugin, which only names the output.

pub mod kafka;
pub mod local;
pub mod table;

use sluice_plugin_api::abi::Record;
use sluice_plugin_api::host::{Collector, EventErrorKind, Refusal};

/// Why a sink cannot take a record, or cannot start. Each names the output (or topic) and what
/// is wrong; `Display` is the one-line message a user reads.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The producer refused a record for good (a full queue waits instead).
    #[error("cannot produce to topic {topic}: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A record does not fit its table (not a JSON object, a column missing or of another type).
    #[error("output {output} (table {table}): {message}")]
    Row {
        /// The output.
        output: String,
        /// The table.
        table: String,
        /// What does not fit.
        message: String,
    },
    /// The table output's writer is closed or has stopped.
    #[error("output {output}: {what}")]
    Closed {
        /// The output.
        output: String,
        /// "closed" or "the writer stopped".
        what: &'static str,
    },
    /// A table output could not be started (its URL, its runtime or its thread).
    #[error("outputs.{output}{field}: {message}")]
    Start {
        /// The output.
        output: String,
        /// The spec field at fault after the output's name (`.url`), or empty.
        field: &'static str,
        /// What failed.
        message: String,
    },
    /// The dead-letter file cannot be written.
    #[error("dead-letter file {path}: {message}")]
    DeadLetterFile {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A rejected record cannot be dead-lettered.
    #[error("{0}")]
    NoDeadLetter(&'static str),
}

/// For calls that must not emit (`open`): refuses records, forwards log lines.
#[derive(Debug)]
pub struct NullCollector<'a> {
    plugin: &'a str,
}

impl<'a> NullCollector<'a> {
    /// A collector for the plugin labelled `plugin`.
    pub fn new(plugin: &'a str) -> Self {
        NullCollector { plugin }
    }
}

impl Collector for NullCollector<'_> {
    fn emit(&mut self, _output: &str, _record: &Record<'_>) -> Result<(), Refusal> {
        Err(Refusal::Invalid(
            "records cannot be emitted from open".into(),
        ))
    }
    fn event_error(&mut self, _index: usize, _kind: EventErrorKind, _message: &str) {}
    fn log(&mut self, level: u32, message: &str) {
        crate::plugin::log_line(self.plugin, level, message);
    }
}
