//! Parsing and validation: Istio's accepted shapes round-trip, and every rule Istio's webhook
//! and CRD schema enforce is refused with a message naming the field.

use meshpass_policy::{parse_documents, MtlsMode, PolicySet, Resource, TlsMode};

fn errors(yaml: &str) -> Vec<String> {
    match parse_documents(yaml, "default") {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn one(yaml: &str) -> Resource {
    let mut r = parse_documents(yaml, "default").unwrap_or_else(|e| panic!("refused:\n{e}"));
    assert_eq!(r.len(), 1);
    r.remove(0)
}

#[test]
fn peer_authentication_shapes() {
    let r = one(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
    );
    let Resource::PeerAuthentication(pa) = &r else { panic!() };
    assert_eq!(pa.mtls, Some(MtlsMode::Strict));
    assert!(!pa.has_selector());

    let r = one(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: hello}\nspec:\n  selector: {matchLabels: {app: helloworld}}\n  mtls: {}\n  portLevelMtls:\n    5000: {mode: DISABLE}\n    \"8080\": {}\n",
    );
    let Resource::PeerAuthentication(pa) = &r else { panic!() };
    assert_eq!(pa.meta.namespace, "default");
    assert_eq!(pa.mtls, Some(MtlsMode::Unset));
    let ports = pa.port_level_mtls.as_ref().unwrap();
    assert_eq!(ports.get(&5000), Some(&MtlsMode::Disable));
    assert_eq!(ports.get(&8080), Some(&MtlsMode::Unset));
    // Written back as v1, read back equal.
    assert!(r.to_yaml().contains("apiVersion: security.istio.io/v1\n"));
    assert_eq!(one(&r.to_yaml()), r);
}

#[test]
fn destination_rule_shapes() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: helloworld
  namespace: default
  labels: {team: a}
  resourceVersion: "12"
  creationTimestamp: "2024-01-01T00:00:00Z"
spec:
  host: helloworld
  exportTo: [".", "sleep"]
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 100}}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 5000}
      tls: {mode: DISABLE}
    - port: {number: 9000}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {tls: {}}
"#;
    let r = one(yaml);
    let Resource::DestinationRule(dr) = &r else { panic!() };
    let tp = dr.traffic_policy.as_ref().unwrap();
    assert_eq!(tp.tls_for_port(5000).unwrap().mode, TlsMode::Disable);
    assert_eq!(tp.tls_for_port(9000).unwrap().mode, TlsMode::IstioMutual);
    assert!(tp.other.contains_key("connectionPool"));
    // `tls: {}` is DISABLE, as in Istio's proto default.
    assert_eq!(dr.subsets[0].traffic_policy.as_ref().unwrap().tls.as_ref().unwrap().mode, TlsMode::Disable);
    assert_eq!(one(&r.to_yaml()), r);
}

#[test]
fn multi_document_and_list() {
    let yaml = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata: {name: a}\n  spec: {}\n---\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: b, namespace: x}\nspec: {host: b}\n";
    let r = parse_documents(yaml, "default").unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].reference().to_string(), "DestinationRule x/b");
}

#[test]
fn peer_authentication_errors() {
    let bad = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bad, namespace: default}
spec:
  mtls: {mode: STRIKT}
  portLevelMtls:
    "0": {mode: STRICT}
    acd: {mode: STRICT}
    "80": {mode: BLAH}
  extra: 1
"#;
    assert_eq!(
        errors(bad),
        [
            "PeerAuthentication default/bad: spec.extra: \"1\" is not a field of PeerAuthentication spec",
            "PeerAuthentication default/bad: spec.mtls.mode: \"STRIKT\" is not one of UNSET, DISABLE, PERMISSIVE, STRICT",
            "PeerAuthentication default/bad: spec.portLevelMtls.0: \"0\" is not a port (1-65535)",
            "PeerAuthentication default/bad: spec.portLevelMtls.acd: \"acd\" is not a port (1-65535)",
            "PeerAuthentication default/bad: spec.portLevelMtls.80.mode: \"BLAH\" is not one of UNSET, DISABLE, PERMISSIVE, STRICT",
            "PeerAuthentication default/bad: spec.portLevelMtls mesh/namespace peer authentication cannot have port level mTLS (portLevelMtls requires selector)",
        ]
    );
    let empty = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: e}\nspec:\n  selector: {matchLabels: {foo: bar}}\n  portLevelMtls: {}\n";
    assert_eq!(errors(empty), ["PeerAuthentication default/e: spec.portLevelMtls port level mTLS, if defined, must have at least one element"]);
    let selector = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: s}\nspec:\n  selector: {matchLabels: {\"\": bar, app: \"he*\"}}\n";
    assert_eq!(
        errors(selector),
        [
            "PeerAuthentication default/s: spec.selector.matchLabels.: \"=bar\" empty key is not supported in selector",
            "PeerAuthentication default/s: spec.selector.matchLabels.app: \"app=he*\" wildcard is not supported in selector",
        ]
    );
}

#[test]
fn destination_rule_errors() {
    let bad = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: Bad_Name}
spec:
  host: "a.*.local"
  exportTo: ["*", "."]
  trafficPolicy:
    tls: {mode: MUTUAL}
    tunnel: {targetHost: x, targetPort: 1}
    proxyProtocol: {version: V1}
    portLevelSettings:
    - tls: {mode: ISTIO_MUTUAL}
    - port: {number: 70000}
    - port: {number: 80}
      tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}
  subsets:
  - name: v1
  - name: v1
    trafficPolicy: {}
  - labels: {version: "-x"}
