//! windowed-count: tumbling event-time windows, counting events per key.
//!
//! The key is a top-level field of the JSON payload (`key_field`); the time is the event's
//! timestamp (the source's `timestamp-field`, or the Kafka record time). Windows are kept per
//! partition. A window closes when the partition's watermark (its highest event time seen) passes
//! the window's end plus `allowed_lateness_ms`; its counts are then emitted to `output` as
//! `{"key", "window_start", "window_end", "count", "closed": true}`.
//!
//! `flush` (called before the host commits offsets) and `revoked` emit every open window with
//! `"closed": false` and forget it, because state is not persisted: after the commit, no event
//! behind these counts will be read again. Every event is therefore counted in exactly one
//! record, and a window's total is the sum of `count` over its records. A late event (its window
//! already closed) opens the window again and is emitted at the next close as another record.
//!
//! The windowing itself is the SDK's ([`sluice_plugin_api::window::Windowed`], tumbling windows,
//! `Late::Reopen`): this plugin only reads keys and writes counts.

use std::collections::HashMap;

use serde::Deserialize;
use sluice_plugin_api::window::{Closed, Late, WindowKind, Windowed};
use sluice_plugin_api::{
    Context, Error, Event, EventError, Output, Partition, Pipeline, Record, export_plugin,
};

/// `plugin.config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Top-level JSON field whose value is the key (strings as-is, numbers and booleans as text).
    pub key_field: String,
    /// Window length in milliseconds.
    pub window_ms: i64,
    /// How long after a window's end events may still arrive before it closes.
    #[serde(default)]
    pub allowed_lateness_ms: i64,
    /// Output name for the counts.
    #[serde(default = "default_output")]
    pub output: String,
}

fn default_output() -> String {
    "counts".into()
}

const SCHEMA: &str = r#"{
  "type": "object",
  "additionalProperties": false,
  "required": ["key_field", "window_ms"],
  "properties": {
    "key_field": {"type": "string", "minLength": 1},
    "window_ms": {"type": "integer", "minimum": 1},
    "allowed_lateness_ms": {"type": "integer", "minimum": 0},
    "output": {"type": "string", "minLength": 1}
  }
}"#;

/// The pipeline.
#[derive(Debug)]
pub struct WindowedCount {
    config: Config,
    /// An empty set of windows, configured: what a new partition starts with.
    empty: Windowed<String, u64>,
    /// Open windows per partition: key -> count.
    partitions: HashMap<(String, i32), Windowed<String, u64>>,
    buf: Vec<u8>,
}

impl WindowedCount {
    fn key_of(&self, event: &Event<'_>) -> Result<String, EventError> {
        let doc: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(event.payload())?;
        match doc.get(&self.config.key_field) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                Ok(v.to_string())
            }
            _ => Err(EventError::invalid(format!(
                "no `{}` field with a string or number value",
                self.config.key_field
            ))),
        }
    }

    fn emit(
        out: &mut Output<'_>,
        buf: &mut Vec<u8>,
        output: &str,
        windows: Vec<Closed<String, u64>>,
    ) -> Result<(), Error> {
        for w in windows {
            buf.clear();
            serde_json::to_writer(
                &mut *buf,
                &serde_json::json!({"key": w.key, "window_start": w.window.start,
                                    "window_end": w.window.end, "count": w.value,
                                    "closed": w.closed}),
            )?;
            out.emit(Record::to(output).key(w.key.as_bytes()).value(buf))?;
        }
        Ok(())
    }

    /// Emits and forgets the open windows of the partitions `select` picks.
    fn drain(
        &mut self,
        out: &mut Output<'_>,
        select: impl Fn(&(String, i32)) -> bool,
    ) -> Result<(), Error> {
        let keys: Vec<_> = self
            .partitions
            .keys()
            .filter(|k| select(k))
            .cloned()
            .collect();
        for key in keys {
            if let Some(mut windows) = self.partitions.remove(&key) {
                Self::emit(out, &mut self.buf, &self.config.output, windows.drain())?;
            }
        }
        Ok(())
    }
}

impl Pipeline for WindowedCount {
    type Config = Config;
    const DESCRIPTION: &'static str = "Counts events per key in tumbling event-time windows";
    const CONFIG_SCHEMA: Option<&'static str> = Some(SCHEMA);

    fn open(config: Config, _ctx: &Context<'_>) -> Result<Self, Error> {
        let empty = Windowed::new(
            WindowKind::Tumbling {
                size_ms: config.window_ms,
            },
            config.allowed_lateness_ms,
            Late::Reopen,
        )
        .map_err(Error::msg)?;
        Ok(WindowedCount {
            config,
            empty,
            partitions: HashMap::new(),
            buf: Vec::new(),
        })
    }

    fn process_event(
        &mut self,
        event: &Event<'_>,
        _out: &mut Output<'_>,
    ) -> Result<(), EventError> {
        let ts = event.timestamp_ms().ok_or_else(|| {
            EventError::invalid("event has no timestamp: set the source's timestamp-field")
        })?;
        let key = self.key_of(event)?;
        let empty = &self.empty;
        self.partitions
            .entry((event.topic().to_owned(), event.partition()))
            .or_insert_with(|| empty.clone())
            .add(key, ts, |n| *n += 1);
        Ok(())
    }

