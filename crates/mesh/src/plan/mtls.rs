//! Mutual TLS in the local mesh, decided: what each sidecar is told (its mesh config: the
//! inbound mode of its ports, the Services it may call with their endpoints and the TLS each
//! endpoint gets) and when each pod's workload certificate is renewed. Pure: the policies
//! (`PeerAuthentication`, `DestinationRule`) are resolved by `meshpass-policy` exactly as
//! Istio resolves them — auto mTLS to endpoints with a sidecar, plaintext to the others, a
//! destination rule's mode where one applies — and [`crate::effect::identity`] writes the
//! files the sidecars reload.
//!
//! A Service port whose ready endpoints all get the same TLS is routed through its ClusterIP
//! (the node's DNAT picks the endpoint, so a rollout's endpoint switch stays one atomic table
//! write); only when endpoints differ — some with a sidecar, some without — does the sidecar
//! connect to each endpoint itself, as Envoy does with its endpoint list.

use super::services::ServiceNat;
use super::world::{Phase, Pod, PodKey, World};
use super::Action;
use crate::config::MeshConfig;
use crate::manifest::DeploymentSpec;
use crate::plan::pod::meshed;
use crate::state::State;
use meshpass_policy::{MeshView, MtlsMode, Origination, Resolver, Service, ServicePort, Workload, WorkloadId};
use meshpass_proxy::mesh_config::{EndpointSpec, Inbound, MeshConfigFile, OutboundSpec, PeerMode, TlsSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Instant;

/// The directory of a pod's sidecar files: `<state>/pods/<netns>/` with `mesh.json` and
/// `certs/` (`cert-chain.pem`, `key.pem`, `root-cert.pem`).
pub fn pod_dir(cfg: &MeshConfig, netns: &str) -> PathBuf {
    cfg.state_dir.join("pods").join(netns)
}

/// The sidecar's environment that points it at its files.
pub fn sidecar_env(cfg: &MeshConfig, netns: &str) -> Vec<(String, String)> {
    let dir = pod_dir(cfg, netns);
    vec![
        (meshpass_proxy::mesh::ENV_MESH_CONFIG.to_string(), dir.join("mesh.json").display().to_string()),
        (meshpass_proxy::mesh::ENV_CERT_DIR.to_string(), dir.join("certs").display().to_string()),
        // The mesh rewrites these files when endpoints, policies or certificates change;
        // a short interval keeps a sidecar's view close to the services table.
        (meshpass_proxy::mesh::ENV_RELOAD_INTERVAL.to_string(), "200ms".to_string()),
    ]
}

/// A workload's SPIFFE identity: `spiffe://cluster.local/ns/NS/sa/SA`.
pub fn identity(dep: &DeploymentSpec) -> String {
    format!(
        "spiffe://{}/ns/{}/sa/{}",
        meshpass_policy::mesh::CLUSTER_DOMAIN,
        dep.namespace,
        dep.template.service_account()
    )
}

/// The mesh as policy resolution sees it: every Deployment (labels, service account, sidecar
/// or not) and every Service.
pub fn mesh_view(state: &State) -> MeshView {
    let workloads = state
        .deployments
        .values()
        .map(|d| Workload {
            id: WorkloadId::new(&d.namespace, &d.name),
            labels: d.template.labels.clone(),
            service_account: d.template.service_account().to_string(),
            sidecar: meshed(&state.namespaces, d),
        })
        .collect();
    let services = state
        .services
        .values()
        .map(|s| Service {
            namespace: s.spec.namespace.clone(),
            name: s.spec.name.clone(),
            cluster_ip: Some(IpAddr::V4(s.cluster_ip)),
            selector: s.spec.selector.clone(),
            ports: s
                .spec
                .ports
                .iter()
                .map(|p| ServicePort { name: None, port: p.port, target_port: p.target_port })
                .collect(),
        })
        .collect();
    MeshView { workloads, services }
}

fn peer_mode(m: MtlsMode) -> PeerMode {
    match m {
        MtlsMode::Strict => PeerMode::Strict,
        MtlsMode::Disable => PeerMode::Disable,
        MtlsMode::Permissive | MtlsMode::Unset => PeerMode::Permissive,
    }
}

fn tls_spec(o: &Origination) -> TlsSpec {
    match o {
        Origination::IstioMutual { sni, identities, .. } => {
            TlsSpec::IstioMutual { sni: Some(sni.clone()), identities: identities.clone() }
        }
        Origination::Plaintext => TlsSpec::Disable,
        // MUTUAL with certificates of one's own is refused when applied (see manifest).
        Origination::UserTls { sni, ca_certificates, .. } => {
            TlsSpec::Simple { sni: sni.clone(), ca_certificates: ca_certificates.clone() }
        }
    }
}

/// The mesh config of meshed pod `pod`, given the services `table` (ready endpoints).
pub fn sidecar_config(state: &State, world: &World, table: &[ServiceNat], pod: &Pod) -> MeshConfigFile {
    let policies = &state.policies.0;
    let view = mesh_view(state);
    let resolver = Resolver::new(policies, &view);
    let ns = pod.key.namespace();
    // Inbound: the workload's mode, and each port whose mode differs (portLevelMtls).
    let default_mode = peer_mode(meshpass_policy::server_mode(policies, ns, &pod.labels, 0).mode);
    let mut ports: BTreeSet<u16> =
        pod.containers.iter().filter(|c| !c.run.sidecar).flat_map(|c| c.run.ports.iter().copied()).collect();
    for s in state.services.values().filter(|s| s.spec.namespace == ns && s.spec.selects(&pod.labels)) {
        ports.extend(s.spec.ports.iter().map(|p| p.target_port));
    }
    let port_modes: BTreeMap<u16, PeerMode> = ports
        .into_iter()
        .map(|p| (p, peer_mode(meshpass_policy::server_mode(policies, ns, &pod.labels, p).mode)))
        .filter(|(_, m)| *m != default_mode)
        .collect();
    let inbound = Inbound { mode: default_mode, ports: port_modes };

    // Outbound: every Service port, its ready endpoints and the TLS each gets.
    let client = view.workload(&WorkloadId::new(ns, pod.workload.name()));
    let by_ip: BTreeMap<_, &Pod> =
        world.pods.values().filter(|p| p.phase == Phase::Running).map(|p| (p.ip, p)).collect();
    let mut outbound = Vec::new();
    for svc in &view.services {
        let Some(IpAddr::V4(cluster_ip)) = svc.cluster_ip else { continue };
        let Some(nat) = table.iter().find(|t| t.cluster_ip == cluster_ip) else { continue };
        for sp in &svc.ports {
            let mut endpoints: Vec<(SocketAddr, String, TlsSpec)> = Vec::new();
            for ip in &nat.endpoints {
                let Some(ep) = by_ip.get(ip) else { continue };
                let Some(server) = view.workload(&WorkloadId::new(ep.key.namespace(), ep.workload.name())) else {
                    continue;
                };
                let tls = match client {
                    Some(c) => tls_spec(&resolver.client(c, svc, sp, server).origination),
                    None => TlsSpec::Disable,
                };
                endpoints.push((SocketAddr::new(IpAddr::V4(*ip), sp.target_port), server.id.to_string(), tls));
            }
            let same = endpoints.windows(2).all(|w| w[0].2 == w[1].2);
            let endpoints = match endpoints.first() {
                Some((_, _, tls)) if same => vec![EndpointSpec {
                    address: SocketAddr::new(IpAddr::V4(cluster_ip), sp.port),
                    workload: None,
                    tls: tls.clone(),
                }],
                _ => endpoints
                    .into_iter()
                    .map(|(address, workload, tls)| EndpointSpec { address, workload: Some(workload), tls })
                    .collect(),
            };
            outbound.push(OutboundSpec {
                service: svc.key(),
                host: svc.hostname(),
                address: IpAddr::V4(cluster_ip),
                port: sp.port,
                endpoints,
            });
        }
    }
    let mut file = MeshConfigFile { version: String::new(), inbound, outbound };
    file.version = version(&file);
    file
}

/// A short hash of the content, which the sidecar logs when it reloads.
fn version(file: &MeshConfigFile) -> String {
    let json = serde_json::to_string(file).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", h & 0xffff_ffff)
}

/// Whether `pod` runs a sidecar that reads mesh files (running or draining).
fn has_sidecar(pod: &Pod) -> bool {
    pod.meshed && matches!(pod.phase, Phase::Running | Phase::Leaving)
}

/// The mutual-TLS actions of a pass: certificates due for renewal, then every sidecar's mesh
/// config that differs from the one written last.
pub fn actions(state: &State, world: &World, table: &[ServiceNat], now: Instant) -> Vec<Action> {
    let mut out = Vec::new();
    for p in world.pods.values().filter(|p| has_sidecar(p)) {
        if world.certs.get(&p.key).is_none_or(|renew| now >= *renew) {
            out.push(Action::IssueCert { pod: p.key.clone() });
        }
    }
    for p in world.pods.values().filter(|p| has_sidecar(p)) {
        let config = sidecar_config(state, world, table, p);
        if world.sidecar_configs.get(&p.key) != Some(&config) {
            out.push(Action::WriteSidecarConfig { pod: p.key.clone(), config: Box::new(config) });
        }
    }
    out
}

/// The pods whose files are gone with them (their entries leave the world too).
pub fn forget(world: &mut World, pod: &PodKey) {
    world.certs.remove(pod);
    world.sidecar_configs.remove(pod);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;
    use crate::plan::services::table;
    use crate::plan::testing::{deployment, meshed_state, pod, service};
    use crate::state::Policies;
    use meshpass_policy::parse_documents;

    /// `hello` (meshed) serving Service `hello` 80→5000, `sleep` (meshed) and `plain/ext`
    /// (no sidecar) serving Service `plain/ext` 8080→8080.
    fn mesh() -> (State, World, PodKey, PodKey, PodKey) {
        let mut state = meshed_state();
        state.put_deployment(deployment("default", "hello", 1));
        let mut sleep = deployment("default", "sleep", 1);
        sleep.template.service_account = Some("sleeper".into());
        state.put_deployment(sleep);
        state.put_deployment(deployment("plain", "ext", 1));
        service(&mut state, "default", "hello", &[(80, 5000)]);
        service(&mut state, "plain", "ext", &[(8080, 8080)]);
        let mut world = World::default();
        let hello = pod(&mut world, "default", "hello", "h", 2);
        let sleep = pod(&mut world, "default", "sleep", "h", 3);
        let ext = pod(&mut world, "plain", "ext", "h", 4);
        world.pods.get_mut(&ext).expect("pod").meshed = false;
        (state, world, hello, sleep, ext)
    }

    fn config(state: &State, world: &World, p: &PodKey) -> MeshConfigFile {
        let t = table(state, world, &BTreeSet::new());
        sidecar_config(state, world, &t, &world.pods[p])
    }

    fn outbound<'a>(c: &'a MeshConfigFile, service: &str) -> &'a OutboundSpec {
        c.outbound.iter().find(|o| o.service == service).expect("service in the config")
    }

    #[test]
    fn auto_mtls_to_sidecars_plaintext_to_the_rest_through_the_cluster_ip() {
        let (state, world, _, sleep, _) = mesh();
        let c = config(&state, &world, &sleep);
        assert_eq!(c.inbound, Inbound::default(), "PERMISSIVE without policies");
        let hello = outbound(&c, "default/hello");
        assert_eq!((hello.address, hello.port), ("198.19.0.1".parse().expect("ip"), 80));
        assert_eq!(hello.endpoints.len(), 1, "one origination: routed through the ClusterIP");
        assert_eq!(hello.endpoints[0].address, "198.19.0.1:80".parse().expect("addr"));
        assert_eq!(
            hello.endpoints[0].tls,
            TlsSpec::IstioMutual {
                sni: Some("outbound_.80_._.hello.default.svc.cluster.local".into()),
                identities: vec!["spiffe://cluster.local/ns/default/sa/default".into()],
            }
        );
        assert_eq!(outbound(&c, "plain/ext").endpoints[0].tls, TlsSpec::Disable, "no sidecar: plaintext");
    }

    #[test]
    fn mixed_endpoints_are_listed_one_by_one() {
        let (mut state, mut world, _, sleep, _) = mesh();
        // A second `hello` Deployment in a namespace without injection, selected by the Service.
        let mut plain_hello = deployment("default", "hello-legacy", 1);
        plain_hello.template.labels.insert("app".into(), "hello".into());
        plain_hello.template.annotations.insert("sidecar.istio.io/inject".into(), "false".into());
        state.put_deployment(plain_hello);
        let p = pod(&mut world, "default", "hello-legacy", "h", 9);
        let legacy = world.pods.get_mut(&p).expect("pod");
        legacy.meshed = false;
        legacy.labels.insert("app".into(), "hello".into());
        let c = config(&state, &world, &sleep);
        let eps = &outbound(&c, "default/hello").endpoints;
        assert_eq!(eps.len(), 2, "{eps:?}");
        assert_eq!(eps[0].address, "198.18.0.2:5000".parse().expect("addr"));
        assert!(matches!(eps[0].tls, TlsSpec::IstioMutual { .. }));
        assert_eq!((eps[1].address, &eps[1].tls), ("198.18.0.9:5000".parse().expect("addr"), &TlsSpec::Disable));
        assert_eq!(eps[1].workload.as_deref(), Some("default/hello-legacy"));
    }

    #[test]
    fn policies_change_inbound_modes_and_client_tls() {
        let (mut state, world, hello, sleep, _) = mesh();
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: hello-strict, namespace: default}
spec:
  selector: {matchLabels: {app: hello}}
  mtls: {mode: STRICT}
  portLevelMtls: {5000: {mode: PERMISSIVE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello-plain, namespace: default}
spec:
  host: hello.default.svc.cluster.local
  trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: DISABLE}}]}
