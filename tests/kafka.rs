//! The Kafka data path on a real broker (Apache Kafka), checked with an independent client
//! (confluent-kafka): every event arrives, per-key order holds, a graceful stop loses and
//! duplicates nothing, a hard kill duplicates only the uncommitted window.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{
    Broker, Running, check_every_event_once_in_key_order, free_port, http_get, kafka_tool,
    log_events, metric, plugin, poison_input, start, start_with, unique, wait_until, write_spec,
};

thread_local! {
    /// Set by a test (and its threads) that runs on a broker of its own.
    static OWN_BROKER: std::cell::Cell<Option<&'static Broker>> = const { std::cell::Cell::new(None) };
}

/// The shared test broker, or the broker of the test on this thread (`on_own_broker`).
fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    OWN_BROKER
        .with(std::cell::Cell::get)
        .unwrap_or_else(|| BROKER.get_or_init(Broker::start))
}

/// Starts a broker for the calling test alone: from now on `broker()` on this thread (and on
/// threads that call `use_broker` with it) is that one. For the heaviest tests, so neither they
/// nor the others stall the other, and for tests that stop the broker.
fn on_own_broker() -> &'static Broker {
    // Never dropped: its watchdog stops it and deletes its storage when the test process ends.
    let own: &'static Broker = Box::leak(Box::new(Broker::start()));
    use_broker(own);
    own
}

/// Schema-registry formats (on the shared broker).
mod schemas;

/// Plugin upgrades without a restart (on the shared broker).
mod upgrades;

/// TLS, SASL and ACLs (on a secured node of their own).
mod security;

fn use_broker(broker: &'static Broker) {
    OWN_BROKER.with(|own| own.set(Some(broker)));
}

struct Names {
    input: String,
    output: String,
    group: String,
}

fn topics(partitions: u32) -> Names {
    let names = Names {
        input: unique("in"),
        output: unique("out"),
        group: unique("group"),
    };
    broker().create_topic(&names.input, partitions);
    broker().create_topic(&names.output, partitions);
    names
}

fn passthrough_spec(dir: &Path, names: &Names, extra_source: &str) -> PathBuf {
    pipeline_spec(
        dir,
        names,
        &format!("  path: {}\n", plugin("passthrough").display()),
        extra_source,
    )
}

/// Forwards events like passthrough, sleeping `delay_us` per event: a stop lands mid-stream.
fn slow_spec(dir: &Path, names: &Names, delay_us: u32, extra_source: &str) -> PathBuf {
    let plugin = format!(
        "  path: {}\n  config: {{mode: slow, delay_us: {delay_us}}}\n",
        plugin("misbehaving").display()
    );
    pipeline_spec(dir, names, &plugin, extra_source)
}

fn pipeline_spec(dir: &Path, names: &Names, plugin: &str, extra_source: &str) -> PathBuf {
    write_spec(
        dir,
        &format!(
            "name: pass\nplugin:\n{plugin}source:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{}]\n    group-id: {}\n    commit-interval-ms: 200\n{extra_source}outputs:\n  out:\n    kafka: {{topic: {}}}\n",
            broker().addr,
            names.input,
            names.group,
            names.output
        ),
    )
}

fn produce(topic: &str, count: usize, start: usize) {
    broker().produce(topic, count, start, &[]);
}

/// Every record of `topic`, read by the reference client.
fn consume(topic: &str, expect: usize) -> Vec<Value> {
    broker().consume(topic, expect)
}

fn committed_sum(topic: &str, group: &str) -> i64 {
    broker().committed_sum(topic, group)
}

#[test]
fn keyed_events_all_arrive_in_key_order_and_sigterm_commits_everything() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(4);
    produce(&names.input, 2000, 0);
    let spec = passthrough_spec(dir.path(), &names, "");
    let run = start(&spec, dir.path());
    let records = consume(&names.output, 2000);
    assert_eq!(records.len(), 2000, "every event arrives exactly once");
    assert_eq!(check_every_event_once_in_key_order(&records, 2000), 0);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "graceful stop exits 0:\n{log}");
    assert_eq!(
        committed_sum(&names.input, &names.group),
        2000,
        "offsets of all 2000 committed:\n{log}"
    );
}

#[test]
fn sigterm_mid_stream_then_restart_gives_zero_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(2);
    let total = 4000;
    produce(&names.input, total, 0);
    // ~10 s of work per partition: the stop lands mid-stream, once the first commit is seen.
    let spec = slow_spec(
        dir.path(),
        &names,
        5000,
        "    batch-size: 16\n    partition-capacity: 32\n",
    );
    let run = start(&spec, dir.path());
    wait_until("a first commit", Duration::from_secs(30), || {
        committed_sum(&names.input, &names.group) > 0
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    let before = consume_quick(&names.output).len();
    assert!(
        before < total,
        "the stop landed mid-stream ({before} of {total})"
    );
    assert_eq!(
        committed_sum(&names.input, &names.group) as usize,
        before,
        "committed exactly what was delivered"
    );
    let run = start(&spec, dir.path());
    let records = consume(&names.output, total);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        check_every_event_once_in_key_order(&records, total),
        0,
        "zero duplicates after a graceful stop"
    );
    assert_eq!(records.len(), total);
}

#[test]
fn kill_9_mid_stream_duplicates_only_the_uncommitted_window() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(2);
    let total = 4000;
    produce(&names.input, total, 0);
    // A short session timeout: the killed member leaves the group in 6 s, not the default 45 s.
    let spec = slow_spec(
        dir.path(),
        &names,
        5000,
        "    batch-size: 16\n    partition-capacity: 32\n    properties: {session.timeout.ms: \"6000\", heartbeat.interval.ms: \"1000\"}\n",
    );
    let run = start(&spec, dir.path());
    wait_until("a first commit", Duration::from_secs(30), || {
        committed_sum(&names.input, &names.group) > 200
    });
    std::thread::sleep(Duration::from_millis(350)); // between two commits: a non-empty window
    run.kill();
    let delivered = consume_quick(&names.output).len() as i64;
    assert!(
        delivered < total as i64,
        "the kill landed mid-stream ({delivered} of {total})"
    );
    let committed = committed_sum(&names.input, &names.group);
    assert!(
        committed <= delivered,
        "never commits what was not delivered ({committed} > {delivered})"
    );
    let run = start(&spec, dir.path());
    let expected = total + (delivered - committed) as usize;
    let records = consume(&names.output, expected);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    let duplicates = check_every_event_once_in_key_order(&records, total);
    assert_eq!(
        duplicates as i64,
        delivered - committed,
        "duplicates are exactly the uncommitted window"
    );
    eprintln!(
        "kill -9: {delivered} delivered, {committed} committed, {duplicates} duplicates after restart"
    );
}

/// Everything `topic` holds now (up to its high watermarks), however slow the broker is.
fn consume_quick(topic: &str) -> Vec<Value> {
    kafka_tool(&[
        "consume",
        "--broker",
        &broker().addr,
        "--topic",
        topic,
        "--to-end",
    ])
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

#[test]
fn broker_config_problems_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let names = Names {
        input: "x".into(),
        output: "y".into(),
        group: "g".into(),
    };
    let spec = passthrough_spec(
        dir.path(),
        &names,
        "    properties-from-env: {sasl.password: SLUICE_TEST_UNSET_SECRET}\n",
    );
    let out = Command::new(plugin("passthrough").parent().unwrap().join("sluice"))
        .args(["run", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("error: {}: source.kafka.properties-from-env.sasl.password: environment variable `SLUICE_TEST_UNSET_SECRET` is not set: export it", spec.display())),
        "{stderr}"
    );
}

/// A broker of its own: these tests restart it.
fn own_broker_spec(
    dir: &Path,
    broker: &Broker,
    names: &Names,
    delay_us: u32,
    extra: &str,
) -> PathBuf {
    let text = std::fs::read_to_string(slow_spec(dir, names, delay_us, extra)).unwrap();
    let path = dir.join("own-broker.yaml");
    std::fs::write(&path, text.replace(&crate::broker().addr, &broker.addr)).unwrap();
    path
}

fn tool_on(broker: &Broker, args: &[&str]) -> String {
    let mut full: Vec<&str> = vec![args[0], "--broker", &broker.addr];
    full.extend_from_slice(&args[1..]);
    kafka_tool(&full)
}

