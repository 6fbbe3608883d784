//! The supervisor (`meshpass up`): it owns the node and pod namespaces, the processes, the
//! services table and the control socket, and keeps them as the planner ([`crate::plan`])
//! decides. It decides nothing itself: each pass it records what the processes did, asks the
//! planner, and carries the actions out through the effect modules ([`crate::effect`]).
//!
//! One mutex guards the desired and observed state; passes are serialised by another, so a
//! pass triggered by a request (an apply, a rollout) never interleaves with the loop's. A
//! pass probes readiness outside the state lock, and pods are torn down on threads of their
//! own, so a slow or draining pod never stalls the mesh.
//!
//! Stopping ([`run`]'s end) follows [`plan::teardown::mesh`] whatever ended the loop: a
//! signal, `meshpass down`, an error, or a panic.

use crate::config::MeshConfig;
use crate::control::{DefaultsStatus, PodStatus, ServiceStatus, WorkloadStatus, SOCKET};
use crate::effect::{self, net, process};
use crate::ipam::Ipam;
use crate::manifest::{self, DeploymentSpec};
use crate::plan::change::{self, Desired, Live, Outcome};
use crate::plan::rollout::{Failure, RolloutId, Step};
use crate::plan::services::ServiceNat;
use crate::plan::teardown::MeshStep;
use crate::plan::{self, backoff, Action, Container, ContainerState, Phase, Pod, PodKey, WorkloadKey, World};
use crate::state::{NetState, State};
use crate::stop::Stop;
use crate::{Client, MeshError};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The supervisor's pidfile in the state directory.
pub const SUPERVISOR_PIDFILE: &str = "supervisor.pid";

/// Between two passes of the loop.
const TICK: Duration = Duration::from_millis(200);

const SAMPLE: [&str; 3] = [
    include_str!("../../../examples/sample/helloworld.yaml"),
    include_str!("../../../examples/sample/sleep.yaml"),
    include_str!("../../../examples/sample/external.yaml"),
];

/// Fails unless the process can create namespaces (effective UID 0).
pub fn require_root() -> Result<(), MeshError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(MeshError::NotRoot("run it as root (sudo meshpass …)".into()))
    }
}

/// What a rollout's requester hears.
#[derive(Debug)]
pub(crate) enum RolloutEvent {
    /// A progress line.
    Say(String),
    /// The answer.
    Done(Result<(), Failure>),
}

/// Everything the lock guards.
struct Inner {
    desired: Desired,
    world: World,
    pod_ipam: Ipam,
    /// Running containers' processes, by pod and container index.
    children: BTreeMap<(PodKey, usize), Child>,
    veth_seq: u64,
    /// The last services-table failure reported (each distinct one is reported once).
    services_error: Option<String>,
    /// Whoever waits for a rollout request's progress.
    waiters: BTreeMap<RolloutId, Sender<RolloutEvent>>,
}

/// The running mesh.
pub struct Supervisor {
    cfg: MeshConfig,
    /// The mesh CA, which issues every meshed pod's workload certificate.
    ca: meshpass_identity::MeshCa,
    inner: Mutex<Inner>,
    pass: Mutex<()>,
    stop: Stop,
    /// Set when teardown begins: changes are refused from then on.
    refusing: AtomicBool,
    /// Set when teardown is complete.
    stopped: AtomicBool,
    /// Control connections being served.
    connections: AtomicUsize,
    progress: Box<dyn Fn(&str) + Send + Sync>,
}

