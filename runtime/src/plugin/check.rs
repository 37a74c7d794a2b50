//! The plugin checks every run and `sluice validate` start with: the library loads, its config
//! matches its schema, the spec defines every output it declares and has `state:` when it keeps
//! state, and (`validate`) its `open` accepts the config.

use std::path::Path;

use sluice_plugin_api::host::ConfigProblem;

use super::Plugin;
use crate::config::PipelineSpec;
use crate::error::RunError;

/// Loads the spec's plugin and checks its config against the plugin's schema: everything
/// `sluice validate` checks, and the first thing `sluice run` does.
pub fn prepare(spec: &PipelineSpec) -> Result<Plugin, RunError> {
    let plugin = Plugin::load(
        &spec.resolve(&spec.plugin.path),
        spec.plugin.sha256.as_deref(),
    )?;
    check_config(&plugin, &spec.plugin.config, &spec.file)?;
    check_outputs(&plugin, spec)?;
    check_state(&plugin, spec)?;
    Ok(plugin)
}

/// Refuses a spec without `state:` for a plugin that says it keeps state (ABI 1.3
/// `store_name`): its first state call would fail the run.
pub fn check_state(plugin: &Plugin, spec: &PipelineSpec) -> Result<(), RunError> {
    let Some(stores) = plugin.plugin_ref().declared_stores() else {
        return Ok(());
    };
    if stores.is_empty() || spec.state.is_some() {
        return Ok(());
    }
    Err(RunError::NoState {
        spec: spec.file.clone(),
        plugin: plugin.label(),
        stores: stores.join(", "),
    })
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
