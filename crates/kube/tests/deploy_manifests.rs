//! Every manifest in `deploy/` parses into its k8s-openapi type (chosen by `kind`) without
//! losing a field: each document is deserialized and serialized back, and the result must
//! equal the original (so a misspelt or misplaced field, which serde would silently drop,
//! fails the test). Then every document of `deploy/` and `examples/` must validate offline
//! against Kubernetes 1.33's schemas with `kubernetes-validate --strict` (installed by
//! `scripts/setup`; without it the test is skipped with a message, and fails when `CI` is set).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
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

fn manifests(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("manifest directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// Every document of `files` parsed; one line per problem; the kinds found.
fn kinds_of(files: &[PathBuf]) -> (Vec<String>, Vec<String>) {
    let mut kinds = Vec::new();
    let mut problems = Vec::new();
    for file in files {
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
                "Role" => round_trip::<Role>(&doc, &what),
                "RoleBinding" => round_trip::<RoleBinding>(&doc, &what),
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
    kinds.sort();
    (kinds, problems)
}

#[test]
fn every_manifest_parses_into_its_k8s_openapi_type() {
    let files = manifests(&deploy_dir());
    assert!(!files.is_empty(), "no manifests in deploy/");
    let (kinds, problems) = kinds_of(&files);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Namespace",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let (optional, problems) = kinds_of(&manifests(&deploy_dir().join("optional")));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(optional, ["Role", "RoleBinding"]);
}

/// `group/resource[name]:verb` for every grant of the Roles (in namespace `ns`) of a file.
fn role_grants(file: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("manifest");
    let mut grants = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text).filter_map(|d| serde_yaml::Value::deserialize(d).ok()) {
        if doc["kind"] != "Role" {
            continue;
        }
        let role: Role = serde_json::from_value(serde_json::to_value(doc).expect("json")).expect("Role");
        let ns = role.metadata.namespace.clone().unwrap_or_default();
        for rule in role.rules.unwrap_or_default() {
            for group in rule.api_groups.clone().unwrap_or_default() {
                for res in rule.resources.clone().unwrap_or_default() {
                    for name in rule.resource_names.clone().unwrap_or_default() {
                        for verb in &rule.verbs {
                            grants.push(format!("{ns}:{group}/{res}[{name}]:{verb}"));
                        }
                    }
                }
            }
        }
    }
    grants.sort();
    grants
}

#[test]
fn the_injector_configmap_is_readable_and_writable_only_by_opting_in() {
    assert_eq!(
        role_grants(&deploy_dir().join("rbac.yaml")),
        ["istio-system:/configmaps[istio-sidecar-injector]:get"],
        "read the injector's values, nothing else"
    );
    assert_eq!(
        role_grants(&deploy_dir().join("optional/mesh-defaults-write.yaml")),
        ["istio-system:/configmaps[istio-sidecar-injector]:patch"]
    );
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
        "security.istio.io/peerauthentications:list",
        "networking.istio.io/destinationrules:get",
        "networking.istio.io/destinationrules:list",
        "networking.istio.io/destinationrules:create",
        "networking.istio.io/destinationrules:delete",
    ];
    want.sort();
    assert_eq!(grants, want, "the ClusterRole grants exactly what the backend uses");
}

/// Kinds of Istio's CRDs that manifests here may use. Kubernetes' own schemas do not know them,
/// and `kubernetes-validate` only warns about a kind it has no schema for, so they are set aside
/// by name (checked for `apiVersion`, `kind` and `metadata.name` only, with a printed note); any
/// other kind the validator has no schema for fails the test.
const ISTIO_KINDS: [(&str, &str); 4] = [
    ("security.istio.io", "PeerAuthentication"),
    ("security.istio.io", "AuthorizationPolicy"),
    ("networking.istio.io", "DestinationRule"),
    ("networking.istio.io", "Sidecar"),
];

/// Every `*.yaml`/`*.yml` under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `deploy/` and `examples/` validate offline against Kubernetes 1.33's OpenAPI schemas with
/// `kubernetes-validate --strict` (an unknown or misplaced field is an error), one document at
/// a time so that each result names its file and document.
#[test]
fn manifests_validate_against_kubernetes_1_33_schemas() {
    let Some(validator) = meshpass_test_support::tools::kubernetes_validate("manifests_validate_against_kubernetes")
    else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let docs_dir = tempfile::tempdir().expect("temporary directory");
    let (mut to_validate, mut notes, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for dir in ["deploy", "examples"] {
        for file in yaml_files(&root.join(dir)) {
            let rel = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
            let text = std::fs::read_to_string(&file).expect("read manifest");
            for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let what = format!("{rel} document {}", i + 1);
                let doc = match serde_yaml::Value::deserialize(de) {
                    Ok(v) if v.is_null() => continue,
                    Ok(v) => v,
                    Err(e) => {
                        problems.push(format!("{what}: not YAML: {e}"));
                        continue;
                    }
                };
                let api_version = doc["apiVersion"].as_str().unwrap_or_default();
                let kind = doc["kind"].as_str().unwrap_or_default();
                let group = api_version.split_once('/').map_or("", |(g, _)| g);
                if ISTIO_KINDS.contains(&(group, kind)) {
                    if doc["metadata"]["name"].as_str().is_none_or(str::is_empty) {
                        problems.push(format!("{what}: {kind} without metadata.name"));
                    }
                    notes.push(format!(
                        "note: {what}: {kind} ({api_version}) is an Istio CRD kind, not in Kubernetes' schemas: \
                         checked for apiVersion, kind and metadata.name only"
                    ));
                    continue;
                }
                let path = docs_dir.path().join(format!("{}-{}.yaml", rel.replace('/', "_"), i + 1));
                std::fs::write(&path, serde_yaml::to_string(&doc).expect("YAML")).expect("write document");
                to_validate.push((what, path));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(to_validate.len() >= 10, "found only {} Kubernetes documents in deploy/ and examples/", to_validate.len());
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .args(to_validate.iter().map(|(_, p)| p))
        .output()
        .expect("run kubernetes-validate");
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Name each result after its manifest, not the temporary copy.
    let mut report = report;
    for (what, path) in &to_validate {
        report = report.replace(&path.display().to_string(), what);
    }
    println!("kubernetes-validate --strict --kubernetes-version 1.33.0:\n{report}");
    for note in &notes {
        println!("{note}");
    }
    let passed = report.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed for resource ")).count();
    println!(
        "manifests: {passed} of {} Kubernetes documents valid against 1.33 (strict), {} Istio documents set aside",
        to_validate.len(),
        notes.len()
    );
    assert!(out.status.success(), "kubernetes-validate rejected a manifest (above)");
    assert!(
        !report.lines().any(|l| l.starts_with("WARN") || l.starts_with("ERROR")),
        "kubernetes-validate warned (a kind without a schema is not validated at all):\n{report}"
    );
    assert_eq!(passed, to_validate.len(), "every document validated:\n{report}");
}

#[test]
fn the_round_trip_catches_a_misspelt_field() {
    let doc = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"replica": 1, "selector": {}, "template": {}}});
    let err = round_trip::<Deployment>(&doc, "test").expect_err("a misspelt field must fail");
    assert!(err.contains("fields were lost"), "{err}");
}
