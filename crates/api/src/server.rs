//! The axum server: routes (see API.md), authentication (bearer token or login-URL session
//! with CSRF token), the passthrough write path (precondition → validation → backend →
//! audit), restart operations, the embedded GUI, and start-up (`api-address`, token, login
//! URL).

use crate::audit::{AuditLog, AUDIT_FILE};
use crate::auth::{load_or_create_token, write_token, Auth, SESSION_COOKIE, SESSION_TTL};
use crate::backend::{Backend, BackendError};
use crate::error::ApiError;
use crate::metrics::{passthrough_direction, Metrics};
use crate::model::{
    AuditEntry, AuditList, AuthKind, BypassReport, BypassTotals, CheckRequest, Operation, OperationKind,
    OperationState, Passthrough, PassthroughDoc, PassthroughUpdate, SessionInfo, Workload, WorkloadInfo, WorkloadList,
    WorkloadRef,
};
use crate::passthrough;
use crate::util::{ct_eq, is_dns1123_label, is_dns1123_subdomain, now, random_hex};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Extension, Json, Router};
use meshpass_capture::InjectorValues;
use meshpass_settings::Settings;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The file (in the state directory) that names the server's address, for clients.
pub const ADDRESS_FILE: &str = "api-address";
/// The most audit entries one `GET /api/v1/audit` returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;
/// How many operations are kept for `GET /api/v1/operations/{id}`.
pub const KEEP_OPERATIONS: usize = 100;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The page `/` shows without a session: no data, just how to log in.
const LOGIN_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>meshpass: log in</title><link rel=\"stylesheet\" href=\"/assets/app.css\"></head>\n<body>\
<h1>meshpass</h1><p>Open the login URL that <code>meshpass up</code> (or <code>meshpass serve</code>) \
printed when it started: <code>http://ADDRESS/?token=TOKEN</code>. The token is also in \
<code>&lt;state-dir&gt;/api-token</code>.</p></body></html>\n";

/// The page for a wrong login token.
const BAD_TOKEN_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>meshpass: wrong token</title><link rel=\"stylesheet\" href=\"/assets/app.css\"></head>\n<body>\
<h1>meshpass</h1><p>That login token is not valid. Open the login URL printed at start-up again; \
the current token is in <code>&lt;state-dir&gt;/api-token</code>.</p></body></html>\n";

/// The one Content-Security-Policy of every answer: the GUI loads only its own files and
/// runs no inline script or style.
pub const CSP: &str = "default-src 'self'";

/// Who made a request (set by the authentication middleware).
#[derive(Clone, Debug)]
pub struct Caller {
    /// Bearer token or session cookie.
    pub auth: AuthKind,
    /// `bearer` or `session:XXXXXXXX`, as the audit log records it.
    pub actor: String,
    /// The session's CSRF token (cookie sessions only).
    pub csrf: Option<String>,
    /// The client's address, `unknown` when the transport does not say.
    pub remote: String,
}

struct Inner {
    backend: Arc<dyn Backend>,
    values: InjectorValues,
    auth: Auth,
    audit: AuditLog,
    ops: Mutex<VecDeque<Operation>>,
    metrics: Metrics,
}

/// The server's shared state: the backend, credentials, audit log, operations and metrics.
/// Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("backend", &self.inner.backend.kind()).finish_non_exhaustive()
    }
}

impl AppState {
    /// State over `backend`, authenticating with `token`, keeping the audit log in
    /// `state_dir`.
    pub fn new(backend: Arc<dyn Backend>, token: String, state_dir: &FsPath) -> Self {
        Self::with_session_ttl(backend, token, state_dir, SESSION_TTL)
    }

    /// As [`AppState::new`], with another browser session lifetime.
    pub fn with_session_ttl(backend: Arc<dyn Backend>, token: String, state_dir: &FsPath, ttl: Duration) -> Self {
        AppState {
            inner: Arc::new(Inner {
                values: backend.injector_values(),
                backend,
                auth: Auth::new(token, ttl),
                audit: AuditLog::new(state_dir.join(AUDIT_FILE)),
                ops: Mutex::new(VecDeque::new()),
                metrics: Metrics::default(),
            }),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The API token.
    pub fn token(&self) -> &str {
        self.inner.auth.token()
    }

    /// A kept operation.
    pub fn operation(&self, id: &str) -> Option<Operation> {
        self.inner.ops.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|o| o.id == id).cloned()
    }

    fn update_op(&self, id: &str, f: impl FnOnce(&mut Operation)) {
        let mut ops = self.inner.ops.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = ops.iter_mut().find(|o| o.id == id) {
            f(o);
        }
    }

    fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.inner.audit.append(&entry) {
            // The change itself happened; losing its record must at least be visible.
            eprintln!("meshpass-api: cannot write the audit log: {e}");
        }
    }

