//! Keyed state for Rust plugins (ABI 1.2): [`Output::store`] opens one of the pipeline's named
//! stores (the spec's `state.stores`) for one input partition.
//!
//! The host keeps each store on local disk and writes every change to a compacted changelog
//! topic, one changelog partition per input partition, before it commits the offsets of the
//! events that made it. On assignment the store is restored before the partition's first event,
//! so a restart or a rebalance keeps it. The guarantee is at-least-once: after a crash, events
//! after the last commit are processed again against state that may already contain their
//! changes. A bare `n + 1` counts those events twice.
//!
//! ## Idempotent under replay: keep the offset with the state it guards
//!
//! Store, **in the same value as the state of each key**, the offset of the last event applied
//! to it ([`Event::offset`](crate::Event::offset)), and skip an event at or below it: one value
//! is one changelog record, so the state and its offset are restored together or not at all.
//! One offset per partition would not do: it would skip a replayed event of key B because key
//! A's later update landed, or, written as its own entry, land without the update it vouches
//! for. What to emit on a replay: the events after the last commit come again *in order*, so
//! the event at the key's last offset emits its record again (the original may have been lost in
//! the crash), and an event before it emits nothing (the later one emits the newer value). A
//! consumer that keeps the latest value per key sees every final value at least once, never a
//! wrong one.
//!
//! ```
//! # use sluice_plugin_api::{Event, EventError, Output, Record};
//! /// Per key: the running total and the offset of the last event in it.
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Total {
//!     sum: i64,
//!     offset: i64,
//! }
//!
//! fn add(event: &Event<'_>, amount: i64, out: &mut Output<'_>) -> Result<(), EventError> {
//!     let key = event.key().unwrap_or_default();
//!     let mut store = out.store("totals", event.topic(), event.partition());
//!     let mut total: Total = store.get_json(key)?.unwrap_or(Total { sum: 0, offset: -1 });
//!     if event.offset() < total.offset {
//!         return Ok(()); // a replay, and a later event of this key is replayed too
//!     }
//!     if event.offset() > total.offset {
//!         total.sum += amount; // first time: apply, with the offset, in one value
//!         total.offset = event.offset();
//!         store.put_json(key, &total)?;
//!     } // equal: a replay of the key's last event; its update is in, emit its record again
//!     let value = total.sum.to_string();
//!     out.emit(Record::to("totals").key(key).value(value.as_bytes()))?;
//!     Ok(())
//! }
//! ```
//!
//! Test it with [`crate::testing::Harness`]: `with_stores(&["totals"])` gives the instance its
//! stores, `state()` shows them, `restart()` drops the instance as a crash would (the stores
//! keep every write, as a restore from the changelog does), and processing the same events
//! again (`TestEvent::offset`) is the replay. State kept only to answer a replay (a closed
//! window, a join's record) can be deleted once the host says the event is committed:
//! [`Pipeline::committed`](crate::Pipeline::committed) (ABI 1.3).

use std::ffi::c_void;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::abi::{self, Bytes, Host, Partition, Str};
use crate::sdk::{Error, EventError, Output};

/// A state call failed. The host has already failed the plugin call, so return this error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError {
    message: String,
}

impl StateError {
    fn new(message: impl Into<String>) -> Self {
        StateError {
            message: message.into(),
        }
    }
    /// A stored value of `store` that does not decode.
    pub(crate) fn decode(store: &str, err: impl fmt::Display) -> Self {
        StateError::new(format!(
            "state store `{store}`: a stored value does not decode: {err}"
        ))
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StateError {}

impl From<StateError> for EventError {
    fn from(err: StateError) -> Self {
        EventError::Fatal(Error::msg(err))
    }
}

impl<'h> Output<'h> {
    /// The state store `name` of input partition `topic`/`partition`. Calls fail (and fail the
    /// plugin call) for a store the spec does not declare, a partition not assigned to the
    /// pipeline, or a host older than ABI 1.2.
    pub fn store<'s>(&'s mut self, name: &'s str, topic: &'s str, partition: i32) -> Store<'s> {
        Store {
            host: self.host,
            partition: Partition::new(topic, partition),
            name,
        }
    }
}

/// One named store of one input partition, borrowed from an [`Output`] for a call.
#[derive(Debug)]
pub struct Store<'s> {
    host: &'s Host,
    partition: Partition<'s>,
    name: &'s str,
}

