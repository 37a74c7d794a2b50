//! The C ABI itself: every `repr(C)` type and function table that crosses the boundary between
//! the Sluice host and a plugin library, mirrored field for field by `include/sluice_plugin.h`.
//!
//! Two kinds of types live here:
//! - **frozen data types** ([`Str`], [`Slice`], [`Header`], [`Event`], [`Record`], [`Partition`],
//!   [`OpenContext`]): fixed for a whole ABI major version. Rust plugins export their abi_stable
//!   layout ([`AbiTypes`]) and the host compares it field by field before it calls anything.
//! - **growable tables** ([`PluginVTable`], [`Host`]): led by their `size`, they only ever grow
//!   at the end within a major version, so either side can tell which entries the other has.
//!
//! Every pointer+length pair tolerates `{NULL, 0}` (a C caller's empty slice): accessors return an
//! empty slice and never build a Rust slice from a null pointer.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::str::Utf8Error;

use abi_stable::StableAbi;

/// ABI major version. Plugins built for another major version are refused.
pub const ABI_MAJOR: u32 = 1;
/// ABI minor version. Grows when entries are appended to a table; either side may be newer.
pub const ABI_MINOR: u32 = 3;
/// The symbol every plugin library exports: `const sluice_plugin_descriptor *sluice_plugin_entry(void)`.
pub const ENTRY_SYMBOL: &str = "sluice_plugin_entry";

/// Result of every plugin call and of the host's `emit` callback.
pub type Status = i32;
/// The call succeeded.
pub const STATUS_OK: Status = 0;
/// The call failed; the message was passed to [`Host::fail`] before returning.
pub const STATUS_ERROR: Status = 1;
/// The call panicked; the SDK caught it and passed the panic message to [`Host::fail`].
pub const STATUS_PANIC: Status = 2;
/// `emit` only: the record names an output the pipeline spec does not define.
pub const STATUS_UNKNOWN_OUTPUT: Status = 3;
/// `emit` only: the record is malformed (null pointer, output name not UTF-8, ...).
pub const STATUS_INVALID_RECORD: Status = 4;
/// `state_get` only: the store has no value for the key.
pub const STATUS_NOT_FOUND: Status = 5;
/// A state call the host refused (undeclared store, partition not assigned, storage error): the
/// plugin call fails whatever it returns.
pub const STATUS_STATE_REFUSED: Status = 6;

/// [`Event`] / [`Record`] flag: the key is absent (Kafka null key), not merely empty.
pub const FLAG_KEY_NULL: u32 = 1;
/// [`Event`] / [`Record`] flag: the value is absent (a Kafka tombstone), not merely empty.
pub const FLAG_VALUE_NULL: u32 = 2;

/// [`Record::partition`] value that lets the sink choose the partition.
pub const PARTITION_ANY: i32 = -1;

/// Header the host adds to an event whose value it decoded from a schema-registry format
/// (`source.kafka.format: avro | protobuf | json-schema`): the schema id, in ASCII decimal.
/// Headers named `sluice.schema-id` and `sluice.raw-value` are not written to outputs.
pub const SCHEMA_ID_HEADER: &str = "sluice.schema-id";
/// Header holding the value's bytes as they were read (the Confluent wire format), beside the
/// decoded JSON payload. See [`SCHEMA_ID_HEADER`].
pub const RAW_VALUE_HEADER: &str = "sluice.raw-value";

/// Per-event error kind: the input could not be decoded or is invalid; retrying cannot help.
pub const EVENT_ERROR_INVALID_INPUT: u32 = 1;
/// Per-event error kind: processing this event failed; a retry may succeed.
pub const EVENT_ERROR_FAILED: u32 = 2;

/// Log levels for [`Host::log`].
pub const LOG_ERROR: u32 = 1;
/// Warning.
pub const LOG_WARN: u32 = 2;
/// Information.
pub const LOG_INFO: u32 = 3;
/// Debugging detail.
pub const LOG_DEBUG: u32 = 4;

