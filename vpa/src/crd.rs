//! The `StreamPipeline` custom resource (`sluice.dev/v1alpha1`, namespaced): one pipeline, its
//! tier, and how its replicas and resources may change. `crdgen` prints the CRD generated from
//! these types; `deploy/crd/` holds the committed copy and a test fails when it is stale.
//!
//! Deliberately no `/scale` subresource: the VPA finds pods through their topmost controller
//! that is well known or has `/scale`, so a scalable StreamPipeline owning the Deployment would
//! make a VPA targeting the Deployment match no pods. The operator owns the replica count.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Sluice pipeline on Kubernetes: fixed, partition-aligned replicas, sized by the VPA.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "StreamPipeline",
    namespaced,
    status = "StreamPipelineStatus",
    shortname = "spl",
    printcolumn = r#"{"name":"Tier","type":"string","jsonPath":".spec.tier"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Partitions/replica","type":"integer","jsonPath":".status.partitionsPerReplica"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StreamPipelineSpec {
    /// The container image: the `sluice` binary and the plugin library.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The plugin inside the image.
    pub plugin: PluginSpec,
    /// Where events come from.
    pub kafka: KafkaSpec,
    /// The rest of the pipeline spec, as in `pipeline.yaml`: `outputs`, `error-policy`,
    /// `ordering`, `producer`... `name`, `plugin`, `source` and `admin` come from the fields
    /// above. The operator (and `sluice render`) checks it with the runtime's own parser before
    /// applying anything: an invalid one is `Degraded/InvalidSpec`, naming the field.
    #[schemars(schema_with = "free_form")]
    pub pipeline: serde_json::Value,
    /// Scheduling tier: priority class and node placement.
    #[serde(default)]
    pub tier: Tier,
    /// How many pods.
    pub replicas: ReplicasPolicy,
    /// How big each pod is, and who changes it.
    pub resources: ResourcesPolicy,
    /// How long a pod may drain on stop (the pod's termination grace period adds a margin).
    #[serde(default = "default_drain_timeout_ms")]
    #[schemars(range(min = 1000, max = 3_600_000))]
    pub drain_timeout_ms: u64,
    /// Scale to zero and keep it there (the consumer group keeps its offsets).
    #[serde(default)]
    pub suspend: bool,
    /// Change it (to any new value) to restart every pod in a rolling update, as Flink's
    /// operator does; a change of the pipeline's config (`pipeline`, `plugin`, `kafka`) rolls
    /// the pods by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,
}

fn default_drain_timeout_ms() -> u64 {
    25_000
}

/// The plugin library in the image and its config.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginSpec {
    /// Path of the `.so` inside the image.
    #[schemars(length(min = 1))]
    pub path: String,
    /// Hex sha256 of the library; a different file is refused at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
    /// The plugin's config (checked against the plugin's schema at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub config: Option<serde_json::Value>,
    /// How a change of only `path` and `sha256` (same image, same config) reaches running
    /// pods: `rollout` (a rolling update) or `in-place` (each pod's admin endpoint swaps the
    /// library without a restart, one pod at a time; needs `sha256`, the new library in the
    /// image at its own path, and the `sluice-upgrade-token` Secret; a pod that refuses or rolls
    /// back turns it into a rollout). Any other change rolls.
    #[serde(default, skip_serializing_if = "PluginUpgrade::is_rollout")]
    pub upgrade: PluginUpgrade,
}

/// `spec.plugin.upgrade`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PluginUpgrade {
    /// A rolling update.
    #[default]
    Rollout,
    /// Through each pod's admin endpoint (`POST /plugin`), one pod at a time.
    InPlace,
}

impl PluginUpgrade {
    fn is_rollout(&self) -> bool {
        *self == PluginUpgrade::Rollout
    }
}

fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The Kafka source.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// The Secret key holding the bootstrap servers (`host:port,...`).
    pub bootstrap_servers: SecretKeyRef,
    /// Topics to consume.
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 249)))]
    pub topics: Vec<String>,
    /// Consumer group id.
    #[schemars(length(min = 1, max = 255))]
    pub group: String,
    /// Partitions of the topics together: replicas are kept a divisor of it. Declared here so
    /// the operator needs no Kafka client; raise it when the topics grow.
    #[schemars(range(min = 1, max = MAX_PARTITIONS))]
    pub partitions: u32,
    /// How event values reach the plugin: `raw` (default), or `avro`, `protobuf`, `json-schema`
    /// in the Confluent wire format, decoded through `spec.pipeline.schema-registry` (README,
    /// "Schemas").
    #[serde(default, skip_serializing_if = "ValueFormat::is_raw")]
    pub format: ValueFormat,
    /// How the pipeline logs in, modelled on Strimzi's client authentication; credentials are
    /// Secrets mounted as files, never copied into the ConfigMap. Without it: no SASL, no client
    /// certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<KafkaAuthentication>,
    /// TLS to the brokers. Without it (and without `authentication.type: tls`) connections are
    /// plaintext; `tls: {}` encrypts and trusts the image's public CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    /// Other librdkafka settings of the pipeline's consumer (timeouts, fetch sizes...); the
    /// security settings come from `authentication` and `tls`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// `spec.kafka.authentication` (Strimzi's `KafkaClientAuthentication*`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaAuthentication {
    /// `tls` (a client certificate), `scram-sha-512`, `scram-sha-256`, `plain` or `oauth`
    /// (OIDC client credentials).
    #[serde(rename = "type")]
    pub kind: AuthenticationType,
    /// The user name (`scram-*`, `plain`; a Strimzi KafkaUser's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub username: Option<String>,
    /// The password (`scram-*`, `plain`): Strimzi's KafkaUser Secret has it under `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<PasswordSecret>,
    /// The client certificate and key (`tls`): a Strimzi KafkaUser Secret has `user.crt` and
    /// `user.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_and_key: Option<CertificateAndKey>,
    /// The OIDC provider's token endpoint (`oauth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub token_endpoint_uri: Option<String>,
    /// The OIDC client id (`oauth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_id: Option<String>,
    /// The OIDC client secret (`oauth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SecretKeyRef>,
    /// The scope asked for (`oauth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub scope: Option<String>,
}

/// `spec.kafka.authentication.type`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuthenticationType {
    /// mTLS: the client certificate's subject is the principal.
    Tls,
    /// SASL SCRAM-SHA-512.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
    /// SASL SCRAM-SHA-256.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// SASL PLAIN (Confluent Cloud API keys).
    Plain,
    /// SASL OAUTHBEARER with OIDC client credentials.
    Oauth,
}

/// A password in a Secret (Strimzi's `PasswordSecretSource`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSecret {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the password in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub password: String,
}

/// A certificate and its key in a Secret (Strimzi's `CertAndKeySecretSource`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAndKey {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the PEM certificate (with its intermediates).
    #[schemars(length(min = 1, max = 253))]
    pub certificate: String,
    /// Key of the PEM private key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// `spec.kafka.tls`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTls {
    /// The CA bundle that signs the brokers' certificates (one PEM file holding every CA;
    /// Strimzi's cluster CA Secret has it under `ca.crt`); default: the image's public CAs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub trusted_certificates: Vec<TrustedCertificate>,
}

/// A CA certificate in a Secret (Strimzi's `CertSecretSource`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedCertificate {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the PEM certificate(s).
    #[schemars(length(min = 1, max = 253))]
    pub certificate: String,
}

/// `spec.kafka.format`: the runtime's `source.kafka.format`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ValueFormat {
    /// The bytes as they are.
    #[default]
    Raw,
    /// Avro in the Confluent wire format.
    Avro,
    /// Protobuf in the Confluent wire format.
    Protobuf,
    /// JSON Schema in the Confluent wire format.
    JsonSchema,
}

impl ValueFormat {
    fn is_raw(&self) -> bool {
        *self == ValueFormat::Raw
    }

