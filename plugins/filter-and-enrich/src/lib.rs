//! filter-and-enrich: ride bookings in, enriched bookings out.
//!
//! Each event is a JSON booking (`booking_id`, `city`, `status`, `fare`, `distance_km`, and
//! optionally `pickup_ts` in ms). Bookings whose status is in `drop_statuses`, whose fare is below
//! `min_fare`, or whose city is not in `cities` (when given) are dropped, counted per reason in
//! the `filtered` output when `emit_filtered` is on. Kept bookings gain `fare_per_km`,
//! `fare_band` (by `fare_bands`), `pickup_hour_utc` and `long_trip`, and go to `enriched`,
//! keyed by `booking_id`. A booking that is not JSON or lacks a required field is a per-event
//! error: the pipeline's error policy decides its fate.

use serde::Deserialize;
use sluice_plugin_api::{
    Context, Error, Event, EventError, Output, Pipeline, Record, export_plugin,
};

/// `plugin.config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bookings below this fare are dropped.
    #[serde(default)]
    pub min_fare: f64,
    /// Statuses to drop (e.g. `cancelled`).
    #[serde(default)]
    pub drop_statuses: Vec<String>,
    /// Only these cities are kept; empty keeps all.
    #[serde(default)]
    pub cities: Vec<String>,
    /// Upper bounds of the fare bands, ascending: `[10, 30]` gives `low` < 10 <= `mid` < 30 <= `high`.
    #[serde(default = "default_bands")]
    pub fare_bands: [f64; 2],
    /// Trips at least this long get `long_trip: true`.
    #[serde(default = "default_long_trip_km")]
    pub long_trip_km: f64,
    /// Also emit `{booking_id, reason}` for every dropped booking to the `filtered` output.
    #[serde(default)]
    pub emit_filtered: bool,
}

fn default_bands() -> [f64; 2] {
    [10.0, 30.0]
}

fn default_long_trip_km() -> f64 {
    20.0
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "min_fare": {"type": "number", "minimum": 0},
    "drop_statuses": {"type": "array", "items": {"type": "string"}},
    "cities": {"type": "array", "items": {"type": "string", "minLength": 1}},
    "fare_bands": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
    "long_trip_km": {"type": "number", "exclusiveMinimum": 0},
    "emit_filtered": {"type": "boolean"}
  }
}"#;

#[derive(Debug, Deserialize)]
struct Booking {
    booking_id: String,
    city: String,
    status: String,
    fare: f64,
    distance_km: f64,
    #[serde(default)]
    pickup_ts: Option<i64>,
}

/// The pipeline.
#[derive(Debug)]
pub struct FilterAndEnrich {
    config: Config,
    buf: Vec<u8>,
}

impl FilterAndEnrich {
    fn drop_reason(&self, b: &Booking) -> Option<&'static str> {
        if self.config.drop_statuses.iter().any(|s| s == &b.status) {
            Some("status")
        } else if b.fare < self.config.min_fare {
            Some("min_fare")
        } else if !self.config.cities.is_empty() && !self.config.cities.iter().any(|c| c == &b.city)
        {
            Some("city")
        } else {
            None
        }
    }

    fn band(&self, fare: f64) -> &'static str {
        let [low, mid] = self.config.fare_bands;
        if fare < low {
            "low"
        } else if fare < mid {
            "mid"
        } else {
            "high"
        }
    }
}

impl Pipeline for FilterAndEnrich {
    type Config = Config;
    const DESCRIPTION: &'static str =
        "Drops ride bookings by status, fare and city; adds fare_per_km, fare_band, pickup hour";
    const CONFIG_SCHEMA: Option<&'static str> = Some(SCHEMA);
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["enriched", "filtered"]);

    fn open(config: Config, _ctx: &Context<'_>) -> Result<Self, Error> {
        if config.fare_bands[0] > config.fare_bands[1] {
            return Err(Error::msg("fare_bands must be ascending, e.g. [10, 30]"));
        }
        Ok(FilterAndEnrich {
            config,
            buf: Vec::with_capacity(512),
        })
    }

    fn process_event(&mut self, event: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
        // One parse: the booking's fields are read from the document itself (no copy), which is
        // then enriched and written.
        let value: serde_json::Value = serde_json::from_slice(event.payload())?;
        let booking = Booking::deserialize(&value)
            .map_err(|e| EventError::invalid(format!("not a booking: {e}")))?;
        // (serde also reads a struct from a JSON array: a booking must be an object.)
        let serde_json::Value::Object(mut doc) = value else {
            return Err(EventError::invalid("not a booking: expected a JSON object"));
        };
        if !booking.fare.is_finite()
            || booking.fare < 0.0
            || !booking.distance_km.is_finite()
            || booking.distance_km < 0.0
        {
            return Err(EventError::invalid(
                "fare and distance_km must be non-negative numbers",
            ));
        }
        if let Some(reason) = self.drop_reason(&booking) {
            if self.config.emit_filtered {
                self.buf.clear();
                serde_json::to_writer(
                    &mut self.buf,
                    &serde_json::json!({"booking_id": booking.booking_id, "reason": reason}),
                )
                .map_err(Error::from)?;
                out.emit(
                    Record::to("filtered")
                        .key(booking.booking_id.as_bytes())
                        .value(&self.buf),
                )?;
            }
            return Ok(());
        }
        let per_km = if booking.distance_km > 0.0 {
            (booking.fare / booking.distance_km * 100.0).round() / 100.0
        } else {
            0.0
        };
        doc.insert("fare_per_km".into(), per_km.into());
        doc.insert("fare_band".into(), self.band(booking.fare).into());
        doc.insert(
            "long_trip".into(),
            (booking.distance_km >= self.config.long_trip_km).into(),
        );
        let ts = booking.pickup_ts.or(event.timestamp_ms());
        if let Some(ts) = ts {
            doc.insert("pickup_hour_utc".into(), ((ts / 3_600_000) % 24).into());
        }
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, &doc).map_err(Error::from)?;
        out.emit(
            Record::to("enriched")
                .key(booking.booking_id.as_bytes())
                .value(&self.buf),
        )?;
        Ok(())
    }
}

