//! `deploy/` and the operator against a real Kubernetes control plane (kube-apiserver,
//! kube-controller-manager and etcd built from the Go module proxy; `support/k8s.rs`): the
//! manifests install with server-side apply, the CRD's CEL compiles on the server and admits or
//! refuses what `deploy/check_cel.py` says, the admission policies and tier quotas are enforced
//! with the API server configured by `deploy/tiers/admission-configuration.yaml`, and the
//! controller manager's ReplicaSets can create the pods of what `deploy/` ships. No kubelet
//! runs: pods are created, not started.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use sluice_tests::k8s::ControlPlane;
use sluice_tests::kubelet::Kubelet;
use sluice_tests::{Running, free_port, http_get, root, wait_until, workspace_binary};

/// The control plane most tests of this binary share, with `deploy/` installed.
fn plane() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(installed_plane)
}

/// A control plane of its own with `deploy/` installed, as on GKE: the API server configured by
/// `deploy/tiers/admission-configuration.yaml`, the VPA's CRDs, then the GKE overlay.
fn installed_plane() -> ControlPlane {
    let config = root().join("deploy/tiers/admission-configuration.yaml");
    let plane = ControlPlane::start(&[&format!(
        "--admission-control-config-file={}",
        config.display()
    )]);
    // The VerticalPodAutoscaler CRDs (from the VPA's Go module, fetched with the control
    // plane), then everything `deploy/` installs on GKE.
    let vpa = sluice_tests::cache_dir().join(format!(
        "kubernetes-{}/vpa-crds.yaml",
        std::env::var("KUBERNETES_VERSION").unwrap_or_else(|_| "1.36.3".into())
    ));
    plane.kubectl(&["apply", "--server-side", "-f", vpa.to_str().unwrap()]);
    apply(&plane, &root().join("deploy/overlays/gke"));
    plane
}

/// `kubectl kustomize DIR | kubectl apply --server-side`, twice if the first pass met a kind
/// its own CRD defines (the CRD is established meanwhile).
fn apply(plane: &ControlPlane, dir: &Path) {
    // (The restrictor off: a test's own overlay refers to the repository from a temporary
    // directory.)
    let built = std::process::Command::new("kubectl")
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let file = plane.dir().join("applied.yaml");
    std::fs::write(&file, &built.stdout).unwrap();
    let args = ["apply", "--server-side", "-f", file.to_str().unwrap()];
    if plane.kubectl_as(&plane.admin, &args).is_err() {
        std::thread::sleep(Duration::from_secs(2));
        plane.kubectl(&args);
    }
}

/// A pod that meets the restricted pod security standard: one container `pipeline` requesting
/// `cpu` and 64 MiB of memory (its limit).
fn restricted_pod(name: &str, namespace: &str, cpu: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "pipeline", "image": "example.com/x:1",
                "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"memory": "64Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }
    })
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap()
}

/// The StreamPipeline CRD's CEL rules compile on the server, and it admits and refuses the
/// replica settings `deploy/check_cel.py` checks offline, with the rule's message.
#[test]
fn the_crd_installs_and_its_cel_admits_and_refuses_what_check_cel_says() {
    let plane = plane();
    let crd = json(&plane.kubectl(&["get", "crd", "streampipelines.sluice.dev", "-o", "json"]));
    let conditions = crd["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True"),
        "{conditions:?}"
    );
    let example: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/examples/streampipeline.yaml")).unwrap(),
    )
    .unwrap();
    for (replicas, admitted) in [
        (serde_json::json!({"min": 2, "max": 6}), true),
        (serde_json::json!({"fixed": 4}), true),
        (serde_json::json!({"min": 3}), true),
        (serde_json::json!({"min": 6, "max": 6}), true),
        (serde_json::json!({"min": 7, "max": 6}), false),
        (serde_json::json!({"fixed": 4, "min": 2}), false),
        (serde_json::json!({"fixed": 4, "max": 8}), false),
    ] {
        let mut sp = example.clone();
        // A name of its own: the operator's test creates the example itself.
        sp["metadata"]["name"] = "cel-probe".into();
        sp["spec"]["replicas"] = replicas.clone();
        let file = plane.dir().join("sp.json");
        std::fs::write(&file, sp.to_string()).unwrap();
        let result = plane.kubectl_as(
            &plane.admin,
            &["create", "--dry-run=server", "-f", file.to_str().unwrap()],
        );
        assert_eq!(result.is_ok(), admitted, "replicas {replicas}: {result:?}");
        if let Err(refused) = result {
            assert!(refused.contains("spec.replicas"), "{refused}");
        }
    }
}