    /// As the pipeline spec writes it.
    pub fn name(self) -> &'static str {
        match self {
            ValueFormat::Raw => "raw",
            ValueFormat::Avro => "avro",
            ValueFormat::Protobuf => "protobuf",
            ValueFormat::JsonSchema => "json-schema",
        }
    }
}

/// The most partitions (and so replicas) one pipeline may declare: far above any real topic,
/// and far below what would overflow the operator's integers.
pub const MAX_PARTITIONS: u32 = 100_000;

/// A key of a Secret in the pipeline's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Scheduling tier (see `deploy/base/priority-classes.yaml`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Latency sensitive: on-demand nodes only, may preempt.
    Critical,
    /// On-demand preferred.
    #[default]
    Standard,
    /// Lag tolerant: spot nodes.
    Tolerant,
}

/// How many pods: a fixed count, or a range the capacity policy moves in (always a divisor of
/// the partitions). The API server checks the cross-field rules (CEL); the operator checks them
/// again, with the divisor.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.fixed) || (!has(self.min) && !has(self.max))",
     "message": "fixed excludes min and max: set fixed, or a min/max range"},
    {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
     "message": "min must not be above max"},
]))]
pub struct ReplicasPolicy {
    /// Exactly this many (must divide the partitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_PARTITIONS))]
    pub fixed: Option<u32>,
    /// At least this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_PARTITIONS))]
    pub min: Option<u32>,
    /// At most this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_PARTITIONS))]
    pub max: Option<u32>,
}

/// Who applies the VPA's recommendations.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AppliedBy {
    /// The VPA's updater (`InPlaceOrRecreate`).
    #[default]
    Vpa,
    /// The operator, in its own rollouts, coordinated with replica steps (`updateMode: Off`).
    Operator,
    /// The operator's fast loop resizes CPU in place (the pods' `resize` subresource; refused
    /// with `Degraded` before Kubernetes 1.35) from the last minutes of live usage and steps
    /// replicas from the same signal; the VPA keeps memory (`InPlaceOrRecreate`,
    /// `controlledResources: [memory]`). Not the default: under the constraints of a real
    /// cluster it does not meet its capacity targets on every load shape (see
    /// `deploy/capacity/README.md`).
    InPlace,
}

/// CPU and memory, as Kubernetes quantities (`500m`, `2`, `1Gi`; a plain number is read as
/// one too, as in a pod's resources).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Quantities {
    /// CPU.
    #[serde(deserialize_with = "int_or_string")]
    #[schemars(schema_with = "quantity")]
    pub cpu: String,
    /// Memory.
    #[serde(deserialize_with = "int_or_string")]
    #[schemars(schema_with = "quantity")]
    pub memory: String,
}

/// The Kubernetes quantity pattern (as in the built-in types' CRD schemas), without a sign: a
/// negative CPU or memory is never meant.
pub const QUANTITY_PATTERN: &str = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// An int-or-string quantity, as the built-in types declare theirs.
fn quantity(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": true
    })
}

/// A quantity written as a number (`cpu: 1`, `cpu: 0.5`) or a string (`cpu: 500m`).
fn int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Whole(u64),
        Fraction(f64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Whole(n) => n.to_string(),
        Raw::Fraction(f) => f.to_string(),
    })
}

/// Which values the VPA controls.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ControlledValues {
    /// Requests only; limits stay as set (the VPA then keeps requests at or under them).
    RequestsOnly,
    /// Requests and limits, keeping their ratio (pods start with a CPU limit of twice the
    /// request, so the CPU quota the runtime sizes its workers from follows the recommendation).
    #[default]
    RequestsAndLimits,
}

/// How big each pod is.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesPolicy {
    /// Requests of a new pipeline, before the VPA has a recommendation.
    pub initial: Quantities,
    /// The smallest pod the VPA may recommend.
    pub min_allowed: Quantities,
    /// The largest pod the VPA may recommend; pressure against it steps replicas up.
    pub max_allowed: Quantities,
    /// Which values the VPA controls.
    #[serde(default)]
    pub controlled_values: ControlledValues,
    /// Requests never go below this many whole CPUs, so the runtime's worker count (derived from
    /// the CPU quota) stays sane.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 256))]
    pub min_cpus: u32,
    /// Who applies recommendations.
    #[serde(default)]
    pub applied_by: AppliedBy,
}

