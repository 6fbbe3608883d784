//! `GET /api/v1/audit`: the audit log, newest first.

use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::model::AuditList;
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;

/// The most audit entries one `GET /api/v1/audit` returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;

/// `GET /api/v1/audit?limit=N`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// How many entries at most (default 100).
    #[param(minimum = 0, maximum = 10000, default = 100)]
    limit: Option<usize>,
}

/// The audit log, newest first: every write attempt, accepted or refused.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", operation_id = "listAudit", params(AuditQuery),
    responses((status = 200, description = "Entries", body = AuditList), crate::routes::errors::BadRequest))]
pub(crate) async fn list_audit(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit > MAX_AUDIT_LIMIT {
        return Err(ApiError::BadRequest(format!("limit {limit}: at most {MAX_AUDIT_LIMIT}")));
    }
    Ok(Json(AuditList { items: app.inner.audit.read(limit)? }))
}
