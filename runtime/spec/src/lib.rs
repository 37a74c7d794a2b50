//! The pipeline spec: a YAML file naming the plugin, its source, its outputs and its error policy.
//!
//! Loading is strict: unknown fields are rejected, every error names the file with line and
//! column, and `${VAR}` / `${VAR:-default}` are replaced from the environment before parsing
//! (`$$` is a literal `$`), so secrets never have to be written into the file. Relative paths
//! are resolved against the spec's own directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod acls;
pub mod security;
pub use security::{KafkaSecurity, SaslMechanism, SecurityProtocol};

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the pipeline spec: {source}")]
    Read {
        /// The spec path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `${VAR}` names a variable that is not set (and has no default).
    #[error(
        "{path}:{line}:{column}: environment variable `{var}` is not set: export it, or write `${{{var}:-default}}`"
    )]
    MissingVar {
        /// The spec path.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The variable.
        var: String,
    },
    /// `${...}` is malformed.
    #[error("{path}:{line}:{column}: {message}")]
    BadInterpolation {
        /// The spec path.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The YAML does not parse into a spec.
    #[error("{path}:{location}{message}")]
    Parse {
        /// The spec path.
        path: PathBuf,
        /// `line:column: `, or empty when unknown.
        location: String,
        /// The parser's message.
        message: String,
    },
    /// The spec parses but is inconsistent.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The spec path.
        path: PathBuf,
        /// The offending field, e.g. `source.file.batch-size`.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// A parsed and checked pipeline spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipelineSpec {
    /// Pipeline name: shown in logs and passed to the plugin.
    pub name: String,
    /// The plugin library and its config.
    pub plugin: PluginSpec,
    /// Where events come from.
    pub source: SourceSpec,
    /// Named outputs the plugin emits to. Names are the ones the plugin uses.
    pub outputs: BTreeMap<String, OutputSpec>,
    /// Worker threads, each with its own plugin instance (Kafka source). Default: the container's
    /// CPU quota rounded to whole CPUs (see `cpu.rs`). A file source always uses one.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Which events must be processed in order (Kafka source).
    #[serde(default)]
    pub ordering: Ordering,
    /// Producer settings for Kafka outputs.
    #[serde(default)]
    pub producer: ProducerSpec,
    /// What to do with events that fail.
    #[serde(default)]
    pub error_policy: ErrorPolicy,
    /// The admin HTTP endpoint: metrics, health, status (Kafka source).
    #[serde(default)]
    pub admin: AdminSpec,
    /// Keyed state stores the plugin reads and writes (ABI 1.2), per input partition.
    #[serde(default)]
    pub state: Option<StateSpec>,
    /// The schema registry that `avro`, `protobuf` and `json-schema` sources and outputs use.
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistrySpec>,
    /// Directory of the spec file; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The spec file.
    #[serde(skip)]
    pub file: PathBuf,
}

/// `state`: the plugin's named key-value stores. With a Kafka source each store of each input
/// partition lives on local disk under `dir` and is backed by a compacted changelog topic
/// ([`StateSpec::changelog_topic`]), restored on assignment; with a file source the stores start
/// empty every run (the file is read from its first line) and have no changelog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StateSpec {
    /// Store names the plugin uses (`[A-Za-z0-9._-]+`).
    pub stores: Vec<String>,
    /// Where the local copies live (relative to the spec's directory). Default:
    /// `$SLUICE_STATE_DIR`, else `.sluice-state` beside the spec.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Replication factor of changelog topics Sluice creates (the broker's default when unset;
    /// use 3 in production). Existing changelog topics are used as they are.
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// Topic settings of changelog topics Sluice creates, over `cleanup.policy: compact`
    /// (`segment.bytes`, `min.cleanable.dirty.ratio`, `min.insync.replicas`...): the log cleaner
    /// compacts only closed segments, so a restore reads at most a segment's worth of
    /// overwritten records per partition beyond the live keys. Existing topics are not changed.
    #[serde(default)]
    pub changelog_config: BTreeMap<String, String>,
}

impl StateSpec {
    /// The changelog topic of `store` for input topic `topic` of consumer group `group`: one
    /// partition per input partition, compacted.
    pub fn changelog_topic(group: &str, topic: &str, store: &str) -> String {
        format!("{group}-{topic}-{store}-changelog")
    }
}

/// `schema-registry`: a Confluent-compatible schema registry (Confluent Schema Registry, or
/// Apicurio Registry's `/apis/ccompat/v7`). Sources decode and outputs encode the Confluent wire
/// format through it: a magic byte 0, the 4-byte schema id, for Protobuf the message indexes,
/// then the data. Schemas are cached by id for the life of the process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SchemaRegistrySpec {
    /// Base URL, e.g. `http://registry:8080/apis/ccompat/v7` (Apicurio) or
    /// `https://registry:8081` (Confluent).
    pub url: String,
    /// HTTP basic auth user (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// HTTP basic auth password: write `${REGISTRY_PASSWORD}`, never the password itself.
    #[serde(default)]
    pub password: Option<String>,
    /// A bearer token (`Authorization: Bearer ...`): write `${REGISTRY_TOKEN}`.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// PEM file of the CAs that sign the registry's certificate (relative to the spec); default:
    /// the public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one request may take before the registry counts as unreachable.
    #[serde(default = "default_registry_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_registry_timeout_ms() -> u64 {
    5_000
}

/// How a Kafka event's value reaches the plugin (`source.kafka.format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValueFormat {
    /// The bytes as they are.
    #[default]
    Raw,
    /// Confluent wire format, Avro: decoded with the writer's schema into JSON.
    Avro,
    /// Confluent wire format, Protobuf: decoded into Protobuf's JSON mapping.
    Protobuf,
    /// Confluent wire format, JSON Schema: the JSON, validated against its schema.
    JsonSchema,
}

impl ValueFormat {
    /// As written in the spec.
    pub fn name(self) -> &'static str {
        match self {
            ValueFormat::Raw => "raw",
            ValueFormat::Avro => "avro",
            ValueFormat::Protobuf => "protobuf",
            ValueFormat::JsonSchema => "json-schema",
        }
    }
}

/// Which registry subject an output's schema is registered under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectNameStrategy {
    /// `<topic>-value`.
    #[default]
    TopicName,
    /// The record's full name (Avro `namespace.name`, the Protobuf message's full name, the JSON
    /// Schema's `title`).
    RecordName,
    /// `<topic>-<record name>`.
    TopicRecordName,
}

/// The admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/status`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminSpec {
    /// `host:port` to serve on, e.g. `0.0.0.0:9464`. Unset: no endpoint (`sluice run --admin`
    /// sets it too).
    #[serde(default)]
    pub listen: Option<String>,
    /// Hot-path instruments: latency histograms and per-partition event counters. Costs under
    /// 3% throughput (BENCHMARKS.md); `false` leaves the sampled gauges and the totals.
    #[serde(default = "yes")]
    pub metrics: bool,
    /// How often librdkafka reports the watermarks behind `sluice_consumer_lag`.
    #[serde(default = "default_lag_interval_ms")]
    pub lag_interval_ms: u64,
    /// `Starved`: a member of a group with lag holding no partition for this long.
    #[serde(default = "default_starved_after_ms")]
    pub starved_after_ms: u64,
    /// `Stalled`: an assigned partition with lag and no progress for this long.
    #[serde(default = "default_stalled_after_ms")]
    pub stalled_after_ms: u64,
    /// `CommitsFailing`: offset commits failing for this long.
    #[serde(default = "default_commits_failing_after_ms")]
    pub commits_failing_after_ms: u64,
    /// Leave-and-rejoin attempts for `Starved` and `Stalled` before `/healthz` fails.
    #[serde(default = "default_rejoin_attempts")]
    pub rejoin_attempts: u32,
    /// A plugin upgrade (`POST /plugin`) is judged after the new version's first this many
    /// events: it goes back to the version before when more than `upgrade-max-error-rate` of
    /// them failed.
    #[serde(default = "default_upgrade_watch_events")]
    pub upgrade_watch_events: u64,
    /// The share of a new version's first `upgrade-watch-events` events that may fail (an
    /// event error or a panic) before it is rolled back, from 0 to 1.
    #[serde(default = "default_upgrade_max_error_rate")]
    pub upgrade_max_error_rate: f64,
}

fn default_upgrade_watch_events() -> u64 {
    1000
}

fn default_upgrade_max_error_rate() -> f64 {
    0.1
}

fn default_starved_after_ms() -> u64 {
    30_000
}

fn default_stalled_after_ms() -> u64 {
    60_000
}

fn default_commits_failing_after_ms() -> u64 {
    60_000
}

