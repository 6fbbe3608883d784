//! istio-iptables' configuration as strings (flags and environment variables), validated
//! into a [`CaptureConfig`].
//!
//! istio-iptables copies most values straight into rules; meshpass validates every one of
//! them, so `meshpass iptables` accepts what Istio accepts for real configurations but can
//! never be made to emit anything but the intended rule. List syntax is Istio's
//! `config.Split`: comma-separated, empty elements dropped.

use crate::config::{CaptureConfig, OwnerGroups};
use crate::ir::OwnerId;
use meshpass_settings::{
    CidrSet, IfaceName, InterceptionMode, IpNet, IpRangeSpec, PortSet, PortSpec, Reason, SettingError, SettingErrors,
};
use std::net::IpAddr;

/// Names used in error messages: the long flag, as the user typed it.
pub mod flag {
    /// `-p`.
    pub const PROXY_PORT: &str = "--envoy-port";
    /// `-z`.
    pub const INBOUND_CAPTURE_PORT: &str = "--inbound-capture-port";
    /// `-e`.
    pub const INBOUND_TUNNEL_PORT: &str = "--inbound-tunnel-port";
    /// `-u`.
    pub const PROXY_UID: &str = "--proxy-uid";
    /// `-g`.
    pub const PROXY_GID: &str = "--proxy-gid";
    /// `-m`.
    pub const MODE: &str = "--istio-inbound-interception-mode";
    /// `-t`.
    pub const TPROXY_MARK: &str = "--istio-inbound-tproxy-mark";
    /// `-r`.
    pub const ROUTE_TABLE: &str = "--istio-inbound-tproxy-route-table";
    /// `-b`.
    pub const INBOUND_PORTS: &str = "--istio-inbound-ports";
    /// `-d`.
    pub const LOCAL_EXCLUDE_PORTS: &str = "--istio-local-exclude-ports";
    /// `-q`.
    pub const OUTBOUND_PORTS: &str = "--istio-outbound-ports";
    /// `-o`.
    pub const OUTBOUND_PORTS_EXCLUDE: &str = "--istio-local-outbound-ports-exclude";
    /// `-i`.
    pub const SERVICE_CIDR: &str = "--istio-service-cidr";
    /// `-x`.
    pub const SERVICE_EXCLUDE_CIDR: &str = "--istio-service-exclude-cidr";
    /// `-k`.
    pub const KUBE_VIRT_INTERFACES: &str = "--kube-virt-interfaces";
    /// `-c`.
    pub const EXCLUDE_INTERFACES: &str = "--istio-exclude-interfaces";
    /// Owner groups to capture.
    pub const OWNER_GROUPS: &str = "ISTIO_OUTBOUND_OWNER_GROUPS";
    /// Owner groups not to capture.
    pub const OWNER_GROUPS_EXCLUDE: &str = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE";
    /// IPv4 loopback range.
    pub const LOOPBACK_CIDR: &str = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR";
    /// DNS servers (resolv.conf).
    pub const DNS_SERVERS: &str = "nameserver";
}

