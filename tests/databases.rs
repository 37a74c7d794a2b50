//! Database outputs on real servers: an Apache Kafka broker, PostgreSQL and MariaDB started by the test
//! process, events produced by the reference client, rows checked with psql / mariadb.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice_tests::db::{MariaDb, Postgres};
use sluice_tests::{
    Broker, Running, free_port, http_get, log_events, metric, plugin, random_ms, start_with_env,
    unique, wait_until, write_spec,
};

fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(Broker::start)
}

/// A pipeline from `topic` to one table output: passthrough, or `plugin` when given.
fn table_spec(dir: &Path, topic: &str, group: &str, output: &str) -> PathBuf {
    let plugin = format!("  path: {}\n", plugin("passthrough").display());
    table_spec_with(dir, topic, group, &plugin, output)
}

fn table_spec_with(dir: &Path, topic: &str, group: &str, plugin: &str, output: &str) -> PathBuf {
    // One directory per pipeline: `write_spec` names the file `pipeline.yaml`.
    let dir = dir.join(group);
    std::fs::create_dir_all(&dir).unwrap();
    write_spec(
        &dir,
        &format!(
            "name: {group}\nplugin:\n{plugin}source:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{topic}]\n    group-id: {group}\n    commit-interval-ms: 200\noutputs:\n  out:\n{output}",
            broker().addr,
        ),
    )
}

/// `sluice run` with the database URL in `DB_URL` (the specs say `url: ${DB_URL}`: credentials
/// come from the environment, never from the spec).
fn start_with_url(spec: &Path, dir: &Path, url: &str) -> Running {
    start_with_env(spec, dir, &[("DB_URL", url)])
}

/// Events `k0..k15` with rising `seq`, then tombstones for k0..k3: an upsert table ends with the
/// last `seq` of k4..k15 and no row for k0..k3.
fn expected_latest(total: usize) -> String {
    let mut rows: Vec<(String, usize)> = (4..16)
        .map(|k| {
            let last = (0..total).filter(|i| i % 16 == k).max().unwrap();
            (format!("k{k}"), last)
        })
        .collect();
    rows.sort();
    rows.iter()
        .map(|(k, s)| format!("{k} {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn rows_arrive_in_postgres_and_mariadb_upserts_replace_and_tombstones_delete() {
    let (pg, maria) = std::thread::scope(|s| {
        let pg = s.spawn(Postgres::start);
        let maria = s.spawn(MariaDb::start);
        (pg.join().unwrap(), maria.join().unwrap())
    });
    let total = 2000;
    let keyed = unique("keyed");
    broker().create_topic(&keyed, 4);
    broker().produce(&keyed, total, 0, &[]);
    broker().produce(&keyed, 4, 0, &["--tombstone"]);
    let plain = unique("plain");
    broker().create_topic(&plain, 4);
    broker().produce(&plain, total, 0, &[]);

    pg.sql("CREATE TABLE latest (key text PRIMARY KEY, seq bigint NOT NULL)");
    maria.sql("CREATE TABLE latest (`key` varchar(16) PRIMARY KEY, seq bigint NOT NULL)");
    maria.sql("CREATE TABLE events (seq bigint PRIMARY KEY, `key` varchar(16))");

    let dir = tempfile::tempdir().unwrap();
    let upsert = "    {kind}:\n      url: ${DB_URL}\n      table: latest\n      columns: {key: text, seq: bigint}\n      key: [key]\n      mode: upsert\n      batch-size: 64\n";
    let runs = [
        (
            table_spec(
                dir.path(),
                &keyed,
                &unique("pg"),
                &upsert.replace("{kind}", "postgres"),
            ),
            keyed.clone(),
            pg.url.clone(),
            total + 4,
        ),
        (
            table_spec(
                dir.path(),
                &keyed,
                &unique("maria"),
                &upsert.replace("{kind}", "mysql"),
            ),
            keyed.clone(),
            maria.url.clone(),
            total + 4,
        ),
        (
            table_spec(
                dir.path(),
                &plain,
                &unique("maria-insert"),
                "    mysql:\n      url: ${DB_URL}\n      table: events\n      columns: {seq: bigint, key: text}\n",
            ),
            plain.clone(),
            maria.url.clone(),
            total,
        ),
    ];
    let running: Vec<_> = runs
        .iter()
        .map(|(spec, _, url, _)| start_with_url(spec, dir.path(), url))
        .collect();

    let expected = expected_latest(total);
    let pg_latest = || pg.sql("SELECT key || ' ' || seq FROM latest ORDER BY key");
    let maria_latest = || maria.sql("SELECT CONCAT(`key`, ' ', seq) FROM latest ORDER BY `key`");
    wait_until("the PostgreSQL upserts", Duration::from_secs(60), || {
        pg_latest().trim() == expected
    });
    wait_until("the MariaDB upserts", Duration::from_secs(60), || {
        maria_latest().trim() == expected
    });
    wait_until("the MariaDB inserts", Duration::from_secs(60), || {
        maria.sql("SELECT COUNT(*) FROM events").trim() == total.to_string()
    });
    assert_eq!(
        maria
            .sql("SELECT COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM events")
            .trim(),
        format!("{total}\t0\t{}", total - 1),
        "one row per event"
    );
    for (run, (spec, topic, _, events)) in running.into_iter().zip(&runs) {
        let group = std::fs::read_to_string(spec)
            .unwrap()
            .lines()
            .find_map(|l| l.trim().strip_prefix("group-id: ").map(str::to_owned))
            .unwrap();
        let (code, log) = run.stop();
        assert_eq!(code, Some(0), "graceful stop exits 0:\n{log}");
        assert_eq!(
            broker().committed_sum(topic, &group),
            *events as i64,
            "every event's offset committed after its row:\n{log}"
        );
    }
    // Nothing changed after the stop: the upserts really were the final state.
    assert_eq!(pg_latest().trim(), expected);
}

/// One event path: a file run writes rows to PostgreSQL through the same table sink as a Kafka
/// run, and exits only once every row is committed.
#[test]
fn a_file_run_writes_rows_to_postgres() {
    let pg = Postgres::start();
    pg.sql("CREATE TABLE from_file (seq bigint PRIMARY KEY, key text NOT NULL)");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let lines: Vec<String> = (0..500)
        .map(|i| format!("{{\"seq\": {i}, \"key\": \"k{}\"}}", i % 7))
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: file-to-pg\nplugin:\n  path: {}\nsource:\n  file: {{path: {}}}\noutputs:\n  out:\n    postgres:\n      url: ${{DB_URL}}\n      table: from_file\n      columns: {{seq: bigint, key: text}}\n      batch-size: 64\n",
            plugin("passthrough").display(),
            input.display()
        ),
    );
    let run = std::process::Command::new(sluice_tests::workspace_binary("sluice"))
        .args(["run", "-f", spec.to_str().unwrap()])
        .env("DB_URL", &pg.url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("500 events in, 500 records out (out: 500)"),
        "{stderr}"
    );
    // Nothing waited for: the rows are there when the run has exited.
    assert_eq!(
        pg.sql("SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM from_file")
            .trim(),
        "500|500|0|499"
    );
}

