//! The iptables backends: atomic replacement of Istio's chains with `iptables-restore
//! --noflush`.
//!
//! istio-iptables itself fails when its chains already exist (`-N` of an existing chain) and
//! its cleanup only undoes the rules of the *current* configuration. meshpass instead builds
//! one restore transaction per family that, in order:
//! 1. declares every `ISTIO_*` chain with `:CHAIN - [0:0]` (created, or flushed if present),
//! 2. deletes meshpass's/Istio's rules from the built-in chains (`-D`, only those that
//!    `iptables -C` confirms exist: the ones recorded at the last apply, the ones the new plan
//!    adds, and any jump to an `ISTIO_*` chain),
//! 3. removes `ISTIO_*` chains the new plan does not use (`-X`),
//! 4. adds the plan's rules exactly as istio-iptables would.
//!
//! With iptables-nft the whole input is one kernel transaction; with legacy each table is
//! committed atomically. Either way, if the restore fails the snapshot taken before is
//! restored, so a failed apply leaves the previous rules as they were.

use super::{ApplyOutcome, LinuxError, RuleBackend, Runner};
use crate::ir::{Family, Plan, Table};
use crate::render::iptables::{declared_chains, op_lines, ops_by_table};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The programs for one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tools {
    /// iptables (v4) and ip6tables (v6) names, without `-save`/`-restore`.
    pub v4: &'static str,
    /// IPv6 variant.
    pub v6: &'static str,
}

impl Tools {
    /// The tools of a backend (`iptables`, or `iptables-legacy`).
    pub fn for_backend(b: RuleBackend) -> Self {
        match b {
            RuleBackend::IptablesLegacy => Tools { v4: "iptables-legacy", v6: "ip6tables-legacy" },
            _ => Tools { v4: "iptables", v6: "ip6tables" },
        }
    }

    fn base(self, family: Family) -> &'static str {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    /// `iptables-save` and friends.
    pub fn save(self, family: Family) -> String {
        format!("{}-save", self.base(family))
    }

    /// `iptables-restore` and friends.
    pub fn restore(self, family: Family) -> String {
        format!("{}-restore", self.base(family))
    }
}

/// Tables meshpass may touch.
const TABLES: [Table; 3] = [Table::Mangle, Table::Nat, Table::Raw];

/// What `iptables-save` shows of Istio's chains in one family.
#[derive(Debug, Default)]
struct Live {
    /// `ISTIO_*` chains per table.
    chains: BTreeMap<Table, BTreeSet<String>>,
    /// Built-in-chain rules that jump to an `ISTIO_*` chain: (table, chain, args).
    jumps: Vec<(Table, String, String)>,
    /// Normalised text of the tables meshpass touches (for "unchanged" detection).
    text: BTreeMap<Table, String>,
}

fn parse_live(save: &str) -> Live {
    let mut live = Live::default();
    let mut table = None;
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Table::parse(t.trim()).filter(|t| TABLES.contains(t));
            continue;
        }
        let Some(t) = table else { continue };
        if line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with("ISTIO_") {
                live.chains.entry(t).or_default().insert(name.to_string());
                live.text.entry(t).or_default().push_str(&format!(":{name}\n"));
            }
            continue;
        }
        // Rule lines, possibly with "[p:b] " counters in front.
        let rule =
            line.trim_start_matches(|c: char| c == '[' || c.is_ascii_digit() || c == ':' || c == ']').trim_start();
        let Some(rest) = rule.strip_prefix("-A ") else { continue };
        let (chain, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let ours = chain.starts_with("ISTIO_") || args.contains("-j ISTIO_");
        if ours || is_builtin(chain) {
            live.text.entry(t).or_default().push_str(&format!("{chain} {args}\n"));
        }
        if is_builtin(chain) && args.contains("-j ISTIO_") && !args.contains('"') {
            live.jumps.push((t, chain.to_string(), args.to_string()));
        }
    }
    live
}

fn is_builtin(chain: &str) -> bool {
    matches!(chain, "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING")
}

