//! Resolution and impact on the local mesh's sample: `helloworld-v1` behind
//! `helloworld:5000`, the meshed client `sleep`, and the unmeshed `external`.

use meshpass_policy::impact::{fix_rule, stale_fixes};
use meshpass_policy::{
    impact, parse_documents, Call, Capture, Effect, Evidence, MeshView, MtlsMode, Origination, PolicySet, Proposal,
    Resolver, Resource, Service, ServicePort, Side, Workload, WorkloadId,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn workload(ns: &str, name: &str, app: &str, sa: &str, sidecar: bool) -> Workload {
    Workload { id: WorkloadId::new(ns, name), labels: labels(&[("app", app)]), service_account: sa.into(), sidecar }
}

fn service(ns: &str, name: &str, ip: &str, app: &str, port: u16, target: u16) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        cluster_ip: Some(ip.parse().expect("test address")),
        selector: labels(&[("app", app)]),
        ports: vec![ServicePort { name: Some("http".into()), port, target_port: target }],
    }
}

fn sample() -> MeshView {
    MeshView {
        workloads: vec![
            workload("default", "helloworld-v1", "helloworld", "helloworld", true),
            workload("default", "sleep", "sleep", "default", true),
            workload("external", "external", "external", "default", false),
        ],
        services: vec![
            service("default", "helloworld", "198.19.0.1", "helloworld", 5000, 5000),
            service("external", "external", "198.19.0.2", "external", 8080, 8080),
        ],
    }
}

fn policies(yaml: &str) -> PolicySet {
    PolicySet::new().apply(parse_documents(yaml, "default").expect("valid policies")).expect("no conflicts").0
}

/// Capture as Istio's defaults do it, minus the listed exclusions.
#[derive(Default)]
struct Fake {
    inbound_excluded: BTreeSet<(WorkloadId, u16)>,
    outbound_excluded: BTreeSet<(WorkloadId, IpAddr, u16)>,
    unmeshed: BTreeSet<WorkloadId>,
}

impl Capture for Fake {
    fn inbound(&self, w: &WorkloadId, port: u16) -> bool {
        !self.unmeshed.contains(w) && !self.inbound_excluded.contains(&(w.clone(), port))
    }
    fn outbound(&self, w: &WorkloadId, dst: IpAddr, port: u16) -> bool {
        !self.unmeshed.contains(w) && !self.outbound_excluded.contains(&(w.clone(), dst, port))
    }
}

fn fake() -> Fake {
    Fake { unmeshed: [WorkloadId::new("external", "external")].into(), ..Fake::default() }
}

fn hello() -> WorkloadId {
    WorkloadId::new("default", "helloworld-v1")
}

fn sleep() -> WorkloadId {
    WorkloadId::new("default", "sleep")
}

#[test]
fn server_mode_precedence() {
    let mesh = sample();
    let hw = mesh.workload(&hello()).unwrap();
    let mode = |set: &PolicySet, port| Resolver::new(set, &mesh).server_mode(hw, port);
    assert_eq!(mode(&PolicySet::new(), 5000).mode, MtlsMode::Permissive);
    let set = policies(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ns, namespace: default}\nspec: {mtls: {}}\n",
    );
    let m = mode(&set, 5000);
    assert_eq!(m.mode, MtlsMode::Strict, "UNSET inherits the mesh's mode");
    assert_eq!(m.from.unwrap().to_string(), "PeerAuthentication istio-system/default");
    let set = policies(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: hw}\nspec:\n  selector: {matchLabels: {app: helloworld}}\n  portLevelMtls: {5000: {mode: DISABLE}, 6000: {mode: UNSET}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: other-ns, namespace: other}\nspec: {mtls: {mode: DISABLE}}\n",
    );
    assert_eq!(mode(&set, 5000).mode, MtlsMode::Disable);
    assert_eq!(mode(&set, 6000).mode, MtlsMode::Strict);
    assert_eq!(mode(&set, 7000).mode, MtlsMode::Strict);
    // A selector policy in the root namespace is not a workload policy (Istio ignores it).
    let set = policies(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: sel, namespace: istio-system}\nspec:\n  selector: {matchLabels: {app: helloworld}}\n  mtls: {mode: STRICT}\n",
    );
    assert_eq!(mode(&set, 5000).mode, MtlsMode::Permissive);
}

#[test]
fn two_workload_policies_the_oldest_wins() {
    let mesh = sample();
    let hw = mesh.workload(&hello()).unwrap();
    let set = policies(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: z-old}\nspec: {selector: {matchLabels: {app: helloworld}}, mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a-new}\nspec: {selector: {matchLabels: {app: helloworld}}, mtls: {mode: DISABLE}}\n",
    );
    assert_eq!(Resolver::new(&set, &mesh).server_mode(hw, 5000).mode, MtlsMode::Strict);
}

