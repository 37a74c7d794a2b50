//! The children of a `StreamPipeline`, built as plain objects (no client): the ConfigMap with
//! the pipeline spec, the Deployment, the VPA, the PodDisruptionBudget and the metrics Service.
//! The operator applies them by server-side apply; `sluice render` will print the same.

use serde_json::{Value, json};

use sha2::{Digest, Sha256};

use crate::crd::{
    AppliedBy, ControlledValues, MAX_PARTITIONS, PluginUpgrade, Quantities, StreamPipeline, Tier,
};

/// The admin port (metrics and probes) of every pipeline pod.
pub const ADMIN_PORT: u16 = 9464;
/// A pipeline pod's CPU limit over its request (see the Deployment's resources).
pub const CPU_BURST: u64 = 2;
/// The pipeline container's name (the VPA's container policy names it).
pub const CONTAINER: &str = "pipeline";

/// Where a provider puts on-demand and spot nodes (the overlay's `sluice-placement` ConfigMap).
///
/// Each side is a list of node selector terms: a node is on that side when it matches any term,
/// and matches a term when it matches every expression in it (Kubernetes' `nodeSelectorTerms`).
/// On GKE, for example, on-demand is one term (not spot AND not preemptible) and spot is two
/// (spot OR preemptible).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Node selector terms matching on-demand nodes.
    pub on_demand: Vec<Vec<Value>>,
    /// Node selector terms matching spot nodes.
    pub spot: Vec<Vec<Value>>,
    /// The tolerations spot nodes need, if they are tainted.
    pub spot_tolerations: Vec<Value>,
    /// How long a spot node's interruption notice is (s): a `tolerant` pod's drain and grace
    /// period are capped to fit in it.
    pub interruption_notice_s: Option<u64>,
}

impl Placement {
    /// The provider-neutral labels of `deploy/base` (`sluice.dev/capacity-type`).
    pub fn neutral() -> Placement {
        Placement {
            on_demand: vec![vec![
                json!({"key": "sluice.dev/capacity-type", "operator": "In", "values": ["on-demand"]}),
            ]],
            spot: vec![vec![
                json!({"key": "sluice.dev/capacity-type", "operator": "In", "values": ["spot"]}),
            ]],
            spot_tolerations: Vec::new(),
            interruption_notice_s: None,
        }
    }

    /// From a `sluice-placement` ConfigMap (as a provider overlay builds it, or as
    /// `kubectl get configmap sluice-placement -o yaml` prints it). A selector is JSON: one match
    /// expression, a list of them (all must match), or a list of such lists (any may match).
    pub fn from_config_map(config_map: &Value) -> Result<Placement, String> {
        let data = &config_map["data"];
        let field = |key: &str| -> Result<Option<Value>, String> {
            match data[key].as_str() {
                None | Some("") => Ok(None),
                Some(text) => serde_json::from_str(text)
                    .map(Some)
                    .map_err(|e| format!("data.{key}: not JSON: {e}")),
            }
        };
        let selector = |key: &str| -> Result<Vec<Vec<Value>>, String> {
            let value = field(key)?.ok_or_else(|| format!("data.{key}: missing"))?;
            selector_terms(&value).map_err(|e| format!("data.{key}: {e}"))
        };
        let spot_tolerations = match field("spot-toleration")? {
            None => Vec::new(),
            Some(Value::Array(list)) => list,
            Some(one) => vec![one],
        };
        if let Some(bad) = spot_tolerations.iter().find(|t| !t.is_object()) {
            return Err(format!(
                "data.spot-toleration: {bad} is not a toleration object"
            ));
        }
        Ok(Placement {
            on_demand: selector("on-demand-selector")?,
            spot: selector("spot-selector")?,
            spot_tolerations,
            interruption_notice_s: match field("interruption-notice-seconds")? {
                None => None,
                Some(n) => Some(
                    n.as_u64()
                        .filter(|n| *n > EXIT_MARGIN_S)
                        .ok_or("data.interruption-notice-seconds: must be whole seconds above 5")?,
                ),
            },
        })
    }

    /// `nodeSelectorTerms` requiring one side.
    fn required(terms: &[Vec<Value>]) -> Value {
        let terms: Vec<Value> = terms
            .iter()
            .map(|t| json!({"matchExpressions": t}))
            .collect();
        json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}})
    }

    /// Preferring one side: a preference per term (a node matching any of them scores).
    fn preferred(terms: &[Vec<Value>]) -> Value {
        let preferences: Vec<Value> = terms
            .iter()
            .map(|t| json!({"weight": 100, "preference": {"matchExpressions": t}}))
            .collect();
        json!({"preferredDuringSchedulingIgnoredDuringExecution": preferences})
    }
}

/// One match expression, a list of them (one term) or a list of lists (several terms).
fn selector_terms(value: &Value) -> Result<Vec<Vec<Value>>, String> {
    let expression = |v: &Value| -> Result<Value, String> {
        match v {
            Value::Object(m) if m.get("key").is_some_and(Value::is_string) => Ok(v.clone()),
            other => Err(format!(
                "{other} is not a match expression ({{\"key\": ..., \"operator\": ...}})"
            )),
        }
    };
    let term = |v: &Value| -> Result<Vec<Value>, String> {
        match v {
            Value::Array(list) if !list.is_empty() => list.iter().map(expression).collect(),
            Value::Array(_) => Err("an empty list of match expressions matches nothing".into()),
            one => Ok(vec![expression(one)?]),
        }
    };
    match value {
        Value::Array(list) if list.first().is_some_and(Value::is_array) => {
            list.iter().map(term).collect()
        }
        other => Ok(vec![term(other)?]),
    }
}

/// The replicas a pipeline starts with: `fixed`, else the smallest divisor of the partitions
/// within `[min, max]` (none: an error naming the fields).
pub fn initial_replicas(sp: &StreamPipeline) -> Result<u32, String> {
    let partitions = sp.spec.kafka.partitions;
    let (min, max) = replica_range(sp);
    crate::policy::aligned_replicas(partitions, min, max)
        .first()
        .copied()
        .ok_or_else(|| {
            format!(
                "spec.replicas: no replica count in [{min}, {max}] divides spec.kafka.partitions ({partitions}): widen the range or change the partitions"
            )
        })
}

/// The replica range a spec allows: `fixed`, else `min` (default 1) to `max` (default the
/// partitions).
fn replica_range(sp: &StreamPipeline) -> (u32, u32) {
    let r = &sp.spec.replicas;
    match r.fixed {
        Some(f) => (f, f),
        None => (
            r.min.unwrap_or(1),
            r.max.unwrap_or(sp.spec.kafka.partitions),
        ),
    }
}

/// CPU quantity (`500m`, `2`, `1.5`, and the metrics API's `250000000n` / `1500u`) in
/// millicores.
pub fn cpu_millis(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let (number, per_core) = match q.as_bytes().last() {
        Some(b'm') => (&q[..q.len() - 1], 1e3),
        Some(b'u') => (&q[..q.len() - 1], 1e6),
        Some(b'n') => (&q[..q.len() - 1], 1e9),
        _ => (q, 1.0),
    };
    let cores = number
        .parse::<f64>()
        .ok()
        .filter(|c| c.is_finite() && *c >= 0.0)?
        / per_core;
    Some((cores * 1000.0).round() as u64)
}

/// Millicores as a CPU quantity (`2`, `1500m`).
pub fn millis_quantity(m: u64) -> String {
    if m % 1000 == 0 {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}

/// Memory quantity (`512Mi`, `1G`, `1073741824`) in bytes.
pub fn memory_bytes(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let n: f64 = number.parse().ok()?;
    Some((n * factor).round() as u64)
}

/// The CPU of `quantity`, raised to at least `min_cpus` whole CPUs.
pub fn at_least_cpus(quantity: &str, min_cpus: u32) -> String {
    let floor = u64::from(min_cpus) * 1000;
    match cpu_millis(quantity) {
        Some(m) if m >= floor => quantity.to_owned(),
        _ => millis_quantity(floor),
    }
}

/// The replica bounds and the caps a valid spec gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The fewest replicas.
    pub min: u32,
    /// The most replicas.
    pub max: u32,
    /// The replicas a new pipeline starts with.
    pub initial: u32,
    /// `maxAllowed.cpu` in millicores.
    pub max_allowed: u64,
}

