//! The one event path, whatever the source: [`start`] sets up what every run has (telemetry and
//! the admin endpoint, the plugin, the offset tracker, outputs and sinks, the worker pool) and
//! [`Running::finish`] stops it and says what the run did ([`Summary`]); between them runs a
//! source's loop (`source::kafka`, `source::file`), which feeds the dispatcher
//! (`crate::dispatch`) and commits what it says is complete.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{
    KafkaOutputSpec, OutputSpec, PipelineSpec, RecordFormat, SourceSpec, ValueFormat,
};
use crate::cpu::CpuLimit;
use crate::dead_letter::{DeadLetterTarget, DeadLetters};
use crate::error::RunError;
use crate::fatal::Fatal;
use crate::kafka_client;
use crate::offsets::OffsetTracker;
use crate::plugin::PluginLabel;
use crate::plugin::check::prepare;
use crate::pool::WorkerPool;
use crate::schema::registry::Registry;
use crate::schema::{Decoder, Encoder, Schemas};
use crate::sink::kafka::KafkaSink;
use crate::sink::local::LocalOutput;
use crate::sink::table::{Dialect, SinkContext, TableSink};
use crate::state::{Changelog, StateStores};
use crate::status::{Capacity, Lifecycle, REGISTRY, SinkProbe};
use crate::sync::lock;
use crate::telemetry::{Stopped, Telemetry};
use crate::worker::{OutputTarget, Positions, WorkerShared};

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events handed to the plugin.
    pub events_in: u64,
    /// Records written, per output.
    pub records_out: BTreeMap<String, u64>,
    /// Undecodable lines skipped by policy.
    pub skipped_invalid: u64,
    /// Failed events skipped by policy.
    pub skipped_failed: u64,
    /// Failed events (or rejected records) written to the dead-letter topic.
    pub dead_lettered: u64,
    /// Blank lines a file source skipped (they are not events).
    pub blank_lines: u64,
    /// The run stopped because a Kafka credential file changed: [`run`](crate::run::run) starts
    /// it again with new clients.
    pub credentials_rotated: bool,
}

impl Summary {
    /// Adds a later round's counts (a run started again after a credential rotation).
    pub fn add(&mut self, other: Summary) {
        self.events_in += other.events_in;
        for (name, n) in other.records_out {
            *self.records_out.entry(name).or_default() += n;
        }
        self.skipped_invalid += other.skipped_invalid;
        self.skipped_failed += other.skipped_failed;
        self.dead_lettered += other.dead_lettered;
        self.blank_lines += other.blank_lines;
        self.credentials_rotated = other.credentials_rotated;
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.records_out.values().sum();
        let per: Vec<String> = self
            .records_out
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        write!(
            f,
            "{} events in, {total} records out ({})",
            self.events_in,
            per.join(", ")
        )?;
        if self.skipped_invalid + self.skipped_failed > 0 {
            write!(
                f,
                ", skipped {} invalid and {} failed events",
                self.skipped_invalid, self.skipped_failed
            )?;
        }
        if self.dead_lettered > 0 {
            write!(f, ", {} dead-lettered", self.dead_lettered)?;
        }
        if self.blank_lines > 0 {
            write!(f, ", {} blank lines skipped", self.blank_lines)?;
        }
        Ok(())
    }
}

/// How a source wants its pipeline set up.
#[derive(Debug)]
pub(crate) struct Setup<'a> {
    /// How long the source's loop may go without turning before `/healthz` fails.
    pub(crate) liveness: Duration,
    /// Serve `admin.listen`, if the spec sets it.
    pub(crate) admin: bool,
    /// The consumer group (or, for a file, the pipeline's name): exactly-once tables key their
    /// stored offsets by it.
    pub(crate) group: &'a str,
    /// Events per plugin call.
    pub(crate) batch_size: usize,
    /// A dead-letter replay: the plugin does not see the provenance headers.
    pub(crate) replay: bool,
    /// One worker whatever the CPU quota (a file is one partition, kept in order).
    pub(crate) one_worker: bool,
    /// How positions read in error messages.
    pub(crate) positions: Positions,
}

