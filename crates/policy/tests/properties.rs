//! Properties over generated resources: what meshpass writes it reads back unchanged, no
//! input makes the parser panic, and resolution always yields a concrete mode.

use meshpass_policy::{
    parse_documents, server_mode, ClientTls, DestinationRule, Meta, MtlsMode, PeerAuthentication, PolicySet,
    PortPolicy, Resource, TlsMode, TrafficPolicy,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}[a-z0-9]"
}

fn mtls() -> impl Strategy<Value = MtlsMode> {
    prop_oneof![Just(MtlsMode::Unset), Just(MtlsMode::Disable), Just(MtlsMode::Permissive), Just(MtlsMode::Strict)]
}

fn tls_mode() -> impl Strategy<Value = TlsMode> {
    prop_oneof![Just(TlsMode::Disable), Just(TlsMode::Simple), Just(TlsMode::IstioMutual)]
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(name(), name(), 1..3)
}

fn peer_authentication() -> impl Strategy<Value = PeerAuthentication> {
    (
        name(),
        name(),
        prop::option::of(labels()),
        prop::option::of(mtls()),
        prop::collection::btree_map(1u16.., mtls(), 1..4),
    )
        .prop_map(|(n, ns, selector, mtls, ports)| {
            let port_level_mtls = selector.is_some().then_some(ports);
            PeerAuthentication {
                meta: Meta { name: n, namespace: ns, ..Meta::default() },
                selector,
                mtls,
                port_level_mtls,
            }
        })
}

fn destination_rule() -> impl Strategy<Value = DestinationRule> {
    (name(), name(), name(), prop::option::of(tls_mode()), prop::collection::btree_map(1u16.., tls_mode(), 0..3))
        .prop_map(|(n, ns, host, tls, ports)| {
            let port_level_settings: Vec<PortPolicy> = ports
                .into_iter()
                .map(|(port, m)| PortPolicy { port, tls: Some(ClientTls::mode(m)), other: BTreeMap::new() })
                .collect();
            let traffic_policy = (tls.is_some() || !port_level_settings.is_empty()).then(|| TrafficPolicy {
                tls: tls.map(ClientTls::mode),
                port_level_settings,
                other: BTreeMap::new(),
            });
            DestinationRule {
                meta: Meta { name: n, namespace: ns, ..Meta::default() },
                host,
                traffic_policy,
                subsets: Vec::new(),
                export_to: Vec::new(),
                workload_selector: None,
            }
        })
}

proptest! {
    #[test]
    fn written_resources_read_back_unchanged(pa in peer_authentication(), dr in destination_rule()) {
        for r in [Resource::PeerAuthentication(pa), Resource::DestinationRule(dr)] {
            let yaml = r.to_yaml();
            let back = parse_documents(&yaml, "unused").map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
            prop_assert_eq!(&back[0], &r);
            prop_assert_eq!(Resource::from_json(&r.to_json(), "unused").map_err(|e| TestCaseError::fail(e.to_string()))?, r);
        }
    }

    #[test]
    fn arbitrary_input_never_panics(
        parts in prop::collection::vec(prop_oneof![
            Just("apiVersion: security.istio.io/v1\n"), Just("kind: PeerAuthentication\n"), Just("kind: DestinationRule\n"),
            Just("metadata: {name: a}\n"), Just("spec:\n"), Just("  mtls: {mode: STRICT}\n"), Just("  portLevelMtls: {80: {}}\n"),
            Just("  host: x\n"), Just("  trafficPolicy: {tls: {mode: MUTUAL}}\n"), Just("  subsets: [{name: a}, 3]\n"),
            Just("---\n"), Just("  - 1\n"), Just(": :\n"), Just("  selector: [1]\n"), Just("\t"), Just("{"), Just("kind: List\nitems: [1]\n"),
        ], 0..12)
    ) {
        let text: String = parts.concat();
        match parse_documents(&text, "default") {
            Ok(_) => {}
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn server_mode_is_never_unset_and_a_matching_workload_mode_wins(
        policies in prop::collection::vec(peer_authentication(), 0..6),
        port in 1u16..,
        mode in prop_oneof![Just(MtlsMode::Disable), Just(MtlsMode::Permissive), Just(MtlsMode::Strict)],
    ) {
        let ns = "ns".to_string();
        let wl_labels: BTreeMap<String, String> = [("app".to_string(), "x".to_string())].into();
        let mut set = PolicySet::new();
        for mut pa in policies {
            // Keep at most one namespace-wide policy per namespace (the store refuses more).
            if !pa.has_selector() && set.list(meshpass_policy::Kind::PeerAuthentication, Some(&pa.meta.namespace)).iter().any(|r| matches!(r, Resource::PeerAuthentication(p) if !p.has_selector())) {
                pa.selector = Some(wl_labels.clone());
            }
            set = set.apply(vec![Resource::PeerAuthentication(pa)]).map(|(s, _)| s).unwrap_or(set);
        }
        let got = server_mode(&set, &ns, &wl_labels, port);
        prop_assert_ne!(got.mode, MtlsMode::Unset);
        // The oldest matching workload policy decides; make ours the only one with this selector.
        let only: BTreeMap<String, String> = [("app".to_string(), "x".to_string()), ("only".to_string(), "me".to_string())].into();
        let mut labels2 = wl_labels;
        labels2.insert("only".into(), "me".into());
        let mine = PeerAuthentication { meta: Meta { name: "mine".into(), namespace: ns.clone(), ..Meta::default() }, selector: Some(only), mtls: Some(mode), port_level_mtls: None };
        let mut fresh = PolicySet::new();
        fresh = fresh.apply(vec![Resource::PeerAuthentication(mine)]).map(|(s, _)| s).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for s in set.iter() {
            fresh = fresh.apply(vec![s.resource.clone()]).map(|(s, _)| s).unwrap_or(fresh);
        }
        prop_assert_eq!(server_mode(&fresh, &ns, &labels2, port).mode, mode);
    }
}
