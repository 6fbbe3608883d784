//! `GET /metrics`: the Prometheus text exposition ([`crate::metrics`]).

use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "metrics", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition 0.0.4", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    let figures = || async {
        let multi = app.multi_cluster();
        app.list_all()
            .await
            .into_iter()
            .map(|(c, list)| (if multi { c.name().to_string() } else { String::new() }, c.backend().clone(), list))
            .collect()
    };
    let text = app.inner.metrics.render(figures, app.conn_stats()).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