/// What every run has, whatever its source: telemetry (and the admin endpoint), the plugin, the
/// offset tracker, the outputs and sinks ([`start`] hands the worker pool over separately, for
/// the dispatcher to own). [`Running::finish`] stops the workers and flushes the sinks.
pub(crate) struct Running {
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) _admin: Option<crate::admin::AdminServer>,
    pub(crate) tracker: Arc<Mutex<OffsetTracker>>,
    pub(crate) failure: Fatal,
    pub(crate) shared: Arc<WorkerShared>,
    /// librdkafka's statistics interval, when the admin endpoint wants lag.
    pub(crate) stats_interval: Option<String>,
    /// Plugin upgrades `POST /plugin` asks for (with `SLUICE_ADMIN_TOKEN` and an admin
    /// endpoint); a source that cannot upgrade drops it, and the endpoint says so.
    pub(crate) upgrades: Option<std::sync::mpsc::Receiver<crate::upgrade::UpgradeRequest>>,
}

/// Loads the plugin, opens the outputs and sinks, and starts the workers.
pub(crate) fn start(
    spec: &PipelineSpec,
    setup: &Setup<'_>,
) -> Result<(Running, WorkerPool), RunError> {
    let telemetry = Arc::new(Telemetry::new(
        &spec.name,
        spec.admin.metrics,
        setup.liveness,
    ));
    let admin_listen = spec.admin.listen.as_deref().filter(|_| setup.admin);
    // Plugin upgrades through the admin endpoint, when a token is set.
    let token = crate::upgrade::admin_token().map_err(RunError::Setup)?;
    let (upgrades, upgrade_requests) = match token {
        Some(token) if admin_listen.is_some() => {
            let (requests, inbox) = std::sync::mpsc::channel();
            (
                Some(crate::admin::Upgrades { token, requests }),
                Some(inbox),
            )
        }
        _ => (None, None),
    };
    let admin = admin_listen
        .map(|listen| crate::admin::start(listen, telemetry.clone(), upgrades))
        .transpose()
        .map_err(RunError::Setup)?;
    let stats_interval = admin_listen.map(|_| spec.admin.lag_interval_ms.to_string());
    let plugin = prepare(spec)?;
    let label = plugin.label();
    let plugin_label = PluginLabel::new(&plugin);
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let failure = Fatal::default();

    // One producer for Kafka outputs and dead letters.
    let changelog_source = match &spec.source {
        SourceSpec::Kafka(kafka) if spec.state.is_some() && !setup.replay => Some(kafka),
        _ => None,
    };
    let needs_producer = spec.error_policy.dead_letter_topic.is_some()
        || changelog_source.is_some()
        || spec
            .outputs
            .values()
            .any(|o| matches!(o, OutputSpec::Kafka(_)));
    let sink = if needs_producer {
        let endpoint = kafka_client::Endpoint::of(spec, kafka_client::Connection::Producer)
            .ok_or_else(|| {
                RunError::Setup(
                    "producer.bootstrap-servers: needed for Kafka outputs and dead letters without a Kafka source".into(),
                )
            })?;
        let mut config = endpoint.config()?;
        let mut who = endpoint.identity();
        who.transactional_id = spec.producer.transactional_id.clone();
        if let Some(interval) = &stats_interval {
            config.set("statistics.interval.ms", interval);
        }
        let topics: HashMap<String, String> = spec
            .outputs
            .iter()
            .filter_map(|(name, o)| match o {
                OutputSpec::Kafka(k) => Some((k.topic.clone(), name.clone())),
                _ => None,
            })
            .collect();
        let sink = Arc::new(
            KafkaSink::new(
                config,
                tracker.clone(),
                failure.clone(),
                spec.producer.transactional_id.as_deref(),
                telemetry.clone(),
                &topics,
                who,
            )
            .map_err(|e| RunError::Setup(format!("producer: cannot create: {e}")))?,
        );
        if stats_interval.is_some() {
            let outputs = topics.into_values().chain(
                spec.error_policy
                    .dead_letter_topic
                    .as_ref()
                    .map(|_| "dead-letters".to_owned()),
            );
            for output in outputs {
                telemetry.health.add_sink(SinkProbe {
                    output,
                    kind: "kafka",
                    reachable: sink.reachable(),
                });
            }
        }
        Some(sink)
    } else {
        None
    };
    let target = match (
        &spec.error_policy.dead_letter_topic,
        &spec.error_policy.dead_letter_file,
        &sink,
    ) {
        (Some(topic), _, Some(sink)) => Some((
            DeadLetterTarget::Topic {
                sink: sink.clone(),
                topic: topic.clone(),
            },
            format!("topic {topic}"),
        )),
        (None, Some(file), _) => {
            let path = spec.resolve(file);
            let out = LocalOutput::file(&path, RecordFormat::Json).map_err(|source| {
                RunError::Output {
                    name: "error-policy.dead-letter-file".into(),
                    target: path.clone(),
                    source,
                }
            })?;
            Some((
                DeadLetterTarget::File(Arc::new(Mutex::new(out))),
                format!("file {}", path.display()),
            ))
        }
        _ => None,
    };
    let dead_letters = target.map(|(target, label)| DeadLetters {
        target,
        label,
        pipeline: spec.name.clone(),
        plugin: plugin_label.clone(),
    });

    let sink_context = SinkContext {
        tracker: tracker.clone(),
        failure: failure.clone(),
        on_rejection: spec.error_policy.sink_rejection,
        dead_letters: dead_letters.clone(),
        telemetry: telemetry.clone(),
        group: setup.group.to_owned(),
    };
    // The schema registry: decoding the source's values, encoding outputs' records.
    let schemas = spec
        .schema_registry
        .as_ref()
        .map(|registry| {
            let registry = Registry::new(registry, &spec.base_dir)
                .map_err(|e| RunError::Setup(format!("{}: {e}", spec.file.display())))?;
            Ok::<_, RunError>(Arc::new(Schemas::new(registry)))
        })
        .transpose()?;
    let decoder = match (&spec.source, &schemas) {
        (SourceSpec::Kafka(k), Some(schemas)) if k.format != ValueFormat::Raw => {
            telemetry.health.add_sink(SinkProbe {
                output: REGISTRY.to_owned(),
                kind: "schema-registry",
                reachable: schemas.reachable().clone(),
            });
            Some(Decoder::new(k.format, schemas.clone()))
        }
        _ => None,
    };
    let encoder = |name: &str, k: &KafkaOutputSpec| match (&schemas, k.format) {
        (Some(schemas), format) if format != ValueFormat::Raw => {
            let encoder = Encoder::new(name, k, &spec.base_dir, schemas)
                .map_err(|e| RunError::Setup(format!("{}: {e}", spec.file.display())))?;
            tracing::info!(output = name, subject = %encoder.subject, schema_id = encoder.id, format = format.name(), "encoding records with the registry's schema");
            Ok::<_, RunError>(Some(encoder))
        }
        _ => Ok(None),
    };
    let mut outputs = HashMap::new();
    for (name, output) in &spec.outputs {
        let table = |dialect, t| {
            let sink = TableSink::start(name, dialect, t, sink_context.clone())
                .map_err(|e| RunError::Setup(e.to_string()))?;
            telemetry.health.add_sink(SinkProbe {
                output: name.clone(),
                kind: match dialect {
                    Dialect::Postgres => "postgres",
                    Dialect::Mysql => "mysql",
                },
                reachable: sink.reachable(),
            });
            Ok::<_, RunError>(OutputTarget::Table(sink))
        };
        let target = match (output, open_local_output(spec, name, output)?) {
            (OutputSpec::Kafka(k), _) => OutputTarget::Kafka(k.topic.clone(), encoder(name, k)?),
            (OutputSpec::Postgres(t), _) => table(Dialect::Postgres, t)?,
            (OutputSpec::Mysql(t), _) => table(Dialect::Mysql, t)?,
            (_, Some(local)) => OutputTarget::Local(Mutex::new(local)),
            (_, None) => return Err(RunError::Setup(format!("outputs.{name}: cannot open"))),
        };
        let emitted = telemetry.metrics.records_emitted.with_label_values(&[name]);
        outputs.insert(name.clone(), (target, emitted));
    }
    let state = match (&spec.state, spec.state_dir()) {
        (Some(state), Some(dir)) => {
            let changelog = match (changelog_source, &sink) {
                (Some(kafka), Some(sink)) => {
                    let endpoint =
                        kafka_client::Endpoint::of(spec, kafka_client::Connection::Source)
                            .ok_or_else(|| {
                                RunError::Setup("source.kafka: the spec has no Kafka source".into())
                            })?;
                    let config = || endpoint.config();
                    let changelog = Changelog::new(
                        &kafka.group_id,
                        config()?,
                        Some(sink.clone()),
                        endpoint.identity(),
                    )
                    .map_err(RunError::Setup)?;
                    changelog
                        .ensure_topics(config()?, &kafka.topics, state, &endpoint.identity())
                        .map_err(RunError::Setup)?;
                    Some(changelog)
                }
                _ => None,
            };
            // Without a changelog (a file, a dead-letter replay) the stores start empty in a
            // directory of the run's own, removed at its end: a pod's copies stay untouched.
            let dir = match &changelog {
                Some(_) => dir,
                None => std::env::temp_dir().join(format!(
                    "sluice-state-{}-{}",
                    std::process::id(),
                    spec.name.replace(['/', '\\'], "_")
                )),
            };
            Some(Arc::new(
                StateStores::new(state.stores.clone(), dir, changelog, telemetry.clone())
                    .map_err(RunError::Setup)?,
            ))
        }
        _ => None,
    };
    let shared = Arc::new(WorkerShared {
        plugin: plugin_label,
        outputs,
        sink,
        dead_letters,
        tracker: tracker.clone(),
        failure: failure.clone(),
        policy: spec.error_policy.clone(),
        events_in: Default::default(),
        events_failed: Default::default(),
        strip_provenance: setup.replay,
        telemetry: telemetry.clone(),
        positions: setup.positions.clone(),
        state,
        decoder,
    });
    let events_in = Arc::downgrade(&shared);
    telemetry.health.set_events_in(Arc::new(move || {
        events_in
            .upgrade()
            .map_or(0, |s| s.events_in.load(AtomicOrdering::Relaxed))
    }));

    let cpu = CpuLimit::detect();
    let worker_count = if setup.one_worker {
        1
    } else {
        spec.workers.unwrap_or_else(|| cpu.workers())
    };
    tracing::info!(workers = worker_count, quota_cpus = ?cpu.quota_cpus, host_cpus = cpu.host_cpus, plugin = %label, "starting");
    let pool = WorkerPool::start(plugin, spec, shared.clone(), setup.batch_size, worker_count)?;

    let metrics = &telemetry.metrics;
    metrics
        .plugin_info
        .with_label_values(&[plugin.name(), plugin.version(), &plugin.abi_version()])
        .set(1);
    metrics.workers.set(worker_count as i64);
    metrics
        .plugin_libraries_loaded
        .set(crate::plugin::libraries_loaded() as i64);
    metrics.cpu_quota_cores.set(cpu.quota_cpus.unwrap_or(0.0));
    metrics.host_cpus.set(cpu.host_cpus as i64);
    telemetry.health.set_plugin_open(
        plugin.status(None),
        Capacity {
            workers: worker_count,
            cpu_quota: cpu.quota_cpus,
            host_cpus: cpu.host_cpus,
        },
    );

    let running = Running {
        telemetry,
        _admin: admin,
        tracker,
        failure,
        shared,
        stats_interval,
        upgrades: upgrade_requests,
    };
    Ok((running, pool))
}

