//! `sluice-vpa`: the StreamPipeline operator. Watches StreamPipelines (and the Deployments it
//! owns) in the namespaces it is given, or in every namespace, reconciles each into its
//! children, and serves `/healthz`, `/readyz` and `/metrics`.
//!
//! Environment: `POD_NAMESPACE` (where the `sluice-placement` ConfigMap and the leader Lease
//! live, default `sluice-system`), `SLUICE_VPA_WATCH_NAMESPACES` (comma-separated namespaces to
//! work in, each with a RoleBinding of the operator's ClusterRole; unset or empty: every
//! namespace, with the ClusterRoleBinding of `deploy/operator/cluster-wide`),
//! `SLUICE_VPA_LISTEN` (probes, default `0.0.0.0:8080`), `SLUICE_VPA_RESYNC_S` (how often the
//! policy looks at each pipeline, default 60), `RUST_LOG`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use sluice_vpa::crd::StreamPipeline;
use sluice_vpa::manifests::Placement;
use sluice_vpa::policy::PolicyConfig;
use sluice_vpa_operator::controller::{
    Context, MANAGER, OperatorMetrics, error_policy, minor_version, reconcile,
};
use sluice_vpa_operator::lease::{Held, LeaseLock};

#[tokio::main]
async fn main() {
    // One line on failure (what failed and its root cause), exit 1.
    if let Err(e) = run().await {
        match e.chain().nth(1) {
            Some(_) => eprintln!("sluice-vpa: error: {e}: {}", e.root_cause()),
            None => eprintln!("sluice-vpa: error: {e}"),
        }
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "sluice-system".into());
    let listen = std::env::var("SLUICE_VPA_LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let resync_s: u64 = match std::env::var("SLUICE_VPA_RESYNC_S") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SLUICE_VPA_RESYNC_S: {v:?} is not a number of seconds"))?,
        Err(_) => 60,
    };

    let watch: Vec<String> = std::env::var("SLUICE_VPA_WATCH_NAMESPACES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();

    let client = Client::try_default()
        .await
        .context("no Kubernetes API: run in a pod with a service account, or set KUBECONFIG")?;
    // One Api per watched namespace (one for all of them when none is named).
    let scopes: Vec<(Api<StreamPipeline>, Api<Deployment>, String)> = if watch.is_empty() {
        vec![(
            Api::all(client.clone()),
            Api::all(client.clone()),
            "every namespace".into(),
        )]
    } else {
        watch
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    format!("namespace {ns}"),
                )
            })
            .collect()
    };
    for (pipelines, _, scope) in &scopes {
        if let Err(e) = pipelines.list(&ListParams::default().limit(1)).await {
            let what = match &e {
                kube::Error::Api(status) if status.code == 404 => {
                    "the StreamPipeline CRD is not installed: apply deploy/crd/".to_owned()
                }
                kube::Error::Api(status) if status.code == 401 || status.code == 403 => format!(
                    "not allowed to list streampipelines.sluice.dev in {scope}: apply the operator's RBAC (deploy/operator/: a RoleBinding per namespace in SLUICE_VPA_WATCH_NAMESPACES, or the cluster-wide component)"
                ),
                _ => "cannot reach the Kubernetes API".to_owned(),
            };
            return Err(anyhow::Error::new(e).context(what));
        }
    }
    let placement = placement(&client, &namespace).await?;

    let ready = Arc::new(AtomicBool::new(false));
    let metrics = OperatorMetrics::new();
    let probes = {
        let ready = ready.clone();
        let scraped = metrics.clone();
        let router = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/metrics",
                axum::routing::get(move || async move { scraped.encode() }),
            )
            .route(
                "/readyz",
                axum::routing::get(move || async move {
                    if ready.load(Ordering::Relaxed) {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("SLUICE_VPA_LISTEN: cannot listen on {listen}"))?;
        tokio::spawn(async move { axum::serve(listener, router).await })
    };

    // One replica reconciles; the others wait on the Lease (healthy and ready meanwhile: a
    // standby serves nothing).
    ready.store(true, Ordering::Relaxed);
    let identity =
        std::env::var("POD_NAME").unwrap_or_else(|_| format!("sluice-vpa-{}", std::process::id()));
    let lock = LeaseLock::new(
        Api::namespaced(client.clone(), &namespace),
        "sluice-vpa",
        &identity,
        Duration::from_secs(15),
    );
    lead(&lock).await;
    let keeper = tokio::spawn(keep(lock));

    // In-place resizes need 1.35 (StreamPipelines asking for them are Degraded before).
    let server_minor = match client.apiserver_version().await {
        Ok(info) => {
            tracing::info!(version = %info.git_version, "API server");
            minor_version(&info)
        }
        Err(e) => {
            tracing::warn!("API server version unknown: {e}");
            None
        }
    };
    let ctx = Arc::new(Context {
        metrics,
        client: client.clone(),
        placement,
        policy: PolicyConfig::default(),
        clock: Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        }),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        resync: Duration::from_secs(resync_s),
        reapply_every: Duration::from_secs(600),
        server_minor,
        // `plugin.upgrade: in-place`: the pods' admin token (the `sluice-upgrade-token` Secret).
        upgrade_token: upgrade_token(),
    });
    let scope_names: Vec<&str> = scopes.iter().map(|(_, _, s)| s.as_str()).collect();
    tracing::info!(%namespace, resync_s, watching = ?scope_names, "sluice-vpa watching StreamPipelines");
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=sluice-vpa");
    let controllers = scopes.into_iter().map(|(pipelines, deployments, _)| {
        Controller::new(pipelines, watcher::Config::default().any_semantic())
            .owns(deployments, owned.clone())
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx.clone())
            .boxed()
    });
    futures::stream::select_all(controllers)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(pipeline = %object.name, "reconciled"),
                Err(e) => tracing::warn!("reconcile: {e}"),
            }
        })
        .await;
    probes.abort();
    keeper.abort();
    tracing::info!("sluice-vpa stopped");
    Ok(())
}