/// The tier gate (ValidatingAdmissionPolicy) and the tier quotas (ResourceQuota admission
/// configured by `admission-configuration.yaml`) on the server: a pod of a tier is admitted
/// only where the tier is granted, and everything `deploy/` runs itself at a tier (the operator
/// in `sluice-system`) gets its pods created by the controller manager. With the cluster-wide
/// component the operator writes only in namespaces labelled `sluice.dev/pipelines: enabled`.
#[test]
fn tiers_are_enforced_and_what_deploy_runs_itself_is_admitted() {
    let plane = plane();
    let pod = |namespace: &str, class: &str| {
        let mut pod = restricted_pod("probe", namespace, "10m");
        pod["spec"]["priorityClassName"] = class.into();
        let file = plane.dir().join(format!("pod-{namespace}-{class}.json"));
        std::fs::write(&file, pod.to_string()).unwrap();
        plane.kubectl_as(
            &plane.admin,
            &["create", "--dry-run=server", "-f", file.to_str().unwrap()],
        )
    };
    plane.kubectl(&["create", "namespace", "team-a"]);
    assert!(pod("pipelines", "sluice-critical").is_ok());
    assert!(pod("pipelines", "sluice-tolerant").is_ok());
    let refused = pod("team-a", "sluice-critical").unwrap_err();
    assert!(refused.contains("sluice-critical"), "{refused}");
    // What deploy/ runs itself at a tier in sluice-system (the operator at sluice-critical): its
    // ReplicaSets create the pods.
    let events = || {
        plane.kubectl(&[
            "-n",
            "sluice-system",
            "get",
            "events",
            "-o",
            "custom-columns=OBJ:.involvedObject.name,REASON:.reason,MSG:.message",
        ])
    };
    wait_until_or(
        "the operator's pods created",
        Duration::from_secs(60),
        &events,
        || {
            let pods = json(&plane.kubectl(&[
                "-n",
                "sluice-system",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=sluice-vpa",
                "-o",
                "json",
            ]));
            pods["items"].as_array().map_or(0, Vec::len) == 2
        },
    );
    for name in [
        "overprovisioning-on-demand-autoscaler",
        "overprovisioning-spot-autoscaler",
    ] {
        wait_until_or(name, Duration::from_secs(60), &events, || {
            json(&plane.kubectl(&[
                "-n",
                "sluice-system",
                "get",
                "deployment",
                name,
                "-o",
                "json",
            ]))["status"]["replicas"]
                == 1
        });
    }

    // The cluster-wide component: the operator's grants everywhere, its writes only in
    // namespaces that opted in (the ClusterRoleBinding alone would let it write in team-a).
    let overlay = plane.dir().join("cluster-wide");
    std::fs::create_dir_all(&overlay).unwrap();
    // (Kustomize takes relative paths only: up to / from the overlay, then down to the repo.)
    let up = "../".repeat(overlay.components().count() - 1);
    let repo = |path: &str| {
        format!(
            "{up}{}",
            root()
                .join(path)
                .display()
                .to_string()
                .trim_start_matches('/')
        )
    };
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: ['{}']\ncomponents: ['{}']\n",
            repo("deploy/overlays/gke"),
            repo("deploy/operator/cluster-wide")
        ),
    )
    .unwrap();
    apply(plane, &overlay);
    let token = plane.service_account_token("sluice-system", "sluice-vpa");
    let create = |namespace: &str| {
        let config_map = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "probe", "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "sluice-vpa"}}});
        plane.request(
            &token,
            "POST",
            &format!("/api/v1/namespaces/{namespace}/configmaps?dryRun=All"),
            "application/json",
            &config_map.to_string(),
        )
    };
    let mut answer = (0, String::new());
    wait_until(
        "the opt-in policy enforced",
        Duration::from_secs(30),
        || {
            answer = create("team-a");
            answer.0 == 403
                && answer
                    .1
                    .contains("sluice-vpa-writes-only-in-opted-in-namespaces")
        },
    );
    assert!(
        answer
            .1
            .contains("label namespace team-a to run StreamPipelines there"),
        "{}",
        answer.1
    );
    let (code, body) = create("pipelines");
    assert_eq!(code, 201, "opted in: {body}");
}