    /// Who sent `req`, or why it is refused (401, or 403 for a missing CSRF token).
    fn authenticate(&self, req: &Request) -> Result<Caller, ApiError> {
        let remote = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_string(), |c| c.0.to_string());
        let headers = req.headers();
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().unwrap_or_default();
            let token = value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
                .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be \"Bearer TOKEN\"".into()))?;
            if !self.inner.auth.token_matches(token) {
                return Err(ApiError::Unauthorized("wrong token".into()));
            }
            return Ok(Caller { auth: AuthKind::Bearer, actor: "bearer".into(), csrf: None, remote });
        }
        if let Some(id) = session_cookie(headers) {
            if let Some(session) = self.inner.auth.session(&id) {
                let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
                if !safe {
                    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    if !ct_eq(sent.as_bytes(), session.csrf.as_bytes()) {
                        return Err(ApiError::Csrf);
                    }
                }
                let short: String = id.chars().take(8).collect();
                return Ok(Caller {
                    auth: AuthKind::Session,
                    actor: format!("session:{short}"),
                    csrf: Some(session.csrf),
                    remote,
                });
            }
            return Err(ApiError::Unauthorized("the session expired: open the login URL again".into()));
        }
        Err(ApiError::Unauthorized(
            "authentication required: send Authorization: Bearer TOKEN (the token is in <state-dir>/api-token), \
             or open the login URL printed at start-up"
                .into(),
        ))
    }
}

/// The `meshpass_session` cookie of a request.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

async fn require_auth(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    match app.authenticate(&req) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Counts every answer by route template and adds the security headers.
async fn track(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |m| m.as_str().into());
    let mut resp = next.run(req).await;
    app.inner.metrics.request(&method, &route, resp.status().as_u16());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Nothing the server answers may be cached: answers carry live state or secrets, and the
    // GUI must always match the server it talks to.
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn fallback() -> ApiError {
    ApiError::NotFound("no such route: see /api/v1/openapi.json".into())
}

/// One route: method, path template, whether it needs authentication, and its handler.
pub struct RouteSpec {
    /// The HTTP method.
    pub method: Method,
    /// The path template (axum syntax, as in OpenAPI: `/api/v1/operations/{id}`).
    pub path: &'static str,
    /// True when the route needs a bearer token or a session.
    pub auth: bool,
    handler: MethodRouter<AppState>,
}

impl std::fmt::Debug for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} (auth: {})", self.method, self.path, self.auth)
    }
}

const W: &str = "/api/v1/namespaces/{ns}/workloads/{name}";

/// Every route of the server: the router is built from this table, and the OpenAPI test
/// checks the document against it.
pub fn routes() -> Vec<RouteSpec> {
    fn r(method: Method, path: &'static str, auth: bool, handler: MethodRouter<AppState>) -> RouteSpec {
        RouteSpec { method, path, auth, handler }
    }
    vec![
        r(Method::GET, "/healthz", false, axum::routing::get(healthz)),
        r(Method::GET, "/api/v1/openapi.json", false, axum::routing::get(openapi)),
        r(Method::GET, "/", false, axum::routing::get(index)),
        r(Method::GET, "/assets/app.js", false, axum::routing::get(app_js)),
        r(Method::GET, "/assets/app.css", false, axum::routing::get(app_css)),
        r(Method::GET, "/api/v1/session", true, axum::routing::get(session)),
        r(Method::GET, "/api/v1/workloads", true, axum::routing::get(list_workloads)),
        r(Method::GET, W, true, axum::routing::get(get_workload)),
        r(
            Method::GET,
            "/api/v1/namespaces/{ns}/workloads/{name}/passthrough",
            true,
            axum::routing::get(get_passthrough),
        ),
        r(
            Method::PUT,
            "/api/v1/namespaces/{ns}/workloads/{name}/passthrough",
            true,
            axum::routing::put(put_passthrough),
        ),
        r(
            Method::DELETE,
            "/api/v1/namespaces/{ns}/workloads/{name}/passthrough",
            true,
            axum::routing::delete(delete_passthrough),
        ),
        r(
            Method::POST,
            "/api/v1/namespaces/{ns}/workloads/{name}/passthrough/preview",
            true,
            axum::routing::post(preview),
        ),
        r(Method::POST, "/api/v1/namespaces/{ns}/workloads/{name}/restart", true, axum::routing::post(restart)),
        r(Method::POST, "/api/v1/namespaces/{ns}/workloads/{name}/check", true, axum::routing::post(check)),
        r(Method::GET, "/api/v1/namespaces/{ns}/workloads/{name}/bypass", true, axum::routing::get(bypass)),
        r(Method::GET, "/api/v1/operations/{id}", true, axum::routing::get(operation)),
        r(Method::GET, "/api/v1/audit", true, axum::routing::get(audit)),
        r(Method::GET, "/metrics", true, axum::routing::get(metrics)),
    ]
}

