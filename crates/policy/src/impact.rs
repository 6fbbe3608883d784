//! What a proposed passthrough change does to the mesh's mutual TLS, before it is made.
//!
//! Excluding an inbound port takes the server's sidecar out of that port's path, but Istio's
//! clients do not know: auto mTLS still sends mutual TLS to every endpoint with a sidecar,
//! and the app now receives TLS it cannot read. Excluding outbound ports or ranges makes the
//! client send plaintext past its own sidecar, which a STRICT server refuses. This module
//! lists, per affected (client, service port), the [`Effect`], and builds the fix: a
//! `DestinationRule` that turns TLS off for exactly that service port.
//!
//! Whether a connection is captured is not decided here: the caller supplies it through
//! [`Capture`], before and after the change (the local mesh answers from the compiled rules).

use crate::destination_rule::{ClientTls, DestinationRule, PortPolicy, TlsMode, TrafficPolicy};
use crate::mesh::{MeshView, Service, ServicePort, Workload, WorkloadId};
use crate::meta::{Meta, ResourceRef};
use crate::resolve::{ClientDecision, Origination, Resolver};
use crate::resource::Resource;
use crate::store::PolicySet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// Label every fix rule carries.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "meshpass";
/// Annotation naming the workload port a fix rule exists for: `NAMESPACE/NAME:PORT`.
pub const FIX_FOR_ANNOTATION: &str = "passthrough.meshpass.io/fix-for";

/// Whether sidecars capture connections, in one state of the mesh.
pub trait Capture {
    /// Whether `w`'s sidecar captures inbound connections to its container `port`.
    fn inbound(&self, w: &WorkloadId, port: u16) -> bool;
    /// Whether `w`'s sidecar captures outbound connections to `dst`:`port`.
    fn outbound(&self, w: &WorkloadId, dst: IpAddr, port: u16) -> bool;
}

/// What happens to a client's calls once the change is made (ordered by severity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// The calls fail: mTLS to a plaintext app, or plaintext to a STRICT sidecar.
    Fails,
    /// The calls keep working, in plaintext where they were mutual TLS.
    LosesMtls,
    /// The calls keep working as before.
    Works,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Fails => "fails",
            Effect::Works => "works",
            Effect::LosesMtls => "loses-mtls",
        })
    }
}

/// Which side of the change the entry is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The changed workload's inbound port; the entry's client is another workload.
    Inbound,
    /// The changed workload's outbound traffic; the entry's client is the changed workload.
    Outbound,
}

/// How we know the client calls the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evidence {
    /// A sidecar recorded such a call.
    Observed,
    /// A meshed workload that can reach the service; no call recorded.
    MayCall,
}

/// One (client, service port, server) the change affects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImpactEntry {
    /// Inbound or outbound exclusion.
    pub direction: Side,
    /// The calling workload.
    pub client: WorkloadId,
    /// The called workload.
    pub server: WorkloadId,
    /// The Service called, `namespace/name`.
    pub service: String,
    /// The Service's ClusterIP.
    pub address: Option<IpAddr>,
    /// The Service port called.
    pub service_port: u16,
    /// The excluded port: the server's container port (inbound) or the destination port (outbound).
    pub port: u16,
    /// What happens.
    pub effect: Effect,
    /// Why, in one sentence.
    pub reason: String,
    /// Whether the hop is mutual TLS now.
    pub mtls_before: bool,
    /// Whether it is mutual TLS after the change (and the fix, when included).
    pub mtls_after: bool,
    /// How we know the client calls.
    pub evidence: Evidence,
}

/// A call a sidecar recorded: client workload → Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Call {
    /// The caller.
    pub client: WorkloadId,
    /// The Service, `namespace/name`.
    pub service: String,
    /// The Service port.
    pub port: u16,
}

/// A proposed passthrough change of one workload.
pub struct Proposal<'a> {
    /// The workload whose settings change.
    pub workload: &'a WorkloadId,
    /// Capture today.
    pub before: &'a dyn Capture,
    /// Capture after the change (only `workload`'s answers differ).
    pub after: &'a dyn Capture,
    /// Whether the fix rules are part of the change.
    pub fix_clients: bool,
}

/// The whole answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Impact {
    /// Every affected (client, service port, server), failures first.
    pub entries: Vec<ImpactEntry>,
    /// The fix rules for the inbound failures (created only with `fix_clients`).
    pub fixes: Vec<DestinationRule>,
    /// Things worth knowing that are not about one client (e.g. a STRICT port opened to plaintext).
    pub notes: Vec<String>,
}

impl Impact {
    /// Whether any client's calls would fail.
    pub fn has_failures(&self) -> bool {
        self.entries.iter().any(|e| e.effect == Effect::Fails)
    }
}

/// The fix rule's name for a service port.
pub fn fix_name(svc: &Service, port: u16) -> String {
    format!("{}-passthrough-{port}", svc.name)
}

