//! The children of a `StreamPipeline`, built as plain objects (no client): the ConfigMap with
//! the pipeline spec, the Deployment, the VPA, the PodDisruptionBudget and the metrics Service.
//! The operator applies them by server-side apply; `sluice render` will print the same.

use serde_json::{Value, json};

use crate::crd::{AppliedBy, ControlledValues, Quantities, StreamPipeline, Tier};

/// The admin port (metrics and probes) of every pipeline pod.
pub const ADMIN_PORT: u16 = 9464;
/// A pipeline pod's CPU limit over its request (see the Deployment's resources).
pub const CPU_BURST: u64 = 2;
/// The pipeline container's name (the VPA's container policy names it).
pub const CONTAINER: &str = "pipeline";

/// Where a provider puts on-demand and spot nodes (the overlay's `sluice-placement` ConfigMap).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// A node selector requirement matching on-demand nodes.
    pub on_demand: Value,
    /// A node selector requirement matching spot nodes.
    pub spot: Value,
    /// The toleration spot nodes need, if they are tainted.
    pub spot_toleration: Option<Value>,
    /// How long a spot node's interruption notice is (s): a `tolerant` pod's drain and grace
    /// period are capped to fit in it.
    pub interruption_notice_s: Option<u64>,
}

impl Placement {
    /// The provider-neutral labels of `deploy/base` (`sluice.dev/capacity-type`).
    pub fn neutral() -> Placement {
        Placement {
            on_demand: json!({"key": "sluice.dev/capacity-type", "operator": "In", "values": ["on-demand"]}),
            spot: json!({"key": "sluice.dev/capacity-type", "operator": "In", "values": ["spot"]}),
            spot_toleration: None,
            interruption_notice_s: None,
        }
    }
}

impl Placement {
    /// From a `sluice-placement` ConfigMap (as a provider overlay builds it, or as
    /// `kubectl get configmap sluice-placement -o yaml` prints it).
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
        Ok(Placement {
            on_demand: field("on-demand-selector")?.ok_or("data.on-demand-selector: missing")?,
            spot: field("spot-selector")?.ok_or("data.spot-selector: missing")?,
            spot_toleration: field("spot-toleration")?,
            interruption_notice_s: match field("interruption-notice-seconds")? {
                None => None,
                Some(n) => Some(
                    n.as_u64()
                        .filter(|n| *n > 5)
                        .ok_or("data.interruption-notice-seconds: must be whole seconds above 5")?,
                ),
            },
        })
    }
}

/// The replicas a pipeline starts with: `fixed`, else the smallest divisor of the partitions
/// within `[min, max]` (none: an error naming the fields).
pub fn initial_replicas(sp: &StreamPipeline) -> Result<u32, String> {
    let r = &sp.spec.replicas;
    let partitions = sp.spec.kafka.partitions;
    let (min, max) = match r.fixed {
        Some(f) => (f, f),
        None => (r.min.unwrap_or(1), r.max.unwrap_or(partitions)),
    };
    crate::policy::aligned_replicas(partitions, min, max)
        .first()
        .copied()
        .ok_or_else(|| {
            format!(
                "spec.replicas: no replica count in [{min}, {max}] divides spec.kafka.partitions ({partitions}): widen the range or change the partitions"
            )
        })
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
    spec.insert(
        "source".into(),
        json!({"kafka": {
            "bootstrap-servers": "${KAFKA_BOOTSTRAP_SERVERS}",
            "topics": sp.spec.kafka.topics,
            "group-id": sp.spec.kafka.group,
            "drain-timeout-ms": drain_ms,
        }}),
    );
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

    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(&name),
        "data": {"pipeline.yaml": pipeline_yaml(sp, drain_ms)},
    });

    let affinity = match sp.spec.tier {
        Tier::Critical => json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [placement.on_demand]}]}}}),
        Tier::Standard => {
            json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution":
            [{"weight": 100, "preference": {"matchExpressions": [placement.on_demand]}}]}})
        }
        Tier::Tolerant => json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [placement.spot]}]}}}),
    };
    let tolerations: Vec<Value> = match (sp.spec.tier, &placement.spot_toleration) {
        (Tier::Tolerant, Some(t)) => vec![t.clone()],
        _ => Vec::new(),
    };
    let probe = |path: &str, period: u32| json!({"httpGet": {"path": path, "port": "admin"}, "periodSeconds": period, "failureThreshold": 3});
    let cpu = at_least_cpus(&requests.cpu, res.min_cpus);
    let cpu_limit = millis_quantity(cpu_millis(&cpu).unwrap_or(1000) * CPU_BURST);
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
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": format!("sluice-{}", tier_name(sp.spec.tier)),
                    "affinity": affinity,
                    "tolerations": tolerations,
                    "terminationGracePeriodSeconds": grace_s,
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": CONTAINER,
                        "image": sp.spec.image,
                        "imagePullPolicy": "Always",
                        "args": ["run", "-f", "/etc/sluice/pipeline.yaml"],
                        "env": [
                            {"name": "KAFKA_BOOTSTRAP_SERVERS", "valueFrom": {"secretKeyRef": {
                                "name": sp.spec.kafka.bootstrap_servers.name,
                                "key": sp.spec.kafka.bootstrap_servers.key}}},
                            {"name": "SLUICE_LOG_FORMAT", "value": "json"},
                        ],
                        "ports": [{"name": "admin", "containerPort": ADMIN_PORT}],
                        "readinessProbe": probe("/readyz", 5),
                        "livenessProbe": probe("/healthz", 10),
                        // CPU limit = CPU_BURST x request: the VPA only sees the CPU a pod uses,
                        // so a pod capped at its request would hide its real demand and the
                        // recommendation would creep up 15% at a time (the capacity simulation
                        // shows it). The runtime sizes its workers from the quota (whole CPUs,
                        // requests are whole CPUs), and the VPA keeps the ratio. Memory limit =
                        // request: memory is not compressible.
                        "resources": {
                            "requests": {"cpu": cpu, "memory": requests.memory},
                            "limits": {"cpu": cpu_limit, "memory": requests.memory},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false, "privileged": false,
                            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "spec", "mountPath": "/etc/sluice", "readOnly": true}],
                    }],
                    "volumes": [{"name": "spec", "configMap": {"name": name}}],
                },
            },
        },
    });

    let (update_mode, controlled) = match res.applied_by {
        AppliedBy::Vpa => ("InPlaceOrRecreate", res.controlled_values),
        // The VPA only recommends; the operator applies requests in its own rollouts.
        AppliedBy::Operator => ("Off", res.controlled_values),
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
                "minAllowed": {"cpu": at_least_cpus(&res.min_allowed.cpu, res.min_cpus), "memory": res.min_allowed.memory},
                "maxAllowed": {"cpu": res.max_allowed.cpu, "memory": res.max_allowed.memory},
                "controlledResources": ["cpu", "memory"],
                "controlledValues": match controlled {
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
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
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

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Critical => "critical",
        Tier::Standard => "standard",
        Tier::Tolerant => "tolerant",
    }
}

