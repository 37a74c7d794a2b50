//! The host side of the ABI, made safe: [`PluginRef`] checks a descriptor's version and tables,
//! [`Instance`] calls a plugin instance's entry points, and a [`Collector`] receives what the plugin
//! emits. Used by the Sluice runtime and by the `testing` harness; it never loads libraries
//! itself (the runtime does, and never unloads them).
//!
//! Every host callback runs under `catch_unwind`: a panicking [`Collector`] fails the call with a
//! message instead of unwinding through the plugin's frames. A record the host refuses fails the
//! call even when the plugin ignores the refusal, so nothing is dropped silently.

use std::ffi::c_void;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::{
    self, Bytes, Descriptor, Event, Host, OpenContext, Partition, PluginVTable, Record, Slice, Str,
};

/// Why a descriptor cannot be used. Messages say what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorError {
    /// The entry point returned a null descriptor.
    Null,
    /// Built for another ABI major version.
    AbiMajor {
        /// The plugin's ABI version.
        found: (u32, u32),
    },
    /// The descriptor has no function table.
    NullVTable,
    /// The function table is smaller than ABI 1.0 requires.
    VTableTooSmall {
        /// The size the plugin declared.
        size: usize,
    },
    /// A descriptor string is not UTF-8.
    NotUtf8(&'static str),
    /// A required entry of the vtable is NULL.
    MissingEntry(&'static str),
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescriptorError::Null => write!(f, "sluice_plugin_entry returned NULL"),
            DescriptorError::AbiMajor {
                found: (major, minor),
            } => write!(
                f,
                "plugin built for ABI {major}.{minor}, this host speaks ABI {}.{}: rebuild the plugin against sluice-plugin-api {}.x",
                abi::ABI_MAJOR,
                abi::ABI_MINOR,
                abi::ABI_MAJOR
            ),
            DescriptorError::NullVTable => write!(f, "the plugin descriptor has a NULL vtable"),
            DescriptorError::VTableTooSmall { size } => write!(
                f,
                "the plugin vtable is {size} bytes, ABI {}.0 needs at least {}: rebuild the plugin against the current header",
                abi::ABI_MAJOR,
                MIN_VTABLE_SIZE
            ),
            DescriptorError::NotUtf8(field) => {
                write!(f, "the plugin descriptor's {field} is not UTF-8")
            }
            DescriptorError::MissingEntry(entry) => write!(
                f,
                "the plugin vtable's `{entry}` is NULL: `open`, `process` and `close` are required (only `assigned`, `revoked`, `flush` and `output_name` may be NULL): fill it in and rebuild"
            ),
        }
    }
}

impl std::error::Error for DescriptorError {}

/// Size of the ABI 1.0 plugin vtable: every 1.x plugin has at least these entries.
pub const MIN_VTABLE_SIZE: usize = std::mem::offset_of!(PluginVTable, output_name);

/// Most outputs a plugin may declare (a bound on reading `output_name`).
const MAX_DECLARED_OUTPUTS: usize = 1024;

/// How a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The plugin returned an error with this message.
    Failed(String),
    /// The plugin panicked; the SDK caught it (message attached).
    Panicked(String),
    /// The host refused something the plugin emitted (unknown output, malformed record).
    Refused(String),
    /// The plugin broke the calling convention (unknown status, bad event index).
    Protocol(String),
}

impl CallError {
    /// The message without the kind.
    pub fn message(&self) -> &str {
        match self {
            CallError::Failed(m)
            | CallError::Panicked(m)
            | CallError::Refused(m)
            | CallError::Protocol(m) => m,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Failed(m) => write!(f, "plugin error: {m}"),
            CallError::Panicked(m) => write!(f, "plugin panic: {m}"),
            CallError::Refused(m) => write!(f, "record refused: {m}"),
            CallError::Protocol(m) => write!(f, "plugin broke the ABI contract: {m}"),
        }
    }
}

impl std::error::Error for CallError {}

