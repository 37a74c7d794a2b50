//! The reconciler: a `StreamPipeline` in; its children applied by server-side apply (field
//! manager `sluice-vpa`, owned by the pipeline so Kubernetes' garbage collector removes them
//! with it: no finalizer) and its status written.
//!
//! One reconcile reads two objects (the Deployment and the VPA), asks the capacity policy
//! (`policy::decide`) what to do, and writes only what changed: the children when their hash,
//! the generation or a replica/request step says so (and every `reapply_every` to repair drift),
//! the status when it differs. A steady pipeline costs two GETs per resync.
//!
//! With `appliedBy: in-place` the reconcile also lists the pipeline's pods, runs the fast loop
//! (`policy::fast_decide`) once a minute on the fullest pod's live usage, and resizes pods in
//! place through their `resize` subresource, never during a rollout.
//!
//! [`plan`] is the pure part (observed objects in, children, resizes and status out);
//! [`reconcile`] does the I/O around it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use sluice_vpa::crd::{
    AppliedBy, AppliedChildren, Condition, FastStatus, HeldPod, PluginUpgrade, PluginUpgradeStatus,
    PolicyStatus, Quantities, RefusedResize, StreamPipeline, StreamPipelineStatus,
};
use sluice_vpa::manifests::ADMIN_PORT;
use sluice_vpa::manifests::{
    Bounds, CONTAINER, CPU_BURST, Placement, ResizeState, actual_cpu, at_least_cpus, check,
    children_sized, cpu_millis, cpu_resize_patch, memory_bytes, millis_quantity,
    resize_pending_since, resize_state, short_sha256,
};
use sluice_vpa::policy::{
    self, Action, Change, DEFER_GRACE_S, Decision, FRESH_S, FastAction, FastInputs, FastLoop,
    FastState, HOLD_S, PolicyConfig, Reason, aligned_replicas,
};
use sluice_vpa::upgrade::{PodPlugin, Step, next_step};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "sluice-vpa";

/// The operator's own metrics (`/metrics` of `sluice-vpa`), prefix `sluice_vpa`.
#[derive(Debug, Clone)]
pub struct OperatorMetrics {
    /// The registry `/metrics` encodes.
    pub registry: prometheus::Registry,
    /// Reconciles by result (`ok`, `error`).
    pub reconciles: prometheus::IntCounterVec,
    /// Seconds per reconcile.
    pub reconcile_seconds: prometheus::Histogram,
    /// Steps and warnings, by the reason of their Event (`ScalingUp`, `InvalidSpec`, ...).
    pub events: prometheus::IntCounterVec,
    /// Applies the API server refused.
    pub apply_refusals: prometheus::IntCounter,
    /// In-place resizes by result: `applied` (the API server took the patch), `refused` (it did
    /// not: an old cluster, a quota), `deferred` and `infeasible` (a node said so, counted once
    /// per pod and resize).
    pub resizes: prometheus::IntCounterVec,
}

impl OperatorMetrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> OperatorMetrics {
        use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
        let registry = Registry::new_custom(Some("sluice_vpa".into()), None).expect("valid prefix");
        let reconciles = IntCounterVec::new(
            Opts::new("reconciles_total", "Reconciles by result (ok, error)."),
            &["result"],
        )
        .expect("valid metric");
        let reconcile_seconds = Histogram::with_opts(HistogramOpts::new(
            "reconcile_duration_seconds",
            "Seconds per reconcile, API calls included.",
        ))
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new(
                "events_total",
                "Replica steps, request rollouts and warnings, by the reason of their Event.",
            ),
            &["type", "reason"],
        )
        .expect("valid metric");
        let apply_refusals = IntCounter::new(
            "apply_refusals_total",
            "Applies the API server refused (webhook, quota, schema): Degraded/ApplyRefused.",
        )
        .expect("valid metric");
        let resizes = IntCounterVec::new(
            Opts::new(
                "resizes_total",
                "In-place CPU resizes of pipeline pods (appliedBy: in-place), by result: applied, refused, deferred, infeasible.",
            ),
            &["result"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_seconds.clone()),
            Box::new(events.clone()),
            Box::new(apply_refusals.clone()),
            Box::new(resizes.clone()),
        ] {
            registry.register(metric).expect("registered once");
        }
        OperatorMetrics {
            registry,
            reconciles,
            reconcile_seconds,
            events,
            apply_refusals,
            resizes,
        }
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        OperatorMetrics::new()
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The operator's metrics.
    pub metrics: OperatorMetrics,
    /// The API server.
    pub client: Client,
    /// Where spot and on-demand nodes are (the overlay's `sluice-placement` ConfigMap).
    pub placement: Placement,
    /// The capacity policy's tuning.
    pub policy: PolicyConfig,
    /// Seconds since the Unix epoch (injected so tests control time).
    pub clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Kubernetes Events for steps and problems.
    pub recorder: Recorder,
    /// How often a pipeline is looked at without any change (the policy's clock).
    pub resync: Duration,
    /// Unchanged children are re-applied this often anyway (drift repair).
    pub reapply_every: Duration,
    /// The API server's minor version (read at start), when it says.
    pub server_minor: Option<u32>,
    /// The bearer token for the pods' `POST /plugin` (`SLUICE_VPA_UPGRADE_TOKEN`; the pods get
    /// the same from the `sluice-upgrade-token` Secret); without it in-place upgrades roll.
    pub upgrade_token: Option<String>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("placement", &self.placement)
            .field("policy", &self.policy)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

/// Why a reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The resource has no namespace (the CRD is namespaced; a cluster-scoped copy is foreign).
    #[error("StreamPipeline {0} has no namespace")]
    NoNamespace(String),
}

/// The `VerticalPodAutoscaler` resource (`autoscaling.k8s.io/v1`), untyped.
pub fn vpa_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling.k8s.io", "v1", "VerticalPodAutoscaler"),
        "verticalpodautoscalers",
    )
}

/// The API resource of a child object, from its `apiVersion` and `kind`.
fn child_resource(object: &Value) -> ApiResource {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "NetworkPolicy" => "networkpolicies".to_owned(),
        other => format!("{}s", other.to_lowercase()),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

/// The VPA's recommendation for the pipeline container.
#[derive(Debug, Clone, PartialEq)]
pub struct VpaRecommendation {
    /// Target CPU (m), capped to the allowed range.
    pub cpu: u64,
    /// Uncapped target CPU (m).
    pub uncapped_cpu: u64,
    /// Target memory, as the VPA wrote it.
    pub memory: String,
}

impl VpaRecommendation {
    /// From a VPA object's `status.recommendation`, if it has one for the pipeline container.
    pub fn from_vpa(vpa: &Value) -> Option<VpaRecommendation> {
        let recs = vpa["status"]["recommendation"]["containerRecommendations"].as_array()?;
        let rec = recs
            .iter()
            .find(|r| r["containerName"] == CONTAINER)
            .or(recs.first())?;
        let cpu = cpu_millis(rec["target"]["cpu"].as_str()?)?;
        let uncapped_cpu = rec["uncappedTarget"]["cpu"]
            .as_str()
            .and_then(cpu_millis)
            .unwrap_or(cpu);
        Some(VpaRecommendation {
            cpu,
            uncapped_cpu,
            memory: rec["target"]["memory"].as_str()?.to_owned(),
        })
    }
}

/// The Deployment annotation with the time of the operator's last apply (its status keeps the
/// same time in `applied.at`): a status older than its Deployment is a stale read.
pub const APPLIED_AT: &str = "sluice.dev/applied-at";
/// The Deployment annotation with the hash of its pod template, the CPU left out: a template
/// that changes for another reason rolls the pods anyway, and then carries the fast target.
pub const POD_TEMPLATE: &str = "sluice.dev/pod-template";

/// What the Deployment says about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollout {
    /// `spec.replicas`.
    pub replicas: u32,
    /// Ready pods.
    pub ready: u32,
    /// A rollout has not finished (new generation not observed, pods not updated or not
    /// available, old pods still around).
    pub in_progress: bool,
    /// A new pod template is rolling out (new generation not observed, pods not updated, old
    /// pods still around): unlike a replica that is only missing (a spot node reclaimed,
    /// a pod not yet placed), the pods are being replaced.
    pub rolling: bool,
    /// Why the Deployment is failing, if it is (`ProgressDeadlineExceeded`, `ReplicaFailure`).
    pub failure: Option<(String, String)>,
    /// Its `sluice.dev/applied-at` annotation.
    pub applied_at: Option<String>,
    /// Its `sluice.dev/pod-template` annotation.
    pub template: Option<String>,
    /// The pipeline container's CPU request (m) in its pod template.
    pub template_cpu: Option<u64>,
}

impl Rollout {
    /// From a Deployment.
    pub fn from_deployment(d: &Deployment) -> Rollout {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0);
        let status = d.status.clone().unwrap_or_default();
        let count = |n: Option<i32>| n.unwrap_or(0).max(0);
        let generation_seen =
            status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
        let rolling = !generation_seen
            || count(status.updated_replicas) < want
            || count(status.replicas) > want;
        let in_progress = rolling || count(status.available_replicas) < want;
        let failure = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| {
                let failing = (c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                    || (c.type_ == "ReplicaFailure" && c.status == "True");
                failing.then(|| {
                    (
                        c.reason.unwrap_or_else(|| c.type_.clone()),
                        c.message.unwrap_or_default(),
                    )
                })
            });
        let annotation = |key: &str| d.metadata.annotations.as_ref()?.get(key).cloned();
        let template_cpu = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.iter().find(|c| c.name == CONTAINER))
            .and_then(|c| c.resources.as_ref()?.requests.as_ref()?.get("cpu"))
            .and_then(|q| cpu_millis(&q.0));
        Rollout {
            replicas: want as u32,
            ready: count(status.ready_replicas) as u32,
            in_progress,
            rolling,
            failure,
            applied_at: annotation(APPLIED_AT),
            template: annotation(POD_TEMPLATE),
            template_cpu,
        }
    }
}

/// What the reconcile read about a pipeline's pods.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Its Deployment, if it exists.
    pub deployment: Option<Rollout>,
    /// The VPA's recommendation, once it has one.
    pub recommendation: Option<VpaRecommendation>,
    /// CPU (m) all its pods use now (metrics API), if the cluster serves it.
    pub usage: Option<u64>,
    /// CPU (m) the busiest of its pods uses now (metrics API).
    pub fullest_usage: Option<u64>,
    /// Pods that report usage (metrics API): fewer than the replicas while one is missing.
    pub running: Option<u32>,
    /// Its pods (read only with `appliedBy: in-place`).
    pub pods: Vec<PodView>,
    /// The API server's minor version, when known (in-place resize needs 1.35).
    pub server_minor: Option<u32>,
}

/// One of a pipeline's pods, as the in-place loop sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodView {
    /// The pod's name.
    pub name: String,
    /// The pipeline container's CPU request in the pod's spec (m): what was last asked for.
    pub request: Option<u64>,
    /// The CPU request (m) the kubelet reports it running with, once it reports it.
    pub actual: Option<u64>,
    /// Where its last resize stands.
    pub resize: ResizeState,
    /// Since when (s) its resize has been pending.
    pub pending_since: Option<u64>,
    /// When (s) it was placed on its node (`status.startTime`; else its creation).
    pub placed_at: Option<u64>,
}

impl PodView {
    /// From a Pod object; `None` for a pod being deleted or already finished.
    pub fn from_pod(pod: &Value) -> Option<PodView> {
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if !pod["metadata"]["deletionTimestamp"].is_null()
            || matches!(phase, "Succeeded" | "Failed")
        {
            return None;
        }
        let request = pod["spec"]["containers"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == CONTAINER)?["resources"]["requests"]["cpu"]
            .as_str()
            .and_then(cpu_millis);
        let placed = pod["status"]["startTime"]
            .as_str()
            .or(pod["metadata"]["creationTimestamp"].as_str());
        Some(PodView {
            name: pod["metadata"]["name"].as_str()?.to_owned(),
            request,
            actual: actual_cpu(pod),
            resize: resize_state(pod),
            pending_since: resize_pending_since(pod).and_then(seconds),
            placed_at: placed.and_then(seconds),
        })
    }

    /// Its pending resize is about CPU: the kubelet reports a CPU other than the spec's (a
    /// pending memory resize, the VPA's, leaves the CPU as it is).
    fn cpu_pending(&self) -> bool {
        matches!(
            self.resize,
            ResizeState::Deferred(_) | ResizeState::Infeasible(_)
        ) && (self.actual.is_none() || self.actual != self.request)
    }
}

/// What one reconcile decided: the children to apply (if any) and the status to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Children to apply, in order (empty when nothing needs applying).
    pub apply: Vec<Value>,
    /// The status to write.
    pub status: StreamPipelineStatus,
    /// Events to publish: (warning?, reason, note).
    pub events: Vec<(bool, String, String)>,
    /// In-place resizes to ask for, after the status is written: (pod, CPU request in m).
    pub resizes: Vec<(String, u64)>,
    /// Pods whose resize a node has just deferred or refused (counted once each).
    pub newly_pending: Vec<(String, ResizeState)>,
    /// The status read is older than the Deployment the operator last applied (a watch cache
    /// behind its own write): nothing is applied or written; the reconcile reads again.
    pub stale: bool,
}

