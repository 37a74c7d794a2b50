//! The plugin ABI end to end: real libraries opened with dlopen, the real `sluice` binary, real
//! files. Covers every refusal the host makes, panic containment, a plugin written in C, every
//! example spec in the repository, `sluice plugin new`, and the Kubernetes side's binaries
//! (`sluice render`, `sluice capacity`; the `sluice-vpa` operator is in `kubernetes.rs`, on a real API server).

use std::path::Path;

use serde_json::{Value, json};
use sluice_plugin_api::abi::{Event, OpenContext, Record};
use sluice_plugin_api::host::{CallError, Collector, EventErrorKind, Refusal};
use sluice_runtime::plugin::{LoadError, Plugin};
use sluice_tests::{
    Run, cc_plugin, changed_layout_plugin, plugin, root, sluice, sluice_env, write_spec,
};

/// Records what a plugin emits, by output.
#[derive(Default)]
struct Collected {
    records: Vec<(String, Vec<u8>)>,
    errors: Vec<(usize, EventErrorKind, String)>,
}

impl Collector for Collected {
    fn emit(&mut self, output: &str, record: &Record<'_>) -> Result<(), Refusal> {
        if output == "nowhere" {
            return Err(Refusal::UnknownOutput);
        }
        self.records.push((
            output.to_owned(),
            record.value_bytes().unwrap_or_default().to_vec(),
        ));
        Ok(())
    }
    fn event_error(&mut self, index: usize, kind: EventErrorKind, message: &str) {
        self.errors.push((index, kind, message.to_owned()));
    }
    fn log(&mut self, _level: u32, _message: &str) {}
}

fn load(path: &Path) -> Result<Plugin, LoadError> {
    Plugin::load(path, None)
}

