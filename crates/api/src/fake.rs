//! [`FakeBackend`]: an in-memory [`Backend`] for tests, the GUI's browser tests, the OpenAPI
//! fuzz run and `examples/dev-server.rs`.
//!
//! It behaves like the real backends where the management plane can see it: template
//! annotations vs the annotations the running pods were started with (so `pending_restart`
//! works), a resource version that moves on every write, restarts with progress lines, checks
//! whose answer depends on the *running* exclusions, and rule counters. Tests can make the next
//! call of a kind fail, or simulate a concurrent writer. Its mutual-TLS policies are stored
//! as the local mesh stores them; each workload is labelled `app: SERVICE` for each of its
//! Services (which select on that label), with the `default` service account.

use crate::backend::{AnnotationPatch, Backend, BackendError, BackendKind, MeshDefaultsInfo, MeshPolicies, Progress};
use crate::model::{
    CheckReport, CheckRequest, Direction, PeerIdentities, RuleCounter, RuleFormat, ServiceInfo, ServicePort, Verdict,
    WorkloadInfo, WorkloadRef,
};
use async_trait::async_trait;
use meshpass_capture::compile::labels;
use meshpass_policy::{MeshView, MtlsMode, PolicyErrors, PolicySet, Resource, ResourceRef, WorkloadId};
use meshpass_settings::{IpNet, Settings};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The backend calls a test can make fail ([`FakeBackend::fail_next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FakeCall {
    /// [`Backend::list`].
    List,
    /// [`Backend::get`].
    Get,
    /// [`Backend::patch_annotations`].
    Patch,
    /// [`Backend::restart`].
    Restart,
    /// [`Backend::check`].
    Check,
    /// [`Backend::rule_counters`].
    RuleCounters,
    /// [`Backend::mesh_policies`].
    MeshPolicies,
    /// [`Backend::create_policy`].
    CreatePolicy,
    /// [`Backend::delete_policy`].
    DeletePolicy,
}

/// One workload of the fake mesh.
#[derive(Clone, Debug)]
struct FakeWorkload {
    /// What `get` reports (annotations = the template's).
    info: WorkloadInfo,
    /// The annotations the running pods were created with.
    running: BTreeMap<String, String>,
    /// Bumped by every restart: the pods' names change.
    generation: u32,
    /// Connections that bypassed the sidecar (grows with inbound checks that pass through).
    bypassed: u64,
    /// The pods' service account (their SPIFFE identity's `sa`).
    service_account: String,
}

impl FakeWorkload {
    fn pod(&self) -> String {
        // A stable, plausible ReplicaSet hash + pod suffix, different after every restart.
        let mut h: u32 = 2_166_136_261;
        for b in self.info.workload.name.bytes().chain(self.generation.to_le_bytes()) {
            h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
        }
        let suffix = h.wrapping_mul(2_654_435_761).rotate_left(13) & 0xfffff;
        format!("{}-{:08x}-{suffix:05x}", self.info.workload.name, h)
    }

    fn refresh(&mut self) {
        self.info.pending_restart = self.info.meshed && self.info.annotations != self.running;
    }
}

#[derive(Default)]
struct State {
    calls: BTreeMap<FakeCall, u64>,
    delays: BTreeMap<FakeCall, Duration>,
    workloads: BTreeMap<WorkloadRef, FakeWorkload>,
    version: u64,
    failures: Vec<(FakeCall, BackendError)>,
    concurrent_write_before_patch: bool,
    policies: PolicySet,
    defaults: meshpass_settings::MeshDefaults,
    defaults_version: u64,
    unreachable: bool,
}

/// An in-memory mesh. Cheap to create; share it as `Arc<FakeBackend>`.
pub struct FakeBackend {
    state: Mutex<State>,
    kind: BackendKind,
    format: RuleFormat,
    restart_step: Mutex<Duration>,
}

impl std::fmt::Debug for FakeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBackend").field("kind", &self.kind).field("format", &self.format).finish_non_exhaustive()
    }
}

impl Default for FakeBackend {
    fn default() -> Self {
        FakeBackend {
            state: Mutex::new(State::default()),
            kind: BackendKind::Local,
            format: RuleFormat::Nft,
            restart_step: Mutex::new(Duration::from_millis(100)),
        }
    }
}

impl FakeBackend {
    /// An empty mesh (local backend, nftables previews).
    pub fn new() -> Self {
        Self::default()
    }

    /// The sample mesh: `default/helloworld-v1` (meshed, Service `helloworld` 5000→5000 at
    /// 198.19.0.10), `default/sleep` (meshed, Service `sleep` 80→80 at 198.19.0.11, service
    /// account `sleep`) and `external/external` (unmeshed).
    pub fn sample() -> Self {
        let b = Self::new();
        b.add(
            WorkloadRef::new("default", "helloworld-v1"),
            true,
            vec![ServiceInfo {
                name: "helloworld".into(),
                cluster_ip: Some("198.19.0.10".into()),
                ports: vec![ServicePort { port: 5000, target_port: 5000 }],
            }],
            BTreeMap::from([("app".to_string(), "helloworld".to_string())]),
        );
        b.add(
            WorkloadRef::new("default", "sleep"),
            true,
            vec![ServiceInfo {
                name: "sleep".into(),
                cluster_ip: Some("198.19.0.11".into()),
                ports: vec![ServicePort { port: 80, target_port: 80 }],
            }],
            BTreeMap::new(),
        );
        b.set_service_account(&WorkloadRef::new("default", "sleep"), "sleep");
        b.add(WorkloadRef::new("external", "external"), false, Vec::new(), BTreeMap::new());
        // The sample's pod labels, as in the local mesh.
        b.set_labels(&WorkloadRef::new("default", "helloworld-v1"), &[("app", "helloworld"), ("version", "v1")]);
        b.set_labels(&WorkloadRef::new("default", "sleep"), &[("app", "sleep")]);
        b.set_labels(&WorkloadRef::new("external", "external"), &[("app", "external")]);
        b
    }

    /// The same mesh, reported as another backend kind / rule format (e.g. Kubernetes with
    /// iptables previews, whose rule counters are [`BackendError::Unsupported`]).
    pub fn with_kind(mut self, kind: BackendKind, format: RuleFormat) -> Self {
        self.kind = kind;
        self.format = format;
        self
    }

    /// Sets the pause between restart steps (default 100 ms; tests use 0).
    pub fn set_restart_step(&self, step: Duration) {
        *self.restart_step.lock().unwrap_or_else(|e| e.into_inner()) = step;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not wedge the others: the state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a workload (1/1 ready; running = template, so not pending restart).
    pub fn add(
        &self,
        workload: WorkloadRef,
        meshed: bool,
        services: Vec<ServiceInfo>,
        annotations: BTreeMap<String, String>,
    ) {
        let mut s = self.lock();
        s.version += 1;
        let info = WorkloadInfo {
            services,
            annotations: annotations.clone(),
            labels: BTreeMap::new(),
            resource_version: s.version.to_string(),
            ..WorkloadInfo::deployment(workload.clone(), meshed)
        };
        let service_account = "default".to_string();
        s.workloads
            .insert(workload, FakeWorkload { info, running: annotations, generation: 0, bypassed: 0, service_account });
    }

    /// Sets the service account of a workload's pods (`default` unless set).
    pub fn set_service_account(&self, workload: &WorkloadRef, account: &str) {
        if let Some(w) = self.lock().workloads.get_mut(workload) {
            w.service_account = account.to_string();
        }
    }

    /// Makes the next call of kind `call` fail with `error` (queued: several may wait).
    pub fn fail_next(&self, call: FakeCall, error: BackendError) {
        self.lock().failures.push((call, error));
    }

    /// Makes the next `patch_annotations` first behave as if someone else wrote the workload
    /// (its version moves), so the write fails with a conflict: the race between the server's
    /// read and its write.
    pub fn concurrent_write_before_next_patch(&self) {
        self.lock().concurrent_write_before_patch = true;
    }

    /// Sets the labels of a workload's pods (its template's), as when it was created: the
    /// version stays.
    pub fn set_labels(&self, workload: &WorkloadRef, labels: &[(&str, &str)]) {
        if let Some(w) = self.lock().workloads.get_mut(workload) {
            w.info.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        }
    }

    /// Writes a template annotation directly, as `kubectl edit` would (bumps the version).
    pub fn set_template_annotation(&self, workload: &WorkloadRef, key: &str, value: &str) {
        let mut s = self.lock();
        s.version += 1;
        let v = s.version.to_string();
        if let Some(w) = s.workloads.get_mut(workload) {
            w.info.annotations.insert(key.into(), value.into());
            w.info.resource_version = v;
            w.refresh();
        }
    }

    /// The template annotations of `workload` (empty when unknown).
    pub fn template_annotations(&self, workload: &WorkloadRef) -> BTreeMap<String, String> {
        self.lock().workloads.get(workload).map(|w| w.info.annotations.clone()).unwrap_or_default()
    }

    /// The annotations the running pods were started with.
    pub fn running_annotations(&self, workload: &WorkloadRef) -> BTreeMap<String, String> {
        self.lock().workloads.get(workload).map(|w| w.running.clone()).unwrap_or_default()
    }

    /// The current resource version of `workload` (empty when unknown).
    pub fn resource_version(&self, workload: &WorkloadRef) -> String {
        self.lock().workloads.get(workload).map(|w| w.info.resource_version.clone()).unwrap_or_default()
    }

    /// Applies `PeerAuthentication`s / `DestinationRule`s (YAML, as `meshpass apply -f`).
    pub fn apply_policies(&self, yaml: &str) -> Result<(), PolicyErrors> {
        let resources = meshpass_policy::parse_documents(yaml, "default")?;
        let mut s = self.lock();
        s.policies = s.policies.apply(resources)?.0;
        Ok(())
    }

    /// The stored policy resources.
    pub fn policies(&self) -> Vec<ResourceRef> {
        self.lock().policies.iter().map(|p| p.resource.reference()).collect()
    }

    /// The mesh as policies see it: every workload labelled `app: SERVICE` for its Services.
    fn mesh_view(&self) -> MeshView {
        let s = self.lock();
        let mut view = MeshView::default();
        for w in s.workloads.values() {
            let info = &w.info;
            view.workloads.push(policy_workload(w));
            for svc in &info.services {
                view.services.push(meshpass_policy::Service {
                    namespace: info.workload.namespace.clone(),
                    name: svc.name.clone(),
                    cluster_ip: svc.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()),
                    selector: [("app".to_string(), svc.name.clone())].into(),
                    ports: svc
                        .ports
                        .iter()
                        .map(|p| meshpass_policy::ServicePort { name: None, port: p.port, target_port: p.target_port })
                        .collect(),
                });
            }
        }
        view
    }

    /// How many calls of kind `call` the backend has answered (or failed).
    pub fn calls(&self, call: FakeCall) -> u64 {
        self.lock().calls.get(&call).copied().unwrap_or(0)
    }

    /// Makes every call of kind `call` take `delay` first (as a real backend's round trip;
    /// for benchmarks of what the server does with slow backends).
    pub fn set_delay(&self, call: FakeCall, delay: Duration) {
        self.lock().delays.insert(call, delay);
    }

    async fn pause(&self, call: FakeCall) {
        let delay = self.lock().delays.get(&call).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
    }

    /// Makes every call fail as a cluster that cannot be reached does (503), until set back.
    pub fn set_unreachable(&self, down: bool) {
        self.lock().unreachable = down;
    }

    fn take_failure(&self, call: FakeCall) -> Result<(), BackendError> {
        let mut s = self.lock();
        *s.calls.entry(call).or_default() += 1;
        if s.unreachable {
            return Err(BackendError::unavailable("the fake cluster cannot be reached"));
        }
        match s.failures.iter().position(|(c, _)| *c == call) {
            Some(i) => Err(s.failures.remove(i).1),
            None => Ok(()),
        }
    }

    fn with<T>(&self, w: &WorkloadRef, f: impl FnOnce(&mut FakeWorkload, &mut u64) -> T) -> Result<T, BackendError> {
        let mut s = self.lock();
        let State { workloads, version, .. } = &mut *s;
        let wl = workloads.get_mut(w).ok_or_else(|| BackendError::NotFound(w.clone()))?;
        Ok(f(wl, version))
    }
}

/// A workload as policies see it: labelled `app: SERVICE` for its Services.
fn policy_workload(w: &FakeWorkload) -> meshpass_policy::Workload {
    let info = &w.info;
    let mut labels: BTreeMap<String, String> =
        info.services.iter().map(|svc| ("app".to_string(), svc.name.clone())).collect();
    if labels.is_empty() {
        labels.insert("app".into(), info.workload.name.clone());
    }
    meshpass_policy::Workload {
        id: WorkloadId::new(&info.workload.namespace, &info.workload.name),
        labels,
        service_account: w.service_account.clone(),
        sidecar: info.meshed,
    }
}

/// The passthrough-relevant rules of one pod, with counters derived from what went through.
fn counters(w: &FakeWorkload) -> Vec<RuleCounter> {
    let pod = w.pod();
    let mut out = Vec::new();
    let rule = |label: &str, rule: String, packets: u64| RuleCounter {
        pod: pod.clone(),
        family: "ipv4".into(),
        label: label.into(),
        rule,
        packets,
        bytes: packets * 60,
    };
    // The rules every meshed pod has, so that callers see they must filter by label.
    out.push(rule(labels::CAPTURE_INBOUND, "meta l4proto tcp counter redirect to :15006".into(), 12));
    out.push(rule(labels::CAPTURE_OUTBOUND, "meta l4proto tcp counter redirect to :15001".into(), 7));
    out.push(rule(labels::SIDECAR_PORTS, "tcp dport { 15090, 15021 } counter return".into(), 3));
    let Ok(s) = Settings::from_annotations(&w.running) else {
        return out;
    };
    // As the engine compiles it: the sidecar's own ports (15090, 15021, 15020) have rules of
    // their own, which are not the operator's passthrough.
    if let Some(p) = s.exclude_inbound_ports.as_ref().filter(|p| !p.is_empty()) {
        let list = p.ranges().iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
        let set = if p.ranges().len() > 1 { format!("{{ {list} }}") } else { list };
        out.push(rule(labels::EXCLUDE_INBOUND_PORTS, format!("tcp dport {set} counter return"), w.bypassed));
    }
    if let Some(p) = s.exclude_outbound_ports.as_ref().filter(|p| !p.is_empty()) {
        let list = p.ranges().iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
        out.push(rule(
            labels::EXCLUDE_OUTBOUND_PORTS,
            format!("meta l4proto {{ tcp, udp }} th dport {{ {list} }} counter return"),
            5,
        ));
    }
    if let Some(r) = s.exclude_outbound_ip_ranges.as_ref().filter(|r| !r.is_empty()) {
        let v4: Vec<String> = r.v4().map(|n| n.to_string()).collect();
        if !v4.is_empty() {
            out.push(rule(
                labels::EXCLUDE_OUTBOUND_IP_RANGES,
                format!("ip daddr {{ {} }} counter return", v4.join(", ")),
                4,
            ));
        }
        let v6: Vec<String> = r.v6().map(|n| n.to_string()).collect();
        if !v6.is_empty() {
            let mut c = rule(
                labels::EXCLUDE_OUTBOUND_IP_RANGES,
                format!("ip6 daddr {{ {} }} counter return", v6.join(", ")),
                1,
            );
            c.family = "ipv6".into();
            out.push(c);
        }
    }
    out
}

/// Splits an outbound check target (`ADDR:PORT`, `[V6]:PORT` or `http://ADDR:PORT/PATH`).
fn parse_target(t: &str) -> Option<(IpAddr, u16)> {
    let rest = t.strip_prefix("http://").unwrap_or(t);
    let hostport = rest.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.parse().ok()?, port.parse().ok()?))
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn rule_format(&self) -> RuleFormat {
        self.format
    }

    fn dialect(&self) -> meshpass_settings::Dialect {
        // As the real backends: Kubernetes means Istio's injector.
        match self.kind {
            BackendKind::Kube => meshpass_settings::Dialect::Istio,
            BackendKind::Local => meshpass_settings::Dialect::Meshpass,
        }
    }

    async fn list(&self) -> Result<Vec<WorkloadInfo>, BackendError> {
        self.pause(FakeCall::List).await;
        self.take_failure(FakeCall::List)?;
        Ok(self.lock().workloads.values().map(|w| w.info.clone()).collect())
    }

    async fn get(&self, workload: &WorkloadRef) -> Result<WorkloadInfo, BackendError> {
        self.take_failure(FakeCall::Get)?;
        self.with(workload, |w, _| w.info.clone())
    }

    async fn patch_annotations(
        &self,
        workload: &WorkloadRef,
        expected_version: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<WorkloadInfo, BackendError> {
        self.take_failure(FakeCall::Patch)?;
        let race = std::mem::take(&mut self.lock().concurrent_write_before_patch);
        self.with(workload, |w, version| {
            if race {
                *version += 1;
                w.info.resource_version = version.to_string();
            }
            if w.info.resource_version != expected_version {
                return Err(BackendError::Conflict {
                    workload: workload.clone(),
                    expected: expected_version.to_string(),
                    actual: w.info.resource_version.clone(),
                });
            }
            for k in remove {
                w.info.annotations.remove(&k);
            }
            w.info.annotations.extend(set);
            *version += 1;
            w.info.resource_version = version.to_string();
            w.refresh();
            Ok(w.info.clone())
        })?
    }

    async fn patch_many(&self, items: Vec<AnnotationPatch>, live: bool) -> Vec<Result<WorkloadInfo, BackendError>> {
        let mut out = Vec::with_capacity(items.len());
        for i in items {
            let w = i.workload.clone();
            let r = self.patch_annotations(&i.workload, &i.expected_version, i.set, i.remove).await;
            out.push(match r {
                // Live: the running pods take the template's capture at once.
                Ok(_) if live => self.with(&w, |fw, _| {
                    fw.running = fw.info.annotations.clone();
                    fw.refresh();
                    fw.info.clone()
                }),
                other => other,
            });
        }
        out
    }

    async fn mesh_defaults(&self) -> Result<MeshDefaultsInfo, BackendError> {
        if self.lock().unreachable {
            return Err(BackendError::unavailable("the fake cluster cannot be reached"));
        }
        let st = self.lock();
        Ok(MeshDefaultsInfo {
            defaults: st.defaults.clone(),
            version: st.defaults_version.to_string(),
            source: "the fake mesh".into(),
            problems: Vec::new(),
            writable: true,
        })
    }

    async fn set_mesh_defaults(
        &self,
        values: BTreeMap<String, String>,
        expected_version: &str,
        live: bool,
    ) -> Result<(MeshDefaultsInfo, Vec<String>), BackendError> {
        {
            let mut st = self.lock();
            let actual = st.defaults_version.to_string();
            if actual != expected_version {
                return Err(BackendError::Conflict {
                    workload: WorkloadRef::new("", "mesh-wide defaults"),
                    expected: expected_version.into(),
                    actual,
                });
            }
            let mut next = st.defaults.clone();
            for (k, v) in &values {
                next.set_value(k, v).map_err(|e| BackendError::Invalid(e.iter().map(|e| e.to_string()).collect()))?;
            }
            st.defaults = next;
            st.defaults_version += 1;
        }
        let lines = values
            .keys()
            .map(|k| {
                format!("{k} changed: {}", if live { "applied live" } else { "pods take it on their next restart" })
            })
            .collect();
        Ok((self.mesh_defaults().await?, lines))
    }

    async fn restart(&self, workload: &WorkloadRef, progress: Progress) -> Result<(), BackendError> {
        self.take_failure(FakeCall::Restart)?;
        let (kind, old_pod) = self.with(workload, |w, _| (w.info.kind.clone(), w.pod()))?;
        let step = *self.restart_step.lock().unwrap_or_else(|e| e.into_inner());
        progress(format!("Restarting {kind} {workload} (rollout restart)"));
        tokio::time::sleep(step).await;
        let new_pod = self.with(workload, |w, version| {
            w.generation += 1;
            w.running = w.info.annotations.clone();
            *version += 1;
            w.info.resource_version = version.to_string();
            w.bypassed = 0;
            w.refresh();
            w.pod()
        })?;
        progress(format!("Created pod {new_pod}; waiting for it to be ready (0/1)"));
        tokio::time::sleep(step).await;
        progress(format!("Pod {new_pod} is ready (1/1); terminating {old_pod}"));
        tokio::time::sleep(step).await;
        progress(format!("Rollout of {workload} complete: 1/1 pods updated and ready"));
        Ok(())
    }

    async fn check(&self, workload: &WorkloadRef, request: &CheckRequest) -> Result<CheckReport, BackendError> {
        self.take_failure(FakeCall::Check)?;
        // What the sidecars on the way would decide: the policies and every workload as the
        // check begins.
        let (policies, mesh) = {
            let s = self.lock();
            (s.policies.clone(), s.workloads.values().cloned().collect::<Vec<_>>())
        };
        let view = self.mesh_view();
        self.with(workload, |w, _| {
            let running = Settings::from_annotations(&w.running).unwrap_or_default();
            match request.direction {
                Direction::Inbound => inbound_check(w, &running, request, &policies),
                Direction::Outbound => {
                    outbound_check(w, &running, request, &Peers { policies: &policies, view: &view, mesh: &mesh })
                }
            }
        })?
    }

    async fn rule_counters(&self, workload: &WorkloadRef) -> Result<Vec<RuleCounter>, BackendError> {
        self.pause(FakeCall::RuleCounters).await;
        self.take_failure(FakeCall::RuleCounters)?;
        if self.kind == BackendKind::Kube {
            return Err(BackendError::Unsupported("reading live rules from pods on Kubernetes".into()));
        }
        self.with(workload, |w, _| if w.info.meshed { counters(w) } else { Vec::new() })
    }

    async fn mesh_policies(&self) -> Result<MeshPolicies, BackendError> {
        self.take_failure(FakeCall::MeshPolicies)?;
        let view = self.mesh_view();
        Ok(MeshPolicies { view, policies: self.lock().policies.clone(), calls: Default::default() })
    }

    async fn create_policy(&self, resource: &Resource) -> Result<(), BackendError> {
        self.take_failure(FakeCall::CreatePolicy)?;
        let mut s = self.lock();
        match s.policies.get(&resource.reference()) {
            Some(same) if same == resource => return Ok(()),
            Some(_) => {
                return Err(BackendError::Invalid(vec![format!("{} exists with another spec", resource.reference())]))
            }
            None => {}
        }
        let next = s.policies.apply(vec![resource.clone()]).map_err(|e| BackendError::Invalid(vec![e.to_string()]))?;
        s.policies = next.0;
        Ok(())
    }

    async fn delete_policy(&self, resource: &ResourceRef) -> Result<(), BackendError> {
        self.take_failure(FakeCall::DeletePolicy)?;
        let mut s = self.lock();
        if s.policies.get(resource).is_some() {
            s.policies =
                s.policies.delete(std::slice::from_ref(resource)).map_err(|e| BackendError::failed(e.to_string()))?;
        }
        Ok(())
    }
}

/// Whether the running pods of `w` hand inbound `port` to their sidecar.
fn captures_inbound(w: &FakeWorkload, port: u16) -> bool {
    let running = Settings::from_annotations(&w.running).unwrap_or_default();
    w.info.meshed && !running.exclude_inbound_ports.as_ref().is_some_and(|p| p.contains(port))
}

/// The refusal of a plaintext client by a STRICT port, as the local mesh's sidecar words it.
fn strict_refusal(w: &FakeWorkload, port: u16, policies: &PolicySet) -> Option<String> {
    let mode = meshpass_policy::server_mode(policies, &w.info.workload.namespace, &policy_workload(w).labels, port);
    (mode.mode == MtlsMode::Strict).then(|| {
        format!(
            "refused by the sidecar of pod {}/{}: port {port} requires mutual TLS (PeerAuthentication STRICT) and the client sent plaintext",
            w.info.workload.namespace,
            w.pod()
        )
    })
}

fn inbound_check(
    w: &mut FakeWorkload,
    running: &Settings,
    r: &CheckRequest,
    policies: &PolicySet,
) -> Result<CheckReport, BackendError> {
    let me = w.info.workload.clone();
    let found = w.info.services.iter().find_map(|s| {
        s.ports.iter().find(|p| r.port.is_none_or(|want| want == p.port)).map(|p| (s.clone(), p.clone()))
    });
    let Some((svc, port)) = found else {
        return Err(BackendError::Invalid(vec![match r.port {
            Some(p) => format!("port {p} is not a Service port of {me}"),
            None => format!("{me} has no Service to call"),
        }]));
    };
    let path = r.path.clone().unwrap_or_else(|| "/".into());
    let ip = svc.cluster_ip.clone().unwrap_or_else(|| "198.19.0.1".into());
    let target = format!("GET http://{ip}:{}{path}", port.port);
    let excluded = running.exclude_inbound_ports.as_ref().is_some_and(|p| p.contains(port.target_port));
    // The node is outside the mesh: plaintext, which a STRICT port refuses.
    if w.info.meshed && !excluded {
        if let Some(refusal) = strict_refusal(w, port.target_port, policies) {
            return Ok(CheckReport {
                direction: Direction::Inbound,
                from: "node".into(),
                target,
                verdict: Verdict::Sidecar,
                status_line: None,
                headers: Vec::new(),
                evidence: vec![
                    format!("sidecar inbound listener 15006 accepted the connection to port {}", port.target_port),
                    refusal.clone(),
                ],
                mtls: false,
                peer_identities: PeerIdentities::default(),
                error: Some(refusal),
            });
        }
    }
    let app = me.name.trim_end_matches("-v1");
    let (verdict, status_line, headers, evidence) = if !w.info.meshed || excluded {
        w.bypassed += 1;
        let why = if w.info.meshed {
            format!("rule exclude-inbound-ports matched port {} (counter +1)", port.target_port)
        } else {
            format!("{me} has no sidecar")
        };
        (
            Verdict::Passthrough,
            "HTTP/1.0 200 OK".to_string(),
            vec![
                ("Server".to_string(), format!("{app}/v1 (meshpass sample)")),
                ("Content-Type".to_string(), "text/plain; charset=utf-8".to_string()),
            ],
            vec![why, "no server: istio-envoy / x-envoy-upstream-service-time: the app answered directly".into()],
        )
    } else {
        (
            Verdict::Sidecar,
            "HTTP/1.1 200 OK".to_string(),
            vec![
                ("content-type".to_string(), "text/plain; charset=utf-8".to_string()),
                ("server".to_string(), "istio-envoy".to_string()),
                ("x-envoy-upstream-service-time".to_string(), "2".to_string()),
                (
                    "x-envoy-decorator-operation".to_string(),
                    format!("{}.{}.svc.cluster.local:{}/*", svc.name, me.namespace, port.port),
                ),
            ],
            vec![
                format!("sidecar inbound listener 15006 accepted the connection to port {}", port.target_port),
                "server: istio-envoy and x-envoy-upstream-service-time: the response went through the sidecar".into(),
            ],
        )
    };
    Ok(CheckReport {
        direction: Direction::Inbound,
        from: "node".into(),
        target,
        verdict,
        status_line: Some(status_line),
        headers,
        evidence,
        mtls: false,
        peer_identities: PeerIdentities::default(),
        error: None,
    })
}

/// What an outbound check sees of the rest of the mesh.
struct Peers<'a> {
    policies: &'a PolicySet,
    view: &'a MeshView,
    mesh: &'a [FakeWorkload],
}

