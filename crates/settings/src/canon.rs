//! Canonical list values: what meshpass writes into a pod template.
//!
//! Operators type port and IP range lists by hand (`"5000 "`, `"05000"`, `"5000\r\n"`,
//! `"2001:DB8::/32"`); the management plane stores each list in one canonical spelling, so that
//! the annotation on the template is exactly what the API shows and what the engine reads
//! back, and so that nothing reaches a cluster that Istio's sidecar injector would refuse (on a
//! cluster, a value the injector refuses stops pods from being created).
//!
//! Per item: surrounding whitespace (any Unicode space, as Go's `strings.TrimSpace` in the
//! injector) is removed; ports lose leading zeros and a range of one port becomes that port;
//! IP ranges are printed as the engine prints them (lowercase, RFC 5952 IPv6). Exact
//! duplicates collapse (the first one stays, in place); ranges are kept. Items the engine or
//! the injector would refuse are refused, each named with its reason; lists are capped at
//! [`MAX_ITEMS`]. Warnings say what is accepted but probably not meant: a port already covered
//! by a range, a CIDR with host bits set, an IPv4-mapped IPv6 range.
//!
//! Pure: no I/O.

use crate::error::{Reason, SettingError};
use crate::ip::IpNet;
use crate::ports::PortRange;
use std::net::IpAddr;

/// The most items a list takes. Istio emits one rule per item; past a few hundred a list is a
/// mistake (a range, or `includeOutboundIPRanges`, says it better), and every item is one more
/// rule on every packet's path.
pub const MAX_ITEMS: usize = 256;

/// Whose sidecar injector reads the annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// meshpass's own (the local mesh): port ranges (`8000-8100`) are taken.
    Meshpass,
    /// Istio's injector (Kubernetes): single ports only; it refuses a range, and pods with it
    /// are not created.
    Istio,
}

/// A list in canonical form, and what is worth telling the operator about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Canonical {
    /// The items, canonical, without duplicates, in the order first written.
    pub items: Vec<String>,
    /// Accepted, but probably not meant.
    pub warnings: Vec<String>,
}

impl Canonical {
    /// The annotation value: the items joined with `,`.
    pub fn value(&self) -> String {
        self.items.join(",")
    }
}

fn refuse(key: &str, item: &str, reason: Reason) -> SettingError {
    SettingError::new(key, item, reason)
}

fn too_many(key: &str, n: usize) -> SettingError {
    refuse(
        key,
        &format!("{n} items"),
        Reason::Other(format!(
            "is too long a list: at most {MAX_ITEMS} items (use port ranges or wider IP ranges to say more with fewer)"
        )),
    )
}

/// Refusals an item may get before it is parsed: nothing, or more than one item.
fn shape(key: &str, raw: &str) -> Option<SettingError> {
    if raw.trim().is_empty() {
        return Some(refuse(key, raw, Reason::EmptyItem));
    }
    if raw.contains(',') {
        return Some(refuse(key, raw, Reason::Other("is more than one item: give each as its own list entry".into())));
    }
    None
}

/// One port item in canonical form, or why it is refused.
pub fn port_item(item: &str, dialect: Dialect) -> Result<PortRange, Reason> {
    let range = PortRange::parse(item.trim(), false)?;
    if dialect == Dialect::Istio && !range.is_single() {
        return Err(Reason::Other(format!(
            "is a port range, which Istio's sidecar injector refuses (it takes single ports): list the ports, or \
             use includeInboundPorts/includeOutboundPorts; ranges such as {range} work on the local mesh"
        )));
    }
    Ok(range)
}

/// A port list (`excludeInboundPorts`, `excludeOutboundPorts`, the items of an include list)
/// in canonical form; `Err` names every refused item.
pub fn port_list(key: &str, items: &[String], dialect: Dialect) -> Result<Canonical, Vec<SettingError>> {
    let mut errors = Vec::new();
    let mut ranges: Vec<PortRange> = Vec::new();
    for raw in items {
        if let Some(e) = shape(key, raw) {
            errors.push(e);
            continue;
        }
        match port_item(raw, dialect) {
            Ok(r) if ranges.contains(&r) => {}
            Ok(r) => ranges.push(r),
            Err(reason) => errors.push(refuse(key, raw, reason)),
        }
    }
    if ranges.len() > MAX_ITEMS {
        errors.push(too_many(key, ranges.len()));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut warnings = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        if let Some(wider) = ranges
            .iter()
            .enumerate()
            .find(|(j, w)| *j != i && w.start() <= r.start() && r.end() <= w.end() && **w != *r)
        {
            warnings.push(format!("{key}: {r} is already covered by {}", wider.1));
        }
    }
    Ok(Canonical { items: ranges.iter().map(ToString::to_string).collect(), warnings })
}

