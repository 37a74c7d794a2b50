//! The `sluice` command line: run and validate pipeline specs, inspect and scaffold plugins.

/// `print!` that returns the write's error instead of panicking: a closed stdout (`sluice ... |
/// head -1`) ends the command quietly in `main`, never with a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

/// `println!` that returns the write's error (see [`out!`]).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::scaffold;
use sluice_runtime::config::{OutputSpec, PipelineSpec, SourceSpec};
use sluice_runtime::error::RunError;
use sluice_runtime::plugin::check;
use sluice_runtime::plugin::{LoadError, Plugin, probe};
use sluice_runtime::run;

/// Sluice: a plugin-based Kafka stream-processing runtime.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Print full detail with errors (e.g. the complete ABI layout report).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// Log format: `human` (a terminal), `json` (one object per line, for log collectors), or
    /// `auto`: human on a terminal, JSON otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human on a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline spec.
    Run {
        /// The pipeline spec (YAML).
        #[arg(short = 'f', long = "file")]
        spec: PathBuf,
        /// Serve the admin endpoint (/metrics, /healthz, /readyz, /status) on this `host:port`
        /// (overrides the spec's `admin.listen`).
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
        /// Start every assigned partition from `source.kafka.start-from` (once per partition in
        /// this process), ignoring the group's committed offsets: a rewind or a skip ahead.
        #[arg(long)]
        reset: bool,
    },
    /// Print the Kubernetes objects the operator applies for a StreamPipeline (ConfigMap,
    /// Deployment, VPA, PDB, Service, NetworkPolicy), for deploying without the operator.
    Render {
        /// The StreamPipeline manifest (YAML).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Override its tier.
        #[arg(long, value_parser = ["critical", "standard", "tolerant"])]
        tier: Option<String>,
        /// The provider's `sluice-placement` ConfigMap (from `kubectl kustomize
        /// deploy/overlays/PROVIDER`); default: the neutral `sluice.dev/capacity-type` labels.
        #[arg(long, value_name = "FILE")]
        placement: Option<PathBuf>,
    },
    /// Capacity planning: replay a load trace against the ways of sizing a pipeline.
    Capacity {
        #[command(subcommand)]
        command: CapacityCommand,
    },
    /// Show a running pod's state (its admin endpoint's /status) as a table.
    Status {
        /// The pod's admin endpoint: `host:port` or a URL.
        #[arg(long, value_name = "URL")]
        admin: String,
        /// Print the /status JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// A live terminal view of one or more pods: lag and its trend per partition, throughput,
    /// errors, backpressure. q, Esc or Ctrl-C quits.
    Top {
        /// Admin endpoints, comma-separated (`host:port` or URLs).
        #[arg(
            long,
            value_name = "URL[,URL...]",
            value_delimiter = ',',
            required = true
        )]
        admin: Vec<String>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Check a pipeline spec: parse it, load and verify its plugin, check the plugin config
    /// against the plugin's schema.
    Validate {
        /// The pipeline spec (YAML).
        #[arg(short = 'f', long = "file")]
        spec: PathBuf,
    },
    /// Work with plugin libraries.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Work with a pipeline's dead-letter topic.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Work with a pipeline's state stores.
    #[command(subcommand)]
    State(StateCommand),
    /// The Kafka ACLs a pipeline needs, derived from its spec (least privilege): printed as
    /// kafka-acls.sh commands and a Strimzi KafkaUser `authorization` block, or applied through
    /// the Admin API with --apply.
    Acls(crate::acls::AclsArgs),
}

/// `sluice state ...`
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Restore a pipeline's state stores from their changelogs, as a pod does on assignment,
    /// and print every entry as a JSON line (partition, store, key, value). Uses the spec's
    /// `state.dir` (its local copies and checkpoints) unless --dir says otherwise; never while a
    /// pod runs on that directory.
    Dump {
        /// The pipeline spec (YAML).
        #[arg(short = 'f', long = "file")]
        spec: PathBuf,
        /// Restore into this directory instead (an empty one: from the beginning).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Only this input partition, `topic/partition` (repeatable). Default: all.
        #[arg(long = "partition", value_parser = parse_partition)]
        partitions: Vec<(String, i32)>,
    },
}

fn parse_partition(text: &str) -> Result<(String, i32), String> {
    let (topic, partition) = text
        .rsplit_once('/')
        .ok_or_else(|| format!("`{text}`: write topic/partition, e.g. orders/3"))?;
    let partition = partition
        .parse()
        .map_err(|_| format!("`{text}`: the partition after `/` is a number"))?;
    Ok((topic.to_owned(), partition))
}

