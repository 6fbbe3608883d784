//! Validation errors: one per bad item, each naming the key, the item and the reason.

use std::fmt;

/// Why an item was rejected. The `Display` text completes the sentence
/// `<key>: "<item>" <reason>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// A number outside 1..=65535, or not a number at all.
    #[error("is not a port (1-65535)")]
    NotAPort,
    /// `a-b` with `a > b`.
    #[error("is not a port range: {start} is greater than {end}")]
    ReversedRange {
        /// First port of the range as written.
        start: u16,
        /// Last port of the range as written.
        end: u16,
    },
    /// iptables' `a:b` spelling, which Istio's injector rejects.
    #[error("is not a port range: write {start}-{end} (Istio rejects the ':' form)")]
    ColonRange {
        /// First port.
        start: u16,
        /// Last port.
        end: u16,
    },
    /// An empty list element, e.g. from a trailing comma.
    #[error("is an empty item (remove the extra comma)")]
    EmptyItem,
    /// `*` in a list that cannot be a wildcard.
    #[error("is not allowed here: this list takes explicit items, not a wildcard")]
    WildcardNotAllowed,
    /// `*` mixed with other items.
    #[error("must be the whole value, not one item of a list")]
    WildcardInList,
    /// A CIDR without a `/`.
    #[error("is not an IP range: expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32")]
    MissingPrefix,
    /// The part before `/` is not an IPv4 or IPv6 address.
    #[error("is not an IP range: {0:?} is not an IPv4 or IPv6 address")]
    BadAddress(String),
    /// The part after `/` is not a decimal number without leading zeros.
    #[error("is not an IP range: prefix length {0:?} is not a number (no leading zeros)")]
    BadPrefixLength(String),
    /// A prefix length longer than the address.
    #[error("is not an IP range: prefix length {len} is out of range for {family} (0-{max})")]
    PrefixTooLong {
        /// The prefix length as written.
        len: u32,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// 32 or 128.
        max: u8,
    },
    /// Whitespace inside an IP range item (Istio does not trim IP ranges).
    #[error("contains whitespace; IP ranges must be written without spaces (Istio rejects them)")]
    WhitespaceInCidr,
    /// An interface name that is empty.
    #[error("is an empty interface name (remove the extra comma)")]
    EmptyInterface,
    /// An interface name longer than the kernel allows.
    #[error("is not an interface name: longer than 15 characters")]
    InterfaceTooLong,
    /// An interface name with characters outside `[a-zA-Z][a-zA-Z0-9_.-]*`.
    #[error(
        "is not an interface name: it must start with a letter and contain only letters, digits, '_', '.' and '-'"
    )]
    InterfaceChars,
    /// Not one of `REDIRECT`, `TPROXY`, `NONE`.
    #[error("is not an interception mode: use REDIRECT, TPROXY or NONE (case-sensitive)")]
    InterceptionMode,
    /// Anything else, with a free-text explanation.
    #[error("{0}")]
    Other(String),
}

/// One rejected item of one setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingError {
    /// The annotation key (or flag / field name) the item came from.
    pub key: String,
    /// The offending item, exactly as written.
    pub item: String,
    /// Why it was rejected.
    pub reason: Reason,
}

impl SettingError {
    /// Builds an error for `item` of `key`.
    pub fn new(key: impl Into<String>, item: impl Into<String>, reason: Reason) -> Self {
        Self { key: key.into(), item: item.into(), reason }
    }
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:?}` quotes the item and escapes control characters, so a value such as
        // "10.0.0.0/8\n-A OUTPUT -j ACCEPT" prints on one line, visibly.
        write!(f, "{}: {:?} {}", self.key, self.item, self.reason)
    }
}

impl std::error::Error for SettingError {}

/// Every error found in one annotation map, in key order then item order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingErrors(pub Vec<SettingError>);

impl SettingErrors {
    /// The individual errors.
    pub fn iter(&self) -> impl Iterator<Item = &SettingError> {
        self.0.iter()
    }

    /// How many items were rejected.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing was rejected.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for SettingErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SettingErrors {}

impl From<Vec<SettingError>> for SettingErrors {
    fn from(v: Vec<SettingError>) -> Self {
        Self(v)
    }
}
