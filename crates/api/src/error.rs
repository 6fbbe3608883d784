//! [`ApiError`]: every way a request or the server can fail, each mapped to one HTTP status
//! and the API's error body (`{"error": CODE, "message": TEXT, "errors": [FieldError]?}`).

use crate::backend::{error_chain, BackendError};
use crate::model::{ErrorBody, FieldError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;

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

impl ApiError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ApiError::Io { path: path.into(), source }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Csrf | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Backend(e) => match e {
                BackendError::NotFound(_) => StatusCode::NOT_FOUND,
                BackendError::Conflict { .. } => StatusCode::CONFLICT,
                BackendError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                BackendError::Forbidden { .. } => StatusCode::FORBIDDEN,
                BackendError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
                BackendError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                BackendError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Internal(_) | ApiError::Io { .. } | ApiError::Bind { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Csrf => "csrf",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PreconditionRequired => "precondition_required",
            ApiError::Invalid { .. } => "invalid",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unsupported(_) => "unsupported",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Backend(e) => match e {
                BackendError::NotFound(_) => "not_found",
                BackendError::Conflict { .. } => "conflict",
                BackendError::Invalid(_) => "invalid",
                BackendError::Forbidden { .. } => "forbidden",
                BackendError::Unsupported(_) => "unsupported",
                BackendError::Unavailable { .. } => "unavailable",
                BackendError::Failed { .. } => "internal",
            },
            ApiError::Internal(_) | ApiError::Io { .. } | ApiError::Bind { .. } => "internal",
        }
    }

    /// The body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code().to_string(),
            message: error_chain(self),
            errors: match self {
                ApiError::Invalid { errors, .. } => errors.clone(),
                _ => Vec::new(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
