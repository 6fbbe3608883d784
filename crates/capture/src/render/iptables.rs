//! `iptables-restore --noflush` input, line for line what istio-iptables generates.
//!
//! Per family: tables sorted by name (only those with rules), `-N` for every non-built-in
//! chain in first-use order, the rules in builder order (`-A`, or `-I chain N` relative to
//! what was built before), then `COMMIT`. A list-valued IR match expands into one line per
//! element, the protocol list innermost (Istio writes tcp then udp for each excluded port).

use crate::ir::{Chain, Family, Match, Op, Plan, Position, Rule, Table, Target};
use meshpass_settings::PortRange;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The restore input for one family, exactly as istio-iptables would feed it (empty when
/// the plan has nothing for that family).
pub fn render_restore(plan: &Plan, family: Family) -> String {
    let mut out = String::new();
    for (table, ops) in ops_by_table(plan, family) {
        let _ = writeln!(out, "* {table}");
        for chain in declared_chains(&ops) {
            let _ = writeln!(out, "-N {chain}");
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

/// The ops of one family grouped by table, tables in restore order, ops in builder order.
pub fn ops_by_table(plan: &Plan, family: Family) -> BTreeMap<Table, Vec<&Op>> {
    let mut tables: BTreeMap<Table, Vec<&Op>> = BTreeMap::new();
    for (_, op) in plan.ops_for(family) {
        tables.entry(op.table).or_default().push(op);
    }
    tables
}

/// Non-built-in chains of `ops` (their own chains and jump targets), in first-use order.
pub fn declared_chains<'a>(ops: &[&'a Op]) -> Vec<&'a Chain> {
    let mut seen: Vec<&Chain> = Vec::new();
    for op in ops {
        for c in std::iter::once(&op.chain).chain(op.rule.jump_target()) {
            if !c.is_builtin() && !seen.contains(&c) {
                seen.push(c);
            }
        }
    }
    seen
}

/// The restore lines of one op (`-A …` / `-I … N …`), one per expanded element.
pub fn op_lines(op: &Op) -> Vec<String> {
    let head = match op.position {
        Position::Append => format!("-A {}", op.chain),
        Position::Insert(n) => format!("-I {} {n}", op.chain),
    };
    rule_args(&op.rule).into_iter().map(|args| format!("{head} {args}")).collect()
}

/// The rule as iptables arguments (everything after the chain), one string per expanded
/// element.
pub fn rule_args(rule: &Rule) -> Vec<String> {
    // meshpass's own NOTRACK rules (not Istio's, so no line-for-line shape to keep) see every
    // packet, captured or not: their port lists go into multiport rules, 15 ports per rule,
    // instead of a rule per port.
    let multiport = rule.target == Target::NoTrack;
    // Build the cartesian product of list-valued matches; protocols vary fastest.
    let mut combos: Vec<Vec<String>> = vec![Vec::new()];
    let mut proto_alternatives: Option<Vec<String>> = None;
    let mut proto_slot = None;
    for m in &rule.matches {
        match m {
            Match::Proto { protos } if protos.len() > 1 => {
                proto_slot = Some(combos[0].len());
                proto_alternatives = Some(protos.iter().map(|p| format!("-p {p}")).collect());
                for c in &mut combos {
                    c.push(String::new());
                }
            }
            _ => {
                let alts = match m {
                    Match::DstPort { ports, neg: false } if multiport && ports.len() > 1 => multiports(ports, "dports"),
                    Match::SrcPort { ports, neg: false } if multiport && ports.len() > 1 => multiports(ports, "sports"),
                    _ => match_alternatives(m),
                };
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        alts.iter().map(move |a| {
                            let mut c = c.clone();
                            c.push(a.clone());
                            c
                        })
                    })
                    .collect();
            }
        }
    }
    if let (Some(slot), Some(alts)) = (proto_slot, proto_alternatives) {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                alts.iter().map(move |a| {
                    let mut c = c.clone();
                    c[slot] = a.clone();
                    c
                })
            })
            .collect();
    }
    let target = target_args(&rule.target);
    combos
        .into_iter()
        .map(|parts| {
            let mut s: Vec<String> = parts.into_iter().filter(|p| !p.is_empty()).collect();
            s.push(target.clone());
            s.join(" ")
        })
        .collect()
}

