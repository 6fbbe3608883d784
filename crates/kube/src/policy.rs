//! Istio's mutual-TLS policies on the cluster: the `PeerAuthentication`s
//! (`security.istio.io/v1`) and `DestinationRule`s (`networking.istio.io/v1`) read as
//! `meshpass-policy` resources, and the mesh as policy resolution sees it (workloads with their
//! pod template's labels and service account, Services with their selectors and ports).
//! Writes are limited to what passthrough's fix needs: creating and deleting the
//! `DestinationRule`s meshpass made (RBAC in `deploy/rbac.yaml`: list both kinds, create and
//! delete `DestinationRule`s, nothing else).

use crate::error::{map_kube_error, Action};
use crate::inspect;
use crate::KubeBackend;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams};
use meshpass_api::BackendError;
use meshpass_policy::{Kind, MeshView, PolicySet, Resource, ResourceRef, ServicePort, Workload, WorkloadId};
use std::net::IpAddr;

/// The API resource of a policy kind.
fn api_resource(kind: Kind) -> ApiResource {
    let (group, plural) = match kind {
        Kind::PeerAuthentication => ("security.istio.io", "peerauthentications"),
        Kind::DestinationRule => ("networking.istio.io", "destinationrules"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind.as_str()), plural)
}

impl KubeBackend {
    fn policy_api(&self, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = api_resource(kind);
        match namespace {
            Some(ns) => Api::namespaced_with(self.client().clone(), ns, &ar),
            None => Api::all_with(self.client().clone(), &ar),
        }
    }

    /// Every `PeerAuthentication` and `DestinationRule` of the cluster (policies apply across
    /// namespaces: mesh-wide ones live in `istio-system`, rules are exported), oldest first as
    /// Istio orders them (creation time, then namespace and name). One that does not validate
    /// is an error naming it: its effect could not be predicted.
    pub async fn policies(&self) -> Result<PolicySet, BackendError> {
        let mut all: Vec<(String, String, String, Resource)> = Vec::new();
        for kind in [Kind::PeerAuthentication, Kind::DestinationRule] {
            let plural = api_resource(kind).plural;
            let group = api_resource(kind).group;
            let action = Action::new(format!("list {plural} in all namespaces"), format!("list {plural}.{group}"));
            let list = self.call(&action, self.policy_api(kind, None).list(&ListParams::default())).await?;
            for obj in list.items {
                let meta = &obj.metadata;
                let created = meta.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
                let (ns, name) = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
                let mut json = serde_json::to_value(&obj)
                    .map_err(|e| BackendError::failed(format!("{} {ns}/{name}", kind.as_str())).caused_by(e))?;
                json["apiVersion"] = kind.api_version().into();
                json["kind"] = kind.as_str().into();
                let r = Resource::from_json(&json, &ns).map_err(|e| {
                    BackendError::failed(format!("{} {ns}/{name} on the cluster does not validate", kind.as_str()))
                        .caused_by(e.to_string())
                })?;
                all.push((created, ns, name, r));
            }
        }
        all.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        Ok(PolicySet::from_resources(all.into_iter().map(|(_, _, _, r)| r)))
    }

