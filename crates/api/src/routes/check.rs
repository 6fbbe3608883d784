//! "Check effect" (`POST …/check`) and the live passthrough rules' counters (`GET …/bypass`).

use crate::error::ApiError;
use crate::extract::{ApiJsonOrEmpty, ClusterParam, Target, WorkloadParams};
use crate::metrics::passthrough_direction;
use crate::model::{BypassReport, BypassTotals, CheckReport, CheckRequest};
use axum::Json;

/// Make a request and report whether it went through the sidecar. An empty body is the
/// default check (inbound, the first Service port, `/`).
#[utoipa::path(post, path = "/api/v1/namespaces/{ns}/workloads/{name}/check", tag = "check",
    operation_id = "checkWorkload",
    params(
        WorkloadParams,
        ClusterParam,
        ("X-CSRF-Token" = Option<String>, Header, nullable = false, description = "required with the session cookie (from GET /api/v1/session); not with a bearer token"),
    ),
    request_body(content = CheckRequest, description = "What to check; empty for the default check"),
    responses((status = 200, description = "Report", body = CheckReport), crate::routes::errors::Evaluate))]
pub(crate) async fn check(
    Target { cluster, workload }: Target,
    ApiJsonOrEmpty(request): ApiJsonOrEmpty<CheckRequest>,
) -> Result<Json<CheckReport>, ApiError> {
    Ok(Json(cluster.backend().check(&workload, &request).await.map_err(|e| cluster.err(e))?))
}

/// Counters of the live passthrough rules.
#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/workloads/{name}/bypass", tag = "check",
    operation_id = "getBypass", params(WorkloadParams, ClusterParam),
    responses((status = 200, description = "Counters", body = BypassReport), crate::routes::errors::Counters))]
pub(crate) async fn bypass(Target { cluster, workload }: Target) -> Result<Json<BypassReport>, ApiError> {
    let mut totals = BypassTotals::default();
    let items: Vec<_> = cluster
        .backend()
        .rule_counters(&workload)
        .await
        .map_err(|e| cluster.err(e))?
        .into_iter()
        .filter(|c| {
            let Some(dir) = passthrough_direction(&c.label) else { return false };
            let t = if dir == "inbound" { &mut totals.inbound } else { &mut totals.outbound };
            t.packets += c.packets;
            t.bytes += c.bytes;
            true
        })
        .collect();
    Ok(Json(BypassReport { items, totals }))
}
