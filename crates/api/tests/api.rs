//! The API end to end over [`FakeBackend`]: routes through `tower::ServiceExt::oneshot`, and
//! the [`Client`] against a real listener on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use meshpass_api::backend::BackendError;
use meshpass_api::fake::{FakeBackend, FakeCall};
use meshpass_api::model::{
    AuditEntry, CheckRequest, Direction, OperationState, Passthrough, PassthroughDoc, PassthroughUpdate, Verdict,
    WorkloadRef,
};
use meshpass_api::server::{routes, Reuse, Server};
use meshpass_api::NamedBackend;
use meshpass_api::{router, AppState, BackendKind, Client, ClientError, ServerConfig};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const INBOUND: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
const HW: &str = "/api/v1/namespaces/default/workloads/helloworld-v1";
const W: &str = "/api/v1/namespaces/{ns}/workloads/{name}";

struct Env {
    fake: Arc<FakeBackend>,
    router: Router,
    token: String,
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
}

fn env_with(fake: FakeBackend) -> Env {
    fake.set_restart_step(Duration::from_millis(0));
    let fake = Arc::new(fake);
    let dir = tempfile::tempdir().unwrap();
    let token = meshpass_api::auth::load_or_create_token(dir.path()).unwrap();
    // Every read goes to the backend here, so that a test sees each change at once (reuse has
    // a test of its own).
    let reuse = Reuse { list_ttl: Duration::ZERO, metrics_interval: Duration::ZERO, ..Reuse::default() };
    let auth = meshpass_api::auth::Auth::new(token.clone(), meshpass_api::auth::SESSION_TTL);
    let app = AppState::with_reuse(fake.clone(), auth, dir.path(), reuse);
    Env { router: router(app), fake, token, dir: dir.path().to_path_buf(), _dir: dir }
}

fn env() -> Env {
    env_with(FakeBackend::sample())
}

/// A server over two fake clusters, `east` and `west`, both holding the sample mesh (so every
/// workload name is in both); `fake` is east's.
struct Clusters {
    env: Env,
    west: Arc<FakeBackend>,
}

fn two_clusters() -> Clusters {
    let (east, west) = (Arc::new(FakeBackend::sample()), Arc::new(FakeBackend::sample()));
    east.set_restart_step(Duration::from_millis(0));
    west.set_restart_step(Duration::from_millis(0));
    let dir = tempfile::tempdir().unwrap();
    let token = meshpass_api::auth::load_or_create_token(dir.path()).unwrap();
    let reuse = Reuse { list_ttl: Duration::ZERO, metrics_interval: Duration::ZERO, ..Reuse::default() };
    let auth = meshpass_api::auth::Auth::new(token.clone(), meshpass_api::auth::SESSION_TTL);
    let clusters = vec![NamedBackend::new("east", east.clone()), NamedBackend::new("west", west.clone())];
    let app = AppState::with_clusters(clusters, auth, dir.path(), reuse);
    let env = Env { router: router(app), fake: east, token, dir: dir.path().to_path_buf(), _dir: dir };
    Clusters { env, west }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> String {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    }
    /// Asserts a `422` whose errors name `item` of `field` (annotation `key`).
    fn assert_refused(&self, field: &str, key: &str, item: &str, case: &str) {
        assert_eq!(self.status, StatusCode::UNPROCESSABLE_ENTITY, "{case}: {}", self.text());
        let errors = self.json()["errors"].clone();
        assert!(
            errors.as_array().unwrap().iter().any(|x| x["item"] == item && x["key"] == key && x["field"] == field),
            "{case}: {errors}"
        );
    }
}

impl Env {
    async fn raw(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        Answer { status, headers, body }
    }

    /// With the bearer token.
    async fn call(&self, method: Method, uri: &str, extra: &[(&str, &str)], body: Option<&str>) -> Answer {
        let auth = format!("Bearer {}", self.token);
        let mut h = vec![("authorization", auth.as_str())];
        h.extend_from_slice(extra);
        self.raw(method, uri, &h, body).await
    }

    async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, &[], None).await
    }

    fn hw(&self) -> WorkloadRef {
        WorkloadRef::new("default", "helloworld-v1")
    }

    fn audit(&self) -> Vec<AuditEntry> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The backend state that a rejected request must leave alone.
    fn snapshot(&self) -> (std::collections::BTreeMap<String, String>, String) {
        (self.fake.template_annotations(&self.hw()), self.fake.resource_version(&self.hw()))
    }

    async fn wait_op(&self, id: &str) -> Value {
        for _ in 0..200 {
            let op = self.get(&format!("/api/v1/operations/{id}")).await.json();
            if op["state"] != "running" {
                return op;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("operation {id} did not finish");
    }
}

#[tokio::test]
async fn public_routes_need_no_token() {
    let e = env();
    let h = e.raw(Method::GET, "/healthz", &[], None).await;
    assert_eq!((h.status, h.text().as_str()), (StatusCode::OK, "ok\n"));
    let o = e.raw(Method::GET, "/api/v1/openapi.json", &[], None).await;
    assert_eq!(o.status, StatusCode::OK);
    assert_eq!(o.json()["openapi"], "3.1.0");
    for (path, ct) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/logic.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
        ("/", "text/html"),
    ] {
        let a = e.raw(Method::GET, path, &[], None).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert!(a.header("content-type").starts_with(ct), "{path}: {}", a.header("content-type"));
        assert_eq!(a.header("cache-control"), "no-store");
        assert_eq!(a.header("content-security-policy"), "default-src 'self'");
    }
    // Without a session, / is the login page, not the GUI.
    let page = e.raw(Method::GET, "/", &[], None).await.text();
    assert!(page.contains("login URL"), "{page}");
}

#[tokio::test]
async fn every_protected_route_answers_401_without_or_with_a_wrong_token() {
    let e = env();
    for spec in routes().into_iter().filter(|r| r.auth) {
        let uri = spec.path.replace("{ns}", "default").replace("{name}", "helloworld-v1").replace("{id}", "op-1");
        for headers in [vec![], vec![("authorization", "Bearer wrong")], vec![("authorization", "Basic abc")]] {
            let a = e.raw(spec.method.clone(), &uri, &headers, Some("{}")).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{spec:?} {headers:?}");
            assert_eq!(a.header("www-authenticate"), "Bearer");
            assert_eq!(a.json()["error"], "unauthorized");
        }
    }
    let s = e.get("/api/v1/session").await.json();
    assert_eq!(
        s,
        json!({"backend": "local", "csrfToken": null, "auth": "bearer", "ruleFormat": "nft", "clusters": ["local"]})
    );
}

