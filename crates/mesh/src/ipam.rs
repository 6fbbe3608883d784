//! IPv4 address allocation for pods and services. Pure.
//!
//! Allocation is next-fit (a cursor that moves on and wraps) so that a freed address is not
//! handed out again at once: a conntrack entry or an in-flight connection to a pod that just
//! went away then never reaches its successor.

use crate::MeshError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// An IPv4 CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    /// Network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/len` (host bits must be zero; prefix 8..=30 so there is room to allocate).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("`{s}` is not a CIDR (a.b.c.d/len)"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("`{s}`: `{a}` is not an IPv4 address"))?;
        let len: u8 = l.parse().map_err(|_| format!("`{s}`: `{l}` is not a prefix length"))?;
        if !(8..=30).contains(&len) {
            return Err(format!("`{s}`: prefix length must be 8..30"));
        }
        let c = Cidr { addr, len };
        if u32::from(addr) & !c.mask() != 0 {
            return Err(format!(
                "`{s}`: host bits are set (did you mean {}/{len}?)",
                Ipv4Addr::from(u32::from(addr) & c.mask())
            ));
        }
        Ok(c)
    }

    fn mask(self) -> u32 {
        u32::MAX << (32 - u32::from(self.len))
    }

    /// The `n`th address of the block.
    pub fn nth(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + n)
    }

    /// Number of addresses in the block.
    pub fn size(self) -> u32 {
        1u32 << (32 - u32::from(self.len))
    }

    /// True when `ip` is inside.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// True when the two blocks share an address.
    pub fn overlaps(self, other: Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Hands out addresses of a block, skipping the network address, the broadcast address and
/// the first `reserved` host addresses (the node's gateway address in the pod block).
#[derive(Clone, Debug)]
pub struct Ipam {
    cidr: Cidr,
    reserved: u32,
    used: BTreeSet<u32>,
    cursor: u32,
}

impl Ipam {
    /// An allocator over `cidr` with the first `reserved` host addresses kept back.
    pub fn new(cidr: Cidr, reserved: u32) -> Self {
        Ipam { cidr, reserved, used: BTreeSet::new(), cursor: 1 + reserved }
    }

    /// Marks `ip` as taken (e.g. a ClusterIP restored from state). False if outside or taken.
    pub fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        if !self.cidr.contains(ip) {
            return false;
        }
        self.used.insert(u32::from(ip) - u32::from(self.cidr.addr))
    }

    /// Allocates the next free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, MeshError> {
        let first = 1 + self.reserved;
        let last = self.cidr.size() - 2; // broadcast excluded
        if first > last {
            return Err(MeshError::Exhausted(self.cidr.to_string()));
        }
        let span = last - first + 1;
        for i in 0..span {
            let n = first + (self.cursor.saturating_sub(first) + i) % span;
            if !self.used.contains(&n) {
                self.used.insert(n);
                self.cursor = n + 1;
                return Ok(self.cidr.nth(n));
            }
        }
        Err(MeshError::Exhausted(self.cidr.to_string()))
    }

    /// Returns `ip` to the pool.
    pub fn release(&mut self, ip: Ipv4Addr) {
        if self.cidr.contains(ip) {
            self.used.remove(&(u32::from(ip) - u32::from(self.cidr.addr)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_cidrs() {
        let c = Cidr::parse("198.18.0.0/16").expect("valid");
        assert_eq!(c.nth(1), Ipv4Addr::new(198, 18, 0, 1));
        assert!(c.contains(Ipv4Addr::new(198, 18, 255, 1)));
        assert!(!c.contains(Ipv4Addr::new(198, 19, 0, 1)));
        assert!(Cidr::parse("198.18.0.1/16").expect_err("host bits").contains("198.18.0.0/16"));
        assert!(Cidr::parse("198.18.0.0").is_err());
        assert!(Cidr::parse("198.18.0.0/31").is_err());
        assert!(c.overlaps(Cidr::parse("198.18.4.0/24").expect("valid")));
        assert!(!c.overlaps(Cidr::parse("198.19.0.0/16").expect("valid")));
    }

    #[test]
    fn allocates_next_fit_skipping_reserved_and_wraps() {
        let mut ipam = Ipam::new(Cidr::parse("10.0.0.0/29").expect("valid"), 1);
        // .0 network, .1 reserved (node), .7 broadcast: .2 ..= .6 are usable.
        let a: Vec<_> = (0..5).map(|_| ipam.allocate().expect("free")).collect();
        assert_eq!(a[0], Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(a[4], Ipv4Addr::new(10, 0, 0, 6));
        assert!(matches!(ipam.allocate(), Err(MeshError::Exhausted(_))));
        ipam.release(a[1]);
        assert_eq!(ipam.allocate().expect("freed"), a[1]);
    }

    #[test]
    fn a_freed_address_is_not_reused_immediately() {
        let mut ipam = Ipam::new(Cidr::parse("10.0.0.0/24").expect("valid"), 1);
        let a = ipam.allocate().expect("free");
        ipam.release(a);
        assert_ne!(ipam.allocate().expect("free"), a);
        assert!(ipam.reserve(Ipv4Addr::new(10, 0, 0, 9)));
        assert!(!ipam.reserve(Ipv4Addr::new(10, 0, 0, 9)));
        assert!(!ipam.reserve(Ipv4Addr::new(10, 0, 1, 9)));
    }
}
