//! State stores, in one run:
//!
//! - **The cost of a state write**, where the broker is not the bottleneck: librdkafka's mock
//!   cluster in this process, Kafka -> passthrough -> Kafka through `sluice run`, without state
//!   and with one state write per event (`state_store`: the event's value under its key, into
//!   redb and the changelog topic), rounds alternating. Reported: events/s and the CPU seconds
//!   per million events `sluice` spent between its first and last output record
//!   (`/proc/PID/stat`); their difference is what a state write costs per event.
//! - **Restore**: each stateful round's changelog restored into an empty directory by `sluice
//!   state dump` (what a pod does on assignment with no local copy), timed by the restore's own
//!   log line: records/s and MB/s read from the changelog and applied to redb; on the mock
//!   cluster, and once more on the Apache Kafka broker (one KRaft node on 127.0.0.1).
//!
//! Run: `make bench` (or `cargo build --release -p passthrough -p sluice-cli && cargo bench -p sluice-runtime --bench state`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{median, run_spec, watch};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use sluice_tests::{Broker, plugin, write_spec};

const EVENTS: usize = 100_000;
const KEYS: usize = 10_000;
const PARTITIONS: i32 = 4;
const ROUNDS: usize = 5;
/// The mock cluster answers a fetch only when this wait runs out (see `cost.rs`).
const FETCH_WAIT_MS: &str = "5";

/// A spec reading `input` into a topic named `name` (also the group), with `config` and `state`.
fn spec(dir: &Path, bootstrap: &str, input: &str, name: &str, state: bool) -> PathBuf {
    let run_dir = dir.join(name);
    std::fs::create_dir_all(&run_dir).unwrap();
    let (config, state) = if state {
        ("{state_store: last}", "state:\n  stores: [last]\n")
    } else {
        ("{}", "")
    };
    write_spec(
        &run_dir,
        &format!(
            "name: bench\nplugin:\n  path: {}\n  config: {config}\nsource:\n  kafka:\n    bootstrap-servers: {bootstrap}\n    topics: [{input}]\n    group-id: {name}\n    properties: {{fetch.wait.max.ms: \"{FETCH_WAIT_MS}\"}}\n{state}outputs:\n  out:\n    kafka: {{topic: {name}}}\n",
            plugin("passthrough").display(),
        ),
    )
}

