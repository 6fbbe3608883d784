//! `GET /api/v1/session` (how the caller is authenticated, the CSRF token) and
//! `DELETE /api/v1/session` (sign-out: the browser session ends on the server).

use crate::auth::SESSION_COOKIE;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::model::SessionInfo;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// How this client is authenticated, the CSRF token (sessions) and the backend.
#[utoipa::path(get, path = "/api/v1/session", tag = "session", operation_id = "getSession",
    responses((status = 200, description = "Session", body = SessionInfo)))]
pub(crate) async fn get_session(State(app): State<AppState>, caller: Caller) -> Json<SessionInfo> {
    let b = app.backend();
    Json(SessionInfo {
        backend: b.kind(),
        csrf_token: caller.csrf,
        auth: caller.auth,
        rule_format: b.rule_format(),
        clusters: app.cluster_names(),
    })
}

/// Signs out: ends the browser session on the server (its cookie no longer opens anything,
/// even if kept) and clears the cookie. A bearer token has no session to end (400).
#[utoipa::path(delete, path = "/api/v1/session", tag = "session", operation_id = "signOut",
    params(("X-CSRF-Token" = Option<String>, Header, nullable = false, description = "required with the session cookie (from GET /api/v1/session)")),
    responses(
        (status = 204, description = "Signed out; the cookie is cleared", headers(
            ("Set-Cookie" = String, description = "meshpass_session=; Max-Age=0"),
        )),
        crate::routes::errors::BadRequest,
    ))]
pub(crate) async fn sign_out(State(app): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let Some(id) = caller.session else {
        return Err(ApiError::BadRequest(
            "signed in with a bearer token: there is no session to end (the token stays valid; replace api-token to \
             revoke it)"
                .into(),
        ));
    };
    app.auth().close_session(&id);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}