/// Every check a StreamPipeline gets before anything is applied, the operator's (which marks a
/// failing one `Degraded/InvalidSpec`) and `sluice render`'s alike: what the CRD schema says
/// (for a manifest that never met an API server), what it cannot (quantities compare, a divisor
/// fits), and `spec.pipeline` through the runtime's own parser. The error names the field and
/// says what to do.
pub fn check(sp: &StreamPipeline) -> Result<Bounds, String> {
    let spec = &sp.spec;
    if spec.image.trim().is_empty() {
        return Err("spec.image: empty: name the image holding sluice and the plugin".into());
    }
    if spec.plugin.path.trim().is_empty() {
        return Err("spec.plugin.path: empty: give the plugin's path inside the image".into());
    }
    if spec.plugin.upgrade == PluginUpgrade::InPlace && spec.plugin.sha256.is_none() {
        return Err("spec.plugin.upgrade: in-place needs spec.plugin.sha256: a pod swaps only a pinned library (`sha256sum` of the .so in the image)".into());
    }
    if spec.kafka.topics.is_empty() || spec.kafka.topics.iter().any(|t| t.trim().is_empty()) {
        return Err("spec.kafka.topics: list at least one topic, none empty".into());
    }
    if spec.kafka.group.trim().is_empty() {
        return Err("spec.kafka.group: empty: give the consumer group id".into());
    }
    if !(1..=MAX_PARTITIONS).contains(&spec.kafka.partitions) {
        return Err(format!(
            "spec.kafka.partitions: {} is not in [1, {MAX_PARTITIONS}]",
            spec.kafka.partitions
        ));
    }
    check_authentication(&spec.kafka)?;
    let res = &spec.resources;
    let mut cpus = Vec::new();
    let mut memories = Vec::new();
    for (field, q) in [
        ("initial", &res.initial),
        ("minAllowed", &res.min_allowed),
        ("maxAllowed", &res.max_allowed),
    ] {
        cpus.push(cpu_millis(&q.cpu).ok_or_else(|| {
            format!(
                "spec.resources.{field}.cpu: {:?} is not a CPU quantity (e.g. 500m, 2)",
                q.cpu
            )
        })?);
        memories.push(memory_bytes(&q.memory).ok_or_else(|| {
            format!(
                "spec.resources.{field}.memory: {:?} is not a memory quantity (e.g. 512Mi, 2Gi)",
                q.memory
            )
        })?);
    }
    let max_allowed = cpus[2];
    if cpus[1] > max_allowed {
        return Err(format!(
            "spec.resources: minAllowed.cpu {} is above maxAllowed.cpu {}: swap or widen them",
            res.min_allowed.cpu, res.max_allowed.cpu
        ));
    }
    if memories[1] > memories[2] {
        return Err(format!(
            "spec.resources: minAllowed.memory {} is above maxAllowed.memory {}: swap or widen them",
            res.min_allowed.memory, res.max_allowed.memory
        ));
    }
    if u64::from(res.min_cpus) * 1000 > max_allowed {
        return Err(format!(
            "spec.resources.minCpus: {} CPUs is above maxAllowed.cpu {}: lower minCpus or raise maxAllowed",
            res.min_cpus, res.max_allowed.cpu
        ));
    }
    let r = &spec.replicas;
    if r.fixed.is_some() && (r.min.is_some() || r.max.is_some()) {
        return Err("spec.replicas: fixed excludes min and max: set one or the other".into());
    }
    let (min, max) = replica_range(sp);
    if min == 0 {
        return Err("spec.replicas: at least 1 (use spec.suspend to stop a pipeline)".into());
    }
    if min > max {
        return Err(format!(
            "spec.replicas: min {min} is above max {max}: swap them"
        ));
    }
    let initial = initial_replicas(sp)?;
    check_pipeline(sp)?;
    Ok(Bounds {
        min,
        max,
        initial,
        max_allowed,
    })
}

/// Everything a StreamPipeline owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// `pipeline.yaml` for the runtime.
    pub config_map: Value,
    /// The pods.
    pub deployment: Value,
    /// The Vertical Pod Autoscaler targeting the Deployment.
    pub vpa: Value,
    /// At most one pod down at a time by voluntary disruption.
    pub pdb: Value,
    /// The admin port, for Prometheus.
    pub service: Value,
    /// Ingress only to the admin port.
    pub network_policy: Value,
}

impl Children {
    /// In apply order.
    pub fn all(&self) -> [&Value; 6] {
        [
            &self.config_map,
            &self.deployment,
            &self.vpa,
            &self.pdb,
            &self.service,
            &self.network_policy,
        ]
    }
}

/// Seconds a pod keeps after its drain for the final commit and exit.
const EXIT_MARGIN_S: u64 = 5;

/// The drain timeout (ms) and termination grace period (s) of `sp`'s pods: the drain plus a
/// margin, except that a `tolerant` pod on spot nodes with a known interruption notice gets at
/// most the notice, its drain shortened to fit (the node goes away at the end of it anyway).
pub fn drain_and_grace(sp: &StreamPipeline, placement: &Placement) -> (u64, u64) {
    let drain_ms = sp.spec.drain_timeout_ms;
    let wanted_s = drain_ms.div_ceil(1000) + 2 * EXIT_MARGIN_S;
    match (sp.spec.tier, placement.interruption_notice_s) {
        (Tier::Tolerant, Some(notice)) if wanted_s > notice => {
            (drain_ms.min((notice - EXIT_MARGIN_S) * 1000), notice)
        }
        _ => (drain_ms, wanted_s),
    }
}

/// Where a stateful pipeline's pod keeps its state stores (an `emptyDir`).
pub const STATE_DIR: &str = "/var/lib/sluice/state";

/// Where `plugin.upgrade: in-place` pods mount the `sluice-upgrade-token` Secret.
pub const UPGRADE_TOKEN_DIR: &str = "/var/run/sluice/upgrade-token";

/// Where the pods mount the Secrets of `spec.kafka.authentication` and `spec.kafka.tls`, one
/// directory per Secret reference.
pub const KAFKA_SECRETS_DIR: &str = "/var/run/secrets/sluice/kafka";

/// `spec.kafka.authentication` and `spec.kafka.tls` hold together: each type has the
/// references it needs and no other.
fn check_authentication(kafka: &crate::crd::KafkaSpec) -> Result<(), String> {
    use crate::crd::AuthenticationType as T;
    let Some(auth) = &kafka.authentication else {
        return Ok(());
    };
    let field = "spec.kafka.authentication";
    let has = |present: bool, what: &str, kind: &str| {
        if present {
            Ok(())
        } else {
            Err(format!("{field}: type {kind} needs {what}"))
        }
    };
    let not = |present: bool, what: &str, kind: &str| {
        if present {
            Err(format!(
                "{field}.{what}: not used with type {kind}: remove it"
            ))
        } else {
            Ok(())
        }
    };
    let oauth = auth.token_endpoint_uri.is_some()
        || auth.client_id.is_some()
        || auth.client_secret.is_some();
    match auth.kind {
        T::Tls => {
            has(
                auth.certificate_and_key.is_some(),
                "certificateAndKey (the Secret with the client certificate and key)",
                "tls",
            )?;
            not(auth.password_secret.is_some(), "passwordSecret", "tls")?;
            not(
                auth.username.is_some(),
                "username",
                "tls (the certificate's subject is the principal)",
            )?;
            not(oauth, "tokenEndpointUri", "tls")?;
        }
        T::ScramSha512 | T::ScramSha256 | T::Plain => {
            let kind = match auth.kind {
                T::ScramSha512 => "scram-sha-512",
                T::ScramSha256 => "scram-sha-256",
                _ => "plain",
            };
            has(auth.username.is_some(), "username", kind)?;
            has(
                auth.password_secret.is_some(),
                "passwordSecret (the Secret and key of the password)",
                kind,
            )?;
            not(
                auth.certificate_and_key.is_some(),
                "certificateAndKey",
                kind,
            )?;
            not(oauth, "tokenEndpointUri", kind)?;
        }
        T::Oauth => {
            has(
                auth.token_endpoint_uri.is_some()
                    && auth.client_id.is_some()
                    && auth.client_secret.is_some(),
                "tokenEndpointUri, clientId and clientSecret",
                "oauth",
            )?;
            not(
                auth.username.is_some() || auth.password_secret.is_some(),
                "passwordSecret",
                "oauth",
            )?;
            not(
                auth.certificate_and_key.is_some(),
                "certificateAndKey",
                "oauth",
            )?;
        }
    }
    Ok(())
}

