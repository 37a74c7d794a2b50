//! The plugin host: finds, verifies and loads plugin libraries, and refuses a bad one with one
//! line naming the path, the cause and what to do.
//!
//! Checks, in order: the file exists; its sha256 matches the spec's pin (before any of its code
//! runs); every range of it the dynamic loader maps lies inside the file ([`elf`]: a truncated
//! library would otherwise die with `SIGBUS` inside `dlopen`); it is a loadable shared library;
//! it exports `sluice_plugin_entry`; its descriptor speaks
//! our ABI major version with a complete vtable; and, for Rust plugins, the abi_stable layout of
//! the frozen data types matches ours field by field ([`layout`]).
//!
//! Libraries are never unloaded: `dlclose` is unsound for Rust and Go libraries (thread-local
//! destructors), and every `'static` a plugin hands out must stay valid. Loading the same path
//! twice returns the first load.

#![allow(unsafe_code)] // The one place the runtime loads libraries and trusts their descriptors; SAFETY notes inline.

pub mod check;
mod elf;
mod layout;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};
use sluice_plugin_api::abi::{self, Descriptor};
use sluice_plugin_api::host::{DescriptorError, PluginRef};

/// Why a plugin library was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file at the path.
    #[error(
        "plugin {path}: no such file: build the plugin (for a cdylib crate: `cargo build`) or fix `plugin.path`"
    )]
    NotFound {
        /// The library path.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("plugin {path}: cannot read the file: {source}")]
    Read {
        /// The library path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The sha256 pinned in the spec differs.
    #[error(
        "plugin {path}: sha256 is {found} but the spec pins {expected}: deploy the pinned build or update `plugin.sha256`"
    )]
    Checksum {
        /// The library path.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        found: String,
    },
    /// The file ends before what the loader would map from it (a truncated copy or build).
    #[error(
        "plugin {path}: truncated shared library ({cause}): copy or build it again (an interrupted copy, download or build leaves one)"
    )]
    Truncated {
        /// The library path.
        path: PathBuf,
        /// What ends past the end of the file.
        cause: String,
    },
    /// `dlopen` refused the file.
    #[error(
        "plugin {path}: not a loadable shared library ({cause}): point `plugin.path` at the .so of a cdylib crate built for this platform"
    )]
    NotALibrary {
        /// The library path.
        path: PathBuf,
        /// The loader's message.
        cause: String,
    },
    /// The entry symbol is missing.
    #[error("plugin {path}: no `{symbol}` symbol: export one with `sluice_plugin_api::export_plugin!(YourPipeline)` (C: see sluice_plugin.h)", symbol = abi::ENTRY_SYMBOL)]
    NoEntry {
        /// The library path.
        path: PathBuf,
    },
    /// The descriptor is unusable (wrong ABI major version, broken table).
    #[error("plugin {path}: {source}")]
    Descriptor {
        /// The library path.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DescriptorError,
    },
    /// The file at this path changed after this process loaded it (libraries are never unloaded).
    #[error(
        "plugin {path}: the file changed after this process loaded it: restart the process to load the new build"
    )]
    ChangedSinceLoad {
        /// The library path.
        path: PathBuf,
    },
    /// The frozen data types differ from the host's.
    #[error("plugin {path}: ABI layout mismatch: {summary}: rebuild the plugin against sluice-plugin-api {major}.x (run with --verbose for the full layout report)", major = abi::ABI_MAJOR)]
    Layout {
        /// The library path.
        path: PathBuf,
        /// One line: type, field, expected vs found.
        summary: String,
        /// abi_stable's full report.
        detail: String,
    },
}

impl LoadError {
    /// Extra detail for `--verbose` (the full layout report), if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            LoadError::Layout { detail, .. } => Some(detail),
            _ => None,
        }
    }
}

/// A verified, loaded plugin library.
#[derive(Clone, Copy)]
pub struct Plugin {
    plugin: PluginRef,
    path: &'static Path,
    sha256: &'static str,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name())
            .field("version", &self.version())
            .field("path", &self.path)
            .finish()
    }
}

