//! Rolling restarts (`meshpass rollout restart`): the steps of one rollout and the rules for
//! restarts asked for while one is in progress. Pure: the supervisor records each step in
//! [`Rollouts`] and [`crate::rollout`] streams the progress to whoever asked.
//!
//! A rollout starts one new pod per replica from the current template; once *all* of them
//! are ready, one atomic rewrite of the services table moves the endpoints from the old pods
//! to the new ones ([`super::Action::Switch`]); a second later (connections already DNATed to
//! the old pods arrive) the old pods drain and go. If a new pod is lost or not ready within
//! [`READY_WAIT`], the rollout is aborted: the new pods go, the old ones keep serving.
//!
//! A restart asked for while another runs for the same Deployment (a second click, a second
//! operator) *joins* it: it waits, and rolls again only if the template changed meanwhile;
//! otherwise it reports the rollout that was in progress. It gives up after [`JOIN_WAIT`].

use super::world::{Phase, PodKey, WorkloadKey, World};
use super::Action;
use crate::state::State;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

/// How long new pods may take to become ready before the rollout is aborted.
pub const READY_WAIT: Duration = Duration::from_secs(90);
/// How long a joined restart waits for the rollout in progress.
pub const JOIN_WAIT: Duration = Duration::from_secs(180);
/// Between the endpoint switch and the old pods' drain: connections the old table already
/// DNATed to them still arrive.
pub const SWITCH_SETTLE: Duration = Duration::from_secs(1);

/// One restart request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RolloutId(pub u64);

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rollout #{}", self.0)
    }
}

/// What became of a restart request when it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// Nothing runs for the Deployment: this request starts the next rollout.
    Starts,
    /// A rollout is in progress (or queued): this request waits for it.
    Joins,
}

/// Why a restart request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The Deployment does not exist (any more).
    NotFound,
    /// Creating a new pod was refused (its settings).
    Invalid(Vec<String>),
    /// Creating a new pod failed.
    Failed(String),
    /// A wait ran out.
    Timeout(String),
    /// The mesh is being torn down.
    ShuttingDown,
}

/// A waiting restart request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its id.
    pub id: RolloutId,
    /// When it was asked.
    pub asked: Instant,
    /// Whether it was asked while a rollout was in progress (it may be satisfied by it).
    pub joined: bool,
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Its new pods are being created.
    Creating,
    /// Waiting for every new pod to become ready.
    WaitingReady,
    /// Endpoints switched at the instant given; the old pods are still running.
    Switched(Instant),
    /// The old pods are draining.
    Draining,
}

/// The rollout in progress for a Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// The request that started it (and is told its progress).
    pub id: RolloutId,
    /// The template hash it rolls to.
    pub hash: String,
    /// When it started.
    pub started: Instant,
    /// The pods it replaces.
    pub old: Vec<PodKey>,
    /// The pods it created.
    pub new: Vec<PodKey>,
    /// Why creating its pods failed, if it did.
    pub failed: Option<Failure>,
    /// New pods already reported ready.
    pub announced: BTreeSet<PodKey>,
    /// Its step.
    pub step: Step,
}

/// The rollout in progress and the requests waiting, for one Deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Queue {
    /// The rollout in progress.
    pub active: Option<Rollout>,
    /// Requests not yet started or answered, oldest first.
    pub waiting: Vec<Request>,
}

/// Every Deployment's rollouts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollouts {
    last: u64,
    /// By Deployment.
    pub queues: BTreeMap<WorkloadKey, Queue>,
}

impl Rollouts {
    /// Records a restart request for `workload`.
    pub fn ask(&mut self, workload: &WorkloadKey, now: Instant) -> (RolloutId, Asked) {
        self.last += 1;
        let id = RolloutId(self.last);
        let q = self.queues.entry(workload.clone()).or_default();
        let asked = if q.active.is_some() || !q.waiting.is_empty() { Asked::Joins } else { Asked::Starts };
        q.waiting.push(Request { id, asked: now, joined: asked == Asked::Joins });
        (id, asked)
    }