/// A Secret mounted for Kafka: volume `name` at `KAFKA_SECRETS_DIR/<name>`, Secret `secret`'s
/// `items` (key, file name).
struct SecretVolume {
    name: &'static str,
    secret: String,
    items: Vec<(String, &'static str)>,
}

/// The Secret volumes of `spec.kafka.authentication` and `spec.kafka.tls`.
fn kafka_secret_volumes(kafka: &crate::crd::KafkaSpec) -> Vec<SecretVolume> {
    let mut volumes = Vec::new();
    let mut add = |name, secret: &str, items| {
        volumes.push(SecretVolume {
            name,
            secret: secret.to_owned(),
            items,
        })
    };
    if let Some(auth) = &kafka.authentication {
        if let Some(p) = &auth.password_secret {
            add(
                "kafka-password",
                &p.secret_name,
                vec![(p.password.clone(), "password")],
            );
        }
        if let Some(c) = &auth.certificate_and_key {
            add(
                "kafka-client-certificate",
                &c.secret_name,
                vec![
                    (c.certificate.clone(), "tls.crt"),
                    (c.key.clone(), "tls.key"),
                ],
            );
        }
        if let Some(secret) = &auth.client_secret {
            add(
                "kafka-oauth",
                &secret.name,
                vec![(secret.key.clone(), "client-secret")],
            );
        }
    }
    if let Some(ca) = kafka
        .tls
        .as_ref()
        .and_then(|t| t.trusted_certificates.first())
    {
        add(
            "kafka-ca",
            &ca.secret_name,
            vec![(ca.certificate.clone(), "ca.crt")],
        );
    }
    volumes
}

/// `source.kafka.security` as the pod reads it: the mounted files' paths, no secret.
fn kafka_security(kafka: &crate::crd::KafkaSpec) -> Option<Value> {
    use crate::crd::AuthenticationType as T;
    let file = |volume: &str, name: &str| format!("{KAFKA_SECRETS_DIR}/{volume}/{name}");
    let tls = kafka.tls.is_some()
        || kafka
            .authentication
            .as_ref()
            .is_some_and(|a| a.kind == T::Tls);
    let sasl = kafka
        .authentication
        .as_ref()
        .filter(|a| a.kind != T::Tls)
        .map(|auth| {
            let mechanism = match auth.kind {
                T::ScramSha512 => "SCRAM-SHA-512",
                T::ScramSha256 => "SCRAM-SHA-256",
                T::Plain => "PLAIN",
                T::Oauth | T::Tls => "OAUTHBEARER",
            };
            let mut sasl = json!({"mechanism": mechanism});
            if auth.kind == T::Oauth {
                let mut oauth = json!({
                    "token-endpoint-url": auth.token_endpoint_uri,
                    "client-id": auth.client_id,
                    "client-secret-file": file("kafka-oauth", "client-secret"),
                });
                if let Some(scope) = &auth.scope {
                    oauth["scope"] = json!(scope);
                }
                sasl["oauthbearer"] = oauth;
            } else {
                sasl["username"] = json!(auth.username);
                sasl["password-file"] = json!(file("kafka-password", "password"));
            }
            sasl
        });
    if !tls && sasl.is_none() {
        return None;
    }
    let protocol = match (tls, sasl.is_some()) {
        (true, true) => "sasl-ssl",
        (true, false) => "ssl",
        (false, _) => "sasl-plaintext",
    };
    let mut security = json!({"protocol": protocol});
    if let Some(sasl) = sasl {
        security["sasl"] = sasl;
    }
    if tls {
        let mut t = json!({});
        if kafka
            .tls
            .as_ref()
            .is_some_and(|t| !t.trusted_certificates.is_empty())
        {
            t["ca-file"] = json!(file("kafka-ca", "ca.crt"));
        }
        if kafka
            .authentication
            .as_ref()
            .is_some_and(|a| a.certificate_and_key.is_some())
        {
            t["certificate-file"] = json!(file("kafka-client-certificate", "tls.crt"));
            t["key-file"] = json!(file("kafka-client-certificate", "tls.key"));
        }
        security["tls"] = t;
    }
    Some(security)
}

/// The pipeline spec the runtime reads: `spec.pipeline` plus what the resource's own fields say
/// (the drain timeout as `drain_and_grace` gives it).
pub fn pipeline_yaml(sp: &StreamPipeline, drain_ms: u64) -> String {
    let name = sp.metadata.name.clone().unwrap_or_default();
    let mut spec = match &sp.spec.pipeline {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    spec.insert("name".into(), json!(name));
    let mut plugin = json!({"path": sp.spec.plugin.path});
    if let Some(sha) = &sp.spec.plugin.sha256 {
        plugin["sha256"] = json!(sha);
    }
    if let Some(config) = &sp.spec.plugin.config {
        plugin["config"] = config.clone();
    }
    spec.insert("plugin".into(), plugin);
    let mut kafka = json!({
        "bootstrap-servers": "${KAFKA_BOOTSTRAP_SERVERS}",
        "topics": sp.spec.kafka.topics,
        "group-id": sp.spec.kafka.group,
        "drain-timeout-ms": drain_ms,
    });
    if sp.spec.kafka.format != crate::crd::ValueFormat::Raw {
        kafka["format"] = json!(sp.spec.kafka.format.name());
    }
    if let Some(security) = kafka_security(&sp.spec.kafka) {
        kafka["security"] = security;
    }
    if !sp.spec.kafka.properties.is_empty() {
        kafka["properties"] = json!(sp.spec.kafka.properties);
    }
    spec.insert("source".into(), json!({ "kafka": kafka }));
    spec.insert(
        "admin".into(),
        json!({"listen": format!("0.0.0.0:{ADMIN_PORT}")}),
    );
    serde_yaml_ng::to_string(&Value::Object(spec)).expect("JSON values serialize as YAML")
}

/// Checks `pipeline.yaml` as the runtime will read it in the pod (the runtime's own parser and
/// checks, `sluice-spec`), with the environment the pod gets: the bootstrap servers from the
/// Secret (stood in here) and nothing else. The error names the field under `spec.pipeline`.
pub fn check_pipeline(sp: &StreamPipeline) -> Result<(), String> {
    let text = pipeline_yaml(sp, sp.spec.drain_timeout_ms);
    let env = |name: &str| match name {
        "KAFKA_BOOTSTRAP_SERVERS" => Some("kafka.invalid:9092".to_owned()),
        "SLUICE_LOG_FORMAT" => Some("json".to_owned()),
        _ => None,
    };
    let origin = std::path::Path::new("spec.pipeline");
    sluice_spec::PipelineSpec::parse(&text, origin, env)
        .map(|_| ())
        .map_err(|e| match e {
            // Lines and columns would point into the generated pipeline.yaml: leave them out.
            sluice_spec::ConfigError::Parse { message, .. } => format!("spec.pipeline: {message}"),
            sluice_spec::ConfigError::MissingVar { var, .. } => format!(
                "spec.pipeline: `${{{var}}}` is not set in the pod (it gets KAFKA_BOOTSTRAP_SERVERS only): write `${{{var}:-default}}` or put the value in the spec"
            ),
            other => other.to_string(),
        })
}

/// The children of `sp` running `replicas` pods with the initial requests, placed per
/// `placement` (what `sluice render` prints and a new pipeline starts with).
pub fn children(sp: &StreamPipeline, replicas: u32, placement: &Placement) -> Children {
    children_sized(sp, replicas, &sp.spec.resources.initial, placement)
}

/// The children of `sp` running `replicas` pods that request `requests` (raised to
/// `minCpus`), placed per `placement`.
pub fn children_sized(
    sp: &StreamPipeline,
    replicas: u32,
    requests: &Quantities,
    placement: &Placement,
) -> Children {
    let name = sp.metadata.name.clone().unwrap_or_default();
    let namespace = sp.metadata.namespace.clone().unwrap_or_default();
    let labels = json!({
        "app.kubernetes.io/name": "sluice-pipeline",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "sluice-vpa",
        "sluice.dev/tier": tier_name(sp.spec.tier),
    });
    let selector = json!({
        "app.kubernetes.io/name": "sluice-pipeline",
        "app.kubernetes.io/instance": name,
    });
    let meta =
        |kind_name: &str| json!({"name": kind_name, "namespace": namespace, "labels": labels});
    let res = &sp.spec.resources;
    let replicas = if sp.spec.suspend { 0 } else { replicas };
    // The drain runs within the grace period, with a margin for the final commit and exit.
    let (drain_ms, grace_s) = drain_and_grace(sp, placement);

    let pipeline_yaml = pipeline_yaml(sp, drain_ms);
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(&name),
        "data": {"pipeline.yaml": pipeline_yaml},
    });
    // The runtime reads its spec once, at start: a changed spec must be a rollout, so its hash
    // is on the pod template (and so is the restart nonce, when set). With `plugin.upgrade:
    // in-place` the plugin's path and sha256 stay out of it (the operator swaps the library in
    // the running pods; a pod that starts reads the new spec), unless an upgrade had to roll.
    let in_place = sp.spec.plugin.upgrade == PluginUpgrade::InPlace;
    let hashed = if in_place {
        let mut without = sp.clone();
        without.spec.plugin.path = String::new();
        without.spec.plugin.sha256 = sp
            .status
            .as_ref()
            .and_then(|s| s.plugin_upgrade.as_ref())
            .and_then(|u| u.rolled.clone());
        self::pipeline_yaml(&without, drain_ms)
    } else {
        pipeline_yaml.clone()
    };
    let mut pod_annotations = json!({CONFIG_HASH: config_hash(&hashed)});
    if let Some(nonce) = sp.spec.restart_nonce {
        pod_annotations[RESTART_NONCE] = json!(nonce.to_string());
    }

