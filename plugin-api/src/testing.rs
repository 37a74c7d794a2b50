//! An in-process harness for plugin authors (`features = ["testing"]`): runs a [`Pipeline`]
//! through the same C entry points and panic guards the real host uses, without a host.
//!
//! ```
//! use sluice_plugin_api::testing::{Harness, TestEvent};
//! use sluice_plugin_api::{Context, Error, Event, EventError, NoConfig, Output, Pipeline, Record};
//!
//! struct Upper;
//! impl Pipeline for Upper {
//!     type Config = NoConfig;
//!     const DESCRIPTION: &'static str = "Upper-cases payloads";
//!     fn open(_: NoConfig, _: &Context<'_>) -> Result<Self, Error> {
//!         Ok(Upper)
//!     }
//!     fn process_event(&mut self, e: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
//!         out.emit(Record::to("out").value(&e.payload().to_ascii_uppercase()))?;
//!         Ok(())
//!     }
//! }
//!
//! // The outputs the spec defines: an emit to any other name fails the call, as in a run.
//! let mut h = Harness::<Upper>::open(serde_json::json!({}))
//!     .unwrap()
//!     .with_outputs(&["out"]);
//! let out = h.process(&[TestEvent::new("hi")]).unwrap();
//! assert_eq!(out.records[0].text(), "HI");
//! ```
//!
//! Like the host, the harness checks the config against [`Pipeline::CONFIG_SCHEMA`] before
//! `open`, and refuses emits to outputs the plugin or the test did not name:
//! [`Pipeline::OUTPUTS`] when the plugin declares them, else those given to
//! [`Harness::with_outputs`], else any name.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use crate::abi::{Event, Header, OpenContext, Partition, Record};
use crate::host::{
    CallError, Collector, ConfigProblem, EventErrorKind, Instance, PluginRef, Refusal,
};
use crate::sdk::{Pipeline, shims};

/// An input event owned by the test.
#[derive(Debug, Clone)]
pub struct TestEvent {
    /// Topic (default `test`).
    pub topic: String,
    /// Partition (default 0).
    pub partition: i32,
    /// Offset (default: one past the offset of the event this harness processed last, whatever
    /// its batch or partition; 0 for the first). Set it to replay events after
    /// [`Harness::restart`].
    pub offset: Option<i64>,
    /// Event time, ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Key (`None`: null key).
    pub key: Option<Vec<u8>>,
    /// Payload (`None`: tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl TestEvent {
    /// An event with this payload.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        TestEvent {
            topic: "test".into(),
            partition: 0,
            offset: None,
            timestamp_ms: None,
            key: None,
            payload: Some(payload.into()),
            headers: Vec::new(),
        }
    }
    /// An event whose payload is this JSON value.
    pub fn json(value: &serde_json::Value) -> Self {
        Self::new(value.to_string())
    }
    /// Sets the key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets topic and partition.
    pub fn at(mut self, topic: &str, partition: i32) -> Self {
        self.topic = topic.into();
        self.partition = partition;
        self
    }
    /// Sets the offset.
    pub fn offset(mut self, offset: i64) -> Self {
        self.offset = Some(offset);
        self
    }
    /// Sets the event time.
    pub fn timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }
    /// Adds a header.
    pub fn header(mut self, key: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }
}

/// A record the plugin emitted, copied out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// Output name.
    pub output: String,
    /// Key (`None`: null key).
    pub key: Option<Vec<u8>>,
    /// Value (`None`: tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Requested partition.
    pub partition: Option<i32>,
}

impl Emitted {
    /// The value as UTF-8 text (empty for a tombstone).
    pub fn text(&self) -> &str {
        std::str::from_utf8(self.value.as_deref().unwrap_or_default()).unwrap_or("<not utf-8>")
    }
    /// The value parsed as JSON (panics if it is not: this is for tests).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or_default())
            .expect("emitted value is not JSON")
    }
}

/// A per-event error the plugin reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Index of the event in the batch.
    pub index: usize,
    /// Kind.
    pub kind: EventErrorKind,
    /// Message.
    pub message: String,
}

/// What one call produced.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Emitted records, in order.
    pub records: Vec<Emitted>,
    /// Per-event errors.
    pub errors: Vec<Failure>,
    /// Log lines (level, message).
    pub logs: Vec<(u32, String)>,
}

impl Outcome {
    /// The records sent to `output`.
    pub fn to(&self, output: &str) -> Vec<&Emitted> {
        self.records.iter().filter(|r| r.output == output).collect()
    }
}

/// State stores in memory, as the host keeps them per input partition: (topic, partition,
/// store) -> key -> value.
pub type StateMap = BTreeMap<(String, i32, String), BTreeMap<Vec<u8>, Vec<u8>>>;

