//! What the stand-in broker could not show, on Apache Kafka and checked with Kafka's own Java
//! client: exactly-once Kafka -> Kafka under `kill -9`s with input flowing, transactional state
//! (state, outputs and offsets together) under `kill -9`s, broker restarts (SIGTERM and SIGKILL)
//! mixed with `kill -9`s of the pipeline, a partition leader killed in a secured three-node
//! cluster, the KIP-848 consumer protocol with a second member and a kill, and changelog
//! compaction bounding a restore by the keys.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{
    Broker, Cluster, Running, check_every_event_once_in_key_order, free_port, http_get,
    java_consume, java_tool_command, kafka_tool, log_events, plugin, random_ms, start, state_dump,
    try_kafka_tool, unique, wait_until, write_spec,
};

/// The broker the tests of this binary share (a test that restarts its broker has its own).
fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(Broker::start)
}

struct Names {
    input: String,
    output: String,
    group: String,
}

fn names(broker: &Broker, partitions: u32) -> Names {
    let names = Names {
        input: unique("in"),
        output: unique("out"),
        group: unique("group"),
    };
    broker.create_topic(&names.input, partitions);
    broker.create_topic(&names.output, partitions);
    names
}

/// A pipeline from `names.input` to `names.output` through `misbehaving` in slow mode
/// (`delay_us` per event), committing every 200 ms, a killed member gone from the group in 2 s
/// (classic protocol). `source` adds source settings, `top` top-level sections.
fn spec(
    dir: &Path,
    broker: &Broker,
    names: &Names,
    delay_us: u32,
    source: &str,
    top: &str,
) -> PathBuf {
    spec_with(
        dir,
        broker,
        names,
        &format!("delay_us: {delay_us}"),
        source,
        top,
    )
}

/// [`spec`] with more of `misbehaving`'s settings (`config`, beside `mode: slow`).
fn spec_with(
    dir: &Path,
    broker: &Broker,
    names: &Names,
    config: &str,
    source: &str,
    top: &str,
) -> PathBuf {
    write_spec(
        dir,
        &format!(
            "name: guarantees\nplugin:\n  path: {}\n  config: {{mode: slow, {config}}}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{}]\n    group-id: {}\n    commit-interval-ms: 200\n    batch-size: 16\n{source}{top}outputs:\n  out:\n    kafka: {{topic: {}}}\n",
            plugin("misbehaving").display(),
            broker.addr,
            names.input,
            names.group,
            names.output,
        ),
    )
}

const SHORT_SESSION: &str =
    "    properties: {session.timeout.ms: \"2000\", heartbeat.interval.ms: \"500\"}\n";

/// Events `0..count` flowing into `topic` at `rate` per second from Kafka's Java producer
/// (idempotent, acks=all, retrying through broker restarts), in the background.
struct Flow(Child);

