//! [`CaptureConfig`] → [`Plan`]: Istio's rule layout, operation for operation.
//!
//! The order of operations is istio-iptables' (Istio's `tools/istio-iptables/pkg/capture/run.go`:
//! `(*IptablesConfigurator).Run` and the helpers it calls in turn, `shortCircuitExcludeInterfaces`,
//! `shortCircuitKubeInternalInterface`, `handleInboundPortsInclude`, `handleOutboundIncludeRules`),
//! because `-I chain 1` inserts are relative to what was built before them and because the
//! iptables renderer must reproduce Istio's restore input exactly. Each step below says which
//! part of Istio's behaviour it is.

use crate::config::{CaptureConfig, OwnerGroups, DNS_CAPTURE_PORT, OUTBOUND_MARK};
use crate::ir::{
    chains::*, Chain, CtState, Match, Op, OwnerId, OwnerKind, Plan, Position, Proto, Rule, Scope, Table, Target,
    TproxyRoute,
};
use meshpass_settings::{InterceptionMode, IpNet, IpRangeSpec, PortRange, PortSet, PortSpec};
use std::net::IpAddr;

/// Labels attached to rules; they name the nftables sets and appear in `explain`.
pub mod labels {
    /// Inbound ports excluded by `excludeInboundPorts` (and the mesh's own ports when the
    /// config does not say which they are: `CaptureConfig::sidecar_inbound_ports`).
    pub const EXCLUDE_INBOUND_PORTS: &str = "exclude-inbound-ports";
    /// The sidecar's own inbound ports (Prometheus, health, status), which the mesh always
    /// excludes: not the operator's passthrough, so not in its counters.
    pub const SIDECAR_PORTS: &str = "sidecar-ports";
    /// Inbound ports captured by `includeInboundPorts`.
    pub const INCLUDE_INBOUND_PORTS: &str = "include-inbound-ports";
    /// Inbound capture of everything else.
    pub const CAPTURE_INBOUND: &str = "capture-inbound";
    /// Outbound ports excluded by `excludeOutboundPorts`.
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "exclude-outbound-ports";
    /// Outbound CIDRs excluded by `excludeOutboundIPRanges`.
    pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "exclude-outbound-ip-ranges";
    /// Outbound ports captured by `includeOutboundPorts`.
    pub const INCLUDE_OUTBOUND_PORTS: &str = "include-outbound-ports";
    /// Outbound CIDRs captured by `includeOutboundIPRanges`.
    pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "include-outbound-ip-ranges";
    /// Outbound capture of everything else (`includeOutboundIPRanges: "*"`).
    pub const CAPTURE_OUTBOUND: &str = "capture-outbound";
    /// Interfaces excluded by `excludeInterfaces`.
    pub const EXCLUDE_INTERFACES: &str = "exclude-interfaces";
    /// Virtual interfaces rerouted to the outbound listener.
    pub const VIRTUAL_INTERFACES: &str = "reroute-virtual-interfaces";
    /// Traffic to localhost is never captured.
    pub const LOCALHOST: &str = "localhost";
    /// The proxy's own traffic is never captured.
    pub const PROXY_OWN: &str = "proxy-own-traffic";
    /// The proxy calling its own pod's address is sent to inbound.
    pub const PROXY_SELF: &str = "proxy-to-self";
    /// App-to-self traffic over `lo` is not captured.
    pub const APP_LOOPBACK: &str = "app-loopback";
    /// Inbound passthrough from 127.0.0.6.
    pub const INBOUND_PASSTHROUGH: &str = "inbound-passthrough-source";
    /// Owner-group filter.
    pub const OWNER_GROUPS: &str = "owner-groups";
    /// DNS capture.
    pub const DNS: &str = "dns-capture";
    /// HBONE tunnel port.
    pub const TUNNEL_PORT: &str = "tunnel-port";
    /// Invalid packets dropped.
    pub const DROP_INVALID: &str = "drop-invalid";
    /// TPROXY plumbing: mark-and-accept, the TPROXY target, mark save/restore.
    pub const TPROXY: &str = "tproxy";
    /// Redirect targets (the listener ports).
    pub const REDIRECT: &str = "redirect";
    /// Excluded inbound ports taken out of connection tracking
    /// ([`crate::CaptureConfig::untrack_excluded_inbound`]). The first packet of each such
    /// connection is counted by a rule labelled [`EXCLUDE_INBOUND_PORTS`] (or
    /// [`SIDECAR_PORTS`]) instead, since the nat rule never sees it.
    pub const UNTRACK: &str = "untrack-excluded-inbound";
}

/// Builder that mirrors istio-iptables' rule builder.
struct Builder {
    ops: Vec<Op>,
}

