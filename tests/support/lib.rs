//! Shared fixtures for the end-to-end tests: builds the workspace's plugins and the `sluice`
//! binary once per test process, compiles C plugins with the system compiler, runs `sluice`.

pub mod db;
pub mod k8s;
mod kafka;
pub mod kubelet;
pub mod registry;

pub use kafka::{Broker, Cluster, Secured, java_consume, java_tool, java_tool_command};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn profile_dir() -> PathBuf {
    target_dir().join(if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    })
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub(crate) fn check(what: &str, output: std::io::Result<Output>) {
    let output = output.unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds every workspace plugin, the `sluice` binary and the C plugin (once per process; a
/// no-op when `make test` built them already).
pub fn build() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cmd = cargo();
        cmd.args(["build", "--workspace", "--quiet"])
            .current_dir(root());
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        check("cargo build --workspace", cmd.output());
        let out = format!("OUT={}", target_dir().join("plugins").display());
        check(
            "make -C plugins/c-mask",
            Command::new("make")
                .args(["-s", "-C", "plugins/c-mask", &out])
                .current_dir(root())
                .output(),
        );
    });
}

/// A workspace plugin library by crate name (`filter-and-enrich` -> `libfilter_and_enrich.so`).
pub fn plugin(name: &str) -> PathBuf {
    build();
    if name == "c-mask" {
        return target_dir().join("plugins/libc_mask.so");
    }
    profile_dir().join(format!("lib{}.so", name.replace('-', "_")))
}

/// The plugin built against a changed `Event` layout (its own target dir, built once).
pub fn changed_layout_plugin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = target_dir().join("abi-fixtures");
            check(
                "cargo build (changed-layout fixture)",
                cargo()
                    .args([
                        "build",
                        "--quiet",
                        "--manifest-path",
                        "tests/fixtures/changed-layout/Cargo.toml",
                        "--target-dir",
                    ])
                    .arg(&dir)
                    .current_dir(root())
                    .output(),
            );
            dir.join("debug/libchanged_layout.so")
        })
        .clone()
}

/// A C plugin `name` at `version`: `mode` 0 emits `version|payload` to `out` (key and
/// partition kept), 1 reports every event as invalid input, 2 fails to open, 3 is built for ABI
/// major version 2.
pub fn versioned_plugin(dir: &Path, name: &str, version: &str, mode: u32) -> PathBuf {
    let file = format!("{name}_{}", version.replace('.', "_"));
    let source = format!(
        r#"#include <string.h>
#include "sluice_plugin.h"
#define VERSION "{version}"
#define MODE {mode}
static sluice_status op(sluice_str c, const sluice_open_context *x, const sluice_host *h, void **i) {{
    (void)c; (void)x;
    if (MODE == 2) {{ h->fail(h->ctx, SLUICE_STR("this version cannot open")); return SLUICE_STATUS_ERROR; }}
    *i = (void *)1; return SLUICE_STATUS_OK; }}
static sluice_status pr(void *i, sluice_events ev, const sluice_host *h) {{
    (void)i;
    for (size_t n = 0; n < ev.len; n++) {{
        if (MODE == 1) {{
            h->event_error(h->ctx, n, SLUICE_EVENT_ERROR_INVALID_INPUT, SLUICE_STR("this version refuses every event"));
            continue;
        }}
        char buf[4096];
        size_t vl = sizeof(VERSION) - 1, pl = ev.ptr[n].payload.len;
        if (vl + 1 + pl > sizeof buf) pl = sizeof buf - vl - 1;
        memcpy(buf, VERSION, vl); buf[vl] = '|';
        if (pl) memcpy(buf + vl + 1, ev.ptr[n].payload.ptr, pl);
        sluice_record r; memset(&r, 0, sizeof r);
        r.output = SLUICE_STR("out"); r.key = ev.ptr[n].key;
        r.flags = ev.ptr[n].flags & SLUICE_FLAG_KEY_NULL; r.partition = ev.ptr[n].partition;
        r.value.ptr = (const uint8_t *)buf; r.value.len = vl + 1 + pl;
        if (h->emit(h->ctx, &r) != SLUICE_STATUS_OK) return SLUICE_STATUS_ERROR;
    }}
    return SLUICE_STATUS_OK; }}
static sluice_status cl(void *i, const sluice_host *h) {{ (void)i; (void)h; return SLUICE_STATUS_OK; }}
static const sluice_plugin_vtable VT = {{ .size = sizeof(sluice_plugin_vtable), .open = op, .process = pr, .close = cl }};
static const sluice_plugin_descriptor D = {{ MODE == 3 ? 2 : SLUICE_ABI_MAJOR, SLUICE_ABI_MINOR, SLUICE_STR("{name}"),
    SLUICE_STR(VERSION), SLUICE_STR("upgrade test plugin"), {{0, 0}}, &VT, 0 }};
SLUICE_EXPORT const sluice_plugin_descriptor *sluice_plugin_entry(void) {{ return &D; }}
"#
    );
    cc_plugin(dir, &file, &source)
}

