//! Plugin upgrades without a restart: `POST /plugin` on the admin endpoint (a bearer token,
//! `SLUICE_ADMIN_TOKEN`) names a new library and its sha256. The poll thread checks it like a
//! start does (the pin, a probe in a child process, the ABI, the same plugin name, the spec's
//! config against its schema, its outputs and stores), then releases every partition (drained,
//! flushed, acknowledged, committed, state closed with a checkpoint), opens the new version's
//! instances and puts them in place of the old ones, and takes the partitions back from their
//! committed offsets (state reopened from the checkpoint). An instance that fails to open
//! leaves the old ones in place; a new version whose first `admin.upgrade-watch-events` events
//! fail at more than `admin.upgrade-max-error-rate` is swapped back out. Libraries are never
//! unloaded (see `crate::plugin`).
//!
//! The Kafka source's loop does the swapping (`source::kafka::upgrade`); this module holds what
//! the admin endpoint and the loop share.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::config::PipelineSpec;
use crate::plugin::{Plugin, check};
use crate::status::UpgradeStatus;

/// The environment variable holding the admin endpoint's bearer token for `POST /plugin`:
/// without it (or [`TOKEN_FILE_ENV`]), upgrades are off.
pub const TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";
/// The environment variable naming a file that holds the token (a mounted Secret).
pub const TOKEN_FILE_ENV: &str = "SLUICE_ADMIN_TOKEN_FILE";

/// The admin token, from [`TOKEN_ENV`] or the file [`TOKEN_FILE_ENV`] names (trimmed); `None`
/// when neither gives a non-empty one.
pub fn admin_token() -> Result<Option<String>, String> {
    if let Some(token) = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()) {
        return Ok(Some(token));
    }
    let Some(file) = std::env::var_os(TOKEN_FILE_ENV).filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    match std::fs::read_to_string(&file) {
        Ok(token) => Ok(Some(token.trim().to_owned()).filter(|t| !t.is_empty())),
        // An optional Secret that is not there: upgrades are off, as without the variable.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "{TOKEN_FILE_ENV}: cannot read {}: {e}",
            std::path::Path::new(&file).display()
        )),
    }
}

/// What a `POST /plugin` asks, and where the answer goes.
#[derive(Debug)]
pub struct UpgradeRequest {
    /// The new library.
    pub path: PathBuf,
    /// Its sha256 (required: the pin is checked before any of its code runs).
    pub sha256: String,
    /// The answer, once the swap is done or refused.
    pub reply: mpsc::SyncSender<Answer>,
}

/// How an upgrade request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The new version runs (and is being watched through its first events).
    Upgraded(String),
    /// Refused before anything changed.
    Refused(String),
    /// The new version failed to open: the old one runs again.
    RolledBack(String),
}

/// Checks the library at `path` as a start would, for the pipeline that runs `current`: the
/// sha256 pin, a probe in a child process, the ABI and layout, that it is the same plugin
/// (by name), the spec's `plugin.config` against its schema, and its declared outputs and
/// stores against the spec. The error is one line.
pub fn check_library(
    spec: &PipelineSpec,
    current: &Plugin,
    path: &Path,
    sha256: &str,
) -> Result<Plugin, String> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{}: sha256 `{sha256}` is not 64 hex digits: pin the library (`sha256sum {}`)",
            path.display(),
            path.display()
        ));
    }
    let same = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if same(path) == same(current.path()) {
        return Err(format!(
            "{}: the running library: put the new version at a new path (a process runs the first load of a path)",
            path.display()
        ));
    }
    crate::plugin::probe(path, Some(sha256))?;
    let plugin = Plugin::load(path, Some(sha256)).map_err(|e| match e {
        crate::plugin::LoadError::Checksum { found, .. } => format!(
            "plugin {}: sha256 is {found} but the request pins {}: send the sha256 of the build you mean (`sha256sum {}`)",
            path.display(),
            sha256.to_ascii_lowercase(),
            path.display()
        ),
        other => other.to_string(),
    })?;
    if plugin.name() != current.name() {
        return Err(format!(
            "{}: plugin `{}`, but this pipeline runs `{}`: an upgrade keeps the plugin (change the spec and restart to run another)",
            path.display(),
            plugin.name(),
            current.name()
        ));
    }
    check::check_config(&plugin, &spec.plugin.config, &spec.file).map_err(|e| e.to_string())?;
    check::check_outputs(&plugin, spec).map_err(|e| e.to_string())?;
    check::check_state(&plugin, spec).map_err(|e| e.to_string())?;
    Ok(plugin)
}

/// A new version on trial: its first events' error rate decides whether it stays.
#[derive(Debug)]
pub struct Trial {
    /// The version before, to go back to.
    pub previous: Plugin,
    /// The version on trial.
    pub current: Plugin,
    /// `events_in` and `events_failed` when it started.
    pub base: (u64, u64),
}

/// What a trial's counts say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Not enough events yet.
    Watching,
    /// Enough events, few enough failed.
    Keep,
    /// Enough events, and this share of them failed.
    RollBack(f64),
}

/// The verdict on a version that started when the run's counts of events handed to the plugin
/// and of those it failed were `base`, now that they are `now`: judged once `watch` events
/// went through it, against `max_rate`.
pub fn verdict(base: (u64, u64), now: (u64, u64), watch: u64, max_rate: f64) -> Verdict {
    let seen = now.0.saturating_sub(base.0);
    if seen < watch.max(1) {
        return Verdict::Watching;
    }
    let rate = now.1.saturating_sub(base.1) as f64 / seen as f64;
    if rate > max_rate {
        Verdict::RollBack(rate)
    } else {
        Verdict::Keep
    }
}

/// The `/status` record of an upgrade from `from` to `to`.
pub fn status(from: &Plugin, to: &Plugin, outcome: &str, message: String) -> UpgradeStatus {
    UpgradeStatus {
        from: from.label(),
        to: to.label(),
        outcome: outcome.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_keeps_or_rolls_back_only_after_enough_events() {
        let base = (1_000, 10);
        assert_eq!(verdict(base, (1_099, 90), 100, 0.5), Verdict::Watching);
        assert_eq!(verdict(base, (1_100, 60), 100, 0.5), Verdict::Keep);
        assert_eq!(verdict(base, (1_100, 70), 100, 0.5), Verdict::RollBack(0.6));
        assert_eq!(verdict(base, (1_001, 11), 0, 0.5), Verdict::RollBack(1.0));
    }
}
