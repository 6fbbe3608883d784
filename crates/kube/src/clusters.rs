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

/// Why a list of clusters (a clusters file, or `--context` flags) cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ClustersError {
    /// The file could not be read.
    #[error("cannot read the clusters file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML (or JSON) of the expected shape; serde's message names the line,
    /// column and field.
    #[error("the clusters file {} is not a list of clusters (`clusters: [{{context: …}}]`)", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_yaml::Error,
    },
    /// Entries are wrong: every problem, each naming its entry and field.
    #[error("{}{}", origin.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default(), problems.join("; "))]
    Invalid {
        /// The file, when the clusters came from one.
        origin: Option<PathBuf>,
        /// One line per problem (`clusters[1] (west): context is empty`).
        problems: Vec<String>,
    },
}

/// Reads and checks a clusters file: YAML or JSON, at least one cluster, every entry valid
/// ([`check_specs`]). Every problem is reported at once.
pub fn read_clusters_file(path: &Path) -> Result<Vec<ClusterSpec>, ClustersError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClustersError::Read { path: path.into(), source })?;
    let file: ClustersFile =
        serde_yaml::from_str(&text).map_err(|source| ClustersError::Parse { path: path.into(), source })?;
    check_specs(&file.clusters).map_err(|problems| ClustersError::Invalid { origin: Some(path.into()), problems })?;
    Ok(file.clusters)
}

/// Every problem with a list of clusters, each naming its entry (`clusters[N] (NAME)`) and
/// field: none at all, a name that is not `[A-Za-z0-9._-]` (1 to 63) or is listed twice, an
/// empty context, a namespace that is not a namespace name, a kubeconfig file that does not
/// exist, an empty Istio namespace or ConfigMap name.
pub fn check_specs(specs: &[ClusterSpec]) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    if specs.is_empty() {
        errors.push("no clusters listed".to_string());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in specs.iter().enumerate() {
        let n = s.name();
        let at = format!("clusters[{i}] ({n})");
        if !meshpass_api::backend::is_cluster_name(n) {
            if s.name.is_some() {
                errors.push(format!("{at}: name {n:?} must be 1 to 63 letters, digits, '.', '_' or '-'"));
            } else {
                errors.push(format!(
                    "{at}: context {n:?} cannot name the cluster (1 to 63 letters, digits, '.', '_' or '-'): give it a \
                     `name` in a clusters file"
                ));
            }
        } else if !seen.insert(n.to_string()) {
            errors.push(format!("{at}: name {n:?} is listed twice (give each cluster its own name)"));
        }
        if s.context.trim().is_empty() {
            errors.push(format!("{at}: context is empty"));
        }
        for ns in &s.namespaces {
            if !is_dns1123_label(ns) {
                errors.push(format!("{at}: namespaces: {ns:?} is not a namespace name"));
            }
        }
        if let Some(k) = &s.kubeconfig {
            if !k.is_file() {
                errors.push(format!("{at}: kubeconfig {} does not exist or is not a file", k.display()));
            }
        }
        if s.istio_namespace.as_deref().is_some_and(|ns| !is_dns1123_label(ns)) {
            errors.push(format!(
                "{at}: istio_namespace {:?} is not a namespace name",
                s.istio_namespace.as_deref().unwrap_or_default()
            ));
        }
        if s.injector_configmap.as_deref().is_some_and(str::is_empty) {
            errors.push(format!("{at}: injector_configmap is empty"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A Kubernetes namespace name (DNS-1123 label).
fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
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

    /// The clusters as the management plane serves them: each a named backend.
    pub fn into_named(self) -> Vec<meshpass_api::NamedBackend> {
        self.clusters
            .into_iter()
            .map(|c| meshpass_api::NamedBackend::new(c.name, std::sync::Arc::new(c.backend)))
            .collect()
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
        let err = meshpass_api::backend::error_chain(
            &read_clusters_file(&good).expect_err("istioNamespace is spelt istio_namespace"),
        );
        assert!(err.contains("unknown field `istioNamespace`") && err.contains("line 5"), "{err}");
        let kubeconfig = dir.path().join("west.kubeconfig");
        std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").expect("write");
        std::fs::write(
            &good,
            format!(
                "clusters:\n- {{name: east, context: kind-east, namespaces: [default]}}\n- context: west-admin\n  kubeconfig: {}\n  istio_namespace: istio\n",
                kubeconfig.display()
            ),
        )
        .expect("write");
        let specs = read_clusters_file(&good).expect("valid");
        assert_eq!(specs.iter().map(ClusterSpec::name).collect::<Vec<_>>(), ["east", "west-admin"]);
        assert_eq!(specs[1].kubeconfig.as_deref(), Some(kubeconfig.as_path()));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "clusters:\n- {name: 'a b', context: x}\n- {name: east, context: y, namespaces: [Default]}\n- {name: east, context: '', kubeconfig: /nonexistent/kc}\n",
        )
        .expect("write");
        let err = read_clusters_file(&bad).expect_err("invalid").to_string();
        for want in [
            "clusters[0] (a b): name \"a b\" must be",
            "clusters[1] (east): namespaces: \"Default\" is not a namespace name",
            "clusters[2] (east): name \"east\" is listed twice",
            "clusters[2] (east): context is empty",
            "clusters[2] (east): kubeconfig /nonexistent/kc does not exist",
        ] {
            assert!(err.contains(want), "{want:?} in {err}");
        }
        assert!(err.starts_with(&format!("{}: ", bad.display())), "names the file: {err}");
        std::fs::write(&bad, "clusters: []\n").expect("write");
        assert!(read_clusters_file(&bad).expect_err("empty").to_string().contains("no clusters listed"));
        std::fs::write(&bad, "- context: x\n").expect("write");
        // The example of the documentation reads as a clusters file.
        let example: serde_yaml::Value = serde_yaml::from_str(include_str!("../../../examples/multi-cluster.yaml"))
            .expect("examples/multi-cluster.yaml is YAML");
        let text = example["data"]["clusters.yaml"].as_str().expect("the ConfigMap's clusters.yaml");
        let mut file: ClustersFile = serde_yaml::from_str(text).expect("a clusters file");
        for c in &mut file.clusters {
            // Its kubeconfig is the Secret mounted in the pod, not a file of this machine.
            assert_eq!(c.kubeconfig.take().as_deref(), Some(Path::new("/etc/meshpass/kubeconfig/kubeconfig")));
        }
        check_specs(&file.clusters).expect("valid");
        assert_eq!(file.clusters.iter().map(ClusterSpec::name).collect::<Vec<_>>(), ["east", "west", "canary"]);
        let err = read_clusters_file(&bad).expect_err("a bare list");
        assert!(matches!(err, ClustersError::Parse { .. }), "{err:?}");
    }
}
