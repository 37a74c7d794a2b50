//! booking-payments: joins ride bookings with their payments within a span of event time, and
//! drops repeated events, with its state in a host state store (so a restart or a rebalance keeps
//! the bookings still waiting for a payment).
//!
//! Input: JSON events on one topic, keyed by `booking_id` (so a booking and its payments share a
//! partition, and so its state): `{"type": "booking", "id", "booking_id", "city", "fare"}` and
//! `{"type": "payment", "id", "booking_id", "amount", "method"}`; the time is the event's
//! timestamp (the source's `timestamp-field`, or the Kafka record time).
//!
//! - **Dedup**: an event whose `id` was seen within `dedup_ms` is a duplicate: dropped, counted,
//!   and the count logged on `revoked`.
//! - **Join**: a booking and a payment of the same `booking_id` at most `within_ms` apart, in
//!   either order, make one record on `output` (default `paid`): `{"booking_id", "city", "fare",
//!   "amount", "method", "booked_at", "paid_at", "paid_after_ms"}`. A side waits in the store
//!   until its match comes or it is older than `within_ms` behind the partition's watermark.
//!
//! Everything lives in one store (`store`, default `joins`; declare it in the spec's
//! `state.stores`), because one store's writes reach its changelog in order: `s/<id>` (seen),
//! `p/<side>/<booking_id>` (waiting), `j/<booking_id>` (joined). An event's `seen` entry is
//! written last and records its offset, so after a crash a replayed event is told from a
//! duplicate, and its join is emitted again (at least once) but never made twice.
//!
//! Entries older than their span behind the watermark are swept, but a `seen` or `joined` entry
//! only once the host has committed its event (`committed`, ABI 1.3): until then a crash
//! replays the event, and the entry is what tells the replay from a new event and emits the
//! join again.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_plugin_api::{
    Context, Error, Event, EventError, Level, Output, Partition, Pipeline, Record, Store,
    export_plugin,
};

/// `plugin.config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Most event time between a booking and its payment, in milliseconds.
    pub within_ms: i64,
    /// How long an event id is remembered for dedup (default: `within_ms`).
    #[serde(default)]
    pub dedup_ms: Option<i64>,
    /// Output name for the joined records.
    #[serde(default = "default_output")]
    pub output: String,
    /// The state store (declared in the spec's `state.stores`).
    #[serde(default = "default_store")]
    pub store: String,
}

fn default_output() -> String {
    "paid".into()
}

fn default_store() -> String {
    "joins".into()
}

const SCHEMA: &str = r#"{
  "type": "object",
  "additionalProperties": false,
  "required": ["within_ms"],
  "properties": {
    "within_ms": {"type": "integer", "minimum": 1},
    "dedup_ms": {"type": "integer", "minimum": 1},
    "output": {"type": "string", "minLength": 1},
    "store": {"type": "string", "minLength": 1}
  }
}"#;

/// `s/<id>`: an event seen, at which offset and time.
#[derive(Debug, Serialize, Deserialize)]
struct Seen {
    offset: i64,
    ts: i64,
}

/// `p/<side>/<booking_id>`: one side waiting for the other.
#[derive(Debug, Serialize, Deserialize)]
struct Waiting {
    event: Value,
    ts: i64,
}

/// `j/<booking_id>`: a join made by the event at `offset` (kept to emit it again on a replay).
#[derive(Debug, Serialize, Deserialize)]
struct Joined {
    record: Value,
    offset: i64,
    ts: i64,
}

/// Per partition, what this instance tracks in memory.
#[derive(Debug, Default)]
struct Progress {
    watermark: i64,
    swept_at: i64,
    duplicates: u64,
    /// The committed offset, once the host said (entries of events before it are never
    /// replayed).
    committed: Option<i64>,
}

/// The pipeline.
#[derive(Debug)]
pub struct BookingPayments {
    config: Config,
    dedup_ms: i64,
    partitions: HashMap<(String, i32), Progress>,
}

fn other(side: &str) -> &'static str {
    if side == "booking" {
        "payment"
    } else {
        "booking"
    }
}