fn neg(n: bool) -> &'static str {
    if n {
        "! "
    } else {
        ""
    }
}

fn port(r: &PortRange) -> String {
    if r.is_single() {
        r.start().to_string()
    } else {
        format!("{}:{}", r.start(), r.end())
    }
}

/// `-m multiport --dports a,b,c:d` rules covering `ports`: multiport takes 15 port slots per
/// rule, a range taking two.
fn multiports(ports: &[PortRange], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chunk: Vec<String> = Vec::new();
    let mut slots = 0;
    for r in ports {
        let need = if r.is_single() { 1 } else { 2 };
        if slots + need > 15 {
            out.push(format!("-m multiport --{flag} {}", chunk.join(",")));
            chunk.clear();
            slots = 0;
        }
        chunk.push(port(r));
        slots += need;
    }
    if !chunk.is_empty() {
        out.push(format!("-m multiport --{flag} {}", chunk.join(",")));
    }
    out
}

fn ports_opt(ports: &[PortRange], negated: bool, flag: &str) -> Vec<String> {
    if negated && ports.len() > 1 {
        // A negated list cannot be split into rules; multiport says "none of these".
        let list = ports.iter().map(port).collect::<Vec<_>>().join(",");
        vec![format!("-m multiport ! --{flag}s {list}")]
    } else {
        ports.iter().map(|p| format!("{}--{flag} {}", neg(negated), port(p))).collect()
    }
}

/// The alternatives a match expands into (one element for scalar matches).
fn match_alternatives(m: &Match) -> Vec<String> {
    match m {
        Match::Family { .. } => vec![String::new()],
        Match::Proto { protos } => protos.iter().map(|p| format!("-p {p}")).collect(),
        Match::SrcNet { nets, neg: n } => nets.iter().map(|x| format!("{}-s {x}", neg(*n))).collect(),
        Match::DstNet { nets, neg: n } => nets.iter().map(|x| format!("{}-d {x}", neg(*n))).collect(),
        Match::InIface { name, neg: n } => vec![format!("{}-i {name}", neg(*n))],
        Match::OutIface { name, neg: n } => vec![format!("{}-o {name}", neg(*n))],
        Match::DstPort { ports, neg: n } => ports_opt(ports, *n, "dport"),
        Match::SrcPort { ports, neg: n } => ports_opt(ports, *n, "sport"),
        Match::Owner { kind, id, neg: n } => {
            let flag = match kind {
                crate::ir::OwnerKind::Uid => "uid-owner",
                crate::ir::OwnerKind::Gid => "gid-owner",
            };
            vec![format!("-m owner {}--{flag} {id}", neg(*n))]
        }
        Match::Mark { value, neg: n } => vec![format!("-m mark {}--mark {value}", neg(*n))],
        Match::ConnMark { value } => vec![format!("-m connmark --mark {value}")],
        Match::CtState { states } => {
            let s = states.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
            vec![format!("-m conntrack --ctstate {s}")]
        }
        // `-m tcp` spelled out: after a `-m multiport`, a bare `--tcp-flags` reads as its option.
        Match::TcpSyn => vec!["-m tcp --tcp-flags FIN,SYN,RST,ACK SYN".into()],
    }
}

fn target_args(t: &Target) -> String {
    match t {
        Target::Return => "-j RETURN".into(),
        Target::Accept => "-j ACCEPT".into(),
        Target::Drop => "-j DROP".into(),
        Target::Jump { chain } => format!("-j {chain}"),
        Target::Redirect { port, singular: false } => format!("-j REDIRECT --to-ports {port}"),
        Target::Redirect { port, singular: true } => format!("-j REDIRECT --to-port {port}"),
        Target::Tproxy { port, mark, mask } => {
            format!("-j TPROXY --tproxy-mark {mark}/{mask:#x} --on-port {port}")
        }
        Target::SetMark { mark } => format!("-j MARK --set-mark {mark}"),
        Target::ConnMarkSave => "-j CONNMARK --save-mark".into(),
        Target::ConnMarkRestore => "-j CONNMARK --restore-mark".into(),
        Target::CtZone { zone } => format!("-j CT --zone {zone}"),
        Target::NoTrack => "-j CT --notrack".into(),
    }
}
