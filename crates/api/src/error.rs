//! [`ApiError`]: every way a request or the server can fail, each mapped to one HTTP status
//! and the API's error body (`{"error": CODE, "message": TEXT, "errors": [FieldError]?}`).
//!
//! The extractors' rejections (a malformed body, path or query; a body over the limit) are
//! translated here once, by `From` impls, so handlers never map them by hand.

use crate::backend::{error_chain, BackendError};
use crate::model::{ErrorBody, FieldError};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;

/// The `error` code of an error body: one per kind of failure (see API.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401: no or a wrong credential.
    Unauthorized,
    /// 403: a cookie-authenticated write without the right `X-CSRF-Token`.
    Csrf,
    /// 403: the backend may not do this.
    Forbidden,
    /// 404: no such workload, operation or route.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: the workload changed since the version the write named.
    Conflict,
    /// 428: a write without the version it is based on.
    PreconditionRequired,
    /// 422: invalid settings.
    Invalid,
    /// 400: a malformed request.
    BadRequest,
    /// 400: a workload named without its cluster exists in several clusters.
    Ambiguous,
    /// 408: the request was not read and answered in time.
    RequestTimeout,
    /// 413: a body over the limit.
    PayloadTooLarge,
    /// 414: a request target over the limit.
    UriTooLong,
    /// 431: request headers over the limit.
    HeadersTooLarge,
    /// 501: the backend cannot do this.
    Unsupported,
    /// 503: the backend cannot be reached.
    Unavailable,
    /// 503: the server is at its connection limit.
    Overloaded,
    /// 500: anything else.
    Internal,
}

impl ErrorCode {
    /// The code as the body spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Csrf => "csrf",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PreconditionRequired => "precondition_required",
            ErrorCode::Invalid => "invalid",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Ambiguous => "ambiguous",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status of an answer with this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Csrf | ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            ErrorCode::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::BadRequest | ErrorCode::Ambiguous => StatusCode::BAD_REQUEST,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::Unsupported => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::Unavailable | ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code of a backend failure.
    pub fn of_backend(e: &BackendError) -> ErrorCode {
        match e {
            BackendError::NotFound(_) => ErrorCode::NotFound,
            BackendError::Conflict { .. } => ErrorCode::Conflict,
            BackendError::Invalid(_) => ErrorCode::Invalid,
            BackendError::Forbidden { .. } => ErrorCode::Forbidden,
            BackendError::Unsupported(_) => ErrorCode::Unsupported,
            BackendError::Unavailable { .. } => ErrorCode::Unavailable,
            BackendError::Failed { .. } => ErrorCode::Internal,
        }
    }

    /// The code an error answer of this status gets when nothing more specific is known
    /// (an answer made by a layer rather than a handler).
    pub fn for_status(status: StatusCode) -> ErrorCode {
        match status.as_u16() {
            400 => ErrorCode::BadRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            408 => ErrorCode::RequestTimeout,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::PayloadTooLarge,
            414 => ErrorCode::UriTooLong,
            422 => ErrorCode::Invalid,
            428 => ErrorCode::PreconditionRequired,
            431 => ErrorCode::HeadersTooLarge,
            501 => ErrorCode::Unsupported,
            503 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// An API error. The variant decides the status and the `error` code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or a wrong credential (401 `unauthorized`).
    #[error("{0}")]
    Unauthorized(String),
    /// A cookie-authenticated write without the right `X-CSRF-Token` (403 `csrf`).
    #[error("missing or wrong X-CSRF-Token header: get the token from GET /api/v1/session")]
    Csrf,
    /// The backend may not do this (403 `forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// No such workload, operation or route (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The workload changed since the version the write named (409 `conflict`).
    #[error("{0}")]
    Conflict(String),
    /// A write without `If-Match` or `resourceVersion` (428 `precondition_required`).
    #[error(
        "this write needs the version it is based on: send If-Match: \"RESOURCE_VERSION\" (the ETag of GET \
         …/passthrough) or resourceVersion"
    )]
    PreconditionRequired,
    /// Invalid settings: one [`FieldError`] per bad item (422 `invalid`).
    #[error("{message}")]
    Invalid {
        /// Every error, as the engine prints them, one per line.
        message: String,
        /// One entry per bad item.
        errors: Vec<FieldError>,
    },
    /// A malformed request: body, query or path (400 `bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// A workload named without its cluster is in several clusters (400 `ambiguous`).
    #[error("{0}")]
    Ambiguous(String),
    /// A request body over the limit (413 `payload_too_large`).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The backend cannot do this (501 `unsupported`).
    #[error("{0}")]
    Unsupported(String),
    /// The backend cannot be reached (503 `unavailable`).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (500 `internal`).
    #[error("{0}")]
    Internal(String),
    /// The backend failed; the status follows the [`BackendError`] variant.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The backend of one of several clusters failed; the status follows the
    /// [`BackendError`] variant, the message names the cluster.
    #[error("cluster {cluster}")]
    InCluster {
        /// The cluster.
        cluster: String,
        /// What its backend said.
        #[source]
        source: BackendError,
    },
    /// A file of the state directory could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What an error answer said, kept in the response's extensions for the layers after the
/// handler (the audit log records refused writes with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorInfo {
    /// The `error` code.
    pub code: ErrorCode,
    /// The `message`.
    pub message: String,
}

impl ApiError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ApiError::Io { path: path.into(), source }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    /// The `error` code of the body.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Csrf => ErrorCode::Csrf,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::PreconditionRequired => ErrorCode::PreconditionRequired,
            ApiError::Invalid { .. } => ErrorCode::Invalid,
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::Ambiguous(_) => ErrorCode::Ambiguous,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::Unsupported(_) => ErrorCode::Unsupported,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Backend(e) | ApiError::InCluster { source: e, .. } => ErrorCode::of_backend(e),
            ApiError::Internal(_) | ApiError::Io { .. } | ApiError::Bind { .. } => ErrorCode::Internal,
        }
    }

    /// The body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code().as_str().to_string(),
            message: error_chain(self),
            errors: match self {
                ApiError::Invalid { errors, .. } => errors.clone(),
                _ => Vec::new(),
            },
        }
    }
}

/// An error answer with `status`, `code` and `message` (for layers that answer themselves).
pub fn error_response(status: StatusCode, code: ErrorCode, message: String) -> Response {
    let body = ErrorBody { error: code.as_str().to_string(), message: message.clone(), errors: Vec::new() };
    let mut resp = (status, axum::Json(body)).into_response();
    resp.extensions_mut().insert(ErrorInfo { code, message });
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.body();
        let info = ErrorInfo { code: self.code(), message: body.message.clone() };
        let mut resp = (status, axum::Json(body)).into_response();
        resp.extensions_mut().insert(info);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "the request body is larger than this server takes ({} bytes at most)",
                crate::server::BODY_LIMIT
            ))
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {}", e.body_text()))
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query: {}", e.body_text()))
    }
}