fn joined(booking: &Value, b_ts: i64, payment: &Value, p_ts: i64) -> Value {
    serde_json::json!({
        "booking_id": booking["booking_id"],
        "city": booking["city"],
        "fare": booking["fare"],
        "amount": payment["amount"],
        "method": payment["method"],
        "booked_at": b_ts,
        "paid_at": p_ts,
        "paid_after_ms": p_ts - b_ts,
    })
}

impl BookingPayments {
    fn emit(&self, out: &mut Output<'_>, booking_id: &str, record: &Value) -> Result<(), Error> {
        let value = serde_json::to_vec(record)?;
        out.emit(
            Record::to(&self.config.output)
                .key(booking_id.as_bytes())
                .value(&value),
        )?;
        Ok(())
    }

    /// The join step for `event` (a `side`): idempotent, so a replay that finds part of it done
    /// completes it.
    #[allow(clippy::too_many_arguments)]
    fn join(
        &self,
        out: &mut Output<'_>,
        topic: &str,
        partition: i32,
        offset: i64,
        side: &str,
        booking_id: &str,
        event: Value,
        ts: i64,
    ) -> Result<(), Error> {
        let done_key = format!("j/{booking_id}");
        let mut store = out.store(&self.config.store, topic, partition);
        if let Some(done) = store.get_json::<Joined>(done_key.as_bytes())? {
            if done.offset == offset {
                // Made by this very event before a crash (its `seen` entry had not landed).
                return self.emit(out, booking_id, &done.record);
            }
        }
        let wait_key = format!("p/{}/{booking_id}", other(side));
        let matched = store
            .get_json::<Waiting>(wait_key.as_bytes())?
            .filter(|w| (w.ts - ts).abs() <= self.config.within_ms);
        match matched {
            Some(waiting) => {
                let record = if side == "booking" {
                    joined(&event, ts, &waiting.event, waiting.ts)
                } else {
                    joined(&waiting.event, waiting.ts, &event, ts)
                };
                store.put_json(
                    done_key.as_bytes(),
                    &Joined {
                        record: record.clone(),
                        offset,
                        ts,
                    },
                )?;
                store.delete(wait_key.as_bytes())?;
                self.emit(out, booking_id, &record)
            }
            None => {
                let own = format!("p/{side}/{booking_id}");
                store.put_json(own.as_bytes(), &Waiting { event, ts })?;
                Ok(())
            }
        }
    }

    fn process_event(&mut self, event: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
        let ts = event.timestamp_ms().ok_or_else(|| {
            EventError::invalid("event has no timestamp: set the source's timestamp-field")
        })?;
        let doc: Value = serde_json::from_slice(event.payload())?;
        let text = |field: &str| -> Result<String, EventError> {
            doc[field]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| EventError::invalid(format!("no string `{field}`")))
        };
        let side = text("type")?;
        if side != "booking" && side != "payment" {
            return Err(EventError::invalid(format!(
                "`type` is `{side}`: booking or payment"
            )));
        }
        let (id, booking_id) = (text("id")?, text("booking_id")?);
        let (topic, partition, offset) = (event.topic(), event.partition(), event.offset());
        let progress = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        progress.watermark = progress.watermark.max(ts);
        let seen_key = format!("s/{id}");
        let seen: Option<Seen> = out
            .store(&self.config.store, topic, partition)
            .get_json(seen_key.as_bytes())?;
        if let Some(seen) = seen {
            if seen.offset != offset {
                progress.duplicates += 1;
                return Ok(());
            }
            // A replay of this very event, all of whose writes are in: emit its join again.
            let done: Option<Joined> = out
                .store(&self.config.store, topic, partition)
                .get_json(format!("j/{booking_id}").as_bytes())?;
            if let Some(done) = done.filter(|d| d.offset == offset) {
                self.emit(out, &booking_id, &done.record)?;
            }
            return Ok(());
        }
        // First seen, or replayed with only part of its writes in: the join step is idempotent.
        self.join(out, topic, partition, offset, &side, &booking_id, doc, ts)?;
        // Last: once this is in the changelog, everything this event did is there too.
        out.store(&self.config.store, topic, partition)
            .put_json(seen_key.as_bytes(), &Seen { offset, ts })?;
        Ok(())
    }

    /// Deletes what is older than its span behind the watermark (each time the watermark has
    /// moved a tenth of the span).
    fn sweep(&mut self, out: &mut Output<'_>, topic: &str, partition: i32) -> Result<(), Error> {
        let (within, dedup) = (self.config.within_ms, self.dedup_ms);
        let Some(progress) = self.partitions.get_mut(&(topic.to_owned(), partition)) else {
            return Ok(());
        };
        if progress.watermark - progress.swept_at < within.min(dedup) / 10 {
            return Ok(());
        }
        progress.swept_at = progress.watermark;
        let (watermark, committed) = (progress.watermark, progress.committed);
        let mut store: Store<'_> = out.store(&self.config.store, topic, partition);
        let mut expired = Vec::new();
        store.scan(b"", |key, value| {
            let Ok(entry) = serde_json::from_slice::<Value>(value) else {
                return true;
            };
            let span = if key.starts_with(b"s/") {
                dedup
            } else {
                within
            };
            let old = entry["ts"].as_i64().is_some_and(|ts| ts < watermark - span);
            // A seen or joined entry answers a replay of its event: kept until it is committed.
            let replayable = match entry["offset"].as_i64() {
                Some(offset) => committed.is_none_or(|c| offset >= c),
                None => false, // a waiting side: its event emitted nothing
            };
            if old && !replayable {
                expired.push(key.to_vec());
            }
            true
        })?;
        for key in expired {
            store.delete(&key)?;
        }
        Ok(())
    }
}

