//! A workload's passthrough settings: `GET`, `PUT` (precondition → validation → backend →
//! audit), `DELETE` and `POST …/preview`.

use crate::audit::AuditSlot;
use crate::error::{ApiError, ErrorCode};
use crate::extract::{ApiJson, ApiQuery, Caller, WorkloadParams, WorkloadPath};
use crate::model::{
    AuditEntry, Operation, Passthrough, PassthroughDoc, PassthroughUpdate, Preview, WorkloadInfo, WorkloadRef,
};
use crate::passthrough;
use crate::routes::operations::start_restart;
use crate::state::AppState;
use crate::util::now;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshpass_settings::Settings;
use serde::Deserialize;

/// The version a write is based on: `If-Match` (`"RV"`, `W/"RV"` or bare) or the body's /
/// query's `resourceVersion`; both must agree when both are given.
fn precondition(headers: &HeaderMap, alt: Option<String>) -> Result<String, ApiError> {
    let header = match headers.get(header::IF_MATCH) {
        Some(v) => {
            let v = v.to_str().map_err(|_| ApiError::BadRequest("If-Match is not ASCII".into()))?.trim();
            let v = v.strip_prefix("W/").unwrap_or(v);
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            if v.is_empty() {
                return Err(ApiError::BadRequest("If-Match is empty".into()));
            }
            Some(v.to_string())
        }
        None => None,
    };
    match (header, alt.filter(|a| !a.is_empty())) {
        // At most one of two different versions can be current: a conflict either way.
        (Some(h), Some(a)) if h != a => {
            Err(ApiError::Conflict(format!("If-Match ({h}) and resourceVersion ({a}) name different versions")))
        }
        (Some(v), _) | (None, Some(v)) => Ok(v),
        (None, None) => Err(ApiError::PreconditionRequired),
    }
}

fn with_etag(mut resp: Response, rv: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{rv}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// The document for `info`, with warnings computed against the other workloads.
async fn passthrough_doc(app: &AppState, info: WorkloadInfo, operation: Option<Operation>) -> PassthroughDoc {
    // Warnings are advice: a failing list only loses the cross-workload one.
    let others = app.backend().list().await.unwrap_or_default();
    let mut warnings = match Settings::from_annotations(&info.annotations) {
        Ok(s) => passthrough::warnings(&info, &s, &others),
        Err(e) => vec![format!("The template's capture annotations are invalid (Istio would reject the pods):\n{e}")],
    };
    warnings.extend(passthrough::stored_warnings(&info.annotations, app.backend().dialect()));
    warnings.extend(passthrough::unknown_key_warnings(&info.annotations));
    PassthroughDoc {
        namespace: info.workload.namespace.clone(),
        name: info.workload.name.clone(),
        resource_version: info.resource_version.clone(),
        status: info.status(),
        settings: passthrough::from_annotations(&info.annotations),
        annotations: passthrough::passthrough_annotations(&info.annotations),
        warnings,
        operation,
    }
}

/// Passthrough settings, with the version (ETag) to write against.
#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/workloads/{name}/passthrough", tag = "passthrough",
    operation_id = "getPassthrough", params(WorkloadParams),
    responses(
        (status = 200, description = "The settings", body = PassthroughDoc,
            headers(("ETag" = String, description = "`\"RESOURCE_VERSION\"`: send it back as If-Match"))),
        crate::routes::errors::WorkloadRead,
    ))]
pub(crate) async fn get_passthrough(
    State(app): State<AppState>,
    WorkloadPath(w): WorkloadPath,
) -> Result<Response, ApiError> {
    let info = app.backend().get(&w).await?;
    let doc = passthrough_doc(&app, info, None).await;
    let rv = doc.resource_version.clone();
    Ok(with_etag(Json(doc).into_response(), &rv))
}

/// One passthrough write, as PUT and DELETE share it.
struct Change {
    action: &'static str,
    expected: String,
    settings: Passthrough,
    restart: bool,
    validate: bool,
}

async fn apply_change(
    app: &AppState,
    caller: &Caller,
    slot: &AuditSlot,
    w: &WorkloadRef,
    c: Change,
) -> Result<Response, ApiError> {
    let backend = app.backend();
    let info = backend.get(w).await?;
    let before = passthrough::from_annotations(&info.annotations);
    slot.note(|n| n.before = Some(before.clone()));
    if info.resource_version != c.expected {
        app.inner.metrics.change("conflict");
        return Err(ApiError::Conflict(format!(
            "workload {w} changed since version {} (now {}); reload and retry",
            c.expected, info.resource_version
        )));
    }
    // What is stored is the canonical form of what was asked for.
    let settings = if c.validate {
        match passthrough::prepare(&info.annotations, &c.settings, backend.dialect()) {
            Ok(p) => p.canonical,
            Err(e) => {
                app.inner.metrics.change("invalid");
                return Err(ApiError::Invalid { message: e.to_string(), errors: passthrough::field_errors(&e) });
            }
        }
    } else {
        c.settings.clone()
    };
    let (set, remove) = passthrough::patch(&info.annotations, &settings);
    let written = if set.is_empty() && remove.is_empty() {
        // Same values again: nothing to write (the version stays), but still a success.
        info
    } else {
        let result = backend.patch_annotations(w, &c.expected, set, remove).await;
        app.audit(&AuditEntry {
            time: now(),
            actor: caller.actor.clone(),
            remote: caller.remote.clone(),
            action: c.action.to_string(),
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            before: Some(before),
            after: Some(settings.clone()),
            restart: c.restart,
            result: result.as_ref().map_or_else(|e| e.report(), |_| "ok".to_string()),
            status: Some(result.as_ref().map_or_else(|e| ErrorCode::of_backend(e).status().as_u16(), |_| 200)),
            error: result.as_ref().err().map(|e| ErrorCode::of_backend(e).as_str().to_string()),
        });
        slot.note(|n| n.recorded = true);
        match result {
            Ok(info) => info,
            Err(e) => {
                app.inner.metrics.change(match e {
                    crate::backend::BackendError::Conflict { .. } => "conflict",
                    crate::backend::BackendError::Invalid(_) => "invalid",
                    _ => "error",
                });
                return Err(e.into());
            }
        }
    };
    app.inner.metrics.change("ok");
    let op = if c.restart { Some(start_restart(app, caller, w)?) } else { None };
    let doc = passthrough_doc(app, written, op).await;
    let rv = doc.resource_version.clone();
    Ok(with_etag(Json(doc).into_response(), &rv))
}