fn default_rejoin_attempts() -> u32 {
    2
}

impl Default for AdminSpec {
    fn default() -> Self {
        AdminSpec {
            listen: None,
            metrics: true,
            lag_interval_ms: default_lag_interval_ms(),
            starved_after_ms: default_starved_after_ms(),
            stalled_after_ms: default_stalled_after_ms(),
            commits_failing_after_ms: default_commits_failing_after_ms(),
            rejoin_attempts: default_rejoin_attempts(),
            upgrade_watch_events: default_upgrade_watch_events(),
            upgrade_max_error_rate: default_upgrade_max_error_rate(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_lag_interval_ms() -> u64 {
    1000
}

/// The plugin library.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginSpec {
    /// Path of the shared library (`.so`), relative to the spec.
    pub path: PathBuf,
    /// Hex sha256 of the library file; when set, a different file is refused.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The plugin's config, passed to it as a JSON object and checked against its schema.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Where events come from: exactly one kind, written as `source: { file: {...} }`.
// One per spec, read once at start: boxing the Kafka variant would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawSourceSpec")]
pub enum SourceSpec {
    /// Lines of a local file or stdin: for local runs and tests, no broker needed.
    File(FileSourceSpec),
    /// A Kafka consumer group.
    Kafka(KafkaSourceSpec),
}

/// The YAML shape of [`SourceSpec`]: one optional key per kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSourceSpec {
    file: Option<FileSourceSpec>,
    kafka: Option<KafkaSourceSpec>,
}

impl TryFrom<RawSourceSpec> for SourceSpec {
    type Error = String;
    fn try_from(raw: RawSourceSpec) -> Result<Self, String> {
        match raw {
            RawSourceSpec {
                file: Some(file),
                kafka: None,
            } => Ok(SourceSpec::File(file)),
            RawSourceSpec {
                file: None,
                kafka: Some(kafka),
            } => Ok(SourceSpec::Kafka(kafka)),
            _ => Err("set exactly one source kind: `file` or `kafka`".into()),
        }
    }
}

/// A Kafka consumer group: every assigned partition becomes its own bounded event channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaSourceSpec {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group_id: String,
    /// librdkafka consumer properties passed through (security, timeouts, fetch sizes...).
    /// Offset management properties are Sluice's own and are refused here.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values come from environment variables (credentials):
    /// `sasl.password: KAFKA_PASSWORD`.
    #[serde(default)]
    pub properties_from_env: BTreeMap<String, String>,
    /// How every Kafka client of the pipeline connects and authenticates (TLS, SASL, mTLS);
    /// default: plaintext.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// Events of one partition read but not yet processed before the partition is paused (it
    /// resumes at half). Pausing discards what librdkafka prefetched for the partition, so a
    /// capacity below one fetch's worth of events (`max.partition.fetch.bytes`, 1 MiB by
    /// default: ~10,000 events of 100 bytes) makes it refetch over and over: on the test broker
    /// 1024 ran 5x slower than 8192, and 8192 0.8x the speed of 32768 (BENCHMARKS.md).
    #[serde(default = "default_partition_capacity")]
    pub partition_capacity: usize,
    /// Most events per plugin call.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How often offsets are committed (after a plugin flush).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// How long a revoke or shutdown may spend draining in-flight events. The default fits a
    /// spot interruption notice (GKE gives ~30 s).
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Where a partition starts when the group has no committed offset for it, and every
    /// partition (once per process) with `sluice run --reset`: `earliest` (the default),
    /// `latest`, an RFC 3339 time (the first event at or after it, by the broker's time index)
    /// or explicit offsets `{"topic/partition": offset}` (partitions not named: earliest).
    #[serde(default)]
    pub start_from: StartFrom,
    /// How event values reach the plugin: `raw` (default), or `avro`, `protobuf`,
    /// `json-schema` in the Confluent wire format, decoded into JSON through `schema-registry`.
    #[serde(default)]
    pub format: ValueFormat,
    /// `sluice run --reset`: positions from `start-from` instead of the committed offsets.
    #[serde(skip)]
    pub reset: bool,
}

fn default_partition_capacity() -> usize {
    32_768
}

fn default_commit_interval_ms() -> u64 {
    1000
}

fn default_drain_timeout_ms() -> u64 {
    25_000
}

/// Where partitions start without committed offsets (`source.kafka.start-from`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest event still in the topic.
    #[default]
    Earliest,
    /// The end: only events produced from now on.
    Latest,
    /// The first event whose timestamp is at or after this time (ms since the epoch), as the
    /// broker's time index says; the end if there is none.
    Time {
        /// Milliseconds since the epoch.
        ms: i64,
        /// As written in the spec.
        text: String,
    },
    /// These offsets, per `(topic, partition)`; other partitions start at the earliest.
    Offsets(BTreeMap<(String, i32), i64>),
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Offsets(BTreeMap<String, i64>),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            D::Error::custom(
                "write earliest, latest, an RFC 3339 time (2026-11-29T08:00:00Z) or {\"topic/partition\": offset}",
            )
        })?;
        match raw {
            Raw::Text(text) => match text.as_str() {
                "earliest" => Ok(StartFrom::Earliest),
                "latest" => Ok(StartFrom::Latest),
                _ => match text.parse::<jiff::Timestamp>() {
                    Ok(t) => Ok(StartFrom::Time {
                        ms: t.as_millisecond(),
                        text,
                    }),
                    Err(_) => Err(D::Error::custom(format!(
                        "`{text}` is not earliest, latest or an RFC 3339 time with its offset (2026-11-29T08:00:00Z)"
                    ))),
                },
            },
            Raw::Offsets(map) => {
                let mut offsets = BTreeMap::new();
                for (key, offset) in map {
                    let (topic, partition) = key
                        .rsplit_once('/')
                        .and_then(|(t, p)| Some((t, p.parse::<i32>().ok()?)))
                        .filter(|(t, p)| !t.is_empty() && *p >= 0)
                        .ok_or_else(|| {
                            D::Error::custom(format!(
                                "`{key}` is not `topic/partition` (e.g. bookings/0)"
                            ))
                        })?;
                    if offset < 0 {
                        return Err(D::Error::custom(format!(
                            "{key}: offset {offset} is negative: write an offset, or earliest / latest for the whole source"
                        )));
                    }
                    offsets.insert((topic.to_owned(), partition), offset);
                }
                Ok(StartFrom::Offsets(offsets))
            }
        }
    }
}

/// librdkafka producer settings for the pipeline's Kafka outputs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProducerSpec {
    /// Brokers (default: the Kafka source's).
    #[serde(default)]
    pub bootstrap_servers: Option<String>,
    /// librdkafka producer properties passed through. Idempotence is always on.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Properties whose values come from environment variables (credentials).
    #[serde(default)]
    pub properties_from_env: BTreeMap<String, String>,
    /// How the producer connects (outputs on another cluster); default: the Kafka source's
    /// `security`.
    #[serde(default)]
    pub security: Option<KafkaSecurity>,
    /// Exactly-once Kafka -> Kafka: the producer's transactional id, unique per running
    /// process (e.g. `${POD_NAME}`). Outputs, dead letters and the source offsets of each
    /// commit interval then commit in one transaction; downstream consumers read with
    /// `isolation.level=read_committed`.
    #[serde(default)]
    pub transactional_id: Option<String>,
}

/// A local file (or stdin) read line by line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSourceSpec {
    /// The file, relative to the spec; `-` reads stdin.
    pub path: PathBuf,
    /// How each line becomes an event.
    #[serde(default)]
    pub format: LineFormat,
    /// Topic name the plugin sees (default: the file's stem, or `stdin`).
    #[serde(default)]
    pub topic: Option<String>,
    /// `json-lines` only: top-level field whose value becomes the event key.
    #[serde(default)]
    pub key_field: Option<String>,
    /// `json-lines` only: top-level field holding the event time in ms since the epoch.
    #[serde(default)]
    pub timestamp_field: Option<String>,
    /// Events per plugin call.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

fn default_batch_size() -> usize {
    256
}

/// How a line becomes an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LineFormat {
    /// Each line is a JSON value (checked before it reaches the plugin).
    #[default]
    JsonLines,
    /// Each line is passed as-is.
    Lines,
}

/// One named output: exactly one kind, written as `name: { stdout: {...} }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawOutputSpec")]
pub enum OutputSpec {
    /// Standard output.
    Stdout(StdoutOutputSpec),
    /// A local file (created or truncated).
    File(FileOutputSpec),
    /// A Kafka topic, written by the pipeline's idempotent producer.
    Kafka(KafkaOutputSpec),
    /// A PostgreSQL table.
    Postgres(TableOutputSpec),
    /// A MySQL or MariaDB table.
    Mysql(TableOutputSpec),
}

