//! The mesh-wide capture defaults (Istio's injector values `global.proxy.*`): `GET` and
//! `PUT /api/v1/defaults` (precondition → validation → backend → audit). Each cluster has its
//! own (its injector's ConfigMap); with several clusters served, `?cluster=` names one.

use crate::audit::AuditSlot;
use crate::backend::MeshDefaultsInfo;
use crate::error::{ApiError, ErrorCode};
use crate::extract::{ApiJson, Caller, ClusterParam, ClusterScope};
use crate::model::{AuditEntry, FieldError, MeshDefaultsDoc, MeshDefaultsUpdate};
use crate::routes::passthrough::{precondition, with_etag};
use crate::state::{AppState, Cluster};
use crate::util::now;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshpass_settings::MeshDefaults;
use std::collections::BTreeMap;

fn doc(c: &Cluster, info: MeshDefaultsInfo, changes: Vec<String>) -> MeshDefaultsDoc {
    MeshDefaultsDoc {
        cluster: c.name().to_string(),
        values: info.defaults.to_value_strings().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        resource_version: info.version,
        source: info.source,
        problems: info.problems,
        writable: info.writable,
        changes,
    }
}

fn answer(d: MeshDefaultsDoc) -> Response {
    let rv = d.resource_version.clone();
    if rv.is_empty() {
        Json(d).into_response()
    } else {
        with_etag(Json(d).into_response(), &rv)
    }
}

/// Every value checked as the annotation it stands in for, all problems at once, under the
/// Helm path the caller wrote. `Ok`: the defaults as they would be.
pub(crate) fn validate(current: &MeshDefaults, values: &BTreeMap<String, String>) -> Result<MeshDefaults, ApiError> {
    let mut next = current.clone();
    let mut errors = Vec::new();
    for (k, v) in values {
        if let Err(e) = next.set_value(k, v) {
            errors.extend(e.0);
        }
    }
    if values.is_empty() {
        return Err(ApiError::Invalid {
            message: "no values to change: name at least one (global.proxy.excludeIPRanges, …)".into(),
            errors: Vec::new(),
        });
    }
    if errors.is_empty() {
        return Ok(next);
    }
    let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    let errors = errors
        .into_iter()
        .map(|e| FieldError { field: e.key.clone(), key: e.key, item: e.item, reason: e.reason.to_string() })
        .collect();
    Err(ApiError::Invalid { message, errors })
}

/// The mesh-wide capture defaults: what every pod gets for each capture annotation its
/// template does not have.
#[utoipa::path(get, path = "/api/v1/defaults", tag = "defaults", operation_id = "getDefaults",
    params(ClusterParam),
    responses(
        (status = 200, description = "The defaults", body = MeshDefaultsDoc,
            headers(("ETag" = String, description = "`\"RESOURCE_VERSION\"` (when they can be written): send it back as If-Match"))),
        crate::routes::errors::DefaultsRead,
    ))]
pub(crate) async fn get_defaults(ClusterScope(c): ClusterScope) -> Result<Response, ApiError> {
    let info = c.backend().mesh_defaults().await.map_err(|e| c.err(e))?;
    Ok(answer(doc(&c, info, Vec::new())))
}

/// Change mesh-wide capture defaults: the values named replace those, the others stay.
/// Workloads whose own annotations set a value keep theirs; the others get the new value on
/// their next restart, or at once with `live` (local mesh).
#[utoipa::path(put, path = "/api/v1/defaults", tag = "defaults", operation_id = "putDefaults",
    params(
        ClusterParam,
        ("If-Match" = String, Header, description = "`\"RESOURCE_VERSION\"` from the ETag (or the body's resourceVersion); with neither the write is refused with 428", min_length = 1, pattern = r"\S"),
        ("X-CSRF-Token" = Option<String>, Header, nullable = false, description = "required with the session cookie (from GET /api/v1/session); not with a bearer token"),
    ),
    request_body = MeshDefaultsUpdate,
    responses(
        (status = 200, description = "Written; `changes` says what happens to the workloads", body = MeshDefaultsDoc,
            headers(("ETag" = String, description = "`\"RESOURCE_VERSION\"`: send it back as If-Match"))),
        crate::routes::errors::DefaultsWrite,
    ))]
pub(crate) async fn put_defaults(
    State(app): State<AppState>,
    caller: Caller,
    slot: AuditSlot,
    ClusterScope(c): ClusterScope,
    headers: HeaderMap,
    ApiJson(update): ApiJson<MeshDefaultsUpdate>,
) -> Result<Response, ApiError> {
    let expected = precondition(&headers, update.resource_version.clone())?;
    let backend = c.backend();
    let current = backend.mesh_defaults().await.map_err(|e| c.err(e))?;
    validate(&current.defaults, &update.values)?;
    if current.version != expected {
        return Err(ApiError::Conflict(format!(
            "the mesh-wide defaults changed since version {expected} (now {}); reload and retry",
            current.version
        )));
    }
    let result = backend.set_mesh_defaults(update.values.clone(), &expected, update.live).await;
    // Workloads' statuses may change with the defaults (pending restart): drop the shared list.
    c.changed();
    let asked = update.values.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(", ");
    app.audit(&AuditEntry {
        time: now(),
        actor: caller.actor.clone(),
        remote: caller.remote.clone(),
        action: "defaults.set".into(),
        cluster: c.name().to_string(),
        namespace: String::new(),
        name: String::new(),
        before: None,
        after: None,
        restart: false,
        result: match &result {
            Ok(_) => format!("ok: {asked}{}", if update.live { " (live)" } else { "" }),
            Err(e) => format!("{asked}: {}", e.report()),
        },
        status: Some(result.as_ref().map_or_else(|e| ErrorCode::of_backend(e).status().as_u16(), |_| 200)),
        error: result.as_ref().err().map(|e| ErrorCode::of_backend(e).as_str().to_string()),
    });
    slot.note(|n| n.recorded = true);
    let (info, changes) = result.map_err(|e| c.err(e))?;
    Ok(answer(doc(&c, info, changes)))
}