    /// The workloads and Services of the managed namespaces as policy resolution sees them.
    pub async fn mesh_view(&self) -> Result<MeshView, BackendError> {
        let scopes: Vec<Option<&str>> = if self.namespaces().is_empty() {
            vec![None]
        } else {
            self.namespaces().iter().map(|n| Some(n.as_str())).collect()
        };
        let mut workloads = Vec::new();
        for scope in &scopes {
            for kind in crate::workload::Kind::ALL {
                workloads.extend(self.list_workloads(kind, *scope).await?);
            }
        }
        let ns_labels = self.namespace_labels(None).await?;
        let mut view = MeshView::default();
        for w in &workloads {
            let template = w.template();
            let spec = template.and_then(|t| t.spec.as_ref());
            view.workloads.push(Workload {
                id: WorkloadId::new(w.namespace(), w.name()),
                labels: w.template_labels(),
                service_account: spec
                    .and_then(|s| s.service_account_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "default".to_string()),
                sidecar: inspect::mesh_policy(ns_labels.as_ref().and_then(|m| m.get(w.namespace())), w)
                    .unwrap_or(false),
            });
        }
        let services: Vec<Service> = if self.namespaces().is_empty() {
            let action = Action::new("list services in all namespaces", "list services");
            self.call(&action, Api::<Service>::all(self.client().clone()).list(&ListParams::default())).await?.items
        } else {
            let mut out = Vec::new();
            for ns in self.namespaces() {
                out.extend(self.list_services(ns).await?);
            }
            out
        };
        for s in services {
            let spec = s.spec.clone().unwrap_or_default();
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            let selector = spec.selector.clone().unwrap_or_default();
            // A named targetPort resolves to the container port of that name in the pod
            // templates the Service selects (as the endpoints controller does per pod).
            let selected: Vec<_> = workloads
                .iter()
                .filter(|w| w.namespace() == ns && !selector.is_empty())
                .filter(|w| selector.iter().all(|(k, v)| w.template_labels().get(k) == Some(v)))
                .collect();
            let ports = spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| {
                    let port = u16::try_from(p.port).ok()?;
                    let target_port = match &p.target_port {
                        None => port,
                        Some(IntOrString::Int(t)) => u16::try_from(*t).ok()?,
                        Some(IntOrString::String(name)) => selected.iter().find_map(|w| {
                            w.template()?
                                .spec
                                .as_ref()?
                                .containers
                                .iter()
                                .flat_map(|c| c.ports.iter().flatten())
                                .find_map(|cp| {
                                    (cp.name.as_deref() == Some(name))
                                        .then(|| u16::try_from(cp.container_port).ok())
                                        .flatten()
                                })
                        })?,
                    };
                    Some(ServicePort { name: p.name, port, target_port })
                })
                .collect();
            view.services.push(meshpass_policy::Service {
                namespace: ns,
                name: s.metadata.name.clone().unwrap_or_default(),
                cluster_ip: spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()),
                selector,
                ports,
            });
        }
        Ok(view)
    }

    /// Creates a `DestinationRule` (passthrough's fix). One that exists already with the same
    /// spec is left alone; with another spec it is an error (someone else's rule).
    pub async fn create_destination_rule(&self, r: &Resource) -> Result<(), BackendError> {
        let meta = r.meta();
        let action = Action::new(
            format!("create destinationrule {}/{}", meta.namespace, meta.name),
            "create destinationrules.networking.istio.io",
        );
        let obj: DynamicObject =
            serde_json::from_value(r.to_json()).map_err(|e| BackendError::failed(action.what.clone()).caused_by(e))?;
        let api = self.policy_api(Kind::DestinationRule, Some(&meta.namespace));
        let pp = PostParams { field_manager: Some(crate::backend::FIELD_MANAGER.to_string()), ..Default::default() };
        match self.timed(&action, api.create(&pp, &obj)).await? {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let get = Action::new(
                    format!("get destinationrule {}/{}", meta.namespace, meta.name),
                    "get destinationrules.networking.istio.io",
                );
                let existing = self.call(&get, api.get(&meta.name)).await?;
                let mut json =
                    serde_json::to_value(&existing).map_err(|e| BackendError::failed(get.what.clone()).caused_by(e))?;
                json["apiVersion"] = Kind::DestinationRule.api_version().into();
                json["kind"] = Kind::DestinationRule.as_str().into();
                match Resource::from_json(&json, &meta.namespace) {
                    Ok(same) if same.to_json()["spec"] == r.to_json()["spec"] => Ok(()),
                    _ => Err(BackendError::failed(format!(
                        "{}: a DestinationRule of that name exists with another spec; delete or rename it",
                        action.what
                    ))),
                }
            }
            Err(e) => Err(map_kube_error(e, &action)),
        }
    }

    /// Deletes a `DestinationRule`; one already gone is fine.
    pub async fn delete_destination_rule(&self, r: &ResourceRef) -> Result<(), BackendError> {
        let action = Action::new(
            format!("delete destinationrule {}/{}", r.namespace, r.name),
            "delete destinationrules.networking.istio.io",
        );
        let api = self.policy_api(Kind::DestinationRule, Some(&r.namespace));
        match self.timed(&action, api.delete(&r.name, &DeleteParams::default())).await? {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(map_kube_error(e, &action)),
        }
    }
}
