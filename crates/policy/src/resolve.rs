//! Which mTLS mode applies: the server side (`PeerAuthentication`, Istio's
//! `ComposePeerAuthentication`) and the client side (`DestinationRule` lookup as Istio's push
//! context does it, then auto mTLS as Istio's cluster builder and endpoint builder do).

use crate::destination_rule::{DestinationRule, TlsMode, TrafficPolicy};
use crate::mesh::{outbound_sni, MeshView, Service, ServicePort, Workload};
use crate::meta::{selector_matches, ResourceRef};
use crate::peer_authentication::MtlsMode;
use crate::resource::Resource;
use crate::store::{PolicySet, Stored};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Istio's root (config) namespace: selector-less policies here are mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The effective inbound mode of one workload port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerMode {
    /// STRICT, PERMISSIVE or DISABLE (never UNSET).
    pub mode: MtlsMode,
    /// The policy that decided, `None` for the mesh default (PERMISSIVE).
    pub from: Option<ResourceRef>,
}

/// The server-side mode for `port` of a workload in `namespace` with pod `labels`.
///
/// Mesh-wide (root namespace, no selector) → namespace-wide → workload (selector) → the
/// workload policy's `portLevelMtls`; UNSET inherits; among policies of one level the oldest
/// wins; the default is PERMISSIVE.
pub fn server_mode(set: &PolicySet, namespace: &str, labels: &BTreeMap<String, String>, port: u16) -> ServerMode {
    let mut mesh: Option<&Stored> = None;
    let mut ns: Option<&Stored> = None;
    let mut workload: Option<&Stored> = None;
    let older = |cur: Option<&Stored>, s: &Stored| cur.is_none_or(|c| s.seq < c.seq);
    for s in set.iter() {
        let Resource::PeerAuthentication(pa) = &s.resource else { continue };
        let pns = pa.meta.namespace.as_str();
        if pns != namespace && pns != ROOT_NAMESPACE {
            continue;
        }
        if !pa.has_selector() {
            if pns == ROOT_NAMESPACE {
                if older(mesh, s) {
                    mesh = Some(s);
                }
            } else if older(ns, s) {
                ns = Some(s);
            }
        } else if pns != ROOT_NAMESPACE
            && pa.selector.as_ref().is_some_and(|sel| selector_matches(sel, labels))
            && older(workload, s)
        {
            workload = Some(s);
        }
    }
    let mut out = ServerMode { mode: MtlsMode::Permissive, from: None };
    for s in [mesh, ns, workload].into_iter().flatten() {
        let Resource::PeerAuthentication(pa) = &s.resource else { continue };
        if let Some(m) = pa.mtls.filter(|m| *m != MtlsMode::Unset) {
            out = ServerMode { mode: m, from: Some(s.resource.reference()) };
        }
    }
    if let Some(s) = workload {
        if let Resource::PeerAuthentication(pa) = &s.resource {
            if let Some(m) = pa.port_level_mtls.as_ref().and_then(|p| p.get(&port)) {
                if *m != MtlsMode::Unset {
                    out = ServerMode { mode: *m, from: Some(s.resource.reference()) };
                }
            }
        }
    }
    out
}

/// Istio's `ResolveShortnameToFQDN`: a host without a dot is `host.NAMESPACE.svc.cluster.local`;
/// anything with a dot (even `helloworld.default`) is taken as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<IpAddr>().is_ok() {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{}", crate::mesh::CLUSTER_DOMAIN)
    }
}

/// Whether a (resolved) rule host matches a service hostname.
fn host_matches(rule: &str, host: &str) -> bool {
    match rule.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => rule == host,
    }
}

/// Destination rules of one host merged as Istio merges them.
#[derive(Clone, Debug)]
struct Consolidated {
    host: String,
    export_to: BTreeSet<String>,
    selector: Option<BTreeMap<String, String>>,
    namespace: String,
    policy: Option<TrafficPolicy>,
    from: Vec<ResourceRef>,
}

#[derive(Default)]
struct Index {
    local: BTreeMap<String, Vec<Consolidated>>,
    exported: BTreeMap<String, Vec<Consolidated>>,
    root_local: Vec<Consolidated>,
}

