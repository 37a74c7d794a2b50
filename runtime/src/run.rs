//! A run of a pipeline spec, whatever its source: [`run`] (what `sluice run` does), why a run
//! stops ([`RunError`]), what it did ([`Summary`]), and the plugin checks every run and
//! `sluice validate` start with ([`prepare`]). The run itself is one event path for every
//! source, in [`crate::pipeline`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sluice_plugin_api::host::{CallError, ConfigProblem};

use crate::config::{OutputSpec, PipelineSpec, SourceSpec};
use crate::plugin::{LoadError, Plugin};
use crate::sink::local::LocalOutput;
use crate::source::file::SourceError;

/// Why a run (or a validation) stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The plugin library was refused.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The plugin's config does not match the plugin's schema.
    #[error("{spec}: plugin.config{field}: {message} (per the config schema of plugin {plugin})")]
    Config {
        /// The spec file.
        spec: PathBuf,
        /// Where in the config, e.g. `.min_fare`.
        field: String,
        /// What is wrong.
        message: String,
        /// "name version".
        plugin: String,
    },
    /// The plugin publishes a schema that is not a valid JSON schema.
    #[error(
        "plugin {plugin}: its config schema is not a valid JSON schema ({message}): report this to the plugin's authors"
    )]
    BadSchema {
        /// "name version".
        plugin: String,
        /// The schema compiler's message.
        message: String,
    },
    /// The plugin says it emits to outputs the spec does not define.
    #[error(
        "{spec}: outputs: plugin {plugin} emits to {missing}, which the spec does not define: add {what} under `outputs:`"
    )]
    UndefinedOutputs {
        /// The spec file.
        spec: PathBuf,
        /// "name version".
        plugin: String,
        /// The outputs, quoted and joined.
        missing: String,
        /// "it" or "them".
        what: &'static str,
    },
    /// `open` failed.
    #[error("plugin {plugin} failed to open: {source}: check `plugin.config` in {spec}")]
    Open {
        /// "name version".
        plugin: String,
        /// The spec file.
        spec: PathBuf,
        /// The call's error.
        #[source]
        source: CallError,
    },
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The pipeline could not be set up (clients, threads, signals).
    #[error("{0}")]
    Setup(String),
    /// A fatal error stopped a running pipeline; offsets stop short of the failing event.
    #[error("{0}")]
    Fatal(String),
    /// The reader of stdout went away (`sluice run ... | head`): the run stopped there, with
    /// offsets short of the first record it could not write. `sluice` ends quietly on it.
    #[error("{0}")]
    ReaderGone(String),
    /// An output could not be created or written.
    #[error("output `{name}` ({target}): {source}")]
    Output {
        /// Output name.
        name: String,
        /// Where it writes.
        target: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events handed to the plugin.
    pub events_in: u64,
    /// Records written, per output.
    pub records_out: BTreeMap<String, u64>,
    /// Undecodable lines skipped by policy.
    pub skipped_invalid: u64,
    /// Failed events skipped by policy.
    pub skipped_failed: u64,
    /// Failed events (or rejected records) written to the dead-letter topic.
    pub dead_lettered: u64,
    /// Blank lines a file source skipped (they are not events).
    pub blank_lines: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.records_out.values().sum();
        let per: Vec<String> = self
            .records_out
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        write!(
            f,
            "{} events in, {total} records out ({})",
            self.events_in,
            per.join(", ")
        )?;
        if self.skipped_invalid + self.skipped_failed > 0 {
            write!(
                f,
                ", skipped {} invalid and {} failed events",
                self.skipped_invalid, self.skipped_failed
            )?;
        }
        if self.dead_lettered > 0 {
            write!(f, ", {} dead-lettered", self.dead_lettered)?;
        }
        if self.blank_lines > 0 {
            write!(f, ", {} blank lines skipped", self.blank_lines)?;
        }
        Ok(())
    }
}