"#;
        state.policies =
            Policies(meshpass_policy::PolicySet::from_resources(parse_documents(yaml, "default").expect("valid")));
        let c = config(&state, &world, &hello);
        assert_eq!(c.inbound.mode, PeerMode::Strict);
        assert_eq!(c.inbound.ports, BTreeMap::from([(5000, PeerMode::Permissive)]));
        let c = config(&state, &world, &sleep);
        assert_eq!(c.inbound, Inbound::default(), "sleep is not selected");
        assert_eq!(outbound(&c, "default/hello").endpoints[0].tls, TlsSpec::Disable, "the rule turns TLS off");
    }

    #[test]
    fn no_ready_endpoint_means_an_empty_list_and_identities_follow_the_service_account() {
        let (state, mut world, hello, sleep, _) = mesh();
        world.pods.get_mut(&hello).expect("pod").ready = false;
        let c = config(&state, &world, &sleep);
        assert!(outbound(&c, "default/hello").endpoints.is_empty());
        assert_eq!(identity(&state.deployments["default/sleep"]), "spiffe://cluster.local/ns/default/sa/sleeper");
    }

    #[test]
    fn certificates_are_issued_when_due_and_configs_written_when_changed() {
        let (state, mut world, hello, sleep, _) = mesh();
        let now = Instant::now();
        let t = table(&state, &world, &BTreeSet::new());
        let a = actions(&state, &world, &t, now);
        let issued: Vec<_> = a.iter().filter(|x| matches!(x, Action::IssueCert { .. })).collect();
        assert_eq!(issued.len(), 2, "both meshed pods, not the plain one: {a:?}");
        for act in a {
            if let Action::WriteSidecarConfig { pod, config } = act {
                world.sidecar_configs.insert(pod, *config);
            }
        }
        world.certs.insert(hello.clone(), now + std::time::Duration::from_secs(60));
        world.certs.insert(sleep.clone(), now + std::time::Duration::from_secs(120));
        assert_eq!(actions(&state, &world, &t, now), vec![], "nothing due, nothing changed");
        let later = now + std::time::Duration::from_secs(90);
        assert_eq!(actions(&state, &world, &t, later), vec![Action::IssueCert { pod: hello }]);
        // Version text follows content.
        let c = &world.sidecar_configs[&sleep];
        assert_eq!(c.version.len(), 8);
    }

    #[test]
    fn service_accounts_come_from_the_pod_template() {
        let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: a}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: a}}
    spec:
      serviceAccountName: reader
      containers: [{name: a, command: [sleep, "1"]}]
"#;
        let objs = parse(yaml).expect("parses");
        let crate::manifest::Object::Deployment(d) = &objs[0] else { panic!("{objs:?}") };
        assert_eq!(identity(d), "spiffe://cluster.local/ns/default/sa/reader");
        let bad = yaml.replace("reader", "Not_A_Name");
        let e = parse(&bad).expect_err("invalid").to_string();
        assert!(e.contains("serviceAccountName `Not_A_Name` must be a DNS-1123 subdomain"), "{e}");
    }
}