/// The pure part of a reconcile: the pipeline, what its Deployment and VPA say, and now, in;
/// the plan out.
pub fn plan(
    sp: &StreamPipeline,
    observed: &Observed,
    placement: &Placement,
    config: &PolicyConfig,
    now: u64,
    reapply_every: Duration,
) -> Plan {
    let old = sp.status.clone().unwrap_or_default();
    let generation = sp.metadata.generation;
    let deployment = observed.deployment.as_ref();
    let recommendation = observed.recommendation.as_ref();
    let usage = observed.usage;
    let mut status = StreamPipelineStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let mut events = Vec::new();
    // Read-your-writes: a Deployment applied after the status that was read means this status
    // is stale; planning from it would undo the step that Deployment carries.
    // (A cache lags seconds; a status older than that was lost, and is planned from.)
    let ours = old.applied.as_ref().and_then(|a| seconds(&a.at));
    if deployment
        .and_then(|d| d.applied_at.as_deref())
        .and_then(seconds)
        .is_some_and(|at| ours.is_none_or(|ours| at > ours) && now < at + STALE_FOR_S)
    {
        return Plan {
            apply: Vec::new(),
            status: old,
            events,
            resizes: Vec::new(),
            newly_pending: Vec::new(),
            stale: true,
        };
    }
    let condition = |status: &mut StreamPipelineStatus,
                     type_: &str,
                     on: bool,
                     reason: &str,
                     message: String| {
        set_condition(
            &mut status.conditions,
            &old.conditions,
            type_,
            on,
            reason,
            message,
            now,
        );
    };

    let bounds = match check(sp) {
        Ok(bounds) => bounds,
        Err(problem) => {
            // Nothing is applied from a spec that cannot run; what runs keeps running.
            condition(
                &mut status,
                "Degraded",
                true,
                "InvalidSpec",
                problem.clone(),
            );
            condition(
                &mut status,
                "Progressing",
                false,
                "InvalidSpec",
                "fix the spec".into(),
            );
            if !has_condition(&old.conditions, "Degraded", "InvalidSpec") {
                events.push((true, "InvalidSpec".into(), problem));
            }
            return Plan {
                apply: Vec::new(),
                status,
                events,
                resizes: Vec::new(),
                newly_pending: Vec::new(),
                stale: false,
            };
        }
    };
    let res = &sp.spec.resources;
    let floor = u64::from(res.min_cpus) * 1000;
    let initial = Quantities {
        cpu: at_least_cpus(&res.initial.cpu, res.min_cpus),
        memory: res.initial.memory.clone(),
    };
    // The requests pods run with: in operator mode what it last applied, else the initial ones
    // (the VPA's updater resizes pods, not the Deployment's template).
    let applied = match (res.applied_by, &old.applied_recommendation) {
        (AppliedBy::Operator, Some(q)) => q.clone(),
        _ => initial.clone(),
    };
    let state = policy_state(&old.policy);
    // The operator owns the replica count: once it applied one, that is the current count (a
    // hand-scaled Deployment is put back below); before, what runs, or the initial count.
    let current = match (&old.applied, deployment) {
        (Some(_), _) => old.replicas,
        (None, Some(d)) => d.replicas,
        (None, None) => bounds.initial,
    };

    let (replicas, requests, decision) = if sp.spec.suspend {
        (0, applied.clone(), None)
    } else {
        let in_place = res.applied_by == AppliedBy::InPlace;
        let inputs = policy::Inputs {
            now_s: now,
            partitions: sp.spec.kafka.partitions,
            replicas: current,
            min_replicas: bounds.min,
            max_replicas: bounds.max,
            max_allowed: bounds.max_allowed,
            // In place, the VPA recommends memory only: this policy just realigns replicas and
            // waits for rollouts, and the fast loop does the rest.
            recommendation: recommendation
                .filter(|_| !in_place)
                .map(|r| policy::Recommendation {
                    target: r.cpu.max(floor),
                    uncapped_target: r.uncapped_cpu,
                }),
            applied_request: cpu_millis(&applied.cpu).unwrap_or(floor),
            usage,
            applied_by: match res.applied_by {
                AppliedBy::Vpa | AppliedBy::InPlace => policy::AppliedBy::Vpa,
                AppliedBy::Operator => policy::AppliedBy::Operator,
            },
            memory_moved: recommendation.is_some_and(|r| moved(&r.memory, &applied.memory, config)),
            rollout_in_progress: deployment.is_some_and(|d| d.in_progress),
        };
        let decision = policy::decide(config, &inputs, state);
        let (replicas, requests) = match decision.action {
            Action::Hold => (current, applied.clone()),
            Action::ScaleTo(to) => (to, applied.clone()),
            Action::SetRequest(cpu) => (
                current,
                Quantities {
                    cpu: millis_quantity(cpu),
                    memory: recommendation.map_or(applied.memory.clone(), |r| r.memory.clone()),
                },
            ),
        };
        (replicas, requests, Some(decision))
    };
    // In place: the fast loop, once replicas are aligned and no new template rolls out (a
    // missing replica holds replica steps, not resizes). Refused where the API server cannot
    // resize pods in place as the loop needs (before 1.35).
    let in_place_refused = res.applied_by == AppliedBy::InPlace
        && observed.server_minor.is_some_and(|minor| minor < 35);
    let fast = (res.applied_by == AppliedBy::InPlace && !sp.spec.suspend && !in_place_refused)
        .then(|| {
            let reason = decision.as_ref().map(|d| d.reason);
            let missing =
                reason == Some(Reason::RolloutInProgress) && deployment.is_some_and(|d| !d.rolling);
            let start = cpu_millis(&initial.cpu).unwrap_or(floor);
            let input = FastPlanInputs {
                observed,
                bounds: &bounds,
                replicas,
                start,
                floor,
                now,
                free: reason == Some(Reason::NoRecommendation) || missing,
                hold_replicas: missing,
            };
            fast_plan(sp, &input, old.policy.fast.as_ref(), &config.fast)
        });
    let replicas = fast.as_ref().map_or(replicas, |f| f.replicas);
    // In place, the template keeps the CPU it has (changing it alone would roll every pod),
    // except when it changes anyway: then new pods start at the loop's target.
    let requests = match (&fast, deployment) {
        (Some(f), Some(d)) => {
            let kept = d.template_cpu.map_or(requests.cpu.clone(), millis_quantity);
            let with = |cpu: String| Quantities {
                cpu,
                memory: requests.memory.clone(),
            };
            let kept_template = template_hash(&children_sized(
                sp,
                replicas,
                &with(kept.clone()),
                placement,
            ));
            if d.template.as_ref().is_none_or(|t| *t == kept_template) {
                with(kept)
            } else {
                with(f.status.target_cpu.clone())
            }
        }
        (Some(f), None) => Quantities {
            cpu: f.status.target_cpu.clone(),
            memory: requests.memory.clone(),
        },
        (None, _) => requests,
    };

    // Children: applied when they changed, when the generation moved, when the Deployment is
    // missing, or every `reapply_every` (drift repair).
    let mut children = children_sized(sp, replicas, &requests, placement);
    children.deployment["metadata"]["annotations"][POD_TEMPLATE] = json!(template_hash(&children));
    let mut objects: Vec<Value> = children
        .all()
        .into_iter()
        .map(|child| owned_by(child.clone(), sp))
        .collect();
    let hash = hash(&objects);
    let last_applied = old.applied.as_ref().and_then(|a| seconds(&a.at));
    // (A Deployment without the status's apply time: the last apply did not land.)
    let due = old.applied.as_ref().is_none_or(|a| a.hash != hash)
        || old.observed_generation != generation
        || deployment.is_none_or(|d| d.replicas != replicas)
        || deployment
            .and_then(|d| d.applied_at.as_deref())
            .is_some_and(|at| old.applied.as_ref().is_none_or(|a| a.at != at))
        || last_applied.is_none_or(|at| now >= at + reapply_every.as_secs());
    for object in objects.iter_mut().filter(|o| o["kind"] == "Deployment") {
        object["metadata"]["annotations"][APPLIED_AT] = json!(rfc3339(now));
    }
    let apply = if due { objects } else { Vec::new() };
    if due {
        status.applied = Some(AppliedChildren {
            hash,
            at: rfc3339(now),
        });
    }

    status.replicas = replicas;
    status.ready_replicas = deployment.map_or(0, |d| d.ready);
    status.partitions_per_replica = sp.spec.kafka.partitions.checked_div(replicas).unwrap_or(0);
    status.uncapped_cpu = recommendation.map(|r| millis_quantity(r.uncapped_cpu));
    status.applied_recommendation = match res.applied_by {
        AppliedBy::Operator => Some(requests.clone()),
        AppliedBy::Vpa => recommendation.map(|r| Quantities {
            cpu: millis_quantity(r.cpu),
            memory: r.memory.clone(),
        }),
        // The fast loop's CPU, the VPA's memory.
        AppliedBy::InPlace => fast.as_ref().map(|f| Quantities {
            cpu: f.status.target_cpu.clone(),
            memory: recommendation.map_or(requests.memory.clone(), |r| r.memory.clone()),
        }),
    };
    if let Some(d) = &decision {
        status.policy = policy_status(d);
    }
    if let Some(f) = &fast {
        status.policy.fast = Some(f.status.clone());
        if let Some(reason) = f.reason {
            status.policy.reason = Some(reason.to_owned());
        }
    }

    // Conditions.
    let stepping = decision.as_ref().and_then(|d| match d.action {
        Action::Hold => None,
        Action::ScaleTo(to) if d.reason == Reason::Realign => Some(("Realigning", format!("replicas {current} -> {to}: a divisor of {} partitions within the bounds", sp.spec.kafka.partitions))),
        Action::ScaleTo(to) if to > current => Some(("ScalingUp", format!("replicas {current} -> {to}: the VPA's uncapped CPU target presses against maxAllowed ({})", res.max_allowed.cpu))),
        Action::ScaleTo(to) => Some(("ScalingDown", format!("replicas {current} -> {to}: the load fits in fewer pods"))),
        Action::SetRequest(_) => Some(("ApplyingRequests", format!("requests cpu {} memory {} -> cpu {} memory {}", applied.cpu, applied.memory, requests.cpu, requests.memory))),
    });
    let stepping = stepping.or_else(|| fast.as_ref().and_then(|f| f.step.clone()));
    if let Some((reason, note)) = &stepping {
        events.push((false, (*reason).to_owned(), note.clone()));
    }
    let in_progress = deployment.is_some_and(|d| d.in_progress);
    match (&stepping, in_progress) {
        (Some((reason, note)), _) => {
            condition(&mut status, "Progressing", true, reason, note.clone())
        }
        (None, true) => condition(
            &mut status,
            "Progressing",
            true,
            "RolloutInProgress",
            "the Deployment is rolling out".into(),
        ),
        (None, false) => condition(
            &mut status,
            "Progressing",
            false,
            "Stable",
            "no rollout and no step due".into(),
        ),
    }
    let unsupported = in_place_refused.then(|| {
        (
            "InPlaceUnsupported".to_owned(),
            format!(
                "appliedBy: in-place needs Kubernetes 1.35 or later (this API server is 1.{}): pods keep the template's CPU; use appliedBy: vpa or operator, or upgrade",
                observed.server_minor.unwrap_or_default()
            ),
        )
    });
    let resize_refused = fast
        .as_ref()
        .and_then(|f| f.status.refused.as_ref())
        .map(|r| ("ResizeRefused".to_owned(), refused_note(r)));
    let degraded = deployment
        .and_then(|d| d.failure.clone())
        .or(unsupported)
        .or(resize_refused);
    if let Some((reason, message)) = &degraded
        && !has_condition(&old.conditions, "Degraded", reason)
        && reason != "ProgressDeadlineExceeded"
        && reason != "ReplicaFailure"
    {
        events.push((true, reason.clone(), message.clone()));
    }
    match degraded {
        Some((reason, message)) => condition(&mut status, "Degraded", true, &reason, message),
        None => condition(
            &mut status,
            "Degraded",
            false,
            "AsExpected",
            "the Deployment progresses".into(),
        ),
    }
    let limited = decision.as_ref().is_some_and(|d| d.scaling_limited);
    if limited {
        let note = format!(
            "pods press against maxAllowed cpu {} and no divisor of {} partitions above {current} is within replicas [{}, {}]: raise maxAllowed, replicas.max or the partitions",
            res.max_allowed.cpu, sp.spec.kafka.partitions, bounds.min, bounds.max
        );
        if !has_condition(&old.conditions, "ScalingLimited", "NoDivisorLeft") {
            events.push((true, "ScalingLimited".into(), note.clone()));
        }
        condition(&mut status, "ScalingLimited", true, "NoDivisorLeft", note);
    } else {
        condition(
            &mut status,
            "ScalingLimited",
            false,
            "WithinBounds",
            "replicas and pod size are within their bounds".into(),
        );
    }
    match deployment {
        _ if sp.spec.suspend => condition(
            &mut status,
            "Ready",
            false,
            "Suspended",
            "spec.suspend is true: no pods run".into(),
        ),
        None => condition(
            &mut status,
            "Ready",
            false,
            "Creating",
            "the Deployment is being created".into(),
        ),
        Some(d) if d.ready >= d.replicas && !d.in_progress && d.replicas == replicas => condition(
            &mut status,
            "Ready",
            true,
            "ReplicasReady",
            format!("{}/{} replicas ready", d.ready, replicas),
        ),
        Some(d) => condition(
            &mut status,
            "Ready",
            false,
            "ReplicasNotReady",
            format!("{}/{} replicas ready", d.ready, replicas),
        ),
    }
    if let Some(f) = &fast {
        let pending = pending_note(&f.pending);
        let reason = match &pending {
            Some((reason, _)) => *reason,
            None => "Settled",
        };
        if let Some((reason, note)) = &pending
            && !has_condition(&old.conditions, "ResizePending", reason)
        {
            events.push((true, format!("Resize{reason}"), note.clone()));
        }
        let note = pending.map_or_else(
            || "every pod runs the CPU the fast loop asked for, or is being resized".to_owned(),
            |(_, note)| note,
        );
        condition(
            &mut status,
            "ResizePending",
            !f.pending.is_empty(),
            reason,
            note,
        );
    }
    let (resizes, newly_pending) = fast.map_or_else(Default::default, |f| {
        let counted = &old
            .policy
            .fast
            .as_ref()
            .map(|s| s.pending_pods.clone())
            .unwrap_or_default();
        let newly = f
            .pending
            .into_iter()
            .filter(|(pod, _)| !counted.contains(pod))
            .collect();
        (f.resizes, newly)
    });
    Plan {
        apply,
        status,
        events,
        resizes,
        newly_pending,
        stale: false,
    }
}

/// The hash of the Deployment's pod template with the pipeline container's CPU left out.
fn template_hash(children: &sluice_vpa::manifests::Children) -> String {
    let mut template = children.deployment["spec"]["template"].clone();
    for container in template["spec"]["containers"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == CONTAINER)
    {
        for kind in ["requests", "limits"] {
            if let Some(resources) = container["resources"][kind].as_object_mut() {
                resources.remove("cpu");
            }
        }
    }
    short_sha256([template.to_string().as_bytes()])
}

/// How long a target the API server refused is not asked again.
pub const REFUSED_S: u64 = 600;
/// A status older than its Deployment's last apply is a lagging cache for this long; after it,
/// a status that was lost (or rewritten by hand) is planned from as it is.
pub const STALE_FOR_S: u64 = 120;

/// What the fast loop looks at in one reconcile.
struct FastPlanInputs<'a> {
    observed: &'a Observed,
    bounds: &'a Bounds,
    /// Replicas after the slow policy (which only realigns them here).
    replicas: u32,
    /// The CPU request (m) a pipeline starts with (`initial`, at least `minCpus`).
    start: u64,
    /// `minCpus` in m.
    floor: u64,
    now: u64,
    /// Replicas are aligned and no new pod template rolls out: the loop may tick and resize.
    free: bool,
    /// A replica is missing (not a rollout): resize the pods that run, step nothing.
    hold_replicas: bool,
}