/// A borrowed slice: `{ const T *ptr; size_t len; }`. `ptr` may be null when `len` is 0.
#[repr(C)]
#[derive(StableAbi)]
pub struct Slice<'a, T> {
    ptr: *const T,
    len: usize,
    _borrow: PhantomData<&'a T>,
}

impl<T> Clone for Slice<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Slice<'_, T> {}

impl<'a, T> Slice<'a, T> {
    /// The empty slice, `{NULL, 0}`.
    pub const EMPTY: Self = Slice {
        ptr: std::ptr::null(),
        len: 0,
        _borrow: PhantomData,
    };

    /// Borrows a Rust slice.
    pub const fn new(items: &'a [T]) -> Self {
        Slice {
            ptr: items.as_ptr(),
            len: items.len(),
            _borrow: PhantomData,
        }
    }

    /// The items, empty for `{NULL, 0}`.
    pub fn as_slice(&self) -> &'a [T] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: a non-null `Slice` is only built from a Rust slice borrowed for `'a` (`new`) or
        // received from the other side of the ABI, whose contract is `len` valid items at `ptr`
        // for the duration of the call, which `'a` cannot outlive.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Number of items.
    pub const fn len(&self) -> usize {
        if self.ptr.is_null() { 0 } else { self.len }
    }

    /// True when there are no items.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Slice<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Borrowed bytes: `sluice_bytes { const uint8_t *ptr; size_t len; }`.
pub type Bytes<'a> = Slice<'a, u8>;

/// A borrowed string: `sluice_str { const char *ptr; size_t len; }`, not NUL-terminated. The host
/// always passes UTF-8; strings from a plugin are checked by the host.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct Str<'a> {
    bytes: Bytes<'a>,
}

impl<'a> Str<'a> {
    /// The empty string, `{NULL, 0}`.
    pub const EMPTY: Self = Str {
        bytes: Slice::EMPTY,
    };

    /// Borrows a Rust string.
    pub const fn new(s: &'a str) -> Self {
        Str {
            bytes: Slice::new(s.as_bytes()),
        }
    }

    /// The raw bytes (no UTF-8 check).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes.as_slice()
    }

    /// The string, checked for UTF-8.
    pub fn to_str(&self) -> Result<&'a str, Utf8Error> {
        std::str::from_utf8(self.as_bytes())
    }

    /// The string, with invalid UTF-8 replaced (for messages and logs).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

impl std::fmt::Debug for Str<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

/// A Kafka-style header: `sluice_header`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Header<'a> {
    key: Str<'a>,
    value: Bytes<'a>,
}

impl<'a> Header<'a> {
    /// A header borrowing its key and value.
    pub const fn new(key: &'a str, value: &'a [u8]) -> Self {
        Header {
            key: Str::new(key),
            value: Slice::new(value),
        }
    }
    /// The header's key (lossy for non-UTF-8 keys from C plugins: see [`Str::to_str`]).
    pub fn key(&self) -> &'a str {
        self.key.to_str().unwrap_or("")
    }
    /// The raw key.
    pub fn raw_key(&self) -> Str<'a> {
        self.key
    }
    /// The header's value.
    pub fn value(&self) -> &'a [u8] {
        self.value.as_slice()
    }
}

/// One input event, borrowed from the host for the duration of a call: `sluice_event`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Event<'a> {
    topic: Str<'a>,
    partition: i32,
    flags: u32,
    offset: i64,
    timestamp_ms: i64,
    key: Bytes<'a>,
    payload: Bytes<'a>,
    headers: Slice<'a, Header<'a>>,
    #[cfg(feature = "abi-test-changed-layout")]
    priority: u32,
}

