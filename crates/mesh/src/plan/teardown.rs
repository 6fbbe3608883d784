//! Teardown order, for one pod and for the whole mesh. Pure: [`crate::effect::pod::teardown`]
//! and the supervisor's shutdown carry the steps out in the order given here.
//!
//! A pod is already out of the endpoints when its teardown starts. Its containers get
//! SIGTERM together and drain (up to the drain period, less once a second signal hurries the
//! mesh), then SIGKILL; anything else still in its namespace is killed; its eBPF pins go
//! (they would outlive the namespace); the namespace goes (its veth with it); then its
//! pidfiles, and last its address, so that no new pod gets the address while the old one
//! may still answer on it.
//!
//! The mesh stops taking requests and answers the rollouts waiting; every pod is torn down at
//! once; the supervisor waits for the teardowns already under way; then a sweep removes
//! whatever has the mesh's prefix (the node namespace, anything a crash mid-creation left),
//! and last the control socket and pidfile, so `meshpass down` can tell a finished teardown.

use super::rollout::{Failure, RolloutId};
use super::world::{Phase, PodKey, World};
use super::Action;
use crate::config::MeshConfig;
use std::time::Duration;

/// How long processes that are not containers (found in the namespace) get after SIGTERM.
pub const STRAGGLER_GRACE: Duration = Duration::from_millis(500);

/// One step of a pod's teardown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodStep {
    /// SIGTERM to every container's process group, SIGKILL after `grace`.
    Terminate {
        /// The drain period.
        grace: Duration,
    },
    /// Kill whatever else lives in the namespace.
    KillStragglers {
        /// Between SIGTERM and SIGKILL.
        grace: Duration,
    },
    /// Unpin the pod's eBPF capture.
    RemoveEbpf,
    /// Delete the network namespace (and with it the pod's veth).
    DeleteNetns,
    /// Remove the containers' pidfiles.
    RemovePidfiles,
    /// Return the pod's address to the pool.
    ReleaseAddress,
}

/// The teardown of `pod`, in order.
pub fn pod(meshed: bool, cfg: &MeshConfig) -> Vec<PodStep> {
    let mut steps = vec![PodStep::Terminate { grace: cfg.drain }, PodStep::KillStragglers { grace: STRAGGLER_GRACE }];
    if meshed && cfg.ebpf_capture {
        steps.push(PodStep::RemoveEbpf);
    }
    steps.extend([PodStep::DeleteNetns, PodStep::RemovePidfiles, PodStep::ReleaseAddress]);
    steps
}

/// One step of the mesh's teardown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshStep {
    /// Answer new control requests with "shutting down" (and the rollouts below).
    RefuseRequests,
    /// Carry out these actions: every waiting rollout answered, every pod stopped at once.
    Act(Vec<Action>),
    /// Wait until every pod's teardown has finished (the drain bounds it).
    AwaitPods,
    /// Remove whatever else has the mesh's prefix: processes, namespaces, eBPF pins.
    Sweep,
    /// Remove the control socket and the supervisor's pidfile.
    RemoveControlFiles,
}

/// The mesh's teardown, in order, for the pods and rollouts of `world`.
pub fn mesh(world: &World) -> Vec<MeshStep> {
    let mut act: Vec<Action> = world
        .rollouts
        .ids()
        .into_iter()
        .map(|id: RolloutId| Action::Finish { id, result: Err(Failure::ShuttingDown) })
        .collect();
    act.extend(
        world.pods.values().filter(|p| p.phase != Phase::Stopping).map(|p| Action::Stop { pod: PodKey::clone(&p.key) }),
    );
    vec![
        MeshStep::RefuseRequests,
        MeshStep::Act(act),
        MeshStep::AwaitPods,
        MeshStep::Sweep,
        MeshStep::RemoveControlFiles,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{cfg, pod as add_pod};
    use crate::plan::world::WorkloadKey;
    use std::time::Instant;

    #[test]
    fn a_pod_drains_then_its_namespace_goes_and_its_address_is_returned_last() {
        let c = cfg();
        assert_eq!(
            pod(true, &c),
            vec![
                PodStep::Terminate { grace: c.drain },
                PodStep::KillStragglers { grace: STRAGGLER_GRACE },
                PodStep::DeleteNetns,
                PodStep::RemovePidfiles,
                PodStep::ReleaseAddress,
            ]
        );
    }

    #[test]
    fn ebpf_pins_of_meshed_pods_go_before_their_namespace() {
        let mut c = cfg();
        c.ebpf_capture = true;
        let steps = pod(true, &c);
        let at = |s: &PodStep| steps.iter().position(|x| x == s).expect("step");
        assert!(at(&PodStep::RemoveEbpf) < at(&PodStep::DeleteNetns));
        assert!(!pod(false, &c).contains(&PodStep::RemoveEbpf), "an unmeshed pod has no capture");
    }

    #[test]
    fn the_mesh_answers_rollouts_stops_every_pod_once_then_sweeps_and_removes_its_socket_last() {
        let mut world = World::default();
        let a = add_pod(&mut world, "default", "hello", "h", 2);
        let b = add_pod(&mut world, "default", "hello", "h", 3);
        let leaving = add_pod(&mut world, "default", "hello", "h", 4);
        world.pods.get_mut(&leaving).expect("pod").phase = Phase::Leaving;
        let stopping = add_pod(&mut world, "default", "hello", "h", 5);
        world.pods.get_mut(&stopping).expect("pod").phase = Phase::Stopping;
        let (id, _) = world.rollouts.ask(&WorkloadKey::new("default", "hello"), Instant::now());
        let steps = mesh(&world);
        let [MeshStep::RefuseRequests, MeshStep::Act(act), MeshStep::AwaitPods, MeshStep::Sweep, MeshStep::RemoveControlFiles] =
            steps.as_slice()
        else {
            panic!("{steps:?}")
        };
        assert_eq!(
            act,
            &vec![
                Action::Finish { id, result: Err(Failure::ShuttingDown) },
                Action::Stop { pod: a },
                Action::Stop { pod: b },
                Action::Stop { pod: leaving },
            ],
            "a pod already stopping is not stopped twice"
        );
    }
}
