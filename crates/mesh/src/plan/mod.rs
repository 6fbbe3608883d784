//! The planner: the mesh's decisions, and nothing else. The desired state (the manifests in
//! [`State`], the mesh's settings in [`MeshConfig`]) and the observed state ([`World`]: pods,
//! their containers and readiness, the services table, rollouts) go in; a list of
//! [`Action`]s comes out. No I/O, no clock (the caller passes `now`), no threads — every rule
//! of the reconcile loop is unit-tested here without root.
//!
//! One pass of the supervisor ([`crate::supervisor`]) is: record what the processes did
//! (exits), [`reconcile`] and carry the actions out, [`probes`] (run outside the lock),
//! [`readiness`] from their results, and [`reconcile`] again (a pod that became ready may
//! switch a rollout's endpoints). Carried out, an action only records its outcome in the
//! world; the next pass decides from there. Calling [`reconcile`] again on the world its
//! actions produced yields nothing new, so extra passes (after every request) are harmless.
//!
//! - [`reconcile`]: crashed containers restarted with [`backoff`], replica counts kept (older
//!   templates scaled down first), pods of deleted Deployments stopped, [`rollout`] steps, the
//!   [`services`] table rewritten when its endpoints change
//! - [`pod`]: what a new pod is made of, the sidecar's environment included
//! - [`capture`]: how a pod is captured (rules, eBPF programs, none)
//! - [`change`]: `apply`, `annotate`, `delete` — validated as a whole, pending restart or live
//! - [`mtls`]: each sidecar's mesh config (inbound mTLS modes, Services, endpoints and their
//!   TLS, from the stored policies) and when its workload certificate is renewed
//! - [`teardown`]: the order a pod and the whole mesh are taken down in
//! - [`status`]: what `meshpass get` and the management plane see
//!
//! Where a new rule goes: what a pod is started with (an environment variable for the
//! sidecar, a per-port protocol, a workload identity) is part of its [`pod::Blueprint`]; a
//! new stored resource or mesh-wide default is validated and stored in [`change`], and if it
//! can reach running pods in place it yields a [`change::Live`]; something the supervisor must
//! do again over time (a certificate to renew) is a rule of [`reconcile`] with an [`Action`]
//! of its own, its due date kept in the [`World`] like a container's back-off.

pub mod backoff;
pub mod capture;
pub mod change;
pub mod mtls;
pub mod pod;
pub mod rollout;
pub mod services;
pub mod status;
pub mod teardown;
mod world;

pub use world::{Container, ContainerState, Phase, Pod, PodKey, WorkloadKey, World};

use crate::config::MeshConfig;
use crate::state::State;
use rollout::{Failure, RolloutId};
use services::ServiceNat;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A container must have run this long before its pod's readiness probe counts (a process
/// that dies of a bad flag at once must not be "ready" for a moment).
pub const SETTLE: Duration = Duration::from_millis(300);
/// After creating a pod of a Deployment failed, the next attempt waits this long.
pub const CREATE_PAUSE: Duration = Duration::from_secs(5);