/// The kind of a per-event error reported by a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventErrorKind {
    /// Undecodable or invalid input; retrying cannot help.
    InvalidInput,
    /// Processing failed; a retry may succeed.
    Failed,
}

/// Why the host refused a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No output of that name.
    UnknownOutput,
    /// The record cannot be written (message says why).
    Invalid(String),
}

/// Receives what a plugin emits during one call.
pub trait Collector {
    /// A record for `output` (already checked to be UTF-8, as are the header keys).
    fn emit(&mut self, output: &str, record: &Record<'_>) -> Result<(), Refusal>;
    /// The event at `index` of the current batch failed.
    fn event_error(&mut self, index: usize, kind: EventErrorKind, message: &str);
    /// A log line from the plugin (`abi::LOG_*` level).
    fn log(&mut self, level: u32, message: &str);

    /// Reads `key` of `store` for the input partition `(topic, partition)` into `value` (cleared
    /// first); `Ok(false)` when the store has no value for it. `Err` refuses the call (message
    /// says why and what to do).
    fn state_get(
        &mut self,
        partition: (&str, i32),
        store: &str,
        key: &[u8],
        value: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let _ = (partition, key, value);
        Err(no_state(store))
    }

    /// Writes (`Some`) or deletes (`None`) `key` of `store` for the input partition.
    fn state_put(
        &mut self,
        partition: (&str, i32),
        store: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let _ = (partition, key, value);
        Err(no_state(store))
    }

    /// Visits the entries of `store` for the input partition whose key starts with `prefix`, in
    /// key order, until `visit` returns false.
    fn state_scan(
        &mut self,
        partition: (&str, i32),
        store: &str,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), String> {
        let _ = (partition, prefix, visit);
        Err(no_state(store))
    }
}

/// The refusal of a state call in a pipeline without stores.
pub fn no_state(store: &str) -> String {
    format!(
        "the plugin used state store `{store}`, but the pipeline declares no state stores: add `state: {{stores: [{store}]}}` to the spec"
    )
}

/// A collector that refuses every record: for calls that must not emit.
#[derive(Debug, Default)]
pub struct NoOutputs;

impl Collector for NoOutputs {
    fn emit(&mut self, _output: &str, _record: &Record<'_>) -> Result<(), Refusal> {
        Err(Refusal::Invalid(
            "records cannot be emitted from this call".into(),
        ))
    }
    fn event_error(&mut self, _index: usize, _kind: EventErrorKind, _message: &str) {}
    fn log(&mut self, _level: u32, _message: &str) {}
}

/// A checked plugin descriptor. Copyable: it points into a library that is never unloaded.
#[derive(Debug, Clone, Copy)]
pub struct PluginRef {
    descriptor: &'static Descriptor,
    vtable: &'static PluginVTable,
    // The required entries, checked non-NULL at load.
    open: abi::OpenFn,
    process: abi::ProcessFn,
    close: abi::InstanceFn,
}

impl PluginRef {
    /// Checks a descriptor's ABI major version, table size and strings.
    ///
    /// # Safety
    /// `descriptor` is null or points at a descriptor (and everything it references) that stays
    /// valid for the rest of the process: the library is never unloaded.
    pub unsafe fn new(descriptor: *const Descriptor) -> Result<Self, DescriptorError> {
        if descriptor.is_null() {
            return Err(DescriptorError::Null);
        }
        // SAFETY: non-null and 'static per this function's contract. Only the two leading fields,
        // stable across every major version, are read before the major version is known.
        let descriptor: &'static Descriptor = unsafe { &*descriptor };
        if descriptor.abi_major != abi::ABI_MAJOR {
            return Err(DescriptorError::AbiMajor {
                found: (descriptor.abi_major, descriptor.abi_minor),
            });
        }
        if descriptor.vtable.is_null() {
            return Err(DescriptorError::NullVTable);
        }
        // SAFETY: non-null, 'static per this function's contract; its first field is its size.
        let vtable: &'static PluginVTable = unsafe { &*descriptor.vtable };
        if vtable.size < MIN_VTABLE_SIZE {
            return Err(DescriptorError::VTableTooSmall { size: vtable.size });
        }
        for (field, value) in [
            ("name", descriptor.name),
            ("version", descriptor.version),
            ("description", descriptor.description),
            ("config_schema", descriptor.config_schema),
        ] {
            value
                .to_str()
                .map_err(|_| DescriptorError::NotUtf8(field))?;
        }
        let open = vtable.open.ok_or(DescriptorError::MissingEntry("open"))?;
        let process = vtable
            .process
            .ok_or(DescriptorError::MissingEntry("process"))?;
        let close = vtable.close.ok_or(DescriptorError::MissingEntry("close"))?;
        Ok(PluginRef {
            descriptor,
            vtable,
            open,
            process,
            close,
        })
    }