impl Plugin {
    /// Loads (once per process) and verifies the library at `path`, checking `sha256` if given.
    pub fn load(path: &Path, sha256: Option<&str>) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound { path: path.into() },
            _ => LoadError::Read {
                path: path.into(),
                source,
            },
        })?;
        let digest = hex(&Sha256::digest(&bytes));
        if let Some(expected) = sha256 {
            if !expected.eq_ignore_ascii_case(&digest) {
                return Err(LoadError::Checksum {
                    path: path.into(),
                    expected: expected.to_ascii_lowercase(),
                    found: digest,
                });
            }
        }
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut loaded = loaded();
        if let Some(plugin) = loaded.get(&key) {
            // The file may have been rebuilt since; a process can only ever run its first load.
            if plugin.sha256 != digest {
                return Err(LoadError::ChangedSinceLoad { path: path.into() });
            }
            return Ok(*plugin);
        }
        elf::check(&bytes).map_err(|cause| LoadError::Truncated {
            path: path.into(),
            cause,
        })?;
        let descriptor = open_library(path)?;
        // SAFETY: the descriptor lives in a library that is never unloaded (`open_library`).
        let plugin =
            unsafe { PluginRef::new(descriptor) }.map_err(|source| LoadError::Descriptor {
                path: path.into(),
                source,
            })?;
        if !plugin.descriptor().layout.is_null() {
            // SAFETY: a non-null layout pointer is `&'static TypeLayout` per the ABI; it lives in
            // the never-unloaded library.
            let found = unsafe { &*plugin.descriptor().layout.cast() };
            layout::check(found).map_err(|(summary, detail)| LoadError::Layout {
                path: path.into(),
                summary,
                detail,
            })?;
        }
        let plugin = Plugin {
            plugin,
            path: Box::leak(path.to_path_buf().into_boxed_path()),
            sha256: Box::leak(digest.into_boxed_str()),
        };
        loaded.insert(key, plugin);
        Ok(plugin)
    }

    /// What `/status` shows of it, after `last_upgrade`.
    pub fn status(
        &self,
        last_upgrade: Option<crate::status::UpgradeStatus>,
    ) -> crate::status::PluginStatus {
        crate::status::PluginStatus {
            name: self.name().to_owned(),
            version: self.version().to_owned(),
            abi_version: self.abi_version(),
            path: self.path().display().to_string(),
            sha256: self.sha256().to_owned(),
            last_upgrade,
        }
    }

    /// The checked descriptor, for opening instances.
    pub fn plugin_ref(&self) -> &PluginRef {
        &self.plugin
    }
    /// Plugin name.
    pub fn name(&self) -> &'static str {
        self.plugin.name()
    }
    /// Plugin version.
    pub fn version(&self) -> &'static str {
        self.plugin.version()
    }
    /// The path it was loaded from.
    pub fn path(&self) -> &'static Path {
        self.path
    }
    /// sha256 of the library file.
    pub fn sha256(&self) -> &'static str {
        self.sha256
    }
    /// The ABI version the plugin was built against, `major.minor`.
    pub fn abi_version(&self) -> String {
        let (major, minor) = self.plugin.abi_version();
        format!("{major}.{minor}")
    }
    /// "name version": how messages name the plugin.
    pub fn label(&self) -> String {
        format!("{} {}", self.name(), self.version())
    }

    /// The descriptor as JSON (`sluice plugin inspect --json`).
    pub fn describe(&self) -> serde_json::Value {
        let (major, minor) = self.plugin.abi_version();
        serde_json::json!({
            "name": self.name(),
            "version": self.version(),
            "description": self.plugin.description(),
            "abi_version": format!("{major}.{minor}"),
            "language": if self.plugin.descriptor().layout.is_null() { "c" } else { "rust" },
            "path": self.path,
            "sha256": self.sha256,
            "outputs": self.plugin.declared_outputs(),
            "stores": self.plugin.declared_stores(),
            "config_schema": self.plugin.config_schema()
                .map(|s| serde_json::from_str::<serde_json::Value>(s).unwrap_or_else(|_| s.into())),
        })
    }
}

