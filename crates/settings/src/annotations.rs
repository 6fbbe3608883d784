//! The annotation map ⇄ [`Settings`].
//!
//! Presence matters: an annotation set to `""` is *present* and overrides Istio's `*`
//! default (`includeInboundPorts: ""` turns inbound capture off), so every field is an
//! `Option` whose `None` means "absent, use the default".

use crate::error::{Reason, SettingError, SettingErrors};
use crate::iface::IfaceName;
use crate::ip::CidrSet;
use crate::keys;
use crate::ports::PortSet;
use crate::InterceptionMode;
use std::collections::BTreeMap;
use std::fmt;

/// A port list that may be the wildcard `*` (include lists only).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// `*`: every port.
    Wildcard,
    /// Exactly these ports (possibly none).
    List(PortSet),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Wildcard => f.write_str("*"),
            PortSpec::List(s) => write!(f, "{s}"),
        }
    }
}

/// An IP range list that may be the wildcard `*` (the include list only).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IpRangeSpec {
    /// `*`: every destination, both families.
    Wildcard,
    /// Exactly these prefixes (possibly none).
    List(CidrSet),
}

impl fmt::Display for IpRangeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpRangeSpec::Wildcard => f.write_str("*"),
            IpRangeSpec::List(s) => write!(f, "{s}"),
        }
    }
}

/// A workload's capture settings, one field per annotation; `None` = annotation absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Settings {
    /// `traffic.sidecar.istio.io/includeInboundPorts`.
    pub include_inbound_ports: Option<PortSpec>,
    /// `traffic.sidecar.istio.io/excludeInboundPorts` (GUI: "Inbound").
    pub exclude_inbound_ports: Option<PortSet>,
    /// `traffic.sidecar.istio.io/includeOutboundPorts`.
    pub include_outbound_ports: Option<PortSet>,
    /// `traffic.sidecar.istio.io/excludeOutboundPorts` (GUI: "Outbound", ports).
    pub exclude_outbound_ports: Option<PortSet>,
    /// `traffic.sidecar.istio.io/includeOutboundIPRanges`.
    pub include_outbound_ip_ranges: Option<IpRangeSpec>,
    /// `traffic.sidecar.istio.io/excludeOutboundIPRanges` (GUI: "Outbound", IP ranges).
    pub exclude_outbound_ip_ranges: Option<CidrSet>,
    /// `traffic.sidecar.istio.io/excludeInterfaces`.
    pub exclude_interfaces: Option<Vec<IfaceName>>,
    /// `istio.io/reroute-virtual-interfaces`.
    pub reroute_virtual_interfaces: Option<Vec<IfaceName>>,
    /// `traffic.sidecar.istio.io/kubevirtInterfaces` (deprecated; the new key wins).
    pub kubevirt_interfaces: Option<Vec<IfaceName>>,
    /// `sidecar.istio.io/interceptionMode`.
    pub interception_mode: Option<InterceptionMode>,
    /// `status.sidecar.istio.io/port` (0 = no status port).
    pub status_port: Option<u16>,
}

fn push_errors(out: &mut Vec<SettingError>, key: &str, errs: Vec<(String, Reason)>) {
    out.extend(errs.into_iter().map(|(item, reason)| SettingError::new(key, item, reason)));
}

fn whole(out: &mut Vec<SettingError>, key: &str, value: &str, reason: Reason) {
    out.push(SettingError::new(key, value, reason));
}