impl Builder {
    fn push(&mut self, scope: Scope, table: Table, chain: &str, position: Position, rule: Rule) {
        self.ops.push(Op { scope, table, chain: Chain::new(chain), position, rule });
    }
    fn append(&mut self, table: Table, chain: &str, rule: Rule) {
        self.push(Scope::Both, table, chain, Position::Append, rule);
    }
    fn append_v(&mut self, scope: Scope, table: Table, chain: &str, rule: Rule) {
        self.push(scope, table, chain, Position::Append, rule);
    }
    fn insert(&mut self, scope: Scope, table: Table, chain: &str, at: u32, rule: Rule) {
        self.push(scope, table, chain, Position::Insert(at), rule);
    }
    /// Istio's `AppendVersionedRule`: the same rule with a per-family address.
    fn append_versioned(&mut self, table: Table, chain: &str, v4: IpNet, v6: IpNet, f: impl Fn(IpNet) -> Rule) {
        self.append_v(Scope::V4, table, chain, f(v4));
        self.append_v(Scope::V6, table, chain, f(v6));
    }
}

fn proto(p: Proto) -> Match {
    Match::Proto { protos: vec![p] }
}
fn tcp() -> Match {
    proto(Proto::Tcp)
}
fn udp() -> Match {
    proto(Proto::Udp)
}
fn dport(port: u16) -> Match {
    Match::DstPort { ports: PortRange::single(port).into_iter().collect(), neg: false }
}
fn not_dports(ports: &[u16]) -> Match {
    Match::DstPort { ports: ports.iter().filter_map(|p| PortRange::single(*p)).collect(), neg: true }
}
fn sport(port: u16) -> Match {
    Match::SrcPort { ports: PortRange::single(port).into_iter().collect(), neg: false }
}
/// `ports` cut into runs of consecutive entries that are (`true`) or are not in `own`.
fn exclusion_runs(ports: &PortSet, own: &PortSet) -> Vec<(bool, Vec<PortRange>)> {
    let mut runs: Vec<(bool, Vec<PortRange>)> = Vec::new();
    for r in ports.ranges() {
        let is_own = own.ranges().contains(r);
        match runs.last_mut() {
            Some((k, v)) if *k == is_own => v.push(*r),
            _ => runs.push((is_own, vec![*r])),
        }
    }
    runs
}

fn dports(ports: &[PortRange]) -> Match {
    Match::DstPort { ports: ports.to_vec(), neg: false }
}
fn dst(net: IpNet) -> Match {
    Match::DstNet { nets: vec![net], neg: false }
}
fn dsts(nets: Vec<IpNet>) -> Match {
    Match::DstNet { nets, neg: false }
}
fn not_dst(net: IpNet) -> Match {
    Match::DstNet { nets: vec![net], neg: true }
}
fn src(net: IpNet) -> Match {
    Match::SrcNet { nets: vec![net], neg: false }
}
fn in_if(name: &str) -> Match {
    Match::InIface { name: name.to_string(), neg: false }
}
fn out_if(name: &str) -> Match {
    Match::OutIface { name: name.to_string(), neg: false }
}
fn lo_out() -> Match {
    out_if("lo")
}
fn lo_in() -> Match {
    in_if("lo")
}
fn owner(kind: OwnerKind, id: &OwnerId, neg: bool) -> Match {
    Match::Owner { kind, id: id.clone(), neg }
}
fn mark(value: u32, neg: bool) -> Match {
    Match::Mark { value, neg }
}
fn jump(chain: &str) -> Target {
    Target::Jump { chain: Chain::new(chain) }
}
fn redirect(port: u16) -> Target {
    Target::Redirect { port, singular: false }
}
fn rule(matches: Vec<Match>, target: Target) -> Rule {
    Rule::new(matches, target)
}
fn host(addr: IpAddr) -> IpNet {
    IpNet::host(addr)
}

fn v6_loopback() -> IpNet {
    host(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
}
fn v4_passthrough_src() -> IpNet {
    host(IpAddr::from([127, 0, 0, 6]))
}
fn v6_passthrough_src() -> IpNet {
    host(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 6]))
}

