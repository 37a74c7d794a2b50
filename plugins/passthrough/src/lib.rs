//! passthrough: forwards every event unchanged (key, value, headers; tombstones stay
//! tombstones) to the `out` output. A mirror or topic-copy pipeline, and the no-op plugin the
//! ABI benchmark measures. With `state_store` set it also writes each event's value under its
//! key in that state store (the latest value per key): one state write per event, what the state
//! benchmark measures.

use serde::Deserialize;
use sluice_plugin_api::{
    Context, Error, Event, EventError, Output, Pipeline, Record, export_plugin,
};

/// `plugin.config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A state store (declared in the spec's `state.stores`) to write key -> latest value into.
    #[serde(default)]
    pub state_store: Option<String>,
}

/// The pipeline.
#[derive(Debug)]
pub struct Passthrough {
    state_store: Option<String>,
}

impl Pipeline for Passthrough {
    type Config = Config;
    const DESCRIPTION: &'static str = "Forwards every event unchanged to the `out` output";
    const CONFIG_SCHEMA: Option<&'static str> = Some(
        r#"{"type": "object", "additionalProperties": false, "properties": {"state_store": {"type": "string", "minLength": 1}}}"#,
    );
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["out"]);

    fn open(config: Config, _ctx: &Context<'_>) -> Result<Self, Error> {
        Ok(Passthrough {
            state_store: config.state_store,
        })
    }

    fn process_event(&mut self, event: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
        if let Some(store) = &self.state_store {
            out.store(store, event.topic(), event.partition())
                .put(event.key().unwrap_or_default(), event.payload())?;
        }
        let record = Record::to("out")
            .headers(event.headers())
            .key_opt(event.key());
        out.emit(if event.is_tombstone() {
            record.tombstone()
        } else {
            record.value(event.payload())
        })?;
        Ok(())
    }
}

export_plugin!(Passthrough);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_api::testing::{Harness, TestEvent};

    #[test]
    fn forwards_key_value_headers_and_tombstones() {
        let mut h = Harness::<Passthrough>::open(serde_json::json!({})).unwrap();
        let mut tombstone = TestEvent::new("").key("gone");
        tombstone.payload = None;
        let out = h
            .process(&[
                TestEvent::new("v1").key("k1").header("h", "x"),
                tombstone,
                TestEvent::new(""),
            ])
            .unwrap();
        assert_eq!(out.records.len(), 3);
        assert_eq!(out.records[0].value.as_deref(), Some(&b"v1"[..]));
        assert_eq!(out.records[0].headers, [("h".into(), b"x".to_vec())]);
        assert_eq!(
            (
                out.records[1].key.as_deref(),
                out.records[1].value.as_deref()
            ),
            (Some(&b"gone"[..]), None)
        );
        assert_eq!(
            (
                out.records[2].key.as_deref(),
                out.records[2].value.as_deref()
            ),
            (None, Some(&b""[..]))
        );
    }

    #[test]
    fn refuses_any_config() {
        let err = Harness::<Passthrough>::open(serde_json::json!({"x": 1})).unwrap_err();
        // The config schema (applied by the harness as by the host) allows no field.
        assert!(err.message().starts_with("plugin.config"), "{err}");
    }
}
