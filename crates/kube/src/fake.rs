//! An in-memory Kubernetes API server, as a tower service behind a real [`kube::Client`]:
//! enough of the API for [`crate::KubeBackend`] (list, get, JSON merge patch with the
//! `resourceVersion` precondition, watch, the services proxy) over Istio's helloworld-v1 +
//! sleep sample in namespace `default` (`istio-injection=enabled`).
//!
//! It answers with bodies shaped as the real API server's (lists with `kind`, `apiVersion`
//! and `metadata.resourceVersion`; `Status` objects for errors; newline-delimited watch
//! events). Unlike a real cluster, changing the pod template does not roll the pods by
//! itself: only a restart (a new `kubectl.kubernetes.io/restartedAt`) replaces them, at once,
//! and the next watch reports the rollout's steps. So "Pending restart" stays visible until
//! the user restarts, as with the local mesh. The services proxy answers as Envoy
//! (`server: istio-envoy`) unless the running pod's `excludeInboundPorts` names the port.
//!
//! Used by `examples/kube-mock-server.rs` (the GUI end-to-end test's server) and tests.

use bytes::Bytes;
use kube::client::Body;
use serde_json::{json, Value};
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

/// The fake cluster's state; clone it to share.
#[derive(Clone, Debug)]
pub struct FakeCluster {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// The cluster-wide resourceVersion counter (etcd's revision).
    rv: u64,
    namespaces: Vec<Value>,
    /// (namespace, name) → Deployment.
    deployments: BTreeMap<(String, String), Value>,
    pods: Vec<Value>,
    services: Vec<Value>,
    /// Watch events a restart queued for the next watch of that Deployment.
    pending_events: BTreeMap<(String, String), Vec<Value>>,
    /// Every request, `METHOD path?query`, for tests.
    log: Vec<String>,
}

type Reply = http::Response<Body>;

fn reply(code: u16, body: &Value) -> Reply {
    let mut r = http::Response::new(Body::from(body.to_string().into_bytes()));
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// A `Status` object exactly as the API server sends it for a failed request.
pub fn status(code: u16, reason: &str, message: &str, details: Value) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    });
    if !details.is_null() {
        s["details"] = details;
    }
    s
}

fn not_found(kind_plural: &str, group: &str, name: &str) -> Reply {
    let what = if group.is_empty() { kind_plural.to_string() } else { format!("{kind_plural}.{group}") };
    reply(
        404,
        &status(
            404,
            "NotFound",
            &format!("{what} \"{name}\" not found"),
            json!({"name": name, "group": group, "kind": kind_plural}),
        ),
    )
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `k=v,k2=v2` (the equality subset of label selectors, all the backend sends for the sample).
fn labels_match(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim()),
        None => false,
    })
}

