//! Plugin upgrades without a restart (`POST /plugin`), on Apache Kafka with input flowing: a
//! swap under load, refusals that change nothing, a new version that does not open, and one
//! whose first events fail, rolled back on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sluice_tests::{
    free_port, http_get, http_post, log_events, metric, sha256, start_with, unique,
    versioned_plugin as versioned, wait_until, write_spec,
};

use super::{broker, committed_sum, consume_quick, produce, topics};

/// `count` events (seq from 0 on) produced to `input` at `rate` per second by Kafka's Java
/// producer, one process for the whole feed (a client started per batch would take a core of
/// the machine the other tests run on).
struct Feed(std::process::Child, usize);

impl Feed {
    fn start(input: &str, count: usize, rate: u32) -> Feed {
        let child = sluice_tests::java_tool_command(&[
            "produce",
            "--broker",
            &broker().addr,
            "--topic",
            input,
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the Java producer");
        Feed(child, count)
    }

    /// Waits until every event was acknowledged; how many there were.
    fn finish(mut self) -> usize {
        let status = self.0.wait().unwrap();
        assert!(status.success(), "the Java producer failed: {status}");
        self.1
    }
}

fn body(lib: &Path, sha: &str) -> String {
    serde_json::json!({"path": lib, "sha256": sha}).to_string()
}

fn status(port: u16) -> Value {
    http_get(port, "/status")
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
        .unwrap_or(Value::Null)
}

/// A swap under load on the real broker: every event reaches the output (or, for the version
/// that refuses them, the dead letters) and none of them through two versions; refusals
/// (token, pin, another plugin) change nothing; a version that does not open and one whose
/// first events fail are rolled back, and `/status`, the log and the metrics say so.
#[test]
fn plugin_upgrades_swap_under_load_refuse_and_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let names = topics(4);
    let dead = unique("dead");
    broker().create_topic(&dead, 1);
    let v1 = versioned(dir.path(), "swapper", "1.0.0", 0);
    let v2 = versioned(dir.path(), "swapper", "2.0.0", 0);
    let failing = versioned(dir.path(), "swapper", "3.0.0", 1);
    let no_open = versioned(dir.path(), "swapper", "4.0.0", 2);
    let other = versioned(dir.path(), "other", "2.0.0", 0);
    let next_abi = versioned(dir.path(), "swapper", "5.0.0", 3);
    let port = free_port();
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: upgrades\nplugin:\n  path: {}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{}]\n    group-id: {}\n    commit-interval-ms: 200\nadmin:\n  listen: 127.0.0.1:{port}\n  upgrade-watch-events: 100\n  upgrade-max-error-rate: 0.5\nerror-policy:\n  invalid-input: dead-letter\n  dead-letter-topic: {dead}\noutputs:\n  out:\n    kafka: {{topic: {}}}\n",
            v1.display(),
            broker().addr,
            names.input,
            names.group,
            names.output,
        ),
    );
    let token = "s3cret-token";
    let run = start_with(&spec, dir.path(), &[], &[("SLUICE_ADMIN_TOKEN", token)]);
    // Input flows all along (40 s of it), so every trial gets its events.
    let feed = Feed::start(&names.input, 6_000, 150);
    wait_until("a first commit", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(300));
        committed_sum(&names.input, &names.group) > 0
    });
    let version = |port| status(port)["plugin"]["version"].clone();
    let post = |lib: &Path, sha: &str, token: &str| {
        http_post(port, "/plugin", token, &body(lib, sha)).expect("the admin endpoint answers")
    };

    // Refused, nothing changed: no token, a wrong pin, another plugin.
    let (code, text) = post(&v2, &sha256(&v2), "wrong");
    assert_eq!(code, 401, "{text}");
    let (code, text) = post(&v2, &"0".repeat(64), token);
    assert_eq!(code, 422, "{text}");
    assert!(
        text.starts_with("upgrade refused, nothing changed: plugin ")
            && text.contains("sha256")
            && text.lines().count() == 1,
        "{text}"
    );
    let (code, text) = post(&other, &sha256(&other), token);
    assert_eq!(code, 422, "{text}");
    assert!(
        text.contains("plugin `other`, but this pipeline runs `swapper`"),
        "{text}"
    );
    let (code, text) = post(&next_abi, &sha256(&next_abi), token);
    assert_eq!(code, 422, "{text}");
    assert!(
        text.contains("plugin built for ABI 2.3, this host speaks ABI 1.3")
            && text.lines().count() == 1,
        "{text}"
    );
    assert_eq!(version(port), "1.0.0");

    // The swap, under load.
    let (code, text) = post(&v2, &sha256(&v2), token);
    assert_eq!(code, 200, "{text}");
    assert!(
        text.starts_with("upgraded swapper 1.0.0 -> swapper 2.0.0"),
        "{text}"
    );
    assert_eq!(version(port), "2.0.0");
    wait_until(
        "2.0.0 kept after its trial",
        Duration::from_secs(60),
        || status(port)["plugin"]["last_upgrade"]["outcome"] == "upgraded",
    );

    // A version that does not open: the old one stays.
    let (code, text) = post(&no_open, &sha256(&no_open), token);
    assert_eq!(code, 409, "{text}");
    assert!(
        text.contains("rolled back to swapper 2.0.0") && text.contains("this version cannot open"),
        "{text}"
    );
    assert_eq!(version(port), "2.0.0");

    // A version whose every event fails: rolled back after its first 100.
    let (code, text) = post(&failing, &sha256(&failing), token);
    assert_eq!(code, 200, "{text}");
    wait_until(
        "the failing version rolled back",
        Duration::from_secs(60),
        || {
            let s = status(port);
            s["plugin"]["version"] == "2.0.0"
                && s["plugin"]["last_upgrade"]["outcome"] == "rolled-back"
        },
    );
    let upgrade = status(port)["plugin"]["last_upgrade"].clone();
    assert_eq!(upgrade["to"], "swapper 3.0.0", "{upgrade}");
    assert!(
        upgrade["message"]
            .as_str()
            .unwrap()
            .contains("of its first 100 events failed"),
        "{upgrade}"
    );
    let m = http_get(port, "/metrics").unwrap().1;
    let upgrades = |outcome| metric(&m, "sluice_plugin_upgrades_total", &[("outcome", outcome)]);
    assert_eq!(upgrades("upgraded"), Some(2.0), "{m}");
    assert_eq!(upgrades("refused"), Some(3.0), "{m}");
    assert_eq!(upgrades("rolled-back"), Some(2.0), "{m}");
    assert_eq!(
        metric(&m, "sluice_plugin_libraries_loaded", &[]),
        Some(6.0),
        "v1, v2, the other plugin, the other ABI, the one that does not open, the failing one: {m}"
    );
    let total = feed.finish();
    wait_until("every event committed", Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_millis(500));
        committed_sum(&names.input, &names.group) == total as i64
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log_events(&log, "plugin upgraded").len(), 2, "{log}");
    assert_eq!(
        log_events(&log, "plugin upgrade rolled back").len(),
        2,
        "{log}"
    );

    // Every event once: through 1.0.0, 2.0.0, or (refused by 3.0.0) the dead letters.
    let mut seen: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for r in consume_quick(&names.output) {
        let value = r["value"].as_str().unwrap();
        let (version, payload) = value.split_once('|').unwrap();
        let seq = serde_json::from_str::<Value>(payload).unwrap()["seq"]
            .as_i64()
            .unwrap();
        seen.entry(seq).or_default().insert(version.to_owned());
    }
    for r in consume_quick(&dead) {
        let seq = serde_json::from_str::<Value>(r["value"].as_str().unwrap()).unwrap()["seq"]
            .as_i64()
            .unwrap();
        seen.entry(seq).or_default().insert("dead letter".into());
    }
    let missing: Vec<i64> = (0..total as i64)
        .filter(|s| !seen.contains_key(s))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let twice: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "through two versions: {twice:?}");
    let by: BTreeSet<&String> = seen.values().flatten().collect();
    assert_eq!(
        by.into_iter().cloned().collect::<Vec<_>>(),
        ["1.0.0", "2.0.0", "dead letter"],
        "each version ran"
    );
}

