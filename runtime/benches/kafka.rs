//! Kafka -> no-op plugin -> Kafka through `sluice run`, against a raw rdkafka consume -> produce
//! loop written for this benchmark, on the same broker (Apache Kafka, one KRaft node on 127.0.0.1) with the same input,
//! in one run. Rounds alternate (raw, sluice, sluice with metrics off, sluice with one worker,
//! ...), each with a fresh output topic and consumer group; a round's rate is measured from the
//! first record in its output topic to the last (so group-join time is left out of both), and
//! the report gives medians and ratios. Since the broker is the bottleneck, the metrics on/off
//! comparison also reports the CPU time sluice spent per event (`/proc/PID/stat`).
//!
//! The raw loop is what a careful hand-written at-least-once service does: poll, produce
//! (idempotent, acks=all), and every 10,000 events (and when the input goes quiet) flush the
//! producer and commit (`common::raw_loop`).
//!
//! Run: `make bench` (or `cargo build --release -p passthrough -p sluice-cli && cargo bench -p sluice-runtime --bench kafka`).

mod common;

use std::process::Command;

use common::{cpu_seconds, median, raw_loop, run_spec, watch};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use sluice_tests::{Broker, plugin, write_spec};

const EVENTS: usize = 200_000;
const PARTITIONS: i32 = 4;
const ROUNDS: usize = 5;

fn main() {
    let broker = Broker::start();
    let input = "bench-in";
    broker.create_topic(input, PARTITIONS as u32);
    broker.produce(input, EVENTS, 0, &["--keys", "1000", "--size", "60"]);
    let bytes_per_event = r#"{"seq": 123456, "key": "k123", "pad": ""}"#.len() + 60 + 4;
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let sluice = plugin("passthrough").parent().unwrap().join("sluice");
    let dir = tempfile::tempdir().unwrap();

    // Per variant: events/s and CPU seconds per million events, one entry per round.
    let variants: [(&str, &str); 3] = [
        // The default worker count (from the CPU quota), with the admin endpoint and metrics on.
        (
            "sluice",
            "admin:\n  listen: 127.0.0.1:0\n  lag-interval-ms: 1000\n",
        ),
        // The same without the admin endpoint and with the hot-path metrics off.
        ("sluice, metrics off", "admin:\n  metrics: false\n"),
        // One worker, like the raw loop.
        ("sluice, 1 worker", "workers: 1\n"),
    ];
    let mut raw = Vec::new();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..ROUNDS {
        let out_raw = format!("bench-raw-{round}");
        broker.create_topic(&out_raw, PARTITIONS as u32);

        let (addr, input_name, out, group) = (
            broker.addr.clone(),
            input.to_owned(),
            out_raw.clone(),
            format!("raw-{round}"),
        );
        let worker = std::thread::spawn(move || {
            raw_loop(&addr, &input_name, &out, &group, Some(EVENTS), &[]);
        });
        raw.push(
            EVENTS as f64 / watch(&watcher, &out_raw, PARTITIONS, EVENTS, std::process::id()).0,
        );
        worker.join().unwrap();

        for (i, (_, extra)) in variants.iter().enumerate() {
            let out = format!("bench-sluice-{i}-{round}");
            broker.create_topic(&out, PARTITIONS as u32);
            let spec = write_spec(
                dir.path(),
                &format!(
                    "name: bench\n{extra}plugin:\n  path: {}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{input}]\n    group-id: {out}\noutputs:\n  out:\n    kafka: {{topic: {out}}}\n",
                    plugin("passthrough").display(),
                    broker.addr
                ),
            );
            let mut child = run_spec(&sluice, &spec);
            rates[i].push(EVENTS as f64 / watch(&watcher, &out, PARTITIONS, EVENTS, child.id()).0);
            cpu[i].push(cpu_seconds(child.id()) / (EVENTS as f64 / 1e6));
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            child.wait().unwrap();
        }
        println!(
            "round {round}: raw {:.0} ev/s; {}",
            raw[round],
            variants
                .iter()
                .enumerate()
                .map(|(i, (name, _))| format!(
                    "{name} {:.0} ev/s ({:.2} CPU-s per M events)",
                    rates[i][round], cpu[i][round]
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let raw = median(&raw);
    let mb = |evs: f64| evs * bytes_per_event as f64 / 1e6;
    println!(
        "Kafka -> passthrough -> Kafka, {EVENTS} events x ~{bytes_per_event} B (key + value), {PARTITIONS} partitions, median of {ROUNDS}"
    );
    println!(
        "{:>20} {:>12} {:>8} {:>10} {:>16}",
        "", "events/s", "MB/s", "vs raw", "CPU-s/M events"
    );
    println!(
        "{:>20} {raw:>12.0} {:>8.1} {:>10}",
        "raw rdkafka",
        mb(raw),
        "1.000x"
    );
    let medians: Vec<(f64, f64)> = rates
        .iter()
        .zip(&cpu)
        .map(|(r, c)| (median(r), median(c)))
        .collect();
    for ((name, _), (rate, cpu)) in variants.iter().zip(&medians) {
        println!(
            "{name:>20} {rate:>12.0} {:>8.1} {:>9.3}x {cpu:>16.2}",
            mb(*rate),
            rate / raw
        );
    }
    // Metrics on vs off, round by round (the same broker state), then the median ratio.
    let throughput: Vec<f64> = rates[0]
        .iter()
        .zip(&rates[1])
        .map(|(on, off)| on / off)
        .collect();
    let cpu_ratio: Vec<f64> = cpu[0]
        .iter()
        .zip(&cpu[1])
        .map(|(on, off)| on / off)
        .collect();
    println!(
        "metrics on / off: throughput {:.3}x (rounds {:?}), CPU per event {:.3}x (rounds {:?})",
        median(&throughput),
        throughput
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>(),
        median(&cpu_ratio),
        cpu_ratio
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>(),
    );
}
