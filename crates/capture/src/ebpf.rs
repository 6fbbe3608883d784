//! Socket-level capture with eBPF: the same passthrough settings, without netfilter.
//!
//! Istio's rules put netfilter hooks (conntrack and nat) on every packet of a pod, passthrough
//! traffic included: about 5% of the machine's work in the proxy benchmark
//! (bench/proxy/RESULTS.md). This capture decides once per *connection* instead:
//!
//! - **Inbound**: an `sk_lookup` program, attached to the pod's network namespace, runs when a
//!   new connection looks for a listening socket. For a captured port it hands the connection
//!   to the sidecar's inbound listener (`bpf_sk_assign`); the socket's local address is then
//!   the original destination, as with TPROXY. Packets of established connections never run
//!   it, and an excluded port costs one program run per connection.
//! - **Outbound**: `connect4`/`connect6` programs, attached to the pod's cgroup, run in
//!   connect(2). A captured connection gets socket mark [`EBPF_OUTBOUND_MARK`]; a policy rule
//!   routes marked sockets through a table that delivers everything locally, from source
//!   [`OUTBOUND_SOURCE_V4`] (`::7` for IPv6); the `sk_lookup` program recognises that source
//!   on loopback and hands the connection to the outbound listener.
//!
//! If the sidecar has not registered its listeners (see [`ListenerSlot`]), captured
//! connections are dropped rather than delivered around it: fail closed.
//!
//! Compilation is pure: settings (a [`CaptureConfig`]) and the namespace's cookie go in,
//! programs and routes come out, and the same input gives the same bytes. Settings that have
//! no meaning without netfilter are refused by name ([`EbpfError`]).

use crate::config::CaptureConfig;
use crate::ir::OwnerId;
use crate::OwnerGroups;
use meshpass_bpf::asm::{Alu, Asm, Cond, Helper, Label, Reg, Size};
use meshpass_bpf::{AsmError, Program};
use meshpass_settings::{IpNet, IpRangeSpec, PortRange, PortSet, PortSpec};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Socket mark of captured outbound connections (the TPROXY mark plus two).
pub const EBPF_OUTBOUND_MARK: u32 = 1339;
/// Routing table that delivers marked connections locally.
pub const EBPF_ROUTE_TABLE: u32 = 134;
/// Source address of captured IPv4 connections: how `sk_lookup` tells them apart on loopback.
pub const OUTBOUND_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 7);
/// Source address of captured IPv6 connections (added to `lo`).
pub const OUTBOUND_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 7);
/// Source of the sidecar's IPv6 connections to the app (Istio's `::6`).
const PASSTHROUGH_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// Where the sidecar registers each listener in the listener map (a `SOCKMAP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerSlot {
    /// Inbound listener for IPv4 connections.
    InboundV4 = 0,
    /// Outbound listener for IPv4 connections.
    OutboundV4 = 1,
    /// Inbound listener for IPv6 connections.
    InboundV6 = 2,
    /// Outbound listener for IPv6 connections.
    OutboundV6 = 3,
}

/// Entries of the listener map.
pub const LISTENER_SLOTS: u32 = 4;

/// Connection counters the programs keep (an array map, one `u64` per entry), named by the
/// rule labels of the netfilter backends so the management plane counts both alike. Each
/// counts connections: `sk_lookup` and the connect hooks run once per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Handed to the inbound listener (`*` capture).
    CaptureInbound = 0,
    /// Passed by an operator-excluded inbound port.
    ExcludeInboundPorts = 1,
    /// Passed by one of the sidecar's own ports (15090, 15021, 15020).
    SidecarPorts = 2,
    /// Handed to the outbound listener.
    CaptureOutbound = 3,
    /// Passed by an excluded outbound port.
    ExcludeOutboundPorts = 4,
    /// Passed by an excluded outbound address range.
    ExcludeOutboundIpRanges = 5,
    /// Handed to the inbound listener by an include list.
    IncludeInboundPorts = 6,
}

impl Counter {
    /// Every counter, in map order.
    pub const ALL: [Counter; 7] = [
        Counter::CaptureInbound,
        Counter::ExcludeInboundPorts,
        Counter::SidecarPorts,
        Counter::CaptureOutbound,
        Counter::ExcludeOutboundPorts,
        Counter::ExcludeOutboundIpRanges,
        Counter::IncludeInboundPorts,
    ];

