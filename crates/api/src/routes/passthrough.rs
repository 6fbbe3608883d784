//! A workload's passthrough settings: `GET`, `PUT` (precondition → validation → backend →
//! audit), `DELETE` and `POST …/preview`.

use crate::audit::AuditSlot;
use crate::backend::BackendError;
use crate::error::{ApiError, ErrorCode};
use crate::extract::{ApiJson, ApiQuery, Caller, ClusterParam, Target, WorkloadParams};
use crate::impact::{self, Assessment};
use crate::model::{
    AuditEntry, Operation, Passthrough, PassthroughDoc, PassthroughUpdate, Preview, WorkloadInfo, WorkloadRef,
};
use crate::passthrough;
use crate::routes::operations::start_restart;
use crate::state::{AppState, Cluster};
use crate::util::now;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshpass_policy::{Resource, ResourceRef};
use meshpass_settings::Settings;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The version a write is based on: `If-Match` (`"RV"`, `W/"RV"` or bare) or the body's /
/// query's `resourceVersion`; both must agree when both are given.
pub(crate) fn precondition(headers: &HeaderMap, alt: Option<String>) -> Result<String, ApiError> {
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

pub(crate) fn with_etag(mut resp: Response, rv: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{rv}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// The document for `info`, with warnings computed against the other workloads of its
/// cluster.
async fn passthrough_doc(c: &Cluster, info: WorkloadInfo, operation: Option<Operation>) -> PassthroughDoc {
    // Warnings are advice: a failing list only loses the cross-workload one.
    let others = c.workloads().await.unwrap_or_default();
    let defaults = mesh_defaults(c).await;
    let mut effective = Vec::new();
    let mut warnings = match Settings::from_annotations(&info.annotations) {
        Ok(s) => {
            let mut w = passthrough::warnings(&info, &s, &others);
            let (values, replaced) = passthrough::effective(&s, &defaults);
            effective = values;
            w.extend(replaced);
            w
        }
        Err(e) => vec![format!("The template's capture annotations are invalid (Istio would reject the pods):\n{e}")],
    };
    warnings.extend(passthrough::stored_warnings(&info.annotations, c.backend().dialect()));
    warnings.extend(passthrough::unknown_key_warnings(&info.annotations));
    PassthroughDoc {
        cluster: c.name().to_string(),
        namespace: info.workload.namespace.clone(),
        name: info.workload.name.clone(),
        resource_version: info.resource_version.clone(),
        status: info.status(),
        settings: passthrough::from_annotations(&info.annotations),
        annotations: passthrough::passthrough_annotations(&info.annotations),
        warnings,
        effective,
        operation,
        impact: Vec::new(),
        created: Vec::new(),
        removed: Vec::new(),
    }
}

/// The impact of changing `info`'s settings to `settings` on the mesh's mutual TLS, computed
/// from the backend's mesh and policies as they are now.
async fn assess(
    c: &Cluster,
    info: &WorkloadInfo,
    settings: &Passthrough,
    values: &meshpass_capture::InjectorValues,
    fix_clients: bool,
) -> Result<Assessment, BackendError> {
    let mesh = c.backend().mesh_policies().await?;
    let others = c.workloads().await?;
    let after = passthrough::candidate(&info.annotations, settings);
    Ok(impact::assess(info, &after, &others, values, &mesh, fix_clients))
}

/// The warning shown when the impact could not be computed (the change itself can still be
/// made: the impact is advice unless the fix was asked for).
fn not_assessed(e: &BackendError) -> String {
    format!("The impact on meshed clients' mutual TLS was not computed: {}", e.report())
}

/// Why `fixClients` was refused: the mesh's policies could not be read (same status as the
/// backend's error).
fn needs_policies(e: BackendError) -> BackendError {
    let context = "fixClients needs the mesh's mutual-TLS policies".to_string();
    match e {
        BackendError::Unsupported(what) => BackendError::Unsupported(format!("{context}: {what}")),
        e @ BackendError::Unavailable { .. } => BackendError::Unavailable { context, source: Some(Box::new(e)) },
        e @ BackendError::Forbidden { .. } => BackendError::Forbidden { context, source: Some(Box::new(e)) },
        e => BackendError::failed(context).caused_by(e),
    }
}

/// The annotation write that undoes `set`/`remove` on a template whose annotations were
/// `original`.
fn undo(
    original: &BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut back = BTreeMap::new();
    let mut drop = Vec::new();
    for key in set.keys().chain(remove) {
        match original.get(key) {
            Some(v) => {
                back.insert(key.clone(), v.clone());
            }
            None => drop.push(key.clone()),
        }
    }
    (back, drop)
}

/// One audit line for a fix rule created or removed along with a passthrough write.
fn audit_policy(
    app: &AppState,
    c: &Cluster,
    caller: &Caller,
    action: &str,
    r: &ResourceRef,
    result: &Result<(), BackendError>,
) {
    app.audit(&AuditEntry {
        time: now(),
        actor: caller.actor.clone(),
        remote: caller.remote.clone(),
        action: action.to_string(),
        cluster: c.name().to_string(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        before: None,
        after: None,
        restart: false,
        result: result.as_ref().map_or_else(|e| e.report(), |_| "ok".to_string()),
        status: Some(result.as_ref().map_or_else(|e| ErrorCode::of_backend(e).status().as_u16(), |_| 200)),
        error: result.as_ref().err().map(|e| ErrorCode::of_backend(e).as_str().to_string()),
    });
}

/// The mesh-wide defaults the workloads' pods get; Istio's when the backend cannot say
/// (the effective values shown are then those of a mesh without its own defaults).
pub(crate) async fn mesh_defaults(c: &Cluster) -> meshpass_settings::MeshDefaults {
    c.backend().mesh_defaults().await.map(|d| d.defaults).unwrap_or_default()
}

/// The injector values previews and impacts compile a workload's rules with: the backend's
/// fixed ones (read at start) around the mesh-wide defaults as they are now, read again on
/// every call so that a change of the defaults (through the API, or around it) shows at once.
pub(crate) async fn injector_values(c: &Cluster) -> meshpass_capture::InjectorValues {
    with_defaults(c.values(), mesh_defaults(c).await)
}

/// `values` with `defaults` as its mesh-wide defaults.
pub(crate) fn with_defaults(
    values: &meshpass_capture::InjectorValues,
    defaults: meshpass_settings::MeshDefaults,
) -> meshpass_capture::InjectorValues {
    meshpass_capture::InjectorValues { defaults, ..values.clone() }
}

/// Passthrough settings, with the version (ETag) to write against.
#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/workloads/{name}/passthrough", tag = "passthrough",
    operation_id = "getPassthrough", params(WorkloadParams, ClusterParam),
    responses(
        (status = 200, description = "The settings", body = PassthroughDoc,
            headers(("ETag" = String, description = "`\"RESOURCE_VERSION\"`: send it back as If-Match"))),
        crate::routes::errors::WorkloadRead,
    ))]
pub(crate) async fn get_passthrough(Target { cluster, workload }: Target) -> Result<Response, ApiError> {
    let info = cluster.backend().get(&workload).await.map_err(|e| cluster.err(e))?;
    let doc = passthrough_doc(&cluster, info, None).await;
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
    fix_clients: bool,
}

async fn apply_change(
    app: &AppState,
    caller: &Caller,
    slot: &AuditSlot,
    Target { cluster: cl, workload }: &Target,
    c: Change,
) -> Result<Response, ApiError> {
    let w: &WorkloadRef = workload;
    let backend = cl.backend();
    let info = backend.get(w).await.map_err(|e| cl.err(e))?;
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
    // The impact is computed before anything is written, against the mesh as it is. Without
    // the fix it is advice; the fix cannot be made without it.
    let mut warnings = Vec::new();
    let values = injector_values(cl).await;
    let assessment = match assess(cl, &info, &settings, &values, c.fix_clients).await {
        Ok(a) => Some(a),
        Err(e) if c.fix_clients => {
            app.inner.metrics.change("error");
            return Err(cl.err(needs_policies(e)));
        }
        Err(BackendError::Unsupported(_)) => None,
        Err(e) => {
            warnings.push(not_assessed(&e));
            None
        }
    };
    let (set, remove) = passthrough::patch(&info.annotations, &settings);
    let original = info.annotations.clone();
    let written = if set.is_empty() && remove.is_empty() {
        // Same values again: nothing to write (the version stays), but still a success.
        info
    } else {
        let result = backend.patch_annotations(w, &c.expected, set.clone(), remove.clone()).await;
        cl.changed();
        app.audit(&AuditEntry {
            time: now(),
            actor: caller.actor.clone(),
            remote: caller.remote.clone(),
            action: c.action.to_string(),
            cluster: cl.name().to_string(),
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
                return Err(cl.err(e));
            }
        }
    };
    let (mut created, mut removed) = (Vec::new(), Vec::new());
    if let Some(a) = &assessment {
        if c.fix_clients {
            for fix in &a.impact.fixes {
                let r = Resource::DestinationRule(fix.clone());
                let reference = r.reference();
                let result = backend.create_policy(&r).await;
                audit_policy(app, cl, caller, "destinationrule.create", &reference, &result);
                if let Err(e) = result {
                    // Nothing half-applied: the rules made so far go, the annotations return.
                    for done in &created {
                        let undone = backend.delete_policy(done).await;
                        audit_policy(app, cl, caller, "destinationrule.delete", done, &undone);
                    }
                    let (back, drop) = undo(&original, &set, &remove);
                    if !(back.is_empty() && drop.is_empty()) {
                        let restored = backend.patch_annotations(w, &written.resource_version, back, drop).await;
                        cl.changed();
                        if let Err(u) = restored {
                            app.inner.metrics.change("error");
                            return Err(cl.err(
                                BackendError::failed(format!(
                                    "creating {reference} failed, and the settings could not be restored ({}); they \
                                     are written",
                                    u.report()
                                ))
                                .caused_by(e),
                            ));
                        }
                    }
                    app.inner.metrics.change("error");
                    return Err(cl.err(
                        BackendError::failed(format!("creating {reference} failed; nothing was changed")).caused_by(e),
                    ));
                }
                created.push(reference);
            }
        }
        for stale in &a.stale {
            let result = backend.delete_policy(stale).await;
            audit_policy(app, cl, caller, "destinationrule.delete", stale, &result);
            match result {
                Ok(()) => removed.push(stale.clone()),
                Err(e) => warnings.push(format!("{stale} is no longer needed but was not removed: {}", e.report())),
            }
        }
    }
    app.inner.metrics.change("ok");
    let op = if c.restart { Some(start_restart(app, caller, cl, w)?) } else { None };
    let mut doc = passthrough_doc(cl, written, op).await;
    if let Some(a) = &assessment {
        doc.impact = impact::entries(&a.impact);
        doc.warnings.extend(a.impact.notes.iter().cloned());
    }
    doc.warnings.extend(warnings);
    doc.created = created.iter().map(impact::policy_ref).collect();
    doc.removed = removed.iter().map(impact::policy_ref).collect();
    let rv = doc.resource_version.clone();
    Ok(with_etag(Json(doc).into_response(), &rv))
}

/// The headers of a write of a workload's settings (`PUT` and `DELETE …/passthrough`), for the
/// OpenAPI document; [`precondition`] and the authentication read them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct WriteHeaders {
    /// `"RESOURCE_VERSION"` from the ETag. A PUT may name the version in its body's
    /// resourceVersion instead, a DELETE in ?resourceVersion=; with neither the write is refused
    /// with 428; when both are given and differ, 409
    #[param(rename = "If-Match", min_length = 1, pattern = r"\S")]
    if_match: String,
    /// required with the session cookie (from GET /api/v1/session); not with a bearer token
    #[param(rename = "X-CSRF-Token", required = false)]
    x_csrf_token: String,
}