"#;
    let got = errors(bad);
    let want = [
        "DestinationRule default/Bad_Name: metadata.name: \"Bad_Name\" is not a valid name (DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253)",
        "DestinationRule default/Bad_Name: spec.host: \"a.*.local\" domain name \"*.local\" invalid (label \"*\" invalid)",
        "DestinationRule default/Bad_Name: spec.trafficPolicy tunnel and proxyProtocol must not be set together",
        "DestinationRule default/Bad_Name: spec.trafficPolicy.tls.clientCertificate is required for mutual tls (or set credentialName)",
        "DestinationRule default/Bad_Name: spec.trafficPolicy.tls.privateKey is required for mutual tls (or set credentialName)",
        "DestinationRule default/Bad_Name: spec.trafficPolicy.portLevelSettings[0].port is required",
        "DestinationRule default/Bad_Name: spec.trafficPolicy.portLevelSettings[1].port.number: \"70000\" is not a port (1-65535)",
        "DestinationRule default/Bad_Name: spec.trafficPolicy.portLevelSettings[1] port traffic policy must have at least one field",
        "DestinationRule default/Bad_Name: spec.trafficPolicy.portLevelSettings[2].tls cannot specify client certificates or CA certificate or CA CRL if credentialName is set",
        "DestinationRule default/Bad_Name: spec.subsets[1].name: \"v1\" duplicate subset names",
        "DestinationRule default/Bad_Name: spec.subsets[1].trafficPolicy traffic policy must have at least one field",
        "DestinationRule default/Bad_Name: spec.subsets[2].name is required",
        "DestinationRule default/Bad_Name: spec.subsets[2].labels.version: \"-x\" is not a valid label value",
        "DestinationRule default/Bad_Name: spec.exportTo cannot have both public (*) and non-public exportTo values for a resource",
    ];
    assert_eq!(got, want);
    let selector_export = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: s, namespace: a}\nspec:\n  host: x\n  workloadSelector: {matchLabels: {app: x}}\n  exportTo: [b]\n  trafficPolicy: {tls: {mode: DISABLE}}\n";
    assert_eq!(errors(selector_export), ["DestinationRule a/s: spec.exportTo destination rule with workload selector cannot have exportTo beyond current namespace"]);
    let dup = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: a}\nspec: {host: x, exportTo: [a, .]}\n";
    assert_eq!(
        errors(dup),
        ["DestinationRule a/d: spec.exportTo[1]: \".\" duplicate entries in exportTo: . and current namespace a"]
    );
    let missing = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: m}\nspec: {}\n";
    assert_eq!(errors(missing), ["DestinationRule default/m: spec.host is required"]);
}

#[test]
fn document_errors_name_the_document() {
    let got = errors("kind: Gateway\nmetadata: {name: g}\n---\napiVersion: security.istio.io/v2\nkind: PeerAuthentication\nmetadata: {}\n");
    assert_eq!(
        got,
        [
            "document 1: kind: \"Gateway\" is not a kind meshpass applies here: use PeerAuthentication (security.istio.io/v1) or DestinationRule (networking.istio.io/v1)",
            "PeerAuthentication (document 2): metadata.name is required",
            "PeerAuthentication (document 2): apiVersion: \"security.istio.io/v2\" is not served for PeerAuthentication: use security.istio.io/v1",
        ]
    );
    let yaml = errors("a: [\n");
    assert_eq!(yaml.len(), 1);
    assert!(yaml[0].starts_with("document 1 is not valid YAML: "), "{yaml:?}");
}

#[test]
fn a_file_with_one_bad_document_is_refused_whole() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ok}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: bad}\nspec: {mtls: {mode: NOPE}}\n";
    assert!(parse_documents(yaml, "default").is_err());
}

#[test]
fn store_refuses_a_second_namespace_wide_policy_and_deletes_all_or_none() {
    let set = PolicySet::new();
    let a = parse_documents("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n", "default").unwrap();
    let (set, changes) = set.apply(a.clone()).unwrap();
    assert_eq!(changes[0].1.to_string(), "created");
    let (set, changes) = set.apply(a.clone()).unwrap();
    assert_eq!(changes[0].1.to_string(), "unchanged");
    let b = parse_documents("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: other, namespace: istio-system}\nspec: {mtls: {mode: DISABLE}}\n", "default").unwrap();
    let err = set.apply(b).unwrap_err().to_string();
    assert_eq!(err, "PeerAuthentication istio-system/other: spec.selector conflicts with istio-system/default: Istio would use only the older of two mesh-wide policies; edit or delete it instead");
    let missing = meshpass_policy::ResourceRef {
        kind: meshpass_policy::Kind::DestinationRule,
        namespace: "default".into(),
        name: "x".into(),
    };
    let err = set.delete(&[a[0].reference(), missing]).unwrap_err();
    assert_eq!(err.to_string(), "not found: DestinationRule default/x");
    assert_eq!(set.delete(&[a[0].reference()]).unwrap().len(), 0);
    // Storage round trip keeps creation order.
    assert_eq!(PolicySet::from_json(&set.to_json()).unwrap(), set);
}
