//! The admin HTTP endpoint, on one port: `/metrics` (Prometheus text format), `/healthz`
//! (liveness: the poll loop turns and every worker thread is alive), `/readyz` (the plugin is
//! open, the group joined, every sink reachable, and the run is not draining) and `/status`
//! (JSON: assignment, per-partition offsets and lag, workers, plugin, uptime); and `POST
//! /plugin`, a plugin upgrade without a restart (`crate::upgrade`), with a bearer token.
//!
//! It runs on its own thread with its own current-thread runtime (axum), so a slow scrape never
//! touches the poll loop or a worker; it keeps answering while the pipeline drains and stops
//! when the run ends.

use std::net::SocketAddr;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::telemetry::Telemetry;
use crate::upgrade::{Answer, TOKEN_ENV, UpgradeRequest};

/// Where `POST /plugin` sends upgrades: the token it wants and the source loop's inbox.
#[derive(Debug)]
pub struct Upgrades {
    /// The bearer token (`SLUICE_ADMIN_TOKEN`).
    pub token: String,
    /// The source's loop (dropped by a source that cannot upgrade: a file).
    pub requests: mpsc::Sender<UpgradeRequest>,
}

#[derive(Debug)]
struct AdminState {
    telemetry: Arc<Telemetry>,
    upgrades: Option<Upgrades>,
}

/// A running admin endpoint; stopped on drop.
#[derive(Debug)]
pub struct AdminServer {
    /// The address it listens on (the real port when asked for port 0).
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `listen` (`host:port`) and serves `telemetry` (and `POST /plugin` with `upgrades`)
/// until the returned server is dropped. The error names the field to fix.
pub fn start(
    listen: &str,
    telemetry: Arc<Telemetry>,
    upgrades: Option<Upgrades>,
) -> Result<AdminServer, String> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("admin.listen: cannot listen on {listen}: {e}: pick a free port"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("admin.listen: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("admin.listen: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("admin: cannot start its runtime: {e}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/plugin", post(upgrade))
        .with_state(Arc::new(AdminState {
            telemetry,
            upgrades,
        }));
    let thread = std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(err) => return tracing::error!("admin endpoint: {err}"),
                };
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                if let Err(err) = serve.await {
                    tracing::error!("admin endpoint stopped: {err}");
                }
            });
        })
        .map_err(|e| format!("admin: cannot start its thread: {e}"))?;
    tracing::info!(addr = %addr, "admin endpoint listening: /metrics /healthz /readyz /status");
    Ok(AdminServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let t = &s.telemetry;
    t.health.refresh(&t.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        t.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(s): State<Arc<AdminState>>) -> Response {
    match s.telemetry.health.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    let readiness = s.telemetry.health.readiness();
    if readiness.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", readiness.reasons().join(", ")),
        )
            .into_response()
    }
}

async fn status(State(s): State<Arc<AdminState>>) -> Response {
    axum::Json(s.telemetry.health.status(&s.telemetry.metrics)).into_response()
}

/// `POST /plugin` with `{"path": "...", "sha256": "..."}`: answers once the swap is done
/// (200), refused with nothing changed (422), or rolled back because the new version did not
/// open (409); one line each.
async fn upgrade(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let line = |code: StatusCode, text: String| (code, format!("{text}\n")).into_response();
    let Some(upgrades) = &s.upgrades else {
        return line(
            StatusCode::FORBIDDEN,
            format!(
                "POST /plugin: plugin upgrades are off: start the pod with {TOKEN_ENV} set (from a Secret) and send it as `Authorization: Bearer <token>`"
            ),
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|t| constant_time_eq(t.as_bytes(), upgrades.token.as_bytes())) {
        return line(
            StatusCode::UNAUTHORIZED,
            format!(
                "POST /plugin: a missing or wrong bearer token: send `Authorization: Bearer <{TOKEN_ENV}>`"
            ),
        );
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        path: std::path::PathBuf,
        sha256: String,
    }
    let body: Body = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => {
            return line(
                StatusCode::BAD_REQUEST,
                format!(
                    "POST /plugin: the body must be {{\"path\": \"/plugins/libmine-2.so\", \"sha256\": \"<64 hex>\"}}: {err}"
                ),
            );
        }
    };
    let (reply, answer) = mpsc::sync_channel(1);
    let request = UpgradeRequest {
        path: body.path,
        sha256: body.sha256,
        reply,
    };
    if upgrades.requests.send(request).is_err() {
        return line(
            StatusCode::CONFLICT,
            "POST /plugin: this run cannot upgrade its plugin (only a Kafka source's run can)"
                .into(),
        );
    }
    let answer =
        tokio::task::spawn_blocking(move || answer.recv_timeout(Duration::from_secs(900))).await;
    match answer {
        Ok(Ok(Answer::Upgraded(text))) => line(StatusCode::OK, text),
        Ok(Ok(Answer::Refused(text))) => line(StatusCode::UNPROCESSABLE_ENTITY, text),
        Ok(Ok(Answer::RolledBack(text))) => line(StatusCode::CONFLICT, text),
        _ => line(
            StatusCode::GATEWAY_TIMEOUT,
            "POST /plugin: no answer from the pipeline (it is stopping, or the swap is still draining): see /status".into(),
        ),
    }
}

/// Compares without stopping at the first difference (a token's prefix is not timed out of it).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}
