//! Sluice against Kafka Streams on the same broker (Apache Kafka, one KRaft node on 127.0.0.1),
//! with the same input, in one run, at least once:
//! - **passthrough** (Kafka -> Kafka, every record copied), with a tuned raw rdkafka loop as the
//!   floor (`common::tuned_loop`: commits what delivery reports confirm, no stop-and-wait), and
//!   Flink besides Kafka Streams;
//! - **filter-and-enrich** (the `filter-and-enrich` plugin with `min_fare: 5` and
//!   `drop_statuses: [cancelled]`, and the same logic in Kafka Streams): JSON bookings in, the
//!   kept ones enriched out;
//! - **latency**: the passthrough at fixed input rates (5,000 and 50,000 events/s), p50 and p99
//!   from the harness's send to its read of the output record, and the CPU each peer spends per
//!   event at that rate (`common::FixedRate`);
//! - **windowed-count** (stateful): counts per key in 1-minute tumbling windows (the
//!   `windowed-count` plugin with its redb store and changelog; Kafka Streams' `count()` with its
//!   RocksDB window store and changelog), then a SIGKILL, the local state removed, and the restore
//!   from the changelog timed as each peer reports it.
//!
//! Rounds alternate between the peers, each with a fresh output topic and group. A round's rate
//! (input events/s) and CPU time are measured over its steady state: from the moment a third of
//! its output is in its output topic (a third of its input committed, for the stateful job) to
//! the end (start-up, group join and the JVM's warm-up left out); the CPU time is every thread's
//! (for the JVM, its JIT compiler and garbage collector too). Peak RSS is the process's `VmHWM`
//! at the end of the round. The report gives medians and Sluice's ratios.
//!
//! Flink 2.2.0 (`benches/flink`, a Maven project built by `make bench`) runs the passthrough in a
//! local MiniCluster in one JVM, parallelism 2, at least once: a checkpoint every second flushes
//! its Kafka sink and commits its offsets (flink-connector-kafka 5.0.0-2.2).
//!
//! Kafka Streams is `benches/streams` (a Maven project, built by `make bench`): byte-array
//! serdes, two stream threads (Sluice runs two workers on this 2-core machine), `acks=all` and
//! idempotence like Sluice's outputs, its other settings its defaults (its producer's
//! `linger.ms` is 100); filter-and-enrich parses and writes JSON with Jackson.
//!
//! Run: `make bench` (or build the peers with
//! `mvn -q -f runtime/benches/streams/pom.xml package dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=target/libs`
//! and the same for `runtime/benches/flink/pom.xml`,
//! then `cargo build --release -p passthrough -p filter-and-enrich -p windowed-count -p sluice-cli && cargo bench -p sluice-runtime --bench peers`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{
    FixedRate, measure_from_a_third, median, output_count, peak_rss_mb, percentile, run_spec,
    tuned_loop,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use sluice_tests::{Broker, kafka_tool, plugin, root, write_spec};

const EVENTS: usize = 600_000;
const FLINK: &str = "Flink 2.2.0";
/// Input events of the stateful job (long enough for a steady state between one-second commits).
const STATEFUL_EVENTS: usize = 2_000_000;
const PARTITIONS: i32 = 12;
/// Whether `part` of the benchmark runs: all of them, or those `PEERS_ONLY` lists (comma
/// separated: passthrough, filter-and-enrich, latency, windowed-count).
fn wanted(part: &str) -> bool {
    std::env::var("PEERS_ONLY").map_or(true, |only| only.split(',').any(|p| p == part))
}