    /// True while a rollout of `workload` is in progress (its replicas are left alone).
    pub fn rolling(&self, workload: &WorkloadKey) -> bool {
        self.queues.get(workload).is_some_and(|q| q.active.is_some())
    }

    /// The rollout in progress for `workload`.
    pub fn active_mut(&mut self, workload: &WorkloadKey) -> Option<&mut Rollout> {
        self.queues.get_mut(workload).and_then(|q| q.active.as_mut())
    }

    /// Request `id` starts its rollout, replacing `old`.
    pub fn begin(&mut self, workload: &WorkloadKey, id: RolloutId, hash: String, old: Vec<PodKey>, now: Instant) {
        let q = self.queues.entry(workload.clone()).or_default();
        q.waiting.retain(|r| r.id != id);
        q.active = Some(Rollout {
            id,
            hash,
            started: now,
            old,
            new: Vec::new(),
            failed: None,
            announced: BTreeSet::new(),
            step: Step::Creating,
        });
    }

    /// Request `id` is answered: it leaves the queue (ending its rollout, if it ran one).
    pub fn finish(&mut self, id: RolloutId) {
        for q in self.queues.values_mut() {
            if q.active.as_ref().is_some_and(|a| a.id == id) {
                q.active = None;
            }
            q.waiting.retain(|r| r.id != id);
        }
        self.queues.retain(|_, q| q.active.is_some() || !q.waiting.is_empty());
    }

    /// Every request, running or waiting.
    pub fn ids(&self) -> Vec<RolloutId> {
        self.queues.values().flat_map(|q| q.active.iter().map(|a| a.id).chain(q.waiting.iter().map(|r| r.id))).collect()
    }
}

/// The rollout actions of this pass: for each Deployment with requests, the next step of
/// its rollout in progress, or the start of the next one, or the answers to requests that
/// are satisfied or gave up. `drain` is only for the progress lines.
pub fn plan(state: &State, world: &World, drain: Duration, now: Instant) -> Vec<Action> {
    let mut out = Vec::new();
    for (wk, q) in &world.rollouts.queues {
        let Some(dep) = state.deployments.get(wk.as_str()) else {
            // Deleted under the rollout: nothing left to roll to.
            if let Some(a) = &q.active {
                stop_existing(world, &a.new, &mut out);
            }
            for id in q.active.iter().map(|a| a.id).chain(q.waiting.iter().map(|r| r.id)) {
                out.push(Action::Finish { id, result: Err(Failure::NotFound) });
            }
            continue;
        };
        let Some(a) = &q.active else {
            start_next(wk, q, dep.template.hash(), dep.replicas, world, &mut out);
            continue;
        };
        for r in q.waiting.iter().filter(|r| now.duration_since(r.asked) > JOIN_WAIT) {
            let why = format!("the rollout of deployment {wk} in progress did not end");
            out.push(Action::Finish { id: r.id, result: Err(Failure::Timeout(why)) });
        }
        if let Some(failure) = &a.failed {
            stop_existing(world, &a.new, &mut out);
            out.push(Action::Finish { id: a.id, result: Err(failure.clone()) });
            continue;
        }
        match a.step {
            // The supervisor creates the new pods with the Begin; a pass never sees this step.
            Step::Creating => {}
            Step::WaitingReady => waiting_ready(wk, a, world, now, &mut out),
            Step::Switched(at) if now.duration_since(at) >= SWITCH_SETTLE => {
                let old: Vec<PodKey> = a.old.iter().filter(|k| world.pods.contains_key(*k)).cloned().collect();
                for k in &old {
                    out.push(Action::Say {
                        id: a.id,
                        line: format!("pod {k} terminating (SIGTERM, drain up to {drain:?})"),
                    });
                }
                out.push(Action::Drain { workload: wk.clone(), old });
            }
            Step::Switched(_) => {}
            Step::Draining if a.old.iter().all(|k| !world.pods.contains_key(k)) => {
                for k in &a.old {
                    out.push(Action::Say { id: a.id, line: format!("pod {k} terminated") });
                }
                out.push(Action::Say { id: a.id, line: format!("deployment {wk} successfully rolled out") });
                out.push(Action::Finish { id: a.id, result: Ok(()) });
            }
            Step::Draining => {}
        }
    }
    out
}