/// Compiles a configuration into a plan. Pure and infallible: every input was validated
/// when the config was built.
pub fn compile(cfg: &CaptureConfig) -> Plan {
    let mut b = Builder { ops: Vec::new() };
    let tproxy = cfg.mode == InterceptionMode::Tproxy;
    let dns = cfg.dns_active();
    let lo4 = cfg.ipv4_loopback_cidr;
    let lo6 = v6_loopback();
    let include_v4: Vec<IpNet>;
    let include_v6: Vec<IpNet>;
    let include_wildcard;
    match &cfg.include_outbound_ip_ranges {
        IpRangeSpec::Wildcard => {
            include_wildcard = true;
            include_v4 = Vec::new();
            include_v6 = Vec::new();
        }
        IpRangeSpec::List(set) => {
            include_wildcard = false;
            include_v4 = set.v4().collect();
            include_v6 = set.v6().collect();
        }
    }
    let include_has_loopback = include_v4.iter().chain(&include_v6).any(|n| n.has_loopback_addr());

    // Virtual interfaces: never classified as inbound (inserted at 1, so reverse order).
    for iface in &cfg.reroute_virtual_interfaces {
        b.insert(
            Scope::Both,
            Table::Nat,
            PREROUTING,
            1,
            rule(vec![in_if(iface.as_str())], Target::Return).labeled(labels::VIRTUAL_INTERFACES),
        );
    }
    // Excluded interfaces: nothing on them is captured, in either direction.
    for iface in &cfg.exclude_interfaces {
        let r = |m| rule(vec![m], Target::Return).labeled(labels::EXCLUDE_INTERFACES);
        b.append(Table::Nat, PREROUTING, r(in_if(iface.as_str())));
        b.append(Table::Nat, OUTPUT, r(out_if(iface.as_str())));
    }
    if tproxy {
        for iface in &cfg.exclude_interfaces {
            let r = |m| rule(vec![m], Target::Return).labeled(labels::EXCLUDE_INTERFACES);
            b.append(Table::Mangle, PREROUTING, r(in_if(iface.as_str())));
            b.append(Table::Mangle, OUTPUT, r(out_if(iface.as_str())));
        }
    }
    if cfg.drop_invalid {
        let states = vec![CtState::Invalid];
        b.append(
            Table::Mangle,
            PREROUTING,
            rule(vec![Match::CtState { states }], jump(ISTIO_DROP)).labeled(labels::DROP_INVALID),
        );
        b.append(Table::Mangle, ISTIO_DROP, rule(vec![], Target::Drop).labeled(labels::DROP_INVALID));
    }

    b.append(
        Table::Nat,
        ISTIO_INBOUND,
        rule(vec![tcp(), dport(cfg.inbound_tunnel_port)], Target::Return).labeled(labels::TUNNEL_PORT),
    );
    b.append(Table::Nat, ISTIO_REDIRECT, rule(vec![tcp()], redirect(cfg.proxy_port)).labeled(labels::REDIRECT));
    b.append(
        Table::Nat,
        ISTIO_IN_REDIRECT,
        rule(vec![tcp()], redirect(cfg.inbound_capture_port)).labeled(labels::REDIRECT),
    );

    inbound(&mut b, cfg, tproxy, lo4, lo6);

    // Outbound.
    b.append(Table::Nat, OUTPUT, rule(vec![], jump(ISTIO_OUTPUT)));
    if !cfg.exclude_outbound_ports.is_empty() {
        // One rule per port, TCP and UDP: these beat every other outbound rule.
        b.append(
            Table::Nat,
            ISTIO_OUTPUT,
            rule(
                vec![
                    Match::Proto { protos: vec![Proto::Tcp, Proto::Udp] },
                    dports(cfg.exclude_outbound_ports.ranges()),
                ],
                Target::Return,
            )
            .labeled(labels::EXCLUDE_OUTBOUND_PORTS),
        );
    }
    b.append_versioned(Table::Nat, ISTIO_OUTPUT, v4_passthrough_src(), v6_passthrough_src(), |s| {
        rule(vec![lo_out(), src(s)], Target::Return).labeled(labels::INBOUND_PASSTHROUGH)
    });
    for (kind, ids) in [(OwnerKind::Uid, &cfg.proxy_uids), (OwnerKind::Gid, &cfg.proxy_gids)] {
        for id in ids {
            let tunnel = cfg.inbound_tunnel_port;
            // DNS capture keeps port 53 out of the self-redirect, for UIDs only (as Istio).
            let port_match =
                if dns && kind == OwnerKind::Uid { not_dports(&[53, tunnel]) } else { not_dports(&[tunnel]) };
            b.append_versioned(Table::Nat, ISTIO_OUTPUT, lo4, lo6, |l| {
                rule(
                    vec![lo_out(), not_dst(l), tcp(), port_match.clone(), owner(kind, id, false)],
                    jump(ISTIO_IN_REDIRECT),
                )
                .labeled(labels::PROXY_SELF)
            });
            if !include_has_loopback {
                let m = if dns {
                    vec![lo_out(), tcp(), not_dports(&[53]), owner(kind, id, true)]
                } else {
                    vec![lo_out(), owner(kind, id, true)]
                };
                b.append(Table::Nat, ISTIO_OUTPUT, rule(m, Target::Return).labeled(labels::APP_LOOPBACK));
            }
            b.append(
                Table::Nat,
                ISTIO_OUTPUT,
                rule(vec![owner(kind, id, false)], Target::Return).labeled(labels::PROXY_OWN),
            );
        }
    }
    match &cfg.owner_groups {
        OwnerGroups::AllExcept(groups) => {
            for g in groups {
                b.append(
                    Table::Nat,
                    ISTIO_OUTPUT,
                    rule(vec![owner(OwnerKind::Gid, g, false)], Target::Return).labeled(labels::OWNER_GROUPS),
                );
            }
        }
        OwnerGroups::Only(groups) => {
            let m = groups.iter().map(|g| owner(OwnerKind::Gid, g, true)).collect();
            b.append(Table::Nat, ISTIO_OUTPUT, rule(m, Target::Return).labeled(labels::OWNER_GROUPS));
        }
    }
    if dns {
        dns_rules(&mut b, cfg);
    }
    b.append_versioned(Table::Nat, ISTIO_OUTPUT, lo4, lo6, |l| {
        rule(vec![dst(l)], Target::Return).labeled(labels::LOCALHOST)
    });
    let exclude_v4: Vec<IpNet> = cfg.exclude_outbound_ip_ranges.v4().collect();
    let exclude_v6: Vec<IpNet> = cfg.exclude_outbound_ip_ranges.v6().collect();
    for (scope, nets) in [(Scope::V4, exclude_v4), (Scope::V6, exclude_v6)] {
        if !nets.is_empty() {
            b.append_v(
                scope,
                Table::Nat,
                ISTIO_OUTPUT,
                rule(vec![dsts(nets)], Target::Return).labeled(labels::EXCLUDE_OUTBOUND_IP_RANGES),
            );
        }
    }
    if !cfg.include_outbound_ports.is_empty() {
        b.append(
            Table::Nat,
            ISTIO_OUTPUT,
            rule(vec![tcp(), dports(cfg.include_outbound_ports.ranges())], jump(ISTIO_REDIRECT))
                .labeled(labels::INCLUDE_OUTBOUND_PORTS),
        );
    }
    let families: &[(Scope, &Vec<IpNet>)] = if cfg.enable_ipv6 {
        &[(Scope::V4, &include_v4), (Scope::V6, &include_v6)]
    } else {
        &[(Scope::V4, &include_v4)]
    };
    for &(scope, nets) in families {
        if include_wildcard {
            b.append_v(
                scope,
                Table::Nat,
                ISTIO_OUTPUT,
                rule(vec![], jump(ISTIO_REDIRECT)).labeled(labels::CAPTURE_OUTBOUND),
            );
            for iface in &cfg.reroute_virtual_interfaces {
                b.insert(
                    scope,
                    Table::Nat,
                    PREROUTING,
                    1,
                    rule(vec![in_if(iface.as_str())], jump(ISTIO_REDIRECT)).labeled(labels::VIRTUAL_INTERFACES),
                );
            }
        } else if cfg.reroute_virtual_interfaces.is_empty() {
            if !nets.is_empty() {
                b.append_v(
                    scope,
                    Table::Nat,
                    ISTIO_OUTPUT,
                    rule(vec![dsts(nets.clone())], jump(ISTIO_REDIRECT)).labeled(labels::INCLUDE_OUTBOUND_IP_RANGES),
                );
            }
        } else {
            // Istio interleaves, per CIDR, the virtual-interface inserts and the append.
            for net in nets.iter() {
                for iface in &cfg.reroute_virtual_interfaces {
                    b.insert(
                        scope,
                        Table::Nat,
                        PREROUTING,
                        1,
                        rule(vec![in_if(iface.as_str()), dst(*net)], jump(ISTIO_REDIRECT))
                            .labeled(labels::VIRTUAL_INTERFACES),
                    );
                }
                b.append_v(
                    scope,
                    Table::Nat,
                    ISTIO_OUTPUT,
                    rule(vec![dst(*net)], jump(ISTIO_REDIRECT)).labeled(labels::INCLUDE_OUTBOUND_IP_RANGES),
                );
            }
        }
    }

    if tproxy {
        tproxy_tail(&mut b, cfg, lo4, lo6);
    }
    if cfg.untrack_excluded_inbound {
        untrack_excluded_inbound(&mut b, cfg);
    }

    let has_inbound = !matches!(&cfg.include_inbound_ports, PortSpec::List(l) if l.is_empty());
    Plan {
        ops: b.ops,
        ipv6: cfg.enable_ipv6,
        tproxy_route: (tproxy && has_inbound)
            .then_some(TproxyRoute { mark: cfg.tproxy_mark, table: cfg.tproxy_route_table }),
    }
}

