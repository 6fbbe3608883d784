//! [`CaptureConfig`]: everything that decides the rules, at the level of istio-iptables'
//! flags, and how Istio's sidecar injector derives it from a workload's annotations.

use crate::ir::OwnerId;
use meshpass_settings::{
    effective, CidrSet, IfaceName, InterceptionMode, IpNet, IpRangeSpec, MeshDefaults, PortRange, PortSet, PortSpec,
    Settings,
};
use serde::Serialize;
use std::net::IpAddr;

/// Default outbound capture port (`-p`).
pub const PROXY_PORT: u16 = 15001;
/// Default inbound capture port (`-z`).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// HBONE tunnel port, never redirected inbound (`-e`).
pub const INBOUND_TUNNEL_PORT: u16 = 15008;
/// The agent's status port (excluded inbound by the injector).
pub const STATUS_PORT: u16 = 15020;
/// The proxy's health port, always excluded inbound.
pub const HEALTH_PORT: u16 = 15021;
/// The proxy's Prometheus port, always excluded inbound.
pub const PROMETHEUS_PORT: u16 = 15090;
/// Where captured DNS goes.
pub const DNS_CAPTURE_PORT: u16 = 15053;
/// Default proxy UID and GID, and TPROXY mark.
pub const PROXY_ID: u32 = 1337;
/// Mark for proxy → app traffic over `lo` in TPROXY mode.
pub const OUTBOUND_MARK: u32 = 1338;
/// Default TPROXY routing table.
pub const TPROXY_ROUTE_TABLE: u32 = 133;

/// Which owner groups' outbound traffic is captured (`ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "mode", content = "groups", rename_all = "snake_case")]
pub enum OwnerGroups {
    /// Every group except these (include `*`).
    AllExcept(Vec<OwnerId>),
    /// Only these groups (an empty list captures nothing).
    Only(Vec<OwnerId>),
}

impl Default for OwnerGroups {
    fn default() -> Self {
        OwnerGroups::AllExcept(Vec::new())
    }
}

/// A DNS server from resolv.conf, kept as written (Istio appends `/32` or `/128` to the text).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct DnsServer {
    /// The address.
    pub addr: IpAddr,
}

