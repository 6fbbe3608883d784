//! [`KubeBackend`] against a scripted fake API server (tower-test's mock service behind a
//! real `kube::Client`): every request the backend makes is asserted (method, path, query,
//! content type, exact JSON body) and answered with a body shaped exactly as the Kubernetes
//! API returns it (lists with `kind`/`apiVersion`/`metadata.resourceVersion`, `Status`
//! objects for errors, newline-delimited watch events with bookmarks and a 410 `ERROR`).

use http::{Request, Response};
use kube::client::Body;
use meshpass_api::model::{CheckRequest, Direction, Verdict, WorkloadRef};
use meshpass_api::{Backend, BackendError};
use meshpass_kube::KubeBackend;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tower_test::mock;

/// One expected request and the answer to it.
struct Exchange {
    method: &'static str,
    path: String,
    query: BTreeMap<String, String>,
    /// `Some` = the request must carry exactly this JSON body (and the merge-patch type).
    body: Option<Value>,
    /// A custom check of the body instead (the restart's timestamp).
    body_check: Option<fn(&Value)>,
    /// The content type a request with a body must carry.
    body_type: &'static str,
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    answer: String,
}

fn ex(method: &'static str, path_and_query: &str, status: u16, answer: Value) -> Exchange {
    let (path, q) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    Exchange {
        method,
        path: path.to_string(),
        query: parse_query(q),
        body: None,
        body_check: None,
        body_type: "application/merge-patch+json",
        status,
        headers: vec![("content-type", "application/json")],
        answer: answer.to_string(),
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    url_pairs(q).into_iter().collect()
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

/// A client whose API server plays `script` in order, asserting each request; the handle
/// resolves when the script is done (and panics with the first mismatch).
fn scripted(script: Vec<Exchange>) -> (kube::Client, JoinHandle<()>) {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        for (i, e) in script.into_iter().enumerate() {
            let (req, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("request #{i} never came: {} {}", e.method, e.path));
            let what = format!("request #{i} ({} {})", req.method(), req.uri());
            assert_eq!(req.method().as_str(), e.method, "{what}: method");
            assert_eq!(req.uri().path(), e.path, "{what}: path");
            assert_eq!(parse_query(req.uri().query().unwrap_or_default()), e.query, "{what}: query");
            let ct = req.headers().get("content-type").map(|v| v.to_str().unwrap_or_default().to_string());
            let body = req.into_body().collect_bytes().await.expect("request body");
            if let Some(want) = &e.body {
                assert_eq!(ct.as_deref(), Some(e.body_type), "{what}: content-type");
                let got: Value = serde_json::from_slice(&body).expect("JSON body");
                assert_eq!(&got, want, "{what}: body");
            }
            if let Some(check) = e.body_check {
                assert_eq!(ct.as_deref(), Some("application/merge-patch+json"), "{what}: content-type");
                check(&serde_json::from_slice(&body).expect("JSON body"));
            }
            if e.body.is_none() && e.body_check.is_none() {
                assert!(body.is_empty(), "{what}: unexpected body {}", String::from_utf8_lossy(&body));
            }
            let mut res = Response::builder().status(e.status);
            for (k, v) in &e.headers {
                res = res.header(*k, *v);
            }
            send.send_response(res.body(Body::from(e.answer.into_bytes())).expect("response"));
        }
    });
    (kube::Client::new(svc, "default"), task)
}

/// `B.CALL` on a backend whose API server plays `SCRIPT`, which must be played whole (every
/// request asserted, none missing): `played!(script, b => b.list())`.
macro_rules! played {
    ($script:expr, $b:ident => $call:expr) => {{
        let (client, server) = scripted($script);
        let $b = backend(client);
        let out = $call.await;
        server.await.expect("script");
        out
    }};
}

/// `err` is a 403 whose message names `permission` and carries the API server's `message`.
fn assert_forbidden(err: BackendError, permission: &str, message: &str) {
    match err {
        e @ BackendError::Forbidden { .. } => {
            let m = e.report();
            assert!(m.contains(permission), "{m}");
            assert!(m.contains(message), "{m}");
        }
        other => panic!("want Forbidden, got {other:?}"),
    }
}

fn backend(client: kube::Client) -> KubeBackend {
    KubeBackend::new(client, Vec::new()).with_rewatch_pause(Duration::from_millis(1))
}

fn hello() -> WorkloadRef {
    WorkloadRef::new("default", "helloworld-v1")
}

// ---- objects shaped as the API server returns them -------------------------------------

fn status(code: u16, reason: &str, message: &str, details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "details": details, "code": code})
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "10",
        "creationTimestamp": "2026-11-26T08:00:00Z", "labels": labels},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

fn deployment(rv: &str, generation: i64, template_ann: Value, status: Value) -> Value {
    json!({
        "metadata": {"name": "helloworld-v1", "namespace": "default", "uid": "6a0d5d2e-1f2b-4c3d-9e8f-0a1b2c3d4e5f",
            "resourceVersion": rv, "generation": generation, "creationTimestamp": "2026-11-26T08:10:00Z",
            "labels": {"app": "helloworld", "version": "v1"},
            "annotations": {"deployment.kubernetes.io/revision": "3"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "helloworld", "version": "v1"}},
            "template": {"metadata": {"labels": {"app": "helloworld", "version": "v1"}, "annotations": template_ann},
                "spec": {"containers": [{"name": "helloworld", "image": "docker.io/istio/examples-helloworld-v1:1.0",
                    "ports": [{"name": "http", "containerPort": 5000, "protocol": "TCP"}],
                    "resources": {}, "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                    "securityContext": {}, "schedulerName": "default-scheduler"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600},
        "status": status
    })
}

fn rolled_out(generation: i64) -> Value {
    json!({"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
        "conditions": [{"type": "Available", "status": "True", "lastUpdateTime": "2026-11-26T08:10:05Z",
            "lastTransitionTime": "2026-11-26T08:10:05Z", "reason": "MinimumReplicasAvailable",
            "message": "Deployment has minimum availability."},
            {"type": "Progressing", "status": "True", "lastUpdateTime": "2026-11-26T08:10:05Z",
            "lastTransitionTime": "2026-11-26T08:10:00Z", "reason": "NewReplicaSetAvailable",
            "message": "ReplicaSet \"helloworld-v1-7c8d9f6b5d\" has successfully progressed."}]})
}

fn with_type(mut v: Value, kind: &str) -> Value {
    v["kind"] = json!(kind);
    v["apiVersion"] = json!("apps/v1");
    v
}

fn list(kind: &str, api_version: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv}, "items": items})
}

/// A running pod; `sidecar`: "container", "native" (init container, restartPolicy Always) or "".
fn pod(name: &str, labels: Value, annotations: Value, sidecar: &str, ready: bool) -> Value {
    let mut containers = vec![json!({"name": "app", "image": "app:1"})];
    let mut init = vec![json!({"name": "istio-init", "image": "docker.io/istio/proxyv2:1.28.0"})];
    match sidecar {
        "container" => containers.push(json!({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.28.0"})),
        "native" => init
            .push(json!({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.28.0", "restartPolicy": "Always"})),
        _ => {}
    }
    json!({
        "metadata": {"name": name, "generateName": "x-", "namespace": "default", "uid": format!("uid-{name}"),
            "resourceVersion": "900", "creationTimestamp": "2026-11-26T08:10:01Z", "labels": labels, "annotations": annotations},
        "spec": {"initContainers": init, "containers": containers, "restartPolicy": "Always", "nodeName": "kind-control-plane"},
        "status": {"phase": "Running", "podIP": "10.244.0.7", "hostIP": "172.18.0.2", "startTime": "2026-11-26T08:10:01Z",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastProbeTime": null,
                "lastTransitionTime": "2026-11-26T08:10:05Z"}]}
    })
}

fn service(name: &str, selector: Value, port: u16, target: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": "800",
            "creationTimestamp": "2026-11-26T08:10:00Z"},
        "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": target}], "selector": selector,
            "clusterIP": "10.96.12.34", "clusterIPs": ["10.96.12.34"], "type": "ClusterIP", "sessionAffinity": "None"},
        "status": {"loadBalancer": {}}})
}