/// The whole application: API, GUI, metrics.
pub fn router(app: AppState) -> Router {
    let (mut public, mut private) = (Router::new(), Router::new());
    for spec in routes() {
        if spec.auth {
            private = private.route(spec.path, spec.handler);
        } else {
            public = public.route(spec.path, spec.handler);
        }
    }
    let private = private.route_layer(from_fn_with_state(app.clone(), require_auth));
    public.merge(private).fallback(fallback).layer(from_fn_with_state(app.clone(), track)).with_state(app)
}

// ----------------------------------------------------------------------------------------
// Extraction helpers: every malformed input is a 400 with the parser's own message.
// ----------------------------------------------------------------------------------------

fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
    // serde would also build a struct from a JSON array (fields by position); every body of
    // this API is an object, and positional fields would be a trap.
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b != b'{') {
        return Err(ApiError::BadRequest("invalid JSON body: expected a JSON object".into()));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
}

fn workload_ref(p: Result<Path<(String, String)>, PathRejection>) -> Result<WorkloadRef, ApiError> {
    let Path((ns, name)) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !is_dns1123_label(&ns) {
        return Err(ApiError::BadRequest(format!(
            "namespace {ns:?} is not a valid namespace name (DNS-1123 label: lowercase letters, digits and '-', \
             at most 63)"
        )));
    }
    if !is_dns1123_subdomain(&name) {
        return Err(ApiError::BadRequest(format!(
            "workload name {name:?} is not a valid name (DNS-1123 subdomain: lowercase letters, digits, '-' and \
             '.', at most 253)"
        )));
    }
    Ok(WorkloadRef::new(ns, name))
}

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

// ----------------------------------------------------------------------------------------
// Public routes.
// ----------------------------------------------------------------------------------------

async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok\n").into_response()
}

async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

fn html(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

#[derive(Deserialize)]
struct IndexQuery {
    token: Option<String>,
}

async fn index(
    State(app): State<AppState>,
    q: Result<Query<IndexQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let token = q.ok().and_then(|Query(q)| q.token);
    if let Some(token) = token {
        if !app.inner.auth.token_matches(&token) {
            return html(StatusCode::UNAUTHORIZED, BAD_TOKEN_PAGE);
        }
        let (id, _) = match app.inner.auth.open_session() {
            Ok(s) => s,
            Err(e) => return e.into_response(),
        };
        let cookie =
            format!("{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs());
        let mut resp = StatusCode::SEE_OTHER.into_response();
        let h = resp.headers_mut();
        h.insert(header::LOCATION, HeaderValue::from_static("/"));
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.insert(header::SET_COOKIE, v);
        }
        return resp;
    }
    let logged_in = session_cookie(&headers).is_some_and(|id| app.inner.auth.session(&id).is_some());
    html(StatusCode::OK, if logged_in { INDEX_HTML } else { LOGIN_PAGE })
}

async fn app_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS).into_response()
}

async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

// ----------------------------------------------------------------------------------------
// API routes.
// ----------------------------------------------------------------------------------------

async fn session(State(app): State<AppState>, Extension(caller): Extension<Caller>) -> Json<SessionInfo> {
    let b = app.backend();
    Json(SessionInfo { backend: b.kind(), csrf_token: caller.csrf, auth: caller.auth, rule_format: b.rule_format() })
}

fn workload_view(info: WorkloadInfo) -> Workload {
    Workload { status: info.status(), passthrough: passthrough::from_annotations(&info.annotations), info }
}