/// The full capture configuration: istio-iptables' `Config`, typed.
///
/// Every list is already validated, so no field can inject anything into a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CaptureConfig {
    /// Outbound capture port (`-p`, 15001).
    pub proxy_port: u16,
    /// Inbound capture port (`-z`, 15006).
    pub inbound_capture_port: u16,
    /// Tunnel port (`-e`, 15008).
    pub inbound_tunnel_port: u16,
    /// UIDs whose traffic is the proxy's own (`-u`).
    pub proxy_uids: Vec<OwnerId>,
    /// GIDs whose traffic is the proxy's own (`-g`; istio-iptables defaults it to `-u`).
    pub proxy_gids: Vec<OwnerId>,
    /// Inbound interception mode (`-m`).
    pub mode: InterceptionMode,
    /// TPROXY mark (`-t`).
    pub tproxy_mark: u32,
    /// TPROXY routing table (`-r`).
    pub tproxy_route_table: u32,
    /// Captured inbound ports (`-b`): `*`, a list, or empty (no inbound capture).
    pub include_inbound_ports: PortSpec,
    /// Inbound ports that bypass the sidecar (`-d`), honoured only with `-b '*'`.
    pub exclude_inbound_ports: PortSet,
    /// The entries of `exclude_inbound_ports` that the mesh excludes for itself rather than the
    /// operator: the sidecar's Prometheus (15090), health (15021) and status (15020) ports.
    /// They bypass like the others; only their rules get a label of their own
    /// ([`crate::compile::labels::SIDECAR_PORTS`]), so that the passthrough counters count the
    /// operator's ports alone and not every scrape and probe. Empty when not known (a config
    /// read from istio-iptables flags), and then every exclusion is labelled as the operator's.
    pub sidecar_inbound_ports: PortSet,
    /// Outbound ports captured whatever the address (`-q`).
    pub include_outbound_ports: PortSet,
    /// Outbound ports that bypass the sidecar, TCP and UDP (`-o`).
    pub exclude_outbound_ports: PortSet,
    /// Captured destinations (`-i`).
    pub include_outbound_ip_ranges: IpRangeSpec,
    /// Destinations that bypass the sidecar (`-x`).
    pub exclude_outbound_ip_ranges: CidrSet,
    /// Interfaces whose inbound traffic goes to the outbound listener (`-k`).
    pub reroute_virtual_interfaces: Vec<IfaceName>,
    /// Interfaces never captured (`-c`).
    pub exclude_interfaces: Vec<IfaceName>,
    /// Capture DNS to the agent (`--redirect-dns`).
    pub redirect_dns: bool,
    /// Capture all port-53 traffic, not only to resolv.conf's servers (`--capture-all-dns`).
    pub capture_all_dns: bool,
    /// IPv4 name servers (from resolv.conf).
    pub dns_servers_v4: Vec<IpAddr>,
    /// IPv6 name servers (from resolv.conf).
    pub dns_servers_v6: Vec<IpAddr>,
    /// Drop conntrack-INVALID packets (`--drop-invalid`).
    pub drop_invalid: bool,
    /// Let connections to excluded inbound ports skip connection tracking as well as the
    /// sidecar (raw-table `NOTRACK` rules; meshpass's own, not an istio-iptables flag).
    ///
    /// Istio's rules leave excluded traffic tracked: the nat table's REDIRECT turns conntrack
    /// on for the whole namespace, and every excluded connection then takes a conntrack entry
    /// although nothing rewrites it. Untracked, it takes none. It is not a CPU saving: the raw
    /// rules see every packet and the hooks stay registered, which costs about what conntrack
    /// did (bench/proxy/RESULTS.md). Only non-loopback traffic is untracked (loopback stays
    /// exactly as Istio has it), and interfaces of `reroute_virtual_interfaces` are left
    /// alone. The price: an *outbound* connection whose local port is an excluded inbound
    /// port is untracked too, so it bypasses the sidecar. The kernel never picks a port that
    /// a socket listens on as an ephemeral port, so this only happens to an app that binds
    /// such a port for a connection of its own, or when nothing listens on the port.
    pub untrack_excluded_inbound: bool,
    /// Emit IPv6 rules (Istio detects this from the pod's address).
    pub enable_ipv6: bool,
    /// Owner-group filter.
    pub owner_groups: OwnerGroups,
    /// Loopback range never captured on IPv4 (`ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`).
    pub ipv4_loopback_cidr: IpNet,
}

impl Default for CaptureConfig {
    /// istio-iptables' own defaults: note that these capture *nothing* by port or address,
    /// exactly as running `istio-iptables` without `-b`/`-i` does.
    fn default() -> Self {
        Self {
            proxy_port: PROXY_PORT,
            inbound_capture_port: INBOUND_CAPTURE_PORT,
            inbound_tunnel_port: INBOUND_TUNNEL_PORT,
            proxy_uids: vec![OwnerId::numeric(PROXY_ID)],
            proxy_gids: vec![OwnerId::numeric(PROXY_ID)],
            mode: InterceptionMode::Redirect,
            tproxy_mark: PROXY_ID,
            tproxy_route_table: TPROXY_ROUTE_TABLE,
            include_inbound_ports: PortSpec::List(PortSet::new()),
            exclude_inbound_ports: PortSet::new(),
            sidecar_inbound_ports: PortSet::new(),
            include_outbound_ports: PortSet::new(),
            exclude_outbound_ports: PortSet::new(),
            include_outbound_ip_ranges: IpRangeSpec::List(CidrSet::new()),
            exclude_outbound_ip_ranges: CidrSet::new(),
            reroute_virtual_interfaces: Vec::new(),
            exclude_interfaces: Vec::new(),
            redirect_dns: false,
            capture_all_dns: false,
            dns_servers_v4: Vec::new(),
            dns_servers_v6: Vec::new(),
            drop_invalid: false,
            untrack_excluded_inbound: false,
            enable_ipv6: false,
            owner_groups: OwnerGroups::default(),
            ipv4_loopback_cidr: loopback_v4(),
        }
    }
}