fn assert_exit_1(run: &Run) {
    assert_eq!(
        run.code,
        Some(1),
        "expected exit 1 (not a crash):\n{}",
        run.stderr
    );
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .count(),
        1,
        "one error line:\n{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Loading: every example plugin, several plugins per process, one load per path.

#[test]
fn loads_every_example_plugin_with_its_descriptor() {
    for (name, language) in [
        ("filter-and-enrich", "rust"),
        ("windowed-count", "rust"),
        ("booking-payments", "rust"),
        ("router", "rust"),
        ("passthrough", "rust"),
        ("c-mask", "c"),
    ] {
        let plugin = load(&plugin(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = plugin.describe();
        assert_eq!(info["name"], name);
        assert_eq!(info["version"], "0.1.0");
        assert_eq!(info["abi_version"], "1.3");
        assert_eq!(info["language"], language);
        assert!(!info["description"].as_str().unwrap().is_empty());
        assert!(
            info["config_schema"].is_object(),
            "{name} publishes a config schema"
        );
    }
}

#[test]
fn same_path_loads_once_and_two_plugins_coexist() {
    let a = load(&plugin("passthrough")).unwrap();
    let b = load(&plugin("passthrough")).unwrap();
    assert!(std::ptr::eq(
        a.plugin_ref().descriptor(),
        b.plugin_ref().descriptor()
    ));
    let c = load(&plugin("router")).unwrap();
    assert!(!std::ptr::eq(
        a.plugin_ref().descriptor(),
        c.plugin_ref().descriptor()
    ));

    // Both work side by side, through their real entry points.
    let mut out = Collected::default();
    let ctx = OpenContext::new("t", 0, 1);
    let mut pass = a.plugin_ref().open("{}", &ctx, &mut out).unwrap();
    let mut route = c
        .plugin_ref()
        .open(r#"{"field":"c","routes":{"x":"xs"}}"#, &ctx, &mut out)
        .unwrap();
    let events = [Event::new("t", 0, 0).with_payload(br#"{"c":"x"}"#)];
    pass.process(&events, &mut out).unwrap();
    route.process(&events, &mut out).unwrap();
    assert_eq!(
        out.records,
        [
            ("out".into(), br#"{"c":"x"}"#.to_vec()),
            ("xs".into(), br#"{"c":"x"}"#.to_vec())
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals: one line each, naming the path, the cause and what to do.

#[test]
fn refuses_a_missing_file() {
    let err = load(Path::new("/nonexistent/libnope.so"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "plugin /nonexistent/libnope.so: no such file: build the plugin (for a cdylib crate: `cargo build`) or fix `plugin.path`"
    );
}

#[test]
fn refuses_a_file_that_is_not_a_shared_library() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libfake.so");
    std::fs::write(&path, "not an ELF file").unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "plugin {}: not a loadable shared library (",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.ends_with("point `plugin.path` at the .so of a cdylib crate built for this platform"),
        "{err}"
    );
    assert!(!err.contains('\n'));
}

/// The error lines of `plugin inspect`, `validate` and `run` on `lib` (with a spec that defines
/// `outputs`), each checked to be exit 1 with one error line.
fn refused_by_inspect_validate_and_run(dir: &Path, lib: &Path, outputs: &[&str]) -> Vec<String> {
    let outputs: String = outputs
        .iter()
        .map(|o| format!("  {o}:\n    stdout: {{}}\n"))
        .collect();
    let spec = write_spec(
        dir,
        &format!(
            "name: refused\nplugin:\n  path: {}\nsource:\n  file: {{path: \"-\"}}\noutputs:\n{outputs}",
            lib.display()
        ),
    );
    let (lib, spec) = (lib.to_str().unwrap(), spec.to_str().unwrap());
    [
        vec!["plugin", "inspect", lib],
        vec!["validate", "-f", spec],
        vec!["run", "-f", spec],
    ]
    .into_iter()
    .map(|args| {
        let run = sluice(&args, dir, "{}\n");
        assert_exit_1(&run);
        run.error_line().to_owned()
    })
    .collect()
}

#[test]
fn refuses_a_truncated_library_in_one_line_instead_of_dying_in_dlopen() {
    // The first 4 KiB or 12,000 bytes of a valid plugin: dlopen maps segments past the end of
    // the file and the first touch is SIGBUS (exit 135) unless the host checks first.
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(plugin("filter-and-enrich")).unwrap();
    for cut in [4096, 12_000] {
        let lib = dir.path().join(format!("libcut{cut}.so"));
        std::fs::write(&lib, &whole[..cut]).unwrap();
        for line in refused_by_inspect_validate_and_run(dir.path(), &lib, &["enriched", "filtered"])
        {
            assert!(
                line.starts_with(&format!(
                    "error: plugin {}: truncated shared library (its loadable segment",
                    lib.display()
                )) && line.contains(&format!("but the file has {cut})")),
                "{line}"
            );
        }
        let lib_arg = lib.to_str().unwrap();
        // The same refusal as JSON for scripts.
        let run = sluice(&["plugin", "inspect", "--json", lib_arg], dir.path(), "");
        assert_eq!(run.code, Some(1));
        let refusal: Value = serde_json::from_str(&run.stdout).unwrap();
        assert!(
            refusal["error"]
                .as_str()
                .unwrap()
                .contains("truncated shared library"),
            "{refusal}"
        );
    }
}

#[test]
fn a_library_that_crashes_the_loader_kills_a_probe_not_the_host() {
    // Past every check the host can make before running its code: an initializer that faults
    // (a corrupt relocation does the same inside ld.so).
    let dir = tempfile::tempdir().unwrap();
    let lib = cc_plugin(
        dir.path(),
        "crashes",
        "#include \"sluice_plugin.h\"\n__attribute__((constructor)) static void boom(void) { *(volatile int *)0 = 1; }\nSLUICE_EXPORT const sluice_plugin_descriptor *sluice_plugin_entry(void) { return 0; }\n",
    );
    for line in refused_by_inspect_validate_and_run(dir.path(), &lib, &["out"]) {
        assert_eq!(
            line,
            format!(
                "error: plugin {}: loading it killed the process that tried (SIGSEGV, signal 11): the library is malformed or its initializers crash: rebuild it, and run its own tests",
                lib.display()
            )
        );
    }
}

/// A C plugin on the raw ABI 1.2 state calls: counts events per key in store `counts`
/// (`state_get` / `state_put`), and on `revoked` lists the store (`state_scan`).
const C_COUNTER: &str = r#"#include <stdio.h>
#include <string.h>
#include "sluice_plugin.h"
static sluice_status op(sluice_str c, const sluice_open_context *x, const sluice_host *h, void **i) {
    (void)c; (void)x; (void)h; *i = (void *)1; return SLUICE_STATUS_OK; }
static sluice_status emit_text(const sluice_host *h, const char *text) {
    sluice_record r; memset(&r, 0, sizeof r);
    r.output = SLUICE_STR("out"); r.value.ptr = (const uint8_t *)text; r.value.len = strlen(text);
    r.flags = SLUICE_FLAG_KEY_NULL;
    return h->emit(h->ctx, &r); }
static sluice_status fail(const sluice_host *h, const char *why) {
    h->fail(h->ctx, (sluice_str){(const char *)why, strlen(why)}); return SLUICE_STATUS_ERROR; }
static sluice_status pr(void *i, sluice_events ev, const sluice_host *h) {
    (void)i;
    if (h->size < SLUICE_HOST_SIZE_1_2) return fail(h, "this host has no state calls");
    for (size_t n = 0; n < ev.len; n++) {
        const sluice_event *e = &ev.ptr[n];
        sluice_partition p = { e->topic, e->partition };
        sluice_bytes found = { NULL, 0 };
        unsigned long count = 0;
        sluice_status s = h->state_get(h->ctx, &p, SLUICE_STR("counts"), e->key, &found);
        if (s == SLUICE_STATUS_OK) {
            char digits[32] = {0};
            memcpy(digits, found.ptr, found.len < 31 ? found.len : 31);
            sscanf(digits, "%lu", &count);
        } else if (s != SLUICE_STATUS_NOT_FOUND) {
            return fail(h, "state_get refused");
        }
        char value[32];
        snprintf(value, sizeof value, "%lu", count + 1);
        sluice_bytes v = { (const uint8_t *)value, strlen(value) };
        if (h->state_put(h->ctx, &p, SLUICE_STR("counts"), e->key, v) != SLUICE_STATUS_OK)
            return fail(h, "state_put refused");
        char line[96];
        snprintf(line, sizeof line, "%.*s=%s", (int)e->key.len, (const char *)e->key.ptr, value);
        if (emit_text(h, line) != SLUICE_STATUS_OK) return SLUICE_STATUS_ERROR;
    }
    return SLUICE_STATUS_OK; }
struct listing { char text[256]; };
static int32_t visit(void *ctx, sluice_bytes key, sluice_bytes value) {
    struct listing *l = ctx;
    size_t at = strlen(l->text);
    snprintf(l->text + at, sizeof l->text - at, "%s%.*s:%.*s", at ? " " : "",
             (int)key.len, (const char *)key.ptr, (int)value.len, (const char *)value.ptr);
    return 0; }
static sluice_status rv(void *i, sluice_partitions ps, const sluice_host *h) {
    (void)i;
    for (size_t n = 0; n < ps.len; n++) {
        struct listing l; memset(&l, 0, sizeof l);
        if (h->state_scan(h->ctx, &ps.ptr[n], SLUICE_STR("counts"), (sluice_bytes){NULL, 0}, visit, &l)
            != SLUICE_STATUS_OK) return fail(h, "state_scan refused");
        if (emit_text(h, l.text) != SLUICE_STATUS_OK) return SLUICE_STATUS_ERROR;
    }
    return SLUICE_STATUS_OK; }
static sluice_status cl(void *i, const sluice_host *h) { (void)i; (void)h; return SLUICE_STATUS_OK; }
static const sluice_plugin_vtable VT = { sizeof(sluice_plugin_vtable), op, pr, NULL, rv, NULL, cl, NULL };
static const sluice_plugin_descriptor D = { SLUICE_ABI_MAJOR, SLUICE_ABI_MINOR, SLUICE_STR("c-counter"),
    SLUICE_STR("0.1.0"), SLUICE_STR("counts per key in a state store"), {0, 0}, &VT, 0 };
SLUICE_EXPORT const sluice_plugin_descriptor *sluice_plugin_entry(void) { return &D; }
"#;

#[test]
fn a_c_plugin_counts_in_a_state_store_through_the_raw_calls() {
    let dir = tempfile::tempdir().unwrap();
    let lib = cc_plugin(dir.path(), "counter", C_COUNTER);
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"k\":\"a\"}\n{\"k\":\"b\"}\n{\"k\":\"a\"}\n{\"k\":\"c\"}\n{\"k\":\"a\"}\n",
    )
    .unwrap();
    let spec = |state: &str| {
        write_spec(
            dir.path(),
            &format!(
                "name: counter\nplugin:\n  path: {}\nsource:\n  file: {{path: in.jsonl, key-field: k}}\n{state}outputs:\n  out:\n    stdout: {{format: value}}\n",
                lib.display()
            ),
        )
    };
    let run_with = |state: &str| {
        sluice(
            &["run", "-f", spec(state).to_str().unwrap()],
            dir.path(),
            "",
        )
    };
    let run = run_with("state: {stores: [counts]}\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "a=1\nb=1\na=2\nc=1\na=3\na:3 b:1 c:1\n");
    // A file run's stores start empty: the same counts again.
    let again = run_with("state: {stores: [counts]}\n");
    assert_eq!(again.stdout, run.stdout);
    // Without the store in the spec: refused, naming it and what to write.
    let run = run_with("");
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the plugin used state store `counts`, but the pipeline declares no state stores: add `state: {stores: [counts]}` to the spec"),
        "{}",
        run.stderr
    );
}

/// C: `op` (opens an instance) and `pr` (emits each payload to `out`), for test plugins.
const ECHO_ENTRIES: &str = r#"#include <string.h>
#include "sluice_plugin.h"
static sluice_status op(sluice_str c, const sluice_open_context *x, const sluice_host *h, void **i) {
    (void)c; (void)x; (void)h; *i = (void *)1; return SLUICE_STATUS_OK; }
static sluice_status pr(void *i, sluice_events ev, const sluice_host *h) {
    (void)i;
    for (size_t n = 0; n < ev.len; n++) {
        sluice_record r; memset(&r, 0, sizeof r);
        r.output = SLUICE_STR("out"); r.value = ev.ptr[n].payload; r.flags = SLUICE_FLAG_KEY_NULL;
        if (h->emit(h->ctx, &r) != SLUICE_STATUS_OK) return SLUICE_STATUS_ERROR;
    }
    return SLUICE_STATUS_OK; }
"#;

/// A C plugin that emits each payload to `out`, with the vtable entries `hooks` (open, process,
/// assigned, revoked, flush, close, output_name; `NULL` allowed).
fn c_plugin_with_hooks(dir: &Path, name: &str, hooks: &str) -> std::path::PathBuf {
    let source = format!(
        r#"{ECHO_ENTRIES}static sluice_status cl(void *i, const sluice_host *h) {{ (void)i; (void)h; return SLUICE_STATUS_OK; }}
static sluice_str outs(size_t i) {{
    static const sluice_str names[] = {{ {{"out", 3}}, {{"audit", 5}} }};
    return i < 2 ? names[i] : (sluice_str){{NULL, 0}}; }}
static const sluice_plugin_vtable VT = {{ sizeof(sluice_plugin_vtable), {hooks} }};
static const sluice_plugin_descriptor D = {{ SLUICE_ABI_MAJOR, SLUICE_ABI_MINOR, SLUICE_STR("{name}"),
    SLUICE_STR("0.1.0"), SLUICE_STR("hooks test plugin"), {{0, 0}}, &VT, 0 }};
SLUICE_EXPORT const sluice_plugin_descriptor *sluice_plugin_entry(void) {{ return &D; }}
/* Referenced whatever the table holds, so -Werror sees no unused function. */
void *keep_{name}[] = {{ (void *)op, (void *)pr, (void *)cl, (void *)outs }};
"#
    );
    cc_plugin(dir, name, &source)
}

#[test]
fn null_optional_hooks_are_no_ops_and_null_required_ones_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // assigned, revoked and flush NULL: a file run calls all three (it crashed the host before).
    let lib = c_plugin_with_hooks(dir.path(), "lean", "op, pr, NULL, NULL, NULL, cl, NULL");
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: lean\nplugin:\n  path: {}\nsource:\n  file: {{path: \"-\", format: lines}}\noutputs:\n  out:\n    stdout: {{}}\n",
            lib.display()
        ),
    );
    let run = sluice(
        &["run", "-f", spec.to_str().unwrap()],
        dir.path(),
        "a\n\nb\n  \nc\n",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "a\nb\nc\n");
    // Blank lines are not events; the summary counts them.
    assert!(
        run.stderr
            .contains("3 events in, 3 records out (out: 3), 2 blank lines skipped"),
        "{}",
        run.stderr
    );
    let run = sluice(
        &["plugin", "inspect", lib.to_str().unwrap()],
        dir.path(),
        "",
    );
    assert!(
        run.stdout.contains("outputs      not declared"),
        "{}",
        run.stdout
    );
    // A required entry NULL: refused at load, naming it.
    for (entry, hooks) in [
        ("open", "NULL, pr, NULL, NULL, NULL, cl, NULL"),
        ("process", "op, NULL, NULL, NULL, NULL, cl, NULL"),
        ("close", "op, pr, NULL, NULL, NULL, NULL, NULL"),
    ] {
        let lib = c_plugin_with_hooks(dir.path(), &format!("no_{entry}"), hooks);
        let err = load(&lib).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "plugin {}: the plugin vtable's `{entry}` is NULL: `open`, `process` and `close` are required (only `assigned`, `revoked`, `flush` and `output_name` may be NULL): fill it in and rebuild",
                lib.display()
            )
        );
    }
}

/// A plugin that declares its stores (ABI 1.3 `Pipeline::STORES`) and a spec without `state:`:
/// refused in one line before any event, not at the first state call.
#[test]
fn validate_and_run_refuse_a_stateful_plugins_spec_without_state() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: counts\nplugin:\n  path: {}\n  config: {{key_field: user, window_ms: 1000}}\nsource:\n  file: {{path: \"-\", format: lines}}\noutputs:\n  counts:\n    stdout: {{}}\n",
            plugin("windowed-count").display()
        ),
    );
    for command in ["validate", "run"] {
        let run = sluice(
            &[command, "-f", spec.to_str().unwrap()],
            dir.path(),
            "{\"user\": \"a\"}\n",
        );
        assert_exit_1(&run);
        assert_eq!(
            run.error_line(),
            format!(
                "error: {}: state: plugin windowed-count 0.1.0 keeps state in stores windows: add `state: {{stores: [windows]}}` to the spec (with the names its config gives them)",
                spec.display()
            )
        );
    }
    let with_state = std::fs::read_to_string(&spec).unwrap() + "state:\n  stores: [windows]\n";
    std::fs::write(&spec, with_state).unwrap();
    let run = sluice(&["validate", "-f", spec.to_str().unwrap()], dir.path(), "");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn validate_and_run_refuse_a_spec_without_an_output_the_plugin_declares() {
    let dir = tempfile::tempdir().unwrap();
    let lib = c_plugin_with_hooks(dir.path(), "declares", "op, pr, NULL, NULL, NULL, cl, outs");
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: declares\nplugin:\n  path: {}\nsource:\n  file: {{path: \"-\", format: lines}}\noutputs:\n  out:\n    stdout: {{}}\n",
            lib.display()
        ),
    );
    for command in ["validate", "run"] {
        let run = sluice(&[command, "-f", spec.to_str().unwrap()], dir.path(), "a\n");
        assert_exit_1(&run);
        assert_eq!(
            run.error_line(),
            format!(
                "error: {}: outputs: plugin declares 0.1.0 emits to `audit`, which the spec does not define: add it under `outputs:`",
                spec.display()
            )
        );
    }
    let run = sluice(
        &["plugin", "inspect", "--json", lib.to_str().unwrap()],
        dir.path(),
        "",
    );
    let info: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(info["outputs"], json!(["out", "audit"]));
    // Rust plugins declare theirs through `Pipeline::OUTPUTS`.
    let run = sluice(
        &[
            "plugin",
            "inspect",
            "--json",
            plugin("filter-and-enrich").to_str().unwrap(),
        ],
        dir.path(),
        "",
    );
    let info: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(info["outputs"], json!(["enriched", "filtered"]));
}

#[test]
// std::io::pipe is newer than the workspace's declared minimum Rust; only this test needs it.
#[allow(clippy::incompatible_msrv)]
fn every_command_ends_quietly_when_its_reader_closes_the_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let lib = plugin("filter-and-enrich");
    let bookings = root().join("plugins/filter-and-enrich/pipeline.yaml");
    let example = root().join("deploy/examples/streampipeline.yaml");
    let trace = root().join("deploy/capacity/steady-7d.csv");
    let commands: [Vec<&str>; 6] = [
        vec!["plugin", "inspect", lib.to_str().unwrap()],
        vec!["plugin", "inspect", "--json", lib.to_str().unwrap()],
        vec!["validate", "-f", bookings.to_str().unwrap()],
        vec!["render", "-f", example.to_str().unwrap()],
        vec!["capacity", "simulate", trace.to_str().unwrap()],
        vec!["run", "-f", bookings.to_str().unwrap()],
    ];
    sluice(&["--help"], dir.path(), ""); // builds the binary
    for args in commands {
        // The read end is closed before the command starts: its first write meets EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(sluice_tests::workspace_binary("sluice"))
            .args(&args)
            .current_dir(root())
            .env("SLUICE_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked") && !stderr.contains("error"),
            "{args:?}: {:?}\n{stderr}",
            out.status
        );
    }
}

#[test]
fn refuses_a_library_without_the_entry_symbol() {
    let dir = tempfile::tempdir().unwrap();
    let lib = cc_plugin(
        dir.path(),
        "noentry",
        "int not_a_plugin(void) { return 1; }\n",
    );
    let err = load(&lib).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "plugin {}: no `sluice_plugin_entry` symbol: export one with `sluice_plugin_api::export_plugin!(YourPipeline)` (C: see sluice_plugin.h)",
            lib.display()
        )
    );
}

/// A C plugin whose descriptor says `major.minor` and whose vtable has `vtable_size` bytes; its
/// entries work (open succeeds, process emits each payload to `out`).
fn c_plugin_with_version(
    dir: &Path,
    name: &str,
    major: u32,
    minor: u32,
    vtable_size: &str,
) -> std::path::PathBuf {
    let source = format!(
        r#"{ECHO_ENTRIES}static sluice_status parts(void *i, sluice_partitions p, const sluice_host *h) {{ (void)i; (void)p; (void)h; return SLUICE_STATUS_OK; }}
static sluice_status fl(void *i, const sluice_host *h) {{ (void)i; (void)h; return SLUICE_STATUS_OK; }}
/* A 1.x table that a future minor version grew by one entry. */
typedef struct {{ sluice_plugin_vtable v1; void (*added_in_a_later_minor)(void); }} grown_vtable;
static const grown_vtable VT = {{ {{ {vtable_size}, op, pr, parts, parts, fl, fl }}, 0 }};
static const sluice_plugin_descriptor D = {{ {major}, {minor}, SLUICE_STR("{name}"), SLUICE_STR("{major}.{minor}.0"),
    SLUICE_STR("versioned test plugin"), {{0, 0}}, &VT.v1, 0 }};
SLUICE_EXPORT const sluice_plugin_descriptor *sluice_plugin_entry(void) {{ return &D; }}
"#
    );
    cc_plugin(dir, name, &source)
}

#[test]
fn refuses_a_plugin_built_for_another_abi_major_version() {
    let dir = tempfile::tempdir().unwrap();
    let lib = c_plugin_with_version(dir.path(), "future", 2, 0, "sizeof(grown_vtable)");
    let err = load(&lib).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "plugin {}: plugin built for ABI 2.0, this host speaks ABI 1.3: rebuild the plugin against sluice-plugin-api 1.x",
            lib.display()
        )
    );
}