#[test]
fn auto_mtls_and_destination_rules() {
    let mesh = sample();
    let (hw, sl, ext) = (&mesh.workloads[0], &mesh.workloads[1], &mesh.workloads[2]);
    let (hw_svc, ext_svc) = (&mesh.services[0], &mesh.services[1]);
    let empty = PolicySet::new();
    let r = Resolver::new(&empty, &mesh);
    let d = r.client(sl, hw_svc, &hw_svc.ports[0], hw);
    assert_eq!(
        d.origination,
        Origination::IstioMutual {
            sni: "outbound_.5000_._.helloworld.default.svc.cluster.local".into(),
            identities: vec!["spiffe://cluster.local/ns/default/sa/helloworld".into()],
            auto: true,
        }
    );
    assert_eq!(r.client(sl, ext_svc, &ext_svc.ports[0], ext).origination, Origination::Plaintext);

    // A port-level DISABLE in the service's namespace, short host name.
    let set = policies("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: hw}\nspec:\n  host: helloworld\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 5000}\n      tls: {mode: DISABLE}\n");
    let d = Resolver::new(&set, &mesh).client(sl, hw_svc, &hw_svc.ports[0], hw);
    assert_eq!(d.origination, Origination::Plaintext);
    assert_eq!(d.reason, "TLS mode DISABLE from DestinationRule default/hw");

    // `helloworld.default` has a dot: Istio takes it as written, so it matches nothing.
    let set = policies("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: hw}\nspec: {host: helloworld.default, trafficPolicy: {tls: {mode: DISABLE}}}\n");
    assert!(Resolver::new(&set, &mesh).client(sl, hw_svc, &hw_svc.ports[0], hw).origination.is_mtls());

    // The client's own namespace wins over the service's, and a mesh-wide wildcard comes last.
    let set = policies(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: all, namespace: istio-system}\nspec: {host: \"*.local\", trafficPolicy: {tls: {mode: DISABLE}}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: client-side, namespace: external}\nspec: {host: helloworld.default.svc.cluster.local, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}\n",
    );
    let r = Resolver::new(&set, &mesh);
    assert_eq!(r.client(sl, hw_svc, &hw_svc.ports[0], hw).origination, Origination::Plaintext);
    let ext_client = Workload { sidecar: true, ..ext.clone() };
    assert!(r.client(&ext_client, hw_svc, &hw_svc.ports[0], hw).origination.is_mtls());

    // Not exported to the client's namespace: ignored.
    let set = policies("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: hw}\nspec: {host: helloworld, exportTo: [.], trafficPolicy: {tls: {mode: DISABLE}}}\n");
    let r = Resolver::new(&set, &mesh);
    assert_eq!(
        r.client(sl, hw_svc, &hw_svc.ports[0], hw).origination,
        Origination::Plaintext,
        "same namespace sees it"
    );
    assert!(r.client(&ext_client, hw_svc, &hw_svc.ports[0], hw).origination.is_mtls());

    // A selector rule applies only to the clients it selects.
    let set = policies("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: hw}\nspec: {host: helloworld, workloadSelector: {matchLabels: {app: other}}, trafficPolicy: {tls: {mode: DISABLE}}}\n");
    assert!(Resolver::new(&set, &mesh).client(sl, hw_svc, &hw_svc.ports[0], hw).origination.is_mtls());

    // A server port with mTLS DISABLE gets plaintext from auto mTLS.
    let set = policies("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: hw}\nspec: {selector: {matchLabels: {app: helloworld}}, portLevelMtls: {5000: {mode: DISABLE}}}\n");
    assert_eq!(Resolver::new(&set, &mesh).client(sl, hw_svc, &hw_svc.ports[0], hw).origination, Origination::Plaintext);
}

#[test]
fn excluding_inbound_5000_breaks_sleep_and_the_fix_trades_mtls_for_plaintext() {
    let mesh = sample();
    let before = fake();
    let mut after = fake();
    after.inbound_excluded.insert((hello(), 5000));
    let observed: BTreeSet<Call> = [Call { client: sleep(), service: "default/helloworld".into(), port: 5000 }].into();
    let p = Proposal { workload: &hello(), before: &before, after: &after, fix_clients: false };
    let got = impact(&mesh, &PolicySet::new(), &p, &observed);
    assert_eq!(got.entries.len(), 1, "{got:#?}");
    let e = &got.entries[0];
    assert_eq!(
        (e.direction, &e.client, e.port, e.effect, e.evidence),
        (Side::Inbound, &sleep(), 5000, Effect::Fails, Evidence::Observed)
    );
    assert!(e.mtls_before && !e.mtls_after);
    assert!(e.reason.contains("no longer has a sidecar to terminate it"), "{}", e.reason);
    assert_eq!(got.fixes.len(), 1);
    let fix = Resource::DestinationRule(got.fixes[0].clone());
    assert_eq!(
        fix.to_yaml(),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  annotations:\n    passthrough.meshpass.io/fix-for: default/helloworld-v1:5000\n  labels:\n    app.kubernetes.io/managed-by: meshpass\n  name: helloworld-passthrough-5000\n  namespace: default\nspec:\n  host: helloworld.default.svc.cluster.local\n  trafficPolicy:\n    portLevelSettings:\n    - port:\n        number: 5000\n      tls:\n        mode: DISABLE\n"
    );
    // The fix rule is valid by our own validation.
    assert_eq!(parse_documents(&fix.to_yaml(), "default").unwrap()[0], fix);

    let p = Proposal { fix_clients: true, ..p };
    let got = impact(&mesh, &PolicySet::new(), &p, &observed);
    assert_eq!(got.entries[0].effect, Effect::LosesMtls, "{:#?}", got.entries);

    // Once the fix exists and the port is captured again, the rule is stale.
    let set = PolicySet::new().apply(vec![fix]).unwrap().0;
    assert_eq!(stale_fixes(&set, &mesh, &before).len(), 1);
    assert!(stale_fixes(&set, &mesh, &after).is_empty());
}