fn field_name_match(q: &BTreeMap<String, String>, obj: &Value) -> bool {
    match q.get("fieldSelector").and_then(|f| f.strip_prefix("metadata.name=")) {
        Some(name) => obj["metadata"]["name"].as_str() == Some(name),
        None => true,
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn short_hash(v: &Value) -> String {
    let mut h = DefaultHasher::new();
    v.to_string().hash(&mut h);
    let x = h.finish();
    // Kubernetes' pod-template-hash alphabet: no vowels, no look-alikes.
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10).map(|i| ALPHA[((x >> (i * 6)) % ALPHA.len() as u64) as usize] as char).collect()
}

impl Default for FakeCluster {
    fn default() -> Self {
        Self::sample()
    }
}

impl FakeCluster {
    /// Istio's helloworld-v1 (Service `helloworld:5000`) and sleep (Service `sleep:80`) in
    /// namespace `default` with injection enabled, one injected, ready pod each; plus
    /// namespace `kube-system` (no injection) with a DaemonSet-less, Deployment `coredns`
    /// that meshpass must not list.
    pub fn sample() -> Self {
        let mut st = State {
            rv: 1000,
            namespaces: vec![
                json!({"metadata": {"name": "default", "uid": "0c0f7ad0-0000-4000-8000-000000000001", "resourceVersion": "11",
                        "creationTimestamp": "2026-11-26T08:00:00Z",
                        "labels": {"istio-injection": "enabled", "kubernetes.io/metadata.name": "default"}},
                       "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
                json!({"metadata": {"name": "kube-system", "uid": "0c0f7ad0-0000-4000-8000-000000000002", "resourceVersion": "4",
                        "creationTimestamp": "2026-11-26T08:00:00Z",
                        "labels": {"kubernetes.io/metadata.name": "kube-system"}},
                       "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
            ],
            deployments: BTreeMap::new(),
            pods: Vec::new(),
            services: Vec::new(),
            pending_events: BTreeMap::new(),
            log: Vec::new(),
        };
        st.add_deployment(
            "default",
            "helloworld-v1",
            json!({"app": "helloworld", "version": "v1"}),
            5000,
            "docker.io/istio/examples-helloworld-v1:1.0",
        );
        st.add_deployment("default", "sleep", json!({"app": "sleep"}), 80, "curlimages/curl:8.16.0");
        st.add_deployment(
            "kube-system",
            "coredns",
            json!({"k8s-app": "kube-dns"}),
            53,
            "registry.k8s.io/coredns/coredns:v1.12.0",
        );
        st.add_service("default", "helloworld", json!({"app": "helloworld"}), 5000, 5000, "10.96.12.34");
        st.add_service("default", "sleep", json!({"app": "sleep"}), 80, 80, "10.96.56.78");
        FakeCluster { state: Arc::new(Mutex::new(st)) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent JSON values behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kube-rs client whose requests this fake answers.
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: http::Request<Body>| {
            let me = me.clone();
            async move { Ok::<Reply, Infallible>(me.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// A Deployment as stored now.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock().deployments.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// The pods as stored now.
    pub fn pods(&self) -> Vec<Value> {
        self.lock().pods.clone()
    }

    /// Answers one request.
    pub async fn handle(&self, req: http::Request<Body>) -> Reply {
        let (parts, body) = req.into_parts();
        let body: Bytes = body.collect_bytes().await.unwrap_or_default();
        let mut st = self.lock();
        st.log.push(format!("{} {}", parts.method, parts.uri));
        st.route(&parts, &body)
    }
}

impl State {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn add_deployment(&mut self, ns: &str, name: &str, labels: Value, port: u16, image: &str) {
        let rv = self.next_rv();
        let d = json!({
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("d3b07384-{:04x}-4000-8000-{:012x}", port, self.rv),
                "resourceVersion": rv, "generation": 1, "creationTimestamp": "2026-11-26T08:10:00Z",
                "labels": labels,
                "annotations": {"deployment.kubernetes.io/revision": "1"}
            },
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": name.split('-').next().unwrap_or(name), "image": image,
                        "ports": [{"containerPort": port, "protocol": "TCP"}],
                        "resources": {}, "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
                        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                        "securityContext": {}, "schedulerName": "default-scheduler"}
                },
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600
            },
            "status": {
                "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                "conditions": [
                    {"type": "Available", "status": "True", "lastUpdateTime": "2026-11-26T08:10:05Z",
                     "lastTransitionTime": "2026-11-26T08:10:05Z", "reason": "MinimumReplicasAvailable",
                     "message": "Deployment has minimum availability."},
                    {"type": "Progressing", "status": "True", "lastUpdateTime": "2026-11-26T08:10:05Z",
                     "lastTransitionTime": "2026-11-26T08:10:00Z", "reason": "NewReplicaSetAvailable",
                     "message": format!("ReplicaSet \"{name}-{}\" has successfully progressed.", short_hash(&labels))}
                ]
            }
        });
        let injected = self
            .namespaces
            .iter()
            .any(|n| n["metadata"]["name"] == ns && n["metadata"]["labels"]["istio-injection"] == "enabled");
        let pod = self.pod_for(&d, injected);
        self.pods.push(pod);
        self.deployments.insert((ns.to_string(), name.to_string()), d);
    }

    /// A running, ready pod of Deployment `d`'s current template (with Istio's sidecar when
    /// `injected`, as the injector would add it).
    fn pod_for(&mut self, d: &Value, injected: bool) -> Value {
        let ns = d["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = d["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let template = &d["spec"]["template"];
        let hash = short_hash(template);
        let suffix: String = short_hash(&json!([hash, self.rv])).chars().take(5).collect();
        let mut labels = template["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!(hash);
        let mut annotations = template["metadata"]["annotations"].clone();
        if !annotations.is_object() {
            annotations = json!({});
        }
        let mut containers = template["spec"]["containers"].clone();
        let mut statuses =
            vec![json!({"name": containers[0]["name"], "ready": true, "restartCount": 0, "started": true,
            "image": containers[0]["image"], "imageID": "", "containerID": "containerd://0",
            "state": {"running": {"startedAt": "2026-11-26T08:10:03Z"}}})];
        if injected {
            annotations["sidecar.istio.io/status"] = json!(
                "{\"initContainers\":[\"istio-init\"],\"containers\":[\"istio-proxy\"],\"volumes\":[\"istio-envoy\",\"istio-data\",\"istio-podinfo\",\"istio-token\",\"istiod-ca-cert\"],\"imagePullSecrets\":null,\"revision\":\"default\"}"
            );
            annotations["kubectl.kubernetes.io/default-container"] = containers[0]["name"].clone();
            if let Some(list) = containers.as_array_mut() {
                list.push(json!({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.28.0",
                    "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
                    "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}]}));
            }
            statuses.push(json!({"name": "istio-proxy", "ready": true, "restartCount": 0, "started": true,
                "image": "docker.io/istio/proxyv2:1.28.0", "imageID": "", "containerID": "containerd://1",
                "state": {"running": {"startedAt": "2026-11-26T08:10:04Z"}}}));
        }
        let rv = self.next_rv();
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": format!("{name}-{hash}-{suffix}"), "generateName": format!("{name}-{hash}-"),
                "namespace": ns, "uid": format!("5f0c1a2b-0000-4000-8000-{:012x}", self.rv), "resourceVersion": rv,
                "creationTimestamp": "2026-11-26T08:10:01Z", "labels": labels, "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-{hash}"),
                    "uid": "7a1c0000-0000-4000-8000-000000000000", "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {"containers": containers, "restartPolicy": "Always", "nodeName": "kind-control-plane",
                     "serviceAccountName": "default"},
            "status": {
                "phase": "Running", "podIP": format!("10.244.0.{}", self.rv % 250 + 2), "hostIP": "172.18.0.2",
                "startTime": "2026-11-26T08:10:01Z", "qosClass": "BestEffort",
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-26T08:10:02Z"},
                    {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-26T08:10:05Z"},
                    {"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-26T08:10:05Z"},
                    {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-26T08:10:01Z"}
                ],
                "containerStatuses": statuses
            }
        })
    }

    fn add_service(&mut self, ns: &str, name: &str, selector: Value, port: u16, target: u16, ip: &str) {
        let rv = self.next_rv();
        self.services.push(json!({
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "uid": format!("9e107d9d-0000-4000-8000-{:012x}", self.rv),
                "resourceVersion": rv, "creationTimestamp": "2026-11-26T08:10:00Z",
                "labels": {"app": name, "service": name}},
            "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": target}],
                "selector": selector, "clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster"},
            "status": {"loadBalancer": {}}
        }));
    }

    fn list(&self, kind: &str, api_version: &str, items: Vec<Value>) -> Reply {
        reply(
            200,
            &json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
        )
    }

    fn route(&mut self, parts: &http::request::Parts, body: &[u8]) -> Reply {
        let q = query(&parts.uri);
        let path = parts.uri.path().to_string();
        let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let get = parts.method == http::Method::GET;
        match seg.as_slice() {
            ["version"] if get => reply(
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-05-15T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64"}),
            ),
            ["api", "v1", "namespaces"] if get => {
                let items = self.namespaces.iter().filter(|n| field_name_match(&q, n)).cloned().collect();
                self.list("NamespaceList", "v1", items)
            }
            ["api", "v1", "pods"] if get => self.pods_list(None, &q),
            ["api", "v1", "namespaces", ns, "pods"] if get => self.pods_list(Some(ns), &q),
            ["api", "v1", "namespaces", ns, "services"] if get => {
                let items = self.services.iter().filter(|s| s["metadata"]["namespace"] == *ns).cloned().collect();
                self.list("ServiceList", "v1", items)
            }
            ["api", "v1", "namespaces", ns, "services", target, "proxy", rest @ ..] if get => {
                self.proxy(ns, target, &rest.join("/"))
            }
            ["apis", "apps", "v1", plural] if get => self.workloads(None, plural, &q),
            ["apis", "apps", "v1", "namespaces", ns, plural] if get => self.workloads(Some(ns), plural, &q),
            ["apis", "apps", "v1", "namespaces", ns, plural, name] => {
                let key = (ns.to_string(), name.to_string());
                if *plural != "deployments" || !self.deployments.contains_key(&key) {
                    return not_found(plural, "apps", name);
                }
                if get {
                    let d = self.deployments.get(&key).cloned().unwrap_or_default();
                    reply(200, &d)
                } else if parts.method == http::Method::PATCH {
                    self.patch(&key, parts, body)
                } else {
                    reply(
                        405,
                        &status(
                            405,
                            "MethodNotAllowed",
                            "the server does not allow this method on the requested resource",
                            Value::Null,
                        ),
                    )
                }
            }
            _ => reply(404, &status(404, "NotFound", "the server could not find the requested resource", Value::Null)),
        }
    }

    fn pods_list(&self, ns: Option<&str>, q: &BTreeMap<String, String>) -> Reply {
        let items = self
            .pods
            .iter()
            .filter(|p| ns.is_none_or(|ns| p["metadata"]["namespace"] == ns))
            .filter(|p| q.get("labelSelector").is_none_or(|s| labels_match(s, &p["metadata"]["labels"])))
            .cloned()
            .collect();
        self.list("PodList", "v1", items)
    }

    fn workloads(&mut self, ns: Option<&str>, plural: &str, q: &BTreeMap<String, String>) -> Reply {
        let kind = match plural {
            "deployments" => "Deployment",
            "statefulsets" => "StatefulSet",
            "daemonsets" => "DaemonSet",
            _ => {
                return reply(
                    404,
                    &status(404, "NotFound", "the server could not find the requested resource", Value::Null),
                )
            }
        };
        let items: Vec<Value> = if plural == "deployments" {
            self.deployments
                .values()
                .filter(|d| ns.is_none_or(|ns| d["metadata"]["namespace"] == ns))
                .filter(|d| field_name_match(q, d))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if q.get("watch").map(String::as_str) == Some("true") {
            return self.watch(kind, items, q);
        }
        // List items carry no kind/apiVersion, exactly as the API server sends them.
        let items = items
            .into_iter()
            .map(|mut d| {
                if let Some(o) = d.as_object_mut() {
                    o.remove("kind");
                    o.remove("apiVersion");
                }
                d
            })
            .collect();
        self.list(&format!("{kind}List"), "apps/v1", items)
    }

    fn watch(&mut self, kind: &str, items: Vec<Value>, q: &BTreeMap<String, String>) -> Reply {
        let since: u64 = q.get("resourceVersion").and_then(|r| r.parse().ok()).unwrap_or(0);
        let mut lines = Vec::new();
        for d in &items {
            let key = (
                d["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
                d["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            );
            let queued = self.pending_events.remove(&key).unwrap_or_default();
            if queued.is_empty() {
                let rv: u64 = d["metadata"]["resourceVersion"].as_str().and_then(|r| r.parse().ok()).unwrap_or(0);
                if rv > since {
                    lines.push(json!({"type": "MODIFIED", "object": d}));
                }
            } else {
                lines.extend(queued.into_iter().map(|o| json!({"type": "MODIFIED", "object": o})));
            }
        }
        if q.get("allowWatchBookmarks").map(String::as_str) == Some("true") {
            lines.push(json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "apps/v1",
                "metadata": {"resourceVersion": self.rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}));
        }
        let mut text = String::new();
        for l in lines {
            text.push_str(&l.to_string());
            text.push('\n');
        }
        let mut r = http::Response::new(Body::from(text.into_bytes()));
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r
    }

    fn patch(&mut self, key: &(String, String), parts: &http::request::Parts, body: &[u8]) -> Reply {
        let ct = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if ct != "application/merge-patch+json" {
            return reply(415, &status(415, "UnsupportedMediaType", &format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {ct:?})"), Value::Null));
        }
        let Ok(mut patch) = serde_json::from_slice::<Value>(body) else {
            return reply(400, &status(400, "BadRequest", "error decoding patch: invalid JSON", Value::Null));
        };
        let Some(mut d) = self.deployments.get(key).cloned() else {
            return not_found("deployments", "apps", &key.1);
        };
        let current_rv = d["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
        if let Some(want) = patch["metadata"]["resourceVersion"].as_str() {
            if want != current_rv {
                return reply(409, &status(409, "Conflict",
                    &format!("Operation cannot be fulfilled on deployments.apps \"{}\": the object has been modified; please apply your changes to the latest version and try again", key.1),
                    json!({"name": key.1, "group": "apps", "kind": "deployments"})));
            }
        }
        if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let before_spec = d["spec"].clone();
        let before_restart =
            d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].clone();
        merge_patch(&mut d, &patch);
        // An emptied annotations map disappears, as the API server's defaulting does.
        if d["spec"]["template"]["metadata"]["annotations"].as_object().is_some_and(|m| m.is_empty()) {
            if let Some(m) = d["spec"]["template"]["metadata"].as_object_mut() {
                m.remove("annotations");
            }
        }
        if d["spec"] == before_spec {
            // A no-op patch changes nothing, not even the resourceVersion.
            return reply(200, &d);
        }
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        d["metadata"]["generation"] = json!(generation);
        d["metadata"]["resourceVersion"] = json!(self.next_rv());
        let restarted =
            d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] != before_restart;
        if !restarted {
            // Recorded at once (see the module doc: no automatic rollout in this fake).
            d["status"]["observedGeneration"] = json!(generation);
            self.deployments.insert(key.clone(), d.clone());
            return reply(200, &d);
        }
        // A restart: the reply shows the new generation not yet observed; the next watch
        // shows a new pod coming up, then the old one gone.
        let answer = d.clone();
        let mut step = d.clone();
        step["status"] = json!({"observedGeneration": generation, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1,
            "availableReplicas": 1, "unavailableReplicas": 1});
        step["metadata"]["resourceVersion"] = json!(self.next_rv());
        let mut done = d.clone();
        done["status"]["observedGeneration"] = json!(generation);
        done["status"]["replicas"] = json!(1);
        done["status"]["updatedReplicas"] = json!(1);
        done["status"]["readyReplicas"] = json!(1);
        done["status"]["availableReplicas"] = json!(1);
        done["metadata"]["resourceVersion"] = json!(self.next_rv());
        let injected = self.pods.iter().any(|p| {
            p["metadata"]["namespace"] == key.0.as_str()
                && labels_match(&selector_string(&d), &p["metadata"]["labels"])
                && p["spec"]["containers"].as_array().is_some_and(|cs| cs.iter().any(|c| c["name"] == "istio-proxy"))
        });
        let sel = selector_string(&d);
        self.pods.retain(|p| {
            !(p["metadata"]["namespace"] == key.0.as_str() && labels_match(&sel, &p["metadata"]["labels"]))
        });
        let pod = self.pod_for(&done, injected);
        self.pods.push(pod);
        self.pending_events.insert(key.clone(), vec![with_type(step), with_type(done.clone())]);
        self.deployments.insert(key.clone(), done);
        reply(200, &answer)
    }

    fn proxy(&self, ns: &str, target: &str, rest: &str) -> Reply {
        let (svc_name, port) = target.split_once(':').unwrap_or((target, ""));
        let Some(svc) =
            self.services.iter().find(|s| s["metadata"]["namespace"] == ns && s["metadata"]["name"] == svc_name)
        else {
            return not_found("services", "", svc_name);
        };
        let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let Some(p) = ports.iter().find(|p| {
            port.is_empty() || p["port"].as_u64().is_some_and(|n| n.to_string() == port) || p["name"] == port
        }) else {
            return reply(
                503,
                &status(
                    503,
                    "ServiceUnavailable",
                    &format!("no endpoints available for service \"{svc_name}:{port}\""),
                    Value::Null,
                ),
            );
        };
        let target_port = p["targetPort"].as_u64().unwrap_or_default();
        let sel = svc["spec"]["selector"].as_object().map(|m| {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
        });
        let pod = self.pods.iter().find(|p| {
            p["metadata"]["namespace"] == ns
                && sel.as_deref().is_some_and(|s| labels_match(s, &p["metadata"]["labels"]))
        });
        let Some(pod) = pod else {
            return reply(
                503,
                &status(
                    503,
                    "ServiceUnavailable",
                    &format!("no endpoints available for service \"{svc_name}\""),
                    Value::Null,
                ),
            );
        };
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let excluded = pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"]
            .as_str()
            .is_some_and(|v| v.split(',').any(|x| x.trim() == target_port.to_string()));
        let sidecar =
            pod["spec"]["containers"].as_array().is_some_and(|cs| cs.iter().any(|c| c["name"] == "istio-proxy"));
        let is_hello = svc_name == "helloworld";
        if !is_hello && (excluded || !sidecar) {
            // sleep listens on nothing: without the sidecar the API server's dial is refused.
            let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
            return reply(
                503,
                &status(
                    503,
                    "ServiceUnavailable",
                    &format!("error trying to reach service: dial tcp {ip}:{target_port}: connect: connection refused"),
                    Value::Null,
                ),
            );
        }
        let (code, text) = if is_hello {
            (200, format!("Hello version: v1, instance: {pod_name}\n"))
        } else {
            (
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
                    .to_string(),
            )
        };
        let mut r = http::Response::new(Body::from(text.clone().into_bytes()));
        *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
        let h = r.headers_mut();
        let mut put = |k: &'static str, v: String| {
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                h.append(k, v);
            }
        };
        if excluded || !sidecar {
            put("server", "Werkzeug/3.1.3 Python/3.12.11".into());
            put("date", "Thu, 26 Nov 2026 10:00:00 GMT".into());
            put("content-type", "text/html; charset=utf-8".into());
            put("content-length", text.len().to_string());
        } else {
            put("content-type", if is_hello { "text/html; charset=utf-8".into() } else { "text/plain".into() });
            put("content-length", text.len().to_string());
            put("server", "istio-envoy".into());
            put("date", "Thu, 26 Nov 2026 10:00:00 GMT".into());
            put("x-envoy-upstream-service-time", "3".into());
            put("x-envoy-decorator-operation", format!("{svc_name}.{ns}.svc.cluster.local:{port}/*"));
        }
        let _ = rest;
        r
    }
}

fn selector_string(d: &Value) -> String {
    d["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// Watch event objects carry `kind` and `apiVersion` (unlike list items).
fn with_type(mut v: Value) -> Value {
    v["kind"] = json!("Deployment");
    v["apiVersion"] = json!("apps/v1");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_merge_patch() {
        assert_eq!(decode("app%3Dhelloworld%2Cversion%3Dv1"), "app=helloworld,version=v1");
        assert_eq!(decode("a+b%"), "a b%");
        let mut t = json!({"a": {"b": 1, "c": 2}});
        merge_patch(&mut t, &json!({"a": {"b": null, "d": 3}}));
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}}));
    }
}