#[test]
fn broker_restart_mid_stream_loses_nothing() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let names = Names {
        input: unique("in"),
        output: unique("out"),
        group: unique("group"),
    };
    broker.create_topic(&names.input, 2);
    broker.create_topic(&names.output, 2);
    let total = 3000;
    tool_on(
        &broker,
        &[
            "produce",
            "--topic",
            &names.input,
            "--count",
            &total.to_string(),
        ],
    );
    let spec = own_broker_spec(
        dir.path(),
        &broker,
        &names,
        3000,
        "    batch-size: 16\n    partition-capacity: 32\n",
    );
    // With the admin endpoint, librdkafka's statistics (every 500 ms) tell the producer's
    // reachability: the outage is logged once each way.
    let mut text = std::fs::read_to_string(&spec).unwrap();
    text.push_str(&format!(
        "admin:\n  listen: 127.0.0.1:{}\n  lag-interval-ms: 500\n",
        free_port()
    ));
    std::fs::write(&spec, text).unwrap();
    let run = start(&spec, dir.path());
    let committed = || broker.committed_sum(&names.input, &names.group);
    wait_until("a first commit", Duration::from_secs(30), || {
        committed() > 100
    });
    broker.down();
    std::thread::sleep(Duration::from_secs(3));
    broker.up();
    wait_until("every offset committed", Duration::from_secs(120), || {
        committed() == total as i64
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    let down = log_events(&log, "no broker reachable");
    let up = log_events(&log, "broker reachable again");
    assert!(!down.is_empty() && up.len() == down.len(), "{log}");
    assert_eq!(down[0]["outputs"], "out");
    assert_eq!(down[0]["level"], "WARN");
    let records: Vec<Value> = tool_on(
        &broker,
        &[
            "consume",
            "--topic",
            &names.output,
            "--expect",
            &total.to_string(),
            "--timeout",
            "20",
        ],
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    let duplicates = check_every_event_once_in_key_order(&records, total);
    eprintln!("broker restart: {total} events, {duplicates} duplicates (at-least-once)");
}

#[test]
fn two_processes_split_the_partitions_and_one_leaves_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(4);
    let total = 4000;
    produce(&names.input, total, 0);
    let spec = slow_spec(
        dir.path(),
        &names,
        4000,
        "    batch-size: 16\n    partition-capacity: 32\n",
    );
    let a = start(&spec, dir.path());
    let b = start(&spec, dir.path());
    let per_partition = || -> BTreeMap<String, i64> {
        serde_json::from_str(&kafka_tool(&[
            "committed",
            "--broker",
            &broker().addr,
            "--topic",
            &names.input,
            "--group",
            &names.group,
        ]))
        .unwrap()
    };
    // Both members work: each holds partitions (the second joiner through a rebalance). An
    // empty assignment does not count: a cooperative rebalance first revokes from one member,
    // then assigns to the other in a second round, and a stop between the two rounds is
    // another case (its final commit is refused with IllegalGeneration: README, guarantees).
    wait_until("both members assigned", Duration::from_secs(60), || {
        [&a, &b].iter().all(|r| {
            log_events(
                &std::fs::read_to_string(&r.log).unwrap_or_default(),
                "assigned",
            )
            .iter()
            .any(|e| e["count"].as_u64() > Some(0))
        })
    });
    wait_until(
        "commits on all 4 partitions",
        Duration::from_secs(60),
        || per_partition().values().all(|o| *o > 0),
    );
    let (code, log_a) = a.stop(); // leaves the group mid-stream; b takes over its partitions
    assert_eq!(code, Some(0), "{log_a}");
    assert!(
        per_partition().values().sum::<i64>() < total as i64,
        "a left mid-stream"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while per_partition().values().sum::<i64>() != total as i64 {
        assert!(
            Instant::now() < deadline,
            "b did not finish: committed {:?}\n--- a ---\n{log_a}\n--- b ---\n{}",
            per_partition(),
            std::fs::read_to_string(&b.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, log_b) = b.stop();
    assert_eq!(code, Some(0), "{log_b}");
    let records = consume(&names.output, total);
    assert_eq!(
        check_every_event_once_in_key_order(&records, total),
        0,
        "a graceful leave duplicates nothing"
    );
    assert_eq!(records.len(), total);
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_slow_plugin_on_a_fast_topic_keeps_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(2);
    // 20,000 events of ~10 KiB: ~200 MiB of input that the slow plugin cannot keep up with.
    let total = 20_000;
    kafka_tool(&[
        "produce",
        "--broker",
        &broker().addr,
        "--topic",
        &names.input,
        "--count",
        &total.to_string(),
        "--size",
        "10000",
    ]);
    let spec = slow_spec(
        dir.path(),
        &names,
        2000,
        "    batch-size: 16\n    partition-capacity: 64\n",
    );
    let run = start(&spec, dir.path());
    wait_until("a first commit", Duration::from_secs(30), || {
        committed_sum(&names.input, &names.group) > 0
    });
    std::thread::sleep(Duration::from_secs(5));
    let peak = peak_rss_kib(run.child.id());
    let done = committed_sum(&names.input, &names.group);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    eprintln!(
        "backpressure: peak RSS {} MiB after {done} of {total} events (~{} MiB input)",
        peak / 1024,
        total * 10 / 1024
    );
    assert!(
        (done as usize) < total / 2,
        "the plugin really is slower than the topic ({done} done)"
    );
    assert!(
        peak < 96 * 1024,
        "peak RSS {} MiB: memory is not bounded by partition-capacity",
        peak / 1024
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(1);
    produce(&names.input, 3000, 0);
    // A slow plugin with a deep queue: draining would take ~15 s.
    let spec = slow_spec(
        dir.path(),
        &names,
        5000,
        "    partition-capacity: 3000\n    batch-size: 16\n",
    );
    let mut run = start(&spec, dir.path());
    // The whole input is queued at once, so no commit comes before it is done: wait for the
    // assignment, then give the worker a moment.
    wait_until("the assignment", Duration::from_secs(30), || {
        !log_events(
            &std::fs::read_to_string(&run.log).unwrap_or_default(),
            "assigned",
        )
        .is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    run.signal("-TERM");
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    run.signal("-TERM");
    let status = run.child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "{}",
        std::fs::read_to_string(&run.log).unwrap_or_default()
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "took {:?}",
        stopping.elapsed()
    );
    assert!(
        committed_sum(&names.input, &names.group) < 3000,
        "the forced exit did not wait for the drain"
    );
}

/// A one-partition topic through two workers: the spec's `ordering` decides how its events are
/// spread. Returns the output records (read by the reference client) and the run's log.
fn run_with_ordering(ordering: &str, output_partitions: u32, plugin_extra: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let names = Names {
        input: unique("in"),
        output: unique("out"),
        group: unique("group"),
    };
    broker().create_topic(&names.input, 1);
    broker().create_topic(&names.output, output_partitions);
    let total = 2000;
    kafka_tool(&[
        "produce",
        "--broker",
        &broker().addr,
        "--topic",
        &names.input,
        "--count",
        &total.to_string(),
        "--headers",
    ]);
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: ordering\nworkers: 2\nordering: {ordering}\nplugin:\n  path: {}\n  config: {{mode: slow, delay_us: 200{plugin_extra}}}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{}]\n    group-id: {}\n    commit-interval-ms: 200\n    batch-size: 32\noutputs:\n  out:\n    kafka: {{topic: {}}}\n",
            plugin("misbehaving").display(),
            broker().addr,
            names.input,
            names.group,
            names.output
        ),
    );
    let run = start(&spec, dir.path());
    let records = consume(&names.output, total);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "graceful stop exits 0:\n{log}");
    assert_eq!(
        records.len(),
        total,
        "every event arrives exactly once:\n{log}"
    );
    assert_eq!(
        committed_sum(&names.input, &names.group),
        total as i64,
        "offsets of all {total} committed:\n{log}"
    );
    records
}

fn workers_by_key(records: &[Value]) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut by_key: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for r in records {
        by_key
            .entry(r["key"].as_str().unwrap().to_owned())
            .or_default()
            .insert(r["headers"]["worker"].as_str().unwrap().to_owned());
    }
    by_key
}

#[test]
fn ordering_key_runs_one_partition_on_every_worker_in_key_order_with_headers_and_partition() {
    // Pinned to output partition 2 of 3 by the plugin; headers pass through both ways.
    let records = run_with_ordering("key", 3, ", to_partition: 2");
    assert_eq!(check_every_event_once_in_key_order(&records, 2000), 0);
    for r in &records {
        let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            r["headers"]["trace"].as_str(),
            Some(format!("t{}", v["seq"]).as_str()),
            "input headers pass through: {r}"
        );
        assert_eq!(r["partition"], 2, "the plugin's partition is kept: {r}");
    }
    let by_key = workers_by_key(&records);
    assert!(
        by_key.values().all(|w| w.len() == 1),
        "each key stays on one worker: {by_key:?}"
    );
    let used: std::collections::BTreeSet<_> = by_key.values().flatten().collect();
    assert_eq!(
        used.len(),
        2,
        "one partition ran on both workers: {by_key:?}"
    );
}

#[test]
fn ordering_none_spreads_one_partition_over_every_worker() {
    let records = run_with_ordering("none", 1, "");
    let mut seqs: Vec<i64> = records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            v["seq"].as_i64().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..2000).collect::<Vec<_>>(), "each event once");
    let by_key = workers_by_key(&records);
    assert!(
        by_key.values().any(|w| w.len() == 2),
        "a key's events ran on both workers: {by_key:?}"
    );
}