/// One thing to do. Carried out in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A container exited: log `note`, start it again in `wait`, and back off `next` after.
    BackOff {
        /// The pod.
        pod: PodKey,
        /// The container's index.
        container: usize,
        /// Until it starts again.
        wait: Duration,
        /// Its back-off after that.
        next: Duration,
        /// What happened, for its log and the supervisor's output.
        note: String,
    },
    /// Start a container whose back-off has passed.
    Start {
        /// The pod.
        pod: PodKey,
        /// The container's index.
        container: usize,
    },
    /// Create `count` pods of a Deployment from its current template, for a rollout if
    /// given; stop at the first that fails.
    Create {
        /// The Deployment.
        workload: WorkloadKey,
        /// How many.
        count: u32,
        /// The rollout they are for.
        rollout: Option<RolloutId>,
    },
    /// Tear a pod down in the background; it leaves the endpoints at once.
    Stop {
        /// The pod.
        pod: PodKey,
    },
    /// Mark a pod ready or not ready (announced when it becomes ready).
    SetReady {
        /// The pod.
        pod: PodKey,
        /// Its probe's result.
        ready: bool,
    },
    /// Rewrite the services table.
    WriteServices(Vec<ServiceNat>),
    /// Request `id` starts the rollout of a Deployment, replacing `old`.
    Begin {
        /// The Deployment.
        workload: WorkloadKey,
        /// The request.
        id: RolloutId,
        /// The template hash it rolls to.
        hash: String,
        /// The pods it replaces.
        old: Vec<PodKey>,
    },
    /// Tell request `id` how its rollout goes.
    Say {
        /// The request.
        id: RolloutId,
        /// One progress line.
        line: String,
    },
    /// A rollout's new pod was reported ready.
    Announced {
        /// The Deployment.
        workload: WorkloadKey,
        /// The pod.
        pod: PodKey,
    },
    /// Every new pod of a rollout is ready: take the `old` pods out of the endpoints in one
    /// rewrite of the services table (their processes keep running for now).
    Switch {
        /// The Deployment.
        workload: WorkloadKey,
        /// The rollout's request.
        id: RolloutId,
        /// The pods leaving.
        old: Vec<PodKey>,
    },
    /// A rollout's old pods drain and go.
    Drain {
        /// The Deployment.
        workload: WorkloadKey,
        /// The pods.
        old: Vec<PodKey>,
    },
    /// Issue a new workload certificate for a meshed pod (none yet, or due for renewal) and
    /// write its files; its sidecar reloads them.
    IssueCert {
        /// The pod.
        pod: PodKey,
    },
    /// Write a sidecar's mesh config (it changed); the sidecar reloads it.
    WriteSidecarConfig {
        /// The pod.
        pod: PodKey,
        /// The new config.
        config: Box<meshpass_proxy::mesh_config::MeshConfigFile>,
    },
    /// Answer request `id` (its rollout, if it ran one, is over).
    Finish {
        /// The request.
        id: RolloutId,
        /// How it went.
        result: Result<(), Failure>,
    },
}

/// The actions of one reconcile pass over `state` and `world` at `now`.
pub fn reconcile(state: &State, world: &World, cfg: &MeshConfig, now: Instant) -> Vec<Action> {
    let mut out = Vec::new();
    containers(world, now, &mut out);
    // Pods of deleted Deployments go.
    for p in world.pods.values() {
        if p.phase != Phase::Stopping && !state.deployments.contains_key(p.workload.as_str()) {
            out.push(Action::Stop { pod: p.key.clone() });
        }
    }
    replicas(state, world, now, &mut out);
    out.extend(rollout::plan(state, world, cfg.drain, now));
    let leaving: BTreeSet<PodKey> = out
        .iter()
        .flat_map(|a| match a {
            Action::Stop { pod } => std::slice::from_ref(pod),
            Action::Switch { old, .. } | Action::Drain { old, .. } => old.as_slice(),
            _ => &[],
        })
        .cloned()
        .collect();
    let table = services::table(state, world, &leaving);
    let sidecars = mtls::actions(state, world, &table, now);
    if world.services.as_ref() != Some(&table) {
        out.push(Action::WriteServices(table));
    }
    out.extend(sidecars);
    out
}

/// Crashed containers back off; containers whose back-off passed start again. Only pods
/// that are running: a pod on its way out is not restarted.
fn containers(world: &World, now: Instant, out: &mut Vec<Action>) {
    for p in world.pods.values().filter(|p| p.phase == Phase::Running) {
        for (i, c) in p.containers.iter().enumerate() {
            match &c.state {
                ContainerState::Exited { status, ran } => {
                    let (wait, next) = backoff::after_exit(c.backoff, *ran);
                    let note = format!("container {} exited ({status}); restarting in {wait:?}", c.run.name);
                    out.push(Action::BackOff { pod: p.key.clone(), container: i, wait, next, note });
                }
                ContainerState::Waiting(at) if now >= *at => {
                    out.push(Action::Start { pod: p.key.clone(), container: i });
                }
                _ => {}
            }
        }
    }
}

