//! Every kind of bad value, across every key, with the exact message a user sees. Values
//! that try to smuggle rule syntax (`80 -j ACCEPT`, a newline, `;`) are rejected as items,
//! never rendered.

use meshpass_settings::{keys::*, Settings};
use std::collections::BTreeMap;

fn errors(key: &str, value: &str) -> Vec<String> {
    let ann = BTreeMap::from([(key.to_string(), value.to_string())]);
    match Settings::from_annotations(&ann) {
        Ok(s) => panic!("{key}={value:?} was accepted as {s:?}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

#[rustfmt::skip]
const CASES: &[(&str, &str, &[&str])] = &[
    (EXCLUDE_OUTBOUND_PORTS, "70000", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "70000" is not a port (1-65535)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "0", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "0" is not a port (1-65535)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "-1", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "-1" is not a port (1-65535)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "80 -j ACCEPT", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "80 -j ACCEPT" is not a port (1-65535)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "5000;reboot", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "5000;reboot" is not a port (1-65535)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "*", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "*" is not allowed here: this list takes explicit items, not a wildcard"#]),
    (EXCLUDE_OUTBOUND_PORTS, "80,", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "" is an empty item (remove the extra comma)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "bad", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "bad" is not a port (1-65535)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "8000:9000", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "8000:9000" is not a port range: write 8000-9000 (Istio rejects the ':' form)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "9000-8000", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "9000-8000" is not a port range: 9000 is greater than 8000"#]),
    (EXCLUDE_OUTBOUND_PORTS, "80,70000,abc", &[
        r#"traffic.sidecar.istio.io/excludeOutboundPorts: "70000" is not a port (1-65535)"#,
        r#"traffic.sidecar.istio.io/excludeOutboundPorts: "abc" is not a port (1-65535)"#,
    ]),
    (EXCLUDE_OUTBOUND_PORTS, "+80", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "+80" is not a port (1-65535)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "0x50", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "0x50" is not a port (1-65535)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "8 0", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "8 0" is not a port (1-65535)"#]),
    (EXCLUDE_OUTBOUND_PORTS, "80-", &[r#"traffic.sidecar.istio.io/excludeOutboundPorts: "80-" is not a port (1-65535)"#]),
    (EXCLUDE_INBOUND_PORTS, "*", &[r#"traffic.sidecar.istio.io/excludeInboundPorts: "*" is not allowed here: this list takes explicit items, not a wildcard"#]),
    (EXCLUDE_INBOUND_PORTS, "65536", &[r#"traffic.sidecar.istio.io/excludeInboundPorts: "65536" is not a port (1-65535)"#]),
    (EXCLUDE_INBOUND_PORTS, "5000\n-A INPUT -j ACCEPT", &[r#"traffic.sidecar.istio.io/excludeInboundPorts: "5000\n-A INPUT -j ACCEPT" is not a port (1-65535)"#]),
    (EXCLUDE_INBOUND_PORTS, "1-2-3", &[r#"traffic.sidecar.istio.io/excludeInboundPorts: "1-2-3" is not a port (1-65535)"#]),
    (EXCLUDE_INBOUND_PORTS, "*,80", &[r#"traffic.sidecar.istio.io/excludeInboundPorts: "*" must be the whole value, not one item of a list"#]),
    (INCLUDE_INBOUND_PORTS, "bad", &[r#"traffic.sidecar.istio.io/includeInboundPorts: "bad" is not a port (1-65535)"#]),
    (INCLUDE_INBOUND_PORTS, "*,80", &[r#"traffic.sidecar.istio.io/includeInboundPorts: "*" must be the whole value, not one item of a list"#]),
    (INCLUDE_INBOUND_PORTS, "80,,443", &[r#"traffic.sidecar.istio.io/includeInboundPorts: "" is an empty item (remove the extra comma)"#]),
    (INCLUDE_OUTBOUND_PORTS, "*", &[r#"traffic.sidecar.istio.io/includeOutboundPorts: "*" is not allowed here: this list takes explicit items, not a wildcard"#]),
    (INCLUDE_OUTBOUND_PORTS, "443 ! --dport 22", &[r#"traffic.sidecar.istio.io/includeOutboundPorts: "443 ! --dport 22" is not a port (1-65535)"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "*", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "*" is not allowed here: this list takes explicit items, not a wildcard"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8\n-A OUTPUT -j ACCEPT", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.0/8\n-A OUTPUT -j ACCEPT" contains whitespace; IP ranges must be written without spaces (Istio rejects them)"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.0" is not an IP range: expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.0/33" is not an IP range: prefix length 33 is out of range for IPv4 (0-32)"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "2001:db8::/129", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "2001:db8::/129" is not an IP range: prefix length 129 is out of range for IPv6 (0-128)"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/08", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.0/08" is not an IP range: prefix length "08" is not a number (no leading zeros)"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.256/32", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.256/32" is not an IP range: "10.0.0.256" is not an IPv4 or IPv6 address"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "010.0.0.1/32", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "010.0.0.1/32" is not an IP range: "010.0.0.1" is not an IPv4 or IPv6 address"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "fe80::1%eth0/64", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "fe80::1%eth0/64" is not an IP range: "fe80::1%eth0" is not an IPv4 or IPv6 address"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8, 192.168.0.0/16", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: " 192.168.0.0/16" contains whitespace; IP ranges must be written without spaces (Istio rejects them)"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8;rm -rf /", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.0/8;rm -rf /" contains whitespace; IP ranges must be written without spaces (Istio rejects them)"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "" is an empty item (remove the extra comma)"#]),
    (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/x", &[r#"traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.0/x" is not an IP range: prefix length "x" is not a number (no leading zeros)"#]),
    (INCLUDE_OUTBOUND_IP_RANGES, "bad", &[r#"traffic.sidecar.istio.io/includeOutboundIPRanges: "bad" is not an IP range: expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32"#]),
    (INCLUDE_OUTBOUND_IP_RANGES, "*,10.0.0.0/8", &[r#"traffic.sidecar.istio.io/includeOutboundIPRanges: "*" must be the whole value, not one item of a list"#]),
    (INCLUDE_OUTBOUND_IP_RANGES, " *", &[r#"traffic.sidecar.istio.io/includeOutboundIPRanges: " *" contains whitespace; IP ranges must be written without spaces (Istio rejects them)"#]),
    (EXCLUDE_INTERFACES, "eth0,", &[r#"traffic.sidecar.istio.io/excludeInterfaces: "" is an empty interface name (remove the extra comma)"#]),
    (EXCLUDE_INTERFACES, "1eth", &[r#"traffic.sidecar.istio.io/excludeInterfaces: "1eth" is not an interface name: it must start with a letter and contain only letters, digits, '_', '.' and '-'"#]),
    (EXCLUDE_INTERFACES, "eth0;rm", &[r#"traffic.sidecar.istio.io/excludeInterfaces: "eth0;rm" is not an interface name: it must start with a letter and contain only letters, digits, '_', '.' and '-'"#]),
    (EXCLUDE_INTERFACES, "abcdefghijklmnop", &[r#"traffic.sidecar.istio.io/excludeInterfaces: "abcdefghijklmnop" is not an interface name: longer than 15 characters"#]),
    (EXCLUDE_INTERFACES, "eth0 -j ACCEPT", &[r#"traffic.sidecar.istio.io/excludeInterfaces: "eth0 -j ACCEPT" is not an interface name: it must start with a letter and contain only letters, digits, '_', '.' and '-'"#]),
    (REROUTE_VIRTUAL_INTERFACES, "net1,2net", &[r#"istio.io/reroute-virtual-interfaces: "2net" is not an interface name: it must start with a letter and contain only letters, digits, '_', '.' and '-'"#]),
    (KUBEVIRT_INTERFACES, "eth0,", &[r#"traffic.sidecar.istio.io/kubevirtInterfaces: "" is an empty interface name (remove the extra comma)"#]),
    (INTERCEPTION_MODE, "redirect", &[r#"sidecar.istio.io/interceptionMode: "redirect" is not an interception mode: use REDIRECT, TPROXY or NONE (case-sensitive)"#]),
    (INTERCEPTION_MODE, "", &[r#"sidecar.istio.io/interceptionMode: "" is not an interception mode: use REDIRECT, TPROXY or NONE (case-sensitive)"#]),
    (INTERCEPTION_MODE, "TPROXY ", &[r#"sidecar.istio.io/interceptionMode: "TPROXY " is not an interception mode: use REDIRECT, TPROXY or NONE (case-sensitive)"#]),
    (STATUS_PORT, "abc", &[r#"status.sidecar.istio.io/port: "abc" is not a port (0-65535, 0 = none)"#]),
    (STATUS_PORT, "", &[r#"status.sidecar.istio.io/port: "" is not a port (0-65535, 0 = none)"#]),
    (STATUS_PORT, "65536", &[r#"status.sidecar.istio.io/port: "65536" is not a port (0-65535, 0 = none)"#]),
];

#[test]
fn every_bad_value_gets_its_exact_message() {
    assert!(CASES.len() >= 40, "the table must cover at least 40 values");
    for (key, value, want) in CASES {
        assert_eq!(errors(key, value), *want, "{key}={value:?}");
    }
}

#[test]
fn errors_across_keys_are_all_reported_at_once() {
    let ann: BTreeMap<String, String> = CASES.iter().map(|(k, v, _)| (k.to_string(), v.to_string())).collect();
    let err = Settings::from_annotations(&ann).expect_err("all bad");
    let keys: std::collections::BTreeSet<_> = err.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys.len(), ann.len(), "one or more errors for every key: {err}");
}