/// Rounds per peer (`PEERS_ROUNDS` for a quick look), at full speed and at each fixed rate.
fn rounds() -> usize {
    std::env::var("PEERS_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// Waits until `topic` holds the `expected` records the job's `EVENTS` input events give; the
/// rate (input events/s) and the CPU seconds `pid` spent per million input events from the
/// moment it held a third of them.
fn steady(consumer: &BaseConsumer, topic: &str, pid: u32, expected: usize) -> (f64, f64) {
    let per_output = EVENTS as f64 / expected as f64;
    let (rate, cpu) = measure_from_a_third(pid, expected, topic, || {
        output_count(consumer, topic, PARTITIONS)
    });
    (rate * per_output, cpu / per_output)
}

/// Kafka Streams' `job` on `input` -> `output`.
fn streams(dir: &Path, job: &str, broker: &str, input: &str, output: &str) -> Child {
    streams_command(dir, job, broker, input, output)
        .stdout(Stdio::null())
        .spawn()
        .expect("java (make bench installs it)")
}

/// Flink's passthrough in a local MiniCluster (`benches/flink`), parallelism 2.
fn flink(dir: &Path, broker: &str, input: &str, output: &str) -> Child {
    let classpath = format!("{0}/target/classes:{0}/target/libs/*", dir.display());
    Command::new("java")
        .args([
            "-cp",
            &classpath,
            "dev.sluice.bench.FlinkPeer",
            "passthrough",
        ])
        .args([broker, input, output, output, "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("java (make bench installs it)")
}

/// The Kafka Streams peer's command line (stderr discarded).
fn streams_command(dir: &Path, job: &str, broker: &str, input: &str, output: &str) -> Command {
    let classpath = format!("{0}/target/classes:{0}/target/libs/*", dir.display());
    let mut command = Command::new("java");
    command
        .args(["-cp", &classpath, "dev.sluice.bench.StreamsPeer", job])
        .args([broker, input, output, output, "2"])
        .stderr(Stdio::null());
    command
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
    let flink_peer = root().join("runtime/benches/flink");
    for built in [
        peer.join("target/classes/dev/sluice/bench/StreamsPeer.class"),
        flink_peer.join("target/classes/dev/sluice/bench/FlinkPeer.class"),
    ] {
        assert!(
            built.exists(),
            "{}: not built: run `make bench`",
            built.display()
        );
    }
    let broker = Broker::start();
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let peers = Peers {
        broker: &broker.addr,
        streams: &peer,
        flink: &flink_peer,
        dir: dir.path(),
    };
    // passthrough: JSON events of about 200 bytes (the value) with 1,000 keys.
    broker.create_topic("peers-in", PARTITIONS as u32);
    broker.produce("peers-in", EVENTS, 0, &["--keys", "1000", "--size", "150"]);
    // filter-and-enrich: bookings of about 130 bytes, a tenth cancelled and some below the
    // minimum fare (dropped).
    let (bookings, kept) = bookings(dir.path());
    broker.create_topic("bookings", PARTITIONS as u32);
    kafka_tool(&[
        "produce-file",
        "--broker",
        &broker.addr,
        "--topic",
        "bookings",
        "--file",
        bookings.to_str().unwrap(),
        "--key-field",
        "booking_id",
    ]);
    let jobs: [(&str, &str, usize, &str); 2] = [
        (
            "passthrough",
            "peers-in",
            EVENTS,
            "plugin:\n  path: PASSTHROUGH\n",
        ),
        (
            "filter-and-enrich",
            "bookings",
            kept,
            "plugin:\n  path: FILTER\n  config: {min_fare: 5, drop_statuses: [cancelled]}\n",
        ),
    ];
    for (job, input, expected, plugin_spec) in jobs {
        if !wanted(job) {
            continue;
        }
        let plugin_spec = plugin_spec
            .replace("PASSTHROUGH", &plugin("passthrough").display().to_string())
            .replace("FILTER", &plugin("filter-and-enrich").display().to_string());
        // The raw loop is the floor of the passthrough only.
        let names: &[&str] = if job == "passthrough" {
            &["tuned raw loop", "Kafka Streams 4.1.1", FLINK, "Sluice"]
        } else {
            &["Kafka Streams 4.1.1", "Sluice"]
        };
        // Per peer, per round: input events/s, CPU-s per M input events, peak RSS (MB).
        let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); names.len()];
        for round in 0..rounds() {
            for (i, name) in names.iter().enumerate() {
                let out = format!("peers-{job}-{i}-{round}");
                broker.create_topic(&out, PARTITIONS as u32);
                let child = peers.start(name, job, input, &out, &plugin_spec);
                let (rate, cpu) = steady(&watcher, &out, child.id(), expected);
                let rss = stop(child);
                println!(
                    "{job} round {round}: {name}: {rate:.0} ev/s, {cpu:.2} CPU-s per M events, peak RSS {rss:.0} MB"
                );
                results[i].push((rate, cpu, rss));
            }
        }
        report(job, expected, names, &results);
    }
    if wanted("latency") {
        latency(&broker, &peers);
    }
    if wanted("windowed-count") {
        stateful(&broker, &peers);
    }
}

/// The stateful job: records keyed by one of 1,000 drivers counted per key in 1-minute tumbling
/// windows of their record time (the `windowed-count` plugin: a redb store and its changelog;
/// Kafka Streams: a RocksDB window store and its changelog), both committing every second.
/// Progress is the group's committed offsets (the outputs differ: Sluice emits a window's count
/// when it closes, Kafka Streams' record cache on commit). Each round then kills the peer with
/// SIGKILL, removes its local state and starts it again: the restore from the changelog,
/// records/s as the peer itself reports it.
fn stateful(broker: &Broker, peers: &Peers<'_>) {
    const INPUT: &str = "windowed-in";
    broker.create_topic(INPUT, PARTITIONS as u32);
    produce_timed(&broker.addr, INPUT);
    let names = ["Kafka Streams 4.1.1", "Sluice"];
    // Per peer, per round: input events/s, CPU-s per M events, peak RSS (MB), restore records/s.
    let mut results: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); names.len()];
    for round in 0..rounds() {
        for (i, name) in names.iter().enumerate() {
            let out = format!("peers-windowed-{i}-{round}");
            broker.create_topic(&out, PARTITIONS as u32);
            let state = peers.dir.join(&out);
            let child = stateful_peer(name, peers, INPUT, &out, &state);
            let (rate, cpu) = committed_steady(&broker.addr, &out, INPUT, child.id());
            let rss = peak_rss_mb(child.id());
            let mut child = child;
            child.kill().unwrap();
            child.wait().unwrap();
            std::fs::remove_dir_all(&state).unwrap();
            let (records, seconds, again) = restore(name, peers, INPUT, &out, &state);
            stop(again);
            let restore_rate = records / seconds;
            println!(
                "windowed-count round {round}: {name}: {rate:.0} ev/s, {cpu:.2} CPU-s per M events, peak RSS {rss:.0} MB; after kill -9, restored {records:.0} records in {seconds:.2} s: {restore_rate:.0} records/s"
            );
            results[i].push((rate, cpu, rss, restore_rate));
        }
    }
    let med = |i: usize, f: fn(&(f64, f64, f64, f64)) -> f64| {
        median(&results[i].iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "Kafka -> windowed-count (1-minute tumbling, per key) -> Kafka, at least once, {STATEFUL_EVENTS} events in, {PARTITIONS} partitions, steady state (the last two thirds committed), median of {}",
        rounds()
    );
    println!(
        "{:>20} {:>12} {:>16} {:>14} {:>10} {:>18}",
        "", "events/s", "CPU-s/M events", "events/CPU-s", "peak RSS", "restore records/s"
    );
    for (i, name) in names.iter().enumerate() {
        let cpu = med(i, |r| r.1);
        println!(
            "{name:>20} {:>12.0} {cpu:>16.2} {:>14.0} {:>7.0} MB {:>18.0}",
            med(i, |r| r.0),
            1e6 / cpu,
            med(i, |r| r.2),
            med(i, |r| r.3)
        );
    }
    let (streams, sluice) = (0, 1);
    println!(
        "Sluice / Kafka Streams (stateful): throughput {:.2}x, events per CPU-second {:.2}x, peak RSS {:.2}x, restore rate {:.2}x",
        med(sluice, |r| r.0) / med(streams, |r| r.0),
        med(streams, |r| r.1) / med(sluice, |r| r.1),
        med(sluice, |r| r.2) / med(streams, |r| r.2),
        med(sluice, |r| r.3) / med(streams, |r| r.3)
    );
}

/// `STATEFUL_EVENTS` records keyed by one of 1,000 drivers, 3 ms of record time apart (100
/// minutes in all, ending now: the changelogs' retention counts from their records' times),
/// values of about 130 bytes.
fn produce_timed(broker: &str, topic: &str) {
    use rdkafka::producer::{BaseRecord, Producer};
    let producer = common::timed_producer(broker);
    let now_ms = (common::now_us() / 1000) as i64;
    let start_ms = now_ms - STATEFUL_EVENTS as i64 * 3;
    for i in 0..STATEFUL_EVENTS {
        let key = format!("d{}", i % 1000);
        let value = format!(
            r#"{{"driver":"{key}","booking_id":"b-{i}","fare":{:.1},"pad":"{}"}}"#,
            (i * 7 % 600) as f64 / 10.0,
            "x".repeat(60)
        );
        common::send(
            &producer,
            BaseRecord::to(topic)
                .key(&key)
                .payload(&value)
                .timestamp(start_ms + i as i64 * 3),
        );
    }
    producer.flush(std::time::Duration::from_secs(60)).unwrap();
}

/// Starts the stateful job of peer `name` with its local state in `state`.
fn stateful_peer(name: &str, peers: &Peers<'_>, input: &str, out: &str, state: &Path) -> Child {
    stateful_command(name, peers, input, out, state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stateful_command(
    name: &str,
    peers: &Peers<'_>,
    input: &str,
    out: &str,
    state: &Path,
) -> Command {
    if name == "Sluice" {
        let spec = write_spec(
            peers.dir,
            &format!(
                "name: bench\nadmin:\n  listen: 127.0.0.1:0\nplugin:\n  path: {}\n  config: {{key_field: driver, window_ms: 60000}}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{input}]\n    group-id: {out}\nstate:\n  stores: [windows]\n  dir: {}\noutputs:\n  counts:\n    kafka: {{topic: {out}}}\n",
                plugin("windowed-count").display(),
                peers.broker,
                state.display()
            ),
        );
        let mut command = Command::new(plugin("passthrough").parent().unwrap().join("sluice"));
        command.args(["run", "-f"]).arg(spec);
        command
    } else {
        let mut command =
            streams_command(peers.streams, "windowed-count", peers.broker, input, out);
        command.arg(state);
        command
    }
}

/// Input events committed by `group` on `topic` (the sum over its partitions).
fn committed(consumer: &BaseConsumer, topic: &str) -> i64 {
    use rdkafka::consumer::Consumer;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, std::time::Duration::from_secs(10))
        .map(|c| {
            c.elements()
                .iter()
                .filter_map(|e| e.offset().to_raw())
                .filter(|o| *o > 0)
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until `group` has committed every input event; the rate (events/s) and the CPU seconds
/// `pid` spent per million events from the moment a third were committed.
fn committed_steady(broker: &str, group: &str, topic: &str, pid: u32) -> (f64, f64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .create()
        .unwrap();
    measure_from_a_third(pid, STATEFUL_EVENTS, group, || committed(&consumer, topic))
}

/// Starts peer `name` again on an empty state directory and waits for its restore of every
/// partition: the records restored, the seconds it took, and the running peer.
fn restore(
    name: &str,
    peers: &Peers<'_>,
    input: &str,
    out: &str,
    state: &Path,
) -> (f64, f64, Child) {
    use std::io::BufRead;
    let mut command = stateful_command(name, peers, input, out, state);
    let mut child = if name == "Sluice" {
        command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    } else {
        command.stdout(Stdio::piped()).spawn().unwrap()
    };
    let pipe: Box<dyn std::io::Read + Send> = match child.stderr.take() {
        Some(stderr) => Box::new(stderr),
        None => Box::new(child.stdout.take().unwrap()),
    };
    // Lines are read (and the pipe drained) until the peer exits.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut records, mut seconds, mut partitions) = (0.0, 0.0f64, 0);
    while partitions < PARTITIONS {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(300))
            .unwrap_or_else(|_| panic!("{name}: no restore of every partition in 300 s"));
        if let Some(rest) = line.strip_prefix("restored ") {
            // Kafka Streams: "restored N records in MS ms (P partitions)", cumulative.
            let words: Vec<&str> = rest.split(' ').collect();
            records = words[0].parse().unwrap();
            seconds = words[3].parse::<f64>().unwrap() / 1000.0;
            partitions = words[5].trim_start_matches('(').parse().unwrap();
        } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            // Sluice: one "state: restored" line per partition, the restore of all at once.
            if v["message"] == "state: restored" || v["fields"]["message"] == "state: restored" {
                let f = if v["message"].is_string() {
                    &v
                } else {
                    &v["fields"]
                };
                records += f["records"].as_f64().unwrap_or(0.0);
                let s: f64 = f["seconds"].as_str().unwrap_or("0").parse().unwrap_or(0.0);
                seconds = seconds.max(s);
                partitions += 1;
            }
        }
    }
    (records, seconds.max(1e-3), child)
}

/// The passthrough at fixed input rates: per peer, p50 and p99 end-to-end latency and the CPU
/// it spends per event, each peer in a fresh input and output topic.
fn latency(broker: &Broker, peers: &Peers<'_>) {
    let names = ["tuned raw loop", "Kafka Streams 4.1.1", FLINK, "Sluice"];
    let producer = common::timed_producer(&broker.addr);
    let plugin_spec = format!("plugin:\n  path: {}\n", plugin("passthrough").display());
    for (rate, seconds) in [(5_000, 10), (50_000, 6)] {
        let round = FixedRate {
            rate,
            seconds,
            partitions: PARTITIONS,
            fetch_wait_ms: None,
            // The value is about 200 bytes with its JSON.
            pad: 150,
        };
        // Per peer, per round: p50 ms, p99 ms, CPU-s per M events.
        let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); names.len()];
        for r in 0..rounds() {
            for (i, name) in names.iter().enumerate() {
                let (input, out) = (
                    format!("lat-in-{rate}-{i}-{r}"),
                    format!("lat-out-{rate}-{i}-{r}"),
                );
                broker.create_topic(&input, PARTITIONS as u32);
                broker.create_topic(&out, PARTITIONS as u32);
                let child = peers.start(name, "passthrough", &input, &out, &plugin_spec);
                let (latencies, cpu) =
                    round.measure(&broker.addr, &producer, &input, &out, child.id());
                stop(child);
                let per_m = cpu / (latencies.len() as f64 / 1e6);
                let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
                println!(
                    "passthrough at {rate} ev/s, round {r}: {name}: p50 {p50:.1} ms, p99 {p99:.1} ms, {per_m:.2} CPU-s per M events"
                );
                results[i].push((p50, p99, per_m));
            }
        }
        let med = |i: usize, f: fn(&(f64, f64, f64)) -> f64| {
            median(&results[i].iter().map(f).collect::<Vec<_>>())
        };
        println!(
            "Kafka -> passthrough -> Kafka at {rate} events/s for {seconds} s, median of {}",
            rounds()
        );
        println!(
            "{:>20} {:>10} {:>10} {:>16}",
            "", "p50 ms", "p99 ms", "CPU-s/M events"
        );
        for (i, name) in names.iter().enumerate() {
            println!(
                "{name:>20} {:>10.1} {:>10.1} {:>16.2}",
                med(i, |r| r.0),
                med(i, |r| r.1),
                med(i, |r| r.2)
            );
        }
        let (raw, streams, flink, sluice) = (0, 1, 2, 3);
        let best_peer_p99 = med(raw, |r| r.1)
            .min(med(streams, |r| r.1))
            .min(med(flink, |r| r.1));
        println!(
            "Sluice at {rate}/s: p99 {:.2}x the best peer's, CPU per event {:.2}x the tuned raw loop's, {:.2}x Kafka Streams' events per CPU-second",
            med(sluice, |r| r.1) / best_peer_p99,
            med(sluice, |r| r.2) / med(raw, |r| r.2),
            med(streams, |r| r.2) / med(sluice, |r| r.2)
        );
    }
}

/// Where the peers run: the broker, the Kafka Streams project, a directory for Sluice's specs.
struct Peers<'a> {
    broker: &'a str,
    streams: &'a Path,
    flink: &'a Path,
    dir: &'a Path,
}