fn hello_labels() -> Value {
    json!({"app": "helloworld", "version": "v1", "pod-template-hash": "7c8d9f6b5d"})
}

/// The three requests `describe` makes after a get or patch of helloworld-v1.
fn describe_script(pods: Vec<Value>) -> Vec<Exchange> {
    vec![
        ex(
            "GET",
            "/api/v1/namespaces?fieldSelector=metadata.name%3Ddefault",
            200,
            list("NamespaceList", "v1", "1500", vec![namespace("default", json!({"istio-injection": "enabled"}))]),
        ),
        ex(
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dhelloworld%2Cversion%3Dv1",
            200,
            list("PodList", "v1", "1500", pods),
        ),
        ex(
            "GET",
            "/api/v1/namespaces/default/services",
            200,
            list(
                "ServiceList",
                "v1",
                "1500",
                vec![service("helloworld", json!({"app": "helloworld"}), 5000, json!("http"))],
            ),
        ),
    ]
}

/// The pods (helloworld-v1's one running, injected pod) and Services (none) of namespace
/// `default`, as `list` reads them.
fn hello_pods_and_services() -> Vec<Exchange> {
    vec![
        ex(
            "GET",
            "/api/v1/namespaces/default/pods",
            200,
            list(
                "PodList",
                "v1",
                "1500",
                vec![pod(
                    "helloworld-v1-7c8d9f6b5d-abcde",
                    hello_labels(),
                    json!({"sidecar.istio.io/status": "{}"}),
                    "container",
                    true,
                )],
            ),
        ),
        ex("GET", "/api/v1/namespaces/default/services", 200, list("ServiceList", "v1", "1500", vec![])),
    ]
}

/// Every request `list` makes of a cluster whose one injected namespace, `default`, holds the
/// Deployment `deployment` (helloworld-v1) and nothing else.
fn hello_cluster_list(deployment: Value) -> Vec<Exchange> {
    let mut script = vec![
        ex(
            "GET",
            "/api/v1/namespaces",
            200,
            list("NamespaceList", "v1", "1500", vec![namespace("default", json!({"istio-injection": "enabled"}))]),
        ),
        ex("GET", "/apis/apps/v1/deployments", 200, list("DeploymentList", "apps/v1", "1500", vec![deployment])),
        ex("GET", "/apis/apps/v1/statefulsets", 200, list("StatefulSetList", "apps/v1", "1500", vec![])),
        ex("GET", "/apis/apps/v1/daemonsets", 200, list("DaemonSetList", "apps/v1", "1500", vec![])),
    ];
    script.extend(hello_pods_and_services());
    script
}

/// A client whose API server is gone: every request fails to connect.
fn unreachable() -> kube::Client {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    drop(handle);
    kube::Client::new(svc, "default")
}

const EXCLUDE_IN: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
const EXCLUDE_OUT: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";

// ---- list ---------------------------------------------------------------------------------

#[tokio::test]
async fn list_reads_namespaces_workloads_pods_and_services() {
    let sts = json!({
        "metadata": {"name": "db", "namespace": "data", "uid": "u-db", "resourceVersion": "700", "generation": 1},
        "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db", "sidecar.istio.io/inject": "true"}},
                "spec": {"containers": [{"name": "db", "image": "postgres:17"}]}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "currentReplicas": 1, "updatedReplicas": 1,
            "currentRevision": "db-5f4b", "updateRevision": "db-5f4b", "collisionCount": 0, "availableReplicas": 1}
    });
    let ds = json!({
        "metadata": {"name": "kube-proxy", "namespace": "kube-system", "uid": "u-kp", "resourceVersion": "60", "generation": 1},
        "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
            "template": {"metadata": {"labels": {"k8s-app": "kube-proxy"}},
                "spec": {"containers": [{"name": "kube-proxy", "image": "registry.k8s.io/kube-proxy:v1.33.1"}]}},
            "updateStrategy": {"type": "RollingUpdate"}},
        "status": {"currentNumberScheduled": 1, "numberMisscheduled": 0, "desiredNumberScheduled": 1, "numberReady": 1,
            "observedGeneration": 1, "updatedNumberScheduled": 1, "numberAvailable": 1}
    });
    let template = json!({EXCLUDE_IN: "5000"});
    let script = vec![
        ex(
            "GET",
            "/api/v1/namespaces",
            200,
            list(
                "NamespaceList",
                "v1",
                "1500",
                vec![
                    namespace("data", json!({"kubernetes.io/metadata.name": "data"})),
                    namespace(
                        "default",
                        json!({"istio-injection": "enabled", "kubernetes.io/metadata.name": "default"}),
                    ),
                    namespace("kube-system", json!({"kubernetes.io/metadata.name": "kube-system"})),
                ],
            ),
        ),
        ex(
            "GET",
            "/apis/apps/v1/deployments",
            200,
            list("DeploymentList", "apps/v1", "1500", vec![deployment("1234", 3, template.clone(), rolled_out(3))]),
        ),
        ex("GET", "/apis/apps/v1/statefulsets", 200, list("StatefulSetList", "apps/v1", "1500", vec![sts])),
        ex("GET", "/apis/apps/v1/daemonsets", 200, list("DaemonSetList", "apps/v1", "1500", vec![ds])),
        // Namespace `data`: the StatefulSet opted in by its template label.
        ex(
            "GET",
            "/api/v1/namespaces/data/pods",
            200,
            list(
                "PodList",
                "v1",
                "1500",
                vec![{
                    let mut p = pod("db-0", json!({"app": "db"}), json!({}), "native", true);
                    p["metadata"]["namespace"] = json!("data");
                    p
                }],
            ),
        ),
        ex("GET", "/api/v1/namespaces/data/services", 200, list("ServiceList", "v1", "1500", vec![])),
        ex(
            "GET",
            "/api/v1/namespaces/default/pods",
            200,
            list(
                "PodList",
                "v1",
                "1500",
                vec![
                    pod(
                        "helloworld-v1-7c8d9f6b5d-abcde",
                        hello_labels(),
                        json!({EXCLUDE_IN: "5000", "sidecar.istio.io/status": "{}"}),
                        "container",
                        true,
                    ),
                    // Started from the previous template (no exclusion): the workload is pending restart.
                    pod(
                        "helloworld-v1-6b7c8d9f4c-fghij",
                        hello_labels(),
                        json!({"sidecar.istio.io/status": "{}"}),
                        "container",
                        false,
                    ),
                    pod("sleep-5d8f9c7b6-klmno", json!({"app": "sleep"}), json!({}), "container", true),
                ],
            ),
        ),
        ex(
            "GET",
            "/api/v1/namespaces/default/services",
            200,
            list(
                "ServiceList",
                "v1",
                "1500",
                vec![
                    service("helloworld", json!({"app": "helloworld"}), 5000, json!("http")),
                    service("sleep", json!({"app": "sleep"}), 80, json!(80)),
                ],
            ),
        ),
    ];
    let items = played!(script, b => b.list()).expect("list");
    let names: Vec<String> = items.iter().map(|w| w.workload.to_string()).collect();
    assert_eq!(names, ["data/db", "default/helloworld-v1"], "kube-system/kube-proxy is not Istio's concern");
    let db = &items[0];
    assert_eq!((db.kind.as_str(), db.meshed, db.injected, db.ready, db.total), ("StatefulSet", true, 1, 1, 1));
    assert!(!db.pending_restart);
    let h = &items[1];
    assert_eq!(h.kind, "Deployment");
    assert!(h.meshed);
    assert!(h.pending_restart, "one running pod lacks the template's exclusion");
    assert_eq!((h.injected, h.ready, h.total), (2, 1, 2));
    assert_eq!(h.resource_version, "1234");
    assert_eq!(h.annotations.get(EXCLUDE_IN).map(String::as_str), Some("5000"));
    assert_eq!(h.services.len(), 1);
    assert_eq!(h.services[0].name, "helloworld");
    assert_eq!(h.services[0].cluster_ip.as_deref(), Some("10.96.12.34"));
    assert_eq!(
        (h.services[0].ports[0].port, h.services[0].ports[0].target_port),
        (5000, 5000),
        "named targetPort resolved"
    );
}