    /// The outputs the plugin says it emits to (ABI 1.1 `output_name`); `None` when it does not
    /// say (a 1.0 plugin, or NULL).
    pub fn declared_outputs(&self) -> Option<Vec<&'static str>> {
        let output_name = self.entry(
            std::mem::offset_of!(PluginVTable, output_name),
            self.vtable.output_name,
        )?;
        let mut names = Vec::new();
        for index in 0..MAX_DECLARED_OUTPUTS {
            // SAFETY: a 1.1 table's `output_name` per the ABI: static strings, any index.
            let name = unsafe { output_name(index) };
            match name.to_str() {
                Ok("") => break,
                Ok(name) => names.push(name),
                Err(_) => break,
            }
        }
        Some(names)
    }

    /// A vtable entry added after ABI 1.0 (at `offset`): `None` when the plugin's table is too
    /// short to hold it (built against an older minor version) or it is NULL.
    fn entry<F: Copy>(&self, offset: usize, entry: Option<F>) -> Option<F> {
        if self.vtable.size < offset + std::mem::size_of::<Option<F>>() {
            return None;
        }
        entry
    }

    /// The state stores the plugin says it keeps state in (ABI 1.3 `store_name`); `None` when
    /// it does not say.
    pub fn declared_stores(&self) -> Option<Vec<&'static str>> {
        let store_name = self.entry(
            std::mem::offset_of!(PluginVTable, store_name),
            self.vtable.store_name,
        )?;
        let mut names = Vec::new();
        for index in 0..MAX_DECLARED_OUTPUTS {
            // SAFETY: a 1.3 table's `store_name` per the ABI: static strings, any index.
            match unsafe { store_name(index) }.to_str() {
                Ok("") | Err(_) => break,
                Ok(name) => names.push(name),
            }
        }
        Some(names)
    }

    /// Whether the plugin wants to know what is committed (ABI 1.3 `committed`).
    pub fn wants_committed(&self) -> bool {
        self.entry(
            std::mem::offset_of!(PluginVTable, committed),
            self.vtable.committed,
        )
        .is_some()
    }

    /// The raw descriptor.
    pub fn descriptor(&self) -> &'static Descriptor {
        self.descriptor
    }
    /// Plugin name.
    pub fn name(&self) -> &'static str {
        self.descriptor.name.to_str().unwrap_or_default()
    }
    /// Plugin version.
    pub fn version(&self) -> &'static str {
        self.descriptor.version.to_str().unwrap_or_default()
    }
    /// One-line description.
    pub fn description(&self) -> &'static str {
        self.descriptor.description.to_str().unwrap_or_default()
    }
    /// The config's JSON schema, if the plugin publishes one.
    pub fn config_schema(&self) -> Option<&'static str> {
        Some(self.descriptor.config_schema.to_str().unwrap_or_default())
            .filter(|s| !s.trim().is_empty())
    }
    /// The ABI version the plugin was built against.
    pub fn abi_version(&self) -> (u32, u32) {
        (self.descriptor.abi_major, self.descriptor.abi_minor)
    }

    /// Opens an instance with its JSON config (an object).
    pub fn open(
        &self,
        config_json: &str,
        context: &OpenContext<'_>,
        collector: &mut dyn Collector,
    ) -> Result<Instance, CallError> {
        let mut ptr: *mut c_void = std::ptr::null_mut();
        let open = self.open;
        call(collector, 0, |host| {
            // SAFETY: per the ABI: valid config, context, host and out-slot for the call.
            unsafe { open(Str::new(config_json), context, host, &mut ptr) }
        })?;
        if ptr.is_null() {
            return Err(CallError::Protocol(
                "open returned OK but no instance".into(),
            ));
        }
        Ok(Instance { plugin: *self, ptr })
    }
}

