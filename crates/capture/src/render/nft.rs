//! nftables renderer (in progress).
