//! The routes and the layers around them. Each module holds the handlers of one resource, each
//! handler declares its route and answers with `#[utoipa::path]`, and [`public`] / [`private`]
//! list them: the router and the OpenAPI document ([`crate::openapi`]) are both built from
//! these two lists, so neither can name a route the other lacks. A new resource is a new
//! module and one line in a list.
//!
//! Layers, outermost first: [`track`] (request metrics, security headers), [`request_limits`]
//! (414/431 before routing), [`json_errors`] (every error answer carries the JSON error body),
//! the body limit (413), then for the private routes [`audit_writes`] (every write attempt is
//! audited) and [`require_auth`] (401, 403 CSRF).

pub mod audit;
pub mod batch;
pub mod check;
pub mod defaults;
pub mod gui;
pub mod metrics;
pub mod operations;
pub mod passthrough;
pub mod session;
pub mod workloads;

use crate::audit::{write_action, AuditSlot};
use crate::error::{error_response, ApiError, ErrorCode, ErrorInfo};
use crate::model::AuditEntry;
use crate::server::{BODY_LIMIT, MAX_HEADERS, MAX_HEADER_BYTES, MAX_URI_BYTES};
use crate::state::{remote, session_actor, session_cookie, AppState};
use crate::util::now;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The one Content-Security-Policy of every answer: the GUI loads only its own files and
/// runs no inline script or style.
pub const CSP: &str = "default-src 'self'";

/// `/api/v1/namespaces/{ns}/workloads/{name}`: the prefix of every workload route.
pub const W: &str = "/api/v1/namespaces/{ns}/workloads/{name}";

/// The routes anyone may call: health, the OpenAPI document, the GUI's files and its login.
pub fn public() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(gui::healthz))
        .routes(routes!(crate::openapi::openapi_json))
        .routes(routes!(gui::index))
        .routes(routes!(gui::app_js))
        .routes(routes!(gui::logic_js))
        .routes(routes!(gui::app_css))
}

/// The routes that need a bearer token or a browser session.
pub fn private() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(session::get_session, session::sign_out))
        .routes(routes!(workloads::list_workloads))
        .routes(routes!(workloads::get_workload))
        .routes(routes!(passthrough::get_passthrough, passthrough::put_passthrough, passthrough::delete_passthrough))
        .routes(routes!(passthrough::preview))
        .routes(routes!(batch::batch))
        .routes(routes!(defaults::get_defaults, defaults::put_defaults))
        .routes(routes!(operations::restart))
        .routes(routes!(check::check))
        .routes(routes!(check::bypass))
        .routes(routes!(operations::operation))
        .routes(routes!(audit::list_audit))
        .routes(routes!(metrics::metrics))
}

/// The whole application: API, GUI, metrics, with every layer.
pub fn router(app: AppState) -> Router {
    let (public, _) = public().split_for_parts();
    let (private, _) = private().split_for_parts();
    let private = private
        .route_layer(from_fn_with_state(app.clone(), require_auth))
        .route_layer(from_fn_with_state(app.clone(), audit_writes));
    public
        .merge(private)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn(json_errors))
        .layer(from_fn(request_limits))
        .layer(from_fn_with_state(app.clone(), track))
        .with_state(app)
}

async fn fallback() -> ApiError {
    ApiError::NotFound("no such route: see /api/v1/openapi.json".into())
}

/// Authenticates every private route (401; 403 for a cookie write without its CSRF token).
async fn require_auth(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let slot = req.extensions().get::<AuditSlot>().cloned();
    match app.authenticate(&req) {
        Ok(caller) => {
            if let Some(slot) = &slot {
                slot.note(|n| n.actor = Some(caller.actor.clone()));
            }
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            if let (Some(slot), ApiError::Csrf) = (&slot, &e) {
                // The session is known, only its CSRF token is wrong: name it.
                if let Some(id) = session_cookie(req.headers()) {
                    slot.note(|n| n.actor = Some(session_actor(&id)));
                }
            }
            e.into_response()
        }
    }
}

