//! The OpenAPI 3.0 document of the API (`GET /api/v1/openapi.json`), written by hand so that
//! it says exactly what the server does: every route of [`crate::server::routes`], its
//! parameters, bodies, every status it can answer (errors included, with their body schema),
//! and the two security schemes (bearer token, session cookie). Precise enough for
//! schemathesis' response-schema conformance checks: optional fields that serialize as `null`
//! are `nullable`, objects the server rejects unknown fields of say so.

use serde_json::{json, Map, Value};

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn nullable_ref(name: &str) -> Value {
    json!({ "allOf": [r(name)], "nullable": true })
}

fn strings() -> Value {
    json!({ "type": "array", "items": { "type": "string" } })
}

fn nullable_string() -> Value {
    json!({ "type": "string", "nullable": true })
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": json_content(schema) })
}

fn err(code: u16) -> (String, Value) {
    (code.to_string(), json!({ "$ref": format!("#/components/responses/E{code}") }))
}

/// A responses object: `main` plus references to the shared error answers `errors`.
fn responses(main: &[(&str, Value)], errors: &[u16]) -> Value {
    let mut m = Map::new();
    for (code, v) in main {
        m.insert(code.to_string(), v.clone());
    }
    for code in errors {
        let (k, v) = err(*code);
        m.insert(k, v);
    }
    Value::Object(m)
}

const SECURED: &[u16] = &[400, 401, 403, 404, 500, 501, 503];

fn secured() -> Value {
    json!([{ "bearer": [] }, { "session": [] }])
}

fn wl_params() -> Value {
    json!([{ "$ref": "#/components/parameters/ns" }, { "$ref": "#/components/parameters/name" }])
}

fn op(id: &str, summary: &str, tags: &str, params: Value, body: Option<Value>, resp: Value) -> Value {
    let mut o = json!({
        "operationId": id, "summary": summary, "tags": [tags], "parameters": params,
        "security": secured(), "responses": resp,
    });
    if let Some(b) = body {
        o["requestBody"] = b;
    }
    o
}

fn body(schema: &str, required: bool) -> Value {
    json!({ "required": required, "content": json_content(r(schema)) })
}

fn doc_with_etag(description: &str) -> Value {
    json!({
        "description": description,
        "headers": { "ETag": { "description": "`\"RESOURCE_VERSION\"`: send it back as If-Match", "schema": { "type": "string" } } },
        "content": json_content(r("PassthroughDoc")),
    })
}