export_plugin!(FilterAndEnrich);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_plugin_api::host::{CallError, EventErrorKind};
    use sluice_plugin_api::testing::{Harness, TestEvent};

    fn booking(id: &str, city: &str, status: &str, fare: f64, km: f64) -> TestEvent {
        TestEvent::json(
            &json!({"booking_id": id, "city": city, "status": status, "fare": fare,
                                "distance_km": km, "pickup_ts": 1_700_000_000_000i64}),
        )
    }

    #[test]
    fn enriches_kept_bookings() {
        let mut h = Harness::<FilterAndEnrich>::open(json!({"fare_bands": [10, 30]})).unwrap();
        let out = h
            .process(&[booking("b1", "SG", "completed", 25.0, 10.0)])
            .unwrap();
        let rec = &out.to("enriched")[0];
        assert_eq!(rec.key.as_deref(), Some(&b"b1"[..]));
        let v = rec.json();
        assert_eq!(v["fare_per_km"], 2.5);
        assert_eq!(v["fare_band"], "mid");
        assert_eq!(v["long_trip"], false);
        assert_eq!(v["pickup_hour_utc"], 22);
        assert_eq!(v["city"], "SG", "original fields are kept");
    }

    #[test]
    fn drops_by_status_fare_and_city_and_reports_why() {
        let config = json!({"min_fare": 5, "drop_statuses": ["cancelled"], "cities": ["SG", "JKT"], "emit_filtered": true});
        let mut h = Harness::<FilterAndEnrich>::open(config).unwrap();
        let out = h
            .process(&[
                booking("b1", "SG", "cancelled", 50.0, 3.0),
                booking("b2", "SG", "completed", 4.0, 3.0),
                booking("b3", "MNL", "completed", 40.0, 3.0),
                booking("b4", "JKT", "completed", 40.0, 30.0),
            ])
            .unwrap();
        let reasons: Vec<_> = out
            .to("filtered")
            .iter()
            .map(|r| r.json()["reason"].clone())
            .collect();
        assert_eq!(reasons, [json!("status"), json!("min_fare"), json!("city")]);
        let kept = out.to("enriched");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].json()["long_trip"], true);
        assert_eq!(kept[0].json()["fare_band"], "high");
    }

    #[test]
    fn bad_events_are_per_event_errors() {
        let mut h = Harness::<FilterAndEnrich>::open(json!({})).unwrap();
        let out = h
            .process(&[
                TestEvent::new("{oops"),
                TestEvent::json(&json!({"booking_id": "b9"})),
                booking("b1", "SG", "completed", -1.0, 1.0),
                booking("b2", "SG", "completed", 12.0, 0.0),
                // A booking's fields in an array: not an object.
                TestEvent::json(&json!(["b3", "SG", "completed", 12.0, 3.0, null])),
            ])
            .unwrap();
        let indexes: Vec<_> = out.errors.iter().map(|e| (e.index, e.kind)).collect();
        assert_eq!(
            indexes,
            [
                (0, EventErrorKind::InvalidInput),
                (1, EventErrorKind::InvalidInput),
                (2, EventErrorKind::InvalidInput),
                (4, EventErrorKind::InvalidInput)
            ]
        );
        assert!(
            out.errors[3].message.contains("expected a JSON object"),
            "{:?}",
            out.errors[3]
        );
        assert!(
            out.errors[1].message.contains("missing field"),
            "{:?}",
            out.errors[1]
        );
        assert_eq!(out.to("enriched")[0].json()["fare_per_km"], 0.0);
    }

    #[test]
    fn rejects_bad_config() {
        let err = Harness::<FilterAndEnrich>::open(json!({"fare_bands": [30, 10]})).unwrap_err();
        assert_eq!(
            err,
            CallError::Failed("fare_bands must be ascending, e.g. [10, 30]".into())
        );
        // A typo: the config schema (applied by the harness as by the host) refuses it first.
        let err = Harness::<FilterAndEnrich>::open(json!({"min_fair": 3})).unwrap_err();
        assert!(
            err.message().starts_with("plugin.config: ") && err.message().contains("min_fair"),
            "{err}"
        );
    }
}