    fn process(&mut self, events: &[Event<'_>], out: &mut Output<'_>) -> Result<(), Error> {
        for (index, event) in events.iter().enumerate() {
            if let Err(err) = self.process_event(event, out) {
                sluice_plugin_api::sdk::report_event_error(out, index, err)?;
            }
        }
        // Emit every window the watermark has passed.
        for windows in self.partitions.values_mut() {
            Self::emit(out, &mut self.buf, &self.config.output, windows.close())?;
        }
        Ok(())
    }

    fn revoked(&mut self, partitions: &[Partition<'_>], out: &mut Output<'_>) -> Result<(), Error> {
        self.drain(out, |(topic, p)| {
            partitions
                .iter()
                .any(|r| r.topic() == topic && r.partition() == *p)
        })
    }

    fn flush(&mut self, out: &mut Output<'_>) -> Result<(), Error> {
        self.drain(out, |_| true)
    }
}

export_plugin!(WindowedCount);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_plugin_api::testing::{Harness, TestEvent};

    fn click(user: &str, ts: i64) -> TestEvent {
        TestEvent::json(&json!({"user": user})).timestamp_ms(ts)
    }

    fn summary(records: &[&sluice_plugin_api::testing::Emitted]) -> Vec<(String, i64, u64, bool)> {
        records
            .iter()
            .map(|r| {
                let v = r.json();
                (
                    v["key"].as_str().unwrap().to_owned(),
                    v["window_start"].as_i64().unwrap(),
                    v["count"].as_u64().unwrap(),
                    v["closed"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn counts_per_key_and_closes_windows_by_watermark() {
        let mut h = Harness::<WindowedCount>::open(json!({"key_field": "user", "window_ms": 1000}))
            .unwrap();
        let out = h
            .process(&[click("a", 100), click("b", 200), click("a", 999)])
            .unwrap();
        assert!(
            out.records.is_empty(),
            "window [0,1000) is open until the watermark reaches 1000"
        );
        let out = h.process(&[click("a", 1500), click("b", 1999)]).unwrap();
        assert_eq!(
            summary(&out.to("counts")),
            [("a".into(), 0, 2, true), ("b".into(), 0, 1, true)]
        );
        let out = h.process(&[click("c", 3100)]).unwrap();
        assert_eq!(
            summary(&out.to("counts")),
            [("a".into(), 1000, 1, true), ("b".into(), 1000, 1, true)]
        );
        h.process(&[click("d", 3200)]).unwrap();
        let out = h.flush().unwrap();
        assert_eq!(
            summary(&out.to("counts")),
            [("c".into(), 3000, 1, false), ("d".into(), 3000, 1, false)]
        );
        assert!(
            h.flush().unwrap().records.is_empty(),
            "flush forgets what it emitted"
        );
    }

    #[test]
    fn lateness_holds_windows_open_and_late_events_are_counted_once() {
        let mut h = Harness::<WindowedCount>::open(
            json!({"key_field": "user", "window_ms": 1000, "allowed_lateness_ms": 500}),
        )
        .unwrap();
        assert!(
            h.process(&[click("a", 100), click("a", 1400)])
                .unwrap()
                .records
                .is_empty()
        );
        let out = h.process(&[click("a", 900), click("a", 1600)]).unwrap();
        assert_eq!(summary(&out.to("counts")), [("a".into(), 0, 2, true)]);
        // Too late for the closed window: reopened, emitted at the next close as a separate delta.
        let out = h.process(&[click("a", 50), click("a", 2600)]).unwrap();
        assert_eq!(
            summary(&out.to("counts")),
            [("a".into(), 0, 1, true), ("a".into(), 1000, 2, true)]
        );
    }

    #[test]
    fn revoke_emits_only_that_partitions_windows() {
        let mut h = Harness::<WindowedCount>::open(json!({"key_field": "user", "window_ms": 1000}))
            .unwrap();
        h.process(&[click("a", 10).at("t", 0), click("b", 20).at("t", 1)])
            .unwrap();
        let out = h.revoked("t", &[1]).unwrap();
        assert_eq!(summary(&out.to("counts")), [("b".into(), 0, 1, false)]);
        let out = h.flush().unwrap();
        assert_eq!(summary(&out.to("counts")), [("a".into(), 0, 1, false)]);
    }

    #[test]
    fn events_without_time_or_key_are_invalid() {
        let mut h =
            Harness::<WindowedCount>::open(json!({"key_field": "user", "window_ms": 10})).unwrap();
        let out = h
            .process(&[
                TestEvent::json(&json!({"user": "a"})),
                click("", 5),
                TestEvent::json(&json!({"x": 1})).timestamp_ms(5),
            ])
            .unwrap();
        let idx: Vec<_> = out.errors.iter().map(|e| e.index).collect();
        assert_eq!(idx, [0, 2]);
        assert!(out.errors[0].message.contains("no timestamp"));
        assert!(out.errors[1].message.contains("no `user` field"));
    }
}
