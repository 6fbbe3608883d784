//! Per-workload traffic-capture settings, as Istio's pod-template annotations express them.
//!
//! This crate is pure: no I/O, no async, no Linux calls. It turns an annotation map into typed
//! [`Settings`] (collecting *every* bad item at once, each error naming the annotation key, the
//! item and the reason) and renders settings back into annotations.
//!
//! The value types ([`PortRange`], [`PortSet`], [`IpNet`], [`CidrSet`], [`IfaceName`],
//! [`InterceptionMode`], [`Direction`]) are the vocabulary of the whole workspace: once a value has been parsed
//! into one of them it can be rendered into a netfilter rule without any further escaping,
//! because nothing but digits, addresses and a restricted interface alphabet can be represented.
//!
//! Beyond Istio: port ranges (`8000-8100`) in every port list, whitespace around port items,
//! and duplicate items collapse. Everything Istio's injector rejects is rejected too.
//! [`canon`] gives the one spelling the management plane writes (and, for Istio's dialect,
//! refuses what its injector refuses beyond that, such as port ranges).
//!
//! [`mesh`] adds the second level: the mesh-wide values Istio's injector gives every pod
//! without the annotation, and each workload's [`Effective`] settings with where each value
//! comes from.

pub mod annotations;
pub mod canon;
pub mod error;
pub mod iface;
pub mod ip;
pub mod keys;
pub mod mesh;
pub mod ports;

pub use annotations::{IpRangeSpec, PortSpec, Settings};
pub use canon::{Canonical, Dialect};
pub use error::{Reason, SettingError, SettingErrors};
pub use iface::IfaceName;
pub use ip::{CidrSet, IpNet};
pub use mesh::{effective, Effective, MeshDefaults, Source, Sourced};
pub use ports::{PortRange, PortSet};

/// Which way traffic goes, seen from the pod: the one direction type of the workspace (rules,
/// `explain`, the sidecar's listeners and records, the management plane's checks). Serialized
/// and printed as `inbound` / `outbound`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the pod (PREROUTING; the sidecar's inbound listener, 15006).
    Inbound,
    /// Out of a process in the pod (OUTPUT; the sidecar's outbound listener, 15001).
    Outbound,
}

impl Direction {
    /// `inbound` or `outbound`: the spelling in JSON, metrics labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How captured connections reach the sidecar: the one interception-mode type of the
/// workspace. The annotation `sidecar.istio.io/interceptionMode` takes `REDIRECT`, `TPROXY`
/// or `NONE` ([`InterceptionMode::parse`], as Istio's webhook); `EBPF` is meshpass's own
/// capture, chosen per node (`meshpass iptables --ebpf`, `meshpass up --ebpf-capture`) and
/// told to the sidecar, never written in an annotation. Serialized in upper case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InterceptionMode {
    /// NAT `REDIRECT` to the capture ports (Istio's default); the sidecar recovers the
    /// original destination from conntrack (`SO_ORIGINAL_DST`).
    #[default]
    Redirect,
    /// `TPROXY` in the mangle table for inbound (the app sees the real client address);
    /// outbound is still `REDIRECT`ed, as Istio does.
    Tproxy,
    /// No capture at all: Istio injects no init container.
    None,
    /// meshpass's eBPF socket-level capture: both listeners transparent and registered in the
    /// capture's listener map; the accepted socket's local address is the original
    /// destination.
    Ebpf,
}

impl InterceptionMode {
    /// The spelling (`REDIRECT`, `TPROXY`, `NONE`, `EBPF`).
    pub fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::Redirect => "REDIRECT",
            InterceptionMode::Tproxy => "TPROXY",
            InterceptionMode::None => "NONE",
            InterceptionMode::Ebpf => "EBPF",
        }
    }

    /// Parses an annotation value: the exact, case-sensitive spellings Istio's webhook
    /// accepts (`REDIRECT`, `TPROXY`, `NONE`; not `EBPF`, which no annotation selects).
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