/// No rollout runs for `wk`: answer the joined requests that the last one satisfied, and
/// start the next one for the first request that remains.
fn start_next(wk: &WorkloadKey, q: &Queue, hash: String, replicas: u32, world: &World, out: &mut Vec<Action>) {
    let current: Vec<PodKey> = world.pods_of(wk, Phase::Running).map(|p| p.key.clone()).collect();
    let all_current = world.pods_of(wk, Phase::Running).all(|p| p.hash == hash);
    let mut rest = Vec::new();
    for r in &q.waiting {
        if r.joined && all_current {
            let line = format!(
                "deployment {wk} successfully rolled out (by the rollout that was in progress; its pods run the \
                 current template)"
            );
            out.push(Action::Say { id: r.id, line });
            out.push(Action::Finish { id: r.id, result: Ok(()) });
        } else {
            rest.push(r);
        }
    }
    if let Some(first) = rest.first() {
        out.push(Action::Begin { workload: wk.clone(), id: first.id, hash, old: current });
        out.push(Action::Create { workload: wk.clone(), count: replicas, rollout: Some(first.id) });
    }
}

fn waiting_ready(wk: &WorkloadKey, a: &Rollout, world: &World, now: Instant, out: &mut Vec<Action>) {
    let lost = a.new.iter().any(|k| world.pods.get(k).is_none_or(|p| p.phase != Phase::Running));
    if lost || now.duration_since(a.started) > READY_WAIT {
        stop_existing(world, &a.new, out);
        let why =
            format!("new pods of deployment {wk} did not become ready; the old pods keep serving (see meshpass logs)");
        out.push(Action::Finish { id: a.id, result: Err(Failure::Timeout(why)) });
        return;
    }
    let ready = |k: &PodKey| world.pods.get(k).is_some_and(|p| p.ready);
    for k in a.new.iter().filter(|k| ready(k) && !a.announced.contains(*k)) {
        out.push(Action::Say { id: a.id, line: format!("pod {k} ready") });
        out.push(Action::Announced { workload: wk.clone(), pod: k.clone() });
    }
    if a.new.iter().all(ready) {
        let old = a.old.iter().filter(|k| world.pods.get(*k).is_some_and(|p| p.phase == Phase::Running)).cloned();
        out.push(Action::Switch { workload: wk.clone(), id: a.id, old: old.collect() });
    }
}