impl<'a> Event<'a> {
    /// An event with no key, an empty payload and no headers.
    pub const fn new(topic: &'a str, partition: i32, offset: i64) -> Self {
        Event {
            topic: Str::new(topic),
            partition,
            flags: FLAG_KEY_NULL,
            offset,
            timestamp_ms: -1,
            key: Slice::EMPTY,
            payload: Slice::EMPTY,
            headers: Slice::EMPTY,
            #[cfg(feature = "abi-test-changed-layout")]
            priority: 0,
        }
    }
    /// Sets the key.
    pub const fn with_key(mut self, key: &'a [u8]) -> Self {
        self.key = Slice::new(key);
        self.flags &= !FLAG_KEY_NULL;
        self
    }
    /// Sets the payload.
    pub const fn with_payload(mut self, payload: &'a [u8]) -> Self {
        self.payload = Slice::new(payload);
        self.flags &= !FLAG_VALUE_NULL;
        self
    }
    /// Marks the payload as null (a tombstone).
    pub const fn with_null_payload(mut self) -> Self {
        self.payload = Slice::EMPTY;
        self.flags |= FLAG_VALUE_NULL;
        self
    }
    /// Sets the timestamp, milliseconds since the Unix epoch.
    pub const fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }
    /// Sets the headers.
    pub const fn with_headers(mut self, headers: &'a [Header<'a>]) -> Self {
        self.headers = Slice::new(headers);
        self
    }

    /// Source topic.
    pub fn topic(&self) -> &'a str {
        self.topic.to_str().unwrap_or("")
    }
    /// Source partition.
    pub const fn partition(&self) -> i32 {
        self.partition
    }
    /// Offset within the partition.
    pub const fn offset(&self) -> i64 {
        self.offset
    }
    /// Event time in milliseconds since the Unix epoch, `None` when the source has none.
    pub const fn timestamp_ms(&self) -> Option<i64> {
        if self.timestamp_ms < 0 {
            None
        } else {
            Some(self.timestamp_ms)
        }
    }
    /// The key, `None` for a null key.
    pub fn key(&self) -> Option<&'a [u8]> {
        if self.flags & FLAG_KEY_NULL != 0 {
            None
        } else {
            Some(self.key.as_slice())
        }
    }
    /// The payload (empty for a tombstone: see [`Event::is_tombstone`]).
    pub fn payload(&self) -> &'a [u8] {
        self.payload.as_slice()
    }
    /// True when the payload is null (a Kafka tombstone).
    pub const fn is_tombstone(&self) -> bool {
        self.flags & FLAG_VALUE_NULL != 0
    }
    /// The headers.
    pub fn headers(&self) -> &'a [Header<'a>] {
        self.headers.as_slice()
    }
    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&'a [u8]> {
        self.headers()
            .iter()
            .find(|h| h.key() == key)
            .map(|h| h.value())
    }
    /// The registry schema id the value was decoded with (`source.kafka.format: avro`,
    /// `protobuf`, `json-schema`); `None` for raw values.
    pub fn schema_id(&self) -> Option<u32> {
        std::str::from_utf8(self.header(SCHEMA_ID_HEADER)?)
            .ok()?
            .parse()
            .ok()
    }
    /// The value as it was read, before decoding (the Confluent wire format); `None` for raw
    /// values, whose [`Event::payload`] is already that.
    pub fn raw_value(&self) -> Option<&'a [u8]> {
        self.header(RAW_VALUE_HEADER)
    }
}

/// One output record, emitted by the plugin through [`Host::emit`]: `sluice_record`. The host copies
/// what it needs before `emit` returns, so the record may borrow the plugin's stack.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Record<'a> {
    output: Str<'a>,
    key: Bytes<'a>,
    value: Bytes<'a>,
    headers: Slice<'a, Header<'a>>,
    partition: i32,
    flags: u32,
}

