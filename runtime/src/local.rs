//! The local runner: one plugin instance over a file or stdin, records to stdout or files, no
//! broker. It is what `sluice run` does for a `source: file` spec and what `make demo` falls
//! back on.
//!
//! Order of events: load and verify the plugin, check its config against the plugin's schema,
//! open an instance, `assigned([topic/0])`, then per batch `process` and apply the error policy
//! to every undecodable line and every failed event; at end of input `flush`, `revoked`,
//! `close`, and flush the outputs. Any fatal error stops the run with one line naming the plugin,
//! the call and the input lines involved.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use sluice_plugin_api::abi::{Event, OpenContext, Partition, Record};
use sluice_plugin_api::host::{CallError, Collector, EventErrorKind, Refusal};

use crate::config::{Action, ClassPolicy, OutputSpec, PipelineSpec, SourceSpec};
use crate::error_policy::{self, Attempt, Class, Verdict};
use crate::plugin::{LoadError, Plugin};
use crate::sink::local::LocalOutput;
use crate::source::file::{Batch, FileSource, SourceError};

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
    /// A plugin call failed.
    #[error("plugin {plugin} failed in {call} ({at}): {source}")]
    Call {
        /// "name version".
        plugin: String,
        /// Which entry point.
        call: &'static str,
        /// Which input, e.g. `events.jsonl lines 1-256`.
        at: String,
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
    /// A line could not be decoded and the policy is `fail`.
    #[error("{input}:{line}: {message}: fix the input or set `error-policy.invalid-input: skip`")]
    InvalidInput {
        /// The input.
        input: PathBuf,
        /// 1-based line.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The plugin failed an event and the policy is `fail`.
    #[error(
        "{input}:{line}: plugin {plugin} failed this event ({kind}): {message}: fix the input or set `error-policy.{class}: skip`"
    )]
    EventFailed {
        /// The policy class (`invalid-input`, `event-error` or `plugin-panic`).
        class: &'static str,
        /// The input.
        input: PathBuf,
        /// 1-based line.
        line: u64,
        /// "name version".
        plugin: String,
        /// "invalid input", "failed" or "panicked".
        kind: &'static str,
        /// The plugin's message.
        message: String,
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
    Ok(plugin)
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
    let bad_schema = |message: String| RunError::BadSchema {
        plugin: plugin.label(),
        message,
    };
    let schema: serde_json::Value =
        serde_json::from_str(schema).map_err(|e| bad_schema(e.to_string()))?;
    let validator = jsonschema::validator_for(&schema).map_err(|e| bad_schema(e.to_string()))?;
    if let Some(error) = validator.iter_errors(config).next() {
        let pointer = error.instance_path().to_string();
        let field: String = pointer
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| format!(".{s}"))
            .collect();
        return Err(RunError::Config {
            spec: spec.into(),
            field,
            message: error.to_string(),
            plugin: plugin.label(),
        });
    }
    Ok(())
}

/// Routes emitted records to local outputs by name and collects per-event errors.
struct Router {
    outputs: Vec<(String, LocalOutput)>,
    by_name: HashMap<String, usize>,
    counts: Vec<u64>,
    event_errors: Vec<(usize, EventErrorKind, String)>,
    plugin: String,
}

impl Collector for Router {
    fn emit(&mut self, output: &str, record: &Record<'_>) -> Result<(), Refusal> {
        let Some(&index) = self.by_name.get(output) else {
            return Err(Refusal::UnknownOutput);
        };
        let (name, out) = &mut self.outputs[index];
        out.write(name, record).map_err(|e| {
            Refusal::Invalid(format!("writing to {} failed: {e}", out.target().display()))
        })?;
        self.counts[index] += 1;
        Ok(())
    }

    fn event_error(&mut self, index: usize, kind: EventErrorKind, message: &str) {
        self.event_errors.push((index, kind, message.to_owned()));
    }

    fn log(&mut self, level: u32, message: &str) {
        log_plugin_line(&self.plugin, level, message);
    }
}

