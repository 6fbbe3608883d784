//! `networking.istio.io/v1` `DestinationRule`: how a client sidecar talks to a service —
//! here, above all, whether it originates (Istio) mutual TLS.
//!
//! The TLS settings are typed and validated as Istio's webhook does. Connection-pool,
//! load-balancer, outlier-detection, tunnel, PROXY-protocol and retry-budget settings are
//! kept exactly as written (and must be mappings); meshpass does not act on them.

use crate::error::Reason;
use crate::meta::{is_dns1123_label, is_label_key, is_label_value, Meta};
use crate::peer_authentication::check_selector;
use crate::yaml::{Obj, Sink};
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// `trafficPolicy.tls.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plaintext to the upstream (also the mode of `tls: {}`).
    Disable,
    /// TLS originated with the service's certificate verified.
    Simple,
    /// Mutual TLS with certificates the rule names.
    Mutual,
    /// Mutual TLS with the mesh's workload certificates (what auto mTLS uses).
    IstioMutual,
}

impl TlsMode {
    const CHOICES: &'static str = "DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL";

    /// The mode as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "DISABLE",
            TlsMode::Simple => "SIMPLE",
            TlsMode::Mutual => "MUTUAL",
            TlsMode::IstioMutual => "ISTIO_MUTUAL",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "DISABLE" => Some(TlsMode::Disable),
            "SIMPLE" => Some(TlsMode::Simple),
            "MUTUAL" => Some(TlsMode::Mutual),
            "ISTIO_MUTUAL" => Some(TlsMode::IstioMutual),
            _ => None,
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ClientTLSSettings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    /// The mode.
    pub mode: TlsMode,
    /// PEM file of the client certificate (`MUTUAL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// PEM file of the client key (`MUTUAL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// PEM file of the CA bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Secret holding the credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Identities the server certificate must carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_alt_names: Option<Vec<String>>,
    /// SNI to send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Skip verifying the server's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// PEM file of a CRL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

impl ClientTls {
    /// Settings with only a mode.
    pub fn mode(mode: TlsMode) -> Self {
        ClientTls {
            mode,
            client_certificate: None,
            private_key: None,
            ca_certificates: None,
            credential_name: None,
            subject_alt_names: None,
            sni: None,
            insecure_skip_verify: None,
            ca_crl: None,
        }
    }
}

/// One entry of `portLevelSettings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortPolicy {
    /// `port.number`: the service port.
    pub port: u16,
    /// `tls`.
    pub tls: Option<ClientTls>,
    /// The other settings, as written.
    pub other: BTreeMap<String, Json>,
}

/// `trafficPolicy` (of the rule or of a subset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrafficPolicy {
    /// `tls`.
    pub tls: Option<ClientTls>,
    /// `portLevelSettings`.
    pub port_level_settings: Vec<PortPolicy>,
    /// The other settings, as written.
    pub other: BTreeMap<String, Json>,
}

impl TrafficPolicy {
    /// The TLS settings for `port`: a port-level `tls` wins over the policy's own (Istio's
    /// `trafficPolicyTLSModeForPort`).
    pub fn tls_for_port(&self, port: u16) -> Option<&ClientTls> {
        self.port_level_settings
            .iter()
            .find(|p| p.port == port && p.tls.is_some())
            .and_then(|p| p.tls.as_ref())
            .or(self.tls.as_ref())
    }
}

/// One entry of `subsets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Subset {
    /// `name`.
    pub name: String,
    /// `labels`.
    pub labels: BTreeMap<String, String>,
    /// `trafficPolicy`.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// A parsed and validated `DestinationRule`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DestinationRule {
    /// Name, namespace, labels, annotations.
    pub meta: Meta,
    /// `spec.host` as written (short names are resolved against the rule's namespace).
    pub host: String,
    /// `spec.trafficPolicy`.
    pub traffic_policy: Option<TrafficPolicy>,
    /// `spec.subsets`.
    pub subsets: Vec<Subset>,
    /// `spec.exportTo` (empty = every namespace).
    pub export_to: Vec<String>,
    /// `spec.workloadSelector.matchLabels`: the client workloads the rule applies to.
    pub workload_selector: Option<BTreeMap<String, String>>,
}

