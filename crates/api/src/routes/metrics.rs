//! `GET /metrics`: the Prometheus text exposition ([`crate::metrics`]).

use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "metrics", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition 0.0.4", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    let text = app.inner.metrics.render(app.backend().as_ref(), || app.workloads(), app.conn_stats()).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