/// The sha256 of a file, in hex (`sha256sum`).
pub fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// Compiles C source into a shared library in `dir` against `sluice_plugin.h`.
pub fn cc_plugin(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    let lib = dir.join(format!("lib{name}.so"));
    std::fs::write(&src, source).unwrap();
    check(
        &format!("gcc {name}.c"),
        Command::new(std::env::var("CC").unwrap_or_else(|_| "gcc".into()))
            .args(["-std=c11", "-Wall", "-Werror", "-fPIC", "-shared", "-I"])
            .arg(root().join("plugin-api/include"))
            .arg("-o")
            .arg(&lib)
            .arg(&src)
            .output(),
    );
    lib
}

/// What a `sluice` run printed.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// The last line of stderr that starts with `error: `.
    pub fn error_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("error: "))
            .unwrap_or("")
    }
}

/// A binary of the workspace (`sluice`, `sluice-vpa`), built.
pub fn workspace_binary(name: &str) -> PathBuf {
    build();
    profile_dir().join(name)
}

/// Runs the `sluice` binary with `args` in `cwd`, with `stdin` as input.
pub fn sluice(args: &[&str], cwd: &Path, stdin: &str) -> Run {
    sluice_env(args, cwd, stdin, &[])
}

/// [`sluice`] with extra environment variables.
pub fn sluice_env(args: &[&str], cwd: &Path, stdin: &str, env: &[(&str, &Path)]) -> Run {
    build();
    use std::io::Write;
    let mut child = Command::new(profile_dir().join("sluice"))
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .env_remove("SLUICE_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sluice");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait for sluice");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes `spec` (YAML) as `pipeline.yaml` in `dir` and returns its path.
pub fn write_spec(dir: &Path, spec: &str) -> PathBuf {
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, spec).unwrap();
    path
}

/// The cache the set-up fills (broker binary, Python client): outside the repo, so fresh clones
/// on the same machine reuse it.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SLUICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/tmp".into());
            home.join(".cache/sluice")
        })
}

/// The reference Kafka client (confluent-kafka in the set-up's virtualenv) running
/// `tests/tools/kafka_tool.py` with `args`; returns stdout, panics with stderr on failure.
pub fn kafka_tool(args: &[&str]) -> String {
    try_kafka_tool(args).unwrap_or_else(|e| panic!("{e}"))
}

/// [`kafka_tool`], returning the failure (exit status and stderr) instead of panicking: for
/// questions asked while a test has the broker stopped or frozen.
pub fn try_kafka_tool(args: &[&str]) -> Result<String, String> {
    try_python_tool("kafka_tool.py", args)
}