fn random_suffix() -> String {
    // RandomState is seeded from the OS; Kubernetes' alphabet avoids vowels and look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let mut n = h.finish();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock must not take the whole mesh down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Supervisor {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn say(&self, msg: &str) {
        (self.progress)(msg);
    }

    /// The settings it runs with.
    pub(crate) fn config(&self) -> &MeshConfig {
        &self.cfg
    }

    /// The stop request it obeys.
    pub(crate) fn stop(&self) -> &Stop {
        &self.stop
    }

    /// True once teardown has begun.
    pub(crate) fn refusing(&self) -> bool {
        self.refusing.load(Ordering::SeqCst)
    }

    /// True once teardown is complete.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Counts a control connection while `f` serves it.
    pub(crate) fn serving<T>(&self, f: impl FnOnce() -> T) -> T {
        self.connections.fetch_add(1, Ordering::SeqCst);
        let out = f();
        self.connections.fetch_sub(1, Ordering::SeqCst);
        out
    }

    // ---- one pass -----------------------------------------------------------------------

    /// One pass: record exits, reconcile, probe readiness (outside the lock), record it,
    /// reconcile again.
    pub(crate) fn pass(self: &Arc<Self>) {
        let _serial = lock(&self.pass);
        // After the teardown began, a pass (one a request asked for) must not bring pods back.
        if self.refusing() {
            return;
        }
        let probes = {
            let mut inner = self.lock();
            self.observe(&mut inner);
            self.reconcile(&mut inner);
            plan::probes(&inner.world, Instant::now())
        };
        let results: BTreeMap<PodKey, bool> = probes.iter().map(|p| (p.pod.clone(), effect::probe::ready(p))).collect();
        let mut inner = self.lock();
        let actions = plan::readiness(&inner.world, &results);
        self.execute(&mut inner, actions);
        self.reconcile(&mut inner);
    }

    /// Records the containers that exited.
    fn observe(&self, inner: &mut Inner) {
        let now = Instant::now();
        let mut exited = Vec::new();
        for ((pod, i), child) in &mut inner.children {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((pod.clone(), *i, status.to_string()));
            }
        }
        for (pod, i, status) in exited {
            inner.children.remove(&(pod.clone(), i));
            inner.world.exited(&pod, i, status, now);
        }
    }

    fn reconcile(self: &Arc<Self>, inner: &mut Inner) {
        let actions = plan::reconcile(&inner.desired.state, &inner.world, &self.cfg, Instant::now());
        self.execute(inner, actions);
    }

    /// Carries `actions` out in order. Pods to stop leave the endpoints with the table this
    /// list writes; their teardown starts after it.
    fn execute(self: &Arc<Self>, inner: &mut Inner, actions: Vec<Action>) {
        let mut stopping = Vec::new();
        for action in actions {
            let now = Instant::now();
            match action {
                Action::BackOff { pod, container, wait, next, note } => {
                    let Some(c) = inner.world.pods.get_mut(&pod).and_then(|p| p.containers.get_mut(container)) else {
                        continue;
                    };
                    let _ = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&c.run.log)
                        .and_then(|mut f| f.write_all(format!("[meshpass] {note}\n").as_bytes()));
                    c.restarts += 1;
                    c.backoff = next;
                    c.state = ContainerState::Waiting(now + wait);
                    self.say(&format!("pod {pod}: {note}"));
                }
                Action::Start { pod, container } => self.start(inner, &pod, container),
                Action::Create { workload, count, rollout } => self.create(inner, &workload, count, rollout),
                Action::Stop { pod } => stopping.extend(self.leave(inner, &pod, Phase::Stopping)),
                Action::SetReady { pod, ready } => {
                    if let Some(p) = inner.world.pods.get_mut(&pod) {
                        p.ready = ready;
                        if ready {
                            self.say(&format!("pod {pod} ready"));
                        }
                    }
                }
                Action::WriteServices(table) => self.write_services(inner, table),
                Action::Begin { workload, id, hash, old } => inner.world.rollouts.begin(&workload, id, hash, old, now),
                Action::Say { id, line } => tell(inner, id, RolloutEvent::Say(line)),
                Action::Announced { workload, pod } => {
                    if let Some(a) = inner.world.rollouts.active_mut(&workload) {
                        a.announced.insert(pod);
                    }
                }
                Action::Switch { workload, id, old } => {
                    for k in &old {
                        self.leave(inner, k, Phase::Leaving);
                    }
                    let table = plan::services::table(&inner.desired.state, &inner.world, &BTreeSet::new());
                    self.write_services(inner, table);
                    tell(
                        inner,
                        id,
                        RolloutEvent::Say(format!("endpoints switched to the new pods of deployment {workload}")),
                    );
                    if let Some(a) = inner.world.rollouts.active_mut(&workload) {
                        a.step = Step::Switched(now);
                    }
                }
                Action::Drain { workload, old } => {
                    for k in &old {
                        stopping.extend(self.leave(inner, k, Phase::Stopping));
                    }
                    if let Some(a) = inner.world.rollouts.active_mut(&workload) {
                        a.step = Step::Draining;
                    }
                }
                Action::IssueCert { pod } => self.issue_cert(inner, &pod),
                Action::WriteSidecarConfig { pod, config } => {
                    let Some(netns) = inner.world.pods.get(&pod).map(|p| p.netns.clone()) else { continue };
                    match effect::identity::write_config(&self.cfg, &netns, &config) {
                        Ok(()) => {
                            inner.world.sidecar_configs.insert(pod, *config);
                        }
                        Err(e) => self.say(&format!("pod {pod}: sidecar mesh config: {}", e.report())),
                    }
                }
                Action::Finish { id, result } => {
                    inner.world.rollouts.finish(id);
                    tell(inner, id, RolloutEvent::Done(result));
                    inner.waiters.remove(&id);
                }
            }
        }
        for remains in stopping {
            self.teardown_in_background(remains);
        }
    }

    /// Moves a pod to `phase` (out of the endpoints); when it is to stop, takes its
    /// processes for the teardown.
    fn leave(&self, inner: &mut Inner, key: &PodKey, phase: Phase) -> Option<(Pod, Vec<Child>)> {
        let p = inner.world.pods.get_mut(key)?;
        if p.phase == Phase::Stopping {
            return None;
        }
        p.phase = phase;
        p.ready = false;
        if phase != Phase::Stopping {
            return None;
        }
        let pod = p.clone();
        let children = (0..pod.containers.len()).filter_map(|i| inner.children.remove(&(key.clone(), i))).collect();
        Some((pod, children))
    }

    fn write_services(&self, inner: &mut Inner, table: Vec<ServiceNat>) {
        if inner.world.services.as_ref() == Some(&table) {
            return;
        }
        match net::apply_services(&self.cfg.node_netns(), &table) {
            Ok(()) => {
                inner.world.services = Some(table);
                inner.services_error = None;
            }
            Err(e) => {
                // Retried every pass; reported once per distinct failure.
                let msg = format!("services table: {}", e.report());
                if inner.services_error.as_deref() != Some(msg.as_str()) {
                    self.say(&msg);
                    inner.services_error = Some(msg);
                }
            }
        }
    }

    /// Issues a meshed pod's workload certificate and records when to renew it; a failure is
    /// reported and retried a little later.
    fn issue_cert(&self, inner: &mut Inner, key: &PodKey) {
        let Some(p) = inner.world.pods.get(key) else { return };
        let Some(dep) = inner.desired.state.deployments.get(p.workload.as_str()) else { return };
        let identity = plan::mtls::identity(dep);
        let renew = match effect::identity::issue(&self.cfg, &self.ca, &p.netns, &identity) {
            Ok(after) => after,
            Err(e) => {
                self.say(&format!("pod {key}: {}", e.report()));
                Duration::from_secs(5)
            }
        };
        inner.world.certs.insert(key.clone(), Instant::now() + renew);
    }

    /// Starts one container (its back-off has passed).
    fn start(&self, inner: &mut Inner, key: &PodKey, i: usize) {
        let Some(p) = inner.world.pods.get_mut(key) else { return };
        let netns = net::netns_path(&p.netns);
        let Some(c) = p.containers.get_mut(i) else { return };
        let spec = process::ProcSpec {
            argv: c.run.argv.clone(),
            env: c.run.env.clone(),
            uid: c.run.uid,
            gid: c.run.uid,
            log: c.run.log.clone(),
            netns,
        };
        match process::spawn(&spec) {
            Ok(child) => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = process::write_pidfile(&c.run.pidfile, pid);
                }
                c.state = ContainerState::Running(Instant::now());
                inner.children.insert((key.clone(), i), child);
            }
            Err(e) => {
                let status = format!("cannot start: {}", e.report());
                self.say(&format!("pod {key}: container {}: {status}", c.run.name));
                c.state = ContainerState::Exited { status, ran: Duration::ZERO };
            }
        }
    }

    /// Creates `count` pods of `workload`, stopping at the first failure: for a rollout, the
    /// failure is the rollout's; otherwise creation pauses ([`plan::CREATE_PAUSE`]).
    fn create(&self, inner: &mut Inner, workload: &WorkloadKey, count: u32, rollout: Option<RolloutId>) {
        let Some(dep) = inner.desired.state.deployments.get(workload.as_str()).cloned() else { return };
        let mut failure = None;
        let mut made = Vec::new();
        for _ in 0..count {
            match self.create_pod(inner, &dep) {
                Ok(key) => {
                    if let Some(id) = rollout {
                        tell(inner, id, RolloutEvent::Say(format!("pod {key} created from the current template")));
                    }
                    made.push(key);
                }
                Err(e) => {
                    self.say(&format!("deployment {workload}: cannot create a pod: {}", e.report()));
                    failure = Some(match e {
                        MeshError::Invalid(v) => Failure::Invalid(v),
                        e => Failure::Failed(e.report()),
                    });
                    break;
                }
            }
        }
        match rollout.and_then(|_| inner.world.rollouts.active_mut(workload)) {
            Some(a) => {
                a.new = made;
                a.failed = failure;
                a.step = Step::WaitingReady;
            }
            None if failure.is_some() => {
                inner.world.failing.insert(workload.clone(), Instant::now());
            }
            None => {}
        }
    }

    /// Makes one pod of `dep` (address, namespace, veth, capture) and starts its containers.
    fn create_pod(&self, inner: &mut Inner, dep: &DeploymentSpec) -> Result<PodKey, MeshError> {
        let ip = inner.pod_ipam.allocate()?;
        let made = plan::pod::blueprint(&self.cfg, &inner.desired.state, dep, &random_suffix(), ip).and_then(|b| {
            inner.veth_seq += 1;
            effect::pod::create(&self.cfg, &b, &format!("mpv{}", inner.veth_seq)).map(|()| b)
        });
        let b = match made {
            Ok(b) => b,
            Err(e) => {
                inner.pod_ipam.release(ip);
                return Err(e);
            }
        };
        let now = Instant::now();
        let key = b.key.clone();
        let containers: Vec<Container> = b
            .containers
            .into_iter()
            .map(|run| Container { run, state: ContainerState::Waiting(now), restarts: 0, backoff: backoff::INITIAL })
            .collect();
        let n = containers.len();
        let meshed = b.meshed;
        inner.world.pods.insert(
            key.clone(),
            Pod {
                key: key.clone(),
                workload: b.workload,
                hash: b.hash,
                stamp: b.stamp,
                labels: b.labels,
                ip,
                netns: b.netns,
                meshed: b.meshed,
                ready: false,
                phase: Phase::Running,
                containers,
            },
        );
        if meshed {
            // The sidecar starts with its certificate and its mesh config in place.
            self.issue_cert(inner, &key);
            let table = plan::services::table(&inner.desired.state, &inner.world, &BTreeSet::new());
            if let Some(p) = inner.world.pods.get(&key) {
                let config = plan::mtls::sidecar_config(&inner.desired.state, &inner.world, &table, p);
                match effect::identity::write_config(&self.cfg, &p.netns, &config) {
                    Ok(()) => {
                        inner.world.sidecar_configs.insert(key.clone(), config);
                    }
                    Err(e) => self.say(&format!("pod {key}: sidecar mesh config: {}", e.report())),
                }
            }
        }
        for i in 0..n {
            self.start(inner, &key, i);
        }
        self.say(&format!("pod {key} created ({ip}{})", if b.meshed { ", sidecar injected" } else { "" }));
        Ok(key)
    }

    fn teardown_in_background(self: &Arc<Self>, (pod, children): (Pod, Vec<Child>)) {
        let me = Arc::clone(self);
        std::thread::spawn(move || me.teardown(pod, children));
    }

    /// Tears a pod down as [`plan::teardown::pod`] orders; it leaves the world at the end.
    fn teardown(self: &Arc<Self>, pod: Pod, children: Vec<Child>) {
        let steps = plan::teardown::pod(pod.meshed, &self.cfg);
        let remains = effect::pod::Remains {
            pod: pod.key.to_string(),
            netns: pod.netns.clone(),
            children,
            pidfiles: pod.containers.iter().map(|c| c.run.pidfile.clone()).collect(),
        };
        let release = || {
            let mut inner = self.lock();
            inner.pod_ipam.release(pod.ip);
            inner.world.pods.remove(&pod.key);
            plan::mtls::forget(&mut inner.world, &pod.key);
        };
        effect::pod::teardown(&steps, remains, &self.stop, release, &|l| self.say(l));
        effect::identity::remove(&self.cfg, &pod.netns);
        // Should a step have panicked the pod stays listed; make sure it leaves.
        let mut inner = self.lock();
        inner.world.pods.remove(&pod.key);
        plan::mtls::forget(&mut inner.world, &pod.key);
        drop(inner);
        self.say(&format!("pod {} terminated", pod.key));
    }

    // ---- changes and reads (the control server's requests) ---------------------------------

    /// Decides a change on a copy of the desired state, carries out its live re-applies
    /// (undoing them if one fails), saves, and only then commits it; then a pass.
    fn change(
        self: &Arc<Self>,
        decide: impl FnOnce(&mut Desired, &World, &MeshConfig) -> Result<Outcome, MeshError>,
    ) -> Result<Vec<String>, MeshError> {
        let lines = {
            let mut inner = self.lock();
            if self.refusing() {
                return Err(MeshError::ShuttingDown);
            }
            let mut d = inner.desired.clone();
            let out = decide(&mut d, &inner.world, &self.cfg)?;
            let done = self.reapply(&mut inner, &out.live)?;
            if let Err(e) = d.state.save(&self.cfg.state_dir) {
                self.undo(&mut inner, &done);
                return Err(e);
            }
            mark_reapplied(&mut inner.world, &out.live);
            inner.desired = d;
            out.lines
        };
        self.pass();
        Ok(lines)
    }

    /// A batch of annotate changes ([`change::annotate_many`]), saved once: each item is
    /// decided on its own, its live re-applies carried out (on a failure, its pods already
    /// changed are undone and the item alone is taken back), then the state is saved and
    /// committed with every item that went through. `Err` only when nothing could be saved.
    fn change_many(
        self: &Arc<Self>,
        items: &[change::AnnotateItem],
        live: bool,
    ) -> Result<Vec<Result<Vec<String>, MeshError>>, MeshError> {
        let results = {
            let mut inner = self.lock();
            if self.refusing() {
                return Err(MeshError::ShuttingDown);
            }
            let original = inner.desired.state.clone();
            let mut d = inner.desired.clone();
            let decided = change::annotate_many(&mut d, &inner.world, items, live, &self.cfg);
            let mut results = Vec::with_capacity(items.len());
            let mut done: Vec<(Live, PodKey)> = Vec::new();
            let mut reapplied: Vec<Live> = Vec::new();
            for (item, r) in items.iter().zip(decided) {
                results.push(r.and_then(|out| match self.reapply(&mut inner, &out.live) {
                    Ok(ok) => {
                        done.extend(ok.into_iter().map(|(l, k)| (l.clone(), k)));
                        reapplied.extend(out.live.iter().cloned());
                        Ok(out.lines)
                    }
                    Err(e) => {
                        change::revert(&mut d, &original, &item.namespace, &item.name);
                        Err(e)
                    }
                }));
            }
            if let Err(e) = d.state.save(&self.cfg.state_dir) {
                let done: Vec<(&Live, PodKey)> = done.iter().map(|(l, k)| (l, k.clone())).collect();
                self.undo(&mut inner, &done);
                return Err(e);
            }
            mark_reapplied(&mut inner.world, &reapplied);
            inner.desired = d;
            results
        };
        self.pass();
        Ok(results)
    }

    /// Re-applies capture rules in place; on a failure, undoes those already re-applied.
    fn reapply<'a>(&self, inner: &mut Inner, live: &'a [Live]) -> Result<Vec<(&'a Live, PodKey)>, MeshError> {
        let mut done = Vec::new();
        for l in live {
            for k in &l.pods {
                let Some(netns) = inner.world.pods.get(k).map(|p| p.netns.clone()) else { continue };
                if let Err(e) = effect::capture::reapply(&l.capture, &netns, k.as_str(), &self.cfg) {
                    self.undo(inner, &done);
                    return Err(e);
                }
                done.push((l, k.clone()));
            }
        }
        Ok(done)
    }

    fn undo(&self, inner: &mut Inner, done: &[(&Live, PodKey)]) {
        for (l, k) in done {
            let Some(netns) = inner.world.pods.get(k).map(|p| p.netns.clone()) else { continue };
            if let Err(e) = effect::capture::reapply(&l.previous, &netns, k.as_str(), &self.cfg) {
                self.say(&format!("pod {k}: restoring the previous capture rules: {}", e.report()));
            }
        }
    }

    /// `meshpass apply`.
    pub(crate) fn apply(self: &Arc<Self>, yaml: &str, live: bool) -> Result<Vec<String>, MeshError> {
        let objects = manifest::parse(yaml)?;
        self.change(|d, world, cfg| change::apply(d, world, objects, live, cfg))
    }

    /// `meshpass annotate`.
    pub(crate) fn annotate(
        self: &Arc<Self>,
        ns: &str,
        name: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        live: bool,
        expect_version: Option<&str>,
    ) -> Result<Vec<String>, MeshError> {
        self.change(|d, world, cfg| change::annotate(d, world, ns, name, set, remove, live, expect_version, cfg))
    }

    /// A batch of annotate changes (see [`Supervisor::change_many`]).
    pub(crate) fn annotate_many(
        self: &Arc<Self>,
        items: &[change::AnnotateItem],
        live: bool,
    ) -> Result<Vec<Result<Vec<String>, MeshError>>, MeshError> {
        self.change_many(items, live)
    }

    /// The mesh-wide capture defaults and their version.
    pub(crate) fn defaults(&self) -> DefaultsStatus {
        let inner = self.lock();
        let s = &inner.desired.state;
        DefaultsStatus { defaults: s.mesh_defaults.clone(), version: s.defaults_version.to_string() }
    }

    /// Changes mesh-wide capture defaults ([`change::set_defaults`]): `values` (Helm path →
    /// text) replace those values, the others are kept.
    pub(crate) fn set_defaults(
        self: &Arc<Self>,
        values: &BTreeMap<String, String>,
        live: bool,
        expect_version: Option<&str>,
    ) -> Result<Vec<String>, MeshError> {
        self.change(|d, world, cfg| {
            let new = change::merged_defaults(&d.state.mesh_defaults, values)?;
            change::set_defaults(d, world, new, live, expect_version, cfg)
        })
    }

    /// `meshpass delete`.
    pub(crate) fn delete(self: &Arc<Self>, yaml: &str) -> Result<Vec<String>, MeshError> {
        let objects = manifest::parse(yaml)?;
        self.change(|d, _, _| Ok(change::delete(d, objects)))
    }

    /// Asks for a rollout of `workload`; its progress and answer arrive on `events`.
    pub(crate) fn ask_rollout(
        &self,
        workload: &WorkloadKey,
        events: Sender<RolloutEvent>,
    ) -> Result<plan::rollout::Asked, MeshError> {
        let mut inner = self.lock();
        if self.refusing() {
            return Err(MeshError::ShuttingDown);
        }
        if !inner.desired.state.deployments.contains_key(workload.as_str()) {
            let (namespace, name) = (workload.namespace().to_string(), workload.name().to_string());
            return Err(MeshError::WorkloadNotFound { namespace, name });
        }
        let (id, asked) = inner.world.rollouts.ask(workload, Instant::now());
        inner.waiters.insert(id, events);
        Ok(asked)
    }

    /// Workloads, as `meshpass get workloads` lists them.
    pub(crate) fn workloads(&self, ns: Option<&str>) -> Vec<WorkloadStatus> {
        let inner = self.lock();
        plan::status::workloads(&inner.desired.state, &inner.world, ns, &self.cfg)
    }

    /// The mesh as mutual-TLS policy resolution sees it.
    pub(crate) fn mesh_view(&self) -> meshpass_policy::MeshView {
        plan::mtls::mesh_view(&self.lock().desired.state)
    }

    /// Stored policy resources as Kubernetes objects, oldest first.
    pub(crate) fn policies(&self, kind: Option<&str>, ns: Option<&str>) -> Vec<serde_json::Value> {
        let inner = self.lock();
        let mut items: Vec<_> = inner
            .desired
            .state
            .policies
            .0
            .iter()
            .filter(|s| kind.is_none_or(|k| s.resource.kind().as_str() == k))
            .filter(|s| ns.is_none_or(|n| s.resource.meta().namespace == n))
            .collect();
        items.sort_by_key(|s| s.seq);
        items.into_iter().map(|s| s.resource.to_json()).collect()
    }

    pub(crate) fn pods(&self, ns: Option<&str>) -> Vec<PodStatus> {
        plan::status::pods(&self.lock().world, ns)
    }

    /// Services with their endpoints.
    pub(crate) fn services(&self, ns: Option<&str>) -> Vec<ServiceStatus> {
        let inner = self.lock();
        plan::status::services(&inner.desired.state, &inner.world, ns)
    }

    // ---- teardown -----------------------------------------------------------------------

    /// Tears the mesh down as [`plan::teardown::mesh`] orders.
    fn shut_down(self: &Arc<Self>) {
        // No pass runs from here on: one in progress ends first, later ones do nothing.
        let serial = lock(&self.pass);
        let steps = plan::teardown::mesh(&self.lock().world);
        let mut serial = Some(serial);
        for step in steps {
            match step {
                MeshStep::RefuseRequests => self.refusing.store(true, Ordering::SeqCst),
                MeshStep::Act(actions) => {
                    let n = actions.iter().filter(|a| matches!(a, Action::Stop { .. })).count();
                    self.say(&format!("stopping {n} pod(s)"));
                    let mut inner = self.lock();
                    self.execute(&mut inner, actions);
                }
                MeshStep::AwaitPods => {
                    drop(serial.take());
                    // Each teardown is bounded by the drain (less once hurried) and a few
                    // seconds of SIGKILL and `ip`; the sweep below catches a straggler.
                    let limit = self.cfg.drain + Duration::from_secs(30);
                    let deadline = Instant::now() + limit;
                    let empty = || self.lock().world.pods.is_empty();
                    if !self.stop.wait_until(limit, empty) {
                        // Hurried: the teardowns SIGKILL at once; give them a moment still.
                        Stop::new().wait_until(
                            deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(10)),
                            empty,
                        );
                    }
                }
                MeshStep::Sweep => {
                    match effect::sweep::sweep_with(&self.cfg.state_dir, &self.cfg.netns_prefix, &self.stop) {
                        Ok(lines) => lines.iter().for_each(|l| self.say(l)),
                        Err(e) => self.say(&format!("cleaning up: {}", e.report())),
                    }
                }
                MeshStep::RemoveControlFiles => {
                    let _ = std::fs::remove_file(self.cfg.state_dir.join(SOCKET));
                    let _ = std::fs::remove_file(self.cfg.state_dir.join(SUPERVISOR_PIDFILE));
                }
            }
        }
    }
}

