//! Properties of `explain_plan` over random capture configurations: exclusions are never
//! captured, whatever else is configured (with the exceptions Istio's layout documents).

use meshpass_capture::explain::{explain_plan, Flow, Verdict};
use meshpass_capture::ir::{OwnerId, Proto};
use meshpass_capture::{compile, CaptureConfig, OwnerGroups};
use meshpass_settings::{CidrSet, IfaceName, InterceptionMode, IpNet, IpRangeSpec, PortRange, PortSet, PortSpec};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const POD4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

fn v4net() -> impl Strategy<Value = IpNet> {
    // Never loopback: the first octet is one of these.
    (prop::sample::select(vec![8u8, 10, 100, 172, 192, 198, 203]), any::<[u8; 3]>(), 0u8..=32)
        .prop_map(|(a, [b, c, d], len)| IpNet::new(IpAddr::from([a, b, c, d]), len).expect("len <= 32"))
}

fn v6net() -> impl Strategy<Value = IpNet> {
    (any::<u64>(), 16u8..=128).prop_map(|(low, len)| {
        let addr = (0x2001_0db8u128 << 96) | u128::from(low);
        IpNet::new(IpAddr::V6(Ipv6Addr::from(addr)), len).expect("len <= 128")
    })
}

fn port_range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        3 => (1u16..=65535).prop_map(|p| PortRange::single(p).expect("non-zero")),
        1 => (1u16..=65000, 0u16..500).prop_map(|(s, w)| PortRange::new(s, s + w).expect("ordered")),
        // Ports the mesh itself uses, so that exclusions collide with them.
        2 => prop::sample::select(vec![53u16, 80, 443, 15001, 15006, 15008, 15020, 15021, 15053, 15090])
            .prop_map(|p| PortRange::single(p).expect("non-zero")),
    ]
}

fn port_set(max: usize) -> impl Strategy<Value = PortSet> {
    prop::collection::vec(port_range(), 0..max).prop_map(PortSet::from_ranges)
}

fn ids(max: usize) -> impl Strategy<Value = Vec<OwnerId>> {
    prop::collection::vec(prop::sample::select(vec![0u32, 1000, 1337, 2000, 3000]), 0..max)
        .prop_map(|v| v.into_iter().map(OwnerId::numeric).collect())
}

fn iface(name: &str) -> IfaceName {
    IfaceName::parse(name).expect("valid name")
}

prop_compose! {
    fn config()(
        tproxy in any::<bool>(),
        include_wild in any::<bool>(),
        include in prop::collection::vec(prop_oneof![v4net(), v6net()], 0..3),
        exclude in prop::collection::vec(prop_oneof![
            3 => v4net(),
            2 => v6net(),
            // The pod's own range, so that the proxy-to-self exception is exercised.
            1 => Just(IpNet::new(IpAddr::V4(POD4), 16).expect("len")),
        ], 0..4),
        ports in (port_set(4), port_set(3), port_set(4), port_set(3)),
        inbound_wild in any::<bool>(),
        dns in (any::<bool>(), any::<bool>(), prop::collection::vec(v4net(), 0..2)),
        groups in (any::<bool>(), ids(3)),
        ifaces in (any::<bool>(), any::<bool>()),
        ipv6 in any::<bool>(),
        second_uid in any::<bool>(),
        untrack in any::<bool>(),
    ) -> CaptureConfig {
        let (exclude_out, include_out, exclude_in, include_in) = ports;
        let mut c = CaptureConfig {
            mode: if tproxy { InterceptionMode::Tproxy } else { InterceptionMode::Redirect },
            include_outbound_ip_ranges: if include_wild {
                IpRangeSpec::Wildcard
            } else {
                IpRangeSpec::List(CidrSet::from_nets(include))
            },
            exclude_outbound_ip_ranges: CidrSet::from_nets(exclude),
            exclude_outbound_ports: exclude_out,
            include_outbound_ports: include_out,
            exclude_inbound_ports: exclude_in,
            include_inbound_ports: if inbound_wild { PortSpec::Wildcard } else { PortSpec::List(include_in) },
            redirect_dns: dns.0,
            capture_all_dns: dns.1,
            dns_servers_v4: dns.2.iter().map(|n| n.addr()).collect(),
            owner_groups: if groups.0 { OwnerGroups::AllExcept(groups.1) } else { OwnerGroups::Only(groups.1) },
            exclude_interfaces: if ifaces.0 { vec![iface("eth1")] } else { vec![] },
            reroute_virtual_interfaces: if ifaces.1 { vec![iface("virt0")] } else { vec![] },
            enable_ipv6: ipv6,
            untrack_excluded_inbound: untrack,
            ..CaptureConfig::default()
        };
        if second_uid {
            c.proxy_uids.push(OwnerId::numeric(2000));
        }
        c
    }
}