#[tokio::test]
async fn cookie_login_and_csrf() {
    let e = env();
    let bad = e.raw(Method::GET, "/?token=nope", &[], None).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.header("content-type").starts_with("text/html"));

    let login = e.raw(Method::GET, &format!("/?token={}", e.token), &[], None).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    assert_eq!(login.header("location"), "/");
    let cookie = login.header("set-cookie");
    assert!(cookie.starts_with("meshpass_session="), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.split("; ").any(|f| f == flag), "{flag} missing in {cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_string();
    let sid: String = pair.trim_start_matches("meshpass_session=").chars().take(8).collect();
    let c = [("cookie", pair.as_str())];

    let gui = e.raw(Method::GET, "/", &c, None).await;
    assert_eq!(gui.text(), include_str!("../assets/index.html"));
    let s = e.raw(Method::GET, "/api/v1/session", &c, None).await.json();
    assert_eq!(s["auth"], "session");
    let csrf = s["csrfToken"].as_str().unwrap().to_string();
    assert_eq!(csrf.len(), 64);

    // Reads need no CSRF token; writes do.
    assert_eq!(e.raw(Method::GET, "/api/v1/workloads", &c, None).await.status, StatusCode::OK);
    let body = r#"{"inboundPorts":["5000"]}"#;
    let before = e.snapshot();
    for h in [vec![c[0], ("if-match", "\"1\"")], vec![c[0], ("if-match", "\"1\""), ("x-csrf-token", "wrong")]] {
        let a = e.raw(Method::PUT, &format!("{HW}/passthrough"), &h, Some(body)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(a.json()["error"], "csrf");
    }
    let restart = e.raw(Method::POST, &format!("{HW}/restart"), &c, None).await;
    assert_eq!(restart.status, StatusCode::FORBIDDEN);
    assert_eq!(e.snapshot(), before);
    // The refusals are audited, naming the session and the reason.
    let audit = e.audit();
    assert_eq!(
        audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        ["passthrough.set", "passthrough.set", "restart"]
    );
    for a in &audit {
        assert_eq!(
            (a.actor.as_str(), a.status, a.error.as_deref()),
            (format!("session:{sid}").as_str(), Some(403), Some("csrf"))
        );
        assert!(a.result.contains("X-CSRF-Token"), "{}", a.result);
    }

    let h = [c[0], ("if-match", "\"1\""), ("x-csrf-token", csrf.as_str())];
    let ok = e.raw(Method::PUT, &format!("{HW}/passthrough"), &h, Some(body)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let audit = e.audit();
    assert_eq!(audit.len(), 4);
    assert_eq!(audit[3].actor, format!("session:{sid}"));
    assert_eq!((audit[3].result.as_str(), audit[3].status), ("ok", Some(200)));

    // An attempt without any credential is audited as anonymous.
    let anon = e.raw(Method::DELETE, &format!("{HW}/passthrough"), &[], None).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    let last = e.audit().pop().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.action.as_str(), last.error.as_deref()),
        ("anonymous", "passthrough.clear", Some("unauthorized"))
    );

    // Sign-out ends the session on the server: the same cookie opens nothing any more.
    let bye = e.raw(Method::DELETE, "/api/v1/session", &c, None).await;
    assert_eq!(bye.status, StatusCode::FORBIDDEN, "sign-out is a write: it needs the CSRF token");
    let bye = e.raw(Method::DELETE, "/api/v1/session", &[c[0], ("x-csrf-token", csrf.as_str())], None).await;
    assert_eq!(bye.status, StatusCode::NO_CONTENT);
    assert!(bye.header("set-cookie").contains("Max-Age=0"), "{}", bye.header("set-cookie"));
    let after = e.raw(Method::GET, "/api/v1/session", &c, None).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert!(after.json()["message"].as_str().unwrap().contains("ended"));
    assert!(e.raw(Method::GET, "/", &c, None).await.text().contains("login URL"));
    let bearer = e.call(Method::DELETE, "/api/v1/session", &[], None).await;
    assert_eq!(bearer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn workloads_list_filter_sort_and_names() {
    let e = env();
    let all = e.get("/api/v1/workloads").await.json();
    let names: Vec<&str> = all["items"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["helloworld-v1", "sleep", "external"]);
    let hw = &all["items"][0];
    assert_eq!(hw["status"], "Injected");
    assert_eq!(hw["services"][0]["clusterIp"], "198.19.0.10");
    assert_eq!(all["items"][2]["status"], "Uninjected");
    let ns = e.get("/api/v1/workloads?namespace=external").await.json();
    assert_eq!(ns["items"].as_array().unwrap().len(), 1);
    let search = e.get("/api/v1/workloads?search=HELLO").await.json();
    assert_eq!(search["items"][0]["name"], "helloworld-v1");
    let by_name = e.get("/api/v1/workloads?sort=name").await.json();
    assert_eq!(by_name["items"][0]["name"], "external");
    for q in ["sort=size", "sort="] {
        let bad = e.get(&format!("/api/v1/workloads?{q}")).await;
        assert_eq!((bad.status, bad.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")), "{q}");
    }

    let one = e.get(HW).await;
    assert_eq!(one.json()["passthrough"]["inboundPorts"], json!([]));
    let missing = e.get("/api/v1/namespaces/default/workloads/nope").await;
    assert_eq!((missing.status, missing.json()["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    for uri in ["/api/v1/namespaces/Default/workloads/x", "/api/v1/namespaces/default/workloads/Bad_Name"] {
        let a = e.get(uri).await;
        assert_eq!((a.status, a.json()["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")), "{uri}");
    }
    let nowhere = e.get("/api/v1/nothing").await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    e.fake.fail_next(FakeCall::List, BackendError::unavailable("cluster down"));
    let down = e.get("/api/v1/workloads").await;
    assert_eq!((down.status, down.json()["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")));
}

#[tokio::test]
async fn rejected_writes_change_nothing() {
    let e = env();
    let url = format!("{HW}/passthrough");
    let get = e.get(&url).await;
    assert_eq!(get.header("etag"), "\"1\"");
    let before = e.snapshot();

    // 428 without a precondition.
    let a = e.call(Method::PUT, &url, &[], Some(r#"{"inboundPorts":["5000"]}"#)).await;
    assert_eq!(
        (a.status, a.json()["error"].as_str()),
        (StatusCode::PRECONDITION_REQUIRED, Some("precondition_required"))
    );
    let a = e.call(Method::DELETE, &url, &[], None).await;
    assert_eq!(a.status, StatusCode::PRECONDITION_REQUIRED);

    // 409 on a stale version (If-Match, body and query forms).
    let a = e.call(Method::PUT, &url, &[("if-match", "\"0\"")], Some(r#"{"inboundPorts":["5000"]}"#)).await;
    assert_eq!((a.status, a.json()["error"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    let a = e.call(Method::PUT, &url, &[], Some(r#"{"inboundPorts":["5000"],"resourceVersion":"7"}"#)).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let a = e.call(Method::DELETE, &format!("{url}?resourceVersion=7"), &[], None).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    // Two different versions named: at most one is current, so a conflict either way.
    let a = e
        .call(Method::PUT, &url, &[("if-match", "\"1\"")], Some(r#"{"inboundPorts":["5000"],"resourceVersion":"2"}"#))
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let a = e.call(Method::PUT, &url, &[("if-match", " ")], Some(r#"{"inboundPorts":["5000"]}"#)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    // 422 with one entry per bad item, the engine's messages.
    let a =
        e.call(Method::PUT, &url, &[("if-match", "\"1\"")], Some(r#"{"inboundPorts":["70000","abc","5000"]}"#)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = a.json();
    assert_eq!(body["error"], "invalid");
    assert_eq!(
        body["errors"],
        json!([
            {"field": "inboundPorts", "key": INBOUND, "item": "70000", "reason": "is not a port (1-65535)"},
            {"field": "inboundPorts", "key": INBOUND, "item": "abc", "reason": "is not a port (1-65535)"},
        ])
    );
    assert_eq!(
        body["message"],
        format!("{INBOUND}: \"70000\" is not a port (1-65535)\n{INBOUND}: \"abc\" is not a port (1-65535)")
    );
    let a = e
        .call(
            Method::PUT,
            &url,
            &[("if-match", "\"1\"")],
            Some(r#"{"outboundIpRanges":["10.0.0.0/8","300.1.1.1/8"],"outboundPorts":["0"],"interceptionMode":"tproxy"}"#),
        )
        .await;
    let fields: Vec<String> =
        a.json()["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_string()).collect();
    assert_eq!(fields, vec!["outboundPorts", "outboundIpRanges", "interceptionMode"]);

    // 400 for malformed bodies: serde's message, never a 500.
    for bad in ["{", r#"{"inboundPorts":"5000"}"#, r#"{"inboundPort":["5000"]}"#, "", "[]"] {
        let a = e.call(Method::PUT, &url, &[("if-match", "\"1\"")], Some(bad)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(a.json()["message"].as_str().unwrap().starts_with("invalid JSON body: "), "{bad}");
    }
    let a = e.call(Method::PUT, &url, &[("if-match", "\"1\"")], Some(r#"{"inboundPort":["5000"]}"#)).await;
    assert!(a.json()["message"].as_str().unwrap().contains("unknown field `inboundPort`"));

    assert_eq!(e.snapshot(), before);
    // Every refused attempt is audited, with the caller, the status and the reason.
    let audit = e.audit();
    let codes: Vec<(Option<u16>, Option<&str>)> = audit.iter().map(|a| (a.status, a.error.as_deref())).collect();
    let mut want = vec![(Some(428), Some("precondition_required")); 2];
    want.extend([(Some(409), Some("conflict")); 4]);
    want.push((Some(400), Some("bad_request")));
    want.extend([(Some(422), Some("invalid")); 2]);
    want.extend([(Some(400), Some("bad_request")); 6]);
    assert_eq!(codes, want);
    assert!(audit.iter().all(|a| a.result != "ok" && a.actor == "bearer" && a.name == "helloworld-v1"));
    assert_eq!(audit[1].action, "passthrough.clear");
    let invalid = &audit[7];
    assert!(invalid.result.contains("\"70000\" is not a port"), "{}", invalid.result);
    assert_eq!(
        invalid.after.as_ref().map(|p| p.inbound_ports.clone()),
        Some(vec!["70000".into(), "abc".into(), "5000".into()])
    );
    assert_eq!(invalid.before.as_ref().map(|p| p.inbound_ports.len()), Some(0));
    assert!(audit[9].result.starts_with("invalid JSON body"), "{}", audit[9].result);

    // The race between the server's read and its write: the backend refuses, nothing written,
    // the attempt is audited with its error.
    e.fake.concurrent_write_before_next_patch();
    let a = e.call(Method::PUT, &url, &[("if-match", "\"1\"")], Some(r#"{"inboundPorts":["5000"]}"#)).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(e.fake.template_annotations(&e.hw()), before.0);
    let audit = e.audit();
    assert_eq!(audit.len(), want.len() + 1, "one entry for the attempt");
    let raced = audit.last().unwrap();
    assert!(raced.result.contains("changed since version 1"), "{}", raced.result);
    assert_eq!((raced.status, raced.error.as_deref()), (Some(409), Some("conflict")));

    // A backend failure on write: mapped, audited, nothing written.
    let rv = e.fake.resource_version(&e.hw());
    e.fake.fail_next(FakeCall::Patch, BackendError::forbidden("RBAC says no"));
    let a =
        e.call(Method::PUT, &url, &[("if-match", &format!("\"{rv}\""))], Some(r#"{"inboundPorts":["5000"]}"#)).await;
    assert_eq!((a.status, a.json()["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    assert_eq!(e.fake.template_annotations(&e.hw()), before.0);
    assert!(e.audit().iter().all(|a| a.result != "ok"));
    let metrics = e.get("/metrics").await.text();
    assert!(metrics.contains("meshpass_passthrough_changes_total{result=\"invalid\"} 2"), "{metrics}");
    assert!(metrics.contains("meshpass_passthrough_changes_total{result=\"conflict\"} 4"), "{metrics}");
    assert!(metrics.contains("meshpass_passthrough_changes_total{result=\"error\"} 1"), "{metrics}");
}

#[tokio::test]
async fn put_restart_and_clear() {
    let e = env();
    let url = format!("{HW}/passthrough");
    e.fake.set_template_annotation(&e.hw(), "sidecar.istio.io/proxyCPU", "100m");
    let rv = e.fake.resource_version(&e.hw());
    let body = r#"{"inboundPorts":["5000"],"outboundIpRanges":["203.0.113.0/24"]}"#;
    let a = e.call(Method::PUT, &url, &[("if-match", &format!("\"{rv}\""))], Some(body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let doc: PassthroughDoc = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(a.header("etag"), format!("\"{}\"", doc.resource_version));
    assert_ne!(doc.resource_version, rv);
    assert_eq!(doc.settings.inbound_ports, vec!["5000"]);
    assert_eq!(doc.annotations.len(), 2);
    assert!(doc.warnings[0].starts_with("Port 5000 of default/helloworld-v1 is excluded from its sidecar"));
    assert!(doc.operation.is_none());
    let tmpl = e.fake.template_annotations(&e.hw());
    assert_eq!(tmpl[INBOUND], "5000");
    assert_eq!(tmpl["sidecar.istio.io/proxyCPU"], "100m", "other annotations are kept");
    assert_eq!(e.get(HW).await.json()["status"], "Pending restart");

    // Before the restart the pods still run with the sidecar in front of 5000.
    let c = e.call(Method::POST, &format!("{HW}/check"), &[], None).await.json();
    assert_eq!(c["verdict"], "sidecar");

    // Same values again with restart: no write, a restart operation.
    let rv2 = doc.resource_version.clone();
    let again = format!(
        r#"{{"inboundPorts":["5000"],"outboundIpRanges":["203.0.113.0/24"],"restart":true,"resourceVersion":"{rv2}"}}"#
    );
    let a = e.call(Method::PUT, &url, &[], Some(&again)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let doc: PassthroughDoc = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(doc.resource_version, rv2, "no-op write keeps the version");
    let op = doc.operation.unwrap();
    assert_eq!(op.state, OperationState::Running);
    let done = e.wait_op(&op.id).await;
    assert_eq!(done["state"], "succeeded");
    assert!(done["progress"].as_array().unwrap().len() >= 3, "{done}");
    assert!(done["finishedAt"].is_string());
    assert_eq!(e.get(HW).await.json()["status"], "Injected");
    assert_eq!(e.fake.running_annotations(&e.hw()), e.fake.template_annotations(&e.hw()));

    let c = e.call(Method::POST, &format!("{HW}/check"), &[], Some(r#"{"port":5000,"path":"/hello"}"#)).await.json();
    assert_eq!(c["verdict"], "passthrough");
    assert_eq!(c["statusLine"], "HTTP/1.0 200 OK");
    assert_eq!(c["headers"][0], json!(["Server", "helloworld/v1 (meshpass sample)"]));
    assert_eq!(c["target"], "GET http://198.19.0.10:5000/hello");

    let b = e.get(&format!("{HW}/bypass")).await.json();
    let labels: Vec<&str> = b["items"].as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap()).collect();
    assert_eq!(labels, vec!["exclude-inbound-ports", "exclude-outbound-ip-ranges"]);
    assert!(b["totals"]["inbound"]["packets"].as_u64().unwrap() >= 1);
    assert!(b["totals"]["outbound"]["packets"].as_u64().unwrap() >= 1);

    let out = e
        .call(Method::POST, &format!("{HW}/check"), &[], Some(r#"{"direction":"outbound","target":"203.0.113.5:443"}"#))
        .await
        .json();
    assert_eq!(out["verdict"], "passthrough");

    // Clear (query version, restart): all seven gone, others kept.
    let rv3 = e.fake.resource_version(&e.hw());
    let a = e.call(Method::DELETE, &format!("{url}?restart=true&resourceVersion={rv3}"), &[], None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let doc: PassthroughDoc = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(doc.settings, Passthrough::default());
    assert!(doc.annotations.is_empty());
    assert_eq!(e.wait_op(&doc.operation.unwrap().id).await["state"], "succeeded");
    let tmpl = e.fake.template_annotations(&e.hw());
    assert!(!tmpl.contains_key(INBOUND) && tmpl.contains_key("sidecar.istio.io/proxyCPU"));
    let c = e.call(Method::POST, &format!("{HW}/check"), &[], None).await.json();
    assert_eq!(c["verdict"], "sidecar");
    assert!(c["headers"].as_array().unwrap().contains(&json!(["server", "istio-envoy"])));
    assert!(c["headers"]
        .as_array()
        .unwrap()
        .contains(&json!(["x-envoy-decorator-operation", "helloworld.default.svc.cluster.local:5000/*"])));

    // Audit: newest first, the set, two restarts and the clear.
    let audit = e.get("/api/v1/audit").await.json();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["restart", "passthrough.clear", "restart", "passthrough.set"]);
    let first = &audit["items"][3];
    assert_eq!(first["actor"], "bearer");
    assert_eq!(first["before"]["inboundPorts"], json!([]));
    assert_eq!(first["after"]["inboundPorts"], json!(["5000"]));
    assert_eq!(first["result"], "ok");
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(e.get("/api/v1/audit?limit=1").await.json()["items"].as_array().unwrap().len(), 1);
    assert_eq!(e.get("/api/v1/audit?limit=x").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(e.get("/api/v1/audit?limit=10001").await.status, StatusCode::BAD_REQUEST);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(e.dir.join("audit.log")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn restart_operations() {
    let e = env();
    let a = e.call(Method::POST, &format!("{HW}/restart"), &[], None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let op = a.json();
    assert_eq!((op["kind"].as_str(), op["state"].as_str()), (Some("restart"), Some("running")));
    let done = e.wait_op(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["error"], Value::Null);

    e.fake.fail_next(FakeCall::Restart, BackendError::failed("pods never became ready"));
    let op = e.call(Method::POST, &format!("{HW}/restart"), &[], None).await.json();
    let done = e.wait_op(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["error"], "pods never became ready");
    let audit = e.audit();
    assert_eq!(audit.iter().map(|a| a.result.as_str()).collect::<Vec<_>>(), vec!["ok", "pods never became ready"]);

    assert_eq!(e.get("/api/v1/operations/op-nope").await.status, StatusCode::NOT_FOUND);

    // Only the last 100 operations are kept.
    let mut ids = Vec::new();
    for _ in 0..101 {
        let op = e.call(Method::POST, "/api/v1/namespaces/default/workloads/sleep/restart", &[], None).await.json();
        ids.push(op["id"].as_str().unwrap().to_string());
    }
    for id in &ids[1..] {
        e.wait_op(id).await;
    }
    assert_eq!(e.get(&format!("/api/v1/operations/{}", ids[0])).await.status, StatusCode::NOT_FOUND);
    assert_eq!(e.get(&format!("/api/v1/operations/{}", ids[1])).await.status, StatusCode::OK);
    let missing = e.call(Method::POST, "/api/v1/namespaces/default/workloads/nope/restart", &[], None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn preview_diff_and_errors() {
    let e = env();
    let url = format!("{HW}/passthrough/preview");
    let p = e.call(Method::POST, &url, &[], Some(r#"{"inboundPorts":["5000"]}"#)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text());
    let p = p.json();
    assert_eq!(p["format"], "nft");
    assert!(p["current"].as_str().unwrap().contains("table inet meshpass"));
    let added: Vec<&str> =
        p["diff"].as_array().unwrap().iter().filter(|d| d["op"] == "+").map(|d| d["line"].as_str().unwrap()).collect();
    // The operator's port has a rule (and counter) of its own, apart from the sidecar's ports.
    assert!(
        added.iter().any(|l| l.contains("tcp dport 5000 counter return comment \"exclude-inbound-ports\"")),
        "{added:?}"
    );
    assert!(p["istioArgs"]["proposed"].as_array().unwrap().contains(&json!("15090,15021,5000,15020")));
    assert!(p["istioArgs"]["current"].as_array().unwrap().contains(&json!("15090,15021,15020")));
    assert_eq!(p["warnings"].as_array().unwrap().len(), 1);

    let bad = e.call(Method::POST, &url, &[], Some(r#"{"inboundPorts":["x"]}"#)).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json()["errors"][0]["item"], "x");
    assert_eq!(e.call(Method::POST, &url, &[], Some("nope")).await.status, StatusCode::BAD_REQUEST);

    let ext = e
        .call(Method::POST, "/api/v1/namespaces/external/workloads/external/passthrough/preview", &[], Some("{}"))
        .await
        .json();
    assert_eq!((ext["current"].as_str(), ext["proposed"].as_str()), (Some(""), Some("")));
    assert!(ext["warnings"][0].as_str().unwrap().contains("has no sidecar"));

    let k = env_with(FakeBackend::sample().with_kind(BackendKind::Kube, meshpass_api::model::RuleFormat::Iptables));
    let p = k.call(Method::POST, &url, &[], Some(r#"{"inboundPorts":["5000"]}"#)).await.json();
    assert_eq!(p["format"], "iptables");
    assert!(p["diff"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["op"] == "+" && d["line"].as_str().unwrap().contains("--dport 5000")));
    let s = k.get("/api/v1/session").await.json();
    assert_eq!((s["backend"].as_str(), s["ruleFormat"].as_str()), (Some("kube"), Some("iptables")));
    let b = k.get(&format!("{HW}/bypass")).await;
    assert_eq!((b.status, b.json()["error"].as_str()), (StatusCode::NOT_IMPLEMENTED, Some("unsupported")));
    // Unsupported counters are skipped silently in metrics.
    let m = k.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.text().contains("meshpass_scrape_errors_total 0"));
}

#[tokio::test]
async fn passthrough_impact_fix_clients_and_removal() {
    let e = env();
    let preview = format!("{HW}/passthrough/preview");
    // Excluding 5000: sleep's sidecar keeps sending mutual TLS to a port the app now receives.
    let p = e.call(Method::POST, &preview, &[], Some(r#"{"inboundPorts":["5000"]}"#)).await.json();
    let impact = p["impact"].as_array().unwrap();
    assert_eq!(impact.len(), 1, "{p:#}");
    assert_eq!(
        (&impact[0]["client"], &impact[0]["port"], &impact[0]["effect"], &impact[0]["direction"]),
        (&json!("default/sleep"), &json!(5000), &json!("fails"), &json!("inbound"))
    );
    assert_eq!((&impact[0]["mtlsBefore"], &impact[0]["mtlsAfter"]), (&json!(true), &json!(false)));
    assert_eq!(p["fixes"][0]["name"], "helloworld-passthrough-5000");
    assert_eq!(p["fixes"][0]["kind"], "DestinationRule");
    assert_eq!(p["fixes"][0]["host"], "helloworld.default.svc.cluster.local");
    assert!(p["fixes"][0]["yaml"].as_str().unwrap().contains("mode: DISABLE"), "{p:#}");
    // With the fix: the calls keep working, in plaintext.
    let p =
        e.call(Method::POST, &format!("{preview}?fixClients=true"), &[], Some(r#"{"inboundPorts":["5000"]}"#)).await;
    assert_eq!(p.json()["impact"][0]["effect"], "loses-mtls", "{}", p.text());
    let bad = e.call(Method::POST, &format!("{preview}?fixClient=true"), &[], Some("{}")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "a misspelt query parameter is refused: {}", bad.text());
    // A port nobody calls through a Service: no impact, no fix.
    let p = e.call(Method::POST, &preview, &[], Some(r#"{"inboundPorts":["7777"]}"#)).await.json();
    assert_eq!((p["impact"].as_array().unwrap().len(), p["fixes"].as_array().unwrap().len()), (0, 0), "{p:#}");

    // The write with the fix: the impact is computed before writing, the rule created.
    let url = format!("{HW}/passthrough");
    let rv = e.fake.resource_version(&e.hw());
    let body = format!(r#"{{"inboundPorts":["5000"],"fixClients":true,"resourceVersion":"{rv}"}}"#);
    let a = e.call(Method::PUT, &url, &[], Some(&body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let doc: PassthroughDoc = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(doc.impact.len(), 1);
    assert_eq!(doc.impact[0].effect, meshpass_api::model::ImpactEffect::LosesMtls);
    assert_eq!(doc.created.len(), 1);
    assert_eq!(doc.created[0].name, "helloworld-passthrough-5000");
    assert_eq!(e.fake.policies().len(), 1);
    let audit = e.audit();
    assert!(
        audit.iter().any(|a| a.action == "destinationrule.create"
            && a.name == "helloworld-passthrough-5000"
            && a.result == "ok"),
        "{audit:?}"
    );
    // Now that the rule exists, sleep already speaks plaintext to that port: nothing to fix.
    let p = e.call(Method::POST, &preview, &[], Some(r#"{"inboundPorts":["5000"]}"#)).await.json();
    assert_eq!(p["impact"][0]["effect"], "works", "{p:#}");
    assert_eq!(p["fixes"].as_array().unwrap().len(), 0, "{p:#}");
    // Clearing the exclusion: the preview says the rule goes, the write removes it.
    let p = e.call(Method::POST, &preview, &[], Some("{}")).await.json();
    assert_eq!(p["removes"][0]["name"], "helloworld-passthrough-5000", "{p:#}");
    let rv = e.fake.resource_version(&e.hw());
    let a = e.call(Method::DELETE, &format!("{url}?resourceVersion={rv}"), &[], None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let doc: PassthroughDoc = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(doc.removed.len(), 1, "{doc:?}");
    assert!(e.fake.policies().is_empty());
    assert!(e.audit().iter().any(|a| a.action == "destinationrule.delete" && a.result == "ok"));
}

#[tokio::test]
async fn a_fix_that_cannot_be_made_changes_nothing() {
    let e = env();
    let url = format!("{HW}/passthrough");
    let before = e.snapshot();
    // The rule cannot be created: the annotations go back, nothing stays.
    e.fake.fail_next(FakeCall::CreatePolicy, BackendError::forbidden("create destinationrules"));
    let body = format!(r#"{{"inboundPorts":["5000"],"fixClients":true,"resourceVersion":"{}"}}"#, before.1);
    let a = e.call(Method::PUT, &url, &[], Some(&body)).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.text());
    let msg = a.json()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("DestinationRule default/helloworld-passthrough-5000") && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert_eq!(e.fake.template_annotations(&e.hw()), before.0);
    assert!(e.fake.policies().is_empty());
    assert!(e.audit().iter().any(|a| a.action == "destinationrule.create" && a.result.contains("forbidden")));

    // Without the mesh's policies the fix is refused before anything is written...
    e.fake.fail_next(FakeCall::MeshPolicies, BackendError::unavailable("cluster down"));
    let rv = e.fake.resource_version(&e.hw());
    let body = format!(r#"{{"inboundPorts":["5000"],"fixClients":true,"resourceVersion":"{rv}"}}"#);
    let a = e.call(Method::PUT, &url, &[], Some(&body)).await;
    assert!(
        a.json()["message"].as_str().unwrap().contains("fixClients needs the mesh's mutual-TLS policies"),
        "{}",
        a.text()
    );
    assert_eq!(e.fake.template_annotations(&e.hw()), before.0);
    // ...while a change without the fix goes ahead, with a warning that the impact is unknown.
    e.fake.fail_next(FakeCall::MeshPolicies, BackendError::unavailable("cluster down"));
    let body = format!(r#"{{"inboundPorts":["5000"],"resourceVersion":"{rv}"}}"#);
    let a = e.call(Method::PUT, &url, &[], Some(&body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let doc: PassthroughDoc = serde_json::from_slice(&a.body).unwrap();
    assert!(doc.impact.is_empty());
    assert!(
        doc.warnings.iter().any(|w| w.contains("was not computed") && w.contains("cluster down")),
        "{:?}",
        doc.warnings
    );
}

#[tokio::test]
async fn strict_servers_refuse_what_an_outbound_exclusion_sends() {
    let e = env();
    e.fake
        .apply_policies(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
        )
        .unwrap();
    let p = e
        .call(
            Method::POST,
            "/api/v1/namespaces/default/workloads/sleep/passthrough/preview",
            &[],
            Some(r#"{"outboundIpRanges":["198.19.0.10/32"]}"#),
        )
        .await
        .json();
    let impact = p["impact"].as_array().unwrap();
    assert_eq!(impact.len(), 1, "{p:#}");
    assert_eq!(
        (&impact[0]["direction"], &impact[0]["client"], &impact[0]["server"], &impact[0]["effect"]),
        (&json!("outbound"), &json!("default/sleep"), &json!("default/helloworld-v1"), &json!("fails"))
    );
    assert!(impact[0]["reason"].as_str().unwrap().contains("STRICT"), "{p:#}");
    // Excluding a STRICT inbound port opens it to plaintext: said as a warning.
    let p = e
        .call(Method::POST, &format!("{HW}/passthrough/preview"), &[], Some(r#"{"inboundPorts":["5000"]}"#))
        .await
        .json();
    assert!(p["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("STRICT")), "{p:#}");
}

/// The check reports the hop's mutual TLS and both identities: sleep → helloworld is mutual
/// TLS; an excluded inbound port makes sleep's mutual TLS fail at the app, the fix turns it
/// into plaintext past helloworld's sidecar; a STRICT port refuses the node's plaintext.
#[tokio::test]
async fn check_reports_mutual_tls_and_peer_identities() {
    let e = env();
    let sleep_check = "/api/v1/namespaces/default/workloads/sleep/check";
    let to_hw = r#"{"direction":"outbound","target":"http://198.19.0.10:5000/hello"}"#;
    let c = e.call(Method::POST, sleep_check, &[], Some(to_hw)).await.json();
    assert_eq!(
        (&c["verdict"], &c["mtls"], &c["statusLine"]),
        (&json!("sidecar"), &json!(true), &json!("HTTP/1.1 200 OK"))
    );
    assert_eq!(
        c["peerIdentities"],
        json!({"client": "spiffe://cluster.local/ns/default/sa/sleep", "server": "spiffe://cluster.local/ns/default/sa/default"}),
        "{c:#}"
    );
    assert!(c.get("error").is_none(), "{c:#}");
    // Inbound from the node: plaintext, no identities.
    let c = e.call(Method::POST, &format!("{HW}/check"), &[], None).await.json();
    assert_eq!((&c["mtls"], &c["peerIdentities"]), (&json!(false), &json!({"client": null, "server": null})));

    // Port 5000 excluded and restarted, no fix: sleep's sidecar still sends mutual TLS.
    let url = format!("{HW}/passthrough");
    let rv = e.fake.resource_version(&e.hw());
    let body = format!(r#"{{"inboundPorts":["5000"],"restart":true,"resourceVersion":"{rv}"}}"#);
    let doc = e.call(Method::PUT, &url, &[], Some(&body)).await.json();
    assert_eq!(e.wait_op(doc["operation"]["id"].as_str().unwrap()).await["state"], "succeeded");
    let c = e.call(Method::POST, sleep_check, &[], Some(to_hw)).await.json();
    assert_eq!((&c["verdict"], &c["mtls"], &c["statusLine"]), (&json!("passthrough"), &json!(false), &json!(null)));
    assert!(c["error"].as_str().unwrap().contains("received mutual TLS it cannot read"), "{c:#}");

    // With the fix: plaintext, straight to the app, answered.
    let rv = e.fake.resource_version(&e.hw());
    let body = format!(r#"{{"inboundPorts":["5000"],"fixClients":true,"resourceVersion":"{rv}"}}"#);
    assert_eq!(e.call(Method::PUT, &url, &[], Some(&body)).await.status, StatusCode::OK);
    let c = e.call(Method::POST, sleep_check, &[], Some(to_hw)).await.json();
    assert_eq!(
        (&c["verdict"], &c["mtls"], &c["statusLine"]),
        (&json!("passthrough"), &json!(false), &json!("HTTP/1.1 200 OK"))
    );
    assert!(c.get("error").is_none(), "{c:#}");

    // Cleared: mutual TLS again; STRICT refuses the node's plaintext, with the reason.
    let rv = e.fake.resource_version(&e.hw());
    let doc = e.call(Method::DELETE, &format!("{url}?restart=true&resourceVersion={rv}"), &[], None).await.json();
    assert_eq!(e.wait_op(doc["operation"]["id"].as_str().unwrap()).await["state"], "succeeded");
    assert_eq!(e.call(Method::POST, sleep_check, &[], Some(to_hw)).await.json()["mtls"], true);
    e.fake
        .apply_policies(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: hw, namespace: default}\nspec: {selector: {matchLabels: {app: helloworld}}, mtls: {mode: STRICT}}\n",
        )
        .unwrap();
    let c = e.call(Method::POST, &format!("{HW}/check"), &[], None).await.json();
    assert_eq!((&c["verdict"], &c["mtls"], &c["statusLine"]), (&json!("sidecar"), &json!(false), &json!(null)));
    assert!(c["error"].as_str().unwrap().contains("requires mutual TLS (PeerAuthentication STRICT)"), "{c:#}");
    assert_eq!(e.call(Method::POST, sleep_check, &[], Some(to_hw)).await.json()["mtls"], true);
}

#[tokio::test]
async fn check_errors() {
    let e = env();
    let url = format!("{HW}/check");
    let bad_port = e.call(Method::POST, &url, &[], Some(r#"{"port":1234}"#)).await;
    assert_eq!(bad_port.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad_body = e.call(Method::POST, &url, &[], Some(r#"{"direction":"sideways"}"#)).await;
    assert_eq!(bad_body.status, StatusCode::BAD_REQUEST);
    let out = e.call(Method::POST, &url, &[], Some(r#"{"direction":"outbound"}"#)).await;
    assert_eq!(out.status, StatusCode::UNPROCESSABLE_ENTITY);
    let ext = e.call(Method::POST, "/api/v1/namespaces/external/workloads/external/check", &[], None).await;
    assert_eq!(ext.status, StatusCode::UNPROCESSABLE_ENTITY, "external has no Service");
}

#[tokio::test]
async fn metrics_text() {
    let e = env();
    // Passthrough on `sleep`, whose counters are read (the first workload's read fails below).
    let sleep = WorkloadRef::new("default", "sleep");
    let rv = e.fake.resource_version(&sleep);
    let a = e
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/workloads/sleep/passthrough",
            &[("if-match", &rv)],
            Some(r#"{"inboundPorts":["5000"],"restart":true}"#),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    e.wait_op(a.json()["operation"]["id"].as_str().unwrap()).await;
    e.fake.fail_next(FakeCall::RuleCounters, BackendError::unavailable("netns gone"));
    let m = e.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.header("content-type").starts_with("text/plain; version=0.0.4"));
    let t = m.text();
    for want in [
        "meshpass_bypassed_packets_total{namespace=\"default\",workload=\"sleep\"",
        "direction=\"inbound\",rule=\"exclude-inbound-ports\"}",
        "meshpass_bypassed_bytes_total{",
        "meshpass_workloads{status=\"Injected\"} 2",
        "meshpass_workloads{status=\"Uninjected\"} 1",
        "meshpass_workloads{status=\"Pending restart\"} 0",
        "meshpass_api_requests_total{method=\"PUT\",route=\"/api/v1/namespaces/{ns}/workloads/{name}/passthrough\",code=\"200\"} 1",
        "meshpass_passthrough_changes_total{result=\"ok\"} 1",
        "meshpass_scrape_errors_total 1",
        "# TYPE meshpass_bypassed_packets_total counter",
    ] {
        assert!(t.contains(want), "{want} missing:\n{t}");
    }
    // One of the two meshed workloads failed: only the other one has series.
    assert_eq!(t.lines().filter(|l| l.starts_with("meshpass_bypassed_packets_total")).count(), 1, "{t}");
}

/// The document with every object schema closed (`unevaluatedProperties: false`): an answer
/// with a field the document does not name fails validation, as one lacking a required field
/// does.
fn closed(doc: &Value) -> Value {
    fn close(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                    m.insert("unevaluatedProperties".into(), json!(false));
                }
                m.values_mut().for_each(close);
            }
            Value::Array(a) => a.iter_mut().for_each(close),
            _ => {}
        }
    }
    let mut d = doc.clone();
    close(&mut d["components"]);
    // A schema used as a part of an `allOf` must stay open (its fields are evaluated together
    // with the other parts'): the composed schema is closed as a whole instead.
    let mut parts_named = Vec::new();
    for (_, schema) in d["components"]["schemas"].as_object_mut().unwrap().iter_mut() {
        if let Some(parts) = schema.get_mut("allOf").and_then(Value::as_array_mut) {
            for p in parts.iter_mut() {
                p.as_object_mut().unwrap().remove("unevaluatedProperties");
                if let Some(r) = p["$ref"].as_str() {
                    parts_named.push(r.rsplit('/').next().unwrap().to_string());
                }
            }
            schema.as_object_mut().unwrap().insert("unevaluatedProperties".into(), json!(false));
        }
    }
    for name in parts_named {
        d["components"]["schemas"][&name].as_object_mut().unwrap().remove("unevaluatedProperties");
    }
    d
}

/// Checks one answer against the document: its status is documented for the operation, its
/// content type is the documented one, and a JSON body validates against the documented
/// schema with every field named (`closed`). Returns the schema's name for the coverage check.
fn conforms(doc: &Value, method: &str, template: &str, a: &Answer, seen: &mut Vec<(String, Value)>) {
    let op = &doc["paths"][template][method.to_lowercase()];
    assert!(op.is_object(), "{method} {template} is not documented");
    let status = a.status.as_u16().to_string();
    let resp = &op["responses"][&status];
    assert!(resp.is_object(), "{method} {template} answered {status}, which the document does not list: {}", a.text());
    let Some(content) = resp["content"].as_object() else {
        assert!(a.body.is_empty(), "{method} {template} {status}: undocumented body {}", a.text());
        return;
    };
    let ct = a.header("content-type");
    let (media, spec) = content
        .iter()
        .find(|(m, _)| ct.starts_with(m.as_str()))
        .unwrap_or_else(|| panic!("{method} {template} {status}: content type {ct} not in {:?}", content.keys()));
    if media != "application/json" {
        return;
    }
    let mut root = closed(doc);
    root.as_object_mut().unwrap().insert("$ref".into(), json!("#/$defs/answer"));
    root.as_object_mut().unwrap().insert("$defs".into(), json!({ "answer": spec["schema"] }));
    let validator = jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("{template}: {e}"));
    let body = a.json();
    let errors: Vec<String> = validator.iter_errors(&body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{method} {template} {status}: {errors:#?}\n{body:#}");
    seen.push((spec["schema"]["$ref"].as_str().unwrap_or_default().to_string(), body));
}

#[tokio::test]
async fn openapi_documents_every_route_and_every_field_the_server_sends() {
    let e = env();
    let doc = e.raw(Method::GET, "/api/v1/openapi.json", &[], None).await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let table = routes();
    assert_eq!(table.len(), paths.values().map(|p| p.as_object().unwrap().len()).sum::<usize>());
    for spec in &table {
        let op = &paths[&spec.path][spec.method.as_str().to_lowercase()];
        let responses = op["responses"].as_object().unwrap();
        if spec.auth {
            assert!(responses.contains_key("401") && responses.contains_key("403"), "{spec:?} lacks 401/403");
            assert_eq!(op["security"], json!([{ "bearer": [] }, { "session": [] }]), "{spec:?}");
        } else {
            assert_eq!(op["security"], json!([]), "{spec:?}");
        }
        // Every path parameter of the template is declared.
        for p in spec.path.split('/').filter(|s| s.starts_with('{')) {
            let name = p.trim_matches(|c| c == '{' || c == '}');
            assert!(
                op["parameters"].as_array().unwrap().iter().any(|p| p["name"] == name && p["in"] == "path"),
                "{spec:?}: path parameter {name} not declared"
            );
        }
    }
    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        assert!(doc.pointer(r.trim_start_matches('#')).is_some(), "dangling {r}");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    // Real answers of every route, successes and errors, against the document.
    let mut seen = Vec::new();
    let pt = format!("{W}/passthrough");
    let mut check = |method: &str, template: &str, a: &Answer| conforms(&doc, method, template, a, &mut seen);
    check("GET", "/healthz", &e.raw(Method::GET, "/healthz", &[], None).await);
    check("GET", "/", &e.raw(Method::GET, "/", &[], None).await);
    check("GET", "/", &e.raw(Method::GET, "/?token=wrong", &[], None).await);
    let login = e.raw(Method::GET, &format!("/?token={}", e.token), &[], None).await;
    check("GET", "/", &login);
    let cookie = login.header("set-cookie").split(';').next().unwrap().to_string();
    check("GET", "/api/v1/session", &e.raw(Method::GET, "/api/v1/session", &[("cookie", &cookie)], None).await);
    check("GET", "/assets/app.js", &e.raw(Method::GET, "/assets/app.js", &[], None).await);
    check("GET", "/assets/logic.js", &e.raw(Method::GET, "/assets/logic.js", &[], None).await);
    check("GET", "/api/v1/session", &e.get("/api/v1/session").await);
    check("GET", "/api/v1/session", &e.raw(Method::GET, "/api/v1/session", &[], None).await);
    check("DELETE", "/api/v1/session", &e.call(Method::DELETE, "/api/v1/session", &[], None).await);
    check("GET", "/api/v1/workloads", &e.get("/api/v1/workloads").await);
    check("GET", "/api/v1/workloads", &e.get("/api/v1/workloads?sort=size").await);
    check("GET", W, &e.get(HW).await);
    check("GET", W, &e.get("/api/v1/namespaces/default/workloads/nope").await);
    check("GET", W, &e.get("/api/v1/namespaces/Default/workloads/x").await);
    check("GET", &pt, &e.get(&format!("{HW}/passthrough")).await);
    let url = format!("{HW}/passthrough");
    for (headers, body) in [
        (
            vec![("if-match", "\"1\"")],
            r#"{"inboundPorts":["5000"],"outboundIpRanges":["10.0.0.0/8"],"restart":true,"fixClients":true}"#,
        ),
        (
            vec![("if-match", "\"2\"")],
            r#"{"inboundPorts":["5000"],"includeInboundPorts":"*","includeOutboundPorts":"443","includeOutboundIpRanges":"*","interceptionMode":"TPROXY"}"#,
        ),
        (vec![("if-match", "\"1\"")], r#"{"inboundPorts":["5000"]}"#),
        (vec![], r#"{"inboundPorts":["5000"]}"#),
        (vec![("if-match", "\"9\"")], r#"{"inboundPorts":["x"]}"#),
        (vec![("if-match", "\"9\"")], r#"{"inboundPort":["5000"]}"#),
    ] {
        check("PUT", &pt, &e.call(Method::PUT, &url, &headers, Some(body)).await);
    }
    let rv = e.fake.resource_version(&e.hw());
    check("PUT", &pt, &e.call(Method::PUT, &url, &[("if-match", &rv)], Some(r#"{"inboundPorts":["x"]}"#)).await);
    let pv = format!("{W}/passthrough/preview");
    check("POST", &pv, &e.call(Method::POST, &format!("{HW}/passthrough/preview"), &[], Some("{}")).await);
    check("DELETE", &pt, &e.call(Method::DELETE, &format!("{url}?resourceVersion={rv}"), &[], None).await);
    check(
        "POST",
        &pv,
        &e.call(Method::POST, &format!("{HW}/passthrough/preview"), &[], Some(r#"{"inboundPorts":["5000"]}"#)).await,
    );
    check(
        "POST",
        &pv,
        &e.call(Method::POST, &format!("{HW}/passthrough/preview"), &[], Some(r#"{"inboundPorts":["x"]}"#)).await,
    );
    let big = format!(r#"{{"inboundPorts":["{}"]}}"#, "1".repeat(100_000));
    check("POST", &pv, &e.call(Method::POST, &format!("{HW}/passthrough/preview"), &[], Some(&big)).await);
    // Checks with mutual TLS and identities, and one that fails (the error): STRICT refuses
    // the node's plaintext.
    let ck = format!("{W}/check");
    let sleep_check = "/api/v1/namespaces/default/workloads/sleep/check";
    let to_hw = r#"{"direction":"outbound","target":"http://198.19.0.10:5000/hello"}"#;
    check("POST", &ck, &e.call(Method::POST, sleep_check, &[], Some(to_hw)).await);
    e.fake
        .apply_policies(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: hw, namespace: default}\nspec: {selector: {matchLabels: {app: helloworld}}, mtls: {mode: STRICT}}\n",
        )
        .unwrap();
    check("POST", &ck, &e.call(Method::POST, &format!("{HW}/check"), &[], None).await);
    let restart = e.call(Method::POST, &format!("{HW}/restart"), &[], None).await;
    check("POST", &format!("{W}/restart"), &restart);
    let op = e.wait_op(restart.json()["id"].as_str().unwrap()).await;
    let id = op["id"].as_str().unwrap();
    check("GET", "/api/v1/operations/{id}", &e.get(&format!("/api/v1/operations/{id}")).await);
    check("GET", "/api/v1/operations/{id}", &e.get("/api/v1/operations/op-none").await);
    e.fake.fail_next(FakeCall::Restart, BackendError::failed("pods never became ready"));
    let failed = e.call(Method::POST, &format!("{HW}/restart"), &[], None).await.json();
    let id = failed["id"].as_str().unwrap();
    e.wait_op(id).await;
    check("GET", "/api/v1/operations/{id}", &e.get(&format!("/api/v1/operations/{id}")).await);
    check("POST", &format!("{W}/check"), &e.call(Method::POST, &format!("{HW}/check"), &[], None).await);
    check(
        "POST",
        &format!("{W}/check"),
        &e.call(Method::POST, &format!("{HW}/check"), &[], Some(r#"{"port":1234}"#)).await,
    );
    check("GET", &format!("{W}/bypass"), &e.get(&format!("{HW}/bypass")).await);
    // Mesh-wide defaults: read, a write (with `changes`), a bad value, a stale version.
    check("GET", "/api/v1/defaults", &e.get("/api/v1/defaults").await);
    let dv = e.get("/api/v1/defaults").await.json()["resourceVersion"].as_str().unwrap().to_string();
    let put = |body: &'static str, v: String| {
        let e = &e;
        async move { e.call(Method::PUT, "/api/v1/defaults", &[("if-match", v.as_str())], Some(body)).await }
    };
    check("PUT", "/api/v1/defaults", &put(r#"{"values":{"global.proxy.excludeIPRanges":"198.19.0.0/16"}}"#, dv).await);
    // A workload whose own range replaces the mesh-wide one is listed with the warning.
    e.fake.set_template_annotation(
        &WorkloadRef::new("default", "sleep"),
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        "10.0.0.0/8",
    );
    let list = e.get("/api/v1/workloads").await;
    let replaced = |key: &str| {
        list.json()["items"].as_array().unwrap().iter().find(|w| w["name"] == key).unwrap()["replaced"].clone()
    };
    assert!(replaced("sleep")[0].as_str().unwrap().contains("198.19.0.0/16"), "{}", replaced("sleep"));
    assert!(replaced("helloworld-v1").is_null(), "{}", replaced("helloworld-v1"));
    check("GET", "/api/v1/workloads", &list);
    check("PUT", "/api/v1/defaults", &put(r#"{"values":{"global.proxy.excludeIPRanges":"x"}}"#, "1".into()).await);
    check("PUT", "/api/v1/defaults", &put(r#"{"values":{"global.proxy.excludeIPRanges":""}}"#, "0".into()).await);
    // Batch: one workload changed, one missing, a dry run, and a request refused whole.
    let b = "/api/v1/passthrough/batch";
    let body = r#"{"workloads":[{"namespace":"default","name":"sleep"},{"namespace":"default","name":"nope"}],
        "add":{"outboundPorts":["3306"]}}"#;
    check("POST", b, &e.call(Method::POST, b, &[], Some(body)).await);
    let body = r#"{"all":true,"namespace":"default","add":{"outboundPorts":["3306"]},"dryRun":true}"#;
    check("POST", b, &e.call(Method::POST, b, &[], Some(body)).await);
    // By label, with an impact on meshed clients.
    let body = r#"{"all":true,"selector":"app=helloworld","add":{"inboundPorts":["5000"]},"dryRun":true}"#;
    check("POST", b, &e.call(Method::POST, b, &[], Some(body)).await);
    let body =
        r#"{"workloads":[{"namespace":"default","name":"sleep","resourceVersion":"1"}],"set":{"inboundPorts":["80"]}}"#;
    check("POST", b, &e.call(Method::POST, b, &[], Some(body)).await);
    let body = r#"{"workloads":[{"namespace":"default","name":"sleep"}],"add":{"outboundPorts":["x"]}}"#;
    check("POST", b, &e.call(Method::POST, b, &[], Some(body)).await);
    // A workload whose template is broken elsewhere fails alone, with its bad items.
    e.fake.set_template_annotation(&e.hw(), "traffic.sidecar.istio.io/excludeInterfaces", "1bad");
    let body = r#"{"workloads":[{"namespace":"default","name":"helloworld-v1"}],"add":{"outboundPorts":["3306"]}}"#;
    check("POST", b, &e.call(Method::POST, b, &[], Some(body)).await);
    check("GET", "/api/v1/audit", &e.get("/api/v1/audit").await);
    check("GET", "/metrics", &e.get("/metrics").await);
    e.fake.fail_next(FakeCall::List, BackendError::unavailable("cluster down"));
    check("GET", "/api/v1/workloads", &e.get("/api/v1/workloads").await);
    let k = env_with(FakeBackend::sample().with_kind(BackendKind::Kube, meshpass_api::model::RuleFormat::Iptables));
    check("GET", &format!("{W}/bypass"), &k.get(&format!("{HW}/bypass")).await);
    // Two clusters: one failing its listing, an ambiguous name, a named cluster, a batch.
    let m = two_clusters();
    m.west.fail_next(FakeCall::List, BackendError::unavailable("cluster down"));
    check("GET", "/api/v1/workloads", &m.env.get("/api/v1/workloads").await);
    check("GET", W, &m.env.get(HW).await);
    check("GET", W, &m.env.get(&format!("{HW}?cluster=west")).await);
    check("GET", W, &m.env.get(&format!("{HW}?cluster=north")).await);
    check("GET", "/api/v1/defaults", &m.env.get("/api/v1/defaults").await);
    check("GET", "/api/v1/defaults", &m.env.get("/api/v1/defaults?cluster=west").await);
    m.west.fail_next(FakeCall::List, BackendError::unavailable("cluster down"));
    let body = r#"{"all":true,"namespace":"default","add":{"outboundPorts":["3306"]},"dryRun":true}"#;
    check("POST", b, &m.env.call(Method::POST, b, &[], Some(body)).await);

    // Coverage: every property of the documented answer types was seen in some answer, so the
    // document names no field the server never sends.
    let mut props: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    fn walk(
        v: &Value,
        doc: &Value,
        schema: &Value,
        props: &mut std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    ) {
        let schema = match schema["$ref"].as_str() {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap().to_string();
                if let Some(o) = v.as_object() {
                    props
                        .entry(name)
                        .or_default()
                        .extend(o.iter().filter(|(_, x)| !x.is_null()).map(|(k, _)| k.clone()));
                }
                doc.pointer(r.trim_start_matches('#')).unwrap()
            }
            None => schema,
        };
        for part in schema["allOf"].as_array().into_iter().flatten() {
            walk(v, doc, part, props);
        }
        if let (Some(o), Some(p)) = (v.as_object(), schema["properties"].as_object()) {
            for (k, sub) in p {
                if let Some(x) = o.get(k) {
                    walk(x, doc, sub, props);
                }
            }
        }
        if let (Some(items), Some(sub)) = (v.as_array(), schema.get("items")) {
            for x in items {
                walk(x, doc, sub, props);
            }
        }
        for alt in schema["oneOf"].as_array().into_iter().flatten() {
            walk(v, doc, alt, props);
        }
    }
    for (r, body) in &seen {
        walk(body, &doc, &json!({ "$ref": r }), &mut props);
    }
    for (name, fields) in &props {
        let schema = &doc["components"]["schemas"][name];
        let mut documented: Vec<String> =
            schema["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
        for part in schema["allOf"].as_array().into_iter().flatten() {
            documented.extend(part["properties"].as_object().into_iter().flat_map(|p| p.keys().cloned()));
        }
        let never: Vec<&String> = documented.iter().filter(|f| !fields.contains(*f)).collect();
        assert!(never.is_empty(), "{name}: documented fields never sent (or always null): {never:?}");
    }
    for want in [
        "Workload",
        "PassthroughDoc",
        "Preview",
        "Operation",
        "CheckReport",
        "BypassReport",
        "AuditEntry",
        "ErrorBody",
        "SessionInfo",
        "MeshDefaultsDoc",
        "BatchResult",
        "BatchItem",
        "EffectiveValue",
    ] {
        assert!(props.contains_key(want), "no {want} answer was checked");
    }
}

#[tokio::test]
async fn client_against_a_real_listener() {
    let fake = FakeBackend::sample();
    fake.set_restart_step(Duration::from_millis(5));
    let fake = Arc::new(fake);
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    let server = Server::bind(&cfg, fake.clone()).await.unwrap();
    let started = server.started().clone();
    assert!(started.url.starts_with("http://127.0.0.1:") && !started.url.ends_with(":0"));
    let address = std::fs::read_to_string(dir.path().join("api-address")).unwrap();
    assert_eq!(address.trim(), started.url);
    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap();
    assert_eq!(started.login_url, format!("{}/?token={}", started.url, token.trim()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let c = Client::from_state_dir(dir.path()).unwrap();
    let hw = WorkloadRef::new("default", "helloworld-v1");
    assert_eq!(c.session().await.unwrap().backend, BackendKind::Local);
    assert_eq!(c.workloads(None, None).await.unwrap().len(), 3);
    assert_eq!(c.workloads(Some("default"), Some("sle")).await.unwrap()[0].info.workload.name, "sleep");
    assert!(c.workload(&hw).await.unwrap().info.meshed);
    let doc = c.get_passthrough(&hw).await.unwrap();

    let bad = PassthroughUpdate::new(Passthrough {
        inbound_ports: vec!["70000".into(), "abc".into(), "5000".into()],
        ..Default::default()
    });
    match c.put_passthrough(&hw, &bad, Some(&doc.resource_version)).await {
        Err(ClientError::Api { status: 422, body }) => {
            assert_eq!(body.errors.len(), 2);
            assert_eq!(body.errors[0].item, "70000");
        }
        other => panic!("{other:?}"),
    }
    let good = PassthroughUpdate::new(Passthrough { inbound_ports: vec!["5000".into()], ..Default::default() });
    match c.put_passthrough(&hw, &good, Some("stale")).await {
        Err(e) => assert_eq!(e.status(), Some(409)),
        Ok(d) => panic!("{d:?}"),
    }
    match c.put_passthrough(&hw, &good, None).await {
        Err(e) => assert_eq!(e.status(), Some(428)),
        Ok(d) => panic!("{d:?}"),
    }
    let preview = c.preview(&hw, &good.settings(), false).await.unwrap();
    assert!(preview.diff.iter().any(|d| d.op == "+"));
    let mut restart = good.clone();
    restart.restart = true;
    let written = c.put_passthrough(&hw, &restart, Some(&doc.resource_version)).await.unwrap();
    let op = written.operation.unwrap();
    let mut lines = Vec::new();
    let done = c.wait_operation(&op.id, Duration::from_millis(5), |l| lines.push(l.to_string())).await.unwrap();
    assert_eq!(done.state, OperationState::Succeeded);
    assert_eq!(lines, done.progress);
    let report = c
        .check(&hw, &CheckRequest { direction: Direction::Inbound, port: None, path: None, target: None })
        .await
        .unwrap();
    assert_eq!(report.verdict, Verdict::Passthrough);
    assert!(c.bypass(&hw).await.unwrap().totals.inbound.packets > 0);
    let op = c.restart(&hw).await.unwrap();
    assert_eq!(c.operation(&op.id).await.unwrap().id, op.id);
    c.wait_operation(&op.id, Duration::from_millis(5), |_| {}).await.unwrap();
    let rv = c.get_passthrough(&hw).await.unwrap().resource_version;
    let cleared = c.delete_passthrough(&hw, false, Some(&rv)).await.unwrap();
    assert!(cleared.annotations.is_empty());
    let audit = c.audit(10).await.unwrap();
    assert_eq!(audit[0].action, "passthrough.clear");
    assert!(audit[0].remote.starts_with("127.0.0.1:"), "{}", audit[0].remote);
    match c.operation("op-missing").await {
        Err(ClientError::Api { status: 404, body }) => assert_eq!(body.error, "not_found"),
        other => panic!("{other:?}"),
    }
    let wrong = Client::new(&started.url, "wrong").unwrap();
    assert_eq!(wrong.session().await.unwrap_err().status(), Some(401));
    assert!(Client::new("https://x", "t").is_err());

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!dir.path().join("api-address").exists(), "api-address removed on shutdown");
    let down = c.session().await.unwrap_err();
    assert!(matches!(down, ClientError::Connect { .. }), "{down:?}");
}

#[tokio::test]
async fn serve_reports_the_login_url_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    cfg.token = Some("fixed-token".into());
    let (tx, rx) = std::sync::mpsc::channel();
    cfg.on_started = Some(Arc::new(move |s| tx.send(s.login_url.clone()).unwrap()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(meshpass_api::serve(cfg, Arc::new(FakeBackend::sample()), async {
        let _ = stopped.await;
    }));
    let url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)).unwrap()).await.unwrap();
    assert!(url.ends_with("/?token=fixed-token"), "{url}");
    assert_eq!(std::fs::read_to_string(dir.path().join("api-token")).unwrap().trim(), "fixed-token");
    let c = Client::from_state_dir(dir.path()).unwrap();
    assert_eq!(c.workloads(None, None).await.unwrap().len(), 3);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn every_error_answer_carries_the_json_error_body() {
    let e = env();
    let cases: Vec<(Answer, StatusCode, &str)> = vec![
        (e.call(Method::PATCH, HW, &[], Some("{}")).await, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (e.raw(Method::POST, "/healthz", &[], None).await, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (
            e.call(Method::PUT, &format!("{HW}/passthrough"), &[("if-match", "\"1\"")], Some(&"x".repeat(70_000)))
                .await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            e.get(&format!("/api/v1/workloads?search={}", "a".repeat(9000))).await,
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
        ),
        (
            e.call(Method::GET, "/api/v1/workloads", &[("x-big", &"b".repeat(40_000))], None).await,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
        ),
        (e.get("/nowhere").await, StatusCode::NOT_FOUND, "not_found"),
    ];
    for (a, status, code) in cases {
        assert_eq!(a.status, status, "{}", a.text());
        assert!(a.header("content-type").starts_with("application/json"), "{status}: {}", a.header("content-type"));
        let body = a.json();
        assert_eq!(body["error"], code, "{body}");
        assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
    }
    let many: Vec<(String, String)> = (0..120).map(|i| (format!("x-h{i}"), "v".to_string())).collect();
    let headers: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = e.call(Method::GET, "/api/v1/workloads", &headers, None).await;
    assert_eq!(
        (a.status, a.json()["error"].as_str()),
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Some("headers_too_large"))
    );
    let a = e.call(Method::PATCH, HW, &[], Some("{}")).await;
    assert!(a.json()["message"].as_str().unwrap().contains("allowed: GET"), "{}", a.text());
}

/// One write through the API and what the template holds afterwards.
async fn put_list(e: &Env, field: &str, items: &[&str]) -> Answer {
    let rv = e.fake.resource_version(&e.hw());
    let body = json!({ field: items }).to_string();
    e.call(Method::PUT, &format!("{HW}/passthrough"), &[("if-match", &rv)], Some(&body)).await
}

/// The sample backend as `kind`, with that backend's rule dialect (iptables for Kubernetes,
/// nft for the local mesh).
fn env_of_kind(kind: BackendKind) -> Env {
    let format = match kind {
        BackendKind::Kube => meshpass_api::model::RuleFormat::Iptables,
        BackendKind::Local => meshpass_api::model::RuleFormat::Nft,
    };
    env_with(FakeBackend::sample().with_kind(kind, format))
}

/// A table row: field, annotation, what is sent, `Ok(stored annotation)` or `Err(refused item)`,
/// and the backend (whose injector decides what is refused).
type Row<'a, T> = (&'a str, &'a str, T, Result<&'a str, &'a str>, BackendKind);

#[tokio::test]
async fn odd_spellings_are_stored_canonically_or_refused_with_the_item_named() {
    const OUT_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    // (field, annotation, items as sent, Ok(stored annotation) or Err(refused item), dialect)
    let local = BackendKind::Local;
    let kube = BackendKind::Kube;
    let table: Vec<Row<'_, Vec<&str>>> = vec![
        ("inboundPorts", INBOUND, vec!["5000 "], Ok("5000"), local),
        ("inboundPorts", INBOUND, vec!["5000\r\n"], Ok("5000"), local),
        ("inboundPorts", INBOUND, vec!["\u{a0}5000"], Ok("5000"), local),
        ("inboundPorts", INBOUND, vec!["\t05000\t"], Ok("5000"), local),
        ("inboundPorts", INBOUND, vec!["0000000080", "80", " 80"], Ok("80"), local),
        ("inboundPorts", INBOUND, vec!["5000", "05000", "8000-8100", "8000-8100 "], Ok("5000,8000-8100"), local),
        ("inboundPorts", INBOUND, vec!["9000-9000"], Ok("9000"), kube),
        ("inboundPorts", INBOUND, vec!["5000", "8000-8100"], Err("8000-8100"), kube),
        ("inboundPorts", INBOUND, vec!["50 00"], Err("50 00"), local),
        ("inboundPorts", INBOUND, vec!["5000\u{0}"], Err("5000\u{0}"), local),
        ("inboundPorts", INBOUND, vec!["+5000"], Err("+5000"), local),
        ("inboundPorts", INBOUND, vec!["0x50"], Err("0x50"), local),
        ("inboundPorts", INBOUND, vec!["８０"], Err("８０"), local),
        ("inboundPorts", INBOUND, vec!["65536"], Err("65536"), local),
        ("inboundPorts", INBOUND, vec!["0"], Err("0"), local),
        ("inboundPorts", INBOUND, vec!["8000:8100"], Err("8000:8100"), local),
        ("inboundPorts", INBOUND, vec![" "], Err(" "), local),
        ("inboundPorts", INBOUND, vec!["80,81"], Err("80,81"), local),
        ("outboundPorts", "traffic.sidecar.istio.io/excludeOutboundPorts", vec![" 3306", "03306"], Ok("3306"), kube),
        ("outboundIpRanges", OUT_RANGES, vec![" 10.0.0.0/8 ", "10.0.0.0/8"], Ok("10.0.0.0/8"), local),
        ("outboundIpRanges", OUT_RANGES, vec!["2001:DB8::/32", "2001:db8:0::/32"], Ok("2001:db8::/32"), kube),
        ("outboundIpRanges", OUT_RANGES, vec!["10.0.0.1/8"], Ok("10.0.0.1/8"), local),
        ("outboundIpRanges", OUT_RANGES, vec!["::ffff:10.0.0.0/104"], Ok("::ffff:10.0.0.0/104"), kube),
        ("outboundIpRanges", OUT_RANGES, vec!["10.0.0.0/08"], Err("10.0.0.0/08"), local),
        ("outboundIpRanges", OUT_RANGES, vec!["010.0.0.0/8"], Err("010.0.0.0/8"), local),
        ("outboundIpRanges", OUT_RANGES, vec!["10.0.0.0 /8"], Err("10.0.0.0 /8"), local),
        (
            "outboundIpRanges",
            OUT_RANGES,
            vec!["10.0.0.0/8\n-A OUTPUT -j ACCEPT"],
            Err("10.0.0.0/8\n-A OUTPUT -j ACCEPT"),
            local,
        ),
        ("outboundIpRanges", OUT_RANGES, vec!["fe80::1%eth0/64"], Err("fe80::1%eth0/64"), local),
        ("outboundIpRanges", OUT_RANGES, vec!["*"], Err("*"), local),
    ];
    for (field, key, items, want, kind) in table {
        let e = env_of_kind(kind);
        let before = e.snapshot();
        let a = put_list(&e, field, &items).await;
        let case = format!("{field} {items:?} on {kind:?}");
        match want {
            Ok(stored) => {
                assert_eq!(a.status, StatusCode::OK, "{case}: {}", a.text());
                let tmpl = e.fake.template_annotations(&e.hw());
                assert_eq!(tmpl.get(key).map(String::as_str), Some(stored), "{case}");
                // What the API shows is exactly what is stored...
                let shown = e.get(&format!("{HW}/passthrough")).await.json();
                assert_eq!(shown["settings"][field], json!(stored.split(',').collect::<Vec<_>>()), "{case}");
                assert_eq!(shown["annotations"][key], stored, "{case}");
                // ...and the engine reads it back unchanged.
                let back = meshpass_settings::Settings::from_annotations(&tmpl).expect("valid").to_annotations();
                assert_eq!(back.get(key).map(String::as_str), Some(stored), "{case}: round trip");
                assert!(
                    shown["warnings"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|w| !w.as_str().unwrap().contains("canonical form")),
                    "{case}: {shown}"
                );
            }
            Err(item) => {
                a.assert_refused(field, key, item, &case);
                assert_eq!(e.snapshot(), before, "{case}: nothing written");
            }
        }
    }
    // The include lists are one string each; the same rules apply item by item.
    let includes: Vec<Row<'_, &str>> = vec![
        ("includeInboundPorts", "traffic.sidecar.istio.io/includeInboundPorts", " 05000, 80 ,80", Ok("5000,80"), kube),
        ("includeInboundPorts", "traffic.sidecar.istio.io/includeInboundPorts", " * ", Ok("*"), kube),
        ("includeInboundPorts", "traffic.sidecar.istio.io/includeInboundPorts", "80,8000-8100", Err("8000-8100"), kube),
        (
            "includeInboundPorts",
            "traffic.sidecar.istio.io/includeInboundPorts",
            "80,08000-8100",
            Ok("80,8000-8100"),
            local,
        ),
        ("includeOutboundPorts", "traffic.sidecar.istio.io/includeOutboundPorts", "*", Err("*"), local),
        ("includeOutboundPorts", "traffic.sidecar.istio.io/includeOutboundPorts", "443,,80", Err(""), local),
        (
            "includeOutboundIpRanges",
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0/8 , 2001:DB8::/32,10.0.0.0/8",
            Ok("10.0.0.0/8,2001:db8::/32"),
            kube,
        ),
        (
            "includeOutboundIpRanges",
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0/8,abc",
            Err("abc"),
            local,
        ),
    ];
    for (field, key, value, want, kind) in includes {
        let e = env_of_kind(kind);
        let before = e.snapshot();
        let rv = e.fake.resource_version(&e.hw());
        let body = json!({ field: value }).to_string();
        let a = e.call(Method::PUT, &format!("{HW}/passthrough"), &[("if-match", &rv)], Some(&body)).await;
        let case = format!("{field} {value:?} on {kind:?}");
        match want {
            Ok(stored) => {
                assert_eq!(a.status, StatusCode::OK, "{case}: {}", a.text());
                let tmpl = e.fake.template_annotations(&e.hw());
                assert_eq!(tmpl.get(key).map(String::as_str), Some(stored), "{case}");
                let shown = e.get(&format!("{HW}/passthrough")).await.json();
                assert_eq!(shown["settings"][field], stored, "{case}");
                let back = meshpass_settings::Settings::from_annotations(&tmpl).expect("valid").to_annotations();
                assert_eq!(back.get(key).map(String::as_str), Some(stored), "{case}: round trip");
            }
            Err(item) => {
                a.assert_refused(field, key, item, &case);
                assert_eq!(e.snapshot(), before, "{case}: nothing written");
            }
        }
    }
}

#[tokio::test]
async fn list_caps_and_warnings() {
    let e = env();
    let many: Vec<String> = (1000..1300).map(|p| p.to_string()).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let a = put_list(&e, "inboundPorts", &refs).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let err = &a.json()["errors"][0];
    assert_eq!((err["field"].as_str(), err["item"].as_str()), (Some("inboundPorts"), Some("300 items")));
    assert!(err["reason"].as_str().unwrap().contains("at most 256 items"), "{err}");
    // 10,000 copies of one port are one port.
    let same = vec!["5000"; 10_000];
    let a = put_list(&e, "inboundPorts", &same).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "a body that large is refused before it is parsed");
    let same = vec!["5000"; 1000];
    let a = put_list(&e, "inboundPorts", &same).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(e.fake.template_annotations(&e.hw())[INBOUND], "5000");

    // Host bits and IPv4-mapped IPv6: stored as written, with a warning each (in the
    // preview and in the document).
    let body = r#"{"outboundIpRanges":["10.0.0.1/8","::ffff:192.168.0.0/112"]}"#;
    let p = e.call(Method::POST, &format!("{HW}/passthrough/preview"), &[], Some(body)).await.json();
    let w: Vec<&str> = p["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert!(w.iter().any(|w| w.contains("10.0.0.1/8 has host bits set; it matches 10.0.0.0/8")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("IPv4-mapped") && w.contains("192.168.0.0/16")), "{w:?}");
    assert_eq!(p["settings"]["outboundIpRanges"], json!(["10.0.0.1/8", "::ffff:192.168.0.0/112"]));
    let a = put_list(&e, "outboundIpRanges", &["10.0.0.1/8"]).await;
    assert!(a.json()["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("host bits")));

    // A value written around the API (kubectl) is shown as stored, with a warning naming its
    // canonical form; the next save writes that.
    e.fake.set_template_annotation(&e.hw(), INBOUND, "5000 ,05000");
    let doc = e.get(&format!("{HW}/passthrough")).await.json();
    assert_eq!(doc["settings"]["inboundPorts"], json!(["5000 ", "05000"]));
    assert!(
        doc["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("its canonical form is \"5000\"")),
        "{doc}"
    );
    let a = put_list(&e, "inboundPorts", &["5000 ", "05000"]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(e.fake.template_annotations(&e.hw())[INBOUND], "5000");
}

#[tokio::test]
async fn the_workload_list_and_the_metrics_figures_are_shared_briefly_and_dropped_by_writes() {
    let fake = Arc::new(FakeBackend::sample());
    let dir = tempfile::tempdir().unwrap();
    let auth = meshpass_api::auth::Auth::new("t".into(), meshpass_api::auth::SESSION_TTL);
    let reuse =
        Reuse { list_ttl: Duration::from_secs(60), metrics_interval: Duration::from_secs(60), ..Reuse::default() };
    let e = Env {
        router: router(AppState::with_reuse(fake.clone(), auth, dir.path(), reuse)),
        fake: fake.clone(),
        token: "t".into(),
        dir: dir.path().to_path_buf(),
        _dir: dir,
    };
    for _ in 0..5 {
        assert_eq!(e.get("/api/v1/workloads").await.status, StatusCode::OK);
        assert_eq!(e.get("/metrics").await.status, StatusCode::OK);
    }
    assert_eq!(fake.calls(FakeCall::List), 1, "one list served them all");
    assert_eq!(fake.calls(FakeCall::RuleCounters), 2, "one collection: the two meshed workloads' counters");
    // Concurrent readers share one list.
    let all = futures::future::join_all((0..20).map(|_| e.get("/api/v1/workloads"))).await;
    assert!(all.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(fake.calls(FakeCall::List), 1);
    // A write drops the list: the next reader sees the new settings.
    let rv = fake.resource_version(&e.hw());
    let a = e
        .call(Method::PUT, &format!("{HW}/passthrough"), &[("if-match", &rv)], Some(r#"{"inboundPorts":["5000"]}"#))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let list = e.get("/api/v1/workloads").await.json();
    assert_eq!(list["items"][0]["passthrough"]["inboundPorts"], json!(["5000"]));
    assert_eq!(list["items"][0]["status"], "Pending restart");
}

#[tokio::test]
async fn batch_adds_and_removes_per_workload_and_reports_each() {
    let e = env();
    let sleep = WorkloadRef::new("default", "sleep");
    e.fake.set_template_annotation(&sleep, "traffic.sidecar.istio.io/excludeOutboundPorts", "25,8000-8100");
    let b = "/api/v1/passthrough/batch";
    let body = r#"{"workloads":[{"namespace":"default","name":"helloworld-v1"},{"namespace":"default","name":"sleep"},
        {"namespace":"default","name":"nope"}],"add":{"outboundPorts":["3306"]},"remove":{"outboundPorts":["25"]}}"#;
    let a = e.call(Method::POST, b, &[], Some(body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let r = a.json();
    assert_eq!((r["succeeded"].as_u64(), r["failed"].as_u64()), (Some(2), Some(1)), "{r:#}");
    let items = r["items"].as_array().unwrap();
    assert_eq!(items[0]["outcome"], "changed");
    assert_eq!(items[0]["settings"]["outboundPorts"], json!(["3306"]));
    // 25 is not there to remove: said, not an error.
    assert!(items[0]["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("25 is not there")));
    assert_eq!(items[1]["settings"]["outboundPorts"], json!(["8000-8100", "3306"]), "the other values are kept");
    assert_eq!(items[2]["outcome"], "failed");
    assert_eq!(items[2]["status"], 404);
    assert_eq!(items[2]["error"], "not_found");
    assert_eq!(e.fake.template_annotations(&sleep)["traffic.sidecar.istio.io/excludeOutboundPorts"], "8000-8100,3306");
    assert_eq!(e.fake.template_annotations(&e.hw())["traffic.sidecar.istio.io/excludeOutboundPorts"], "3306");
    let audit = e.audit();
    assert_eq!(audit.iter().filter(|a| a.action == "passthrough.batch" && a.result == "ok").count(), 2, "{audit:?}");

    // Invalid items: the whole request is refused and nothing changes anywhere.
    let before = (e.snapshot(), e.fake.template_annotations(&sleep));
    let body = r#"{"workloads":[{"namespace":"default","name":"helloworld-v1"},{"namespace":"default","name":"sleep"}],
        "add":{"outboundPorts":["3307","70000"],"outboundIpRanges":["10.0.0.0/33"]}}"#;
    let a = e.call(Method::POST, b, &[], Some(body)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text());
    let items: Vec<String> = a.json()["errors"].as_array().unwrap().iter().map(|e| e["item"].to_string()).collect();
    assert_eq!(items, ["\"70000\"", "\"10.0.0.0/33\""]);
    assert_eq!((e.snapshot(), e.fake.template_annotations(&sleep)), before);
    // A list both set and added to, and no workloads at all: refused too.
    for body in [
        r#"{"workloads":[{"namespace":"default","name":"sleep"}],"set":{"outboundPorts":[]},"add":{"outboundPorts":["1"]}}"#,
        r#"{"workloads":[],"add":{"outboundPorts":["1"]}}"#,
        r#"{"workloads":[{"namespace":"default","name":"Sleep"}],"add":{"outboundPorts":["1"]}}"#,
    ] {
        assert_eq!(e.call(Method::POST, b, &[], Some(body)).await.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    assert_eq!((e.snapshot(), e.fake.template_annotations(&sleep)), before);

    // A stale version leaves that workload alone; the others change.
    let body = format!(
        r#"{{"workloads":[{{"namespace":"default","name":"helloworld-v1","resourceVersion":"1"}},
        {{"namespace":"default","name":"sleep","resourceVersion":"{}"}}],"add":{{"inboundPorts":["9000"]}},"live":true}}"#,
        e.fake.resource_version(&sleep)
    );
    let r = e.call(Method::POST, b, &[], Some(&body)).await.json();
    assert_eq!(r["items"][0]["status"], 409, "{r:#}");
    assert_eq!(r["items"][1]["outcome"], "changed", "{r:#}");
    assert!(!e.fake.template_annotations(&e.hw()).contains_key(INBOUND));
    // Live: the running pods took it (no pending restart).
    assert_eq!(e.fake.running_annotations(&sleep)[INBOUND], "9000");

    // All workloads of a namespace, as a dry run: nothing is written.
    let before = (e.snapshot(), e.fake.template_annotations(&sleep));
    let r = e
        .call(
            Method::POST,
            b,
            &[],
            Some(r#"{"all":true,"namespace":"default","add":{"inboundPorts":["7000"]},"dryRun":true}"#),
        )
        .await
        .json();
    assert_eq!(r["dryRun"], true);
    let names: Vec<&str> = r["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["helloworld-v1", "sleep"]);
    assert!(r["items"].as_array().unwrap().iter().all(|i| i["outcome"] == "wouldChange"), "{r:#}");
    assert_eq!((e.snapshot(), e.fake.template_annotations(&sleep)), before);
}

#[tokio::test]
async fn mesh_wide_defaults_their_source_and_the_replace_warning() {
    let e = env();
    let d = e.get("/api/v1/defaults").await;
    assert_eq!(d.status, StatusCode::OK);
    let d = d.json();
    assert_eq!(d["values"]["global.proxy.excludeIPRanges"], "");
    assert_eq!(d["values"]["global.proxy.statusPort"], "15020");
    let v = d["resourceVersion"].as_str().unwrap().to_string();
    // No version: 428; a bad value: 422 under its Helm path; nothing written.
    let body = r#"{"values":{"global.proxy.excludeIPRanges":"198.19.0.0/16"}}"#;
    assert_eq!(e.call(Method::PUT, "/api/v1/defaults", &[], Some(body)).await.status.as_u16(), 428);
    let bad = e
        .call(
            Method::PUT,
            "/api/v1/defaults",
            &[("if-match", &v)],
            Some(r#"{"values":{"global.proxy.excludeIPRanges":"1.2.3.4/40","global.proxy.nope":"1"}}"#),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text());
    let keys: Vec<String> = bad.json()["errors"].as_array().unwrap().iter().map(|e| e["key"].to_string()).collect();
    assert_eq!(keys, ["\"global.proxy.excludeIPRanges\"", "\"global.proxy.nope\""]);
    assert_eq!(e.get("/api/v1/defaults").await.json()["resourceVersion"], v.as_str());
    // Written.
    let ok = e.call(Method::PUT, "/api/v1/defaults", &[("if-match", &v)], Some(body)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.json()["values"]["global.proxy.excludeIPRanges"], "198.19.0.0/16");
    assert!(!ok.json()["changes"].as_array().unwrap().is_empty());
    // The old version is stale now.
    assert_eq!(
        e.call(Method::PUT, "/api/v1/defaults", &[("if-match", &v)], Some(body)).await.status,
        StatusCode::CONFLICT
    );
    assert!(e.audit().iter().any(|a| a.action == "defaults.set" && a.result.starts_with("ok")));

    // A workload without its own value shows the mesh-wide one, source mesh.
    let doc = e.get(&format!("{HW}/passthrough")).await.json();
    let range = |doc: &Value| {
        doc["effective"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["annotation"] == "traffic.sidecar.istio.io/excludeOutboundIPRanges")
            .cloned()
            .unwrap()
    };
    assert_eq!(range(&doc)["value"], "198.19.0.0/16");
    assert_eq!(range(&doc)["source"], "mesh");
    assert_eq!(range(&doc)["meshKey"], "global.proxy.excludeIPRanges");
    // The preview of its own value warns before anything is written; an extending one does not.
    let preview = |body: &'static str| {
        let e = &e;
        async move { e.call(Method::POST, &format!("{HW}/passthrough/preview"), &[], Some(body)).await.json() }
    };
    let warns =
        |p: &Value| p["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("198.19.0.0/16"));
    assert!(warns(&preview(r#"{"outboundIpRanges":["10.0.0.0/8"]}"#).await));
    assert!(!warns(&preview(r#"{"outboundIpRanges":["10.0.0.0/8","198.19.0.0/16"]}"#).await));
    // Its own value replaces it, with the warning.
    let rv = doc["resourceVersion"].as_str().unwrap().to_string();
    let put = e
        .call(
            Method::PUT,
            &format!("{HW}/passthrough"),
            &[("if-match", &rv)],
            Some(r#"{"outboundIpRanges":["10.0.0.0/8"]}"#),
        )
        .await
        .json();
    assert_eq!(range(&put)["value"], "10.0.0.0/8");
    assert_eq!(range(&put)["source"], "workload");
    assert!(
        put["warnings"].as_array().unwrap().iter().any(|w| {
            let w = w.as_str().unwrap();
            w.contains("replaces the mesh-wide global.proxy.excludeIPRanges") && w.contains("198.19.0.0/16")
        }),
        "{put:#}"
    );
    // Adding in a batch to a list the workload inherits starts from the mesh-wide value.
    let sleep = r#"{"workloads":[{"namespace":"default","name":"sleep"}],"add":{"outboundIpRanges":["10.1.0.0/16"]}}"#;
    let r = e.call(Method::POST, "/api/v1/passthrough/batch", &[], Some(sleep)).await.json();
    assert_eq!(r["items"][0]["settings"]["outboundIpRanges"], json!(["198.19.0.0/16", "10.1.0.0/16"]), "{r:#}");
}

#[tokio::test]
async fn several_clusters_name_each_workload_and_one_failing_does_not_stop_the_others() {
    let Clusters { env: e, west } = two_clusters();
    let east = e.fake.clone();
    let s = e.get("/api/v1/session").await.json();
    assert_eq!(s["clusters"], json!(["east", "west"]));

    // The list: every workload of both, each naming its cluster; a filter; an unknown name.
    let list = e.get("/api/v1/workloads").await.json();
    let names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| format!("{}:{}/{}", w["cluster"].as_str().unwrap(), w["namespace"], w["name"]).replace('"', ""))
        .collect();
    assert_eq!(
        names,
        [
            "east:default/helloworld-v1",
            "west:default/helloworld-v1",
            "east:default/sleep",
            "west:default/sleep",
            "east:external/external",
            "west:external/external"
        ]
    );
    assert_eq!(
        list["clusters"],
        json!([{"name": "east", "state": "ok", "workloads": 3}, {"name": "west", "state": "ok", "workloads": 3}])
    );
    let only = e.get("/api/v1/workloads?cluster=west&sort=cluster").await.json();
    assert_eq!(only["items"].as_array().unwrap().len(), 3);
    assert!(only["items"].as_array().unwrap().iter().all(|w| w["cluster"] == "west"));
    assert_eq!(only["clusters"].as_array().unwrap().len(), 1);
    let a = e.get("/api/v1/workloads?cluster=north").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["message"], "no cluster named \"north\"; this server serves east, west");
    let a = e.get("/api/v1/workloads?cluster=a%20b").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "not a name any cluster has");

    // One cluster down: the other's workloads are listed, the failing one is shown unreachable.
    west.fail_next(FakeCall::List, BackendError::unavailable("listing workloads"));
    let list = e.get("/api/v1/workloads").await;
    assert_eq!(list.status, StatusCode::OK);
    let list = list.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    assert_eq!(list["clusters"][1]["state"], "unreachable");
    assert_eq!(list["clusters"][1]["error"], "unavailable");
    assert_eq!(list["clusters"][1]["message"], "backend unavailable: listing workloads");

    // A name both clusters have is ambiguous without a cluster; with one it is that cluster's.
    let a = e.get(HW).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"], "ambiguous");
    assert!(a.json()["message"].as_str().unwrap().contains("exists in clusters east, west"), "{}", a.text());
    let doc = e.get(&format!("{HW}/passthrough?cluster=west")).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.json()["cluster"], "west");
    let rv = west.resource_version(&e.hw());
    let put = e
        .call(
            Method::PUT,
            &format!("{HW}/passthrough?cluster=west"),
            &[("if-match", &rv)],
            Some(r#"{"inboundPorts":["5000"]}"#),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    assert_eq!(put.json()["cluster"], "west");
    assert_eq!(west.template_annotations(&e.hw()).get(INBOUND).map(String::as_str), Some("5000"));
    assert_eq!(east.template_annotations(&e.hw()).get(INBOUND), None, "east untouched");
    let audit = e.audit();
    assert_eq!(
        (audit.last().unwrap().cluster.as_str(), audit.last().unwrap().action.as_str()),
        ("west", "passthrough.set")
    );
    // A name only one cluster has needs no cluster.
    east.add(WorkloadRef::new("default", "reviews"), true, Vec::new(), std::collections::BTreeMap::new());
    let r = e.get("/api/v1/namespaces/default/workloads/reviews").await;
    assert_eq!((r.status, r.json()["cluster"].clone()), (StatusCode::OK, json!("east")));
    // An operation on a cluster that fails says which cluster.
    west.fail_next(FakeCall::Get, BackendError::unavailable("reading the workload"));
    let a = e.get(&format!("{HW}?cluster=west")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["message"], "cluster west: backend unavailable: reading the workload");
    // A name in no cluster that answered, while one did not answer: unavailable, naming it.
    west.fail_next(FakeCall::List, BackendError::unavailable("listing workloads"));
    let a = e.get("/api/v1/namespaces/default/workloads/ratings").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.json()["message"].as_str().unwrap().starts_with("cluster west: "), "{}", a.text());

    // A batch over both clusters: one result per workload, each naming its cluster.
    let b = "/api/v1/passthrough/batch";
    let west_sleep = west.resource_version(&WorkloadRef::new("default", "sleep"));
    let body = format!(
        r#"{{"workloads":[{{"cluster":"east","namespace":"default","name":"sleep"}},
            {{"cluster":"west","namespace":"default","name":"sleep","resourceVersion":"{west_sleep}"}},
            {{"cluster":"west","namespace":"default","name":"nope"}}],
            "add":{{"outboundPorts":["3306"]}}}}"#
    );
    let r = e.call(Method::POST, b, &[], Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = r.json();
    let got: Vec<(String, String, String)> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["cluster"].as_str().unwrap().into(),
                i["name"].as_str().unwrap().into(),
                i["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("east".into(), "sleep".into(), "changed".into()),
            ("west".into(), "sleep".into(), "changed".into()),
            ("west".into(), "nope".into(), "failed".into())
        ]
    );
    assert_eq!(r["items"][2]["message"], "cluster west: workload default/nope not found");
    assert_eq!((r["succeeded"].clone(), r["failed"].clone()), (json!(2), json!(1)));
    // An ambiguous or unknown name refuses the whole batch: nothing is written anywhere.
    let before = (east.resource_version(&e.hw()), west.resource_version(&e.hw()));
    for body in [
        r#"{"workloads":[{"namespace":"default","name":"helloworld-v1"}],"add":{"outboundPorts":["3307"]}}"#,
        r#"{"workloads":[{"cluster":"east","namespace":"default","name":"helloworld-v1"},{"cluster":"north","namespace":"default","name":"sleep"}],"add":{"outboundPorts":["3307"]}}"#,
    ] {
        let a = e.call(Method::POST, b, &[], Some(body)).await;
        assert!(a.status.is_client_error(), "{}", a.text());
        assert!(a.text().contains("ambiguous") || a.text().contains("no cluster named \\\"north\\\""), "{}", a.text());
    }
    assert_eq!((east.resource_version(&e.hw()), west.resource_version(&e.hw())), before);
    // `all` over one cluster down: the other's workloads are changed, the failure is reported.
    west.fail_next(FakeCall::List, BackendError::unavailable("listing workloads"));
    let body = r#"{"all":true,"namespace":"external","set":{"inboundPorts":["9000"]}}"#;
    let r = e.call(Method::POST, b, &[], Some(body)).await.json();
    assert_eq!(r["items"].as_array().unwrap().len(), 1);
    assert_eq!(r["items"][0]["cluster"], "east");
    assert_eq!(r["clusters"][1]["state"], "unreachable");

    // Mesh-wide defaults are per cluster: a cluster must be named, and a write changes only it.
    let a = e.get("/api/v1/defaults").await;
    assert_eq!((a.status, a.json()["error"].clone()), (StatusCode::BAD_REQUEST, json!("ambiguous")));
    let d = e.get("/api/v1/defaults?cluster=west").await.json();
    assert_eq!(d["cluster"], "west");
    let v = d["resourceVersion"].as_str().unwrap().to_string();
    let put = e
        .call(
            Method::PUT,
            "/api/v1/defaults?cluster=west",
            &[("if-match", &v)],
            Some(r#"{"values":{"global.proxy.excludeIPRanges":"198.19.0.0/16"}}"#),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    let east_d = e.get("/api/v1/defaults?cluster=east").await.json();
    let west_d = e.get("/api/v1/defaults?cluster=west").await.json();
    assert_eq!(west_d["values"]["global.proxy.excludeIPRanges"], "198.19.0.0/16");
    assert_eq!(east_d["values"]["global.proxy.excludeIPRanges"], "");
    assert_eq!(e.audit().last().unwrap().cluster, "west");

    // /metrics: the backends' series carry their cluster, and each cluster says whether it answered.
    west.fail_next(FakeCall::List, BackendError::unavailable("listing workloads"));
    let m = e.get("/metrics").await.text();
    assert!(m.contains("meshpass_workloads{cluster=\"east\",status=\"Pending restart\"} 1"), "{m}");
    assert!(m.contains("meshpass_workloads{cluster=\"west\",status=\"Injected\"} 0"), "{m}");
    assert!(m.contains("meshpass_cluster_up{cluster=\"east\"} 1"), "{m}");
    assert!(m.contains("meshpass_cluster_up{cluster=\"west\"} 0"), "{m}");

    // A restart names its cluster in the operation.
    let op = e.call(Method::POST, &format!("{HW}/restart?cluster=east"), &[], None).await.json();
    assert_eq!(op["cluster"], "east");
    e.wait_op(op["id"].as_str().unwrap()).await;
}

#[tokio::test]
async fn batch_by_label_selector_with_each_workloads_impact() {
    let e = env();
    let b = "/api/v1/passthrough/batch";
    // The sample's pods are labelled as in the local mesh: app=helloworld,version=v1 / app=sleep.
    let list = e.get("/api/v1/workloads").await.json();
    assert_eq!(list["items"][0]["labels"], json!({"app": "helloworld", "version": "v1"}), "{list:#}");
    let body = r#"{"all":true,"selector":"app=helloworld","add":{"inboundPorts":["5000"]},"dryRun":true}"#;
    let r = e.call(Method::POST, b, &[], Some(body)).await.json();
    let items = r["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{r:#}");
    assert_eq!((items[0]["name"].as_str(), items[0]["outcome"].as_str()), (Some("helloworld-v1"), Some("wouldChange")));
    // Excluding helloworld's Service port breaks sleep's mutual TLS: the item says so, as a
    // single write's answer would.
    let impact = items[0]["impact"].as_array().unwrap();
    assert!(
        impact.iter().any(|i| i["client"] == "default/sleep" && i["port"] == 5000 && i["effect"] == "fails"),
        "{r:#}"
    );
    // Set-based and negated selectors, and a namespace.
    let r = e
        .call(Method::POST, b, &[], Some(r#"{"all":true,"selector":"app,!version","add":{"outboundPorts":["9"]}}"#))
        .await
        .json();
    let names: Vec<&str> = r["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sleep", "external"], "sorted by namespace and name: {r:#}");
    assert!(r["items"][0]["impact"].as_array().is_none(), "nothing affected, no impact: {r:#}");
    let r = e
        .call(
            Method::POST,
            b,
            &[],
            Some(r#"{"all":true,"namespace":"default","selector":"app","dryRun":true,"add":{"outboundPorts":["9"]}}"#),
        )
        .await
        .json();
    assert_eq!(r["items"].as_array().unwrap().len(), 2, "{r:#}");
    // A bad selector, or one without `all`: refused whole, nothing written.
    let before = e.snapshot();
    for body in [
        r#"{"all":true,"selector":"app in (a,b)","add":{"outboundPorts":["1"]}}"#,
        r#"{"all":true,"selector":"-app=x","add":{"outboundPorts":["1"]}}"#,
        r#"{"workloads":[{"namespace":"default","name":"sleep"}],"selector":"app=sleep","add":{"outboundPorts":["1"]}}"#,
    ] {
        let a = e.call(Method::POST, b, &[], Some(body)).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", a.text());
        assert!(a.json()["message"].as_str().unwrap().contains("selector"), "{}", a.text());
    }
    assert_eq!(e.snapshot(), before);
}

#[tokio::test]
async fn previews_use_the_mesh_wide_defaults_as_they_are_now() {
    let e = env();
    let rules = |p: &Value| p["proposed"].as_str().unwrap_or_default().to_string();
    let ask = r#"{"inboundPorts":["5000"]}"#;
    let p = e.call(Method::POST, &format!("{HW}/passthrough/preview"), &[], Some(ask)).await.json();
    assert!(!rules(&p).contains("198.19.7.0/24"), "{p:#}");
    // The defaults change after the server started: the next preview compiles with them.
    let v = e.get("/api/v1/defaults").await.json()["resourceVersion"].as_str().unwrap().to_string();
    let body = r#"{"values":{"global.proxy.excludeIPRanges":"198.19.7.0/24"}}"#;
    assert_eq!(e.call(Method::PUT, "/api/v1/defaults", &[("if-match", &v)], Some(body)).await.status, StatusCode::OK);
    let p = e.call(Method::POST, &format!("{HW}/passthrough/preview"), &[], Some(ask)).await.json();
    assert!(rules(&p).contains("198.19.7.0/24"), "the new mesh-wide range is in the proposed rules: {p:#}");
    assert!(p["current"].as_str().unwrap_or_default().contains("198.19.7.0/24"), "and in the current ones: {p:#}");
}