fn sluice_cmd(args: &[&str]) -> std::process::Output {
    Command::new(plugin("passthrough").parent().unwrap().join("sluice"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// One event path: a file run writes to a Kafka topic and dead-letters to another with the
/// same provenance headers as a Kafka run (the file is one partition, its lines the offsets),
/// then stops by itself at the end of the file with everything delivered.
#[test]
fn a_file_run_writes_to_kafka_and_dead_letters_like_a_kafka_run() {
    let dir = tempfile::tempdir().unwrap();
    let (out, dlq) = (unique("from-file"), unique("dlq"));
    broker().create_topic(&out, 1);
    broker().create_topic(&dlq, 1);
    let input = poison_input(dir.path());
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: from-file\nplugin:\n  path: {}\n  config: {{mode: poison}}\nsource:\n  file: {{path: {}, format: lines, topic: bookings-file}}\nproducer: {{bootstrap-servers: \"{}\"}}\noutputs:\n  out:\n    kafka: {{topic: {out}}}\nerror-policy:\n  event-error: dead-letter\n  plugin-panic: {{retry: 2, backoff-ms: 10, then: dead-letter}}\n  dead-letter-topic: {dlq}\n",
            plugin("misbehaving").display(),
            input.display(),
            broker().addr,
        ),
    );
    let run = sluice_cmd(&["run", "-f", spec.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("100 events in") && stderr.contains("2 dead-lettered"),
        "{stderr}"
    );
    // Delivered before the run exited: read what is there.
    let records = consume(&out, 98);
    let values: std::collections::BTreeSet<&str> = records
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        values.len(),
        98,
        "every other line, once or more (at-least-once)"
    );
    assert!(!values.contains("bad") && !values.contains("boom"));
    let letters = consume(&dlq, 2);
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        let h = &letter["headers"];
        let (class, offset, attempts) = match letter["value"].as_str().unwrap() {
            "bad" => ("event-error", "10", "1"),
            "boom" => ("plugin-panic", "50", "3"),
            other => panic!("dead letter {other}"),
        };
        assert_eq!(h["sluice.failure.class"], class, "{h}");
        assert_eq!(h["sluice.failure.attempts"], attempts, "{h}");
        assert_eq!(h["sluice.source.topic"], "bookings-file", "{h}");
        assert_eq!(h["sluice.source.partition"], "0", "{h}");
        assert_eq!(h["sluice.source.offset"], offset, "the line, from 0: {h}");
        assert_eq!(h["sluice.pipeline"], "from-file", "{h}");
        assert_eq!(h["sluice.plugin.name"], "misbehaving", "{h}");
    }
}

#[test]
fn poison_events_and_panics_are_dead_lettered_and_replayed_after_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(1);
    let dlq = unique("dlq");
    broker().create_topic(&dlq, 1);
    let input = poison_input(dir.path());
    kafka_tool(&[
        "produce-file",
        "--broker",
        &broker().addr,
        "--topic",
        &names.input,
        "--file",
        input.to_str().unwrap(),
        "--headers",
    ]);
    let policy = format!(
        "error-policy:\n  event-error: dead-letter\n  plugin-panic: {{retry: 2, backoff-ms: 10, then: dead-letter}}\n  dead-letter-topic: {dlq}\n"
    );
    let spec_for = |mode: &str| {
        let plugin = format!(
            "  path: {}\n  config: {{mode: {mode}}}\n",
            plugin("misbehaving").display()
        );
        let spec = pipeline_spec(dir.path(), &names, &plugin, "");
        let text = std::fs::read_to_string(&spec).unwrap();
        std::fs::write(&spec, format!("{text}{policy}")).unwrap();
        spec
    };

    let run = start(&spec_for("poison"), dir.path());
    let out = consume(&names.output, 98);
    let letters = consume(&dlq, 2);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    let distinct = |records: &[Value]| -> std::collections::BTreeSet<String> {
        records
            .iter()
            .map(|r| r["value"].as_str().unwrap().to_owned())
            .collect()
    };
    // Events before the panicking one in its batch are emitted again when the batch is rerun
    // one event at a time (at-least-once), so count distinct values.
    assert_eq!(
        distinct(&out).len(),
        98,
        "the rest of the stream flowed, without the two failed events:\n{log}"
    );
    assert!(!distinct(&out).contains("bad") && !distinct(&out).contains("boom"));
    assert_eq!(letters.len(), 2, "{log}");
    assert_eq!(committed_sum(&names.input, &names.group), 100, "{log}");
    let by_value: HashMap<&str, &Value> = letters
        .iter()
        .map(|l| (l["value"].as_str().unwrap(), &l["headers"]))
        .collect();
    let (bad, boom) = (by_value["bad"], by_value["boom"]);
    for (h, class, offset, attempts, message) in [
        (bad, "event-error", "10", "1", "this event is bad"),
        (boom, "plugin-panic", "50", "3", "boom at offset 50"),
    ] {
        assert_eq!(h["sluice.failure.class"], class, "{h}");
        assert!(
            h["sluice.failure.message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{h}"
        );
        assert_eq!(h["sluice.failure.attempts"], attempts, "{h}");
        assert_eq!(h["sluice.source.topic"], names.input.as_str(), "{h}");
        assert_eq!(h["sluice.source.partition"], "0", "{h}");
        assert_eq!(h["sluice.source.offset"], offset, "{h}");
        assert_eq!(h["sluice.plugin.name"], "misbehaving", "{h}");
        assert_eq!(h["sluice.plugin.version"], "0.1.0", "{h}");
        assert_eq!(h["sluice.pipeline"], "pass", "{h}");
        assert_eq!(h["line"], offset, "the original headers are kept: {h}");
        let time: u128 = h["sluice.failure.time-ms"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(time > 1_700_000_000_000, "{h}");
    }

    // The fix is deployed (mode ok forwards everything), then the dead letters are replayed.
    let before = consume_quick(&names.output).len();
    let run = start(&spec_for("ok"), dir.path());
    let replay = |extra: &[&str]| {
        let mut args = vec![
            "dlq",
            "replay",
            "--bootstrap-servers",
            &broker().addr,
            "--topic",
            &dlq,
        ];
        args.extend_from_slice(extra);
        let out = sluice_cmd(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    assert!(
        replay(&["--class", "plugin-panic", "--group", "only-panics"])
            .contains("replayed 1 of 2 dead letters"),
        "the class filter"
    );
    let all = replay(&[]);
    assert!(all.contains("replayed 2 of 2 dead letters"), "{all}");
    let again = replay(&[]);
    assert!(
        again.contains("replayed 0 of 0 dead letters"),
        "a second replay resumes after the first: {again}"
    );
    // Boom (class-filtered replay), then bad and boom (full replay), after what was there.
    let out = consume(&names.output, before + 3);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(out.len(), before + 3, "{log}");
    assert_eq!(distinct(&out).len(), 100, "{log}");
    let replayed: Vec<&Value> = out
        .iter()
        .filter(|r| r["headers"].get("sluice.replayed-from").is_some())
        .collect();
    assert_eq!(replayed.len(), 3);
    assert!(
        replayed
            .iter()
            .all(|r| r["headers"].get("sluice.failure.class").is_none()),
        "provenance headers are not replayed"
    );
    assert_eq!(committed_sum(&names.input, &names.group), 103);

    // Or straight through the fixed pipeline, without re-injecting: its plugin gets the two dead
    // letters (provenance headers stripped), writes them to its output, and the replay stops by
    // itself at the end of the dead-letter topic.
    let before = consume_quick(&names.output).len();
    let spec = spec_for("ok");
    let out = sluice_cmd(&[
        "dlq",
        "replay",
        "--bootstrap-servers",
        &broker().addr,
        "--topic",
        &dlq,
        "--group",
        "through",
        "--through",
        spec.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("dead letters replayed through pipeline pass: 2 events in, 2 records out"),
        "{stderr}"
    );
    let after = consume_quick(&names.output);
    assert_eq!(after.len(), before + 2, "{stderr}");
    let through: Vec<&Value> = after
        .iter()
        .filter(|r| {
            r["headers"].get("sluice.replayed-from").is_none()
                && matches!(r["value"].as_str(), Some("bad" | "boom"))
        })
        .collect();
    assert_eq!(through.len(), 2, "{after:?}");
    for r in through {
        assert!(
            r["headers"].get("sluice.failure.class").is_none()
                && r["headers"].get("line").is_some(),
            "the plugin saw the original headers only: {r}"
        );
    }
}

// ---- Operating it: the admin endpoint, logs, `sluice status` and `sluice top` ----

/// Appends an admin endpoint on `port` (lag refreshed every 200 ms) to a spec.
fn with_admin(spec: &Path, port: u16, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(spec).unwrap();
    std::fs::write(
        spec,
        format!(
            "{text}workers: 2\nadmin:\n  listen: 127.0.0.1:{port}\n  lag-interval-ms: 200\n{extra}"
        ),
    )
    .unwrap();
    spec.to_owned()
}

/// Passthrough with an admin endpoint over `events` events in `partitions` partitions, running
/// once every offset is committed.
fn passthrough_with_admin(dir: &Path, partitions: u32, events: usize) -> (Names, u16, Running) {
    let names = topics(partitions);
    produce(&names.input, events, 0);
    let port = free_port();
    let spec = with_admin(&passthrough_spec(dir, &names, ""), port, "");
    let run = start(&spec, dir);
    wait_until("every offset committed", Duration::from_secs(60), || {
        committed_sum(&names.input, &names.group) == events as i64
    });
    (names, port, run)
}

fn scrape(port: u16) -> String {
    let (code, body) = http_get(port, "/metrics").expect("the admin endpoint answers");
    assert_eq!(code, 200, "{body}");
    body
}

/// The reference client's view: partition -> (high watermark, committed, lag).
fn reference_lag(topic: &str, group: &str) -> BTreeMap<i32, (i64, i64, i64)> {
    let out = kafka_tool(&[
        "lag",
        "--broker",
        &broker().addr,
        "--topic",
        topic,
        "--group",
        group,
    ]);
    let v: BTreeMap<String, Value> = serde_json::from_str(&out).unwrap();
    v.into_iter()
        .map(|(p, o)| {
            let get = |k: &str| o[k].as_i64().unwrap();
            (
                p.parse().unwrap(),
                (get("high"), get("committed"), get("lag")),
            )
        })
        .collect()
}

/// `/status`'s view, in the same shape.
fn status_lag(port: u16) -> BTreeMap<i32, (i64, i64, i64)> {
    let (_, body) = http_get(port, "/status").expect("the admin endpoint answers");
    let status: Value = serde_json::from_str(&body).unwrap();
    status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let get = |k: &str| p[k].as_i64().unwrap_or(-1);
            (
                p["partition"].as_i64().unwrap() as i32,
                (get("high_watermark"), get("committed"), get("lag")),
            )
        })
        .collect()
}

#[test]
fn metrics_count_exactly_what_was_consumed_and_emitted_and_logs_are_json_lifecycle_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (names, port, run) = passthrough_with_admin(dir.path(), 3, 900);
    assert_eq!(http_get(port, "/readyz").map(|(c, _)| c), Some(200));
    assert_eq!(
        consume(&names.output, 900).len(),
        900,
        "the reference client reads 900 records"
    );

    // Counters equal what was really consumed and emitted; the lag closes once librdkafka's
    // statistics catch up with the last commit.
    wait_until("lag 0 in /metrics", Duration::from_secs(20), || {
        let m = scrape(port);
        (0..3).all(|p| {
            metric(&m, "sluice_consumer_lag", &[("partition", &p.to_string())]) == Some(0.0)
        })
    });
    let m = scrape(port);
    assert_eq!(
        metric(&m, "sluice_events_consumed_total", &[]),
        Some(900.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sluice_records_emitted_total", &[("output", "out")]),
        Some(900.0)
    );
    let committed: BTreeMap<String, i64> = serde_json::from_str(&kafka_tool(&[
        "committed",
        "--broker",
        &broker().addr,
        "--topic",
        &names.input,
        "--group",
        &names.group,
    ]))
    .unwrap();
    for (partition, offset) in &committed {
        assert_eq!(
            metric(&m, "sluice_committed_offset", &[("partition", partition)]),
            Some(*offset as f64),
            "partition {partition}"
        );
    }
    // Every record's acknowledgement is timed once, end to end.
    assert_eq!(
        metric(
            &m,
            "sluice_end_to_end_latency_seconds_count",
            &[("output", "out")]
        ),
        Some(900.0)
    );
    assert!(metric(&m, "sluice_process_batch_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert_eq!(
        metric(
            &m,
            "sluice_plugin_info",
            &[("plugin", "passthrough"), ("abi_version", "1.3")]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, "sluice_workers", &[]), Some(2.0));
    assert_eq!(metric(&m, "sluice_ready", &[]), Some(1.0));
    assert_eq!(metric(&m, "sluice_assigned_partitions", &[]), Some(3.0));
    assert_eq!(
        metric(&m, "sluice_sink_reachable", &[("output", "out")]),
        Some(1.0)
    );
    assert!(metric(&m, "sluice_rebalances_total", &[("kind", "assign")]).unwrap() >= 1.0);
    assert!(metric(&m, "sluice_worker_busy_seconds_total", &[]).unwrap() > 0.0);
    // Prometheus' own linter accepts the exposition (names, units, _total counters).
    let (lint_ok, lint) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(&m);
    assert!(lint_ok, "promtool check metrics: {lint}");
    assert_eq!(http_get(port, "/healthz").map(|(c, _)| c), Some(200));

    // `sluice status` renders the same state as a table.
    let out = sluice_cmd(&["status", "--admin", &format!("127.0.0.1:{port}")]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("ready") && table.contains("passthrough"),
        "{table}"
    );
    for p in 0..3 {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("{}  {p} ", names.input))),
            "partition {p} in:\n{table}"
        );
    }

    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    // JSON lines (stderr is not a terminal); each lifecycle event once, with its partitions.
    for message in ["draining", "stopped"] {
        assert_eq!(
            log_events(&log, message).len(),
            1,
            "{message} once in:\n{log}"
        );
    }
    let assigned: Vec<String> = log_events(&log, "assigned")
        .iter()
        .flat_map(|e| {
            e["partitions"]
                .as_str()
                .unwrap()
                .split(' ')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        assigned.len(),
        3,
        "each partition assigned once: {assigned:?}"
    );
    let final_commit = log_events(&log, "committed");
    assert_eq!(
        final_commit.len(),
        1,
        "the final commit is logged once:\n{log}"
    );
    let positions: i64 = final_commit[0]["offsets"]
        .as_str()
        .unwrap()
        .split(' ')
        .map(|p| p.rsplit_once('@').unwrap().1.parse::<i64>().unwrap())
        .sum();
    assert_eq!(positions, 900, "{final_commit:?}");
    assert!(
        log_events(&log, "draining")[0]["partitions"]
            .as_str()
            .is_some_and(|p| p.split(' ').count() == 3),
        "{log}"
    );
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &str) -> (bool, String);
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &str) -> (bool, String) {
        use std::io::Write as _;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool is installed by `make deps` (Debian package prometheus)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// The misbehaving fixture forwarding events, with its gate (an event `hold` blocks its call
/// until the returned file exists), and an admin endpoint: (gate, port, spec).
fn gated_spec(dir: &Path, names: &Names, source: &str, admin: &str) -> (PathBuf, u16, PathBuf) {
    let gate = dir.join("gate");
    let plugin_spec = format!(
        "  path: {}\n  config: {{mode: ok, gate_file: {}}}\n",
        plugin("misbehaving").display(),
        gate.display()
    );
    let port = free_port();
    let spec = with_admin(
        &pipeline_spec(dir, names, &plugin_spec, source),
        port,
        admin,
    );
    (gate, port, spec)
}

/// Produces one event `hold` to `topic` (it blocks a gated worker).
fn produce_hold(dir: &Path, topic: &str) {
    let held = dir.join("held.txt");
    std::fs::write(&held, "hold\n").unwrap();
    kafka_tool(&[
        "produce-file",
        "--broker",
        &broker().addr,
        "--topic",
        topic,
        "--file",
        held.to_str().unwrap(),
    ]);
}

#[test]
fn status_lag_matches_the_reference_client_and_readiness_drops_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(2);
    produce(&names.input, 200, 0);
    let (gate, port, spec) = gated_spec(dir.path(), &names, "    drain-timeout-ms: 60000\n", "");
    let mut run = start(&spec, dir.path());
    wait_until("200 committed", Duration::from_secs(60), || {
        committed_sum(&names.input, &names.group) == 200
    });
    // A `hold` event blocks its worker mid-call: no flush round completes, so no commit, while
    // 100 more events arrive behind it.
    produce_hold(dir.path(), &names.input);
    produce(&names.input, 100, 200);

    // /status and the reference client agree on every partition's high watermark, committed
    // offset and lag (librdkafka's statistics refresh every 200 ms: wait for them).
    let mut last = (BTreeMap::new(), BTreeMap::new());
    wait_until(
        "/status lag == the reference client's lag",
        Duration::from_secs(30),
        || {
            last = (status_lag(port), reference_lag(&names.input, &names.group));
            last.0 == last.1 && last.1.values().map(|(_, _, lag)| lag).sum::<i64>() > 0
        },
    );
    let total: i64 = last.1.values().map(|(_, _, lag)| lag).sum();
    assert!(total >= 1, "{last:?}");
    assert_eq!(
        last.1.values().map(|(h, _, _)| h).sum::<i64>(),
        301,
        "{last:?}"
    );
    assert_eq!(http_get(port, "/readyz").map(|(c, _)| c), Some(200));

    // SIGTERM: the pipeline drains (the held event keeps it draining) and is not ready.
    run.signal("-TERM");
    wait_until("not ready while draining", Duration::from_secs(10), || {
        http_get(port, "/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("draining"))
    });
    let (_, status) = http_get(port, "/status").unwrap();
    assert!(status.contains("\"lifecycle\":\"draining\""), "{status}");
    assert_eq!(
        http_get(port, "/healthz").map(|(c, _)| c),
        Some(200),
        "draining is alive"
    );
    std::fs::write(&gate, "").unwrap();
    let status = run.child.wait().unwrap();
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        committed_sum(&names.input, &names.group),
        301,
        "everything done is committed"
    );
    assert!(
        http_get(port, "/readyz").is_none(),
        "the endpoint stops with the run"
    );
}

#[test]
fn sluice_top_shows_pods_live_in_a_real_terminal_and_quits_on_q() {
    let dir = tempfile::tempdir().unwrap();
    let (names, port, run) = passthrough_with_admin(dir.path(), 2, 300);
    let socket = unique("top");
    let tmux = |args: &[&str]| {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&socket)
            .args(args)
            .output()
            .expect("tmux is installed by `make deps`");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let sluice = plugin("passthrough").parent().unwrap().join("sluice");
    // A second, unreachable pod: its panel says so, and the view keeps running.
    let dead = free_port();
    tmux(&[
        "new-session",
        "-d",
        "-x",
        "160",
        "-y",
        "40",
        "-s",
        "top",
        "sh",
    ]);
    tmux(&[
        "send-keys",
        "-t",
        "top",
        &format!(
            "{} top --admin 127.0.0.1:{port},127.0.0.1:{dead} --interval 0.5; echo TOP-EXIT=$?",
            sluice.display()
        ),
        "Enter",
    ]);
    let mut screen = String::new();
    wait_until(
        "sluice top draws both pods",
        Duration::from_secs(20),
        || {
            screen = tmux(&["capture-pane", "-p", "-t", "top"]);
            screen.contains(&format!("{}/0", names.input))
                && screen.contains(&format!("{}/1", names.input))
                && screen.contains("ready")
                && screen.contains(&format!("127.0.0.1:{dead}"))
                // The title says the pod's condition (`/status`'s, from the watchdog: a pod
                // is `Unassigned` until its first verdict after the assignment).
                && (screen.contains("Healthy ") || screen.contains("Idle "))
        },
    );
    assert!(
        screen.contains("LAG TREND") && screen.contains("backpressure"),
        "{screen}"
    );
    assert!(
        screen.contains("Connection refused")
            || screen.contains("refused")
            || screen.contains("connect"),
        "{screen}"
    );
    tmux(&["send-keys", "-t", "top", "q"]);
    wait_until("sluice top exits on q", Duration::from_secs(10), || {
        screen = tmux(&["capture-pane", "-p", "-t", "top"]);
        screen.contains("TOP-EXIT=0")
    });
    // The terminal is restored: the shell's screen, not the view, is what remains.
    assert!(!screen.contains("LAG TREND"), "{screen}");
    tmux(&["kill-server"]);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// The CPU quota changes under a running pipeline, as an in-place pod resize does: the worker
/// pool follows it mid-stream (2 -> 1 -> 2 workers; the quota file is a stand-in cgroup root the
/// test rewrites) while events keep arriving, for pinned partitions and for keys spread over
/// every worker. Events flow on each pool size; every event arrives once and in key order, every
/// offset is committed, and the count shows in `/status`, `sluice_workers` and the log.
#[test]
fn the_worker_pool_follows_the_cpu_quota_mid_stream() {
    for ordering in ["partition", "key"] {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = dir.path().join("cgroup");
        std::fs::create_dir(&cgroup).unwrap();
        let quota = |text: &str| std::fs::write(cgroup.join("cpu.max"), text).unwrap();
        quota("200000 100000\n");
        let names = topics(4);
        let port = free_port();
        // 1 ms per event: a worker keeps up with the producer below, but not by much.
        let spec = slow_spec(dir.path(), &names, 1000, "    batch-size: 32\n");
        let text = std::fs::read_to_string(&spec).unwrap();
        std::fs::write(
            &spec,
            format!("{text}ordering: {ordering}\nadmin:\n  listen: 127.0.0.1:{port}\n"),
        )
        .unwrap();
        // Events keep arriving until the test has seen both resizes and progress after each.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let producer = {
            let (stop, input) = (stop.clone(), names.input.clone());
            std::thread::spawn(move || {
                let mut next = 0;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    produce(&input, 300, next);
                    next += 300;
                }
                next
            })
        };
        let run = sluice_tests::start_with_env(
            &spec,
            dir.path(),
            &[("SLUICE_CGROUP_ROOT", cgroup.to_str().unwrap())],
        );
        let workers = || -> Option<(u64, usize, f64)> {
            let (_, body) = http_get(port, "/status")?;
            let status: Value = serde_json::from_str(&body).ok()?;
            let gauge = metric(&http_get(port, "/metrics")?.1, "sluice_workers", &[])?;
            Some((
                status["capacity"]["workers"].as_u64()?,
                status["workers"].as_array()?.len(),
                gauge,
            ))
        };
        let committed = || committed_sum(&names.input, &names.group);
        let progress = |what: &str| {
            let from = committed();
            wait_until(what, Duration::from_secs(60), || committed() >= from + 300);
        };
        wait_until("a pool of 2 workers", Duration::from_secs(60), || {
            workers() == Some((2, 2, 2.0))
        });
        progress("events flowing on 2 workers");
        quota("100000 100000\n");
        wait_until(
            "the pool shrinks to 1 worker",
            Duration::from_secs(60),
            || workers() == Some((1, 1, 1.0)),
        );
        progress("events flowing on 1 worker");
        quota("max 100000\n"); // no quota: as many workers as the host's CPUs
        wait_until(
            "the pool grows back to 2 workers",
            Duration::from_secs(60),
            || workers() == Some((2, 2, 2.0)),
        );
        progress("events flowing on 2 workers again");
        stop.store(true, std::sync::atomic::Ordering::Release);
        let total = producer.join().unwrap();
        let records = consume(&names.output, total);
        let (code, log) = run.stop();
        assert_eq!(code, Some(0), "graceful stop exits 0:\n{log}");
        assert_eq!(records.len(), total, "{ordering}: every event once:\n{log}");
        assert_eq!(check_every_event_once_in_key_order(&records, total), 0);
        assert_eq!(
            committed_sum(&names.input, &names.group),
            total as i64,
            "{ordering}: every offset committed:\n{log}"
        );
        let resized: Vec<(u64, u64)> = log_events(&log, "workers resized")
            .iter()
            .map(|e| (e["from"].as_u64().unwrap(), e["to"].as_u64().unwrap()))
            .collect();
        assert_eq!(resized, [(2, 1), (1, 2)], "{ordering}:\n{log}");
        let ran_on: std::collections::BTreeSet<&str> = records
            .iter()
            .filter_map(|r| r["headers"]["worker"].as_str())
            .collect();
        assert_eq!(ran_on.len(), 2, "{ordering}: both workers ran events");
    }
}

/// The seq numbers of records read from an output topic.
fn seqs(records: &[Value]) -> std::collections::BTreeSet<i64> {
    records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            v["seq"].as_i64().unwrap()
        })
        .collect()
}