/// An IPv4 address inside an IPv4-mapped IPv6 prefix (`::ffff:10.0.0.0/104` → 10.0.0.0/8).
fn mapped_v4(net: IpNet) -> Option<String> {
    let IpAddr::V6(a) = net.addr() else { return None };
    let v4 = a.to_ipv4_mapped()?;
    (net.len() >= 96).then(|| format!("{v4}/{}", net.len() - 96))
}

/// An IP range list (`excludeOutboundIPRanges`, the items of `includeOutboundIPRanges`) in
/// canonical form; `Err` names every refused item.
pub fn cidr_list(key: &str, items: &[String]) -> Result<Canonical, Vec<SettingError>> {
    let mut errors = Vec::new();
    let mut nets: Vec<IpNet> = Vec::new();
    for raw in items {
        if let Some(e) = shape(key, raw) {
            errors.push(e);
            continue;
        }
        match IpNet::parse(raw.trim()) {
            Ok(n) if nets.contains(&n) => {}
            Ok(n) => nets.push(n),
            Err(reason) => errors.push(refuse(key, raw, reason)),
        }
    }
    if nets.len() > MAX_ITEMS {
        errors.push(too_many(key, nets.len()));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut warnings = Vec::new();
    for n in &nets {
        if n.network() != *n {
            warnings.push(format!(
                "{key}: {n} has host bits set; it matches {} (write that, to say what it does)",
                n.network()
            ));
        }
        if let Some(v4) = mapped_v4(*n) {
            warnings.push(format!(
                "{key}: {n} is an IPv4-mapped IPv6 range: it matches only IPv6 packets, never IPv4 traffic to \
                 {v4}; write {v4} for that"
            ));
        }
    }
    Ok(Canonical { items: nets.iter().map(ToString::to_string).collect(), warnings })
}

/// Splits an annotation value into its items as written (no trimming: `"5000 "` stays). An
/// empty value is an empty list.
pub fn split(value: &str) -> Vec<String> {
    if value.is_empty() {
        Vec::new()
    } else {
        value.split(',').map(str::to_string).collect()
    }
}

/// An include port list (`includeInboundPorts`, `includeOutboundPorts`) in canonical form: `*`
/// (where `wildcard` says it is taken), `""` (none), or a canonical port list.
pub fn port_spec(
    key: &str,
    value: &str,
    dialect: Dialect,
    wildcard: bool,
) -> Result<(String, Vec<String>), Vec<SettingError>> {
    let t = value.trim();
    if t == "*" {
        return if wildcard {
            Ok(("*".into(), Vec::new()))
        } else {
            Err(vec![refuse(key, value, Reason::WildcardNotAllowed)])
        };
    }
    if t.is_empty() {
        return Ok((String::new(), Vec::new()));
    }
    port_list(key, &split(t), dialect).map(|c| (c.value(), c.warnings))
}

/// `includeOutboundIPRanges` in canonical form: `*`, `""` (none) or a canonical IP range list.
pub fn cidr_spec(key: &str, value: &str) -> Result<(String, Vec<String>), Vec<SettingError>> {
    let t = value.trim();
    if t == "*" {
        return Ok(("*".into(), Vec::new()));
    }
    if t.is_empty() {
        return Ok((String::new(), Vec::new()));
    }
    cidr_list(key, &split(t)).map(|c| (c.value(), c.warnings))
}

/// What `dialect`'s injector refuses in `annotations` beyond what the engine refuses: on
/// Istio, port ranges in the port lists. For a backend's last check before it writes.
pub fn dialect_refusals<'a, I>(annotations: I, dialect: Dialect) -> Vec<SettingError>
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    if dialect == Dialect::Meshpass {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (k, v) in annotations {
        let ports = [
            crate::keys::INCLUDE_INBOUND_PORTS,
            crate::keys::EXCLUDE_INBOUND_PORTS,
            crate::keys::INCLUDE_OUTBOUND_PORTS,
            crate::keys::EXCLUDE_OUTBOUND_PORTS,
        ];
        if !ports.contains(&k.as_str()) || v.trim() == "*" {
            continue;
        }
        for item in v.split(',') {
            if let Ok(r) = PortRange::parse(item, false) {
                if let Err(reason) = port_item(&r.to_string(), dialect) {
                    out.push(refuse(k, item, reason));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{EXCLUDE_INBOUND_PORTS as IN, EXCLUDE_OUTBOUND_IP_RANGES as RANGES};

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ports_are_trimmed_unpadded_and_deduplicated_in_order() {
        let c = port_list(
            IN,
            &v(&["5000 ", "05000", "5000\r\n", "\u{a0}5000", " 8000-8100", "0080", "80-80", "9000"]),
            Dialect::Meshpass,
        )
        .unwrap();
        assert_eq!(c.items, ["5000", "8000-8100", "80", "9000"]);
        assert_eq!(c.value(), "5000,8000-8100,80,9000");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn refused_items_are_named() {
        let err =
            port_list(IN, &v(&["50 00", "5000\0", "", "1,2", "70000", "-1", "+80", "8000:8100"]), Dialect::Meshpass)
                .unwrap_err();
        let items: Vec<&str> = err.iter().map(|e| e.item.as_str()).collect();
        assert_eq!(items, ["50 00", "5000\0", "", "1,2", "70000", "-1", "+80", "8000:8100"]);
        assert!(err.iter().all(|e| e.key == IN));
    }

    #[test]
    fn istio_refuses_ranges_meshpass_takes_them() {
        let err = port_list(IN, &v(&["5000", "8000-8100"]), Dialect::Istio).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].item, "8000-8100");
        assert!(err[0].reason.to_string().contains("Istio's sidecar injector refuses"), "{}", err[0].reason);
        // A range of one port is a port: fine everywhere.
        assert_eq!(port_list(IN, &v(&["8000-8000"]), Dialect::Istio).unwrap().items, ["8000"]);
        let m: std::collections::BTreeMap<String, String> =
            [(IN.to_string(), "80,8000-8100".to_string())].into_iter().collect();
        assert_eq!(dialect_refusals(&m, Dialect::Istio).len(), 1);
        assert!(dialect_refusals(&m, Dialect::Meshpass).is_empty());
    }

    #[test]
    fn lists_are_capped() {
        let many: Vec<String> = (1..=257).map(|p| p.to_string()).collect();
        let err = port_list(IN, &many, Dialect::Meshpass).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].reason.to_string().contains("at most 256 items"), "{}", err[0]);
        assert_eq!(port_list(IN, &many[..256], Dialect::Meshpass).unwrap().items.len(), 256);
        // Duplicates do not count twice.
        let dup: Vec<String> = (0..10_000).map(|_| "80".to_string()).collect();
        assert_eq!(port_list(IN, &dup, Dialect::Meshpass).unwrap().items, ["80"]);
    }

    #[test]
    fn covered_ports_are_warned_about() {
        let c = port_list(IN, &v(&["8050", "8000-8100"]), Dialect::Meshpass).unwrap();
        assert_eq!(c.warnings, [format!("{IN}: 8050 is already covered by 8000-8100")]);
    }

    #[test]
    fn cidrs_are_canonical_with_warnings() {
        let c =
            cidr_list(RANGES, &v(&[" 10.0.0.0/8", "2001:DB8::/32", "10.0.0.0/8", "10.0.0.1/8", "::ffff:10.0.0.0/104"]))
                .unwrap();
        assert_eq!(c.items, ["10.0.0.0/8", "2001:db8::/32", "10.0.0.1/8", "::ffff:10.0.0.0/104"]);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("10.0.0.1/8 has host bits set; it matches 10.0.0.0/8"), "{}", c.warnings[0]);
        assert!(
            c.warnings[1].contains("IPv4-mapped") && c.warnings[1].contains("write 10.0.0.0/8"),
            "{}",
            c.warnings[1]
        );
        let err =
            cidr_list(RANGES, &v(&["10.0.0.0/08", "10.0.0.0 /8", "010.0.0.0/8", "10.0.0.0/33", "*"])).unwrap_err();
        assert_eq!(err.len(), 5);
    }

    #[test]
    fn include_specs() {
        assert_eq!(port_spec(IN, " * ", Dialect::Istio, true).unwrap().0, "*");
        assert!(port_spec(IN, "*", Dialect::Istio, false).is_err());
        assert_eq!(port_spec(IN, "  ", Dialect::Istio, true).unwrap().0, "");
        assert_eq!(port_spec(IN, "0443, 80,443", Dialect::Istio, true).unwrap().0, "443,80");
        assert_eq!(cidr_spec(RANGES, "*").unwrap().0, "*");
        assert_eq!(cidr_spec(RANGES, "10.0.0.0/8, 10.0.0.0/8").unwrap().0, "10.0.0.0/8");
    }
}