/// What the fast loop decided in one reconcile.
#[derive(Debug, Clone, PartialEq)]
struct FastPlan {
    replicas: u32,
    /// Its memory, for the status.
    status: FastStatus,
    /// The reason for `status.policy.reason`, when the loop ran.
    reason: Option<&'static str>,
    /// A replica step: (Event reason, note).
    step: Option<(&'static str, String)>,
    /// Pods to resize: (pod, CPU m).
    resizes: Vec<(String, u64)>,
    /// Pods whose CPU resize a node deferred (for `DEFER_GRACE_S`) or refused: patched back.
    pending: Vec<(String, ResizeState)>,
}

/// `appliedBy: in-place`: once a minute, the fast loop on the fullest pod's live usage; on every
/// reconcile without a rollout, pods whose CPU request is not the loop's target are resized to it
/// (except a pod the kubelet is resizing).
///
/// No CPU resize is left pending (a pending resize blocks the VPA's memory resizes, and its
/// updater evicts the pod): one a node refused (`Infeasible`), or deferred for `DEFER_GRACE_S`,
/// is patched back to the CPU the pod has, and the pod is held there for `HOLD_S`. Such a pod
/// counts as outgrowing its node, which a replica step (smaller pods) answers when a divisor is
/// left, unless it was placed in the last `FRESH_S` (then its node was chosen for the template's
/// size, which says nothing about load). Resizes pending for memory are the VPA's and ignored; a
/// resize the kubelet failed (`Error`) holds nothing.
fn fast_plan(
    sp: &StreamPipeline,
    input: &FastPlanInputs<'_>,
    old: Option<&FastStatus>,
    tuning: &FastLoop,
) -> FastPlan {
    let FastPlanInputs {
        observed,
        bounds,
        replicas,
        start,
        floor,
        now,
        free,
        hold_replicas,
    } = *input;
    let mut status = old.cloned().unwrap_or_else(|| FastStatus {
        target_cpu: millis_quantity(start.max(floor)),
        ..FastStatus::default()
    });
    let mut target = cpu_millis(&status.target_cpu).unwrap_or(start).max(floor);
    let pods = &observed.pods;
    let answered = |p: &PodView| {
        p.cpu_pending()
            && match p.resize {
                ResizeState::Infeasible(_) => true,
                _ => p
                    .pending_since
                    .is_none_or(|since| now >= since + DEFER_GRACE_S),
            }
    };
    let fresh = |p: &PodView| {
        matches!(p.resize, ResizeState::Deferred(_))
            && p.placed_at.is_some_and(|at| now < at + FRESH_S)
    };
    let pending: Vec<(String, ResizeState)> = pods
        .iter()
        .filter(|p| answered(p))
        .map(|p| (p.name.clone(), p.resize.clone()))
        .collect();
    // The node said no: back to what the pod has, and held there.
    let patch_back: Vec<(String, u64)> = pods
        .iter()
        .filter(|p| answered(p))
        .filter_map(|p| Some((p.name.clone(), p.actual?)))
        .collect();
    status.held.retain(|h| {
        seconds(&h.until).is_some_and(|until| now < until) && pods.iter().any(|p| p.name == h.pod)
    });
    for (pod, cpu) in &patch_back {
        status.held.retain(|h| h.pod != *pod);
        status.held.push(HeldPod {
            pod: pod.clone(),
            cpu: millis_quantity(*cpu),
            until: rfc3339(now + HOLD_S),
        });
    }
    status.pending_pods = pending.iter().map(|(pod, _)| pod.clone()).collect();
    if status
        .refused
        .as_ref()
        .is_some_and(|r| seconds(&r.at).is_none_or(|at| now >= at + REFUSED_S))
    {
        status.refused = None;
    }
    let mut plan = FastPlan {
        replicas,
        status: status.clone(),
        reason: None,
        step: None,
        resizes: patch_back.clone(),
        pending: pending.clone(),
    };
    if !free {
        return plan;
    }
    let due = seconds(&status.ticked_at).is_none_or(|at| now + 5 >= at + 60);
    if let (true, Some(fullest)) = (due, observed.fullest_usage) {
        let cores = |m: u64| m as f64 / 1000.0;
        let mut state = FastState {
            window: status.window.iter().map(|m| cores(*m)).collect(),
            low_for: status.low_for as usize,
            high_for: status.high_for as usize,
            fits_for: status.fits_for as usize,
            steps: status
                .steps
                .iter()
                .filter_map(|at| seconds(at))
                .map(|s| s / 60)
                .collect(),
        };
        let partitions = sp.spec.kafka.partitions;
        let aligned = aligned_replicas(partitions, bounds.min, bounds.max);
        let decided = policy::fast_decide(
            tuning,
            &FastInputs {
                now_min: now / 60,
                partitions,
                aligned: &aligned,
                replicas,
                request: cores(target),
                // The smallest pod's limit: a pod held below the target (patched back after a
                // deferral) is throttled at its own, and its usage says so only against it.
                // (Pods that run: the kubelet reports their CPU; a pending one uses nothing.)
                limit: cores(
                    pods.iter().filter_map(|p| p.actual).min().unwrap_or(target) * CPU_BURST,
                ),
                fullest_usage: cores(fullest),
                running: observed.running.unwrap_or(replicas),
                // Unknown here: a node that is full says so by deferring the resize.
                node_free: f64::INFINITY,
                min_cpus: cores(floor),
                max_allowed: cores(bounds.max_allowed),
                // Asked and not answered yet: the kubelet applies it, or a node defers it.
                resize_pending: pods.iter().any(|p| {
                    p.resize == ResizeState::InProgress || (p.cpu_pending() && !answered(p))
                }),
                deferred: pods.iter().any(|p| answered(p) && !fresh(p)),
                hold_replicas,
            },
            &mut state,
        );
        let millis = |c: f64| ((c * 1000.0).round() as u64).max(floor);
        plan.reason = Some(match decided {
            FastAction::Hold if state.high_for > 0 => "PressureBuilding",
            FastAction::Hold | FastAction::Deferred => "Steady",
            FastAction::Resize(to) => {
                target = millis(to);
                "Resizing"
            }
            FastAction::StepTo(to, request) => {
                let max = &sp.spec.resources.max_allowed.cpu;
                plan.step = Some(if to > replicas {
                    (
                        "ScalingUp",
                        format!(
                            "replicas {replicas} -> {to}: the busiest pod uses {}m and would have to outgrow maxAllowed ({max}) or its node; pods are resized to {} after the step",
                            fullest,
                            millis_quantity(millis(request))
                        ),
                    )
                } else {
                    (
                        "ScalingDown",
                        format!(
                            "replicas {replicas} -> {to}: the load has fitted {to} pods for {} minutes; pods are resized to {} after the step",
                            tuning.step_down_after_min,
                            millis_quantity(millis(request))
                        ),
                    )
                });
                plan.replicas = to;
                target = millis(request);
                if to > replicas { "StepUp" } else { "StepDown" }
            }
        });
        plan.status = FastStatus {
            target_cpu: millis_quantity(target),
            ticked_at: rfc3339(now),
            window: state
                .window
                .iter()
                .map(|c| (c * 1000.0).round() as u64)
                .collect(),
            low_for: state.low_for as u32,
            high_for: state.high_for as u32,
            fits_for: state.fits_for as u32,
            steps: state.steps.iter().map(|m| rfc3339(m * 60)).collect(),
            // Smaller pods after a step: nothing is held back from them.
            held: if plan.step.is_some() {
                Vec::new()
            } else {
                status.held.clone()
            },
            ..status.clone()
        };
    }
    // Replicas and requests never change in one rollout: after a step, pods are resized once
    // the rollout is over. A refused target is not asked again for a while; a held pod does
    // not grow past what it has.
    let refused = plan
        .status
        .refused
        .as_ref()
        .is_some_and(|r| cpu_millis(&r.target_cpu) == Some(target));
    if !refused {
        // (A refusal of another target says nothing about this one.)
        plan.status.refused = None;
    }
    if plan.step.is_none() && !refused {
        let held = |p: &PodView| {
            plan.status
                .held
                .iter()
                .any(|h| h.pod == p.name && cpu_millis(&h.cpu).is_some_and(|cpu| target > cpu))
        };
        plan.resizes.extend(
            pods.iter()
                .filter(|p| p.request != Some(target) && p.resize != ResizeState::InProgress)
                // (Pending: answered above, or still up to the kubelet.)
                .filter(|p| !p.cpu_pending() && !held(p))
                // A pod not running yet (no CPU reported) is placed at the template's size.
                .filter(|p| p.actual.is_some())
                .map(|p| (p.name.clone(), target)),
        );
    }
    plan
}

/// The `ResizePending` condition's reason and message for pods a node deferred or refused.
fn pending_note(pending: &[(String, ResizeState)]) -> Option<(&'static str, String)> {
    let infeasible = pending
        .iter()
        .any(|(_, s)| matches!(s, ResizeState::Infeasible(_)));
    let (_, first) = pending.first()?;
    let why = match first {
        ResizeState::Deferred(m) | ResizeState::Infeasible(m) => m.as_str(),
        _ => "",
    };
    let pods: Vec<&str> = pending.iter().map(|(p, _)| p.as_str()).collect();
    let reason = if infeasible { "Infeasible" } else { "Deferred" };
    Some((
        reason,
        format!(
            "{reason} CPU resize of {} ({why}): patched back to the CPU the pods have and not asked again for {} minutes; a replica step (smaller pods) answers it when a divisor is left, else the pods keep their CPU",
            pods.join(", "),
            HOLD_S / 60
        ),
    ))
}

/// The `Degraded/ResizeRefused` message of a refused resize (the reconcile that met the refusal
/// and every plan after it say the same).
fn refused_note(r: &RefusedResize) -> String {
    format!(
        "the API server refused resizing pods to cpu {}: {} (asked again {} minutes after)",
        r.target_cpu,
        r.message,
        REFUSED_S / 60
    )
}

/// `old` with `Degraded/ApplyRefused` saying what the API server refused.
fn refused(old: StreamPipelineStatus, message: String, now: u64) -> StreamPipelineStatus {
    let mut status = old.clone();
    set_condition(
        &mut status.conditions,
        &old.conditions,
        "Degraded",
        true,
        "ApplyRefused",
        message,
        now,
    );
    status
}

/// Did the memory target move by more than the policy's threshold from what is applied?
fn moved(target: &str, applied: &str, config: &PolicyConfig) -> bool {
    match (memory_bytes(target), memory_bytes(applied)) {
        (Some(t), Some(a)) if a > 0 => {
            (t as f64 - a as f64).abs() / a as f64 > config.resource_change_min
        }
        _ => false,
    }
}

fn owned_by(mut child: Value, sp: &StreamPipeline) -> Value {
    if let Some(owner) = sp.controller_owner_ref(&()) {
        child["metadata"]["ownerReferences"] =
            json!([serde_json::to_value(owner).expect("an owner reference serializes")]);
    }
    child
}

fn hash(objects: &[Value]) -> String {
    let texts: Vec<String> = objects.iter().map(Value::to_string).collect();
    short_sha256(texts.iter().map(String::as_bytes))
}

fn rfc3339(seconds: u64) -> String {
    Timestamp::from_second(seconds as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn seconds(rfc3339: &str) -> Option<u64> {
    rfc3339
        .parse::<Timestamp>()
        .ok()
        .and_then(|t| u64::try_from(t.as_second()).ok())
}

fn policy_state(status: &PolicyStatus) -> policy::State {
    let at = |t: &Option<String>| t.as_deref().and_then(seconds);
    policy::State {
        pressure_since: at(&status.pressure_since),
        relief_since: at(&status.relief_since),
        last_change: at(&status.last_change).map(|at| {
            let kind = match status.last_change_kind.as_deref() {
                Some("Resources") => Change::Resources,
                _ => Change::Replicas,
            };
            (at, kind)
        }),
    }
}

fn policy_status(d: &Decision) -> PolicyStatus {
    PolicyStatus {
        pressure_since: d.state.pressure_since.map(rfc3339),
        relief_since: d.state.relief_since.map(rfc3339),
        last_change: d.state.last_change.map(|(at, _)| rfc3339(at)),
        last_change_kind: d.state.last_change.map(|(_, kind)| format!("{kind:?}")),
        reason: Some(format!("{:?}", d.reason)),
        fast: None,
    }
}

fn has_condition(conditions: &[Condition], type_: &str, reason: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True" && c.reason == reason)
}

/// Sets a condition, keeping its transition time when its status did not change.
fn set_condition(
    conditions: &mut Vec<Condition>,
    old: &[Condition],
    type_: &str,
    on: bool,
    reason: &str,
    message: String,
    now: u64,
) {
    let status = if on { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| rfc3339(now), |c| c.last_transition_time.clone());
    let condition = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: since,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

/// Pods (`v1`), untyped: the operator reads names, the pipeline container's CPU request and the
/// resize conditions, and patches the `resize` subresource.
pub fn pods_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods")
}

/// The `PodMetrics` resource (`metrics.k8s.io/v1beta1`, served by metrics-server).
pub fn pod_metrics_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics"),
        "pods",
    )
}

/// The minor version in an API server's `/version` (`"36"`, or `"36+"` on some providers).
pub fn minor_version(info: &k8s_openapi::apimachinery::pkg::version::Info) -> Option<u32> {
    let digits: String = info
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The label selector of `name`'s pods.
fn pod_selector(name: &str) -> String {
    format!("app.kubernetes.io/name=sluice-pipeline,app.kubernetes.io/instance={name}")
}

/// CPU (m) the pipeline container of each of `name`'s pods uses now; `None` when the cluster
/// has no metrics API (the policy then trusts the VPA alone).
async fn usage(client: &Client, namespace: &str, name: &str) -> Option<Vec<u64>> {
    let api =
        Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &pod_metrics_resource());
    match api
        .list(&kube::api::ListParams::default().labels(&pod_selector(name)))
        .await
    {
        Ok(list) => Some(list.items.iter().map(|p| pod_cpu(&p.data)).collect()),
        Err(e) => {
            tracing::debug!(pipeline = %name, %namespace, "no pod metrics: {e}");
            None
        }
    }
}

/// The CPU (m) of the pipeline container in a `PodMetrics` object.
pub fn pod_cpu(pod: &Value) -> u64 {
    pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == CONTAINER)
        .filter_map(|c| c["usage"]["cpu"].as_str().and_then(cpu_millis))
        .sum()
}

/// Reconciles one pipeline.
pub async fn reconcile(sp: Arc<StreamPipeline>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let timer = ctx.metrics.reconcile_seconds.start_timer();
    let result = reconcile_once(sp, &ctx).await;
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    result
}