impl Running {
    /// Stops the workers (each closes its plugin instance), flushes the outputs and waits for
    /// the producer's deliveries up to `drain_timeout`; the run's result and summary. `fatal` is
    /// the error that stopped the source's loop, if one did.
    pub(crate) fn finish(
        self,
        pool: &mut WorkerPool,
        drain_timeout: Duration,
        fatal: Option<String>,
    ) -> Result<Summary, RunError> {
        let Running {
            telemetry,
            _admin,
            failure,
            shared,
            ..
        } = self;
        // The drain is over: a database still down is not waited for any longer (its rows stay
        // uncommitted), so workers blocked on a full table queue can finish.
        let tables = || {
            shared
                .outputs
                .values()
                .filter_map(|(target, _)| match target {
                    OutputTarget::Table(t) => Some(t),
                    _ => None,
                })
        };
        tables().for_each(TableSink::give_up);
        // Nor a schema registry still down (the events waiting for it stay uncommitted).
        if let Some(decoder) = &shared.decoder {
            decoder.schemas().give_up();
        }
        pool.stop();
        tables().for_each(TableSink::close);
        for (name, (target, _)) in &shared.outputs {
            if let OutputTarget::Local(out) = target {
                let mut out = lock(out);
                match out.flush() {
                    Ok(()) => {}
                    Err(err) if out.reader_gone(&err) => failure.set_reader_gone(format!(
                        "output `{name}`: the reader of stdout went away (a closed pipe): stopping"
                    )),
                    Err(err) => failure.set(format!(
                        "output `{name}` ({}): {err}",
                        out.target().display()
                    )),
                }
            }
        }
        if let Some(sink) = &shared.sink {
            // Their offsets were not committed (the tracker waits for acks), so nothing is lost;
            // but the stop was not clean and the next run will send them again.
            if let Err(err) = sink.flush(drain_timeout) {
                failure.set(format!(
                    "records still undelivered when the drain timeout ran out ({err}); their source offsets were not committed"
                ));
            }
        }
        if let Some(message) = fatal.or_else(|| failure.get()) {
            telemetry.health.set_lifecycle(Lifecycle::Stopped);
            if failure.reader_gone() {
                return Err(RunError::ReaderGone(message));
            }
            return Err(RunError::Fatal(message));
        }
        telemetry.emit(Stopped);
        // The summary comes from the same counters as the metrics.
        let mut summary = Summary {
            events_in: shared.events_in.load(AtomicOrdering::Relaxed),
            ..Default::default()
        };
        for (name, (_, written)) in &shared.outputs {
            summary.records_out.insert(name.clone(), written.get());
        }
        let skipped = crate::metrics::Metrics::by_label(&telemetry.metrics.events_skipped);
        summary.skipped_invalid = skipped.get("invalid-input").copied().unwrap_or(0);
        summary.skipped_failed = skipped.values().sum::<u64>() - summary.skipped_invalid;
        summary.dead_lettered = crate::metrics::Metrics::sum(&telemetry.metrics.dead_letters);
        Ok(summary)
    }
}

/// Opens a local output; `None` for outputs that are not local (Kafka topics).
fn open_local_output(
    spec: &PipelineSpec,
    name: &str,
    output: &OutputSpec,
) -> Result<Option<LocalOutput>, RunError> {
    Ok(match output {
        OutputSpec::Stdout(stdout) => Some(LocalOutput::stdout(stdout.format)),
        OutputSpec::File(file) => {
            let target = spec.resolve(&file.path);
            Some(
                LocalOutput::file(&target, file.format).map_err(|source| RunError::Output {
                    name: name.to_owned(),
                    target,
                    source,
                })?,
            )
        }
        OutputSpec::Kafka(_) | OutputSpec::Postgres(_) | OutputSpec::Mysql(_) => None,
    })
}
