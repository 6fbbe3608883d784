//! The nftables backend: one `nft -f -` transaction that replaces table `inet meshpass`.

use super::{ApplyOutcome, LinuxError, Runner};
use crate::ir::Plan;

/// meshpass's table (family `inet`).
pub const TABLE: &str = "meshpass";

/// Istio's native-nftables tables, removed by a cleanup that asks for Istio's state too.
pub const ISTIO_TABLES: [&str; 3] = ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"];

/// `nft list table inet NAME` (or `-j`), `None` when the table does not exist. One call
/// instead of listing all tables first: every nft start-up costs a few milliseconds.
fn list(runner: &dyn Runner, name: &str, json: bool) -> Result<Option<String>, LinuxError> {
    let args: &[&str] = if json { &["-j", "list", "table", "inet", name] } else { &["list", "table", "inet", name] };
    let out = runner.run("nft", args, None)?;
    if out.success() {
        return Ok(Some(out.stdout));
    }
    if out.stderr.contains("No such file or directory") {
        return Ok(None);
    }
    Err(LinuxError::Failed {
        command: format!("nft {}", args.join(" ")),
        netns: runner.describe(),
        status: out.status,
        stderr: out.stderr.trim().to_string(),
    })
}

/// The marker line of a rendered ruleset that identifies the plan (its hash comment).
fn marker(rendered: &str) -> Option<&str> {
    rendered.lines().map(str::trim).find(|l| l.contains("meshpass plan"))
}

/// Installs the plan, atomically replacing a previous `inet meshpass` table. A plan that is
/// already in place (same hash) is left alone, so its counters keep counting.
pub fn apply(plan: &Plan, runner: &dyn Runner) -> Result<ApplyOutcome, LinuxError> {
    let rendered = crate::render::nft::render(plan);
    if let (Some(current), Some(m)) = (list(runner, TABLE, false)?, marker(&rendered)) {
        if current.lines().any(|l| l.trim() == m) {
            return Ok(ApplyOutcome::Unchanged);
        }
    }
    // nft applies the whole file as one transaction or nothing at all.
    runner.check("nft", &["-f", "-"], Some(&rendered))?;
    Ok(ApplyOutcome::Applied)
}

/// Deletes table `inet meshpass` (and Istio's nft tables with `istio`).
pub fn cleanup(istio: bool, runner: &dyn Runner) -> Result<(), LinuxError> {
    let mut names = vec![TABLE];
    if istio {
        names.extend(ISTIO_TABLES);
    }
    for name in names {
        let out = runner.run("nft", &["delete", "table", "inet", name], None)?;
        if !out.success() && !out.stderr.contains("No such file or directory") {
            return Err(LinuxError::Failed {
                command: format!("nft delete table inet {name}"),
                netns: runner.describe(),
                status: out.status,
                stderr: out.stderr.trim().to_string(),
            });
        }
    }
    Ok(())
}

/// The live table as `nft -j` JSON (`None` when there is no meshpass table).
pub fn list_json(runner: &dyn Runner) -> Result<Option<String>, LinuxError> {
    list(runner, TABLE, true)
}