/// Per partition, the first offset at or after `at_ms` by the broker's time index, as the
/// reference client reads it.
fn time_index(topic: &str, at_ms: i64) -> BTreeMap<String, i64> {
    serde_json::from_str(&kafka_tool(&[
        "offsets-for-times",
        "--broker",
        &broker().addr,
        "--topic",
        topic,
        "--time-ms",
        &at_ms.to_string(),
    ]))
    .unwrap()
}

/// `ms` since the epoch as RFC 3339 (UTC, milliseconds), by `date`.
fn rfc3339(ms: u128) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{}.{:03}", ms / 1000, ms % 1000)])
        .arg("+%Y-%m-%dT%H:%M:%S.%3NZ")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A run of `spec` (extra `args`) until `expect` records are in `output`; the records and log.
fn run_until(
    spec: &Path,
    dir: &Path,
    args: &[&str],
    output: &str,
    expect: usize,
) -> (Vec<Value>, String) {
    let run = start_with(spec, dir, args, &[]);
    let records = consume(output, expect);
    // Nothing more arrives after the expected ones.
    std::thread::sleep(Duration::from_secs(2));
    let records = if records.len() == expect {
        consume_quick(output)
    } else {
        records
    };
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    (records, log)
}

/// `start-from` places a group that has no committed offsets (at a time, through the broker's
/// time index; at explicit offsets; at the end), and `sluice run --reset` rewinds a group that
/// has them. Checked against the reference client: its reading of the broker's time index, and
/// the input topic's (partition, offset) -> seq.
#[test]
fn start_from_places_a_new_group_and_reset_rewinds_a_committed_one() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(2);
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    produce(&names.input, 20, 0);
    std::thread::sleep(Duration::from_millis(1500));
    let at = now_ms();
    std::thread::sleep(Duration::from_millis(500));
    produce(&names.input, 20, 20);
    // Each input event's position, as the reference client reads them.
    let mut position: HashMap<i64, (i64, i64)> = HashMap::new();
    for r in consume(&names.input, 40) {
        let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        let at = (
            r["partition"].as_i64().unwrap(),
            r["offset"].as_i64().unwrap(),
        );
        position.insert(v["seq"].as_i64().unwrap(), at);
    }
    let index = time_index(&names.input, at as i64);
    let from = |starts: &BTreeMap<String, i64>| -> std::collections::BTreeSet<i64> {
        position
            .iter()
            .filter(|(_, (p, o))| *o >= starts[&p.to_string()])
            .map(|(seq, _)| *seq)
            .collect()
    };
    // The broker's time index puts the start of each partition's second batch there.
    assert_eq!(
        from(&index),
        (20..40).collect(),
        "the broker's time index: {index:?}"
    );
    // Each step reads the same input as its own group, into its own output topic.
    let step = |extra: &str| -> (Names, PathBuf) {
        let n = Names {
            input: names.input.clone(),
            output: unique("out"),
            group: unique("group"),
        };
        broker().create_topic(&n.output, 2);
        let dir = dir.path().join(&n.group);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = passthrough_spec(&dir, &n, extra);
        (n, spec)
    };

    // 1. A time: the second batch only, starting where the time index says.
    let (one, spec) = step(&format!("    start-from: \"{}\"\n", rfc3339(at)));
    let (records, log) = run_until(&spec, dir.path(), &[], &one.output, 20);
    assert_eq!(seqs(&records), (20..40).collect(), "{log}");
    // Where each partition started, as logged, is where the reference client's time index says.
    let started: BTreeMap<String, String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "starting the partition from start-from")
        .map(|v| {
            let tp = v["partition"].as_str().unwrap().to_owned();
            (tp, v["offset"].as_str().unwrap().to_owned())
        })
        .collect();
    let expected: BTreeMap<String, String> = index
        .iter()
        .map(|(p, o)| (format!("{}/{p}", names.input), o.to_string()))
        .collect();
    assert_eq!(started, expected, "{log}");

    // 2. Explicit offsets: partition 0 from 3, partition 1 from 5.
    let starts: BTreeMap<String, i64> = [("0".to_owned(), 3), ("1".to_owned(), 5)].into();
    let (two, spec) = step(&format!(
        "    start-from: {{\"{0}/0\": 3, \"{0}/1\": 5}}\n",
        names.input
    ));
    let expect = from(&starts);
    let (records, log) = run_until(&spec, dir.path(), &[], &two.output, expect.len());
    assert_eq!(seqs(&records), expect, "{log}");

    // 3. The group of step 1 has committed everything: a restart with --reset and
    //    `start-from: earliest` reads all 40 again, and commits them again.
    assert_eq!(committed_sum(&names.input, &one.group), 40);
    let again = dir.path().join("reset");
    std::fs::create_dir_all(&again).unwrap();
    let spec = passthrough_spec(&again, &one, "    start-from: earliest\n");
    let (records, log) = run_until(&spec, dir.path(), &["--reset"], &one.output, 60);
    assert_eq!(
        records.len(),
        60,
        "20 from step 1, then all 40 again:\n{log}"
    );
    assert_eq!(seqs(&records), (0..40).collect());
    assert!(log.contains("--reset"), "the rewind is logged:\n{log}");
    assert_eq!(committed_sum(&names.input, &one.group), 40);

    // 4. Latest: a new group starts at the end; only what is produced after it joined arrives.
    let (four, spec) = step("    start-from: latest\n");
    let run = start_with(&spec, dir.path(), &[], &[]);
    wait_until("the partitions assigned", Duration::from_secs(30), || {
        std::fs::read_to_string(&run.log).is_ok_and(|l| l.contains("\"assigned\""))
    });
    std::thread::sleep(Duration::from_secs(2));
    produce(&names.input, 10, 40);
    let records = consume(&four.output, 10);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(seqs(&records), (40..50).collect(), "{log}");
}