/// `sluice dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Re-inject dead letters into their source topic (after the fix is deployed). At-least-once;
    /// resumes where the last replay of the same --group stopped.
    Replay {
        /// Kafka bootstrap servers (default: the --file spec's).
        #[arg(
            long,
            env = "SLUICE_BOOTSTRAP_SERVERS",
            required_unless_present = "file"
        )]
        bootstrap_servers: Option<String>,
        /// Connect as this pipeline spec's Kafka source does: its brokers, `security` (TLS,
        /// SASL, mTLS) and properties.
        #[arg(short = 'f', long = "file", value_name = "SPEC")]
        file: Option<PathBuf>,
        /// The dead-letter topic.
        #[arg(long)]
        topic: String,
        /// Send every dead letter here instead of its `sluice.source.topic`.
        #[arg(long)]
        to_topic: Option<String>,
        /// Only this failure class (repeatable): invalid-input, event-error, plugin-panic,
        /// sink-rejection.
        #[arg(long = "class")]
        classes: Vec<String>,
        /// Only dead letters written at or after this time (ms since the epoch).
        #[arg(long)]
        since_ms: Option<u64>,
        /// Only dead letters written before this time (ms since the epoch).
        #[arg(long)]
        until_ms: Option<u64>,
        /// Only events from source offsets >= this.
        #[arg(long)]
        from_offset: Option<i64>,
        /// Only events from source offsets <= this.
        #[arg(long)]
        to_offset: Option<i64>,
        /// The replay's consumer group: where it resumes.
        #[arg(long, default_value = "sluice-dlq-replay")]
        group: String,
        /// A librdkafka property for both clients, `key=value` (repeatable).
        #[arg(long = "property", value_parser = parse_property)]
        properties: Vec<(String, String)>,
        /// Instead of re-injecting: run this pipeline spec on the dead letters (its plugin and
        /// outputs, reading the dead-letter topic as consumer group --group), then stop.
        #[arg(long, value_name = "SPEC")]
        through: Option<PathBuf>,
    },
}

/// `sluice dlq replay --through SPEC`: the spec's pipeline, reading the dead-letter topic.
fn replay_through(
    path: &Path,
    options: sluice_runtime::dlq::ReplayOptions,
    verbose: bool,
) -> anyhow::Result<()> {
    let mut spec = PipelineSpec::load(path)?;
    let SourceSpec::Kafka(source) = &mut spec.source else {
        anyhow::bail!(
            "{}: source: replaying dead letters through a pipeline needs a `source: kafka` spec",
            path.display()
        );
    };
    source.topics = vec![options.dlq_topic.clone()];
    source.group_id = options.group.clone();
    let end = options
        .end_offsets()
        .map_err(|e| anyhow::anyhow!("dlq replay: {e}"))?;
    let replay = sluice_runtime::source::kafka::ReplayUntil {
        keep: Box::new(move |m| options.selects(m.headers())),
        end,
    };
    let shutdown = sluice_runtime::shutdown::Shutdown::install()
        .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
    let summary = sluice_runtime::source::kafka::run_with(&spec, &shutdown, Some(replay))
        .map_err(|e| with_detail(e, verbose))?;
    eprintln!(
        "sluice: dead letters replayed through pipeline {}: {summary}",
        spec.name
    );
    Ok(())
}

/// `sluice render`: the children of the StreamPipeline in `file`, as multi-document YAML.
fn render(file: &Path, tier: Option<&str>, placement: Option<&Path>) -> anyhow::Result<String> {
    use sluice_vpa::crd::{StreamPipeline, Tier};
    use sluice_vpa::manifests::Placement;
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))
    };
    let mut sp: StreamPipeline = serde_yaml_ng::from_str(&read(file)?)
        .map_err(|e| anyhow::anyhow!("{}: not a StreamPipeline: {e}", file.display()))?;
    match tier {
        Some("critical") => sp.spec.tier = Tier::Critical,
        Some("standard") => sp.spec.tier = Tier::Standard,
        Some("tolerant") => sp.spec.tier = Tier::Tolerant,
        _ => {}
    }
    let placement = match placement {
        None => Placement::neutral(),
        Some(path) => {
            let text = read(path)?;
            let config_map = serde_yaml_ng::Deserializer::from_str(&text)
                .filter_map(|d| serde::Deserialize::deserialize(d).ok())
                .find(|v: &serde_json::Value| {
                    v["kind"] == "ConfigMap" && v["metadata"]["name"] == "sluice-placement"
                })
                .ok_or_else(|| {
                    anyhow::anyhow!("{}: no ConfigMap sluice-placement in it", path.display())
                })?;
            Placement::from_config_map(&config_map)
                .map_err(|e| anyhow::anyhow!("{}: sluice-placement: {e}", path.display()))?
        }
    };
    sluice_vpa::manifests::render(&sp, &placement)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