fn main() {
    let sluice = plugin("passthrough").parent().unwrap().join("sluice");
    let dir = tempfile::tempdir().unwrap();
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let input = "state-in";
    mock.create_topic(input, PARTITIONS, 1).unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "1")
        .create()
        .unwrap();
    for i in 0..EVENTS {
        let key = format!("k{}", i % KEYS);
        let value = format!(r#"{{"seq": {i}, "pad": "{}"}}"#, "x".repeat(80));
        common::send(&producer, BaseRecord::to(input).key(&key).payload(&value));
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();

    let variants = ["stateless", "1 state write per event"];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut restores = Vec::new();
    for round in 0..ROUNDS {
        for (i, _) in variants.iter().enumerate() {
            let name = format!("bench-state-{i}-{round}");
            let stateful = i == 1;
            mock.create_topic(&name, PARTITIONS, 1).unwrap();
            if stateful {
                // The mock cluster cannot create topics on request: the changelog, made here.
                mock.create_topic(&format!("{name}-{input}-last-changelog"), PARTITIONS, 1)
                    .unwrap();
            }
            let spec = spec(dir.path(), &bootstrap, input, &name, stateful);
            let mut child = run_spec(&sluice, &spec);
            let (seconds, cpu_per_m) = watch(&watcher, &name, PARTITIONS, EVENTS, child.id());
            rates[i].push(EVENTS as f64 / seconds);
            cpu[i].push(cpu_per_m);
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            child.wait().unwrap();
            if stateful {
                restores.push(restore(
                    &sluice,
                    &spec,
                    &dir.path().join(format!("fresh-{round}")),
                ));
            }
        }
        println!(
            "round {round}: {}; restore {:.0} records/s",
            variants
                .iter()
                .enumerate()
                .map(|(i, name)| format!(
                    "{name} {:.0} ev/s ({:.2} CPU-s per M events)",
                    rates[i][round], cpu[i][round]
                ))
                .collect::<Vec<_>>()
                .join("; "),
            restores[round].0 / restores[round].2
        );
    }
    println!(
        "\nKafka (mock cluster) -> passthrough -> Kafka, {EVENTS} events ({KEYS} keys, ~100 B values), {PARTITIONS} partitions, median of {ROUNDS}"
    );
    println!(
        "{:>24} {:>12} {:>10} {:>16}",
        "", "events/s", "vs none", "CPU-s/M events"
    );
    let medians: Vec<(f64, f64)> = rates
        .iter()
        .zip(&cpu)
        .map(|(r, c)| (median(r), median(c)))
        .collect();
    for (name, (rate, cpu)) in variants.iter().zip(&medians) {
        println!(
            "{name:>24} {rate:>12.0} {:>9.3}x {cpu:>16.2}",
            rate / medians[0].0
        );
    }
    // CPU-s per million events is µs per event.
    let per_write: Vec<f64> = cpu[1].iter().zip(&cpu[0]).map(|(w, n)| w - n).collect();
    println!(
        "a state write: {:.2} µs of CPU per event (rounds {:?}), CPU per event {:.3}x",
        median(&per_write),
        per_write
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>(),
        medians[1].1 / medians[0].1
    );
    report("mock cluster", &restores);

    // The same restore from the Apache Kafka broker.
    let broker = Broker::start();
    broker.create_topic(input, PARTITIONS as u32);
    broker.produce(
        input,
        EVENTS,
        0,
        &["--keys", &KEYS.to_string(), "--size", "80"],
    );
    let name = "bench-state-kafka";
    broker.create_topic(name, PARTITIONS as u32);
    let spec = spec(dir.path(), &broker.addr, input, name, true);
    let mut child = run_spec(&sluice, &spec);
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    watch(&watcher, name, PARTITIONS, EVENTS, child.id());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let restores: Vec<_> = (0..3)
        .map(|i| restore(&sluice, &spec, &dir.path().join(format!("kafka-fresh-{i}"))))
        .collect();
    report("Apache Kafka broker", &restores);
}

fn report(broker: &str, restores: &[(f64, f64, f64)]) {
    let records = median(&restores.iter().map(|r| r.0 / r.2).collect::<Vec<_>>());
    let mbs = median(&restores.iter().map(|r| r.1 / r.2 / 1e6).collect::<Vec<_>>());
    println!(
        "restore from the changelog into an empty directory ({broker}, median of {}): {records:.0} records/s, {mbs:.1} MB/s ({} records, {:.1} MB each)",
        restores.len(),
        restores[0].0,
        restores[0].1 / 1e6
    );
}

/// `sluice state dump` into an empty `dir`: (records, bytes, seconds) from its restore log lines.
fn restore(
    sluice: &std::path::Path,
    spec: &std::path::Path,
    dir: &std::path::Path,
) -> (f64, f64, f64) {
    let out = Command::new(sluice)
        .args(["state", "dump", "-f"])
        .arg(spec)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut records, mut bytes, mut seconds) = (0.0, 0.0, 0.0f64);
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["message"] == "state: restored" {
            records += v["records"].as_f64().unwrap_or(0.0);
            bytes += v["bytes"].as_f64().unwrap_or(0.0);
            let s: f64 = v["seconds"].as_str().unwrap_or("0").parse().unwrap_or(0.0);
            seconds = seconds.max(s);
        }
    }
    assert!(records > 0.0, "{}", String::from_utf8_lossy(&out.stderr));
    (records, bytes, seconds)
}
