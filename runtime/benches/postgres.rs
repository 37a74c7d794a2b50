//! Rows/s through Sluice's PostgreSQL sink against `COPY` of the same rows with psql, on the
//! same server (started by the benchmark on 127.0.0.1), in one run.
//!
//! Each round writes the same N rows three ways into fresh tables: psql `\copy` from a CSV file
//! (the reference), the sink in `mode: insert` (records -> rows -> batches -> `COPY` inside a
//! transaction per batch), and the sink in `mode: upsert` (multi-row `INSERT .. ON CONFLICT DO
//! UPDATE` with bind parameters). The sink is driven through its public API, from JSON record
//! values to committed and acknowledged rows; Kafka is left out (the Kafka benchmark covers it).
//!
//! Run: `make bench` (or `cargo bench -p sluice-runtime --bench postgres`).

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_plugin_api::abi::Record;
use sluice_runtime::config::TableOutputSpec;
use sluice_runtime::offsets::{OffsetTracker, TopicPartition};
use sluice_runtime::sink::kafka::{Ack, Units};
use sluice_runtime::sink::table::{Dialect, SinkContext, TableSink};
use sluice_tests::db::Postgres;

const ROWS: usize = 200_000;
const ROUNDS: usize = 3;

fn value(i: usize) -> String {
    format!(
        r#"{{"seq": {i}, "key": "k{}", "city": "city-{}", "fare": {}.25}}"#,
        i % 1000,
        i % 37,
        i % 500
    )
}

fn sink_rate(pg: &Postgres, table: &str, mode: &str, values: &[String]) -> f64 {
    // Large batches: the setting a bulk-loading pipeline would use (BENCHMARKS.md has 2000 too).
    let spec: TableOutputSpec = serde_yaml_ng::from_str(&format!(
        "url: {}\ntable: {table}\ncolumns: {{seq: bigint, key: text, city: text, fare: double}}\nkey: [seq]\nmode: {mode}\nbatch-size: 10000\nlinger-ms: 50\n",
        pg.url
    ))
    .unwrap();
    let tp = TopicPartition::new("bench", 0);
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let unit = {
        let mut t = tracker.lock().unwrap();
        t.assign(tp.clone());
        let unit = t.begin(&tp, values.len() as i64 - 1).unwrap();
        t.emitted(&tp, unit, values.len() as u32);
        unit
    };
    let failure = sluice_runtime::fatal::Fatal::default();
    let ctx = SinkContext {
        tracker: tracker.clone(),
        failure: failure.clone(),
        on_rejection: Default::default(),
        dead_letters: None,
        telemetry: Arc::new(sluice_runtime::telemetry::Telemetry::new(
            "bench",
            true,
            Duration::from_secs(60),
        )),
        group: "bench".into(),
    };
    let sink = TableSink::start("bench", Dialect::Postgres, &spec, ctx).unwrap();
    let ack = Arc::new(Ack::new(Units::One(tp.clone(), unit), None));
    let started = Instant::now();
    for v in values {
        let record = Record::to("out").value(v.as_bytes());
        let row = sink.row(&record).unwrap();
        sink.send(row, &record, ack.clone()).unwrap();
    }
    sink.close(); // every queued row written and committed
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(failure.get(), None);
    let mut t = tracker.lock().unwrap();
    t.processed(&tp, unit);
    assert_eq!(
        t.committable(&tp),
        Some(values.len() as i64),
        "every row acknowledged"
    );
    values.len() as f64 / elapsed
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let pg = Postgres::start();
    let values: Vec<String> = (0..ROWS).map(value).collect();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    let lines: Vec<String> = (0..ROWS)
        .map(|i| format!("{i},\"k{}\",\"city-{}\",{}.25", i % 1000, i % 37, i % 500))
        .collect();
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();

    let (mut copy, mut insert, mut upsert) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let ddl = |t: &str| {
            pg.sql(&format!(
                "CREATE TABLE {t} (seq bigint PRIMARY KEY, key text, city text, fare double precision)"
            ))
        };
        let t_copy = format!("copy_{round}");
        ddl(&t_copy);
        let started = Instant::now();
        let status = Command::new("psql")
            .args([
                &pg.url,
                "-v",
                "ON_ERROR_STOP=1",
                "-qc",
                &format!("\\copy {t_copy} FROM '{}' (FORMAT csv)", csv.display()),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        copy.push(ROWS as f64 / started.elapsed().as_secs_f64());

        let t_insert = format!("insert_{round}");
        ddl(&t_insert);
        insert.push(sink_rate(&pg, &t_insert, "insert", &values));
        let t_upsert = format!("upsert_{round}");
        ddl(&t_upsert);
        upsert.push(sink_rate(&pg, &t_upsert, "upsert", &values));
        for t in [&t_copy, &t_insert, &t_upsert] {
            assert_eq!(
                pg.sql(&format!("SELECT COUNT(*) FROM {t}")).trim(),
                ROWS.to_string()
            );
        }
        println!(
            "round {round}: psql COPY {:.0} rows/s, sink insert {:.0} rows/s, sink upsert {:.0} rows/s",
            copy[round], insert[round], upsert[round]
        );
    }
    let (copy, insert, upsert) = (median(copy), median(insert), median(upsert));
    println!("PostgreSQL, {ROWS} rows x 4 columns, median of {ROUNDS}");
    println!("{:>28} {:>12} {:>8}", "", "rows/s", "vs COPY");
    println!("{:>28} {copy:>12.0} {:>8}", "psql \\copy (CSV)", "1.000x");
    println!(
        "{:>28} {insert:>12.0} {:>7.3}x",
        "sink, insert (COPY path)",
        insert / copy
    );
    println!(
        "{:>28} {upsert:>12.0} {:>7.3}x",
        "sink, upsert (INSERT..ON CONFLICT)",
        upsert / copy
    );
}