/// One open plugin instance. Closed on drop (errors then only logged to the collector-less void);
/// call [`Instance::close`] to see them.
#[derive(Debug)]
pub struct Instance {
    plugin: PluginRef,
    ptr: *mut c_void,
}

// SAFETY: the ABI requires instances to be movable between threads (never called from two at
// once, which `&mut self` on every call guarantees); the Rust SDK enforces `Pipeline: Send`.
unsafe impl Send for Instance {}

impl Instance {
    /// The plugin this instance belongs to.
    pub fn plugin(&self) -> &PluginRef {
        &self.plugin
    }

    /// Processes a batch of events.
    pub fn process(
        &mut self,
        events: &[Event<'_>],
        collector: &mut dyn Collector,
    ) -> Result<(), CallError> {
        let (process, ptr) = (self.plugin.process, self.ptr);
        call(collector, events.len(), |host| {
            // SAFETY: live instance; events borrowed for the call.
            unsafe { process(ptr, Slice::new(events), host) }
        })
    }

    /// Tells the instance about newly assigned partitions.
    pub fn assigned(
        &mut self,
        partitions: &[Partition<'_>],
        collector: &mut dyn Collector,
    ) -> Result<(), CallError> {
        let (Some(assigned), ptr) = (self.plugin.vtable.assigned, self.ptr) else {
            return Ok(()); // NULL: nothing to do
        };
        // SAFETY: live instance; partitions borrowed for the call.
        call(collector, 0, |host| unsafe {
            assigned(ptr, Slice::new(partitions), host)
        })
    }

    /// Tells the instance its partitions were revoked.
    pub fn revoked(
        &mut self,
        partitions: &[Partition<'_>],
        collector: &mut dyn Collector,
    ) -> Result<(), CallError> {
        let (Some(revoked), ptr) = (self.plugin.vtable.revoked, self.ptr) else {
            return Ok(()); // NULL: nothing to do
        };
        // SAFETY: live instance; partitions borrowed for the call.
        call(collector, 0, |host| unsafe {
            revoked(ptr, Slice::new(partitions), host)
        })
    }

    /// Asks the instance to emit everything it buffers (before offsets are committed).
    pub fn flush(&mut self, collector: &mut dyn Collector) -> Result<(), CallError> {
        let (Some(flush), ptr) = (self.plugin.vtable.flush, self.ptr) else {
            return Ok(()); // NULL: nothing buffered
        };
        // SAFETY: live instance.
        call(collector, 0, |host| unsafe { flush(ptr, host) })
    }

    /// Tells the instance what is committed (ABI 1.3): `partitions` with, in the same order,
    /// the next offset to read of each. A no-op for a plugin without the entry.
    pub fn committed(
        &mut self,
        partitions: &[Partition<'_>],
        offsets: &[i64],
        collector: &mut dyn Collector,
    ) -> Result<(), CallError> {
        assert_eq!(partitions.len(), offsets.len(), "an offset per partition");
        let committed = self.plugin.entry(
            std::mem::offset_of!(PluginVTable, committed),
            self.plugin.vtable.committed,
        );
        let (Some(committed), ptr) = (committed, self.ptr) else {
            return Ok(());
        };
        // SAFETY: live instance; partitions and offsets borrowed for the call, as many of each.
        call(collector, 0, |host| unsafe {
            committed(ptr, Slice::new(partitions), offsets.as_ptr(), host)
        })
    }

    /// Closes the instance.
    pub fn close(self, collector: &mut dyn Collector) -> Result<(), CallError> {
        let this = std::mem::ManuallyDrop::new(self);
        let (close, ptr) = (this.plugin.close, this.ptr);
        // SAFETY: live instance, closed exactly once (Drop is skipped).
        call(collector, 0, |host| unsafe { close(ptr, host) })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let (close, ptr) = (self.plugin.close, self.ptr);
        // SAFETY: live instance, closed exactly once (`close` skips this Drop).
        let _ = call(&mut NoOutputs, 0, |host| unsafe { close(ptr, host) });
    }
}

/// Per-call state behind `Host::ctx`.
struct CallState<'c> {
    collector: &'c mut dyn Collector,
    batch_len: usize,
    failure: Option<String>,
    refused: Option<String>,
    protocol: Option<String>,
    /// What the last `state_get` found; the plugin borrows it until its next host call.
    value: Vec<u8>,
}

fn call(
    collector: &mut dyn Collector,
    batch_len: usize,
    f: impl FnOnce(*const Host) -> abi::Status,
) -> Result<(), CallError> {
    let mut state = CallState {
        collector,
        batch_len,
        failure: None,
        refused: None,
        protocol: None,
        value: Vec::new(),
    };
    let host = Host {
        size: std::mem::size_of::<Host>(),
        ctx: (&raw mut state).cast(),
        emit: host_emit,
        event_error: host_event_error,
        fail: host_fail,
        log: host_log,
        state_get: host_state_get,
        state_put: host_state_put,
        state_delete: host_state_delete,
        state_scan: host_state_scan,
    };
    let status = f(&host);
    if let Some(message) = state.protocol {
        return Err(CallError::Protocol(message));
    }
    if let Some(message) = state.refused {
        return Err(CallError::Refused(message));
    }
    let message = || {
        state
            .failure
            .clone()
            .unwrap_or_else(|| "the plugin gave no message".to_owned())
    };
    match status {
        abi::STATUS_OK => Ok(()),
        abi::STATUS_ERROR => Err(CallError::Failed(message())),
        abi::STATUS_PANIC => Err(CallError::Panicked(message())),
        other => Err(CallError::Protocol(format!(
            "unknown status {other} ({})",
            message()
        ))),
    }
}

/// # Safety
/// `ctx` is the `CallState` of the call in progress (the plugin passes back what it was given).
unsafe fn state<'a>(ctx: *mut c_void) -> &'a mut CallState<'a> {
    // SAFETY: per the contract above.
    unsafe { &mut *ctx.cast::<CallState<'a>>() }
}

unsafe extern "C" fn host_emit(ctx: *mut c_void, record: *const Record<'_>) -> abi::Status {
    // SAFETY: ctx comes from `call`.
    let state = unsafe { state(ctx) };
    if record.is_null() {
        state
            .refused
            .get_or_insert_with(|| "emit called with a NULL record".into());
        return abi::STATUS_INVALID_RECORD;
    }
    // SAFETY: non-null; the plugin keeps the record alive during emit.
    let record = unsafe { &*record };
    let Ok(output) = record.output_name().to_str() else {
        state
            .refused
            .get_or_insert_with(|| "output name is not UTF-8".into());
        return abi::STATUS_INVALID_RECORD;
    };
    if record
        .header_list()
        .iter()
        .any(|h| h.raw_key().to_str().is_err())
    {
        state
            .refused
            .get_or_insert_with(|| format!("a header key of a record for `{output}` is not UTF-8"));
        return abi::STATUS_INVALID_RECORD;
    }
    match catch_unwind(AssertUnwindSafe(|| state.collector.emit(output, record))) {
        Ok(Ok(())) => abi::STATUS_OK,
        Ok(Err(Refusal::UnknownOutput)) => {
            state.refused.get_or_insert_with(|| {
                format!("the plugin emitted to output `{output}`, which the pipeline spec does not define: add it under `outputs:`")
            });
            abi::STATUS_UNKNOWN_OUTPUT
        }
        Ok(Err(Refusal::Invalid(why))) => {
            state
                .refused
                .get_or_insert_with(|| format!("record for `{output}`: {why}"));
            abi::STATUS_INVALID_RECORD
        }
        Err(_) => {
            state.protocol.get_or_insert_with(|| {
                format!("the host panicked writing a record for `{output}`")
            });
            abi::STATUS_INVALID_RECORD
        }
    }
}

unsafe extern "C" fn host_event_error(ctx: *mut c_void, index: usize, kind: u32, message: Str<'_>) {
    // SAFETY: ctx comes from `call`.
    let state = unsafe { state(ctx) };
    if index >= state.batch_len {
        state.protocol.get_or_insert_with(|| {
            format!(
                "event error for index {index}, but the batch has {} events",
                state.batch_len
            )
        });
        return;
    }
    let kind = match kind {
        abi::EVENT_ERROR_INVALID_INPUT => EventErrorKind::InvalidInput,
        _ => EventErrorKind::Failed,
    };
    let message = message.to_string_lossy();
    if catch_unwind(AssertUnwindSafe(|| {
        state.collector.event_error(index, kind, &message)
    }))
    .is_err()
    {
        state
            .protocol
            .get_or_insert_with(|| "the host panicked recording an event error".into());
    }
}

unsafe extern "C" fn host_fail(ctx: *mut c_void, message: Str<'_>) {
    // SAFETY: ctx comes from `call`.
    let state = unsafe { state(ctx) };
    state.failure = Some(message.to_string_lossy());
}

unsafe extern "C" fn host_log(ctx: *mut c_void, level: u32, message: Str<'_>) {
    // SAFETY: ctx comes from `call`.
    let state = unsafe { state(ctx) };
    let message = message.to_string_lossy();
    let _ = catch_unwind(AssertUnwindSafe(|| state.collector.log(level, &message)));
}

/// The partition and store of a state call, checked; `Err` is the refusal's message.
///
/// # Safety
/// `partition` is null or points at a partition valid for the call.
unsafe fn state_target<'p>(
    partition: *const Partition<'p>,
    store: Str<'p>,
) -> Result<((&'p str, i32), &'p str), String> {
    if partition.is_null() {
        return Err("a state call passed a NULL partition".into());
    }
    // SAFETY: non-null, valid for the call per this function's contract.
    let partition = unsafe { &*partition };
    let topic = partition
        .raw_topic()
        .to_str()
        .map_err(|_| "a state call's partition topic is not UTF-8".to_owned())?;
    let store = store
        .to_str()
        .map_err(|_| "a state call's store name is not UTF-8".to_owned())?;
    Ok(((topic, partition.partition()), store))
}

/// Runs one state operation for a callback: a refusal or a host panic fails the plugin call
/// whatever the plugin then returns, so no state change is lost silently.
fn state_call(
    state: &mut CallState<'_>,
    op: impl FnOnce(&mut CallState<'_>) -> Result<abi::Status, String>,
) -> abi::Status {
    match catch_unwind(AssertUnwindSafe(|| op(&mut *state))) {
        Ok(Ok(status)) => status,
        Ok(Err(why)) => {
            state.refused.get_or_insert(why);
            abi::STATUS_STATE_REFUSED
        }
        Err(_) => {
            state
                .protocol
                .get_or_insert_with(|| "the host panicked in a state call".into());
            abi::STATUS_STATE_REFUSED
        }
    }
}

unsafe extern "C" fn host_state_get(
    ctx: *mut c_void,
    partition: *const Partition<'_>,
    store: Str<'_>,
    key: Bytes<'_>,
    value: *mut Bytes<'_>,
) -> abi::Status {
    // SAFETY: ctx comes from `call`.
    let state = unsafe { state(ctx) };
    state_call(state, |state| {
        // SAFETY: the plugin passes a partition valid for the call (or NULL, refused).
        let (tp, store) = unsafe { state_target(partition, store) }?;
        if value.is_null() {
            return Err("state_get called with a NULL value slot".into());
        }
        let mut found = std::mem::take(&mut state.value);
        let present = state
            .collector
            .state_get(tp, store, key.as_slice(), &mut found)?;
        state.value = found;
        if !present {
            return Ok(abi::STATUS_NOT_FOUND);
        }
        // SAFETY: non-null out-slot; the bytes live in `state.value` until the next host call.
        unsafe {
            *value = Bytes::new(std::slice::from_raw_parts(
                state.value.as_ptr(),
                state.value.len(),
            ))
        };
        Ok(abi::STATUS_OK)
    })
}

unsafe extern "C" fn host_state_put(
    ctx: *mut c_void,
    partition: *const Partition<'_>,
    store: Str<'_>,
    key: Bytes<'_>,
    value: Bytes<'_>,
) -> abi::Status {
    // SAFETY: forwarded from the plugin's call, per the ABI.
    unsafe { state_write(ctx, partition, store, key, Some(value)) }
}

unsafe extern "C" fn host_state_delete(
    ctx: *mut c_void,
    partition: *const Partition<'_>,
    store: Str<'_>,
    key: Bytes<'_>,
) -> abi::Status {
    // SAFETY: forwarded from the plugin's call, per the ABI.
    unsafe { state_write(ctx, partition, store, key, None) }
}

/// `state_put` (`Some`) and `state_delete` (`None`).
///
/// # Safety
/// `ctx` comes from `call`; `partition` is null or valid for the call.
unsafe fn state_write(
    ctx: *mut c_void,
    partition: *const Partition<'_>,
    store: Str<'_>,
    key: Bytes<'_>,
    value: Option<Bytes<'_>>,
) -> abi::Status {
    // SAFETY: ctx comes from `call`.
    let state = unsafe { state(ctx) };
    state_call(state, |state| {
        // SAFETY: the plugin passes a partition valid for the call (or NULL, refused).
        let (tp, store) = unsafe { state_target(partition, store) }?;
        let value = value.as_ref().map(Bytes::as_slice);
        state
            .collector
            .state_put(tp, store, key.as_slice(), value)?;
        Ok(abi::STATUS_OK)
    })
}

unsafe extern "C" fn host_state_scan(
    ctx: *mut c_void,
    partition: *const Partition<'_>,
    store: Str<'_>,
    prefix: Bytes<'_>,
    visit: abi::StateVisitFn,
    visit_ctx: *mut c_void,
) -> abi::Status {
    // SAFETY: ctx comes from `call`.
    let state = unsafe { state(ctx) };
    state_call(state, |state| {
        // SAFETY: the plugin passes a partition valid for the call (or NULL, refused).
        let (tp, store) = unsafe { state_target(partition, store) }?;
        let mut each = |key: &[u8], value: &[u8]| {
            // SAFETY: the plugin's visitor and its context, per the ABI; the entry is borrowed
            // for the visit only. The Rust SDK's visitors catch their own panics.
            unsafe { visit(visit_ctx, Bytes::new(key), Bytes::new(value)) == 0 }
        };
        state
            .collector
            .state_scan(tp, store, prefix.as_slice(), &mut each)?;
        Ok(abi::STATUS_OK)
    })
}

/// Why a config does not pass a plugin's `config_schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigProblem {
    /// The schema itself is not a valid JSON schema (the plugin's fault).
    BadSchema(String),
    /// The config breaks the schema at `field` (`.a.b`, empty for the whole config).
    Invalid {
        /// Where, as `.a.b`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Checks `config` against a plugin's JSON schema: what the host does before `open`, and the
/// test harness too.
pub fn check_config(schema: &str, config: &serde_json::Value) -> Result<(), ConfigProblem> {
    let schema: serde_json::Value =
        serde_json::from_str(schema).map_err(|e| ConfigProblem::BadSchema(e.to_string()))?;
    let validator =
        jsonschema::validator_for(&schema).map_err(|e| ConfigProblem::BadSchema(e.to_string()))?;
    match validator.iter_errors(config).next() {
        None => Ok(()),
        Some(error) => Err(ConfigProblem::Invalid {
            field: error
                .instance_path()
                .to_string()
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| format!(".{s}"))
                .collect(),
            message: error.to_string(),
        }),
    }
}
