//! The pipeline's Prometheus metrics: one registry per run, every name prefixed `sluice_` and
//! labelled `pipeline` (a constant label), in base units, counters ending in `_total`. Labels
//! are bounded: topic, partition, output, failure class, worker; never an event key or value.
//!
//! Hot-path instruments (latency histograms, per-partition counters) are handles resolved once
//! and bumped with one atomic add each; they can be switched off (`admin.metrics: false`) for
//! the benchmark that measures their cost. Gauges that describe state (lag, in-flight events,
//! paused partitions) are not updated on the hot path at all: the admin endpoint samples them
//! when it is scraped (`status::Health::refresh`).

use std::collections::HashMap;

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Bucket bounds (seconds) for one plugin call.
const BATCH_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Bucket bounds (seconds) for one event's share of a call.
const EVENT_SECONDS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.01,
    0.1,
    1.0,
];
/// Bucket bounds (seconds) from an event's timestamp to its record's acknowledgement.
const END_TO_END_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Bucket bounds (rows) of a database batch.
const BATCH_ROWS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Every metric of one pipeline run.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    names: Vec<String>,
    /// Whether hot-path instruments are updated (`admin.metrics`).
    pub enabled: bool,
    /// Events handed to the plugin, per source partition.
    pub events_consumed: IntCounterVec,
    /// Records the plugin emitted, per output.
    pub records_emitted: IntCounterVec,
    /// Wall time of one `process` call.
    pub batch_seconds: Histogram,
    /// A call's wall time divided by its events: the cost of one event.
    pub event_seconds: Histogram,
    /// From an event's timestamp to the acknowledgement of a record it produced, per output.
    pub end_to_end_seconds: HistogramVec,
    /// Events that failed, per error-policy class (plugin errors, panics, sink rejections).
    pub event_failures: IntCounterVec,
    /// Failed events skipped by policy, per class.
    pub events_skipped: IntCounterVec,
    /// Failed events written to the dead-letter topic, per class.
    pub dead_letters: IntCounterVec,
    /// Messages between the committed offset and the high watermark, per partition.
    pub consumer_lag: IntGaugeVec,
    /// The last committed offset (the next event to read after a restart), per partition.
    pub committed_offset: IntGaugeVec,
    /// The partition's high watermark as last reported by the broker.
    pub high_watermark: IntGaugeVec,
    /// Events read and not yet through the plugin, per partition.
    pub in_flight_events: IntGaugeVec,
    /// Events read while their partition was paused, waiting for room, per partition.
    pub held_events: IntGaugeVec,
    /// 1 while a partition is paused for backpressure.
    pub partition_paused: IntGaugeVec,
    /// Times a partition was paused for backpressure.
    pub partition_pauses: IntCounter,
    /// Partitions assigned to this pod.
    pub assigned_partitions: IntGauge,
    /// Seconds each worker spent inside plugin calls (busy ratio = its rate).
    pub worker_busy_seconds: CounterVec,
    /// Rows per database batch, per output.
    pub sink_batch_rows: HistogramVec,
    /// Wall time of one database batch (collect, write, commit), per output.
    pub sink_batch_seconds: HistogramVec,
    /// Sink failures per output and kind (`transient`, `rejected`, `delivery`).
    pub sink_failures: IntCounterVec,
    /// Kafka refusals per client (`source.kafka`, `producer`) and kind (`authentication`,
    /// `tls`, `authorization`).
    pub kafka_access_denied: IntCounterVec,
    /// 1 while an output's sink is reachable.
    pub sink_reachable: IntGaugeVec,
    /// Rebalance callbacks, per kind (`assign`, `revoke`).
    pub rebalances: IntCounterVec,
    /// Offset commits that succeeded.
    pub commits: IntCounter,
    /// Offset commits that failed (retried at the next interval).
    pub commit_failures: IntCounter,
    /// Always 1; the plugin's name, version and ABI version as labels.
    pub plugin_info: IntGaugeVec,
    /// Plugin upgrades without a restart (`POST /plugin`), by outcome: `upgraded`, `refused`
    /// (nothing changed), `rolled-back` (back to the version before).
    pub plugin_upgrades: IntCounterVec,
    /// Plugin libraries this process has loaded (never unloaded: each upgrade adds one).
    pub plugin_libraries_loaded: IntGauge,
    /// Worker threads (plugin instances).
    pub workers: IntGauge,
    /// Times the worker pool was resized to follow the CPU quota.
    pub worker_resizes: IntCounter,
    /// The container's CPU quota the worker count was derived from (absent without a quota).
    pub cpu_quota_cores: Gauge,
    /// CPUs the host offers this process.
    pub host_cpus: IntGauge,
    /// 1 while `/readyz` answers ready.
    pub ready: IntGauge,
    /// When the run started, seconds since the epoch.
    pub start_time_seconds: Gauge,
    /// 1 for the pipeline's current condition, 0 for the others.
    pub condition: IntGaugeVec,
    /// Times the pipeline entered each condition.
    pub condition_changes: IntCounterVec,
    /// Remedies run for `Starved` / `Stalled`, per action (`rejoin`, `give-up`).
    pub remedies: IntCounterVec,
    /// State writes (puts and deletes), per store.
    pub state_writes: IntCounterVec,
    /// Changelog records applied while restoring, per store.
    pub state_restored_records: IntCounterVec,
    /// Changelog bytes (keys and values) applied while restoring, per store.
    pub state_restored_bytes: IntCounterVec,
    /// Changelog records still to restore before the partition's events are processed.
    pub state_restore_remaining: IntGaugeVec,
}