fn one() -> u32 {
    1
}

/// What the operator observed and applied.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamPipelineStatus {
    /// The generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Replicas the Deployment runs.
    #[serde(default)]
    pub replicas: u32,
    /// Of those, ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Partitions each replica owns.
    #[serde(default)]
    pub partitions_per_replica: u32,
    /// The requests last applied (operator mode) or the VPA's target last seen (VPA mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_recommendation: Option<Quantities>,
    /// The VPA's uncapped CPU target last seen (what it would give a pod without `maxAllowed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncapped_cpu: Option<String>,
    /// Ready, Progressing, Degraded, ScalingLimited: one per type.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// What the capacity policy remembers between reconciles.
    #[serde(default)]
    pub policy: PolicyStatus,
    /// Hash of the children last applied, and when (RFC 3339): unchanged children are re-applied
    /// only every few minutes (drift repair), not on every resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<AppliedChildren>,
    /// `plugin.upgrade: in-place`: where the plugin upgrade of the running pods stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_upgrade: Option<PluginUpgradeStatus>,
}

/// An in-place plugin upgrade of the running pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginUpgradeStatus {
    /// The library's sha256 the pods are being brought to.
    pub sha256: String,
    /// The pod asked last (its trial must end before the next pod is asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The sha256 of a plugin that could not be upgraded in place and rolled the pods instead
    /// (part of the pod template, so the rollout happens once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled: Option<String>,
    /// Where it stands, in one line.
    pub message: String,
}

/// The capacity policy's memory (RFC 3339 times).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Since when the VPA's uncapped target presses against `maxAllowed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure_since: Option<String>,
    /// Since when the load fits in fewer pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relief_since: Option<String>,
    /// When replicas or resources last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<String>,
    /// `Replicas` or `Resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_kind: Option<String>,
    /// The policy's last reason (`Steady`, `PressureBuilding`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `appliedBy: in-place`: the fast loop's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast: Option<FastStatus>,
}

/// The fast loop's memory (`appliedBy: in-place`), kept in the status so a restarted or newly
/// elected operator goes on where the last one stopped.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FastStatus {
    /// The CPU request every pod is resized to (a quantity).
    pub target_cpu: String,
    /// When the loop last ran (RFC 3339): it runs once a minute, however often the pipeline is
    /// reconciled.
    pub ticked_at: String,
    /// The fullest pod's CPU (m), one value per minute, oldest first.
    #[serde(default)]
    pub window: Vec<u64>,
    /// Minutes the recommendation has stayed below 80% of the request.
    #[serde(default)]
    pub low_for: u32,
    /// Minutes a pod would have had to outgrow `maxAllowed` or its node.
    #[serde(default)]
    pub high_for: u32,
    /// Minutes the load has fitted one divisor fewer.
    #[serde(default)]
    pub fits_for: u32,
    /// The replica steps of the last 24 hours (RFC 3339).
    #[serde(default)]
    pub steps: Vec<String>,
    /// Pods whose resize a node has deferred or refused, already counted and reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_pods: Vec<String>,
    /// Pods whose CPU resize a node deferred or refused and that were patched back to the CPU
    /// they have: not asked to grow again before `until`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldPod>,
    /// The API server refused the last resize (a quota, an admission policy): not asked again
    /// for the same target before ten minutes have passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedResize>,
}

/// A pod the in-place loop does not ask to grow for a while.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldPod {
    /// The pod's name.
    pub pod: String,
    /// The CPU it has (a quantity): it may shrink below it, not grow past it.
    pub cpu: String,
    /// Until when (RFC 3339).
    pub until: String,
}

/// A resize the API server refused.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefusedResize {
    /// The CPU target that was refused (a quantity).
    pub target_cpu: String,
    /// What the API server said.
    pub message: String,
    /// When (RFC 3339).
    pub at: String,
}