/// Sends `event` to whoever waits for rollout request `id` (gone is fine).
/// Pods re-applied live carry their template's hash and their new capture's stamp.
fn mark_reapplied(world: &mut World, live: &[Live]) {
    for l in live {
        for k in &l.pods {
            if let Some(p) = world.pods.get_mut(k) {
                p.hash = l.hash.clone();
                p.stamp = l.stamp.clone();
            }
        }
    }
}

fn tell(inner: &Inner, id: RolloutId, event: RolloutEvent) {
    if let Some(tx) = inner.waiters.get(&id) {
        let _ = tx.send(event);
    }
}

/// Runs the mesh in the foreground until `stop` is requested (by a signal handler, or by a
/// `Shutdown` request on the control socket), then tears everything down — also after an
/// error or a panic of the supervisor's loop. `progress` receives human-readable lines ("pod
/// default/helloworld-… ready"); it must not block or panic (see [`crate::output::Output`]).
pub fn run(cfg: MeshConfig, stop: Stop, progress: Box<dyn Fn(&str) + Send + Sync>) -> Result<(), MeshError> {
    require_root()?;
    cfg.validate()?;
    let dir = cfg.state_dir.clone();
    std::fs::create_dir_all(&dir).map_err(MeshError::io("cannot create state directory", &dir))?;
    // Traversable (not listable) by the sidecars' UID, which reads its own files under
    // pods/; everything else in here is readable by root only (logs/ and pids/ 0700, the
    // state file and the CA key 0600).
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711));
    for private in ["logs", "pids"] {
        let d = dir.join(private);
        std::fs::create_dir_all(&d).map_err(MeshError::io("cannot create", &d))?;
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
    }
    effect::identity::remove_all(&dir);
    let (ca, created) = effect::identity::load_ca(&cfg)?;
    if created {
        progress(&format!("created the mesh CA in {} (key readable by root only)", dir.display()));
    }
    if Client::connect(&dir).is_ok() {
        return Err(MeshError::AlreadyRunning(dir));
    }
    let mut state = State::load(&dir)?.unwrap_or_default();
    // Whatever a crashed supervisor left behind goes first (with the prefix it used).
    let mut prefixes = vec![cfg.netns_prefix.clone()];
    if let Some(old) = &state.net {
        if old.netns_prefix != cfg.netns_prefix {
            prefixes.push(old.netns_prefix.clone());
        }
    }
    for p in &prefixes {
        for line in effect::sweep::sweep(&dir, p)? {
            progress(&format!("cleaning up a previous run: {line}"));
        }
    }
    state.net = Some(NetState {
        netns_prefix: cfg.netns_prefix.clone(),
        pod_cidr: cfg.pod_cidr.to_string(),
        service_cidr: cfg.service_cidr.to_string(),
        backend: cfg.backend.to_string(),
        untrack_excluded_inbound: cfg.untrack_excluded_inbound,
        ebpf_capture: cfg.ebpf_capture,
    });
    let mut cluster_ips = Ipam::new(cfg.service_cidr, 0);
    let mut lost = Vec::new();
    for (k, s) in &state.services {
        if !cluster_ips.reserve(s.cluster_ip) {
            lost.push(k.clone());
        }
    }
    for k in lost {
        // The service block changed since the last run: give the service a new address.
        if let Some(s) = state.services.get_mut(&k) {
            s.cluster_ip = cluster_ips.allocate()?;
        }
    }
    let install_sample = cfg.sample && !state.sample_installed;
    // Saved before anything is created, so that `meshpass down` after a crash knows the prefix.
    state.save(&dir)?;
    let node = cfg.node_netns();
    progress(&format!("creating node namespace {node} (gateway {}, services {})", cfg.gateway(), cfg.service_cidr));
    if let Err(e) = net::create_node(&node, cfg.gateway(), &cfg.service_cidr.to_string()) {
        let _ = net::netns_del(&node);
        return Err(e);
    }
    let sup = Arc::new(Supervisor {
        inner: Mutex::new(Inner {
            desired: Desired { state, cluster_ips },
            world: World::default(),
            pod_ipam: Ipam::new(cfg.pod_cidr, 1),
            children: BTreeMap::new(),
            veth_seq: 0,
            services_error: None,
            waiters: BTreeMap::new(),
        }),
        cfg,
        ca,
        pass: Mutex::new(()),
        stop,
        refusing: AtomicBool::new(false),
        stopped: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        progress,
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(&sup, install_sample)))
        .unwrap_or(Err(MeshError::Panicked));
    // Teardown happens whatever went wrong above.
    sup.stop.request();
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sup.shut_down())).is_err() {
        // Even then nothing may be left behind.
        let _ = effect::sweep::sweep_with(&dir, &sup.cfg.netns_prefix, &sup.stop);
        let _ = std::fs::remove_file(dir.join(SOCKET));
        let _ = std::fs::remove_file(dir.join(SUPERVISOR_PIDFILE));
    }
    sup.say("mesh stopped; manifests kept in the state directory");
    sup.stopped.store(true, Ordering::SeqCst);
    // Let a `meshpass down` waiting for the teardown hear that it is done.
    sup.stop.wait_until(Duration::from_secs(2), || sup.connections.load(Ordering::SeqCst) == 0);
    result
}

