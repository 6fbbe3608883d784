//! `GET /api/v1/workloads` (filtered, sorted) and `GET …/{ns}/workloads/{name}`.

use crate::error::ApiError;
use crate::extract::{ApiQuery, WorkloadParams, WorkloadPath};
use crate::model::{SidecarStatus, Workload, WorkloadInfo, WorkloadList};
use crate::passthrough;
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;

/// A workload as the API shows it: the backend's view, the status column and its settings.
pub(crate) fn workload_view(info: WorkloadInfo) -> Workload {
    Workload { status: info.status(), passthrough: passthrough::from_annotations(&info.annotations), info }
}

/// How the list is sorted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    /// By name, then namespace.
    Name,
    /// By namespace, then name (the default).
    #[default]
    Namespace,
    /// Those needing attention first: pending restart, injected, uninjected.
    Status,
}

/// `GET /api/v1/workloads?namespace=&search=&sort=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WorkloadsQuery {
    /// Only this namespace.
    namespace: Option<String>,
    /// Case-insensitive substring of `NAMESPACE/NAME`.
    search: Option<String>,
    /// Sort order (default `namespace`).
    sort: Option<SortKey>,
}

/// Workloads, with status and passthrough settings.
#[utoipa::path(get, path = "/api/v1/workloads", tag = "workloads", operation_id = "listWorkloads",
    params(WorkloadsQuery),
    responses((status = 200, description = "Workloads", body = WorkloadList), crate::routes::errors::BadRequest))]
pub(crate) async fn list_workloads(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<WorkloadsQuery>,
) -> Result<Json<WorkloadList>, ApiError> {
    let needle = q.search.unwrap_or_default().to_lowercase();
    let mut items: Vec<Workload> = app
        .workloads()
        .await?
        .iter()
        .filter(|w| q.namespace.as_deref().is_none_or(|ns| ns.is_empty() || ns == w.workload.namespace))
        .filter(|w| needle.is_empty() || w.workload.to_string().to_lowercase().contains(&needle))
        .cloned()
        .map(workload_view)
        .collect();
    match q.sort.unwrap_or_default() {
        SortKey::Name => items.sort_by(|a, b| {
            let (a, b) = (&a.info.workload, &b.info.workload);
            (&a.name, &a.namespace).cmp(&(&b.name, &b.namespace))
        }),
        SortKey::Status => {
            items.sort_by(|a, b| (status_rank(a), &a.info.workload).cmp(&(status_rank(b), &b.info.workload)))
        }
        SortKey::Namespace => items.sort_by(|a, b| a.info.workload.cmp(&b.info.workload)),
    }
    Ok(Json(WorkloadList { items }))
}

fn status_rank(w: &Workload) -> u8 {
    match w.status {
        SidecarStatus::PendingRestart => 0,
        SidecarStatus::Injected => 1,
        SidecarStatus::Uninjected => 2,
    }
}

/// One workload.
#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/workloads/{name}", tag = "workloads", operation_id = "getWorkload",
    params(WorkloadParams),
    responses((status = 200, description = "The workload", body = Workload), crate::routes::errors::WorkloadRead))]
pub(crate) async fn get_workload(
    State(app): State<AppState>,
    WorkloadPath(w): WorkloadPath,
) -> Result<Json<Workload>, ApiError> {
    Ok(Json(workload_view(app.backend().get(&w).await?)))
}
