//! Sinks write what the plugin emits. [`local`] holds stdout and file outputs; an output's kind
//! comes from the pipeline spec, never from the plugin, which only names the output.

pub mod local;
