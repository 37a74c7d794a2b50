//! The entry: [`run`] is what `sluice run` does with a spec, whatever its source. Below it each
//! source's loop (`source::file`, `source::kafka`) drives the one event path: the dispatcher
//! (`crate::dispatch`), the workers and the sinks, which `crate::pipeline` sets up.

use crate::config::{PipelineSpec, SourceSpec};
use crate::error::RunError;
use crate::pipeline::Summary;

/// Runs a spec to its end (a file) or to SIGTERM / SIGINT (Kafka): one event path for both.
pub fn run(spec: &PipelineSpec) -> Result<Summary, RunError> {
    let shutdown = crate::shutdown::Shutdown::install()
        .map_err(|e| RunError::Setup(format!("cannot install signal handlers: {e}")))?;
    match &spec.source {
        SourceSpec::File(_) => crate::source::file::run(spec, &shutdown),
        SourceSpec::Kafka(_) => crate::source::kafka::run(spec, &shutdown),
    }
}