impl Flow {
    fn start(broker: &Broker, topic: &str, count: usize, rate: u32) -> Flow {
        let child = java_tool_command(&[
            "produce",
            "--broker",
            &broker.addr,
            "--topic",
            topic,
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Java producer");
        let mut flow = Flow(child);
        wait_until("the first events in", Duration::from_secs(60), || {
            if let Some(status) = flow.0.try_wait().unwrap() {
                let mut stderr = String::new();
                use std::io::Read;
                let _ = flow.0.stderr.take().unwrap().read_to_string(&mut stderr);
                panic!("the Java producer ended early ({status}): {stderr}");
            }
            // Asked again on failure: confluent-kafka's admin client has crashed (SIGSEGV)
            // against a cluster that was still starting.
            let Ok(lag) = try_kafka_tool(&[
                "lag",
                "--broker",
                &broker.addr,
                "--topic",
                topic,
                "--group",
                "probe",
            ]) else {
                return false;
            };
            let lag: Value = serde_json::from_str(&lag).unwrap();
            lag.as_object()
                .unwrap()
                .values()
                .any(|p| p["high"].as_i64() > Some(0))
        });
        flow
    }

    /// Whether the producer is still producing.
    fn flowing(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    /// Waits until every event was acknowledged and `committed()` reaches them all (`total`),
    /// then stops `run` (SIGTERM), which must exit 0; returns its log.
    fn finish_with(
        self,
        run: Running,
        committed: impl Fn() -> i64,
        total: usize,
        timeout: Duration,
    ) -> String {
        self.finish();
        wait_until("every offset committed", timeout, || {
            committed() == total as i64
        });
        let (code, log) = run.stop();
        assert_eq!(code, Some(0), "{log}");
        log
    }

    /// Waits until every event was acknowledged.
    fn finish(mut self) {
        let status = self.0.wait().unwrap();
        let mut stderr = String::new();
        use std::io::Read;
        let _ = self.0.stderr.take().unwrap().read_to_string(&mut stderr);
        assert!(status.success(), "the Java producer failed: {stderr}");
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Exactly-once Kafka -> Kafka (`producer.transactional-id`): 10 `kill -9`s, each at a random
/// point after that run's first commit, while the input keeps flowing. Kafka's Java consumer
/// with `read_committed` then sees every input event exactly once in the output, in key order,
/// and none of the records the killed runs left in aborted transactions (which a
/// `read_uncommitted` reader does see: the test requires some, so the kills hit open
/// transactions).
#[test]
fn exactly_once_kafka_to_kafka_survives_ten_kill_9s_with_input_flowing() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let names = names(broker, 4);
    // 90 s of input: it still flows when the tenth kill lands, also when the machine runs the
    // other test binaries beside this one (each restart then takes longer).
    let total = 90_000;
    // The plugin is built (once per test process) before the input starts flowing.
    plugin("misbehaving");
    let flow = Flow::start(broker, &names.input, total, 1_000);
    let spec = spec(
        dir.path(),
        broker,
        &names,
        200,
        SHORT_SESSION,
        &format!("producer:\n  transactional-id: {}\n", unique("txn")),
    );
    let port = free_port();
    let spec = with_admin(&spec, port);
    let committed = || broker.committed_sum(&names.input, &names.group);
    let mut random = random_ms();
    let mut kills = Vec::new();
    for _ in 0..10 {
        let before = committed();
        let run = start(&spec, dir.path());
        wait_or_show(
            "this run's first commit",
            &run,
            port,
            Duration::from_secs(60),
            || committed() > before,
        );
        std::thread::sleep(Duration::from_millis(random(0, 1000)));
        run.kill();
        kills.push(committed());
    }
    eprintln!("exactly-once Kafka -> Kafka: committed after each kill: {kills:?}");
    assert!(
        kills.iter().all(|c| (*c as usize) < total),
        "every kill landed mid-stream: {kills:?}"
    );
    let run = start(&spec, dir.path());
    flow.finish_with(run, committed, total, Duration::from_secs(180));

    let read = java_consume(&broker.addr, &names.output, "read_committed");
    let duplicates = check_every_event_once_in_key_order(&read, total);
    assert_eq!(duplicates, 0, "read_committed: every event exactly once");
    assert_eq!(read.len(), total);
    let all = java_consume(&broker.addr, &names.output, "read_uncommitted");
    let aborted = all.len() - read.len();
    eprintln!(
        "exactly-once Kafka -> Kafka: {total} events, {} records in the log, {aborted} of them aborted and hidden from read_committed",
        all.len()
    );
    assert!(
        aborted > 0,
        "the kills left aborted transactions behind (else this test proves nothing)"
    );
}

/// The transactional state changelog (`producer.transactional-id` with a state store). Each
/// event counts its key in a store with a bare read-modify-write (a replayed event would count
/// again) and its record carries the count. Through 8 `kill -9`s with input flowing (half of the
/// restarts under the dead run's transactional id, as a StatefulSet's pod comes back and fences
/// it; half under a new one, as a Deployment's pod would, so the dead transaction ends only when
/// its `transaction.timeout.ms` runs out and the restore must wait for it rather than stop at
/// the last stable offset), state, outputs and offsets move together: Kafka's
/// Java consumer with `read_committed` reads every key's counts 1, 2, 3, ... in input order, the
/// changelog holds exactly one committed write per event, and a restore from it alone has each
/// key's exact count. The output and the changelog both hold records of aborted transactions
/// that none of that shows.
#[test]
fn transactional_state_outputs_and_offsets_move_together_through_kill_9s() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let names = names(broker, 4);
    // Two minutes of input: it still flows when the eighth kill lands.
    let (total, keys) = (60_000, 16);
    // The plugin is built (once per test process) before the input starts flowing.
    plugin("misbehaving");
    let flow = Flow::start(broker, &names.input, total, 500);
    let state = dir.path().join("state");
    let spec = |id: &str, port: u16| {
        let spec = spec_with(
            dir.path(),
            broker,
            &names,
            "delay_us: 200, count_store: counts",
            SHORT_SESSION,
            &format!(
                "producer:\n  transactional-id: {id}\n  properties: {{transaction.timeout.ms: \"10000\"}}\nstate:\n  stores: [counts]\n  dir: {}\n",
                state.display()
            ),
        );
        with_admin(&spec, port)
    };
    let committed = || broker.committed_sum(&names.input, &names.group);
    let mut random = random_ms();
    let mut id = unique("txn");
    // Runs whose restore waited for the transaction the killed run left open.
    let mut held_restores = 0;
    for kill in 0..8 {
        let same = kill % 2 == 0;
        if !same {
            id = unique("txn");
        }
        let before = committed();
        assert!((before as usize) < total, "kill {kill} lands mid-stream");
        let started = Instant::now();
        let port = free_port();
        let run = start(&spec(&id, port), dir.path());
        wait_or_show(
            "this run's first commit",
            &run,
            port,
            Duration::from_secs(90),
            || committed() > before,
        );
        eprintln!(
            "transactional state: run {kill} ({} id) committed {:?} after its start",
            if same { "the dead run's" } else { "a new" },
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(random(0, 1500)));
        let log = std::fs::read_to_string(&run.log).unwrap();
        if !log_events(&log, "state: an open transaction holds the restore").is_empty() {
            held_restores += 1;
        }
        run.kill();
    }
    assert!(
        held_restores > 0,
        "a restart under a new id found the dead run's transaction open and waited for it"
    );
    let port = free_port();
    let run = start(&spec(&id, port), dir.path());
    flow.finish_with(run, committed, total, Duration::from_secs(180));

    // Outputs: every event once, and its key's count as of that event.
    let read = java_consume(&broker.addr, &names.output, "read_committed");
    assert_eq!(check_every_event_once_in_key_order(&read, total), 0);
    assert_eq!(read.len(), total);
    let mut ordered = read.clone();
    ordered.sort_by_key(|r| (r["partition"].as_i64(), r["offset"].as_i64()));
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for r in &ordered {
        let n = counts
            .entry(r["key"].as_str().unwrap().to_owned())
            .or_default();
        *n += 1;
        assert_eq!(
            r["headers"]["n"].as_str().and_then(|h| h.parse().ok()),
            Some(*n),
            "the count in the output moves with the state: {r}"
        );
    }
    let aborted_out = java_consume(&broker.addr, &names.output, "read_uncommitted").len() - total;

    // The changelog: one committed write per event; aborted writes in the log, hidden.
    let changelog = format!("{}-{}-counts-changelog", names.group, names.input);
    let writes = java_consume(&broker.addr, &changelog, "read_committed").len();
    let aborted_state = java_consume(&broker.addr, &changelog, "read_uncommitted").len() - writes;
    eprintln!(
        "transactional state: {total} events; aborted and hidden: {aborted_out} output records, {aborted_state} state writes"
    );
    assert_eq!(writes, total, "one committed state write per event");
    assert!(
        aborted_out > 0 && aborted_state > 0,
        "the kills left aborted transactions behind (else this test proves nothing)"
    );

    // State: a restore from the changelog alone has each key's exact count.
    let (dump, _) = state_dump(&spec(&id, port), &dir.path().join("fresh"));
    assert_eq!(dump.len(), keys, "one count per key");
    for entry in &dump {
        assert_eq!(
            entry["value"]
                .as_str()
                .and_then(|v| v.parse::<usize>().ok()),
            Some(total / keys),
            "{entry}"
        );
    }
}

/// Broker restarts and pipeline crashes in one run: events flow in throughout (Kafka's Java
/// producer, retrying through the outages) while the pipeline is killed with `kill -9` and the
/// broker is restarted five times, alternately with SIGTERM (a controlled shutdown) and SIGKILL.
/// At the end every input offset is committed and every event is in the output (at least once,
/// in key order).
#[test]
fn broker_restarts_and_kill_9s_in_one_run_lose_nothing() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let names = names(&broker, 4);
    // 80 s of input: it still flows during the fifth restart.
    let total = 80_000;
    // The plugin is built (once per test process) before the input starts flowing.
    plugin("misbehaving");
    let flow = Flow::start(&broker, &names.input, total, 1_000);
    let spec = spec(dir.path(), &broker, &names, 200, SHORT_SESSION, "");
    let committed = || broker.committed_sum(&names.input, &names.group);
    let mut run = start(&spec, dir.path());
    let mut random = random_ms();
    for restart in 0..5 {
        let before = committed();
        wait_until(
            "progress since the last restart",
            Duration::from_secs(90),
            || committed() > before,
        );
        std::thread::sleep(Duration::from_millis(random(0, 1500)));
        run.kill();
        run = start(&spec, dir.path());
        std::thread::sleep(Duration::from_millis(random(500, 2500)));
        let started = Instant::now();
        if restart % 2 == 0 {
            broker.stop();
        } else {
            broker.down();
        }
        std::thread::sleep(Duration::from_secs(2));
        broker.up();
        eprintln!(
            "broker restart {} ({}): down for {:?}, {} committed before",
            restart + 1,
            if restart % 2 == 0 {
                "SIGTERM"
            } else {
                "SIGKILL"
            },
            started.elapsed(),
            before
        );
    }
    flow.finish_with(run, committed, total, Duration::from_secs(240));
    let records = java_consume(&broker.addr, &names.output, "read_committed");
    let duplicates = check_every_event_once_in_key_order(&records, total);
    eprintln!(
        "broker restarts: {total} events, 0 lost, {duplicates} duplicates (at-least-once), every offset committed"
    );
}

/// A three-node cluster with the pipeline's topics replicated three times and
/// `min.insync.replicas=2`: the node leading the input's first partition is killed (SIGKILL)
/// mid-stream and started again 20 s later, while events keep flowing in. The pod rides through
/// without a restart: its log says the broker's connection was lost, which partition leaders
/// moved and when the broker was back; `/status` shows the lost broker's connection state and
/// the new leaders while it is down. Nothing is lost, duplicates stay within what one commit
/// interval of a member holds, and every offset is committed at the end. The cluster is a
/// secured one: the pipeline connects over SASL_SSL (SCRAM-SHA-512) as its own user with the
/// ACLs `sluice acls` derives, and reconnects over TLS to the new leaders and the returning node.
#[test]
fn a_partition_leader_killed_and_restarted_in_a_three_node_cluster_loses_nothing() {
    let cluster = Cluster::start_secured(&[("guarantees", "guarantees-pw")]);
    let entry = cluster.node(1); // its address is the whole bootstrap list
    let dir = tempfile::tempdir().unwrap();
    let names = Names {
        input: unique("in"),
        output: unique("out"),
        group: unique("group"),
    };
    for topic in [&names.input, &names.output] {
        kafka_tool(&[
            "create",
            "--broker",
            &cluster.bootstrap,
            "--topic",
            topic,
            "--partitions",
            "3",
            "--replication",
            "3",
            "--config",
            "min.insync.replicas=2",
        ]);
    }
    let total = 60_000;
    // The plugin is built (once per test process) before the input starts flowing.
    plugin("misbehaving");
    let flow = Flow::start(entry, &names.input, total, 1_000);
    // The broker's default session (45 s): the member outlives the group coordinator's move.
    let port = free_port();
    std::fs::write(dir.path().join("password"), "guarantees-pw\n").unwrap();
    let ca = entry.secured.as_ref().unwrap().tls.join("ca.crt");
    let security = format!(
        "    security:\n      protocol: sasl-ssl\n      sasl: {{mechanism: SCRAM-SHA-512, username: guarantees, password-file: password}}\n      tls: {{ca-file: {}}}\n",
        ca.display()
    );
    let spec = with_admin(&spec(dir.path(), entry, &names, 200, &security, ""), port);
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace(
            &format!("bootstrap-servers: {}", cluster.bootstrap),
            &format!("bootstrap-servers: {}", cluster.sasl_ssl()),
        ),
    )
    .unwrap();
    let acls = sluice_tests::sluice(
        &[
            "acls",
            "-f",
            spec.to_str().unwrap(),
            "--apply",
            "--bootstrap-servers",
            &cluster.bootstrap,
        ],
        dir.path(),
        "",
    );
    assert_eq!(acls.code, Some(0), "{}", acls.stderr);
    let run = start(&spec, dir.path());
    let committed = || entry.committed_sum(&names.input, &names.group);
    wait_or_show(
        "a first commit",
        &run,
        port,
        Duration::from_secs(60),
        || committed() > 0,
    );
    let leaders: Value = serde_json::from_str(&kafka_tool(&[
        "leaders",
        "--broker",
        &cluster.bootstrap,
        "--topic",
        &names.input,
    ]))
    .unwrap();
    let victim = leaders["0"]["leader"].as_i64().unwrap() as i32;
    std::thread::sleep(Duration::from_millis(random_ms()(0, 1000)));
    let at_kill = committed();
    cluster.node(victim as u32).down();
    let killed = Instant::now();
    let broker_state = |status: &Value| {
        status["brokers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["id"] == victim)
            .and_then(|b| b["state"].as_str().map(str::to_owned))
    };
    wait_or_show(
        "/status shows the lost connection",
        &run,
        port,
        Duration::from_secs(30),
        || broker_state(&admin_status(port)).is_some_and(|s| s != "UP"),
    );
    wait_or_show(
        "/status shows new leaders",
        &run,
        port,
        Duration::from_secs(60),
        || {
            let status = admin_status(port);
            let partitions = status["partitions"].as_array().cloned().unwrap_or_default();
            partitions.len() == 3
                && partitions
                    .iter()
                    .all(|p| p["leader"].as_i64().is_some_and(|l| l != victim as i64))
        },
    );
    let moved = killed.elapsed();
    wait_or_show(
        "commits again with the node down",
        &run,
        port,
        Duration::from_secs(60),
        || committed() > at_kill,
    );
    let down_status = admin_status(port);
    std::thread::sleep(Duration::from_secs(20).saturating_sub(killed.elapsed()));
    cluster.node(victim as u32).up();
    // The pod learns it is back when it must talk to it again: when the node takes its
    // preferred leaderships back.
    wait_or_show(
        "/status shows the broker back",
        &run,
        port,
        Duration::from_secs(90),
        || {
            matches!(
                broker_state(&admin_status(port)).as_deref(),
                Some("UP" | "INIT")
            )
        },
    );
    // The same process all along: it ran through the outage without a restart.
    let log = flow.finish_with(run, committed, total, Duration::from_secs(180));
    let lost = log_events(&log, "broker connection lost");
    assert!(
        lost.iter().any(|e| e["broker"] == victim),
        "the log says the connection to broker {victim} was lost:\n{log}"
    );
    assert!(
        log_events(&log, "partition leader moved")
            .iter()
            .any(|e| e["from"] == victim),
        "the log says which leaders moved:\n{log}"
    );
    assert!(
        log_events(&log, "broker connection back")
            .iter()
            .any(|e| e["broker"] == victim),
        "the log says the broker is back:\n{log}"
    );
    let records = java_consume(&cluster.bootstrap, &names.output, "read_committed");
    let duplicates = check_every_event_once_in_key_order(&records, total);
    eprintln!(
        "leader kill: broker {victim} killed with {at_kill} committed; leaders moved within {moved:?}; {total} events, 0 lost, {duplicates} duplicates; /status while down: {}",
        down_status["brokers"]
    );
    // At-least-once: a replay is at most what was handled and not yet committed, a commit
    // interval's worth, unless a commit failed while the coordinator moved.
    assert!(
        duplicates <= 2_000,
        "{duplicates} duplicates: more than a few commit intervals' worth"
    );
}

/// Waits up to `timeout` for `done`; on timeout fails with the run's `/status` and log.
fn wait_or_show(
    what: &str,
    run: &Running,
    port: u16,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}: /status {:?}\nlog:\n{}",
                http_get(port, "/status"),
                std::fs::read_to_string(&run.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `/status` of the pod whose admin endpoint is on `port` (`Null` while it does not answer).
fn admin_status(port: u16) -> Value {
    http_get(port, "/status")
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .unwrap_or(Value::Null)
}

fn partitions_held(port: u16) -> usize {
    admin_status(port)["partitions"]
        .as_array()
        .map_or(0, Vec::len)
}

fn with_admin(spec: &Path, port: u16) -> PathBuf {
    let copy = spec.with_file_name(format!("pipeline-{port}.yaml"));
    let mut text = std::fs::read_to_string(spec).unwrap();
    text.push_str(&format!("admin:\n  listen: 127.0.0.1:{port}\n"));
    std::fs::write(&copy, text).unwrap();
    copy
}

/// The KIP-848 consumer protocol (`group.protocol: consumer`): the broker assigns. A second
/// member takes a share of the partitions (incremental: the first member keeps consuming the
/// rest), a `kill -9` of the first hands its partitions to the second once the broker's session
/// timeout expires, and every event arrives in key order.
#[test]
fn the_kip_848_consumer_protocol_rebalances_with_a_second_member_and_a_kill_9() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let names = names(broker, 4);
    let total = 30_000;
    broker.produce(&names.input, total, 0, &[]);
    // ~1,000 events/s per member: the second joins and the kill lands mid-stream.
    let spec = spec(
        dir.path(),
        broker,
        &names,
        2000,
        "    properties: {group.protocol: consumer}\n",
        "",
    );
    let (port_a, port_b) = (free_port(), free_port());
    let a = start(&with_admin(&spec, port_a), dir.path());
    wait_until("a first commit", Duration::from_secs(60), || {
        broker.committed_sum(&names.input, &names.group) > 0
    });
    assert_eq!(
        partitions_held(port_a),
        4,
        "the only member holds everything"
    );
    let b = start(&with_admin(&spec, port_b), dir.path());
    wait_until("the partitions shared", Duration::from_secs(60), || {
        partitions_held(port_b) > 0 && partitions_held(port_a) > 0
    });
    eprintln!(
        "KIP-848: shared {} / {}",
        partitions_held(port_a),
        partitions_held(port_b)
    );
    let before = broker.committed_sum(&names.input, &names.group);
    assert!(
        (before as usize) < total,
        "the second member joined mid-stream"
    );
    let killed = Instant::now();
    a.kill();
    wait_until(
        "the survivor holds every partition",
        Duration::from_secs(60),
        || partitions_held(port_b) == 4,
    );
    eprintln!(
        "KIP-848: partitions moved {:?} after the kill",
        killed.elapsed()
    );
    wait_until("every offset committed", Duration::from_secs(120), || {
        broker.committed_sum(&names.input, &names.group) == total as i64
    });
    let (code, log) = b.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log_events(&log, "assigned").len() >= 2,
        "assigned on joining and again after the kill:\n{log}"
    );
    let records = java_consume(&broker.addr, &names.output, "read_committed");
    let duplicates = check_every_event_once_in_key_order(&records, total);
    eprintln!("KIP-848: {total} events, {duplicates} duplicates");
}

/// Changelog compaction: 30,000 writes (7.5 MB) to 16 keys. With 1 MiB changelog segments (the
/// smallest Kafka 4 allows; `state.changelog-config`) Kafka's log cleaner compacts every closed
/// segment, and a restore into an empty directory reads the compacted log: its record count is
/// bounded by the keys plus the active segment (~4,000 records), not the writes, and it
/// restores each key's latest value.
#[test]
fn changelog_compaction_bounds_a_restore_by_the_keys_not_the_writes() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let names = names(broker, 1);
    let (total, keys) = (30_000, 16);
    broker.produce(
        &names.input,
        total,
        0,
        &["--keys", &keys.to_string(), "--size", "200"],
    );
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: compaction\nplugin:\n  path: {}\n  config: {{state_store: latest}}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{}]\n    group-id: {}\n    commit-interval-ms: 200\nstate:\n  stores: [latest]\n  dir: {}\n  changelog-config: {{segment.bytes: \"1048576\", min.cleanable.dirty.ratio: \"0.01\", min.compaction.lag.ms: \"0\"}}\noutputs:\n  out:\n    kafka: {{topic: {}}}\n",
            plugin("passthrough").display(),
            broker.addr,
            names.input,
            names.group,
            dir.path().join("state").display(),
            names.output,
        ),
    );
    let run = start(&spec, dir.path());
    wait_until("every offset committed", Duration::from_secs(120), || {
        broker.committed_sum(&names.input, &names.group) == total as i64
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    let changelog = format!("{}-{}-latest-changelog", names.group, names.input);
    let mut held = usize::MAX;
    wait_until(
        "the log cleaner compacted the changelog",
        Duration::from_secs(120),
        || {
            held = java_consume(&broker.addr, &changelog, "read_committed").len();
            held < total / 3
        },
    );
    let (dump, stderr) = state_dump(&spec, &dir.path().join("fresh"));
    let restored: u64 = log_events(&stderr, "state: restored")
        .iter()
        .map(|e| e["records"].as_u64().unwrap())
        .sum();
    eprintln!(
        "compaction: {total} writes to {keys} keys; the changelog holds {held} records, a restore read {restored}"
    );
    assert!(
        restored as usize <= held && (restored as usize) < total / 3,
        "the restore read the compacted log ({restored} records)"
    );
    assert_eq!(dump.len(), keys, "one entry per key");
    for entry in &dump {
        let value: Value = serde_json::from_str(entry["value"].as_str().unwrap()).unwrap();
        let key = entry["key"].as_str().unwrap();
        let k: usize = key[1..].parse().unwrap();
        let last = (0..total).rev().find(|i| i % keys == k).unwrap();
        assert_eq!(value["seq"], last, "{key}: the latest value");
    }
}

/// A changelog setting the broker refuses (Kafka 4 takes no `segment.bytes` below 1 MiB) stops
/// the pod at start with one line naming `state.changelog-config`, before anything is consumed.
#[test]
fn a_changelog_setting_the_broker_refuses_is_named_in_one_line() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let names = names(broker, 1);
    broker.produce(&names.input, 10, 0, &[]);
    let spec = spec_with(
        dir.path(),
        broker,
        &names,
        "delay_us: 0, count_store: counts",
        "",
        &format!(
            "state:\n  stores: [counts]\n  dir: {}\n  changelog-config: {{segment.bytes: \"1000\"}}\n",
            dir.path().join("state").display()
        ),
    );
    let (code, log) = start(&spec, dir.path()).stop_when_done();
    assert_ne!(code, Some(0), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("cannot create changelog topic"))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(
        line.contains("InvalidConfig") && line.contains("fix `state.changelog-config`"),
        "{line}"
    );
    assert_eq!(broker.committed_sum(&names.input, &names.group), 0);
}

