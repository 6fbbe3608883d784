//! The observed state: what the supervisor knows of its pods, their containers, the services
//! table it last wrote and the rollouts in progress. Plain data; the supervisor changes it
//! only to record what an action did (a pod created, a container started or exited, a table
//! written), so the planner can be handed any state a test can build.

use super::pod::ContainerRun;
use super::rollout::Rollouts;
use super::services::ServiceNat;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// `namespace/name` of a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey(String);

/// `namespace/name` of a workload (Deployment).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey(String);

macro_rules! key {
    ($t:ident) => {
        impl $t {
            /// The key of `name` in `namespace`.
            pub fn new(namespace: &str, name: &str) -> Self {
                $t(crate::state::key(namespace, name))
            }

            /// The namespace.
            pub fn namespace(&self) -> &str {
                self.0.split_once('/').map_or("", |(ns, _)| ns)
            }

            /// The name.
            pub fn name(&self) -> &str {
                self.0.split_once('/').map_or(self.0.as_str(), |(_, n)| n)
            }

            /// `namespace/name`, as the state file keys objects.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
key!(PodKey);
key!(WorkloadKey);

/// Where a pod is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Counted in its Deployment's replicas; an endpoint of its Services while ready.
    Running,
    /// Out of the endpoints, processes still running: a rollout's old pods, between the
    /// switch of the endpoints and their drain.
    Leaving,
    /// Being torn down in the background (drain, SIGKILL, namespace removed).
    Stopping,
}

/// What a container is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Not running; may be started at the instant given (its back-off).
    Waiting(Instant),
    /// Running since the instant given.
    Running(Instant),
    /// Exited (or could not be started) after running for the time given; restarts after a
    /// back-off.
    Exited {
        /// The exit status or start error, for the log.
        status: String,
        /// How long it ran.
        ran: Duration,
    },
}

/// One container of a pod, with its restart bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// How it is run.
    pub run: ContainerRun,
    /// What it does now.
    pub state: ContainerState,
    /// Restarts so far.
    pub restarts: u32,
    /// The back-off before its next restart.
    pub backoff: Duration,
}

/// A pod the supervisor created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// `namespace/name`.
    pub key: PodKey,
    /// Its Deployment.
    pub workload: WorkloadKey,
    /// The hash of the template it was made from (or re-applied live to).
    pub hash: String,
    /// The stamp of the capture it runs with ([`super::capture::stamp`]): its template's
    /// annotations under the mesh-wide defaults of when it was made (or re-applied live).
    pub stamp: String,
    /// Its labels (Services select on them).
    pub labels: BTreeMap<String, String>,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its network namespace.
    pub netns: String,
    /// Whether it has a sidecar.
    pub meshed: bool,
    /// Whether its last readiness probe passed.
    pub ready: bool,
    /// Where it is in its life.
    pub phase: Phase,
    /// Its containers, the sidecar last.
    pub containers: Vec<Container>,
}

impl Pod {
    /// True when every container runs and has run for at least `settle` (a process that
    /// just started may still die of a bad flag).
    pub fn settled(&self, now: Instant, settle: Duration) -> bool {
        self.containers
            .iter()
            .all(|c| matches!(c.state, ContainerState::Running(since) if now.duration_since(since) > settle))
    }
}

/// Everything the supervisor observed and recorded.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// Pods by key.
    pub pods: BTreeMap<PodKey, Pod>,
    /// The services table as last written (`None`: not yet).
    pub services: Option<Vec<ServiceNat>>,
    /// When creating a pod of a Deployment last failed (creation pauses for a while).
    pub failing: BTreeMap<WorkloadKey, Instant>,
    /// Rollouts in progress and asked for.
    pub rollouts: Rollouts,
    /// When each meshed pod's workload certificate is to be renewed.
    pub certs: BTreeMap<PodKey, Instant>,
    /// Each sidecar's mesh config as last written.
    pub sidecar_configs: BTreeMap<PodKey, meshpass_proxy::mesh_config::MeshConfigFile>,
}

impl World {
    /// The pods of `workload` in `phase`.
    pub fn pods_of<'a>(&'a self, workload: &'a WorkloadKey, phase: Phase) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.values().filter(move |p| &p.workload == workload && p.phase == phase)
    }

    /// Records that a container exited with `status` at `now`.
    pub fn exited(&mut self, pod: &PodKey, container: usize, status: String, now: Instant) {
        if let Some(c) = self.pods.get_mut(pod).and_then(|p| p.containers.get_mut(container)) {
            let ran = match c.state {
                ContainerState::Running(since) => now.duration_since(since),
                _ => Duration::ZERO,
            };
            c.state = ContainerState::Exited { status, ran };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_namespace_and_name() {
        let k = PodKey::new("default", "hello-abc");
        assert_eq!((k.namespace(), k.name(), k.as_str()), ("default", "hello-abc", "default/hello-abc"));
        assert_eq!(WorkloadKey::new("a", "b").to_string(), "a/b");
    }
}