fn inbound(b: &mut Builder, cfg: &CaptureConfig, tproxy: bool, lo4: IpNet, lo6: IpNet) {
    let include = match &cfg.include_inbound_ports {
        PortSpec::List(l) if l.is_empty() => return,
        other => other,
    };
    let table = if tproxy {
        let tp = |r: Rule| r.labeled(labels::TPROXY);
        b.append(Table::Mangle, ISTIO_DIVERT, tp(rule(vec![], Target::SetMark { mark: cfg.tproxy_mark })));
        b.append(Table::Mangle, ISTIO_DIVERT, tp(rule(vec![], Target::Accept)));
        let t = Target::Tproxy { port: cfg.inbound_capture_port, mark: cfg.tproxy_mark, mask: u32::MAX };
        b.append_versioned(Table::Mangle, ISTIO_TPROXY, lo4, lo6, |l| tp(rule(vec![not_dst(l), tcp()], t.clone())));
        Table::Mangle
    } else {
        Table::Nat
    };
    b.append(table, PREROUTING, rule(vec![tcp()], jump(ISTIO_INBOUND)));
    let established = || Match::CtState { states: vec![CtState::Related, CtState::Established] };
    match include {
        PortSpec::Wildcard => {
            // One rule per run of the sidecar's own ports or the operator's, in the flag's
            // order: iptables gets a rule per port either way, so its output stays Istio's.
            for (own, ranges) in exclusion_runs(&cfg.exclude_inbound_ports, &cfg.sidecar_inbound_ports) {
                let label = if own { labels::SIDECAR_PORTS } else { labels::EXCLUDE_INBOUND_PORTS };
                b.append(table, ISTIO_INBOUND, rule(vec![tcp(), dports(&ranges)], Target::Return).labeled(label));
            }
            if tproxy {
                b.append(
                    table,
                    ISTIO_INBOUND,
                    rule(vec![tcp(), established()], jump(ISTIO_DIVERT)).labeled(labels::CAPTURE_INBOUND),
                );
                b.append(table, ISTIO_INBOUND, rule(vec![tcp()], jump(ISTIO_TPROXY)).labeled(labels::CAPTURE_INBOUND));
            } else {
                b.append(
                    table,
                    ISTIO_INBOUND,
                    rule(vec![tcp()], jump(ISTIO_IN_REDIRECT)).labeled(labels::CAPTURE_INBOUND),
                );
            }
        }
        PortSpec::List(ports) => {
            if tproxy {
                // Istio interleaves the two rules per port; keep that order exactly.
                for p in ports {
                    let one = dports(&[*p]);
                    b.append(
                        table,
                        ISTIO_INBOUND,
                        rule(vec![tcp(), one.clone(), established()], jump(ISTIO_DIVERT))
                            .labeled(labels::INCLUDE_INBOUND_PORTS),
                    );
                    b.append(
                        table,
                        ISTIO_INBOUND,
                        rule(vec![tcp(), one], jump(ISTIO_TPROXY)).labeled(labels::INCLUDE_INBOUND_PORTS),
                    );
                }
            } else {
                b.append(
                    table,
                    ISTIO_INBOUND,
                    rule(vec![tcp(), dports(ports.ranges())], jump(ISTIO_IN_REDIRECT))
                        .labeled(labels::INCLUDE_INBOUND_PORTS),
                );
            }
        }
    }
}

