//! Per-workload traffic-capture settings, as Istio's pod-template annotations express them.
//!
//! This crate is pure: no I/O, no async, no Linux calls. It turns an annotation map into typed
//! [`Settings`] (collecting *every* bad item at once, each error naming the annotation key, the
//! item and the reason) and renders settings back into annotations.
//!
//! The value types ([`PortRange`], [`PortSet`], [`IpNet`], [`CidrSet`], [`IfaceName`],
//! [`InterceptionMode`]) are the vocabulary of the whole workspace: once a value has been parsed
//! into one of them it can be rendered into a netfilter rule without any further escaping,
//! because nothing but digits, addresses and a restricted interface alphabet can be represented.
//!
//! Beyond Istio: port ranges (`8000-8100`) in every port list, whitespace around port items,
//! and duplicate items collapse. Everything Istio's injector rejects is rejected too.

pub mod annotations;
pub mod error;
pub mod iface;
pub mod ip;
pub mod keys;
pub mod ports;

pub use annotations::{IpRangeSpec, PortSpec, Settings};
pub use error::{Reason, SettingError, SettingErrors};
pub use iface::IfaceName;
pub use ip::{CidrSet, IpNet};
pub use ports::{PortRange, PortSet};

/// How the sidecar captures inbound traffic (`sidecar.istio.io/interceptionMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InterceptionMode {
    /// NAT `REDIRECT` to the inbound capture port (Istio's default).
    #[default]
    Redirect,
    /// `TPROXY` in the mangle table: the app sees the real client address.
    Tproxy,
    /// No capture at all: Istio injects no init container.
    None,
}

impl InterceptionMode {
    /// The annotation spelling (`REDIRECT`, `TPROXY`, `NONE`).
    pub fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::Redirect => "REDIRECT",
            InterceptionMode::Tproxy => "TPROXY",
            InterceptionMode::None => "NONE",
        }
    }

    /// Parses the exact, case-sensitive spelling Istio's webhook accepts.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "REDIRECT" => Some(InterceptionMode::Redirect),
            "TPROXY" => Some(InterceptionMode::Tproxy),
            "NONE" => Some(InterceptionMode::None),
            _ => None,
        }
    }
}

impl std::fmt::Display for InterceptionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Value types serialize as their annotation spelling (`"8000-8100"`, `"10.0.0.0/8"`), so
/// JSON output reads like the annotations it came from.
macro_rules! serialize_as_display {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_display!(PortRange, PortSet, PortSpec, IpNet, CidrSet, IpRangeSpec, IfaceName);