pub(crate) fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}`: write key=value"))
}

/// `sluice capacity ...`
#[derive(Debug, Subcommand)]
pub enum CapacityCommand {
    /// Replay TRACE (`minute,cores` rows: the CPU the pipeline needs each minute) against HPA,
    /// fixed pods with the VPA (Grab's setup) and the operator's capacity policy; print
    /// requested vs used CPU-hours, waste, under-provisioned time and partition skew.
    Simulate {
        /// The load trace (deploy/capacity/diurnal-7d.csv is a synthetic week).
        trace: PathBuf,
        /// Also write the three runs over time as an SVG plot.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Partitions of the source topics.
        #[arg(long, default_value_t = 24)]
        partitions: u32,
        /// The largest pod the VPA may recommend (cores), for the VPA and the operator.
        #[arg(long, default_value_t = 4.0)]
        max_pod_cpu: f64,
        /// The HPA's pod size (cores).
        #[arg(long, default_value_t = 2.0)]
        hpa_pod_cpu: f64,
        /// The HPA's target CPU utilization (0-1).
        #[arg(long, default_value_t = 0.7)]
        hpa_target: f64,
        /// The smallest pod of fixed + VPA (cores): 0.1 as Grab ran it at first; Grab's 2023
        /// fix was 2 whole CPUs.
        #[arg(long, default_value_t = 0.1)]
        vpa_min_cpu: f64,
        /// Simulate the operator with `appliedBy: operator` (it applies the VPA's target itself)
        /// instead of the VPA's updater.
        #[arg(long)]
        operator_applies: bool,
    },
    /// Print a synthetic trace (deploy/capacity/SHAPE-7d.csv is `--shape SHAPE --days 7 --seed 1`).
    Trace {
        /// The load's shape: diurnal, two-peaks, surge or steady.
        #[arg(long, default_value = "diurnal")]
        shape: String,
        /// Days of load.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Seed of the noise and the spikes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// `sluice capacity simulate`: the report, and the plot if asked.
fn simulate(
    trace: &Path,
    plot: Option<&Path>,
    scenario: sluice_vpa::simulate::Scenario,
) -> anyhow::Result<String> {
    use sluice_vpa::simulate::{Trace, plot_svg, report, simulate};
    let text = std::fs::read_to_string(trace)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", trace.display()))?;
    let origin = trace.display().to_string();
    let trace = Trace::parse(&text, &origin).map_err(anyhow::Error::msg)?;
    if scenario.partitions == 0 {
        anyhow::bail!("--partitions: must be at least 1");
    }
    let finite_at_least = |x: f64, floor: f64| x.is_finite() && x >= floor;
    if !finite_at_least(scenario.max_allowed, f64::from(scenario.min_cpus)) {
        anyhow::bail!(
            "--max-pod-cpu: must be at least {} (whole CPUs per pod)",
            scenario.min_cpus
        );
    }
    if !finite_at_least(scenario.hpa_pod_cpu, f64::MIN_POSITIVE) {
        anyhow::bail!("--hpa-pod-cpu: must be above 0");
    }
    if !(scenario.hpa_target > 0.0 && scenario.hpa_target <= 1.0) {
        anyhow::bail!("--hpa-target: must be a utilization in (0, 1], e.g. 0.7");
    }
    if !(scenario.vpa_min_allowed > 0.0 && scenario.vpa_min_allowed <= scenario.max_allowed) {
        anyhow::bail!("--vpa-min-cpu: must be above 0 and at most --max-pod-cpu");
    }
    let runs = simulate(&trace, &scenario);
    if let Some(path) = plot {
        let svg = plot_svg(&trace, &runs).map_err(anyhow::Error::msg)?;
        std::fs::write(path, svg)
            .map_err(|e| anyhow::anyhow!("--plot {}: cannot write: {e}", path.display()))?;
    }
    Ok(report(&origin, &trace, &scenario, &runs))
}

/// `sluice plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Load a plugin library and print its descriptor.
    Inspect {
        /// The shared library.
        library: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// (Internal) Load a plugin library in this process and exit: `run`, `validate` and
    /// `inspect` do it in a child first, so a library that crashes the loader kills only the
    /// child.
    #[command(hide = true)]
    Probe {
        /// The shared library.
        library: PathBuf,
        /// The pin to check before any of its code runs.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Create a new plugin crate that builds and passes its tests out of the box.
    New {
        /// Crate name: lowercase letters, digits and dashes.
        name: String,
        /// Parent directory (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the sluice-plugin-api crate to depend on (default: the one this binary was built from).
        #[arg(long)]
        api_path: Option<PathBuf>,
    },
}

/// Runs a parsed command line. Errors are one line; `--verbose` adds detail below it.
pub fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { spec, admin, reset } => {
            let mut spec = PipelineSpec::load(&spec)?;
            if let Some(listen) = admin {
                spec.set_admin_listen(listen.clone())
                    .map_err(|e| anyhow::anyhow!("--admin {listen}: {e}"))?;
            }
            if reset {
                spec.request_reset()
                    .map_err(|e| anyhow::anyhow!("--reset: {e}"))?;
            }
            probe(
                &spec.resolve(&spec.plugin.path),
                spec.plugin.sha256.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let summary = run::run(&spec).map_err(|e| with_detail(e, cli.verbose))?;
            eprintln!("sluice: pipeline {}: {summary}", spec.name);
            Ok(())
        }
        Command::Dlq(DlqCommand::Replay {
            bootstrap_servers,
            file,
            topic,
            to_topic,
            classes,
            since_ms,
            until_ms,
            from_offset,
            to_offset,
            group,
            properties,
            through,
        }) => {
            let known = sluice_runtime::config::ErrorPolicy::default()
                .classes()
                .map(|(name, _)| name);
            if let Some(bad) = classes.iter().find(|c| !known.contains(&c.as_str())) {
                anyhow::bail!(
                    "--class {bad}: not a failure class: use one of {}",
                    known.join(", ")
                );
            }
            let mut client = match &file {
                Some(path) => {
                    let spec = PipelineSpec::load(path)?;
                    sluice_runtime::kafka_client::Endpoint::of(
                        &spec,
                        sluice_runtime::kafka_client::Connection::Source,
                    )
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: source: --file needs a `source: kafka` spec",
                            path.display()
                        )
                    })?
                    .config()?
                }
                None => rdkafka::ClientConfig::new(),
            };
            if let Some(bootstrap) = &bootstrap_servers {
                client.set("bootstrap.servers", bootstrap);
            }
            for (key, value) in &properties {
                client.set(key, value);
            }
            let options = sluice_runtime::dlq::ReplayOptions {
                client,
                dlq_topic: topic,
                to_topic,
                classes,
                since_ms,
                until_ms,
                from_offset,
                to_offset,
                group,
            };
            if let Some(path) = through {
                return replay_through(&path, options, cli.verbose);
            }
            let summary = sluice_runtime::dlq::replay(&options)
                .map_err(|e| anyhow::anyhow!("dlq replay: {e}"))?;
            eprintln!("sluice: {summary}");
            Ok(())
        }
        Command::State(StateCommand::Dump {
            spec,
            dir,
            partitions,
        }) => {
            let spec = PipelineSpec::load(&spec)?;
            let partitions: Vec<_> = partitions
                .into_iter()
                .map(|(t, p)| sluice_runtime::offsets::TopicPartition::new(t, p))
                .collect();
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            let mut write_error = None;
            sluice_runtime::state::dump(&spec, dir, &partitions, |entry| {
                if write_error.is_none() {
                    let line = serde_json::to_string(&entry).unwrap_or_default();
                    write_error = writeln!(stdout, "{line}").err();
                }
            })
            .map_err(|e| anyhow::anyhow!("state dump: {e}"))?;
            match write_error {
                Some(err) => Err(err.into()),
                None => Ok(()),
            }
        }
        Command::Acls(args) => crate::acls::run(&args),
        Command::Render {
            file,
            tier,
            placement,
        } => {
            out!("{}", render(&file, tier.as_deref(), placement.as_deref())?);
            Ok(())
        }
        Command::Capacity {
            command:
                CapacityCommand::Simulate {
                    trace,
                    plot,
                    partitions,
                    max_pod_cpu,
                    hpa_pod_cpu,
                    hpa_target,
                    vpa_min_cpu,
                    operator_applies,
                },
        } => {
            let scenario = sluice_vpa::simulate::Scenario {
                partitions,
                max_allowed: max_pod_cpu,
                hpa_pod_cpu,
                hpa_target,
                vpa_min_allowed: vpa_min_cpu,
                operator_applies,
                ..Default::default()
            };
            out!("{}", simulate(&trace, plot.as_deref(), scenario)?);
            Ok(())
        }
        Command::Capacity {
            command: CapacityCommand::Trace { shape, days, seed },
        } => {
            use sluice_vpa::simulate::{Shape, Trace};
            let kind = Shape::from_name(&shape).ok_or_else(|| {
                anyhow::anyhow!(
                    "--shape {shape}: unknown shape: use one of {}",
                    Shape::ALL.map(Shape::name).join(", ")
                )
            })?;
            let trace = Trace::shaped(kind, days, seed);
            let command = match kind {
                Shape::Diurnal => format!("sluice capacity trace --days {days} --seed {seed}"),
                _ => format!("sluice capacity trace --shape {shape} --days {days} --seed {seed}"),
            };
            out!(
                "{}",
                trace.to_csv(&format!(
                    "Synthetic load: `{command}` (see deploy/capacity/README.md)"
                ))
            );
            Ok(())
        }
        Command::Status { admin, json } => {
            let status = crate::top::fetch_status(&admin).map_err(|e| {
                anyhow::anyhow!("sluice status: {e}: is the pod running with an admin endpoint?")
            })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                out!("{}", status.render());
            }
            Ok(())
        }
        Command::Top { admin, interval } => {
            if !(0.1..=60.0).contains(&interval) {
                anyhow::bail!("--interval {interval}: must be between 0.1 and 60 seconds");
            }
            crate::top::run(&admin, std::time::Duration::from_secs_f64(interval))
                .context("sluice top: the terminal failed")?;
            Ok(())
        }
        Command::Validate { spec } => {
            let spec = PipelineSpec::load(&spec)?;
            use sluice_runtime::kafka_client::{Connection, Endpoint};
            let producer_needed = spec.producer.transactional_id.is_some()
                || spec.error_policy.dead_letter_topic.is_some()
                || spec.state.is_some()
                || spec
                    .outputs
                    .values()
                    .any(|o| matches!(o, OutputSpec::Kafka(_)));
            let mut connections = Vec::new();
            for which in [Connection::Source, Connection::Producer] {
                if which == Connection::Producer && !producer_needed {
                    continue;
                }
                if let Some(endpoint) = Endpoint::of(&spec, which) {
                    endpoint.validate()?;
                    connections.push(format!(
                        "{} {} ({})",
                        endpoint.section,
                        endpoint.bootstrap,
                        endpoint.describe()
                    ));
                }
            }
            probe(
                &spec.resolve(&spec.plugin.path),
                spec.plugin.sha256.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let plugin = check::prepare(&spec).map_err(|e| with_detail(e, cli.verbose))?;
            check::try_open(&plugin, &spec)?;
            let source = match &spec.source {
                SourceSpec::File(file) => {
                    let input = spec.resolve(&file.path);
                    if input != Path::new("-") && !input.is_file() {
                        anyhow::bail!(
                            "{}: source.file.path: {} does not exist: create it or fix the path",
                            spec.file.display(),
                            input.display()
                        );
                    }
                    format!("file {}", input.display())
                }
                SourceSpec::Kafka(k) => format!(
                    "kafka topics {} as group {} from {}",
                    k.topics.join(","),
                    k.group_id,
                    k.bootstrap_servers
                ),
            };
            let (major, minor) = plugin.plugin_ref().abi_version();
            outln!("ok: {}: pipeline {}", spec.file.display(), spec.name);
            let (label, path) = (plugin.label(), plugin.path().display());
            outln!("  plugin   {label} (ABI {major}.{minor}) from {path}");
            outln!("  source   {source}");
            for connection in &connections {
                outln!("  kafka    {connection}");
            }
            for (name, output) in &spec.outputs {
                match output {
                    OutputSpec::Stdout(_) => outln!("  output   {name} -> stdout"),
                    OutputSpec::File(f) => {
                        outln!(
                            "  output   {name} -> file {}",
                            spec.resolve(&f.path).display()
                        )
                    }
                    OutputSpec::Kafka(k) => {
                        outln!("  output   {name} -> kafka topic {}", k.topic)
                    }
                    OutputSpec::Postgres(t) => {
                        outln!(
                            "  output   {name} -> postgres table {} ({})",
                            t.table,
                            format!("{:?}", t.mode).to_lowercase()
                        )
                    }
                    OutputSpec::Mysql(t) => {
                        outln!(
                            "  output   {name} -> mysql table {} ({})",
                            t.table,
                            format!("{:?}", t.mode).to_lowercase()
                        )
                    }
                }
            }
            Ok(())
        }
        Command::Plugin(PluginCommand::Probe { library, sha256 }) => {
            // Whatever it finds, the parent reports it; only a crash matters here.
            let _ = Plugin::load(&library, sha256.as_deref());
            Ok(())
        }
        Command::Plugin(PluginCommand::Inspect { library, json }) => {
            if let Err(crash) = probe(&library, None) {
                if json {
                    let refusal = serde_json::json!({"error": crash, "path": library});
                    outln!("{}", serde_json::to_string_pretty(&refusal)?);
                }
                return Err(anyhow::anyhow!(crash));
            }
            let plugin = match Plugin::load(&library, None) {
                Ok(plugin) => plugin,
                // With --json the refusal is JSON too (on stdout, for scripts), and still exit 1.
                Err(e) if json => {
                    let refusal = serde_json::json!({"error": e.to_string(), "path": library});
                    outln!("{}", serde_json::to_string_pretty(&refusal)?);
                    return Err(with_detail(RunError::Load(e), cli.verbose));
                }
                Err(e) => return Err(with_detail(RunError::Load(e), cli.verbose)),
            };
            let info = plugin.describe();
            if json {
                outln!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_descriptor(&info)?;
            }
            Ok(())
        }
        Command::Plugin(PluginCommand::New {
            name,
            dir,
            api_path,
        }) => {
            let api = match api_path {
                Some(path) => path,
                None => scaffold::default_api_path().context(
                    "cannot find the sluice-plugin-api sources this binary was built from: pass --api-path",
                )?,
            };
            let created = scaffold::create(&name, &dir, &api)?;
            outln!("created {}", created.display());
            outln!(
                "next: cd {} && cargo test && cargo build && sluice run -f pipeline.yaml",
                created.display()
            );
            Ok(())
        }
    }
}

