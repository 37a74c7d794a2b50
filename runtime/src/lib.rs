//! The Sluice runtime: loads a pipeline plugin, feeds it events from a source, routes what it
//! emits to outputs, and applies the pipeline's error policy. `main.rs` is a thin shell over
//! [`cli`]; everything is here so tests can use it.

pub mod admin;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod dead_letter;
pub mod dlq;
pub mod fatal;
pub mod local;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod plugin;
pub mod scaffold;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod top;
pub mod worker;