fn schemas() -> Value {
    let passthrough_props = json!({
        "inboundPorts": { "description": "traffic.sidecar.istio.io/excludeInboundPorts items (ports or ranges like 8000-8100)", "type": "array", "items": { "type": "string" } },
        "outboundPorts": { "description": "traffic.sidecar.istio.io/excludeOutboundPorts items", "type": "array", "items": { "type": "string" } },
        "outboundIpRanges": { "description": "traffic.sidecar.istio.io/excludeOutboundIPRanges items (CIDRs)", "type": "array", "items": { "type": "string" } },
        "includeInboundPorts": { "description": "traffic.sidecar.istio.io/includeInboundPorts; null = absent", "type": "string", "nullable": true },
        "includeOutboundPorts": { "description": "traffic.sidecar.istio.io/includeOutboundPorts; null = absent", "type": "string", "nullable": true },
        "includeOutboundIpRanges": { "description": "traffic.sidecar.istio.io/includeOutboundIPRanges; null = absent", "type": "string", "nullable": true },
        "interceptionMode": { "description": "sidecar.istio.io/interceptionMode (REDIRECT, TPROXY, NONE); null = absent", "type": "string", "nullable": true },
    });
    let mut update_props = passthrough_props.clone();
    update_props["restart"] = json!({ "type": "boolean", "default": false, "description": "restart after writing" });
    update_props["resourceVersion"] =
        json!({ "type": "string", "description": "the version the change is based on (instead of If-Match)" });
    let traffic = json!({
        "type": "object", "required": ["packets", "bytes"],
        "properties": { "packets": { "type": "integer", "format": "int64", "minimum": 0 }, "bytes": { "type": "integer", "format": "int64", "minimum": 0 } },
    });
    let status = json!({ "type": "string", "enum": ["Injected", "Uninjected", "Pending restart"] });
    let u32_ = json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": 4_294_967_295u64 });
    let port = json!({ "type": "integer", "minimum": 0, "maximum": 65535 });
    json!({
        "Passthrough": {
            "type": "object", "additionalProperties": false, "properties": passthrough_props,
            "description": "A workload's traffic passthrough settings. Lists: empty = annotation absent.",
        },
        "PassthroughUpdate": {
            "type": "object", "additionalProperties": false, "properties": update_props,
            "description": "The new passthrough settings (the seven annotations become exactly these), restart flag, optional version.",
        },
        "ServicePort": { "type": "object", "required": ["port", "targetPort"], "properties": { "port": port, "targetPort": port } },
        "ServiceInfo": {
            "type": "object", "required": ["name", "clusterIp", "ports"],
            "properties": { "name": { "type": "string" }, "clusterIp": nullable_string(), "ports": { "type": "array", "items": r("ServicePort") } },
        },
        "Workload": {
            "type": "object",
            "required": ["namespace", "name", "kind", "meshed", "pendingRestart", "ready", "total", "injected", "services", "annotations", "resourceVersion", "status", "passthrough"],
            "properties": {
                "namespace": { "type": "string" }, "name": { "type": "string" }, "kind": { "type": "string" },
                "meshed": { "type": "boolean" }, "pendingRestart": { "type": "boolean" },
                "ready": u32_, "total": u32_, "injected": u32_,
                "services": { "type": "array", "items": r("ServiceInfo") },
                "annotations": { "type": "object", "additionalProperties": { "type": "string" } },
                "resourceVersion": { "type": "string" }, "status": status, "passthrough": r("Passthrough"),
            },
        },
        "WorkloadList": { "type": "object", "required": ["items"], "properties": { "items": { "type": "array", "items": r("Workload") } } },
        "PassthroughDoc": {
            "type": "object",
            "required": ["namespace", "name", "resourceVersion", "status", "settings", "annotations", "warnings"],
            "properties": {
                "namespace": { "type": "string" }, "name": { "type": "string" }, "resourceVersion": { "type": "string" },
                "status": status, "settings": r("Passthrough"),
                "annotations": { "type": "object", "additionalProperties": { "type": "string" } },
                "warnings": strings(), "operation": r("Operation"),
            },
        },
        "DiffLine": { "type": "object", "required": ["op", "line"], "properties": { "op": { "type": "string", "enum": [" ", "+", "-"] }, "line": { "type": "string" } } },
        "Preview": {
            "type": "object", "required": ["format", "current", "proposed", "diff", "istioArgs", "warnings"],
            "properties": {
                "format": { "type": "string", "enum": ["nft", "iptables"] },
                "current": { "type": "string" }, "proposed": { "type": "string" },
                "diff": { "type": "array", "items": r("DiffLine") },
                "istioArgs": { "type": "object", "required": ["current", "proposed"], "properties": { "current": strings(), "proposed": strings() } },
                "warnings": strings(),
            },
        },
        "Operation": {
            "type": "object", "required": ["id", "kind", "namespace", "name", "state", "progress", "error", "startedAt", "finishedAt"],
            "properties": {
                "id": { "type": "string" }, "kind": { "type": "string", "enum": ["restart"] },
                "namespace": { "type": "string" }, "name": { "type": "string" },
                "state": { "type": "string", "enum": ["running", "succeeded", "failed"] },
                "progress": strings(), "error": nullable_string(),
                "startedAt": { "type": "string", "format": "date-time" },
                "finishedAt": { "type": "string", "format": "date-time", "nullable": true },
            },
        },
        "CheckRequest": {
            "type": "object", "additionalProperties": false,
            "properties": {
                "direction": { "type": "string", "enum": ["inbound", "outbound"], "default": "inbound" },
                "port": { "type": "integer", "minimum": 1, "maximum": 65535, "nullable": true, "description": "inbound: the Service port (default: the first)" },
                "path": { "type": "string", "nullable": true, "description": "inbound: HTTP path (default /)" },
                "target": { "type": "string", "nullable": true, "description": "outbound: ADDR:PORT or http://ADDR:PORT/PATH" },
            },
        },
        "CheckReport": {
            "type": "object", "required": ["direction", "from", "target", "verdict", "statusLine", "headers", "evidence"],
            "properties": {
                "direction": { "type": "string", "enum": ["inbound", "outbound"] },
                "from": { "type": "string" }, "target": { "type": "string" },
                "verdict": { "type": "string", "enum": ["sidecar", "passthrough", "unknown"] },
                "statusLine": nullable_string(),
                "headers": { "type": "array", "items": { "type": "array", "items": { "type": "string" }, "minItems": 2, "maxItems": 2 } },
                "evidence": strings(),
            },
        },
        "RuleCounter": {
            "type": "object", "required": ["pod", "family", "label", "rule", "packets", "bytes"],
            "properties": {
                "pod": { "type": "string" }, "family": { "type": "string" }, "label": { "type": "string" }, "rule": { "type": "string" },
                "packets": { "type": "integer", "format": "int64", "minimum": 0 }, "bytes": { "type": "integer", "format": "int64", "minimum": 0 },
            },
        },
        "Traffic": traffic,
        "BypassReport": {
            "type": "object", "required": ["items", "totals"],
            "properties": {
                "items": { "type": "array", "items": r("RuleCounter") },
                "totals": { "type": "object", "required": ["inbound", "outbound"], "properties": { "inbound": r("Traffic"), "outbound": r("Traffic") } },
            },
        },
        "AuditEntry": {
            "type": "object", "required": ["time", "actor", "remote", "action", "namespace", "name", "before", "after", "restart", "result"],
            "properties": {
                "time": { "type": "string", "format": "date-time" }, "actor": { "type": "string" }, "remote": { "type": "string" },
                "action": { "type": "string", "enum": ["passthrough.set", "passthrough.clear", "restart"] },
                "namespace": { "type": "string" }, "name": { "type": "string" },
                "before": nullable_ref("Passthrough"), "after": nullable_ref("Passthrough"),
                "restart": { "type": "boolean" }, "result": { "type": "string" },
            },
        },
        "AuditList": { "type": "object", "required": ["items"], "properties": { "items": { "type": "array", "items": r("AuditEntry") } } },
        "SessionInfo": {
            "type": "object", "required": ["backend", "csrfToken", "auth", "ruleFormat"],
            "properties": {
                "backend": { "type": "string", "enum": ["local", "kube"] }, "csrfToken": nullable_string(),
                "auth": { "type": "string", "enum": ["bearer", "session"] }, "ruleFormat": { "type": "string", "enum": ["nft", "iptables"] },
            },
        },
        "FieldError": {
            "type": "object", "required": ["field", "key", "item", "reason"],
            "properties": { "field": { "type": "string" }, "key": { "type": "string" }, "item": { "type": "string" }, "reason": { "type": "string" } },
        },
        "Error": {
            "type": "object", "required": ["error", "message"],
            "properties": {
                "error": { "type": "string", "enum": ["unauthorized", "csrf", "forbidden", "not_found", "conflict", "precondition_required", "invalid", "bad_request", "unsupported", "unavailable", "internal"] },
                "message": { "type": "string" },
                "errors": { "type": "array", "items": r("FieldError") },
            },
        },
    })
}

