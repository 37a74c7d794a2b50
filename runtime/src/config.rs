//! The pipeline spec lives in its own crate (`runtime/spec`, `sluice-spec`) so the operator can
//! check a StreamPipeline's spec exactly as the runtime will; this module re-exports it.

pub use sluice_spec::*;
