//! The mesh as policy resolution sees it: workloads (their pod template's labels, service
//! account and whether they run a sidecar) and the Services that select them. They cross
//! process boundaries (the local mesh's control socket) as JSON, so they read back too.

use crate::meta::selector_matches;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// The cluster's DNS domain: Services are `NAME.NAMESPACE.svc.cluster.local`, identities
/// `spiffe://cluster.local/...`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A workload (Deployment, StatefulSet, ...) by namespace and name; serialized as
/// `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl WorkloadId {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        WorkloadId { namespace: namespace.into(), name: name.into() }
    }
}

impl Serialize for WorkloadId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WorkloadId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(WorkloadId::new(ns, name))
            }
            _ => Err(serde::de::Error::custom(format!("workload {s:?} is not NAMESPACE/NAME"))),
        }
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A workload as policies see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Namespace and name.
    pub id: WorkloadId,
    /// The pod template's labels (what selectors match).
    pub labels: BTreeMap<String, String>,
    /// The pod template's service account (`default` when unset).
    pub service_account: String,
    /// Whether its pods run a sidecar (Istio labels such endpoints `security.istio.io/tlsMode: istio`).
    pub sidecar: bool,
}

impl Workload {
    /// The workload's SPIFFE identity, `spiffe://cluster.local/ns/NS/sa/SA`.
    pub fn identity(&self) -> String {
        format!("spiffe://{CLUSTER_DOMAIN}/ns/{}/sa/{}", self.id.namespace, self.service_account)
    }
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// The port's name, if any.
    pub name: Option<String>,
    /// The Service port clients connect to.
    pub port: u16,
    /// The container port it forwards to (named target ports resolved by the caller).
    pub target_port: u16,
}

/// A Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The ClusterIP, if it has one.
    pub cluster_ip: Option<IpAddr>,
    /// `spec.selector` (empty selects nothing, as in Kubernetes).
    pub selector: BTreeMap<String, String>,
    /// The ports.
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// `name.namespace.svc.cluster.local`.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.{CLUSTER_DOMAIN}", self.name, self.namespace)
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the Service selects `w`'s pods.
    pub fn selects(&self, w: &Workload) -> bool {
        !self.selector.is_empty() && w.id.namespace == self.namespace && selector_matches(&self.selector, &w.labels)
    }
}

/// Workloads and Services.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshView {
    /// Every workload.
    pub workloads: Vec<Workload>,
    /// Every Service.
    pub services: Vec<Service>,
}

impl MeshView {
    /// A workload by id.
    pub fn workload(&self, id: &WorkloadId) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.id == *id)
    }

    /// The workloads behind `svc`.
    pub fn endpoints<'a>(&'a self, svc: &'a Service) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads.iter().filter(move |w| svc.selects(w))
    }

    /// The Services selecting `w`.
    pub fn services_of<'a>(&'a self, w: &'a Workload) -> impl Iterator<Item = &'a Service> + 'a {
        self.services.iter().filter(move |s| s.selects(w))
    }
}

/// Istio's SNI for a service port's default subset: `outbound_.PORT_._.HOST`.
pub fn outbound_sni(host: &str, port: u16) -> String {
    format!("outbound_.{port}_._.{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mesh_view_reads_back_and_bad_workload_ids_are_named() {
        let view = MeshView {
            workloads: vec![Workload {
                id: WorkloadId::new("default", "sleep"),
                labels: [("app".to_string(), "sleep".to_string())].into(),
                service_account: "sleep".into(),
                sidecar: true,
            }],
            services: vec![Service {
                namespace: "default".into(),
                name: "sleep".into(),
                cluster_ip: Some(IpAddr::from([198, 19, 0, 11])),
                selector: [("app".to_string(), "sleep".to_string())].into(),
                ports: vec![ServicePort { name: Some("http".into()), port: 80, target_port: 8080 }],
            }],
        };
        let json = serde_json::to_value(&view).expect("serializes");
        assert_eq!(json["workloads"][0]["id"], "default/sleep");
        let back: MeshView = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, view);
        for bad in ["sleep", "/sleep", "default/", "a/b/c"] {
            let err = serde_json::from_value::<WorkloadId>(serde_json::Value::from(bad)).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