fn error_responses() -> Value {
    let mut m = Map::new();
    for (code, text) in [
        (400, "Malformed request: JSON body, query or path parameter (`bad_request`)"),
        (401, "No or wrong credentials (`unauthorized`); carries `WWW-Authenticate: Bearer`"),
        (
            403,
            "Cookie-authenticated write without the right X-CSRF-Token (`csrf`), or the backend refused (`forbidden`)",
        ),
        (404, "No such workload, operation or route (`not_found`)"),
        (409, "The workload changed since the version named (`conflict`); nothing was written"),
        (422, "Invalid settings: one entry in `errors` per bad item (`invalid`); nothing was written"),
        (428, "PUT/DELETE without If-Match or resourceVersion (`precondition_required`)"),
        (500, "Internal error (`internal`)"),
        (501, "The backend cannot do this, e.g. read rule counters on Kubernetes (`unsupported`)"),
        (503, "The backend cannot be reached (`unavailable`)"),
    ] {
        let mut v = json!({ "description": text, "content": json_content(r("Error")) });
        if code == 401 {
            v["headers"] = json!({ "WWW-Authenticate": { "schema": { "type": "string", "enum": ["Bearer"] } } });
        }
        m.insert(format!("E{code}"), v);
    }
    Value::Object(m)
}

