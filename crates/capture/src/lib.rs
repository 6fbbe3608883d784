//! The capture engine: settings + mesh defaults → a backend-independent rule IR
//! ([`ir::Plan`]) → `iptables-restore` input (Istio-exact) or a native nftables
//! transaction; `explain` over the IR; and, at the edge, applying and reading back rules in a
//! network namespace.
//!
//! Everything but the `linux` module is pure: no I/O, no async.

pub mod compile;
pub mod config;
pub mod ebpf;
pub mod explain;
pub mod ir;
pub mod istio_flags;
pub mod linux;
pub mod parse;
pub mod render;

pub use compile::compile;
pub use config::{CaptureConfig, InjectorValues, OwnerGroups};
pub use ir::Plan;
pub use istio_flags::IstioArgs;
