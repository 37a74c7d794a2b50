//! The entry: [`run`] is what `sluice run` does with a spec, whatever its source. Below it each
//! source's loop (`source::file`, `source::kafka`) drives the one event path: the dispatcher
//! (`crate::dispatch`), the workers and the sinks, which `crate::pipeline` sets up.

use crate::config::{PipelineSpec, SourceSpec};
use crate::error::RunError;
use crate::pipeline::Summary;

/// Runs a spec to its end (a file) or to SIGTERM / SIGINT (Kafka): one event path for both.
/// A Kafka run whose credential files changed (`kafka_client::SecretWatch`) drained and
/// committed; it starts again here with clients that read the new files, and the summary adds
/// up every round.
pub fn run(spec: &PipelineSpec) -> Result<Summary, RunError> {
    let shutdown = crate::shutdown::Shutdown::install()
        .map_err(|e| RunError::Setup(format!("cannot install signal handlers: {e}")))?;
    let mut total = Summary::default();
    loop {
        let summary = match &spec.source {
            SourceSpec::File(_) => crate::source::file::run(spec, &shutdown)?,
            SourceSpec::Kafka(_) => crate::source::kafka::run(spec, &shutdown)?,
        };
        let again = summary.credentials_rotated && !shutdown.requested();
        total.add(summary);
        if !again {
            return Ok(total);
        }
    }
}