impl Settings {
    /// Parses every known key of `annotations`, collecting one error per bad item across all
    /// keys. Unknown keys are ignored (see [`Settings::unknown_keys`]).
    pub fn from_annotations<'a, I>(annotations: I) -> Result<Self, SettingErrors>
    where
        I: IntoIterator<Item = (&'a String, &'a String)>,
    {
        let map: BTreeMap<&str, &str> = annotations.into_iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut s = Settings::default();
        let mut errors = Vec::new();
        let e = &mut errors;

        if let Some(v) = map.get(keys::INCLUDE_INBOUND_PORTS) {
            s.include_inbound_ports = include_ports(e, keys::INCLUDE_INBOUND_PORTS, v);
        }
        if let Some(v) = map.get(keys::EXCLUDE_INBOUND_PORTS) {
            s.exclude_inbound_ports = exclude_ports(e, keys::EXCLUDE_INBOUND_PORTS, v);
        }
        if let Some(v) = map.get(keys::INCLUDE_OUTBOUND_PORTS) {
            s.include_outbound_ports = exclude_ports(e, keys::INCLUDE_OUTBOUND_PORTS, v);
        }
        if let Some(v) = map.get(keys::EXCLUDE_OUTBOUND_PORTS) {
            s.exclude_outbound_ports = exclude_ports(e, keys::EXCLUDE_OUTBOUND_PORTS, v);
        }
        if let Some(v) = map.get(keys::INCLUDE_OUTBOUND_IP_RANGES) {
            s.include_outbound_ip_ranges = if *v == "*" {
                Some(IpRangeSpec::Wildcard)
            } else {
                cidrs(e, keys::INCLUDE_OUTBOUND_IP_RANGES, v).map(IpRangeSpec::List)
            };
        }
        if let Some(v) = map.get(keys::EXCLUDE_OUTBOUND_IP_RANGES) {
            if v.trim() == "*" {
                whole(e, keys::EXCLUDE_OUTBOUND_IP_RANGES, v, Reason::WildcardNotAllowed);
            } else {
                s.exclude_outbound_ip_ranges = cidrs(e, keys::EXCLUDE_OUTBOUND_IP_RANGES, v);
            }
        }
        for (key, field) in [
            (keys::EXCLUDE_INTERFACES, &mut s.exclude_interfaces),
            (keys::REROUTE_VIRTUAL_INTERFACES, &mut s.reroute_virtual_interfaces),
            (keys::KUBEVIRT_INTERFACES, &mut s.kubevirt_interfaces),
        ] {
            if let Some(v) = map.get(key) {
                match IfaceName::parse_list(v) {
                    Ok(list) => *field = Some(list),
                    Err(errs) => push_errors(e, key, errs),
                }
            }
        }
        if let Some(v) = map.get(keys::INTERCEPTION_MODE) {
            match InterceptionMode::parse(v) {
                Some(m) => s.interception_mode = Some(m),
                None => whole(e, keys::INTERCEPTION_MODE, v, Reason::InterceptionMode),
            }
        }
        if let Some(v) = map.get(keys::STATUS_PORT) {
            let t = v.trim();
            match t.parse::<u16>() {
                Ok(p) if t.bytes().all(|b| b.is_ascii_digit()) => s.status_port = Some(p),
                _ => whole(e, keys::STATUS_PORT, v, Reason::Other("is not a port (0-65535, 0 = none)".into())),
            }
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(SettingErrors(errors))
        }
    }

    /// Keys that look like capture annotations but are not ones this crate knows: most likely
    /// typos (`excludeOutboundPort`), which Istio silently ignores.
    pub fn unknown_keys<'a, I>(annotations: I) -> Vec<String>
    where
        I: IntoIterator<Item = &'a String>,
    {
        annotations
            .into_iter()
            .filter(|k| keys::OWNED_PREFIXES.iter().any(|p| k.starts_with(p)))
            .filter(|k| !keys::ALL.contains(&k.as_str()))
            .cloned()
            .collect()
    }

    /// Renders the present fields back into annotations. `from_annotations` of the result
    /// gives back `self`.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        let join = |l: &Vec<IfaceName>| l.iter().map(IfaceName::as_str).collect::<Vec<_>>().join(",");
        put(keys::INCLUDE_INBOUND_PORTS, self.include_inbound_ports.as_ref().map(|v| v.to_string()));
        put(keys::EXCLUDE_INBOUND_PORTS, self.exclude_inbound_ports.as_ref().map(|v| v.to_string()));
        put(keys::INCLUDE_OUTBOUND_PORTS, self.include_outbound_ports.as_ref().map(|v| v.to_string()));
        put(keys::EXCLUDE_OUTBOUND_PORTS, self.exclude_outbound_ports.as_ref().map(|v| v.to_string()));
        put(keys::INCLUDE_OUTBOUND_IP_RANGES, self.include_outbound_ip_ranges.as_ref().map(|v| v.to_string()));
        put(keys::EXCLUDE_OUTBOUND_IP_RANGES, self.exclude_outbound_ip_ranges.as_ref().map(|v| v.to_string()));
        put(keys::EXCLUDE_INTERFACES, self.exclude_interfaces.as_ref().map(join));
        put(keys::REROUTE_VIRTUAL_INTERFACES, self.reroute_virtual_interfaces.as_ref().map(join));
        put(keys::KUBEVIRT_INTERFACES, self.kubevirt_interfaces.as_ref().map(join));
        put(keys::INTERCEPTION_MODE, self.interception_mode.map(|m| m.to_string()));
        put(keys::STATUS_PORT, self.status_port.map(|p| p.to_string()));
        m
    }

    /// The virtual interfaces in force: the new key wins over the deprecated one.
    pub fn virtual_interfaces(&self) -> Option<&Vec<IfaceName>> {
        self.reroute_virtual_interfaces.as_ref().or(self.kubevirt_interfaces.as_ref())
    }
}

