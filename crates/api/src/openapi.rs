//! The OpenAPI document of the API (`GET /api/v1/openapi.json`), derived, not written: the
//! schemas from the types of [`crate::model`] (`#[derive(ToSchema)]`, following their serde
//! attributes), the operations from the handlers' `#[utoipa::path]`, and the route list from
//! the same [`routes::public`] / [`routes::private`] lists the router is built from.
//!
//! What the derivation cannot see is added here, from the same lists: the security of each
//! operation (none for the public routes; bearer token or session cookie for the private
//! ones) and the answers every private route can give (401, 403, 500, 503, and 413 where a
//! body is taken).

use crate::routes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response as OaResponse, ResponseBuilder};
use utoipa::OpenApi as _;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "meshpass management API",
        version = "1",
        description = "Traffic passthrough settings of sidecar-meshed workloads (Istio's traffic.sidecar.istio.io \
                       annotations), restarts, checks and rule counters. See crates/api/API.md.",
    ),
    components(schemas(
        crate::model::ErrorBody,
        crate::error::ErrorCode,
        crate::model::FieldError,
        crate::routes::workloads::SortKey
    )),
    tags(
        (name = "public", description = "No credentials needed"),
        (name = "session", description = "Who is calling; sign-out"),
        (name = "workloads", description = "Workloads and their sidecar status"),
        (name = "passthrough", description = "Traffic passthrough settings"),
        (name = "defaults", description = "Mesh-wide capture defaults (Istio's injector values)"),
        (name = "operations", description = "Restarts"),
        (name = "check", description = "Whether traffic bypasses the sidecar"),
        (name = "audit", description = "The audit log"),
        (name = "metrics", description = "Prometheus metrics"),
    ),
)]
struct ApiDoc;

/// Answers every private operation can give, with their descriptions.
const PRIVATE_ERRORS: [(u16, &str); 4] = [
    (401, "No or wrong credentials (`unauthorized`); carries `WWW-Authenticate: Bearer`"),
    (403, "Cookie-authenticated write without the right X-CSRF-Token (`csrf`), or the backend refused (`forbidden`)"),
    (500, "Internal error (`internal`)"),
    (503, "The backend cannot be reached (`unavailable`)"),
];

fn error_answer(description: &str) -> RefOr<OaResponse> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
}

fn operations(doc: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
            item.head.as_mut(),
            item.options.as_mut(),
        ]
        .into_iter()
        .flatten()
    })
}

fn build() -> OpenApi {
    let mut public = routes::public().into_openapi();
    for op in operations(&mut public) {
        op.security = Some(Vec::new());
    }
    let mut private = routes::private().into_openapi();
    for op in operations(&mut private) {
        op.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("session", Vec::<String>::new()),
        ]);
        let responses = &mut op.responses.responses;
        for (code, text) in PRIVATE_ERRORS {
            responses.entry(code.to_string()).or_insert_with(|| error_answer(text));
        }
        if op.request_body.is_some() {
            responses
                .entry("413".into())
                .or_insert_with(|| error_answer("The body is over the limit (`payload_too_large`)"));
        }
        if let Some(RefOr::T(r)) = responses.get_mut("401") {
            r.headers.insert(
                header::WWW_AUTHENTICATE.to_string(),
                utoipa::openapi::HeaderBuilder::new()
                    .schema(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String))
                    .description(Some("Bearer"))
                    .build(),
            );
        }
    }
    let mut doc = ApiDoc::openapi();
    doc.merge(public);
    doc.merge(private);
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The token in <state-dir>/api-token"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "session",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            crate::auth::SESSION_COOKIE,
            "Browser session from the login URL; writes also need X-CSRF-Token",
        ))),
    );
    doc.servers = Some(vec![utoipa::openapi::Server::new("/")]);
    doc
}

/// The document (built once).
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(build)
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "public", operation_id = "openapi",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub(crate) async fn openapi_json() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let text = JSON.get_or_init(|| document().to_json().unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));
    ([(header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}