/// The hop from a meshed client's sidecar to `ip:port`, when that is a Service of the fake
/// mesh: what the client's sidecar originates (auto mTLS, destination rules) and what the
/// destination does with it.
struct Hop {
    verdict: Verdict,
    evidence: Vec<String>,
    mtls: bool,
    ids: PeerIdentities,
    error: Option<String>,
}

fn service_hop(client: &FakeWorkload, ip: IpAddr, port: u16, peers: &Peers<'_>) -> Option<Hop> {
    let ip_text = ip.to_string();
    let (svc, endpoint) = peers.view.services.iter().find_map(|svc| {
        let sp = svc.ports.iter().find(|p| p.port == port)?;
        (svc.cluster_ip == Some(ip)).then_some(())?;
        let dest = peers.mesh.iter().find(|w| {
            w.info.services.iter().any(|s| s.name == svc.name && s.cluster_ip.as_deref() == Some(ip_text.as_str()))
        })?;
        Some(((svc, sp), dest))
    })?;
    let (svc, sp) = svc;
    let me = policy_workload(client);
    let dest = policy_workload(endpoint);
    let decision = meshpass_policy::Resolver::new(peers.policies, peers.view).client(&me, svc, sp, &dest);
    let dest_pod = format!("{}/{}", endpoint.info.workload.namespace, endpoint.pod());
    let mut evidence = vec![format!(
        "sidecar outbound listener 15001 recorded a connection to {ip}:{port} ({}): {}",
        svc.hostname(),
        decision.reason
    )];
    let captured = captures_inbound(endpoint, sp.target_port);
    let hop = match (decision.origination.is_mtls(), captured) {
        (true, true) => {
            evidence.push(format!(
                "the sidecar of pod {dest_pod} recorded this connection (inbound, with mutual TLS from {})",
                me.identity()
            ));
            Hop {
                verdict: Verdict::Sidecar,
                evidence,
                mtls: true,
                ids: PeerIdentities { client: Some(me.identity()), server: Some(dest.identity()) },
                error: None,
            }
        }
        (true, false) => {
            let why = format!(
                "port {} of pod {dest_pod} is not captured by its sidecar: the app received mutual TLS it cannot read and closed the connection",
                sp.target_port
            );
            evidence.push(why.clone());
            Hop {
                verdict: Verdict::Passthrough,
                evidence,
                mtls: false,
                ids: PeerIdentities::default(),
                error: Some(why),
            }
        }
        (false, true) => {
            let error = strict_refusal(endpoint, sp.target_port, peers.policies);
            evidence.push(format!("the sidecar of pod {dest_pod} recorded this connection (inbound, in plaintext)"));
            evidence.extend(error.clone());
            Hop { verdict: Verdict::Sidecar, evidence, mtls: false, ids: PeerIdentities::default(), error }
        }
        (false, false) => {
            evidence.push(format!(
                "the destination {dest_pod} has a sidecar, and it has no record of this connection: it went straight to the app"
            ));
            Hop { verdict: Verdict::Passthrough, evidence, mtls: false, ids: PeerIdentities::default(), error: None }
        }
    };
    Some(hop)
}

