//! The operations listener every service has: `/livez` (the process answers),
//! `/readyz` (its dependencies are reachable and it is not draining) and
//! `/metrics` (Prometheus text format). Kept off the public ports.

use crate::health::Health;
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Latency buckets (seconds) for every `*_seconds` histogram, so they render
/// as real histograms that can be aggregated across pods.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// The process-wide Prometheus recorder, installed on first use (tests start
/// several apps in one process and share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    DURATION_BUCKETS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Someone else installed a recorder first: render an empty one
                // rather than fail the service.
                Err(err) => {
                    tracing::warn!(%err, "metrics recorder already installed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// `/livez`, `/readyz` and `/metrics`.
pub fn router(health: Health) -> Router {
    let handle = metrics_handle();
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(move || async move { handle.render() }))
        .with_state(health)
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let body = serde_json::json!({
        "ready": health.is_ready(),
        "draining": health.is_draining(),
        "components": health.components(),
    });
    let status = if health.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Serves `router` until `token` is cancelled, with the admin port's small
/// limits (probes and scrapes need few connections and short timeouts).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    let limits = crate::serve::admin_limits();
    let router = router.layer(crate::limits::InFlightLimitLayer::new(
        limits.max_requests_in_flight,
        crate::limits::Protocol::Http,
    ));
    crate::serve::http(listener, router, &limits, None, "admin", token).await
}
