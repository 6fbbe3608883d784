//! The effects: thin modules that carry out what the planner ([`crate::plan`]) decided, at
//! the Linux edge. Each does one kind of thing and decides nothing beyond undoing its own
//! half-done work.
//!
//! - [`net`]: namespaces, routed veths, the services DNAT table (`ip`, `nft` in namespaces)
//! - [`process`]: containers as processes in a pod's namespace, pidfiles, SIGTERM/SIGKILL
//! - [`capture`]: a pod's rules or eBPF programs installed, swapped live, removed
//! - [`probe`]: readiness probes inside a pod's namespace
//! - [`identity`]: the mesh CA, pods' workload certificates and sidecar mesh configs as files
//! - [`pod`]: a pod made (namespace, veth, capture) and torn down step by step
//! - [`sweep`]: what a crashed mesh left behind, removed

pub mod capture;
pub mod identity;
pub mod net;
pub mod pod;
pub mod probe;
pub mod process;
pub mod sweep;