impl Peers<'_> {
    /// Starts peer `name` on `job` (Sluice with `plugin_spec`): `input` -> `output` (also its
    /// group / application id).
    fn start(&self, name: &str, job: &str, input: &str, output: &str, plugin_spec: &str) -> Child {
        let Peers {
            broker,
            streams: peer,
            flink: flink_peer,
            dir,
        } = *self;
        match name {
            "tuned raw loop" => raw(broker, input, output),
            FLINK => flink(flink_peer, broker, input, output),
            "Sluice" => {
                let outputs = if job == "passthrough" {
                    format!("out:\n    kafka: {{topic: {output}}}")
                } else {
                    format!(
                        "enriched:\n    kafka: {{topic: {output}}}\n  filtered:\n    kafka: {{topic: {output}-filtered}}"
                    )
                };
                let spec = write_spec(
                    dir,
                    &format!(
                        "name: bench\nadmin:\n  listen: 127.0.0.1:0\n{plugin_spec}source:\n  kafka:\n    bootstrap-servers: {broker}\n    topics: [{input}]\n    group-id: {output}\noutputs:\n  {outputs}\n"
                    ),
                );
                let sluice = plugin("passthrough").parent().unwrap().join("sluice");
                run_spec(&sluice, &spec)
            }
            _ => streams(peer, job, broker, input, output),
        }
    }
}

