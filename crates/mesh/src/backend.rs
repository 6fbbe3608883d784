//! The local mesh as a management-plane [`Backend`]: every call goes to the running
//! supervisor over its control socket ([`Client`]), on tokio's blocking pool because the
//! client is synchronous and a rollout takes seconds.

use crate::check::{self, PathTaken, Target};
use crate::control::AnnotateItem;
use crate::plan::capture::{capture_plan, mesh_injector_values};
use crate::state::State;
use crate::{Client, MeshError, ServiceStatus, WorkloadStatus};
use async_trait::async_trait;
use meshpass_api::backend::{AnnotationPatch, MeshDefaultsInfo, MeshPolicies, Progress};
use meshpass_api::model::{
    CheckReport, CheckRequest, Direction, PeerIdentities, RuleCounter, RuleFormat, ServiceInfo, ServicePort, Verdict,
    WorkloadInfo, WorkloadRef,
};
use meshpass_api::{Backend, BackendError, BackendKind};
use meshpass_capture::ir::{Effective, Family};
use meshpass_capture::InjectorValues;
use meshpass_policy::{Call, PolicySet, Resource, ResourceRef, WorkloadId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The local mesh served by `meshpass up` with this state directory.
#[derive(Clone, Debug)]
pub struct LocalBackend {
    state_dir: PathBuf,
    format: RuleFormat,
}

impl LocalBackend {
    /// A backend for the supervisor of `state_dir`, whose pods' rules use `format`.
    pub fn new(state_dir: impl Into<PathBuf>, format: RuleFormat) -> Self {
        LocalBackend { state_dir: state_dir.into(), format }
    }

    /// Runs `f` with a connected client on the blocking pool.
    async fn with_client<T: Send + 'static>(
        &self,
        f: impl FnOnce(Client) -> Result<T, MeshError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let dir = self.state_dir.clone();
        tokio::task::spawn_blocking(move || Client::connect(&dir).and_then(f))
            .await
            .map_err(|e| BackendError::failed("local mesh call").caused_by(e))?
            .map_err(to_backend)
    }
}

/// One mapping from the mesh's errors to the API's.
fn to_backend(e: MeshError) -> BackendError {
    match e {
        MeshError::Invalid(v) => BackendError::Invalid(v),
        MeshError::WorkloadNotFound { namespace, name } => BackendError::NotFound(WorkloadRef::new(namespace, name)),
        // Only a check names anything else: "a ready pod of workload …", a passing state.
        e @ MeshError::NotFound(_) => BackendError::unavailable("the local mesh").caused_by(e),
        MeshError::Conflict { workload, expected, actual } => {
            let (ns, name) = workload.split_once('/').unwrap_or(("", workload.as_str()));
            BackendError::Conflict { workload: WorkloadRef::new(ns, name), expected, actual }
        }
        e @ (MeshError::NotRunning { .. } | MeshError::Timeout(_) | MeshError::ShuttingDown) => {
            BackendError::unavailable("the local mesh").caused_by(e)
        }
        e => BackendError::failed("the local mesh").caused_by(e),
    }
}

fn info(w: WorkloadStatus, services: &[ServiceStatus]) -> WorkloadInfo {
    let services = services
        .iter()
        .filter(|s| s.namespace == w.namespace && w.services.contains(&s.name))
        .map(|s| ServiceInfo {
            name: s.name.clone(),
            cluster_ip: Some(s.cluster_ip.clone()),
            ports: s.ports.iter().map(|&(port, target_port)| ServicePort { port, target_port }).collect(),
        })
        .collect();
    WorkloadInfo {
        workload: WorkloadRef::new(w.namespace, w.name),
        kind: w.kind,
        meshed: w.meshed,
        pending_restart: w.pending_restart,
        ready: w.ready,
        total: w.total,
        injected: w.injected,
        services,
        annotations: w.annotations,
        labels: w.labels,
        resource_version: w.resource_version,
    }
}

fn list(client: &Client, ns: Option<&str>) -> Result<Vec<WorkloadInfo>, MeshError> {
    let services = client.services(ns)?;
    let mut out: Vec<WorkloadInfo> = client.workloads(ns)?.into_iter().map(|w| info(w, &services)).collect();
    out.sort_by(|a, b| a.workload.cmp(&b.workload));
    Ok(out)
}

