//! Readers for what the kernel tools print back (rule listings), into the rule IR.

pub mod iptables_save;
pub mod nft_json;
