//! A fake kubelet (and scheduler, and metrics-server) for a [`ControlPlane`]: what the
//! operator's in-place loop meets on a cluster, played through the real API.
//!
//! Nodes are registered with allocatable CPU. Every 300 ms the kubelet thread:
//! - binds each unbound pod of its namespaces (`pods/binding`) to the schedulable node with the
//!   most CPU left that fits its request (a pod that fits nowhere stays `Pending`);
//! - starts a bound pod: `Running`, `Ready`, its containers' `resources` reported in
//!   `status.containerStatuses` as the kubelet does (Kubernetes 1.33+);
//! - answers a resize (a spec CPU other than the one it runs): applied when the node has the
//!   CPU left (`PodResizeInProgress` for one round, then the new `resources`), `Deferred` when
//!   the node could hold it but not now, `Infeasible` beyond the node's allocatable, each with
//!   the pod's `observedGeneration`; a deferred resize is retried every round;
//! - removes pods being deleted (an eviction, a drain, a Deployment scaling down) at once;
//! - publishes each running pod's CPU usage as a `PodMetrics` object (`metrics.k8s.io/v1beta1`,
//!   served here by a CRD standing in for metrics-server, which reads kubelets): a load set per
//!   pod name prefix, shared evenly by the running pods of a ReplicaSet (as a consumer group
//!   spreads its partitions), capped by each pod's limit.
//!
//! Only CPU is accounted. Affinity, taints and memory are not: placement is not what is tested.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::k8s::{ApiClient, ControlPlane};