/// The document.
pub fn document() -> Value {
    let w = "/api/v1/namespaces/{ns}/workloads/{name}";
    let mut paths = Map::new();
    let text = |ct: &str, d: &str| json!({ "description": d, "content": { ct: { "schema": { "type": "string" } } } });
    let public = |id: &str, summary: &str, resp: Value| json!({ "get": { "operationId": id, "summary": summary, "tags": ["public"], "security": [], "responses": resp } });
    paths.insert("/healthz".into(), public("healthz", "Liveness", json!({ "200": text("text/plain", "`ok`") })));
    paths.insert(
        "/api/v1/openapi.json".into(),
        public("openapi", "This document", json!({ "200": ok("OpenAPI 3 document", json!({ "type": "object" })) })),
    );
    paths.insert(
        "/".into(),
        json!({ "get": {
            "operationId": "gui", "summary": "The web GUI (with a session), the login page (without), or the login itself (?token=)",
            "tags": ["public"], "security": [],
            "parameters": [{ "name": "token", "in": "query", "required": false, "schema": { "type": "string" }, "description": "the API token: opens a browser session" }],
            "responses": {
                "200": text("text/html", "The GUI, or the login page without a session"),
                "303": { "description": "Logged in: redirect to / with the session cookie",
                    "headers": {
                        "Location": { "schema": { "type": "string" } },
                        "Set-Cookie": { "schema": { "type": "string" }, "description": "meshpass_session=SESSION; HttpOnly; SameSite=Strict; Path=/" },
                    } },
                "401": text("text/html", "Wrong token"),
            },
        } }),
    );
    paths.insert(
        "/assets/app.js".into(),
        public("appJs", "GUI script", json!({ "200": text("text/javascript", "script") })),
    );
    paths.insert(
        "/assets/app.css".into(),
        public("appCss", "GUI style sheet", json!({ "200": text("text/css", "style sheet") })),
    );
    paths.insert(
        "/api/v1/session".into(),
        json!({ "get": op("getSession", "How this client is authenticated, the CSRF token (sessions), the backend", "session", json!([]), None,
            responses(&[("200", ok("Session", r("SessionInfo")))], &[401, 500])) }),
    );
    paths.insert(
        "/api/v1/workloads".into(),
        json!({ "get": op("listWorkloads", "Workloads, with status and passthrough settings", "workloads",
            json!([
                { "name": "namespace", "in": "query", "required": false, "schema": { "type": "string" }, "description": "only this namespace" },
                { "name": "search", "in": "query", "required": false, "schema": { "type": "string" }, "description": "case-insensitive substring of NAMESPACE/NAME" },
                { "name": "sort", "in": "query", "required": false, "schema": { "type": "string", "enum": ["name", "namespace", "status"], "default": "namespace" } },
            ]), None, responses(&[("200", ok("Workloads", r("WorkloadList")))], SECURED)) }),
    );
    paths.insert(
        w.into(),
        json!({ "get": op("getWorkload", "One workload", "workloads", wl_params(), None,
            responses(&[("200", ok("The workload", r("Workload")))], SECURED)) }),
    );
    let mut write_params = wl_params();
    if let Some(a) = write_params.as_array_mut() {
        a.push(json!({ "$ref": "#/components/parameters/ifMatch" }));
        a.push(json!({ "$ref": "#/components/parameters/csrf" }));
    }
    let mut delete_params = write_params.clone();
    if let Some(a) = delete_params.as_array_mut() {
        a.push(json!({ "name": "restart", "in": "query", "required": false, "schema": { "type": "boolean", "default": false } }));
        a.push(json!({ "name": "resourceVersion", "in": "query", "required": false, "schema": { "type": "string" }, "description": "instead of If-Match" }));
    }
    let write_errors: Vec<u16> = SECURED.iter().copied().chain([409, 422, 428]).collect();
    paths.insert(
        format!("{w}/passthrough"),
        json!({
            "get": op("getPassthrough", "Passthrough settings, with the version (ETag) to write against", "passthrough", wl_params(), None,
                responses(&[("200", doc_with_etag("The settings"))], SECURED)),
            "put": op("putPassthrough", "Set the passthrough settings (the seven annotations become exactly the body); optionally restart", "passthrough",
                write_params.clone(), Some(body("PassthroughUpdate", true)),
                responses(&[("200", doc_with_etag("Written (or unchanged); `operation` when a restart was asked for"))], &write_errors)),
            "delete": op("deletePassthrough", "Remove all seven passthrough annotations; optionally restart", "passthrough",
                delete_params, None,
                responses(&[("200", doc_with_etag("Cleared"))], &write_errors)),
        }),
    );
    let csrf_params = {
        let mut p = wl_params();
        if let Some(a) = p.as_array_mut() {
            a.push(json!({ "$ref": "#/components/parameters/csrf" }));
        }
        p
    };
    let post_errors: Vec<u16> = SECURED.iter().copied().chain([422]).collect();
    paths.insert(
        format!("{w}/passthrough/preview"),
        json!({ "post": op("previewPassthrough", "The capture rules before and after a change, and their diff", "passthrough",
            csrf_params.clone(), Some(body("Passthrough", true)),
            responses(&[("200", ok("Preview", r("Preview")))], &post_errors)) }),
    );
    paths.insert(
        format!("{w}/restart"),
        json!({ "post": op("restartWorkload", "Rolling restart; follow the operation", "operations", csrf_params.clone(), None,
            responses(&[("202", ok("Started", r("Operation")))], SECURED)) }),
    );
    paths.insert(
        format!("{w}/check"),
        json!({ "post": op("checkWorkload", "Make a request and report whether it went through the sidecar", "check",
            csrf_params, Some(body("CheckRequest", false)),
            responses(&[("200", ok("Report", r("CheckReport")))], &post_errors)) }),
    );
    paths.insert(
        format!("{w}/bypass"),
        json!({ "get": op("getBypass", "Counters of the live passthrough rules", "check", wl_params(), None,
            responses(&[("200", ok("Counters", r("BypassReport")))], SECURED)) }),
    );
    paths.insert(
        "/api/v1/operations/{id}".into(),
        json!({ "get": op("getOperation", "A restart's progress (the last 100 are kept)", "operations",
            json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }]), None,
            responses(&[("200", ok("The operation", r("Operation")))], &[400, 401, 404, 500])) }),
    );
    paths.insert(
        "/api/v1/audit".into(),
        json!({ "get": op("listAudit", "The audit log, newest first", "audit",
            json!([{ "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0, "maximum": 10000, "default": 100 } }]), None,
            responses(&[("200", ok("Entries", r("AuditList")))], &[400, 401, 500])) }),
    );
    paths.insert(
        "/metrics".into(),
        json!({ "get": op("metrics", "Prometheus metrics", "metrics", json!([]), None,
            responses(&[("200", text("text/plain", "Prometheus text exposition 0.0.4"))], &[401, 500])) }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "meshpass management API",
            "version": "1",
            "description": "Traffic passthrough settings of sidecar-meshed workloads (Istio's traffic.sidecar.istio.io annotations), restarts, checks and rule counters. See crates/api/API.md.",
        },
        "servers": [{ "url": "/" }],
        "security": secured(),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "The token in <state-dir>/api-token" },
                "session": { "type": "apiKey", "in": "cookie", "name": "meshpass_session", "description": "Browser session from the login URL; writes also need X-CSRF-Token" },
            },
            "parameters": {
                "ns": { "name": "ns", "in": "path", "required": true, "description": "namespace (DNS-1123 label)",
                    "example": "default",
                    "schema": { "type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" } },
                "name": { "name": "name", "in": "path", "required": true, "description": "workload name (DNS-1123 subdomain)",
                    "example": "helloworld-v1",
                    "schema": { "type": "string", "maxLength": 253, "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$" } },
                "ifMatch": { "name": "If-Match", "in": "header", "required": true, "schema": { "type": "string", "minLength": 1, "pattern": "\\S" },
                    "description": "`\"RESOURCE_VERSION\"` from the ETag. A PUT may name the version in its body's resourceVersion instead, a DELETE in ?resourceVersion=; with neither the write is refused with 428; when both are given and differ, 409" },
                "csrf": { "name": "X-CSRF-Token", "in": "header", "required": false, "schema": { "type": "string" },
                    "description": "required with the session cookie (from GET /api/v1/session); not with a bearer token" },
            },
            "responses": error_responses(),
            "schemas": schemas(),
        },
    })
}