/// An address inside `net`, chosen by `pick`.
fn inside(net: IpNet, pick: u128) -> IpAddr {
    match net.addr() {
        IpAddr::V4(a) => {
            let mask = if net.is_empty() { 0 } else { u32::MAX << (32 - u32::from(net.len())) };
            IpAddr::V4(Ipv4Addr::from((u32::from(a) & mask) | (pick as u32 & !mask)))
        }
        IpAddr::V6(a) => {
            let mask = if net.is_empty() { 0 } else { u128::MAX << (128 - u32::from(net.len())) };
            IpAddr::V6(Ipv6Addr::from((u128::from(a) & mask) | (pick & !mask)))
        }
    }
}

fn owner() -> impl Strategy<Value = (u32, u32)> {
    prop::sample::select(vec![(1000u32, 1000u32), (1337, 1337), (0, 1337), (2000, 2000), (1000, 3000)])
}

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A destination inside an excluded CIDR is not captured. Istio's documented
    /// exceptions come before the exclusions in ISTIO_OUTPUT and are left out: DNS capture
    /// (port 53 with DNS capture on) and the proxy's own calls to the pod's address over lo.
    #[test]
    fn excluded_cidrs_are_never_captured(
        cfg in config(),
        which in any::<prop::sample::Index>(),
        pick in prop_oneof![any::<u128>(), Just(u128::from(u32::from(POD4)))],
        port in prop_oneof![1u16..=65535, Just(53u16), Just(15008u16)],
        proto in proto(),
        (uid, gid) in owner(),
    ) {
        let nets = cfg.exclude_outbound_ip_ranges.nets().to_vec();
        prop_assume!(!nets.is_empty());
        let dst = inside(nets[which.index(nets.len())], pick);
        prop_assume!(!dst.is_loopback() && dst != IpAddr::V4(POD4));
        prop_assume!(!(cfg.dns_active() && port == 53));
        let flow = Flow::outbound(dst, port).pod_ip(IpAddr::V4(POD4)).proto(proto).uid(uid).gid(gid);
        let e = explain_plan(&compile(&cfg), &flow);
        prop_assert!(!e.verdict.is_captured() && e.verdict != Verdict::Undetermined, "{cfg:?}\n{e}");
    }

    /// A destination port in excludeOutboundPorts is never captured: those RETURNs come
    /// first, before DNS capture and the proxy's self-redirect.
    #[test]
    fn excluded_outbound_ports_are_never_captured(
        cfg in config(),
        which in any::<prop::sample::Index>(),
        offset in any::<u16>(),
        dst in prop_oneof![
            v4net().prop_map(|n| n.addr()),
            v6net().prop_map(|n| n.addr()),
            Just(IpAddr::V4(POD4)),
            Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ],
        proto in proto(),
        (uid, gid) in owner(),
    ) {
        let ranges = cfg.exclude_outbound_ports.ranges().to_vec();
        prop_assume!(!ranges.is_empty());
        let r = ranges[which.index(ranges.len())];
        let port = r.start() + offset % (r.end() - r.start() + 1);
        let flow = Flow::outbound(dst, port).pod_ip(IpAddr::V4(POD4)).proto(proto).uid(uid).gid(gid);
        let e = explain_plan(&compile(&cfg), &flow);
        prop_assert!(!e.verdict.is_captured() && e.verdict != Verdict::Undetermined, "{cfg:?}\n{e}");
    }

    /// With includeInboundPorts `*`, an excluded inbound port is never captured, except on
    /// a virtual interface (rerouted to the outbound listener before any inbound rule).
    #[test]
    fn excluded_inbound_ports_are_never_captured(
        cfg in config(),
        which in any::<prop::sample::Index>(),
        offset in any::<u16>(),
        iface in prop::sample::select(vec!["eth0", "eth1", "lo", "eth2"]),
        v6 in any::<bool>(),
        from_passthrough in any::<bool>(),
    ) {
        let mut cfg = cfg;
        cfg.include_inbound_ports = PortSpec::Wildcard;
        let ranges = cfg.exclude_inbound_ports.ranges().to_vec();
        prop_assume!(!ranges.is_empty());
        let r = ranges[which.index(ranges.len())];
        let port = r.start() + offset % (r.end() - r.start() + 1);
        let dst = if v6 { "2001:db8::10".parse().expect("addr") } else { IpAddr::V4(POD4) };
        let mut flow = Flow::inbound_to(dst, port).in_iface(iface);
        if from_passthrough {
            flow = flow.from(if v6 { "::6".parse().expect("addr") } else { "127.0.0.6".parse().expect("addr") });
        }
        let e = explain_plan(&compile(&cfg), &flow);
        prop_assert!(!e.verdict.is_captured() && e.verdict != Verdict::Undetermined, "{cfg:?}\n{e}");
    }
}
