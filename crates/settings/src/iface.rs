//! Network interface names, validated as Istio's `ValidateInterfaceNames` does.

use crate::error::Reason;
use std::fmt;

/// A Linux interface name: `[a-zA-Z][a-zA-Z0-9_.-]*`, at most 15 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceName(String);

impl IfaceName {
    /// Validates one (already trimmed) name.
    pub fn parse(name: &str) -> Result<Self, Reason> {
        if name.is_empty() {
            return Err(Reason::EmptyInterface);
        }
        if name.len() > 15 {
            return Err(Reason::InterfaceTooLong);
        }
        let mut bytes = name.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
            return Err(Reason::InterfaceChars);
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a comma-separated list (each item trimmed); empty value = empty list.
    pub fn parse_list(value: &str) -> Result<Vec<Self>, Vec<(String, Reason)>> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        if value.trim().is_empty() {
            return Ok(out);
        }
        for item in value.split(',') {
            match Self::parse(item.trim()) {
                Ok(n) if out.contains(&n) => {}
                Ok(n) => out.push(n),
                Err(reason) => errors.push((item.to_string(), reason)),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

impl fmt::Display for IfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_like_istio() {
        assert!(IfaceName::parse("veth.1_a-b").is_ok());
        assert_eq!(IfaceName::parse("1eth"), Err(Reason::InterfaceChars));
        assert_eq!(IfaceName::parse("eth0;rm"), Err(Reason::InterfaceChars));
        assert_eq!(IfaceName::parse("abcdefghijklmnop"), Err(Reason::InterfaceTooLong));
        assert_eq!(IfaceName::parse_list(" eth0").unwrap()[0].as_str(), "eth0");
        assert_eq!(IfaceName::parse_list("eth0,").unwrap_err()[0].1, Reason::EmptyInterface);
    }
}
