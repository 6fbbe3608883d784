//! Renderers: the plan as text for the kernel's userspace tools.

pub mod iptables;
pub mod nft;