fn get(client: &Client, w: &WorkloadRef) -> Result<WorkloadInfo, MeshError> {
    list(client, Some(&w.namespace))?
        .into_iter()
        .find(|i| i.workload == *w)
        .ok_or_else(|| MeshError::WorkloadNotFound { namespace: w.namespace.clone(), name: w.name.clone() })
}

/// The inbound target of a check: the workload's Service (ClusterIP) on the asked port, or on
/// its first port.
fn inbound_target(w: &WorkloadInfo, req: &CheckRequest) -> Result<Target, MeshError> {
    let invalid = |m: String| MeshError::Invalid(vec![m]);
    let svc = w.services.first().ok_or_else(|| {
        invalid(format!("workload {} has no Service to call from the node; check outbound instead", w.workload))
    })?;
    let ip = svc.cluster_ip.clone().ok_or_else(|| invalid(format!("service {} has no ClusterIP", svc.name)))?;
    let port = match req.port {
        Some(p) => w
            .services
            .iter()
            .flat_map(|s| s.ports.iter().map(move |sp| (s, sp)))
            .find(|(_, sp)| sp.port == p || sp.target_port == p)
            .map(|(_, sp)| sp.port)
            .ok_or_else(|| invalid(format!("port {p} is not a port of the Services of {}", w.workload)))?,
        None => {
            svc.ports.first().map(|p| p.port).ok_or_else(|| invalid(format!("service {} has no port", svc.name)))?
        }
    };
    let path = req.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!("path {path:?} must start with / and contain no spaces")));
    }
    Target::parse(&format!("http://{ip}:{port}{path}"))
}

/// The stored policy objects read back as resources (they were validated when applied).
fn resources(objects: &[serde_json::Value]) -> Result<Vec<Resource>, MeshError> {
    objects
        .iter()
        .map(|o| {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
            Resource::from_json(o, ns).map_err(|e| MeshError::Invalid(e.iter().map(ToString::to_string).collect()))
        })
        .collect()
}

/// The stored resource `r` names, if any.
fn stored(client: &Client, r: &ResourceRef) -> Result<Option<Resource>, MeshError> {
    let objects = client.policies(Some(r.kind.as_str()), Some(&r.namespace))?;
    Ok(resources(&objects)?.into_iter().find(|s| s.reference() == *r))
}

/// The mesh-wide defaults and the settings of the last `meshpass up` (state.json), which
/// the supervisor compiles every pod's rules with. Reads a file: call it off the async
/// threads.
fn mesh_values(state_dir: &Path) -> InjectorValues {
    let state = State::load(state_dir).ok().flatten().unwrap_or_default();
    let untrack = state.net.as_ref().is_some_and(|n| n.untrack_excluded_inbound);
    mesh_injector_values(untrack, &state.mesh_defaults)
}