impl<'a> Record<'a> {
    /// A record for the named output, with no key, an empty value, no headers, any partition.
    pub const fn to(output: &'a str) -> Self {
        Record {
            output: Str::new(output),
            key: Slice::EMPTY,
            value: Slice::EMPTY,
            headers: Slice::EMPTY,
            partition: PARTITION_ANY,
            flags: FLAG_KEY_NULL,
        }
    }
    /// Sets the key.
    pub const fn key(mut self, key: &'a [u8]) -> Self {
        self.key = Slice::new(key);
        self.flags &= !FLAG_KEY_NULL;
        self
    }
    /// Sets the key, or leaves it null for `None` (e.g. `.key_opt(event.key())` keeps an
    /// event's key, null or not).
    pub const fn key_opt(self, key: Option<&'a [u8]>) -> Self {
        match key {
            Some(key) => self.key(key),
            None => self,
        }
    }
    /// Sets the value.
    pub const fn value(mut self, value: &'a [u8]) -> Self {
        self.value = Slice::new(value);
        self.flags &= !FLAG_VALUE_NULL;
        self
    }
    /// Makes this record a tombstone (null value): a delete for keyed sinks.
    pub const fn tombstone(mut self) -> Self {
        self.value = Slice::EMPTY;
        self.flags |= FLAG_VALUE_NULL;
        self
    }
    /// Sets the headers.
    pub const fn headers(mut self, headers: &'a [Header<'a>]) -> Self {
        self.headers = Slice::new(headers);
        self
    }
    /// Pins the record to a partition of the output (Kafka outputs only).
    pub const fn partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// The output name as passed (the host checks it is UTF-8).
    pub fn output_name(&self) -> Str<'a> {
        self.output
    }
    /// The key, `None` for a null key.
    pub fn key_bytes(&self) -> Option<&'a [u8]> {
        if self.flags & FLAG_KEY_NULL != 0 {
            None
        } else {
            Some(self.key.as_slice())
        }
    }
    /// The value, `None` for a tombstone.
    pub fn value_bytes(&self) -> Option<&'a [u8]> {
        if self.flags & FLAG_VALUE_NULL != 0 {
            None
        } else {
            Some(self.value.as_slice())
        }
    }
    /// The headers.
    pub fn header_list(&self) -> &'a [Header<'a>] {
        self.headers.as_slice()
    }
    /// The requested partition, `None` when the sink chooses.
    pub const fn partition_hint(&self) -> Option<i32> {
        if self.partition < 0 {
            None
        } else {
            Some(self.partition)
        }
    }
}

/// One topic partition, for the assigned and revoked hooks: `sluice_partition`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Partition<'a> {
    topic: Str<'a>,
    partition: i32,
}

impl<'a> Partition<'a> {
    /// A topic partition.
    pub const fn new(topic: &'a str, partition: i32) -> Self {
        Partition {
            topic: Str::new(topic),
            partition,
        }
    }
    /// The topic.
    pub fn topic(&self) -> &'a str {
        self.topic.to_str().unwrap_or("")
    }
    /// The partition number.
    pub const fn partition(&self) -> i32 {
        self.partition
    }
    /// The raw topic (no UTF-8 check).
    pub fn raw_topic(&self) -> Str<'a> {
        self.topic
    }
}

/// What the host tells a plugin instance when it opens it: `sluice_open_context`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct OpenContext<'a> {
    pipeline: Str<'a>,
    worker_id: u32,
    worker_count: u32,
}

impl<'a> OpenContext<'a> {
    /// A context for worker `worker_id` of `worker_count` in the named pipeline.
    pub const fn new(pipeline: &'a str, worker_id: u32, worker_count: u32) -> Self {
        OpenContext {
            pipeline: Str::new(pipeline),
            worker_id,
            worker_count,
        }
    }
    /// The pipeline's name from its spec.
    pub fn pipeline(&self) -> &'a str {
        self.pipeline.to_str().unwrap_or("")
    }
    /// This instance's worker, `0..worker_count`.
    pub const fn worker_id(&self) -> u32 {
        self.worker_id
    }
    /// How many workers (and so plugin instances) the pipeline runs.
    pub const fn worker_count(&self) -> u32 {
        self.worker_count
    }
}