    /// The rule label this counter stands for.
    pub fn label(self) -> &'static str {
        use crate::compile::labels;
        match self {
            Counter::CaptureInbound => labels::CAPTURE_INBOUND,
            Counter::ExcludeInboundPorts => labels::EXCLUDE_INBOUND_PORTS,
            Counter::SidecarPorts => labels::SIDECAR_PORTS,
            Counter::CaptureOutbound => labels::CAPTURE_OUTBOUND,
            Counter::ExcludeOutboundPorts => labels::EXCLUDE_OUTBOUND_PORTS,
            Counter::ExcludeOutboundIpRanges => labels::EXCLUDE_OUTBOUND_IP_RANGES,
            Counter::IncludeInboundPorts => labels::INCLUDE_INBOUND_PORTS,
        }
    }
}

/// Map slots: the `sk_lookup` program uses the listener map (0) and the counters (1); the
/// connect hooks only the counters (0).
const SKL_COUNTERS: u32 = 1;
const CONNECT_COUNTERS: u32 = 0;

/// Adds one to `counter` (clobbers R0–R5 and fp-8).
fn count(a: &mut Asm, map_slot: u32, counter: Counter) {
    let skip = a.label();
    a.store_imm(Size::W, Reg::R10, -8, counter as i32);
    a.ld_map(Reg::R1, map_slot);
    a.mov64_reg(Reg::R2, Reg::R10);
    a.alu64_imm(Alu::Add, Reg::R2, -8);
    a.call(Helper::MapLookupElem);
    a.jmp_imm(Cond::Eq, Reg::R0, 0, skip);
    a.mov64_imm(Reg::R1, 1);
    a.atomic_add64(Reg::R0, 0, Reg::R1);
    a.bind(skip);
}

/// Emits, for each used label, `label: count; goto to`. Place after an exit.
fn count_blocks(a: &mut Asm, map_slot: u32, blocks: &[(Label, Counter)], to: Label) {
    for (l, c) in blocks {
        if a.is_used(*l) {
            a.bind(*l);
            count(a, map_slot, *c);
            a.ja(to);
        }
    }
}

/// A setting that eBPF capture cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EbpfError {
    /// The setting only makes sense with netfilter rules.
    #[error("{setting} = {value} is not supported with eBPF capture: {reason}")]
    Unsupported {
        /// The setting (istio-iptables flag or annotation meaning).
        setting: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The program generator failed (a meshpass bug).
    #[error("generating the eBPF programs: {0}")]
    Assemble(#[from] AsmError),
}

/// Everything to install: three programs and the outbound route. The `sk_lookup` program's
/// map slots are the listener map and the counters; the connect hooks' the counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbpfPlan {
    /// Inbound and outbound hand-off; map slot 0 is the listener map.
    pub sk_lookup: Program,
    /// IPv4 connect hook.
    pub connect4: Program,
    /// IPv6 connect hook (also sees IPv4-mapped destinations).
    pub connect6: Program,
    /// Whether IPv6 is captured (routes, `::7`).
    pub ipv6: bool,
    /// The sidecar's UID and GID: the listener map's pin is theirs, so the sidecar can
    /// register its listeners without any file access beyond it.
    pub proxy_owner: (u32, u32),
}

impl EbpfPlan {
    /// The programs as listings, for dry runs and golden files.
    pub fn listing(&self) -> String {
        format!(
            "# sk_lookup (network namespace)\n{}\n# connect4 (cgroup)\n{}\n# connect6 (cgroup)\n{}",
            self.sk_lookup.listing(),
            self.connect4.listing(),
            self.connect6.listing()
        )
    }
}

fn unsupported(setting: &'static str, value: impl ToString, reason: &'static str) -> EbpfError {
    EbpfError::Unsupported { setting, value: value.to_string(), reason }
}

fn numeric_ids(setting: &'static str, ids: &[OwnerId]) -> Result<Vec<u32>, EbpfError> {
    ids.iter()
        .map(|id| {
            id.as_number()
                .ok_or_else(|| unsupported(setting, id.as_str(), "eBPF compares numeric ids; give the number"))
        })
        .collect()
}