#[test]
fn postgres_down_for_10_s_mid_stream_pauses_and_loses_nothing() {
    let pg = Postgres::start();
    pg.sql("CREATE TABLE events (seq bigint PRIMARY KEY, key text)");
    let topic = unique("outage");
    broker().create_topic(&topic, 2);
    let total = 10_000;
    broker().produce(&topic, total, 0, &[]);
    let dir = tempfile::tempdir().unwrap();
    let group = unique("outage");
    // ~1 ms per event on two workers: ~5 s of work, so the outage lands mid-stream. Upsert by
    // seq: a batch whose commit landed but whose answer was lost is written again harmlessly.
    let spec = table_spec_with(
        dir.path(),
        &topic,
        &group,
        &format!(
            "  path: {}\n  config: {{mode: slow, delay_us: 1000}}\n",
            plugin("misbehaving").display()
        ),
        "    postgres:\n      url: ${DB_URL}\n      table: events\n      columns: {seq: bigint, key: text}\n      key: [seq]\n      mode: upsert\n      batch-size: 100\n",
    );
    // With the admin endpoint: readiness and the sink metrics follow the outage.
    let port = free_port();
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{text}admin:\n  listen: 127.0.0.1:{port}\n")).unwrap();
    let run = start_with_url(&spec, dir.path(), &pg.url);
    let count = || pg.count("events");
    wait_until("the first rows", Duration::from_secs(60), || count() > 0);
    assert_eq!(http_get(port, "/readyz").map(|(c, _)| c), Some(200));
    pg.down();
    let outage = std::time::Instant::now();
    // Unready at the first failed connection attempt: the pool gives up a refused one in 2 s.
    wait_until(
        "not ready: output unreachable",
        Duration::from_secs(4),
        || {
            http_get(port, "/readyz")
                .is_some_and(|(code, body)| code == 503 && body.contains("output out unreachable"))
        },
    );
    eprintln!(
        "unready {:.1} s into the outage",
        outage.elapsed().as_secs_f64()
    );
    // The condition says so, naming the output, within the watchdog's second.
    wait_until("condition SinkDown", Duration::from_secs(3), || {
        let status: serde_json::Value =
            serde_json::from_str(&http_get(port, "/status").unwrap().1).unwrap();
        status["condition"]["name"] == "SinkDown"
            && status["condition"]["subjects"] == serde_json::json!(["out"])
    });
    let m = http_get(port, "/metrics").unwrap().1;
    assert_eq!(
        metric(&m, "sluice_condition", &[("condition", "SinkDown")]),
        Some(1.0),
        "{m}"
    );
    let m = http_get(port, "/metrics").unwrap().1;
    assert_eq!(
        metric(&m, "sluice_sink_reachable", &[("output", "out")]),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "sluice_sink_failures_total",
            &[("output", "out"), ("kind", "transient")]
        )
        .unwrap()
            >= 1.0
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed()));
    let committed_in_outage = broker().committed_sum(&topic, &group);
    pg.up();
    let rows_after_outage = count();
    assert!(
        rows_after_outage < total,
        "the outage landed mid-stream ({rows_after_outage} of {total} rows)"
    );
    assert!(
        committed_in_outage <= rows_after_outage as i64,
        "nothing committed without its row: {committed_in_outage} committed, {rows_after_outage} rows"
    );
    wait_until(
        "every row after the outage",
        Duration::from_secs(120),
        || count() == total,
    );
    wait_until("ready again", Duration::from_secs(10), || {
        http_get(port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    wait_until("SinkDown over", Duration::from_secs(5), || {
        let status: serde_json::Value =
            serde_json::from_str(&http_get(port, "/status").unwrap().1).unwrap();
        status["condition"]["name"] != "SinkDown"
    });
    // Every row went through a committed batch, timed end to end (a row written again after a
    // lost commit answer counts again: at least `total`).
    let m = http_get(port, "/metrics").unwrap().1;
    assert!(
        metric(&m, "sluice_sink_batch_rows_sum", &[("output", "out")]).unwrap() >= total as f64,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "sluice_sink_batch_duration_seconds_count",
            &[("output", "out")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        metric(
            &m,
            "sluice_end_to_end_latency_seconds_count",
            &[("output", "out")]
        )
        .unwrap()
            >= total as f64
    );
    assert_eq!(
        metric(&m, "sluice_sink_reachable", &[("output", "out")]),
        Some(1.0)
    );
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("database unavailable, retrying: workers wait on it")
            && log.contains("database reachable again"),
        "the outage and its end are logged:\n{log}"
    );
    let entered = log_events(&log, "condition: SinkDown");
    assert_eq!(entered.len(), 1, "logged once on entry:\n{log}");
    assert!(
        log_events(&log, "condition over")
            .iter()
            .any(|e| e["condition"] == "SinkDown"),
        "and once on exit:\n{log}"
    );
    assert_eq!(
        broker().committed_sum(&topic, &group),
        total as i64,
        "{log}"
    );
    assert_eq!(
        pg.sql("SELECT COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM events")
            .trim(),
        format!("{total}|0|{}", total - 1)
    );
}

#[test]
fn a_row_the_database_rejects_follows_the_error_policy_alone() {
    let pg = Postgres::start();
    let topic = unique("rejects");
    broker().create_topic(&topic, 1);
    let total = 500;
    broker().produce(&topic, total, 0, &[]);
    let dir = tempfile::tempdir().unwrap();
    let output = |table: &str| {
        format!(
            "    postgres:\n      url: ${{DB_URL}}\n      table: {table}\n      columns: {{seq: bigint, key: text}}\n      batch-size: 50\n"
        )
    };
    // seq 13 breaks a CHECK constraint: a permanent error for that record only.
    for table in ["skipped", "failed"] {
        pg.sql(&format!(
            "CREATE TABLE {table} (seq bigint PRIMARY KEY CHECK (seq <> 13), key text)"
        ));
    }

    let group = unique("skip");
    let spec = table_spec(dir.path(), &topic, &group, &output("skipped"));
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        format!("{text}error-policy:\n  sink-rejection: skip\n"),
    )
    .unwrap();
    let run = start_with_url(&spec, dir.path(), &pg.url);
    let count = |table: &str| -> usize {
        pg.sql(&format!("SELECT COUNT(*) FROM {table}"))
            .trim()
            .parse()
            .unwrap()
    };
    wait_until("every other row", Duration::from_secs(60), || {
        count("skipped") == total - 1
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("skipped a row the database rejected") && log.contains("skipped_seq_check"),
        "the skip names the constraint:\n{log}"
    );
    assert_eq!(broker().committed_sum(&topic, &group), total as i64);

    let group = unique("fail");
    let spec = table_spec(dir.path(), &topic, &group, &output("failed"));
    let mut run = start_with_url(&spec, dir.path(), &pg.url);
    let status = run.child.wait().unwrap();
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "a rejected row stops the pipeline:\n{log}"
    );
    assert!(
        log.contains("output out (table failed) rejected a row")
            && log.contains("`error-policy.sink-rejection` to skip"),
        "{log}"
    );
    let committed = broker().committed_sum(&topic, &group);
    assert!(
        committed <= 13,
        "nothing committed past the rejected event (offset 13): {committed}"
    );
    assert_eq!(
        pg.sql("SELECT COUNT(*) FROM failed WHERE seq > 13").trim(),
        "0",
        "rows after the rejected one were written only if their batch was: none here"
    );
}

/// An exactly-once pipeline into table `events` for the kill -9 tests: `source` replaces the
/// commit interval, `properties` adds consumer properties. A short session timeout lets a
/// killed member leave the group quickly.
fn exactly_once_spec(
    dir: &Path,
    topic: &str,
    group: &str,
    plugin: &str,
    source: &str,
    properties: &str,
) -> PathBuf {
    let spec = table_spec_with(
        dir,
        topic,
        group,
        plugin,
        "    postgres:\n      url: ${DB_URL}\n      table: events\n      columns: {seq: bigint, key: text}\n      exactly-once: true\n",
    );
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "    commit-interval-ms: 200\n",
        &format!(
            "{source}    properties: {{session.timeout.ms: \"2000\", heartbeat.interval.ms: \"500\"{properties}}}\n"
        ),
    );
    std::fs::write(&spec, text).unwrap();
    spec
}