fn outbound_check(
    w: &FakeWorkload,
    running: &Settings,
    r: &CheckRequest,
    peers: &Peers<'_>,
) -> Result<CheckReport, BackendError> {
    let target = r.target.as_deref().unwrap_or_default();
    let Some((ip, port)) = parse_target(target) else {
        return Err(BackendError::Invalid(vec![format!(
            "outbound check needs a target ADDR:PORT or http://ADDR:PORT/PATH, got {target:?}"
        )]));
    };
    let by_port = running.exclude_outbound_ports.as_ref().is_some_and(|p| p.contains(port));
    let by_range = running.exclude_outbound_ip_ranges.as_ref().is_some_and(|r| r.contains(ip));
    let bypass = |evidence: String| Hop {
        verdict: Verdict::Passthrough,
        evidence: vec![evidence],
        mtls: false,
        ids: PeerIdentities::default(),
        error: None,
    };
    let hop = if !w.info.meshed {
        bypass(format!("{} has no sidecar", w.info.workload))
    } else if by_port {
        bypass(format!("rule exclude-outbound-ports matched port {port} (counter +1)"))
    } else if by_range {
        bypass(format!("rule exclude-outbound-ip-ranges matched {} (counter +1)", IpNet::host(ip)))
    } else {
        service_hop(w, ip, port, peers).unwrap_or(Hop {
            verdict: Verdict::Sidecar,
            evidence: vec![format!("sidecar outbound listener 15001 recorded a connection to {ip}:{port}")],
            mtls: false,
            ids: PeerIdentities::default(),
            error: None,
        })
    };
    let http = target.starts_with("http://");
    let answered = http && hop.error.is_none();
    Ok(CheckReport {
        direction: Direction::Outbound,
        from: format!("pod {}/{}", w.info.workload.namespace, w.pod()),
        target: if http { format!("GET {target}") } else { format!("tcp {ip}:{port}") },
        verdict: hop.verdict,
        status_line: answered.then(|| "HTTP/1.1 200 OK".to_string()),
        headers: if answered { vec![("content-type".into(), "text/plain; charset=utf-8".into())] } else { Vec::new() },
        evidence: hop.evidence,
        mtls: hop.mtls,
        peer_identities: hop.ids,
        error: hop.error,
    })
}
