//! windowed-count: event-time window counts per key, kept in a state store.
//!
//! The key is a top-level field of the JSON payload (`key_field`); the time is the event's
//! timestamp (the source's `timestamp-field`, or the Kafka record time). Windows are tumbling
//! (`window_ms`), or hopping when `advance_ms` is set, and kept per input partition in the state
//! store `store` (default `windows`; declare it in the spec's `state.stores`), so a restart or a
//! rebalance keeps them. A window closes when the partition's watermark (its highest event time)
//! passes the window's end plus `allowed_lateness_ms`; its count is then emitted to `output` as
//! `{"key", "window_start", "window_end", "count", "closed": true}`. An event for a window that
//! has closed is late: dropped and counted (the count is logged when the partition is revoked).
//!
//! Counts are exact across crashes: every window records the offset it counted last, so the
//! events the host replays after a crash are not counted twice ([`StoredWindows`]). A closed
//! window's record is emitted at least once: again after a restart when the commit had not
//! covered its close yet (same count); a closed window stays in the store for that until the
//! host says its close is committed (`committed`, ABI 1.3). On `revoked` (a rebalance, or the
//! end of a file) the open
//! windows' counts so far are emitted with `"closed": false`; they stay in the store, and their
//! final count comes with `"closed": true` from whoever owns the partition next.

use serde::Deserialize;
use sluice_plugin_api::window::{StoredWindows, WindowKind, WindowResult};
use sluice_plugin_api::{
    Context, Error, Event, EventError, Level, Output, Partition, Pipeline, Record, export_plugin,
};

/// `plugin.config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Top-level JSON field whose value is the key (strings as-is, numbers and booleans as text).
    pub key_field: String,
    /// Window length in milliseconds.
    pub window_ms: i64,
    /// Hopping windows: distance between window starts (at most `window_ms`). Unset: tumbling.
    #[serde(default)]
    pub advance_ms: Option<i64>,
    /// How long after a window's end events may still arrive before it closes.
    #[serde(default)]
    pub allowed_lateness_ms: i64,
    /// Output name for the counts.
    #[serde(default = "default_output")]
    pub output: String,
    /// The state store the windows live in (declared in the spec's `state.stores`).
    #[serde(default = "default_store")]
    pub store: String,
}

fn default_output() -> String {
    "counts".into()
}

fn default_store() -> String {
    "windows".into()
}

const SCHEMA: &str = r#"{
  "type": "object",
  "additionalProperties": false,
  "required": ["key_field", "window_ms"],
  "properties": {
    "key_field": {"type": "string", "minLength": 1},
    "window_ms": {"type": "integer", "minimum": 1},
    "advance_ms": {"type": "integer", "minimum": 1},
    "allowed_lateness_ms": {"type": "integer", "minimum": 0},
    "output": {"type": "string", "minLength": 1},
    "store": {"type": "string", "minLength": 1}
  }
}"#;

/// The pipeline.
#[derive(Debug)]
pub struct WindowedCount {
    config: Config,
    windows: StoredWindows<u64>,
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

    fn emit(&mut self, out: &mut Output<'_>, results: Vec<WindowResult<u64>>) -> Result<(), Error> {
        for r in results {
            let key = String::from_utf8_lossy(&r.key);
            self.buf.clear();
            serde_json::to_writer(
                &mut self.buf,
                &serde_json::json!({"key": key, "window_start": r.window.start,
                                    "window_end": r.window.end, "count": r.value,
                                    "closed": r.closed}),
            )?;
            out.emit(Record::to(&self.config.output).key(&r.key).value(&self.buf))?;
        }
        Ok(())
    }
}