/// Registers a collector (and remembers its names).
type Register<'a> = &'a dyn Fn(Box<dyn Collector>);

fn counter(register: Register<'_>, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    register(Box::new(c.clone()));
    c
}

fn gauge(register: Register<'_>, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    register(Box::new(g.clone()));
    g
}

fn histogram(
    register: Register<'_>,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    register(Box::new(h.clone()));
    h
}

impl Metrics {
    /// The condition gauge: 1 for `current`, 0 for the others (a series for each).
    pub fn set_condition(&self, current: crate::condition::Condition) {
        for c in crate::condition::Condition::ALL {
            self.condition
                .with_label_values(&[c.name()])
                .set(i64::from(c == current));
        }
    }

    /// The metrics of pipeline `pipeline`; `enabled` switches the hot-path instruments.
    pub fn new(pipeline: &str, enabled: bool) -> Metrics {
        let labels = HashMap::from([("pipeline".to_owned(), pipeline.to_owned())]);
        let r = Registry::new_custom(Some("sluice".into()), Some(labels)).expect("valid prefix");
        let names = std::cell::RefCell::new(Vec::new());
        let register = |c: Box<dyn Collector>| {
            for desc in c.desc() {
                names.borrow_mut().push(format!("sluice_{}", desc.fq_name));
            }
            r.register(c).expect("unique metric names");
        };
        let reg: Register<'_> = &register;
        let tp = &["topic", "partition"];
        let single = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let single_f = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let single_c = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let single_h = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid metric");
            register(Box::new(h.clone()));
            h
        };
        let busy = CounterVec::new(
            Opts::new(
                "worker_busy_seconds_total",
                "Seconds each worker spent inside plugin calls; its rate is the busy ratio.",
            ),
            &["worker"],
        )
        .expect("valid metric");
        register(Box::new(busy.clone()));
        let mut metrics = Metrics {
            names: Vec::new(),
            enabled,
            events_consumed: counter(
                reg,
                "events_consumed_total",
                "Events read from the source partition and handed to the plugin.",
                tp,
            ),
            kafka_access_denied: counter(
                reg,
                "kafka_access_denied_total",
                "Refusals by Kafka per client (source.kafka, producer) and kind (authentication, tls, authorization); the log says which principal, resource and fix.",
                &["client", "kind"],
            ),
            records_emitted: counter(
                reg,
                "records_emitted_total",
                "Records the plugin emitted, per output.",
                &["output"],
            ),
            batch_seconds: single_h(
                "process_batch_duration_seconds",
                "Wall time of one plugin process call.",
                BATCH_SECONDS,
            ),
            event_seconds: single_h(
                "process_event_duration_seconds",
                "A process call's wall time divided by its events.",
                EVENT_SECONDS,
            ),
            end_to_end_seconds: histogram(
                reg,
                "end_to_end_latency_seconds",
                "From an event's timestamp to the sink's acknowledgement of a record the plugin emitted while processing it.",
                END_TO_END_SECONDS,
                &["output"],
            ),
            event_failures: counter(
                reg,
                "event_failures_total",
                "Events that failed, per error-policy class (invalid-input, event-error, plugin-panic, sink-rejection).",
                &["class"],
            ),
            events_skipped: counter(
                reg,
                "events_skipped_total",
                "Failed events skipped by the error policy, per class.",
                &["class"],
            ),
            dead_letters: counter(
                reg,
                "dead_letters_total",
                "Failed events written to the dead-letter topic, per class.",
                &["class"],
            ),
            consumer_lag: gauge(
                reg,
                "consumer_lag",
                "Messages between the committed offset and the high watermark.",
                tp,
            ),
            committed_offset: gauge(
                reg,
                "committed_offset",
                "The last committed offset of the consumer group.",
                tp,
            ),
            high_watermark: gauge(
                reg,
                "high_watermark_offset",
                "The partition's high watermark as last reported by the broker.",
                tp,
            ),
            in_flight_events: gauge(
                reg,
                "in_flight_events",
                "Events read from the partition and not yet through the plugin.",
                tp,
            ),
            held_events: gauge(
                reg,
                "held_events",
                "Events read while the partition was paused, waiting for room.",
                tp,
            ),
            partition_paused: gauge(
                reg,
                "partition_paused",
                "1 while the partition is paused for backpressure.",
                tp,
            ),
            partition_pauses: single_c(
                "partition_pauses_total",
                "Times a partition was paused for backpressure.",
            ),
            assigned_partitions: single("assigned_partitions", "Partitions assigned to this pod."),
            worker_busy_seconds: busy,
            sink_batch_rows: histogram(
                reg,
                "sink_batch_rows",
                "Rows per database batch.",
                BATCH_ROWS,
                &["output"],
            ),
            sink_batch_seconds: histogram(
                reg,
                "sink_batch_duration_seconds",
                "Wall time of one database batch: collect, write, commit.",
                BATCH_SECONDS,
                &["output"],
            ),
            sink_failures: counter(
                reg,
                "sink_failures_total",
                "Sink failures per output and kind (transient, rejected, delivery).",
                &["output", "kind"],
            ),
            sink_reachable: gauge(
                reg,
                "sink_reachable",
                "1 while the output's sink is reachable.",
                &["output"],
            ),
            rebalances: counter(
                reg,
                "rebalances_total",
                "Rebalance callbacks, per kind (assign, revoke).",
                &["kind"],
            ),
            commits: single_c("commits_total", "Offset commits that succeeded."),
            commit_failures: single_c(
                "commit_failures_total",
                "Offset commits that failed (retried at the next interval).",
            ),
            plugin_info: gauge(
                reg,
                "plugin_info",
                "Always 1: the loaded plugin's name, version and ABI version.",
                &["plugin", "version", "abi_version"],
            ),
            plugin_upgrades: counter(
                reg,
                "plugin_upgrades_total",
                "Plugin upgrades without a restart, by outcome (upgraded, refused, rolled-back).",
                &["outcome"],
            ),
            plugin_libraries_loaded: single(
                "plugin_libraries_loaded",
                "Plugin libraries this process has loaded; they are never unloaded.",
            ),
            workers: single(
                "workers",
                "Worker threads, each with its own plugin instance.",
            ),
            worker_resizes: single_c(
                "worker_resizes_total",
                "Times the worker pool was resized to follow the container's CPU quota.",
            ),
            cpu_quota_cores: single_f(
                "cpu_quota_cores",
                "The container CPU quota the worker count was derived from (0: no quota).",
            ),
            host_cpus: single("host_cpus", "CPUs the host offers this process."),
            ready: single("ready", "1 while the pod is ready (/readyz)."),
            start_time_seconds: single_f(
                "start_time_seconds",
                "When the run started, in seconds since the epoch.",
            ),
            condition: gauge(
                reg,
                "condition",
                "1 for the pipeline's current condition (Healthy, Idle, Unassigned, Starved, Stalled, SinkDown, CommitsFailing, AccessDenied), 0 for the others.",
                &["condition"],
            ),
            condition_changes: counter(
                reg,
                "condition_changes_total",
                "Times the pipeline entered each condition.",
                &["condition"],
            ),
            remedies: counter(
                reg,
                "remedies_total",
                "Remedies run for Starved and Stalled, per action (rejoin, give-up).",
                &["action"],
            ),
            state_writes: counter(
                reg,
                "state_writes_total",
                "State writes (puts and deletes) by the plugin, per store.",
                &["store"],
            ),
            state_restored_records: counter(
                reg,
                "state_restored_records_total",
                "Changelog records applied while restoring state, per store.",
                &["store"],
            ),
            state_restored_bytes: counter(
                reg,
                "state_restored_bytes_total",
                "Changelog bytes (keys and values) applied while restoring state, per store.",
                &["store"],
            ),
            state_restore_remaining: gauge(
                reg,
                "state_restore_remaining_records",
                "Changelog records still to restore before the partition's events are processed.",
                &["topic", "partition"],
            ),
            registry: r.clone(),
        };
        metrics.names = names.into_inner();
        metrics
    }

    /// Every metric's full name (`sluice_...`, without histogram suffixes).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The registry in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of valid metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// The sum of a counter vector over all its label values (for `/status` totals).
    pub fn sum(counter: &IntCounterVec) -> u64 {
        counter
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// A counter vector's values by its first label (for `/status` totals).
    pub fn by_label(counter: &IntCounterVec) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for family in counter.collect() {
            for m in family.get_metric() {
                let label = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() != "pipeline")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                *out.entry(label).or_insert(0) += m.get_counter().get_value() as u64;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_labelled_and_in_base_units() {
        let m = Metrics::new("rides", true);
        m.events_consumed.with_label_values(&["in", "0"]).inc_by(3);
        m.records_emitted.with_label_values(&["out"]).inc();
        m.batch_seconds.observe(0.002);
        let text = m.encode();
        assert!(
            text.contains(
                "sluice_events_consumed_total{partition=\"0\",topic=\"in\",pipeline=\"rides\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("sluice_records_emitted_total{output=\"out\",pipeline=\"rides\"} 1"));
        assert!(text.contains(
            "sluice_process_batch_duration_seconds_bucket{pipeline=\"rides\",le=\"0.0025\"} 1"
        ));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("sluice_"), "{name}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
        assert_eq!(Metrics::sum(&m.events_consumed), 3);
        assert_eq!(Metrics::by_label(&m.records_emitted)["out"], 1);
    }

    /// The Grafana dashboard and the alert rules in `deploy/observability/` only use metrics
    /// that exist (a renamed metric would silently empty a panel or disarm an alert).
    #[test]
    fn the_dashboard_and_alert_rules_use_only_metrics_that_exist() {
        let m = Metrics::new("p", true);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability");
        let mut used = 0;
        let dashboard: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap(),
        )
        .expect("the dashboard is JSON");
        assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 10));
        for file in ["grafana-dashboard.json", "prometheus-rules.yaml"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            let mut rest = text.as_str();
            while let Some(at) = rest.find("sluice_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    m.names().iter().any(|n| n == &name || n == base),
                    "{file} uses {name}, which Sluice does not export"
                );
                used += 1;
            }
        }
        assert!(used > 20, "{used}");
    }
}
