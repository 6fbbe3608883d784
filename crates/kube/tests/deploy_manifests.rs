//! Every manifest in `deploy/` parses into its k8s-openapi type (chosen by `kind`) without
//! losing a field: each document is deserialized and serialized back, and the result must
//! equal the original (so a misspelt or misplaced field, which serde would silently drop,
//! fails the test). Then `kubectl apply --dry-run=client --validate=false -f deploy/` must
//! accept the directory when kubectl is on PATH (skipped with a message otherwise).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Parses `doc` as `T` and checks that nothing was dropped or changed on the way.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| format!("{what}: does not parse: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("{what}: does not serialize: {e}"))?;
    if &back != doc {
        return Err(format!(
            "{what}: fields were lost or changed in parsing (misspelt or misplaced?)\n  manifest: {doc}\n  parsed:   {back}"
        ));
    }
    Ok(())
}

#[test]
fn every_manifest_parses_into_its_k8s_openapi_type() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    let mut kinds = Vec::new();
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read manifest");
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let what = format!("{} document {}", file.display(), i + 1);
            let yaml = match serde_yaml::Value::deserialize(de) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{what}: not YAML: {e}"));
                    continue;
                }
            };
            if yaml.is_null() {
                continue;
            }
            let doc: Value = serde_json::to_value(&yaml).expect("YAML to JSON");
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let result = match kind.as_str() {
                "Namespace" => round_trip::<Namespace>(&doc, &what),
                "ServiceAccount" => round_trip::<ServiceAccount>(&doc, &what),
                "ClusterRole" => round_trip::<ClusterRole>(&doc, &what),
                "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(&doc, &what),
                "Deployment" => round_trip::<Deployment>(&doc, &what),
                "Service" => round_trip::<Service>(&doc, &what),
                other => Err(format!("{what}: kind {other:?} is not one this test knows; add it")),
            };
            if let Err(e) = result {
                problems.push(e);
            }
            kinds.push(kind);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    kinds.sort();
    assert_eq!(kinds, ["ClusterRole", "ClusterRoleBinding", "Deployment", "Namespace", "Service", "ServiceAccount"]);
}

#[test]
fn the_cluster_role_is_least_privilege() {
    let text = std::fs::read_to_string(deploy_dir().join("rbac.yaml")).expect("rbac.yaml");
    let role = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .find(|v| v["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let role: ClusterRole = serde_json::from_value(serde_json::to_value(role).expect("json")).expect("ClusterRole");
    let mut grants: Vec<String> = Vec::new();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.unwrap_or_default() {
            for res in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    grants.push(format!("{group}/{res}:{verb}"));
                }
            }
        }
    }
    grants.sort();
    let mut want = vec![
        "apps/daemonsets:get",
        "apps/daemonsets:list",
        "apps/daemonsets:patch",
        "apps/daemonsets:watch",
        "apps/deployments:get",
        "apps/deployments:list",
        "apps/deployments:patch",
        "apps/deployments:watch",
        "apps/statefulsets:get",
        "apps/statefulsets:list",
        "apps/statefulsets:patch",
        "apps/statefulsets:watch",
        "/namespaces:list",
        "/pods:list",
        "/pods:watch",
        "/services:get",
        "/services:list",
        "/services/proxy:get",
    ];
    want.sort();
    assert_eq!(grants, want, "the ClusterRole grants exactly what the backend uses");
}

/// Discovery documents for the kinds in `deploy/`: kubectl's client-side dry run still maps
/// kinds to resources through discovery and asks whether each object exists (404 here).
fn discovery(path: &str, port: u16) -> Option<Value> {
    let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
    let res = |name: &str, kind: &str, namespaced: bool| json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind, "verbs": verbs});
    let group = |name: &str| {
        json!({"name": name, "versions": [{"groupVersion": format!("{name}/v1"), "version": "v1"}],
            "preferredVersion": {"groupVersion": format!("{name}/v1"), "version": "v1"}})
    };
    Some(match path {
        "/version" => json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1", "platform": "linux/amd64"}),
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}]}),
        "/apis" => {
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group("apps"), group("rbac.authorization.k8s.io")]})
        }
        "/api/v1" => json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            res("namespaces", "Namespace", false), res("serviceaccounts", "ServiceAccount", true), res("services", "Service", true)]}),
        "/apis/apps/v1" => json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
            "resources": [res("deployments", "Deployment", true)]}),
        "/apis/rbac.authorization.k8s.io/v1" => json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "rbac.authorization.k8s.io/v1",
            "resources": [res("clusterroles", "ClusterRole", false), res("clusterrolebindings", "ClusterRoleBinding", false)]}),
        _ => return None,
    })
}

/// A minimal API server on 127.0.0.1 answering discovery, and 404 for every object.
fn discovery_server() -> (u16, std::thread::JoinHandle<()>, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::spawn(move || {
        while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let mut reader = BufReader::new(stream);
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let target = first.split_whitespace().nth(1).unwrap_or("/");
            let path = target.split('?').next().unwrap_or(target);
            let (code, body) = match discovery(path, port) {
                Some(v) => ("200 OK", v),
                None => (
                    "404 Not Found",
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
                ),
            };
            let body = body.to_string();
            let mut stream = reader.into_inner();
            let _ = write!(stream, "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (port, thread, stop)
}

#[test]
fn kubectl_accepts_the_manifests() {
    let found = Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED kubectl apply --dry-run=client: kubectl is not on PATH");
        return;
    }
    // Client-side dry run, no schema download; the "cluster" is a discovery stub on
    // 127.0.0.1 (kubectl needs discovery to map kinds), and the throwaway kubeconfig keeps a
    // developer's real cluster out of it.
    let (port, server, stop) = discovery_server();
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, format!("apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: stub\n  context:\n    cluster: stub\n    user: stub\nusers:\n- name: stub\n  user:\n    token: none\ncurrent-context: stub\n")).expect("write kubeconfig");
    let out = Command::new("kubectl")
        .args(["apply", "--dry-run=client", "--validate=false", "-o", "name", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg("-f")
        .arg(deploy_dir())
        .env("KUBECONFIG", &kubeconfig)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kubectl");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = server.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl apply --dry-run=client rejected deploy/:\n{stdout}\n{stderr}");
    for want in [
        "namespace/meshpass-system",
        "serviceaccount/meshpass",
        "clusterrole.rbac.authorization.k8s.io/meshpass",
        "clusterrolebinding.rbac.authorization.k8s.io/meshpass",
        "deployment.apps/meshpass",
        "service/meshpass",
    ] {
        assert!(stdout.contains(want), "kubectl did not list {want}:\n{stdout}\n{stderr}");
    }
}

#[test]
fn the_round_trip_catches_a_misspelt_field() {
    let doc = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"replica": 1, "selector": {}, "template": {}}});
    let err = round_trip::<Deployment>(&doc, "test").expect_err("a misspelt field must fail");
    assert!(err.contains("fields were lost"), "{err}");
}
