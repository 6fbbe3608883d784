//! IP prefixes (CIDRs) with Istio's parsing rules, and ordered lists of them.

use crate::error::Reason;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix as written: the address keeps any host bits (`10.0.0.1/8`), as Go's
/// `netip.Prefix` does, because istio-iptables emits prefixes unnormalized and the rendered
/// rules must match its output. Matching uses [`IpNet::network`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

impl IpNet {
    /// A prefix; `None` when `len` exceeds the address width.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        (len <= max_len(addr)).then_some(Self { addr, len })
    }

    /// A host prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, len: max_len(addr) }
    }

    /// The address as written (host bits kept).
    pub fn addr(self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(self) -> u8 {
        self.len
    }

    /// True for a zero-length prefix (`0.0.0.0/0`, `::/0`).
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// True for IPv4 prefixes.
    pub fn is_ipv4(self) -> bool {
        self.addr.is_ipv4()
    }

    /// The prefix with host bits cleared (`10.0.0.1/8` → `10.0.0.0/8`).
    pub fn network(self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.len))),
        };
        Self { addr, len: self.len }
    }

    /// The last address in the prefix.
    pub fn broadcast(self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) | !mask32(self.len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) | !mask128(self.len))),
        }
    }

    /// True when `ip` (of the same family) lies in the prefix.
    pub fn contains(self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let m = mask32(self.len);
                u32::from(a) & m == u32::from(b) & m
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let m = mask128(self.len);
                u128::from(a) & m == u128::from(b) & m
            }
            _ => false,
        }
    }

    /// Istio's `HasLoopBackIP` test: the *address* is loopback (`127.x`, `::1`).
    pub fn has_loopback_addr(self) -> bool {
        self.addr.is_loopback()
    }

    /// Parses `ADDRESS/LEN` with Go `netip.ParsePrefix` rules: no whitespace, no zone,
    /// a decimal length without leading zeros.
    pub fn parse(item: &str) -> Result<Self, Reason> {
        if item.is_empty() {
            return Err(Reason::EmptyItem);
        }
        if item == "*" {
            return Err(Reason::WildcardInList);
        }
        if item.chars().any(char::is_whitespace) {
            return Err(Reason::WhitespaceInCidr);
        }
        let (a, l) = item.split_once('/').ok_or(Reason::MissingPrefix)?;
        let addr = IpAddr::from_str(a).map_err(|_| Reason::BadAddress(a.to_string()))?;
        let bad_len = || Reason::BadPrefixLength(l.to_string());
        if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_len());
        }
        if l.len() > 1 && l.starts_with('0') {
            return Err(bad_len());
        }
        let len: u32 = l.parse().map_err(|_| bad_len())?;
        let max = max_len(addr);
        if len > u32::from(max) {
            let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(Reason::PrefixTooLong { len, family, max });
        }
        Ok(Self { addr, len: len as u8 })
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl fmt::Display for IpNet {
    /// `addr/len`, RFC 5952 for IPv6 (as Go prints it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IpNet {
    type Err = Reason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An ordered list of prefixes without duplicates, IPv4 and IPv6 mixed as written.
///
/// Istio splits the list per family (`SeparateV4V6`); [`CidrSet::v4`] and [`CidrSet::v6`]
/// give the two halves in their original relative order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CidrSet(Vec<IpNet>);

impl CidrSet {
    /// An empty set.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Builds a set, dropping exact duplicates.
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut s = Self::new();
        for n in nets {
            s.insert(n);
        }
        s
    }

    /// Appends `n` unless already present.
    pub fn insert(&mut self, n: IpNet) {
        if !self.0.contains(&n) {
            self.0.push(n);
        }
    }

    /// All prefixes in written order.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }

    /// The IPv4 prefixes, in order.
    pub fn v4(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.0.iter().copied().filter(|n| n.is_ipv4())
    }

    /// The IPv6 prefixes, in order.
    pub fn v6(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.0.iter().copied().filter(|n| !n.is_ipv4())
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when some prefix contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// Istio's `HasLoopBackIP`: some prefix's address is a loopback address.
    pub fn has_loopback_addr(&self) -> bool {
        self.0.iter().any(|n| n.has_loopback_addr())
    }

    /// Parses a comma-separated list, collecting one error per bad item. An empty value is
    /// the empty set; an empty item in a non-empty list is an error (as in Istio).
    pub fn parse_list(value: &str) -> Result<Self, Vec<(String, Reason)>> {
        let mut set = Self::new();
        let mut errors = Vec::new();
        if value.is_empty() {
            return Ok(set);
        }
        for item in value.split(',') {
            match IpNet::parse(item) {
                Ok(n) => set.insert(n),
                Err(reason) => errors.push((item.to_string(), reason)),
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }
}

impl fmt::Display for CidrSet {
    /// Comma-separated, as written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_host_bits_and_matches_by_network() {
        let n = IpNet::parse("10.0.0.1/8").unwrap();
        assert_eq!(n.to_string(), "10.0.0.1/8");
        assert_eq!(n.network().to_string(), "10.0.0.0/8");
        assert!(n.contains("10.200.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        assert_eq!(IpNet::parse("0.0.0.0/0").unwrap().broadcast().to_string(), "255.255.255.255");
    }

    #[test]
    fn go_parse_prefix_rules() {
        assert_eq!(IpNet::parse("bad"), Err(Reason::MissingPrefix));
        assert_eq!(IpNet::parse("10.0.0.0/33"), Err(Reason::PrefixTooLong { len: 33, family: "IPv4", max: 32 }));
        assert_eq!(IpNet::parse("10.0.0.0/08"), Err(Reason::BadPrefixLength("08".into())));
        assert_eq!(IpNet::parse(" 10.0.0.0/8"), Err(Reason::WhitespaceInCidr));
        assert_eq!(IpNet::parse("fe80::1%eth0/64"), Err(Reason::BadAddress("fe80::1%eth0".into())));
        assert_eq!(IpNet::parse("2001:DB8::/32").unwrap().to_string(), "2001:db8::/32");
        assert_eq!(IpNet::parse("*"), Err(Reason::WildcardInList));
    }

    #[test]
    fn splits_families_in_order() {
        let s = CidrSet::parse_list("2001:db8::/32,10.0.0.0/8,10.0.0.0/8,192.168.0.0/16").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.v4().map(|n| n.to_string()).collect::<Vec<_>>(), ["10.0.0.0/8", "192.168.0.0/16"]);
        assert_eq!(s.v6().count(), 1);
    }
}
