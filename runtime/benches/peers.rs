//! Sluice against Kafka Streams and a tuned raw rdkafka loop (`common::tuned_loop`: commits what
//! delivery reports confirm, no stop-and-wait; the floor) on the same broker (Apache Kafka, one KRaft node on 127.0.0.1),
//! with the same input, in one run: Kafka -> passthrough -> Kafka, at least once. Rounds
//! alternate (raw loop, Kafka Streams, Sluice), each with a fresh output topic and group. A
//! round's rate and CPU time are measured over its steady state: from the moment a third of the
//! input is in its output topic to the last record (start-up, group join and the JVM's warm-up
//! left out); the CPU time is every thread's (for the JVM, its JIT compiler and garbage
//! collector too). Peak RSS is the process's `VmHWM` at the end of the round. The report gives
//! medians and Sluice's ratios.
//!
//! Kafka Streams is `benches/streams` (a Maven project, built by `make bench`): its
//! `passthrough` copies each record with byte-array serdes, two stream threads (Sluice runs two
//! workers on this 2-core machine), `acks=all` and idempotence like Sluice's outputs.
//!
//! Run: `make bench` (or build the peer with
//! `mvn -q -f runtime/benches/streams/pom.xml package dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=target/libs`,
//! then `cargo build --release -p passthrough -p sluice-cli && cargo bench -p sluice-runtime --bench peers`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{cpu_seconds, median, output_count, run_spec, tuned_loop};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use sluice_tests::{Broker, plugin, root, write_spec};

const EVENTS: usize = 600_000;
const PARTITIONS: i32 = 12;
const ROUNDS: usize = 3;

/// Peak resident set size (MB) of `pid` so far (`VmHWM`).
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Waits until `topic` holds every event; the rate (events/s) and the CPU seconds `pid` spent
/// per million events from the moment it held a third of them.
fn steady(consumer: &BaseConsumer, topic: &str, pid: u32) -> (f64, f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let mut from: Option<(std::time::Instant, i64, f64)> = None;
    loop {
        let n = output_count(consumer, topic, PARTITIONS);
        if n >= (EVENTS / 3) as i64 && from.is_none() {
            from = Some((std::time::Instant::now(), n, cpu_seconds(pid)));
        }
        if n >= EVENTS as i64 {
            let (at, n0, cpu0) = from.unwrap();
            let events = (n - n0).max(1) as f64;
            return (
                events / at.elapsed().as_secs_f64(),
                (cpu_seconds(pid) - cpu0) / (events / 1e6),
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{topic}: only {n} of {EVENTS} records after 600 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Kafka Streams' passthrough on `input` -> `output`.
fn streams(dir: &Path, broker: &str, input: &str, output: &str, app: &str) -> Child {
    let classpath = format!("{0}/target/classes:{0}/target/libs/*", dir.display());
    Command::new("java")
        .args([
            "-cp",
            &classpath,
            "dev.sluice.bench.StreamsPeer",
            "passthrough",
        ])
        .args([broker, input, output, app, "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("java (make bench installs it)")
}

/// Stops `child` (SIGTERM) after reading its peak RSS; returns that.
fn stop(mut child: Child) -> f64 {
    let rss = peak_rss_mb(child.id());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    rss
}

/// The tuned raw loop in a process of its own: this benchmark's binary, asked through the
/// environment.
fn raw(broker: &str, input: &str, output: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env("PEERS_TUNED_LOOP", format!("{broker} {input} {output}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn main() {
    if let Ok(args) = std::env::var("PEERS_TUNED_LOOP") {
        let args: Vec<&str> = args.split(' ').collect();
        tuned_loop(args[0], args[1], args[2], args[2]);
        return;
    }
    let peer = root().join("runtime/benches/streams");
    assert!(
        peer.join("target/classes/dev/sluice/bench/StreamsPeer.class")
            .exists(),
        "{}: not built: run `make bench`",
        peer.display()
    );
    let broker = Broker::start();
    let input = "peers-in";
    broker.create_topic(input, PARTITIONS as u32);
    // JSON events of about 200 bytes (the value) with 1,000 keys.
    broker.produce(input, EVENTS, 0, &["--keys", "1000", "--size", "150"]);
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let sluice = plugin("passthrough").parent().unwrap().join("sluice");
    let dir = tempfile::tempdir().unwrap();

    let names = ["tuned raw loop", "Kafka Streams 4.1.1", "Sluice"];
    // Per peer, per round: events/s, CPU-s per M events, peak RSS (MB).
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); names.len()];
    for round in 0..ROUNDS {
        for (i, name) in names.iter().enumerate() {
            let out = format!("peers-{i}-{round}");
            broker.create_topic(&out, PARTITIONS as u32);
            let child = if i == 0 {
                raw(&broker.addr, input, &out)
            } else if i == 1 {
                streams(&peer, &broker.addr, input, &out, &out)
            } else {
                let spec = write_spec(
                    dir.path(),
                    &format!(
                        "name: bench\nadmin:\n  listen: 127.0.0.1:0\nplugin:\n  path: {}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{input}]\n    group-id: {out}\noutputs:\n  out:\n    kafka: {{topic: {out}}}\n",
                        plugin("passthrough").display(),
                        broker.addr
                    ),
                );
                run_spec(&sluice, &spec)
            };
            let (rate, cpu) = steady(&watcher, &out, child.id());
            let rss = stop(child);
            println!(
                "round {round}: {name}: {rate:.0} ev/s, {cpu:.2} CPU-s per M events, peak RSS {rss:.0} MB"
            );
            results[i].push((rate, cpu, rss));
        }
    }
    let med = |i: usize, f: fn(&(f64, f64, f64)) -> f64| {
        median(&results[i].iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "Kafka -> passthrough -> Kafka, at least once, {EVENTS} events of ~200 B, {PARTITIONS} partitions, steady state (the last two thirds), median of {ROUNDS}"
    );
    println!(
        "{:>20} {:>12} {:>16} {:>14} {:>10}",
        "", "events/s", "CPU-s/M events", "events/CPU-s", "peak RSS"
    );
    for (i, name) in names.iter().enumerate() {
        let cpu = med(i, |r| r.1);
        println!(
            "{name:>20} {:>12.0} {cpu:>16.2} {:>14.0} {:>7.0} MB",
            med(i, |r| r.0),
            1e6 / cpu,
            med(i, |r| r.2)
        );
    }
    let ratio = |a: usize, b: usize, f: fn(&(f64, f64, f64)) -> f64| med(a, f) / med(b, f);
    println!(
        "Sluice / Kafka Streams: throughput {:.2}x, events per CPU-second {:.2}x, peak RSS {:.2}x",
        ratio(2, 1, |r| r.0),
        ratio(1, 2, |r| r.1),
        ratio(2, 1, |r| r.2)
    );
    println!(
        "Sluice / tuned raw loop: throughput {:.2}x, CPU per event {:.2}x, peak RSS {:.2}x",
        ratio(2, 0, |r| r.0),
        ratio(2, 0, |r| r.1),
        ratio(2, 0, |r| r.2)
    );
}