/// The `PodMetrics` CRD: `metrics.k8s.io/v1beta1` `pods`, as metrics-server serves them.
const POD_METRICS_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "pods.metrics.k8s.io",
    "annotations": {"api-approved.kubernetes.io": "unapproved, a test stand-in for metrics-server"}},
  "spec": {"group": "metrics.k8s.io", "scope": "Namespaced",
    "names": {"plural": "pods", "singular": "podmetrics", "kind": "PodMetrics", "listKind": "PodMetricsList"},
    "versions": [{"name": "v1beta1", "served": true, "storage": true,
      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
}"#;

/// A running fake kubelet; stopped when dropped.
#[derive(Debug)]
pub struct Kubelet {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    api: ApiClient,
    namespaces: Vec<String>,
    /// Load (m) per pod name prefix, shared by the running pods that match it.
    usage: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
}

impl Kubelet {
    /// Registers `nodes` (name, allocatable CPU in m) and starts playing their kubelet for the
    /// pods of `namespaces`.
    pub fn start(plane: &ControlPlane, nodes: &[(&str, u64)], namespaces: &[&str]) -> Kubelet {
        let shared = Arc::new(Shared {
            api: plane.client(&plane.admin_token()),
            namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
            usage: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        });
        let (code, body) = shared.call(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            POD_METRICS_CRD,
        );
        assert!(
            matches!(code, 201 | 409),
            "the PodMetrics CRD: {code} {body}"
        );
        for (name, cpu) in nodes {
            let node = json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                    "cloud.google.com/gke-spot": "true", "topology.kubernetes.io/zone": "test-a"}},
                "status": {"capacity": {"cpu": format!("{cpu}m"), "memory": "64Gi", "pods": "110"},
                    "allocatable": {"cpu": format!("{cpu}m"), "memory": "64Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
            let (code, body) = shared.call("POST", "/api/v1/nodes", &node.to_string());
            assert_eq!(code, 201, "node {name}: {body}");
        }
        // Until the CRD serves, PodMetrics cannot be written.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while shared
            .call("GET", "/apis/metrics.k8s.io/v1beta1/pods", "")
            .0
            != 200
        {
            assert!(
                std::time::Instant::now() < deadline,
                "PodMetrics never served"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let worker = shared.clone();
        let thread = std::thread::spawn(move || {
            while !worker.stop.load(Ordering::Relaxed) {
                worker.round();
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Kubelet {
            shared,
            thread: Some(thread),
        }
    }

    /// The pods whose name starts with `prefix` share `millis` of CPU from now on, evenly over
    /// those running (as a consumer group spreads its partitions), each capped by its limit (as
    /// the CFS quota would).
    pub fn set_load(&self, prefix: &str, millis: u64) {
        self.shared
            .usage
            .lock()
            .unwrap()
            .insert(prefix.to_owned(), millis);
    }

    /// Marks `node` (un)schedulable, as a cordon does.
    pub fn cordon(&self, node: &str, cordoned: bool) {
        let patch = json!({"spec": {"unschedulable": cordoned}}).to_string();
        let (code, body) = self.shared.patch(&format!("/api/v1/nodes/{node}"), &patch);
        assert_eq!(code, 200, "{body}");
    }

    /// Evicts `pod` through the Eviction API (as a drain, or the VPA's updater, does).
    pub fn evict(&self, namespace: &str, pod: &str) -> (u16, String) {
        let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace}});
        self.shared.call(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/pods/{pod}/eviction"),
            &eviction.to_string(),
        )
    }

    /// Deletes `pod` at once, as a node reclaimed without notice takes it.
    pub fn kill(&self, namespace: &str, pod: &str) {
        self.shared.remove(namespace, pod);
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The pipeline container's CPU (m) in a resources object (`requests` or `limits`).
fn cpu(resources: &Value, kind: &str) -> Option<u64> {
    resources[kind]["cpu"]
        .as_str()
        .and_then(sluice_vpa::manifests::cpu_millis)
}

/// Both pods come from the same ReplicaSet (their names differ only after the last `-`).
fn common_prefix(pod: &Value, name: &str) -> bool {
    let other = pod["metadata"]["name"].as_str().unwrap_or_default();
    let stem = |n: &str| n.rsplit_once('-').map(|(stem, _)| stem.to_owned());
    stem(other).is_some() && stem(other) == stem(name)
}

/// The CPU (m) a pod's containers request in its spec.
fn spec_cpu(pod: &Value) -> u64 {
    containers(&pod["spec"]["containers"])
        .filter_map(|c| cpu(&c["resources"], "requests"))
        .sum()
}

/// The CPU (m) a pod runs with: its reported container resources, else its spec.
fn running_cpu(pod: &Value) -> u64 {
    let reported: Vec<u64> = containers(&pod["status"]["containerStatuses"])
        .filter_map(|c| cpu(&c["resources"], "requests"))
        .collect();
    if reported.is_empty() {
        spec_cpu(pod)
    } else {
        reported.iter().sum()
    }
}

fn containers(list: &Value) -> impl Iterator<Item = &Value> {
    list.as_array().into_iter().flatten()
}

/// Now, in RFC 3339 (UTC, seconds).
fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

impl Shared {
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.send(method, path, "application/json", body)
    }

    fn patch(&self, path: &str, body: &str) -> (u16, String) {
        self.send("PATCH", path, "application/merge-patch+json", body)
    }

    fn send(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
        self.api.request(method, path, content_type, body)
    }

    fn get(&self, path: &str) -> Option<Value> {
        let (code, body) = self.call("GET", path, "");
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// Removes a pod at once, and its metrics.
    fn remove(&self, namespace: &str, name: &str) {
        self.call(
            "DELETE",
            &format!("/api/v1/namespaces/{namespace}/pods/{name}?gracePeriodSeconds=0"),
            "",
        );
        self.call(
            "DELETE",
            &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}"),
            "",
        );
    }

    /// One round over nodes and pods.
    fn round(&self) {
        let Some(nodes) = self.get("/api/v1/nodes") else {
            return;
        };
        let nodes: Vec<&Value> = containers(&nodes["items"]).collect();
        let mut pods = Vec::new();
        for namespace in &self.namespaces {
            if let Some(list) = self.get(&format!("/api/v1/namespaces/{namespace}/pods")) {
                pods.extend(containers(&list["items"]).cloned());
            }
        }
        // CPU each node has given out.
        let mut used: BTreeMap<String, u64> = BTreeMap::new();
        for pod in &pods {
            if let Some(node) = pod["spec"]["nodeName"].as_str() {
                *used.entry(node.to_owned()).or_default() += running_cpu(pod);
            }
        }
        let allocatable = |node: &Value| -> u64 {
            node["status"]["allocatable"]["cpu"]
                .as_str()
                .and_then(sluice_vpa::manifests::cpu_millis)
                .unwrap_or(0)
        };
        for pod in &pods {
            let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                self.remove(namespace, name);
                continue;
            }
            let Some(node_name) = pod["spec"]["nodeName"].as_str() else {
                // The scheduler: the schedulable node with the most CPU left that fits.
                let want = spec_cpu(pod);
                let best = nodes
                    .iter()
                    .filter(|n| n["spec"]["unschedulable"] != true)
                    .map(|n| {
                        let name = n["metadata"]["name"].as_str().unwrap_or_default();
                        let left =
                            allocatable(n).saturating_sub(used.get(name).copied().unwrap_or(0));
                        (left, name)
                    })
                    .filter(|(left, _)| *left >= want)
                    .max();
                if let Some((_, node)) = best {
                    let binding = json!({"apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": name, "namespace": namespace},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                    if self
                        .call("POST", &format!("{path}/binding"), &binding.to_string())
                        .0
                        == 201
                    {
                        *used.entry(node.to_owned()).or_default() += want;
                    }
                }
                continue;
            };
            let node = nodes.iter().find(|n| n["metadata"]["name"] == node_name);
            let Some(node) = node else {
                // Its node is gone (reclaimed): so is the pod.
                self.remove(namespace, name);
                continue;
            };
            if pod["status"]["phase"] != "Running" {
                self.start_pod(pod, &path, node_name);
                continue;
            }
            self.resize(pod, &path, allocatable(node), &mut used, node_name);
            let sharing = pods
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| common_prefix(p, name))
                .count();
            self.report_usage(pod, namespace, name, sharing.max(1) as u64);
        }
    }

    fn container_statuses(pod: &Value, started: &str) -> Value {
        let statuses: Vec<Value> = containers(&pod["spec"]["containers"])
            .map(|c| {
                json!({"name": c["name"], "image": c["image"], "imageID": c["image"],
                    "containerID": format!("containerd://{}", c["name"].as_str().unwrap_or_default()),
                    "ready": true, "started": true, "restartCount": 0,
                    "state": {"running": {"startedAt": started}},
                    "resources": c["resources"], "allocatedResources": c["resources"]["requests"]})
            })
            .collect();
        json!(statuses)
    }

    fn start_pod(&self, pod: &Value, path: &str, node: &str) {
        let started = now();
        let status = json!({"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "startTime": started,
            "observedGeneration": pod["metadata"]["generation"],
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
                {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": started},
                {"type": "Ready", "status": "True", "lastTransitionTime": started}],
            "containerStatuses": Self::container_statuses(pod, &started)}});
        let (code, body) = self.patch(&format!("{path}/status"), &status.to_string());
        if code != 200 && code != 404 {
            eprintln!("kubelet {node}: starting {path}: {code} {body}");
        }
    }

    /// A resize: applied, deferred or infeasible, as the kubelet decides it.
    fn resize(
        &self,
        pod: &Value,
        path: &str,
        allocatable: u64,
        used: &mut BTreeMap<String, u64>,
        node: &str,
    ) {
        let (want, have) = (spec_cpu(pod), running_cpu(pod));
        let conditions: Vec<Value> = containers(&pod["status"]["conditions"])
            .filter(|c| c["type"] != "PodResizePending" && c["type"] != "PodResizeInProgress")
            .cloned()
            .collect();
        let generation = &pod["metadata"]["generation"];
        let in_progress = containers(&pod["status"]["conditions"])
            .any(|c| c["type"] == "PodResizeInProgress" && c["status"] == "True");
        let pending = containers(&pod["status"]["conditions"])
            .find(|c| c["type"] == "PodResizePending" && c["status"] == "True");
        let with = |extra: Option<Value>, statuses: Value| {
            let mut conditions = conditions.clone();
            conditions.extend(extra);
            json!({"status": {"conditions": conditions, "containerStatuses": statuses,
                "observedGeneration": generation}})
        };
        let body = if want == have {
            if !in_progress && pending.is_none() {
                return;
            }
            // Actuated: the conditions go.
            with(None, pod["status"]["containerStatuses"].clone())
        } else {
            let left = allocatable.saturating_sub(used.get(node).copied().unwrap_or(0));
            let (reason, message) = if want > allocatable {
                (
                    "Infeasible",
                    format!(
                        "Node didn't have enough capacity: cpu, requested: {want}, capacity: {allocatable}"
                    ),
                )
            } else if want > have + left {
                (
                    "Deferred",
                    format!(
                        "Node didn't have enough resource: cpu, requested: {want}, used: {}, capacity: {allocatable}",
                        used.get(node).copied().unwrap_or(0)
                    ),
                )
            } else {
                ("", String::new())
            };
            if reason.is_empty() {
                *used.entry(node.to_owned()).or_default() += want - have.min(want);
                // Accepted: in progress for a round, then the new resources are reported.
                let statuses = if in_progress {
                    Self::container_statuses(pod, &now())
                } else {
                    pod["status"]["containerStatuses"].clone()
                };
                let extra = (!in_progress).then(|| {
                    json!({"type": "PodResizeInProgress", "status": "True",
                        "lastTransitionTime": now(), "observedGeneration": generation})
                });
                with(extra, statuses)
            } else {
                // The same pending state keeps its transition time.
                let since = pending
                    .filter(|p| p["reason"] == reason)
                    .and_then(|p| p["lastTransitionTime"].as_str().map(str::to_owned))
                    .unwrap_or_else(now);
                if pending.is_some_and(|p| {
                    p["reason"] == reason && p["observedGeneration"] == *generation
                }) {
                    return;
                }
                with(
                    Some(
                        json!({"type": "PodResizePending", "status": "True", "reason": reason,
                        "message": message, "lastTransitionTime": since,
                        "observedGeneration": generation}),
                    ),
                    pod["status"]["containerStatuses"].clone(),
                )
            }
        };
        let (code, text) = self.patch(&format!("{path}/status"), &body.to_string());
        if code != 200 && code != 404 && code != 409 {
            eprintln!("kubelet {node}: resize of {path}: {code} {text}");
        }
    }

    /// The pod's CPU usage as metrics-server reports it: its share of the load of its prefix.
    fn report_usage(&self, pod: &Value, namespace: &str, name: &str, sharing: u64) {
        let usage = self.usage.lock().unwrap();
        let Some(load) = usage
            .iter()
            .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, m)| *m)
        else {
            return;
        };
        drop(usage);
        let wanted = load / sharing;
        let limit: u64 = containers(&pod["status"]["containerStatuses"])
            .filter_map(|c| cpu(&c["resources"], "limits"))
            .sum();
        let used = if limit > 0 { wanted.min(limit) } else { wanted };
        let metrics = json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
            "metadata": {"name": name, "namespace": namespace, "labels": pod["metadata"]["labels"]},
            "timestamp": now(), "window": "15s",
            "containers": containers(&pod["spec"]["containers"]).map(|c| json!({"name": c["name"],
                "usage": {"cpu": format!("{}n", used * 1_000_000), "memory": "100Mi"}})).collect::<Vec<_>>()});
        let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}");
        let (code, _) = self.send(
            "PATCH",
            &format!("{path}?fieldManager=kubelet&force=true"),
            "application/apply-patch+yaml",
            &metrics.to_string(),
        );
        if code != 200 && code != 201 {
            eprintln!("kubelet: metrics of {namespace}/{name}: {code}");
        }
    }
}