fn include_ports(e: &mut Vec<SettingError>, key: &str, v: &str) -> Option<PortSpec> {
    if v.trim() == "*" {
        return Some(PortSpec::Wildcard);
    }
    exclude_ports(e, key, v).map(PortSpec::List)
}

fn exclude_ports(e: &mut Vec<SettingError>, key: &str, v: &str) -> Option<PortSet> {
    if v.trim() == "*" {
        whole(e, key, v, Reason::WildcardNotAllowed);
        return None;
    }
    match PortSet::parse_list(v, false) {
        Ok(s) => Some(s),
        Err(errs) => {
            push_errors(e, key, errs);
            None
        }
    }
}

fn cidrs(e: &mut Vec<SettingError>, key: &str, v: &str) -> Option<CidrSet> {
    match CidrSet::parse_list(v) {
        Ok(s) => Some(s),
        Err(errs) => {
            push_errors(e, key, errs);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn absent_empty_and_wildcard_differ() {
        let s = Settings::from_annotations(&map(&[
            (keys::INCLUDE_INBOUND_PORTS, ""),
            (keys::INCLUDE_OUTBOUND_IP_RANGES, "*"),
        ]))
        .unwrap();
        assert_eq!(s.include_inbound_ports, Some(PortSpec::List(PortSet::new())));
        assert_eq!(s.include_outbound_ip_ranges, Some(IpRangeSpec::Wildcard));
        assert_eq!(s.exclude_inbound_ports, None);
    }

    #[test]
    fn collects_all_errors_with_key_item_reason() {
        let err = Settings::from_annotations(&map(&[
            (keys::EXCLUDE_OUTBOUND_PORTS, "70000,80 -j ACCEPT"),
            (keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8\n-A OUTPUT -j ACCEPT"),
            (keys::INTERCEPTION_MODE, "redirect"),
        ]))
        .unwrap_err();
        let lines: Vec<String> = err.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "traffic.sidecar.istio.io/excludeOutboundPorts: \"70000\" is not a port (1-65535)",
                "traffic.sidecar.istio.io/excludeOutboundPorts: \"80 -j ACCEPT\" is not a port (1-65535)",
                "traffic.sidecar.istio.io/excludeOutboundIPRanges: \"10.0.0.0/8\\n-A OUTPUT -j ACCEPT\" contains whitespace; IP ranges must be written without spaces (Istio rejects them)",
                "sidecar.istio.io/interceptionMode: \"redirect\" is not an interception mode: use REDIRECT, TPROXY or NONE (case-sensitive)",
            ]
        );
    }

    #[test]
    fn round_trips() {
        let m = map(&[
            (keys::EXCLUDE_INBOUND_PORTS, "5000,8000-8100"),
            (keys::INCLUDE_OUTBOUND_IP_RANGES, ""),
            (keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,2001:db8::/32"),
            (keys::KUBEVIRT_INTERFACES, "net1"),
            (keys::STATUS_PORT, "0"),
        ]);
        let s = Settings::from_annotations(&m).unwrap();
        assert_eq!(s.to_annotations(), m);
    }

    #[test]
    fn flags_probable_typos() {
        let m = map(&[("traffic.sidecar.istio.io/excludeOutboundPort", "80"), ("app", "x")]);
        assert_eq!(Settings::unknown_keys(m.keys()), ["traffic.sidecar.istio.io/excludeOutboundPort"]);
    }
}