/// Built-in-chain rules of a plan for one family: (table, chain, args).
fn builtin_rules(plan: &Plan, family: Family) -> Vec<(Table, String, String)> {
    let mut out = Vec::new();
    for (_, op) in plan.ops_for(family) {
        if op.chain.is_builtin() {
            for line in op_lines(op) {
                let args = line.splitn(3, ' ').nth(2).unwrap_or_default();
                // "-I CHAIN N args": drop the position too.
                let args = match op.position {
                    crate::ir::Position::Insert(_) => args.split_once(' ').map(|x| x.1).unwrap_or_default(),
                    crate::ir::Position::Append => args,
                };
                out.push((op.table, op.chain.to_string(), args.to_string()));
            }
        }
    }
    out
}

/// The restore input that replaces the live state by `plan` (see the module docs).
fn transaction(plan: &Plan, family: Family, live: &Live, existing: &[(Table, String, String)]) -> String {
    let by_table = ops_by_table(plan, family);
    let mut tables: BTreeSet<Table> = by_table.keys().copied().collect();
    tables.extend(live.chains.keys().copied());
    tables.extend(existing.iter().map(|(t, _, _)| *t));
    let mut out = String::new();
    for t in tables {
        let ops = by_table.get(&t).cloned().unwrap_or_default();
        let planned: Vec<String> = declared_chains(&ops).into_iter().map(|c| c.to_string()).collect();
        let mut declare: BTreeSet<String> = planned.iter().cloned().collect();
        declare.extend(live.chains.get(&t).into_iter().flatten().cloned());
        out.push_str(&format!("*{t}\n"));
        for c in &declare {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for (_, chain, args) in existing.iter().filter(|(tt, _, _)| *tt == t) {
            out.push_str(&format!("-D {chain} {args}\n"));
        }
        for c in declare.iter().filter(|c| !planned.contains(c)) {
            out.push_str(&format!("-X {c}\n"));
        }
        for op in ops {
            for line in op_lines(op) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// A small record of what was applied, kept under `/run/meshpass/iptables` per namespace:
/// the built-in-chain rules (so a later apply or cleanup can remove exactly those) and the
/// resulting table text (so re-applying the same plan is a no-op).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Record {
    plan_hash: String,
    builtin: Vec<(String, String, String)>,
    after: BTreeMap<String, String>,
}

fn record_path(runner: &dyn Runner, family: Family) -> Option<PathBuf> {
    let id = runner.netns_id()?;
    let dir = std::env::var_os("MESHPASS_RUN_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/run/meshpass"));
    Some(dir.join("iptables").join(format!("{id}.{family}.json")))
}

fn load_record(runner: &dyn Runner, family: Family) -> Record {
    record_path(runner, family)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn store_record(runner: &dyn Runner, family: Family, rec: Option<&Record>) {
    let Some(path) = record_path(runner, family) else { return };
    match rec {
        None => {
            let _ = std::fs::remove_file(&path);
        }
        Some(rec) => {
            // Best effort: without the record the next apply falls back to the plan's own
            // rules and the ISTIO_* jumps it can see, which covers every Istio layout.
            if let (Some(dir), Ok(text)) = (path.parent(), serde_json::to_string(rec)) {
                let tmp = path.with_extension("tmp");
                let _ = std::fs::create_dir_all(dir)
                    .and_then(|_| std::fs::write(&tmp, text))
                    .and_then(|_| std::fs::rename(&tmp, &path));
            }
        }
    }
}

/// FNV-1a, enough to tell plans apart (not a security boundary).
pub fn plan_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn table_key(t: Table) -> String {
    t.as_str().to_string()
}

fn replace_family(plan: &Plan, family: Family, tools: Tools, runner: &dyn Runner) -> Result<ApplyOutcome, LinuxError> {
    let wanted = family == Family::V4 || plan.ipv6;
    let save_cmd = tools.save(family);
    let snapshot = match runner.run(&save_cmd, &[], None) {
        Ok(out) if out.success() => out.stdout,
        // No ip6tables and nothing to do for IPv6: Istio only warns in that case.
        Ok(_) | Err(LinuxError::Spawn { .. }) if !wanted => return Ok(ApplyOutcome::Unchanged),
        Ok(out) => {
            return Err(LinuxError::Failed {
                command: save_cmd,
                netns: runner.describe(),
                status: out.status,
                stderr: out.stderr,
            })
        }
        Err(e) => return Err(e),
    };
    let live = parse_live(&snapshot);
    let record = load_record(runner, family);
    let rendered = crate::render::iptables::render_restore(plan, family);
    let hash = plan_hash(&rendered);
    let live_text: BTreeMap<String, String> = live.text.iter().map(|(t, s)| (table_key(*t), s.clone())).collect();
    if record.plan_hash == hash && record.after == live_text {
        return Ok(ApplyOutcome::Unchanged);
    }
    if rendered.is_empty() && live.chains.is_empty() && live.jumps.is_empty() && record.builtin.is_empty() {
        return Ok(ApplyOutcome::Unchanged);
    }

    // Candidates for deletion from built-in chains, confirmed one by one with `-C`.
    let mut candidates: Vec<(Table, String, String)> =
        record.builtin.iter().filter_map(|(t, c, a)| Table::parse(t).map(|t| (t, c.clone(), a.clone()))).collect();
    candidates.extend(builtin_rules(plan, family));
    candidates.extend(live.jumps.iter().cloned());
    let mut existing = Vec::new();
    for cand in candidates {
        if existing.contains(&cand) {
            continue;
        }
        let (t, chain, args) = &cand;
        let mut argv = vec!["-w", "-t", t.as_str(), "-C", chain.as_str()];
        argv.extend(args.split_whitespace());
        if runner.run(tools.base(family), &argv, None)?.success() {
            existing.push(cand);
        }
    }

    let input = transaction(plan, family, &live, &existing);
    let restore = tools.restore(family);
    if let Err(e) = runner.check(&restore, &["--noflush", "-w"], Some(&input)) {
        return Err(rollback(e, &restore, &snapshot, runner));
    }
    let after = runner.check(&save_cmd, &[], None)?;
    let after: BTreeMap<String, String> =
        parse_live(&after.stdout).text.iter().map(|(t, s)| (table_key(*t), s.clone())).collect();
    let builtin = builtin_rules(plan, family).into_iter().map(|(t, c, a)| (table_key(t), c, a)).collect();
    store_record(runner, family, Some(&Record { plan_hash: hash, builtin, after }));
    Ok(ApplyOutcome::Applied)
}

/// Puts the snapshot's tables back (a full, non-`--noflush` restore replaces each table as a
/// whole, atomically).
fn rollback(err: LinuxError, restore: &str, snapshot: &str, runner: &dyn Runner) -> LinuxError {
    let mut keep = String::new();
    let mut on = false;
    for line in snapshot.lines() {
        if let Some(t) = line.strip_prefix('*') {
            on = Table::parse(t.trim()).is_some_and(|t| TABLES.contains(&t));
        }
        if on {
            keep.push_str(line);
            keep.push('\n');
        }
        if line == "COMMIT" {
            on = false;
        }
    }
    if keep.is_empty() {
        return LinuxError::RolledBack(Box::new(err));
    }
    match runner.check(restore, &["-w"], Some(&keep)) {
        Ok(_) => LinuxError::RolledBack(Box::new(err)),
        Err(restore_err) => LinuxError::RollbackFailed { apply: Box::new(err), restore: Box::new(restore_err) },
    }
}

/// Applies `plan` to both families (IPv6 only when the plan has IPv6 rules or there is
/// something of Istio's to remove there).
pub fn apply(plan: &Plan, tools: Tools, runner: &dyn Runner) -> Result<ApplyOutcome, LinuxError> {
    let mut outcome = ApplyOutcome::Unchanged;
    for family in Family::ALL {
        if replace_family(plan, family, tools, runner)? == ApplyOutcome::Applied {
            outcome = ApplyOutcome::Applied;
        }
    }
    Ok(outcome)
}

/// Removes every `ISTIO_*` chain and the built-in-chain rules that lead to them or that the
/// last apply recorded, in both families.
pub fn cleanup(tools: Tools, runner: &dyn Runner) -> Result<(), LinuxError> {
    let empty = Plan { ops: Vec::new(), ipv6: false, tproxy_route: None };
    for family in Family::ALL {
        replace_family(&empty, family, tools, runner)?;
        store_record(runner, family, None);
    }
    Ok(())
}

/// The live rules of one family, as `iptables-save -c` prints them.
pub fn save(tools: Tools, family: Family, runner: &dyn Runner) -> Result<String, LinuxError> {
    Ok(runner.check(&tools.save(family), &["-c"], None)?.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::CmdOutput;
    use std::cell::RefCell;

    /// One recorded call: program, arguments, standard input.
    type Call = (String, Vec<String>, Option<String>);

    /// Scripted runner: answers by program name, records every call.
    struct Fake {
        save: String,
        check_ok: bool,
        restore_status: i32,
        calls: RefCell<Vec<Call>>,
    }

    impl Runner for Fake {
        fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<CmdOutput, LinuxError> {
            self.calls.borrow_mut().push((
                program.into(),
                args.iter().map(|a| a.to_string()).collect(),
                stdin.map(Into::into),
            ));
            let status = match program {
                p if p.ends_with("-restore") => self.restore_status,
                p if p.ends_with("-save") => 0,
                _ => i32::from(!self.check_ok),
            };
            let stdout = if program.ends_with("-save") { self.save.clone() } else { String::new() };
            Ok(CmdOutput { status, stdout, stderr: "boom".into() })
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    const LIVE: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_OLD - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -d 1.1.1.1/32 -j RETURN\nCOMMIT\n";

    fn plan() -> Plan {
        let cfg = crate::IstioArgs {
            include_ip_ranges: Some("*".into()),
            exclude_interfaces: Some("eth9".into()),
            ..Default::default()
        }
        .to_config()
        .unwrap();
        crate::compile(&cfg)
    }

    #[test]
    fn replaces_atomically_in_one_transaction() {
        let fake = Fake { save: LIVE.into(), check_ok: true, restore_status: 0, calls: RefCell::default() };
        assert_eq!(
            replace_family(&plan(), Family::V4, Tools::for_backend(RuleBackend::Iptables), &fake).unwrap(),
            ApplyOutcome::Applied
        );
        let calls = fake.calls.borrow();
        let (_, args, input) = calls.iter().find(|c| c.0 == "iptables-restore").unwrap();
        assert_eq!(args, &["--noflush", "-w"]);
        let input = input.as_deref().unwrap();
        assert!(input.contains(":ISTIO_OUTPUT - [0:0]\n"), "{input}");
        assert!(input.contains("-D OUTPUT -j ISTIO_OUTPUT\n"), "{input}");
        assert!(input.contains("-D PREROUTING -i eth9 -j RETURN\n"), "{input}");
        assert!(input.contains("-X ISTIO_OLD\n"), "{input}");
        assert!(!input.contains("-N "), "chains are declared, never -N: {input}");
        assert!(input.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"), "{input}");
    }

    #[test]
    fn failed_restore_puts_the_snapshot_back() {
        let fake = Fake { save: LIVE.into(), check_ok: false, restore_status: 1, calls: RefCell::default() };
        let err = replace_family(&plan(), Family::V4, Tools::for_backend(RuleBackend::Iptables), &fake).unwrap_err();
        assert!(matches!(err, LinuxError::RollbackFailed { .. }), "{err}");
        let calls = fake.calls.borrow();
        let restores: Vec<_> = calls.iter().filter(|c| c.0 == "iptables-restore").collect();
        assert_eq!(restores.len(), 2);
        assert_eq!(restores[1].1, ["-w"]);
        assert_eq!(restores[1].2.as_deref(), Some(LIVE));
    }
}