#[derive(Deserialize)]
struct WorkloadsQuery {
    namespace: Option<String>,
    search: Option<String>,
    sort: Option<String>,
}

async fn list_workloads(
    State(app): State<AppState>,
    q: Result<Query<WorkloadsQuery>, QueryRejection>,
) -> Result<Json<WorkloadList>, ApiError> {
    let q = query(q)?;
    let sort = q.sort.as_deref().unwrap_or("namespace");
    if !matches!(sort, "name" | "namespace" | "status") {
        return Err(ApiError::BadRequest(format!("sort {sort:?}: use name, namespace or status")));
    }
    let needle = q.search.unwrap_or_default().to_lowercase();
    let mut items: Vec<Workload> = app
        .backend()
        .list()
        .await?
        .into_iter()
        .filter(|w| q.namespace.as_deref().is_none_or(|ns| ns.is_empty() || ns == w.workload.namespace))
        .filter(|w| needle.is_empty() || w.workload.to_string().to_lowercase().contains(&needle))
        .map(workload_view)
        .collect();
    let key = |w: &Workload| (w.info.workload.namespace.clone(), w.info.workload.name.clone());
    match sort {
        "name" => items.sort_by(|a, b| (&a.info.workload.name, key(a)).cmp(&(&b.info.workload.name, key(b)))),
        "status" => items.sort_by_key(|a| (status_rank(a), key(a))),
        _ => items.sort_by_key(key),
    }
    Ok(Json(WorkloadList { items }))
}

fn status_rank(w: &Workload) -> u8 {
    // Those needing attention first: pending restart, injected, uninjected.
    match w.status {
        crate::model::SidecarStatus::PendingRestart => 0,
        crate::model::SidecarStatus::Injected => 1,
        crate::model::SidecarStatus::Uninjected => 2,
    }
}