/// istio-iptables' settings as given (flag or environment), before validation.
/// `None` means "not given": the istio-iptables default applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IstioArgs {
    /// `-p` (15001).
    pub proxy_port: Option<String>,
    /// `-z` (15006).
    pub inbound_capture_port: Option<String>,
    /// `-e` (15008).
    pub inbound_tunnel_port: Option<String>,
    /// `-u` (1337).
    pub proxy_uid: Option<String>,
    /// `-g` (defaults to `-u`).
    pub proxy_gid: Option<String>,
    /// `-m` (REDIRECT; anything but `TPROXY` means REDIRECT, as in Istio).
    pub mode: Option<String>,
    /// `-t` (1337).
    pub tproxy_mark: Option<String>,
    /// `-r` (133).
    pub route_table: Option<String>,
    /// `-b` (empty: no inbound capture).
    pub include_inbound_ports: Option<String>,
    /// `-d`.
    pub exclude_inbound_ports: Option<String>,
    /// `-q`.
    pub include_outbound_ports: Option<String>,
    /// `-o`.
    pub exclude_outbound_ports: Option<String>,
    /// `-i` (empty: nothing captured by address).
    pub include_ip_ranges: Option<String>,
    /// `-x`.
    pub exclude_ip_ranges: Option<String>,
    /// `-k`.
    pub virtual_interfaces: Option<String>,
    /// `-c`.
    pub exclude_interfaces: Option<String>,
    /// `--redirect-dns`.
    pub redirect_dns: bool,
    /// `--capture-all-dns`.
    pub capture_all_dns: bool,
    /// `--drop-invalid`.
    pub drop_invalid: bool,
    /// `--untrack-excluded-inbound` (meshpass's own flag, not istio-iptables':
    /// [`CaptureConfig::untrack_excluded_inbound`]).
    pub untrack_excluded_inbound: bool,
    /// IPv6 rules (detected from the pod address, or forced with `--ipv6`).
    pub enable_ipv6: bool,
    /// Name servers from resolv.conf.
    pub dns_servers: Vec<String>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS` (`None` = `*`; `Some("")` captures nothing).
    pub owner_groups_include: Option<String>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`.
    pub owner_groups_exclude: Option<String>,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` (127.0.0.1/32).
    pub loopback_cidr: Option<String>,
}

/// Istio's `config.Split`: comma-separated, empty elements dropped (no trimming needed for
/// our parsers, which trim where Istio would accept whitespace).
fn split(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').filter(|s| !s.is_empty())
}

struct Check {
    errors: Vec<SettingError>,
}

impl Check {
    fn err(&mut self, key: &str, item: &str, reason: Reason) {
        self.errors.push(SettingError::new(key, item, reason));
    }

    fn port(&mut self, key: &str, v: &Option<String>, default: u16) -> u16 {
        let Some(v) = v else { return default };
        match v.trim().parse::<u16>() {
            Ok(p) if p != 0 && v.trim().bytes().all(|b| b.is_ascii_digit()) => p,
            _ => {
                self.err(key, v, Reason::NotAPort);
                default
            }
        }
    }

    fn number(&mut self, key: &str, v: &Option<String>, default: u32) -> u32 {
        let Some(v) = v else { return default };
        let t = v.trim();
        let parsed = match t.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None if t.bytes().all(|b| b.is_ascii_digit()) => t.parse().ok(),
            None => None,
        };
        parsed.unwrap_or_else(|| {
            self.err(key, v, Reason::Other("is not a number (decimal or 0x hex, 32 bits)".into()));
            default
        })
    }

    fn ports(&mut self, key: &str, v: &Option<String>) -> PortSet {
        let mut set = PortSet::new();
        for item in split(v.as_deref().unwrap_or("")) {
            match meshpass_settings::PortRange::parse(item, true) {
                Ok(r) => set.insert(r),
                Err(reason) => self.err(key, item, reason),
            }
        }
        set
    }

    fn cidrs(&mut self, key: &str, items: &str) -> CidrSet {
        let mut set = CidrSet::new();
        for item in split(items) {
            match IpNet::parse(item) {
                Ok(n) => set.insert(n),
                Err(reason) => self.err(key, item, reason),
            }
        }
        set
    }

    fn ids(&mut self, key: &str, v: &str) -> Vec<OwnerId> {
        let mut out = Vec::new();
        for item in split(v) {
            match OwnerId::parse(item) {
                Some(id) if out.contains(&id) => {}
                Some(id) => out.push(id),
                None => self.err(key, item, Reason::Other("is not a user or group (a number or a name)".into())),
            }
        }
        out
    }

    fn ifaces(&mut self, key: &str, v: &Option<String>) -> Vec<IfaceName> {
        let mut out = Vec::new();
        for item in split(v.as_deref().unwrap_or("")) {
            match IfaceName::parse(item.trim()) {
                Ok(n) if out.contains(&n) => {}
                Ok(n) => out.push(n),
                Err(reason) => self.err(key, item, reason),
            }
        }
        out
    }
}

impl IstioArgs {
    /// Validates everything, reporting every bad item at once.
    pub fn to_config(&self) -> Result<CaptureConfig, SettingErrors> {
        let mut c = Check { errors: Vec::new() };
        let d = CaptureConfig::default();
        let proxy_port = c.port(flag::PROXY_PORT, &self.proxy_port, d.proxy_port);
        let inbound_capture_port =
            c.port(flag::INBOUND_CAPTURE_PORT, &self.inbound_capture_port, d.inbound_capture_port);
        let inbound_tunnel_port = c.port(flag::INBOUND_TUNNEL_PORT, &self.inbound_tunnel_port, d.inbound_tunnel_port);
        let proxy_uids = match &self.proxy_uid {
            Some(v) => c.ids(flag::PROXY_UID, v),
            None => d.proxy_uids.clone(),
        };
        let proxy_gids = match &self.proxy_gid {
            Some(v) => c.ids(flag::PROXY_GID, v),
            None => proxy_uids.clone(),
        };
        let mode = match self.mode.as_deref() {
            Some("TPROXY") => InterceptionMode::Tproxy,
            _ => InterceptionMode::Redirect,
        };
        let tproxy_mark = c.number(flag::TPROXY_MARK, &self.tproxy_mark, d.tproxy_mark);
        let tproxy_route_table = c.number(flag::ROUTE_TABLE, &self.route_table, d.tproxy_route_table);
        let include_inbound_ports = match self.include_inbound_ports.as_deref() {
            Some("*") => PortSpec::Wildcard,
            _ => PortSpec::List(c.ports(flag::INBOUND_PORTS, &self.include_inbound_ports)),
        };
        let exclude_inbound_ports = c.ports(flag::LOCAL_EXCLUDE_PORTS, &self.exclude_inbound_ports);
        let include_outbound_ports = c.ports(flag::OUTBOUND_PORTS, &self.include_outbound_ports);
        let exclude_outbound_ports = c.ports(flag::OUTBOUND_PORTS_EXCLUDE, &self.exclude_outbound_ports);
        let include_outbound_ip_ranges = match self.include_ip_ranges.as_deref() {
            Some("*") => IpRangeSpec::Wildcard,
            v => IpRangeSpec::List(c.cidrs(flag::SERVICE_CIDR, v.unwrap_or(""))),
        };
        let exclude_outbound_ip_ranges = match self.exclude_ip_ranges.as_deref() {
            Some("*") => {
                // istio-iptables: "invalid value for OUTBOUND_IP_RANGES_EXCLUDE".
                c.err(flag::SERVICE_EXCLUDE_CIDR, "*", Reason::WildcardNotAllowed);
                CidrSet::new()
            }
            v => c.cidrs(flag::SERVICE_EXCLUDE_CIDR, v.unwrap_or("")),
        };
        let reroute_virtual_interfaces = c.ifaces(flag::KUBE_VIRT_INTERFACES, &self.virtual_interfaces);
        let exclude_interfaces = c.ifaces(flag::EXCLUDE_INTERFACES, &self.exclude_interfaces);
        let mut dns_servers_v4 = Vec::new();
        let mut dns_servers_v6 = Vec::new();
        for s in &self.dns_servers {
            match s.parse::<IpAddr>() {
                Ok(a) if a.is_ipv4() => dns_servers_v4.push(a),
                Ok(a) => dns_servers_v6.push(a),
                Err(_) => c.err(flag::DNS_SERVERS, s, Reason::Other("is not an IP address".into())),
            }
        }
        let owner_groups = match self.owner_groups_include.as_deref() {
            None | Some("*") => OwnerGroups::AllExcept(
                c.ids(flag::OWNER_GROUPS_EXCLUDE, self.owner_groups_exclude.as_deref().unwrap_or("")),
            ),
            Some(v) => {
                let groups = c.ids(flag::OWNER_GROUPS, v);
                if groups.len() > 64 {
                    c.err(
                        flag::OWNER_GROUPS,
                        v,
                        Reason::Other(format!("lists {} groups; at most 64 can be captured by group", groups.len())),
                    );
                }
                OwnerGroups::Only(groups)
            }
        };
        let ipv4_loopback_cidr = match &self.loopback_cidr {
            None => d.ipv4_loopback_cidr,
            Some(v) => match IpNet::parse(v) {
                Ok(n) if !(n.is_ipv4() && n.addr().is_loopback()) => {
                    c.err(flag::LOOPBACK_CIDR, v, Reason::Other("is not an IPv4 loopback range (127.0.0.0/8)".into()));
                    d.ipv4_loopback_cidr
                }
                Ok(n) if n.len() < 8 => {
                    c.err(
                        flag::LOOPBACK_CIDR,
                        v,
                        Reason::Other(format!("has mask /{}; it must be in [8, 32]", n.len())),
                    );
                    d.ipv4_loopback_cidr
                }
                Ok(n) => n,
                Err(reason) => {
                    c.err(flag::LOOPBACK_CIDR, v, reason);
                    d.ipv4_loopback_cidr
                }
            },
        };
        if !c.errors.is_empty() {
            return Err(SettingErrors(c.errors));
        }
        Ok(CaptureConfig {
            proxy_port,
            inbound_capture_port,
            inbound_tunnel_port,
            proxy_uids,
            proxy_gids,
            mode,
            tproxy_mark,
            tproxy_route_table,
            include_inbound_ports,
            exclude_inbound_ports,
            // istio-iptables' flags do not say which exclusions are the mesh's own.
            sidecar_inbound_ports: PortSet::new(),
            include_outbound_ports,
            exclude_outbound_ports,
            include_outbound_ip_ranges,
            exclude_outbound_ip_ranges,
            reroute_virtual_interfaces,
            exclude_interfaces,
            redirect_dns: self.redirect_dns,
            capture_all_dns: self.capture_all_dns,
            dns_servers_v4,
            dns_servers_v6,
            drop_invalid: self.drop_invalid,
            untrack_excluded_inbound: self.untrack_excluded_inbound,
            enable_ipv6: self.enable_ipv6,
            owner_groups,
            ipv4_loopback_cidr,
        })
    }

    /// Builds the args from a conformance case's `config` object (canonical field names, as
    /// in `conformance/istio/fields.json`). Used by tests and by `meshpass iptables --config`.
    pub fn from_case_config(cfg: &serde_json::Value) -> Self {
        let s = |k: &str| cfg.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let b = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let list = |k: &str| -> Vec<String> {
            cfg.get(k)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let mut dns = list("dns_servers_v4");
        dns.extend(list("dns_servers_v6"));
        Self {
            proxy_port: s("proxy_port"),
            inbound_capture_port: s("inbound_capture_port"),
            inbound_tunnel_port: s("inbound_tunnel_port"),
            proxy_uid: s("proxy_uid"),
            proxy_gid: s("proxy_gid"),
            mode: s("inbound_interception_mode"),
            tproxy_mark: s("inbound_tproxy_mark"),
            route_table: s("inbound_tproxy_route_table"),
            include_inbound_ports: s("include_inbound_ports"),
            exclude_inbound_ports: s("exclude_inbound_ports"),
            include_outbound_ports: s("include_outbound_ports"),
            exclude_outbound_ports: s("exclude_outbound_ports"),
            include_ip_ranges: s("include_outbound_ip_ranges"),
            exclude_ip_ranges: s("exclude_outbound_ip_ranges"),
            virtual_interfaces: s("reroute_virtual_interfaces"),
            exclude_interfaces: s("exclude_interfaces"),
            redirect_dns: b("redirect_dns"),
            capture_all_dns: b("capture_all_dns"),
            drop_invalid: b("drop_invalid"),
            untrack_excluded_inbound: b("untrack_excluded_inbound"),
            enable_ipv6: b("enable_ipv6"),
            dns_servers: dns,
            owner_groups_include: s("owner_groups_include"),
            owner_groups_exclude: s("owner_groups_exclude"),
            loopback_cidr: s("host_ipv4_loopback_cidr"),
        }
    }
}