#[test]
fn refuses_a_vtable_smaller_than_abi_1_0_and_accepts_a_newer_minor() {
    let dir = tempfile::tempdir().unwrap();
    let small = c_plugin_with_version(dir.path(), "truncated", 1, 0, "16");
    let err = load(&small).unwrap_err().to_string();
    assert!(
        err.contains("the plugin vtable is 16 bytes, ABI 1.0 needs at least 56"),
        "{err}"
    );

    // Built against a later 1.x header with a longer table: this (older) host accepts it and
    // calls only the entries it knows.
    let newer = c_plugin_with_version(dir.path(), "newer", 1, 7, "sizeof(grown_vtable)");
    let plugin = load(&newer).unwrap();
    assert_eq!(plugin.plugin_ref().abi_version(), (1, 7));
    let mut out = Collected::default();
    let mut instance = plugin
        .plugin_ref()
        .open("{}", &OpenContext::new("t", 0, 1), &mut out)
        .unwrap();
    instance
        .process(&[Event::new("t", 0, 0).with_payload(b"hello")], &mut out)
        .unwrap();
    assert_eq!(out.records, [("out".into(), b"hello".to_vec())]);
}

#[test]
fn refuses_a_library_rebuilt_after_this_process_loaded_it() {
    let dir = tempfile::tempdir().unwrap();
    let lib = c_plugin_with_version(dir.path(), "rebuilt", 1, 0, "sizeof(grown_vtable)");
    load(&lib).unwrap();
    // A new build replaces the file (a new inode, as `cargo build` and `install` do).
    let newer = c_plugin_with_version(dir.path(), "rebuilt2", 1, 1, "sizeof(grown_vtable)");
    std::fs::rename(&newer, &lib).unwrap();
    let err = load(&lib).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "plugin {}: the file changed after this process loaded it: restart the process to load the new build",
            lib.display()
        )
    );
}

