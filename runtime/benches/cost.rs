//! What an event costs: `sluice run` (passthrough plugin) against a raw rdkafka consume ->
//! produce loop, where the broker is not the bottleneck. The broker is librdkafka's mock cluster
//! in this harness process; the raw loop (this binary, re-run as a child) and `sluice run` are
//! separate processes that reach it over TCP on 127.0.0.1, so each one's CPU time
//! (`/proc/PID/stat`, user + system, all its threads) is its own.
//!
//! Three measurements, in alternating rounds:
//! - **throughput**: a pre-filled input topic read at full speed into a fresh output topic;
//!   events/s from the first output record to the last, and the CPU seconds per million events
//!   spent in between;
//! - **latency** at a fixed input rate: the harness produces `RATE` events/s, each carrying its
//!   send time, and reads the output; p50/p99 from send to the harness reading the output
//!   record (the harness's own produce and fetch are the same for every subject);
//! - **file run**: `sluice run` over 1,000,000 lines of the same events to a file output (no
//!   broker); CPU per million lines after the CPU of a run over an empty file (start-up: the
//!   plugin's load and hash, threads) is taken off.
//!
//! `SLUICE_BEFORE=/path/to/old/sluice` adds the same rows for another build of `sluice` (the
//! "before" column of BENCHMARKS.md: the binary built from the commit before the one-path
//! refactor).
//!
//! Run: `make bench` (or `cargo build --release -p passthrough -p sluice-cli && cargo bench -p sluice-runtime --bench cost`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FixedRate, cpu_seconds, median, percentile, raw_loop, run_spec, watch};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::Producer;
use sluice_tests::{plugin, write_spec};

const PARTITIONS: i32 = 4;
const ROUNDS: usize = 5;
const RATE: usize = 5_000;
const RATE_SECONDS: usize = 10;
/// Lines of a file run.
const FILE_LINES: usize = 1_000_000;
/// The mock cluster answers a fetch only when this wait runs out (it does not wake a waiting
/// fetch when data arrives), so every consumer here, the subjects' and the harness's, uses the
/// same short wait; with librdkafka's default (500 ms) the latency would be the mock's.
const FETCH_WAIT_MS: &str = "5";
/// The fixed-rate rounds; an event's value is ~100 bytes with its JSON.
const LATENCY: FixedRate = FixedRate {
    rate: RATE,
    seconds: RATE_SECONDS,
    partitions: PARTITIONS,
    fetch_wait_ms: Some(FETCH_WAIT_MS),
    pad: 60,
};