const POLICY_FIELDS: [&str; 8] = [
    "loadBalancer",
    "connectionPool",
    "outlierDetection",
    "tls",
    "portLevelSettings",
    "tunnel",
    "proxyProtocol",
    "retryBudget",
];
const PORT_POLICY_FIELDS: [&str; 5] = ["port", "loadBalancer", "connectionPool", "outlierDetection", "tls"];
const TLS_FIELDS: [&str; 9] = [
    "mode",
    "clientCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "subjectAltNames",
    "sni",
    "insecureSkipVerify",
    "caCrl",
];

impl DestinationRule {
    /// Reads and validates `spec` as Istio's webhook (`ValidateDestinationRule`) and CRD
    /// schema do.
    pub(crate) fn parse(meta: Meta, spec: Option<Obj<'_>>, sink: &mut Sink<'_>) -> Self {
        let mut dr = DestinationRule {
            meta,
            host: String::new(),
            traffic_policy: None,
            subsets: Vec::new(),
            export_to: Vec::new(),
            workload_selector: None,
        };
        let Some(spec) = spec else {
            sink.push("spec.host", None, Reason::Required);
            return dr;
        };
        spec.only(&["host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"], "DestinationRule spec", sink);
        match spec.string("host", sink) {
            Some(h) => {
                if let Err(why) = validate_wildcard_domain(&h) {
                    sink.push_text(&spec.at("host"), &h, Reason::BadHost(why));
                }
                dr.host = h;
            }
            None if !spec.has("host") => sink.push(&spec.at("host"), None, Reason::Required),
            None => {}
        }
        if spec.has("trafficPolicy") {
            dr.traffic_policy = traffic_policy(spec.get("trafficPolicy"), &spec.at("trafficPolicy"), sink);
        }
        if let Some(v) = spec.get("subsets") {
            dr.subsets = subsets(v, &spec.at("subsets"), sink);
        }
        if let Some(sel) = Obj::new(spec.get("workloadSelector"), &spec.at("workloadSelector"), sink) {
            sel.only(&["matchLabels"], "WorkloadSelector", sink);
            let labels = sel.string_map("matchLabels", sink).unwrap_or_default();
            check_selector(&labels, &sel.at("matchLabels"), sink);
            dr.workload_selector = Some(labels);
        }
        if let Some(list) = spec.strings("exportTo", sink) {
            check_export_to(&dr.meta.namespace, &list, dr.workload_selector.is_some(), &spec.at("exportTo"), sink);
            dr.export_to = list;
        }
        dr
    }

    /// The `spec` as Kubernetes JSON.
    pub fn spec_json(&self) -> Json {
        let mut spec = Map::new();
        spec.insert("host".into(), Json::String(self.host.clone()));
        if let Some(tp) = &self.traffic_policy {
            spec.insert("trafficPolicy".into(), policy_json(tp));
        }
        if !self.subsets.is_empty() {
            let subsets: Vec<Json> = self
                .subsets
                .iter()
                .map(|s| {
                    let mut m = Map::new();
                    m.insert("name".into(), Json::String(s.name.clone()));
                    if !s.labels.is_empty() {
                        m.insert("labels".into(), json!(s.labels));
                    }
                    if let Some(tp) = &s.traffic_policy {
                        m.insert("trafficPolicy".into(), policy_json(tp));
                    }
                    Json::Object(m)
                })
                .collect();
            spec.insert("subsets".into(), Json::Array(subsets));
        }
        if !self.export_to.is_empty() {
            spec.insert("exportTo".into(), json!(self.export_to));
        }
        if let Some(sel) = &self.workload_selector {
            spec.insert("workloadSelector".into(), json!({ "matchLabels": sel }));
        }
        Json::Object(spec)
    }
}