/// Loads the spec's plugin and checks its config against the plugin's schema: everything
/// `sluice validate` checks, and the first thing `sluice run` does.
pub fn prepare(spec: &PipelineSpec) -> Result<Plugin, RunError> {
    let plugin = Plugin::load(
        &spec.resolve(&spec.plugin.path),
        spec.plugin.sha256.as_deref(),
    )?;
    check_config(&plugin, &spec.plugin.config, &spec.file)?;
    check_outputs(&plugin, spec)?;
    Ok(plugin)
}

/// Refuses a spec that lacks an output the plugin declares (ABI 1.1 `output_name`): the first
/// emit to it would fail the run.
pub fn check_outputs(plugin: &Plugin, spec: &PipelineSpec) -> Result<(), RunError> {
    let Some(declared) = plugin.plugin_ref().declared_outputs() else {
        return Ok(());
    };
    let missing: Vec<String> = declared
        .iter()
        .filter(|name| !spec.outputs.contains_key(**name))
        .map(|name| format!("`{name}`"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(RunError::UndefinedOutputs {
        spec: spec.file.clone(),
        plugin: plugin.label(),
        what: if missing.len() == 1 { "it" } else { "them" },
        missing: missing.join(", "),
    })
}

/// Opens one instance with the spec's config and closes it again: what `sluice validate` does
/// so that a config the plugin's own `open` refuses fails there, not at run time.
pub fn try_open(plugin: &Plugin, spec: &PipelineSpec) -> Result<(), RunError> {
    let label = plugin.label();
    let ctx = sluice_plugin_api::abi::OpenContext::new(&spec.name, 0, 1);
    let mut collector = crate::sink::NullCollector::new(&label);
    let failed = |source| RunError::Open {
        plugin: label.clone(),
        spec: spec.file.clone(),
        source,
    };
    let instance = plugin
        .plugin_ref()
        .open(&spec.plugin.config.to_string(), &ctx, &mut collector)
        .map_err(failed)?;
    instance.close(&mut collector).map_err(failed)
}

/// Validates `config` against the plugin's JSON schema, if it publishes one.
pub fn check_config(
    plugin: &Plugin,
    config: &serde_json::Value,
    spec: &Path,
) -> Result<(), RunError> {
    let Some(schema) = plugin.plugin_ref().config_schema() else {
        return Ok(());
    };
    match sluice_plugin_api::host::check_config(schema, config) {
        Ok(()) => Ok(()),
        Err(ConfigProblem::BadSchema(message)) => Err(RunError::BadSchema {
            plugin: plugin.label(),
            message,
        }),
        Err(ConfigProblem::Invalid { field, message }) => Err(RunError::Config {
            spec: spec.into(),
            field,
            message,
            plugin: plugin.label(),
        }),
    }
}

/// Runs a spec to its end (a file) or to SIGTERM / SIGINT (Kafka): one event path for both,
/// in [`crate::pipeline`].
pub fn run(spec: &PipelineSpec) -> Result<Summary, RunError> {
    let shutdown = crate::shutdown::Shutdown::install()
        .map_err(|e| RunError::Setup(format!("cannot install signal handlers: {e}")))?;
    match &spec.source {
        SourceSpec::File(_) => crate::pipeline::run_file(spec, &shutdown),
        SourceSpec::Kafka(_) => crate::pipeline::run(spec, &shutdown),
    }
}

/// Opens a local output; `None` for outputs that are not local (Kafka topics).
pub fn open_local_output(
    spec: &PipelineSpec,
    name: &str,
    output: &OutputSpec,
) -> Result<Option<LocalOutput>, RunError> {
    Ok(match output {
        OutputSpec::Stdout(stdout) => Some(LocalOutput::stdout(stdout.format)),
        OutputSpec::File(file) => {
            let target = spec.resolve(&file.path);
            Some(
                LocalOutput::file(&target, file.format).map_err(|source| RunError::Output {
                    name: name.to_owned(),
                    target,
                    source,
                })?,
            )
        }
        OutputSpec::Kafka(_) | OutputSpec::Postgres(_) | OutputSpec::Mysql(_) => None,
    })
}