#[tokio::test]
async fn list_forbidden_names_the_permission_and_the_servers_message() {
    let msg = "deployments.apps is forbidden: User \"system:serviceaccount:meshpass-system:meshpass\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope";
    let script = vec![
        ex(
            "GET",
            "/api/v1/namespaces",
            200,
            list("NamespaceList", "v1", "1500", vec![namespace("default", json!({"istio-injection": "enabled"}))]),
        ),
        ex(
            "GET",
            "/apis/apps/v1/deployments",
            403,
            status(403, "Forbidden", msg, json!({"group": "apps", "kind": "deployments"})),
        ),
    ];
    let err = played!(script, b => b.list()).expect_err("forbidden");
    assert_forbidden(err, "list deployments.apps", msg);
}

// ---- get ------------------------------------------------------------------------------------

#[tokio::test]
async fn get_of_a_missing_workload_tries_each_kind_then_is_not_found() {
    let nf = |plural: &str| {
        status(
            404,
            "NotFound",
            &format!("{plural}.apps \"nope\" not found"),
            json!({"name": "nope", "group": "apps", "kind": plural}),
        )
    };
    let script = vec![
        ex("GET", "/apis/apps/v1/namespaces/default/deployments/nope", 404, nf("deployments")),
        ex("GET", "/apis/apps/v1/namespaces/default/statefulsets/nope", 404, nf("statefulsets")),
        ex("GET", "/apis/apps/v1/namespaces/default/daemonsets/nope", 404, nf("daemonsets")),
    ];
    let err = played!(script, b => b.get(&WorkloadRef::new("default", "nope"))).expect_err("missing");
    assert!(matches!(err, BackendError::NotFound(ref w) if w.name == "nope"), "{err:?}");
}

#[tokio::test]
async fn an_unanswered_request_times_out_as_unavailable() {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let keep = tokio::spawn(async move {
        // Take the request and never answer it.
        let held = handle.next_request().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(held);
    });
    let b = KubeBackend::new(kube::Client::new(svc, "default"), Vec::new())
        .with_request_timeout(Duration::from_millis(100));
    let err = b.get(&hello()).await.expect_err("timeout");
    keep.abort();
    match err {
        e @ BackendError::Unavailable { .. } => assert!(e.report().contains("did not answer within"), "{e}"),
        other => panic!("want Unavailable, got {other:?}"),
    }
}

// ---- patch ----------------------------------------------------------------------------------

#[tokio::test]
async fn patch_sends_a_merge_patch_with_the_resource_version_precondition() {
    let before = json!({EXCLUDE_OUT: "8080", "prometheus.io/scrape": "true"});
    let after = json!({EXCLUDE_IN: "5000", "prometheus.io/scrape": "true"});
    let mut script = vec![
        ex(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/helloworld-v1",
            200,
            with_type(deployment("1234", 3, before, rolled_out(3)), "Deployment"),
        ),
        Exchange {
            body: Some(json!({
                "metadata": {"resourceVersion": "1234"},
                "spec": {"template": {"metadata": {"annotations": {EXCLUDE_IN: "5000", EXCLUDE_OUT: null}}}}
            })),
            ..ex(
                "PATCH",
                "/apis/apps/v1/namespaces/default/deployments/helloworld-v1?fieldManager=meshpass",
                200,
                with_type(deployment("1240", 4, after, rolled_out(4)), "Deployment"),
            )
        },
    ];
    script.extend(describe_script(vec![pod(
        "helloworld-v1-7c8d9f6b5d-abcde",
        hello_labels(),
        json!({EXCLUDE_OUT: "8080", "sidecar.istio.io/status": "{}"}),
        "container",
        true,
    )]));
    let (client, server) = scripted(script);
    let set = BTreeMap::from([(EXCLUDE_IN.to_string(), "5000".to_string())]);
    let info =
        backend(client).patch_annotations(&hello(), "1234", set, vec![EXCLUDE_OUT.to_string()]).await.expect("patch");
    server.await.expect("script");
    assert_eq!(info.resource_version, "1240");
    assert!(info.pending_restart, "the running pod still has the old settings");
    assert_eq!(info.annotations.get(EXCLUDE_IN).map(String::as_str), Some("5000"));
    assert!(!info.annotations.contains_key(EXCLUDE_OUT));
    assert_eq!(
        info.annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true"),
        "other annotations kept"
    );
}