/// `windowed-count` on the state store, in 1 s windows keyed by the produced `key`.
fn windowed_spec(dir: &Path, names: &Names, output: &str, extra_source: &str) -> PathBuf {
    write_spec(
        dir,
        &format!(
            "name: counts\nplugin:\n  path: {}\n  config: {{key_field: key, window_ms: 1000}}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{}]\n    group-id: {}\n    commit-interval-ms: 200\n    properties: {{session.timeout.ms: \"6000\", heartbeat.interval.ms: \"1000\"}}\n{extra_source}state:\n  stores: [windows]\nadmin:\n  lag-interval-ms: 500\n  starved-after-ms: 10000\noutputs:\n  counts:\n    kafka: {{topic: {output}}}\n",
            plugin("windowed-count").display(),
            broker().addr,
            names.input,
            names.group,
        ),
    )
}

/// (key, window start) -> events, from input records as the reference client read them.
fn reference_windows<'a>(records: impl Iterator<Item = &'a Value>) -> BTreeMap<(String, i64), u64> {
    let mut counts = BTreeMap::new();
    for r in records {
        let ts = r["timestamp"].as_i64().unwrap();
        let key = r["key"].as_str().unwrap().to_owned();
        *counts.entry((key, ts - ts.rem_euclid(1000))).or_insert(0) += 1;
    }
    counts
}