/// Installs the sample if asked, serves the control socket and runs passes until stopped.
fn serve(sup: &Arc<Supervisor>, install_sample: bool) -> Result<(), MeshError> {
    let dir = sup.cfg.state_dir.clone();
    process::write_pidfile(&dir.join(SUPERVISOR_PIDFILE), std::process::id() as i32)?;
    if install_sample {
        sup.say("installing the sample (helloworld, sleep, external)");
        for yaml in SAMPLE {
            for line in sup.apply(yaml, false)? {
                sup.say(&line);
            }
        }
        let mut inner = sup.lock();
        inner.desired.state.sample_installed = true;
        inner.desired.state.save(&dir)?;
    }
    let sock = dir.join(SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(MeshError::io("cannot listen on", &sock))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(MeshError::io("cannot chmod", &sock))?;
    let server = {
        let sup = Arc::clone(sup);
        std::thread::spawn(move || crate::server::serve(&sup, listener))
    };
    sup.say(&format!("control socket {} ready", sock.display()));
    while !sup.stop.requested() {
        sup.pass();
        std::thread::sleep(TICK);
    }
    let _ = server.join();
    Ok(())
}

/// `meshpass down`: stops a running supervisor (which tears everything down), or — after a
/// crash or `kill -9` — kills the supervisor's leftovers and removes every namespace with the
/// mesh's prefix. Keeps state.json, so the next `up` restores the mesh.
pub fn down(state_dir: &Path) -> Result<Vec<String>, MeshError> {
    require_root()?;
    let mut out = Vec::new();
    if let Ok(client) = Client::connect(state_dir) {
        match client.shutdown() {
            Ok(()) => out.push("supervisor stopped the mesh".to_string()),
            Err(e) => out.push(format!("supervisor did not stop cleanly: {}", e.report())),
        }
    }
    if let Some(pid) = process::live_pid(&state_dir.join(SUPERVISOR_PIDFILE)) {
        process::kill_pids(&[pid], Duration::from_secs(5), &Stop::new());
        out.push(format!("killed supervisor {pid}"));
    }
    let prefix = State::load(state_dir)?
        .and_then(|s| s.net.map(|n| n.netns_prefix))
        .unwrap_or_else(|| crate::config::DEFAULT_NETNS_PREFIX.to_string());
    out.extend(effect::sweep::sweep(state_dir, &prefix)?);
    effect::identity::remove_all(state_dir);
    let _ = std::fs::remove_file(state_dir.join(SOCKET));
    let _ = std::fs::remove_file(state_dir.join(SUPERVISOR_PIDFILE));
    Ok(out)
}