/// Compiles `cfg` for the network namespace whose cookie is `netns_cookie` (the connect hooks
/// ignore sockets of any other namespace, so they are safe on a shared cgroup).
pub fn compile_ebpf(cfg: &CaptureConfig, netns_cookie: u64) -> Result<EbpfPlan, EbpfError> {
    if let Some(i) = cfg.reroute_virtual_interfaces.first() {
        return Err(unsupported("kube-virt-interfaces", i.as_str(), "interfaces are a netfilter match"));
    }
    if let Some(i) = cfg.exclude_interfaces.first() {
        return Err(unsupported("exclude-interfaces", i.as_str(), "interfaces are a netfilter match"));
    }
    if cfg.redirect_dns {
        return Err(unsupported("redirect-dns", true, "DNS capture redirects UDP, which eBPF capture leaves alone"));
    }
    if cfg.drop_invalid {
        return Err(unsupported("drop-invalid", true, "there is no connection tracking to call a packet invalid"));
    }
    if cfg.untrack_excluded_inbound {
        return Err(unsupported("untrack-excluded-inbound", true, "eBPF capture never tracks connections"));
    }
    if cfg.owner_groups != OwnerGroups::default() {
        return Err(unsupported(
            "outbound owner groups",
            format!("{:?}", cfg.owner_groups),
            "not implemented for eBPF capture",
        ));
    }
    let uids = numeric_ids("proxy-uid", &cfg.proxy_uids)?;
    let gids = numeric_ids("proxy-gid", &cfg.proxy_gids)?;
    let proxy_owner = (
        uids.first().copied().unwrap_or(crate::config::PROXY_ID),
        gids.first().or(uids.first()).copied().unwrap_or(crate::config::PROXY_ID),
    );
    let outbound = Outbound { cfg, uids, gids, netns_cookie };
    Ok(EbpfPlan {
        sk_lookup: sk_lookup(cfg)?,
        connect4: outbound.program(false)?,
        connect6: outbound.program(true)?,
        ipv6: cfg.enable_ipv6,
        proxy_owner,
    })
}

// `struct bpf_sk_lookup` offsets.
const SKL_FAMILY: i16 = 8;
const SKL_PROTOCOL: i16 = 12;
const SKL_REMOTE_IP4: i16 = 16;
const SKL_REMOTE_IP6: i16 = 20;
const SKL_LOCAL_IP4: i16 = 40;
const SKL_LOCAL_IP6: i16 = 44;
const SKL_LOCAL_PORT: i16 = 60;
const SKL_INGRESS_IFINDEX: i16 = 64;
// `struct bpf_sock_addr` offsets.
const SA_USER_IP4: i16 = 4;
const SA_USER_IP6: i16 = 8;
const SA_USER_PORT: i16 = 24;
const SA_PROTOCOL: i16 = 36;

const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
/// The loopback interface is ifindex 1 in every network namespace.
const LO_IFINDEX: u32 = 1;
const SK_DROP: i32 = 0;
const SK_PASS: i32 = 1;
const SOL_SOCKET: i32 = 1;
const SO_MARK: i32 = 36;