fn policy_json(tp: &TrafficPolicy) -> Json {
    let mut m: Map<String, Json> = tp.other.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(tls) = &tp.tls {
        m.insert("tls".into(), json!(tls));
    }
    if !tp.port_level_settings.is_empty() {
        let ports: Vec<Json> = tp
            .port_level_settings
            .iter()
            .map(|p| {
                let mut pm: Map<String, Json> = p.other.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                pm.insert("port".into(), json!({ "number": p.port }));
                if let Some(tls) = &p.tls {
                    pm.insert("tls".into(), json!(tls));
                }
                Json::Object(pm)
            })
            .collect();
        m.insert("portLevelSettings".into(), Json::Array(ports));
    }
    Json::Object(m)
}

/// The settings meshpass keeps verbatim: each must be a mapping.
fn opaque(obj: &Obj<'_>, keys: &[&str], sink: &mut Sink<'_>) -> BTreeMap<String, Json> {
    let mut out = BTreeMap::new();
    for key in keys {
        let Some(v) = obj.get(key) else { continue };
        if !v.is_mapping() {
            sink.push(&obj.at(key), Some(v), Reason::WrongType("a mapping"));
            continue;
        }
        match serde_json::to_value(v) {
            Ok(j) => {
                out.insert((*key).to_string(), j);
            }
            Err(_) => sink.push(&obj.at(key), Some(v), Reason::WrongType("a mapping with text keys")),
        }
    }
    out
}

fn traffic_policy(v: Option<&Value>, path: &str, sink: &mut Sink<'_>) -> Option<TrafficPolicy> {
    let obj = Obj::new(v, path, sink)?;
    obj.only(&POLICY_FIELDS, "TrafficPolicy", sink);
    if POLICY_FIELDS.iter().all(|f| !obj.has(f)) {
        sink.push(path, None, Reason::EmptyTrafficPolicy);
    }
    if obj.has("tunnel") && obj.has("proxyProtocol") {
        sink.push(path, None, Reason::TunnelWithProxyProtocol);
    }
    let mut tp = TrafficPolicy {
        tls: Obj::new(obj.get("tls"), &obj.at("tls"), sink).map(|t| client_tls(&t, sink)),
        port_level_settings: Vec::new(),
        other: opaque(
            &obj,
            &["loadBalancer", "connectionPool", "outlierDetection", "tunnel", "proxyProtocol", "retryBudget"],
            sink,
        ),
    };
    if let Some(list) = obj.get("portLevelSettings") {
        let Value::Sequence(items) = list else {
            sink.push(&obj.at("portLevelSettings"), Some(list), Reason::WrongType("a list"));
            return Some(tp);
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("{}[{i}]", obj.at("portLevelSettings"));
            let Some(p) = Obj::new(Some(item), &at, sink) else {
                if item.is_null() {
                    sink.push(&at, None, Reason::Required);
                }
                continue;
            };
            p.only(&PORT_POLICY_FIELDS, "PortTrafficPolicy", sink);
            let port = port_number(&p, sink);
            if PORT_POLICY_FIELDS[1..].iter().all(|f| !p.has(f)) {
                sink.push(&at, None, Reason::EmptyPortTrafficPolicy);
            }
            let tls = Obj::new(p.get("tls"), &p.at("tls"), sink).map(|t| client_tls(&t, sink));
            let other = opaque(&p, &["loadBalancer", "connectionPool", "outlierDetection"], sink);
            if let Some(port) = port {
                tp.port_level_settings.push(PortPolicy { port, tls, other });
            }
        }
    }
    Some(tp)
}

/// `port.number`, required; Istio's schema allows any 32-bit number, meshpass only ports.
fn port_number(p: &Obj<'_>, sink: &mut Sink<'_>) -> Option<u16> {
    let Some(port) = Obj::new(p.get("port"), &p.at("port"), sink) else {
        if !p.has("port") {
            sink.push(&p.at("port"), None, Reason::Required);
        }
        return None;
    };
    port.only(&["number"], "PortSelector", sink);
    let Some(n) = port.get("number") else {
        sink.push(&port.at("number"), None, Reason::Required);
        return None;
    };
    match n.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) {
        Some(n) => Some(n),
        None => {
            sink.push(&port.at("number"), Some(n), Reason::NotAPort);
            None
        }
    }
}