#[test]
fn a_user_rule_that_takes_precedence_makes_the_fix_ineffective_and_says_so() {
    let mesh = sample();
    let before = fake();
    let mut after = fake();
    after.inbound_excluded.insert((hello(), 5000));
    // An older rule for the same host in the same namespace: Istio keeps its traffic policy.
    let set = policies("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: mine}\nspec: {host: helloworld, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}\n");
    let p = Proposal { workload: &hello(), before: &before, after: &after, fix_clients: true };
    let got = impact(&mesh, &set, &p, &BTreeSet::new());
    let e = &got.entries[0];
    assert_eq!(e.effect, Effect::Fails);
    assert_eq!(e.evidence, Evidence::MayCall);
    assert!(e.reason.contains("the fix does not take effect because DestinationRule default/mine"), "{}", e.reason);
}

#[test]
fn clients_already_plaintext_keep_working() {
    let mesh = sample();
    let before = fake();
    let mut after = fake();
    after.inbound_excluded.insert((hello(), 5000));
    let set = policies("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: hw}\nspec: {selector: {matchLabels: {app: helloworld}}, mtls: {mode: DISABLE}}\n");
    let p = Proposal { workload: &hello(), before: &before, after: &after, fix_clients: false };
    let got = impact(&mesh, &set, &p, &BTreeSet::new());
    assert_eq!(got.entries[0].effect, Effect::Works);
    assert!(got.fixes.is_empty());
    // The client's own passthrough of the ClusterIP: plaintext today, works.
    let mut before = fake();
    before.outbound_excluded.insert((sleep(), "198.19.0.1".parse().unwrap(), 5000));
    let mut after2 = fake();
    after2.outbound_excluded = before.outbound_excluded.clone();
    after2.inbound_excluded.insert((hello(), 5000));
    let p = Proposal { workload: &hello(), before: &before, after: &after2, fix_clients: false };
    let got = impact(&mesh, &PolicySet::new(), &p, &BTreeSet::new());
    assert_eq!(got.entries[0].effect, Effect::Works);
    assert!(got.entries[0].reason.contains("own passthrough"));
}

#[test]
fn strict_port_opened_is_noted() {
    let mesh = sample();
    let before = fake();
    let mut after = fake();
    after.inbound_excluded.insert((hello(), 5000));
    let set = policies("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n");
    let p = Proposal { workload: &hello(), before: &before, after: &after, fix_clients: false };
    let got = impact(&mesh, &set, &p, &BTreeSet::new());
    assert_eq!(got.notes.len(), 1);
    assert!(got.notes[0].contains("STRICT, PeerAuthentication istio-system/default"));
}

#[test]
fn excluding_outbound_sends_plaintext_which_strict_refuses() {
    let mesh = sample();
    let before = fake();
    let mut after = fake();
    after.outbound_excluded.insert((sleep(), "198.19.0.1".parse().unwrap(), 5000));
    after.outbound_excluded.insert((sleep(), "198.19.0.2".parse().unwrap(), 8080));
    let p = Proposal { workload: &sleep(), before: &before, after: &after, fix_clients: false };
    let got = impact(&mesh, &PolicySet::new(), &p, &BTreeSet::new());
    let effects: Vec<(String, Effect)> = got.entries.iter().map(|e| (e.service.clone(), e.effect)).collect();
    assert_eq!(
        effects,
        [("default/helloworld".to_string(), Effect::LosesMtls), ("external/external".to_string(), Effect::Works)]
    );
    let set = policies("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n");
    let got = impact(&mesh, &set, &p, &BTreeSet::new());
    assert_eq!(got.entries[0].effect, Effect::Fails);
    assert_eq!(got.entries[0].direction, Side::Outbound);
    assert!(got.entries[0].reason.contains("refuses it"), "{}", got.entries[0].reason);
    assert_eq!(got.entries[1].effect, Effect::Works, "the unmeshed host has no sidecar to refuse");
}

#[test]
fn fix_rule_targets_exactly_the_service_port() {
    let mesh = sample();
    let d = fix_rule(&mesh.services[0], 5000, &hello(), 5000);
    let tp = d.traffic_policy.as_ref().unwrap();
    assert!(tp.tls.is_none(), "other ports keep auto mTLS");
    assert_eq!(tp.port_level_settings.len(), 1);
}