/// Stops those of `pods` that still exist and are not stopping yet.
fn stop_existing(world: &World, pods: &[PodKey], out: &mut Vec<Action>) {
    for k in pods {
        if world.pods.get(k).is_some_and(|p| p.phase != Phase::Stopping) {
            out.push(Action::Stop { pod: k.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{deployment, meshed_state, pod};

    const DRAIN: Duration = Duration::from_secs(5);

    struct Fixture {
        state: State,
        world: World,
        wk: WorkloadKey,
        now: Instant,
    }

    /// `hello` with 2 replicas, both running the current template and ready.
    fn fixture() -> Fixture {
        let mut state = meshed_state();
        let dep = deployment("default", "hello", 2);
        let hash = dep.template.hash();
        state.put_deployment(dep);
        let mut world = World::default();
        pod(&mut world, "default", "hello", &hash, 2);
        pod(&mut world, "default", "hello", &hash, 3);
        Fixture { state, world, wk: WorkloadKey::new("default", "hello"), now: Instant::now() }
    }

    fn says(actions: &[Action], id: RolloutId) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Say { id: i, line } if *i == id => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    fn finished(actions: &[Action]) -> Vec<(RolloutId, Result<(), Failure>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Finish { id, result } => Some((*id, result.clone())),
                _ => None,
            })
            .collect()
    }

    /// Plays the supervisor's part for Begin/Create: records the rollout with `new` pods.
    fn begun(f: &mut Fixture, id: RolloutId, new_ready: bool) -> Vec<PodKey> {
        let hash = f.state.deployments[f.wk.as_str()].template.hash();
        let old: Vec<PodKey> = f.world.pods.keys().cloned().collect();
        f.world.rollouts.begin(&f.wk, id, hash.clone(), old, f.now);
        let new =
            vec![pod(&mut f.world, "default", "hello", &hash, 10), pod(&mut f.world, "default", "hello", &hash, 11)];
        for k in &new {
            f.world.pods.get_mut(k).expect("pod").ready = new_ready;
        }
        let a = f.world.rollouts.active_mut(&f.wk).expect("active");
        a.new = new.clone();
        a.step = Step::WaitingReady;
        new
    }

    #[test]
    fn a_request_with_nothing_in_progress_begins_a_rollout_of_every_replica() {
        let mut f = fixture();
        let (id, asked) = f.world.rollouts.ask(&f.wk, f.now);
        assert_eq!(asked, Asked::Starts);
        let actions = plan(&f.state, &f.world, DRAIN, f.now);
        let old: Vec<PodKey> = f.world.pods.keys().cloned().collect();
        let hash = f.state.deployments[f.wk.as_str()].template.hash();
        assert_eq!(
            actions,
            vec![
                Action::Begin { workload: f.wk.clone(), id, hash, old },
                Action::Create { workload: f.wk.clone(), count: 2, rollout: Some(id) },
            ]
        );
    }

    #[test]
    fn new_pods_are_announced_once_as_they_become_ready_and_the_switch_waits_for_all() {
        let mut f = fixture();
        let (id, _) = f.world.rollouts.ask(&f.wk, f.now);
        let new = begun(&mut f, id, false);
        assert!(plan(&f.state, &f.world, DRAIN, f.now).is_empty(), "nothing ready, nothing to do");
        f.world.pods.get_mut(&new[0]).expect("pod").ready = true;
        let actions = plan(&f.state, &f.world, DRAIN, f.now);
        assert_eq!(says(&actions, id), vec![format!("pod {} ready", new[0])]);
        assert!(!actions.iter().any(|a| matches!(a, Action::Switch { .. })), "one new pod is not ready yet");
        f.world.rollouts.active_mut(&f.wk).expect("active").announced.insert(new[0].clone());
        f.world.pods.get_mut(&new[1]).expect("pod").ready = true;
        let actions = plan(&f.state, &f.world, DRAIN, f.now);
        assert_eq!(says(&actions, id), vec![format!("pod {} ready", new[1])], "the first is not announced again");
        let old: Vec<PodKey> = f.world.pods.keys().filter(|k| !new.contains(k)).cloned().collect();
        assert_eq!(actions.last(), Some(&Action::Switch { workload: f.wk.clone(), id, old }));
    }

    #[test]
    fn the_old_pods_drain_a_moment_after_the_switch_and_the_rollout_ends_when_they_are_gone() {
        let mut f = fixture();
        let (id, _) = f.world.rollouts.ask(&f.wk, f.now);
        let new = begun(&mut f, id, true);
        let old: Vec<PodKey> = f.world.pods.keys().filter(|k| !new.contains(k)).cloned().collect();
        for k in &old {
            f.world.pods.get_mut(k).expect("pod").phase = Phase::Leaving;
        }
        f.world.rollouts.active_mut(&f.wk).expect("active").step = Step::Switched(f.now);
        assert!(plan(&f.state, &f.world, DRAIN, f.now).is_empty(), "connections DNATed before the switch arrive");
        let later = f.now + SWITCH_SETTLE;
        let actions = plan(&f.state, &f.world, DRAIN, later);
        assert_eq!(
            says(&actions, id),
            old.iter().map(|k| format!("pod {k} terminating (SIGTERM, drain up to 5s)")).collect::<Vec<_>>()
        );
        assert_eq!(actions.last(), Some(&Action::Drain { workload: f.wk.clone(), old: old.clone() }));
        f.world.rollouts.active_mut(&f.wk).expect("active").step = Step::Draining;
        f.world.pods.get_mut(&old[0]).expect("pod").phase = Phase::Stopping;
        assert!(plan(&f.state, &f.world, DRAIN, later).is_empty(), "old pods still draining");
        for k in &old {
            f.world.pods.remove(k);
        }
        let actions = plan(&f.state, &f.world, DRAIN, later);
        let lines = says(&actions, id);
        assert_eq!(lines.last().map(String::as_str), Some("deployment default/hello successfully rolled out"));
        assert_eq!(lines.iter().filter(|l| l.ends_with("terminated")).count(), 2);
        assert_eq!(finished(&actions), vec![(id, Ok(()))]);
    }

    #[test]
    fn new_pods_not_ready_in_time_abort_the_rollout_and_the_old_pods_keep_serving() {
        let mut f = fixture();
        let (id, _) = f.world.rollouts.ask(&f.wk, f.now);
        let new = begun(&mut f, id, false);
        assert!(plan(&f.state, &f.world, DRAIN, f.now + READY_WAIT).is_empty(), "not yet");
        let actions = plan(&f.state, &f.world, DRAIN, f.now + READY_WAIT + Duration::from_millis(1));
        let stopped: Vec<&PodKey> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop { pod } => Some(pod),
                _ => None,
            })
            .collect();
        assert_eq!(stopped, new.iter().collect::<Vec<_>>(), "only the new pods go");
        let done = finished(&actions);
        let [(fid, Err(Failure::Timeout(why)))] = done.as_slice() else { panic!("{actions:?}") };
        assert_eq!(*fid, id);
        assert!(why.contains("the old pods keep serving"), "{why}");
    }

    #[test]
    fn a_new_pod_lost_while_waiting_aborts_at_once() {
        let mut f = fixture();
        let (id, _) = f.world.rollouts.ask(&f.wk, f.now);
        let new = begun(&mut f, id, false);
        f.world.pods.remove(&new[1]);
        let actions = plan(&f.state, &f.world, DRAIN, f.now);
        assert_eq!(actions[0], Action::Stop { pod: new[0].clone() });
        assert!(matches!(finished(&actions).as_slice(), [(i, Err(Failure::Timeout(_)))] if *i == id));
    }

    #[test]
    fn a_failed_creation_stops_the_pods_made_so_far_and_fails_the_request_with_the_reason() {
        let mut f = fixture();
        let (id, _) = f.world.rollouts.ask(&f.wk, f.now);
        let new = begun(&mut f, id, false);
        f.world.rollouts.active_mut(&f.wk).expect("active").failed = Some(Failure::Invalid(vec!["bad".into()]));
        let actions = plan(&f.state, &f.world, DRAIN, f.now);
        assert_eq!(actions[..2], [Action::Stop { pod: new[0].clone() }, Action::Stop { pod: new[1].clone() }]);
        assert_eq!(finished(&actions), vec![(id, Err(Failure::Invalid(vec!["bad".into()])))]);
    }

    #[test]
    fn a_second_request_joins_and_is_answered_by_the_rollout_in_progress() {
        let mut f = fixture();
        let (first, _) = f.world.rollouts.ask(&f.wk, f.now);
        let new = begun(&mut f, first, false);
        let (second, asked) = f.world.rollouts.ask(&f.wk, f.now);
        assert_eq!(asked, Asked::Joins);
        assert!(f.world.rollouts.rolling(&f.wk));
        let actions = plan(&f.state, &f.world, DRAIN, f.now);
        assert!(finished(&actions).is_empty() && says(&actions, second).is_empty(), "it waits");
        // The first rollout completes: only the new pods remain.
        f.world.pods.retain(|k, _| new.contains(k));
        f.world.rollouts.finish(first);
        let actions = plan(&f.state, &f.world, DRAIN, f.now);
        assert!(says(&actions, second)[0].contains("by the rollout that was in progress"), "{actions:?}");
        assert_eq!(finished(&actions), vec![(second, Ok(()))]);
        assert!(!actions.iter().any(|a| matches!(a, Action::Begin { .. })), "no second rollout");
    }

    #[test]
    fn a_joined_request_rolls_again_when_the_template_changed_meanwhile() {
        let mut f = fixture();
        let (first, _) = f.world.rollouts.ask(&f.wk, f.now);
        begun(&mut f, first, false);
        let (second, _) = f.world.rollouts.ask(&f.wk, f.now);
        f.world.rollouts.finish(first);
        let mut dep = f.state.deployments[f.wk.as_str()].clone();
        dep.template.annotations.insert("traffic.sidecar.istio.io/excludeInboundPorts".into(), "5000".into());
        f.state.put_deployment(dep);
        let actions = plan(&f.state, &f.world, DRAIN, f.now);
        assert!(matches!(actions.first(), Some(Action::Begin { id, .. }) if *id == second), "{actions:?}");
    }

    #[test]
    fn a_joined_request_gives_up_after_the_join_wait() {
        let mut f = fixture();
        let (first, _) = f.world.rollouts.ask(&f.wk, f.now);
        begun(&mut f, first, false);
        let (second, _) = f.world.rollouts.ask(&f.wk, f.now);
        // The rollout in progress is itself within its ready wait when the joiner gives up.
        f.world.rollouts.active_mut(&f.wk).expect("active").started = f.now + JOIN_WAIT;
        let actions = plan(&f.state, &f.world, DRAIN, f.now + JOIN_WAIT + Duration::from_secs(1));
        let done = finished(&actions);
        let [(id, Err(Failure::Timeout(why)))] = done.as_slice() else { panic!("{actions:?}") };
        assert_eq!(*id, second);
        assert!(why.contains("in progress did not end"), "{why}");
    }

    #[test]
    fn deleting_the_deployment_fails_every_request_and_stops_the_new_pods() {
        let mut f = fixture();
        let (first, _) = f.world.rollouts.ask(&f.wk, f.now);
        let new = begun(&mut f, first, false);
        let (second, _) = f.world.rollouts.ask(&f.wk, f.now);
        f.state.deployments.clear();
        let actions = plan(&f.state, &f.world, DRAIN, f.now);
        assert_eq!(actions[..2], [Action::Stop { pod: new[0].clone() }, Action::Stop { pod: new[1].clone() }]);
        assert_eq!(finished(&actions), vec![(first, Err(Failure::NotFound)), (second, Err(Failure::NotFound))]);
    }

    #[test]
    fn finishing_a_request_ends_its_rollout_and_forgets_empty_queues() {
        let mut r = Rollouts::default();
        let wk = WorkloadKey::new("default", "hello");
        let now = Instant::now();
        let (a, _) = r.ask(&wk, now);
        let (b, _) = r.ask(&wk, now);
        assert_ne!(a, b);
        r.begin(&wk, a, "h".into(), vec![], now);
        assert_eq!(r.ids(), vec![a, b]);
        r.finish(a);
        assert!(!r.rolling(&wk));
        assert_eq!(r.ids(), vec![b]);
        r.finish(b);
        assert!(r.queues.is_empty());
    }
}