/// The frozen data types of this ABI major version, gathered in one root so a single abi_stable
/// layout check covers them all. Rust plugins export `<AbiTypes as StableAbi>::LAYOUT`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct AbiTypes<'a> {
    /// [`Event`].
    pub event: Event<'a>,
    /// [`Header`].
    pub header: Header<'a>,
    /// [`Record`].
    pub record: Record<'a>,
    /// [`Partition`].
    pub partition: Partition<'a>,
    /// [`OpenContext`].
    pub open_context: OpenContext<'a>,
}

/// The host's callbacks, passed to every plugin call: `sluice_host`. Growable: entries are only
/// appended, and a plugin must check `size` before it uses an entry added after ABI 1.0.
#[repr(C)]
#[derive(Debug)]
pub struct Host {
    /// `sizeof(sluice_host)` as the host was built.
    pub size: usize,
    /// Opaque host state for this call; pass it back to every callback.
    pub ctx: *mut c_void,
    /// Emits one record. Returns [`STATUS_OK`], [`STATUS_UNKNOWN_OUTPUT`] or
    /// [`STATUS_INVALID_RECORD`]; the plugin should fail the call on anything but OK.
    pub emit: unsafe extern "C" fn(ctx: *mut c_void, record: *const Record<'_>) -> Status,
    /// Reports that the event at `index` of the current `process` batch failed, with an
    /// `EVENT_ERROR_*` kind. The host applies its error policy to that event alone.
    pub event_error:
        unsafe extern "C" fn(ctx: *mut c_void, index: usize, kind: u32, message: Str<'_>),
    /// Sets the message of a failing call; call it before returning [`STATUS_ERROR`].
    pub fail: unsafe extern "C" fn(ctx: *mut c_void, message: Str<'_>),
    /// Writes a line to the host's log at a `LOG_*` level.
    pub log: unsafe extern "C" fn(ctx: *mut c_void, level: u32, message: Str<'_>),
    /// ABI 1.2: reads `key` of `store` for `partition`. [`STATUS_OK`] with `*value` borrowing the
    /// host's copy until the next host call or the call's end, [`STATUS_NOT_FOUND`], or
    /// [`STATUS_STATE_REFUSED`].
    pub state_get: StateGetFn,
    /// ABI 1.2: writes `key` of `store` for `partition` (locally and to its changelog).
    pub state_put: StatePutFn,
    /// ABI 1.2: deletes `key` of `store` for `partition` (a tombstone in its changelog).
    pub state_delete: StateDeleteFn,
    /// ABI 1.2: visits the entries of `store` for `partition` whose key starts with `prefix`, in
    /// key order, until `visit` returns non-zero. `visit` must not call the host.
    pub state_scan: StateScanFn,
}

/// `sizeof(sluice_host)` of an ABI 1.2 host: the state calls exist when `Host::size` is at least
/// this.
pub const HOST_SIZE_1_2: usize = std::mem::size_of::<Host>();

/// [`Host::state_get`].
pub type StateGetFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    partition: *const Partition<'_>,
    store: Str<'_>,
    key: Bytes<'_>,
    value: *mut Bytes<'_>,
) -> Status;
/// [`Host::state_put`].
pub type StatePutFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    partition: *const Partition<'_>,
    store: Str<'_>,
    key: Bytes<'_>,
    value: Bytes<'_>,
) -> Status;
/// [`Host::state_delete`].
pub type StateDeleteFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    partition: *const Partition<'_>,
    store: Str<'_>,
    key: Bytes<'_>,
) -> Status;
/// The visitor [`Host::state_scan`] calls per entry: non-zero stops the scan.
pub type StateVisitFn =
    unsafe extern "C" fn(visit_ctx: *mut c_void, key: Bytes<'_>, value: Bytes<'_>) -> i32;
/// [`Host::state_scan`].
pub type StateScanFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    partition: *const Partition<'_>,
    store: Str<'_>,
    prefix: Bytes<'_>,
    visit: StateVisitFn,
    visit_ctx: *mut c_void,
) -> Status;