/// `EVENTS` bookings in a JSONL file; how many `filter-and-enrich` keeps.
fn bookings(dir: &Path) -> (std::path::PathBuf, usize) {
    use std::io::Write;
    let path = dir.join("bookings.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut kept = 0;
    for i in 0..EVENTS {
        let city = ["SG", "JKT", "MNL", "BKK"][i % 4];
        let status = if i % 10 == 0 {
            "cancelled"
        } else {
            "completed"
        };
        let fare = (i * 7 % 600) as f64 / 10.0;
        let km = (i * 13 % 400) as f64 / 10.0;
        writeln!(
            file,
            r#"{{"booking_id":"b-{i}","city":"{city}","status":"{status}","fare":{fare:.1},"distance_km":{km:.1},"pickup_ts":{}}}"#,
            1_763_798_400_000u64 + i as u64 * 1000
        )
        .unwrap();
        kept += usize::from(status != "cancelled" && fare >= 5.0);
    }
    (path, kept)
}

/// One job's table: medians, and Sluice's ratios.
fn report(job: &str, expected: usize, names: &[&str], results: &[Vec<(f64, f64, f64)>]) {
    let med = |i: usize, f: fn(&(f64, f64, f64)) -> f64| {
        median(&results[i].iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "Kafka -> {job} -> Kafka, at least once, {EVENTS} events in ({expected} out), {PARTITIONS} partitions, steady state (the last two thirds), median of {}",
        rounds()
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
    let at = |name: &str| names.iter().position(|n| *n == name).unwrap();
    let ratio = |a: usize, b: usize, f: fn(&(f64, f64, f64)) -> f64| med(a, f) / med(b, f);
    let (sluice, streams) = (at("Sluice"), at("Kafka Streams 4.1.1"));
    println!(
        "Sluice / Kafka Streams: throughput {:.2}x, events per CPU-second {:.2}x, peak RSS {:.2}x",
        ratio(sluice, streams, |r| r.0),
        ratio(streams, sluice, |r| r.1),
        ratio(sluice, streams, |r| r.2)
    );
    if let Some(flink) = names.iter().position(|n| *n == FLINK) {
        println!(
            "Sluice / Flink: throughput {:.2}x, events per CPU-second {:.2}x, peak RSS {:.2}x",
            ratio(sluice, flink, |r| r.0),
            ratio(flink, sluice, |r| r.1),
            ratio(sluice, flink, |r| r.2)
        );
    }
    if let Some(raw) = names.iter().position(|n| *n == "tuned raw loop") {
        println!(
            "Sluice / tuned raw loop: throughput {:.2}x, CPU per event {:.2}x, peak RSS {:.2}x",
            ratio(sluice, raw, |r| r.0),
            ratio(sluice, raw, |r| r.1),
            ratio(sluice, raw, |r| r.2)
        );
    }
}
