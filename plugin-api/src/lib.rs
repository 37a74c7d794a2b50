//! # sluice-plugin-api: the published plugin contract
//!
//! A Sluice pipeline plugin is a dynamic library that exports one C function,
//! `sluice_plugin_entry`, returning a [`abi::Descriptor`]: name, version, ABI version, a one-line
//! description, an optional JSON schema of its config, and a table of entry points (open,
//! process, assigned, revoked, flush, close). `include/sluice_plugin.h` declares the same ABI
//! for C, C++, Zig or Go (cgo `c-shared`) plugins.
//!
//! - [`abi`]: the `repr(C)` types and tables (the contract itself).
//! - [`sdk`]: for Rust authors: implement [`Pipeline`], then `export_plugin!(MyPipeline)`.
//! - [`state`]: keyed state stores offered by the host (ABI 1.2): [`Output::store`].
//! - [`window`]: event-time windows, dedup and joins, in memory or (`StoredWindows`) in a store.
//! - `host` (feature `host`): the safe host side of the calls, used by the runtime.
//! - `testing` (feature `testing`): a harness to unit-test a pipeline without the host. Build
//!   this reference with it: `cargo doc -p sluice-plugin-api --features testing`.
//!
//! In the function table, `open`, `process` and `close` are required (a NULL one is refused at
//! load, by name); `assigned`, `revoked`, `flush` and, since ABI 1.1, `output_name` (the outputs
//! a plugin declares, [`Pipeline::OUTPUTS`] in Rust) may be NULL. ABI 1.2 appended the state
//! calls to the host table (`state_get`, `state_put`, `state_delete`, `state_scan`); the SDK's
//! [`Store`] checks the host's `size` and fails its calls on an older host. ABI 1.3 appended
//! `committed` to the function table ([`Pipeline::committed`]): what the host has committed.
//!
//! ## Data flow
//! Events arrive in batches as borrowed views ([`abi::Event`]) valid only during the call; the
//! plugin emits [`abi::Record`]s to *named outputs* through the host's `emit` callback, which
//! copies them before returning. Nothing allocated by one side is freed by the other. What an
//! output is (a Kafka topic, a table, stdout, a file) is decided by the pipeline spec.
//!
//! ## Errors and panics
//! A per-event error (`Host::event_error`: this event, this kind, this message) lets the host
//! apply its error policy to that one event. A failed call (`Host::fail` + `STATUS_ERROR`) is
//! fatal for the instance. The SDK runs every call under `catch_unwind`: a panic is reported as
//! `STATUS_PANIC` with the panic message and never unwinds into the host.
//!
//! ## Compatibility
//! The crate's major version is the ABI major version ([`abi::ABI_MAJOR`]).
//!
//! | change | compatible? |
//! |---|---|
//! | append an entry to `PluginVTable` or `Host`, bump [`abi::ABI_MINOR`] | yes: either side may be newer |
//! | add a new constant (status, flag, event error kind, log level) | yes, if old code treats unknown values safely |
//! | add, remove, reorder or retype a field of a data type ([`abi::Event`], [`abi::Record`], [`abi::Header`], [`abi::Partition`], [`abi::OpenContext`], [`abi::Descriptor`]) | no: bump the major version |
//! | change an entry's signature or meaning | no: bump the major version |
//!
//! Within a major version a host accepts plugins of any minor version: a newer host checks the
//! plugin vtable's `size` before calling an entry the plugin may lack; a newer plugin checks the
//! host table's `size` before calling a newer callback. A plugin of another major version is
//! refused with its version in the message. Rust plugins also export an abi_stable layout of the
//! frozen data types ([`abi::AbiTypes`]); the host compares it field by field and names the
//! first type and field that differ. C plugins export no layout; the header is their contract.
//!
//! ## Lifetime of a library
//! The host never unloads a plugin library (`dlclose` is unsound for Rust and Go libraries with
//! thread-local destructors); every `'static` a plugin hands out (descriptor, strings, layout)
//! therefore stays valid. A process loads each library once.

#![allow(unsafe_code)] // This crate is the C ABI; every unsafe block carries a SAFETY comment.

pub mod abi;
#[cfg(feature = "host")]
pub mod host;
pub mod sdk;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod window;

pub use abi::{Event, Header, Partition, Record};
pub use sdk::{Context, EmitError, Error, EventError, Level, NoConfig, Output, Pipeline};
pub use state::{StateError, Store};

/// Re-exported for `export_plugin!` and for plugin configs.
pub use serde_json;