/// `open`: creates an instance from its JSON config (always a JSON object) and stores it in
/// `*instance`.
pub type OpenFn = unsafe extern "C" fn(
    config_json: Str<'_>,
    context: *const OpenContext<'_>,
    host: *const Host,
    instance: *mut *mut c_void,
) -> Status;
/// `process`: processes a batch of events, emitting records and per-event errors through `host`.
pub type ProcessFn = unsafe extern "C" fn(
    instance: *mut c_void,
    events: Slice<'_, Event<'_>>,
    host: *const Host,
) -> Status;
/// `assigned` and `revoked`: partitions given to or taken from an instance.
pub type PartitionsFn = unsafe extern "C" fn(
    instance: *mut c_void,
    partitions: Slice<'_, Partition<'_>>,
    host: *const Host,
) -> Status;
/// `flush` and `close`.
pub type InstanceFn = unsafe extern "C" fn(instance: *mut c_void, host: *const Host) -> Status;
/// `output_name` (ABI 1.1): the name of the plugin's `index`-th output, an empty string past the
/// last one.
pub type OutputNameFn = unsafe extern "C" fn(index: usize) -> Str<'static>;

/// `committed` (ABI 1.3): for each of `partitions`, `offsets` (as many, in the same order) holds
/// its committed offset: the next offset to read, so every event before it was fully handled,
/// its records delivered, its state writes in the changelog and the offset committed to the
/// group. A record emitted on behalf of an event before it is never emitted again, even after a
/// crash (at-least-once replays start there).
pub type CommittedFn = unsafe extern "C" fn(
    instance: *mut c_void,
    partitions: Slice<'_, Partition<'_>>,
    offsets: *const i64,
    host: *const Host,
) -> Status;

/// The plugin's entry points: `sluice_plugin_vtable`. Growable: entries are only appended, and
/// the host checks `size` before it calls an entry added after ABI 1.0.
///
/// `open`, `process` and `close` are required: a library whose table has NULL in one of them is
/// refused at load, naming the entry. `assigned`, `revoked` and `flush` are optional: NULL means
/// the plugin has nothing to do then (the host treats the call as done). `output_name` (1.1) is
/// optional: NULL means the plugin does not say which outputs it emits to. `committed` (1.3) is
/// optional: NULL means the plugin does not need to know.
#[repr(C)]
#[derive(Debug)]
pub struct PluginVTable {
    /// `sizeof(sluice_plugin_vtable)` as the plugin was built.
    pub size: usize,
    /// Required: creates an instance from its JSON config and stores it in `*instance`.
    pub open: Option<OpenFn>,
    /// Required: processes a batch of events, emitting records and per-event errors through `host`.
    pub process: Option<ProcessFn>,
    /// Optional: partitions newly assigned to this instance.
    pub assigned: Option<PartitionsFn>,
    /// Optional: partitions taken away from this instance; emit what is buffered for them.
    pub revoked: Option<PartitionsFn>,
    /// Optional: called before the host commits offsets: emit or persist everything buffered.
    pub flush: Option<InstanceFn>,
    /// Required: frees the instance. Called exactly once; the instance is gone even when it fails.
    pub close: Option<InstanceFn>,
    /// ABI 1.1, optional: the outputs the plugin emits to, one name per index (an empty string
    /// past the last). `sluice validate` compares them with the spec's `outputs:`. Read only when
    /// `size` covers it.
    pub output_name: Option<OutputNameFn>,
    /// ABI 1.3, optional: what the host committed of the partitions this instance processed,
    /// told after the commit is confirmed (at the instance's next flush; see [`CommittedFn`]).
    /// State kept only until its event's records are delivered (a closed window, a join) can go
    /// then. Read only when `size` covers it.
    pub committed: Option<CommittedFn>,
    /// ABI 1.3, optional: the state stores the plugin keeps state in by default, one name per
    /// index (an empty string past the last; see [`OutputNameFn`]). `sluice validate` refuses a
    /// spec without `state:` for a plugin that names any. Read only when `size` covers it.
    pub store_name: Option<OutputNameFn>,
}

