//! Ports and port ranges, and ordered de-duplicated lists of them.

use crate::error::Reason;
use std::fmt;

/// An inclusive range of TCP/UDP ports; a single port has `start == end`.
///
/// Ports are 1..=65535: port 0 is not a destination a connection can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// A single port. Returns `None` for port 0.
    pub fn single(port: u16) -> Option<Self> {
        (port != 0).then_some(Self { start: port, end: port })
    }

    /// An inclusive range. Returns `None` for port 0 or a reversed range.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start != 0 && start <= end).then_some(Self { start, end })
    }

    /// First port.
    pub fn start(self) -> u16 {
        self.start
    }

    /// Last port.
    pub fn end(self) -> u16 {
        self.end
    }

    /// True when the range holds exactly one port.
    pub fn is_single(self) -> bool {
        self.start == self.end
    }

    /// True when `port` lies in the range.
    pub fn contains(self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }

    /// Parses one item: `N` or `A-B` (whitespace around the item is tolerated).
    ///
    /// With `allow_colon`, iptables' `A:B` spelling is accepted too; istio-iptables passes
    /// port strings straight to iptables, so its command line accepts that form, while
    /// Istio's injector rejects it in annotations.
    pub fn parse(item: &str, allow_colon: bool) -> Result<Self, Reason> {
        let item = item.trim();
        if item.is_empty() {
            return Err(Reason::EmptyItem);
        }
        if item == "*" {
            return Err(Reason::WildcardInList);
        }
        for (sep, colon) in [('-', false), (':', true)] {
            if let Some((a, b)) = item.split_once(sep) {
                let (start, end) = (parse_port(a.trim())?, parse_port(b.trim())?);
                if colon && !allow_colon {
                    return Err(Reason::ColonRange { start, end });
                }
                return Self::new(start, end).ok_or(Reason::ReversedRange { start, end });
            }
        }
        Ok(Self { start: parse_port(item)?, end: parse_port(item)? })
    }
}

/// Decimal digits only (no sign, no spaces inside), 1..=65535. Leading zeros are taken, as
/// Istio's injector (Go's `strconv.ParseUint`) takes them: `05000` is 5000.
fn parse_port(s: &str) -> Result<u16, Reason> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reason::NotAPort);
    }
    let s = s.trim_start_matches('0');
    if s.len() > 5 {
        return Err(Reason::NotAPort);
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(Reason::NotAPort),
    }
}

impl fmt::Display for PortRange {
    /// `N` or `A-B` (the annotation spelling).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// An ordered list of port ranges without duplicates; order is the order first written.
///
/// Order matters because Istio emits one rule per item in list order; keeping it makes the
/// rendered rules predictable and the annotations round-trip.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSet(Vec<PortRange>);

impl PortSet {
    /// An empty set.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Builds a set from ranges, dropping exact duplicates.
    pub fn from_ranges(ranges: impl IntoIterator<Item = PortRange>) -> Self {
        let mut s = Self::new();
        for r in ranges {
            s.insert(r);
        }
        s
    }

    /// Builds a set of single ports, dropping 0 and duplicates.
    pub fn from_ports(ports: impl IntoIterator<Item = u16>) -> Self {
        Self::from_ranges(ports.into_iter().filter_map(PortRange::single))
    }

    /// Appends `r` unless it is already present.
    pub fn insert(&mut self, r: PortRange) {
        if !self.0.contains(&r) {
            self.0.push(r);
        }
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    /// True when no port is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of items (ranges count once).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when `port` is covered by some item.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    /// Parses a comma-separated list, collecting one error per bad item.
    ///
    /// An entirely empty value (or only whitespace) is the empty set. Empty items in a
    /// non-empty list (`"80,"`) are errors, as in Istio's injector.
    pub fn parse_list(value: &str, allow_colon: bool) -> Result<Self, Vec<(String, Reason)>> {
        let mut set = Self::new();
        let mut errors = Vec::new();
        if value.trim().is_empty() {
            return Ok(set);
        }
        for item in value.split(',') {
            match PortRange::parse(item, allow_colon) {
                Ok(r) => set.insert(r),
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

impl fmt::Display for PortSet {
    /// Comma-separated, annotation spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a PortSet {
    type Item = &'a PortRange;
    type IntoIter = std::slice::Iter<'a, PortRange>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_ranges() {
        let s = PortSet::parse_list(" 80 , 8000-8100,80,443", false).unwrap();
        assert_eq!(s.to_string(), "80,8000-8100,443");
        assert_eq!(PortSet::parse_list("0000000080,080-0443", false).unwrap().to_string(), "80,80-443");
        assert!(s.contains(8050));
        assert!(!s.contains(8101));
    }

    #[test]
    fn rejects_each_bad_item() {
        let errs = PortSet::parse_list("0,70000,9000-8000,a,,8000:9000,+80", false).unwrap_err();
        let reasons: Vec<_> = errs.iter().map(|(i, r)| (i.as_str(), r.clone())).collect();
        assert_eq!(
            reasons,
            vec![
                ("0", Reason::NotAPort),
                ("70000", Reason::NotAPort),
                ("9000-8000", Reason::ReversedRange { start: 9000, end: 8000 }),
                ("a", Reason::NotAPort),
                ("", Reason::EmptyItem),
                ("8000:9000", Reason::ColonRange { start: 8000, end: 9000 }),
                ("+80", Reason::NotAPort),
            ]
        );
    }

    #[test]
    fn colon_ranges_when_allowed() {
        let s = PortSet::parse_list("8000:9000", true).unwrap();
        assert_eq!(s.ranges(), &[PortRange::new(8000, 9000).unwrap()]);
    }

    #[test]
    fn empty_value_is_empty_set() {
        assert!(PortSet::parse_list("", false).unwrap().is_empty());
        assert!(PortSet::parse_list("  ", false).unwrap().is_empty());
    }
}