#[tokio::test]
async fn a_409_from_the_precondition_is_a_conflict_naming_both_versions() {
    let script = vec![
        ex("GET", "/apis/apps/v1/namespaces/default/deployments/helloworld-v1", 200,
            with_type(deployment("1234", 3, json!({}), rolled_out(3)), "Deployment")),
        Exchange {
            body: Some(json!({"metadata": {"resourceVersion": "1234"},
                "spec": {"template": {"metadata": {"annotations": {EXCLUDE_IN: "5000"}}}}})),
            ..ex("PATCH", "/apis/apps/v1/namespaces/default/deployments/helloworld-v1?fieldManager=meshpass", 409,
                status(409, "Conflict",
                    "Operation cannot be fulfilled on deployments.apps \"helloworld-v1\": the object has been modified; please apply your changes to the latest version and try again",
                    json!({"name": "helloworld-v1", "group": "apps", "kind": "deployments"})))
        },
        ex("GET", "/apis/apps/v1/namespaces/default/deployments/helloworld-v1", 200,
            with_type(deployment("1237", 3, json!({"x": "y"}), rolled_out(3)), "Deployment")),
    ];
    let (client, server) = scripted(script);
    let set = BTreeMap::from([(EXCLUDE_IN.to_string(), "5000".to_string())]);
    let err = backend(client).patch_annotations(&hello(), "1234", set, vec![]).await.expect_err("conflict");
    server.await.expect("script");
    match err {
        BackendError::Conflict { workload, expected, actual } => {
            assert_eq!(workload, hello());
            assert_eq!((expected.as_str(), actual.as_str()), ("1234", "1237"));
        }
        other => panic!("want Conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stale_version_is_a_conflict_before_anything_is_written() {
    let script = vec![ex(
        "GET",
        "/apis/apps/v1/namespaces/default/deployments/helloworld-v1",
        200,
        with_type(deployment("1299", 3, json!({}), rolled_out(3)), "Deployment"),
    )];
    let (client, server) = scripted(script);
    let err = backend(client)
        .patch_annotations(&hello(), "1234", BTreeMap::new(), vec![EXCLUDE_IN.into()])
        .await
        .expect_err("stale");
    server.await.expect("script");
    assert!(matches!(err, BackendError::Conflict { ref actual, .. } if actual == "1299"), "{err:?}");
}

#[tokio::test]
async fn annotations_istio_would_reject_never_reach_the_cluster() {
    let script = vec![ex(
        "GET",
        "/apis/apps/v1/namespaces/default/deployments/helloworld-v1",
        200,
        with_type(
            deployment("1234", 3, json!({"sidecar.istio.io/interceptionMode": "redirect"}), rolled_out(3)),
            "Deployment",
        ),
    )];
    let (client, server) = scripted(script);
    let set = BTreeMap::from([(EXCLUDE_IN.to_string(), "5000,70000".to_string())]);
    let err = backend(client).patch_annotations(&hello(), "1234", set, vec![]).await.expect_err("invalid");
    server.await.expect("script");
    match err {
        BackendError::Invalid(items) => {
            assert_eq!(items.len(), 2, "{items:?}");
            assert!(items.iter().any(|m| m.contains(EXCLUDE_IN) && m.contains("70000")), "{items:?}");
            assert!(items.iter().any(|m| m.contains("interceptionMode")), "{items:?}");
        }
        other => panic!("want Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn a_422_is_invalid_with_the_servers_message() {
    let msg = "Deployment.apps \"helloworld-v1\" is invalid: metadata.annotations: Invalid value: \"traffic.sidecar.istio.io/\": name part must be non-empty";
    let script = vec![
        ex(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/helloworld-v1",
            200,
            with_type(deployment("1234", 3, json!({}), rolled_out(3)), "Deployment"),
        ),
        Exchange {
            body: Some(json!({"metadata": {"resourceVersion": "1234"},
                "spec": {"template": {"metadata": {"annotations": {"traffic.sidecar.istio.io/": "x"}}}}})),
            ..ex(
                "PATCH",
                "/apis/apps/v1/namespaces/default/deployments/helloworld-v1?fieldManager=meshpass",
                422,
                status(
                    422,
                    "Invalid",
                    msg,
                    json!({"name": "helloworld-v1", "group": "apps", "kind": "Deployment",
                    "causes": [{"reason": "FieldValueInvalid", "message": "Invalid value: \"traffic.sidecar.istio.io/\": name part must be non-empty", "field": "metadata.annotations"}]}),
                ),
            )
        },
    ];
    let (client, server) = scripted(script);
    let set = BTreeMap::from([("traffic.sidecar.istio.io/".to_string(), "x".to_string())]);
    let err = backend(client).patch_annotations(&hello(), "1234", set, vec![]).await.expect_err("422");
    server.await.expect("script");
    assert!(matches!(err, BackendError::Invalid(ref m) if m[0].contains(msg)), "{err:?}");
}

// ---- restart + watch -------------------------------------------------------------------------

fn check_restart_body(body: &Value) {
    let ts = body["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
        .as_str()
        .unwrap_or_else(|| panic!("no restartedAt in {body}"));
    assert_eq!(
        body,
        &json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": ts}}}}})
    );
    let t: k8s_openapi::jiff::Timestamp =
        ts.parse().unwrap_or_else(|e| panic!("restartedAt {ts:?} is not RFC 3339: {e}"));
    let age = k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second();
    assert!((0..60).contains(&age), "restartedAt {ts} is not now");
    assert!(ts.ends_with('Z') && ts.len() == 20, "whole seconds, UTC, as kubectl writes it: {ts}");
}

fn watch_body(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

fn watch(rv: &str, timeout: u64, body: String) -> Exchange {
    Exchange {
        answer: body,
        ..ex("GET", &format!(
            "/apis/apps/v1/namespaces/default/deployments?watch=true&timeoutSeconds={timeout}&fieldSelector=metadata.name%3Dhelloworld-v1&allowWatchBookmarks=true&resourceVersion={rv}"
        ), 200, json!(null))
    }
}

/// The watcher's (re-)list of the one Deployment: its state at `rv`.
fn relist(rv: &str, object: Value) -> Exchange {
    ex(
        "GET",
        "/apis/apps/v1/namespaces/default/deployments?fieldSelector=metadata.name%3Dhelloworld-v1&limit=500",
        200,
        list("DeploymentList", "apps/v1", rv, vec![object]),
    )
}

/// Runs a restart of helloworld-v1 against `script` (every exchange must happen, in order) and
/// returns its progress lines.
async fn restart_lines(script: Vec<Exchange>) -> Vec<String> {
    let (client, server) = scripted(script);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let progress = Box::new(move |l: String| sink.lock().expect("lines").push(l));
    backend(client).restart(&hello(), progress).await.expect("restart");
    server.await.expect("script");
    let lines = lines.lock().expect("lines").clone();
    lines
}

#[tokio::test]
async fn restart_patches_restarted_at_and_follows_the_rollout_through_bookmarks_and_a_410() {
    let restarted = json!({"kubectl.kubernetes.io/restartedAt": "2026-11-26T10:00:00Z"});
    let progressing = |rv: &str, st: Value| with_type(deployment(rv, 4, restarted.clone(), st), "Deployment");
    // The patch answer: generation 4 not yet observed.
    let mut script = restart_start();
    script.extend([
        // The watcher lists the object first, then watches from the list's version.
        relist("1250", deployment("1250", 4, restarted.clone(), rolled_out(3))),
        // First watch: one step, a bookmark, then the server ends the watch.
        watch(
            "1250",
            290,
            watch_body(&[
                json!({"type": "MODIFIED", "object": progressing("1251", json!({"observedGeneration": 4, "replicas": 3,
                "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 1}))}),
                json!({"type": "BOOKMARK", "object": {"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"resourceVersion": "1260"}}}),
            ]),
        ),
        // Re-watch from the bookmark: too old by now (410 Gone as an ERROR event).
        watch(
            "1260",
            290,
            watch_body(&[json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "too old resource version: 1260 (1300)", "reason": "Expired", "code": 410}})]),
        ),
        // Re-list, then watch from the list's version.
        relist(
            "1310",
            deployment(
                "1305",
                4,
                restarted.clone(),
                json!({"observedGeneration": 4,
            "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1, "availableReplicas": 1, "unavailableReplicas": 1}),
            ),
        ),
        watch("1310", 290, watch_body(&[json!({"type": "MODIFIED", "object": progressing("1320", rolled_out(4))})])),
    ]);
    let lines = restart_lines(script).await;
    assert_eq!(
        lines,
        [
            "deployment.apps/helloworld-v1 restarted",
            "Waiting for deployment spec update to be observed...",
            "Waiting for deployment \"helloworld-v1\" rollout to finish: 1 out of 2 new replicas have been updated...",
            "Waiting for deployment \"helloworld-v1\" rollout to finish: 1 of 2 updated replicas are available...",
            "deployment \"helloworld-v1\" successfully rolled out",
        ]
    );
}

#[tokio::test]
async fn restart_during_the_rollout_of_a_template_change_follows_it_instead_of_rolling_again() {
    // Right after a passthrough change: generation 4 (the new annotations) not yet observed, so
    // the Deployment controller is about to roll the pods by itself. No PATCH may be sent.
    let changed = json!({"traffic.sidecar.istio.io/excludeInboundPorts": "5000"});
    let script = vec![
        ex(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/helloworld-v1",
            200,
            with_type(deployment("1240", 4, changed.clone(), rolled_out(3)), "Deployment"),
        ),
        relist("1240", deployment("1240", 4, changed.clone(), rolled_out(3))),
        watch(
            "1240",
            290,
            watch_body(&[
                json!({"type": "MODIFIED", "object": with_type(deployment("1241", 4, changed.clone(), json!({"observedGeneration": 4,
                "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 1})), "Deployment")}),
                json!({"type": "MODIFIED", "object": with_type(deployment("1242", 4, changed, rolled_out(4)), "Deployment")}),
            ]),
        ),
    ];
    // The script has no PATCH: one would not match it and fail the run.
    let lines = restart_lines(script).await;
    assert_eq!(
        lines,
        [
            "deployment.apps/helloworld-v1 is already rolling out its changed pod template; following that rollout \
             instead of restarting it again",
            "Waiting for deployment spec update to be observed...",
            "Waiting for deployment \"helloworld-v1\" rollout to finish: 1 out of 2 new replicas have been updated...",
            "deployment \"helloworld-v1\" successfully rolled out",
        ]
    );
}

#[tokio::test]
async fn a_rollout_past_its_progress_deadline_fails() {
    let restarted = json!({"kubectl.kubernetes.io/restartedAt": "2026-11-26T10:00:00Z"});
    let stuck = json!({"observedGeneration": 4, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
        "unavailableReplicas": 1, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"helloworld-v1-5d6c7b8a9f\" has timed out progressing.",
        "lastUpdateTime": "2026-11-26T10:10:00Z", "lastTransitionTime": "2026-11-26T10:10:00Z"}]});
    let mut script = restart_start();
    script.extend([
        relist("1250", deployment("1250", 4, restarted.clone(), rolled_out(3))),
        watch(
            "1250",
            290,
            watch_body(&[
                json!({"type": "MODIFIED", "object": with_type(deployment("1251", 4, restarted, stuck), "Deployment")}),
            ]),
        ),
    ]);
    let err = played!(script, b => b.restart(&hello(), Box::new(|_| {}))).expect_err("deadline");
    assert!(matches!(err, BackendError::Failed { .. }), "{err:?}");
    assert!(err.report().contains("exceeded its progress deadline"), "{err}");
}

/// GET and PATCH of a restart whose pods have not rolled yet (generation 4 not observed).
fn restart_start() -> Vec<Exchange> {
    let restarted = json!({"kubectl.kubernetes.io/restartedAt": "2026-11-26T10:00:00Z"});
    vec![
        ex(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/helloworld-v1",
            200,
            with_type(deployment("1234", 3, json!({}), rolled_out(3)), "Deployment"),
        ),
        Exchange {
            body_check: Some(check_restart_body),
            ..ex(
                "PATCH",
                "/apis/apps/v1/namespaces/default/deployments/helloworld-v1?fieldManager=meshpass",
                200,
                with_type(deployment("1250", 4, restarted, rolled_out(3)), "Deployment"),
            )
        },
    ]
}

#[tokio::test]
async fn a_rollout_whose_watch_rbac_forbids_names_the_permission() {
    let msg = "deployments.apps is forbidden: User \"system:serviceaccount:meshpass-system:meshpass\" cannot list resource \"deployments\" in API group \"apps\" in the namespace \"default\"";
    let mut script = restart_start();
    script.push(ex(
        "GET",
        "/apis/apps/v1/namespaces/default/deployments?fieldSelector=metadata.name%3Dhelloworld-v1&limit=500",
        403,
        status(403, "Forbidden", msg, json!({"group": "apps", "kind": "deployments"})),
    ));
    let err = played!(script, b => b.restart(&hello(), Box::new(|_| {}))).expect_err("forbidden");
    assert!(matches!(err, BackendError::Forbidden { .. }), "{err:?}");
    let m = err.report();
    assert!(m.contains("list and watch deployments.apps") && m.contains(msg), "{m}");
}

#[tokio::test]
async fn a_workload_deleted_during_its_rollout_fails() {
    let mut script = restart_start();
    script.push(ex(
        "GET",
        "/apis/apps/v1/namespaces/default/deployments?fieldSelector=metadata.name%3Dhelloworld-v1&limit=500",
        200,
        list("DeploymentList", "apps/v1", "1300", vec![]),
    ));
    let err = played!(script, b => b.restart(&hello(), Box::new(|_| {}))).expect_err("deleted");
    assert_eq!(err.report(), "Deployment default/helloworld-v1 was deleted during its rollout");
}

#[tokio::test]
async fn a_broken_watch_connection_is_resumed() {
    let restarted = json!({"kubectl.kubernetes.io/restartedAt": "2026-11-26T10:00:00Z"});
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let script = restart_start();
    let server = tokio::spawn(async move {
        for e in script {
            let (_, send) = handle.next_request().await.expect("request");
            send.send_response(Response::new(Body::from(e.answer.into_bytes())));
        }
        let (req, send) = handle.next_request().await.expect("list");
        assert!(req.uri().query().unwrap_or_default().contains("limit=500"), "{}", req.uri());
        send.send_response(Response::new(Body::from(
            list("DeploymentList", "apps/v1", "1250", vec![deployment("1250", 4, restarted.clone(), rolled_out(3))])
                .to_string()
                .into_bytes(),
        )));
        // The first watch fails in transport (connection reset), the second one brings the news.
        let (req, send) = handle.next_request().await.expect("watch");
        assert!(req.uri().query().unwrap_or_default().contains("watch=true"), "{}", req.uri());
        send.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer"));
        let (req, send) = handle.next_request().await.expect("watch again");
        assert!(req.uri().query().unwrap_or_default().contains("resourceVersion=1250"), "{}", req.uri());
        send.send_response(Response::new(Body::from(
            watch_body(&[json!({"type": "MODIFIED", "object": with_type(deployment("1260", 4, restarted, rolled_out(4)), "Deployment")})])
                .into_bytes(),
        )));
    });
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    backend(kube::Client::new(svc, "default"))
        .restart(&hello(), Box::new(move |l: String| sink.lock().expect("lines").push(l)))
        .await
        .expect("restart");
    server.await.expect("server");
    assert_eq!(
        lines.lock().expect("lines").last().map(String::as_str),
        Some("deployment \"helloworld-v1\" successfully rolled out")
    );
}

#[tokio::test]
async fn a_rollout_that_outlasts_the_timeout_fails_naming_the_last_status() {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.expect("get");
        send.send_response(Response::new(Body::from(
            with_type(deployment("1234", 3, json!({}), rolled_out(3)), "Deployment").to_string().into_bytes(),
        )));
        let (_, send) = handle.next_request().await.expect("patch");
        send.send_response(Response::new(Body::from(
            with_type(deployment("1250", 4, json!({}), rolled_out(3)), "Deployment").to_string().into_bytes(),
        )));
        // The watcher's list is never answered.
        let held = handle.next_request().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(held);
    });
    let b = backend(kube::Client::new(svc, "default")).with_rollout_timeout(Duration::from_millis(300));
    let err = b.restart(&hello(), Box::new(|_| {})).await.expect_err("timeout");
    server.abort();
    match err {
        e @ BackendError::Failed { .. } => {
            let m = e.report();
            assert!(m.contains("did not complete within 300ms"), "{m}");
            assert!(m.contains("Waiting for deployment spec update to be observed"), "{m}");
        }
        other => panic!("want Failed, got {other:?}"),
    }
}

// ---- check -----------------------------------------------------------------------------------

fn check_script(status_code: u16, headers: Vec<(&'static str, &'static str)>, answer: &str) -> Vec<Exchange> {
    vec![
        ex(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/helloworld-v1",
            200,
            with_type(deployment("1234", 3, json!({}), rolled_out(3)), "Deployment"),
        ),
        ex(
            "GET",
            "/api/v1/namespaces/default/services",
            200,
            list(
                "ServiceList",
                "v1",
                "1500",
                vec![service("helloworld", json!({"app": "helloworld"}), 5000, json!(5000))],
            ),
        ),
        Exchange {
            headers,
            answer: answer.to_string(),
            ..ex("GET", "/api/v1/namespaces/default/services/helloworld:5000/proxy/hello", status_code, json!(null))
        },
    ]
}

fn inbound(port: Option<u16>) -> CheckRequest {
    CheckRequest { direction: Direction::Inbound, port, path: Some("/hello".into()), target: None }
}

#[tokio::test]
async fn check_through_the_sidecar() {
    let (client, server) = scripted(check_script(
        200,
        vec![
            ("content-type", "text/html; charset=utf-8"),
            ("content-length", "60"),
            ("server", "istio-envoy"),
            ("x-envoy-upstream-service-time", "3"),
            ("x-envoy-decorator-operation", "helloworld.default.svc.cluster.local:5000/*"),
        ],
        "Hello version: v1, instance: helloworld-v1-7c8d9f6b5d-abcde\n",
    ));
    let report = backend(client).check(&hello(), &inbound(Some(5000))).await.expect("check");
    server.await.expect("script");
    assert_eq!(report.verdict, Verdict::Sidecar);
    assert_eq!(report.from, "apiserver proxy");
    assert_eq!(report.target, "GET /api/v1/namespaces/default/services/helloworld:5000/proxy/hello");
    assert_eq!(report.status_line.as_deref(), Some("HTTP/1.1 200 OK"));
    assert!(report.headers.contains(&("server".into(), "istio-envoy".into())));
    assert!(report.evidence[0].contains("istio-envoy"), "{:?}", report.evidence);
}

#[tokio::test]
async fn check_passthrough_shows_the_apps_own_headers() {
    let (client, server) = scripted(check_script(
        200,
        vec![
            ("server", "Werkzeug/3.1.3 Python/3.12.11"),
            ("content-type", "text/html; charset=utf-8"),
            ("content-length", "60"),
        ],
        "Hello version: v1, instance: helloworld-v1-7c8d9f6b5d-abcde\n",
    ));
    let report = backend(client).check(&hello(), &inbound(None)).await.expect("check");
    server.await.expect("script");
    assert_eq!(report.verdict, Verdict::Passthrough);
    assert!(report.evidence.iter().any(|e| e.contains("Werkzeug")), "{:?}", report.evidence);
}

#[tokio::test]
async fn check_forbidden_by_rbac_names_services_proxy() {
    let msg = "services \"helloworld:5000\" is forbidden: User \"system:serviceaccount:meshpass-system:meshpass\" cannot get resource \"services/proxy\" in API group \"\" in the namespace \"default\"";
    let body = status(403, "Forbidden", msg, json!({"name": "helloworld:5000", "kind": "services"})).to_string();
    let err = played!(check_script(403, vec![("content-type", "application/json")], &body), b => b.check(&hello(), &inbound(Some(5000)))).expect_err("forbidden");
    assert_forbidden(err, "`get` on `services/proxy`", msg);
}

#[tokio::test]
async fn outbound_checks_and_rule_counters_are_unsupported_without_calls() {
    let (client, server) = scripted(vec![]);
    let b = backend(client);
    let out =
        CheckRequest { direction: Direction::Outbound, port: None, path: None, target: Some("10.0.0.1:80".into()) };
    assert!(matches!(b.check(&hello(), &out).await, Err(BackendError::Unsupported(_))));
    match b.rule_counters(&hello()).await {
        Err(BackendError::Unsupported(m)) => {
            assert!(m.starts_with("rule counters live in the pods' network namespaces"), "{m}")
        }
        other => panic!("want Unsupported, got {other:?}"),
    }
    server.await.expect("script");
}

#[tokio::test]
async fn restricted_namespaces_work_without_permission_to_list_namespaces() {
    let msg = "namespaces is forbidden: User \"dev\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope";
    let script = vec![
        ex("GET", "/api/v1/namespaces", 403, status(403, "Forbidden", msg, json!({"kind": "namespaces"}))),
        ex(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments",
            200,
            list("DeploymentList", "apps/v1", "1500", vec![deployment("1234", 3, json!({}), rolled_out(3))]),
        ),
        ex(
            "GET",
            "/apis/apps/v1/namespaces/default/statefulsets",
            200,
            list("StatefulSetList", "apps/v1", "1500", vec![]),
        ),
        ex("GET", "/apis/apps/v1/namespaces/default/daemonsets", 200, list("DaemonSetList", "apps/v1", "1500", vec![])),
    ];
    let script = script.into_iter().chain(hello_pods_and_services()).collect();
    let (client, server) = scripted(script);
    let b = KubeBackend::new(client, vec!["default".into()]);
    let items = b.list().await.expect("list");
    server.await.expect("script");
    assert_eq!(items.len(), 1);
    assert!(items[0].meshed, "injection read from the pods when the namespace labels are not readable");
    assert!(!items[0].pending_restart);
    // Outside the managed namespaces a workload does not exist (and nothing is asked).
    let (client, server) = scripted(vec![]);
    let b = KubeBackend::new(client, vec!["default".into()]);
    assert!(matches!(b.get(&WorkloadRef::new("kube-system", "coredns")).await, Err(BackendError::NotFound(_))));
    server.await.expect("script");
}

// ---- mesh-wide defaults: the injector's ConfigMap ---------------------------------------

const INJECTOR_CM: &str = "/api/v1/namespaces/istio-system/configmaps/istio-sidecar-injector";

/// The ConfigMap as Istio's chart renders it: `config` (the templates) and `values` (the
/// Helm values as pretty JSON), trimmed to what matters here.
fn injector_configmap(rv: &str, values: &Value) -> Value {
    json!({"kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"name": "istio-sidecar-injector", "namespace": "istio-system", "uid": "u-inj",
            "resourceVersion": rv, "creationTimestamp": "2026-11-26T07:00:00Z",
            "labels": {"istio.io/rev": "default", "operator.istio.io/component": "Pilot", "release": "istio"}},
        "data": {"config": "defaultTemplates: [sidecar]\npolicy: enabled\n",
            "values": serde_json::to_string_pretty(values).expect("json")}})
}

fn chart_values(exclude_ip_ranges: &str) -> Value {
    json!({"global": {"hub": "docker.io/istio", "tag": "1.28.0", "proxy": {
        "autoInject": "enabled", "clusterDomain": "cluster.local", "image": "proxyv2",
        "excludeIPRanges": exclude_ip_ranges, "excludeInboundPorts": "", "excludeOutboundPorts": "",
        "includeIPRanges": "*", "includeInboundPorts": "*", "includeOutboundPorts": "", "statusPort": 15020}},
        "revision": "", "sidecarInjectorWebhook": {"rewriteAppHTTPProbe": true}})
}

#[tokio::test]
async fn the_injector_configmap_is_read_as_istios_template_reads_it() {
    let script = vec![ex("GET", INJECTOR_CM, 200, injector_configmap("4711", &chart_values("198.19.0.2/32")))];
    let v = played!(script, b => b.mesh_values()).expect("read");
    assert_eq!(v.defaults.exclude_ip_ranges.to_string(), "198.19.0.2/32");
    assert_eq!(v.defaults.include_ip_ranges.to_string(), "*");
    assert_eq!(v.defaults.status_port, 15020);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.version.as_deref(), Some("4711"));
    assert_eq!(v.source, "ConfigMap istio-system/istio-sidecar-injector, key values");

    // No injector: Istio's defaults, and the problem says why.
    let script = vec![ex(
        "GET",
        INJECTOR_CM,
        404,
        status(
            404,
            "NotFound",
            "configmaps \"istio-sidecar-injector\" not found",
            json!({"name": "istio-sidecar-injector", "kind": "configmaps"}),
        ),
    )];
    let v = played!(script, b => b.mesh_values()).expect("absent is no error");
    assert_eq!((v.defaults, v.version), (meshpass_settings::MeshDefaults::default(), None));
    assert!(v.problems[0].starts_with("no ConfigMap istio-system/istio-sidecar-injector"), "{:?}", v.problems);
}

#[tokio::test]
async fn writing_the_defaults_patches_only_the_values_under_the_configmaps_version() {
    let mut d = meshpass_settings::MeshDefaults::default();
    d.set_value("global.proxy.excludeIPRanges", "198.19.0.2/32").expect("valid");
    let after = chart_values("198.19.0.2/32");
    let script = vec![
        ex("GET", INJECTOR_CM, 200, injector_configmap("4711", &chart_values(""))),
        Exchange {
            body: Some(json!({"metadata": {"resourceVersion": "4711"},
                "data": {"values": serde_json::to_string_pretty(&after).expect("json")}})),
            ..ex("PATCH", &format!("{INJECTOR_CM}?fieldManager=meshpass"), 200, injector_configmap("4712", &after))
        },
    ];
    let v = played!(script, b => b.set_mesh_values(&d, "4711")).expect("written");
    assert_eq!((v.defaults, v.version.as_deref()), (d.clone(), Some("4712")));

    // A stale version writes nothing.
    let err = played!(vec![ex("GET", INJECTOR_CM, 200, injector_configmap("4799", &chart_values("")))], b => b.set_mesh_values(&d, "4711")).expect_err("stale");
    assert!(
        matches!(err, BackendError::Conflict { ref expected, ref actual, .. } if expected == "4711" && actual == "4799"),
        "{err:?}"
    );

    // RBAC without `patch` on the ConfigMap (the default deploy/rbac.yaml): 403 naming it.
    let script = vec![
        ex("GET", INJECTOR_CM, 200, injector_configmap("4711", &chart_values(""))),
        Exchange {
            body_check: Some(|_| {}),
            ..ex("PATCH", &format!("{INJECTOR_CM}?fieldManager=meshpass"), 403, status(403, "Forbidden",
                "configmaps \"istio-sidecar-injector\" is forbidden: User \"system:serviceaccount:meshpass-system:meshpass\" cannot patch resource \"configmaps\" in API group \"\" in the namespace \"istio-system\"",
                json!({"name": "istio-sidecar-injector", "kind": "configmaps"})))
        },
    ];
    let err = played!(script, b => b.set_mesh_values(&d, "4711")).expect_err("forbidden");
    let text = err.report();
    assert!(matches!(err, BackendError::Forbidden { .. }), "{text}");
    assert!(text.contains("patch configmaps (istio-sidecar-injector in namespace istio-system)"), "{text}");
    assert!(text.contains("cannot patch resource \"configmaps\""), "the API server's answer as the cause: {text}");
}

// ---- several clusters ----------------------------------------------------------------------

#[tokio::test]
async fn one_unreachable_cluster_does_not_stop_the_others() {
    use meshpass_kube::clusters::{Cluster, Clusters};
    let (east_client, east_server) =
        scripted(hello_cluster_list(with_type(deployment("1234", 3, json!({}), rolled_out(3)), "Deployment")));
    let clusters = Clusters::new(vec![
        Cluster { name: "east".into(), backend: backend(east_client) },
        Cluster { name: "west".into(), backend: backend(unreachable()).with_request_timeout(Duration::from_secs(5)) },
    ]);
    let results = clusters.list().await;
    east_server.await.expect("script");
    let [(east_name, east), (west_name, west)] = results.as_slice() else { panic!("two clusters") };
    assert_eq!((east_name.as_str(), west_name.as_str()), ("east", "west"), "in the order listed");
    let east = east.as_ref().expect("east answers");
    assert_eq!(east.iter().map(|w| w.workload.to_string()).collect::<Vec<_>>(), ["default/helloworld-v1"]);
    let err = west.as_ref().expect_err("west is down");
    assert!(matches!(err, BackendError::Unavailable { .. }), "{err:?}");
    assert!(err.report().contains("cannot reach the Kubernetes API server"), "{}", err.report());
}

/// The management API over two clusters, one of them unreachable: the list shows both (west
/// unreachable), a batch over both writes east's workload under its resourceVersion and fails
/// west's alone, and the mesh-wide defaults are each cluster's own injector ConfigMap.
#[tokio::test]
async fn the_api_over_two_clusters_with_one_unreachable() {
    use meshpass_api::model::{BatchOutcome, BatchRequest, BatchTarget, ClusterState, ListItems};
    use meshpass_api::server::{Reuse, Server, ServerConfig};
    use meshpass_api::{Client, NamedBackend};

    let dep = |rv: &str, ann: Value| with_type(deployment(rv, 3, ann, rolled_out(3)), "Deployment");
    let before = json!({EXCLUDE_OUT: "8080"});
    let after = json!({EXCLUDE_OUT: "8080,3306"});
    // East, in the order the API asks: the list and the ConfigMap; the batch's fresh list, the
    // ConfigMap, the mesh's policies (for each change's impact), the workload's read and merge
    // patch (under its resourceVersion), its description; then the defaults read on their own.
    let configmap = || ex("GET", INJECTOR_CM, 200, injector_configmap("4711", &chart_values("198.19.0.2/32")));
    // The list, with the cluster's mesh-wide defaults (what each workload inherits).
    let mut east = hello_cluster_list(dep("1234", before.clone()));
    east.push(configmap());
    east.extend(hello_cluster_list(dep("1234", before.clone())));
    east.push(ex("GET", INJECTOR_CM, 200, injector_configmap("4711", &chart_values("198.19.0.2/32"))));
    east.extend(mesh_policies_script(vec![], vec![]));
    east.push(ex("GET", "/apis/apps/v1/namespaces/default/deployments/helloworld-v1", 200, dep("1234", before)));
    east.push(Exchange {
        body: Some(json!({
            "metadata": {"resourceVersion": "1234"},
            "spec": {"template": {"metadata": {"annotations": {EXCLUDE_OUT: "8080,3306"}}}}
        })),
        ..ex(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/helloworld-v1?fieldManager=meshpass",
            200,
            dep("1240", after),
        )
    });
    east.extend(describe_script(vec![pod(
        "helloworld-v1-7c8d9f6b5d-abcde",
        hello_labels(),
        json!({EXCLUDE_OUT: "8080", "sidecar.istio.io/status": "{}"}),
        "container",
        true,
    )]));
    east.push(ex("GET", INJECTOR_CM, 200, injector_configmap("4711", &chart_values("198.19.0.2/32"))));
    let (east_client, east_server) = scripted(east);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ServerConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), dir.path());
    cfg.token = Some("two-clusters-token".into());
    cfg.reuse = Reuse { list_ttl: Duration::ZERO, metrics_interval: Duration::ZERO, ..Reuse::default() };
    let clusters = vec![
        NamedBackend::new("east", Arc::new(backend(east_client))),
        NamedBackend::new("west", Arc::new(backend(unreachable()))),
    ];
    let server = Server::bind_clusters(&cfg, clusters).await.expect("bind");
    let url = server.started().url.clone();
    let serving = tokio::spawn(server.run(std::future::pending()));
    let api = Client::new(&url, "two-clusters-token").expect("client");

    // The list: east's workload, naming its cluster; west shown unreachable.
    let list = api.workload_list(None, None).await.expect("list");
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        (list.items[0].cluster.as_str(), list.items[0].info.workload.to_string()),
        ("east", "default/helloworld-v1".into())
    );
    let states: Vec<(&str, ClusterState)> = list.clusters.iter().map(|c| (c.name.as_str(), c.state)).collect();
    assert_eq!(states, [("east", ClusterState::Ok), ("west", ClusterState::Unreachable)]);
    let why = list.clusters[1].message.as_deref().unwrap_or_default();
    assert!(why.contains("cannot reach the Kubernetes API server"), "{why}");

    // A batch over both: east's workload written under its version, west's failing alone.
    let target = |cluster: &str, rv: Option<&str>| BatchTarget {
        cluster: Some(cluster.into()),
        namespace: "default".into(),
        name: "helloworld-v1".into(),
        resource_version: rv.map(str::to_string),
    };
    let request = BatchRequest {
        workloads: vec![target("east", Some("1234")), target("west", None)],
        add: ListItems { outbound_ports: Some(vec!["3306".into()]), ..ListItems::default() },
        ..BatchRequest::default()
    };
    let result = api.batch(&request).await.expect("batch");
    let outcomes: Vec<(&str, BatchOutcome, u16)> =
        result.items.iter().map(|i| (i.cluster.as_str(), i.outcome, i.status)).collect();
    assert_eq!(outcomes, [("east", BatchOutcome::Changed, 200), ("west", BatchOutcome::Failed, 503)]);
    assert_eq!(result.items[0].resource_version.as_deref(), Some("1240"));
    assert_eq!(
        result.items[0].settings.as_ref().map(|s| s.outbound_ports.clone()),
        Some(vec!["8080".into(), "3306".into()])
    );
    assert!(result.items[1].message.starts_with("cluster west: "), "{}", result.items[1].message);
    assert_eq!((result.succeeded, result.failed), (1, 1));

    // Defaults are per cluster: east's from its ConfigMap, west's unavailable, naming it.
    let east_api = Client::new(&url, "two-clusters-token").expect("client").with_cluster(Some("east".into()));
    let d = east_api.get_defaults().await.expect("east's defaults");
    assert_eq!((d.cluster.as_str(), d.resource_version.as_str()), ("east", "4711"));
    assert_eq!(d.values.get("global.proxy.excludeIPRanges").map(String::as_str), Some("198.19.0.2/32"));
    let west_api = Client::new(&url, "two-clusters-token").expect("client").with_cluster(Some("west".into()));
    match west_api.get_defaults().await {
        Err(meshpass_api::ClientError::Api { status: 503, body }) => {
            assert!(body.message.starts_with("cluster west: "), "{}", body.message)
        }
        other => panic!("want 503 naming west, got {other:?}"),
    }
    let unnamed = api.get_defaults().await;
    assert!(
        matches!(unnamed, Err(meshpass_api::ClientError::Api { status: 400, ref body }) if body.error == "ambiguous"),
        "{unnamed:?}"
    );
    serving.abort();
    east_server.await.expect("east's script");
}

// ---- mutual-TLS policies ---------------------------------------------------------------------

fn policy(kind: &str, api_version: &str, ns: &str, name: &str, created: &str, spec: Value) -> Value {
    json!({"apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "77",
            "generation": 1, "creationTimestamp": created},
        "spec": spec})
}

fn sleep_deployment() -> Value {
    json!({
        "metadata": {"name": "sleep", "namespace": "default", "uid": "u-sleep", "resourceVersion": "88", "generation": 1},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sleep"}},
            "template": {"metadata": {"labels": {"app": "sleep"}},
                "spec": {"serviceAccountName": "sleep", "containers": [{"name": "sleep", "image": "curlimages/curl:8.16.0"}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    })
}

/// What `mesh_policies` asks for, cluster-wide: both policy kinds, the workloads, the
/// namespaces' labels and the Services.
fn mesh_policies_script(pas: Vec<Value>, drs: Vec<Value>) -> Vec<Exchange> {
    vec![
        ex(
            "GET",
            "/apis/security.istio.io/v1/peerauthentications",
            200,
            list("PeerAuthenticationList", "security.istio.io/v1", "1600", pas),
        ),
        ex(
            "GET",
            "/apis/networking.istio.io/v1/destinationrules",
            200,
            list("DestinationRuleList", "networking.istio.io/v1", "1600", drs),
        ),
        ex(
            "GET",
            "/apis/apps/v1/deployments",
            200,
            list(
                "DeploymentList",
                "apps/v1",
                "1600",
                vec![deployment("1234", 3, json!({}), rolled_out(3)), sleep_deployment()],
            ),
        ),
        ex("GET", "/apis/apps/v1/statefulsets", 200, list("StatefulSetList", "apps/v1", "1600", vec![])),
        ex("GET", "/apis/apps/v1/daemonsets", 200, list("DaemonSetList", "apps/v1", "1600", vec![])),
        ex(
            "GET",
            "/api/v1/namespaces",
            200,
            list("NamespaceList", "v1", "1600", vec![namespace("default", json!({"istio-injection": "enabled"}))]),
        ),
        ex(
            "GET",
            "/api/v1/services",
            200,
            list(
                "ServiceList",
                "v1",
                "1600",
                vec![
                    service("helloworld", json!({"app": "helloworld"}), 5000, json!("http")),
                    service("sleep", json!({"app": "sleep"}), 80, json!(80)),
                ],
            ),
        ),
    ]
}

#[tokio::test]
async fn mesh_policies_read_istio_policies_workloads_and_services() {
    let strict = policy(
        "PeerAuthentication",
        "security.istio.io/v1",
        "istio-system",
        "default",
        "2026-11-26T08:00:00Z",
        json!({"mtls": {"mode": "STRICT"}}),
    );
    let dr = policy(
        "DestinationRule",
        "networking.istio.io/v1",
        "default",
        "helloworld",
        "2026-11-26T08:05:00Z",
        json!({"host": "helloworld", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
    );
    let (client, task) = scripted(mesh_policies_script(vec![strict], vec![dr]));
    let m = backend(client).mesh_policies().await.expect("mesh policies");
    task.await.expect("script");
    assert_eq!(m.policies.len(), 2);
    let refs: Vec<String> = m.policies.iter().map(|s| s.resource.reference().to_string()).collect();
    assert_eq!(refs, ["PeerAuthentication istio-system/default", "DestinationRule default/helloworld"]);
    let sleep = m.view.workloads.iter().find(|w| w.id.name == "sleep").expect("sleep");
    assert!(sleep.sidecar, "injection is enabled in default");
    assert_eq!(sleep.service_account, "sleep");
    let hw = m.view.workloads.iter().find(|w| w.id.name == "helloworld-v1").expect("helloworld");
    assert_eq!(hw.service_account, "default", "no serviceAccountName");
    let svc = m.view.services.iter().find(|s| s.name == "helloworld").expect("service");
    assert_eq!((svc.ports[0].port, svc.ports[0].target_port), (5000, 5000), "named targetPort resolved");
    assert_eq!(svc.cluster_ip, Some("10.96.12.34".parse().expect("ip")));
    // The same resolution Istio does: sleep → helloworld is mutual TLS, so excluding 5000 breaks sleep.
    let view = &m.view;
    let resolver = meshpass_policy::Resolver::new(&m.policies, view);
    let d = resolver.client(sleep, svc, &svc.ports[0], hw);
    assert!(d.origination.is_mtls(), "{d:?}");
}

#[tokio::test]
async fn a_policy_the_cluster_holds_that_does_not_validate_is_named() {
    let bad = policy(
        "PeerAuthentication",
        "security.istio.io/v1",
        "default",
        "broken",
        "2026-11-26T08:00:00Z",
        json!({"mtls": {"mode": "SOMETIMES"}}),
    );
    let (client, _task) = scripted(mesh_policies_script(vec![bad], vec![]));
    let err = backend(client).mesh_policies().await.expect_err("invalid policy");
    let text = err.report();
    assert!(text.contains("PeerAuthentication default/broken") && text.contains("SOMETIMES"), "{text}");
}

#[tokio::test]
async fn reading_policies_without_rbac_names_the_permission() {
    let (client, _task) = scripted(vec![ex(
        "GET",
        "/apis/security.istio.io/v1/peerauthentications",
        403,
        status(
            403,
            "Forbidden",
            "peerauthentications.security.istio.io is forbidden: User \"system:serviceaccount:meshpass-system:meshpass\" cannot list resource \"peerauthentications\" in API group \"security.istio.io\" at the cluster scope",
            json!({"group": "security.istio.io", "kind": "peerauthentications"}),
        ),
    )]);
    let err = backend(client).mesh_policies().await.expect_err("forbidden");
    assert!(matches!(err, BackendError::Forbidden { .. }), "{err:?}");
    let text = err.report();
    assert!(text.contains("list peerauthentications.security.istio.io"), "{text}");
}

fn fix_rule() -> meshpass_policy::Resource {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: helloworld-passthrough-5000\n  namespace: default\n  labels: {app.kubernetes.io/managed-by: meshpass}\n  annotations: {passthrough.meshpass.io/fix-for: 'default/helloworld-v1:5000'}\nspec:\n  host: helloworld.default.svc.cluster.local\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 5000}\n      tls: {mode: DISABLE}\n";
    meshpass_policy::parse_documents(yaml, "default").expect("fix rule").remove(0)
}

fn created(r: &meshpass_policy::Resource) -> Value {
    let mut v = r.to_json();
    v["metadata"]["uid"] = json!("uid-fix");
    v["metadata"]["resourceVersion"] = json!("1700");
    v["metadata"]["creationTimestamp"] = json!("2026-11-26T09:00:00Z");
    v
}

#[tokio::test]
async fn the_fix_rule_is_created_kept_when_identical_and_refused_over_another_spec() {
    let rule = fix_rule();
    let path = "/apis/networking.istio.io/v1/namespaces/default/destinationrules";
    let post = |status: u16, answer: Value| {
        let mut e = ex("POST", &format!("{path}?fieldManager=meshpass"), status, answer);
        e.body = Some(rule.to_json());
        e.body_type = "application/json";
        e
    };
    let conflict = status(
        409,
        "AlreadyExists",
        "destinationrules.networking.istio.io \"helloworld-passthrough-5000\" already exists",
        json!({}),
    );
    let mut other = created(&rule);
    other["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mode"] = json!("ISTIO_MUTUAL");
    let (client, task) = scripted(vec![
        post(201, created(&rule)),
        post(409, conflict.clone()),
        ex("GET", &format!("{path}/helloworld-passthrough-5000"), 200, created(&rule)),
        post(409, conflict),
        ex("GET", &format!("{path}/helloworld-passthrough-5000"), 200, other),
    ]);
    let b = backend(client);
    b.create_policy(&rule).await.expect("created");
    b.create_policy(&rule).await.expect("an identical rule is fine");
    let err = b.create_policy(&rule).await.expect_err("another spec");
    assert!(err.report().contains("exists with another spec"), "{}", err.report());
    task.await.expect("script");
}

#[tokio::test]
async fn the_fix_rule_is_deleted_and_a_missing_one_is_fine() {
    let path = "/apis/networking.istio.io/v1/namespaces/default/destinationrules/helloworld-passthrough-5000";
    let gone = status(
        404,
        "NotFound",
        "destinationrules.networking.istio.io \"helloworld-passthrough-5000\" not found",
        json!({}),
    );
    let ok = status(200, "", "", json!({"name": "helloworld-passthrough-5000"}));
    let mut ok = ok;
    ok["status"] = json!("Success");
    // kube-rs sends the (default) DeleteOptions as the body.
    let delete = |status: u16, answer: Value| {
        let mut e = ex("DELETE", path, status, answer);
        e.body = Some(json!({}));
        e.body_type = "application/json";
        e
    };
    let (client, task) = scripted(vec![delete(200, ok), delete(404, gone)]);
    let b = backend(client);
    let r = fix_rule().reference();
    b.delete_policy(&r).await.expect("deleted");
    b.delete_policy(&r).await.expect("already gone");
    task.await.expect("script");
}