impl Pipeline for WindowedCount {
    type Config = Config;
    const DESCRIPTION: &'static str =
        "Counts events per key in event-time windows kept in a state store";
    const CONFIG_SCHEMA: Option<&'static str> = Some(SCHEMA);
    const STORES: Option<&'static [&'static str]> = Some(&["windows"]);

    fn open(config: Config, _ctx: &Context<'_>) -> Result<Self, Error> {
        let kind = match config.advance_ms {
            None => WindowKind::Tumbling {
                size_ms: config.window_ms,
            },
            Some(advance_ms) => WindowKind::Hopping {
                size_ms: config.window_ms,
                advance_ms,
            },
        };
        let windows = StoredWindows::new(kind, config.allowed_lateness_ms, &config.store)
            .map_err(Error::msg)?;
        Ok(WindowedCount {
            config,
            windows,
            buf: Vec::new(),
        })
    }

    fn process_event(&mut self, event: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
        let ts = event.timestamp_ms().ok_or_else(|| {
            EventError::invalid("event has no timestamp: set the source's timestamp-field")
        })?;
        let key = self.key_of(event)?;
        self.windows
            .add(out, event, key.as_bytes(), ts, |n| *n += 1)?;
        Ok(())
    }

    fn process(&mut self, events: &[Event<'_>], out: &mut Output<'_>) -> Result<(), Error> {
        for (index, event) in events.iter().enumerate() {
            if let Err(err) = self.process_event(event, out) {
                sluice_plugin_api::sdk::report_event_error(out, index, err)?;
            }
        }
        // A batch is one partition's: emit every window its watermark has passed.
        if let Some(last) = events.last() {
            let closed = self
                .windows
                .close(out, last.topic(), last.partition(), last.offset())?;
            self.emit(out, closed)?;
        }
        Ok(())
    }

    fn revoked(&mut self, partitions: &[Partition<'_>], out: &mut Output<'_>) -> Result<(), Error> {
        for p in partitions {
            let open = self.windows.open_results(out, p.topic(), p.partition())?;
            self.emit(out, open)?;
            let late = self.windows.late(p.topic(), p.partition());
            if late > 0 {
                out.log(
                    Level::Info,
                    &format!(
                        "{}/{}: {late} late events dropped",
                        p.topic(),
                        p.partition()
                    ),
                );
            }
            self.windows.revoked(p.topic(), p.partition());
        }
        Ok(())
    }

    fn committed(
        &mut self,
        partition: &Partition<'_>,
        offset: i64,
        out: &mut Output<'_>,
    ) -> Result<(), Error> {
        self.windows
            .committed(out, partition.topic(), partition.partition(), offset)?;
        Ok(())
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

    fn open(config: serde_json::Value) -> Harness<WindowedCount> {
        Harness::<WindowedCount>::open(config)
            .unwrap()
            .with_stores(&["windows"])
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
        let mut h = open(json!({"key_field": "user", "window_ms": 1000}));
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
        assert!(
            h.flush().unwrap().records.is_empty(),
            "flush emits nothing: open windows are kept in the store"
        );
        let out = h.revoked("test", &[0]).unwrap();
        assert_eq!(summary(&out.to("counts")), [("c".into(), 3000, 1, false)]);
    }

    #[test]
    fn hopping_windows_count_an_event_in_each_of_its_windows() {
        let mut h = open(json!({"key_field": "user", "window_ms": 1000, "advance_ms": 500}));
        h.process(&[click("a", 700)]).unwrap();
        let out = h.process(&[click("a", 2600)]).unwrap();
        assert_eq!(
            summary(&out.to("counts")),
            [("a".into(), 0, 1, true), ("a".into(), 500, 1, true)]
        );
    }

    #[test]
    fn late_events_are_dropped_and_counted() {
        let mut h =
            open(json!({"key_field": "user", "window_ms": 1000, "allowed_lateness_ms": 500}));
        assert!(
            h.process(&[click("a", 100), click("a", 1400)])
                .unwrap()
                .records
                .is_empty()
        );
        let out = h.process(&[click("a", 900), click("a", 1600)]).unwrap();
        assert_eq!(summary(&out.to("counts")), [("a".into(), 0, 2, true)]);
        // Too late for the closed window: dropped, counted, logged on revoke.
        let out = h.process(&[click("a", 50), click("a", 2600)]).unwrap();
        assert_eq!(summary(&out.to("counts")), [("a".into(), 1000, 2, true)]);
        let out = h.revoked("test", &[0]).unwrap();
        assert!(
            out.logs.iter().any(|(_, l)| l.contains("1 late events")),
            "{:?}",
            out.logs
        );
    }

    #[test]
    fn revoke_emits_only_that_partitions_open_windows() {
        let mut h = open(json!({"key_field": "user", "window_ms": 1000}));
        h.process(&[click("a", 10).at("t", 0), click("b", 20).at("t", 1)])
            .unwrap();
        let out = h.revoked("t", &[1]).unwrap();
        assert_eq!(summary(&out.to("counts")), [("b".into(), 0, 1, false)]);
        let out = h.revoked("t", &[0]).unwrap();
        assert_eq!(summary(&out.to("counts")), [("a".into(), 0, 1, false)]);
    }

    #[test]
    fn a_replay_after_a_crash_counts_nothing_twice_and_emits_uncommitted_closes_again() {
        let mut h = open(json!({"key_field": "user", "window_ms": 1000}));
        let batch = |h: &mut Harness<WindowedCount>, events: &[(i64, &str, i64)]| {
            let events: Vec<TestEvent> = events
                .iter()
                .map(|(offset, user, ts)| click(user, *ts).offset(*offset))
                .collect();
            summary(&h.process(&events).unwrap().to("counts"))
        };
        assert!(batch(&mut h, &[(0, "a", 100), (1, "a", 200)]).is_empty());
        h.flush().unwrap(); // the host commits offset 2
        assert_eq!(
            batch(&mut h, &[(2, "a", 300), (3, "b", 1200)]),
            [("a".into(), 0, 3, true)]
        );
        assert!(batch(&mut h, &[(4, "b", 1300)]).is_empty());
        // Killed before the next commit: the host restores the stores (all writes) and
        // replays from offset 2.
        h.restart().unwrap();
        assert_eq!(
            batch(&mut h, &[(2, "a", 300), (3, "b", 1200), (4, "b", 1300)]),
            [("a".into(), 0, 3, true)],
            "the close the commit did not cover is emitted again, with the same count"
        );
        assert_eq!(
            batch(&mut h, &[(5, "b", 2100)]),
            [("b".into(), 1000, 2, true)],
            "offsets 3 and 4 were counted once"
        );
    }

    #[test]
    fn a_closed_window_leaves_the_store_once_its_close_is_committed() {
        let mut h = open(json!({"key_field": "user", "window_ms": 1000}));
        // Offsets 0 and 1; the event at 1 closes [0,1000).
        h.process(&[click("a", 100), click("a", 1100)]).unwrap();
        let windows = |h: &Harness<WindowedCount>| {
            h.state()
                .values()
                .map(|m| m.keys().filter(|k| k[0] == b'w').count())
                .sum::<usize>()
        };
        for _ in 0..5 {
            h.flush().unwrap();
        }
        assert_eq!(windows(&h), 2, "flushes alone keep it: no commit yet");
        h.committed("test", 0, 1).unwrap();
        assert_eq!(
            windows(&h),
            2,
            "committed up to 1: the close at offset 1 may still be replayed"
        );
        h.committed("other", 0, 5).unwrap();
        assert_eq!(windows(&h), 2, "another partition's commit changes nothing");
        h.committed("test", 0, 2).unwrap();
        assert_eq!(
            windows(&h),
            1,
            "the closed window [0,1000) is gone; [1000,2000) stays"
        );
    }

    #[test]
    fn after_a_restart_closed_windows_go_at_the_first_commit_past_their_close() {
        let mut h = open(json!({"key_field": "user", "window_ms": 1000}));
        h.process(&[click("a", 100), click("b", 1100), click("b", 2100)])
            .unwrap();
        h.restart().unwrap();
        // The new instance reads the partition at its first event, closed windows included.
        h.process(&[click("c", 2200).offset(3)]).unwrap();
        h.committed("test", 0, 4).unwrap();
        let left: Vec<i64> = h
            .state()
            .values()
            .flat_map(|m| m.keys().filter(|k| k[0] == b'w'))
            .map(|k| (u64::from_be_bytes(k[1..9].try_into().unwrap()) ^ (1 << 63)) as i64)
            .collect();
        assert_eq!(
            left,
            [2000, 2000],
            "only the open window [2000,3000) of b and c"
        );
    }

    #[test]
    fn a_pipeline_without_the_store_fails_naming_it() {
        let mut h =
            Harness::<WindowedCount>::open(json!({"key_field": "user", "window_ms": 10})).unwrap();
        let err = h.process(&[click("a", 5)]).unwrap_err();
        assert!(
            err.to_string().contains("state: {stores: [windows]}"),
            "{err}"
        );
    }

    #[test]
    fn events_without_time_or_key_are_invalid() {
        let mut h = open(json!({"key_field": "user", "window_ms": 10}));
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