#[test]
fn exactly_once_into_postgres_survives_ten_kill_9s() {
    let pg = Postgres::start();
    // No key: a duplicate row would stay visible.
    pg.sql("CREATE TABLE events (seq bigint NOT NULL, key text)");
    let topic = unique("eos");
    broker().create_topic(&topic, 2);
    let total = 6000;
    broker().produce(&topic, total, 0, &[]);
    let dir = tempfile::tempdir().unwrap();
    let group = unique("eos");
    // ~2 ms per event on two workers: each run gets through a few hundred events before the
    // kill. A short session timeout lets the killed member leave the group quickly.
    let spec = exactly_once_spec(
        dir.path(),
        &topic,
        &group,
        &format!(
            "  path: {}\n  config: {{mode: slow, delay_us: 2000}}\n",
            plugin("misbehaving").display()
        ),
        "    commit-interval-ms: 200\n    batch-size: 16\n",
        "",
    );
    let count = || pg.count("events");
    let mut random_ms = random_ms();
    let mut landed = Vec::new();
    for _ in 0..10 {
        let run = start_with_url(&spec, dir.path(), &pg.url);
        let before = count();
        // Wait for this run to write something, then kill it at a random point.
        wait_until("rows from this run", Duration::from_secs(60), || {
            count() > before || count() == total
        });
        std::thread::sleep(Duration::from_millis(random_ms(0, 800)));
        run.kill();
        landed.push(count());
    }
    let run = start_with_url(&spec, dir.path(), &pg.url);
    wait_until("every row", Duration::from_secs(120), || count() >= total);
    // Every row may be there already (the last killed run wrote them): the stop must not land
    // before this run installed its signal handlers (it logs `starting` after).
    wait_until("this run started", Duration::from_secs(60), || {
        std::fs::read_to_string(&run.log)
            .unwrap_or_default()
            .contains("\"starting\"")
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    eprintln!("exactly-once: rows after each kill: {landed:?}");
    assert!(
        landed.iter().filter(|n| **n > 0 && **n < total).count() >= 10,
        "every kill landed mid-stream: {landed:?}"
    );
    assert_eq!(
        pg.sql("SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM events")
            .trim(),
        format!("{total}|{total}|0|{}", total - 1),
        "every event exactly once after 10 kills"
    );
}

#[test]
fn postgres_over_tls_with_a_verified_certificate() {
    let pg = Postgres::start_tls_only();
    pg.sql("CREATE TABLE events (seq bigint PRIMARY KEY, key text)");
    let topic = unique("tls");
    broker().create_topic(&topic, 1);
    broker().produce(&topic, 200, 0, &[]);
    let dir = tempfile::tempdir().unwrap();
    let output = "    postgres:\n      url: ${DB_URL}\n      table: events\n      columns: {seq: bigint, key: text}\n";
    // The server refuses plain connections: rows arriving prove TLS (verify-full checks the
    // certificate against the test CA and the host name).
    let group = unique("tls");
    let run = start_with_url(
        &table_spec(dir.path(), &topic, &group, output),
        dir.path(),
        &pg.url,
    );
    wait_until("rows over TLS", Duration::from_secs(60), || {
        pg.sql("SELECT COUNT(*) FROM events").trim() == "200"
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(broker().committed_sum(&topic, &group), 200);

    // Without TLS the server refuses the connection: the pipeline stops with that reason, even
    // with `sink-rejection: skip` (no record is at fault, none may be skipped), and no offset
    // moves.
    let plain = pg.url.split('?').next().unwrap().to_owned() + "?sslmode=disable";
    let group = unique("plain");
    let spec = table_spec(dir.path(), &topic, &group, output);
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        format!("{text}error-policy:\n  sink-rejection: skip\n"),
    )
    .unwrap();
    let mut run = start_with_url(&spec, dir.path(), &plain);
    let status = run.child.wait().unwrap();
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("the database refuses the connection")
            && log.contains("no encryption")
            && log.contains("check the URL, credentials and TLS settings"),
        "{log}"
    );
    assert_eq!(broker().committed_sum(&topic, &group), 0, "{log}");
}

/// Issue 17: a restart with a backlog commits its first rows within about a commit interval of
/// processing them, so kill -9s 1-3 s after each assignment still make progress every time.
#[test]
fn exactly_once_restarts_with_a_backlog_make_progress_every_time() {
    let pg = Postgres::start();
    pg.sql("CREATE TABLE events (seq bigint NOT NULL, key text)");
    let topic = unique("eos-backlog");
    broker().create_topic(&topic, 4);
    // Topped up as it is worked off: every run starts with at least 400,000 events to go (a run
    // alone on the machine writes up to ~200,000 rows in 3 s against Apache Kafka).
    let mut total = 400_000;
    broker().produce(&topic, total, 0, &[]);
    let dir = tempfile::tempdir().unwrap();
    let group = unique("eos-backlog");
    let spec = exactly_once_spec(
        dir.path(),
        &topic,
        &group,
        &format!("  path: {}\n", plugin("passthrough").display()),
        "    commit-interval-ms: 1000\n",
        // The test broker answers a fetch with the whole backlog up to `fetch.max.bytes` (it
        // ignores `max.partition.fetch.bytes`): 50 MB by default, seconds before a first event
        // (1 MB: 0.5-1.2 s). A Kafka broker sends at most 1 MB per partition.
        ", fetch.max.bytes: \"262144\", message.max.bytes: \"262144\"",
    );
    let count = || pg.count("events");
    let mut random_ms = random_ms();
    let mut landed = Vec::new();
    for _ in 0..8 {
        let before = count();
        while total - before < 400_000 {
            broker().produce(&topic, 50_000, total, &[]);
            total += 50_000;
        }
        let run = start_with_url(&spec, dir.path(), &pg.url);
        wait_until("the partitions assigned", Duration::from_secs(60), || {
            run.has_partitions()
        });
        let at = Instant::now();
        let kill_after = Duration::from_millis(random_ms(1000, 3000));
        let mut first = None;
        while at.elapsed() < kill_after {
            if first.is_none() && count() > before {
                first = Some(at.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        run.kill();
        let after = count();
        eprintln!(
            "exactly-once restart: killed {kill_after:?} after assignment, first rows after {first:?}, {before} -> {after} rows"
        );
        landed.push(after);
        assert!(
            after > before && after < total,
            "a run killed {kill_after:?} after its assignment, with a backlog left, made progress: {before} -> {after}"
        );
    }
    let run = start_with_url(&spec, dir.path(), &pg.url);
    wait_until("every row", Duration::from_secs(300), || count() >= total);
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    eprintln!("exactly-once restarts: rows after each kill: {landed:?}");
    assert_eq!(
        pg.sql("SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM events")
            .trim(),
        format!("{total}|{total}|0|{}", total - 1),
        "every event exactly once after 8 kills"
    );
}