/// `ClientTLSSettings`, with Istio's `ValidateTLS` rules.
fn client_tls(t: &Obj<'_>, sink: &mut Sink<'_>) -> ClientTls {
    t.only(&TLS_FIELDS, "ClientTLSSettings", sink);
    let mode = match t.string("mode", sink) {
        None => TlsMode::Disable,
        Some(s) => TlsMode::parse(&s).unwrap_or_else(|| {
            sink.push_text(&t.at("mode"), &s, Reason::NotOneOf(TlsMode::CHOICES));
            TlsMode::Disable
        }),
    };
    let tls = ClientTls {
        mode,
        client_certificate: t.string("clientCertificate", sink),
        private_key: t.string("privateKey", sink),
        ca_certificates: t.string("caCertificates", sink),
        credential_name: t.string("credentialName", sink),
        subject_alt_names: t.strings("subjectAltNames", sink),
        sni: t.string("sni", sink),
        insecure_skip_verify: t.boolean("insecureSkipVerify", sink),
        ca_crl: t.string("caCrl", sink),
    };
    let set = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    if tls.insecure_skip_verify == Some(true) {
        let verify = match mode {
            TlsMode::Simple => {
                set(&tls.ca_certificates) || set(&tls.credential_name) || tls.subject_alt_names.is_some()
            }
            TlsMode::Mutual => set(&tls.ca_certificates) || tls.subject_alt_names.is_some(),
            _ => false,
        };
        if verify {
            sink.push(&t.at("insecureSkipVerify"), Some(&Value::Bool(true)), Reason::VerifyWithInsecureSkipVerify);
        }
    }
    if matches!(mode, TlsMode::Simple | TlsMode::Mutual) && set(&tls.credential_name) {
        if set(&tls.client_certificate) || set(&tls.ca_certificates) || set(&tls.private_key) || set(&tls.ca_crl) {
            sink.push(&t.path, None, Reason::CertificatesWithCredentialName);
        }
    } else if mode == TlsMode::Mutual {
        if !set(&tls.client_certificate) {
            sink.push(&t.at("clientCertificate"), None, Reason::RequiredForMutual);
        }
        if !set(&tls.private_key) {
            sink.push(&t.at("privateKey"), None, Reason::RequiredForMutual);
        }
    }
    tls
}

fn subsets(v: &Value, path: &str, sink: &mut Sink<'_>) -> Vec<Subset> {
    let Value::Sequence(items) = v else {
        sink.push(path, Some(v), Reason::WrongType("a list"));
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(s) = Obj::new(Some(item), &at, sink) else {
            if item.is_null() {
                sink.push(&at, None, Reason::Required);
            }
            continue;
        };
        s.only(&["name", "labels", "trafficPolicy"], "Subset", sink);
        let name = s.string("name", sink).unwrap_or_default();
        if name.is_empty() {
            sink.push(&s.at("name"), None, Reason::Required);
        } else if !is_dns1123_label(&name.to_ascii_lowercase()) {
            sink.push_text(&s.at("name"), &name, Reason::BadName("subset name (DNS-1123 label)"));
        }
        if !name.is_empty() && !seen.insert(name.clone()) {
            sink.push_text(&s.at("name"), &name, Reason::DuplicateSubset);
        }
        let labels = s.string_map("labels", sink).unwrap_or_default();
        for (k, val) in &labels {
            if !is_label_key(k) {
                sink.push_text(&format!("{}.{k}", s.at("labels")), k, Reason::BadLabel("key"));
            }
            if !is_label_value(val) {
                sink.push_text(&format!("{}.{k}", s.at("labels")), val, Reason::BadLabel("value"));
            }
        }
        let traffic_policy = if s.has("trafficPolicy") {
            traffic_policy(s.get("trafficPolicy"), &s.at("trafficPolicy"), sink)
        } else {
            None
        };
        out.push(Subset { name, labels, traffic_policy });
    }
    out
}