/// Writes a plugin's log line through `tracing` at its level.
pub fn log_plugin_line(plugin: &str, level: u32, message: &str) {
    use sluice_plugin_api::abi::{LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN};
    match level {
        LOG_ERROR => tracing::error!(plugin, "{message}"),
        LOG_WARN => tracing::warn!(plugin, "{message}"),
        LOG_INFO => tracing::info!(plugin, "{message}"),
        LOG_DEBUG => tracing::debug!(plugin, "{message}"),
        _ => tracing::trace!(plugin, "{message}"),
    }
}

/// Runs a spec to its end: a `source: file` spec here, a Kafka one in [`crate::pipeline`].
pub fn run(spec: &PipelineSpec) -> Result<Summary, RunError> {
    match &spec.source {
        SourceSpec::File(file) => run_file(spec, file),
        SourceSpec::Kafka(_) => {
            let shutdown = crate::shutdown::Shutdown::install()
                .map_err(|e| RunError::Setup(format!("cannot install signal handlers: {e}")))?;
            crate::pipeline::run(spec, &shutdown)
        }
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

fn run_file(
    spec: &PipelineSpec,
    source_spec: &crate::config::FileSourceSpec,
) -> Result<Summary, RunError> {
    let plugin = prepare(spec)?;
    let input = spec.resolve(&source_spec.path);
    let mut source = FileSource::open(source_spec, &input)?;
    let mut router = open_outputs(spec, plugin.label())?;
    let label = plugin.label();
    let config = spec.plugin.config.to_string();
    let mut instance = plugin
        .plugin_ref()
        .open(&config, &OpenContext::new(&spec.name, 0, 1), &mut router)
        .map_err(|source| RunError::Open {
            plugin: label.clone(),
            spec: spec.file.clone(),
            source,
        })?;
    let topic = source.topic().to_owned();
    let call_error = |call: &'static str, at: String| {
        let plugin = label.clone();
        move |source: CallError| RunError::Call {
            plugin,
            call,
            at,
            source,
        }
    };
    let partitions = [Partition::new(&topic, 0)];
    instance
        .assigned(&partitions, &mut router)
        .map_err(call_error("assigned", format!("{topic}/0")))?;

    let mut summary = Summary::default();
    let mut batch = Batch::default();
    loop {
        source.next_batch(&mut batch)?;
        if batch.is_empty() {
            break;
        }
        for bad in &batch.undecodable {
            // A line that does not decode fails the same way every time: no retry changes it.
            let policy = ClassPolicy {
                retries: 0,
                ..spec.error_policy.invalid_input
            };
            match error_policy::decide(&policy, bad.message.clone(), || Attempt::Stop, |_| {}) {
                Verdict::Settled {
                    action: Action::Skip,
                    ..
                } => {
                    tracing::warn!(input = %input.display(), line = bad.line, "skipped undecodable line: {}", bad.message);
                    summary.skipped_invalid += 1;
                }
                _ => {
                    return Err(RunError::InvalidInput {
                        input: input.clone(),
                        line: bad.line,
                        message: bad.message.clone(),
                    });
                }
            }
        }
        if batch.events.is_empty() {
            continue;
        }
        let events: Vec<Event<'_>> = batch
            .events
            .iter()
            .map(|e| {
                let mut event = Event::new(&topic, 0, e.offset).with_payload(batch.payload(e));
                if let Some(key) = &e.key {
                    event = event.with_key(key);
                }
                if let Some(ts) = e.timestamp_ms {
                    event = event.with_timestamp_ms(ts);
                }
                event
            })
            .collect();
        let (first, last) = (
            batch.events[0].offset + 1,
            batch.events[batch.events.len() - 1].offset + 1,
        );
        let lines = format!("{} lines {first}-{last}", input.display());
        router.event_errors.clear();
        let result = instance.process(&events, &mut router);
        summary.events_in += events.len() as u64;
        let mut failures: Vec<(usize, Class, String)> = router
            .event_errors
            .drain(..)
            .map(|(i, kind, m)| (i, Class::of(kind), m))
            .collect();
        match result {
            Ok(()) => {}
            Err(CallError::Panicked(_))
                if spec.error_policy.plugin_panic != ClassPolicy::default() =>
            {
                // Find the events that panic, one call per event, as a worker does. Events
                // before the panic may emit twice (at-least-once).
                failures.clear();
                for (i, event) in events.iter().enumerate() {
                    let result = instance.process(std::slice::from_ref(event), &mut router);
                    failures.extend(
                        router
                            .event_errors
                            .drain(..)
                            .map(|(_, kind, m)| (i, Class::of(kind), m)),
                    );
                    match result {
                        Ok(()) => {}
                        Err(CallError::Panicked(m)) => failures.push((i, Class::PluginPanic, m)),
                        Err(err) => {
                            let line = event.offset() + 1;
                            return Err(call_error(
                                "process",
                                format!("{} line {line}", input.display()),
                            )(err));
                        }
                    }
                }
            }
            Err(err) => return Err(call_error("process", lines)(err)),
        }
        for (index, class, message) in failures {
            let event = &events[index];
            let line = event.offset() as u64 + 1;
            let mut fatal = None;
            // Retried alone, as a worker retries an event.
            let verdict =
                error_policy::decide_sleeping(&class.policy(&spec.error_policy), message, || {
                    router.event_errors.clear();
                    let result = instance.process(std::slice::from_ref(event), &mut router);
                    match (result, router.event_errors.drain(..).next()) {
                        (Ok(()), None) => Attempt::Succeeded,
                        (Ok(()), Some((_, _, m))) | (Err(CallError::Panicked(m)), _) => {
                            Attempt::Failed(m)
                        }
                        (Err(err), _) => {
                            fatal = Some(err);
                            Attempt::Stop
                        }
                    }
                });
            match verdict {
                Verdict::Recovered { attempts } => {
                    tracing::info!(input = %input.display(), line, class = class.name(), attempts, "event succeeded on retry");
                }
                Verdict::Stopped => {
                    let err = fatal.expect("a retry stops only on a failed call");
                    return Err(call_error(
                        "process",
                        format!("{} line {line}", input.display()),
                    )(err));
                }
                Verdict::Settled {
                    action: Action::Skip,
                    attempts,
                    message,
                } => {
                    tracing::warn!(input = %input.display(), line, plugin = %label, class = class.name(), attempts, "skipped failed event: {message}");
                    if class == Class::InvalidInput {
                        summary.skipped_invalid += 1;
                    } else {
                        summary.skipped_failed += 1;
                    }
                }
                // Dead letters need a Kafka source (the spec check says so).
                Verdict::Settled { message, .. } => {
                    return Err(RunError::EventFailed {
                        class: class.name(),
                        input,
                        line,
                        plugin: label,
                        kind: match class {
                            Class::InvalidInput => "invalid input",
                            Class::PluginPanic => "panicked",
                            _ => "failed",
                        },
                        message,
                    });
                }
            }
        }
    }
    let end = format!("end of {}", input.display());
    instance
        .flush(&mut router)
        .map_err(call_error("flush", end.clone()))?;
    instance
        .revoked(&partitions, &mut router)
        .map_err(call_error("revoked", end.clone()))?;
    instance
        .close(&mut router)
        .map_err(call_error("close", end))?;
    for (index, (name, output)) in router.outputs.iter_mut().enumerate() {
        output.flush().map_err(|source| RunError::Output {
            name: name.clone(),
            target: output.target().into(),
            source,
        })?;
        summary
            .records_out
            .insert(name.clone(), router.counts[index]);
    }
    Ok(summary)
}

fn open_outputs(spec: &PipelineSpec, plugin: String) -> Result<Router, RunError> {
    let mut outputs = Vec::new();
    for (name, output) in &spec.outputs {
        let out = open_local_output(spec, name, output)?.ok_or_else(|| {
            RunError::Setup(format!("outputs.{name}: kafka and database outputs need a `source: kafka` (the file source has no offsets)"))
        })?;
        outputs.push((name.clone(), out));
    }
    let by_name = outputs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), i))
        .collect();
    let counts = vec![0; outputs.len()];
    Ok(Router {
        outputs,
        by_name,
        counts,
        event_errors: Vec::new(),
        plugin,
    })
}
