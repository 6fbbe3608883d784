//! Several clusters behind one management plane (`meshpass serve --kube --context A
//! --context B`, or a file listing them): each is a [`KubeBackend`] of its own, named, and
//! asked on its own, so that one cluster that cannot be reached is reported as unreachable
//! while the others keep answering.
//!
//! Clusters are asked concurrently (one request at a time per cluster, as a single
//! [`KubeBackend`] does), so a cluster that times out delays a listing by its timeout, not
//! by the sum of every cluster's.

use crate::error::KubeError;
use crate::injector::InjectorConfigMap;
use crate::KubeBackend;
use meshpass_api::model::WorkloadInfo;
use meshpass_api::BackendError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One cluster as the operator lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The name every answer carries (default: the context's name).
    #[serde(default)]
    pub name: Option<String>,
    /// The kubeconfig context.
    pub context: String,
    /// The kubeconfig file (default: `KUBECONFIG` or `~/.kube/config`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Only these namespaces (default: every namespace with injection).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Istio's namespace in this cluster (default `istio-system`).
    #[serde(default)]
    pub istio_namespace: Option<String>,
    /// The injector's ConfigMap (default `istio-sidecar-injector`).
    #[serde(default)]
    pub injector_configmap: Option<String>,
}

impl ClusterSpec {
    /// A cluster named after its context.
    pub fn context(context: impl Into<String>, namespaces: Vec<String>) -> Self {
        ClusterSpec {
            name: None,
            context: context.into(),
            kubeconfig: None,
            namespaces,
            istio_namespace: None,
            injector_configmap: None,
        }
    }

    /// The name answers carry.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.context)
    }
}

/// The clusters file (`meshpass serve --kube --clusters FILE`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClustersFile {
    /// The clusters, in the order they are shown.
    pub clusters: Vec<ClusterSpec>,
}

/// Reads and checks a clusters file: YAML or JSON, at least one cluster, names unique and
/// usable in a URL query (`[A-Za-z0-9._-]`). Every problem is reported at once.
pub fn read_clusters_file(path: &Path) -> Result<Vec<ClusterSpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: ClustersFile = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    check_specs(&file.clusters).map_err(|errs| format!("{}: {}", path.display(), errs.join("; ")))?;
    Ok(file.clusters)
}

/// Every problem with a list of clusters: none at all, duplicate names, names that are not
/// `[A-Za-z0-9._-]+`.
pub fn check_specs(specs: &[ClusterSpec]) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    if specs.is_empty() {
        errors.push("no clusters listed".to_string());
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in specs {
        let n = s.name();
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            errors.push(format!("cluster name {n:?} must be letters, digits, '.', '_' or '-'"));
        }
        if !seen.insert(n.to_string()) {
            errors.push(format!("cluster name {n:?} is listed twice"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A named cluster.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Its name.
    pub name: String,
    /// Its backend.
    pub backend: KubeBackend,
}

/// Several clusters, in the order listed.
#[derive(Clone, Debug)]
pub struct Clusters {
    clusters: Vec<Cluster>,
}

impl Clusters {
    /// Clusters from ready backends (tests build them over mock API servers).
    pub fn new(clusters: Vec<Cluster>) -> Self {
        Clusters { clusters }
    }

    /// Loads each cluster's kubeconfig context and builds its client. A cluster that cannot
    /// be reached is *not* an error here (it is reported as unreachable when asked); a
    /// kubeconfig or context that cannot be loaded is, because that is a mistake in the
    /// command line, not an outage.
    pub async fn connect(specs: Vec<ClusterSpec>) -> Result<Self, KubeError> {
        let mut clusters = Vec::with_capacity(specs.len());
        for s in specs {
            let backend = KubeBackend::for_context(s.kubeconfig.as_deref(), &s.context, s.namespaces.clone()).await?;
            let mut at = InjectorConfigMap::default();
            if let Some(ns) = &s.istio_namespace {
                at.namespace = ns.clone();
            }
            if let Some(n) = &s.injector_configmap {
                at.name = n.clone();
            }
            clusters.push(Cluster { name: s.name().to_string(), backend: backend.with_injector_configmap(at) });
        }
        Ok(Clusters { clusters })
    }

    /// The clusters, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters.iter()
    }

    /// The cluster named `name`.
    pub fn get(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Every cluster's workloads, asked concurrently; each cluster's own outcome, in order.
    pub async fn list(&self) -> Vec<(String, Result<Vec<WorkloadInfo>, BackendError>)> {
        use meshpass_api::Backend;
        let lists = self.clusters.iter().map(|c| async move { (c.name.clone(), c.backend.list().await) });
        futures::future::join_all(lists).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clusters_file_names_every_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.yaml");
        std::fs::write(
            &good,
            "clusters:\n- {name: east, context: kind-east, namespaces: [default]}\n- context: west-admin\n  kubeconfig: /etc/west.kubeconfig\n  istioNamespace: istio\n",
        )
        .expect("write");
        let err = read_clusters_file(&good).expect_err("istioNamespace is spelt istio_namespace");
        assert!(err.contains("unknown field"), "{err}");
        std::fs::write(
            &good,
            "clusters:\n- {name: east, context: kind-east, namespaces: [default]}\n- context: west-admin\n  kubeconfig: /etc/west.kubeconfig\n  istio_namespace: istio\n",
        )
        .expect("write");
        let specs = read_clusters_file(&good).expect("valid");
        assert_eq!(specs.iter().map(ClusterSpec::name).collect::<Vec<_>>(), ["east", "west-admin"]);
        assert_eq!(specs[1].kubeconfig.as_deref(), Some(Path::new("/etc/west.kubeconfig")));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "clusters:\n- {name: 'a b', context: x}\n- {name: east, context: y}\n- {name: east, context: z}\n",
        )
        .expect("write");
        let err = read_clusters_file(&bad).expect_err("invalid");
        assert!(err.contains("\"a b\" must be") && err.contains("\"east\" is listed twice"), "{err}");
        std::fs::write(&bad, "clusters: []\n").expect("write");
        assert!(read_clusters_file(&bad).expect_err("empty").contains("no clusters listed"));
    }
}