/// Waits until this replica holds the Lease.
async fn lead(lock: &LeaseLock) {
    let mut last_holder = String::new();
    loop {
        match lock.try_acquire_or_renew(Timestamp::now()).await {
            Ok(Held::Yes) => {
                tracing::info!("leading: this replica reconciles");
                return;
            }
            Ok(Held::By(holder)) => {
                if holder != last_holder {
                    tracing::info!(%holder, "standing by: another replica leads");
                    last_holder = holder;
                }
            }
            Err(e) => tracing::warn!("leader election: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Renews the Lease every 5 s. A leader that lost it, or could not renew it for its duration,
/// exits (the kubelet restarts it as a standby): two replicas never reconcile at once.
async fn keep(lock: LeaseLock) {
    let mut renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        match lock.try_acquire_or_renew(Timestamp::now()).await {
            Ok(Held::Yes) => renewed = std::time::Instant::now(),
            Ok(Held::By(holder)) => {
                eprintln!("sluice-vpa: error: lost the leader lease to {holder}: exiting");
                std::process::exit(1);
            }
            Err(e) if renewed.elapsed() + Duration::from_secs(5) >= lock.duration() => {
                eprintln!("sluice-vpa: error: cannot renew the leader lease: {e}: exiting");
                std::process::exit(1);
            }
            Err(e) => tracing::warn!("leader lease not renewed, retrying: {e}"),
        }
    }
}

/// The provider placement from the `sluice-placement` ConfigMap an overlay installs beside the
/// operator; without one, the neutral labels of `deploy/base`.
async fn placement(client: &Client, namespace: &str) -> anyhow::Result<Placement> {
    let maps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    match maps.get_opt("sluice-placement").await? {
        Some(map) => {
            let value = serde_json::to_value(&map)?;
            Placement::from_config_map(&value).map_err(|e| {
                anyhow::anyhow!(
                    "ConfigMap {namespace}/{}: {e}: fix the provider overlay",
                    map.name_any()
                )
            })
        }
        None => {
            tracing::info!(%namespace, "no sluice-placement ConfigMap: neutral labels (sluice.dev/capacity-type)");
            Ok(Placement::neutral())
        }
    }
}

/// The pods' admin token for `plugin.upgrade: in-place`: `SLUICE_VPA_UPGRADE_TOKEN`, or the file
/// `SLUICE_VPA_UPGRADE_TOKEN_FILE` names (the mounted `sluice-upgrade-token` Secret; read at
/// start, so a rotated token needs a restart). `None`: plugin changes roll the pods.
fn upgrade_token() -> Option<String> {
    if let Some(token) = std::env::var("SLUICE_VPA_UPGRADE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Some(token);
    }
    let file = std::env::var_os("SLUICE_VPA_UPGRADE_TOKEN_FILE")?;
    match std::fs::read_to_string(&file) {
        Ok(token) => Some(token.trim().to_owned()).filter(|t| !t.is_empty()),
        Err(e) => {
            tracing::info!(file = %std::path::Path::new(&file).display(), "no plugin upgrade token ({e}): plugin changes roll the pods");
            None
        }
    }
}