/// What `sluice_plugin_entry` returns: `sluice_plugin_descriptor`. Its first two fields are
/// stable across all major versions so any host can read a plugin's ABI version.
#[repr(C)]
#[derive(Debug)]
pub struct Descriptor {
    /// The ABI major version the plugin was built against.
    pub abi_major: u32,
    /// The ABI minor version the plugin was built against.
    pub abi_minor: u32,
    /// Plugin name.
    pub name: Str<'static>,
    /// Plugin version (semver).
    pub version: Str<'static>,
    /// One-line description.
    pub description: Str<'static>,
    /// JSON schema of the plugin's config, empty when the plugin publishes none.
    pub config_schema: Str<'static>,
    /// The entry points.
    pub vtable: *const PluginVTable,
    /// Rust plugins: `&'static abi_stable::type_layout::TypeLayout` of [`AbiTypes`]; C plugins: NULL.
    pub layout: *const c_void,
}

// SAFETY: a descriptor is immutable static data in the plugin library; its pointers reference
// other immutable statics (string literals, the vtable, the type layout).
unsafe impl Sync for Descriptor {}
// SAFETY: as above; fn pointers are thread-safe by themselves.
unsafe impl Sync for PluginVTable {}

/// The C header must describe exactly these types: compile it with the system C compiler and
/// compare every size, alignment and field offset.
#[cfg(test)]
mod header_matches_rust {
    use std::mem::{align_of, offset_of, size_of};

    use super::*;

    struct Layout {
        c_type: &'static str,
        size: usize,
        align: usize,
        fields: Vec<(&'static str, usize)>,
    }

    macro_rules! layout {
        ($c:literal, $t:ty, { $($cf:literal => $rf:ident),* $(,)? }) => {
            Layout {
                c_type: $c,
                size: size_of::<$t>(),
                align: align_of::<$t>(),
                fields: vec![$(($cf, offset_of!($t, $rf))),*],
            }
        };
    }

