//! The Rust SDK for plugin authors: implement [`Pipeline`], call [`export_plugin!`](crate::export_plugin).
//!
//! The SDK owns the plugin side of the C ABI: the generic `extern "C"` shims in [`shims`] turn
//! each call into a method call on the author's type, run it under `catch_unwind`, and report
//! errors and panics to the host as messages. Nothing allocated on one side is freed on the other.

use std::ffi::c_void;
use std::fmt;

use serde::de::DeserializeOwned;

use crate::abi::{self, Event, Host, OpenContext, Partition, Record, Str};

/// A fatal error: the call fails and the host stops (or restarts) the pipeline.
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error {
            message: message.to_string(),
        }
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Any standard error converts into a fatal [`Error`] (so `?` works), keeping its source chain.
impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Error { message }
    }
}

/// Why one event failed. The host applies the pipeline's error policy to that event alone,
/// except for [`EventError::Fatal`], which fails the whole call.
///
/// What `?` makes of an error in [`Pipeline::process_event`]:
///
/// | error | becomes | error-policy class |
/// |---|---|---|
/// | [`serde_json::Error`] | [`EventError::Invalid`] ("payload is not valid JSON for this plugin") | `invalid-input` |
/// | [`EmitError`] (an output the spec lacks, a malformed record) | [`EventError::Fatal`] | none: the call fails |
/// | [`Error`] | [`EventError::Fatal`] | none: the call fails |
/// | any other `std::error::Error` | only via [`Error`] (`.map_err(Error::from)?`): fatal | none |
///
/// `serde_json::Error` is meant for decoding the payload; a failure to *serialize* your own
/// output through `?` would blame the payload. Say what you mean instead:
/// `serde_json::to_vec(&doc).map_err(EventError::failed)?` (retryable, per event) or
/// `.map_err(Error::from)?` (fatal).
#[derive(Debug)]
pub enum EventError {
    /// The event could not be decoded or is invalid; retrying cannot help.
    Invalid(String),
    /// Processing the event failed; a retry may succeed.
    Failed(String),
    /// Stop the batch: something is wrong beyond this event.
    Fatal(Error),
}

impl EventError {
    /// An undecodable or invalid event.
    pub fn invalid(message: impl fmt::Display) -> Self {
        EventError::Invalid(message.to_string())
    }
    /// A failed event that a retry may fix.
    pub fn failed(message: impl fmt::Display) -> Self {
        EventError::Failed(message.to_string())
    }
}

/// A payload that is not the JSON the plugin expects is invalid input.
impl From<serde_json::Error> for EventError {
    fn from(err: serde_json::Error) -> Self {
        EventError::Invalid(format!("payload is not valid JSON for this plugin: {err}"))
    }
}

impl From<Error> for EventError {
    fn from(err: Error) -> Self {
        EventError::Fatal(err)
    }
}

impl From<EmitError> for EventError {
    fn from(err: EmitError) -> Self {
        EventError::Fatal(Error::msg(err))
    }
}

/// The host refused a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitError {
    /// The pipeline spec defines no output with this name.
    UnknownOutput(String),
    /// The host rejected the record as malformed (status code attached).
    Rejected(i32),
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::UnknownOutput(name) => write!(
                f,
                "output `{name}` is not defined in the pipeline spec: add it under `outputs:` or fix the plugin config"
            ),
            EmitError::Rejected(code) => write!(f, "the host rejected the record (status {code})"),
        }
    }
}

impl std::error::Error for EmitError {}

/// Log levels for [`Output::log`] and [`Context::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something is odd.
    Warn,
    /// Normal operation.
    Info,
    /// Detail for debugging.
    Debug,
}

impl Level {
    fn code(self) -> u32 {
        match self {
            Level::Error => abi::LOG_ERROR,
            Level::Warn => abi::LOG_WARN,
            Level::Info => abi::LOG_INFO,
            Level::Debug => abi::LOG_DEBUG,
        }
    }
}

/// Where a plugin sends its records during a call.
#[derive(Debug)]
pub struct Output<'h> {
    pub(crate) host: &'h Host,
}