/// Set the passthrough settings (the seven annotations become exactly the body); optionally
/// restart.
#[utoipa::path(put, path = "/api/v1/namespaces/{ns}/workloads/{name}/passthrough", tag = "passthrough",
    operation_id = "putPassthrough",
    params(
        WorkloadParams,
        ClusterParam,
        WriteHeaders,
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
    target: Target,
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
        fix_clients: update.fix_clients,
    };
    apply_change(&app, &caller, &slot, &target, change).await
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
    /// The cluster (see the `cluster` parameter of the other workload routes).
    #[param(max_length = 63, pattern = r"^[A-Za-z0-9._-]+$")]
    #[allow(dead_code)]
    cluster: Option<String>,
}

/// Remove all seven passthrough annotations; optionally restart.
#[utoipa::path(delete, path = "/api/v1/namespaces/{ns}/workloads/{name}/passthrough", tag = "passthrough",
    operation_id = "deletePassthrough",
    params(
        WorkloadParams,
        WriteHeaders,
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
    target: Target,
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
    let change = Change {
        action: "passthrough.clear",
        expected,
        settings: Passthrough::default(),
        restart,
        validate: false,
        fix_clients: false,
    };
    apply_change(&app, &caller, &slot, &target, change).await
}

/// `POST …/passthrough/preview?fixClients=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PreviewQuery {
    /// Compute the impact as it will be with the fix rules (`fixes`) created (default false).
    fix_clients: Option<bool>,
    /// The cluster (see the `cluster` parameter of the other workload routes).
    #[param(max_length = 63, pattern = r"^[A-Za-z0-9._-]+$")]
    #[allow(dead_code)]
    cluster: Option<String>,
}

