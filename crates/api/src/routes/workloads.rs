//! `GET /api/v1/workloads` (every cluster's, filtered, sorted, with each cluster's status) and
//! `GET …/{ns}/workloads/{name}`.

use crate::error::ApiError;
use crate::extract::{ApiQuery, ClusterParam, Target, WorkloadParams};
use crate::model::{SidecarStatus, Workload, WorkloadInfo, WorkloadList};
use crate::passthrough;
use crate::routes::passthrough::mesh_defaults;
use crate::state::{cluster_status, AppState};
use axum::extract::State;
use axum::Json;
use meshpass_settings::MeshDefaults;
use serde::Deserialize;

/// A workload as the API shows it: the backend's view, the status column, its settings and
/// the warnings about workload values that replace its cluster's mesh-wide `defaults`.
pub(crate) fn workload_view(cluster: &str, info: WorkloadInfo, defaults: &MeshDefaults) -> Workload {
    let (_, replaced) = passthrough::effective_of(&info.annotations, defaults);
    Workload {
        cluster: cluster.to_string(),
        status: info.status(),
        passthrough: passthrough::from_annotations(&info.annotations),
        replaced,
        info,
    }
}

/// How the list is sorted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    /// By name, then namespace (then cluster).
    Name,
    /// By namespace, then name (then cluster; the default).
    #[default]
    Namespace,
    /// By cluster (in the order served), then namespace and name.
    Cluster,
    /// Those needing attention first: pending restart, injected, uninjected.
    Status,
}

/// `GET /api/v1/workloads?cluster=&namespace=&search=&sort=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WorkloadsQuery {
    /// Only this cluster (404 when no cluster has that name).
    #[param(max_length = 63, pattern = r"^[A-Za-z0-9._-]+$")]
    cluster: Option<String>,
    /// Only this namespace.
    namespace: Option<String>,
    /// Case-insensitive substring of `NAMESPACE/NAME`.
    search: Option<String>,
    /// Sort order (default `namespace`).
    sort: Option<SortKey>,
}

/// Workloads, with status and passthrough settings, from every cluster (or the one asked
/// for). A cluster that cannot be listed is reported in `clusters` while the others' workloads
/// are listed; the request fails only when the server serves one cluster and it failed.
#[utoipa::path(get, path = "/api/v1/workloads", tag = "workloads", operation_id = "listWorkloads",
    params(WorkloadsQuery),
    responses((status = 200, description = "Workloads", body = WorkloadList), crate::routes::errors::WorkloadList))]
pub(crate) async fn list_workloads(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<WorkloadsQuery>,
) -> Result<Json<WorkloadList>, ApiError> {
    let needle = q.search.unwrap_or_default().to_lowercase();
    let only = q.cluster.filter(|c| !c.is_empty());
    if let Some(c) = &only {
        app.cluster(c)?;
    }
    let mut items: Vec<(usize, Workload)> = Vec::new();
    let mut clusters = Vec::new();
    for (index, (c, listed)) in app.list_all().await.into_iter().enumerate() {
        if only.as_deref().is_some_and(|o| o != c.name()) {
            continue;
        }
        let list = match listed {
            Ok(list) => list,
            // One cluster alone: its failure is the answer, as before there were several.
            Err(e) if !app.multi_cluster() => return Err(c.err(e)),
            Err(e) => {
                clusters.push(cluster_status(c.name(), Err(&e)));
                continue;
            }
        };
        let defaults = mesh_defaults(&c).await;
        let before = items.len();
        items.extend(
            list.iter()
                .filter(|w| q.namespace.as_deref().is_none_or(|ns| ns.is_empty() || ns == w.workload.namespace))
                .filter(|w| needle.is_empty() || w.workload.to_string().to_lowercase().contains(&needle))
                .cloned()
                .map(|w| (index, workload_view(c.name(), w, &defaults))),
        );
        clusters.push(cluster_status(c.name(), Ok(u32::try_from(items.len() - before).unwrap_or(u32::MAX))));
    }
    match q.sort.unwrap_or_default() {
        SortKey::Name => items.sort_by(|(ca, a), (cb, b)| {
            let (a, b) = (&a.info.workload, &b.info.workload);
            (&a.name, &a.namespace, ca).cmp(&(&b.name, &b.namespace, cb))
        }),
        SortKey::Status => items.sort_by(|(ca, a), (cb, b)| {
            (status_rank(a), &a.info.workload, ca).cmp(&(status_rank(b), &b.info.workload, cb))
        }),
        SortKey::Namespace => items.sort_by(|(ca, a), (cb, b)| (&a.info.workload, ca).cmp(&(&b.info.workload, cb))),
        SortKey::Cluster => items.sort_by(|(ca, a), (cb, b)| (ca, &a.info.workload).cmp(&(cb, &b.info.workload))),
    }
    Ok(Json(WorkloadList { items: items.into_iter().map(|(_, w)| w).collect(), clusters }))
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
    params(WorkloadParams, ClusterParam),
    responses((status = 200, description = "The workload", body = Workload), crate::routes::errors::WorkloadRead))]
pub(crate) async fn get_workload(Target { cluster, workload }: Target) -> Result<Json<Workload>, ApiError> {
    let info = cluster.backend().get(&workload).await.map_err(|e| cluster.err(e))?;
    Ok(Json(workload_view(cluster.name(), info, &mesh_defaults(&cluster).await)))
}