impl<'h> Output<'h> {
    /// Emits a record (see [`Record::to`]). The host copies it before this returns.
    pub fn emit(&mut self, record: Record<'_>) -> Result<(), EmitError> {
        // SAFETY: `host` is the valid host table for the current call; `record` lives across it.
        let status = unsafe { (self.host.emit)(self.host.ctx, &record) };
        match status {
            abi::STATUS_OK => Ok(()),
            abi::STATUS_UNKNOWN_OUTPUT => Err(EmitError::UnknownOutput(
                record.output_name().to_string_lossy(),
            )),
            other => Err(EmitError::Rejected(other)),
        }
    }

    /// Shorthand: emits `value` with `key` to `output`.
    pub fn send(
        &mut self,
        output: &str,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<(), EmitError> {
        self.emit(Record::to(output).value(value).key_opt(key))
    }

    /// Writes a line to the host's log.
    pub fn log(&self, level: Level, message: &str) {
        log(self.host, level, message);
    }
}

/// What the host tells an instance when it opens it.
#[derive(Debug)]
pub struct Context<'a> {
    raw: &'a OpenContext<'a>,
    host: &'a Host,
}

impl Context<'_> {
    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        self.raw.pipeline()
    }
    /// This instance's worker number, `0..worker_count`.
    pub fn worker_id(&self) -> u32 {
        self.raw.worker_id()
    }
    /// How many instances the pipeline runs.
    pub fn worker_count(&self) -> u32 {
        self.raw.worker_count()
    }
    /// Writes a line to the host's log.
    pub fn log(&self, level: Level, message: &str) {
        log(self.host, level, message);
    }
}

fn log(host: &Host, level: Level, message: &str) {
    // SAFETY: `host` is the valid host table for the current call.
    unsafe { (host.log)(host.ctx, level.code(), Str::new(message)) }
}