/// [`wait_until`], showing `context()` on timeout.
fn wait_until_or(
    what: &str,
    timeout: Duration,
    context: &dyn Fn() -> String,
    mut done: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The `sluice-vpa` binary, started as the ServiceAccount `deploy/operator` creates (a token
/// of `sluice-vpa` in `sluice-system`: only the grants its Role and ClusterRole give it).
fn operator(plane: &ControlPlane, name: &str) -> (Running, u16) {
    operator_with(plane, name, &[])
}

/// [`operator`] with more environment.
fn operator_with(plane: &ControlPlane, name: &str, env: &[(&str, &str)]) -> (Running, u16) {
    let kubeconfig = plane.service_account_kubeconfig("sluice-system", "sluice-vpa");
    let probes = free_port();
    let log = plane.dir().join(format!("{name}.log"));
    let child = std::process::Command::new(workspace_binary("sluice-vpa"))
        .env("KUBECONFIG", &kubeconfig)
        .env("SLUICE_VPA_LISTEN", format!("127.0.0.1:{probes}"))
        .env("POD_NAMESPACE", "sluice-system")
        .env("POD_NAME", name)
        .env("SLUICE_VPA_WATCH_NAMESPACES", "pipelines")
        .env("SLUICE_VPA_RESYNC_S", "5")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    (Running { child, log }, probes)
}

/// An object of the `pipelines` namespace as JSON, if it exists.
fn object(plane: &ControlPlane, kind: &str, name: &str) -> Option<Value> {
    plane
        .kubectl_as(
            &plane.admin,
            &["-n", "pipelines", "get", kind, name, "-o", "json"],
        )
        .ok()
        .map(|out| json(&out))
}

fn lease_holder(plane: &ControlPlane) -> Option<String> {
    plane
        .kubectl_as(
            &plane.admin,
            &[
                "-n",
                "sluice-system",
                "get",
                "lease",
                "sluice-vpa",
                "-o",
                "json",
            ],
        )
        .ok()
        .and_then(|out| {
            json(&out)["spec"]["holderIdentity"]
                .as_str()
                .map(str::to_owned)
        })
}

/// The operator as its own ServiceAccount on the real API server: it takes the leader Lease,
/// reconciles the example StreamPipeline into its six children by server-side apply (the
/// ReplicaSet the controller manager makes creates the pipeline's pods: they pass the tier gate,
/// the tier quota and the restricted pod security standard), and writes the status. A second
/// replica waits; when the leader is killed (SIGKILL) it takes the Lease over and reconciles a
/// change of the plugin's configuration. Its in-place resize goes through the real `resize`
/// subresource (CPU changed, memory and QoS class kept), and the guard refuses it on a pod the
/// operator does not manage. (Replica changes wait for the rollout to finish, and
/// without a kubelet no pod becomes ready.)
#[test]
fn the_operator_as_its_service_account_reconciles_and_a_standby_takes_over() {
    let plane = plane();
    let (a, probes_a) = operator(plane, "sluice-vpa-a");
    wait_until("a leads", Duration::from_secs(60), || {
        lease_holder(plane).as_deref() == Some("sluice-vpa-a")
    });
    let (b, probes_b) = operator(plane, "sluice-vpa-b");
    plane.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        root()
            .join("deploy/examples/streampipeline.yaml")
            .to_str()
            .unwrap(),
    ]);
    let get = |kind: &str, name: &str| object(plane, kind, name);
    let (log_a, log_b) = (a.log.clone(), b.log.clone());
    let show = |what: &str| {
        format!(
            "{what}\n--- a ---\n{}\n--- b ---\n{}",
            std::fs::read_to_string(&log_a).unwrap_or_default(),
            std::fs::read_to_string(&log_b).unwrap_or_default()
        )
    };
    wait_until("the status written", Duration::from_secs(60), || {
        get("streampipeline", "bookings-enrich")
            .is_some_and(|sp| sp["status"]["observedGeneration"] == 1)
    });
    for (kind, name) in [
        ("configmap", "bookings-enrich"),
        ("deployment", "bookings-enrich"),
        ("verticalpodautoscaler", "bookings-enrich"),
        ("poddisruptionbudget", "bookings-enrich"),
        ("service", "bookings-enrich-metrics"),
        ("networkpolicy", "bookings-enrich"),
    ] {
        let child = get(kind, name).unwrap_or_else(|| panic!("{}", show(&format!("no {kind}"))));
        assert_eq!(
            child["metadata"]["ownerReferences"][0]["name"], "bookings-enrich",
            "{kind}"
        );
    }
    // Tolerant on GKE (the overlay's placement ConfigMap): spot or preemptible nodes, their
    // toleration, and GKE's 15 s of its 30 s notice as the grace period.
    let deployment = get("deployment", "bookings-enrich").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let terms = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms[0]["matchExpressions"][0]["key"],
        "cloud.google.com/gke-spot"
    );
    assert_eq!(
        terms[1]["matchExpressions"][0]["key"],
        "cloud.google.com/gke-preemptible"
    );
    assert_eq!(pod["tolerations"][0]["key"], "cloud.google.com/gke-spot");
    assert_eq!(pod["terminationGracePeriodSeconds"], 15);
    let sp = get("streampipeline", "bookings-enrich").unwrap();
    eprintln!("status: {}", sp["status"]);
    assert_eq!(sp["status"]["partitionsPerReplica"], 6);
    assert!(
        sp["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{}",
        sp["status"]
    );
    // The controller manager's ReplicaSet creates the pipeline's pods: admitted.
    let pipeline_pods = || {
        plane
            .kubectl(&[
                "-n",
                "pipelines",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/instance=bookings-enrich",
                "-o",
                "name",
            ])
            .lines()
            .map(|l| l.trim_start_matches("pod/").to_owned())
            .collect::<Vec<_>>()
    };
    wait_until(
        "the pipeline's pods created",
        Duration::from_secs(60),
        || pipeline_pods().len() >= 2,
    );
    assert_eq!(http_get(probes_a, "/readyz").map(|r| r.0), Some(200));

    // The operator's in-place resize, as its ServiceAccount, through the real `resize`
    // subresource: the CPU changes, memory stays, the QoS class stays.
    let pod_name = pipeline_pods().remove(0);
    let pod =
        |name: &str| json(&plane.kubectl(&["-n", "pipelines", "get", "pod", name, "-o", "json"]));
    let before = pod(&pod_name);
    let patch = sluice_vpa::manifests::cpu_resize_patch(1500).to_string();
    // The operator's request exactly: a strategic-merge PATCH of the subresource (kubectl
    // would GET it first, which the operator's Role does not grant and the operator never does).
    let token = plane.service_account_token("sluice-system", "sluice-vpa");
    let resize = |name: &str| {
        let (code, body) = plane.request(
            &token,
            "PATCH",
            &format!("/api/v1/namespaces/pipelines/pods/{name}/resize"),
            "application/strategic-merge-patch+json",
            &patch,
        );
        if code == 200 {
            Ok(body)
        } else {
            Err(format!("{code}: {body}"))
        }
    };
    resize(&pod_name).unwrap_or_else(|e| panic!("the resize was refused: {e}"));
    let after = pod(&pod_name);
    let resources = |p: &Value| p["spec"]["containers"][0]["resources"].clone();
    assert_eq!(
        resources(&after)["requests"]["cpu"],
        "1500m",
        "{}",
        resources(&after)
    );
    assert_eq!(
        resources(&after)["limits"]["cpu"],
        "3",
        "{}",
        resources(&after)
    );
    assert_eq!(
        resources(&after)["requests"]["memory"],
        resources(&before)["requests"]["memory"]
    );
    assert_eq!(
        resources(&after)["limits"]["memory"],
        resources(&before)["limits"]["memory"]
    );
    assert_eq!(after["status"]["qosClass"], before["status"]["qosClass"]);
    // The guard (admission.yaml) keeps the operator's resizes to pods it manages.
    let theirs = plane.dir().join("theirs.json");
    let mut pod = restricted_pod("theirs", "pipelines", "1");
    pod["metadata"]["labels"] = serde_json::json!({"app": "payments"});
    std::fs::write(&theirs, pod.to_string()).unwrap();
    plane.kubectl(&["create", "-f", theirs.to_str().unwrap()]);
    let refused = resize("theirs").unwrap_err();
    assert!(
        refused.contains("ValidatingAdmissionPolicy 'sluice-vpa-writes-only-managed-objects'"),
        "refused by the guard, not by RBAC: {refused}"
    );

    // The leader dies; the standby takes the Lease and reconciles a change.
    a.kill();
    let killed = std::time::Instant::now();
    wait_until("b leads", Duration::from_secs(60), || {
        lease_holder(plane).as_deref() == Some("sluice-vpa-b")
    });
    eprintln!(
        "the standby leads {:?} after the leader's SIGKILL",
        killed.elapsed()
    );
    plane.kubectl(&[
        "-n",
        "pipelines",
        "patch",
        "streampipeline",
        "bookings-enrich",
        "--type",
        "json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/plugin/config/min_fare", "value": 7}]"#,
    ]);
    wait_until_or(
        "b reconciled the change",
        Duration::from_secs(60),
        &|| {
            show(&format!(
                "b did not reconcile: {}\nconfigmap {}\n{}",
                get("streampipeline", "bookings-enrich").unwrap_or_default(),
                get("configmap", "bookings-enrich").unwrap_or_default(),
                http_get(probes_b, "/metrics")
                    .map(|r| r.1)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.starts_with("sluice_vpa"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        },
        || {
            get("configmap", "bookings-enrich")
                .is_some_and(|c| c["data"].to_string().contains("min_fare: 7"))
        },
    );
    let (code, log) = b.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// The in-place loop (`appliedBy: in-place`) on a cluster: the real operator as its
/// ServiceAccount, on a control plane of its own, with two 6-CPU nodes each a third taken by
/// another team's pod, and a fake kubelet (`support/kubelet.rs`) that places pods, reports their
/// share of the pipeline's load and answers resizes as a kubelet does.
/// - Load on 1-CPU pods: both resized in place (the kubelet reports the new CPU).
/// - A spot node reclaimed (cordoned, its pod gone): its replacement cannot be placed, a replica
///   is missing, and the pod that runs carries all the partitions: it is resized for that, and
///   no replica step is taken. The node back: the replacement starts at the template's CPU (no
///   rollout happened) and is resized like the other.
/// - A resize the namespace's tier quota refuses: `Degraded/ResizeRefused` and a warning.
/// - A resize the nodes defer (other pods took the room), with no replica step possible: after
///   `DEFER_GRACE_S`, patched back to the CPU the pods have (no pod left with a pending resize
///   for the VPA to evict) and held there.
#[test]
fn the_in_place_loop_resizes_patches_back_and_holds_through_a_reclaim_and_a_quota() {
    let plane = installed_plane();
    plane.kubectl(&["create", "namespace", "fillers"]);
    let kubelet = Kubelet::start(
        &plane,
        &[("node-a", 6000), ("node-b", 6000)],
        &["pipelines", "fillers"],
    );
    let filler = |name: &str, cpu: &str| {
        let file = plane.dir().join(format!("{name}.json"));
        std::fs::write(&file, restricted_pod(name, "fillers", cpu).to_string()).unwrap();
        plane.kubectl(&["create", "-f", file.to_str().unwrap()]);
    };
    let fillers_running = |n: usize| {
        json(&plane.kubectl(&["-n", "fillers", "get", "pods", "-o", "json"]))["items"]
            .as_array()
            .is_some_and(|p| p.len() == n && p.iter().all(|p| p["status"]["phase"] == "Running"))
    };
    filler("filler-a", "2");
    filler("filler-b", "2");
    wait_until("the fillers run", Duration::from_secs(30), || {
        fillers_running(2)
    });
    let get = |args: &[&str]| {
        let mut all = vec!["-n", "pipelines", "get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        json(&plane.kubectl(&all))
    };

    let mut sp: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/examples/streampipeline.yaml")).unwrap(),
    )
    .unwrap();
    sp["spec"]["resources"]["appliedBy"] = "in-place".into();
    // Two replicas, always: no replica step can answer a deferral (the step is unit-tested).
    sp["spec"]["replicas"] = serde_json::json!({"min": 2, "max": 2});
    let file = plane.dir().join("in-place.json");
    std::fs::write(&file, sp.to_string()).unwrap();
    plane.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    let (operator, probes) = operator(&plane, "sluice-vpa-in-place");
    let log = operator.log.clone();
    // (pod, spec CPU, the CPU the kubelet reports, node, phase) of each pipeline pod.
    let pods = || -> Vec<(String, String, String, String, String)> {
        get(&["pods", "-l", "app.kubernetes.io/instance=bookings-enrich"])["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (
                    s(&p["metadata"]["name"]),
                    s(&p["spec"]["containers"][0]["resources"]["requests"]["cpu"]),
                    s(&p["status"]["containerStatuses"][0]["resources"]["requests"]["cpu"]),
                    s(&p["spec"]["nodeName"]),
                    s(&p["status"]["phase"]),
                )
            })
            .collect()
    };
    let status = || get(&["streampipeline", "bookings-enrich"])["status"].clone();
    let show = |what: &str| {
        format!(
            "{what}\npods {:?}\nstatus {}\n--- operator ---\n{}",
            pods(),
            status(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    let millis = |q: &str| sluice_vpa::manifests::cpu_millis(q).unwrap_or(0);
    // Every pod runs what its spec asks, all the same size: that size.
    let settled = || {
        let p = pods();
        let sizes: Vec<u64> = p.iter().map(|(_, spec, _, _, _)| millis(spec)).collect();
        let same = sizes.windows(2).all(|w| w[0] == w[1]);
        let running = p.iter().all(|(_, spec, have, _, _)| spec == have);
        (p.len() == 2 && running && same).then(|| sizes[0])
    };
    let minutes = |n: u64| Duration::from_secs(60 * n);

    // 1. 1.5 CPUs used on each 1-CPU pod: both resized to 1.7 in place.
    kubelet.set_load("bookings-enrich", 3000);
    wait_until_or(
        "both pods at 1.7 CPUs",
        minutes(3),
        &|| show("not resized"),
        || settled() == Some(1700),
    );

    // 2. Node b reclaimed: its pod gone, and no node takes the replacement: a replica is
    //    missing, and the pod on node a carries the whole load (3 CPUs, within its 3.4 limit).
    //    It is resized for that while the replica is missing, and nothing steps.
    // (Both nodes cordoned, as while a spot pool is reclaimed: nowhere to place the
    // replacement; a pod that runs can still grow in place.)
    kubelet.cordon("node-a", true);
    kubelet.cordon("node-b", true);
    let (lost, ..) = pods().into_iter().find(|p| p.3 == "node-b").unwrap();
    kubelet.kill("pipelines", &lost);
    wait_until_or(
        "the pod on node a resized with a replica missing",
        minutes(4),
        &|| show("not resized while a replica was missing"),
        || {
            let p = pods();
            p.iter().any(|(_, spec, have, node, _)| {
                node == "node-a" && spec == have && millis(spec) > 1700
            }) && p
                .iter()
                .any(|(_, _, _, node, phase)| node.is_empty() && phase == "Pending")
        },
    );
    assert_eq!(
        status()["replicas"],
        2,
        "no replica step while one is missing"
    );
    // Node b back: the replacement starts at the template's CPU and is resized like the other.
    kubelet.cordon("node-a", false);
    kubelet.cordon("node-b", false);
    wait_until_or(
        "the replacement resized",
        minutes(3),
        &|| show("the replacement"),
        || settled().is_some_and(|m| m > 1000),
    );
    // (The window remembers the load as two pods carry it, 1.5 CPUs each: the pod carrying
    // both shares was sized 2 x 1.7, and the replacement joins it there.)
    assert_eq!(settled(), Some(3400), "{:?}", pods());
    let template = get(&["deployment", "bookings-enrich"])["spec"]["template"]["spec"]["containers"]
        [0]["resources"]["requests"]["cpu"]
        .clone();
    assert_eq!(
        template, "1",
        "no rollout happened: the template keeps its CPU"
    );

    // 3. More load (3.3 CPUs a pod: a target of 3.7), and the tier quota leaves 0.2 CPUs: the
    //    resize is refused by the API server.
    let size = 3400;
    let quota = |cpu: &str| {
        plane.kubectl(&[
            "-n",
            "pipelines",
            "patch",
            "resourcequota",
            "sluice-tolerant",
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec": {{"hard": {{"requests.cpu": "{cpu}"}}}}}}"#),
        ]);
    };
    quota(&format!("{}m", 2 * size + 200));
    kubelet.set_load("bookings-enrich", 6600);
    wait_until_or(
        "Degraded/ResizeRefused",
        minutes(5),
        &|| show("no refusal"),
        || {
            status()["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == "Degraded"
                        && c["status"] == "True"
                        && c["reason"] == "ResizeRefused"
                })
        },
    );
    let degraded = status()["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("exceeded quota: sluice-tolerant"),
        "{degraded}"
    );
    assert_eq!(settled(), Some(size), "{:?}", pods());

    // 4. The quota back, other pods take the nodes' room (0.1 CPU left on each), more load:
    //    the resize is deferred; two minutes later it is patched back and the pods held.
    quota("400");
    for name in ["filler-c", "filler-d"] {
        filler(name, &format!("{}m", 6000 - 2000 - size - 100));
    }
    wait_until("the new fillers run", Duration::from_secs(30), || {
        fillers_running(4)
    });
    // 3.8 CPUs a pod: a target of 4 (maxAllowed), 0.6 more than the nodes have.
    kubelet.set_load("bookings-enrich", 7600);
    let deferred_at = std::time::Instant::now();
    wait_until_or(
        "a deferred resize",
        minutes(5),
        &|| show("never deferred"),
        || pods().iter().any(|(_, spec, have, _, _)| spec != have),
    );
    wait_until_or(
        "the deferred resizes patched back and held",
        minutes(4),
        &|| show("not patched back"),
        || {
            let held = status()["policy"]["fast"]["held"]
                .as_array()
                .map_or(0, Vec::len);
            held == 2 && settled() == Some(size)
        },
    );
    eprintln!(
        "patched back {:?} after the load rose",
        deferred_at.elapsed()
    );
    // The kubelet sees the spec back at what the pods run: nothing is left pending.
    let pending = || -> Vec<Value> {
        get(&["pods"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|c| c["type"] == "PodResizePending" && c["status"] == "True")
            .collect()
    };
    wait_until_or(
        "no resize left pending",
        Duration::from_secs(20),
        &|| format!("{:?}", pending()),
        || pending().is_empty(),
    );
    let events = plane.kubectl(&["-n", "pipelines", "get", "events", "-o", "json"]);
    for reason in ["ResizeRefused", "ResizeDeferred"] {
        assert!(
            events.contains(&format!("\"reason\": \"{reason}\"")),
            "no {reason} event"
        );
    }
    let metrics = http_get(probes, "/metrics")
        .map(|r| r.1)
        .unwrap_or_default();
    for line in [
        "sluice_vpa_resizes_total{result=\"deferred\"} 2",
        "sluice_vpa_resizes_total{result=\"refused\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    let (code, log) = operator.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// `plugin.upgrade: in-place` on the real API server: a change of only the plugin's path and
/// sha256 goes to the running pod's admin endpoint (a real `sluice run` on 127.0.0.1:9464, on
/// Apache Kafka, standing in for the pod the emulated kubelet runs) instead of a rollout: the
/// pod and its template stay, the pod runs the new library, and the status and an Event say
/// so. A new version the pod cannot open turns into a rollout (the template changes once).
#[test]
fn a_plugin_only_change_goes_to_the_pods_in_place_and_a_refusal_rolls() {
    use sluice_tests::{Broker, sha256, start_with, versioned_plugin, write_spec};
    let plane = installed_plane();
    let kubelet = Kubelet::start(&plane, &[("node-a", 8000)], &["pipelines"]);
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let v1 = versioned_plugin(dir.path(), "swapper", "1.0.0", 0);
    let v2 = versioned_plugin(dir.path(), "swapper", "2.0.0", 0);
    let broken = versioned_plugin(dir.path(), "swapper", "3.0.0", 2);
    let token = "in-place-token";
    plane.kubectl(&[
        "-n",
        "pipelines",
        "create",
        "secret",
        "generic",
        "sluice-upgrade-token",
        &format!("--from-literal=token={token}"),
    ]);
    // "The pod": the pipeline the Deployment would run, on the admin port the operator calls.
    let input = sluice_tests::unique("in");
    let output = sluice_tests::unique("out");
    broker.create_topic(&input, 2);
    broker.create_topic(&output, 2);
    let spec = write_spec(
        dir.path(),
        &format!(
            "name: upgrader\nplugin:\n  path: {}\n  sha256: {}\nsource:\n  kafka:\n    bootstrap-servers: {}\n    topics: [{input}]\n    group-id: {}\n    commit-interval-ms: 200\nadmin:\n  listen: 127.0.0.1:{}\n  upgrade-watch-events: 20\noutputs:\n  out:\n    kafka: {{topic: {output}}}\n",
            v1.display(),
            sha256(&v1),
            broker.addr,
            sluice_tests::unique("group"),
            sluice_vpa::manifests::ADMIN_PORT,
        ),
    );
    // The token as the pod and the operator get it: a mounted Secret's file.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let token_file = token_file.to_str().unwrap();
    let pod = start_with(
        &spec,
        dir.path(),
        &[],
        &[("SLUICE_ADMIN_TOKEN_FILE", token_file)],
    );
    let admin = sluice_vpa::manifests::ADMIN_PORT;
    wait_until("the pod's admin endpoint", Duration::from_secs(60), || {
        http_get(admin, "/status").is_some()
    });
    let running = || {
        http_get(admin, "/status")
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
            .map(|s| {
                s["plugin"]["version"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    // Events flow, so a new version's trial (20 events) ends.
    let feeding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let feeder = {
        let (feeding, addr, input) = (feeding.clone(), broker.addr.clone(), input.clone());
        std::thread::spawn(move || {
            let mut start = 0;
            while feeding.load(std::sync::atomic::Ordering::Relaxed) {
                sluice_tests::kafka_tool(&[
                    "produce",
                    "--broker",
                    &addr,
                    "--topic",
                    &input,
                    "--count",
                    "50",
                    "--start",
                    &start.to_string(),
                ]);
                start += 50;
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    let mut sp: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/examples/streampipeline.yaml")).unwrap(),
    )
    .unwrap();
    sp["metadata"]["name"] = "upgrader".into();
    sp["spec"]["replicas"] = serde_json::json!({"min": 1, "max": 1});
    let plugin = |lib: &Path| {
        serde_json::json!({"path": lib, "sha256": sha256(lib), "upgrade": "in-place",
                           "config": {"min_fare": 5}})
    };
    sp["spec"]["plugin"] = plugin(&v1);
    let file = dir.path().join("upgrader.json");
    let apply_sp = |sp: &Value| {
        std::fs::write(&file, sp.to_string()).unwrap();
        plane.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    };
    apply_sp(&sp);
    let (operator, _) = operator_with(
        &plane,
        "sluice-vpa-upgrades",
        &[("SLUICE_VPA_UPGRADE_TOKEN_FILE", token_file)],
    );
    let get = |kind: &str, name: &str| {
        json(&plane.kubectl(&["-n", "pipelines", "get", kind, name, "-o", "json"]))
    };
    let pods = || -> Vec<String> {
        json(&plane.kubectl(&[
            "-n",
            "pipelines",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/instance=upgrader",
            "-o",
            "json",
        ]))["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running"
            })
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let log = operator.log.clone();
    let show = |what: &str| {
        format!(
            "{what}\nstatus {}\npods {:?}\n--- operator ---\n{}",
            get("streampipeline", "upgrader")["status"],
            pods(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    wait_until_or(
        "the pod runs",
        Duration::from_secs(90),
        &|| show("no pod"),
        || pods().len() == 1,
    );
    let first = pods();
    let template_hash = || {
        get("deployment", "upgrader")["spec"]["template"]["metadata"]["annotations"]
            ["sluice.dev/config-hash"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let before = template_hash();
    let template = get("deployment", "upgrader")["spec"]["template"]["spec"].clone();
    assert!(
        template["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "SLUICE_ADMIN_TOKEN_FILE")
            && template["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "sluice-upgrade-token"),
        "{template}"
    );
    assert_eq!(running(), "1.0.0");

    // Only the plugin changes: in place.
    sp["spec"]["plugin"] = plugin(&v2);
    apply_sp(&sp);
    wait_until_or(
        "the pod upgraded in place",
        Duration::from_secs(120),
        &|| show("not upgraded"),
        || {
            get("streampipeline", "upgrader")["status"]["pluginUpgrade"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("every pod runs plugin sha256"))
        },
    );
    assert_eq!(running(), "2.0.0");
    assert_eq!(pods(), first, "the same pod: no rollout");
    assert_eq!(template_hash(), before, "the template did not change");
    let config_map = get("configmap", "upgrader")["data"]["pipeline.yaml"].clone();
    assert!(
        config_map.as_str().unwrap().contains(&sha256(&v2)),
        "a pod that starts reads the new library: {config_map}"
    );
    let events = plane.kubectl(&["-n", "pipelines", "get", "events", "-o", "json"]);
    assert!(
        events.contains("PluginUpgrading") && events.contains("PluginUpgraded"),
        "{events}"
    );

    // A version the pod cannot open: refused there, so every pod rolls instead.
    sp["spec"]["plugin"] = plugin(&broken);
    apply_sp(&sp);
    wait_until_or(
        "a rollout instead",
        Duration::from_secs(120),
        &|| show("no rollout"),
        || template_hash() != before,
    );
    let status = get("streampipeline", "upgrader")["status"]["pluginUpgrade"].clone();
    assert_eq!(status["rolled"], sha256(&broken), "{status}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused the upgrade") && m.contains("cannot open")),
        "{status}"
    );
    assert_eq!(running(), "2.0.0", "the pod kept the version it had");
    let events = plane.kubectl(&["-n", "pipelines", "get", "events", "-o", "json"]);
    assert!(events.contains("PluginUpgradeRolled"), "{events}");

    feeding.store(false, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
    let (code, log) = pod.stop();
    assert_eq!(code, Some(0), "{log}");
    drop(kubelet);
}

/// `spec.kafka.authentication` and `spec.kafka.tls` on the real API server: the operator's
/// Deployment mounts the password and the CA Secrets as files (no Secret in the environment
/// but the bootstrap servers, none in the ConfigMap or the status), and a real `sluice run` of
/// the ConfigMap's pipeline.yaml, with those Secrets' keys where the mounts put them (as the
/// kubelet would), consumes and produces on a SASL_SSL broker as the pipeline's own user, with
/// the ACLs `sluice acls` derives from that same pipeline.yaml.
#[test]
fn kafka_credentials_come_from_mounted_secrets_and_the_rendered_pod_runs_on_sasl_ssl() {
    use sluice_tests::{Broker, kafka_tool, plugin, start_with, unique};
    let plane = installed_plane();
    let password = "s3cret-from-a-secret";
    let broker = Broker::start_secured(&[("pipeline-user", password)], None);
    let secured = broker.secured.clone().unwrap();
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    broker.create_topic(&input, 2);
    broker.create_topic(&output, 2);
    let dir = tempfile::tempdir().unwrap();
    let ns = |args: &[&str]| {
        let mut all = vec!["-n", "pipelines"];
        all.extend_from_slice(args);
        plane.kubectl(&all)
    };
    let ca = secured.tls.join("ca.crt");
    ns(&[
        "create",
        "secret",
        "generic",
        "kafka-secured",
        &format!("--from-literal=bootstrap-servers={}", secured.sasl_ssl),
    ]);
    ns(&[
        "create",
        "secret",
        "generic",
        "pipeline-user",
        &format!("--from-literal=password={password}"),
    ]);
    ns(&[
        "create",
        "secret",
        "generic",
        "cluster-ca",
        &format!("--from-file=ca.crt={}", ca.display()),
    ]);
    let mut sp: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/examples/streampipeline-secured.yaml"))
            .unwrap(),
    )
    .unwrap();
    sp["metadata"]["name"] = "secured".into();
    sp["spec"]["replicas"] = serde_json::json!({"min": 1, "max": 2});
    sp["spec"]["plugin"] = serde_json::json!({"path": plugin("passthrough")});
    let kafka = &mut sp["spec"]["kafka"];
    kafka["bootstrapServers"] =
        serde_json::json!({"name": "kafka-secured", "key": "bootstrap-servers"});
    kafka["topics"] = serde_json::json!([input]);
    kafka["group"] = group.clone().into();
    kafka["partitions"] = 2.into();
    kafka["authentication"]["username"] = "pipeline-user".into();
    kafka["authentication"]["passwordSecret"] =
        serde_json::json!({"secretName": "pipeline-user", "password": "password"});
    kafka["tls"]["trustedCertificates"] =
        serde_json::json!([{"secretName": "cluster-ca", "certificate": "ca.crt"}]);
    sp["spec"]["pipeline"] = serde_json::json!({"outputs": {"out": {"kafka": {"topic": output}}}});
    let file = dir.path().join("secured.json");
    std::fs::write(&file, sp.to_string()).unwrap();
    plane.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    let (operator, _) = operator(&plane, "sluice-vpa-secured");
    let get = |kind: &str, name: &str| object(&plane, kind, name);
    wait_until_or(
        "the operator's Deployment",
        Duration::from_secs(90),
        &|| std::fs::read_to_string(&operator.log).unwrap_or_default(),
        || get("deployment", "secured").is_some() && get("configmap", "secured").is_some(),
    );
    let pod = get("deployment", "secured").unwrap()["spec"]["template"]["spec"].clone();
    let container = &pod["containers"][0];
    let env = container["env"].as_array().unwrap();
    let from_secrets: Vec<&Value> = env
        .iter()
        .filter(|e| !e["valueFrom"]["secretKeyRef"].is_null())
        .collect();
    assert_eq!(
        from_secrets.len(),
        1,
        "only the bootstrap servers come from the environment: {env:?}"
    );
    let dir_of = |volume: &str| format!("{}/{volume}", sluice_vpa::manifests::KAFKA_SECRETS_DIR);
    for (volume, secret) in [
        ("kafka-password", "pipeline-user"),
        ("kafka-ca", "cluster-ca"),
    ] {
        let v = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .unwrap_or_else(|| panic!("no volume {volume}: {pod}"));
        assert_eq!(v["secret"]["secretName"], secret, "{v}");
        assert_eq!(v["secret"]["defaultMode"], 0o440, "{v}");
        assert!(
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == volume
                    && m["mountPath"] == dir_of(volume).as_str()
                    && m["readOnly"] == true),
            "{container}"
        );
    }
    assert_eq!(pod["securityContext"]["fsGroup"], 65532, "{pod}");
    let config_map = get("configmap", "secured").unwrap();
    let pipeline_yaml = config_map["data"]["pipeline.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = get("streampipeline", "secured").unwrap();
    for (what, text) in [
        ("ConfigMap", &config_map.to_string()),
        ("status", &status.to_string()),
    ] {
        assert!(
            !text.contains(password),
            "the password is in the {what}: {text}"
        );
        assert!(
            !text.contains("BEGIN CERTIFICATE"),
            "a certificate is in the {what}"
        );
    }

    // The pod, as the kubelet would run it: each mounted Secret's keys as files.
    let mounts = dir.path().join("mounts");
    for v in pod["volumes"].as_array().unwrap() {
        let Some(secret) = v["secret"]["secretName"].as_str() else {
            continue;
        };
        let data = json(&ns(&["get", "secret", secret, "-o", "json"]))["data"].clone();
        let target = mounts.join(v["name"].as_str().unwrap());
        std::fs::create_dir_all(&target).unwrap();
        for item in v["secret"]["items"].as_array().unwrap() {
            use base64::Engine as _;
            let value = base64::engine::general_purpose::STANDARD
                .decode(data[item["key"].as_str().unwrap()].as_str().unwrap())
                .unwrap();
            std::fs::write(target.join(item["path"].as_str().unwrap()), value).unwrap();
        }
    }
    let admin = free_port();
    let local = pipeline_yaml
        .replace(
            sluice_vpa::manifests::KAFKA_SECRETS_DIR,
            mounts.to_str().unwrap(),
        )
        .replace(
            &format!("0.0.0.0:{}", sluice_vpa::manifests::ADMIN_PORT),
            &format!("127.0.0.1:{admin}"),
        );
    let spec = dir.path().join("pipeline.yaml");
    std::fs::write(&spec, &local).unwrap();
    // The pipeline's ACLs, derived from the very file the pod reads.
    let acls = std::process::Command::new(workspace_binary("sluice"))
        .args(["acls", "-f"])
        .arg(&spec)
        .args(["--apply", "--bootstrap-servers", &broker.addr])
        .env("KAFKA_BOOTSTRAP_SERVERS", &secured.sasl_ssl)
        .output()
        .unwrap();
    assert!(
        acls.status.success(),
        "{}",
        String::from_utf8_lossy(&acls.stderr)
    );
    broker.produce(&input, 200, 0, &[]);
    let run = start_with(
        &spec,
        dir.path(),
        &[],
        &[("KAFKA_BOOTSTRAP_SERVERS", &secured.sasl_ssl)],
    );
    wait_until("every event committed", Duration::from_secs(60), || {
        broker.committed_sum(&input, &group) == 200
    });
    let (code, log) = run.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("assigned"), "{log}");
    let out = kafka_tool(&[
        "consume",
        "--broker",
        &broker.addr,
        "--topic",
        &output,
        "--expect",
        "200",
        "--timeout",
        "20",
    ]);
    assert_eq!(out.lines().count(), 200, "{log}");
}