fn dns_rules(b: &mut Builder, cfg: &CaptureConfig) {
    let to_agent = |singular| Target::Redirect { port: DNS_CAPTURE_PORT, singular };
    let v4 = cfg.capture_all_dns || !cfg.dns_servers_v4.is_empty();
    let v6 = cfg.capture_all_dns || !cfg.dns_servers_v6.is_empty();
    let scopes: Vec<(Scope, &Vec<IpAddr>)> =
        [(Scope::V4, v4, &cfg.dns_servers_v4), (Scope::V6, v6, &cfg.dns_servers_v6)]
            .into_iter()
            .filter(|(_, on, _)| *on)
            .map(|(s, _, servers)| (s, servers))
            .collect();
    for (scope, _) in &scopes {
        b.append_v(*scope, Table::Nat, ISTIO_OUTPUT, rule(vec![], jump(ISTIO_OUTPUT_DNS)).labeled(labels::DNS));
    }
    for (scope, servers) in &scopes {
        if cfg.capture_all_dns {
            b.append_v(
                *scope,
                Table::Nat,
                ISTIO_OUTPUT_DNS,
                rule(vec![tcp(), dport(53)], to_agent(false)).labeled(labels::DNS),
            );
            b.append_v(
                *scope,
                Table::Nat,
                ISTIO_OUTPUT_DNS,
                rule(vec![udp(), dport(53)], to_agent(true)).labeled(labels::DNS),
            );
        } else {
            let nets: Vec<IpNet> = servers.iter().map(|a| host(*a)).collect();
            b.append_v(
                *scope,
                Table::Nat,
                ISTIO_OUTPUT_DNS,
                rule(vec![tcp(), dport(53), dsts(nets.clone())], to_agent(false)).labeled(labels::DNS),
            );
            b.append_v(
                *scope,
                Table::Nat,
                ISTIO_OUTPUT_DNS,
                rule(vec![udp(), dport(53), dsts(nets)], to_agent(true)).labeled(labels::DNS),
            );
        }
    }
    // Conntrack zones in raw keep the agent's upstream DNS and the app's DNS apart.
    b.append(Table::Raw, OUTPUT, rule(vec![], jump(ISTIO_OUTPUT_DNS)).labeled(labels::DNS));
    for (kind, ids) in [(OwnerKind::Uid, &cfg.proxy_uids), (OwnerKind::Gid, &cfg.proxy_gids)] {
        for id in ids {
            b.append(
                Table::Raw,
                ISTIO_OUTPUT_DNS,
                rule(vec![udp(), dport(53), owner(kind, id, false)], Target::CtZone { zone: 1 }).labeled(labels::DNS),
            );
            b.append(
                Table::Raw,
                ISTIO_OUTPUT_DNS,
                rule(vec![udp(), sport(DNS_CAPTURE_PORT), owner(kind, id, false)], Target::CtZone { zone: 2 })
                    .labeled(labels::DNS),
            );
        }
    }
    for (scope, servers) in &scopes {
        b.append_v(*scope, Table::Raw, PREROUTING, rule(vec![], jump(ISTIO_INBOUND)).labeled(labels::DNS));
        if cfg.capture_all_dns {
            b.append_v(
                *scope,
                Table::Raw,
                ISTIO_OUTPUT_DNS,
                rule(vec![udp(), dport(53)], Target::CtZone { zone: 2 }).labeled(labels::DNS),
            );
            b.append_v(
                *scope,
                Table::Raw,
                ISTIO_INBOUND,
                rule(vec![udp(), sport(53)], Target::CtZone { zone: 1 }).labeled(labels::DNS),
            );
        } else {
            for s in servers.iter() {
                let net = host(*s);
                b.append_v(
                    *scope,
                    Table::Raw,
                    ISTIO_OUTPUT_DNS,
                    rule(vec![udp(), dport(53), dst(net)], Target::CtZone { zone: 2 }).labeled(labels::DNS),
                );
                b.append_v(
                    *scope,
                    Table::Raw,
                    ISTIO_INBOUND,
                    rule(vec![udp(), sport(53), src(net)], Target::CtZone { zone: 1 }).labeled(labels::DNS),
                );
            }
        }
    }
}