#[test]
fn refuses_a_changed_layout_naming_the_type_and_field() {
    let lib = changed_layout_plugin();
    let err = load(&lib).unwrap_err();
    let line = err.to_string();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(
        line.starts_with(&format!(
            "plugin {}: ABI layout mismatch: type `Event` (at AbiTypes.event): ",
            lib.display()
        )),
        "{line}"
    );
    assert!(
        line.contains("9 fields, expected 8 (plugin adds `priority`)"),
        "{line}"
    );
    assert!(line.ends_with("rebuild the plugin against sluice-plugin-api 1.x (run with --verbose for the full layout report)"), "{line}");
    assert!(
        err.detail().unwrap().lines().count() > 20,
        "the full report is kept for --verbose"
    );

    // The CLI: one line by default, the whole report with --verbose.
    let run = sluice(&["plugin", "inspect", lib.to_str().unwrap()], &root(), "");
    assert_exit_1(&run);
    assert_eq!(run.error_line(), format!("error: {line}"));
    let verbose = sluice(
        &["plugin", "inspect", "--verbose", lib.to_str().unwrap()],
        &root(),
        "",
    );
    assert_eq!(verbose.code, Some(1));
    assert!(verbose.stderr.lines().count() > 20, "{}", verbose.stderr);
}

#[test]
fn refuses_a_library_whose_sha256_differs_from_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    let lib = plugin("passthrough");
    let good = sluice_runtime::plugin::file_sha256(&lib).unwrap();
    let bad = "0".repeat(64);
    let spec = |sha: &str| {
        format!(
            "name: pinned\nplugin:\n  path: {}\n  sha256: {sha}\nsource:\n  file: {{path: \"-\", format: lines}}\noutputs:\n  out:\n    stdout: {{}}\n",
            lib.display()
        )
    };
    let path = write_spec(dir.path(), &spec(&bad));
    let run = sluice(&["run", "-f", path.to_str().unwrap()], dir.path(), "a\n");
    assert_exit_1(&run);
    assert_eq!(
        run.error_line(),
        format!(
            "error: plugin {}: sha256 is {good} but the spec pins {bad}: deploy the pinned build or update `plugin.sha256`",
            lib.display()
        )
    );
    assert_eq!(run.stdout, "", "nothing ran");
    let path = write_spec(dir.path(), &spec(&good));
    let run = sluice(&["run", "-f", path.to_str().unwrap()], dir.path(), "a\nb\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "a\nb\n");
}

#[test]
fn refuses_config_that_breaks_the_plugin_schema_or_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let lib = plugin("filter-and-enrich");
    let spec = |config: &str| {
        format!(
            "name: cfg\nplugin:\n  path: {}\n  config: {config}\nsource:\n  file: {{path: \"-\"}}\noutputs:\n  enriched:\n    stdout: {{}}\n  filtered:\n    stdout: {{}}\n",
            lib.display()
        )
    };
    let path = write_spec(dir.path(), &spec("{min_fare: cheap}"));
    for command in ["validate", "run"] {
        let run = sluice(&[command, "-f", path.to_str().unwrap()], dir.path(), "");
        assert_exit_1(&run);
        assert_eq!(
            run.error_line(),
            format!(
                "error: {}: plugin.config.min_fare: \"cheap\" is not of type \"number\" (per the config schema of plugin filter-and-enrich 0.1.0)",
                path.display()
            )
        );
    }
    // Schema-valid but refused by the plugin's own open(): `validate` opens the plugin too.
    let path = write_spec(dir.path(), &spec("{fare_bands: [30, 10]}"));
    for command in ["validate", "run"] {
        let run = sluice(&[command, "-f", path.to_str().unwrap()], dir.path(), "");
        assert_exit_1(&run);
        assert_eq!(
            run.error_line(),
            format!(
                "error: plugin filter-and-enrich 0.1.0 failed to open: plugin error: fare_bands must be ascending, e.g. [10, 30]: check `plugin.config` in {}",
                path.display()
            )
        );
    }
}

#[test]
fn spec_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_spec(
        dir.path(),
        "name: typo\nplugin:\n  path: x.so\nsource:\n  file:\n    path: in.jsonl\n    batch-sise: 3\noutputs:\n  out:\n    stdout: {}\n",
    );
    let run = sluice(&["validate", "-f", path.to_str().unwrap()], dir.path(), "");
    assert_exit_1(&run);
    assert!(
        run.error_line().starts_with(&format!(
            "error: {}:7:5: source.file: unknown field `batch-sise`",
            path.display()
        )),
        "{}",
        run.stderr
    );

    let path = write_spec(
        dir.path(),
        "name: env\nplugin:\n  path: ${PLUGIN_DIR_UNSET_FOR_TEST}/x.so\n",
    );
    let run = sluice(&["run", "-f", path.to_str().unwrap()], dir.path(), "");
    assert_exit_1(&run);
    assert_eq!(
        run.error_line(),
        format!(
            "error: {}:3:9: environment variable `PLUGIN_DIR_UNSET_FOR_TEST` is not set: export it, or write `${{PLUGIN_DIR_UNSET_FOR_TEST:-default}}`",
            path.display()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Containment: panics and failures inside a plugin never take the host down.

fn misbehaving(mode: &str) -> (Plugin, String) {
    (
        load(&plugin("misbehaving")).unwrap(),
        json!({ "mode": mode }).to_string(),
    )
}

#[test]
fn a_panic_in_any_call_becomes_an_error_and_the_host_lives_on() {
    let ctx = OpenContext::new("t", 0, 1);
    let mut out = Collected::default();

    let (p, config) = misbehaving("panic-open");
    let err = p.plugin_ref().open(&config, &ctx, &mut out).unwrap_err();
    assert_eq!(
        err,
        CallError::Panicked("plugin panicked: panic in open, as configured".into())
    );

    let (p, config) = misbehaving("panic-process");
    let mut instance = p.plugin_ref().open(&config, &ctx, &mut out).unwrap();
    let batch = [
        Event::new("t", 0, 0).with_payload(b"fine"),
        Event::new("t", 0, 1).with_payload(b"boom"),
    ];
    let err = instance.process(&batch, &mut out).unwrap_err();
    assert_eq!(
        err,
        CallError::Panicked("plugin panicked: boom at offset 1".into())
    );
    // The same library keeps working: a fresh instance processes normally.
    let mut fresh = p.plugin_ref().open(&config, &ctx, &mut out).unwrap();
    out.records.clear();
    fresh.process(&batch[..1], &mut out).unwrap();
    assert_eq!(out.records, [("out".into(), b"fine".to_vec())]);

    let (p, config) = misbehaving("panic-flush");
    let mut instance = p.plugin_ref().open(&config, &ctx, &mut out).unwrap();
    let err = instance.flush(&mut out).unwrap_err();
    assert!(
        matches!(&err, CallError::Panicked(m) if m.contains("index out of bounds: the len is 0 but the index is 3")),
        "{err:?}"
    );
}

#[test]
fn fatal_errors_and_unknown_outputs_fail_the_call() {
    let ctx = OpenContext::new("t", 0, 1);
    let mut out = Collected::default();
    let (p, config) = misbehaving("fail-process");
    let mut instance = p.plugin_ref().open(&config, &ctx, &mut out).unwrap();
    let err = instance
        .process(&[Event::new("t", 0, 0).with_payload(b"boom")], &mut out)
        .unwrap_err();
    assert_eq!(err, CallError::Failed("database unreachable".into()));

    let (p, config) = misbehaving("unknown-output");
    let mut instance = p.plugin_ref().open(&config, &ctx, &mut out).unwrap();
    let err = instance
        .process(&[Event::new("t", 0, 0).with_payload(b"x")], &mut out)
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Refused(m) if m.contains("output `nowhere`, which the pipeline spec does not define")),
        "{err:?}"
    );

    let (p, config) = misbehaving("event-error");
    let mut instance = p.plugin_ref().open(&config, &ctx, &mut out).unwrap();
    let batch = [
        Event::new("t", 0, 0).with_payload(b"ok"),
        Event::new("t", 0, 1).with_payload(b"bad"),
    ];
    instance.process(&batch, &mut out).unwrap();
    assert_eq!(
        out.errors,
        [(1, EventErrorKind::Failed, "this event is bad".into())]
    );
}