/// Whether a command failed only because the reader of its stdout went away (a closed pipe):
/// such a command ends quietly, as `cat` or `grep` do.
pub fn is_closed_stdout(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(
                cause.downcast_ref::<RunError>(),
                Some(RunError::ReaderGone(_))
            )
    })
}

fn with_detail(err: RunError, verbose: bool) -> anyhow::Error {
    let detail = match &err {
        RunError::Load(load @ LoadError::Layout { .. }) if verbose => {
            load.detail().map(str::to_owned)
        }
        _ => None,
    };
    match detail {
        Some(detail) => anyhow::anyhow!("{err}\n{detail}"),
        None => err.into(),
    }
}

fn print_descriptor(info: &serde_json::Value) -> std::io::Result<()> {
    let field = |key: &str| info[key].as_str().unwrap_or_default().to_owned();
    outln!("name         {}", field("name"));
    outln!("version      {}", field("version"));
    outln!("description  {}", field("description"));
    outln!(
        "abi          {} ({} plugin)",
        field("abi_version"),
        field("language")
    );
    outln!("path         {}", field("path"));
    outln!("sha256       {}", field("sha256"));
    match info["outputs"].as_array() {
        Some(names) => {
            let names: Vec<&str> = names.iter().filter_map(|n| n.as_str()).collect();
            outln!("outputs      {}", names.join(", "))
        }
        None => outln!("outputs      not declared"),
    }
    match info["stores"].as_array() {
        Some(names) if !names.is_empty() => {
            let names: Vec<&str> = names.iter().filter_map(|n| n.as_str()).collect();
            outln!(
                "stores       {} (declare them in `state.stores`)",
                names.join(", ")
            )
        }
        Some(_) => outln!("stores       none"),
        None => outln!("stores       not declared"),
    }
    match &info["config_schema"] {
        serde_json::Value::Null => outln!("config       no schema published"),
        schema => outln!(
            "config       {}",
            serde_json::to_string_pretty(schema)
                .unwrap_or_default()
                .replace('\n', "\n             ")
        ),
    }
    Ok(())
}