/// meshpass's own addition, after every Istio op so that Istio's rules stay a prefix: raw
/// `NOTRACK` for both directions of connections to excluded inbound ports, off loopback.
///
/// Per direction: arriving packets by destination port in `PREROUTING`, the app's replies by
/// source port in `OUTPUT` (both must be untracked: a reply conntrack sees without its
/// request would be picked up mid-stream as a new connection and reach the nat rules). First,
/// the connection's SYN is counted, for the sidecar's ports and the operator's, under the nat
/// rules' labels, so the passthrough counters still count connections; then every packet.
/// Exclusions only apply with `includeInboundPorts: "*"`, as in [`inbound`].
///
/// Unlike nat rules, which see a connection's first packet only, raw rules see every packet
/// of every connection, captured or not, so the matches are ordered cheapest rejection first:
/// the SYN test (one payload byte), then the port set, then the interface name (a 16-byte
/// compare, which the profile showed to be the costliest part when it came first).
fn untrack_excluded_inbound(b: &mut Builder, cfg: &CaptureConfig) {
    if cfg.include_inbound_ports != PortSpec::Wildcard || cfg.exclude_inbound_ports.is_empty() {
        return;
    }
    // Virtual interfaces' traffic goes to the outbound listener whatever its port.
    for iface in &cfg.reroute_virtual_interfaces {
        b.append(
            Table::Raw,
            PREROUTING,
            rule(vec![in_if(iface.as_str())], Target::Return).labeled(labels::VIRTUAL_INTERFACES),
        );
    }
    let not_lo_in = || Match::InIface { name: "lo".into(), neg: true };
    let not_lo_out = || Match::OutIface { name: "lo".into(), neg: true };
    // One SYN rule per kind of port (the sidecar's, the operator's), not per run: the sets
    // do not need the flag's order, and every rule here costs every packet.
    let (own, operator): (Vec<PortRange>, Vec<PortRange>) =
        cfg.exclude_inbound_ports.ranges().iter().partition(|r| cfg.sidecar_inbound_ports.ranges().contains(r));
    for (label, ranges) in [(labels::SIDECAR_PORTS, own), (labels::EXCLUDE_INBOUND_PORTS, operator)] {
        if ranges.is_empty() {
            continue;
        }
        b.append(
            Table::Raw,
            PREROUTING,
            rule(vec![tcp(), Match::TcpSyn, dports(&ranges), not_lo_in()], Target::NoTrack).labeled(label),
        );
    }
    let all = cfg.exclude_inbound_ports.ranges();
    b.append(
        Table::Raw,
        PREROUTING,
        rule(vec![tcp(), dports(all), not_lo_in()], Target::NoTrack).labeled(labels::UNTRACK),
    );
    let sports = Match::SrcPort { ports: all.to_vec(), neg: false };
    b.append(Table::Raw, OUTPUT, rule(vec![tcp(), sports, not_lo_out()], Target::NoTrack).labeled(labels::UNTRACK));
}