/// `tests/tools/SCRIPT` with `args` in the set-up's virtualenv (confluent-kafka and its
/// serializers); stdout, or the exit status and stderr.
pub(crate) fn try_python_tool(script: &str, args: &[&str]) -> Result<String, String> {
    let python = std::env::var_os("SLUICE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("venv/bin/python"));
    let output = Command::new(&python)
        .arg(root().join("tests/tools").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run `make test` (it installs the reference client)",
                python.display()
            )
        });
    if !output.status.success() {
        return Err(format!(
            "{script} {args:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8(output.stdout).expect("utf-8"))
}

/// A shell line that runs `server` (a command line that stays in the foreground) in the
/// background under a watchdog: when this test process goes away, however it ends, the watchdog
/// kills the server and deletes `dir`, its storage. A server kept in a `static` is never
/// dropped, so without this its directory (hundreds of MB for a broker) would outlive every run.
/// The server is reaped before its storage goes (it could still be writing). When only the
/// server dies (a test stops it to restart it), the storage stays.
pub fn watchdog(server: &str, dir: &Path) -> String {
    format!(
        "{server} & b=$!; \
         while kill -0 {parent} 2>/dev/null && kill -0 $b 2>/dev/null; do sleep 0.5; done; kill -9 $b 2>/dev/null; wait $b; \
         kill -0 {parent} 2>/dev/null || rm -rf '{dir}'",
        parent = std::process::id(),
        dir = dir.display()
    )
}

/// `sluice state dump -f SPEC --dir DIR` (an empty `dir`: a restore from the changelogs alone),
/// which must succeed: every entry (one JSON value per line) and the run's log (its restore
/// lines).
pub fn state_dump(spec: &Path, dir: &Path) -> (Vec<serde_json::Value>, String) {
    let out = Command::new(workspace_binary("sluice"))
        .args(["state", "dump", "-f"])
        .arg(spec)
        .arg("--dir")
        .arg(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run sluice state dump");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sluice state dump failed:\n{log}");
    let entries = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (entries, log)
}

/// A unique name per test, so tests share the broker without sharing topics or groups.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A `sluice run` child process; killed if the test fails before it is stopped.
#[derive(Debug)]
pub struct Running {
    /// The process.
    pub child: Child,
    /// Its stderr.
    pub log: PathBuf,
}

/// Starts `sluice run -f SPEC`, its stderr in a log file under `dir`.
pub fn start(spec: &Path, dir: &Path) -> Running {
    start_with_env(spec, dir, &[])
}

/// [`start`] with extra environment variables.
pub fn start_with_env(spec: &Path, dir: &Path, env: &[(&str, &str)]) -> Running {
    start_with(spec, dir, &[], env)
}

/// [`start`] with extra arguments to `sluice run` (`--reset`) and environment variables.
pub fn start_with(spec: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Running {
    let log = dir.join(format!("sluice-{}.log", unique("run")));
    let child = Command::new(plugin("passthrough").parent().unwrap().join("sluice"))
        .args(["run", "-f"])
        .arg(spec)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Running { child, log }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave its pipeline running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Sends a signal (`-TERM`, `-KILL`, ...).
    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
    }
    /// SIGTERM, and the exit code and log once it stopped.
    pub fn stop(mut self) -> (Option<i32>, String) {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        (
            status.code(),
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }
    /// Waits (up to a minute) for a run that ends by itself; its exit code and log.
    pub fn stop_when_done(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the run did not end by itself");
            std::thread::sleep(Duration::from_millis(50));
        };
        (
            status.code(),
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }
    /// Whether the run logged an assignment of at least one partition (the test broker
    /// sometimes assigns none at first).
    pub fn has_partitions(&self) -> bool {
        log_events(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            "assigned",
        )
        .iter()
        .any(|e| e["count"].as_u64() > Some(0))
    }

    /// SIGKILL, and wait.
    pub fn kill(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

/// Polls `done` every 200 ms; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes a fresh CA (`ca.crt`, `ca.key`) and a server certificate for 127.0.0.1 signed by it
/// (`server.crt`, `server.key`, mode 600) into `dir`, with openssl: for servers the tests run
/// with TLS only.
pub fn test_certificates(dir: &Path) {
    let output = Command::new("sh")
        .current_dir(dir)
        .arg("-c")
        .arg(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=sluice-test-ca 2>/dev/null \
             && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null \
             && printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext \
             && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext 2>/dev/null \
             && chmod 600 server.key",
        )
        .output();
    check("openssl", output);
}

/// A TCP port free on 127.0.0.1 right now (for a child's admin endpoint).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `http://127.0.0.1:{port}{path}`: the status code and body, or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut response = agent
        .get(&url)
        .call()
        .map_err(|e| eprintln!("GET {url}: {e}"))
        .ok()?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .map_err(|e| eprintln!("GET {url}: {e}"))
        .ok()?;
    Some((status, body))
}

/// POST `body` (JSON) to `http://127.0.0.1:{port}{path}` with a bearer `token`: the status
/// code and body, or `None` if nothing answers.
pub fn http_post(port: u16, path: &str, token: &str, body: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut response = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|e| eprintln!("POST {url}: {e}"))
        .ok()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().ok()?;
    Some((status, body))
}

/// The JSON log lines of a `sluice` log file whose `message` starts with `message`.
pub fn log_events(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .collect()
}

/// The value of the Prometheus sample `name{labels}` (labels as written, sorted, without the
/// `pipeline` label) in a scrape, summed over any other labels when `labels` is a prefix.
pub fn metric(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}

/// 100 lines of JSON in `dir/input.txt`, but offset 10 is `bad` (the plugin fails it) and
/// offset 50 `boom` (it panics).
pub fn poison_input(dir: &Path) -> PathBuf {
    let lines: Vec<String> = (0..100)
        .map(|i| match i {
            10 => "bad".to_owned(),
            50 => "boom".to_owned(),
            _ => format!("{{\"seq\": {i}}}"),
        })
        .collect();
    let input = dir.join("input.txt");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    input
}

/// Checks records read from output partitions (the reference clients' JSON lines) hold every
/// event `0..total` of `produce` with per-key order (a replayed run may repeat, never go
/// backwards); returns the number of duplicates.
pub fn check_every_event_once_in_key_order(records: &[serde_json::Value], total: usize) -> usize {
    let mut by_key: std::collections::HashMap<String, Vec<i64>> = std::collections::HashMap::new();
    let mut seen = std::collections::HashMap::new();
    let mut ordered = records.to_vec();
    ordered.sort_by_key(|r| (r["partition"].as_i64(), r["offset"].as_i64()));
    for r in &ordered {
        let v: serde_json::Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        assert_eq!(r["key"], v["key"], "the key passes through");
        *seen.entry(v["seq"].as_i64().unwrap()).or_insert(0) += 1;
        by_key
            .entry(v["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["seq"].as_i64().unwrap());
    }
    let lost: Vec<i64> = (0..total as i64)
        .filter(|seq| !seen.contains_key(seq))
        .collect();
    assert!(
        lost.is_empty(),
        "{} events lost (of {} records read), first: {:?}",
        lost.len(),
        records.len(),
        &lost[..lost.len().min(20)]
    );
    for (key, seqs) in by_key {
        // Duplicates (a replayed window) may repeat a run, but never go backwards within one.
        let mut firsts = Vec::new();
        for s in &seqs {
            if !firsts.contains(s) {
                firsts.push(*s);
            }
        }
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "key {key}: first occurrences out of order: {firsts:?}"
        );
    }
    seen.values().map(|n| n - 1).sum()
}

/// Random milliseconds in `lo..hi`, from a seed that differs per run.
pub fn random_ms() -> impl FnMut(u64, u64) -> u64 {
    let mut seed = std::process::id() as u64 | 1;
    move |lo, hi| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + seed % (hi - lo)
    }
}
