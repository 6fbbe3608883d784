//! What `meshpass get` and the management plane see: workloads, pods and services, read off
//! the desired and observed state. Pure.

use super::capture;
use super::pod::{meshed, services_of};
use super::world::{Phase, WorkloadKey, World};
use crate::config::MeshConfig;
use crate::control::{PodStatus, ServiceStatus, WorkloadStatus};
use crate::state::State;

/// The Deployments (of namespace `ns`, or all) and how far their pods are. A pod is behind
/// (pending restart) when it was made from an older template, or when its capture is not
/// the one its template now gets under the mesh-wide defaults (they changed since).
pub fn workloads(state: &State, world: &World, ns: Option<&str>, cfg: &MeshConfig) -> Vec<WorkloadStatus> {
    state
        .deployments
        .values()
        .filter(|d| ns.is_none_or(|n| n == d.namespace))
        .map(|d| {
            let meshed = meshed(&state.namespaces, d);
            let hash = d.template.hash();
            let stamp = capture::stamp(meshed, &d.template.annotations, cfg, &state.mesh_defaults);
            let wk = WorkloadKey::new(&d.namespace, &d.name);
            let pods: Vec<_> = world.pods_of(&wk, Phase::Running).collect();
            WorkloadStatus {
                namespace: d.namespace.clone(),
                name: d.name.clone(),
                kind: "Deployment".to_string(),
                meshed,
                ready: pods.iter().filter(|p| p.ready).count() as u32,
                total: d.replicas,
                pending_restart: pods.iter().any(|p| p.hash != hash || p.meshed != meshed || p.stamp != stamp),
                annotations: d.template.annotations.clone(),
                labels: d.template.labels.clone(),
                injected: pods.iter().filter(|p| p.meshed).count() as u32,
                services: services_of(state, d).map(|s| s.name.clone()).collect(),
                resource_version: state.version(&d.namespace, &d.name),
            }
        })
        .collect()
}

/// The running pods (of namespace `ns`, or all); pods on their way out are not listed.
pub fn pods(world: &World, ns: Option<&str>) -> Vec<PodStatus> {
    world
        .pods
        .values()
        .filter(|p| p.phase == Phase::Running && ns.is_none_or(|n| n == p.key.namespace()))
        .map(|p| PodStatus {
            namespace: p.key.namespace().to_string(),
            name: p.key.name().to_string(),
            workload: p.workload.name().to_string(),
            ip: p.ip.to_string(),
            netns: p.netns.clone(),
            ready: p.ready,
            meshed: p.meshed,
            restarts: p.containers.iter().map(|c| c.restarts).sum(),
        })
        .collect()
}

/// The Services (of namespace `ns`, or all) with the endpoints the table in force gives them.
pub fn services(state: &State, world: &World, ns: Option<&str>) -> Vec<ServiceStatus> {
    let applied = world.services.as_deref().unwrap_or_default();
    state
        .services
        .values()
        .filter(|s| ns.is_none_or(|n| n == s.spec.namespace))
        .map(|s| {
            let eps = applied
                .iter()
                .find(|a| a.cluster_ip == s.cluster_ip)
                .map(|a| a.endpoints.as_slice())
                .unwrap_or_default();
            let target = s.spec.ports.first().map(|p| p.target_port).unwrap_or(0);
            ServiceStatus {
                namespace: s.spec.namespace.clone(),
                name: s.spec.name.clone(),
                cluster_ip: s.cluster_ip.to_string(),
                ports: s.spec.ports.iter().map(|p| (p.port, p.target_port)).collect(),
                endpoints: eps.iter().map(|ip| format!("{ip}:{target}")).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::services::table;
    use crate::plan::testing::{cfg, deployment, meshed_state, pod, service};
    use std::collections::BTreeSet;

    #[test]
    fn a_workload_counts_its_running_pods_and_shows_a_pending_restart() {
        let mut state = meshed_state();
        let dep = deployment("default", "hello", 2);
        let hash = dep.template.hash();
        state.put_deployment(dep);
        service(&mut state, "default", "hello", &[(80, 5000)]);
        let mut world = World::default();
        pod(&mut world, "default", "hello", &hash, 2);
        let old = pod(&mut world, "default", "hello", "oldhash", 3);
        let gone = pod(&mut world, "default", "hello", &hash, 4);
        world.pods.get_mut(&gone).expect("pod").phase = Phase::Stopping;
        let [w] = workloads(&state, &world, None, &cfg()).try_into().expect("one workload");
        assert_eq!((w.ready, w.total, w.injected, w.meshed), (2, 2, 2, true));
        assert!(w.pending_restart, "a pod runs an older template");
        assert_eq!(w.services, vec!["hello"]);
        assert_eq!(w.resource_version, "1");
        world.pods.remove(&old);
        assert!(!workloads(&state, &world, Some("default"), &cfg())[0].pending_restart);
        assert!(workloads(&state, &world, Some("other"), &cfg()).is_empty());
        // A mesh-wide default its template does not override changes its capture: behind.
        let mut d = state.mesh_defaults.clone();
        d.set_value(meshpass_settings::mesh::values::EXCLUDE_IP_RANGES, "198.19.0.2/32").expect("valid");
        state.put_mesh_defaults(d);
        assert!(workloads(&state, &world, None, &cfg())[0].pending_restart, "behind the mesh-wide defaults");
        let mut own = state.deployments["default/hello"].clone();
        own.template.annotations.insert("traffic.sidecar.istio.io/excludeOutboundIPRanges".into(), "10.0.0.0/8".into());
        let mut s2 = state.clone();
        s2.put_deployment(own.clone());
        let mut w2 = World::default();
        let p = pod(&mut w2, "default", "hello", &own.template.hash(), 2);
        w2.pods.get_mut(&p).expect("pod").stamp =
            capture::stamp(true, &own.template.annotations, &cfg(), &meshpass_settings::MeshDefaults::default());
        assert!(!workloads(&s2, &w2, None, &cfg())[0].pending_restart, "its own value shields it from the change");
    }

    #[test]
    fn pods_on_their_way_out_are_not_listed() {
        let mut world = World::default();
        let a = pod(&mut world, "default", "hello", "h", 2);
        let b = pod(&mut world, "default", "hello", "h", 3);
        world.pods.get_mut(&b).expect("pod").phase = Phase::Leaving;
        world.pods.get_mut(&a).expect("pod").containers[0].restarts = 3;
        let listed = pods(&world, None);
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].name.as_str(), listed[0].restarts, listed[0].workload.as_str()), (a.name(), 3, "hello"));
    }

    #[test]
    fn services_show_the_endpoints_of_the_table_in_force() {
        let mut state = meshed_state();
        service(&mut state, "default", "hello", &[(80, 5000)]);
        let mut world = World::default();
        let a = pod(&mut world, "default", "hello", "h", 2);
        assert!(services(&state, &world, None)[0].endpoints.is_empty(), "no table written yet");
        world.services = Some(table(&state, &world, &BTreeSet::new()));
        let s = &services(&state, &world, None)[0];
        assert_eq!(s.endpoints, vec![format!("{}:5000", world.pods[&a].ip)]);
        assert_eq!(s.ports, vec![(80, 5000)]);
    }
}