fn tproxy_tail(b: &mut Builder, cfg: &CaptureConfig, lo4: IpNet, lo6: IpNet) {
    let m = cfg.tproxy_mark;
    let tp = |r: Rule| r.labeled(labels::TPROXY);
    b.append(Table::Mangle, PREROUTING, tp(rule(vec![tcp(), mark(m, false)], Target::ConnMarkSave)));
    b.append(Table::Mangle, OUTPUT, tp(rule(vec![tcp(), lo_out(), mark(m, false)], Target::Return)));
    for (kind, ids) in [(OwnerKind::Uid, &cfg.proxy_uids), (OwnerKind::Gid, &cfg.proxy_gids)] {
        for id in ids {
            b.append_versioned(Table::Mangle, OUTPUT, lo4, lo6, |l| {
                tp(rule(
                    vec![not_dst(l), tcp(), lo_out(), owner(kind, id, false)],
                    Target::SetMark { mark: OUTBOUND_MARK },
                ))
            });
        }
    }
    b.append(Table::Mangle, OUTPUT, tp(rule(vec![tcp(), Match::ConnMark { value: m }], Target::ConnMarkRestore)));
    b.insert(Scope::Both, Table::Mangle, ISTIO_INBOUND, 1, tp(rule(vec![tcp(), mark(m, false)], Target::Return)));
    b.insert(
        Scope::V4,
        Table::Mangle,
        ISTIO_INBOUND,
        2,
        rule(vec![tcp(), src(v4_passthrough_src()), lo_in()], Target::Return).labeled(labels::INBOUND_PASSTHROUGH),
    );
    b.insert(
        Scope::V6,
        Table::Mangle,
        ISTIO_INBOUND,
        2,
        rule(vec![tcp(), src(v6_passthrough_src()), lo_in()], Target::Return).labeled(labels::INBOUND_PASSTHROUGH),
    );
    b.insert(
        Scope::Both,
        Table::Mangle,
        ISTIO_INBOUND,
        3,
        rule(vec![tcp(), lo_in(), mark(OUTBOUND_MARK, true)], Target::Return).labeled(labels::APP_LOOPBACK),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InjectorValues;
    use crate::ir::Family;
    use crate::render::{iptables, nft};
    use meshpass_settings::{keys, Settings};
    use std::collections::BTreeMap;

    fn config(exclude_inbound: &str) -> CaptureConfig {
        let map = BTreeMap::from([(keys::EXCLUDE_INBOUND_PORTS.to_string(), exclude_inbound.to_string())]);
        let settings = Settings::from_annotations(&map).expect("valid annotations");
        CaptureConfig::from_settings(&settings, &InjectorValues::default()).expect("capture enabled")
    }

    /// (label, ports) of the inbound exclusion rules, in order.
    fn exclusions(plan: &Plan) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for Op { rule, .. } in &plan.ops {
            let Some(label) =
                rule.label.as_deref().filter(|l| [labels::SIDECAR_PORTS, labels::EXCLUDE_INBOUND_PORTS].contains(l))
            else {
                continue;
            };
            for m in &rule.matches {
                if let Match::DstPort { ports, .. } = m {
                    let p: Vec<String> = ports.iter().map(ToString::to_string).collect();
                    out.push((label.to_string(), p.join(",")));
                }
            }
        }
        out
    }

    #[test]
    fn the_sidecar_ports_are_labelled_apart_from_the_operators_exclusions() {
        let cfg = config("5000,8000-8100");
        assert_eq!(cfg.exclude_inbound_ports.to_string(), "15090,15021,5000,8000-8100,15020");
        let plan = compile(&cfg);
        let s = |l: &str, p: &str| (l.to_string(), p.to_string());
        assert_eq!(
            exclusions(&plan),
            [
                s("sidecar-ports", "15090,15021"),
                s("exclude-inbound-ports", "5000,8000-8100"),
                s("sidecar-ports", "15020")
            ]
        );
        // The nft set of the operator's exclusions holds only their ports.
        let rendered = nft::render(&plan);
        assert!(rendered.contains("elements = { 5000, 8000-8100 }"), "{rendered}");
        assert!(rendered.contains("elements = { 15090, 15021 }"), "{rendered}");

        // iptables gets a rule per port in the flag's order either way: Istio's output exactly.
        let mut unlabelled = cfg;
        unlabelled.sidecar_inbound_ports = PortSet::new();
        let unlabelled_plan = compile(&unlabelled);
        assert_eq!(exclusions(&unlabelled_plan), [s("exclude-inbound-ports", "15090,15021,5000,8000-8100,15020")]);
        for family in [Family::V4, Family::V6] {
            assert_eq!(iptables::render_restore(&plan, family), iptables::render_restore(&unlabelled_plan, family));
        }
    }

    #[test]
    fn a_status_port_the_operator_also_lists_stays_the_sidecars() {
        // Listed by the operator too: still the sidecar's own (the set keeps one entry).
        let plan = compile(&config("15020,5000"));
        let s = |l: &str, p: &str| (l.to_string(), p.to_string());
        assert_eq!(exclusions(&plan), [s("sidecar-ports", "15090,15021,15020"), s("exclude-inbound-ports", "5000")]);
        // Nothing of the operator's: no operator rule at all.
        let plan = compile(&config(""));
        assert_eq!(exclusions(&plan), [s("sidecar-ports", "15090,15021,15020")]);
    }

    #[test]
    fn untracking_appends_raw_rules_after_every_istio_op() {
        let mut cfg = config("5000,8000-8100");
        let istio = compile(&cfg);
        assert!(istio.ops.iter().all(|op| op.table != Table::Raw), "off by default: Istio's rules only");
        cfg.untrack_excluded_inbound = true;
        let plan = compile(&cfg);
        // Istio's rules stay a prefix, so the iptables rendering of the rest is unchanged.
        assert_eq!(plan.ops[..istio.ops.len()], istio.ops[..]);
        let added: Vec<String> = plan.ops[istio.ops.len()..]
            .iter()
            .map(|op| {
                format!(
                    "{} {} {}",
                    op.chain,
                    iptables::rule_args(&op.rule).join(" | "),
                    op.rule.label.as_deref().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            added,
            [
                "PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m multiport --dports 15090,15021,15020 ! -i lo -j CT --notrack sidecar-ports",
                "PREROUTING -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m multiport --dports 5000,8000:8100 ! -i lo -j CT --notrack exclude-inbound-ports",
                "PREROUTING -p tcp -m multiport --dports 15090,15021,5000,8000:8100,15020 ! -i lo -j CT --notrack untrack-excluded-inbound",
                "OUTPUT -p tcp -m multiport --sports 15090,15021,5000,8000:8100,15020 ! -o lo -j CT --notrack untrack-excluded-inbound",
            ]
        );
        // Multiport takes 15 port slots per rule (a range takes two).
        let many: Vec<String> = (1..=20).map(|p| (9000 + p).to_string()).collect();
        let mut big = config(&many.join(","));
        big.untrack_excluded_inbound = true;
        let raw: Vec<String> = compile(&big)
            .ops
            .iter()
            .filter(|op| op.table == Table::Raw && op.chain.as_str() == OUTPUT)
            .flat_map(|op| iptables::rule_args(&op.rule))
            .collect();
        assert_eq!(raw.len(), 2, "{raw:?}");
        assert!(raw[0].contains("--sports 15090,15021,9001,"), "{raw:?}");
        assert!(plan.ops[istio.ops.len()..].iter().all(|op| op.table == Table::Raw && op.scope == Scope::Both));
        let nft = nft::render(&plan);
        assert!(nft.contains("notrack"), "{nft}");
    }

    #[test]
    fn untracking_needs_a_wildcard_include_and_spares_virtual_interfaces() {
        let on = |mut c: CaptureConfig| {
            c.untrack_excluded_inbound = true;
            compile(&c)
        };
        let raw = |p: &Plan| p.ops.iter().filter(|op| op.table == Table::Raw).count();
        // Exclusions only apply with includeInboundPorts "*": with a list, nothing to untrack.
        let mut listed = config("5000");
        listed.include_inbound_ports = PortSpec::List(PortSet::from_ports([8080]));
        assert_eq!(raw(&on(listed)), 0);
        // No exclusions at all (not even the sidecar's): nothing either.
        let mut none = config("");
        none.exclude_inbound_ports = PortSet::new();
        none.sidecar_inbound_ports = PortSet::new();
        assert_eq!(raw(&on(none)), 0);
        // A rerouted virtual interface goes to the outbound listener whatever the port, so
        // it returns from raw before any NOTRACK.
        let mut virt = config("5000");
        virt.reroute_virtual_interfaces = vec![meshpass_settings::IfaceName::parse("virt0").expect("name")];
        let plan = on(virt);
        let first = plan.ops.iter().find(|op| op.table == Table::Raw).expect("raw ops");
        assert_eq!((first.chain.as_str(), &first.rule.target), (PREROUTING, &Target::Return));
        assert_eq!(first.rule.label.as_deref(), Some(labels::VIRTUAL_INTERFACES));
    }
}