async fn reconcile_once(sp: Arc<StreamPipeline>, ctx: &Context) -> Result<Requeue, Error> {
    let name = sp.name_any();
    let namespace = sp
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let client = ctx.client.clone();
    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get_opt(&name)
        .await?;
    let vpa = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &vpa_resource())
        .get_opt(&name)
        .await?;
    let per_pod = usage(&client, &namespace, &name).await;
    let pods = if sp.spec.resources.applied_by == AppliedBy::InPlace && !sp.spec.suspend {
        Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &pods_resource())
            .list(&kube::api::ListParams::default().labels(&pod_selector(&name)))
            .await?
            .items
            .iter()
            .filter_map(|p| PodView::from_pod(&serde_json::to_value(p).unwrap_or_default()))
            .collect()
    } else {
        Vec::new()
    };
    let observed = Observed {
        deployment: deployment.as_ref().map(Rollout::from_deployment),
        recommendation: vpa
            .as_ref()
            .and_then(|v| VpaRecommendation::from_vpa(&v.data)),
        usage: per_pod.as_ref().map(|p| p.iter().sum()),
        running: per_pod.as_ref().map(|p| p.len() as u32),
        fullest_usage: per_pod.and_then(|p| p.into_iter().max()),
        pods,
        server_minor: ctx.server_minor,
    };
    let now = (ctx.clock)();
    let plan = plan(
        &sp,
        &observed,
        &ctx.placement,
        &ctx.policy,
        now,
        ctx.reapply_every,
    );

    if plan.stale {
        tracing::debug!(pipeline = %name, %namespace, "status read is older than the Deployment last applied: reading again");
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    let params = PatchParams::apply(MANAGER).force();
    // Status writes carry the resourceVersion read: a status that changed since (this
    // operator's own last write not yet in the watch cache, another replica's) is not
    // overwritten; the reconcile reads again.
    let mut statuses = StatusWriter {
        api: Api::namespaced(client.clone(), &namespace),
        name: name.clone(),
        version: sp.resource_version(),
        written: sp.status.clone(),
    };
    let again = || {
        tracing::debug!(pipeline = %name, %namespace, "status changed since it was read: reading again");
        Ok(Requeue::requeue(Duration::from_secs(1)))
    };
    // The status first: a Deployment is never newer than the status that explains it (a crash
    // between the two leaves children to re-apply, never a step to undo).
    if !statuses.write(plan.status.clone()).await? {
        return again();
    }
    for child in &plan.apply {
        let child_name = child["metadata"]["name"].as_str().unwrap_or(&name);
        let applied = Api::<DynamicObject>::namespaced_with(
            client.clone(),
            &namespace,
            &child_resource(child),
        )
        .patch(child_name, &params, &Patch::Apply(child))
        .await;
        if let Err(e) = applied {
            // Refused (an admission webhook, a quota, a schema): say so in the status; the
            // policy's state does not advance. Conflicts and throttling are just retried.
            let old = sp.status.clone().unwrap_or_default();
            if let kube::Error::Api(status) = &e
                && (400..500).contains(&status.code)
                && status.code != 409
                && status.code != 429
            {
                ctx.metrics.apply_refusals.inc();
                let kind = child["kind"].as_str().unwrap_or("object");
                let message = format!("{kind} {child_name}: {}", status.message);
                statuses.write(refused(old, message, now)).await?;
            } else {
                statuses.write(old).await?;
            }
            return Err(e.into());
        }
    }
    for (_, state) in &plan.newly_pending {
        let result = match state {
            ResizeState::Infeasible(_) => "infeasible",
            _ => "deferred",
        };
        ctx.metrics.resizes.with_label_values(&[result]).inc();
    }
    let mut events = plan.events;
    let pods = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &pods_resource());
    for (pod, millis) in &plan.resizes {
        let body = cpu_resize_patch(*millis);
        match pods
            .patch_subresource(
                "resize",
                pod,
                &PatchParams::default(),
                &Patch::Strategic(&body),
            )
            .await
        {
            Ok(_) => {
                ctx.metrics.resizes.with_label_values(&["applied"]).inc();
                tracing::info!(pipeline = %name, %namespace, %pod, cpu = %millis_quantity(*millis), "pod resized in place");
            }
            // The pod is gone, or changed since it was listed: the next reconcile sees.
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {
                tracing::debug!(pipeline = %name, %namespace, %pod, "resize not applied: {}", status.message);
            }
            // Refused (a quota, an admission policy, a limit range): a condition says so, and
            // the target is not asked again for `REFUSED_S`.
            Err(kube::Error::Api(status)) if (400..500).contains(&status.code) => {
                ctx.metrics.resizes.with_label_values(&["refused"]).inc();
                let message = format!("pod {pod}: {}", status.message);
                tracing::warn!(pipeline = %name, %namespace, "in-place resize refused: {message}");
                let record = RefusedResize {
                    target_cpu: millis_quantity(*millis),
                    message: message.clone(),
                    at: rfc3339(now),
                };
                let mut refused = statuses.written.clone().unwrap_or_default();
                let old = refused.conditions.clone();
                set_condition(
                    &mut refused.conditions,
                    &old,
                    "Degraded",
                    true,
                    "ResizeRefused",
                    refused_note(&record),
                    now,
                );
                if let Some(fast) = refused.policy.fast.as_mut() {
                    fast.refused = Some(record);
                }
                if !statuses.write(refused).await? {
                    return again();
                }
                events.push((true, "ResizeRefused".to_owned(), message));
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut requeue = ctx.resync;
    if sp.spec.plugin.upgrade == PluginUpgrade::InPlace && !sp.spec.suspend {
        match upgrade_in_place(&sp, ctx, &namespace, &mut statuses, &mut events).await? {
            Some(sooner) => requeue = requeue.min(sooner),
            None => return again(),
        }
    }
    let reference = sp.object_ref(&());
    for (warning, reason, note) in events {
        tracing::info!(pipeline = %name, %namespace, %reason, "{note}");
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.clone(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        let type_ = if warning { "Warning" } else { "Normal" };
        ctx.metrics
            .events
            .with_label_values(&[type_, reason.as_str()])
            .inc();
        // An event that cannot be written is not worth failing the reconcile for.
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(pipeline = %name, %namespace, %reason, "event not written: {e}");
        }
    }
    Ok(Requeue::requeue(requeue))
}

/// How long a pod's admin endpoint may take to answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A swap drains every partition first: the pod answers once it is done.
const SWAP_TIMEOUT: Duration = Duration::from_secs(300);
/// How soon to look again while a pod's new version is on trial.
const UPGRADE_POLL: Duration = Duration::from_secs(5);

/// `plugin.upgrade: in-place`: asks the running pods, one at a time, to swap to the spec's
/// library (`sluice_vpa::upgrade::next_step`), and rolls them instead when one cannot. Returns
/// how soon to look again (`None`: the status changed under us, read again).
async fn upgrade_in_place(
    sp: &StreamPipeline,
    ctx: &Context,
    namespace: &str,
    statuses: &mut StatusWriter,
    events: &mut Vec<(bool, String, String)>,
) -> Result<Option<Duration>, Error> {
    let Some(wanted) = sp.spec.plugin.sha256.clone() else {
        return Ok(Some(ctx.resync)); // refused by `check` before anything was applied
    };
    let wanted = wanted.to_ascii_lowercase();
    let name = sp.name_any();
    let current = statuses.written.clone().unwrap_or_default();
    let known = current.plugin_upgrade.clone();
    if known.as_ref().and_then(|u| u.rolled.as_deref()) == Some(wanted.as_str()) {
        return Ok(Some(ctx.resync)); // rolling out instead: the new pods run it
    }
    let listed =
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), namespace, &pods_resource())
            .list(&kube::api::ListParams::default().labels(&pod_selector(&name)))
            .await?;
    let mut pods = Vec::new();
    for pod in &listed.items {
        let pod = serde_json::to_value(pod).unwrap_or_default();
        let running =
            pod["status"]["phase"] == "Running" && pod["metadata"]["deletionTimestamp"].is_null();
        let (Some(pod_name), Some(ip)) = (
            pod["metadata"]["name"].as_str(),
            pod["status"]["podIP"].as_str(),
        ) else {
            continue;
        };
        if !running {
            continue;
        }
        let url = format!("http://{ip}:{ADMIN_PORT}/status");
        let view = blocking_http(move || {
            let agent = agent(ADMIN_TIMEOUT);
            agent
                .get(&url)
                .call()
                .ok()?
                .body_mut()
                .read_json::<Value>()
                .ok()
        })
        .await
        .and_then(|status| PodPlugin::from_status(pod_name, &status));
        pods.push((pod_name.to_owned(), view));
    }
    if pods.is_empty() {
        return Ok(Some(UPGRADE_POLL));
    }
    let mut next = known.clone().unwrap_or_default();
    let step = next_step(&wanted, &pods, known.as_ref());
    let (sooner, event) = match &step {
        Step::Done => {
            let done = format!("every pod runs plugin sha256 {}", &wanted[..12]);
            if known
                .as_ref()
                .is_none_or(|k| k.sha256 == wanted && k.message == done)
                || known.is_none()
            {
                return Ok(Some(ctx.resync));
            }
            next = PluginUpgradeStatus {
                sha256: wanted.clone(),
                pod: None,
                message: done.clone(),
                ..next
            };
            (ctx.resync, Some((false, "PluginUpgraded".to_owned(), done)))
        }
        Step::Wait(_) => return Ok(Some(UPGRADE_POLL)),
        Step::Upgrade(pod) => {
            let ip = listed
                .items
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(pod.as_str()))
                .and_then(|p| p.data["status"]["podIP"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let answer = match &ctx.upgrade_token {
                None => Err("the operator has no SLUICE_VPA_UPGRADE_TOKEN".to_owned()),
                Some(token) => {
                    let (token, path) = (token.clone(), sp.spec.plugin.path.clone());
                    let body = serde_json::json!({"path": path, "sha256": wanted}).to_string();
                    let url = format!("http://{ip}:{ADMIN_PORT}/plugin");
                    blocking_http(move || {
                        let agent = agent(SWAP_TIMEOUT);
                        let mut response = agent
                            .post(&url)
                            .header("Authorization", &format!("Bearer {token}"))
                            .header("Content-Type", "application/json")
                            .send(&body)
                            .map_err(|e| e.to_string());
                        Some(match &mut response {
                            Ok(r) if r.status().as_u16() == 200 => Ok(()),
                            Ok(r) => Err(format!(
                                "{} {}",
                                r.status().as_u16(),
                                r.body_mut().read_to_string().unwrap_or_default().trim()
                            )),
                            Err(e) => Err(e.clone()),
                        })
                    })
                    .await
                    .unwrap_or_else(|| Err("no answer".into()))
                }
            };
            match answer {
                Ok(()) => {
                    let note = format!("pod {pod}: swapping to {} in place", sp.spec.plugin.path);
                    next = PluginUpgradeStatus {
                        sha256: wanted.clone(),
                        pod: Some(pod.clone()),
                        message: note.clone(),
                        ..next
                    };
                    (
                        UPGRADE_POLL,
                        Some((false, "PluginUpgrading".to_owned(), note)),
                    )
                }
                Err(why) => roll(
                    &mut next,
                    &wanted,
                    format!("pod {pod} refused the upgrade: {why}"),
                ),
            }
        }
        Step::Roll(why) => roll(&mut next, &wanted, why.clone()),
    };
    if !statuses
        .write(StreamPipelineStatus {
            plugin_upgrade: Some(next),
            ..current
        })
        .await?
    {
        return Ok(None);
    }
    if let Some(event) = event {
        events.push(event);
    }
    Ok(Some(sooner))
}

/// The upgrade could not be done in place: the pod template takes the new sha256 (a rollout).
fn roll(
    next: &mut PluginUpgradeStatus,
    wanted: &str,
    why: String,
) -> (Duration, Option<(bool, String, String)>) {
    let note = format!("rolling every pod instead: {why}");
    *next = PluginUpgradeStatus {
        sha256: wanted.to_owned(),
        pod: None,
        rolled: Some(wanted.to_owned()),
        message: note.clone(),
    };
    (
        Duration::from_secs(1),
        Some((true, "PluginUpgradeRolled".to_owned(), note)),
    )
}

/// A blocking HTTP call, off the async runtime.
async fn blocking_http<T: Send + 'static>(
    call: impl FnOnce() -> Option<T> + Send + 'static,
) -> Option<T> {
    tokio::task::spawn_blocking(call).await.ok().flatten()
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// Writes a pipeline's status by server-side apply with the resourceVersion last read or
/// written as a precondition: a status that changed since (this operator's own last write not
/// yet in the watch cache, another replica's) is not overwritten.
struct StatusWriter {
    api: Api<StreamPipeline>,
    name: String,
    version: Option<String>,
    written: Option<StreamPipelineStatus>,
}

impl StatusWriter {
    /// Writes `status` unless it is what is there; `false` when the precondition failed.
    async fn write(&mut self, status: StreamPipelineStatus) -> Result<bool, kube::Error> {
        if self.written.as_ref() == Some(&status) {
            return Ok(true);
        }
        let body = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "StreamPipeline",
            "metadata": {"resourceVersion": self.version},
            "status": status,
        });
        let params = PatchParams::apply(MANAGER).force();
        match self
            .api
            .patch_status(&self.name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(now) => {
                self.version = now.resource_version();
                self.written = Some(status);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// What to do after a failed reconcile: log it and retry soon.
pub fn error_policy(sp: Arc<StreamPipeline>, error: &Error, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(pipeline = %sp.name_any(), namespace = ?sp.namespace(), "reconcile failed, retrying in 15 s: {error}");
    Requeue::requeue(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_vpa::crd::AppliedBy;

    const NOW: u64 = 1_800_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    /// The example pipeline as the API server returns it: namespace, uid, generation.
    fn pipeline() -> StreamPipeline {
        let mut sp = sluice_vpa::repo::example().unwrap();
        sp.metadata.uid = Some("6f1c2a9e-0000-4000-8000-000000000001".into());
        sp.metadata.generation = Some(1);
        sp
    }

    fn ready(replicas: u32) -> Rollout {
        Rollout {
            replicas,
            ready: replicas,
            ..Rollout::default()
        }
    }

    fn rec(cpu: u64, uncapped: u64, memory: &str) -> VpaRecommendation {
        VpaRecommendation {
            cpu,
            uncapped_cpu: uncapped,
            memory: memory.into(),
        }
    }

    fn run(
        sp: &StreamPipeline,
        d: Option<&Rollout>,
        r: Option<&VpaRecommendation>,
        now: u64,
    ) -> Plan {
        let observed = Observed {
            deployment: d.cloned(),
            recommendation: r.cloned(),
            ..Observed::default()
        };
        plan_at(sp, &observed, now)
    }

    /// `plan` with the neutral placement, the default policy and an hour's drift repair.
    fn plan_at(sp: &StreamPipeline, observed: &Observed, now: u64) -> Plan {
        plan(
            sp,
            observed,
            &Placement::neutral(),
            &PolicyConfig::default(),
            now,
            HOUR,
        )
    }

    /// The example pipeline with `appliedBy: in-place`.
    /// (At most 2 CPUs a pod: a pod wanting 1.7 is a large one, whose deferral a step answers.)
    fn in_place() -> StreamPipeline {
        let mut sp = pipeline();
        sp.spec.resources.applied_by = AppliedBy::InPlace;
        sp.spec.resources.max_allowed.cpu = "2".into();
        sp
    }

    /// A pod running what it asks for, or (a resize pending) still at 1 CPU since `NOW`.
    fn pod(name: &str, request: u64, resize: ResizeState) -> PodView {
        let pending = matches!(
            resize,
            ResizeState::Deferred(_) | ResizeState::Infeasible(_)
        );
        PodView {
            name: name.into(),
            request: Some(request),
            actual: Some(if pending { 1000 } else { request }),
            resize,
            pending_since: pending.then_some(NOW),
            placed_at: Some(NOW - 3600),
        }
    }

    /// A reconcile of an in-place pipeline whose busiest pod uses `fullest` m.
    fn run_fast(
        sp: &StreamPipeline,
        d: Option<&Rollout>,
        fullest: Option<u64>,
        pods: &[PodView],
        now: u64,
    ) -> Plan {
        let observed = Observed {
            deployment: d.cloned(),
            recommendation: Some(rec(1000, 1000, "1Gi")),
            usage: fullest.map(|u| u * pods.len() as u64),
            fullest_usage: fullest,
            running: None,
            pods: pods.to_vec(),
            server_minor: Some(36),
        };
        plan_at(sp, &observed, now)
    }

    fn fast(plan: &Plan) -> &FastStatus {
        plan.status.policy.fast.as_ref().unwrap()
    }

    #[test]
    fn in_place_pods_are_resized_to_the_fast_target_never_during_a_rollout() {
        let mut sp = in_place();
        let first = run_fast(&sp, None, None, &[], NOW);
        assert_eq!(
            fast(&first).target_cpu,
            "1",
            "starts at the initial request"
        );
        sp.status = Some(first.status);
        let settled = [
            pod("p-0", 1000, ResizeState::Settled),
            pod("p-1", 1000, ResizeState::Settled),
        ];
        // 1.5 cores on 1-core pods: up at once to 1.5 x 1.1, rounded up to 1.7.
        let up = run_fast(&sp, Some(&ready(2)), Some(1500), &settled, NOW + 60);
        assert_eq!(
            up.resizes,
            [("p-0".to_owned(), 1700), ("p-1".to_owned(), 1700)]
        );
        assert!(up.apply.is_empty(), "a resize rolls nothing out");
        assert_eq!(fast(&up).target_cpu, "1700m");
        assert_eq!(fast(&up).window, [1500]);
        assert_eq!(up.status.policy.reason.as_deref(), Some("Resizing"));
        assert_eq!(
            up.status.applied_recommendation.as_ref().unwrap().cpu,
            "1700m"
        );
        assert_eq!(condition(&up.status, "ResizePending").status, "False");
        sp.status = Some(up.status.clone());
        // 20 s later (a watch event): the loop does not tick again, one pod still being resized
        // is left alone, the other (its patch lost) is asked again.
        let again = run_fast(
            &sp,
            Some(&ready(2)),
            Some(1500),
            &[
                pod("p-0", 1700, ResizeState::InProgress),
                pod("p-1", 1000, ResizeState::Settled),
            ],
            NOW + 80,
        );
        assert_eq!(fast(&again).ticked_at, fast(&up).ticked_at);
        assert_eq!(again.resizes, [("p-1".to_owned(), 1700)]);
        // During a rollout: no tick, no resize.
        let rolling = Rollout {
            in_progress: true,
            rolling: true,
            ..ready(2)
        };
        let during = run_fast(&sp, Some(&rolling), Some(3000), &settled, NOW + 120);
        assert!(during.resizes.is_empty());
        assert_eq!(fast(&during), fast(&up));
        // Without metrics the loop waits, and pods keep the last target.
        let blind = run_fast(&sp, Some(&ready(2)), None, &settled, NOW + 180);
        assert_eq!(fast(&blind), fast(&up));
        assert_eq!(blind.resizes.len(), 2);
    }

    /// An in-place pipeline whose loop has ticked and asked for `target` m (no step left today
    /// when `budget_spent`).
    fn ticked(target: u64, budget_spent: bool) -> StreamPipeline {
        let mut sp = in_place();
        let mut status = run_fast(&sp, None, None, &[], NOW - 120).status;
        let fast = status.policy.fast.as_mut().unwrap();
        fast.target_cpu = millis_quantity(target);
        fast.ticked_at = rfc3339(NOW - 60);
        if budget_spent {
            fast.steps = (1..=4).map(|h| rfc3339(NOW - h * 3000)).collect();
        }
        sp.status = Some(status);
        sp
    }

    fn pending_pod(name: &str, request: u64, actual: u64, resize: ResizeState) -> PodView {
        PodView {
            actual: Some(actual),
            ..pod(name, request, resize)
        }
    }

    #[test]
    fn a_deferred_cpu_resize_with_no_step_left_is_patched_back_and_held() {
        let mut sp = ticked(1700, true);
        let why = "Node didn't have enough capacity";
        let deferred = [
            pending_pod("p-0", 1700, 1000, ResizeState::Deferred(why.into())),
            pod("p-1", 1700, ResizeState::Settled),
        ];
        let plan = run_fast(&sp, Some(&ready(2)), Some(1500), &deferred, NOW + 120);
        assert_eq!(plan.status.replicas, 2, "no step left today");
        assert_eq!(
            plan.resizes,
            [("p-0".to_owned(), 1000)],
            "back to the CPU it has"
        );
        let held = &fast(&plan).held;
        assert_eq!((held.len(), held[0].pod.as_str()), (1, "p-0"));
        assert_eq!(held[0].cpu, "1");
        sp.status = Some(plan.status);
        // Back at 1 CPU: not asked to grow while held (p-1 keeps 1.7)...
        let back = [
            pod("p-0", 1000, ResizeState::Settled),
            pod("p-1", 1700, ResizeState::Settled),
        ];
        let held_plan = run_fast(&sp, Some(&ready(2)), Some(1500), &back, NOW + 180);
        assert!(held_plan.resizes.is_empty(), "{:?}", held_plan.resizes);
        // ...and asked again once the hold is over.
        let mut now = NOW + 180;
        while now < NOW + 120 + HOLD_S {
            now += 60;
            let p = run_fast(&sp, Some(&ready(2)), Some(1500), &back, now);
            sp.status = Some(p.status);
        }
        let again = run_fast(&sp, Some(&ready(2)), Some(1500), &back, now + 60);
        assert_eq!(again.resizes, [("p-0".to_owned(), 1700)]);
        // An infeasible resize is patched back at once.
        let infeasible = [pending_pod(
            "p-0",
            1700,
            1000,
            ResizeState::Infeasible("exceeds node capacity".into()),
        )];
        let plan = run_fast(
            &ticked(1700, true),
            Some(&ready(2)),
            Some(1500),
            &infeasible,
            NOW + 1,
        );
        assert_eq!(plan.resizes, [("p-0".to_owned(), 1000)]);
        assert_eq!(
            condition(&plan.status, "ResizePending").reason,
            "Infeasible"
        );
    }

    #[test]
    fn pending_memory_resizes_are_the_vpas_and_a_failed_resize_holds_nothing() {
        let sp = ticked(1000, false);
        // The VPA's memory resize is deferred: the CPU is what the spec says (1 CPU). The loop
        // neither counts it nor waits on it: it asks for the 1.7 CPUs the load needs.
        let memory = ResizeState::Deferred("Node didn't have enough memory".into());
        let pods = [
            pending_pod("p-0", 1000, 1000, memory),
            pending_pod(
                "p-1",
                1000,
                1000,
                ResizeState::Failed("cgroup write failed".into()),
            ),
        ];
        let plan = run_fast(&sp, Some(&ready(2)), Some(1500), &pods, NOW + 600);
        assert!(plan.newly_pending.is_empty());
        assert_eq!(condition(&plan.status, "ResizePending").status, "False");
        assert_eq!(plan.status.policy.reason.as_deref(), Some("Resizing"));
        assert_eq!(
            plan.resizes,
            [("p-0".to_owned(), 1700), ("p-1".to_owned(), 1700)]
        );
    }

    #[test]
    fn a_deferral_on_a_freshly_placed_pod_is_placement_and_never_ratchets_replicas() {
        let mut sp = ticked(1700, false);
        // A spot node reclaimed: its pod came back at the template's 1 CPU, on a node with room
        // for that, and its resize to 1.7 is deferred. Patched back and held; no step. (Deferred
        // again after FRESH_S, it is load like any other.)
        let mut replicas = Vec::new();
        for minute in 2..(FRESH_S / 60) {
            let now = NOW + minute * 60;
            let fresh = PodView {
                placed_at: Some(NOW),
                ..pending_pod(
                    "p-new",
                    1700,
                    1000,
                    ResizeState::Deferred("Node didn't have enough capacity".into()),
                )
            };
            let pods = [fresh, pod("p-1", 1700, ResizeState::Settled)];
            let plan = run_fast(&sp, Some(&ready(2)), Some(1500), &pods, now);
            replicas.push(plan.status.replicas);
            sp.status = Some(plan.status);
        }
        assert!(replicas.iter().all(|r| *r == 2), "{replicas:?}");
        // The same deferral on a pod placed long ago is load: a step answers it.
        let old = [
            pending_pod(
                "p-0",
                1700,
                1000,
                ResizeState::Deferred("Node didn't have enough capacity".into()),
            ),
            pod("p-1", 1700, ResizeState::Settled),
        ];
        let plan = run_fast(
            &ticked(1700, false),
            Some(&ready(2)),
            Some(1500),
            &old,
            NOW + 120,
        );
        assert_eq!(plan.status.replicas, 3);
    }

    #[test]
    fn a_missing_replica_holds_replica_steps_not_resizes() {
        let sp = ticked(1000, false);
        // A spot node reclaimed: 1 of 2 pods available, the template unchanged (no rollout).
        let missing = Rollout {
            replicas: 2,
            ready: 1,
            in_progress: true,
            rolling: false,
            ..Rollout::default()
        };
        // (Its replacement, not placed yet, is left at the template's size to be placed.)
        let pending = PodView {
            actual: None,
            ..pod("p-1", 1000, ResizeState::Settled)
        };
        let pods = [pod("p-0", 1000, ResizeState::Settled), pending];
        let plan = run_fast(&sp, Some(&missing), Some(1500), &pods, NOW + 60);
        assert_eq!(plan.resizes, [("p-0".to_owned(), 1700)]);
        // Load beyond maxAllowed steps up; with a replica missing, it waits, and the pod that
        // runs grows to maxAllowed.
        let max = cpu_millis(&sp.spec.resources.max_allowed.cpu).unwrap();
        let sp = ticked(1500, false);
        let pods = [pod("p-0", 1500, ResizeState::Settled)];
        let all_there = run_fast(&sp, Some(&ready(2)), Some(2 * max), &pods, NOW + 60);
        assert!(all_there.status.replicas > 2);
        let plan = run_fast(&sp, Some(&missing), Some(2 * max), &pods, NOW + 60);
        assert_eq!(plan.status.replicas, 2);
        assert_eq!(fast(&plan).high_for, 1);
        assert_eq!(plan.resizes, [("p-0".to_owned(), max)]);
    }

    #[test]
    fn a_status_read_older_than_its_deployment_plans_nothing() {
        // A step to 3 replicas: the status written, then the Deployment.
        let mut sp = ticked(1700, false);
        let pre_step = sp.status.clone();
        let why = "Node didn't have enough capacity";
        let deferred = [
            pending_pod("p-0", 1700, 1000, ResizeState::Deferred(why.into())),
            pending_pod("p-1", 1700, 1000, ResizeState::Deferred(why.into())),
        ];
        let step = run_fast(&sp, Some(&ready(2)), Some(1500), &deferred, NOW + 120);
        assert_eq!(step.status.replicas, 3);
        let post_step = Rollout {
            applied_at: Some(step.status.applied.as_ref().unwrap().at.clone()),
            ..ready(3)
        };
        // The watch cache has the new Deployment but not yet the status: the pre-step status
        // would undo the step (3 -> 2) and forget it from the day's budget. Nothing is planned.
        sp.status = pre_step;
        let stale = run_fast(&sp, Some(&post_step), Some(1500), &deferred, NOW + 125);
        assert!(stale.stale);
        assert!(stale.apply.is_empty() && stale.resizes.is_empty());
        assert_eq!(Some(&stale.status), sp.status.as_ref(), "nothing written");
        // With the status caught up, the plan goes on from the step.
        sp.status = Some(step.status.clone());
        let caught_up = run_fast(&sp, Some(&post_step), Some(1500), &deferred, NOW + 125);
        assert!(!caught_up.stale && caught_up.apply.is_empty());
        assert_eq!(fast(&caught_up).steps.len(), 1);
        // A status that stays older (lost, or rewritten by hand) is planned from after a while.
        sp.status = run_fast(&ticked(1700, false), None, None, &[], NOW)
            .status
            .into();
        let lost = run_fast(
            &sp,
            Some(&post_step),
            Some(1500),
            &deferred,
            NOW + 120 + STALE_FOR_S,
        );
        assert!(!lost.stale);
    }

    #[test]
    fn the_template_carries_the_fast_target_only_when_it_rolls_anyway() {
        let sp = ticked(1700, false);
        let applied = run_fast(&sp, None, None, &[], NOW);
        let template = deployment(&applied)["metadata"]["annotations"][POD_TEMPLATE]
            .as_str()
            .unwrap()
            .to_owned();
        let running = Rollout {
            template: Some(template),
            template_cpu: Some(1000),
            ..ready(2)
        };
        let cpu = |plan: &Plan| {
            deployment(plan)["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
                ["cpu"]
                .clone()
        };
        // A drift repair re-applies the Deployment: its template keeps 1 CPU (no rollout).
        let repair = run_fast(&sp, Some(&running), None, &[], NOW + 2 * 3600);
        assert_eq!(cpu(&repair), "1");
        // The pipeline's config changes (a rollout anyway): new pods start at the loop's 1.7.
        let mut changed = sp.clone();
        changed.spec.pipeline["workers"] = json!(7);
        changed.metadata.generation = Some(2);
        let rolls = run_fast(&changed, Some(&running), None, &[], NOW + 60);
        assert_eq!(cpu(&rolls), "1700m");
    }

    #[test]
    fn in_place_is_refused_with_degraded_before_kubernetes_1_35() {
        let sp = ticked(1000, false);
        let observed = Observed {
            deployment: Some(ready(2)),
            fullest_usage: Some(1500),
            pods: vec![pod("p-0", 1000, ResizeState::Settled)],
            server_minor: Some(34),
            ..Observed::default()
        };
        let plan = plan_at(&sp, &observed, NOW + 60);
        assert!(plan.resizes.is_empty());
        let degraded = condition(&plan.status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InPlaceUnsupported")
        );
        assert!(degraded.message.contains("1.34"), "{}", degraded.message);
        assert!(
            plan.events
                .iter()
                .any(|e| e.0 && e.1 == "InPlaceUnsupported")
        );
    }

    #[test]
    fn a_refused_resize_is_degraded_and_not_asked_again_for_a_while() {
        let mut sp = ticked(1700, false);
        let status = sp.status.as_mut().unwrap();
        status.policy.fast.as_mut().unwrap().refused = Some(RefusedResize {
            target_cpu: "1700m".into(),
            message: "pod p-0: exceeded quota: sluice-standard, requested: requests.cpu=700m"
                .into(),
            at: rfc3339(NOW),
        });
        let pods = [
            pod("p-0", 1000, ResizeState::Settled),
            pod("p-1", 1000, ResizeState::Settled),
        ];
        let plan = run_fast(&sp, Some(&ready(2)), Some(1500), &pods, NOW + 30);
        assert!(plan.resizes.is_empty());
        let degraded = condition(&plan.status, "Degraded");
        assert_eq!(degraded.reason, "ResizeRefused");
        assert!(degraded.message.contains("exceeded quota"));
        let later = run_fast(&sp, Some(&ready(2)), Some(1500), &pods, NOW + REFUSED_S);
        assert_eq!(later.resizes.len(), 2);
        assert_eq!(condition(&later.status, "Degraded").status, "False");
    }

    #[test]
    fn a_deferred_resize_is_counted_once_answered_by_a_step_up_and_load_gone_steps_down() {
        let mut sp = in_place();
        sp.status = Some(run_fast(&sp, None, None, &[], NOW).status);
        let settled = [
            pod("p-0", 1000, ResizeState::Settled),
            pod("p-1", 1000, ResizeState::Settled),
        ];
        sp.status = Some(run_fast(&sp, Some(&ready(2)), Some(1500), &settled, NOW + 60).status);
        // The nodes cannot take 1.7 CPUs: both resizes deferred (at NOW). A minute later the
        // kubelet may still apply them: nothing is counted, asked or stepped.
        let why = "Node didn't have enough capacity: cpu, requested: 1700, capacity: 1200";
        let deferred = [
            pod("p-0", 1700, ResizeState::Deferred(why.into())),
            pod("p-1", 1700, ResizeState::Deferred(why.into())),
        ];
        let young = run_fast(&sp, Some(&ready(2)), Some(1500), &deferred, NOW + 60);
        assert!(young.newly_pending.is_empty() && young.resizes.is_empty());
        assert_eq!(young.status.replicas, 2);
        assert_eq!(condition(&young.status, "ResizePending").status, "False");
        // Deferred for DEFER_GRACE_S: counted, patched back to the CPU the pods have (never
        // left pending for the VPA's updater to evict), and answered by a step.
        let step = run_fast(&sp, Some(&ready(2)), Some(1500), &deferred, NOW + 120);
        assert_eq!(step.newly_pending.len(), 2, "counted");
        let pending = condition(&step.status, "ResizePending");
        assert_eq!(
            (pending.status.as_str(), pending.reason.as_str()),
            ("True", "Deferred")
        );
        assert!(pending.message.contains("p-0, p-1") && pending.message.contains(why));
        assert_eq!(
            step.resizes,
            [("p-0".to_owned(), 1000), ("p-1".to_owned(), 1000)],
            "patched back, nothing else: replicas and requests never in one rollout"
        );
        // Answered: the next divisor, 3 pods of 4 partitions at two thirds of the size.
        assert_eq!(deployment(&step)["spec"]["replicas"], 3);
        assert_eq!(fast(&step).target_cpu, "1200m");
        let reasons: Vec<&str> = step.events.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(reasons, ["ScalingUp", "ResizeDeferred"]);
        assert!(step.events[1].0, "a deferral is a warning");
        assert_eq!(step.status.policy.reason.as_deref(), Some("StepUp"));
        sp.status = Some(step.status.clone());
        // The rollout runs (the patch-backs landed): nothing counted, reported or resized.
        let back = [
            pod("p-0", 1000, ResizeState::Settled),
            pod("p-1", 1000, ResizeState::Settled),
        ];
        let rolling = Rollout {
            in_progress: true,
            rolling: true,
            ..ready(3)
        };
        let later = run_fast(&sp, Some(&rolling), Some(1500), &back, NOW + 180);
        assert!(later.newly_pending.is_empty() && later.events.is_empty());
        assert!(later.resizes.is_empty());
        // The rollout over, every pod goes to the new target.
        let three = [
            pod("p-0", 1000, ResizeState::Settled),
            pod("p-1", 1000, ResizeState::Settled),
            pod("p-2", 1200, ResizeState::Settled),
        ];
        let after = run_fast(&sp, Some(&ready(3)), Some(1000), &three, NOW + 240);
        assert_eq!(after.resizes.len(), 2);
        assert!(after.resizes.iter().all(|(_, m)| *m == 1200));

        // Then the load goes: the request falls to minCpus after a while, and after
        // `step_down_after_min` of fitting fewer pods they step down (3 -> 2), once.
        sp.status = Some(after.status);
        let mut steps = Vec::new();
        for minute in 5..(5 + 300) {
            let now = NOW + minute * 60;
            let target = cpu_millis(
                &sp.status
                    .as_ref()
                    .unwrap()
                    .policy
                    .fast
                    .as_ref()
                    .unwrap()
                    .target_cpu,
            )
            .unwrap();
            let replicas = sp.status.as_ref().unwrap().replicas;
            let pods: Vec<PodView> = (0..replicas)
                .map(|i| pod(&format!("p-{i}"), target, ResizeState::Settled))
                .collect();
            let p = run_fast(&sp, Some(&ready(replicas)), Some(300), &pods, now);
            if let Some(e) = p.events.iter().find(|e| e.1.starts_with("Scaling")) {
                steps.push((minute, e.1.clone(), p.status.replicas));
            }
            sp.status = Some(p.status);
        }
        assert_eq!(steps.len(), 1, "{steps:?}");
        let (minute, reason, replicas) = &steps[0];
        assert_eq!((reason.as_str(), *replicas), ("ScalingDown", 2));
        // (The load has fitted 2 pods since minute 4, the first tick after the step; a few
        // minutes more while the hour's history still holds the step's load.)
        let window = PolicyConfig::default().fast.step_down_after_min as u64;
        assert!(
            (4 + window - 1..4 + window + 10).contains(minute),
            "down only after the step-down window: {minute}"
        );
        let fast_status = sp.status.as_ref().unwrap().policy.fast.clone().unwrap();
        assert_eq!(fast_status.target_cpu, "1", "minCpus");
        assert_eq!(
            fast_status.steps.len(),
            2,
            "both steps remembered for the daily budget"
        );
    }

    fn condition<'a>(status: &'a StreamPipelineStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn deployment(plan: &Plan) -> &Value {
        plan.apply
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .unwrap()
    }

    #[test]
    fn a_new_pipeline_gets_its_children_owned_and_a_status() {
        let sp = pipeline();
        let p = run(&sp, None, None, NOW);
        let kinds: Vec<&str> = p
            .apply
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
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
        for object in &p.apply {
            let owner = &object["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "StreamPipeline");
            assert_eq!(owner["uid"], "6f1c2a9e-0000-4000-8000-000000000001");
            assert_eq!(owner["controller"], true);
        }
        // min 2 of 12 partitions: 2 replicas, 6 partitions each.
        assert_eq!(deployment(&p)["spec"]["replicas"], 2);
        assert_eq!((p.status.replicas, p.status.partitions_per_replica), (2, 6));
        assert_eq!(p.status.observed_generation, Some(1));
        assert_eq!(condition(&p.status, "Ready").reason, "Creating");
        assert_eq!(condition(&p.status, "Progressing").status, "False");
        assert_eq!(condition(&p.status, "Degraded").status, "False");
        assert_eq!(condition(&p.status, "ScalingLimited").status, "False");
        assert!(p.events.is_empty());
    }

    #[test]
    fn unchanged_children_are_not_reapplied_until_the_drift_interval() {
        let mut sp = pipeline();
        let first = run(&sp, None, None, NOW);
        sp.status = Some(first.status.clone());
        let steady = run(
            &sp,
            Some(&ready(2)),
            Some(&rec(1500, 1500, "1Gi")),
            NOW + 60,
        );
        assert!(steady.apply.is_empty(), "nothing changed: no apply");
        let ready_condition = condition(&steady.status, "Ready");
        assert_eq!(
            (
                ready_condition.status.as_str(),
                ready_condition.reason.as_str()
            ),
            ("True", "ReplicasReady")
        );
        assert_eq!(ready_condition.last_transition_time, rfc3339(NOW + 60));
        // The transition time stays while the condition does.
        sp.status = Some(steady.status.clone());
        let later = run(
            &sp,
            Some(&ready(2)),
            Some(&rec(1500, 1500, "1Gi")),
            NOW + 120,
        );
        assert_eq!(later.status, steady.status, "status unchanged: no write");
        // After the drift interval everything is applied again.
        let drift = run(
            &sp,
            Some(&ready(2)),
            Some(&rec(1500, 1500, "1Gi")),
            NOW + 3600,
        );
        assert_eq!(drift.apply.len(), 6);
        // A new generation is applied at once.
        sp.metadata.generation = Some(2);
        assert_eq!(run(&sp, Some(&ready(2)), None, NOW + 180).apply.len(), 6);
        // A missing Deployment is recreated at once.
        sp.metadata.generation = Some(1);
        assert_eq!(run(&sp, None, None, NOW + 180).apply.len(), 6);
    }

    #[test]
    fn a_hand_scaled_deployment_is_put_back() {
        let mut sp = pipeline();
        sp.status = Some(run(&sp, None, None, NOW).status);
        // Someone ran `kubectl scale --replicas=5`: not the operator's count, not even aligned.
        let scaled = ready(5);
        let p = run(&sp, Some(&scaled), None, NOW + 60);
        assert_eq!(
            deployment(&p)["spec"]["replicas"],
            2,
            "back to the operator's count"
        );
        assert_eq!(p.status.replicas, 2);
        assert!(p.events.is_empty(), "not a step");
    }

    #[test]
    fn sustained_pressure_steps_replicas_and_reports_it() {
        let mut sp = pipeline();
        sp.status = Some(run(&sp, None, None, NOW).status);
        // The VPA would give each pod 5 CPUs; maxAllowed is 4.
        let pressed = rec(4000, 5000, "2Gi");
        let building = run(&sp, Some(&ready(2)), Some(&pressed), NOW + 60);
        assert!(building.apply.is_empty());
        assert_eq!(
            building.status.policy.reason.as_deref(),
            Some("PressureBuilding")
        );
        assert_eq!(
            building.status.policy.pressure_since,
            Some(rfc3339(NOW + 60))
        );
        assert_eq!(building.status.uncapped_cpu.as_deref(), Some("5"));
        // The VPA applies in VPA mode: its target is what status shows.
        assert_eq!(
            building.status.applied_recommendation,
            Some(Quantities {
                cpu: "4".into(),
                memory: "2Gi".into()
            })
        );
        sp.status = Some(building.status);
        let step = run(&sp, Some(&ready(2)), Some(&pressed), NOW + 60 + 300);
        assert_eq!(
            deployment(&step)["spec"]["replicas"],
            3,
            "next divisor of 12 after 2"
        );
        assert_eq!(
            (step.status.replicas, step.status.partitions_per_replica),
            (3, 4)
        );
        let progressing = condition(&step.status, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "ScalingUp")
        );
        assert_eq!(
            step.events,
            [(false, "ScalingUp".into(), progressing.message.clone())]
        );
        assert_eq!(
            step.status.policy.last_change_kind.as_deref(),
            Some("Replicas")
        );
        // The Deployment rolls out: Ready is false, nothing else moves.
        sp.status = Some(step.status);
        let rolling = Rollout {
            replicas: 3,
            ready: 2,
            in_progress: true,
            rolling: true,
            ..Rollout::default()
        };
        let during = run(&sp, Some(&rolling), Some(&pressed), NOW + 1000);
        assert!(during.apply.is_empty());
        assert_eq!(
            condition(&during.status, "Ready").reason,
            "ReplicasNotReady"
        );
        assert_eq!(
            condition(&during.status, "Progressing").reason,
            "RolloutInProgress"
        );
        assert_eq!(
            during.status.policy.reason.as_deref(),
            Some("RolloutInProgress")
        );
    }

    #[test]
    fn no_divisor_left_is_scaling_limited_with_one_warning() {
        let mut sp = pipeline();
        sp.spec.replicas.max = Some(6);
        let mut status = run(&sp, None, None, NOW).status;
        status.policy.pressure_since = Some(rfc3339(NOW - 10_000));
        status.replicas = 6; // stepped up to the most the bounds allow
        sp.status = Some(status);
        let pressed = rec(4000, 9000, "2Gi");
        let p = run(&sp, Some(&ready(6)), Some(&pressed), NOW);
        let limited = condition(&p.status, "ScalingLimited");
        assert_eq!(
            (limited.status.as_str(), limited.reason.as_str()),
            ("True", "NoDivisorLeft")
        );
        assert!(
            limited
                .message
                .contains("raise maxAllowed, replicas.max or the partitions"),
            "{}",
            limited.message
        );
        assert_eq!(p.events.len(), 1);
        assert!(p.events[0].0, "a warning");
        sp.status = Some(p.status);
        assert!(
            run(&sp, Some(&ready(6)), Some(&pressed), NOW + 60)
                .events
                .is_empty(),
            "warned once"
        );
    }

    #[test]
    fn operator_mode_applies_requests_floored_at_min_cpus() {
        let mut sp = pipeline();
        sp.spec.resources.applied_by = AppliedBy::Operator;
        sp.spec.resources.min_cpus = 2;
        sp.status = Some(run(&sp, None, None, NOW).status);
        let first = sp.status.as_ref().unwrap();
        assert_eq!(
            first.applied_recommendation,
            Some(Quantities {
                cpu: "2".into(),
                memory: "1Gi".into()
            })
        );
        // The VPA recommends 3 CPUs, 3Gi: a resource rollout, CPU and memory together.
        let p = run(
            &sp,
            Some(&ready(2)),
            Some(&rec(3000, 3000, "3Gi")),
            NOW + 60,
        );
        let container = &deployment(&p)["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["resources"]["requests"],
            json!({"cpu": "3", "memory": "3Gi"})
        );
        assert_eq!(
            container["resources"]["limits"],
            json!({"cpu": "6", "memory": "6Gi"}),
            "CPU and memory limits twice the request"
        );
        assert_eq!(
            condition(&p.status, "Progressing").reason,
            "ApplyingRequests"
        );
        assert_eq!(
            p.status.policy.last_change_kind.as_deref(),
            Some("Resources")
        );
        // A recommendation under the floor holds at the floor, without a rollout every resync.
        let mut sp = pipeline();
        sp.spec.resources.applied_by = AppliedBy::Operator;
        sp.spec.resources.min_cpus = 2;
        sp.status = Some(run(&sp, None, None, NOW).status);
        let low = run(&sp, Some(&ready(2)), Some(&rec(300, 300, "1Gi")), NOW + 60);
        assert!(low.apply.is_empty(), "{:?}", low.status.policy);
        // Memory alone moving is a resource rollout too.
        let memory = run(
            &sp,
            Some(&ready(2)),
            Some(&rec(2000, 2000, "2Gi")),
            NOW + 60,
        );
        assert_eq!(
            deployment(&memory)["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "2", "memory": "2Gi"})
        );
    }

    #[test]
    fn an_invalid_spec_applies_nothing_and_says_which_field() {
        type Break = fn(&mut StreamPipeline);
        let cases: [(Break, &str); 8] = [
            // spec.pipeline is checked by the runtime's own parser: an unknown output kind, an
            // unknown error-policy action, a variable the pod will not have.
            (
                |sp| sp.spec.pipeline["outputs"]["enriched"] = json!({"s3": {"bucket": "b"}}),
                "spec.pipeline: outputs.enriched",
            ),
            (
                |sp| sp.spec.pipeline["error-policy"]["invalid-input"] = json!("shrug"),
                "spec.pipeline: error-policy",
            ),
            (
                |sp| {
                    sp.spec.pipeline["producer"] =
                        json!({"properties": {"sasl.password": "${KAFKA_PASSWORD}"}})
                },
                "spec.pipeline: `${KAFKA_PASSWORD}` is not set in the pod",
            ),
            (
                |sp| sp.spec.resources.max_allowed.cpu = "four".into(),
                "spec.resources.maxAllowed.cpu",
            ),
            (
                |sp| sp.spec.resources.initial.memory = "1 gig".into(),
                "spec.resources.initial.memory",
            ),
            (
                |sp| sp.spec.resources.min_cpus = 8,
                "spec.resources.minCpus",
            ),
            (
                |sp| (sp.spec.replicas.min, sp.spec.replicas.max) = (Some(5), Some(5)),
                "spec.replicas",
            ),
            (|sp| sp.spec.kafka.partitions = 0, "spec.kafka.partitions"),
        ];
        for (break_it, field) in cases {
            let mut sp = pipeline();
            break_it(&mut sp);
            let p = run(&sp, Some(&ready(2)), None, NOW);
            assert!(p.apply.is_empty(), "{field}");
            let degraded = condition(&p.status, "Degraded");
            assert_eq!(
                (degraded.status.as_str(), degraded.reason.as_str()),
                ("True", "InvalidSpec")
            );
            assert!(
                degraded.message.starts_with(field),
                "{field}: {}",
                degraded.message
            );
            assert_eq!(p.events.len(), 1, "{field}");
            sp.status = Some(p.status);
            assert!(
                run(&sp, Some(&ready(2)), None, NOW + 60).events.is_empty(),
                "{field}: warned once"
            );
        }
    }

    #[test]
    fn suspend_scales_to_zero_and_resume_comes_back_aligned() {
        let mut sp = pipeline();
        sp.spec.suspend = true;
        let p = run(&sp, Some(&ready(4)), None, NOW);
        assert_eq!(deployment(&p)["spec"]["replicas"], 0);
        assert_eq!(condition(&p.status, "Ready").reason, "Suspended");
        assert_eq!(p.status.partitions_per_replica, 0);
        sp.spec.suspend = false;
        sp.metadata.generation = Some(2);
        sp.status = Some(p.status);
        let resumed = run(&sp, Some(&ready(0)), None, NOW + 60);
        assert_eq!(deployment(&resumed)["spec"]["replicas"], 2);
        assert_eq!(
            condition(&resumed.status, "Progressing").reason,
            "Realigning"
        );
    }

    #[test]
    fn a_failing_deployment_is_degraded() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "bookings-enrich", "generation": 3},
            "spec": {"replicas": 4, "selector": {}, "template": {}},
            "status": {"observedGeneration": 3, "replicas": 4, "updatedReplicas": 2, "readyReplicas": 2,
                "availableReplicas": 2, "conditions": [{"type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"x\" has timed out progressing."}]},
        }))
        .unwrap();
        let rollout = Rollout::from_deployment(&d);
        assert_eq!(
            (rollout.replicas, rollout.ready, rollout.in_progress),
            (4, 2, true)
        );
        let p = run(&pipeline(), Some(&rollout), None, NOW);
        let degraded = condition(&p.status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ProgressDeadlineExceeded")
        );
        // A finished rollout is not in progress; one whose generation is not observed yet is.
        let mut done = d.clone();
        done.status = Some(
            serde_json::from_value(json!({"observedGeneration": 3, "replicas": 4,
            "updatedReplicas": 4, "readyReplicas": 4, "availableReplicas": 4}))
            .unwrap(),
        );
        assert!(!Rollout::from_deployment(&done).in_progress);
        done.metadata.generation = Some(4);
        assert!(Rollout::from_deployment(&done).in_progress);
    }

    #[test]
    fn the_vpa_recommendation_is_read_for_the_pipeline_container() {
        let vpa = json!({"status": {"recommendation": {"containerRecommendations": [
            {"containerName": "sidecar", "target": {"cpu": "10m", "memory": "10Mi"}},
            {"containerName": "pipeline", "target": {"cpu": "3500m", "memory": "2Gi"},
             "uncappedTarget": {"cpu": "6", "memory": "2Gi"}},
        ]}}});
        assert_eq!(
            VpaRecommendation::from_vpa(&vpa),
            Some(rec(3500, 6000, "2Gi"))
        );
        assert_eq!(VpaRecommendation::from_vpa(&json!({"status": {}})), None);
    }

    // ---- The reconcile's I/O against a mocked API server, request by request. ----

    use crate::mock_api;

    /// The mocked API server, and every (method, path) it was asked.
    struct ApiServer {
        handle: mock_api::Handle,
        calls: Vec<(String, String)>,
    }

    fn context(client: Client, now: u64) -> Arc<Context> {
        context_with(client, now, OperatorMetrics::new())
    }

    fn context_with(client: Client, now: u64, metrics: OperatorMetrics) -> Arc<Context> {
        Arc::new(Context {
            metrics,
            recorder: Recorder::new(
                client.clone(),
                kube::runtime::events::Reporter {
                    controller: MANAGER.into(),
                    instance: None,
                },
            ),
            client,
            placement: Placement::neutral(),
            policy: PolicyConfig::default(),
            clock: Arc::new(move || now),
            resync: Duration::from_secs(60),
            reapply_every: Duration::from_secs(600),
            server_minor: None,
            upgrade_token: None,
        })
    }

    /// Waits for the next request, checks its method and path (and for applies the field
    /// manager), answers `status` with `reply` (or echoes the body), and returns the body sent.
    async fn expect(
        server: &mut ApiServer,
        method: &str,
        path: &str,
        status: u16,
        reply: Option<Value>,
    ) -> Value {
        let sent = mock_api::answer(&mut server.handle, method, path, status, reply).await;
        server.calls.push((method.to_owned(), path.to_owned()));
        if path.ends_with("/pods") {
            assert!(
                sent.query.contains("labelSelector=app.kubernetes.io%2Fname%3Dsluice-pipeline%2Capp.kubernetes.io%2Finstance%3Dbookings-enrich"),
                "pod metrics of this pipeline only: {}",
                sent.query
            );
        }
        if path.ends_with("/resize") {
            assert_eq!(
                sent.content_type.as_deref(),
                Some("application/strategic-merge-patch+json"),
                "a resize is a strategic merge patch of the subresource"
            );
        } else if method == "PATCH" {
            assert!(
                sent.query.contains("fieldManager=sluice-vpa") && sent.query.contains("force=true"),
                "{path}: not a forced server-side apply: {}",
                sent.query
            );
            assert_eq!(
                sent.content_type.as_deref(),
                Some("application/apply-patch+yaml")
            );
        }
        sent.body
    }

    /// The six children applied in order; their bodies.
    async fn expect_children(server: &mut ApiServer) -> Vec<Value> {
        let mut applied = Vec::new();
        for path in [
            format!("/api/v1{NS}/configmaps/bookings-enrich"),
            format!("/apis/apps/v1{NS}/deployments/bookings-enrich"),
            format!("/apis/autoscaling.k8s.io/v1{NS}/verticalpodautoscalers/bookings-enrich"),
            format!("/apis/policy/v1{NS}/poddisruptionbudgets/bookings-enrich"),
            format!("/api/v1{NS}/services/bookings-enrich-metrics"),
            format!("/apis/networking.k8s.io/v1{NS}/networkpolicies/bookings-enrich"),
        ] {
            applied.push(expect(server, "PATCH", &path, 200, None).await);
        }
        applied
    }

    /// A reconcile's reads, in order: the Deployment, the VPA, the pods' metrics.
    async fn expect_reads(
        server: &mut ApiServer,
        deployment: (u16, Option<Value>),
        vpa: (u16, Option<Value>),
        metrics: (u16, Option<Value>),
    ) {
        let reads = [
            (
                format!("/apis/apps/v1{NS}/deployments/bookings-enrich"),
                deployment,
            ),
            (
                format!("/apis/autoscaling.k8s.io/v1{NS}/verticalpodautoscalers/bookings-enrich"),
                vpa,
            ),
            (format!("/apis/metrics.k8s.io/v1beta1{NS}/pods"), metrics),
        ];
        for (path, (status, reply)) in reads {
            expect(server, "GET", &path, status, reply).await;
        }
    }

    /// An Event posted by the recorder; its body.
    async fn expect_event(server: &mut ApiServer) -> Value {
        let path = format!("/apis/events.k8s.io/v1{NS}/events");
        expect(server, "POST", &path, 201, None).await
    }

    /// The status apply; the body sent (the pipeline is echoed back).
    async fn expect_status(server: &mut ApiServer, sp: &StreamPipeline) -> Value {
        let path = format!("/apis/sluice.dev/v1alpha1{NS}/streampipelines/bookings-enrich/status");
        expect(
            server,
            "PATCH",
            &path,
            200,
            Some(serde_json::to_value(sp).unwrap()),
        )
        .await
    }

    /// A condition of a status apply's body.
    fn condition_in(status: &Value, type_: &str) -> Value {
        status["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()
            .clone()
    }

    fn not_found() -> Option<Value> {
        Some(mock_api::failure(404, "NotFound", "not found"))
    }

    const NS: &str = "/namespaces/pipelines";

    async fn no_more_requests(server: &mut ApiServer) {
        let more =
            tokio::time::timeout(Duration::from_millis(200), server.handle.next_request()).await;
        assert!(
            !matches!(more, Ok(Some(_))),
            "an unexpected request: {:?}",
            more.ok()
                .flatten()
                .map(|(r, _)| format!("{} {}", r.method(), r.uri()))
        );
    }

    #[tokio::test]
    async fn reconciles_request_by_request_and_the_rbac_grants_exactly_what_they_call() {
        let (client, handle) = mock_api::client();
        let mut server = ApiServer {
            handle,
            calls: Vec::new(),
        };
        create_hold_step_and_refuse(&mut server, client.clone()).await;
        resize_in_place_defer_and_step(&mut server, client).await;
        the_operator_rbac_grants(&server.calls);
    }

    /// A deployment of `replicas`, ready, or rolling out.
    fn deployment_object(replicas: u32, rolling: bool) -> Value {
        let updated = if rolling { replicas - 1 } else { replicas };
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "bookings-enrich", "namespace": "pipelines", "generation": 1},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": updated,
                       "readyReplicas": replicas, "availableReplicas": replicas}})
    }

    /// `n` pods' metrics, each using `cpu`.
    fn pod_metrics(n: u32, cpu: &str) -> Value {
        let items: Vec<Value> = (0..n)
            .map(|i| {
                json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
            "metadata": {"name": format!("bookings-enrich-{i}"), "namespace": "pipelines"},
            "timestamp": "2027-01-15T08:00:00Z", "window": "30s",
            "containers": [{"name": "pipeline", "usage": {"cpu": cpu, "memory": "1Gi"}}]})
            })
            .collect();
        json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetricsList", "metadata": {}, "items": items})
    }

    /// Pod `i` of the pipeline requesting `cpu`, with `conditions`.
    fn pod_object(i: u32, cpu: &str, conditions: Value) -> Value {
        running_pod(i, cpu, cpu, conditions)
    }

    /// A pod whose spec asks for `cpu` and whose kubelet reports it running with `actual`.
    fn running_pod(i: u32, cpu: &str, actual: &str, conditions: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("bookings-enrich-{i}"), "namespace": "pipelines",
                "creationTimestamp": rfc3339(NOW - 3600)},
            "spec": {"containers": [{"name": "pipeline", "image": "sluice",
                "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]},
            "status": {"phase": "Running", "conditions": conditions,
                "startTime": rfc3339(NOW - 3600),
                "containerStatuses": [{"name": "pipeline", "resources": {"requests": {"cpu": actual, "memory": "1Gi"}}}]}})
    }

    fn pod_list(pods: Vec<Value>) -> Value {
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})
    }

    /// An in-place reconcile's reads, in order: the Deployment, the VPA, the pods' metrics, the
    /// pods.
    async fn expect_in_place_reads(
        server: &mut ApiServer,
        deployment: Value,
        vpa: &Value,
        metrics: Value,
        pods: Value,
    ) {
        expect_reads(
            server,
            (200, Some(deployment)),
            (200, Some(vpa.clone())),
            (200, Some(metrics)),
        )
        .await;
        expect(server, "GET", &format!("/api/v1{NS}/pods"), 200, Some(pods)).await;
    }

    /// An in-place pipeline, request by request: a resize applied; none during a rollout; a
    /// resize the nodes defer, counted and answered by a step up; a step down.
    async fn resize_in_place_defer_and_step(server: &mut ApiServer, client: Client) {
        let mut sp = in_place();
        sp.status = Some(run_fast(&sp, Some(&ready(2)), None, &[], NOW - 60).status);
        let metrics = OperatorMetrics::new();
        let vpa = json!({"apiVersion": "autoscaling.k8s.io/v1", "kind": "VerticalPodAutoscaler",
            "metadata": {"name": "bookings-enrich", "namespace": "pipelines"}});
        let pods_path = format!("/api/v1{NS}/pods");
        let reconcile_at = |sp: &StreamPipeline, now: u64| {
            tokio::spawn(reconcile(
                Arc::new(sp.clone()),
                context_with(client.clone(), now, metrics.clone()),
            ))
        };
        let written = |sp: &mut StreamPipeline, status: &Value| {
            sp.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
        };

        // 1. 1.5 cores used on 1-core pods: the status (the loop's memory), then each pod's
        //    resize subresource patched to 1.7 cores (limit 3.4).
        let task = reconcile_at(&sp, NOW);
        expect_reads(
            server,
            (200, Some(deployment_object(2, false))),
            (200, Some(vpa.clone())),
            (200, Some(pod_metrics(2, "1500m"))),
        )
        .await;
        let settled = |cpu: &str| pod_list((0..2).map(|i| pod_object(i, cpu, json!([]))).collect());
        expect(server, "GET", &pods_path, 200, Some(settled("1"))).await;
        let status = expect_status(server, &sp).await;
        assert_eq!(status["status"]["policy"]["fast"]["targetCpu"], "1700m");
        for i in 0..2 {
            let path = format!("/api/v1{NS}/pods/bookings-enrich-{i}/resize");
            let body = expect(
                server,
                "PATCH",
                &path,
                200,
                Some(pod_object(i, "1700m", json!([]))),
            )
            .await;
            assert_eq!(
                body,
                json!({"spec": {"containers": [{"name": "pipeline", "resources": {
                "requests": {"cpu": "1700m"}, "limits": {"cpu": "3400m"}}}]}})
            );
        }
        task.await.unwrap().unwrap();
        no_more_requests(server).await;
        written(&mut sp, &status);

        // 2. A rollout in progress (someone restarted the pods): no resize, though a pod runs
        //    an older request.
        let task = reconcile_at(&sp, NOW + 60);
        expect_in_place_reads(
            server,
            deployment_object(2, true),
            &vpa,
            pod_metrics(2, "1500m"),
            settled("1"),
        )
        .await;
        let status = expect_status(server, &sp).await;
        assert_eq!(
            condition_in(&status, "Progressing")["reason"],
            "RolloutInProgress"
        );
        task.await.unwrap().unwrap();
        no_more_requests(server).await;
        written(&mut sp, &status);

        // 3. The nodes cannot take 1.7 cores, for two minutes now: counted once, patched back to
        //    the CPU the pods have, answered by a step to 3 replicas (the children applied) and
        //    a warning.
        let deferred = json!([{"type": "PodResizePending", "status": "True", "reason": "Deferred",
            "lastTransitionTime": rfc3339(NOW),
            "message": "Node didn't have enough capacity: cpu, requested: 1700, capacity: 1200"}]);
        let task = reconcile_at(&sp, NOW + 120);
        expect_in_place_reads(
            server,
            deployment_object(2, false),
            &vpa,
            pod_metrics(2, "1500m"),
            pod_list(
                (0..2)
                    .map(|i| running_pod(i, "1700m", "1", deferred.clone()))
                    .collect(),
            ),
        )
        .await;
        let status = expect_status(server, &sp).await;
        assert_eq!(condition_in(&status, "ResizePending")["reason"], "Deferred");
        let applied = expect_children(server).await;
        assert_eq!(applied[1]["spec"]["replicas"], 3);
        assert_eq!(
            applied[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "1",
            "the template keeps its request: a resize is never a rollout"
        );
        for i in 0..2 {
            let path = format!("/api/v1{NS}/pods/bookings-enrich-{i}/resize");
            let body = expect(
                server,
                "PATCH",
                &path,
                200,
                Some(pod_object(i, "1", json!([]))),
            )
            .await;
            assert_eq!(
                body["spec"]["containers"][0]["resources"]["requests"]["cpu"],
                "1"
            );
        }
        for reason in ["ScalingUp", "ResizeDeferred"] {
            let event = expect_event(server).await;
            assert_eq!(event["reason"], reason);
        }
        task.await.unwrap().unwrap();
        no_more_requests(server).await;
        written(&mut sp, &status);

        // 4. Hours later the load fits two pods and has for the whole step-down window: step down.
        let mut status_now = sp.status.clone().unwrap();
        let fast_status = status_now.policy.fast.as_mut().unwrap();
        fast_status.fits_for = PolicyConfig::default().fast.step_down_after_min as u32 - 1;
        fast_status.pending_pods.clear();
        status_now.conditions.retain(|c| c.type_ != "ResizePending");
        sp.status = Some(status_now);
        let later = NOW + 6 * 3600;
        let task = reconcile_at(&sp, later);
        expect_in_place_reads(
            server,
            deployment_object(3, false),
            &vpa,
            pod_metrics(3, "300m"),
            pod_list((0..3).map(|i| pod_object(i, "1200m", json!([]))).collect()),
        )
        .await;
        let status = expect_status(server, &sp).await;
        assert_eq!(status["status"]["policy"]["reason"], "StepDown");
        let applied = expect_children(server).await;
        assert_eq!(applied[1]["spec"]["replicas"], 2);
        let event = expect_event(server).await;
        assert_eq!(event["reason"], "ScalingDown");
        task.await.unwrap().unwrap();
        no_more_requests(server).await;

        let scrape = metrics.encode();
        for line in [
            "sluice_vpa_resizes_total{result=\"applied\"} 4",
            "sluice_vpa_resizes_total{result=\"deferred\"} 2",
            "sluice_vpa_events_total{reason=\"ResizeDeferred\",type=\"Warning\"} 1",
        ] {
            assert!(scrape.lines().any(|l| l == line), "{line} not in\n{scrape}");
        }
    }

    /// A pipeline the VPA sizes, request by request: created; held; stepped; the API failing; an
    /// apply refused.
    async fn create_hold_step_and_refuse(server: &mut ApiServer, client: Client) {
        let sp = pipeline();

        // 1. A new pipeline: two reads, six applies in order, the status.
        let task = tokio::spawn(reconcile(
            Arc::new(sp.clone()),
            context(client.clone(), NOW),
        ));
        expect_reads(
            server,
            (404, not_found()),
            (404, not_found()),
            (404, not_found()),
        )
        .await;
        // The status first (a Deployment is never newer than the status that explains it).
        let mut written = sp.clone();
        let status = expect_status(server, &sp).await;
        let applied = expect_children(server).await;
        assert_eq!(applied[1]["spec"]["replicas"], 2);
        assert_eq!(
            applied[1]["metadata"]["annotations"][APPLIED_AT],
            status["status"]["applied"]["at"]
        );
        assert!(
            applied
                .iter()
                .all(|o| o["metadata"]["ownerReferences"][0]["uid"]
                    == "6f1c2a9e-0000-4000-8000-000000000001")
        );
        assert_eq!(
            (status["apiVersion"].as_str(), status["kind"].as_str()),
            (Some("sluice.dev/v1alpha1"), Some("StreamPipeline"))
        );
        assert_eq!(status["status"]["replicas"], 2);
        assert_eq!(status["status"]["observedGeneration"], 1);
        let requeue = task.await.unwrap().unwrap();
        assert_eq!(requeue, Requeue::requeue(Duration::from_secs(60)));
        no_more_requests(server).await;
        written.status = Some(serde_json::from_value(status["status"].clone()).unwrap());

        // 2. The same pipeline a minute later, its Deployment ready, the VPA relaxed: two reads
        //    and the status (Ready changed), no apply, no event.
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "bookings-enrich", "namespace": "pipelines", "generation": 1},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}});
        let vpa = |cpu: &str, uncapped: &str| {
            json!({"apiVersion": "autoscaling.k8s.io/v1", "kind": "VerticalPodAutoscaler",
            "metadata": {"name": "bookings-enrich", "namespace": "pipelines"},
            "status": {"recommendation": {"containerRecommendations": [{"containerName": "pipeline",
                "target": {"cpu": cpu, "memory": "2Gi"}, "uncappedTarget": {"cpu": uncapped, "memory": "2Gi"}}]}}})
        };
        // Two pods at 3.7 of at most 4 CPUs each (metrics-server's nanocores).
        let pod = |i: u32| {
            json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
                "metadata": {"name": format!("bookings-enrich-{i}"), "namespace": "pipelines"},
                "timestamp": "2027-01-15T08:00:00Z", "window": "30s",
                "containers": [{"name": "pipeline", "usage": {"cpu": "3700000000n", "memory": "1Gi"}}]})
        };
        let busy = json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetricsList",
            "metadata": {}, "items": [pod(0), pod(1)]});
        let task = tokio::spawn(reconcile(
            Arc::new(written.clone()),
            context(client.clone(), NOW + 60),
        ));
        expect_reads(
            server,
            (200, Some(deployment.clone())),
            (200, Some(vpa("4", "5"))),
            (200, Some(busy.clone())),
        )
        .await;
        let status = expect_status(server, &sp).await;
        let ready = condition_in(&status, "Ready");
        assert_eq!(ready["status"], "True");
        assert_eq!(status["status"]["policy"]["reason"], "PressureBuilding");
        task.await.unwrap().unwrap();
        no_more_requests(server).await;
        written.status = Some(serde_json::from_value(status["status"].clone()).unwrap());

        // 3. Pressure sustained for the window: the Deployment (and the rest, hash changed) applied
        //    with 3 replicas, the status, and a ScalingUp event.
        // (Steps 3 and 5 share their metrics.)
        let metrics = OperatorMetrics::new();
        let task = tokio::spawn(reconcile(
            Arc::new(written.clone()),
            context_with(client.clone(), NOW + 60 + 300, metrics.clone()),
        ));
        expect_reads(
            server,
            (200, Some(deployment)),
            (200, Some(vpa("4", "5"))),
            (200, Some(busy.clone())),
        )
        .await;
        let status = expect_status(server, &sp).await;
        assert_eq!(status["status"]["partitionsPerReplica"], 4);
        let applied = expect_children(server).await;
        assert_eq!(applied[1]["spec"]["replicas"], 3);
        let event = expect_event(server).await;
        assert_eq!(event["reason"], "ScalingUp");
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["regarding"]["name"], "bookings-enrich");
        assert_eq!(event["reportingController"], "sluice-vpa");
        task.await.unwrap().unwrap();
        no_more_requests(server).await;

        // 4. The API server failing: the reconcile fails (and is retried by the error policy).
        let task = tokio::spawn(reconcile(
            Arc::new(written.clone()),
            context(client.clone(), NOW + 1000),
        ));
        expect(
            server,
            "GET",
            &format!("/apis/apps/v1{NS}/deployments/bookings-enrich"),
            500,
            Some(mock_api::failure(
                500,
                "InternalError",
                "etcdserver: request timed out",
            )),
        )
        .await;
        let error = task.await.unwrap().unwrap_err();
        assert!(
            error.to_string().contains("etcdserver: request timed out"),
            "{error}"
        );
        no_more_requests(server).await;

        // 5. An apply refused (an admission webhook): the rest is not applied, the status says
        //    Degraded/ApplyRefused naming the object, the reconcile fails (and is retried).
        written.metadata.generation = Some(2);
        let task = tokio::spawn(reconcile(
            Arc::new(written),
            context_with(client, NOW + 2000, metrics.clone()),
        ));
        expect_reads(
            server,
            (404, not_found()),
            (404, not_found()),
            (404, not_found()),
        )
        .await;
        let planned = expect_status(server, &sp).await;
        assert_eq!(planned["status"]["observedGeneration"], 2);
        expect(
            server,
            "PATCH",
            &format!("/api/v1{NS}/configmaps/bookings-enrich"),
            200,
            None,
        )
        .await;
        expect(server, "PATCH", &format!("/apis/apps/v1{NS}/deployments/bookings-enrich"), 422,
            Some(mock_api::failure(422, "Invalid",
                "admission webhook \"policy.example.com\" denied the request: images must come from registry.internal"))).await;
        let status = expect_status(server, &sp).await;
        let degraded = condition_in(&status, "Degraded");
        assert_eq!(
            (degraded["status"].as_str(), degraded["reason"].as_str()),
            (Some("True"), Some("ApplyRefused"))
        );
        assert!(
            degraded["message"]
                .as_str()
                .unwrap()
                .starts_with("Deployment bookings-enrich: admission webhook"),
            "{degraded}"
        );
        assert_eq!(
            status["status"]["replicas"], 2,
            "the policy's view did not advance"
        );
        assert!(task.await.unwrap().is_err());
        let scrape = metrics.encode();
        for line in [
            "sluice_vpa_reconciles_total{result=\"ok\"} 1",
            "sluice_vpa_reconciles_total{result=\"error\"} 1",
            "sluice_vpa_events_total{reason=\"ScalingUp\",type=\"Normal\"} 1",
            "sluice_vpa_apply_refusals_total 1",
            "sluice_vpa_reconcile_duration_seconds_count 2",
        ] {
            assert!(scrape.lines().any(|l| l == line), "{line} not in\n{scrape}");
        }
        no_more_requests(server).await;
    }

    /// deploy/operator's ClusterRole grants exactly what the reconciler called, the watches of
    /// `main.rs` and the recorder's Event patch, and nothing more; and nothing on Secrets.
    fn the_operator_rbac_grants(calls: &[(String, String)]) {
        let role = mock_api::operator_object("ClusterRole");
        let need =
            |group: &str, resource: &str, verb| (group.to_owned(), resource.to_owned(), None, verb);
        let mut needed: Vec<mock_api::Need> = vec![
            // main.rs: the Controller lists and watches pipelines and the Deployments it owns.
            need("sluice.dev", "streampipelines", "list"),
            need("sluice.dev", "streampipelines", "watch"),
            need("apps", "deployments", "list"),
            need("apps", "deployments", "watch"),
            // kube-runtime's Recorder patches a repeated Event (its series) instead of posting it
            // again; the scenes here post each Event once.
            need("events.k8s.io", "events", "patch"),
        ];
        for (method, path) in calls {
            // /api/v1/namespaces/NS/RESOURCE/NAME[/SUB] or /apis/GROUP/VERSION/namespaces/...
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let (group, rest) = match parts[0] {
                "api" => ("", &parts[2..]),
                _ => (parts[1], &parts[3..]),
            };
            let (resource, collection) = match rest {
                ["namespaces", _, resource, _, sub] => (format!("{resource}/{sub}"), false),
                ["namespaces", _, resource, _] => ((*resource).to_owned(), false),
                ["namespaces", _, resource] => ((*resource).to_owned(), true),
                other => panic!("unexpected path {other:?}"),
            };
            let verbs: &[&'static str] = match method.as_str() {
                "GET" if collection => &["list"],
                "GET" => &["get"],
                // An apply that creates the object is authorized as a create.
                "PATCH" if resource.ends_with("/status") || resource.ends_with("/resize") => {
                    &["patch"]
                }
                "PATCH" => &["patch", "create"],
                "POST" => &["create"],
                other => panic!("unexpected method {other}"),
            };
            for verb in verbs {
                needed.push(need(group, &resource, verb));
            }
        }
        mock_api::grants_exactly(
            &role,
            "deploy/operator/operator.yaml: the ClusterRole",
            &needed,
        );
    }
}