fn misbehaving_spec(dir: &Path, mode: &str, policy: &str) -> std::path::PathBuf {
    write_spec(
        dir,
        &format!(
            "name: contain\nplugin:\n  path: {}\n  config: {{mode: {mode}}}\nsource:\n  file: {{path: \"-\", format: lines}}\noutputs:\n  out:\n    stdout: {{}}\nerror-policy:\n  event-error: {policy}\n",
            plugin("misbehaving").display()
        ),
    )
}

#[test]
fn sluice_run_reports_a_plugin_panic_and_exits_1_not_abort() {
    let dir = tempfile::tempdir().unwrap();
    let path = misbehaving_spec(dir.path(), "panic-process", "fail");
    let run = sluice(
        &["run", "-f", path.to_str().unwrap()],
        dir.path(),
        "a\nb\nboom\nc\n",
    );
    assert_exit_1(&run);
    // The batch (lines 1-4) is rerun one event at a time to name the event; what the rerun emits
    // is thrown away, so nothing reaches the output twice.
    assert_eq!(
        run.error_line(),
        "error: plugin misbehaving 0.1.0 failed in process (-:3): plugin panic: plugin panicked: boom at offset 2"
    );
    assert!(
        run.stdout.lines().filter(|l| *l == "a").count() <= 1,
        "{}",
        run.stdout
    );
    let path = misbehaving_spec(dir.path(), "unknown-output", "fail");
    let run = sluice(&["run", "-f", path.to_str().unwrap()], dir.path(), "a\n");
    assert_exit_1(&run);
    assert!(run.error_line().contains("record refused: the plugin emitted to output `nowhere`, which the pipeline spec does not define: add it under `outputs:`"), "{}", run.stderr);
}

#[test]
fn error_policy_fails_or_skips_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = misbehaving_spec(dir.path(), "event-error", "fail");
    let run = sluice(
        &["run", "-f", path.to_str().unwrap()],
        dir.path(),
        "a\nbad\nc\n",
    );
    assert_exit_1(&run);
    assert_eq!(
        run.error_line(),
        "error: -:2: plugin misbehaving 0.1.0 failed this event (event-error, 1 attempt(s)): this event is bad: fix the input or set `error-policy.event-error` to skip, dead-letter or retry"
    );
    let path = misbehaving_spec(dir.path(), "event-error", "skip");
    let run = sluice(
        &["run", "-f", path.to_str().unwrap()],
        dir.path(),
        "a\nbad\nc\n",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "a\nc\n");
    assert!(
        run.stderr
            .contains("skipped failed event: this event is bad"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("3 events in, 2 records out (out: 2), skipped 0 invalid and 1 failed events"),
        "{}",
        run.stderr
    );

    // Undecodable input is the source's call, before the plugin sees it.
    let spec = std::fs::read_to_string(&path)
        .unwrap()
        .replace(", format: lines", "");
    std::fs::write(&path, spec).unwrap();
    let run = sluice(
        &["run", "-f", path.to_str().unwrap()],
        dir.path(),
        "{\"a\":1}\nnot json\n",
    );
    assert_exit_1(&run);
    assert!(
        run.error_line().starts_with("error: -:2: not valid JSON: "),
        "{}",
        run.stderr
    );
    assert!(
        run.error_line()
            .ends_with("fix the input or set `error-policy.invalid-input: skip`"),
        "{}",
        run.stderr
    );
}

/// The error policy is one decision for every source: a file run retries a failed event alone
/// and skips or fails after it as a Kafka run does, and `plugin-panic: skip` skips only the
/// event that panicked (the batch is re-run one event at a time to find it).
#[test]
fn a_file_run_retries_and_skips_only_the_panicking_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = misbehaving_spec(dir.path(), "panic-process", "fail");
    let spec = std::fs::read_to_string(&path).unwrap() + "  plugin-panic: skip\n";
    std::fs::write(&path, spec).unwrap();
    let run = sluice(
        &["run", "-f", path.to_str().unwrap()],
        dir.path(),
        "a\nb\nboom\nc\n",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // Events before the panic may be emitted twice (at-least-once, as on Kafka); every other
    // event is there, the panicking one is not.
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    lines.dedup();
    lines.sort();
    lines.dedup();
    assert_eq!(lines, ["a", "b", "c"], "{}", run.stdout);
    assert!(
        run.stderr
            .contains("skipped failed event: plugin panicked: boom at offset 2")
            && run.stderr.contains("\"class\":\"plugin-panic\""),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("skipped 0 invalid and 1 failed events"),
        "{}",
        run.stderr
    );

    // Without the policy a panic still stops the run (the message names the lines).
    let path = misbehaving_spec(dir.path(), "panic-process", "fail");
    let run = sluice(&["run", "-f", path.to_str().unwrap()], dir.path(), "boom\n");
    assert_exit_1(&run);

    // Retries: the failing event is tried twice more, alone, then skipped.
    let path = misbehaving_spec(
        dir.path(),
        "event-error",
        "{retry: 2, backoff-ms: 1, then: skip}",
    );
    let run = sluice(
        &["run", "-f", path.to_str().unwrap()],
        dir.path(),
        "a\nbad\nc\n",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "a\nc\n");
    assert!(run.stderr.contains("\"attempts\":3"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("skipped failed event: this event is bad"),
        "{}",
        run.stderr
    );
}

/// Dead letters of a run without Kafka go to a file (`error-policy.dead-letter-file`): one JSON
/// line per dead letter with the original value and the same provenance headers a dead-letter
/// topic gets; the run goes on and the summary counts them.
#[test]
fn a_file_run_dead_letters_to_a_file_with_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let input = sluice_tests::poison_input(dir.path());
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: to-file\nplugin:\n  path: {}\n  config: {{mode: poison}}\nsource:\n  file: {{path: {}, format: lines}}\noutputs:\n  out:\n    file: {{path: out.txt}}\nerror-policy:\n  event-error: dead-letter\n  plugin-panic: {{retry: 1, backoff-ms: 1, then: dead-letter}}\n  dead-letter-file: dead/letters.jsonl\n",
            plugin("misbehaving").display(),
            input.display(),
        ),
    );
    let run = sluice(&["run", "-f", spec.to_str().unwrap()], dir.path(), "");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("2 dead-lettered"), "{}", run.stderr);
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    let values: std::collections::BTreeSet<&str> = out.lines().collect();
    assert_eq!(values.len(), 98, "every other line");
    assert!(!values.contains("bad") && !values.contains("boom"));
    let letters: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("dead/letters.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        let h = &letter["headers"];
        let (class, offset, attempts) = match letter["value"].as_str().unwrap() {
            "bad" => ("event-error", "10", "1"),
            "boom" => ("plugin-panic", "50", "2"),
            other => panic!("dead letter {other}"),
        };
        assert_eq!(letter["output"], "dead-letters");
        assert_eq!(h["sluice.failure.class"], class, "{h}");
        assert_eq!(h["sluice.failure.attempts"], attempts, "{h}");
        assert_eq!(h["sluice.source.topic"], "input", "{h}");
        assert_eq!(h["sluice.source.partition"], "0", "{h}");
        assert_eq!(h["sluice.source.offset"], offset, "the line, from 0: {h}");
        assert_eq!(h["sluice.pipeline"], "to-file", "{h}");
        assert_eq!(h["sluice.plugin.name"], "misbehaving", "{h}");
    }
    assert!(
        run.stderr.contains("dead/letters.jsonl"),
        "the log says where they went: {}",
        run.stderr
    );

    // Both a topic and a file: refused, naming the field.
    let both = std::fs::read_to_string(&spec).unwrap() + "  dead-letter-topic: dlq\n";
    std::fs::write(&spec, both).unwrap();
    let run = sluice(&["validate", "-f", spec.to_str().unwrap()], dir.path(), "");
    assert_exit_1(&run);
    assert!(
        run.error_line().contains("error-policy.dead-letter-file")
            && run.error_line().contains("not both"),
        "{}",
        run.stderr
    );
}