/// The closed windows' counts in the output: (key, window start) -> every count emitted for it.
fn emitted_windows(records: &[Value]) -> BTreeMap<(String, i64), std::collections::BTreeSet<u64>> {
    let mut emitted: BTreeMap<_, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for r in records {
        let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        if v["closed"] == true {
            emitted
                .entry((
                    v["key"].as_str().unwrap().to_owned(),
                    v["window_start"].as_i64().unwrap(),
                ))
                .or_default()
                .insert(v["count"].as_u64().unwrap());
        }
    }
    emitted
}

/// Every window that ends by `until` was emitted closed with exactly the reference's count
/// (re-emissions after a restart included), and nothing else was.
fn assert_windows_match(
    what: &str,
    reference: &BTreeMap<(String, i64), u64>,
    emitted: &BTreeMap<(String, i64), std::collections::BTreeSet<u64>>,
    until: i64,
) {
    let mut wrong = Vec::new();
    for ((key, start), count) in reference.iter().filter(|((_, s), _)| s + 1000 <= until) {
        match emitted.get(&(key.clone(), *start)) {
            Some(counts) if counts.len() == 1 && counts.contains(count) => {}
            other => wrong.push(format!(
                "{key}@{start}: reference {count}, emitted {other:?}"
            )),
        }
    }
    for ((key, start), counts) in emitted.iter().filter(|((_, s), _)| s + 1000 <= until) {
        if !reference.contains_key(&(key.clone(), *start)) {
            wrong.push(format!(
                "{key}@{start}: emitted {counts:?}, not in the reference"
            ));
        }
    }
    let checked = reference.keys().filter(|(_, s)| s + 1000 <= until).count();
    assert!(
        wrong.is_empty() && checked > 0,
        "{what}: {} of {checked} windows wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

/// Keyed state through the whole life of a pipeline, on the real broker: windowed counts under
/// 10 kill -9s at random points and a rebalance to a second process equal a reference computed
/// from the input the reference client reads (each window's count exact, emitted at least
/// once); a restore into an empty directory equals one from the local copy; a rewind to a
/// time restarts the output where the broker's time index says, with the state reset.
#[test]
fn stateful_windowed_counts_survive_kill_9s_a_rebalance_and_a_rewind() {
    // The heaviest test: on a broker of its own, so neither it nor the others stall the other.
    let own = on_own_broker();
    let dir = tempfile::tempdir().unwrap();
    let names = topics(4);
    let spec = windowed_spec(dir.path(), &names, &names.output, "");
    let (state_a, state_b) = (dir.path().join("state-a"), dir.path().join("state-b"));
    let env_a = [("SLUICE_STATE_DIR", state_a.to_str().unwrap())];
    let env_b = [("SLUICE_STATE_DIR", state_b.to_str().unwrap())];

    // Events keep arriving all along: 200 every ~300 ms, with the producer's time.
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (input, produced, stop) = (names.input.clone(), produced.clone(), stop.clone());
        std::thread::spawn(move || {
            use_broker(own);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let start = produced.load(std::sync::atomic::Ordering::Relaxed);
                produce(&input, 200, start);
                produced.fetch_add(200, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = seed;
    let mut next = move |below: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % below
    };
    eprintln!("kill points from seed {seed}");
    let mut committed = 0;
    for kill in 0..10 {
        // With an admin endpoint (its `/status` shows what the run holds).
        let admin = format!("127.0.0.1:{}", free_port());
        let run = start_with(&spec, dir.path(), &["--admin", &admin], &env_a);
        wait_until("the partitions assigned", Duration::from_secs(120), || {
            run.has_partitions()
        });
        // Mid-stream: once this run has committed something of its own.
        wait_until("a commit of this run", Duration::from_secs(120), || {
            std::thread::sleep(Duration::from_millis(300));
            committed_sum(&names.input, &names.group) > committed
        });
        let after = next(1500);
        std::thread::sleep(Duration::from_millis(after));
        run.kill();
        committed = committed_sum(&names.input, &names.group);
        eprintln!("kill {kill}: {after} ms after a first commit; {committed} committed");
    }

    // A rebalance: b joins a, gets some partitions and their state from the changelogs.
    let admin_a = format!("127.0.0.1:{}", free_port());
    let a = start_with(&spec, dir.path(), &["--admin", &admin_a], &env_a);
    wait_until("a assigned", Duration::from_secs(60), || a.has_partitions());
    std::thread::sleep(Duration::from_secs(2));
    let admin_b = format!("127.0.0.1:{}", free_port());
    let b = start_with(&spec, dir.path(), &["--admin", &admin_b], &env_b);
    wait_until("b assigned in a rebalance", Duration::from_secs(90), || {
        b.has_partitions()
    });
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().unwrap();
    // Closing events, one per key (so on every partition), after every window so far has ended.
    std::thread::sleep(Duration::from_millis(1500));
    let before_close = produced.load(std::sync::atomic::Ordering::Relaxed);
    produce(&names.input, 16, before_close);
    let total = before_close + 16;
    wait_until("every event committed", Duration::from_secs(180), || {
        // Each look starts the reference client: look about once a second.
        std::thread::sleep(Duration::from_millis(800));
        committed_sum(&names.input, &names.group) == total as i64
    });
    let (code_a, log_a) = a.stop();
    let (code_b, log_b) = b.stop();
    assert_eq!((code_a, code_b), (Some(0), Some(0)), "{log_a}\n{log_b}");
    assert!(
        !log_events(&log_b, "state: restoring").is_empty()
            && log_events(&log_b, "state: restored")
                .iter()
                .any(|e| e["records"].as_u64() > Some(0)),
        "b restored state it gained in the rebalance:\n{log_b}"
    );

    // To the end, however long the broker stalls (a silence timeout could cut it short).
    let input = consume_quick(&names.input);
    assert_eq!(input.len(), total);
    let closing: Vec<&Value> = input
        .iter()
        .filter(|r| {
            let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            v["seq"].as_u64().unwrap() as usize >= before_close
        })
        .collect();
    let partitions: std::collections::BTreeSet<i64> = closing
        .iter()
        .map(|r| r["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(
        partitions.len(),
        4,
        "the closing events reach every partition"
    );
    let until = closing
        .iter()
        .map(|r| r["timestamp"].as_i64().unwrap())
        .min()
        .unwrap();
    let reference = reference_windows(input.iter());
    let output = consume_quick(&names.output);
    assert_windows_match(
        "after 10 kill -9s and a rebalance",
        &reference,
        &emitted_windows(&output),
        until,
    );

    // Restore into an empty directory equals restore from a's local copy (and checkpoints).
    let dump = |state_dir: &Path| sluice_tests::state_dump(&spec, state_dir);
    let (from_local, local_log) = dump(&state_a);
    let (from_changelog, fresh_log) = dump(&dir.path().join("state-fresh"));
    assert_eq!(from_local, from_changelog, "restores differ");
    assert!(from_local.len() > 16, "{from_local:?}");
    assert!(local_log.contains("local checkpoint"), "{local_log}");
    assert!(
        !fresh_log.contains("local checkpoint") && fresh_log.contains("beginning"),
        "{fresh_log}"
    );
    // Closed windows left the store once their close was committed (ABI 1.3 `committed`):
    // only those the closing events closed at the very end may still be there.
    let mut ends: BTreeMap<String, i64> = BTreeMap::new();
    for r in &input {
        let end = ends.entry(r["partition"].to_string()).or_default();
        *end = (*end).max(r["offset"].as_i64().unwrap() + 1);
    }
    let closed: Vec<&Value> = from_local
        .iter()
        .filter(|e| e["key"] != "m")
        .filter(|e| {
            let value: Value = serde_json::from_str(e["value"].as_str().unwrap()).unwrap();
            value.get("closed_at").is_some()
        })
        .collect();
    let emitted_closed = emitted_windows(&output).len();
    for entry in &closed {
        let (partition, value) = dump_entry(entry);
        assert!(
            value["closed_at"].as_i64().unwrap() >= ends[partition] - 16,
            "a window closed before the closing events is still in the store ({} of {emitted_closed} closed windows are): {entry}",
            closed.len()
        );
    }

    // A rewind to a time: the output restarts where the broker's time index says, and the
    // windows count only what was read again (state reset, never ahead of the input).
    let mut times: Vec<i64> = input
        .iter()
        .map(|r| r["timestamp"].as_i64().unwrap())
        .collect();
    times.sort_unstable();
    let at = times[times.len() / 2];
    let index = time_index(&names.input, at);
    let again: Vec<&Value> = input
        .iter()
        .filter(|r| r["offset"].as_i64().unwrap() >= index[&r["partition"].to_string()])
        .collect();
    let rewound = reference_windows(again.iter().copied());
    let output2 = unique("out");
    broker().create_topic(&output2, 4);
    let rewind_dir = dir.path().join("rewind");
    std::fs::create_dir_all(&rewind_dir).unwrap();
    let spec2 = windowed_spec(
        &rewind_dir,
        &names,
        &output2,
        &format!("    start-from: \"{}\"\n", rfc3339(at as u128)),
    );
    let expect = rewound.keys().filter(|(_, s)| s + 1000 <= until).count();
    let admin = format!("127.0.0.1:{}", free_port());
    let run = start_with(&spec2, dir.path(), &["--reset", "--admin", &admin], &env_a);
    let closed = || {
        emitted_windows(&consume_quick(&output2))
            .keys()
            .filter(|(_, s)| s + 1000 <= until)
            .count()
    };
    wait_until(
        "the rewound windows closed",
        Duration::from_secs(180),
        || {
            // Each look is a reference consumer joining a group: every 3 s is plenty.
            std::thread::sleep(Duration::from_secs(3));
            closed() >= expect
        },
    );
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log_events(&log, "state: reset").is_empty(), "{log}");
    assert_windows_match(
        "after a rewind",
        &rewound,
        &emitted_windows(&consume_quick(&output2)),
        until,
    );
    // The changelogs hold nothing from before the rewind: a restore from them alone has only
    // windows that counted events read again.
    let (restored, _) = dump(&dir.path().join("state-after-rewind"));
    let mut windows = 0;
    for entry in &restored {
        if entry["key"] == "m" {
            continue;
        }
        let (partition, value) = dump_entry(entry);
        assert!(
            value["through"].as_i64().unwrap() >= index[partition],
            "state from before the rewind survived: {entry}"
        );
        windows += 1;
    }
    assert!(windows > 0, "{restored:?}");
}

/// A `sluice state dump` line of a window store: its input partition's number and its value.
fn dump_entry(entry: &Value) -> (&str, Value) {
    let partition = entry["partition"].as_str().unwrap();
    let value = serde_json::from_str(entry["value"].as_str().unwrap()).unwrap();
    (partition.rsplit('/').next().unwrap(), value)
}

/// The `/status` of the pod whose admin endpoint is on `port` (`Null` while it does not answer).
fn admin_status(port: u16) -> Value {
    http_get(port, "/status")
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .unwrap_or(Value::Null)
}

/// Waits up to `timeout` for the pod on `port` to say `condition` in `/status`, and checks the
/// gauge says it too.
fn wait_for_condition(port: u16, condition: &str, timeout: Duration) {
    wait_until(condition, timeout, || {
        admin_status(port)["condition"]["name"] == condition
    });
    let m = http_get(port, "/metrics").unwrap().1;
    assert_eq!(
        metric(&m, "sluice_condition", &[("condition", condition)]),
        Some(1.0),
        "{m}"
    );
}

/// Waits for the remedies to give up on `condition` after one rejoin: `/healthz` fails, saying so.
fn wait_for_give_up(port: u16, condition: &str) {
    let why = format!("{condition} after 1 rejoins");
    wait_until("the remedy gives up", Duration::from_secs(60), || {
        http_get(port, "/healthz").is_some_and(|(code, body)| code == 503 && body.contains(&why))
    });
}

/// A plugin call that does not return: the pod says `Stalled` (in `/status`, the metric and one
/// log line) within its bound, leaves and rejoins the group (the remedy), and when that does not
/// help, fails `/healthz` so Kubernetes would restart it. Once the call returns, the condition
/// clears and every event arrives (at least once).
#[test]
fn a_plugin_that_blocks_is_stalled_then_rejoined_then_unhealthy_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(2);
    produce(&names.input, 200, 0);
    let (gate, port, spec) = gated_spec(
        dir.path(),
        &names,
        "    drain-timeout-ms: 2000\n",
        "  stalled-after-ms: 3000\n  rejoin-attempts: 1\n",
    );
    let run = start(&spec, dir.path());
    wait_until("200 committed", Duration::from_secs(60), || {
        committed_sum(&names.input, &names.group) == 200
    });
    let status = || admin_status(port);
    assert_ne!(status()["condition"]["name"], "Stalled");
    // A `hold` event blocks its worker mid-call, with 100 more events behind it.
    produce_hold(dir.path(), &names.input);
    produce(&names.input, 100, 200);
    let held_at = Instant::now();
    wait_for_condition(port, "Stalled", Duration::from_secs(15));
    let stalled_after = held_at.elapsed();
    let subjects = status()["condition"]["subjects"].clone();
    assert!(
        subjects.as_array().is_some_and(|s| !s.is_empty()
            && s.iter()
                .all(|p| p.as_str().unwrap().starts_with(&names.input))),
        "{subjects}"
    );
    wait_for_give_up(port, "Stalled");
    // The cause goes away: the call returns, the events go through, the condition clears.
    std::fs::write(&gate, "").unwrap();
    wait_until("all 301 committed", Duration::from_secs(60), || {
        committed_sum(&names.input, &names.group) == 301
    });
    wait_until("no longer Stalled", Duration::from_secs(10), || {
        status()["condition"]["name"] != "Stalled"
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        !log_events(&log, "condition: Stalled").is_empty(),
        "the condition is logged on entry:\n{log}"
    );
    assert_eq!(
        log_events(&log, "remedy: leaving the group").len(),
        1,
        "one rejoin:\n{log}"
    );
    assert_eq!(log_events(&log, "remedies exhausted").len(), 1, "{log}");
    let values: std::collections::BTreeSet<String> = consume_quick(&names.output)
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(values.len(), 301, "every event arrived");
    eprintln!("Stalled {stalled_after:?} after the hold (bound 3 s)");
}

/// A pod (admin endpoint on `port`) on a broker of its own, working through `FROZEN_TOTAL`
/// events at ~1 ms each on 2 workers: seconds of lag are left after its first commit, when the
/// broker tests freeze the broker.
struct FreezablePod {
    broker: &'static Broker,
    _dir: tempfile::TempDir,
    names: Names,
    port: u16,
    run: Running,
}

const FROZEN_TOTAL: usize = 10_000;

impl FreezablePod {
    fn start(extra_source: &str, admin: &str) -> FreezablePod {
        let broker = on_own_broker();
        let dir = tempfile::tempdir().unwrap();
        let names = topics(2);
        produce(&names.input, FROZEN_TOTAL, 0);
        let port = free_port();
        let spec = with_admin(
            &slow_spec(
                dir.path(),
                &names,
                1000,
                &format!("    batch-size: 16\n{extra_source}"),
            ),
            port,
            admin,
        );
        let run = start(&spec, dir.path());
        wait_until("a first commit", Duration::from_secs(60), || {
            committed_sum(&names.input, &names.group) > 0
        });
        FreezablePod {
            broker,
            _dir: dir,
            names,
            port,
            run,
        }
    }

    fn condition(&self) -> Value {
        admin_status(self.port)["condition"]["name"].clone()
    }

    /// Freezes the broker; returns how long until the pod said `condition` (shown as the gauge
    /// too).
    fn freeze_until(&self, condition: &str) -> Duration {
        self.broker.pause();
        let paused_at = Instant::now();
        wait_for_condition(self.port, condition, Duration::from_secs(20));
        paused_at.elapsed()
    }

    /// Lets the broker go on: every offset is committed, `condition` clears, every event
    /// arrives (at least once). Returns the pod's log.
    fn thaw(self, condition: &str) -> String {
        self.broker.resume();
        wait_until("every offset committed", Duration::from_secs(120), || {
            committed_sum(&self.names.input, &self.names.group) == FROZEN_TOTAL as i64
        });
        wait_until("the condition cleared", Duration::from_secs(15), || {
            let now = self.condition();
            now.is_string() && now != condition
        });
        let (healthz, _) = http_get(self.port, "/healthz").unwrap();
        assert_eq!(healthz, 200, "nothing gave up");
        let (code, log) = self.run.stop();
        assert_eq!(code, Some(0), "{log}");
        assert!(
            !log_events(&log, &format!("condition: {condition}")).is_empty(),
            "the condition is logged on entry:\n{log}"
        );
        let values: std::collections::BTreeSet<String> = consume_quick(&self.names.output)
            .iter()
            .map(|r| r["value"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(values.len(), FROZEN_TOTAL, "every event arrived");
        log
    }
}

/// `Stalled`, provoked by the broker: a broker that stops answering (SIGSTOP, connections left
/// open) leaves a pod with lag and no progress. It says `Stalled` within its bound and tries its
/// remedy (leave and rejoin); once the broker answers again the pod gets its partitions back, the
/// condition clears and every event arrives (at least once).
#[test]
fn a_broker_that_stops_answering_leaves_the_pod_stalled_until_it_answers_again() {
    let pod = FreezablePod::start(
        "    drain-timeout-ms: 2000\n",
        "  stalled-after-ms: 3000\n  rejoin-attempts: 1\n",
    );
    let stalled_after = pod.freeze_until("Stalled");
    wait_until("the rejoin", Duration::from_secs(30), || {
        http_get(pod.port, "/metrics").is_some_and(|(_, m)| {
            metric(&m, "sluice_remedies_total", &[("action", "rejoin")]) >= Some(1.0)
        })
    });
    pod.thaw("Stalled");
    eprintln!("Stalled {stalled_after:?} after the broker froze (bound 3 s)");
}

/// `CommitsFailing`, provoked by the broker: frozen (SIGSTOP) while the pod is working, its
/// interval commit goes unanswered. The poll loop does not wait for the answer: after 5 s the
/// commit counts as failing, and after `commits-failing-after-ms` the pod says `CommitsFailing`
/// (with `Stalled` bounded far away). Once the broker answers again, the commits go through, the
/// condition clears and every event arrives.
#[test]
fn a_broker_that_stops_answering_commits_is_commits_failing_until_it_answers_again() {
    let pod = FreezablePod::start(
        "",
        "  stalled-after-ms: 600000\n  commits-failing-after-ms: 2000\n",
    );
    let failing_after = pod.freeze_until("CommitsFailing");
    let log = pod.thaw("CommitsFailing");
    assert!(
        !log_events(&log, "commit failed: no answer from the broker").is_empty(),
        "{log}"
    );
    eprintln!("CommitsFailing {failing_after:?} after the broker froze (5 s unanswered + 2 s)");
}

/// `Starved`, provoked for real: a second member of a group whose one partition another member
/// works through slowly holds nothing while the group has lag (read from the broker). It says
/// `Starved`, leaves and rejoins once, and then fails `/healthz`. (A member beside a frozen one
/// is the last test: it is `Starved` only until the frozen member's session expires.)
#[test]
fn a_member_without_partitions_while_the_group_has_lag_is_starved() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(1);
    produce(&names.input, 400, 0);
    // ~150 ms per event: the one partition keeps lag for the whole test (a minute).
    let busy = start(
        &slow_spec(dir.path(), &names, 150_000, "    batch-size: 4\n"),
        dir.path(),
    );
    let other = second_pod_dir(dir.path(), &names);
    let port = free_port();
    let spec = with_admin(
        &passthrough_spec(&other, &names, ""),
        port,
        "  starved-after-ms: 3000\n  rejoin-attempts: 1\n",
    );
    let run = start(&spec, dir.path());
    wait_for_condition(port, "Starved", Duration::from_secs(60));
    assert_eq!(admin_status(port)["partitions"], serde_json::json!([]));
    wait_for_give_up(port, "Starved");
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    busy.kill();
    assert!(!log_events(&log, "condition: Starved").is_empty(), "{log}");
    assert_eq!(
        log_events(&log, "remedy: leaving the group").len(),
        1,
        "{log}"
    );
}

/// Once the group has committed something on `names.input` (its first member works), a
/// directory of its own for a second pod.
fn second_pod_dir(dir: &Path, names: &Names) -> PathBuf {
    wait_until("a first commit", Duration::from_secs(60), || {
        committed_sum(&names.input, &names.group) > 0
    });
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    other
}

/// A pod beside a frozen member (SIGSTOP, its connections left open): while the frozen member
/// still holds the group's only partition, the pod holds nothing and the group has lag, so it
/// says `Unassigned`, then `Starved` past its bound, and never `Healthy` without a partition.
/// Once the frozen member's session expires the pod takes the partition over, says `Healthy`
/// and finishes the work; the frozen member, let go on, loses nothing either.
#[test]
fn a_pod_beside_a_frozen_member_is_never_healthy_without_partitions_then_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(1);
    let total = 3000;
    produce(&names.input, total, 0);
    let session = "    batch-size: 4\n    properties: {session.timeout.ms: \"6000\", heartbeat.interval.ms: \"1000\"}\n";
    // ~5 ms per event: the one partition keeps lag for seconds.
    let frozen = start(&slow_spec(dir.path(), &names, 5000, session), dir.path());
    let other = second_pod_dir(dir.path(), &names);
    let port = free_port();
    let spec = with_admin(
        &slow_spec(&other, &names, 100, session),
        port,
        "  starved-after-ms: 4000\n  rejoin-attempts: 3\n",
    );
    let pod = start(&spec, dir.path());
    let mut seen: Vec<(String, usize)> = Vec::new();
    let sample = |seen: &mut Vec<(String, usize)>| {
        let status = admin_status(port);
        let condition = status["condition"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let held = status["partitions"].as_array().map_or(0, Vec::len);
        if seen.last() != Some(&(condition.clone(), held)) {
            seen.push((condition, held));
        }
        seen.last().cloned().unwrap()
    };
    wait_until(
        "Starved beside a live member",
        Duration::from_secs(60),
        || sample(&mut seen).0 == "Starved",
    );
    frozen.signal("-STOP");
    let frozen_at = Instant::now();
    wait_until("the partition taken over", Duration::from_secs(60), || {
        let (condition, held) = sample(&mut seen);
        condition == "Healthy" && held == 1
    });
    eprintln!(
        "beside a frozen member: {seen:?}; took over {:?} after the freeze",
        frozen_at.elapsed()
    );
    assert!(
        seen.iter().all(|(c, held)| *held > 0 || c != "Healthy"),
        "never Healthy without a partition: {seen:?}"
    );
    assert!(
        seen.iter().any(|(c, held)| c == "Unassigned" && *held == 0),
        "Unassigned before the bound: {seen:?}"
    );
    frozen.signal("-CONT");
    wait_until("every offset committed", Duration::from_secs(120), || {
        committed_sum(&names.input, &names.group) == total as i64
    });
    let (code, log) = pod.stop();
    assert_eq!(code, Some(0), "{log}");
    let (code, log) = frozen.stop();
    assert_eq!(
        code,
        Some(0),
        "the frozen member, let go on, stops cleanly:\n{log}"
    );
    let values: std::collections::BTreeSet<String> = consume_quick(&names.output)
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(values.len(), total, "every event arrived");
}