    let affinity = match sp.spec.tier {
        Tier::Critical => json!({"nodeAffinity": Placement::required(&placement.on_demand)}),
        Tier::Standard => json!({"nodeAffinity": Placement::preferred(&placement.on_demand)}),
        Tier::Tolerant => json!({"nodeAffinity": Placement::required(&placement.spot)}),
    };
    let tolerations: Vec<Value> = match sp.spec.tier {
        Tier::Tolerant => placement.spot_tolerations.clone(),
        _ => Vec::new(),
    };
    // One spot reclaim or node drain should not take every replica: spread over zones and
    // hosts, as far as the nodes allow (ScheduleAnyway: never leave a pod pending for it). Only
    // pods of the same rollout count (pod-template-hash), so a rolling update spreads too.
    let spread = |topology_key: &str| {
        json!({"maxSkew": 1, "topologyKey": topology_key, "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": selector}, "matchLabelKeys": ["pod-template-hash"]})
    };
    let probe = |path: &str, period: u32| json!({"httpGet": {"path": path, "port": "admin"}, "periodSeconds": period, "failureThreshold": 3});
    let cpu = at_least_cpus(&requests.cpu, res.min_cpus);
    let cpu_limit = millis_quantity(cpu_millis(&cpu).unwrap_or(1000) * CPU_BURST);
    let memory_limit = memory_bytes(&requests.memory).map_or_else(
        || requests.memory.clone(),
        |b| bytes_quantity(b * MEMORY_BURST),
    );
    // State stores need a writable directory (the root filesystem is read-only): a volume of
    // the pod's own, as their changelogs are the source of truth and a new pod restores.
    let stateful = sp.spec.pipeline.get("state").is_some_and(|s| !s.is_null());
    let mut env = vec![
        json!({"name": "KAFKA_BOOTSTRAP_SERVERS", "valueFrom": {"secretKeyRef": {
            "name": sp.spec.kafka.bootstrap_servers.name,
            "key": sp.spec.kafka.bootstrap_servers.key}}}),
        json!({"name": "SLUICE_LOG_FORMAT", "value": "json"}),
    ];
    let mut mounts = vec![json!({"name": "spec", "mountPath": "/etc/sluice", "readOnly": true})];
    let mut volumes = vec![json!({"name": "spec", "configMap": {"name": name}})];
    if in_place {
        // The admin endpoint's bearer token for `POST /plugin`, a mounted Secret; without it
        // the pod starts, refuses upgrades, and the operator rolls instead.
        env.push(json!({"name": "SLUICE_ADMIN_TOKEN_FILE", "value": format!("{UPGRADE_TOKEN_DIR}/token")}));
        mounts.push(
            json!({"name": "upgrade-token", "mountPath": UPGRADE_TOKEN_DIR, "readOnly": true}),
        );
        volumes.push(json!({"name": "upgrade-token", "secret": {
            "secretName": crate::upgrade::TOKEN_SECRET, "optional": true}}));
    }
    // Kafka credentials: Secrets mounted read-only as files (never environment variables, never
    // the ConfigMap), readable by the pod's group only.
    for SecretVolume {
        name: volume,
        secret,
        items,
    } in kafka_secret_volumes(&sp.spec.kafka)
    {
        mounts.push(json!({"name": volume, "mountPath": format!("{KAFKA_SECRETS_DIR}/{volume}"), "readOnly": true}));
        let items: Vec<Value> = items
            .iter()
            .map(|(key, path)| json!({"key": key, "path": path}))
            .collect();
        volumes.push(json!({"name": volume, "secret": {"secretName": secret, "items": items, "defaultMode": 0o440}}));
    }
    if stateful {
        env.push(json!({"name": "SLUICE_STATE_DIR", "value": STATE_DIR}));
        mounts.push(json!({"name": "state", "mountPath": STATE_DIR}));
        volumes.push(json!({"name": "state", "emptyDir": {}}));
    }
    let mut deployment_meta = meta(&name);
    deployment_meta["annotations"] = json!({
        "checkov.io/skip1": "CKV_K8S_35=the bootstrap servers reach the runtime's ${VAR} interpolation through the environment; credentials belong in producer/consumer properties-from-env",
    });
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": deployment_meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            // No surge: an extra pod would join the group and trigger a rebalance for nothing.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations},
                "spec": {
                    "priorityClassName": format!("sluice-{}", tier_name(sp.spec.tier)),
                    "affinity": affinity,
                    "tolerations": tolerations,
                    "topologySpreadConstraints": [
                        spread("topology.kubernetes.io/zone"),
                        spread("kubernetes.io/hostname"),
                    ],
                    "terminationGracePeriodSeconds": grace_s,
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                        // Mounted Secrets (mode 0440) belong to this group.
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": CONTAINER,
                        "image": sp.spec.image,
                        "imagePullPolicy": "Always",
                        "args": ["run", "-f", "/etc/sluice/pipeline.yaml"],
                        "env": env,
                        "ports": [{"name": "admin", "containerPort": ADMIN_PORT}],
                        "readinessProbe": probe("/readyz", 5),
                        "livenessProbe": probe("/healthz", 10),
                        // CPU limit = CPU_BURST x request: the VPA only sees the CPU a pod uses,
                        // so a pod capped at its request would hide its real demand and the
                        // recommendation would creep up 15% at a time (the capacity simulation
                        // shows it). The runtime sizes its workers from the quota (whole CPUs,
                        // requests are whole CPUs), and the VPA keeps the ratio. Memory limit =
                        // MEMORY_BURST x request, and the VPA's memory floor is the initial
                        // request / MEMORY_BURST: whatever the VPA recommends, the limit never
                        // drops below the memory the pod started with (see `memory_floor`).
                        "resources": {
                            "requests": {"cpu": cpu, "memory": requests.memory},
                            "limits": {"cpu": cpu_limit, "memory": memory_limit},
                        },
                        // The runtime re-reads its CPU quota while running and resizes its worker
                        // pool: an in-place resize (the VPA's InPlaceOrRecreate, the operator's
                        // fast loop) restarts nothing, for CPU as for memory.
                        "resizePolicy": [
                            {"resourceName": "cpu", "restartPolicy": "NotRequired"},
                            {"resourceName": "memory", "restartPolicy": "NotRequired"},
                        ],
                        "securityContext": {
                            "allowPrivilegeEscalation": false, "privileged": false,
                            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    });

    let (update_mode, resources) = match res.applied_by {
        AppliedBy::Vpa => ("InPlaceOrRecreate", json!(["cpu", "memory"])),
        // The VPA only recommends; the operator applies requests in its own rollouts.
        AppliedBy::Operator => ("Off", json!(["cpu", "memory"])),
        // CPU is the operator's fast loop's (minutes, in place); memory stays the VPA's (a
        // high percentile of days suits memory, which must never be short).
        AppliedBy::InPlace => ("InPlaceOrRecreate", json!(["memory"])),
    };
    let vpa = json!({
        "apiVersion": "autoscaling.k8s.io/v1",
        "kind": "VerticalPodAutoscaler",
        "metadata": meta(&name),
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "updatePolicy": {"updateMode": update_mode},
            "resourcePolicy": {"containerPolicies": [{
                "containerName": CONTAINER,
                "minAllowed": {"cpu": at_least_cpus(&res.min_allowed.cpu, res.min_cpus), "memory": memory_floor(sp)},
                "maxAllowed": {"cpu": res.max_allowed.cpu, "memory": res.max_allowed.memory},
                "controlledResources": resources,
                "controlledValues": match res.controlled_values {
                    ControlledValues::RequestsOnly => "RequestsOnly",
                    ControlledValues::RequestsAndLimits => "RequestsAndLimits",
                },
            }]},
        },
    });
    let pdb = json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(&name),
        // Readiness includes sink reachability: in a Kafka outage every pod is unready, and a
        // budget counting unready pods would block every node drain until Kafka is back.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(&format!("{name}-metrics")),
        "spec": {
            "selector": selector,
            "ports": [{"name": "admin", "port": ADMIN_PORT, "targetPort": "admin"}],
        },
    });
    let network_policy = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(&name),
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": ADMIN_PORT}]}],
        },
    });
    Children {
        config_map,
        deployment,
        vpa,
        pdb,
        service,
        network_policy,
    }
}

/// The pod template annotation holding the hash of the pipeline spec the pods run.
pub const CONFIG_HASH: &str = "sluice.dev/config-hash";
/// The pod template annotation holding `spec.restartNonce`.
pub const RESTART_NONCE: &str = "sluice.dev/restart-nonce";
/// A pipeline pod's memory limit over its request.
pub const MEMORY_BURST: u64 = 2;

/// sha256 of the pipeline spec, first 16 hex digits.
pub fn config_hash(pipeline_yaml: &str) -> String {
    short_sha256([pipeline_yaml.as_bytes()])
}

/// sha256 of `parts` one after the other, first 16 hex digits (the pod template's config hash,
/// and the operator's hash of the children it applied).
pub fn short_sha256<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut sha = Sha256::new();
    for part in parts {
        sha.update(part);
    }
    sha.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The VPA's memory floor: `minAllowed.memory`, raised to `initial.memory / MEMORY_BURST`. The