/// Istio's `validateExportTo` for a destination rule.
fn check_export_to(namespace: &str, list: &[String], has_selector: bool, path: &str, sink: &mut Sink<'_>) {
    let mut set = BTreeSet::new();
    for (i, e) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let key = if e == "." { namespace } else { e.as_str() };
        if set.contains(key) {
            let why = if key != e {
                format!("duplicate entries in exportTo: . and current namespace {namespace}")
            } else {
                format!("duplicate entries in exportTo for entry {e}")
            };
            sink.push_text(&at, e, Reason::ExportTo(why));
        } else if key == "*" || is_dns1123_label(key) {
            set.insert(key.to_string());
        } else {
            sink.push_text(&at, e, Reason::ExportTo("is not '.', '*' or a namespace name".into()));
        }
    }
    if has_selector && !set.is_empty() {
        if set.contains(namespace) {
            if set.len() > 1 {
                sink.push(
                    path,
                    None,
                    Reason::ExportTo(
                        "destination rule with workload selector cannot have multiple entries in exportTo".into(),
                    ),
                );
            }
        } else {
            sink.push(
                path,
                None,
                Reason::ExportTo(
                    "destination rule with workload selector cannot have exportTo beyond current namespace".into(),
                ),
            );
        }
    }
    if set.contains("*") && list.len() > 1 {
        sink.push(
            path,
            None,
            Reason::ExportTo("cannot have both public (*) and non-public exportTo values for a resource".into()),
        );
    }
}

/// Istio's `ValidateWildcardDomain`: a DNS name whose first label may be a wildcard.
pub(crate) fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    if domain.len() > 255 {
        return Err(format!("domain name {domain:?} too long (max 255)"));
    }
    if domain.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    let wildcard_ok = first == "*" || {
        let body = first.strip_prefix("*-").or_else(|| first.strip_prefix('*')).unwrap_or(first);
        is_label_ci(body)
    };
    if first.len() > 63 || !wildcard_ok {
        return Err(format!("domain name {domain:?} invalid (label {first:?} invalid)"));
    }
    let Some(rest) = rest else { return Ok(()) };
    let parts: Vec<&str> = rest.split('.').collect();
    let tld = parts[parts.len() - 1];
    if !tld.is_empty() && tld.parse::<i64>().is_ok() {
        return Err(format!("domain name {rest:?} invalid (top level domain {tld:?} cannot be all-numeric)"));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_label_ci(label) {
            return Err(format!("domain name {rest:?} invalid (label {label:?} invalid)"));
        }
    }
    Ok(())
}

/// Istio's `dns1123LabelFmt`, which (unlike Kubernetes') allows upper case.
fn is_label_ci(s: &str) -> bool {
    is_dns1123_label(&s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_domains() {
        assert!(validate_wildcard_domain("helloworld").is_ok());
        assert!(validate_wildcard_domain("helloworld.default.svc.cluster.local").is_ok());
        assert!(validate_wildcard_domain("*.default.svc.cluster.local").is_ok());
        assert!(validate_wildcard_domain("*").is_ok());
        assert!(validate_wildcard_domain("istio.io.").is_ok());
        assert_eq!(
            validate_wildcard_domain("a.*.local").unwrap_err(),
            "domain name \"*.local\" invalid (label \"*\" invalid)"
        );
        assert!(validate_wildcard_domain("").is_err());
        assert!(validate_wildcard_domain("foo.123").unwrap_err().contains("all-numeric"));
        assert!(validate_wildcard_domain("foo_bar").is_err());
    }

    #[test]
    fn tls_for_port_prefers_port_level() {
        let tp = TrafficPolicy {
            tls: Some(ClientTls::mode(TlsMode::IstioMutual)),
            port_level_settings: vec![PortPolicy {
                port: 5000,
                tls: Some(ClientTls::mode(TlsMode::Disable)),
                other: BTreeMap::new(),
            }],
            other: BTreeMap::new(),
        };
        assert_eq!(tp.tls_for_port(5000).map(|t| t.mode), Some(TlsMode::Disable));
        assert_eq!(tp.tls_for_port(80).map(|t| t.mode), Some(TlsMode::IstioMutual));
    }
}