/// A config type for plugins that take none: accepts only an empty object.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// A pipeline plugin. One instance per worker; an instance is called from one thread at a time
/// but may move between threads.
pub trait Pipeline: Sized + Send + 'static {
    /// The config, deserialized from the spec's `plugin.config` (a JSON object, `{}` when absent).
    type Config: DeserializeOwned;

    /// One-line description shown by `sluice plugin inspect`.
    const DESCRIPTION: &'static str;

    /// JSON schema of [`Pipeline::Config`]; the host validates the config against it first.
    const CONFIG_SCHEMA: Option<&'static str> = None;

    /// The outputs this plugin emits to (`Out::emit`'s first argument). Declare them, and
    /// `sluice validate` refuses a spec that lacks one of them (instead of the first emit to it
    /// failing at run time), and [`crate::testing::Harness`] refuses an emit to any other name.
    /// `None`: the plugin does not say.
    const OUTPUTS: Option<&'static [&'static str]> = None;

    /// ABI 1.3: the state stores this plugin keeps state in, by default (a config may rename
    /// them). Declare them, and `sluice validate` refuses a spec without `state:` in one line
    /// naming them, instead of the first event failing. `None`: the plugin does not say.
    const STORES: Option<&'static [&'static str]> = None;

    /// Creates an instance.
    fn open(config: Self::Config, ctx: &Context<'_>) -> Result<Self, Error>;

    /// Processes one event. Return an [`EventError`] to hand this event to the error policy.
    fn process_event(&mut self, event: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError>;

    /// Processes a batch. The default calls [`Pipeline::process_event`] for each event in order
    /// and reports each failed event with [`report_event_error`].
    ///
    /// Override it to handle a batch at once; then report a failed event yourself with
    /// [`report_event_error`]`(out, index, err)` (its index in `events`): the host applies the
    /// error policy to that event alone. Returning `Err` fails the whole batch (no event of it
    /// is marked done). If the batch panics, the host reruns it one event at a time to find the
    /// event (see `plugin-panic` in the README): the events before it reach `process` twice.
    fn process(&mut self, events: &[Event<'_>], out: &mut Output<'_>) -> Result<(), Error> {
        for (index, event) in events.iter().enumerate() {
            if let Err(err) = self.process_event(event, out) {
                report_event_error(out, index, err)?;
            }
        }
        Ok(())
    }

    /// Partitions assigned to this instance.
    fn assigned(
        &mut self,
        _partitions: &[Partition<'_>],
        _out: &mut Output<'_>,
    ) -> Result<(), Error> {
        Ok(())
    }

    /// Partitions revoked from this instance: emit what is buffered for them.
    fn revoked(
        &mut self,
        _partitions: &[Partition<'_>],
        _out: &mut Output<'_>,
    ) -> Result<(), Error> {
        Ok(())
    }

    /// Called before the host commits offsets: emit everything buffered.
    fn flush(&mut self, _out: &mut Output<'_>) -> Result<(), Error> {
        Ok(())
    }

    /// ABI 1.3: the host committed `partition` up to `offset` (the next offset to read): every
    /// event before it was fully handled, its records delivered, and none of them is replayed
    /// after a crash. Called at a flush after the commit is confirmed (just before
    /// [`Pipeline::flush`]), once per partition whose committed offset moved, for the partitions
    /// this instance processed. State kept only to answer a replay (a closed window, a join made
    /// by an event at or after the committed offset) can be deleted here; see
    /// [`crate::window::StoredWindows::committed`]. A 1.2 host never calls it.
    fn committed(
        &mut self,
        _partition: &Partition<'_>,
        _offset: i64,
        _out: &mut Output<'_>,
    ) -> Result<(), Error> {
        Ok(())
    }

    /// Called once before the instance is dropped.
    fn close(self) -> Result<(), Error> {
        Ok(())
    }
}

/// Reports a per-event error to the host, for the event at `index` of the current batch; a fatal
/// one ([`EventError::Fatal`]) is returned instead, for the caller to fail the call with `?`.
/// For [`Pipeline::process`] overrides.
pub fn report_event_error(
    out: &mut Output<'_>,
    index: usize,
    err: EventError,
) -> Result<(), Error> {
    let (kind, message) = match err {
        EventError::Invalid(message) => (abi::EVENT_ERROR_INVALID_INPUT, message),
        EventError::Failed(message) => (abi::EVENT_ERROR_FAILED, message),
        EventError::Fatal(err) => return Err(err),
    };
    // SAFETY: `host` is the valid host table for the current call.
    unsafe { (out.host.event_error)(out.host.ctx, index, kind, Str::new(&message)) };
    Ok(())
}

/// The generic `extern "C"` entry points that [`export_plugin!`](crate::export_plugin) instantiates.
/// Every one runs the author's code under `catch_unwind`: a panic becomes [`abi::STATUS_PANIC`]
/// with its message, never an unwind across the boundary.
pub mod shims {
    use super::*;

    fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_owned()
        }
    }

    fn fail(host: &Host, message: &str) {
        // SAFETY: `host` is the valid host table for the current call.
        unsafe { (host.fail)(host.ctx, Str::new(message)) }
    }

    /// Runs `f`, mapping `Err` and panics to statuses and messages.
    fn guard(host: *const Host, f: impl FnOnce(&Host) -> Result<(), Error>) -> abi::Status {
        if host.is_null() {
            return abi::STATUS_ERROR;
        }
        // SAFETY: checked non-null; the host guarantees the table outlives the call.
        let host = unsafe { &*host };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(host))) {
            Ok(Ok(())) => abi::STATUS_OK,
            Ok(Err(err)) => {
                fail(host, err.message());
                abi::STATUS_ERROR
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                // Dropping a payload can panic too; keep that from unwinding out of here.
                let _ =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
                fail(host, &format!("plugin panicked: {message}"));
                abi::STATUS_PANIC
            }
        }
    }

    /// # Safety
    /// Called by the host per the C ABI: valid `context`, `host` and `instance` pointers.
    pub unsafe extern "C" fn open<P: Pipeline>(
        config_json: Str<'_>,
        context: *const OpenContext<'_>,
        host: *const Host,
        instance: *mut *mut c_void,
    ) -> abi::Status {
        guard(host, |host| {
            if context.is_null() || instance.is_null() {
                return Err(Error::msg(
                    "open called with a null context or instance pointer",
                ));
            }
            let text = config_json.to_str()?;
            let text = if text.trim().is_empty() { "{}" } else { text };
            let config: P::Config = serde_json::from_str(text)
                .map_err(|e| Error::msg(format!("invalid plugin config: {e}")))?;
            // SAFETY: checked non-null; valid for the call per the ABI.
            let raw = unsafe { &*context };
            let plugin = P::open(config, &Context { raw, host })?;
            // SAFETY: checked non-null; the host passes a writable slot.
            unsafe { *instance = Box::into_raw(Box::new(plugin)).cast() };
            Ok(())
        })
    }

    /// Borrows the instance behind the opaque pointer.
    ///
    /// # Safety
    /// `instance` is null or came from [`open`] for the same `P` and was not closed.
    unsafe fn instance<'a, P>(instance: *mut c_void) -> Result<&'a mut P, Error> {
        if instance.is_null() {
            return Err(Error::msg("called with a null instance"));
        }
        // SAFETY: per the contract above, a live `Box<P>` made by `open`.
        Ok(unsafe { &mut *instance.cast::<P>() })
    }

    /// # Safety
    /// Called by the host per the C ABI.
    pub unsafe extern "C" fn process<P: Pipeline>(
        instance: *mut c_void,
        events: abi::Slice<'_, Event<'_>>,
        host: *const Host,
    ) -> abi::Status {
        guard(host, |host| {
            // SAFETY: see `instance`.
            let plugin = unsafe { self::instance::<P>(instance) }?;
            plugin.process(events.as_slice(), &mut Output { host })
        })
    }

    /// # Safety
    /// Called by the host per the C ABI.
    pub unsafe extern "C" fn assigned<P: Pipeline>(
        instance: *mut c_void,
        partitions: abi::Slice<'_, Partition<'_>>,
        host: *const Host,
    ) -> abi::Status {
        guard(host, |host| {
            // SAFETY: see `instance`.
            let plugin = unsafe { self::instance::<P>(instance) }?;
            plugin.assigned(partitions.as_slice(), &mut Output { host })
        })
    }

    /// # Safety
    /// Called by the host per the C ABI.
    pub unsafe extern "C" fn revoked<P: Pipeline>(
        instance: *mut c_void,
        partitions: abi::Slice<'_, Partition<'_>>,
        host: *const Host,
    ) -> abi::Status {
        guard(host, |host| {
            // SAFETY: see `instance`.
            let plugin = unsafe { self::instance::<P>(instance) }?;
            plugin.revoked(partitions.as_slice(), &mut Output { host })
        })
    }

    /// # Safety
    /// Called by the host per the C ABI: `offsets` holds as many offsets as `partitions`.
    pub unsafe extern "C" fn committed<P: Pipeline>(
        instance: *mut c_void,
        partitions: abi::Slice<'_, Partition<'_>>,
        offsets: *const i64,
        host: *const Host,
    ) -> abi::Status {
        guard(host, |host| {
            // SAFETY: see `instance`.
            let plugin = unsafe { self::instance::<P>(instance) }?;
            let partitions = partitions.as_slice();
            if partitions.is_empty() {
                return Ok(());
            }
            if offsets.is_null() {
                return Err(Error::msg("committed: NULL offsets"));
            }
            // SAFETY: per the ABI, one offset per partition, borrowed for the call.
            let offsets = unsafe { std::slice::from_raw_parts(offsets, partitions.len()) };
            let mut out = Output { host };
            for (partition, offset) in partitions.iter().zip(offsets) {
                plugin.committed(partition, *offset, &mut out)?;
            }
            Ok(())
        })
    }

    /// # Safety
    /// Called by the host per the C ABI.
    pub unsafe extern "C" fn flush<P: Pipeline>(
        instance: *mut c_void,
        host: *const Host,
    ) -> abi::Status {
        guard(host, |host| {
            // SAFETY: see `instance`.
            let plugin = unsafe { self::instance::<P>(instance) }?;
            plugin.flush(&mut Output { host })
        })
    }

    /// # Safety
    /// Called by the host per the C ABI, exactly once per instance.
    pub unsafe extern "C" fn close<P: Pipeline>(
        instance: *mut c_void,
        host: *const Host,
    ) -> abi::Status {
        guard(host, |_| {
            if instance.is_null() {
                return Ok(());
            }
            // SAFETY: a live `Box<P>` from `open`, closed exactly once per the ABI.
            let plugin = unsafe { Box::from_raw(instance.cast::<P>()) };
            plugin.close()
        })
    }

    /// The entry table for `P`.
    pub const fn vtable<P: Pipeline>() -> abi::PluginVTable {
        abi::PluginVTable {
            size: std::mem::size_of::<abi::PluginVTable>(),
            open: Some(open::<P>),
            process: Some(process::<P>),
            assigned: Some(assigned::<P>),
            revoked: Some(revoked::<P>),
            flush: Some(flush::<P>),
            close: Some(close::<P>),
            output_name: match P::OUTPUTS {
                Some(_) => Some(output_name::<P>),
                None => None,
            },
            committed: Some(committed::<P>),
            store_name: match P::STORES {
                Some(_) => Some(store_name::<P>),
                None => None,
            },
        }
    }

    /// `output_name`: [`Pipeline::OUTPUTS`], one name per index, empty past the last.
    pub extern "C" fn output_name<P: Pipeline>(index: usize) -> Str<'static> {
        match P::OUTPUTS.and_then(|names| names.get(index)) {
            Some(name) => Str::new(name),
            None => Str::EMPTY,
        }
    }

    /// `store_name`: [`Pipeline::STORES`], one name per index, empty past the last.
    pub extern "C" fn store_name<P: Pipeline>(index: usize) -> Str<'static> {
        match P::STORES.and_then(|names| names.get(index)) {
            Some(name) => Str::new(name),
            None => Str::EMPTY,
        }
    }

    /// The descriptor for `P`, pointing at `vtable` (a `static` made by the export macro).
    pub const fn descriptor<P: Pipeline>(
        name: &'static str,
        version: &'static str,
        vtable: &'static abi::PluginVTable,
    ) -> abi::Descriptor {
        abi::Descriptor {
            abi_major: abi::ABI_MAJOR,
            abi_minor: abi::ABI_MINOR,
            name: Str::new(name),
            version: Str::new(version),
            description: Str::new(P::DESCRIPTION),
            config_schema: match P::CONFIG_SCHEMA {
                Some(schema) => Str::new(schema),
                None => Str::EMPTY,
            },
            vtable,
            layout: <abi::AbiTypes<'static> as abi_stable::StableAbi>::LAYOUT as *const _
                as *const c_void,
        }
    }
}