/// VPA keeps the limit at MEMORY_BURST x its recommendation, so the limit never falls below the
/// initial request: with limit == request and a floor under the initial request, the VPA could
/// halve the limit of a pod that needs what it started with, and OOM-kill it in a loop.
pub fn memory_floor(sp: &StreamPipeline) -> String {
    let res = &sp.spec.resources;
    match (
        memory_bytes(&res.min_allowed.memory),
        memory_bytes(&res.initial.memory),
    ) {
        (Some(min), Some(initial)) if min < initial.div_ceil(MEMORY_BURST) => {
            bytes_quantity(initial.div_ceil(MEMORY_BURST))
        }
        _ => res.min_allowed.memory.clone(),
    }
}

/// Bytes as a memory quantity (`1Gi`, `512Mi`, or plain bytes).
pub fn bytes_quantity(bytes: u64) -> String {
    for (suffix, unit) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Critical => "critical",
        Tier::Standard => "standard",
        Tier::Tolerant => "tolerant",
    }
}

/// What `sluice render` prints for `sp`: the same checks as the operator (`check`), then its
/// children at the initial replica count, placed per `placement`.
pub fn render(sp: &StreamPipeline, placement: &Placement) -> Result<String, String> {
    let bounds = check(sp)?;
    Ok(to_yaml(&children(sp, bounds.initial, placement).all()))
}

/// Objects as a multi-document YAML that YAML 1.1 tools read the same as YAML 1.2 ones: a
/// string a 1.1 parser would take for something else (`Off`, `yes`, `~`, `0755`) is quoted,
/// and multi-line strings are literal blocks.
pub fn to_yaml(objects: &[&Value]) -> String {
    fn yaml(v: &Value) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml;
        match v {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Boolean(*b),
            Value::Number(n) => n
                .as_i64()
                .map_or_else(|| Yaml::Real(n.to_string()), Yaml::Integer),
            Value::String(s) => Yaml::String(s.clone()),
            Value::Array(list) => Yaml::Array(list.iter().map(yaml).collect()),
            Value::Object(map) => Yaml::Hash(
                map.iter()
                    .map(|(k, v)| (Yaml::String(k.clone()), yaml(v)))
                    .collect(),
            ),
        }
    }
    let mut out = String::new();
    for object in objects {
        let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
        emitter.multiline_strings(true);
        emitter
            .dump(&yaml(object))
            .expect("a JSON value emits as YAML");
        out.push('\n');
    }
    out
}

/// The example pipeline's children as a multi-document YAML (committed in `deploy/examples/`).
pub fn example_yaml(sp: &StreamPipeline, replicas: u32) -> String {
    let children = children(sp, replicas, &Placement::neutral());
    let header = "# Generated by `cargo run -p sluice-vpa --bin render-example`: what the operator applies\n# for deploy/examples/streampipeline.yaml at 4 replicas. Do not edit.\n";
    format!("{header}{}", to_yaml(&children.all()))
}

/// The body of a pod `resize` subresource patch that sets the pipeline container's CPU request
/// to `millis` in place, with its limit at `CPU_BURST` times that (as the Deployment has it).
/// With `resizePolicy: NotRequired` nothing restarts: the runtime follows its new quota.
pub fn cpu_resize_patch(millis: u64) -> Value {
    json!({"spec": {"containers": [{
        "name": CONTAINER,
        "resources": {
            "requests": {"cpu": millis_quantity(millis)},
            "limits": {"cpu": millis_quantity(millis * CPU_BURST)},
        },
    }]}})
}

/// Where a pod's last in-place resize stands, from its status conditions (Kubernetes 1.33+).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ResizeState {
    /// No resize pending or in progress: what was asked is what the pod has.
    #[default]
    Settled,
    /// The kubelet is applying it.
    InProgress,
    /// The node cannot take it now (`PodResizePending`, reason `Deferred`): it may later.
    Deferred(String),
    /// The node can never take it (`PodResizePending`, reason `Infeasible`).
    Infeasible(String),
    /// The kubelet tried and failed (`PodResizeInProgress`, reason `Error`); it retries by itself,
    /// and nothing waits on it.
    Failed(String),
}

/// Reads a pod's resize conditions: `PodResizePending` (reason `Deferred` or `Infeasible`) and
/// `PodResizeInProgress`.
pub fn resize_state(pod: &Value) -> ResizeState {
    let conditions = pod["status"]["conditions"].as_array();
    let find = |kind: &str| {
        conditions?
            .iter()
            .find(|c| c["type"] == kind && c["status"] == "True")
    };
    if let Some(pending) = find("PodResizePending") {
        let message = pending["message"].as_str().unwrap_or_default().to_owned();
        return match pending["reason"].as_str() {
            Some("Infeasible") => ResizeState::Infeasible(message),
            _ => ResizeState::Deferred(message),
        };
    }
    if let Some(progress) = find("PodResizeInProgress") {
        if progress["reason"] == "Error" {
            let message = progress["message"].as_str().unwrap_or_default().to_owned();
            return ResizeState::Failed(message);
        }
        return ResizeState::InProgress;
    }
    ResizeState::Settled
}

/// When a pod's `PodResizePending` condition turned true (its `lastTransitionTime`, RFC 3339).
pub fn resize_pending_since(pod: &Value) -> Option<&str> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "PodResizePending" && c["status"] == "True")?["lastTransitionTime"]
        .as_str()
}

