//! Restarts: `POST …/restart` starts one in the background, `GET /api/v1/operations/{id}`
//! follows it.

use crate::error::ApiError;
use crate::extract::{ApiPath, Caller, ClusterParam, Target, WorkloadParams};
use crate::model::{AuditEntry, Operation, OperationKind, OperationState, WorkloadRef};
use crate::state::{AppState, Cluster, KEEP_OPERATIONS};
use crate::util::{now, random_hex};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Starts a restart of `w` in the background and returns the operation as it starts. Its end
/// is audited (before the operation shows it finished, so whoever sees it finished also finds
/// its entry).
pub(crate) fn start_restart(
    app: &AppState,
    caller: &Caller,
    cluster: &Cluster,
    w: &WorkloadRef,
) -> Result<Operation, ApiError> {
    let id = format!("op-{}", random_hex(8).map_err(|e| ApiError::io("/dev/urandom", e))?);
    let op = Operation {
        id: id.clone(),
        kind: OperationKind::Restart,
        cluster: cluster.name().to_string(),
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        state: OperationState::Running,
        progress: Vec::new(),
        error: None,
        started_at: now(),
        finished_at: None,
    };
    app.add_op(op.clone());
    cluster.changed();
    let (app, caller, cluster, w) = (app.clone(), caller.clone(), cluster.clone(), w.clone());
    tokio::spawn(async move {
        let (app2, id2) = (app.clone(), id.clone());
        let progress: crate::backend::Progress =
            Box::new(move |line: String| app2.update_op(&id2, |o| o.progress.push(line)));
        let result = cluster.backend().restart(&w, progress).await;
        cluster.changed();
        app.audit(&AuditEntry {
            time: now(),
            actor: caller.actor,
            remote: caller.remote,
            action: "restart".into(),
            cluster: cluster.name().to_string(),
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            before: None,
            after: None,
            restart: true,
            result: result.as_ref().map_or_else(|e| e.report(), |()| "ok".into()),
            status: None,
            error: result.as_ref().err().map(|e| crate::error::ErrorCode::of_backend(e).as_str().to_string()),
        });
        app.update_op(&id, |o| {
            o.finished_at = Some(now());
            match result {
                Ok(()) => o.state = OperationState::Succeeded,
                Err(e) => {
                    o.state = OperationState::Failed;
                    o.error = Some(crate::backend::error_chain(&cluster.err(e)));
                }
            }
        });
    });
    Ok(op)
}

/// Rolling restart; follow the operation.
#[utoipa::path(post, path = "/api/v1/namespaces/{ns}/workloads/{name}/restart", tag = "operations",
    operation_id = "restartWorkload",
    params(
        WorkloadParams,
        ClusterParam,
        ("X-CSRF-Token" = Option<String>, Header, nullable = false, description = "required with the session cookie (from GET /api/v1/session); not with a bearer token"),
    ),
    responses((status = 202, description = "Started", body = Operation), crate::routes::errors::WorkloadRead))]
pub(crate) async fn restart(
    State(app): State<AppState>,
    caller: Caller,
    Target { cluster, workload }: Target,
) -> Result<Response, ApiError> {
    cluster.backend().get(&workload).await.map_err(|e| cluster.err(e))?;
    let op = start_restart(&app, &caller, &cluster, &workload)?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

/// A restart's progress (the last 100 are kept).
#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations", operation_id = "getOperation",
    params(("id" = String, Path, description = "the operation's id (`op-…`)")),
    responses((status = 200, description = "The operation", body = Operation), crate::routes::errors::Lookup))]
pub(crate) async fn operation(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Operation>, ApiError> {
    app.operation(&id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("operation {id:?} not found (the last {KEEP_OPERATIONS} are kept)")))
}