/// A file run serves the admin endpoint like a Kafka run: metrics, health, status with its one
/// partition (the file) while it runs.
#[test]
fn a_file_run_serves_metrics_and_status() {
    use sluice_tests::{free_port, http_get, metric, wait_until};
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let input = dir.path().join("events.txt");
    std::fs::write(&input, "a\nb\nhold\nc\n").unwrap();
    let port = free_port();
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: file-admin\nplugin:\n  path: {}\n  config: {{mode: ok, gate_file: {}}}\nsource:\n  file: {{path: {}, format: lines, batch-size: 1}}\noutputs:\n  out:\n    file: {{path: out.txt}}\nadmin:\n  listen: 127.0.0.1:{port}\n",
            plugin("misbehaving").display(),
            gate.display(),
            input.display()
        ),
    );
    let run = sluice_tests::start(&spec, dir.path());
    // The plugin holds on line 3: the run is up, two events through.
    wait_until(
        "two events consumed",
        std::time::Duration::from_secs(20),
        || {
            http_get(port, "/metrics").is_some_and(|(_, m)| {
                metric(
                    &m,
                    "sluice_events_consumed_total",
                    &[("topic", "events"), ("partition", "0")],
                ) == Some(2.0)
            })
        },
    );
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    let (code, status) = http_get(port, "/status").unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    // Consuming, or already draining: the reader may have reached the end of the file while
    // the plugin holds line 3.
    assert!(
        ["consuming", "draining"].contains(&status["lifecycle"].as_str().unwrap()),
        "{status}"
    );
    let partition = &status["partitions"][0];
    assert_eq!(
        (
            &partition["topic"],
            &partition["partition"],
            &partition["events"]
        ),
        (&json!("events"), &json!(0), &json!(2)),
        "{status}"
    );
    assert_eq!(
        status["workers"][0]["state"], "processing",
        "held in the plugin: {status}"
    );
    std::fs::write(&gate, "").unwrap();
    let (code, log) = run.stop_when_done();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "a\nb\nhold\nc\n"
    );
}

// ---------------------------------------------------------------------------------------------
// The example specs, end to end through `sluice run`, and `sluice validate` on every spec.