fn loopback_v4() -> IpNet {
    IpNet::host(IpAddr::from([127, 0, 0, 1]))
}

/// The mesh-wide values Istio's injector template combines with a pod's annotations
/// (Helm `values.global.proxy.*` and `meshConfig.defaultConfig`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectorValues {
    /// The capture values a pod gets for every annotation it does not have
    /// (`global.proxy.includeIPRanges`, `excludeIPRanges`, `…InboundPorts`,
    /// `…OutboundPorts`, `statusPort`); see [`meshpass_settings::mesh`].
    pub defaults: MeshDefaults,
    /// `meshConfig.defaultConfig.interceptionMode` (default REDIRECT).
    pub interception_mode: InterceptionMode,
    /// The proxy's UID (`runAsUser`; default 1337).
    pub proxy_uid: u32,
    /// The proxy's GID; the injector passes no `-g`, so istio-iptables uses the UID.
    pub proxy_gid: Option<u32>,
    /// Emit IPv6 rules.
    pub enable_ipv6: bool,
    /// DNS capture (`ISTIO_META_DNS_CAPTURE`).
    pub redirect_dns: bool,
    /// Capture all DNS.
    pub capture_all_dns: bool,
    /// Name servers (resolv.conf).
    pub dns_servers: Vec<IpAddr>,
    /// `INVALID_DROP`.
    pub drop_invalid: bool,
    /// meshpass's own: excluded inbound ports skip conntrack too
    /// ([`CaptureConfig::untrack_excluded_inbound`]).
    pub untrack_excluded_inbound: bool,
}

impl Default for InjectorValues {
    fn default() -> Self {
        Self {
            defaults: MeshDefaults::default(),
            interception_mode: InterceptionMode::Redirect,
            proxy_uid: PROXY_ID,
            proxy_gid: None,
            enable_ipv6: false,
            redirect_dns: false,
            capture_all_dns: false,
            dns_servers: Vec::new(),
            drop_invalid: false,
            untrack_excluded_inbound: false,
        }
    }
}

impl CaptureConfig {
    /// What Istio's injector (non-CNI `istio-init`) passes to istio-iptables for a pod with
    /// these annotations. `None` when the interception mode is `NONE` (no capture at all).
    ///
    /// Each list is the pod's [`meshpass_settings::effective`] value: its annotation when
    /// present, else the mesh-wide one, never both. The inbound exclusions are
    /// `15090,15021`, then that list, then the status port unless it is 0 or already listed,
    /// as the injector template does.
    pub fn from_settings(s: &Settings, v: &InjectorValues) -> Option<Self> {
        let mode = s.interception_mode.unwrap_or(v.interception_mode);
        if mode == InterceptionMode::None {
            return None;
        }
        let e = effective(s, &v.defaults);
        let mut exclude_inbound = PortSet::from_ports([PROMETHEUS_PORT, HEALTH_PORT]);
        let mut sidecar_inbound = exclude_inbound.clone();
        for r in &e.exclude_inbound_ports.value {
            exclude_inbound.insert(*r);
        }
        if let Some(p) = PortRange::single(e.status_port.value) {
            exclude_inbound.insert(p);
            sidecar_inbound.insert(p);
        }
        let (v4, v6): (Vec<_>, Vec<_>) = v.dns_servers.iter().partition(|a| a.is_ipv4());
        Some(Self {
            mode,
            proxy_uids: vec![OwnerId::numeric(v.proxy_uid)],
            proxy_gids: vec![OwnerId::numeric(v.proxy_gid.unwrap_or(v.proxy_uid))],
            include_inbound_ports: e.include_inbound_ports.value,
            exclude_inbound_ports: exclude_inbound,
            sidecar_inbound_ports: sidecar_inbound,
            include_outbound_ports: e.include_outbound_ports.value,
            exclude_outbound_ports: e.exclude_outbound_ports.value,
            include_outbound_ip_ranges: e.include_outbound_ip_ranges.value,
            exclude_outbound_ip_ranges: e.exclude_outbound_ip_ranges.value,
            reroute_virtual_interfaces: s.virtual_interfaces().cloned().unwrap_or_default(),
            exclude_interfaces: s.exclude_interfaces.clone().unwrap_or_default(),
            redirect_dns: v.redirect_dns,
            capture_all_dns: v.capture_all_dns,
            dns_servers_v4: v4.into_iter().copied().collect(),
            dns_servers_v6: v6.into_iter().copied().collect(),
            drop_invalid: v.drop_invalid,
            untrack_excluded_inbound: v.untrack_excluded_inbound,
            enable_ipv6: v.enable_ipv6,
            ..Self::default()
        })
    }