/// Loads the library at `path` in a child process first (`sluice plugin probe`, the running executable): the dynamic
/// loader runs a library's initializers and its entry point, and a malformed library can crash
/// there (a bad relocation, a constructor that faults) beyond any check. A child killed by a
/// signal is a one-line refusal here instead of this process dying; anything else the child
/// finds, this process finds again and reports itself. The pin is checked in the child before
/// any of the library's code runs, as in this process.
pub fn probe(path: &Path, sha256: Option<&str>) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    let Ok(me) = std::env::current_exe() else {
        return Ok(()); // no way to re-run ourselves: load in-process as before
    };
    let mut probe = std::process::Command::new(me);
    probe.args(["plugin", "probe"]).arg(path);
    if let Some(pin) = sha256 {
        probe.args(["--sha256", pin]);
    }
    let status = probe
        .env("SLUICE_LOG", "off")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot start a process to probe the plugin library: {e}"))?;
    match status.signal() {
        None => Ok(()),
        Some(signal) => Err(format!(
            "plugin {}: loading it killed the process that tried ({}): the library is malformed or its initializers crash: rebuild it, and run its own tests",
            path.display(),
            signal_name(signal)
        )),
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        _ => return format!("signal {signal}"),
    };
    format!("{name}, signal {signal}")
}

/// The libraries this process has loaded, by canonical path (never unloaded).
fn loaded() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Plugin>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Plugin>>> = OnceLock::new();
    LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Libraries `dlopen` mapped, refused ones included: none is ever unmapped.
static MAPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many plugin libraries this process has mapped: they are never unloaded (those refused
/// after `dlopen` neither), so each upgrade to a new library keeps one more
/// (`sluice_plugin_libraries_loaded`).
pub fn libraries_loaded() -> usize {
    MAPPED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The running plugin's name and version, shared by what names it (log lines, errors, dead
/// letters, `/status`); a plugin upgrade without a restart changes it.
#[derive(Debug, Clone)]
pub struct PluginLabel(std::sync::Arc<std::sync::RwLock<(String, String)>>);

impl PluginLabel {
    /// The label of `plugin`.
    pub fn new(plugin: &Plugin) -> Self {
        PluginLabel(std::sync::Arc::new(std::sync::RwLock::new((
            plugin.name().to_owned(),
            plugin.version().to_owned(),
        ))))
    }

    /// Now `plugin` runs.
    pub fn set(&self, plugin: &Plugin) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) =
            (plugin.name().to_owned(), plugin.version().to_owned());
    }

    /// The plugin's name.
    pub fn name(&self) -> String {
        self.0.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// The plugin's version.
    pub fn version(&self) -> String {
        self.0.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}

impl fmt::Display for PluginLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = self.0.read().unwrap_or_else(|e| e.into_inner());
        write!(f, "{} {}", label.0, label.1)
    }
}

/// Opens the library for good and calls its entry point.
fn open_library(path: &Path) -> Result<*const Descriptor, LoadError> {
    // Absolute path, so dlopen does not search the library path for a bare file name.
    let full = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // SAFETY: loading a library runs its initializers; that is what loading a plugin means, and
    // the file was checked against the spec's pin (if any) just before.
    let library =
        unsafe { libloading::Library::new(&full) }.map_err(|e| LoadError::NotALibrary {
            path: path.into(),
            cause: dlerror_text(&e, &full),
        })?;
    // Never unloaded: see the module docs.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    MAPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    type Entry = extern "C" fn() -> *const Descriptor;
    // SAFETY: the symbol's type is fixed by the ABI (sluice_plugin.h).
    let entry = unsafe { library.get::<Entry>(abi::ENTRY_SYMBOL.as_bytes()) }
        .map_err(|_| LoadError::NoEntry { path: path.into() })?;
    Ok(entry())
}

/// dlopen's message without the repeated path.
fn dlerror_text(err: &libloading::Error, full: &Path) -> String {
    let text = err.to_string();
    let prefix = format!("{}: ", full.display());
    match text.find(&prefix) {
        Some(at) => text[at + prefix.len()..].to_owned(),
        None => text,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a file, as `plugin.sha256` expects it.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}

/// Writes a plugin's log line through `tracing` at its level.
pub fn log_line(plugin: &str, level: u32, message: &str) {
    use sluice_plugin_api::abi::{LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN};
    match level {
        LOG_ERROR => tracing::error!(plugin, "{message}"),
        LOG_WARN => tracing::warn!(plugin, "{message}"),
        LOG_INFO => tracing::info!(plugin, "{message}"),
        LOG_DEBUG => tracing::debug!(plugin, "{message}"),
        _ => tracing::trace!(plugin, "{message}"),
    }
}

/// The check a library file gets before `dlopen` (see [`elf`]): `Err` says, in one clause, what
/// ends past the end of the file. Public for the fuzz target.
pub fn precheck(bytes: &[u8]) -> Result<(), String> {
    elf::check(bytes)
}