/// Every Deployment not in a rollout runs its replica count: surplus pods of older templates
/// go first; missing pods are created, unless creating one failed a moment ago.
fn replicas(state: &State, world: &World, now: Instant, out: &mut Vec<Action>) {
    for d in state.deployments.values() {
        let wk = WorkloadKey::new(&d.namespace, &d.name);
        if world.rollouts.rolling(&wk) {
            continue;
        }
        let hash = d.template.hash();
        let mut mine: Vec<(bool, &PodKey)> =
            world.pods_of(&wk, Phase::Running).map(|p| (p.hash == hash, &p.key)).collect();
        let have = mine.len() as u32;
        if have > d.replicas {
            mine.sort();
            out.extend(
                mine.into_iter().take((have - d.replicas) as usize).map(|(_, k)| Action::Stop { pod: k.clone() }),
            );
        } else if have < d.replicas {
            if world.failing.get(&wk).is_some_and(|t| now.duration_since(*t) < CREATE_PAUSE) {
                continue;
            }
            out.push(Action::Create { workload: wk, count: d.replicas - have, rollout: None });
        }
    }
}

/// A readiness probe to run, outside the supervisor's lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The pod.
    pub pod: PodKey,
    /// Its network namespace.
    pub netns: String,
    /// Probe the sidecar's readiness endpoint (15021 `/healthz/ready`) too.
    pub sidecar: bool,
    /// The app containers' ports: each must accept a connection.
    pub ports: Vec<u16>,
    /// False when a container is not running, or only just started: not ready, no probe.
    pub settled: bool,
}

/// The readiness probes of every running pod.
pub fn probes(world: &World, now: Instant) -> Vec<Probe> {
    world
        .pods
        .values()
        .filter(|p| p.phase == Phase::Running)
        .map(|p| Probe {
            pod: p.key.clone(),
            netns: p.netns.clone(),
            sidecar: p.meshed,
            ports: p.containers.iter().filter(|c| !c.run.sidecar).flat_map(|c| c.run.ports.iter().copied()).collect(),
            settled: p.settled(now, SETTLE),
        })
        .collect()
}

/// The readiness changes `results` (from [`probes`]) make; pods without a result keep theirs.
pub fn readiness(world: &World, results: &BTreeMap<PodKey, bool>) -> Vec<Action> {
    results
        .iter()
        .filter(|(k, ok)| world.pods.get(*k).is_some_and(|p| p.phase == Phase::Running && p.ready != **ok))
        .map(|(k, ok)| Action::SetReady { pod: k.clone(), ready: *ok })
        .collect()
}

