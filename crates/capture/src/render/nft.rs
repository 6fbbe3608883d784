//! nftables renderer (being written; this stub only fixes the signature).

use crate::ir::Plan;

/// Renders `plan` as one `nft -f` transaction into table `inet meshpass`.
pub fn render(_plan: &Plan) -> String {
    String::new()
}