/// The stores a harness offers: declared names and their contents.
#[derive(Debug, Default, Clone)]
struct Stores {
    names: Vec<String>,
    data: StateMap,
}

/// An [`Outcome`] that refuses outputs outside `allowed` (when there is a list), with the
/// harness's state stores.
struct Checked<'a> {
    outcome: &'a mut Outcome,
    allowed: Option<&'a [String]>,
    stores: &'a mut Stores,
}

impl<'a> Checked<'a> {
    fn new(
        outcome: &'a mut Outcome,
        allowed: &'a Option<Vec<String>>,
        stores: &'a mut Stores,
    ) -> Self {
        Checked {
            outcome,
            allowed: allowed.as_deref(),
            stores,
        }
    }

    fn store(
        &mut self,
        (topic, partition): (&str, i32),
        store: &str,
    ) -> Result<&mut BTreeMap<Vec<u8>, Vec<u8>>, String> {
        if self.stores.names.is_empty() {
            return Err(crate::host::no_state(store));
        }
        if !self.stores.names.iter().any(|n| n == store) {
            return Err(format!(
                "the plugin used state store `{store}`, which the harness does not declare: add it to `with_stores`"
            ));
        }
        Ok(self
            .stores
            .data
            .entry((topic.to_owned(), partition, store.to_owned()))
            .or_default())
    }
}

impl Collector for Checked<'_> {
    fn emit(&mut self, output: &str, record: &Record<'_>) -> Result<(), Refusal> {
        match self.allowed {
            Some(names) if !names.iter().any(|n| n == output) => Err(Refusal::UnknownOutput),
            _ => self.outcome.emit(output, record),
        }
    }
    fn event_error(&mut self, index: usize, kind: EventErrorKind, message: &str) {
        self.outcome.event_error(index, kind, message);
    }
    fn log(&mut self, level: u32, message: &str) {
        self.outcome.log(level, message);
    }
    fn state_get(
        &mut self,
        partition: (&str, i32),
        store: &str,
        key: &[u8],
        value: &mut Vec<u8>,
    ) -> Result<bool, String> {
        value.clear();
        match self.store(partition, store)?.get(key) {
            Some(found) => {
                value.extend_from_slice(found);
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn state_put(
        &mut self,
        partition: (&str, i32),
        store: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let map = self.store(partition, store)?;
        match value {
            Some(value) => map.insert(key.to_vec(), value.to_vec()),
            None => map.remove(key),
        };
        Ok(())
    }
    fn state_scan(
        &mut self,
        partition: (&str, i32),
        store: &str,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), String> {
        for (key, value) in self.store(partition, store)?.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) || !visit(key, value) {
                break;
            }
        }
        Ok(())
    }
}

impl Collector for Outcome {
    fn emit(&mut self, output: &str, record: &Record<'_>) -> Result<(), Refusal> {
        self.records.push(Emitted {
            output: output.to_owned(),
            key: record.key_bytes().map(<[u8]>::to_vec),
            value: record.value_bytes().map(<[u8]>::to_vec),
            headers: record
                .header_list()
                .iter()
                .map(|h| (h.key().to_owned(), h.value().to_vec()))
                .collect(),
            partition: record.partition_hint(),
        });
        Ok(())
    }
    fn event_error(&mut self, index: usize, kind: EventErrorKind, message: &str) {
        self.errors.push(Failure {
            index,
            kind,
            message: message.to_owned(),
        });
    }
    fn log(&mut self, level: u32, message: &str) {
        self.logs.push((level, message.to_owned()));
    }
}

/// Runs one instance of `P` in process.
#[derive(Debug)]
pub struct Harness<P> {
    instance: Instance,
    next_offset: i64,
    outputs: Option<Vec<String>>,
    stores: Stores,
    config: serde_json::Value,
    _pipeline: PhantomData<P>,
}

impl<P: Pipeline> Harness<P> {
    /// Opens an instance with this config (as it would appear in the spec's `plugin.config`),
    /// after checking it against [`Pipeline::CONFIG_SCHEMA`] as the host does: a config the
    /// schema refuses is `Err(CallError::Failed)` naming the field.
    pub fn open(config: serde_json::Value) -> Result<Self, CallError> {
        check_schema::<P>(&config)?;
        // Leaked once per harness: the descriptor must be 'static, as in a real library.
        let vtable = Box::leak(Box::new(shims::vtable::<P>()));
        let descriptor = Box::leak(Box::new(shims::descriptor::<P>("harness", "0.0.0", vtable)));
        // SAFETY: a descriptor made by the SDK for `P`, leaked so it lives forever.
        let plugin = unsafe { PluginRef::new(descriptor) }
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        let mut outcome = Outcome::default();
        let instance = plugin.open(
            &config.to_string(),
            &OpenContext::new("test", 0, 1),
            &mut outcome,
        )?;
        Ok(Harness {
            instance,
            next_offset: 0,
            outputs: P::OUTPUTS.map(|names| names.iter().map(|n| (*n).to_owned()).collect()),
            stores: Stores::default(),
            config,
            _pipeline: PhantomData,
        })
    }