/// The `DestinationRule` turning TLS off for exactly `svc`:`port`, for `server`'s `target`.
pub fn fix_rule(svc: &Service, port: u16, server: &WorkloadId, target: u16) -> DestinationRule {
    DestinationRule {
        meta: Meta {
            name: fix_name(svc, port),
            namespace: svc.namespace.clone(),
            labels: [(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into(),
            annotations: [(FIX_FOR_ANNOTATION.to_string(), format!("{server}:{target}"))].into(),
        },
        host: svc.hostname(),
        traffic_policy: Some(TrafficPolicy {
            tls: None,
            port_level_settings: vec![PortPolicy {
                port,
                tls: Some(ClientTls::mode(TlsMode::Disable)),
                other: BTreeMap::new(),
            }],
            other: BTreeMap::new(),
        }),
        subsets: Vec::new(),
        export_to: Vec::new(),
        workload_selector: None,
    }
}

/// The fix rules meshpass created that `after` no longer needs: their workload's port is
/// captured again, or the workload is gone.
pub fn stale_fixes(set: &PolicySet, mesh: &MeshView, after: &dyn Capture) -> Vec<ResourceRef> {
    set.iter()
        .filter_map(|s| match &s.resource {
            Resource::DestinationRule(d)
                if d.meta.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY) =>
            {
                let target = d.meta.annotations.get(FIX_FOR_ANNOTATION)?;
                let (id, port) = target.rsplit_once(':')?;
                let (ns, name) = id.split_once('/')?;
                let port: u16 = port.parse().ok()?;
                let w = WorkloadId::new(ns, name);
                let gone = mesh.workload(&w).is_none_or(|w| !w.sidecar);
                (gone || after.inbound(&w, port)).then(|| s.resource.reference())
            }
            _ => None,
        })
        .collect()
}

fn mtls_phrase(d: &ClientDecision) -> &'static str {
    match d.origination {
        Origination::IstioMutual { .. } => "mutual TLS",
        Origination::Plaintext => "plaintext",
        Origination::UserTls { .. } => "its own TLS",
    }
}

/// Computes the impact of `p` on `mesh` under `policies`. `observed` are the calls sidecars
/// recorded (they mark entries [`Evidence::Observed`]; every other meshed workload is listed
/// as [`Evidence::MayCall`]).
pub fn impact(mesh: &MeshView, policies: &PolicySet, p: &Proposal<'_>, observed: &BTreeSet<Call>) -> Impact {
    let mut out = Impact::default();
    let Some(changed) = mesh.workload(p.workload) else { return out };
    let now = Resolver::new(policies, mesh);
    inbound(mesh, &now, changed, p, observed, &mut out);
    outbound(mesh, &now, changed, p, observed, &mut out);
    out.entries.sort_by(|a, b| {
        (a.effect, a.evidence, &a.client, &a.service, a.service_port, &a.server).cmp(&(
            b.effect,
            b.evidence,
            &b.client,
            &b.service,
            b.service_port,
            &b.server,
        ))
    });
    out
}

fn evidence(observed: &BTreeSet<Call>, client: &WorkloadId, svc: &Service, port: u16) -> Evidence {
    let call = Call { client: client.clone(), service: svc.key(), port };
    if observed.contains(&call) {
        Evidence::Observed
    } else {
        Evidence::MayCall
    }
}

/// The server's inbound ports the change stops capturing, per Service port.
fn opened_ports<'a>(
    mesh: &'a MeshView,
    server: &'a Workload,
    p: &'a Proposal<'_>,
) -> Vec<(&'a Service, &'a ServicePort)> {
    mesh.services_of(server)
        .flat_map(|svc| svc.ports.iter().map(move |sp| (svc, sp)))
        .filter(|(_, sp)| p.before.inbound(&server.id, sp.target_port) && !p.after.inbound(&server.id, sp.target_port))
        .collect()
}

