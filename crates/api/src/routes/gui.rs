//! The public routes: `/healthz`, the embedded GUI (`/`, `/assets/*`) and its login
//! (`/?token=TOKEN` opens a browser session).

use crate::auth::{SESSION_COOKIE, SESSION_TTL};
use crate::extract::ApiQuery;
use crate::state::{session_cookie, AppState};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const LOGIC_JS: &str = include_str!("../../assets/logic.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

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

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "public", operation_id = "healthz",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
pub(crate) async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok\n").into_response()
}

fn html(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// `/?token=TOKEN`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct IndexQuery {
    /// The API token: opens a browser session.
    token: Option<String>,
}

/// The web GUI (with a session), the login page (without), or the login itself (`?token=`).
#[utoipa::path(get, path = "/", tag = "public", operation_id = "gui", params(IndexQuery),
    responses(
        (status = 200, description = "The GUI, or the login page without a session", content_type = "text/html", body = String),
        (status = 303, description = "Logged in: redirect to / with the session cookie", headers(
            ("Location" = String, description = "/"),
            ("Set-Cookie" = String, description = "meshpass_session=SESSION; HttpOnly; SameSite=Strict; Path=/"),
        )),
        (status = 400, description = "Malformed query (`bad_request`)", body = crate::model::ErrorBody),
        (status = 401, description = "Wrong token", content_type = "text/html", body = String),
    ))]
pub(crate) async fn index(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<IndexQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = q.token {
        if !app.auth().token_matches(&token) {
            return html(StatusCode::UNAUTHORIZED, BAD_TOKEN_PAGE);
        }
        let (id, _) = match app.auth().open_session() {
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
    let logged_in = session_cookie(&headers).is_some_and(|id| app.auth().session(&id).is_some());
    html(StatusCode::OK, if logged_in { INDEX_HTML } else { LOGIN_PAGE })
}

/// GUI script.
#[utoipa::path(get, path = "/assets/app.js", tag = "public", operation_id = "appJs",
    responses((status = 200, description = "script", content_type = "text/javascript", body = String)))]
pub(crate) async fn app_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS).into_response()
}

/// The GUI's logic without a DOM (imported by `app.js`).
#[utoipa::path(get, path = "/assets/logic.js", tag = "public", operation_id = "logicJs",
    responses((status = 200, description = "script", content_type = "text/javascript", body = String)))]
pub(crate) async fn logic_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], LOGIC_JS).into_response()
}

/// GUI style sheet.
#[utoipa::path(get, path = "/assets/app.css", tag = "public", operation_id = "appCss",
    responses((status = 200, description = "style sheet", content_type = "text/css", body = String)))]
pub(crate) async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}