/// Audits every attempt of a write route: the handler records what reached the backend; this
/// layer records every refusal before that (authentication, CSRF, a malformed or oversized
/// body, a missing or stale version, invalid settings), with the caller and the reason.
async fn audit_writes(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    let Some(action) = write_action(req.method(), &route) else {
        return next.run(req).await;
    };
    // The workload as the request named it, even when the name is not a valid one.
    let segments: Vec<String> = req.uri().path().split('/').map(percent_decode).collect();
    // Only workload routes name one (a batch or the mesh-wide defaults do not).
    let (namespace, name) = if route.starts_with(W) {
        (segments.get(4).cloned().unwrap_or_default(), segments.get(6).cloned().unwrap_or_default())
    } else {
        (String::new(), String::new())
    };
    // The cluster as the request named it (a batch names it per workload, in its body).
    let cluster = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "cluster")
        .map(|(_, v)| percent_decode(&v.replace('+', " ")))
        .unwrap_or_default();
    let remote = remote(&req);
    let slot = AuditSlot::default();
    req.extensions_mut().insert(slot.clone());
    let resp = next.run(req).await;
    let note = slot.get();
    if note.recorded || resp.status().is_success() {
        return resp;
    }
    let info = resp.extensions().get::<ErrorInfo>().cloned().unwrap_or_else(|| ErrorInfo {
        code: ErrorCode::for_status(resp.status()),
        message: resp.status().canonical_reason().unwrap_or("error").to_string(),
    });
    app.audit(&AuditEntry {
        time: now(),
        actor: note.actor.unwrap_or_else(|| "anonymous".into()),
        remote,
        action: action.to_string(),
        cluster,
        namespace,
        name,
        before: note.before,
        after: note.after,
        restart: note.restart || action == "restart",
        result: info.message,
        status: Some(resp.status().as_u16()),
        error: Some(info.code.as_str().to_string()),
    });
    resp
}

/// `%XX` escapes decoded (lossy), for naming a workload in the audit log as it was asked for.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuses, with the JSON error body, a request target or request headers over the limits
/// (414, 431). hyper's own limits are set above these, so that what reaches them is rare and
/// what this server refuses, it refuses in its API's own words.
async fn request_limits(req: Request, next: Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return error_response(
            StatusCode::URI_TOO_LONG,
            ErrorCode::UriTooLong,
            format!("the request target is {target} bytes; this server takes at most {MAX_URI_BYTES}"),
        );
    }
    let headers = req.headers();
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadersTooLarge,
            format!(
                "the request has {} header fields ({bytes} bytes); this server takes at most {MAX_HEADERS} fields \
                 and {MAX_HEADER_BYTES} bytes",
                headers.len()
            ),
        );
    }
    next.run(req).await
}