fn example_specs() -> Vec<std::path::PathBuf> {
    let mut specs: Vec<_> = std::fs::read_dir(root().join("plugins"))
        .unwrap()
        .flat_map(|e| std::fs::read_dir(e.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    specs.sort();
    specs
}

fn run_example(name: &str, out_dir: &Path) -> Run {
    let spec = root().join("plugins").join(name).join("pipeline.yaml");
    let plugin_dir = plugin("passthrough").parent().unwrap().to_owned();
    let c_dir = plugin("c-mask").parent().unwrap().to_owned();
    sluice_with_env(
        &["run", "-f", spec.to_str().unwrap()],
        out_dir,
        &plugin_dir,
        &c_dir,
    )
}

fn sluice_with_env(args: &[&str], out_dir: &Path, plugin_dir: &Path, c_dir: &Path) -> Run {
    let env = [
        ("SLUICE_PLUGIN_DIR", plugin_dir),
        ("SLUICE_C_PLUGIN_DIR", c_dir),
        ("SLUICE_OUT_DIR", out_dir),
    ];
    sluice_env(args, &root(), "", &env)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn every_example_spec_validates() {
    let specs = example_specs();
    assert_eq!(specs.len(), 7, "{specs:?}");
    let plugin_dir = plugin("passthrough").parent().unwrap().to_owned();
    let c_dir = plugin("c-mask").parent().unwrap().to_owned();
    let out = tempfile::tempdir().unwrap();
    for spec in specs {
        let run = sluice_with_env(
            &["validate", "-f", spec.to_str().unwrap()],
            out.path(),
            &plugin_dir,
            &c_dir,
        );
        assert_eq!(run.code, Some(0), "{}: {}", spec.display(), run.stderr);
        assert!(
            run.stdout.starts_with(&format!("ok: {}", spec.display())),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn example_filter_and_enrich_end_to_end() {
    let out = tempfile::tempdir().unwrap();
    let run = run_example("filter-and-enrich", out.path());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let kept = json_lines(&run.stdout);
    let ids: Vec<_> = kept
        .iter()
        .map(|v| v["booking_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b-1001", "b-1004", "b-1006", "b-1008"]);
    assert_eq!(kept[1]["fare_band"], "high");
    assert_eq!(kept[1]["long_trip"], true);
    assert_eq!(kept[0]["fare_per_km"], 2.0);
    let filtered = json_lines(&std::fs::read_to_string(out.path().join("filtered.jsonl")).unwrap());
    assert_eq!(
        filtered,
        [
            json!({"booking_id": "b-1002", "reason": "status"}),
            json!({"booking_id": "b-1003", "reason": "min_fare"}),
            json!({"booking_id": "b-1005", "reason": "city"})
        ]
    );
    assert!(
        // The log is JSON (stderr is not a terminal here): the field is `"at":"FILE:7"`.
        run.stderr.contains("bookings.jsonl:7\""),
        "the incomplete booking is skipped by policy, by line: {}",
        run.stderr
    );
    assert!(run.stderr.contains("8 events in, 7 records out (enriched: 4, filtered: 3), skipped 1 invalid and 0 failed events"));
    // Asked for, the same log is human-readable lines.
    let spec = root().join("plugins/filter-and-enrich/pipeline.yaml");
    let human = sluice_with_env(
        &["run", "--log-format", "human", "-f", spec.to_str().unwrap()],
        out.path(),
        plugin("passthrough").parent().unwrap(),
        plugin("c-mask").parent().unwrap(),
    );
    assert!(
        human.stderr.contains("bookings.jsonl:7") && !human.stderr.contains("{\"timestamp\""),
        "{}",
        human.stderr
    );
}

#[test]
fn example_windowed_count_end_to_end() {
    let out = tempfile::tempdir().unwrap();
    let run = run_example("windowed-count", out.path());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let counts = json_lines(&run.stdout);
    // The 8 bookings: 7 with a pickup time (1 lacks one and is skipped), in hourly windows.
    let total: u64 = counts.iter().map(|c| c["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 7);
    let sg_first: Vec<_> = counts
        .iter()
        .filter(|c| c["key"] == "SG" && c["window_start"] == 1763798400000u64)
        .collect();
    assert_eq!(sg_first.len(), 1);
    assert_eq!(sg_first[0]["count"], 2);
    assert_eq!(sg_first[0]["closed"], true);
    assert!(
        counts.iter().any(|c| c["closed"] == false),
        "the last windows are emitted by flush"
    );
}

#[test]
fn example_booking_payments_end_to_end() {
    let out = tempfile::tempdir().unwrap();
    let run = run_example("booking-payments", out.path());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let paid = json_lines(&run.stdout);
    // b-1001 paid after 5 min, b-1003 paid before its booking; b-1002 and b-1004 were paid too
    // late; the repeated payment p-1 and booking e-2 are dropped.
    let summary: Vec<(String, i64)> = paid
        .iter()
        .map(|p| {
            (
                p["booking_id"].as_str().unwrap().to_owned(),
                p["paid_after_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("b-1001".into(), 300_000), ("b-1003".into(), -40_000)]
    );
    assert!(
        run.stderr.contains("2 duplicate events dropped"),
        "{}",
        run.stderr
    );
}

#[test]
fn example_router_end_to_end() {
    let out = tempfile::tempdir().unwrap();
    let run = run_example("router", out.path());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let read = |f: &str| json_lines(&std::fs::read_to_string(out.path().join(f)).unwrap());
    let ids = |v: Vec<Value>| {
        v.iter()
            .map(|e| e["booking_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(read("sg.jsonl")),
        ["b-1001", "b-1002", "b-1007", "b-1008"]
    );
    assert_eq!(ids(read("jkt.jsonl")), ["b-1003", "b-1006"]);
    assert_eq!(ids(read("mnl.jsonl")), ["b-1004"]);
    // stdout: the audit copy of b-1004 as a JSON envelope, and BKK (no route) via `other`.
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    let envelope: Value =
        serde_json::from_str(lines.iter().find(|l| l.contains("\"output\"")).unwrap()).unwrap();
    assert_eq!(envelope["output"], "philippines-audit");
    assert_eq!(envelope["key"], "b-1004");
    assert_eq!(envelope["headers"]["x-routed-by"], "city");
    assert!(lines.iter().any(|l| l.contains("b-1005")));
}

#[test]
fn example_c_plugin_end_to_end() {
    let out = tempfile::tempdir().unwrap();
    let run = run_example("c-mask", out.path());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let cards: Vec<_> = json_lines(&run.stdout)
        .iter()
        .map(|v| v["card"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        cards,
        ["************1111", "**** **** **** 0004", "***********0009"]
    );
    assert!(
        run.stdout.contains("booking 77881234"),
        "short digit runs are left alone"
    );

    // Its own config check: a bad value is refused by the schema, before the C code sees it.
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        "name: c\nplugin:\n  path: {}\n  config: {{min_digits: 2}}\nsource:\n  file: {{path: \"-\"}}\noutputs:\n  masked:\n    stdout: {{}}\n",
        plugin("c-mask").display()
    );
    let path = write_spec(dir.path(), &spec);
    let run = sluice(&["run", "-f", path.to_str().unwrap()], dir.path(), "");
    assert_exit_1(&run);
    assert!(
        run.error_line()
            .contains("plugin.config.min_digits: 2 is less than the minimum of 5"),
        "{}",
        run.stderr
    );
}

#[test]
fn stdin_source_and_null_keys_through_the_c_plugin() {
    // Events with no key and no headers reach C as {NULL, 0} slices; the plugin copes.
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        "name: c\nplugin:\n  path: {}\nsource:\n  file: {{path: \"-\", format: lines, topic: payments}}\noutputs:\n  masked:\n    stdout: {{format: json}}\n",
        plugin("c-mask").display()
    );
    let path = write_spec(dir.path(), &spec);
    let run = sluice(
        &["run", "-f", path.to_str().unwrap()],
        dir.path(),
        "card 4000-0000-0000-0002 ok\n\nplain\n",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 2, "the blank line is skipped");
    assert_eq!(
        lines[0],
        json!({"output": "masked", "key": null, "value": "card ****-****-****-0002 ok", "headers": {}, "partition": null})
    );
}

// ---------------------------------------------------------------------------------------------
// `sluice plugin inspect` and `sluice plugin new`.

#[test]
fn inspect_prints_text_and_json() {
    let lib = plugin("windowed-count");
    let run = sluice(&["plugin", "inspect", lib.to_str().unwrap()], &root(), "");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("name         windowed-count\nversion      0.1.0\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("abi          1.3 (rust plugin)"));
    // Its outputs come from the config (`output`), so it declares none.
    assert!(run.stdout.contains("outputs      not declared"));
    assert!(
        run.stdout
            .contains("stores       windows (declare them in `state.stores`)"),
        "{}",
        run.stdout
    );
    let run = sluice(
        &["plugin", "inspect", "--json", lib.to_str().unwrap()],
        &root(),
        "",
    );
    let info: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        info["config_schema"]["required"],
        json!(["key_field", "window_ms"])
    );
}

#[test]
fn plugin_new_scaffolds_a_crate_that_tests_builds_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = sluice(
        &[
            "plugin",
            "new",
            "ride-tagger",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        dir.path(),
        "",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let crate_dir = dir.path().join("ride-tagger");
    // A shared target dir keeps the second run fast; the crate is still built on its own.
    let target = sluice_tests::target_dir().join("scaffold");
    for args in [&["test", "--quiet"][..], &["build", "--quiet"][..]] {
        let out =
            std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args(args)
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(&crate_dir)
                .output()
                .unwrap();
        assert!(
            out.status.success(),
            "cargo {args:?} in the new crate:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The spec is used as written: with CARGO_TARGET_DIR set, SLUICE_PLUGIN_DIR points at it.
    let plugin_dir = target.join("debug");
    let run = sluice_env(
        &["run", "-f", "pipeline.yaml"],
        &crate_dir,
        "",
        &[("SLUICE_PLUGIN_DIR", plugin_dir.as_path())],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        json_lines(&run.stdout),
        [
            json!({"id": "1", "text": "hello", "tagged_by": "ride-tagger"}),
            json!({"id": "2", "text": "world", "tagged_by": "ride-tagger"})
        ]
    );
}

/// `sluice render`: the objects the operator applies, from a StreamPipeline manifest, with the
/// tier overridden and a provider's placement read from its overlay.
#[test]
fn render_prints_the_operators_objects_for_a_tier_and_provider() {
    let dir = tempfile::tempdir().unwrap();
    let example = root().join("deploy/examples/streampipeline.yaml");
    let run = sluice(&["render", "-f", example.to_str().unwrap()], dir.path(), "");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let kinds: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "VerticalPodAutoscaler",
            "PodDisruptionBudget",
            "Service",
            "NetworkPolicy"
        ]
    );
    // 12 partitions, replicas 2..6: starts at the smallest divisor, 2.
    assert!(run.stdout.contains("\n  replicas: 2\n"), "{}", run.stdout);
    assert!(run.stdout.contains("priorityClassName: sluice-tolerant"));
    assert!(run.stdout.contains("sluice.dev/capacity-type"));

    let overlay = std::process::Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join("deploy/overlays/gke"))
        .output()
        .expect("kubectl is installed by `make deps`");
    assert!(overlay.status.success());
    let profile = dir.path().join("gke.yaml");
    std::fs::write(&profile, &overlay.stdout).unwrap();
    let run = sluice(
        &[
            "render",
            "-f",
            example.to_str().unwrap(),
            "--tier",
            "critical",
            "--placement",
            profile.to_str().unwrap(),
        ],
        dir.path(),
        "",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("priorityClassName: sluice-critical"));
    assert!(
        run.stdout.contains("key: cloud.google.com/gke-spot")
            && run.stdout.contains("key: cloud.google.com/gke-preemptible")
            && run.stdout.contains("operator: DoesNotExist"),
        "{}",
        run.stdout
    );

    // A broken manifest: exit 1, one line naming the file and the field.
    let bad = dir.path().join("bad.yaml");
    let refused = |from: &str, to: &str, error: &str| {
        let text = std::fs::read_to_string(&example).unwrap().replace(from, to);
        std::fs::write(&bad, text).unwrap();
        let run = sluice(&["render", "-f", bad.to_str().unwrap()], dir.path(), "");
        assert_eq!(run.code, Some(1));
        assert_eq!(
            run.error_line(),
            format!("error: {}: {error}", bad.display())
        );
    };
    refused(
        "replicas: {min: 2, max: 6}",
        "replicas: {fixed: 5}",
        "spec.replicas: no replica count in [5, 5] divides spec.kafka.partitions (12): widen the range or change the partitions",
    );
    // spec.pipeline is checked by the runtime's own spec parser.
    refused(
        "  tier: tolerant",
        "    ordering: random\n  tier: tolerant",
        "spec.pipeline: ordering: unknown variant `random`, expected one of `partition`, `key`, `none`",
    );
}

/// Every document of a multi-document YAML file (or text).
fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

/// `kubectl kustomize DIR`, as documents.
fn kustomize(dir: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .expect("kubectl is installed by `make deps`");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&String::from_utf8(out.stdout).unwrap())
}

/// The tiers' PriorityClasses keep the relations the headroom depends on: every pipeline tier
/// may preempt the pause pods, tolerant pipelines preempt nothing else (they sit below ordinary
/// pods at 0), the tiers are ordered, and the pause pods stay at or above cluster-autoscaler's
/// expendable cutoff (-10) so they still hold headroom.
#[test]
fn priority_classes_let_every_tier_preempt_headroom_and_tolerant_nothing_else() {
    let docs = kustomize("deploy/base");
    let class = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "PriorityClass" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no PriorityClass {name}"))
            .clone()
    };
    let value = |name: &str| class(name)["value"].as_i64().unwrap();
    const EXPENDABLE_CUTOFF: i64 = -10; // cluster-autoscaler's default
    const ORDINARY_POD: i64 = 0; // a pod without a priority class
    let pause = value("sluice-overprovisioning");
    assert!(
        pause >= EXPENDABLE_CUTOFF,
        "pause pods below the cutoff hold no headroom"
    );
    assert_eq!(
        class("sluice-overprovisioning")["preemptionPolicy"],
        "Never"
    );
    for tier in ["sluice-critical", "sluice-standard", "sluice-tolerant"] {
        assert_eq!(
            class(tier)["preemptionPolicy"],
            "PreemptLowerPriority",
            "{tier} cannot preempt pause pods"
        );
        assert!(value(tier) > pause, "{tier} is not above the pause pods");
        assert_eq!(class(tier)["globalDefault"], false);
    }
    assert!(
        value("sluice-tolerant") < ORDINARY_POD,
        "tolerant would preempt ordinary pods"
    );
    assert!(
        value("sluice-tolerant") >= EXPENDABLE_CUTOFF,
        "cluster-autoscaler would not add nodes for tolerant pods"
    );
    assert!(
        value("sluice-critical") > value("sluice-standard")
            && value("sluice-standard") > ORDINARY_POD
    );
    // The only sluice class between tolerant and ordinary pods is none: what tolerant can preempt
    // is exactly the pause pods.
    let between: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PriorityClass")
        .filter(|d| (pause + 1..value("sluice-tolerant")).contains(&d["value"].as_i64().unwrap()))
        .collect();
    assert!(between.is_empty(), "{between:?}");
    // The pause pods use that class; the tiers are gated by quota and admission.
    for d in docs.iter().filter(|d| {
        d["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("overprovisioning-"))
            && d["kind"] == "Deployment"
            && !d["metadata"]["name"]
                .as_str()
                .unwrap()
                .ends_with("-autoscaler")
    }) {
        assert_eq!(
            d["spec"]["template"]["spec"]["priorityClassName"],
            "sluice-overprovisioning"
        );
        // The autoscaler owns the count: no `replicas` for a GitOps sync to fight over.
        assert!(
            d["spec"].get("replicas").is_none(),
            "{}",
            d["metadata"]["name"]
        );
    }
    for tier in ["critical", "standard", "tolerant"] {
        let quota = docs
            .iter()
            .find(|d| {
                d["kind"] == "ResourceQuota" && d["metadata"]["name"] == format!("sluice-{tier}")
            })
            .unwrap_or_else(|| panic!("no ResourceQuota for {tier}"));
        assert_eq!(
            quota["spec"]["scopeSelector"]["matchExpressions"][0],
            json!({"scopeName": "PriorityClass", "operator": "In", "values": [format!("sluice-{tier}")]})
        );
    }
    assert!(docs.iter().any(|d| d["kind"] == "ValidatingAdmissionPolicy"
        && d["metadata"]["name"] == "sluice-tiers-granted"));
    // cluster-proportional-autoscaler's RBAC is what it calls: list and watch nodes; GET and PUT
    // its target's scale; GET its parameters (it creates the ConfigMap only with
    // --default-params, not used here). By name wherever a name is known.
    let rules = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap()["rules"]
            .clone()
    };
    let pools = json!(["overprovisioning-on-demand", "overprovisioning-spot"]);
    assert_eq!(
        rules("ClusterRole", "sluice-overprovisioning-autoscaler"),
        json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}])
    );
    assert_eq!(
        rules("Role", "overprovisioning-autoscaler"),
        json!([
            {"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": pools, "verbs": ["get", "update"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": pools, "verbs": ["get"]},
        ])
    );
}

/// On every provider, sluice's own Deployments sit where the placement ConfigMap says: the
/// operator, both autoscalers and the on-demand pause pods on on-demand nodes, the spot pause
/// pods on spot nodes with their tolerations; each autoscaler counts its pool's nodes through a
/// label selector set by name; the operator's replicas are spread over nodes and zones.
#[test]
fn overlays_place_the_operator_autoscalers_and_headroom_on_their_pools() {
    for provider in ["eks", "karpenter", "gke", "aks"] {
        let docs = kustomize(&format!("deploy/overlays/{provider}"));
        let data = &docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "sluice-placement")
            .unwrap()["data"];
        let placement =
            sluice_vpa::manifests::Placement::from_config_map(&json!({"data": data})).unwrap();
        let terms = |t: &[Vec<serde_json::Value>]| -> serde_json::Value {
            t.iter().map(|e| json!({"matchExpressions": e})).collect()
        };
        let deployment = |name: &str| {
            docs.iter()
                .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{provider}: no Deployment {name}"))
        };
        let required = |d: &serde_json::Value| {
            d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].clone()
        };
        for name in [
            "sluice-vpa",
            "overprovisioning-on-demand",
            "overprovisioning-on-demand-autoscaler",
            "overprovisioning-spot-autoscaler",
        ] {
            assert_eq!(
                required(deployment(name)),
                terms(&placement.on_demand),
                "{provider}: {name}"
            );
        }
        let spot = deployment("overprovisioning-spot");
        assert_eq!(required(spot), terms(&placement.spot), "{provider}");
        let tolerations = spot["spec"]["template"]["spec"]["tolerations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(tolerations, placement.spot_tolerations, "{provider}");
        for pool in ["on-demand", "spot"] {
            let container = &deployment(&format!("overprovisioning-{pool}-autoscaler"))["spec"]["template"]
                ["spec"]["containers"][0];
            assert!(
                container["command"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("--nodelabels=$(NODE_LABELS)"))
            );
            let env = container["env"].as_array().unwrap();
            assert_eq!(env.len(), 1, "{provider}: {env:?}");
            let labels = env[0]["value"].as_str().unwrap();
            assert!(
                !labels.contains("sluice.dev/capacity-type"),
                "{provider} {pool}: the base's labels left in place"
            );
            if pool == "on-demand" {
                // Every on-demand expression's key appears in the selector, so spot nodes are
                // not counted as on-demand headroom.
                for e in &placement.on_demand[0] {
                    assert!(
                        labels.contains(e["key"].as_str().unwrap()),
                        "{provider}: {labels}"
                    );
                }
            }
        }
        let operator = &deployment("sluice-vpa")["spec"]["template"]["spec"];
        let keys: Vec<&str> = operator["topologySpreadConstraints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["topologyKey"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["kubernetes.io/hostname", "topology.kubernetes.io/zone"],
            "{provider}"
        );
    }
    // GKE: on-demand is neither spot nor preemptible, for the autoscaler too.
    let gke = kustomize("deploy/overlays/gke");
    let env = gke
        .iter()
        .find(|d| d["metadata"]["name"] == "overprovisioning-on-demand-autoscaler")
        .unwrap()["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
        .clone();
    assert_eq!(
        env,
        "!cloud.google.com/gke-spot,!cloud.google.com/gke-preemptible"
    );
    let readme = std::fs::read_to_string(root().join("deploy/overlays/aks/README.md")).unwrap();
    assert!(
        readme.contains("termination handler"),
        "the AKS overlay's README states the handler"
    );
}

/// `sluice render`'s output reads the same with a YAML 1.1 parser (PyYAML, as older tools and
/// many CI linters use) as with a YAML 1.2 one: `updateMode: Off` would otherwise be `false`.
#[test]
fn rendered_manifests_read_the_same_in_yaml_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let example = root().join("deploy/examples/streampipeline.yaml");
    let operator_mode = dir.path().join("operator-mode.yaml");
    std::fs::write(
        &operator_mode,
        std::fs::read_to_string(&example)
            .unwrap()
            .replace("appliedBy: vpa", "appliedBy: operator"),
    )
    .unwrap();
    for file in [&example, &operator_mode] {
        let run = sluice(&["render", "-f", file.to_str().unwrap()], dir.path(), "");
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let python = sluice_tests::cache_dir().join("k8s-venv/bin/python");
        let mut child = std::process::Command::new(&python)
            .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}: run `make deps`", python.display()));
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(run.stdout.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let yaml_1_1: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            yaml_1_1,
            yaml_docs(&run.stdout),
            "YAML 1.1 and 1.2 read different objects"
        );
        let vpa = yaml_1_1
            .iter()
            .find(|d| d["kind"] == "VerticalPodAutoscaler")
            .unwrap();
        let mode = if file == &example {
            "InPlaceOrRecreate"
        } else {
            "Off"
        };
        assert_eq!(vpa["spec"]["updatePolicy"]["updateMode"], mode);
    }
}

/// `sluice capacity simulate`: the shipped synthetic week against the three strategies, with the
/// plot; `sluice capacity trace` reproduces the shipped trace; a broken trace names its line.
#[test]
fn capacity_simulate_reports_the_three_strategies_and_plots_them() {
    let dir = tempfile::tempdir().unwrap();
    let trace = root().join("deploy/capacity/diurnal-7d.csv");
    let plot = dir.path().join("capacity.svg");
    let run = sluice(
        &[
            "capacity",
            "simulate",
            trace.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
        dir.path(),
        "",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("10080 minutes (7.0 days)"),
        "{}",
        run.stdout
    );
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| matches!(w.first(), Some(&"hpa" | &"fixed+vpa" | &"operator")))
        .collect();
    assert_eq!(rows.len(), 3, "{}", run.stdout);
    for row in &rows {
        let number = |i: usize| row[i].trim_end_matches('%').parse::<f64>().unwrap();
        let (requested, used, waste) = (number(1), number(2), number(3));
        assert!(
            used <= requested && (requested - used - waste).abs() <= 1.0,
            "{row:?}"
        );
    }
    assert_eq!(rows[0][5], "-", "the HPA is the baseline");
    assert!(
        rows[2][8].starts_with("1.00/1.00"),
        "operator: no skew: {:?}",
        rows[2]
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("operator requested"));

    let generated = sluice(
        &["capacity", "trace", "--days", "7", "--seed", "1"],
        dir.path(),
        "",
    );
    assert_eq!(generated.code, Some(0));
    assert_eq!(generated.stdout, std::fs::read_to_string(&trace).unwrap());

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "minute,cores\n0,1.5\n1,1.6\n3,1.7\n").unwrap();
    let run = sluice(
        &["capacity", "simulate", bad.to_str().unwrap()],
        dir.path(),
        "",
    );
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.error_line(),
        format!(
            "error: {}:4: minute 3 out of order: expected 2 (one row per minute from 0)",
            bad.display()
        )
    );
}