impl Store<'_> {
    fn check(&self) -> Result<(), StateError> {
        if self.host.size < abi::HOST_SIZE_1_2 {
            return Err(StateError::new(format!(
                "state store `{}`: this host speaks an ABI older than 1.2 and has no state stores: run the plugin on a newer sluice",
                self.name
            )));
        }
        Ok(())
    }

    fn refused(&self, op: &str, status: abi::Status) -> StateError {
        StateError::new(format!(
            "state {op} on store `{}` of {}/{} refused by the host (status {status}); the host log says why",
            self.name,
            self.partition.topic(),
            self.partition.partition()
        ))
    }

    /// Reads `key` and hands its value to `f` without copying it; `None` when absent.
    pub fn get_with<R>(
        &mut self,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, StateError> {
        self.check()?;
        let mut value = Bytes::EMPTY;
        // SAFETY: a 1.2 host table (checked); everything passed lives across the call.
        let status = unsafe {
            (self.host.state_get)(
                self.host.ctx,
                &self.partition,
                Str::new(self.name),
                Bytes::new(key),
                &mut value,
            )
        };
        match status {
            abi::STATUS_OK => Ok(Some(f(value.as_slice()))),
            abi::STATUS_NOT_FOUND => Ok(None),
            other => Err(self.refused("get", other)),
        }
    }

    /// Reads `key`; `None` when absent.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.get_with(key, <[u8]>::to_vec)
    }

    /// Writes `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.check()?;
        // SAFETY: a 1.2 host table (checked); everything passed lives across the call.
        let status = unsafe {
            (self.host.state_put)(
                self.host.ctx,
                &self.partition,
                Str::new(self.name),
                Bytes::new(key),
                Bytes::new(value),
            )
        };
        match status {
            abi::STATUS_OK => Ok(()),
            other => Err(self.refused("put", other)),
        }
    }

    /// Deletes `key` (absent keys too).
    pub fn delete(&mut self, key: &[u8]) -> Result<(), StateError> {
        self.check()?;
        // SAFETY: a 1.2 host table (checked); everything passed lives across the call.
        let status = unsafe {
            (self.host.state_delete)(
                self.host.ctx,
                &self.partition,
                Str::new(self.name),
                Bytes::new(key),
            )
        };
        match status {
            abi::STATUS_OK => Ok(()),
            other => Err(self.refused("delete", other)),
        }
    }

    /// Calls `f` with every entry whose key starts with `prefix`, in key order, until it returns
    /// false. `f` must not use the store (the host is in the middle of the scan).
    pub fn scan(
        &mut self,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.check()?;
        struct Visit<'f> {
            f: &'f mut dyn FnMut(&[u8], &[u8]) -> bool,
            panic: Option<Box<dyn std::any::Any + Send>>,
        }
        unsafe extern "C" fn visit(ctx: *mut c_void, key: Bytes<'_>, value: Bytes<'_>) -> i32 {
            // SAFETY: `ctx` is the `Visit` below, alive for the whole scan.
            let visit = unsafe { &mut *ctx.cast::<Visit<'_>>() };
            match catch_unwind(AssertUnwindSafe(|| {
                (visit.f)(key.as_slice(), value.as_slice())
            })) {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(payload) => {
                    visit.panic = Some(payload);
                    1
                }
            }
        }
        let mut state = Visit {
            f: &mut f,
            panic: None,
        };
        // SAFETY: a 1.2 host table (checked); the visitor catches its own panics and `state`
        // outlives the call.
        let status = unsafe {
            (self.host.state_scan)(
                self.host.ctx,
                &self.partition,
                Str::new(self.name),
                Bytes::new(prefix),
                visit,
                (&raw mut state).cast(),
            )
        };
        if let Some(payload) = state.panic {
            // Back on the plugin's side of the ABI: the SDK's shim catches it.
            resume_unwind(payload);
        }
        match status {
            abi::STATUS_OK => Ok(()),
            other => Err(self.refused("scan", other)),
        }
    }

    /// Reads `key` as JSON; `None` when absent. A value that does not decode is an error.
    pub fn get_json<T: DeserializeOwned>(&mut self, key: &[u8]) -> Result<Option<T>, StateError> {
        let name = self.name;
        self.get_with(key, |bytes| serde_json::from_slice(bytes))?
            .transpose()
            .map_err(|e| StateError::decode(name, e))
    }

    /// Writes `key` as JSON.
    pub fn put_json<T: Serialize + ?Sized>(
        &mut self,
        key: &[u8],
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StateError::new(format!("state store `{}`: {e}", self.name)))?;
        self.put(key, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn no_emit(_: *mut c_void, _: *const crate::Record<'_>) -> abi::Status {
        abi::STATUS_OK
    }
    unsafe extern "C" fn no_error(_: *mut c_void, _: usize, _: u32, _: Str<'_>) {}
    unsafe extern "C" fn no_text(_: *mut c_void, _: Str<'_>) {}
    unsafe extern "C" fn no_log(_: *mut c_void, _: u32, _: Str<'_>) {}
    unsafe extern "C" fn get(
        _: *mut c_void,
        _: *const Partition<'_>,
        _: Str<'_>,
        _: Bytes<'_>,
        _: *mut Bytes<'_>,
    ) -> abi::Status {
        panic!("a 1.1 host has no state_get")
    }
    unsafe extern "C" fn put(
        _: *mut c_void,
        _: *const Partition<'_>,
        _: Str<'_>,
        _: Bytes<'_>,
        _: Bytes<'_>,
    ) -> abi::Status {
        panic!("a 1.1 host has no state_put")
    }
    unsafe extern "C" fn delete(
        _: *mut c_void,
        _: *const Partition<'_>,
        _: Str<'_>,
        _: Bytes<'_>,
    ) -> abi::Status {
        panic!("a 1.1 host has no state_delete")
    }
    unsafe extern "C" fn scan(
        _: *mut c_void,
        _: *const Partition<'_>,
        _: Str<'_>,
        _: Bytes<'_>,
        _: abi::StateVisitFn,
        _: *mut c_void,
    ) -> abi::Status {
        panic!("a 1.1 host has no state_scan")
    }

    #[test]
    fn a_host_older_than_1_2_is_never_called_for_state() {
        let host = Host {
            size: std::mem::offset_of!(Host, state_get),
            ctx: std::ptr::null_mut(),
            emit: no_emit,
            event_error: no_error,
            fail: no_text,
            log: no_log,
            state_get: get,
            state_put: put,
            state_delete: delete,
            state_scan: scan,
        };
        let mut out = Output { host: &host };
        let mut store = out.store("counts", "t", 0);
        for err in [
            store.get(b"k").unwrap_err(),
            store.put(b"k", b"v").unwrap_err(),
            store.delete(b"k").unwrap_err(),
            store.scan(b"", |_, _| true).unwrap_err(),
        ] {
            assert!(err.message().contains("older than 1.2"), "{err}");
        }
    }
}