/// Istio's `mergeDestinationRule` (enhanced merge: only rules with equal `exportTo` merge).
fn merge(
    list: &mut Vec<Consolidated>,
    dr: &DestinationRule,
    host: &str,
    export_to: &BTreeSet<String>,
    r: &ResourceRef,
) {
    let mut separately = true;
    let mut found = false;
    for c in list.iter_mut().filter(|c| c.host == host) {
        found = true;
        if c.export_to == *export_to {
            separately = false;
        } else {
            separately = true;
            continue;
        }
        let both_without = dr.workload_selector.is_none() && c.selector.is_none();
        let both_with = dr.workload_selector.is_some() && c.selector.is_some();
        if both_with && dr.workload_selector != c.selector {
            separately = true;
            continue;
        }
        if both_without || both_with {
            separately = false;
        }
        c.from.push(r.clone());
        if c.policy.is_none() && dr.traffic_policy.is_some() {
            c.policy = dr.traffic_policy.clone();
        }
    }
    if !found || separately {
        list.push(Consolidated {
            host: host.to_string(),
            export_to: export_to.clone(),
            selector: dr.workload_selector.clone(),
            namespace: dr.meta.namespace.clone(),
            policy: dr.traffic_policy.clone(),
            from: vec![r.clone()],
        });
    }
}

fn index(set: &PolicySet) -> Index {
    let mut rules: Vec<(&Stored, &DestinationRule)> = set
        .iter()
        .filter_map(|s| match &s.resource {
            Resource::DestinationRule(d) => Some((s, d)),
            Resource::PeerAuthentication(_) => None,
        })
        .collect();
    // Istio's sortConfigBySelectorAndCreationTime: rules with a selector first, then oldest.
    rules.sort_by_key(|(s, d)| (d.workload_selector.is_none(), s.seq));
    let mut idx = Index::default();
    for (s, dr) in rules {
        let ns = dr.meta.namespace.as_str();
        let host = resolve_host(&dr.host, ns);
        let export_to: BTreeSet<String> = if dr.workload_selector.is_none() {
            dr.export_to.iter().cloned().collect()
        } else {
            [".".to_string()].into()
        };
        let r = s.resource.reference();
        if export_to.is_empty() || export_to.contains("*") || export_to.contains(".") || export_to.contains(ns) {
            merge(idx.local.entry(ns.to_string()).or_default(), dr, &host, &export_to, &r);
        }
        let private_only = export_to.len() == 1 && (export_to.contains(".") || export_to.contains(ns));
        if !private_only {
            merge(idx.exported.entry(ns.to_string()).or_default(), dr, &host, &export_to, &r);
        } else if ns == ROOT_NAMESPACE {
            merge(&mut idx.root_local, dr, &host, &export_to, &r);
        }
    }
    idx
}

/// Istio's `MostSpecificHostMatch`: the exact host, else the longest matching wildcard.
fn most_specific<'a>(list: &'a [Consolidated], host: &str) -> Vec<&'a Consolidated> {
    let exact: Vec<&Consolidated> = list.iter().filter(|c| c.host == host).collect();
    if !exact.is_empty() {
        return exact;
    }
    let best =
        list.iter().filter(|c| c.host.starts_with('*') && host_matches(&c.host, host)).map(|c| c.host.len()).max();
    match best {
        Some(len) => list
            .iter()
            .filter(|c| c.host.starts_with('*') && c.host.len() == len && host_matches(&c.host, host))
            .collect(),
        None => Vec::new(),
    }
}

/// The destination rule a client in `client_ns` with `client_labels` uses for `svc`.
fn destination_rule<'a>(
    idx: &'a Index,
    client_ns: &str,
    client_labels: &BTreeMap<String, String>,
    svc: &Service,
) -> Option<&'a Consolidated> {
    let host = svc.hostname();
    let visible =
        |c: &&Consolidated| c.export_to.is_empty() || c.export_to.contains("*") || c.export_to.contains(client_ns);
    let candidates: Vec<&Consolidated> = {
        let local = if client_ns != ROOT_NAMESPACE {
            idx.local.get(client_ns).map(|l| most_specific(l, &host)).unwrap_or_default()
        } else {
            most_specific(&idx.root_local, &host)
        };
        if !local.is_empty() {
            local
        } else {
            let from_svc: Vec<&Consolidated> = idx
                .exported
                .get(&svc.namespace)
                .map(|l| most_specific(l, &host))
                .unwrap_or_default()
                .into_iter()
                .filter(visible)
                .collect();
            if !from_svc.is_empty() {
                from_svc
            } else {
                idx.exported
                    .get(ROOT_NAMESPACE)
                    .map(|l| most_specific(l, &host))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(visible)
                    .collect()
            }
        }
    };
    // SidecarScope.DestinationRule: a matching selector rule of the client's namespace wins;
    // otherwise the last rule without a selector.
    let mut catch_all = None;
    for c in candidates {
        match &c.selector {
            None => catch_all = Some(c),
            Some(sel) if c.namespace == client_ns && selector_matches(sel, client_labels) => return Some(c),
            Some(_) => {}
        }
    }
    catch_all
}