    /// Whether DNS capture is in effect: asked for, and either capture-all or some server
    /// known. Istio silently turns it off otherwise.
    pub fn dns_active(&self) -> bool {
        self.redirect_dns
            && (self.capture_all_dns || !self.dns_servers_v4.is_empty() || !self.dns_servers_v6.is_empty())
    }

    /// The istio-iptables command line equivalent to this config (what `istio-init` runs).
    pub fn to_istio_args(&self) -> Vec<String> {
        let join = |v: &[OwnerId]| v.iter().map(OwnerId::as_str).collect::<Vec<_>>().join(",");
        let ifaces = |v: &[IfaceName]| v.iter().map(IfaceName::as_str).collect::<Vec<_>>().join(",");
        let mut a: Vec<String> = vec![
            "-p".into(),
            self.proxy_port.to_string(),
            "-z".into(),
            self.inbound_capture_port.to_string(),
            "-u".into(),
            join(&self.proxy_uids),
        ];
        if self.proxy_gids != self.proxy_uids {
            a.extend(["-g".into(), join(&self.proxy_gids)]);
        }
        a.extend(["-m".into(), self.mode.to_string()]);
        a.extend(["-i".into(), self.include_outbound_ip_ranges.to_string()]);
        a.extend(["-x".into(), self.exclude_outbound_ip_ranges.to_string()]);
        a.extend(["-b".into(), self.include_inbound_ports.to_string()]);
        a.extend(["-d".into(), self.exclude_inbound_ports.to_string()]);
        if !self.include_outbound_ports.is_empty() {
            a.extend(["-q".into(), self.include_outbound_ports.to_string()]);
        }
        if !self.exclude_outbound_ports.is_empty() {
            a.extend(["-o".into(), self.exclude_outbound_ports.to_string()]);
        }
        if !self.reroute_virtual_interfaces.is_empty() {
            a.extend(["-k".into(), ifaces(&self.reroute_virtual_interfaces)]);
        }
        if !self.exclude_interfaces.is_empty() {
            a.extend(["-c".into(), ifaces(&self.exclude_interfaces)]);
        }
        if self.redirect_dns {
            a.push("--redirect-dns".into());
        }
        if self.capture_all_dns {
            a.push("--capture-all-dns".into());
        }
        if self.drop_invalid {
            a.push("--drop-invalid".into());
        }
        if self.untrack_excluded_inbound {
            // Not istio-iptables': `meshpass iptables` takes it, istio-iptables would refuse it.
            a.push("--untrack-excluded-inbound".into());
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpass_settings::{keys, mesh::values};
    use std::collections::BTreeMap;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_annotations(&m).expect("valid")
    }

    #[test]
    fn mesh_wide_values_apply_where_the_annotation_is_absent_and_never_merge() {
        let mut v = InjectorValues::default();
        v.defaults.set_value(values::EXCLUDE_IP_RANGES, "198.19.0.2/32").expect("valid");
        v.defaults.set_value(values::EXCLUDE_INBOUND_PORTS, "9000").expect("valid");
        let args = |s: &Settings| CaptureConfig::from_settings(s, &v).expect("capture").to_istio_args().join(" ");
        let none = args(&Settings::default());
        assert!(none.contains("-x 198.19.0.2/32") && none.contains("-d 15090,15021,9000,15020"), "{none}");
        let own =
            args(&settings(&[(keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8"), (keys::EXCLUDE_INBOUND_PORTS, "")]));
        assert!(own.contains("-x 10.0.0.0/8 ") && own.contains("-d 15090,15021,15020"), "replaced, not merged: {own}");
    }
}