    /// The state stores the spec declares (`state.stores`), kept in memory per input partition
    /// as the host keeps them on disk. Without this, a state call fails the plugin call as it
    /// does in a pipeline without stores.
    pub fn with_stores(mut self, stores: &[&str]) -> Self {
        self.stores.names = stores.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// The stores' contents: (topic, partition, store) -> key -> value.
    pub fn state(&self) -> &StateMap {
        &self.stores.data
    }

    /// A crash and a restart: the instance is dropped without `flush` or `revoked` and a new one
    /// opened with the same config; the state stores keep every write, as the host restores
    /// them from their changelogs. Process the events after the last commit again to see what
    /// a replay does.
    pub fn restart(&mut self) -> Result<(), CallError> {
        let plugin = *self.instance.plugin();
        let instance = plugin.open(
            &self.config.to_string(),
            &OpenContext::new("test", 0, 1),
            &mut Outcome::default(),
        )?;
        let old = std::mem::replace(&mut self.instance, instance);
        let _ = old.close(&mut Outcome::default());
        Ok(())
    }

    /// The outputs the spec defines (`outputs:`): an emit to any other name fails the call with
    /// [`CallError::Failed`], as it fails a run. A plugin that declares [`Pipeline::OUTPUTS`]
    /// is held to those; a declared output missing here panics, as `sluice validate` refuses
    /// such a spec.
    pub fn with_outputs(mut self, outputs: &[&str]) -> Self {
        if let Some(declared) = P::OUTPUTS {
            let missing: Vec<&&str> = declared.iter().filter(|d| !outputs.contains(d)).collect();
            assert!(
                missing.is_empty(),
                "the plugin declares outputs {missing:?} that these outputs lack: `sluice validate` refuses such a spec"
            );
        }
        self.outputs = Some(outputs.iter().map(|n| (*n).to_owned()).collect());
        self
    }

    /// Processes a batch.
    pub fn process(&mut self, events: &[TestEvent]) -> Result<Outcome, CallError> {
        let headers: Vec<Vec<Header<'_>>> = events
            .iter()
            .map(|e| e.headers.iter().map(|(k, v)| Header::new(k, v)).collect())
            .collect();
        let mut raw = Vec::with_capacity(events.len());
        for (event, headers) in events.iter().zip(&headers) {
            let offset = event.offset.unwrap_or(self.next_offset);
            self.next_offset = offset + 1;
            let mut e = Event::new(&event.topic, event.partition, offset).with_headers(headers);
            e = match &event.payload {
                Some(p) => e.with_payload(p),
                None => e.with_null_payload(),
            };
            if let Some(key) = &event.key {
                e = e.with_key(key);
            }
            if let Some(ts) = event.timestamp_ms {
                e = e.with_timestamp_ms(ts);
            }
            raw.push(e);
        }
        let mut outcome = Outcome::default();
        let mut checked = Checked::new(&mut outcome, &self.outputs, &mut self.stores);
        self.instance.process(&raw, &mut checked)?;
        Ok(outcome)
    }

    /// Calls the assigned hook for `partitions` of `topic`.
    pub fn assigned(&mut self, topic: &str, partitions: &[i32]) -> Result<Outcome, CallError> {
        let parts: Vec<Partition<'_>> = partitions
            .iter()
            .map(|p| Partition::new(topic, *p))
            .collect();
        let mut outcome = Outcome::default();
        let mut checked = Checked::new(&mut outcome, &self.outputs, &mut self.stores);
        self.instance.assigned(&parts, &mut checked)?;
        Ok(outcome)
    }

    /// Calls the revoked hook for `partitions` of `topic`.
    pub fn revoked(&mut self, topic: &str, partitions: &[i32]) -> Result<Outcome, CallError> {
        let parts: Vec<Partition<'_>> = partitions
            .iter()
            .map(|p| Partition::new(topic, *p))
            .collect();
        let mut outcome = Outcome::default();
        let mut checked = Checked::new(&mut outcome, &self.outputs, &mut self.stores);
        self.instance.revoked(&parts, &mut checked)?;
        Ok(outcome)
    }

    /// Calls flush.
    pub fn flush(&mut self) -> Result<Outcome, CallError> {
        let mut outcome = Outcome::default();
        let mut checked = Checked::new(&mut outcome, &self.outputs, &mut self.stores);
        self.instance.flush(&mut checked)?;
        Ok(outcome)
    }

    /// What the host calls after a commit is confirmed (ABI 1.3 [`Pipeline::committed`]):
    /// `topic`/`partition` is committed up to `offset`, the next offset to read. The host calls
    /// it at a flush, right before `flush`; here call it after [`Harness::flush`] to say that
    /// commit went through.
    pub fn committed(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Outcome, CallError> {
        let mut outcome = Outcome::default();
        let mut checked = Checked::new(&mut outcome, &self.outputs, &mut self.stores);
        self.instance
            .committed(&[Partition::new(topic, partition)], &[offset], &mut checked)?;
        Ok(outcome)
    }

    /// Closes the instance.
    pub fn close(self) -> Result<(), CallError> {
        self.instance.close(&mut Outcome::default())
    }
}

/// The host's check of a config against the plugin's schema, with its message.
fn check_schema<P: Pipeline>(config: &serde_json::Value) -> Result<(), CallError> {
    let Some(schema) = P::CONFIG_SCHEMA else {
        return Ok(());
    };
    crate::host::check_config(schema, config).map_err(|problem| match problem {
        ConfigProblem::BadSchema(e) => {
            CallError::Protocol(format!("CONFIG_SCHEMA is not a valid JSON schema: {e}"))
        }
        ConfigProblem::Invalid { field, message } => CallError::Failed(format!(
            "plugin.config{field}: {message} (per the config schema)"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, Error, EventError, Output};

    /// Emits each event to the output its payload names (a typo in a test: `ot`).
    #[derive(Debug, serde::Deserialize)]
    struct Config {
        #[allow(dead_code)]
        n: u32,
    }
    #[derive(Debug)]
    struct Named;
    impl Pipeline for Named {
        type Config = Config;
        const DESCRIPTION: &'static str = "emits to the output its payload names";
        const CONFIG_SCHEMA: Option<&'static str> = Some(
            r#"{"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "minimum": 1}}}"#,
        );
        fn open(_: Config, _: &Context<'_>) -> Result<Self, Error> {
            Ok(Named)
        }
        fn process_event(&mut self, e: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
            let name = std::str::from_utf8(e.payload()).unwrap_or("?");
            out.emit(Record::to(name).value(b"x"))?;
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Declared;
    impl Pipeline for Declared {
        type Config = crate::NoConfig;
        const DESCRIPTION: &'static str = "declares `out`";
        const OUTPUTS: Option<&'static [&'static str]> = Some(&["out"]);
        fn open(_: crate::NoConfig, _: &Context<'_>) -> Result<Self, Error> {
            Ok(Declared)
        }
        fn process_event(&mut self, e: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
            out.emit(Record::to(std::str::from_utf8(e.payload()).unwrap_or("?")).value(b"x"))?;
            Ok(())
        }
    }

    #[test]
    fn the_config_schema_is_applied_before_open() {
        let err = Harness::<Named>::open(serde_json::json!({"n": 0})).unwrap_err();
        assert!(
            matches!(&err, CallError::Failed(m) if m.starts_with("plugin.config.n: 0 is less than the minimum of 1")),
            "{err:?}"
        );
        assert!(Harness::<Named>::open(serde_json::json!({})).is_err());
        assert!(Harness::<Named>::open(serde_json::json!({"n": 2})).is_ok());
    }

    #[test]
    fn an_emit_to_an_output_the_spec_lacks_fails_the_call() {
        let mut h = Harness::<Named>::open(serde_json::json!({"n": 1}))
            .unwrap()
            .with_outputs(&["out"]);
        assert_eq!(
            h.process(&[TestEvent::new("out")]).unwrap().records.len(),
            1
        );
        let err = h.process(&[TestEvent::new("ot")]).unwrap_err();
        assert!(err.to_string().contains("`ot`"), "{err}");
        // Without a list, any name goes (the plugin declares none).
        let mut h = Harness::<Named>::open(serde_json::json!({"n": 1})).unwrap();
        assert!(h.process(&[TestEvent::new("ot")]).is_ok());
        // A plugin that declares its outputs is held to them by default.
        let mut h = Harness::<Declared>::open(serde_json::json!({})).unwrap();
        assert!(h.process(&[TestEvent::new("out")]).is_ok());
        assert!(h.process(&[TestEvent::new("ot")]).is_err());
    }

    #[test]
    #[should_panic(expected = "the plugin declares outputs [\"out\"] that these outputs lack")]
    fn outputs_that_lack_a_declared_one_are_refused_as_validate_would() {
        let _ = Harness::<Declared>::open(serde_json::json!({}))
            .unwrap()
            .with_outputs(&["other"]);
    }
}
