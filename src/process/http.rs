//! The operator's HTTP endpoint: `/metrics`, `/livez`, `/readyz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

/// What the endpoint reads at request time.
pub trait Probe: Send + Sync + 'static {
    /// True once every cache has listed its objects.
    fn ready(&self) -> bool;
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
}

pub fn router(probe: Arc<dyn Probe>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(probe)
}

/// Serves on `listener`, bound by the caller first so that a port in use fails the process at
/// once instead of surfacing only when it stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    probe: Arc<dyn Probe>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(probe))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(probe): State<Arc<dyn Probe>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        probe.metrics(),
    )
}

async fn readyz(State(probe): State<Arc<dyn Probe>>) -> impl IntoResponse {
    if probe.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}