/// The children last applied.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedChildren {
    /// sha256 of the applied objects (first 16 hex digits).
    pub hash: String,
    /// When (RFC 3339).
    pub at: String,
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing`, `Degraded`, `ScalingLimited`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// One word.
    pub reason: String,
    /// For humans.
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// The CRD as YAML (what `crdgen` prints).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let header = "# Generated by `cargo run -p sluice-vpa --bin crdgen`: do not edit.\n";
    format!(
        "{header}{}",
        serde_yaml_ng::to_string(&StreamPipeline::crd()).expect("the CRD serializes")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::path as repo;

    #[test]
    fn the_committed_crd_is_current() {
        let committed = std::fs::read_to_string(repo("deploy/crd/streampipelines.sluice.dev.yaml"))
            .unwrap_or_default();
        assert!(
            committed == crd_yaml(),
            "deploy/crd/streampipelines.sluice.dev.yaml is stale: run `cargo run -p sluice-vpa --bin crdgen > deploy/crd/streampipelines.sluice.dev.yaml`"
        );
    }

    #[test]
    fn the_example_validates_against_the_crd_schema() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(StreamPipeline::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let example: serde_json::Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(repo("deploy/examples/streampipeline.yaml")).unwrap(),
        )
        .unwrap();
        let validator = jsonschema::validator_for(schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&example)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        // And it parses into the Rust types.
        let parsed: StreamPipeline = serde_json::from_value(example.clone()).unwrap();
        assert_eq!(parsed.spec.tier, Tier::Tolerant);
        // Quantities are int-or-string and must look like quantities; integers are bounded so
        // a stored object always deserializes; the lists and strings the operator needs are
        // not empty.
        let verdict = |path: &[&str], value: serde_json::Value| {
            let mut sp = example.clone();
            let mut at = &mut sp["spec"];
            for key in &path[..path.len() - 1] {
                at = &mut at[*key];
            }
            at[path[path.len() - 1]] = value;
            validator.iter_errors(&sp).next().is_none()
        };
        let cpu = ["resources", "maxAllowed", "cpu"];
        assert!(verdict(&cpu, 1.into()), "cpu: 1");
        assert!(verdict(&cpu, "1500m".into()));
        assert!(verdict(&cpu, "2.5".into()));
        assert!(!verdict(&cpu, "lots".into()), "cpu: lots");
        assert!(!verdict(&cpu, "-1".into()), "a negative CPU");
        assert!(!verdict(
            &["resources", "initial", "memory"],
            "1 gig".into()
        ));
        assert!(verdict(&["resources", "initial", "memory"], "512Mi".into()));
        assert!(!verdict(&["kafka", "partitions"], 5_000_000_000u64.into()));
        assert!(!verdict(&["kafka", "partitions"], 0.into()));
        assert!(!verdict(&["kafka", "topics"], serde_json::json!([])));
        assert!(!verdict(&["kafka", "topics"], serde_json::json!([""])));
        assert!(!verdict(&["image"], "".into()));
        assert!(!verdict(&["replicas", "max"], 200_000.into()));
        assert!(!verdict(&["drainTimeoutMs"], 0.into()));
        // `cpu: 1` also reads into the Rust types (as "1").
        let mut whole = example.clone();
        whole["spec"]["resources"]["initial"]["cpu"] = 2.into();
        let parsed: StreamPipeline = serde_json::from_value(whole).unwrap();
        assert_eq!(parsed.spec.resources.initial.cpu, "2");
        // The printer columns end with Age; conditions are a map keyed by type.
        let columns = &crd["spec"]["versions"][0]["additionalPrinterColumns"];
        assert_eq!(columns.as_array().unwrap().last().unwrap()["name"], "Age");
        let conditions = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        // A wrong tier is refused by the schema.
        let mut bad = example;
        bad["spec"]["tier"] = "premium".into();
        assert!(validator.iter_errors(&bad).next().is_some());
    }
}
