//! The services table: every Service's ClusterIP and ports with its ready endpoints. Pure:
//! [`crate::effect::net::apply_services`] writes it in one nftables transaction, so switching
//! endpoints (a pod becoming ready, a rollout's switch) is atomic.

use super::world::{Phase, PodKey, World};
use crate::state::State;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// One service as the DNAT table sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNat {
    /// ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// `(port, target_port)` pairs.
    pub ports: Vec<(u16, u16)>,
    /// Ready endpoints.
    pub endpoints: Vec<Ipv4Addr>,
}

/// The table the Services of `state` need, given the pods of `world`: a pod is an endpoint
/// while it is running, ready, in the Service's namespace and selected by it, and not in
/// `leaving` (pods this pass takes out).
pub fn table(state: &State, world: &World, leaving: &BTreeSet<PodKey>) -> Vec<ServiceNat> {
    state
        .services
        .values()
        .map(|s| {
            let mut endpoints: Vec<Ipv4Addr> = world
                .pods
                .values()
                .filter(|p| {
                    p.phase == Phase::Running
                        && p.ready
                        && !leaving.contains(&p.key)
                        && p.key.namespace() == s.spec.namespace
                        && s.spec.selects(&p.labels)
                })
                .map(|p| p.ip)
                .collect();
            endpoints.sort();
            ServiceNat {
                cluster_ip: s.cluster_ip,
                ports: s.spec.ports.iter().map(|p| (p.port, p.target_port)).collect(),
                endpoints,
            }
        })
        .collect()
}

/// The table to write, if it differs from the one written last.
pub fn changed(state: &State, world: &World, leaving: &BTreeSet<PodKey>) -> Option<Vec<ServiceNat>> {
    let want = table(state, world, leaving);
    (world.services.as_ref() != Some(&want)).then_some(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{meshed_state, pod, service};

    #[test]
    fn endpoints_are_the_ready_running_selected_pods_of_the_namespace() {
        let mut state = meshed_state();
        service(&mut state, "default", "hello", &[(80, 5000)]);
        let mut world = World::default();
        let a = pod(&mut world, "default", "hello", "h1", 2);
        let b = pod(&mut world, "default", "hello", "h1", 3);
        pod(&mut world, "other", "hello", "h1", 4); // another namespace
        let unready = pod(&mut world, "default", "hello", "h1", 5);
        world.pods.get_mut(&unready).expect("pod").ready = false;
        let leaving = pod(&mut world, "default", "hello", "h1", 6);
        world.pods.get_mut(&leaving).expect("pod").phase = Phase::Leaving;
        let t = table(&state, &world, &BTreeSet::new());
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].ports, vec![(80, 5000)]);
        assert_eq!(t[0].endpoints, vec![world.pods[&a].ip, world.pods[&b].ip]);
        let t = table(&state, &world, &BTreeSet::from([a]));
        assert_eq!(t[0].endpoints, vec![world.pods[&b].ip], "a pod leaving in this pass is no endpoint");
    }

    #[test]
    fn a_service_without_ready_pods_has_no_endpoints_and_the_table_is_written_once() {
        let mut state = meshed_state();
        service(&mut state, "default", "hello", &[(80, 5000)]);
        let mut world = World::default();
        let t = changed(&state, &world, &BTreeSet::new()).expect("never written");
        assert!(t[0].endpoints.is_empty());
        world.services = Some(t);
        assert_eq!(changed(&state, &world, &BTreeSet::new()), None, "unchanged: not rewritten");
    }
}
