//! The admin HTTP endpoint, on one port: `/metrics` (Prometheus text format), `/healthz`
//! (liveness: the poll loop turns and every worker thread is alive), `/readyz` (the plugin is
//! open, the group joined, every sink reachable, and the run is not draining) and `/status`
//! (JSON: assignment, per-partition offsets and lag, workers, plugin, uptime).
//!
//! It runs on its own thread with its own current-thread runtime (axum), so a slow scrape never
//! touches the poll loop or a worker; it keeps answering while the pipeline drains and stops
//! when the run ends.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::telemetry::Telemetry;

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

/// Binds `listen` (`host:port`) and serves `telemetry` until the returned server is dropped.
/// The error names the field to fix.
pub fn start(listen: &str, telemetry: Arc<Telemetry>) -> Result<AdminServer, String> {
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
        .with_state(telemetry);
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

async fn metrics(State(t): State<Arc<Telemetry>>) -> Response {
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

async fn healthz(State(t): State<Arc<Telemetry>>) -> Response {
    match t.health.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(t): State<Arc<Telemetry>>) -> Response {
    let readiness = t.health.readiness();
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

async fn status(State(t): State<Arc<Telemetry>>) -> Response {
    axum::Json(t.health.status(&t.metrics)).into_response()
}