/// Restore off the poll thread: a pod whose restore takes longer than `max.poll.interval.ms`
/// keeps its group membership. A run is killed inside a transaction holding changelog writes
/// (`producer.transactional-id`, 3 s between commits), so its successor, under a new id, waits
/// in the restore until the coordinator aborts that transaction (`transaction.timeout.ms`,
/// 20 s). The successor polls with `max.poll.interval.ms` 6 s meanwhile: its partitions stay
/// paused and restoring in `/status`, it is assigned once and never revoked, and then it takes
/// every event and commits them all. (A transaction's commit point holds the poll thread until
/// the workers have run what is queued: `partition-capacity` keeps that short of the 6 s.)
#[test]
fn a_restore_longer_than_max_poll_interval_keeps_the_member() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let names = names(broker, 2);
    let state = dir.path().join("state");
    plugin("misbehaving");
    let spec = |id: &str, properties: &str, port: u16| {
        write_spec(
            dir.path(),
            &format!(
                "name: restore\nplugin:\n  path: {}\n  config: {{mode: slow, delay_us: 20, count_store: counts}}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{}]\n    group-id: {}\n    commit-interval-ms: 3000\n    batch-size: 16\n    partition-capacity: 500\n    properties: {{{properties}}}\nproducer:\n  transactional-id: {id}\n  properties: {{transaction.timeout.ms: \"20000\"}}\nstate:\n  stores: [counts]\n  dir: {}\nadmin:\n  listen: 127.0.0.1:{port}\noutputs:\n  out:\n    kafka: {{topic: {}}}\n",
                plugin("misbehaving").display(),
                broker.addr,
                names.input,
                names.group,
                state.display(),
                names.output,
            ),
        )
    };
    // A minute of input: it still flows when the first run is killed and while the second one
    // restores, however slowly a loaded machine starts them.
    let total = 30_000;
    let mut flow = Flow::start(broker, &names.input, total, 500);
    let committed = || broker.committed_sum(&names.input, &names.group);
    let port = free_port();
    let first = start(
        &spec(
            &unique("txn"),
            "session.timeout.ms: \"2000\", heartbeat.interval.ms: \"500\"",
            port,
        ),
        dir.path(),
    );
    wait_or_show(
        "the first run's first commit",
        &first,
        port,
        Duration::from_secs(90),
        || committed() > 0,
    );
    // Inside the next transaction, which has changelog writes by now.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        flow.flowing(),
        "the input still flows when the first run is killed"
    );
    first.kill();

    let port = free_port();
    let max_poll = Duration::from_secs(6);
    let run = start(
        &spec(
            &unique("txn"),
            &format!(
                "session.timeout.ms: \"6000\", heartbeat.interval.ms: \"1000\", max.poll.interval.ms: \"{}\"",
                max_poll.as_millis()
            ),
            port,
        ),
        dir.path(),
    );
    wait_or_show(
        "the restore held by the dead run's transaction",
        &run,
        port,
        Duration::from_secs(60),
        || {
            let status: Value = http_get(port, "/status")
                .and_then(|(_, body)| serde_json::from_str(&body).ok())
                .unwrap_or(Value::Null);
            status["partitions"].as_array().is_some_and(|ps| {
                !ps.is_empty()
                    && ps
                        .iter()
                        .all(|p| p["restoring"] == true && p["paused"] == true)
            })
        },
    );
    flow.finish();
    wait_or_show(
        "every offset committed",
        &run,
        port,
        Duration::from_secs(180),
        || committed() == total as i64,
    );
    // Before the stop, whose drain revokes everything.
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(
        !log_events(&log, "state: an open transaction holds the restore").is_empty(),
        "the restore waited for the dead run's transaction:\n{log}"
    );
    let longest = log_events(&log, "state: restored")
        .iter()
        .filter_map(|e| e["seconds"].as_str()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(
        longest > max_poll.as_secs_f64(),
        "the restore took {longest} s, not longer than max.poll.interval.ms:\n{log}"
    );
    assert_eq!(
        log_events(&log, "assigned").len(),
        1,
        "assigned once: the member was kept through the restore:\n{log}"
    );
    assert!(
        log_events(&log, "revoked").is_empty() && !log.contains("maximum poll interval"),
        "nothing revoked while the restore ran:\n{log}"
    );
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
}