impl OutputSpec {
    /// Whether records are acknowledged later by a sink (so the source needs offsets).
    pub fn is_remote(&self) -> bool {
        matches!(
            self,
            OutputSpec::Kafka(_) | OutputSpec::Postgres(_) | OutputSpec::Mysql(_)
        )
    }
}

/// The YAML shape of [`OutputSpec`]: one optional key per kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawOutputSpec {
    stdout: Option<StdoutOutputSpec>,
    file: Option<FileOutputSpec>,
    kafka: Option<KafkaOutputSpec>,
    postgres: Option<TableOutputSpec>,
    mysql: Option<TableOutputSpec>,
}

impl TryFrom<RawOutputSpec> for OutputSpec {
    type Error = String;
    fn try_from(raw: RawOutputSpec) -> Result<Self, String> {
        let mut kinds = Vec::new();
        if let Some(o) = raw.stdout {
            kinds.push(OutputSpec::Stdout(o));
        }
        if let Some(o) = raw.file {
            kinds.push(OutputSpec::File(o));
        }
        if let Some(o) = raw.kafka {
            kinds.push(OutputSpec::Kafka(o));
        }
        if let Some(o) = raw.postgres {
            kinds.push(OutputSpec::Postgres(o));
        }
        if let Some(o) = raw.mysql {
            kinds.push(OutputSpec::Mysql(o));
        }
        match (kinds.pop(), kinds.is_empty()) {
            (Some(kind), true) => Ok(kind),
            _ => Err(
                "set exactly one output kind: `stdout`, `file`, `kafka`, `postgres` or `mysql`"
                    .into(),
            ),
        }
    }
}

/// A database table: each record's value is a JSON object whose fields fill the columns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TableOutputSpec {
    /// Connection URL (`postgres://user@host:port/db`, `mysql://user@host:port/db`). Put
    /// credentials in the environment and write `${DATABASE_URL}`, never a password in the spec.
    pub url: String,
    /// The table, optionally schema-qualified (`schema.table`).
    pub table: String,
    /// Columns and their types: JSON fields of the same name fill them; a missing field is NULL.
    pub columns: BTreeMap<String, ColumnType>,
    /// Key columns: the conflict target of `upsert`, and what a tombstone (null value) deletes
    /// by. A tombstone's key is the record key: a JSON object with the key columns, or, for a
    /// single key column, the key itself.
    #[serde(default)]
    pub key: Vec<String>,
    /// How records are written.
    #[serde(default)]
    pub mode: TableMode,
    /// Most rows per statement.
    #[serde(default = "default_table_batch_size")]
    pub batch_size: usize,
    /// How long a batch waits for more rows before it is written.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Connections in the pool.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// PostgreSQL only: write each batch and the source offsets it completes in one
    /// transaction, and resume from the offsets stored there: every event's rows exactly once.
    #[serde(default)]
    pub exactly_once: bool,
    /// The table holding those offsets (created if missing).
    #[serde(default = "default_offsets_table")]
    pub offsets_table: String,
}

fn default_offsets_table() -> String {
    "sluice_offsets".into()
}

fn default_table_batch_size() -> usize {
    500
}

fn default_linger_ms() -> u64 {
    20
}

fn default_max_connections() -> u32 {
    2
}

/// A column's SQL type, which decides how a JSON field is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColumnType {
    /// `text` / `varchar`: strings as they are, other JSON values as JSON text.
    Text,
    /// `bigint`: integers, or strings holding one.
    Bigint,
    /// `integer` / `int`.
    Integer,
    /// `double precision` / `double`.
    Double,
    /// `boolean`.
    Boolean,
    /// `jsonb` (PostgreSQL) / `json` (MySQL): any JSON value.
    Json,
}

/// How table records are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableMode {
    /// Plain inserts (a duplicate key is a rejected record).
    #[default]
    Insert,
    /// Insert, or update the non-key columns of the row with the same key.
    Upsert,
}

/// Whether `name` is a plain SQL identifier, optionally schema-qualified: safe to quote.
fn is_identifier(name: &str, allow_schema: bool) -> bool {
    let part = |p: &str| {
        let mut chars = p.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && p.len() <= 63
    };
    match name.split_once('.') {
        Some((schema, table)) if allow_schema => part(schema) && part(table),
        Some(_) => false,
        None => part(name),
    }
}

/// A Kafka topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaOutputSpec {
    /// The topic records go to.
    pub topic: String,
    /// `raw` (default): record values as the plugin wrote them. `avro`, `protobuf`,
    /// `json-schema`: each value, a JSON document, is encoded with the subject's schema in the
    /// Confluent wire format; a value that does not fit it meets `error-policy.sink-rejection`.
    #[serde(default)]
    pub format: ValueFormat,
    /// The registry subject (default: from `subject-name-strategy`).
    #[serde(default)]
    pub subject: Option<String>,
    /// How the subject is named when `subject` is not set.
    #[serde(default)]
    pub subject_name_strategy: SubjectNameStrategy,
    /// The schema file (`.avsc`, `.proto`, `.json`; relative to the spec), registered under the
    /// subject at start (or only looked up, with `auto-register: false`). Unset: the subject's
    /// latest version.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// Protobuf: the message type records are (default: the schema's first message).
    #[serde(default)]
    pub message: Option<String>,
    /// Register `schema` if the subject lacks it (else it must be registered already).
    #[serde(default = "yes")]
    pub auto_register: bool,
}

/// Standard output.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StdoutOutputSpec {
    /// How records are written.
    #[serde(default)]
    pub format: RecordFormat,
}

/// A local file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileOutputSpec {
    /// The file, relative to the spec.
    pub path: PathBuf,
    /// How records are written.
    #[serde(default)]
    pub format: RecordFormat,
}

/// How a record is written to a local output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordFormat {
    /// The value bytes and a newline (tombstones: an empty line).
    #[default]
    Value,
    /// One JSON object per record: output, key, value, headers, partition.
    Json,
}

/// Which events of a partition keep their order through the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// A partition is pinned to one worker: every event of it in offset order. At most one
    /// worker per partition runs.
    #[default]
    Partition,
    /// Events of one key go to one worker, in offset order; different keys of a partition run
    /// on different workers at once. Events with a null key share one worker.
    Key,
    /// No order: a partition's events are spread over every worker.
    None,
}

impl fmt::Display for Ordering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ordering::Partition => "partition",
            Ordering::Key => "key",
            Ordering::None => "none",
        })
    }
}

/// What happens to an event that fails, per failure class.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ErrorPolicy {
    /// Input that cannot be decoded: a line of a file source that is not JSON, or an event the
    /// plugin reports as invalid (`EventError::Invalid`).
    #[serde(default)]
    pub invalid_input: ClassPolicy,
    /// An event the plugin reports as failed (`EventError::Failed`).
    #[serde(default)]
    pub event_error: ClassPolicy,
    /// A plugin call that panics: the batch is rerun one event at a time, and the events whose
    /// call panics meet this policy.
    #[serde(default)]
    pub plugin_panic: ClassPolicy,
    /// A record a database output rejects for good (constraint violation, wrong type).
    #[serde(default)]
    pub sink_rejection: ClassPolicy,
    /// The Kafka topic dead letters go to (this or `dead-letter-file` is needed when any class
    /// says `dead-letter`).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// A file dead letters go to instead, one JSON line each (`output`, `key`, `value`,
    /// `headers` with the `sluice.*` provenance): for runs without Kafka. Relative to the spec.
    #[serde(default)]
    pub dead_letter_file: Option<PathBuf>,
}

impl ErrorPolicy {
    /// Whether dead letters have somewhere to go.
    pub fn has_dead_letters(&self) -> bool {
        self.dead_letter_topic.is_some() || self.dead_letter_file.is_some()
    }
}

