//! Routing that TPROXY mode needs, and the `::6` inbound-passthrough address.
//!
//! TPROXY'd packets carry a mark; a policy rule sends marked packets to a table whose only
//! route delivers everything locally (`ip rule add fwmark M lookup T`,
//! `ip route add local default dev lo table T`). With IPv6, the proxy binds its
//! inbound-passthrough connections to `::6`, which must exist on `lo` (Istio adds it too).

use super::{LinuxError, Runner};
use crate::config::TPROXY_ROUTE_TABLE;
use crate::ir::Plan;

fn families(plan: &Plan) -> &'static [&'static str] {
    if plan.ipv6 {
        &["-4", "-6"]
    } else {
        &["-4"]
    }
}

/// Sets up what `plan` needs; idempotent.
pub fn apply(plan: &Plan, runner: &dyn Runner) -> Result<(), LinuxError> {
    if plan.ipv6 {
        let addrs = runner.check("ip", &["-6", "addr", "show", "dev", "lo"], None)?.stdout;
        if !addrs.contains("inet6 ::6/128") {
            runner.check("ip", &["-6", "addr", "add", "::6/128", "dev", "lo"], None)?;
        }
    }
    let Some(r) = plan.tproxy_route else { return Ok(()) };
    let (mark, table) = (r.mark.to_string(), r.table.to_string());
    for fam in families(plan) {
        let rules = runner.check("ip", &[fam, "rule", "show"], None)?.stdout;
        let wanted = format!("lookup {table}");
        if !rules.lines().any(|l| l.contains(&wanted)) {
            runner.check("ip", &[fam, "rule", "add", "fwmark", &mark, "lookup", &table], None)?;
        }
        runner.check("ip", &[fam, "route", "replace", "local", "default", "dev", "lo", "table", &table], None)?;
    }
    Ok(())
}

/// Removes the TPROXY policy rules and routes of the default table.
pub fn cleanup(runner: &dyn Runner) -> Result<(), LinuxError> {
    remove_table(runner, TPROXY_ROUTE_TABLE)
}

/// Removes every policy rule that looks up `table`, and the table's routes, both families.
pub fn remove_table(runner: &dyn Runner, table: u32) -> Result<(), LinuxError> {
    let table = table.to_string();
    for fam in ["-4", "-6"] {
        // Each `del` removes one matching rule; stop when none is left (bounded).
        for _ in 0..16 {
            let rules = match runner.run("ip", &[fam, "rule", "show"], None) {
                Ok(o) if o.success() => o.stdout,
                _ => break,
            };
            if !rules.lines().any(|l| l.contains(&format!("lookup {table}"))) {
                break;
            }
            runner.check("ip", &[fam, "rule", "del", "lookup", &table], None)?;
        }
        let _ = runner.run("ip", &[fam, "route", "flush", "table", &table], None);
    }
    Ok(())
}