/// A stateful plugin upgraded under load keeps its state stores: `windowed-count`, swapped for
/// a copy of itself at a new path mid-stream, emits every window closed across the swap with
/// exactly the count the reference client's read of the input gives.
#[test]
fn an_upgrade_keeps_the_state_stores() {
    use super::{assert_windows_match, emitted_windows, reference_windows, windowed_spec};
    let dir = tempfile::tempdir().unwrap();
    let names = topics(4);
    let copy = dir.path().join("libwindowed_count-copy.so");
    std::fs::copy(sluice_tests::plugin("windowed-count"), &copy).unwrap();
    let spec = windowed_spec(dir.path(), &names, &names.output, "");
    let port = free_port();
    let state = dir.path().join("state");
    let run = start_with(
        &spec,
        dir.path(),
        &["--admin", &format!("127.0.0.1:{port}")],
        &[
            ("SLUICE_ADMIN_TOKEN", "t"),
            ("SLUICE_STATE_DIR", state.to_str().unwrap()),
        ],
    );
    let feed = Feed::start(&names.input, 6_000, 500);
    wait_until("a first commit", Duration::from_secs(90), || {
        std::thread::sleep(Duration::from_millis(300));
        committed_sum(&names.input, &names.group) > 0
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (code, text) = http_post(port, "/plugin", "t", &body(&copy, &sha256(&copy))).unwrap();
    assert_eq!(code, 200, "{text}");
    std::thread::sleep(Duration::from_millis(2500));
    let before_close = feed.finish();
    // Closing events, one per key (so on every partition), after every window so far ended.
    std::thread::sleep(Duration::from_millis(1500));
    produce(&names.input, 16, before_close);
    let total = before_close + 16;
    wait_until("every event committed", Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_millis(500));
        committed_sum(&names.input, &names.group) == total as i64
    });
    let shown = status(port)["plugin"].clone();
    assert_eq!(shown["path"], copy.display().to_string(), "{shown}");
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log_events(&log, "state: restored").len() >= 8,
        "the 4 partitions' stores opened at the start and again after the swap:\n{log}"
    );
    let input = consume_quick(&names.input);
    assert_eq!(input.len(), total);
    let until = input
        .iter()
        .filter(|r| {
            let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            v["seq"].as_u64().unwrap() as usize >= before_close
        })
        .map(|r| r["timestamp"].as_i64().unwrap())
        .min()
        .unwrap();
    assert_windows_match(
        "across an upgrade",
        &reference_windows(input.iter()),
        &emitted_windows(&consume_quick(&names.output)),
        until,
    );
}