    #[test]
    #[cfg(not(feature = "abi-test-changed-layout"))]
    fn every_size_alignment_and_offset_matches() {
        let layouts = [
            layout!("sluice_bytes", Bytes<'static>, { "ptr" => ptr, "len" => len }),
            layout!("sluice_str", Str<'static>, { "ptr" => bytes }),
            layout!("sluice_header", Header<'static>, { "key" => key, "value" => value }),
            layout!("sluice_headers", Slice<'static, Header<'static>>, { "ptr" => ptr, "len" => len }),
            layout!("sluice_event", Event<'static>, {
                "topic" => topic, "partition" => partition, "flags" => flags, "offset" => offset,
                "timestamp_ms" => timestamp_ms, "key" => key, "payload" => payload, "headers" => headers,
            }),
            layout!("sluice_events", Slice<'static, Event<'static>>, { "ptr" => ptr, "len" => len }),
            layout!("sluice_record", Record<'static>, {
                "output" => output, "key" => key, "value" => value, "headers" => headers,
                "partition" => partition, "flags" => flags,
            }),
            layout!("sluice_partition", Partition<'static>, { "topic" => topic, "partition" => partition }),
            layout!("sluice_partitions", Slice<'static, Partition<'static>>, { "ptr" => ptr, "len" => len }),
            layout!("sluice_open_context", OpenContext<'static>, {
                "pipeline" => pipeline, "worker_id" => worker_id, "worker_count" => worker_count,
            }),
            layout!("sluice_host", Host, {
                "size" => size, "ctx" => ctx, "emit" => emit, "event_error" => event_error,
                "fail" => fail, "log" => log, "state_get" => state_get, "state_put" => state_put,
                "state_delete" => state_delete, "state_scan" => state_scan,
            }),
            layout!("sluice_plugin_vtable", PluginVTable, {
                "size" => size, "open" => open, "process" => process, "assigned" => assigned,
                "revoked" => revoked, "flush" => flush, "close" => close,
                "output_name" => output_name, "committed" => committed,
                "store_name" => store_name,
            }),
            layout!("sluice_plugin_descriptor", Descriptor, {
                "abi_major" => abi_major, "abi_minor" => abi_minor, "name" => name, "version" => version,
                "description" => description, "config_schema" => config_schema, "vtable" => vtable,
                "layout" => layout,
            }),
        ];
        let mut program = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include \"sluice_plugin.h\"\nint main(void) {\n",
        );
        let mut expected = String::new();
        for l in &layouts {
            program.push_str(&format!(
                "  printf(\"{0} %zu %zu\\n\", sizeof({0}), _Alignof({0}));\n",
                l.c_type
            ));
            expected.push_str(&format!("{} {} {}\n", l.c_type, l.size, l.align));
            for (field, offset) in &l.fields {
                program.push_str(&format!(
                    "  printf(\"{0}.{1} %zu\\n\", offsetof({0}, {1}));\n",
                    l.c_type, field
                ));
                expected.push_str(&format!("{}.{} {}\n", l.c_type, field, offset));
            }
        }
        let constants = [
            ("SLUICE_ABI_MAJOR", ABI_MAJOR as i64),
            ("SLUICE_ABI_MINOR", ABI_MINOR as i64),
            ("SLUICE_STATUS_OK", STATUS_OK as i64),
            ("SLUICE_STATUS_ERROR", STATUS_ERROR as i64),
            ("SLUICE_STATUS_PANIC", STATUS_PANIC as i64),
            ("SLUICE_STATUS_UNKNOWN_OUTPUT", STATUS_UNKNOWN_OUTPUT as i64),
            ("SLUICE_STATUS_INVALID_RECORD", STATUS_INVALID_RECORD as i64),
            ("SLUICE_STATUS_NOT_FOUND", STATUS_NOT_FOUND as i64),
            ("SLUICE_STATUS_STATE_REFUSED", STATUS_STATE_REFUSED as i64),
            ("SLUICE_HOST_SIZE_1_2", HOST_SIZE_1_2 as i64),
            ("SLUICE_FLAG_KEY_NULL", FLAG_KEY_NULL as i64),
            ("SLUICE_FLAG_VALUE_NULL", FLAG_VALUE_NULL as i64),
            ("SLUICE_PARTITION_ANY", PARTITION_ANY as i64),
            (
                "SLUICE_EVENT_ERROR_INVALID_INPUT",
                EVENT_ERROR_INVALID_INPUT as i64,
            ),
            ("SLUICE_EVENT_ERROR_FAILED", EVENT_ERROR_FAILED as i64),
            ("SLUICE_LOG_ERROR", LOG_ERROR as i64),
            ("SLUICE_LOG_WARN", LOG_WARN as i64),
            ("SLUICE_LOG_INFO", LOG_INFO as i64),
            ("SLUICE_LOG_DEBUG", LOG_DEBUG as i64),
        ];
        for (name, value) in constants {
            program.push_str(&format!(
                "  printf(\"{name} %lld\\n\", (long long)({name}));\n"
            ));
            expected.push_str(&format!("{name} {value}\n"));
        }
        program.push_str("  return 0;\n}\n");

        let dir = std::env::temp_dir().join(format!("sluice-header-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, exe) = (dir.join("check.c"), dir.join("check"));
        std::fs::write(&src, program).unwrap();
        let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = std::process::Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Werror", "-I", include, "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` (install gcc): {e}"));
        assert!(status.success(), "sluice_plugin.h does not compile");
        let output = std::process::Command::new(&exe).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let actual = String::from_utf8(output.stdout).unwrap();
        for (c, rust) in actual.lines().zip(expected.lines()) {
            assert_eq!(c, rust, "C header (left) and src/abi.rs (right) disagree");
        }
        assert_eq!(actual.lines().count(), expected.lines().count());
    }
}
