//! The state directory: `state.json` (manifests, current templates, ClusterIPs, network
//! settings), written atomically (temporary file + rename) so a crash never leaves half a file.
//!
//! Pods are not saved: they are cattle, recreated from the templates by the next `meshpass up`.

use crate::manifest::{DeploymentSpec, NamespaceSpec, ServiceSpec};
use crate::MeshError;
use meshpass_policy::PolicySet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The file name inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// A Service and its allocated ClusterIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredService {
    /// As applied.
    pub spec: ServiceSpec,
    /// Allocated once, kept across restarts.
    pub cluster_ip: Ipv4Addr,
}

/// Network settings of the last `meshpass up`, so that `meshpass down` knows what to remove
/// even when the supervisor died.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Prefix of every network namespace the mesh creates.
    pub netns_prefix: String,
    /// Pod address block.
    pub pod_cidr: String,
    /// Service address block.
    pub service_cidr: String,
    /// Rule backend for the pods' capture rules.
    pub backend: String,
    /// Whether excluded inbound ports skip conntrack (`meshpass up --untrack-excluded-inbound`);
    /// the management plane compiles its previews and counter labels with it.
    #[serde(default)]
    pub untrack_excluded_inbound: bool,
    /// Whether pods are captured with eBPF programs (`meshpass up --ebpf-capture`).
    #[serde(default)]
    pub ebpf_capture: bool,
}

/// Everything that survives a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, NamespaceSpec>,
    /// Deployments by `namespace/name`, with their current templates.
    pub deployments: BTreeMap<String, DeploymentSpec>,
    /// Services by `namespace/name`.
    pub services: BTreeMap<String, StoredService>,
    /// True once the sample was installed, so a deleted sample stays deleted.
    #[serde(default)]
    pub sample_installed: bool,
    /// Network settings of the last `up`.
    #[serde(default)]
    pub net: Option<NetState>,
    /// The last revision handed out: bumped on every change of a Deployment, like etcd's
    /// revision behind Kubernetes' `resourceVersion`.
    #[serde(default)]
    pub revision: u64,
    /// Each Deployment's `resourceVersion` (the revision of its last change), by
    /// `namespace/name`. Writes can name the version they were based on (optimistic
    /// concurrency), so two editors never silently overwrite each other.
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    /// The stored `PeerAuthentication`s and `DestinationRule`s, with their creation order.
    #[serde(default, skip_serializing_if = "Policies::is_empty")]
    pub policies: Policies,
    /// The mesh-wide capture values (Istio's injector `global.proxy.*` values) every meshed
    /// pod gets where its template has no annotation; Istio's defaults until changed.
    #[serde(default)]
    pub mesh_defaults: meshpass_settings::MeshDefaults,
    /// The revision of the last change of [`State::mesh_defaults`] (`0`: never changed), so
    /// that a change can name the version it was based on, like a workload's.
    #[serde(default)]
    pub defaults_version: u64,
}

/// The policy resources as the state file keeps them ([`PolicySet::to_json`]); read back,
/// every object is validated again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policies(pub PolicySet);

impl Policies {
    /// True when none are stored.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Policies {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Policies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        PolicySet::from_json(&v).map(Policies).map_err(serde::de::Error::custom)
    }
}

/// `namespace/name`, the key of namespaced objects.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl State {
    /// Stores a Deployment and gives it a new resource version.
    pub fn put_deployment(&mut self, d: DeploymentSpec) {
        let k = key(&d.namespace, &d.name);
        self.revision += 1;
        self.versions.insert(k.clone(), self.revision);
        self.deployments.insert(k, d);
    }

    /// Stores new mesh-wide defaults and gives them a new version.
    pub fn put_mesh_defaults(&mut self, d: meshpass_settings::MeshDefaults) {
        self.revision += 1;
        self.defaults_version = self.revision;
        self.mesh_defaults = d;
    }

    /// A Deployment's resource version (`"0"` for one stored before versions existed).
    pub fn version(&self, namespace: &str, name: &str) -> String {
        self.versions.get(&key(namespace, name)).copied().unwrap_or(0).to_string()
    }

    /// The path of the state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Loads the state of `dir`; `None` when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<State>, MeshError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(MeshError::io("cannot read", &path)(e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|source| MeshError::State { path, source })
    }

    /// Saves atomically: write a temporary file, fsync, rename over the old one.
    pub fn save(&self, dir: &Path) -> Result<(), MeshError> {
        let path = Self::path(dir);
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(|source| MeshError::State { path: path.clone(), source })?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            // Root's only, like the rest of the state directory the sidecars may traverse.
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)
        }
        .map_err(MeshError::io("cannot create", &tmp))?;
        f.write_all(&json).and_then(|()| f.sync_all()).map_err(MeshError::io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(MeshError::io("cannot replace", &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{parse, Object};

    #[test]
    fn round_trips_through_the_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(State::load(dir.path()).expect("no state is fine"), None);
        let yaml = include_str!("../../../examples/sample/helloworld.yaml");
        let mut state = State { sample_installed: true, ..State::default() };
        for o in parse(yaml).expect("sample parses") {
            match o {
                Object::Namespace(n) => {
                    state.namespaces.insert(n.name.clone(), n);
                }
                Object::Deployment(d) => {
                    state.deployments.insert(key(&d.namespace, &d.name), d);
                }
                Object::Service(s) => {
                    let cluster_ip = Ipv4Addr::new(198, 19, 0, 1);
                    state.services.insert(key(&s.namespace, &s.name), StoredService { spec: s, cluster_ip });
                }
                Object::Policy(_) => {}
            }
        }
        state.net = Some(NetState {
            netns_prefix: "mpm-".into(),
            pod_cidr: "198.18.0.0/16".into(),
            service_cidr: "198.19.0.0/16".into(),
            backend: "nftables".into(),
            untrack_excluded_inbound: true,
            ebpf_capture: false,
        });
        state.save(dir.path()).expect("save");
        state.save(dir.path()).expect("save again over the old file");
        assert_eq!(State::load(dir.path()).expect("load"), Some(state));
        assert!(!dir.path().join(".state.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(STATE_FILE), "{not json").expect("write");
        let err = State::load(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("state.json"), "{err}");
    }
}
