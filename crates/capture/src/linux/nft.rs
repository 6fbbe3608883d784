//! The nftables backend: one `nft -f -` transaction that replaces table `inet meshpass`.

use super::{ApplyOutcome, LinuxError, Runner};
use crate::ir::Plan;

/// meshpass's table (family `inet`).
pub const TABLE: &str = "meshpass";

/// Istio's native-nftables tables, removed by a cleanup that asks for Istio's state too.
pub const ISTIO_TABLES: [&str; 3] = ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"];

fn tables(runner: &dyn Runner) -> Result<String, LinuxError> {
    Ok(runner.check("nft", &["list", "tables"], None)?.stdout)
}

fn has_table(listing: &str, name: &str) -> bool {
    listing.lines().any(|l| l.trim() == format!("table inet {name}"))
}

/// The marker line of a rendered ruleset that identifies the plan (its hash comment).
fn marker(rendered: &str) -> Option<&str> {
    rendered.lines().map(str::trim).find(|l| l.contains("meshpass plan"))
}

/// Installs the plan, atomically replacing a previous `inet meshpass` table. A plan that is
/// already in place (same hash) is left alone, so its counters keep counting.
pub fn apply(plan: &Plan, runner: &dyn Runner) -> Result<ApplyOutcome, LinuxError> {
    let rendered = crate::render::nft::render(plan);
    if has_table(&tables(runner)?, TABLE) {
        let current = runner.check("nft", &["list", "table", "inet", TABLE], None)?.stdout;
        if let Some(m) = marker(&rendered) {
            if current.lines().any(|l| l.trim() == m) {
                return Ok(ApplyOutcome::Unchanged);
            }
        }
    }
    // nft applies the whole file as one transaction or nothing at all.
    runner.check("nft", &["-f", "-"], Some(&rendered))?;
    Ok(ApplyOutcome::Applied)
}

/// Deletes table `inet meshpass` (and Istio's nft tables with `istio`).
pub fn cleanup(istio: bool, runner: &dyn Runner) -> Result<(), LinuxError> {
    let listing = tables(runner)?;
    let mut names = vec![TABLE];
    if istio {
        names.extend(ISTIO_TABLES);
    }
    for name in names {
        if has_table(&listing, name) {
            runner.check("nft", &["delete", "table", "inet", name], None)?;
        }
    }
    Ok(())
}

/// The live table as `nft -j` JSON (`None` when there is no meshpass table).
pub fn list_json(runner: &dyn Runner) -> Result<Option<String>, LinuxError> {
    if !has_table(&tables(runner)?, TABLE) {
        return Ok(None);
    }
    Ok(Some(runner.check("nft", &["-j", "list", "table", "inet", TABLE], None)?.stdout))
}