/// Events pre-filled for the throughput and file rounds (`SLUICE_COST_EVENTS`, default 100,000).
/// The mock cluster keeps about 5 MB per partition and drops older records beyond that, so a
/// pre-filled topic must stay under it (100,000 of these events over 4 partitions is ~4 MB each).
fn events() -> usize {
    std::env::var("SLUICE_COST_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

fn main() {
    if let Ok(args) = std::env::var("SLUICE_COST_RAW") {
        let a: Vec<&str> = args.split(',').collect();
        raw_loop(
            a[0],
            a[1],
            a[2],
            a[3],
            None,
            &[("fetch.wait.max.ms", FETCH_WAIT_MS)],
        );
        return;
    }
    let events = events();
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let sluice = plugin("passthrough").parent().unwrap().join("sluice");
    let mut subjects = vec![
        Subject::Raw,
        Subject::Sluice("sluice".into(), sluice.clone()),
    ];
    if let Some(before) = std::env::var_os("SLUICE_BEFORE") {
        subjects.push(Subject::Sluice("sluice (before)".into(), before.into()));
    }
    // `SLUICE_COST_ONLY=sluice` runs one subject (for profiling it with perf).
    if let Ok(only) = std::env::var("SLUICE_COST_ONLY") {
        subjects.retain(|s| s.name() == only);
    }
    let dir = tempfile::tempdir().unwrap();

    mock.create_topic("cost-in", PARTITIONS, 1).unwrap();
    let producer = common::timed_producer(&bootstrap);
    for i in 0..events {
        common::timed_send(&producer, "cost-in", i, &LATENCY.event(i, 0));
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    // File runs: FILE_LINES of the same events, and an empty file for what a run costs before
    // its first line (loading and hashing the plugin, threads): the per-line cost is the
    // difference.
    let lines = dir.path().join("in.jsonl");
    std::fs::write(
        &lines,
        (0..FILE_LINES)
            .map(|i| String::from_utf8(LATENCY.event(i, 0)).unwrap() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();

    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let n = subjects.len();
    let mut rate = vec![Vec::new(); n];
    let mut cpu = vec![Vec::new(); n];
    let mut p50 = vec![Vec::new(); n];
    let mut p99 = vec![Vec::new(); n];
    let mut lat_cpu = vec![Vec::new(); n];
    let mut file = vec![Vec::new(); n];
    for round in 0..ROUNDS {
        for (s, subject) in subjects.iter().enumerate() {
            // Throughput: the pre-filled topic, a fresh group and output topic.
            let out = format!("cost-out-{s}-{round}");
            mock.create_topic(&out, PARTITIONS, 1).unwrap();
            let mut child = subject.spawn(&bootstrap, "cost-in", &out, dir.path());
            let (seconds, cpu_per_m) = watch(&watcher, &out, PARTITIONS, events, child.id());
            rate[s].push(events as f64 / seconds);
            cpu[s].push(cpu_per_m);
            stop(&mut child);

            // Latency at a fixed rate: a fresh input topic, the subject joined before the clock
            // starts (a warm-up event must come through first).
            let input = format!("lat-in-{s}-{round}");
            let out = format!("lat-out-{s}-{round}");
            mock.create_topic(&input, PARTITIONS, 1).unwrap();
            mock.create_topic(&out, PARTITIONS, 1).unwrap();
            let mut child = subject.spawn(&bootstrap, &input, &out, dir.path());
            let (latencies, cpu_s) =
                LATENCY.measure(&bootstrap, &producer, &input, &out, child.id());
            p50[s].push(percentile(&latencies, 0.50));
            p99[s].push(percentile(&latencies, 0.99));
            lat_cpu[s].push(cpu_s / (latencies.len() as f64 / 1e6));
            stop(&mut child);

            // A file run over the same events (the raw loop has no file counterpart).
            if let Subject::Sluice(_, bin) = subject {
                let (wall, cpu_s) = file_run(bin, &lines, dir.path());
                let (_, fixed) = file_run(bin, &empty, dir.path());
                file[s].push((
                    FILE_LINES as f64 / wall,
                    (cpu_s - fixed) / (FILE_LINES as f64 / 1e6),
                    fixed,
                ));
            }
        }
        println!(
            "round {round}: {}",
            subjects
                .iter()
                .enumerate()
                .map(|(s, subject)| format!(
                    "{}: {:.0} ev/s, {:.2} CPU-s/M, p50 {:.2} ms, p99 {:.2} ms",
                    subject.name(),
                    rate[s][round],
                    cpu[s][round],
                    p50[s][round],
                    p99[s][round]
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    println!(
        "\nKafka (mock cluster) -> passthrough -> Kafka: {events} events pre-filled over {PARTITIONS} partitions, then {RATE} ev/s for {RATE_SECONDS} s; median of {ROUNDS} rounds"
    );
    println!(
        "{:>16} {:>10} {:>8} {:>10} {:>8} {:>9} {:>9} {:>10} {:>12}",
        "",
        "events/s",
        "vs raw",
        "CPU-s/M",
        "vs raw",
        "p50 ms",
        "p99 ms",
        "p99 - raw",
        "CPU-s/M@rate"
    );
    let base = (median(&rate[0]), median(&cpu[0]), median(&p99[0]));
    for (s, subject) in subjects.iter().enumerate() {
        let (r, c, l) = (median(&rate[s]), median(&cpu[s]), median(&p99[s]));
        println!(
            "{:>16} {r:>10.0} {:>7.3}x {c:>10.2} {:>7.3}x {:>9.2} {l:>9.2} {:>+10.2} {:>12.2}",
            subject.name(),
            r / base.0,
            c / base.1,
            median(&p50[s]),
            l - base.2,
            median(&lat_cpu[s]),
        );
    }
    println!(
        "\nfile -> passthrough -> file, {FILE_LINES} lines, CPU per million lines less an empty file's run, median of {ROUNDS} rounds"
    );
    for (s, subject) in subjects.iter().enumerate() {
        if matches!(subject, Subject::Raw) {
            continue;
        }
        let r: Vec<f64> = file[s].iter().map(|f| f.0).collect();
        let c: Vec<f64> = file[s].iter().map(|f| f.1).collect();
        let fixed: Vec<f64> = file[s].iter().map(|f| f.2).collect();
        println!(
            "{:>16} {:>10.0} ev/s {:>10.2} CPU-s/M, {:.3} CPU-s for an empty file",
            subject.name(),
            median(&r),
            median(&c),
            median(&fixed)
        );
    }
}

enum Subject {
    Raw,
    Sluice(String, PathBuf),
}

impl Subject {
    fn name(&self) -> &str {
        match self {
            Subject::Raw => "raw rdkafka",
            Subject::Sluice(name, _) => name,
        }
    }

    /// Starts the subject reading `input` into `output` with a fresh consumer group.
    fn spawn(&self, bootstrap: &str, input: &str, output: &str, dir: &Path) -> Child {
        match self {
            Subject::Raw => Command::new(std::env::current_exe().unwrap())
                .env(
                    "SLUICE_COST_RAW",
                    format!("{bootstrap},{input},{output},{output}"),
                )
                .spawn()
                .unwrap(),
            Subject::Sluice(_, bin) => {
                let spec = write_spec(
                    dir,
                    &format!(
                        "name: cost\nplugin:\n  path: {}\nsource:\n  kafka:\n    bootstrap-servers: {bootstrap}\n    topics: [{input}]\n    group-id: {output}\n    properties: {{fetch.wait.max.ms: \"{FETCH_WAIT_MS}\"}}\noutputs:\n  out:\n    kafka: {{topic: {output}}}\n",
                        plugin("passthrough").display(),
                    ),
                );
                run_spec(bin, &spec)
            }
        }
    }
}

fn stop(child: &mut Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

/// Runs `sluice run` over a file of events to a file output; wall and CPU seconds to its exit.
fn file_run(bin: &Path, lines: &Path, dir: &Path) -> (f64, f64) {
    let spec = write_spec(
        dir,
        &format!(
            "name: cost-file\nplugin:\n  path: {}\nsource:\n  file: {{path: {}, format: lines}}\noutputs:\n  out:\n    file: {{path: {}}}\n",
            plugin("passthrough").display(),
            lines.display(),
            dir.join("out.jsonl").display(),
        ),
    );
    let started = Instant::now();
    let child = Command::new(bin)
        .args(["run", "-f"])
        .arg(spec)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Read the CPU time while the process is a zombie (it keeps its times until reaped).
    let stat = format!("/proc/{}/stat", child.id());
    loop {
        let s = std::fs::read_to_string(&stat).unwrap();
        if s[s.rfind(')').unwrap() + 2..].starts_with('Z') {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(child.id());
    let mut child = child;
    assert!(child.wait().unwrap().success(), "the file run failed");
    (wall, cpu)
}