impl ErrorPolicy {
    /// Every class with its spec field name.
    pub fn classes(&self) -> [(&'static str, ClassPolicy); 4] {
        [
            ("invalid-input", self.invalid_input),
            ("event-error", self.event_error),
            ("plugin-panic", self.plugin_panic),
            ("sink-rejection", self.sink_rejection),
        ]
    }
}

/// One failure class's policy: retry the event `retries` times (`backoff-ms` apart, doubling),
/// then `then`. Written as `fail`, `skip`, `dead-letter`, or
/// `{retry: 3, backoff-ms: 100, then: dead-letter}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawClassPolicy")]
pub struct ClassPolicy {
    /// Extra attempts before `then`.
    pub retries: u32,
    /// Wait before the first retry; doubles for each next one.
    pub backoff_ms: u64,
    /// What happens once the retries are used up.
    pub then: Action,
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a policy: `fail`, `skip`, `dead-letter`, or `{retry: N, backoff-ms: MS, then: fail|skip|dead-letter}`"
)]
enum RawClassPolicy {
    Plain(Action),
    Retry(RetrySpec),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RetrySpec {
    retry: u32,
    #[serde(default = "default_retry_backoff_ms")]
    backoff_ms: u64,
    #[serde(default)]
    then: Action,
}

fn default_retry_backoff_ms() -> u64 {
    100
}

impl TryFrom<RawClassPolicy> for ClassPolicy {
    type Error = String;
    fn try_from(raw: RawClassPolicy) -> Result<Self, String> {
        Ok(match raw {
            RawClassPolicy::Plain(then) => ClassPolicy {
                retries: 0,
                backoff_ms: 0,
                then,
            },
            RawClassPolicy::Retry(r) => {
                if r.retry == 0 || r.retry > 100 {
                    return Err("`retry` must be between 1 and 100".into());
                }
                ClassPolicy {
                    retries: r.retry,
                    backoff_ms: r.backoff_ms,
                    then: r.then,
                }
            }
        })
    }
}

/// What finally happens to a failed event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Stop the pipeline with an error; nothing past the event counts as done.
    #[default]
    Fail,
    /// Log and count the event, then go on.
    Skip,
    /// Write the event to the dead-letter topic with why it failed, then go on.
    DeadLetter,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Fail => "fail",
            Action::Skip => "skip",
            Action::DeadLetter => "dead-letter",
        })
    }
}