/// The example pipeline's children as a multi-document YAML (committed in `deploy/examples/`).
pub fn example_yaml(sp: &StreamPipeline, replicas: u32) -> String {
    let children = children(sp, replicas, &Placement::neutral());
    let mut out = String::from(
        "# Generated by `cargo run -p sluice-vpa --bin render-example`: what the operator applies\n# for deploy/examples/streampipeline.yaml at 4 replicas. Do not edit.\n",
    );
    for (i, object) in children.all().iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(object).expect("serializes"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::repo::path as repo;

    fn example() -> StreamPipeline {
        crate::repo::example().unwrap()
    }

    #[test]
    fn placement_from_the_overlay_config_map_and_initial_replicas() {
        let cm = json!({"data": {
            "on-demand-selector": "{\"key\": \"k\", \"operator\": \"DoesNotExist\"}",
            "spot-selector": "{\"key\": \"k\", \"operator\": \"In\", \"values\": [\"spot\"]}",
            "spot-toleration": "",
        }});
        let p = Placement::from_config_map(&cm).unwrap();
        assert_eq!(p.on_demand["operator"], "DoesNotExist");
        assert_eq!(p.spot_toleration, None);
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
            spot_toleration: Some(
                json!({"key": "spot", "operator": "Exists", "effect": "NoSchedule"}),
            ),
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
        // On-demand tiers are not interrupted that way.
        sp.spec.tier = Tier::Critical;
        assert_eq!(grace(&sp, &gke), (60_000, 70));
        // A bad notice in the ConfigMap is refused, naming the key.
        let bad = json!({"data": {"on-demand-selector": "{}", "spot-selector": "{}", "interruption-notice-seconds": "soon"}});
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
    fn the_committed_rendering_is_current() {
        let committed =
            std::fs::read_to_string(repo("deploy/examples/streampipeline-children.yaml"))
                .unwrap_or_default();
        assert!(
            committed == example_yaml(&example(), 4),
            "deploy/examples/streampipeline-children.yaml is stale: run `cargo run -p sluice-vpa --bin render-example > deploy/examples/streampipeline-children.yaml`"
        );
    }

    /// The VPA object validates against the official VPA CRD (kubernetes/autoscaler), read from
    /// the shared vendor directory.
    #[test]
    fn the_vpa_validates_against_the_official_crd() {
        // `../shared` beside the repository (SLUICE_SHARED overrides it).
        let shared = std::env::var_os("SLUICE_SHARED")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| repo("../shared"));
        let path = shared.join("vendor/vpa/vpa-v1-crd-gen.yaml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let crd = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap())
            .find(|d| d["spec"]["names"]["kind"] == "VerticalPodAutoscaler")
            .expect("the VPA CRD");
        let version = crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "v1")
            .unwrap();
        let validator = jsonschema::validator_for(&version["schema"]["openAPIV3Schema"]).unwrap();
        for applied_by in [AppliedBy::Vpa, AppliedBy::Operator] {
            let mut sp = example();
            sp.spec.resources.applied_by = applied_by;
            let vpa = children(&sp, 4, &Placement::neutral()).vpa;
            let errors: Vec<String> = validator
                .iter_errors(&vpa)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{errors:?}");
        }
        let mut bad = children(&example(), 4, &Placement::neutral()).vpa;
        bad["spec"]["updatePolicy"]["updateMode"] = "Sometimes".into();
        assert!(validator.iter_errors(&bad).next().is_some());
    }

    use serde::Deserialize as _;
}