impl Pipeline for BookingPayments {
    type Config = Config;
    const DESCRIPTION: &'static str =
        "Joins bookings with their payments within a time span, dropping duplicate events";
    const CONFIG_SCHEMA: Option<&'static str> = Some(SCHEMA);
    const STORES: Option<&'static [&'static str]> = Some(&["joins"]);

    fn open(config: Config, _ctx: &Context<'_>) -> Result<Self, Error> {
        Ok(BookingPayments {
            dedup_ms: config.dedup_ms.unwrap_or(config.within_ms),
            config,
            partitions: HashMap::new(),
        })
    }

    fn process_event(&mut self, event: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
        BookingPayments::process_event(self, event, out)
    }

    fn process(&mut self, events: &[Event<'_>], out: &mut Output<'_>) -> Result<(), Error> {
        for (index, event) in events.iter().enumerate() {
            if let Err(err) = self.process_event(event, out) {
                sluice_plugin_api::sdk::report_event_error(out, index, err)?;
            }
        }
        if let Some(last) = events.last() {
            self.sweep(out, last.topic(), last.partition())?;
        }
        Ok(())
    }

    fn committed(
        &mut self,
        partition: &Partition<'_>,
        offset: i64,
        _out: &mut Output<'_>,
    ) -> Result<(), Error> {
        if let Some(progress) = self
            .partitions
            .get_mut(&(partition.topic().to_owned(), partition.partition()))
        {
            progress.committed = Some(offset);
        }
        Ok(())
    }

    fn revoked(&mut self, partitions: &[Partition<'_>], out: &mut Output<'_>) -> Result<(), Error> {
        for p in partitions {
            if let Some(progress) = self
                .partitions
                .remove(&(p.topic().to_owned(), p.partition()))
            {
                if progress.duplicates > 0 {
                    out.log(
                        Level::Info,
                        &format!(
                            "{}/{}: {} duplicate events dropped",
                            p.topic(),
                            p.partition(),
                            progress.duplicates
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

export_plugin!(BookingPayments);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_plugin_api::testing::{Harness, TestEvent};

    fn booking(id: &str, booking_id: &str, ts: i64) -> TestEvent {
        TestEvent::json(
            &json!({"type": "booking", "id": id, "booking_id": booking_id,
                                "city": "SG", "fare": 10.0}),
        )
        .timestamp_ms(ts)
    }

    fn payment(id: &str, booking_id: &str, ts: i64) -> TestEvent {
        TestEvent::json(
            &json!({"type": "payment", "id": id, "booking_id": booking_id,
                                "amount": 10.0, "method": "card"}),
        )
        .timestamp_ms(ts)
    }

    fn open() -> Harness<BookingPayments> {
        Harness::<BookingPayments>::open(json!({"within_ms": 1000}))
            .unwrap()
            .with_stores(&["joins"])
    }

    fn paid(h: &mut Harness<BookingPayments>, events: &[TestEvent]) -> Vec<(String, i64)> {
        h.process(events)
            .unwrap()
            .to("paid")
            .iter()
            .map(|r| {
                let v = r.json();
                (
                    v["booking_id"].as_str().unwrap().to_owned(),
                    v["paid_after_ms"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn joins_in_either_order_within_the_span_only() {
        let mut h = open();
        assert!(paid(&mut h, &[booking("e1", "b1", 0), payment("p9", "b9", 50)]).is_empty());
        assert_eq!(
            paid(&mut h, &[payment("p1", "b1", 400)]),
            [("b1".into(), 400)]
        );
        assert_eq!(
            paid(&mut h, &[booking("e9", "b9", 100)]),
            [("b9".into(), -50)]
        );
        // Too far apart: no join.
        assert!(
            paid(
                &mut h,
                &[booking("e2", "b2", 500), payment("p2", "b2", 1600)]
            )
            .is_empty()
        );
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let mut h = open();
        let out = paid(
            &mut h,
            &[
                booking("e1", "b1", 0),
                booking("e1", "b1", 0),
                payment("p1", "b1", 10),
            ],
        );
        assert_eq!(out, [("b1".into(), 10)]);
        assert!(
            paid(&mut h, &[payment("p1", "b1", 10)]).is_empty(),
            "a repeated payment"
        );
        let out = h.revoked("test", &[0]).unwrap();
        assert!(
            out.logs
                .iter()
                .any(|(_, l)| l.contains("2 duplicate events")),
            "{:?}",
            out.logs
        );
    }

    #[test]
    fn a_replay_after_a_crash_emits_its_joins_again_but_never_joins_twice() {
        let mut h = open();
        let events = [
            booking("e1", "b1", 0).offset(0),
            payment("p1", "b1", 10).offset(1),
            booking("e2", "b2", 20).offset(2),
        ];
        assert_eq!(paid(&mut h, &events), [("b1".into(), 10)]);
        h.restart().unwrap();
        assert_eq!(
            paid(&mut h, &events),
            [("b1".into(), 10)],
            "the join is emitted again, not dropped as a duplicate"
        );
        assert_eq!(
            paid(&mut h, &[payment("p2", "b2", 30).offset(3)]),
            [("b2".into(), 10)]
        );
        let state = &h.state()[&("test".into(), 0, "joins".into())];
        assert!(
            !state.contains_key(&b"p/booking/b1"[..]),
            "b1's booking is no longer waiting"
        );
    }

    fn keys(h: &Harness<BookingPayments>) -> Vec<String> {
        h.state()[&("test".into(), 0, "joins".into())]
            .keys()
            .map(|k| String::from_utf8_lossy(k).into())
            .collect()
    }

    #[test]
    fn old_entries_are_swept_once_their_events_are_committed() {
        let mut h = open();
        // Offsets 0 to 2: b1 joined at 1; e3 waits.
        paid(
            &mut h,
            &[
                booking("e1", "b1", 0),
                payment("p1", "b1", 10),
                booking("e3", "b3", 20),
            ],
        );
        // Far later (offset 3): the old entries are past their span, but no commit yet: a crash
        // would replay offsets 0 to 2, and their seen and joined entries must answer it. The
        // waiting booking emitted nothing: it goes.
        paid(&mut h, &[booking("e2", "b2", 5000)]);
        assert_eq!(
            keys(&h),
            ["j/b1", "p/booking/b2", "s/e1", "s/e2", "s/e3", "s/p1"]
        );
        // Committed up to 2: the join's event (1) and e1 (0) are never replayed; e3 (2) may be.
        h.flush().unwrap();
        h.committed("test", 0, 2).unwrap();
        paid(&mut h, &[booking("e4", "b4", 10_000)]);
        assert_eq!(keys(&h), ["p/booking/b4", "s/e2", "s/e3", "s/e4"]);
        h.committed("test", 0, 5).unwrap();
        paid(&mut h, &[booking("e5", "b5", 20_000)]);
        assert_eq!(keys(&h), ["p/booking/b5", "s/e5"]);
    }
}