/// An address word as a 32-bit load from network-order memory sees it.
fn word(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

fn v6_words(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    [0, 1, 2, 3].map(|i| word([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

/// Jumps to `hit` when the (host-order) port in `port` lies in one of `set`'s ranges.
fn port_in(a: &mut Asm, port: Reg, set: &PortSet, hit: Label) {
    for r in set.ranges() {
        port_range(a, port, *r, hit);
    }
}

fn port_range(a: &mut Asm, port: Reg, r: PortRange, hit: Label) {
    if r.is_single() {
        a.jmp32_imm(Cond::Eq, port, u32::from(r.start()), hit);
    } else {
        let miss = a.label();
        a.jmp32_imm(Cond::Lt, port, u32::from(r.start()), miss);
        a.jmp32_imm(Cond::Le, port, u32::from(r.end()), hit);
        a.bind(miss);
    }
}

/// Jumps to `hit` when the IPv4 address in `ip` (as loaded from network order) is in `net`.
fn v4_in(a: &mut Asm, ip: Reg, scratch: Reg, net: IpNet, hit: Label) {
    let IpAddr::V4(addr) = net.network().addr() else { return };
    let mask = word((u32::MAX.checked_shl(32 - u32::from(net.len())).unwrap_or(0)).to_be_bytes());
    a.mov64_reg(scratch, ip);
    a.alu32_imm(Alu::And, scratch, mask);
    a.jmp32_imm(Cond::Eq, scratch, word(addr.octets()) & mask, hit);
}

/// Jumps to `hit` when the IPv6 address at `base + off` (four network-order words) is in
/// `net`.
fn v6_in(a: &mut Asm, base: Reg, off: i16, scratch: Reg, net: IpNet, hit: Label) {
    let IpAddr::V6(addr) = net.network().addr() else { return };
    let words = v6_words(addr);
    let miss = a.label();
    for (i, w) in words.iter().enumerate() {
        let bits = u32::from(net.len()).saturating_sub(32 * i as u32).min(32);
        if bits == 0 {
            break;
        }
        let mask = word((u32::MAX.checked_shl(32 - bits).unwrap_or(0)).to_be_bytes());
        a.load(Size::W, scratch, base, off + 4 * i as i16);
        a.alu32_imm(Alu::And, scratch, mask);
        a.jmp32_imm(Cond::Ne, scratch, w & mask, miss);
    }
    a.ja(hit);
    a.bind(miss);
}

/// Jumps to `hit` when the IPv6 address at `base + off` is exactly `addr`.
fn v6_is(a: &mut Asm, base: Reg, off: i16, scratch: Reg, addr: Ipv6Addr, hit: Label) {
    let net = IpNet::host(IpAddr::V6(addr));
    v6_in(a, base, off, scratch, net, hit);
}

/// The `sk_lookup` program. R6 = context throughout.
fn sk_lookup(cfg: &CaptureConfig) -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let pass = a.label();
    let drop = a.label();
    let assign = a.label();
    let v6 = a.label();
    let passed = InboundPassed { sidecar: a.label(), excluded: a.label() };
    a.mov64_reg(Reg::R6, Reg::R1);
    a.load(Size::W, Reg::R2, Reg::R6, SKL_PROTOCOL);
    a.jmp32_imm(Cond::Ne, Reg::R2, IPPROTO_TCP, pass);
    a.load(Size::W, Reg::R7, Reg::R6, SKL_LOCAL_PORT);
    a.load(Size::W, Reg::R8, Reg::R6, SKL_INGRESS_IFINDEX);
    a.load(Size::W, Reg::R2, Reg::R6, SKL_FAMILY);
    a.jmp32_imm(Cond::Eq, Reg::R2, AF_INET6, v6);

    // IPv4. A connection from 127.0.0.7 is one the connect hook captured; other loopback
    // sources (the sidecar's 127.0.0.6 among them) and the pod calling its own address are
    // local traffic, never captured. Local traffic to the pod's address does not always
    // arrive with `lo` as its interface (the address's route names the pod's interface),
    // hence the address tests.
    let not_outbound4 = a.label();
    a.load(Size::W, Reg::R2, Reg::R6, SKL_REMOTE_IP4);
    a.jmp32_imm(Cond::Ne, Reg::R2, word(OUTBOUND_SOURCE_V4.octets()), not_outbound4);
    a.store_imm(Size::W, Reg::R10, -4, ListenerSlot::OutboundV4 as i32);
    a.ja(assign);
    a.bind(not_outbound4);
    a.load(Size::W, Reg::R3, Reg::R6, SKL_LOCAL_IP4);
    a.jmp_reg(Cond::Eq, Reg::R2, Reg::R3, pass);
    a.alu32_imm(Alu::And, Reg::R2, 0xff);
    a.jmp32_imm(Cond::Eq, Reg::R2, 127, pass);
    a.jmp32_imm(Cond::Eq, Reg::R8, LO_IFINDEX, pass);
    if let Some(counter) = inbound_ports(&mut a, cfg, pass, &passed) {
        count(&mut a, SKL_COUNTERS, counter);
        a.store_imm(Size::W, Reg::R10, -4, ListenerSlot::InboundV4 as i32);
        a.ja(assign);
    }

    // IPv6.
    a.bind(v6);
    if cfg.enable_ipv6 {
        let outbound6 = a.label();
        let inbound6 = a.label();
        v6_is(&mut a, Reg::R6, SKL_REMOTE_IP6, Reg::R2, OUTBOUND_SOURCE_V6, outbound6);
        v6_is(&mut a, Reg::R6, SKL_REMOTE_IP6, Reg::R2, Ipv6Addr::LOCALHOST, pass);
        v6_is(&mut a, Reg::R6, SKL_REMOTE_IP6, Reg::R2, PASSTHROUGH_SOURCE_V6, pass);
        // Remote == local: the pod calling its own address.
        for i in 0..4 {
            a.load(Size::W, Reg::R2, Reg::R6, SKL_REMOTE_IP6 + 4 * i);
            a.load(Size::W, Reg::R3, Reg::R6, SKL_LOCAL_IP6 + 4 * i);
            a.jmp_reg(Cond::Ne, Reg::R2, Reg::R3, inbound6);
        }
        a.ja(pass);
        a.bind(outbound6);
        a.store_imm(Size::W, Reg::R10, -4, ListenerSlot::OutboundV6 as i32);
        a.ja(assign);
        a.bind(inbound6);
        a.jmp32_imm(Cond::Eq, Reg::R8, LO_IFINDEX, pass);
        if let Some(counter) = inbound_ports(&mut a, cfg, pass, &passed) {
            count(&mut a, SKL_COUNTERS, counter);
            a.store_imm(Size::W, Reg::R10, -4, ListenerSlot::InboundV6 as i32);
            a.ja(assign);
        }
    } else {
        a.ja(pass);
    }

    // Hand the connection to the listener in the slot at fp-4, or drop it if there is none.
    a.bind(assign);
    a.ld_map(Reg::R1, 0);
    a.mov64_reg(Reg::R2, Reg::R10);
    a.alu64_imm(Alu::Add, Reg::R2, -4);
    a.call(Helper::MapLookupElem);
    a.jmp_imm(Cond::Eq, Reg::R0, 0, drop);
    a.mov64_reg(Reg::R7, Reg::R0);
    a.mov64_reg(Reg::R1, Reg::R6);
    a.mov64_reg(Reg::R2, Reg::R7);
    a.mov64_imm(Reg::R3, 0);
    a.call(Helper::SkAssign);
    a.mov64_reg(Reg::R8, Reg::R0);
    a.mov64_reg(Reg::R1, Reg::R7);
    a.call(Helper::SkRelease);
    a.jmp_imm(Cond::Ne, Reg::R8, 0, drop);
    a.bind(pass);
    a.ret(SK_PASS);
    a.bind(drop);
    a.ret(SK_DROP);
    count_blocks(
        &mut a,
        SKL_COUNTERS,
        &[(passed.sidecar, Counter::SidecarPorts), (passed.excluded, Counter::ExcludeInboundPorts)],
        pass,
    );
    a.finish()
}

/// Where excluded inbound ports go to be counted before passing.
struct InboundPassed {
    sidecar: Label,
    excluded: Label,
}

/// Falls through when the port in R7 is captured inbound, jumps elsewhere otherwise (an
/// excluded port to its counting label in `passed`). Returns the counter of the captured
/// path, or `None` when no port is captured (nothing falls through).
fn inbound_ports(a: &mut Asm, cfg: &CaptureConfig, pass: Label, passed: &InboundPassed) -> Option<Counter> {
    match &cfg.include_inbound_ports {
        PortSpec::Wildcard => {
            a.jmp32_imm(Cond::Eq, Reg::R7, u32::from(cfg.inbound_tunnel_port), pass);
            for r in cfg.exclude_inbound_ports.ranges() {
                let own = cfg.sidecar_inbound_ports.ranges().contains(r);
                port_range(a, Reg::R7, *r, if own { passed.sidecar } else { passed.excluded });
            }
            Some(Counter::CaptureInbound)
        }
        PortSpec::List(ports) if ports.is_empty() => {
            a.ja(pass);
            None
        }
        PortSpec::List(ports) => {
            let hit = a.label();
            a.jmp32_imm(Cond::Eq, Reg::R7, u32::from(cfg.inbound_tunnel_port), pass);
            port_in(a, Reg::R7, ports, hit);
            a.ja(pass);
            a.bind(hit);
            Some(Counter::IncludeInboundPorts)
        }
    }
}

struct Outbound<'a> {
    cfg: &'a CaptureConfig,
    uids: Vec<u32>,
    gids: Vec<u32>,
    netns_cookie: u64,
}

impl Outbound<'_> {
    /// A connect hook. R6 = context, R7 = destination port (host order), R8 = IPv4 address.
    fn program(&self, v6: bool) -> Result<Program, AsmError> {
        let cfg = self.cfg;
        let mut a = Asm::new();
        let allow = a.label();
        let capture = a.label();
        let (ex_port, ex_net) = (a.label(), a.label());
        a.mov64_reg(Reg::R6, Reg::R1);
        a.call(Helper::GetNetnsCookie);
        a.ld_imm64(Reg::R2, self.netns_cookie);
        a.jmp_reg(Cond::Ne, Reg::R0, Reg::R2, allow);
        a.load(Size::W, Reg::R2, Reg::R6, SA_PROTOCOL);
        a.jmp32_imm(Cond::Ne, Reg::R2, IPPROTO_TCP, allow);
        a.call(Helper::GetCurrentUidGid);
        for uid in &self.uids {
            a.jmp32_imm(Cond::Eq, Reg::R0, *uid, allow);
        }
        a.alu64_imm(Alu::Rsh, Reg::R0, 32);
        for gid in &self.gids {
            a.jmp32_imm(Cond::Eq, Reg::R0, *gid, allow);
        }
        // user_port holds the port in network order: swap it.
        a.load(Size::W, Reg::R7, Reg::R6, SA_USER_PORT);
        a.mov64_reg(Reg::R2, Reg::R7);
        a.alu32_imm(Alu::Rsh, Reg::R7, 8);
        a.alu32_imm(Alu::And, Reg::R7, 0xff);
        a.alu32_imm(Alu::And, Reg::R2, 0xff);
        a.alu32_imm(Alu::Lsh, Reg::R2, 8);
        a.alu32_reg(Alu::Or, Reg::R7, Reg::R2);
        port_in(&mut a, Reg::R7, &cfg.exclude_outbound_ports, ex_port);

        let v4 = a.label();
        if v6 {
            // An IPv4-mapped destination (::ffff:a.b.c.d) is an IPv4 connection.
            let native = a.label();
            for (i, w) in [0u32, 0, word([0, 0, 0xff, 0xff])].iter().enumerate() {
                a.load(Size::W, Reg::R2, Reg::R6, SA_USER_IP6 + 4 * i as i16);
                a.jmp32_imm(Cond::Ne, Reg::R2, *w, native);
            }
            a.load(Size::W, Reg::R8, Reg::R6, SA_USER_IP6 + 12);
            a.ja(v4);
            a.bind(native);
            if cfg.enable_ipv6 {
                self.v6_checks(&mut a, allow, ex_net, capture);
            } else {
                a.ja(allow);
            }
        } else {
            a.load(Size::W, Reg::R8, Reg::R6, SA_USER_IP4);
        }
        a.bind(v4);
        self.v4_checks(&mut a, allow, ex_net, capture);

        if a.is_used(capture) {
            a.bind(capture);
            count(&mut a, CONNECT_COUNTERS, Counter::CaptureOutbound);
            a.store_imm(Size::W, Reg::R10, -4, EBPF_OUTBOUND_MARK as i32);
            a.mov64_reg(Reg::R1, Reg::R6);
            a.mov64_imm(Reg::R2, SOL_SOCKET);
            a.mov64_imm(Reg::R3, SO_MARK);
            a.mov64_reg(Reg::R4, Reg::R10);
            a.alu64_imm(Alu::Add, Reg::R4, -4);
            a.mov64_imm(Reg::R5, 4);
            a.call(Helper::Setsockopt);
        }
        a.bind(allow);
        a.ret(1);
        count_blocks(
            &mut a,
            CONNECT_COUNTERS,
            &[(ex_port, Counter::ExcludeOutboundPorts), (ex_net, Counter::ExcludeOutboundIpRanges)],
            allow,
        );
        a.finish()
    }

    /// Istio's outbound order after the owner and excluded-port checks: loopback and excluded
    /// ranges pass, included ports are captured, then included ranges.
    fn v4_checks(&self, a: &mut Asm, allow: Label, excluded: Label, capture: Label) {
        let cfg = self.cfg;
        a.mov64_reg(Reg::R2, Reg::R8);
        a.alu32_imm(Alu::And, Reg::R2, 0xff);
        a.jmp32_imm(Cond::Eq, Reg::R2, 127, allow);
        for net in cfg.exclude_outbound_ip_ranges.v4() {
            v4_in(a, Reg::R8, Reg::R2, net, excluded);
        }
        port_in(a, Reg::R7, &cfg.include_outbound_ports, capture);
        match &cfg.include_outbound_ip_ranges {
            IpRangeSpec::Wildcard => a.ja(capture),
            IpRangeSpec::List(set) => {
                for net in set.v4() {
                    v4_in(a, Reg::R8, Reg::R2, net, capture);
                }
                a.ja(allow);
            }
        }
    }

    fn v6_checks(&self, a: &mut Asm, allow: Label, excluded: Label, capture: Label) {
        let cfg = self.cfg;
        v6_is(a, Reg::R6, SA_USER_IP6, Reg::R2, Ipv6Addr::LOCALHOST, allow);
        for net in cfg.exclude_outbound_ip_ranges.v6() {
            v6_in(a, Reg::R6, SA_USER_IP6, Reg::R2, net, excluded);
        }
        port_in(a, Reg::R7, &cfg.include_outbound_ports, capture);
        match &cfg.include_outbound_ip_ranges {
            IpRangeSpec::Wildcard => a.ja(capture),
            IpRangeSpec::List(set) => {
                for net in set.v6() {
                    v6_in(a, Reg::R6, SA_USER_IP6, Reg::R2, net, capture);
                }
                a.ja(allow);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IstioArgs;
    use meshpass_settings::IfaceName;

    fn args() -> IstioArgs {
        IstioArgs {
            proxy_uid: Some("1337".into()),
            include_inbound_ports: Some("*".into()),
            exclude_inbound_ports: Some("15090,15021,15020,5000".into()),
            include_ip_ranges: Some("*".into()),
            exclude_ip_ranges: Some("10.0.0.0/8".into()),
            exclude_outbound_ports: Some("3306".into()),
            ..Default::default()
        }
    }

    fn cfg(a: IstioArgs) -> CaptureConfig {
        a.to_config().expect("valid")
    }

    fn setting_of(e: EbpfError) -> &'static str {
        match e {
            EbpfError::Unsupported { setting, .. } => setting,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn settings_without_meaning_here_are_refused_by_name() {
        let iface = |s: &str| IfaceName::parse(s).expect("iface");
        let mut c = cfg(args());
        c.reroute_virtual_interfaces = vec![iface("virt0")];
        assert_eq!(setting_of(compile_ebpf(&c, 1).expect_err("refused")), "kube-virt-interfaces");
        let mut c = cfg(args());
        c.exclude_interfaces = vec![iface("eth9")];
        assert_eq!(setting_of(compile_ebpf(&c, 1).expect_err("refused")), "exclude-interfaces");
        let c = cfg(IstioArgs { redirect_dns: true, capture_all_dns: true, ..args() });
        assert_eq!(setting_of(compile_ebpf(&c, 1).expect_err("refused")), "redirect-dns");
        let c = cfg(IstioArgs { drop_invalid: true, ..args() });
        assert_eq!(setting_of(compile_ebpf(&c, 1).expect_err("refused")), "drop-invalid");
        let c = cfg(IstioArgs { untrack_excluded_inbound: true, ..args() });
        assert_eq!(setting_of(compile_ebpf(&c, 1).expect_err("refused")), "untrack-excluded-inbound");
        let c = cfg(IstioArgs { owner_groups_exclude: Some("2000".into()), ..args() });
        assert_eq!(setting_of(compile_ebpf(&c, 1).expect_err("refused")), "outbound owner groups");
        let c = cfg(IstioArgs { proxy_uid: Some("istio-proxy".into()), ..args() });
        let e = compile_ebpf(&c, 1).expect_err("refused");
        assert!(e.to_string().contains("proxy-uid = istio-proxy"), "{e}");
    }

    #[test]
    fn same_settings_same_bytes_and_the_cookie_is_in_the_connect_hooks() {
        let a = compile_ebpf(&cfg(args()), 0x1122_3344_5566_7788).expect("compiles");
        let b = compile_ebpf(&cfg(args()), 0x1122_3344_5566_7788).expect("compiles");
        assert_eq!(a, b);
        assert!(a.connect4.listing().contains("r2 = 0x1122334455667788 ll"), "{}", a.connect4);
        assert!(a.connect6.listing().contains("r2 = 0x1122334455667788 ll"));
        let slots = |p: &Program| p.maps.iter().map(|m| m.slot).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(slots(&a.sk_lookup), [0, 1].into(), "listener map and counters");
        assert_eq!(slots(&a.connect4), [0].into(), "counters");
        assert_eq!(a.proxy_owner, (1337, 1337));
    }

    #[test]
    fn excluded_ports_and_ranges_become_compares() {
        let p = compile_ebpf(&cfg(IstioArgs { exclude_inbound_ports: Some("5000,8000-8100".into()), ..args() }), 1)
            .expect("compiles");
        let l = p.sk_lookup.listing();
        assert!(l.contains("if w7 == 5000 goto"), "{l}");
        assert!(l.contains("if w7 < 8000 goto") && l.contains("if w7 <= 8100 goto"), "{l}");
        assert!(l.contains("if w7 == 15008 goto"), "the tunnel port is never captured: {l}");
        // 10.0.0.0/8 as the connect hook sees it: the first octet, network order loaded
        // little-endian.
        let c = p.connect4.listing();
        assert!(c.contains("w2 &= 255") && c.contains("if w2 == 10 goto"), "{c}");
        assert!(c.contains("if w7 == 3306 goto"), "{c}");
    }

    #[test]
    fn nothing_captured_inbound_means_no_inbound_hand_off() {
        let p = compile_ebpf(&cfg(IstioArgs { include_inbound_ports: Some(String::new()), ..args() }), 1)
            .expect("compiles");
        let l = p.sk_lookup.listing();
        assert!(!l.contains("*(u32 *)(r10 -4) = 0"), "no inbound slot: {l}");
        assert!(l.contains("*(u32 *)(r10 -4) = 1"), "outbound still handed off: {l}");
        // Nothing captured outbound either: the connect hooks never set the mark.
        let p =
            compile_ebpf(&cfg(IstioArgs { include_ip_ranges: Some(String::new()), ..args() }), 1).expect("compiles");
        assert!(!p.connect4.listing().contains("call setsockopt"), "{}", p.connect4);
    }

    #[test]
    fn passthrough_is_counted_per_kind_of_port() {
        let p = compile_ebpf(&cfg(args()), 1).expect("compiles");
        let l = p.sk_lookup.listing();
        // Counter indices as stored before the map lookup.
        for c in [Counter::CaptureInbound, Counter::ExcludeInboundPorts] {
            assert!(l.contains(&format!("*(u32 *)(r10 -8) = {}", c as u32)), "{c:?}: {l}");
        }
        assert!(l.contains("lock *(u64 *)(r0 +0) += r1"), "{l}");
        // Istio's injector config marks 15090/15021/15020 as the sidecar's own.
        let mut c = cfg(args());
        c.sidecar_inbound_ports = PortSet::from_ports([15090, 15021, 15020]);
        let l = compile_ebpf(&c, 1).expect("compiles").sk_lookup.listing();
        assert!(l.contains(&format!("*(u32 *)(r10 -8) = {}", Counter::SidecarPorts as u32)), "{l}");
        let c4 = p.connect4.listing();
        for c in [Counter::CaptureOutbound, Counter::ExcludeOutboundPorts, Counter::ExcludeOutboundIpRanges] {
            assert!(c4.contains(&format!("*(u32 *)(r10 -8) = {}", c as u32)), "{c:?}: {c4}");
        }
        let labels: Vec<_> = Counter::ALL.iter().map(|c| c.label()).collect();
        assert!(labels.contains(&"exclude-inbound-ports") && labels.contains(&"exclude-outbound-ip-ranges"));
    }

    #[test]
    fn ipv6_is_handled_only_when_enabled() {
        let v4 = compile_ebpf(&cfg(args()), 1).expect("compiles");
        let v6 = compile_ebpf(&cfg(IstioArgs { enable_ipv6: true, ..args() }), 1).expect("compiles");
        assert!(!v4.sk_lookup.listing().contains("= 2\n"), "no IPv6 inbound slot without IPv6");
        assert!(v6.sk_lookup.listing().contains("*(u32 *)(r10 -4) = 2"), "{}", v6.sk_lookup);
        assert!(v6.sk_lookup.len() > v4.sk_lookup.len());
        // IPv4-mapped destinations are IPv4 connections in both.
        for p in [&v4, &v6] {
            assert!(p.connect6.listing().contains("if w2 != 0xffff0000 goto"), "{}", p.connect6);
        }
    }
}