/// The CPU request (m) the kubelet reports the pipeline container running with
/// (`status.containerStatuses[].resources`): what the pod has, whatever its spec asks.
pub fn actual_cpu(pod: &Value) -> Option<u64> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == CONTAINER)?["resources"]["requests"]["cpu"]
        .as_str()
        .and_then(cpu_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_resize_patch_sets_request_and_limit_of_the_pipeline_container() {
        assert_eq!(
            cpu_resize_patch(1500),
            json!({"spec": {"containers": [{"name": "pipeline", "resources": {
                "requests": {"cpu": "1500m"}, "limits": {"cpu": "3"}}}]}})
        );
    }

    #[test]
    fn resize_conditions_read_as_settled_in_progress_deferred_or_infeasible() {
        let pod = |conditions: Value| json!({"status": {"conditions": conditions}});
        assert_eq!(resize_state(&json!({})), ResizeState::Settled);
        assert_eq!(
            resize_state(&pod(json!([{"type": "Ready", "status": "True"}]))),
            ResizeState::Settled
        );
        assert_eq!(
            resize_state(&pod(
                json!([{"type": "PodResizeInProgress", "status": "True"}])
            )),
            ResizeState::InProgress
        );
        assert_eq!(
            resize_state(&pod(json!([{"type": "PodResizePending", "status": "True",
                "reason": "Deferred", "message": "Node didn't have enough resource: cpu"}]))),
            ResizeState::Deferred("Node didn't have enough resource: cpu".into())
        );
        assert_eq!(
            resize_state(&pod(json!([{"type": "PodResizePending", "status": "True",
                "reason": "Infeasible", "message": "exceeds node capacity"}]))),
            ResizeState::Infeasible("exceeds node capacity".into())
        );
        assert_eq!(
            resize_state(&pod(json!([{"type": "PodResizePending", "status": "False",
                "reason": "Deferred"}]))),
            ResizeState::Settled,
        );
        assert_eq!(
            resize_state(&pod(
                json!([{"type": "PodResizeInProgress", "status": "True",
                "reason": "Error", "message": "cgroup write failed"}])
            )),
            ResizeState::Failed("cgroup write failed".into()),
            "a condition that is not True says nothing"
        );
    }

    use crate::repo::path as repo;

    fn example() -> StreamPipeline {
        crate::repo::example().unwrap()
    }

    fn secured() -> StreamPipeline {
        let file = crate::repo::path("deploy/examples/streampipeline-secured.yaml");
        serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
    }

    #[test]
    fn kafka_credentials_are_mounted_secrets_and_the_spec_names_their_files() {
        let sp = secured();
        let spec: Value =
            serde_yaml_ng::from_str(&pipeline_yaml(&sp, sp.spec.drain_timeout_ms)).unwrap();
        let security = &spec["source"]["kafka"]["security"];
        assert_eq!(security["protocol"], "sasl-ssl");
        assert_eq!(security["sasl"]["mechanism"], "SCRAM-SHA-512");
        assert_eq!(
            security["sasl"]["password-file"],
            "/var/run/secrets/sluice/kafka/kafka-password/password"
        );
        assert_eq!(
            security["tls"]["ca-file"],
            "/var/run/secrets/sluice/kafka/kafka-ca/ca.crt"
        );
        assert_eq!(
            spec["source"]["kafka"]["properties"]["fetch.max.bytes"],
            "16777216"
        );
        check_pipeline(&sp).unwrap();
        let children = children(&sp, 2, &Placement::neutral());
        let pod = &children.deployment["spec"]["template"]["spec"];
        let secrets: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert_eq!(secrets, ["bookings-enrich", "my-cluster-cluster-ca-cert"]);

        // mTLS: the certificate and key, no SASL.
        let mut mtls = sp.clone();
        let auth = mtls.spec.kafka.authentication.as_mut().unwrap();
        auth.kind = crate::crd::AuthenticationType::Tls;
        auth.username = None;
        auth.password_secret = None;
        auth.certificate_and_key = Some(crate::crd::CertificateAndKey {
            secret_name: "bookings-enrich".into(),
            certificate: "user.crt".into(),
            key: "user.key".into(),
        });
        let spec: Value =
            serde_yaml_ng::from_str(&pipeline_yaml(&mtls, mtls.spec.drain_timeout_ms)).unwrap();
        let security = &spec["source"]["kafka"]["security"];
        assert_eq!(security["protocol"], "ssl");
        assert!(security["sasl"].is_null());
        assert_eq!(
            security["tls"]["key-file"],
            "/var/run/secrets/sluice/kafka/kafka-client-certificate/tls.key"
        );
        check_pipeline(&mtls).unwrap();
    }

    #[test]
    fn authentication_types_need_their_references() {
        type Change = fn(&mut crate::crd::KafkaAuthentication);
        let cases: [(&str, Change); 3] = [
            ("type scram-sha-512 needs passwordSecret", |a| {
                a.password_secret = None
            }),
            ("type scram-sha-512 needs username", |a| a.username = None),
            ("tokenEndpointUri: not used with type scram-sha-512", |a| {
                a.token_endpoint_uri = Some("https://idp/token".into())
            }),
        ];
        for (expected, change) in cases {
            let mut sp = secured();
            change(sp.spec.kafka.authentication.as_mut().unwrap());
            let err = check(&sp).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        let mut sp = secured();
        sp.spec.kafka.authentication.as_mut().unwrap().kind = crate::crd::AuthenticationType::Tls;
        assert!(
            check(&sp)
                .unwrap_err()
                .contains("type tls needs certificateAndKey")
        );
    }

    #[test]
    fn an_in_place_plugin_change_leaves_the_template_and_anything_else_rolls() {
        let hash = |sp: &StreamPipeline| {
            children(sp, 2, &Placement::neutral()).deployment["spec"]["template"]["metadata"]
                ["annotations"][CONFIG_HASH]
                .clone()
        };
        let mut sp = example();
        sp.spec.plugin.sha256 = Some("a".repeat(64));
        let rolling = hash(&sp);
        sp.spec.plugin.upgrade = PluginUpgrade::InPlace;
        let in_place = hash(&sp);
        // A new library: the ConfigMap says so, the template does not.
        sp.spec.plugin.path = "/plugins/libfilter_and_enrich-2.so".into();
        sp.spec.plugin.sha256 = Some("b".repeat(64));
        assert_eq!(hash(&sp), in_place);
        let c = children(&sp, 2, &Placement::neutral());
        assert!(
            c.config_map["data"]["pipeline.yaml"]
                .as_str()
                .unwrap()
                .contains(&"b".repeat(64))
        );
        let env = &c.deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "SLUICE_ADMIN_TOKEN_FILE")
        );
        // With `rollout` the same change rolls.
        let mut rolled = sp.clone();
        rolled.spec.plugin.upgrade = PluginUpgrade::Rollout;
        assert_ne!(hash(&rolled), rolling);
        // Anything else rolls in place mode too: the config...
        let mut config = sp.clone();
        config.spec.plugin.config = Some(json!({"min_fare": 7}));
        assert_ne!(hash(&config), in_place);
        // ...and an upgrade the pods could not take (the operator records it in the status).
        let mut refused = sp.clone();
        refused.status = Some(crate::crd::StreamPipelineStatus {
            plugin_upgrade: Some(crate::crd::PluginUpgradeStatus {
                sha256: "b".repeat(64),
                rolled: Some("b".repeat(64)),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_ne!(hash(&refused), in_place);
        // In place needs a pinned library.
        sp.spec.plugin.sha256 = None;
        assert!(
            check(&sp)
                .unwrap_err()
                .contains("spec.plugin.upgrade: in-place needs spec.plugin.sha256")
        );
    }

    #[test]
    fn placement_from_the_overlay_config_map_and_initial_replicas() {
        let cm = json!({"data": {
            "on-demand-selector": "{\"key\": \"k\", \"operator\": \"DoesNotExist\"}",
            "spot-selector": "{\"key\": \"k\", \"operator\": \"In\", \"values\": [\"spot\"]}",
            "spot-toleration": "",
        }});
        let p = Placement::from_config_map(&cm).unwrap();
        assert_eq!(p.on_demand[0][0]["operator"], "DoesNotExist");
        assert_eq!(p.spot_tolerations, Vec::<Value>::new());
        assert!(
            Placement::from_config_map(&json!({"data": {}}))
                .unwrap_err()
                .contains("on-demand-selector")
        );
        let mut sp = example();
        assert_eq!(initial_replicas(&sp), Ok(2));
        sp.spec.replicas.fixed = Some(5);
        assert!(
            initial_replicas(&sp)
                .unwrap_err()
                .starts_with("spec.replicas: no replica count in [5, 5]")
        );
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(cpu_millis("x"), None);
        assert_eq!(at_least_cpus("500m", 1), "1");
        assert_eq!(at_least_cpus("2500m", 2), "2500m");
    }

    #[test]
    fn tiers_place_pods_and_pick_their_priority_class() {
        let mut sp = example();
        let placement = Placement {
            spot_tolerations: vec![
                json!({"key": "spot", "operator": "Exists", "effect": "NoSchedule"}),
            ],
            ..Placement::neutral()
        };
        let pod = |sp: &StreamPipeline| {
            children(sp, 4, &placement).deployment["spec"]["template"]["spec"].clone()
        };
        let tolerant = pod(&sp);
        assert_eq!(tolerant["priorityClassName"], "sluice-tolerant");
        assert_eq!(
            tolerant["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
            "spot"
        );
        assert_eq!(tolerant["tolerations"][0]["key"], "spot");
        sp.spec.tier = Tier::Critical;
        let critical = pod(&sp);
        assert_eq!(critical["priorityClassName"], "sluice-critical");
        assert_eq!(
            critical["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
            "on-demand"
        );
        assert_eq!(critical["tolerations"], json!([]));
        sp.spec.tier = Tier::Standard;
        assert!(
            pod(&sp)["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
                .is_array()
        );
    }

    #[test]
    fn the_deployment_drains_within_its_grace_and_never_surges() {
        let mut sp = example();
        sp.spec.drain_timeout_ms = 25_500;
        let c = children(&sp, 4, &Placement::neutral());
        let spec = &c.deployment["spec"];
        assert_eq!(spec["replicas"], 4);
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 0);
        assert_eq!(
            spec["template"]["spec"]["terminationGracePeriodSeconds"],
            36
        );
        sp.spec.suspend = true;
        assert_eq!(
            children(&sp, 4, &Placement::neutral()).deployment["spec"]["replicas"],
            0
        );
    }

    #[test]
    fn a_spot_pods_drain_fits_the_interruption_notice() {
        let gke = Placement {
            interruption_notice_s: Some(30),
            ..Placement::neutral()
        };
        let mut sp = example(); // tolerant
        let grace = |sp: &StreamPipeline, p: &Placement| {
            let c = children(sp, 4, p);
            let yaml = c.config_map["data"]["pipeline.yaml"]
                .as_str()
                .unwrap()
                .to_owned();
            let spec: Value = serde_yaml_ng::from_str(&yaml).unwrap();
            (
                spec["source"]["kafka"]["drain-timeout-ms"]
                    .as_u64()
                    .unwrap(),
                c.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap(),
            )
        };
        // 25 s + 10 s would outlast a 30 s notice: the grace is the notice, the drain fits.
        assert_eq!(grace(&sp, &gke), (25_000, 30));
        sp.spec.drain_timeout_ms = 60_000;
        assert_eq!(grace(&sp, &gke), (25_000, 30));
        // AWS gives 120 s: it fits as asked.
        let eks = Placement {
            interruption_notice_s: Some(120),
            ..Placement::neutral()
        };
        assert_eq!(grace(&sp, &eks), (60_000, 70));
        // AKS gives 30 s, but through a termination handler that polls and then drains: the
        // overlay leaves it 10 s, so the pod's grace ends before the VM does.
        let aks = overlay_placement("aks");
        assert_eq!(aks.interruption_notice_s, Some(20));
        assert_eq!(grace(&sp, &aks), (15_000, 20));
        // On-demand tiers are not interrupted that way.
        sp.spec.tier = Tier::Critical;
        assert_eq!(grace(&sp, &gke), (60_000, 70));
        // A bad notice in the ConfigMap is refused, naming the key.
        let e = r#"{"key": "k", "operator": "Exists"}"#;
        let bad = json!({"data": {"on-demand-selector": e, "spot-selector": e, "interruption-notice-seconds": "soon"}});
        assert!(
            Placement::from_config_map(&bad)
                .unwrap_err()
                .starts_with("data.interruption-notice-seconds")
        );
    }

    #[test]
    fn the_vpa_recommends_only_when_the_operator_applies() {
        let mut sp = example();
        let mode = |sp: &StreamPipeline| {
            children(sp, 4, &Placement::neutral()).vpa["spec"]["updatePolicy"]["updateMode"].clone()
        };
        assert_eq!(mode(&sp), "InPlaceOrRecreate");
        sp.spec.resources.applied_by = AppliedBy::Operator;
        assert_eq!(mode(&sp), "Off");
        // In place: the VPA applies memory only; CPU is the operator's fast loop's.
        sp.spec.resources.applied_by = AppliedBy::InPlace;
        let c = children(&sp, 4, &Placement::neutral());
        assert_eq!(
            c.vpa["spec"]["updatePolicy"]["updateMode"],
            "InPlaceOrRecreate"
        );
        assert_eq!(
            c.vpa["spec"]["resourcePolicy"]["containerPolicies"][0]["controlledResources"],
            json!(["memory"])
        );
        sp.spec.resources.applied_by = AppliedBy::Operator;
        // Whole CPUs at least, so the runtime's worker count stays sane.
        sp.spec.resources.min_cpus = 2;
        let c = children(&sp, 4, &Placement::neutral());
        assert_eq!(
            c.vpa["spec"]["resourcePolicy"]["containerPolicies"][0]["minAllowed"]["cpu"],
            "2"
        );
        assert_eq!(
            c.deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "2"
        );
    }

    #[test]
    fn the_config_map_holds_a_pipeline_spec_the_runtime_accepts_in_shape() {
        let yaml = pipeline_yaml(&example(), 25_000);
        let spec: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(spec["name"], "bookings-enrich");
        assert_eq!(spec["source"]["kafka"]["group-id"], "bookings-enrich");
        assert_eq!(
            spec["source"]["kafka"]["bootstrap-servers"],
            "${KAFKA_BOOTSTRAP_SERVERS}"
        );
        assert_eq!(spec["admin"]["listen"], "0.0.0.0:9464");
        assert_eq!(
            spec["outputs"]["enriched"]["kafka"]["topic"],
            "bookings-enriched"
        );
        assert_eq!(spec["plugin"]["config"]["min_fare"], 5);
    }

    #[test]
    fn a_registry_format_reaches_the_source_and_needs_the_registry_in_the_pipeline() {
        let mut sp = example();
        sp.spec.kafka.format = crate::crd::ValueFormat::Protobuf;
        let err = check_pipeline(&sp).unwrap_err();
        assert!(
            err.contains("source.kafka.format: `protobuf` needs `schema-registry"),
            "{err}"
        );
        sp.spec.pipeline["schema-registry"] =
            json!({"url": "http://registry.kafka:8080/apis/ccompat/v7"});
        check_pipeline(&sp).unwrap();
        let spec: Value = serde_yaml_ng::from_str(&pipeline_yaml(&sp, 25_000)).unwrap();
        assert_eq!(spec["source"]["kafka"]["format"], "protobuf");
        // Raw is the default and is not written.
        let spec: Value = serde_yaml_ng::from_str(&pipeline_yaml(&example(), 25_000)).unwrap();
        assert!(spec["source"]["kafka"].get("format").is_none());
    }

    #[test]
    fn the_committed_rendering_is_current() {
        let committed =
            std::fs::read_to_string(repo("deploy/examples/streampipeline-children.yaml"))
                .unwrap_or_default();
        assert!(
            committed == example_yaml(&example(), 4),
            "deploy/examples/streampipeline-children.yaml is stale: run `cargo run -p sluice-vpa --bin render-example > deploy/examples/streampipeline-children.yaml`"
        );
    }

    /// A selector is one expression, a list (all must match) or a list of lists (any).
    #[test]
    fn placement_selectors_are_lists_of_terms() {
        let cm = |on_demand: &str| {
            json!({"data": {"on-demand-selector": on_demand,
            "spot-selector": "{\"key\": \"s\", \"operator\": \"Exists\"}"}})
        };
        let terms = |text: &str| Placement::from_config_map(&cm(text)).map(|p| p.on_demand);
        let e = |key: &str| json!({"key": key, "operator": "DoesNotExist"});
        assert_eq!(
            terms(r#"{"key": "a", "operator": "DoesNotExist"}"#),
            Ok(vec![vec![e("a")]])
        );
        assert_eq!(
            terms(
                r#"[{"key": "a", "operator": "DoesNotExist"}, {"key": "b", "operator": "DoesNotExist"}]"#
            ),
            Ok(vec![vec![e("a"), e("b")]])
        );
        assert_eq!(
            terms(
                r#"[[{"key": "a", "operator": "DoesNotExist"}], [{"key": "b", "operator": "DoesNotExist"}]]"#
            ),
            Ok(vec![vec![e("a")], vec![e("b")]])
        );
        assert!(
            terms("[]")
                .unwrap_err()
                .starts_with("data.on-demand-selector: an empty list")
        );
        assert!(
            terms(r#"["a"]"#)
                .unwrap_err()
                .contains("is not a match expression")
        );
    }

    /// The placement of a provider overlay, read from its kustomization's ConfigMap literals.
    fn overlay_placement(provider: &str) -> Placement {
        let path = repo(&format!("deploy/overlays/{provider}/kustomization.yaml"));
        let kustomization: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let literals = kustomization["configMapGenerator"][0]["literals"]
            .as_array()
            .unwrap();
        let data: serde_json::Map<String, Value> = literals
            .iter()
            .map(|l| {
                let (k, v) = l.as_str().unwrap().split_once('=').unwrap();
                (k.to_owned(), json!(v))
            })
            .collect();
        Placement::from_config_map(&json!({ "data": data })).unwrap()
    }

    /// Whether a node with `labels` satisfies required node affinity `terms` (In, NotIn,
    /// Exists, DoesNotExist, as the scheduler reads them).
    fn node_matches(terms: &Value, labels: &[(&str, &str)]) -> bool {
        let label = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        terms.as_array().unwrap().iter().any(|term| {
            term["matchExpressions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| {
                    let key = e["key"].as_str().unwrap();
                    let values = || {
                        e["values"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_str().unwrap())
                    };
                    match e["operator"].as_str().unwrap() {
                        "In" => label(key).is_some_and(|l| values().any(|v| v == l)),
                        "NotIn" => label(key).is_none_or(|l| values().all(|v| v != l)),
                        "Exists" => label(key).is_some(),
                        "DoesNotExist" => label(key).is_none(),
                        other => panic!("operator {other}"),
                    }
                })
        })
    }

    /// Whether `tolerations` tolerate every NoSchedule taint of a node.
    fn tolerated(tolerations: &Value, taints: &[(&str, &str)]) -> bool {
        taints.iter().all(|(key, value)| {
            tolerations.as_array().unwrap().iter().any(|t| {
                t["key"] == *key
                    && (t["operator"] == "Exists" || t["value"] == *value)
                    && t["effect"] == "NoSchedule"
            })
        })
    }

    #[test]
    fn on_gke_critical_pods_avoid_spot_and_preemptible_vms_and_tolerant_pods_use_both() {
        let gke = overlay_placement("gke");
        let mut sp = example();
        let pod = |sp: &StreamPipeline| {
            children(sp, 4, &gke).deployment["spec"]["template"]["spec"].clone()
        };
        let spot = [("cloud.google.com/gke-spot", "true")];
        let preemptible = [("cloud.google.com/gke-preemptible", "true")];
        let on_demand = [("cloud.google.com/gke-nodepool", "default-pool")];
        sp.spec.tier = Tier::Critical;
        let critical = pod(&sp);
        let terms = &critical["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"];
        assert!(node_matches(terms, &on_demand));
        assert!(!node_matches(terms, &spot), "critical on a spot VM");
        assert!(
            !node_matches(terms, &preemptible),
            "critical on a preemptible VM"
        );
        sp.spec.tier = Tier::Tolerant;
        let tolerant = pod(&sp);
        let terms = &tolerant["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"];
        assert!(node_matches(terms, &spot) && node_matches(terms, &preemptible));
        assert!(!node_matches(terms, &on_demand));
        // Tainted spot or preemptible pools are tolerated.
        assert!(tolerated(&tolerant["tolerations"], &spot));
        assert!(tolerated(&tolerant["tolerations"], &preemptible));
        // Standard prefers on-demand: a preference per on-demand term.
        sp.spec.tier = Tier::Standard;
        let standard = pod(&sp);
        let preferred = &standard["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
        assert_eq!(
            preferred[0]["preference"]["matchExpressions"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // GKE's graceful node shutdown gives user pods 15 s of the 30 s notice: a tolerant pod's
        // grace period is 15 s and its drain fits in it with the exit margin.
        assert_eq!(gke.interruption_notice_s, Some(15));
        assert_eq!(drain_and_grace(&sp, &gke), (25_000, 35));
        sp.spec.tier = Tier::Tolerant;
        assert_eq!(drain_and_grace(&sp, &gke), (10_000, 15));
        // Every other provider: critical never on spot, tolerant only on spot.
        for (provider, spot_node, on_demand_node) in [
            (
                "eks",
                ("eks.amazonaws.com/capacityType", "SPOT"),
                ("eks.amazonaws.com/capacityType", "ON_DEMAND"),
            ),
            (
                "karpenter",
                ("karpenter.sh/capacity-type", "spot"),
                ("karpenter.sh/capacity-type", "on-demand"),
            ),
            (
                "aks",
                ("kubernetes.azure.com/scalesetpriority", "spot"),
                ("kubernetes.io/os", "linux"),
            ),
        ] {
            let p = overlay_placement(provider);
            let required = |terms: &[Vec<Value>]| {
                Placement::required(terms)["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].clone()
            };
            assert!(
                node_matches(&required(&p.on_demand), &[on_demand_node]),
                "{provider}"
            );
            assert!(
                !node_matches(&required(&p.on_demand), &[spot_node]),
                "{provider}"
            );
            assert!(node_matches(&required(&p.spot), &[spot_node]), "{provider}");
            assert!(
                !node_matches(&required(&p.spot), &[on_demand_node]),
                "{provider}"
            );
        }
    }

    #[test]
    fn a_stateful_pipeline_gets_a_writable_state_directory() {
        let mut sp = example();
        let pod = |sp: &StreamPipeline| {
            children(sp, 4, &Placement::neutral()).deployment["spec"]["template"]["spec"].clone()
        };
        let stateless = pod(&sp);
        assert_eq!(stateless["volumes"].as_array().unwrap().len(), 1);
        sp.spec.pipeline["state"] = json!({"stores": ["windows"]});
        check(&sp).unwrap();
        let stateful = pod(&sp);
        let container = &stateful["containers"][0];
        assert!(
            container["env"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "SLUICE_STATE_DIR", "value": STATE_DIR}))
        );
        assert!(
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "state", "mountPath": STATE_DIR}))
        );
        assert!(
            stateful["volumes"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "state", "emptyDir": {}}))
        );
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    }

    #[test]
    fn a_config_change_or_a_restart_nonce_rolls_the_pods_and_a_replica_step_does_not() {
        let template = |sp: &StreamPipeline, replicas: u32| {
            children(sp, replicas, &Placement::neutral()).deployment["spec"]["template"].clone()
        };
        let sp = example();
        let before = template(&sp, 4);
        assert_eq!(
            before["metadata"]["annotations"][CONFIG_HASH],
            config_hash(&pipeline_yaml(&sp, sp.spec.drain_timeout_ms))
        );
        assert_eq!(template(&sp, 6), before, "a replica step is not a rollout");
        let changed: [fn(&mut StreamPipeline); 5] = [
            |sp| sp.spec.pipeline["ordering"] = json!("key"),
            |sp| sp.spec.plugin.config = Some(json!({"min_fare": 6})),
            |sp| sp.spec.plugin.path = "/plugins/other.so".into(),
            |sp| sp.spec.kafka.group = "bookings-enrich-v2".into(),
            |sp| sp.spec.kafka.topics.push("bookings-eu".into()),
        ];
        for change in changed {
            let mut sp = example();
            change(&mut sp);
            let after = template(&sp, 4);
            assert_ne!(
                after["metadata"]["annotations"][CONFIG_HASH],
                before["metadata"]["annotations"][CONFIG_HASH]
            );
        }
        let mut sp = example();
        sp.spec.restart_nonce = Some(1);
        let first = template(&sp, 4);
        assert_eq!(first["metadata"]["annotations"][RESTART_NONCE], "1");
        sp.spec.restart_nonce = Some(2);
        assert_ne!(template(&sp, 4), first);
    }

    #[test]
    fn an_in_place_resize_restarts_nothing_since_the_runtime_follows_its_quota() {
        let c = children(&example(), 4, &Placement::neutral());
        let container = &c.deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["resizePolicy"],
            json!([{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                   {"resourceName": "memory", "restartPolicy": "NotRequired"}])
        );
    }

    #[test]
    fn pods_spread_over_zones_and_hosts_and_unhealthy_pods_never_block_a_drain() {
        let c = children(&example(), 4, &Placement::neutral());
        let spread = c.deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
            .as_array()
            .unwrap()
            .clone();
        let keys: Vec<&str> = spread
            .iter()
            .map(|s| s["topologyKey"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        );
        for s in &spread {
            assert_eq!(s["whenUnsatisfiable"], "ScheduleAnyway");
            assert_eq!(
                s["labelSelector"]["matchLabels"],
                c.deployment["spec"]["selector"]["matchLabels"]
            );
        }
        assert_eq!(c.pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    }

    /// Whatever request the VPA sets within its bounds, the memory limit (MEMORY_BURST x the
    /// request, kept by RequestsAndLimits) stays at or above the memory the pod started with.
    #[test]
    fn the_vpa_can_never_take_the_memory_limit_below_the_initial_request() {
        for (initial, min_allowed) in [
            ("1Gi", "256Mi"),
            ("1Gi", "512Mi"),
            ("2Gi", "4Gi"),
            ("3G", "1"),
        ] {
            let mut sp = example();
            sp.spec.resources.initial.memory = initial.into();
            sp.spec.resources.min_allowed.memory = min_allowed.into();
            sp.spec.resources.max_allowed.memory = "8Gi".into();
            let c = children(&sp, 4, &Placement::neutral());
            let floor =
                c.vpa["spec"]["resourcePolicy"]["containerPolicies"][0]["minAllowed"]["memory"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            let floor = memory_bytes(&floor).unwrap();
            assert!(floor >= memory_bytes(min_allowed).unwrap());
            // The lowest request the VPA may set, applied: its limit.
            let lowest = Quantities {
                cpu: "1".into(),
                memory: bytes_quantity(floor),
            };
            let pod = children_sized(&sp, 4, &lowest, &Placement::neutral());
            let limit =
                pod.deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
                    ["memory"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            assert!(
                memory_bytes(&limit).unwrap() >= memory_bytes(initial).unwrap(),
                "{initial} / {min_allowed}: limit {limit}"
            );
        }
        assert_eq!(bytes_quantity(512 << 20), "512Mi");
        assert_eq!(bytes_quantity(1500), "1500");
    }

    #[test]
    fn render_runs_the_operators_checks() {
        type Breaks = fn(&mut StreamPipeline);
        let cases: [(Breaks, &str); 8] = [
            (|sp| sp.spec.image = String::new(), "spec.image: empty"),
            (
                |sp| sp.spec.kafka.topics.clear(),
                "spec.kafka.topics: list at least one topic",
            ),
            (
                |sp| sp.spec.kafka.partitions = 0,
                "spec.kafka.partitions: 0 is not in [1, 100000]",
            ),
            (
                |sp| sp.spec.replicas.min = Some(7),
                "spec.replicas: min 7 is above max 6",
            ),
            (
                |sp| sp.spec.replicas.fixed = Some(2),
                "spec.replicas: fixed excludes min and max",
            ),
            (
                |sp| sp.spec.resources.max_allowed.cpu = "lots".into(),
                "spec.resources.maxAllowed.cpu: \"lots\" is not a CPU quantity",
            ),
            (
                |sp| sp.spec.resources.min_allowed.memory = "16Gi".into(),
                "spec.resources: minAllowed.memory 16Gi is above maxAllowed.memory 4Gi",
            ),
            (
                |sp| sp.spec.pipeline["ordering"] = json!("random"),
                "spec.pipeline: ordering: unknown variant `random`",
            ),
        ];
        for (breaks, error) in cases {
            let mut sp = example();
            breaks(&mut sp);
            let got = render(&sp, &Placement::neutral()).unwrap_err();
            assert!(got.starts_with(error), "{got}");
            assert_eq!(
                check(&sp).unwrap_err(),
                got,
                "render and the operator disagree"
            );
        }
        assert!(render(&example(), &Placement::neutral()).is_ok());
    }

    /// YAML 1.1 tools (PyYAML, older kubectl plugins) read unquoted `Off`, `yes`, `on`, `~` as
    /// booleans and nulls: every such string is quoted, and the output reads back as it was.
    #[test]
    fn rendered_yaml_quotes_what_yaml_1_1_would_misread() {
        let tricky = json!({"updateMode": "Off", "a": "yes", "b": "on", "c": "~", "d": "null",
            "e": "012", "f": "1e3", "g": "line one\nline two\n", "n": 3, "x": false, "y": null});
        let text = to_yaml(&[&tricky]);
        for line in [
            "updateMode: \"Off\"",
            "a: \"yes\"",
            "b: \"on\"",
            "c: \"~\"",
            "d: \"null\"",
            "e: \"012\"",
            "f: \"1e3\"",
        ] {
            assert!(
                text.lines().any(|l| l.trim() == line),
                "{line} not in\n{text}"
            );
        }
        let back: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, tricky);
        let mut sp = example();
        sp.spec.resources.applied_by = AppliedBy::Operator;
        let rendered = render(&sp, &Placement::neutral()).unwrap();
        assert!(rendered.contains("updateMode: \"Off\""), "{rendered}");
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&rendered)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        let c = children(&sp, 2, &Placement::neutral());
        assert_eq!(docs.iter().collect::<Vec<_>>(), c.all().to_vec());
    }

    use serde::Deserialize as _;
}