async fn get_workload(
    State(app): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Workload>, ApiError> {
    let w = workload_ref(p)?;
    Ok(Json(workload_view(app.backend().get(&w).await?)))
}

/// The document for `info`, with warnings computed against the other workloads.
async fn passthrough_doc(app: &AppState, info: WorkloadInfo, operation: Option<Operation>) -> PassthroughDoc {
    // Warnings are advice: a failing list only loses the cross-workload one.
    let others = app.backend().list().await.unwrap_or_default();
    let mut warnings = match Settings::from_annotations(&info.annotations) {
        Ok(s) => passthrough::warnings(&info, &s, &others),
        Err(e) => vec![format!("The template's capture annotations are invalid (Istio would reject the pods):\n{e}")],
    };
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

async fn get_passthrough(
    State(app): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let w = workload_ref(p)?;
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

async fn apply_change(app: &AppState, caller: &Caller, w: &WorkloadRef, c: Change) -> Result<Response, ApiError> {
    let backend = app.backend();
    let info = backend.get(w).await?;
    let before = passthrough::from_annotations(&info.annotations);
    if info.resource_version != c.expected {
        app.inner.metrics.change("conflict");
        return Err(ApiError::Conflict(format!(
            "workload {w} changed since version {} (now {}); reload and retry",
            c.expected, info.resource_version
        )));
    }
    if c.validate {
        if let Err(e) = passthrough::validate(&info.annotations, &c.settings) {
            app.inner.metrics.change("invalid");
            return Err(ApiError::Invalid { message: e.to_string(), errors: passthrough::field_errors(&e) });
        }
    }
    let (set, remove) = passthrough::patch(&info.annotations, &c.settings);
    let written = if set.is_empty() && remove.is_empty() {
        // Same values again: nothing to write (the version stays), but still a success.
        info
    } else {
        let result = backend.patch_annotations(w, &c.expected, set, remove).await;
        app.audit(AuditEntry {
            time: now(),
            actor: caller.actor.clone(),
            remote: caller.remote.clone(),
            action: c.action.to_string(),
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            before: Some(before),
            after: Some(c.settings.clone()),
            restart: c.restart,
            result: result.as_ref().map_or_else(|e| e.report(), |_| "ok".to_string()),
        });
        match result {
            Ok(info) => info,
            Err(e) => {
                app.inner.metrics.change(match e {
                    BackendError::Conflict { .. } => "conflict",
                    BackendError::Invalid(_) => "invalid",
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

async fn put_passthrough(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let w = workload_ref(p)?;
    let update: PassthroughUpdate = parse_json(body)?;
    let expected = precondition(&headers, update.resource_version.clone())?;
    let change = Change {
        action: "passthrough.set",
        expected,
        settings: update.settings(),
        restart: update.restart,
        validate: true,
    };
    apply_change(&app, &caller, &w, change).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteQuery {
    restart: Option<bool>,
    resource_version: Option<String>,
}

async fn delete_passthrough(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let w = workload_ref(p)?;
    let q = query(q)?;
    let expected = precondition(&headers, q.resource_version)?;
    // Clearing only removes annotations, so it cannot make a template invalid: no validation
    // (which also lets an operator clear settings that were broken around the API).
    let change = Change {
        action: "passthrough.clear",
        expected,
        settings: Passthrough::default(),
        restart: q.restart.unwrap_or(false),
        validate: false,
    };
    apply_change(&app, &caller, &w, change).await
}

async fn preview(
    State(app): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<crate::model::Preview>, ApiError> {
    let w = workload_ref(p)?;
    let proposed: Passthrough = parse_json(body)?;
    let backend = app.backend();
    let info = backend.get(&w).await?;
    let others = backend.list().await.unwrap_or_default();
    passthrough::preview(&info, &proposed, &others, &app.inner.values, backend.rule_format())
        .map(Json)
        .map_err(|e| ApiError::Invalid { message: e.to_string(), errors: passthrough::field_errors(&e) })
}

/// Starts a restart of `w` in the background and returns the operation as it starts.
fn start_restart(app: &AppState, caller: &Caller, w: &WorkloadRef) -> Result<Operation, ApiError> {
    let id = format!("op-{}", random_hex(8).map_err(|e| ApiError::io("/dev/urandom", e))?);
    let op = Operation {
        id: id.clone(),
        kind: OperationKind::Restart,
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        state: OperationState::Running,
        progress: Vec::new(),
        error: None,
        started_at: now(),
        finished_at: None,
    };
    {
        let mut ops = app.inner.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.push_back(op.clone());
        while ops.len() > KEEP_OPERATIONS {
            ops.pop_front();
        }
    }
    let (app, caller, w) = (app.clone(), caller.clone(), w.clone());
    tokio::spawn(async move {
        let (app2, id2) = (app.clone(), id.clone());
        let progress: crate::backend::Progress =
            Box::new(move |line: String| app2.update_op(&id2, |o| o.progress.push(line)));
        let result = app.backend().restart(&w, progress).await;
        // Audit first: whoever sees the operation finished also finds its audit entry.
        app.audit(AuditEntry {
            time: now(),
            actor: caller.actor,
            remote: caller.remote,
            action: "restart".into(),
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            before: None,
            after: None,
            restart: true,
            result: result.as_ref().map_or_else(|e| e.report(), |()| "ok".into()),
        });
        app.update_op(&id, |o| {
            o.finished_at = Some(now());
            match result {
                Ok(()) => o.state = OperationState::Succeeded,
                Err(e) => {
                    o.state = OperationState::Failed;
                    o.error = Some(e.report());
                }
            }
        });
    });
    Ok(op)
}

async fn restart(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let w = workload_ref(p)?;
    app.backend().get(&w).await?;
    let op = start_restart(&app, &caller, &w)?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

async fn operation(
    State(app): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Operation>, ApiError> {
    let Path(id) = p.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    app.operation(&id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("operation {id:?} not found (the last {KEEP_OPERATIONS} are kept)")))
}

async fn check(
    State(app): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<crate::model::CheckReport>, ApiError> {
    let w = workload_ref(p)?;
    // An empty body means the default check (inbound, first Service port, `/`).
    let request: CheckRequest = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => parse_json(Ok(Bytes::from_static(b"{}")))?,
        _ => parse_json(body)?,
    };
    Ok(Json(app.backend().check(&w, &request).await?))
}

async fn bypass(
    State(app): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<BypassReport>, ApiError> {
    let w = workload_ref(p)?;
    let mut totals = BypassTotals::default();
    let items: Vec<_> = app
        .backend()
        .rule_counters(&w)
        .await?
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

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(app): State<AppState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = query(q)?.limit.unwrap_or(100);
    if limit > MAX_AUDIT_LIMIT {
        return Err(ApiError::BadRequest(format!("limit {limit}: at most {MAX_AUDIT_LIMIT}")));
    }
    Ok(Json(AuditList { items: app.inner.audit.read(limit)? }))
}

async fn metrics(State(app): State<AppState>) -> Response {
    let text = app.inner.metrics.render(app.backend().as_ref()).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

// ----------------------------------------------------------------------------------------
// Start-up.
// ----------------------------------------------------------------------------------------

/// What the caller prints once the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The bound address.
    pub addr: SocketAddr,
    /// `http://IP:PORT` (also written to `<state-dir>/api-address`).
    pub url: String,
    /// `http://IP:PORT/?token=TOKEN`: opens a browser session.
    pub login_url: String,
}

/// Called once when the server listens (print the login URL here).
pub type StartedHook = Arc<dyn Fn(&Started) + Send + Sync>;

/// How to run the server.
#[derive(Clone)]
pub struct ServerConfig {
    /// Where to listen (`127.0.0.1:15080` by default; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where `api-token`, `api-address` and `audit.log` live.
    pub state_dir: PathBuf,
    /// Use this token (and write it to `api-token`) instead of the stored or a new one.
    pub token: Option<String>,
    /// Browser session lifetime.
    pub session_ttl: Duration,
    /// Told the URLs once the server listens.
    pub on_started: Option<StartedHook>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("state_dir", &self.state_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("session_ttl", &self.session_ttl)
            .finish_non_exhaustive()
    }
}

/// The default listen address, `127.0.0.1:15080`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15080);

impl ServerConfig {
    /// Listen on `listen`, keep state in `state_dir`, everything else default.
    pub fn new(listen: SocketAddr, state_dir: impl Into<PathBuf>) -> Self {
        ServerConfig { listen, state_dir: state_dir.into(), token: None, session_ttl: SESSION_TTL, on_started: None }
    }
}

/// A bound server, not yet answering: read [`Server::started`], then [`Server::run`].
pub struct Server {
    listener: tokio::net::TcpListener,
    app: AppState,
    started: Started,
    state_dir: PathBuf,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("started", &self.started).finish_non_exhaustive()
    }
}

impl Server {
    /// Prepares the state directory (token, `api-address`) and binds the listener.
    pub async fn bind(cfg: &ServerConfig, backend: Arc<dyn Backend>) -> Result<Server, ApiError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| ApiError::io(&cfg.state_dir, e))?;
        let token = match &cfg.token {
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => {
                write_token(&cfg.state_dir, t)?;
                t.clone()
            }
            Some(_) => return Err(ApiError::BadRequest("the token must be non-empty printable ASCII".into())),
            None => load_or_create_token(&cfg.state_dir)?,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ApiError::Bind { addr: cfg.listen, source: e })?;
        let addr = listener.local_addr().map_err(|e| ApiError::Bind { addr: cfg.listen, source: e })?;
        // A wildcard listen address is not something to browse to; loopback always works.
        let shown = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
            IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
            _ => addr,
        };
        let url = format!("http://{shown}");
        let path = cfg.state_dir.join(ADDRESS_FILE);
        std::fs::write(&path, format!("{url}\n")).map_err(|e| ApiError::io(&path, e))?;
        let login_url = format!("{url}/?token={token}");
        let app = AppState::with_session_ttl(backend, token, &cfg.state_dir, cfg.session_ttl);
        Ok(Server { listener, app, started: Started { addr, url, login_url }, state_dir: cfg.state_dir.clone() })
    }

    /// Where it listens and how to log in.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// The shared state (tests reach the operations and the token through it).
    pub fn state(&self) -> &AppState {
        &self.app
    }

    /// Answers requests until `shutdown` completes, then removes `api-address` (when it
    /// still names this server).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ApiError> {
        let app = router(self.app);
        let result = axum::serve(self.listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| ApiError::Internal(format!("server failed: {e}")));
        let path = self.state_dir.join(ADDRESS_FILE);
        if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == self.started.url) {
            let _ = std::fs::remove_file(&path);
        }
        result
    }
}

/// Binds, writes `<state-dir>/api-address`, tells `cfg.on_started` the login URL, and serves
/// until `shutdown` completes.
pub async fn serve(
    cfg: ServerConfig,
    backend: Arc<dyn Backend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let server = Server::bind(&cfg, backend).await?;
    if let Some(hook) = &cfg.on_started {
        hook(server.started());
    }
    server.run(shutdown).await
}