/// The capture rules before and after a change, their diff, and the change's impact on meshed
/// clients' mutual TLS.
#[utoipa::path(post, path = "/api/v1/namespaces/{ns}/workloads/{name}/passthrough/preview", tag = "passthrough",
    operation_id = "previewPassthrough",
    params(
        WorkloadParams,
        ("X-CSRF-Token" = Option<String>, Header, nullable = false, description = "required with the session cookie (from GET /api/v1/session); not with a bearer token"),
        PreviewQuery,
    ),
    request_body = Passthrough,
    responses((status = 200, description = "Preview", body = Preview), crate::routes::errors::Evaluate))]
pub(crate) async fn preview(
    Target { cluster, workload }: Target,
    ApiQuery(q): ApiQuery<PreviewQuery>,
    ApiJson(proposed): ApiJson<Passthrough>,
) -> Result<Json<Preview>, ApiError> {
    let backend = cluster.backend();
    let info = backend.get(&workload).await.map_err(|e| cluster.err(e))?;
    let others = cluster.workloads().await.unwrap_or_default();
    let values = injector_values(&cluster).await;
    let mut preview =
        passthrough::preview(&info, &proposed, &others, &values, backend.rule_format(), backend.dialect())
            .map_err(|e| ApiError::Invalid { message: e.to_string(), errors: passthrough::field_errors(&e) })?;
    preview.cluster = cluster.name().to_string();
    match assess(&cluster, &info, &proposed, &values, q.fix_clients.unwrap_or(false)).await {
        Ok(a) => {
            preview.impact = impact::entries(&a.impact);
            preview.fixes = a.impact.fixes.iter().map(impact::fix_rule).collect();
            preview.removes = a.stale.iter().map(impact::policy_ref).collect();
            preview.warnings.extend(a.impact.notes);
        }
        Err(BackendError::Unsupported(_)) => {}
        Err(e) => preview.warnings.push(not_assessed(&e)),
    }
    // The proposed values that would replace mesh-wide ones instead of adding to them.
    let (_, replaced) = passthrough::effective_of(
        &passthrough::candidate(&info.annotations, &proposed),
        &mesh_defaults(&cluster).await,
    );
    preview.warnings.extend(replaced);
    Ok(Json(preview))
}