impl PipelineSpec {
    /// Reads, interpolates, parses and checks a spec file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path, |name| std::env::var(name).ok())
    }

    /// Parses spec text as if read from `path`, looking variables up with `env`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = interpolate(text, path, env)?;
        let mut spec: PipelineSpec = serde_yaml_ng::from_str(&text).map_err(|err| {
            let message = err.to_string();
            let message = match message.rfind(" at line ") {
                Some(at) if err.location().is_some() => message[..at].to_owned(),
                _ => message,
            };
            ConfigError::Parse {
                path: path.into(),
                location: err
                    .location()
                    .map(|l| format!("{}:{}: ", l.line(), l.column()))
                    .unwrap_or_default(),
                message,
            }
        })?;
        spec.file = path.into();
        spec.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        spec.check()?;
        Ok(spec)
    }

    fn invalid(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(self.invalid("name", "must not be empty"));
        }
        if !self.plugin.config.is_object() {
            return Err(self.invalid("plugin.config", "must be a mapping (key: value pairs)"));
        }
        if let Some(sha) = &self.plugin.sha256 {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(self.invalid(
                    "plugin.sha256",
                    "must be 64 hex digits (as printed by `sha256sum`)",
                ));
            }
        }
        if self.outputs.is_empty() {
            return Err(self.invalid("outputs", "define at least one output"));
        }
        if let Some(workers) = self.workers {
            if workers == 0 || workers > 1024 {
                return Err(self.invalid(
                    "workers",
                    "must be between 1 and 1024 (omit it to size from the CPU quota)",
                ));
            }
            if matches!(self.source, SourceSpec::File(_)) && workers != 1 {
                return Err(self.invalid(
                    "workers",
                    "a file source is one partition and runs one worker: omit `workers`",
                ));
            }
        }
        if matches!(self.source, SourceSpec::File(_)) && self.ordering != Ordering::Partition {
            return Err(self.invalid(
                "ordering",
                "a file source runs one worker in file order: omit `ordering`",
            ));
        }
        for (name, output) in &self.outputs {
            let (table, schemes) = match output {
                OutputSpec::Postgres(t) => (t, ["postgres://", "postgresql://"]),
                OutputSpec::Mysql(t) => (t, ["mysql://", "mariadb://"]),
                _ => continue,
            };
            self.check_table(name, table, &schemes)?;
        }
        self.check_error_policy()?;
        if let Some(id) = &self.producer.transactional_id {
            if id.is_empty() {
                return Err(self.invalid("producer.transactional-id", "must not be empty"));
            }
            if let Some((name, _)) = self
                .outputs
                .iter()
                .find(|(_, o)| matches!(o, OutputSpec::Postgres(_) | OutputSpec::Mysql(_)))
            {
                return Err(self.invalid(
                    "producer.transactional-id",
                    format!("a Kafka transaction cannot include the database output `{name}`: use the table's `exactly-once` instead"),
                ));
            }
            if !matches!(self.source, SourceSpec::Kafka(_)) {
                return Err(self.invalid("producer.transactional-id", "needs a `source: kafka`"));
            }
        }
        self.check_admin()?;
        self.check_state()?;
        self.check_schemas()?;
        if let Some(security) = &self.producer.security {
            self.check_security(
                "producer",
                security,
                &self.producer.properties,
                &self.producer.properties_from_env,
            )?;
        }
        match &self.source {
            SourceSpec::Kafka(kafka) => self.check_kafka(kafka)?,
            SourceSpec::File(file) => {
                // A file run goes through the same outputs as a Kafka run; a producer needs to
                // know where Kafka is, and a stored offset needs a consumer group.
                let producer = self.error_policy.dead_letter_topic.is_some()
                    || self
                        .outputs
                        .values()
                        .any(|o| matches!(o, OutputSpec::Kafka(_)));
                if producer && self.producer.bootstrap_servers.is_none() {
                    return Err(self.invalid(
                        "producer.bootstrap-servers",
                        "a file source with Kafka outputs or dead letters needs `producer: {bootstrap-servers: HOST:PORT}`",
                    ));
                }
                for (name, output) in &self.outputs {
                    if let OutputSpec::Postgres(t) | OutputSpec::Mysql(t) = output {
                        if t.exactly_once {
                            return Err(self.invalid(
                                &format!("outputs.{name}.exactly-once"),
                                "needs a `source: kafka` (the offsets stored with the rows are a consumer group's)",
                            ));
                        }
                    }
                }
                if file.batch_size == 0 || file.batch_size > 65_536 {
                    return Err(
                        self.invalid("source.file.batch-size", "must be between 1 and 65536")
                    );
                }
                if file.format == LineFormat::Lines
                    && (file.key_field.is_some() || file.timestamp_field.is_some())
                {
                    return Err(self.invalid(
                        "source.file",
                        "key-field and timestamp-field need `format: json-lines`",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `sluice run --reset`: every partition starts from `source.kafka.start-from`, once per
    /// process, whatever the group committed. Refused for a file source (no offsets to reset) and
    /// with exactly-once outputs (they keep their own offsets in the database).
    pub fn request_reset(&mut self) -> Result<(), String> {
        if self.outputs.values().any(|o| match o {
            OutputSpec::Postgres(t) | OutputSpec::Mysql(t) => t.exactly_once,
            _ => false,
        }) {
            return Err("an exactly-once output keeps its offsets with its rows, in the database: rewinding the group would not rewind them (delete the pipeline's offset rows to start over)".into());
        }
        match &mut self.source {
            SourceSpec::Kafka(k) => {
                k.reset = true;
                Ok(())
            }
            SourceSpec::File(_) => Err(
                "a file source has no committed offsets: it always starts at its first line".into(),
            ),
        }
    }

    /// Serves the admin endpoint on `listen` (`sluice run --admin`), checked like the spec's own
    /// `admin.listen`.
    pub fn set_admin_listen(&mut self, listen: String) -> Result<(), ConfigError> {
        self.admin.listen = Some(listen);
        self.check_admin()
    }

    /// Formats that need the registry have one; output schema settings fit their format.
    fn check_schemas(&self) -> Result<(), ConfigError> {
        if let SourceSpec::Kafka(k) = &self.source {
            if k.format != ValueFormat::Raw && self.schema_registry.is_none() {
                return Err(self.invalid(
                    "source.kafka.format",
                    format!(
                        "`{}` needs `schema-registry: {{url: ...}}`",
                        k.format.name()
                    ),
                ));
            }
        }
        for (name, output) in &self.outputs {
            let OutputSpec::Kafka(k) = output else {
                continue;
            };
            let field = |f: &str| format!("outputs.{name}.kafka.{f}");
            if k.format == ValueFormat::Raw {
                let set = [
                    ("subject", k.subject.is_some()),
                    ("schema", k.schema.is_some()),
                    ("message", k.message.is_some()),
                ];
                if let Some((f, _)) = set.iter().find(|(_, set)| *set) {
                    return Err(self.invalid(
                        &field(f),
                        "needs `format: avro`, `protobuf` or `json-schema`",
                    ));
                }
                continue;
            }
            if self.schema_registry.is_none() {
                return Err(self.invalid(
                    &field("format"),
                    format!(
                        "`{}` needs `schema-registry: {{url: ...}}`",
                        k.format.name()
                    ),
                ));
            }
            if k.message.is_some() && k.format != ValueFormat::Protobuf {
                return Err(self.invalid(&field("message"), "is for `format: protobuf` only"));
            }
            if k.subject.is_none()
                && k.schema.is_none()
                && k.subject_name_strategy != SubjectNameStrategy::TopicName
            {
                return Err(self.invalid(
                    &field("subject-name-strategy"),
                    "the record name comes from the schema: set `schema: FILE`, or `subject`",
                ));
            }
            if let Some(schema) = &k.schema {
                let path = self.base_dir.join(schema);
                if !path.is_file() {
                    return Err(self.invalid(
                        &field("schema"),
                        format!("{} is not a file", path.display()),
                    ));
                }
            }
        }
        if let Some(registry) = &self.schema_registry {
            if !registry.url.starts_with("http://") && !registry.url.starts_with("https://") {
                return Err(
                    self.invalid("schema-registry.url", "must start with http:// or https://")
                );
            }
            if registry.username.is_some() != registry.password.is_some() {
                return Err(self.invalid(
                    "schema-registry",
                    "set both `username` and `password` (basic auth), or neither",
                ));
            }
            if registry.username.is_some() && registry.bearer_token.is_some() {
                return Err(self.invalid(
                    "schema-registry.bearer-token",
                    "choose basic auth (`username`, `password`) or a bearer token, not both",
                ));
            }
            if let Some(ca) = &registry.ca_file {
                let path = self.base_dir.join(ca);
                if !path.is_file() {
                    return Err(self.invalid(
                        "schema-registry.ca-file",
                        format!("{} is not a file", path.display()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_state(&self) -> Result<(), ConfigError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        if state.stores.is_empty() {
            return Err(self.invalid(
                "state.stores",
                "name at least one store (or remove `state`)",
            ));
        }
        for (i, name) in state.stores.iter().enumerate() {
            let legal = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
            if name.is_empty() || !name.bytes().all(legal) {
                return Err(self.invalid(
                    "state.stores",
                    format!("`{name}`: a store name is letters, digits, `.`, `_` and `-` (it names a Kafka topic)"),
                ));
            }
            if state.stores[..i].contains(name) {
                return Err(self.invalid("state.stores", format!("`{name}` is named twice")));
            }
        }
        if matches!(state.replication_factor, Some(n) if !(1..=32).contains(&n)) {
            return Err(self.invalid("state.replication-factor", "must be between 1 and 32"));
        }
        if let Some(policy) = state.changelog_config.get("cleanup.policy") {
            if !policy.split(',').any(|p| p.trim() == "compact") {
                return Err(self.invalid(
                    "state.changelog-config.cleanup.policy",
                    "a changelog must stay compacted (`compact` or `compact,delete`): a deleted record would be missing from every later restore",
                ));
            }
        }
        if self.ordering == Ordering::None {
            return Err(self.invalid(
                "ordering",
                "state needs `ordering: partition` or `key`: with `none` two workers may update one key at once",
            ));
        }
        if let SourceSpec::Kafka(kafka) = &self.source {
            for topic in &kafka.topics {
                for store in &state.stores {
                    let changelog = StateSpec::changelog_topic(&kafka.group_id, topic, store);
                    if changelog.len() > 249 {
                        return Err(self.invalid(
                            "state.stores",
                            format!("the changelog topic `{changelog}` is longer than Kafka's 249 characters: shorten the group id, the topic or the store name"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Where the state stores' local copies live.
    pub fn state_dir(&self) -> Option<PathBuf> {
        let state = self.state.as_ref()?;
        Some(match &state.dir {
            Some(dir) => self.resolve(dir),
            None => match std::env::var_os("SLUICE_STATE_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => self.base_dir.join(".sluice-state"),
            },
        })
    }

    fn check_admin(&self) -> Result<(), ConfigError> {
        if let Some(listen) = &self.admin.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(self.invalid(
                    "admin.listen",
                    format!(
                        "`{listen}` is not `host:port` with an IP address: write e.g. 0.0.0.0:9464"
                    ),
                ));
            }
        }
        if !(100..=600_000).contains(&self.admin.lag_interval_ms) {
            return Err(self.invalid("admin.lag-interval-ms", "must be between 100 and 600000"));
        }
        for (field, ms) in [
            ("admin.starved-after-ms", self.admin.starved_after_ms),
            ("admin.stalled-after-ms", self.admin.stalled_after_ms),
            (
                "admin.commits-failing-after-ms",
                self.admin.commits_failing_after_ms,
            ),
        ] {
            if !(1_000..=86_400_000).contains(&ms) {
                return Err(self.invalid(field, "must be between 1000 (1 s) and 86400000 (a day)"));
            }
        }
        if self.admin.rejoin_attempts > 100 {
            return Err(self.invalid(
                "admin.rejoin-attempts",
                "must be at most 100 (0: fail /healthz at once)",
            ));
        }
        if !(0.0..=1.0).contains(&self.admin.upgrade_max_error_rate) {
            return Err(self.invalid(
                "admin.upgrade-max-error-rate",
                "must be between 0 (no event may fail) and 1 (never roll back)",
            ));
        }
        Ok(())
    }

    fn check_error_policy(&self) -> Result<(), ConfigError> {
        let policy = &self.error_policy;
        let kafka = matches!(self.source, SourceSpec::Kafka(_));
        for (class, p) in policy.classes() {
            let field = format!("error-policy.{class}");
            if p.then == Action::DeadLetter && !policy.has_dead_letters() {
                return Err(self.invalid(
                    &field,
                    "`dead-letter` needs `error-policy.dead-letter-topic: TOPIC` (or `dead-letter-file: PATH`)",
                ));
            }
            // Every class works the same for every source (one decision, `error_policy` in the
            // runtime), but an undecodable line of a file has no event to dead-letter.
            if !kafka && class == "invalid-input" && p.then == Action::DeadLetter {
                return Err(self.invalid(
                    &field,
                    "an undecodable line of a file cannot be dead-lettered: use `fail`, `skip` or `retry`",
                ));
            }
        }
        if policy.dead_letter_topic.as_deref() == Some("") {
            return Err(self.invalid("error-policy.dead-letter-topic", "must not be empty"));
        }
        if policy.dead_letter_file.as_deref() == Some(Path::new("")) {
            return Err(self.invalid("error-policy.dead-letter-file", "must not be empty"));
        }
        if policy.dead_letter_topic.is_some() && policy.dead_letter_file.is_some() {
            return Err(self.invalid(
                "error-policy.dead-letter-file",
                "set either `dead-letter-topic` or `dead-letter-file`, not both",
            ));
        }
        Ok(())
    }

    fn check_table(
        &self,
        name: &str,
        table: &TableOutputSpec,
        schemes: &[&str],
    ) -> Result<(), ConfigError> {
        let kind = schemes[0].trim_end_matches("://");
        let field = |f: &str| format!("outputs.{name}.{kind}.{f}");
        if !schemes.iter().any(|s| table.url.starts_with(s)) {
            return Err(self.invalid(
                &field("url"),
                format!("must start with {}", schemes.join(" or ")),
            ));
        }
        if !is_identifier(&table.table, true) {
            return Err(self.invalid(
                &field("table"),
                "must be a plain name (letters, digits, _), optionally `schema.table`",
            ));
        }
        if table.columns.is_empty() {
            return Err(self.invalid(&field("columns"), "list at least one column: `name: type`"));
        }
        if let Some(bad) = table.columns.keys().find(|c| !is_identifier(c, false)) {
            return Err(self.invalid(
                &field("columns"),
                format!("`{bad}` is not a plain column name (letters, digits, _)"),
            ));
        }
        if let Some(missing) = table.key.iter().find(|k| !table.columns.contains_key(*k)) {
            return Err(self.invalid(
                &field("key"),
                format!("`{missing}` is not one of the columns"),
            ));
        }
        if table.mode == TableMode::Upsert && table.key.is_empty() {
            return Err(self.invalid(
                &field("key"),
                "`mode: upsert` needs the key columns (its conflict target)",
            ));
        }
        // PostgreSQL and MySQL take at most 65535 bind parameters per statement.
        if table.batch_size == 0 || table.batch_size * table.columns.len() > 65_535 {
            return Err(self.invalid(
                &field("batch-size"),
                format!(
                    "must be between 1 and {} for {} columns (65535 parameters per statement)",
                    65_535 / table.columns.len(),
                    table.columns.len()
                ),
            ));
        }
        if table.max_connections == 0 {
            return Err(self.invalid(&field("max-connections"), "must be at least 1"));
        }
        if table.exactly_once {
            if kind != "postgres" {
                return Err(self.invalid(
                    &field("exactly-once"),
                    "is supported for PostgreSQL outputs only",
                ));
            }
            if !is_identifier(&table.offsets_table, true) {
                return Err(self.invalid(
                    &field("offsets-table"),
                    "must be a plain name, optionally `schema.table`",
                ));
            }
            if self.outputs.values().filter(|o| o.is_remote()).count() > 1 {
                return Err(self.invalid(
                    &field("exactly-once"),
                    "needs this table to be the pipeline's only Kafka or database output (one transaction holds the rows and the offsets)",
                ));
            }
            if self.error_policy.sink_rejection != ClassPolicy::default() {
                return Err(self.invalid(
                    "error-policy.sink-rejection",
                    "must be `fail` with an exactly-once output (a batch and its offsets commit together or not at all)",
                ));
            }
            if self.error_policy.has_dead_letters() {
                return Err(self.invalid(
                    &field("exactly-once"),
                    "cannot be combined with dead letters (they are written outside the transaction)",
                ));
            }
        }
        Ok(())
    }

    fn check_kafka(&self, kafka: &KafkaSourceSpec) -> Result<(), ConfigError> {
        if kafka.topics.is_empty() {
            return Err(self.invalid("source.kafka.topics", "name at least one topic"));
        }
        if kafka.batch_size == 0 || kafka.batch_size > 65_536 {
            return Err(self.invalid("source.kafka.batch-size", "must be between 1 and 65536"));
        }
        if let StartFrom::Offsets(offsets) = &kafka.start_from {
            if let Some((topic, partition)) =
                offsets.keys().find(|(t, _)| !kafka.topics.contains(t))
            {
                return Err(self.invalid(
                    "source.kafka.start-from",
                    format!("{topic}/{partition}: `{topic}` is not one of source.kafka.topics"),
                ));
            }
        }
        if kafka.partition_capacity < kafka.batch_size {
            return Err(self.invalid(
                "source.kafka.partition-capacity",
                "must be at least batch-size",
            ));
        }
        if kafka.drain_timeout_ms == 0 || kafka.commit_interval_ms == 0 {
            return Err(self.invalid(
                "source.kafka",
                "drain-timeout-ms and commit-interval-ms must be positive",
            ));
        }
        for key in kafka
            .properties
            .keys()
            .chain(kafka.properties_from_env.keys())
        {
            if RESERVED_CONSUMER_PROPERTIES.contains(&key.as_str()) {
                return Err(self.invalid(
                    &format!("source.kafka.properties.{key}"),
                    "is managed by Sluice (offsets are committed only for fully handled events): remove it",
                ));
            }
        }
        if kafka.properties.get("group.protocol").map(String::as_str) == Some("consumer") {
            // KIP-848: the broker assigns partitions and owns the session; librdkafka refuses
            // these with the new protocol.
            for key in CLASSIC_PROTOCOL_PROPERTIES {
                if kafka.properties.contains_key(*key) {
                    return Err(self.invalid(
                        &format!("source.kafka.properties.{key}"),
                        "has no effect with `group.protocol: consumer` (the broker sets it: group.consumer.* settings, or the group's config): remove it",
                    ));
                }
            }
        }
        self.check_security(
            "source.kafka",
            &kafka.security,
            &kafka.properties,
            &kafka.properties_from_env,
        )?;
        for key in self
            .producer
            .properties
            .keys()
            .chain(self.producer.properties_from_env.keys())
        {
            if RESERVED_PRODUCER_PROPERTIES.contains(&key.as_str()) {
                return Err(self.invalid(
                    &format!("producer.properties.{key}"),
                    "is managed by Sluice (idempotent, acks=all): remove it",
                ));
            }
        }
        Ok(())
    }

    /// `security` of `section` (source.kafka or producer) and the `properties` beside it.
    fn check_security(
        &self,
        section: &str,
        security: &KafkaSecurity,
        properties: &BTreeMap<String, String>,
        from_env: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        security.check().map_err(|(field, message)| {
            self.invalid(&format!("{section}.security.{field}"), message)
        })?;
        if *security != KafkaSecurity::default() {
            if let Some(key) = properties
                .keys()
                .chain(from_env.keys())
                .find(|k| security::SECURITY_PROPERTIES.contains(&k.as_str()))
            {
                return Err(self.invalid(
                    &format!("{section}.properties.{key}"),
                    format!("is set by {section}.security: remove it"),
                ));
            }
        }
        Ok(())
    }

    /// The security settings of the pipeline's producer: `producer.security`, else the Kafka
    /// source's.
    pub fn producer_security(&self) -> KafkaSecurity {
        match (&self.producer.security, &self.source) {
            (Some(security), _) => security.clone(),
            (None, SourceSpec::Kafka(kafka)) => kafka.security.clone(),
            (None, _) => KafkaSecurity::default(),
        }
    }

    /// A path from the spec, resolved against the spec's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || path == Path::new("-") {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// Consumer properties Sluice sets itself: at-least-once depends on them.
const RESERVED_CONSUMER_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

/// Consumer properties of the classic group protocol that the KIP-848 protocol
/// (`group.protocol: consumer`) moves to the broker.
const CLASSIC_PROTOCOL_PROPERTIES: &[&str] = &[
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
];

/// Producer properties Sluice sets itself.
const RESERVED_PRODUCER_PROPERTIES: &[&str] = &["enable.idempotence", "acks", "transactional.id"];

/// Replaces `${VAR}` and `${VAR:-default}` in `text`; `$$` stands for `$`. Values may not contain
/// newlines (they would change the YAML's structure and its line numbers).
fn interpolate(
    text: &str,
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let column = line.len() - rest.len() + at + 1;
            let here = |message: String| ConfigError::BadInterpolation {
                path: path.into(),
                line: line_no + 1,
                column,
                message,
            };
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .ok_or_else(|| here("`${` without a closing `}`".into()))?;
                let expr = &body[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (expr, None),
                };
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(here(format!(
                        "`${{{expr}}}` is not a variable reference: use ${{NAME}} or ${{NAME:-default}}, and $$ for a literal $"
                    )));
                }
                let value = match (env(name), default) {
                    (Some(value), _) => value,
                    (None, Some(default)) => default.to_owned(),
                    (None, None) => {
                        return Err(ConfigError::MissingVar {
                            path: path.into(),
                            line: line_no + 1,
                            column,
                            var: name.into(),
                        });
                    }
                };
                if value.contains('\n') || value.contains('\r') {
                    return Err(here(format!(
                        "environment variable `{name}` contains a newline, which a spec value cannot hold"
                    )));
                }
                out.push_str(&value);
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "\
name: demo
plugin:
  path: ${PLUGIN_DIR:-lib}/libdemo.so
  config:
    min_fare: 5
source:
  file:
    path: events.jsonl
    key-field: id
outputs:
  out:
    stdout: {}
";

    fn parse(text: &str) -> Result<PipelineSpec, ConfigError> {
        PipelineSpec::parse(text, Path::new("/specs/p.yaml"), |name| match name {
            "SECRET" => Some("s3cr$t".into()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        })
    }

    #[test]
    fn parses_and_resolves_relative_paths() {
        let spec = parse(SPEC).unwrap();
        assert_eq!(
            spec.resolve(&spec.plugin.path),
            Path::new("/specs/lib/libdemo.so")
        );
        assert_eq!(spec.plugin.config["min_fare"], 5);
        let SourceSpec::File(file) = &spec.source else {
            panic!("file source")
        };
        assert_eq!(file.batch_size, 256);
        assert_eq!(file.key_field.as_deref(), Some("id"));
        assert_eq!(spec.error_policy.event_error.then, Action::Fail);
    }

    #[test]
    fn ordering_defaults_to_partition_and_needs_a_kafka_source() {
        assert_eq!(parse(SPEC).unwrap().ordering, Ordering::Partition);
        let err = parse(&SPEC.replace("name: demo", "name: demo\nordering: key"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/specs/p.yaml: ordering: a file source runs one worker in file order: omit `ordering`"
        );
        let err = parse(&SPEC.replace("name: demo", "name: demo\nordering: keys"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown variant `keys`, expected one of `partition`, `key`, `none`"),
            "{err}"
        );
    }

    #[test]
    fn table_outputs_are_checked_before_anything_connects() {
        let kafka = SPEC.replace(
            "  file:\n    path: events.jsonl\n    key-field: id\n",
            "  kafka:\n    bootstrap-servers: b\n    topics: [t]\n    group-id: g\n",
        );
        let with = |output: &str| {
            parse(&kafka.replace("    stdout: {}\n", output))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let ok = "    postgres:\n      url: postgres://u@h/db\n      table: app.rides\n      columns: {id: bigint, city: text}\n      key: [id]\n      mode: upsert\n";
        assert_eq!(with(ok), Ok(()));
        assert_eq!(
            with(&ok.replace("postgres://", "mysql://")),
            Err("/specs/p.yaml: outputs.out.postgres.url: must start with postgres:// or postgresql://".into())
        );
        assert_eq!(
            with(&ok.replace("app.rides", "rides; drop table x")),
            Err("/specs/p.yaml: outputs.out.postgres.table: must be a plain name (letters, digits, _), optionally `schema.table`".into())
        );
        assert_eq!(
            with(&ok.replace("key: [id]", "key: [ride]")),
            Err("/specs/p.yaml: outputs.out.postgres.key: `ride` is not one of the columns".into())
        );
        assert_eq!(
            with(&ok.replace("key: [id]", "key: []")),
            Err("/specs/p.yaml: outputs.out.postgres.key: `mode: upsert` needs the key columns (its conflict target)".into())
        );
        assert_eq!(
            with(&format!("{ok}      batch-size: 40000\n")),
            Err("/specs/p.yaml: outputs.out.postgres.batch-size: must be between 1 and 32767 for 2 columns (65535 parameters per statement)".into())
        );
        let err = with("    mysql:\n      url: mysql://h/db\n      table: t\n      columns: {id: bigint}\n    stdout: {}\n").unwrap_err();
        assert!(err.contains("set exactly one output kind"), "{err}");
    }

    #[test]
    fn error_policies_parse_and_dead_letters_need_a_topic_and_kafka() {
        let kafka = SPEC.replace(
            "  file:\n    path: events.jsonl\n    key-field: id\n",
            "  kafka:\n    bootstrap-servers: b\n    topics: [t]\n    group-id: g\n",
        );
        let policy = "error-policy:\n  event-error: dead-letter\n  plugin-panic: {retry: 3, then: skip}\n  dead-letter-topic: dlq\n";
        let spec = parse(&format!("{kafka}{policy}")).unwrap();
        let p = &spec.error_policy;
        assert_eq!(p.event_error.then, Action::DeadLetter);
        assert_eq!(
            p.plugin_panic,
            ClassPolicy {
                retries: 3,
                backoff_ms: 100,
                then: Action::Skip
            }
        );
        assert_eq!(p.sink_rejection, ClassPolicy::default(), "fail by default");
        let err = parse(&format!(
            "{kafka}{}",
            policy.replace("  dead-letter-topic: dlq\n", "")
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "/specs/p.yaml: error-policy.event-error: `dead-letter` needs `error-policy.dead-letter-topic: TOPIC` (or `dead-letter-file: PATH`)"
        );
        // A file source dead-letters through a producer it is told about...
        let err = parse(&format!("{SPEC}{policy}")).unwrap_err().to_string();
        assert_eq!(
            err,
            "/specs/p.yaml: producer.bootstrap-servers: a file source with Kafka outputs or dead letters needs `producer: {bootstrap-servers: HOST:PORT}`"
        );
        let producer = "producer: {bootstrap-servers: \"127.0.0.1:9092\"}\n";
        let spec = parse(&format!("{SPEC}{producer}{policy}")).unwrap();
        assert_eq!(spec.error_policy.event_error.then, Action::DeadLetter);
        // ...but an undecodable line has no event to dead-letter.
        let err = parse(&format!(
            "{SPEC}{producer}error-policy:\n  invalid-input: dead-letter\n  dead-letter-topic: dlq\n"
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "/specs/p.yaml: error-policy.invalid-input: an undecodable line of a file cannot be dead-lettered: use `fail`, `skip` or `retry`"
        );
        // Retries work for a file source too.
        let spec = parse(&format!(
            "{SPEC}error-policy:\n  event-error: {{retry: 2, backoff-ms: 1, then: skip}}\n"
        ))
        .unwrap();
        assert_eq!(spec.error_policy.event_error.retries, 2);
        let err = parse(&format!("{kafka}error-policy:\n  event-error: retry\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a policy: `fail`, `skip`, `dead-letter`, or `{retry: N"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let err = parse(&SPEC.replace("key-field", "key-feild"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/specs/p.yaml:9:5: "), "{err}");
        assert!(err.contains("unknown field `key-feild`"), "{err}");
        assert!(!err.contains(" at line "), "{err}");
    }

    #[test]
    fn interpolates_environment_and_escapes() {
        let text = SPEC.replace("name: demo", "name: \"${SECRET}-$${HOME}\"");
        assert_eq!(parse(&text).unwrap().name, "s3cr$t-${HOME}");
    }

    #[test]
    fn start_from_reads_earliest_latest_a_time_or_offsets_and_says_what_is_wrong() {
        let kafka = |start: &str| {
            let text = SPEC.replace(
                "  file:\n    path: events.jsonl\n    key-field: id\n",
                &format!(
                    "  kafka:\n    bootstrap-servers: 127.0.0.1:9092\n    topics: [rides]\n    group-id: g\n{start}"
                ),
            );
            parse(&text).map(|spec| match spec.source {
                SourceSpec::Kafka(k) => k.start_from,
                SourceSpec::File(_) => panic!("kafka source"),
            })
        };
        assert_eq!(kafka("").unwrap(), StartFrom::Earliest);
        assert_eq!(
            kafka("    start-from: latest\n").unwrap(),
            StartFrom::Latest
        );
        assert_eq!(
            kafka("    start-from: \"2026-11-29T08:00:00.250+01:00\"\n").unwrap(),
            StartFrom::Time {
                ms: 1_795_935_600_250,
                text: "2026-11-29T08:00:00.250+01:00".into()
            }
        );
        assert_eq!(
            kafka("    start-from: {rides/0: 42, rides/3: 0}\n").unwrap(),
            StartFrom::Offsets([(("rides".into(), 0), 42), (("rides".into(), 3), 0)].into())
        );
        for (start, says) in [
            (
                "yesterday",
                "`yesterday` is not earliest, latest or an RFC 3339 time",
            ),
            (
                "\"2026-11-29 08:00\"",
                "is not earliest, latest or an RFC 3339 time",
            ),
            ("{rides: 1}", "`rides` is not `topic/partition`"),
            ("{rides/0: -1}", "rides/0: offset -1 is negative"),
            (
                "{other/0: 1}",
                "source.kafka.start-from: other/0: `other` is not one of source.kafka.topics",
            ),
            ("[1]", "write earliest, latest, an RFC 3339 time"),
        ] {
            let err = kafka(&format!("    start-from: {start}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{start}: {err}");
        }
    }

    #[test]
    fn state_stores_are_checked_and_name_their_changelogs() {
        let kafka = SPEC.replace(
            "  file:\n    path: events.jsonl\n    key-field: id\n",
            "  kafka:\n    bootstrap-servers: 127.0.0.1:9092\n    topics: [rides]\n    group-id: g\n",
        );
        let with = |state: &str, extra: &str| parse(&format!("{kafka}{extra}state: {state}\n"));
        let spec = with("{stores: [windows, seen]}", "").unwrap();
        assert_eq!(spec.state.as_ref().unwrap().stores, ["windows", "seen"]);
        assert_eq!(
            StateSpec::changelog_topic("g", "rides", "windows"),
            "g-rides-windows-changelog"
        );
        let refusals = [
            ("{stores: []}", "", "state.stores: name at least one store"),
            ("{stores: [a b]}", "", "a store name is letters, digits"),
            ("{stores: [a, a]}", "", "`a` is named twice"),
            (
                "{stores: [a], replication-factor: 0}",
                "",
                "must be between 1 and 32",
            ),
            (
                "{stores: [a]}",
                "ordering: none\n",
                "state needs `ordering: partition` or `key`",
            ),
            ("{stores: [a], dirr: x}", "", "unknown field `dirr`"),
        ];
        for (state, extra, message) in refusals {
            let err = with(state, extra).unwrap_err().to_string();
            assert!(err.contains(message), "{state}: {err}");
        }
        let long = "s".repeat(240);
        let err = with(&format!("{{stores: [{long}]}}"), "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than Kafka's 249 characters"), "{err}");
    }

    #[test]
    fn reset_needs_a_kafka_source_and_no_exactly_once_output() {
        let mut file = parse(SPEC).unwrap();
        assert!(
            file.request_reset()
                .unwrap_err()
                .starts_with("a file source has no committed offsets")
        );
        let kafka = SPEC.replace(
            "  file:\n    path: events.jsonl\n    key-field: id\n",
            "  kafka:\n    bootstrap-servers: 127.0.0.1:9092\n    topics: [rides]\n    group-id: g\n",
        );
        let mut plain = parse(&kafka).unwrap();
        plain.request_reset().unwrap();
        let SourceSpec::Kafka(k) = &plain.source else {
            panic!("kafka source")
        };
        assert!(k.reset);
        let exactly_once = kafka.replace(
            "  out:\n    stdout: {}\n",
            "  out:\n    postgres:\n      url: postgres://x\n      table: t\n      columns: {a: text}\n      exactly-once: true\n",
        );
        let mut rows = parse(&exactly_once).unwrap();
        assert!(
            rows.request_reset()
                .unwrap_err()
                .starts_with("an exactly-once output keeps its offsets with its rows"),
        );
    }

    #[test]
    fn missing_variable_names_it_and_its_place() {
        let err = parse(&SPEC.replace("${PLUGIN_DIR:-lib}", "${PLUGIN_DIR}"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/specs/p.yaml:3:9: environment variable `PLUGIN_DIR` is not set: export it, or write `${PLUGIN_DIR:-default}`"
        );
    }

    #[test]
    fn rejects_newlines_and_malformed_references() {
        let err = parse(&SPEC.replace("name: demo", "name: ${MULTI}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`MULTI` contains a newline"), "{err}");
        let err = parse(&SPEC.replace("name: demo", "name: ${not valid}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/specs/p.yaml:1:7: `${not valid}` is not a variable reference"),
            "{err}"
        );
        let err = parse(&SPEC.replace("name: demo", "name: ${OPEN"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("without a closing"), "{err}");
    }

    #[test]
    fn cross_field_checks_name_the_field() {
        let err = parse(&SPEC.replace("key-field: id", "batch-size: 0"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/specs/p.yaml: source.file.batch-size: must be between 1 and 65536"
        );
        let err = parse(&SPEC.replace("key-field: id", "key-field: id\n    format: lines"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("source.file: key-field and timestamp-field need `format: json-lines`"),
            "{err}"
        );
        let err = parse(&SPEC.replace(
            "  path: ${PLUGIN_DIR:-lib}/libdemo.so",
            "  path: x.so\n  sha256: abc",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("plugin.sha256: must be 64 hex digits"),
            "{err}"
        );
    }

    #[test]
    fn the_admin_endpoint_is_checked_and_defaults_to_off_with_metrics_on() {
        let kafka = SPEC.replace(
            "  file:\n    path: events.jsonl\n    key-field: id\n",
            "  kafka:\n    bootstrap-servers: 127.0.0.1:9092\n    topics: [a]\n    group-id: g\n",
        );
        let spec = parse(&kafka).unwrap();
        assert_eq!(
            (
                spec.admin.listen.as_deref(),
                spec.admin.metrics,
                spec.admin.lag_interval_ms
            ),
            (None, true, 1000)
        );
        let spec = parse(&format!(
            "{kafka}admin:\n  listen: 0.0.0.0:9464\n  metrics: false\n"
        ))
        .unwrap();
        assert_eq!(spec.admin.listen.as_deref(), Some("0.0.0.0:9464"));
        assert!(!spec.admin.metrics);
        let err = parse(&format!("{kafka}admin:\n  listen: localhost\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/specs/p.yaml: admin.listen: `localhost` is not `host:port` with an IP address: write e.g. 0.0.0.0:9464"
        );
        // A file run serves it too.
        let spec = parse(&format!("{SPEC}admin:\n  listen: 127.0.0.1:9464\n")).unwrap();
        assert_eq!(spec.admin.listen.as_deref(), Some("127.0.0.1:9464"));
    }

    #[test]
    fn kafka_source_defaults_and_reserved_properties() {
        let kafka = SPEC.replace(
            "  file:\n    path: events.jsonl\n    key-field: id\n",
            "  kafka:\n    bootstrap-servers: 127.0.0.1:9092\n    topics: [a]\n    group-id: g\n",
        );
        let spec = parse(&kafka).unwrap();
        let SourceSpec::Kafka(k) = &spec.source else {
            panic!("kafka source")
        };
        assert_eq!(
            (
                k.partition_capacity,
                k.batch_size,
                k.commit_interval_ms,
                k.drain_timeout_ms
            ),
            (32_768, 256, 1000, 25_000)
        );
        let err = parse(&kafka.replace(
            "group-id: g\n",
            "group-id: g\n    properties: {enable.auto.commit: \"true\"}\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("source.kafka.properties.enable.auto.commit: is managed by Sluice"),
            "{err}"
        );
        // The KIP-848 protocol: the broker owns the session and the assignment.
        let err = parse(&kafka.replace(
            "group-id: g\n",
            "group-id: g\n    properties: {group.protocol: consumer, session.timeout.ms: \"6000\"}\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("source.kafka.properties.session.timeout.ms: has no effect with `group.protocol: consumer`"),
            "{err}"
        );
        parse(&kafka.replace(
            "group-id: g\n",
            "group-id: g\n    properties: {group.protocol: consumer}\n",
        ))
        .unwrap();
        // A file source writes to Kafka through a producer it is told about.
        let err = parse(&SPEC.replace("    stdout: {}", "    kafka: {topic: t}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("producer.bootstrap-servers: a file source with Kafka outputs"),
            "{err}"
        );
        let spec = parse(&format!(
            "{}producer: {{bootstrap-servers: \"127.0.0.1:9092\"}}\n",
            SPEC.replace("    stdout: {}", "    kafka: {topic: t}")
        ))
        .unwrap();
        assert!(matches!(spec.outputs["out"], OutputSpec::Kafka(_)));
    }

    #[test]
    fn schema_formats_need_a_registry_and_fitting_output_settings() {
        let kafka = SPEC.replace(
            "  file:\n    path: events.jsonl\n    key-field: id\n",
            "  kafka:\n    bootstrap-servers: 127.0.0.1:9092\n    topics: [a]\n    group-id: g\n    format: avro\n",
        );
        let err = parse(&kafka).unwrap_err().to_string();
        assert!(
            err.contains("source.kafka.format: `avro` needs `schema-registry: {url: ...}`"),
            "{err}"
        );
        let registry = "schema-registry: {url: http://127.0.0.1:8080/apis/ccompat/v7}\n";
        let spec = parse(&format!("{kafka}{registry}")).unwrap();
        let SourceSpec::Kafka(k) = &spec.source else {
            panic!("kafka source")
        };
        assert_eq!(k.format, ValueFormat::Avro);
        let with_output = |output: &str| {
            parse(&format!(
                "{}{registry}",
                kafka.replace(
                    "    stdout: {}\n",
                    &format!("    kafka: {{topic: t, {output}}}\n")
                )
            ))
            .map_err(|e| e.to_string())
        };
        let out = with_output("format: protobuf, message: rides.v1.Booking").unwrap();
        let OutputSpec::Kafka(o) = &out.outputs["out"] else {
            panic!("kafka output")
        };
        assert_eq!((o.format, o.auto_register), (ValueFormat::Protobuf, true));
        let err = with_output("subject: s").unwrap_err();
        assert!(
            err.contains("outputs.out.kafka.subject: needs `format: avro`"),
            "{err}"
        );
        let err = with_output("format: avro, message: M").unwrap_err();
        assert!(
            err.contains("outputs.out.kafka.message: is for `format: protobuf` only"),
            "{err}"
        );
        let err = with_output("format: avro, subject-name-strategy: record-name").unwrap_err();
        assert!(err.contains("set `schema: FILE`, or `subject`"), "{err}");
        let err = with_output("format: avro, schema: nope.avsc").unwrap_err();
        assert!(err.contains("/specs/nope.avsc is not a file"), "{err}");
        let err = parse(&format!(
            "{kafka}schema-registry: {{url: 127.0.0.1:8080, username: u}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("schema-registry.url: must start with http://"),
            "{err}"
        );
        let err = parse(&format!(
            "{kafka}schema-registry: {{url: http://r, username: u}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("set both `username` and `password`"), "{err}");
    }

    #[test]
    fn unknown_source_kind_is_rejected() {
        let err = parse(&SPEC.replace(
            "  file:\n    path: events.jsonl",
            "  kafkaa:\n    path: events.jsonl",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("/specs/p.yaml:7:3: source: unknown field `kafkaa`, expected `file`"),
            "{err}"
        );
        let err = parse(&SPEC.replace("    stdout: {}", "    stdout: {}\n    file: {path: x}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("outputs: set exactly one output kind"),
            "{err}"
        );
    }
}