/// Every labelled rule of `eff` with counters; rules read back from iptables carry no label,
/// so they borrow the label of the equal rule in `planned`.
fn counters(pod: &str, family: Family, eff: &Effective, planned: Option<&Effective>, out: &mut Vec<RuleCounter>) {
    for (table, chains) in &eff.tables {
        for (chain, rules) in chains {
            for r in &rules.rules {
                let label = r.rule.label.clone().or_else(|| {
                    let p = planned?.chain(*table, chain.as_str());
                    p.iter()
                        .find(|q| q.rule.matches == r.rule.matches && q.rule.target == r.rule.target)
                        .and_then(|q| q.rule.label.clone())
                });
                let (Some(label), Some(c)) = (label, r.counters) else { continue };
                out.push(RuleCounter {
                    pod: pod.to_string(),
                    family: if family == Family::V6 { "ipv6" } else { "ipv4" }.to_string(),
                    label,
                    rule: r.text.clone().unwrap_or_else(|| format!("{table:?} {} {:?}", chain.as_str(), r.rule)),
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn rule_format(&self) -> RuleFormat {
        self.format
    }

    fn injector_values(&self) -> InjectorValues {
        mesh_values(&self.state_dir)
    }

    async fn list(&self) -> Result<Vec<WorkloadInfo>, BackendError> {
        self.with_client(|c| list(&c, None)).await
    }

    async fn get(&self, workload: &WorkloadRef) -> Result<WorkloadInfo, BackendError> {
        let w = workload.clone();
        self.with_client(move |c| get(&c, &w)).await
    }

    async fn patch_annotations(
        &self,
        workload: &WorkloadRef,
        expected_version: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<WorkloadInfo, BackendError> {
        let (w, expected) = (workload.clone(), expected_version.to_string());
        self.with_client(move |c| {
            c.annotate_if(&w.namespace, &w.name, set, remove, false, Some(&expected))?;
            get(&c, &w)
        })
        .await
    }

    async fn patch_many(&self, items: Vec<AnnotationPatch>, live: bool) -> Vec<Result<WorkloadInfo, BackendError>> {
        let n = items.len();
        let refs: Vec<WorkloadRef> = items.iter().map(|i| i.workload.clone()).collect();
        let items: Vec<AnnotateItem> = items
            .into_iter()
            .map(|i| AnnotateItem {
                namespace: i.workload.namespace,
                name: i.workload.name,
                set: i.set,
                remove: i.remove,
                expect_version: Some(i.expected_version),
            })
            .collect();
        // One request: the supervisor decides item by item and saves once.
        let answer = self
            .with_client(move |c| {
                let results = c.annotate_many(items, live)?;
                let all = list(&c, None)?;
                Ok((results, all))
            })
            .await;
        let (results, all) = match answer {
            Ok(a) => a,
            Err(e) => {
                let msg = e.report();
                return (0..n)
                    .map(|_| Err(BackendError::unavailable("the local mesh").caused_by(msg.clone())))
                    .collect();
            }
        };
        refs.into_iter()
            .zip(results)
            .map(|(w, r)| {
                r.map_err(to_backend)?;
                all.iter().find(|i| i.workload == w).cloned().ok_or(BackendError::NotFound(w))
            })
            .collect()
    }

    async fn mesh_defaults(&self) -> Result<MeshDefaultsInfo, BackendError> {
        self.with_client(|c| {
            let d = c.defaults()?;
            Ok(MeshDefaultsInfo {
                defaults: d.defaults,
                version: d.version,
                source: "the local mesh's state directory".into(),
                problems: Vec::new(),
                writable: true,
            })
        })
        .await
    }

    async fn set_mesh_defaults(
        &self,
        values: BTreeMap<String, String>,
        expected_version: &str,
        live: bool,
    ) -> Result<(MeshDefaultsInfo, Vec<String>), BackendError> {
        let expected = expected_version.to_string();
        let lines = self.with_client(move |c| c.set_defaults(values, live, Some(&expected))).await?;
        Ok((self.mesh_defaults().await?, lines))
    }

    async fn restart(&self, workload: &WorkloadRef, progress: Progress) -> Result<(), BackendError> {
        let w = workload.clone();
        self.with_client(move |c| c.rollout_restart(&w.namespace, &w.name, &mut |line| progress(line.to_string())))
            .await
    }

    async fn check(&self, workload: &WorkloadRef, request: &CheckRequest) -> Result<CheckReport, BackendError> {
        let (w, req) = (workload.clone(), request.clone());
        self.with_client(move |c| {
            let outcome = match req.direction {
                Direction::Inbound => {
                    let info = get(&c, &w)?;
                    check::from_node(&c, &inbound_target(&info, &req)?)?
                }
                Direction::Outbound => {
                    let t = req.target.as_deref().ok_or_else(|| {
                        MeshError::Invalid(vec![
                            "an outbound check needs a target (ADDR:PORT or http://ADDR:PORT/PATH)".into(),
                        ])
                    })?;
                    check::from_pod(&c, &w.namespace, &w.name, &Target::parse(t)?)?
                }
            };
            Ok(CheckReport {
                direction: req.direction,
                from: outcome.from,
                target: outcome.target,
                verdict: match outcome.path {
                    PathTaken::Sidecar => Verdict::Sidecar,
                    PathTaken::Direct => Verdict::Passthrough,
                },
                status_line: outcome.response.status_line,
                headers: outcome.response.headers,
                evidence: outcome.evidence,
                mtls: outcome.tls.mtls,
                peer_identities: PeerIdentities {
                    client: outcome.tls.client_identity,
                    server: outcome.tls.server_identity,
                },
                error: outcome.error,
            })
        })
        .await
    }

    async fn mesh_policies(&self) -> Result<MeshPolicies, BackendError> {
        self.with_client(|c| {
            let view = c.mesh_view()?;
            let policies = PolicySet::from_resources(resources(&c.policies(None, None)?)?);
            // The calls the sidecars have a record of are observed; every other meshed
            // workload that can reach a Service stays a possible caller.
            let calls = check::observed_calls(&c)?
                .into_iter()
                .map(|(ns, workload, service, port)| Call { client: WorkloadId::new(ns, workload), service, port })
                .collect();
            Ok(MeshPolicies { view, policies, calls })
        })
        .await
    }

    async fn create_policy(&self, resource: &Resource) -> Result<(), BackendError> {
        let r = resource.clone();
        self.with_client(move |c| {
            match stored(&c, &r.reference())? {
                Some(s) if s.to_json()["spec"] == r.to_json()["spec"] => return Ok(()),
                Some(_) => {
                    return Err(MeshError::Invalid(vec![format!(
                        "{} exists with another spec; delete or rename it",
                        r.reference()
                    )]))
                }
                None => {}
            }
            c.apply(&r.to_yaml(), false).map(|_| ())
        })
        .await
    }

    async fn delete_policy(&self, resource: &ResourceRef) -> Result<(), BackendError> {
        let r = resource.clone();
        self.with_client(move |c| match stored(&c, &r)? {
            Some(s) => c.delete(&s.to_yaml()).map(|_| ()),
            None => Ok(()),
        })
        .await
    }

    async fn rule_counters(&self, workload: &WorkloadRef) -> Result<Vec<RuleCounter>, BackendError> {
        let (w, dir) = (workload.clone(), self.state_dir.clone());
        self.with_client(move |c| {
            let info = get(&c, &w)?;
            let plan = capture_plan(&info.annotations, &mesh_values(&dir)).ok().flatten();
            let pods = c.pods(Some(&w.namespace))?;
            let mut out = Vec::new();
            for pod in pods.iter().filter(|p| p.workload == w.name && p.meshed) {
                let name = format!("{}/{}", pod.namespace, pod.name);
                let ns = meshpass_capture::linux::Netns::Named(pod.netns.clone());
                if let Ok(Some(counters)) = meshpass_capture::linux::ebpf::counters(&ns) {
                    // eBPF capture keeps one connection counter per label, both families.
                    out.extend(counters.into_iter().map(|(label, n)| RuleCounter {
                        pod: name.clone(),
                        family: "any".to_string(),
                        label: label.to_string(),
                        rule: format!("eBPF capture: connections counted as {label}"),
                        packets: n,
                        bytes: 0,
                    }));
                    continue;
                }
                for family in [Family::V4, Family::V6] {
                    let planned = plan.as_ref().map(|p| p.effective(family));
                    // A pod that is starting or going away has no rules to read; skip it.
                    if let Ok(eff) = check::live_rules(&pod.netns, family) {
                        counters(&name, family, &eff, planned.as_ref(), &mut out);
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_errors_map_to_api_errors_with_the_workload_named() {
        let e = to_backend(MeshError::WorkloadNotFound { namespace: "default".into(), name: "hello".into() });
        assert!(matches!(e, BackendError::NotFound(ref w) if *w == WorkloadRef::new("default", "hello")), "{e:?}");
        let e = to_backend(MeshError::Conflict {
            workload: "default/hello".into(),
            expected: "3".into(),
            actual: "4".into(),
        });
        assert!(
            matches!(e, BackendError::Conflict { ref workload, ref expected, ref actual }
                if *workload == WorkloadRef::new("default", "hello") && expected == "3" && actual == "4"),
            "{e:?}"
        );
        let e = to_backend(MeshError::NotFound("a ready pod of workload default/hello".into()));
        assert!(matches!(e, BackendError::Unavailable { .. }), "{e:?}");
        assert_eq!(e.report(), "backend unavailable: the local mesh: a ready pod of workload default/hello not found");
        let e = to_backend(MeshError::Invalid(vec!["bad port".into()]));
        assert!(matches!(e, BackendError::Invalid(ref v) if v == &["bad port".to_string()]), "{e:?}");
    }
}