/// Small worlds for the planner's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::pod::ContainerRun;
    use super::*;
    use crate::manifest::{ContainerSpec, DeploymentSpec, NamespaceSpec, PodTemplate, ServicePort, ServiceSpec};
    use crate::state::StoredService;
    use std::net::Ipv4Addr;
    use std::path::Path;

    /// The default settings, state in /tmp/mesh-test.
    pub(crate) fn cfg() -> MeshConfig {
        let mut c = MeshConfig::new(Path::new("/tmp/mesh-test"));
        c.meshpass_exe = "/usr/bin/meshpass".into();
        c.sidecar_argv = vec!["/usr/bin/meshpass".into(), "proxy".into()];
        c
    }

    /// A state with `default` meshed and `plain` not.
    pub(crate) fn meshed_state() -> State {
        let mut s = State::default();
        let ns = |name: &str, meshed: bool| NamespaceSpec {
            name: name.into(),
            labels: if meshed { [("istio-injection".into(), "enabled".into())].into() } else { Default::default() },
        };
        s.namespaces.insert("default".into(), ns("default", true));
        s.namespaces.insert("plain".into(), ns("plain", false));
        s
    }

    /// A Deployment `name` of the helloworld sample (label `app: name`).
    pub(crate) fn deployment(namespace: &str, name: &str, replicas: u32) -> DeploymentSpec {
        let labels: BTreeMap<String, String> = [("app".into(), name.into())].into();
        DeploymentSpec {
            namespace: namespace.into(),
            name: name.into(),
            replicas,
            selector: labels.clone(),
            template: PodTemplate {
                labels,
                annotations: BTreeMap::new(),
                containers: vec![ContainerSpec {
                    name: name.into(),
                    argv: vec!["meshpass".into(), "sample".into(), "helloworld".into()],
                    env: vec![("GREETING".into(), "hi".into())],
                    ports: vec![5000],
                }],
                service_account: None,
            },
        }
    }

    /// Adds Service `name` selecting `app: name`, with the next ClusterIP.
    pub(crate) fn service(state: &mut State, namespace: &str, name: &str, ports: &[(u16, u16)]) {
        let n = state.services.len() as u8 + 1;
        let spec = ServiceSpec {
            namespace: namespace.into(),
            name: name.into(),
            selector: [("app".into(), name.into())].into(),
            ports: ports
                .iter()
                .map(|&(port, target_port)| ServicePort { port, target_port, name: None, app_protocol: None })
                .collect(),
        };
        let cluster_ip = Ipv4Addr::new(198, 19, 0, n);
        state.services.insert(crate::state::key(namespace, name), StoredService { spec, cluster_ip });
    }

    /// Adds a running, ready, meshed pod of `workload` made from template `hash`, at
    /// 198.18.0.`n`, with an app container running for a minute and a sidecar.
    pub(crate) fn pod(world: &mut World, namespace: &str, workload: &str, hash: &str, n: u8) -> PodKey {
        let key = PodKey::new(namespace, &format!("{workload}-{hash}-p{n}"));
        let since = Instant::now().checked_sub(Duration::from_secs(60)).unwrap_or_else(Instant::now);
        let run = |name: &str, sidecar: bool, ports: Vec<u16>| Container {
            run: ContainerRun {
                name: name.into(),
                argv: vec!["true".into()],
                env: vec![],
                uid: 1000,
                sidecar,
                ports,
                log: format!("/tmp/{name}.log").into(),
                pidfile: format!("/tmp/{name}.pid").into(),
            },
            state: ContainerState::Running(since),
            restarts: 0,
            backoff: backoff::INITIAL,
        };
        world.pods.insert(
            key.clone(),
            Pod {
                key: key.clone(),
                workload: WorkloadKey::new(namespace, workload),
                hash: hash.into(),
                stamp: super::capture::stamp(
                    true,
                    &BTreeMap::new(),
                    &cfg(),
                    &meshpass_settings::MeshDefaults::default(),
                ),
                labels: [("app".into(), workload.into())].into(),
                ip: Ipv4Addr::new(198, 18, 0, n),
                netns: format!("mpm-{namespace}-{}", key.name()),
                meshed: true,
                ready: true,
                phase: Phase::Running,
                containers: vec![run(workload, false, vec![5000]), run("istio-proxy", true, vec![])],
            },
        );
        key
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{cfg, deployment, meshed_state, pod, service};
    use super::*;

    fn at<'a>(world: &'a mut World, pod: &PodKey, container: usize) -> &'a mut Container {
        &mut world.pods.get_mut(pod).expect("pod").containers[container]
    }

    /// `hello` (2 replicas) with its pods running the current template, and its Service's
    /// table written: a world in which nothing is to be done.
    fn steady() -> (State, World, Vec<PodKey>) {
        let mut state = meshed_state();
        let dep = deployment("default", "hello", 2);
        let hash = dep.template.hash();
        state.put_deployment(dep);
        service(&mut state, "default", "hello", &[(80, 5000)]);
        let mut world = World::default();
        let pods = vec![pod(&mut world, "default", "hello", &hash, 2), pod(&mut world, "default", "hello", &hash, 3)];
        world.services = Some(services::table(&state, &world, &BTreeSet::new()));
        settle_sidecars(&state, &mut world);
        (state, world, pods)
    }

    /// Records every meshed pod's certificate (due in an hour) and mesh config as written.
    fn settle_sidecars(state: &State, world: &mut World) {
        let table = world.services.clone().unwrap_or_default();
        for act in mtls::actions(state, world, &table, Instant::now()) {
            match act {
                Action::IssueCert { pod } => {
                    world.certs.insert(pod, Instant::now() + Duration::from_secs(3600));
                }
                Action::WriteSidecarConfig { pod, config } => {
                    world.sidecar_configs.insert(pod, *config);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn a_steady_mesh_needs_nothing() {
        let (state, world, _) = steady();
        assert_eq!(reconcile(&state, &world, &cfg(), Instant::now()), vec![]);
    }

    #[test]
    fn missing_replicas_are_created_in_one_action() {
        let (mut state, world, _) = steady();
        let mut dep = state.deployments["default/hello"].clone();
        dep.replicas = 5;
        state.put_deployment(dep);
        let actions = reconcile(&state, &world, &cfg(), Instant::now());
        assert_eq!(
            actions,
            vec![Action::Create { workload: WorkloadKey::new("default", "hello"), count: 3, rollout: None }]
        );
    }

    #[test]
    fn creation_pauses_after_a_failure() {
        let (mut state, mut world, _) = steady();
        let mut dep = state.deployments["default/hello"].clone();
        dep.replicas = 3;
        state.put_deployment(dep);
        let now = Instant::now();
        world.failing.insert(WorkloadKey::new("default", "hello"), now);
        assert_eq!(reconcile(&state, &world, &cfg(), now + CREATE_PAUSE - Duration::from_millis(1)), vec![]);
        assert!(matches!(
            reconcile(&state, &world, &cfg(), now + CREATE_PAUSE).as_slice(),
            [Action::Create { count: 1, .. }]
        ));
    }

    #[test]
    fn scaling_down_takes_pods_of_older_templates_first() {
        let (mut state, mut world, pods) = steady();
        let old = pod(&mut world, "default", "hello", "oldhash", 9);
        let mut dep = state.deployments["default/hello"].clone();
        dep.replicas = 1;
        state.put_deployment(dep);
        let actions = reconcile(&state, &world, &cfg(), Instant::now());
        let stopped: Vec<&PodKey> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop { pod } => Some(pod),
                _ => None,
            })
            .collect();
        assert_eq!(stopped, vec![&old, &pods[0]], "the old template's pod, then the first of the current");
        let Some(Action::WriteServices(table)) = actions.iter().find(|a| matches!(a, Action::WriteServices(_))) else {
            panic!("{actions:?}")
        };
        assert_eq!(table[0].endpoints, vec![world.pods[&pods[1]].ip], "stopped pods leave the endpoints at once");
    }

    #[test]
    fn pods_of_a_deleted_deployment_go_and_leave_the_endpoints() {
        let (mut state, world, pods) = steady();
        state.deployments.clear();
        let actions = reconcile(&state, &world, &cfg(), Instant::now());
        assert_eq!(actions[..2], [Action::Stop { pod: pods[0].clone() }, Action::Stop { pod: pods[1].clone() }]);
        assert!(matches!(&actions[2], Action::WriteServices(t) if t[0].endpoints.is_empty()));
    }

    #[test]
    fn a_pod_already_stopping_is_not_stopped_again_nor_counted() {
        let (state, mut world, pods) = steady();
        world.pods.get_mut(&pods[0]).expect("pod").phase = Phase::Stopping;
        let actions = reconcile(&state, &world, &cfg(), Instant::now());
        assert!(matches!(actions.first(), Some(Action::Create { count: 1, .. })), "a replacement: {actions:?}");
        assert!(!actions.contains(&Action::Stop { pod: pods[0].clone() }));
    }

    #[test]
    fn a_crashed_container_backs_off_then_starts_when_due() {
        let (state, mut world, pods) = steady();
        let now = Instant::now();
        world.exited(&pods[0], 0, "exit status: 1".into(), now);
        let actions = reconcile(&state, &world, &cfg(), now);
        assert_eq!(
            actions,
            vec![Action::BackOff {
                pod: pods[0].clone(),
                container: 0,
                wait: Duration::from_secs(1),
                next: Duration::from_secs(2),
                note: "container hello exited (exit status: 1); restarting in 1s".into(),
            }],
            "a minute of running is not a healthy run: the back-off it had stays"
        );
        at(&mut world, &pods[0], 0).state = ContainerState::Waiting(now + Duration::from_secs(1));
        assert_eq!(reconcile(&state, &world, &cfg(), now), vec![], "not due yet");
        assert_eq!(
            reconcile(&state, &world, &cfg(), now + Duration::from_secs(1)),
            vec![Action::Start { pod: pods[0].clone(), container: 0 }]
        );
    }

    #[test]
    fn a_container_that_ran_long_backs_off_from_the_start_again() {
        let (state, mut world, pods) = steady();
        let c = at(&mut world, &pods[1], 1);
        c.backoff = backoff::MAX;
        c.state = ContainerState::Exited { status: "signal: 9".into(), ran: Duration::from_secs(600) };
        let actions = reconcile(&state, &world, &cfg(), Instant::now());
        assert!(
            matches!(&actions[..], [Action::BackOff { container: 1, wait, .. }] if *wait == backoff::INITIAL),
            "{actions:?}"
        );
    }

    #[test]
    fn containers_of_pods_on_their_way_out_are_not_restarted() {
        let (state, mut world, pods) = steady();
        world.pods.get_mut(&pods[0]).expect("pod").phase = Phase::Leaving;
        at(&mut world, &pods[0], 0).state =
            ContainerState::Exited { status: "exit status: 0".into(), ran: Duration::ZERO };
        let actions = reconcile(&state, &world, &cfg(), Instant::now());
        assert!(!actions.iter().any(|a| matches!(a, Action::BackOff { .. } | Action::Start { .. })), "{actions:?}");
    }

    #[test]
    fn a_deployment_in_a_rollout_is_not_scaled() {
        let (mut state, mut world, _) = steady();
        let wk = WorkloadKey::new("default", "hello");
        let (id, _) = world.rollouts.ask(&wk, Instant::now());
        world.rollouts.begin(&wk, id, "h".into(), vec![], Instant::now());
        world.rollouts.active_mut(&wk).expect("active").step = rollout::Step::WaitingReady;
        let mut dep = state.deployments["default/hello"].clone();
        dep.replicas = 4;
        state.put_deployment(dep);
        let actions = reconcile(&state, &world, &cfg(), Instant::now());
        assert!(!actions.iter().any(|a| matches!(a, Action::Create { rollout: None, .. })), "{actions:?}");
    }

    #[test]
    fn a_switch_takes_the_old_pods_out_of_the_table_written_in_the_same_pass() {
        let (state, mut world, pods) = steady();
        let wk = WorkloadKey::new("default", "hello");
        let hash = state.deployments["default/hello"].template.hash();
        let (id, _) = world.rollouts.ask(&wk, Instant::now());
        world.rollouts.begin(&wk, id, hash.clone(), pods.clone(), Instant::now());
        let new = pod(&mut world, "default", "hello", &hash, 7);
        let a = world.rollouts.active_mut(&wk).expect("active");
        a.new = vec![new.clone()];
        a.step = rollout::Step::WaitingReady;
        let actions = reconcile(&state, &world, &cfg(), Instant::now());
        assert!(actions.contains(&Action::Switch { workload: wk, id, old: pods }), "{actions:?}");
        let Some(Action::WriteServices(table)) = actions.iter().find(|a| matches!(a, Action::WriteServices(_))) else {
            panic!("{actions:?}")
        };
        assert_eq!(table[0].endpoints, vec![world.pods[&new].ip], "only the new pod serves");
    }

    #[test]
    fn only_settled_running_pods_are_probed_and_only_changes_are_recorded() {
        let (_, mut world, pods) = steady();
        let now = Instant::now();
        at(&mut world, &pods[1], 1).state = ContainerState::Running(now);
        world.pods.get_mut(&pods[1]).expect("pod").ready = false;
        let stopping = pod(&mut world, "default", "hello", "x", 9);
        world.pods.get_mut(&stopping).expect("pod").phase = Phase::Stopping;
        let p = probes(&world, now);
        assert_eq!(p.len(), 2, "not the pod that is stopping");
        assert_eq!(
            p[0],
            Probe {
                pod: pods[0].clone(),
                netns: world.pods[&pods[0]].netns.clone(),
                sidecar: true,
                ports: vec![5000],
                settled: true
            }
        );
        assert!(!p[1].settled, "its sidecar just started");
        let results = BTreeMap::from([(pods[0].clone(), true), (pods[1].clone(), false), (stopping, false)]);
        assert_eq!(
            readiness(&world, &results),
            vec![],
            "pods[0] was ready, pods[1] was not; a stopping pod is left alone"
        );
        let results = BTreeMap::from([(pods[0].clone(), false), (pods[1].clone(), true)]);
        assert_eq!(
            readiness(&world, &results),
            vec![
                Action::SetReady { pod: pods[0].clone(), ready: false },
                Action::SetReady { pod: pods[1].clone(), ready: true }
            ]
        );
    }

    #[test]
    fn a_ready_change_rewrites_the_table_once() {
        let (state, mut world, pods) = steady();
        world.pods.get_mut(&pods[0]).expect("pod").ready = false;
        let actions = reconcile(&state, &world, &cfg(), Instant::now());
        let [Action::WriteServices(table)] = actions.as_slice() else { panic!("{actions:?}") };
        world.services = Some(table.clone());
        assert_eq!(reconcile(&state, &world, &cfg(), Instant::now()), vec![]);
    }
}
