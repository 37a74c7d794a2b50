//! Why a run (or `sluice validate`) stops: [`RunError`], one variant per cause, each message
//! naming the file, field or plugin and what to do.

use std::path::PathBuf;

use sluice_plugin_api::host::CallError;

use crate::plugin::LoadError;
use crate::source::file::reader::SourceError;

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
    /// The plugin keeps state and the spec declares no stores.
    #[error(
        "{spec}: state: plugin {plugin} keeps state in stores {stores}: add `state: {{stores: [{stores}]}}` to the spec (with the names its config gives them)"
    )]
    NoState {
        /// The spec file.
        spec: PathBuf,
        /// "name version".
        plugin: String,
        /// The stores it names, joined.
        stores: String,
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