/// Gives every error answer the JSON error body, also those made by a layer rather than a
/// handler (405 from the router, 413 from the body limit): the API promises JSON errors.
/// Answers that already carry a body of their own (the GUI's HTML pages) are kept.
async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || resp.extensions().get::<ErrorInfo>().is_some() {
        return resp;
    }
    if resp.headers().contains_key(header::CONTENT_TYPE) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = body.collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("{method} is not allowed on {path}; allowed: {}", allowed_methods(&path).join(", "))
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is larger than this server takes ({BODY_LIMIT} bytes at most)")
        }
        _ if !text.trim().is_empty() => text.trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut out = error_response(status, ErrorCode::for_status(status), message);
    for (k, v) in &parts.headers {
        if k != header::CONTENT_LENGTH && k != header::CONTENT_TYPE {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    if status == StatusCode::METHOD_NOT_ALLOWED && !out.headers().contains_key(header::ALLOW) {
        if let Ok(v) = HeaderValue::from_str(&allowed_methods(&path).join(", ")) {
            out.headers_mut().insert(header::ALLOW, v);
        }
    }
    out
}

/// The methods the routes serve on `path` (a concrete path, matched against the templates).
fn allowed_methods(path: &str) -> Vec<String> {
    let segments: Vec<&str> = path.split('/').collect();
    crate::server::routes()
        .into_iter()
        .filter(|r| {
            let t: Vec<&str> = r.path.split('/').collect();
            t.len() == segments.len() && t.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
        })
        .map(|r| r.method.to_string())
        .collect()
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

/// Error answers the OpenAPI document names per route (the ones every private route can give
/// — 401, 403, 500, 503 — are added by [`crate::openapi`]).
// These enums describe answers for the document only; the answers themselves are `ApiError`s.
#[allow(dead_code)]
pub(crate) mod errors {
    use crate::model::ErrorBody;

    /// A malformed path, query or body.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum BadRequest {
        /// Malformed request: JSON body, query or path parameter (`bad_request`)
        #[response(status = 400)]
        BadRequest(ErrorBody),
    }

    /// The workload list.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum WorkloadList {
        /// Malformed query (`bad_request`)
        #[response(status = 400)]
        BadRequest(ErrorBody),
        /// No cluster of the name given (`not_found`)
        #[response(status = 404)]
        NotFound(ErrorBody),
    }

    /// The reads of one workload.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum WorkloadRead {
        /// Malformed path or query, or a workload named without its cluster that several
        /// clusters have (`bad_request`, `ambiguous`)
        #[response(status = 400)]
        BadRequest(ErrorBody),
        /// No such workload or cluster (`not_found`)
        #[response(status = 404)]
        NotFound(ErrorBody),
    }

    /// The passthrough writes.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum Write {
        /// Malformed request: JSON body, query or path parameter (`bad_request`), or a workload
        /// named without its cluster that several clusters have (`ambiguous`)
        #[response(status = 400)]
        BadRequest(ErrorBody),
        /// No such workload or cluster (`not_found`)
        #[response(status = 404)]
        NotFound(ErrorBody),
        /// The workload changed since the version named (`conflict`); nothing was written
        #[response(status = 409)]
        Conflict(ErrorBody),
        /// The body is over the limit (`payload_too_large`)
        #[response(status = 413)]
        TooLarge(ErrorBody),
        /// Invalid settings: one entry in `errors` per bad item (`invalid`); nothing was written
        #[response(status = 422)]
        Invalid(ErrorBody),
        /// A write without If-Match or resourceVersion (`precondition_required`)
        #[response(status = 428)]
        PreconditionRequired(ErrorBody),
    }

    /// A batch: refused as a whole only before anything is written.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum Batch {
        /// Malformed request: JSON body (`bad_request`), or a workload named without its
        /// cluster that several clusters have (`ambiguous`); nothing was written anywhere
        #[response(status = 400)]
        BadRequest(ErrorBody),
        /// The body is over the limit (`payload_too_large`)
        #[response(status = 413)]
        TooLarge(ErrorBody),
        /// The request itself is invalid (bad items, bad names, nothing to change): one entry in
        /// `errors` per bad item (`invalid`); nothing was written anywhere
        #[response(status = 422)]
        Invalid(ErrorBody),
    }

    /// Reads of the mesh-wide defaults.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum DefaultsRead {
        /// Malformed query (`bad_request`), or no cluster named while several are served
        /// (`ambiguous`)
        #[response(status = 400)]
        BadRequest(ErrorBody),
        /// No cluster of the name given (`not_found`)
        #[response(status = 404)]
        NotFound(ErrorBody),
    }

    /// Writes of the mesh-wide defaults.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum DefaultsWrite {
        /// Malformed request: JSON body or query (`bad_request`), or no cluster named while
        /// several are served (`ambiguous`)
        #[response(status = 400)]
        BadRequest(ErrorBody),
        /// No cluster of the name given (`not_found`)
        #[response(status = 404)]
        NotFound(ErrorBody),
        /// The defaults changed since the version named (`conflict`); nothing was written
        #[response(status = 409)]
        Conflict(ErrorBody),
        /// The body is over the limit (`payload_too_large`)
        #[response(status = 413)]
        TooLarge(ErrorBody),
        /// Invalid values: one entry in `errors` per bad item, under its Helm path (`invalid`);
        /// nothing was written
        #[response(status = 422)]
        Invalid(ErrorBody),
        /// A write without If-Match or resourceVersion (`precondition_required`)
        #[response(status = 428)]
        PreconditionRequired(ErrorBody),
        /// This backend cannot change them (`unsupported`)
        #[response(status = 501)]
        Unsupported(ErrorBody),
    }

    /// Requests with a body that the engine or the backend can reject item by item.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum Evaluate {
        /// Malformed request: JSON body, query or path parameter (`bad_request`), or a
        /// workload named without its cluster that several clusters have (`ambiguous`)
        #[response(status = 400)]
        BadRequest(ErrorBody),
        /// No such workload or cluster (`not_found`)
        #[response(status = 404)]
        NotFound(ErrorBody),
        /// The body is over the limit (`payload_too_large`)
        #[response(status = 413)]
        TooLarge(ErrorBody),
        /// The settings or the check cannot be evaluated: one entry in `errors` per bad item
        /// (`invalid`)
        #[response(status = 422)]
        Invalid(ErrorBody),
        /// The backend cannot do this (`unsupported`)
        #[response(status = 501)]
        Unsupported(ErrorBody),
    }

    /// Reads the backend may not support.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum Counters {
        /// Malformed path or query (`bad_request`), or a workload named without its cluster
        /// that several clusters have (`ambiguous`)
        #[response(status = 400)]
        BadRequest(ErrorBody),
        /// No such workload or cluster (`not_found`)
        #[response(status = 404)]
        NotFound(ErrorBody),
        /// The backend cannot read rule counters, e.g. on Kubernetes (`unsupported`)
        #[response(status = 501)]
        Unsupported(ErrorBody),
    }

    /// Lookups of a kept object.
    #[derive(utoipa::IntoResponses)]
    pub(crate) enum Lookup {
        /// Malformed path (`bad_request`)
        #[response(status = 400)]
        BadRequest(ErrorBody),
        /// Not found, or no longer kept (`not_found`)
        #[response(status = 404)]
        NotFound(ErrorBody),
    }
}