/// What a client sidecar sends to a service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "tls", rename_all = "kebab-case")]
pub enum Origination {
    /// Istio mutual TLS with the mesh's certificates.
    IstioMutual {
        /// SNI: `outbound_.PORT_._.HOST`.
        sni: String,
        /// The identities the server certificate may carry.
        identities: Vec<String>,
        /// Chosen by auto mTLS rather than a destination rule.
        auto: bool,
    },
    /// Plaintext.
    Plaintext,
    /// TLS with the rule's own certificates (`SIMPLE` or `MUTUAL`), end to end to the app.
    UserTls {
        /// The rule's mode.
        mode: TlsMode,
        /// The rule's `sni`.
        #[serde(skip_serializing_if = "Option::is_none")]
        sni: Option<String>,
        /// The rule's `caCertificates` (a file).
        #[serde(skip_serializing_if = "Option::is_none")]
        ca_certificates: Option<String>,
    },
}

impl Origination {
    /// Whether this is Istio mutual TLS.
    pub fn is_mtls(&self) -> bool {
        matches!(self, Origination::IstioMutual { .. })
    }
}

/// The client-side decision for one (client, service port, endpoint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientDecision {
    /// What is sent.
    pub origination: Origination,
    /// The destination rule(s) that decided, if any.
    pub from: Vec<ResourceRef>,
    /// Why, in one sentence.
    pub reason: String,
}

/// Resolves client TLS for many lookups against one policy set.
pub struct Resolver<'a> {
    set: &'a PolicySet,
    mesh: &'a MeshView,
    idx: Index,
}

impl<'a> Resolver<'a> {
    /// Indexes `set`'s destination rules.
    pub fn new(set: &'a PolicySet, mesh: &'a MeshView) -> Self {
        Resolver { set, mesh, idx: index(set) }
    }

    /// The policies.
    pub fn policies(&self) -> &'a PolicySet {
        self.set
    }

    /// The server-side mode of `port` of `w`.
    pub fn server_mode(&self, w: &Workload, port: u16) -> ServerMode {
        server_mode(self.set, &w.id.namespace, &w.labels, port)
    }

    /// What `client`'s sidecar sends to `endpoint` behind `svc`:`port` (Istio's
    /// `buildUpstreamTLSSettings` plus the endpoint builder's `mtlsChecker`).
    pub fn client(&self, client: &Workload, svc: &Service, port: &ServicePort, endpoint: &Workload) -> ClientDecision {
        let dr = destination_rule(&self.idx, &client.id.namespace, &client.labels, svc);
        let from = dr.map(|c| c.from.clone()).unwrap_or_default();
        let sni = outbound_sni(&svc.hostname(), port.port);
        let identities = || {
            let mut ids: Vec<String> = self.mesh.endpoints(svc).map(Workload::identity).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        if let Some(tls) = dr.and_then(|c| c.policy.as_ref()).and_then(|p| p.tls_for_port(port.port)) {
            let rules = from.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            let origination = match tls.mode {
                TlsMode::Disable => Origination::Plaintext,
                TlsMode::IstioMutual => Origination::IstioMutual {
                    sni: tls.sni.clone().unwrap_or(sni),
                    identities: tls.subject_alt_names.clone().unwrap_or_else(identities),
                    auto: false,
                },
                mode @ (TlsMode::Simple | TlsMode::Mutual) => {
                    Origination::UserTls { mode, sni: tls.sni.clone(), ca_certificates: tls.ca_certificates.clone() }
                }
            };
            return ClientDecision { origination, from, reason: format!("TLS mode {} from {rules}", tls.mode) };
        }
        if !endpoint.sidecar {
            return ClientDecision {
                origination: Origination::Plaintext,
                from,
                reason: format!("auto mTLS: {} has no sidecar", endpoint.id),
            };
        }
        let server = self.server_mode(endpoint, port.target_port);
        if server.mode == MtlsMode::Disable {
            let by = server.from.map(|r| r.to_string()).unwrap_or_default();
            return ClientDecision {
                origination: Origination::Plaintext,
                from,
                reason: format!("auto mTLS: port {} of {} has mTLS DISABLE ({by})", port.target_port, endpoint.id),
            };
        }
        ClientDecision {
            origination: Origination::IstioMutual { sni, identities: identities(), auto: true },
            from,
            reason: format!("auto mTLS: {} has a sidecar", endpoint.id),
        }
    }
}