fn inbound(
    mesh: &MeshView,
    now: &Resolver<'_>,
    server: &Workload,
    p: &Proposal<'_>,
    observed: &BTreeSet<Call>,
    out: &mut Impact,
) {
    if !server.sidecar {
        return;
    }
    let opened = opened_ports(mesh, server, p);
    if opened.is_empty() {
        return;
    }
    // The fixes are computed against today's policies; the answer with the fix is then
    // resolved again, so a rule that Istio would not use (another rule takes precedence) shows.
    let mut fixes = Vec::new();
    for (svc, sp) in &opened {
        let mode = now.server_mode(server, sp.target_port);
        if mode.mode == crate::peer_authentication::MtlsMode::Strict {
            let by = mode.from.map(|r| r.to_string()).unwrap_or_default();
            out.notes.push(format!(
                "port {} of {} requires mutual TLS today (STRICT, {by}); once it passes through, the app accepts plaintext from any client",
                sp.target_port, server.id
            ));
        }
        let fails = mesh.workloads.iter().any(|c| c.sidecar && now.client(c, svc, sp, server).origination.is_mtls());
        if fails
            && !fixes
                .iter()
                .any(|f: &DestinationRule| f.meta.name == fix_name(svc, sp.port) && f.meta.namespace == svc.namespace)
        {
            fixes.push(fix_rule(svc, sp.port, &server.id, sp.target_port));
        }
    }
    out.notes.dedup();
    let with_fix = if p.fix_clients {
        now.policies().apply(fixes.iter().cloned().map(Resource::DestinationRule).collect()).ok().map(|(s, _)| s)
    } else {
        None
    };
    let after_set = with_fix.as_ref().unwrap_or(now.policies());
    let after = Resolver::new(after_set, mesh);
    for (svc, sp) in opened {
        for client in mesh.workloads.iter().filter(|c| c.sidecar) {
            let ev = evidence(observed, &client.id, svc, sp.port);
            if client.id == server.id && ev == Evidence::MayCall {
                continue;
            }
            let mut e = ImpactEntry {
                direction: Side::Inbound,
                client: client.id.clone(),
                server: server.id.clone(),
                service: svc.key(),
                address: svc.cluster_ip,
                service_port: sp.port,
                port: sp.target_port,
                effect: Effect::Works,
                reason: String::new(),
                mtls_before: false,
                mtls_after: false,
                evidence: ev,
            };
            let client_view = if client.id == server.id { p.after } else { p.before };
            if let Some(ip) = svc.cluster_ip.filter(|ip| !client_view.outbound(&client.id, *ip, sp.port)) {
                e.reason = format!(
                    "{}'s own passthrough already sends {ip}:{} past its sidecar, in plaintext",
                    client.id, sp.port
                );
                out.entries.push(e);
                continue;
            }
            let before = now.client(client, svc, sp, server);
            let later = after.client(client, svc, sp, server);
            e.mtls_before = before.origination.is_mtls();
            e.mtls_after = false;
            (e.effect, e.reason) = match (&before.origination, &later.origination) {
                (_, Origination::IstioMutual { .. }) => {
                    let mut why = format!(
                        "{}'s sidecar sends mutual TLS ({}), but port {} of {} no longer has a sidecar to terminate it: the app receives TLS it cannot read",
                        client.id, later.reason, sp.target_port, server.id
                    );
                    if p.fix_clients && !later.from.is_empty() {
                        let rules = later.from.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                        why.push_str(&format!(
                            "; the fix does not take effect because {rules} decides this client's TLS: add portLevelSettings port {} tls DISABLE to it",
                            sp.port
                        ));
                    }
                    (Effect::Fails, why)
                }
                (Origination::IstioMutual { .. }, Origination::Plaintext) => {
                    (Effect::LosesMtls, format!("{} sends plaintext ({}) straight to the app", client.id, later.reason))
                }
                (_, o) => {
                    let what = match o {
                        Origination::UserTls { .. } => "its own TLS, which the app terminates",
                        _ => "plaintext",
                    };
                    (Effect::Works, format!("{} sends {what} ({}), as before", client.id, later.reason))
                }
            };
            out.entries.push(e);
        }
    }
    out.fixes = fixes;
}

fn outbound(
    mesh: &MeshView,
    now: &Resolver<'_>,
    client: &Workload,
    p: &Proposal<'_>,
    observed: &BTreeSet<Call>,
    out: &mut Impact,
) {
    if !client.sidecar {
        return;
    }
    for svc in &mesh.services {
        let Some(ip) = svc.cluster_ip else { continue };
        for sp in &svc.ports {
            let bypassed = p.before.outbound(&client.id, ip, sp.port) && !p.after.outbound(&client.id, ip, sp.port);
            if !bypassed {
                continue;
            }
            for server in mesh.endpoints(svc) {
                let before = now.client(client, svc, sp, server);
                let view = if server.id == client.id { p.after } else { p.before };
                let mut e = ImpactEntry {
                    direction: Side::Outbound,
                    client: client.id.clone(),
                    server: server.id.clone(),
                    service: svc.key(),
                    address: Some(ip),
                    service_port: sp.port,
                    port: sp.port,
                    effect: Effect::Works,
                    reason: String::new(),
                    mtls_before: before.origination.is_mtls(),
                    mtls_after: false,
                    evidence: evidence(observed, &client.id, svc, sp.port),
                };
                let server_captures = server.sidecar && view.inbound(&server.id, sp.target_port);
                let mode = now.server_mode(server, sp.target_port);
                (e.effect, e.reason) = if server_captures && mode.mode == crate::peer_authentication::MtlsMode::Strict {
                    let by = mode.from.map(|r| r.to_string()).unwrap_or_default();
                    (
                        Effect::Fails,
                        format!(
                            "{} now sends plaintext past its sidecar; port {} of {} requires mutual TLS (STRICT, {by}) and refuses it",
                            client.id, sp.target_port, server.id
                        ),
                    )
                } else if e.mtls_before {
                    (
                        Effect::LosesMtls,
                        format!(
                            "{} now sends plaintext past its sidecar to {}, which accepts it",
                            client.id, server.id
                        ),
                    )
                } else {
                    (
                        Effect::Works,
                        format!("{} sends {} today; it now goes past its sidecar", client.id, mtls_phrase(&before)),
                    )
                };
                out.entries.push(e);
            }
        }
    }
}