const IF_MATCH: &str = "`\"RESOURCE_VERSION\"` from the ETag. A PUT may name the version in its body's \
resourceVersion instead, a DELETE in ?resourceVersion=; with neither the write is refused with 428; when both are \
given and differ, 409";

/// Set the passthrough settings (the seven annotations become exactly the body); optionally
/// restart.
#[utoipa::path(put, path = "/api/v1/namespaces/{ns}/workloads/{name}/passthrough", tag = "passthrough",
    operation_id = "putPassthrough",
    params(
        WorkloadParams,
        ("If-Match" = String, Header, description = IF_MATCH, min_length = 1, pattern = r"\S"),
        ("X-CSRF-Token" = Option<String>, Header, nullable = false, description = "required with the session cookie (from GET /api/v1/session); not with a bearer token"),
    ),
    request_body = PassthroughUpdate,
    responses(
        (status = 200, description = "Written (or unchanged); `operation` when a restart was asked for", body = PassthroughDoc,
            headers(("ETag" = String, description = "`\"RESOURCE_VERSION\"`: send it back as If-Match"))),
        crate::routes::errors::Write,
    ))]
pub(crate) async fn put_passthrough(
    State(app): State<AppState>,
    caller: Caller,
    slot: AuditSlot,
    WorkloadPath(w): WorkloadPath,
    headers: HeaderMap,
    ApiJson(update): ApiJson<PassthroughUpdate>,
) -> Result<Response, ApiError> {
    slot.note(|n| {
        n.after = Some(update.settings());
        n.restart = update.restart;
    });
    let expected = precondition(&headers, update.resource_version.clone())?;
    let change = Change {
        action: "passthrough.set",
        expected,
        settings: update.settings(),
        restart: update.restart,
        validate: true,
    };
    apply_change(&app, &caller, &slot, &w, change).await
}

/// `DELETE …/passthrough?restart=&resourceVersion=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteQuery {
    /// Restart after clearing (default false).
    restart: Option<bool>,
    /// The version the change is based on (instead of If-Match).
    resource_version: Option<String>,
}

/// Remove all seven passthrough annotations; optionally restart.
#[utoipa::path(delete, path = "/api/v1/namespaces/{ns}/workloads/{name}/passthrough", tag = "passthrough",
    operation_id = "deletePassthrough",
    params(
        WorkloadParams,
        ("If-Match" = String, Header, description = IF_MATCH, min_length = 1, pattern = r"\S"),
        ("X-CSRF-Token" = Option<String>, Header, nullable = false, description = "required with the session cookie (from GET /api/v1/session); not with a bearer token"),
        DeleteQuery,
    ),
    responses(
        (status = 200, description = "Cleared", body = PassthroughDoc,
            headers(("ETag" = String, description = "`\"RESOURCE_VERSION\"`: send it back as If-Match"))),
        crate::routes::errors::Write,
    ))]
pub(crate) async fn delete_passthrough(
    State(app): State<AppState>,
    caller: Caller,
    slot: AuditSlot,
    WorkloadPath(w): WorkloadPath,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<Response, ApiError> {
    let restart = q.restart.unwrap_or(false);
    slot.note(|n| {
        n.after = Some(Passthrough::default());
        n.restart = restart;
    });
    let expected = precondition(&headers, q.resource_version)?;
    // Clearing only removes annotations, so it cannot make a template invalid: no validation
    // (which also lets an operator clear settings that were broken around the API).
    let change =
        Change { action: "passthrough.clear", expected, settings: Passthrough::default(), restart, validate: false };
    apply_change(&app, &caller, &slot, &w, change).await
}

/// The capture rules before and after a change, and their diff.
#[utoipa::path(post, path = "/api/v1/namespaces/{ns}/workloads/{name}/passthrough/preview", tag = "passthrough",
    operation_id = "previewPassthrough",
    params(
        WorkloadParams,
        ("X-CSRF-Token" = Option<String>, Header, nullable = false, description = "required with the session cookie (from GET /api/v1/session); not with a bearer token"),
    ),
    request_body = Passthrough,
    responses((status = 200, description = "Preview", body = Preview), crate::routes::errors::Evaluate))]
pub(crate) async fn preview(
    State(app): State<AppState>,
    WorkloadPath(w): WorkloadPath,
    ApiJson(proposed): ApiJson<Passthrough>,
) -> Result<Json<Preview>, ApiError> {
    let backend = app.backend();
    let info = backend.get(&w).await?;
    let others = backend.list().await.unwrap_or_default();
    passthrough::preview(&info, &proposed, &others, &app.inner.values, backend.rule_format(), backend.dialect())
        .map(Json)
        .map_err(|e| ApiError::Invalid { message: e.to_string(), errors: passthrough::field_errors(&e) })
}
