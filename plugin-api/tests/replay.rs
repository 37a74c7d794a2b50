//! The README's "Idempotent under replay" recipe, run through the harness: a running total per
//! key that keeps the offset in the same value, killed before a commit and replayed.

use serde_json::json;
use sluice_plugin_api::testing::{Harness, TestEvent};
use sluice_plugin_api::{Context, Error, Event, EventError, Output, Pipeline, Record};

/// Per key: the running total and the offset of the last event in it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Total {
    sum: i64,
    offset: i64,
}

struct Totals;

impl Pipeline for Totals {
    type Config = serde_json::Value;
    const DESCRIPTION: &'static str = "running totals per key";

    fn open(_config: serde_json::Value, _ctx: &Context<'_>) -> Result<Self, Error> {
        Ok(Totals)
    }

    fn process_event(&mut self, event: &Event<'_>, out: &mut Output<'_>) -> Result<(), EventError> {
        let amount: i64 = std::str::from_utf8(event.payload())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| EventError::invalid("not a number"))?;
        let key = event.key().unwrap_or_default();
        let mut store = out.store("totals", event.topic(), event.partition());
        let mut total: Total = store.get_json(key)?.unwrap_or(Total { sum: 0, offset: -1 });
        if event.offset() < total.offset {
            return Ok(()); // a replay; a later event of this key comes too
        }
        if event.offset() > total.offset {
            total.sum += amount;
            total.offset = event.offset();
            store.put_json(key, &total)?;
        }
        out.emit(
            Record::to("totals")
                .key(key)
                .value(total.sum.to_string().as_bytes()),
        )?;
        Ok(())
    }
}

fn values(outcome: &sluice_plugin_api::testing::Outcome) -> Vec<(String, String)> {
    outcome
        .to("totals")
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(),
                r.text().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_replay_after_a_crash_counts_once_and_emits_each_keys_last_value_again() {
    let mut h = Harness::<Totals>::open(json!({}))
        .unwrap()
        .with_stores(&["totals"]);
    let committed = [TestEvent::new("1").key("a").offset(0)];
    h.process(&committed).unwrap();
    h.flush().unwrap();
    h.committed("test", 0, 1).unwrap();
    let batch = [
        TestEvent::new("5").key("a").offset(1),
        TestEvent::new("7").key("a").offset(2),
        TestEvent::new("2").key("b").offset(3),
    ];
    let first = h.process(&batch).unwrap();
    assert_eq!(
        values(&first),
        [
            ("a".into(), "6".into()),
            ("a".into(), "13".into()),
            ("b".into(), "2".into())
        ]
    );
    h.restart().unwrap(); // killed before offsets 1 to 3 were committed
    let again = h.process(&batch).unwrap();
    assert_eq!(
        values(&again),
        [("a".into(), "13".into()), ("b".into(), "2".into())],
        "each key's last value again, nothing counted twice"
    );
    let after = h.process(&[TestEvent::new("10").key("a")]).unwrap();
    assert_eq!(values(&after), [("a".into(), "23".into())]);
}
