//! Sinks write what the plugin emits. [`local`] holds stdout and file outputs; an output's kind
//! comes from the pipeline spec, never from the plugin, which only names the output.

pub mod kafka;
pub mod local;
pub mod table;

use sluice_plugin_api::abi::Record;
use sluice_plugin_api::host::{Collector, EventErrorKind, Refusal};

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
