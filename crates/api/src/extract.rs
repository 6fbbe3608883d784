//! The API's extractors. Each one turns its part of a request into a typed value or an
//! [`ApiError`] (400 with the parser's own message, 413 for a body over the limit), so that the
//! rejections are mapped in one place (`From` impls in [`crate::error`]) and handlers take only
//! what they need: [`ApiJson`], [`ApiJsonOrEmpty`], [`ApiQuery`], [`ApiPath`], [`WorkloadPath`]
//! with the cluster it is in ([`Target`]), and the authenticated [`Caller`].

use crate::backend::is_cluster_name;
use crate::error::ApiError;
use crate::model::{AuthKind, WorkloadRef};
use crate::state::{AppState, Cluster};
use crate::util::{is_dns1123_label, is_dns1123_subdomain};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A JSON object body, parsed with serde (unknown fields, wrong types and malformed JSON are
/// 400 with serde's message). A `Content-Type` is not required: every body of this API is
/// JSON.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// Parses `body` as a JSON object into `T`.
fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde would also build a struct from a JSON array (fields by position); every body of
    // this API is an object, and positional fields would be a trap.
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b != b'{') {
        return Err(ApiError::BadRequest("invalid JSON body: expected a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(req, state).await?;
        parse_object(&body).map(ApiJson)
    }
}

/// As [`ApiJson`], except that an empty body means `T::default()` (a check without options).
#[derive(Debug)]
pub struct ApiJsonOrEmpty<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for ApiJsonOrEmpty<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(req, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(ApiJsonOrEmpty(T::default()));
        }
        parse_object(&body).map(ApiJsonOrEmpty)
    }
}

/// The query string, parsed with serde.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Path parameters, parsed with serde.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The `{ns}` and `{name}` of a workload route, as the OpenAPI document declares them.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WorkloadParams {
    /// Namespace (DNS-1123 label).
    #[param(example = "default", max_length = 63, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    pub ns: String,
    /// Workload name (DNS-1123 subdomain).
    #[param(
        example = "helloworld-v1",
        max_length = 253,
        pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
    )]
    pub name: String,
}

/// The workload a route names, its namespace and name checked as Kubernetes names (400
/// otherwise).
#[derive(Clone, Debug)]
pub struct WorkloadPath(pub WorkloadRef);

impl<S: Send + Sync> FromRequestParts<S> for WorkloadPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let ApiPath(WorkloadParams { ns, name }) = ApiPath::from_request_parts(parts, state).await?;
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
        Ok(WorkloadPath(WorkloadRef::new(ns, name)))
    }
}

/// `?cluster=`: the cluster a workload route or the mesh-wide defaults mean.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClusterParam {
    /// The cluster (default: the only one served; for a workload, else the one cluster that
    /// has it: 400 `ambiguous` when several do).
    #[param(max_length = 63, pattern = r"^[A-Za-z0-9._-]+$")]
    pub cluster: Option<String>,
}

impl ClusterParam {
    /// The `cluster` of a request's query (other parameters are the route's own), checked as
    /// a cluster name (400 otherwise).
    pub fn of(parts: &Parts) -> Result<Option<String>, ApiError> {
        let axum::extract::Query(ClusterParam { cluster }) =
            axum::extract::Query::<ClusterParam>::try_from_uri(&parts.uri)?;
        match cluster {
            Some(c) if c.is_empty() => Ok(None),
            Some(c) if !is_cluster_name(&c) => Err(ApiError::BadRequest(format!(
                "cluster {c:?} is not a valid cluster name (letters, digits, '.', '_' and '-', at most 63)"
            ))),
            c => Ok(c),
        }
    }
}

/// The workload a route names ([`WorkloadPath`]) and the cluster it is in (`?cluster=`, or
/// found as [`AppState::resolve`] says).
#[derive(Clone, Debug)]
pub struct Target {
    /// The cluster.
    pub cluster: Cluster,
    /// The workload.
    pub workload: WorkloadRef,
}

impl FromRequestParts<AppState> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let WorkloadPath(workload) = WorkloadPath::from_request_parts(parts, state).await?;
        let name = ClusterParam::of(parts)?;
        let cluster = state.resolve(name.as_deref(), Some(&workload)).await?;
        Ok(Target { cluster, workload })
    }
}

/// The cluster a route without a workload means (`?cluster=`; required when several are
/// served).
#[derive(Clone, Debug)]
pub struct ClusterScope(pub Cluster);

impl FromRequestParts<AppState> for ClusterScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let name = ClusterParam::of(parts)?;
        state.resolve(name.as_deref(), None).await.map(ClusterScope)
    }
}

/// Who made a request (set by the authentication layer; a route behind it always has one).
#[derive(Clone, Debug)]
pub struct Caller {
    /// Bearer token or session cookie.
    pub auth: AuthKind,
    /// `bearer` or `session:XXXXXXXX`, as the audit log records it.
    pub actor: String,
    /// The session's id (cookie sessions only).
    pub session: Option<String>,
    /// The session's CSRF token (cookie sessions only).
    pub csrf: Option<String>,
    /// The client's address, `unknown` when the transport does not say.
    pub remote: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("authentication required".into()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for crate::audit::AuditSlot {
    type Rejection = std::convert::Infallible;

    /// The slot the audit layer opened for this request; a detached one outside it.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<crate::audit::AuditSlot>().cloned().unwrap_or_default())
    }
}