/// Exports a [`Pipeline`] as this library's plugin: defines `sluice_plugin_entry`. The plugin's
/// name and version are the crate's (`CARGO_PKG_NAME`, `CARGO_PKG_VERSION`).
///
/// ```
/// use sluice_plugin_api::{Context, Error, Event, EventError, NoConfig, Output, Pipeline, Record};
///
/// struct Echo;
///
/// impl Pipeline for Echo {
///     type Config = NoConfig;
///     const DESCRIPTION: &'static str = "Echoes every payload to `out`";
///
///     fn open(_config: NoConfig, _ctx: &Context<'_>) -> Result<Self, Error> {
///         Ok(Echo)
///     }
///
///     fn process_event(&mut self, event: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
///         out.emit(Record::to("out").value(event.payload()))?;
///         Ok(())
///     }
/// }
///
/// sluice_plugin_api::export_plugin!(Echo);
///
/// let descriptor = unsafe { &*sluice_plugin_entry() };
/// assert_eq!(descriptor.abi_major, sluice_plugin_api::abi::ABI_MAJOR);
/// assert_eq!(descriptor.description.to_str(), Ok("Echoes every payload to `out`"));
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($pipeline:ty) => {
        static __SLUICE_VTABLE: $crate::abi::PluginVTable =
            $crate::sdk::shims::vtable::<$pipeline>();
        static __SLUICE_DESCRIPTOR: $crate::abi::Descriptor =
            $crate::sdk::shims::descriptor::<$pipeline>(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                &__SLUICE_VTABLE,
            );

        /// The plugin entry point (see `sluice_plugin.h`).
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_plugin_entry() -> *const $crate::abi::Descriptor {
            &__SLUICE_DESCRIPTOR
        }
    };
}
