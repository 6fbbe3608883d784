//! Native nftables renderer: the plan as ONE `nft -f -` transaction into table
//! `inet meshpass`, with the same kernel effect as the iptables rendering of the same plan.
//!
//! Shape of the output:
//!
//! ```text
//! table inet meshpass                # make sure the table exists ...
//! delete table inet meshpass         # ... so that deleting it cannot fail
//! table inet meshpass {              # and recreate it, all in one atomic transaction
//!     comment "meshpass plan <hash>"
//!     set meshpass-plan { type mark; comment "plan <hash>"; }   # the hash, visible in `nft -j`
//!     set exclude-outbound-ip-ranges-v4 { type ipv4_addr; flags interval; auto-merge; ... }
//!     chain nat-prerouting { type nat hook prerouting priority -100; policy accept; ... }
//!     chain nat-istio-output { ... }
//! }
//! ```
//!
//! How the IR maps onto one `inet` table:
//!
//! - **Chains** are named `<table>-<chain lowercased, '_' → '-'>` ([`chain_name`]); the readback
//!   (`parse::nft_json`) inverts that. Built-in chains become base chains with the hook and
//!   priority of the iptables table they stand for ([`base_chain`]).
//! - **Families**: iptables has one ruleset per family, nftables' `inet` table one for both. Each
//!   chain's v4 and v6 rule lists ([`Plan::effective`]) are merged on their shared op indices
//!   (ops with [`crate::ir::Scope::Both`] appear in both) by a longest-common-subsequence merge,
//!   so each family sees exactly its own rules in its own order. Rules present for one family
//!   only get a `meta nfproto` qualifier unless an `ip`/`ip6` address match already implies it.
//!   With IPv6 off, every base chain starts with `meta nfproto ipv6 return` ([`IPV6_GATE_COMMENT`]),
//!   as ip6tables then has no rules at all.
//! - **Lists** (prefixes, ports) of two or more elements become named interval sets (matching
//!   costs the same for 1 or 10,000 elements); singletons are written inline.
//! - **TPROXY**: iptables' `TPROXY` drops the packet when no transparent socket is found, while
//!   nft's `tproxy` just continues with the next rule. Each tproxy rule is therefore followed by
//!   a rule with the same matches that drops ([`TPROXY_FALLBACK_COMMENT`]).
//!
//! Every rule carries a `counter`, labeled rules a `comment` with the label.

use crate::ir::{Chain, CtState, EffRule, Family, Match, OwnerKind, Plan, Proto, Rule, Table, Target};
use meshpass_settings::{IpNet, PortRange};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// The nftables table (family `inet`) that holds every meshpass rule of a network namespace.
pub const TABLE: &str = "meshpass";

/// The set whose comment carries the plan hash. nft 1.0.6 does not print table comments in
/// its JSON output, but it does print set comments, so the readback finds the hash here.
pub const PLAN_SET: &str = "meshpass-plan";

/// Comment of the rule that keeps IPv6 out of every base chain when the plan has no IPv6 rules.
pub const IPV6_GATE_COMMENT: &str = "meshpass: ipv6 capture disabled";

/// Comment of the drop rule that follows each tproxy rule (iptables' TPROXY drops on a miss).
pub const TPROXY_FALLBACK_COMMENT: &str = "meshpass: tproxy miss drops";

/// nft limits comments to 128 bytes (`NFT_USERDATA_MAXLEN` is larger, but nft's parser caps
/// comments at 128).
pub const COMMENT_MAX: usize = 128;

/// The nft chain name of an IR chain: `<table>-<chain lowercased, '_' → '-'>`, e.g.
/// `nat-prerouting`, `nat-istio-output`, `mangle-istio-tproxy`, `raw-output`.
pub fn chain_name(table: Table, chain: &Chain) -> String {
    format!("{}-{}", table.as_str(), chain.as_str().to_ascii_lowercase().replace('_', "-"))
}

/// The inverse of [`chain_name`]: `nat-istio-output` → (nat, `ISTIO_OUTPUT`).
pub fn parse_chain_name(name: &str) -> Option<(Table, Chain)> {
    let (t, c) = name.split_once('-')?;
    let table = Table::parse(t)?;
    if c.is_empty() {
        return None;
    }
    Some((table, Chain(c.to_ascii_uppercase().replace('-', "_"))))
}

/// Base-chain parameters of a built-in chain: `(type, hook, priority)`, matching the iptables
/// table's hook priority (`NF_IP_PRI_*`). `None` for regular chains.
pub fn base_chain(table: Table, chain: &Chain) -> Option<(&'static str, &'static str, i32)> {
    let hook = match chain.as_str() {
        crate::ir::chains::PREROUTING => "prerouting",
        crate::ir::chains::INPUT => "input",
        crate::ir::chains::FORWARD => "forward",
        crate::ir::chains::OUTPUT => "output",
        crate::ir::chains::POSTROUTING => "postrouting",
        _ => return None,
    };
    Some(match table {
        // dstnat (-100) before routing, srcnat (100) after it, as iptables' nat table.
        Table::Nat => ("nat", hook, if matches!(hook, "prerouting" | "output") { -100 } else { 100 }),
        // iptables' mangle OUTPUT re-routes when the mark changes: that is nft's `route` type.
        Table::Mangle => (if hook == "output" { "route" } else { "filter" }, hook, -150),
        Table::Raw => ("filter", hook, -300),
        Table::Filter => ("filter", hook, 0),
    })
}

/// The transaction that removes the meshpass table (a no-op when it does not exist).
pub fn render_delete() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// The plan's hash: FNV-1a (64 bit) of the rendered table body, as 16 hex digits. Stable
/// across builds and platforms, so `apply` can compare it with what the kernel holds and skip
/// an identical re-apply (which would reset the counters).
pub fn plan_hash(plan: &Plan) -> String {
    hash_body(&render_body(plan))
}

/// The full `nft -f -` transaction for `plan` (see the module documentation).
pub fn render(plan: &Plan) -> String {
    let body = render_body(plan);
    let hash = hash_body(&body);
    let mut out = String::new();
    let _ = writeln!(out, "# meshpass capture plan {hash}; apply with `nft -f`");
    out.push_str(&render_delete());
    let _ = writeln!(out, "table inet {TABLE} {{");
    let _ = writeln!(out, "\tcomment \"meshpass plan {hash}\"");
    let _ = writeln!(out, "\tset {PLAN_SET} {{");
    let _ = writeln!(out, "\t\ttype mark");
    let _ = writeln!(out, "\t\tcomment \"plan {hash}\"");
    let _ = writeln!(out, "\t}}");
    out.push_str(&body);
    out.push_str("}\n");
    out
}

/// The comment nft stores for a rule label: at most [`COMMENT_MAX`] bytes, and only
/// characters that need no escaping inside an nft string.
pub fn comment_text(label: &str) -> String {
    let mut s = String::new();
    for c in label.chars() {
        let c = if c == '"' || c == '\\' || c.is_control() { '_' } else { c };
        if s.len() + c.len_utf8() > COMMENT_MAX {
            break;
        }
        s.push(c);
    }
    s
}

fn hash_body(body: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Which families a merged rule is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
    /// Both (one op with [`crate::ir::Scope::Both`], at compatible positions).
    Both,
}

/// Merges one chain's v4 and v6 rule lists into one list that preserves each family's order.
///
/// Rules are identified by their op index; the common ops are aligned with a longest common
/// subsequence (computed as a longest increasing subsequence, O(n log n), since op indices are
/// unique within a list). Between two aligned rules, the single-family rules are interleaved by
/// op index; their mutual order does not matter since no packet is of both families. A common op
/// outside the alignment is emitted twice, once per family.
pub fn merge<'a>(v4: &'a [EffRule], v6: &'a [EffRule]) -> Vec<(&'a Rule, Presence)> {
    let pos6: HashMap<usize, usize> = v6.iter().enumerate().filter_map(|(j, r)| r.op.map(|op| (op, j))).collect();
    // (i in v4, j in v6) for ops present in both, in v4 order.
    let pairs: Vec<(usize, usize)> =
        v4.iter().enumerate().filter_map(|(i, r)| r.op.and_then(|op| pos6.get(&op)).map(|&j| (i, j))).collect();
    let aligned = longest_increasing(&pairs);
    let mut out = Vec::with_capacity(v4.len() + v6.len());
    let (mut i, mut j) = (0, 0);
    for &(ai, aj) in &aligned {
        interleave(&v4[i..ai], &v6[j..aj], &mut out);
        out.push((&v4[ai].rule, Presence::Both));
        i = ai + 1;
        j = aj + 1;
    }
    interleave(&v4[i..], &v6[j..], &mut out);
    out
}

/// Merges the single-family runs between two aligned rules. Any interleaving is correct (no
/// packet is of both families); taking the smaller op index first keeps Istio's
/// v4-then-v6-per-item order, which reads best.
fn interleave<'a>(a: &'a [EffRule], b: &'a [EffRule], out: &mut Vec<(&'a Rule, Presence)>) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let take_a = j == b.len() || (i < a.len() && a[i].op.unwrap_or(usize::MAX) <= b[j].op.unwrap_or(usize::MAX));
        if take_a {
            out.push((&a[i].rule, Presence::V4));
            i += 1;
        } else {
            out.push((&b[j].rule, Presence::V6));
            j += 1;
        }
    }
}

/// The longest subsequence of `pairs` (increasing in `.0` already) that is strictly increasing
/// in `.1` (patience sorting with back-pointers).
fn longest_increasing(pairs: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut tails: Vec<usize> = Vec::new(); // index into pairs of the smallest tail per length
    let mut prev: Vec<Option<usize>> = vec![None; pairs.len()];
    for (k, &(_, j)) in pairs.iter().enumerate() {
        let at = tails.partition_point(|&t| pairs[t].1 < j);
        prev[k] = at.checked_sub(1).map(|p| tails[p]);
        if at == tails.len() {
            tails.push(k);
        } else {
            tails[at] = k;
        }
    }
    let mut out = Vec::with_capacity(tails.len());
    let mut cur = tails.last().copied();
    while let Some(k) = cur {
        out.push(pairs[k]);
        cur = prev[k];
    }
    out.reverse();
    out
}

/// Named sets, deduplicated by content.
#[derive(Default)]
struct Sets {
    /// (type, elements) → name.
    by_content: HashMap<(&'static str, Vec<String>), String>,
    names: HashSet<String>,
    /// Declarations in creation order: (name, type, elements).
    decls: Vec<(String, &'static str, Vec<String>)>,
    unnamed: usize,
}

impl Sets {
    fn new() -> Self {
        let mut s = Self::default();
        s.names.insert(PLAN_SET.to_string());
        s
    }

    /// The name of the set of type `ty` holding `elems`, declaring it on first use.
    fn get(&mut self, ty: &'static str, elems: Vec<String>, base: Option<String>) -> String {
        let mut key_elems = elems.clone();
        key_elems.sort();
        let key = (ty, key_elems);
        if let Some(name) = self.by_content.get(&key) {
            return name.clone();
        }
        let base = match base {
            Some(b) => b,
            None => {
                self.unnamed += 1;
                format!("set-{}", self.unnamed)
            }
        };
        let mut name = base.clone();
        let mut n = 1;
        while self.names.contains(&name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        self.names.insert(name.clone());
        self.by_content.insert(key, name.clone());
        self.decls.push((name.clone(), ty, elems));
        name
    }
}

/// A set-name stem from a label: nft identifiers start with a letter and we keep them to
/// `[a-z0-9-]`.
fn ident(label: &str) -> String {
    let mut s: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .take(64)
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert_str(0, "s-");
    }
    s
}

fn fam_suffix(f: Family) -> &'static str {
    match f {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

fn net_family(n: &IpNet) -> Family {
    if n.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// An address element as nft writes it: network address, `/len` unless a host prefix.
fn net_elem(n: &IpNet) -> String {
    let n = n.network();
    let full = if n.is_ipv4() { 32 } else { 128 };
    if n.len() == full {
        n.addr().to_string()
    } else {
        format!("{}/{}", n.addr(), n.len())
    }
}

fn port_elem(r: &PortRange) -> String {
    if r.is_single() {
        r.start().to_string()
    } else {
        format!("{}-{}", r.start(), r.end())
    }
}

fn dedup_keep_order(v: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|e| seen.insert(e.clone())).collect()
}

fn neq(neg: bool) -> &'static str {
    if neg {
        "!= "
    } else {
        ""
    }
}

/// Interface names are validated upstream; anything else is mapped so that it cannot break
/// out of the quoted string (iptables' `+` wildcard is nft's `*`).
fn iface(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '+' => '*',
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*') => c,
            _ => '_',
        })
        .collect()
}

fn owner_value(id: &crate::ir::OwnerId) -> String {
    match id.as_number() {
        Some(n) => n.to_string(),
        // nft resolves names through /etc/passwd and /etc/group when it parses the rule.
        None => format!("\"{}\"", id.as_str()),
    }
}

fn ct_state(s: CtState) -> &'static str {
    match s {
        CtState::Invalid => "invalid",
        CtState::New => "new",
        CtState::Related => "related",
        CtState::Established => "established",
    }
}

fn has_addr(rule: &Rule) -> bool {
    rule.matches.iter().any(|m| matches!(m, Match::SrcNet { .. } | Match::DstNet { .. }))
}

fn explicit_family(rule: &Rule) -> Option<Family> {
    rule.matches.iter().find_map(|m| match m {
        Match::Family { family } => Some(*family),
        _ => None,
    })
}

/// One rendered rule and, when it is a tproxy rule, its fallback drop.
fn render_rule(table: Table, rule: &Rule, fam: Option<Family>, qualify: bool, sets: &mut Sets) -> Option<Vec<String>> {
    if let (Some(f), Some(e)) = (fam, explicit_family(rule)) {
        if f != e {
            return None; // can never match in this family
        }
    }
    let protos: Option<&Vec<Proto>> = rule.matches.iter().find_map(|m| match m {
        Match::Proto { protos } => Some(protos),
        _ => None,
    });
    let has_port = rule.matches.iter().any(|m| matches!(m, Match::DstPort { .. } | Match::SrcPort { .. }));
    let label = rule.label.as_deref();
    let mut parts: Vec<String> = Vec::new();
    if qualify && explicit_family(rule).is_none() {
        if let Some(f) = fam {
            parts.push(format!("meta nfproto {f}"));
        }
    }
    for m in &rule.matches {
        match m {
            Match::Family { family } => parts.push(format!("meta nfproto {family}")),
            Match::Proto { protos } => {
                let mut ps: Vec<&str> = protos.iter().map(|p| p.as_str()).collect();
                ps.dedup();
                match ps.len() {
                    0 => return None,   // iptables expands an empty list into no rule at all
                    1 if has_port => {} // folded into `tcp dport`, which implies the protocol
                    1 => parts.push(format!("meta l4proto {}", ps[0])),
                    _ => parts.push(format!("meta l4proto {{ {} }}", ps.join(", "))),
                }
            }
            Match::SrcNet { nets, neg } | Match::DstNet { nets, neg } => {
                let dir = if matches!(m, Match::SrcNet { .. }) { "saddr" } else { "daddr" };
                // Render-time family: the entry's, else the first prefix's (then the match
                // itself makes the rule single-family).
                let f = fam.or_else(|| nets.first().map(net_family))?;
                let elems = dedup_keep_order(nets.iter().filter(|n| net_family(n) == f).map(net_elem).collect());
                if elems.is_empty() {
                    return None;
                }
                let proto = if f == Family::V4 { "ip" } else { "ip6" };
                let value = if elems.len() == 1 {
                    elems[0].clone()
                } else {
                    let base = label.map(|l| {
                        if dir == "daddr" && l.ends_with("ip-ranges") {
                            format!("{}-{}", ident(l), fam_suffix(f))
                        } else {
                            format!("{}-{dir}-{}", ident(l), fam_suffix(f))
                        }
                    });
                    let ty = if f == Family::V4 { "ipv4_addr" } else { "ipv6_addr" };
                    format!("@{}", sets.get(ty, elems, base))
                };
                parts.push(format!("{proto} {dir} {}{value}", neq(*neg)));
            }
            Match::InIface { name, neg } => parts.push(format!("iifname {}\"{}\"", neq(*neg), iface(name))),
            Match::OutIface { name, neg } => parts.push(format!("oifname {}\"{}\"", neq(*neg), iface(name))),
            Match::DstPort { ports, neg } | Match::SrcPort { ports, neg } => {
                let dir = if matches!(m, Match::DstPort { .. }) { "dport" } else { "sport" };
                let elems = dedup_keep_order(ports.iter().map(port_elem).collect());
                if elems.is_empty() {
                    return None;
                }
                let proto = match protos.map(|p| p.as_slice()) {
                    Some([p]) => p.as_str(),
                    // Several protocols (or none, which nft rejects just as iptables rejects a
                    // port without `-p`): the transport header, after `meta l4proto`.
                    _ => "th",
                };
                let value = if elems.len() == 1 {
                    elems[0].clone()
                } else {
                    let base = label.map(|l| {
                        if dir == "dport" && l.ends_with("-ports") {
                            ident(l)
                        } else {
                            format!("{}-{dir}s", ident(l))
                        }
                    });
                    format!("@{}", sets.get("inet_service", elems, base))
                };
                parts.push(format!("{proto} {dir} {}{value}", neq(*neg)));
            }
            Match::Owner { kind, id, neg } => {
                let key = match kind {
                    OwnerKind::Uid => "skuid",
                    OwnerKind::Gid => "skgid",
                };
                parts.push(format!("meta {key} {}{}", neq(*neg), owner_value(id)));
            }
            Match::Mark { value, neg } => parts.push(format!("meta mark {}{value}", neq(*neg))),
            Match::ConnMark { value } => parts.push(format!("ct mark {value}")),
            Match::CtState { states } => {
                if states.is_empty() {
                    return None;
                }
                let s: Vec<&str> = states.iter().map(|s| ct_state(*s)).collect();
                parts.push(format!("ct state {}", s.join(",")));
            }
            Match::TcpSyn => parts.push("tcp flags & (fin | syn | rst | ack) == syn".to_string()),
        }
    }
    let matches = parts.join(" ");
    let target = match &rule.target {
        Target::Return => "return".to_string(),
        Target::Accept => "accept".to_string(),
        Target::Drop => "drop".to_string(),
        Target::Jump { chain } => format!("jump {}", chain_name(table, chain)),
        Target::Redirect { port, .. } => format!("redirect to :{port}"),
        Target::Tproxy { port, mark, mask } => {
            let ip = if fam == Some(Family::V6) { "ip6" } else { "ip" };
            format!("tproxy {ip} to :{port} {} accept", set_mark(*mark, *mask))
        }
        Target::SetMark { mark } => format!("meta mark set {mark}"),
        Target::ConnMarkSave => "ct mark set meta mark".to_string(),
        Target::ConnMarkRestore => "meta mark set ct mark".to_string(),
        Target::CtZone { zone } => format!("ct zone set {zone}"),
        Target::NoTrack => "notrack".to_string(),
    };
    let join = |stmt: &str, comment: Option<&str>| {
        let mut s = String::new();
        if !matches.is_empty() {
            s.push_str(&matches);
            s.push(' ');
        }
        let _ = write!(s, "counter {stmt}");
        if let Some(c) = comment {
            let _ = write!(s, " comment \"{}\"", comment_text(c));
        }
        s
    };
    let mut out = vec![join(&target, label)];
    if matches!(rule.target, Target::Tproxy { .. }) {
        out.push(join("drop", Some(TPROXY_FALLBACK_COMMENT)));
    }
    Some(out)
}

/// iptables' TPROXY mark: `mark = (mark & ~mask) ^ value`.
fn set_mark(mark: u32, mask: u32) -> String {
    if mask == u32::MAX {
        format!("meta mark set {mark}")
    } else {
        format!("meta mark set meta mark and {:#010x} xor {mark:#010x}", !mask)
    }
}

fn hook_rank(chain: &Chain) -> usize {
    use crate::ir::chains::*;
    [PREROUTING, INPUT, FORWARD, OUTPUT, POSTROUTING].iter().position(|c| *c == chain.as_str()).unwrap_or(usize::MAX)
}

/// Sets and chains: everything inside `table inet meshpass { ... }` after the hash lines.
fn render_body(plan: &Plan) -> String {
    let v4 = plan.effective(Family::V4);
    let v6 = if plan.ipv6 { plan.effective(Family::V6) } else { Default::default() };
    // Chain order: built-ins in hook order, then the others in first-use order.
    let mut order: BTreeMap<Table, Vec<Chain>> = BTreeMap::new();
    for op in &plan.ops {
        for c in std::iter::once(&op.chain).chain(op.rule.jump_target()) {
            let list = order.entry(op.table).or_default();
            if !list.contains(c) {
                list.push(c.clone());
            }
        }
    }
    for list in order.values_mut() {
        list.sort_by_key(hook_rank); // stable: the non-built-ins keep their first-use order
    }
    let empty: Vec<EffRule> = Vec::new();
    let mut sets = Sets::new();
    let mut chains_out: Vec<(Table, Chain, Vec<String>)> = Vec::new();
    let mut referenced: HashSet<(Table, Chain)> = HashSet::new();
    for (table, chains) in &order {
        for chain in chains {
            let get = |e: &'_ crate::ir::Effective| -> Vec<EffRule> {
                e.tables.get(table).and_then(|t| t.get(chain)).map(|c| c.rules.clone()).unwrap_or_default()
            };
            let (r4, r6) = (get(&v4), get(&v6));
            let (r4, r6) = (if r4.is_empty() { &empty } else { &r4 }, if r6.is_empty() { &empty } else { &r6 });
            let mut lines = Vec::new();
            for (rule, presence) in merge(r4, r6) {
                let needs_family = matches!(rule.target, Target::Tproxy { .. });
                let renderings: Vec<(Option<Family>, bool)> = match presence {
                    // With IPv6 off the gate keeps IPv6 out; no qualifier needed (but tproxy
                    // always names its family, and its fallback drop must not catch IPv6).
                    Presence::V4 => vec![(Some(Family::V4), plan.ipv6 || needs_family)],
                    Presence::V6 => vec![(Some(Family::V6), true)],
                    Presence::Both if has_addr(rule) || needs_family => {
                        vec![(Some(Family::V4), needs_family), (Some(Family::V6), needs_family)]
                    }
                    Presence::Both => vec![(None, false)],
                };
                for (fam, qualify) in renderings {
                    let qualify = qualify && !has_addr_of(rule, fam);
                    if let Some(rendered) = render_rule(*table, rule, fam, qualify, &mut sets) {
                        if let Some(t) = rule.jump_target() {
                            referenced.insert((*table, t.clone()));
                        }
                        lines.extend(rendered);
                    }
                }
            }
            chains_out.push((*table, chain.clone(), lines));
        }
    }
    let mut out = String::new();
    for (name, ty, elems) in &sets.decls {
        let _ = writeln!(out, "\tset {name} {{");
        let _ = writeln!(out, "\t\ttype {ty}");
        let _ = writeln!(out, "\t\tflags interval");
        let _ = writeln!(out, "\t\tauto-merge");
        out.push_str("\t\telements = {");
        for (k, chunk) in elems.chunks(8).enumerate() {
            out.push_str(if k == 0 { " " } else { ",\n\t\t\t     " });
            out.push_str(&chunk.join(", "));
        }
        out.push_str(" }\n\t}\n");
    }
    for (table, chain, lines) in chains_out {
        let base = base_chain(table, &chain);
        if lines.is_empty() && (base.is_some() || !referenced.contains(&(table, chain.clone()))) {
            continue;
        }
        let _ = writeln!(out, "\tchain {} {{", chain_name(table, &chain));
        if let Some((ty, hook, prio)) = base {
            let _ = writeln!(out, "\t\ttype {ty} hook {hook} priority {prio}; policy accept;");
            if !plan.ipv6 {
                let _ = writeln!(out, "\t\tmeta nfproto ipv6 counter return comment \"{IPV6_GATE_COMMENT}\"");
            }
        }
        for l in lines {
            let _ = writeln!(out, "\t\t{l}");
        }
        out.push_str("\t}\n");
    }
    out
}

/// True when the rule has an address match that, for `fam`, already implies the family.
fn has_addr_of(rule: &Rule, fam: Option<Family>) -> bool {
    let Some(f) = fam else { return false };
    rule.matches.iter().any(|m| match m {
        Match::SrcNet { nets, .. } | Match::DstNet { nets, .. } => nets.iter().any(|n| net_family(n) == f),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Op, Position, Scope};

    fn op(scope: Scope, chain: &str, position: Position, rule: Rule) -> Op {
        Op { scope, table: Table::Nat, chain: Chain::new(chain), position, rule }
    }

    fn net(s: &str) -> IpNet {
        IpNet::parse(s).expect("net")
    }

    fn ret(label: &str) -> Rule {
        Rule::new(vec![], Target::Return).labeled(label)
    }

    #[test]
    fn chain_names_round_trip() {
        for (t, c, want) in [
            (Table::Nat, "PREROUTING", "nat-prerouting"),
            (Table::Nat, "ISTIO_OUTPUT", "nat-istio-output"),
            (Table::Mangle, "ISTIO_TPROXY", "mangle-istio-tproxy"),
            (Table::Raw, "OUTPUT", "raw-output"),
            (Table::Nat, "ISTIO_IN_REDIRECT", "nat-istio-in-redirect"),
        ] {
            let name = chain_name(t, &Chain::new(c));
            assert_eq!(name, want);
            assert_eq!(parse_chain_name(&name), Some((t, Chain::new(c))));
        }
        assert_eq!(parse_chain_name("bogus-x"), None);
        assert_eq!(parse_chain_name("nat"), None);
    }

    #[test]
    fn merge_keeps_each_family_order() {
        // Both A; v4 B; v6 C; Both D; plus inserts that cross: v4 gets E first, v6 last.
        let plan = Plan {
            ops: vec![
                op(Scope::Both, "ISTIO_OUTPUT", Position::Append, ret("a")),
                op(Scope::V4, "ISTIO_OUTPUT", Position::Append, ret("b")),
                op(Scope::V6, "ISTIO_OUTPUT", Position::Append, ret("c")),
                op(Scope::Both, "ISTIO_OUTPUT", Position::Append, ret("d")),
                op(Scope::V4, "ISTIO_OUTPUT", Position::Insert(1), ret("e4")),
                op(Scope::V6, "ISTIO_OUTPUT", Position::Insert(2), ret("e6")),
            ],
            ipv6: true,
            tproxy_route: None,
        };
        let v4 = plan.effective(Family::V4);
        let v6 = plan.effective(Family::V6);
        let merged = merge(v4.chain(Table::Nat, "ISTIO_OUTPUT"), v6.chain(Table::Nat, "ISTIO_OUTPUT"));
        let got: Vec<(String, Presence)> =
            merged.iter().map(|(r, p)| (r.label.clone().unwrap_or_default(), *p)).collect();
        let want = [
            ("e4", Presence::V4),
            ("a", Presence::Both),
            ("b", Presence::V4),
            ("e6", Presence::V6),
            ("c", Presence::V6),
            ("d", Presence::Both),
        ];
        assert_eq!(got, want.map(|(l, p)| (l.to_string(), p)));
        // Projecting the merge back onto each family gives that family's list exactly.
        for (fam, eff) in [(Presence::V4, &v4), (Presence::V6, &v6)] {
            let proj: Vec<&Rule> =
                merged.iter().filter(|(_, p)| *p == fam || *p == Presence::Both).map(|(r, _)| *r).collect();
            let want: Vec<&Rule> = eff.chain(Table::Nat, "ISTIO_OUTPUT").iter().map(|r| &r.rule).collect();
            assert_eq!(proj, want);
        }
    }

    #[test]
    fn merge_splits_crossed_common_ops() {
        // The same two ops in opposite orders: only one can be aligned.
        let r = |l: &str, op: usize| EffRule { op: Some(op), rule: ret(l), counters: None, text: None };
        let v4 = [r("x", 0), r("y", 1)];
        let v6 = [r("y", 1), r("x", 0)];
        let merged = merge(&v4, &v6);
        let both = merged.iter().filter(|(_, p)| *p == Presence::Both).count();
        assert_eq!(both, 1);
        assert_eq!(merged.len(), 3);
    }

    #[test]
    fn lists_become_named_sets_and_singletons_inline() {
        let dst = |nets: &[&str]| Match::DstNet { nets: nets.iter().map(|s| net(s)).collect(), neg: false };
        let plan = Plan {
            ops: vec![
                op(
                    Scope::V4,
                    "ISTIO_OUTPUT",
                    Position::Append,
                    Rule::new(vec![dst(&["10.0.0.1/8", "192.168.0.0/16"])], Target::Return)
                        .labeled("exclude-outbound-ip-ranges"),
                ),
                op(Scope::V4, "ISTIO_OUTPUT", Position::Append, Rule::new(vec![dst(&["1.2.3.4/32"])], Target::Return)),
                op(
                    Scope::Both,
                    "ISTIO_INBOUND",
                    Position::Append,
                    Rule::new(
                        vec![
                            Match::Proto { protos: vec![Proto::Tcp] },
                            Match::DstPort {
                                ports: vec![
                                    PortRange::single(15090).expect("port"),
                                    PortRange::new(8000, 8100).expect("range"),
                                ],
                                neg: false,
                            },
                        ],
                        Target::Return,
                    )
                    .labeled("exclude-inbound-ports"),
                ),
                op(
                    Scope::Both,
                    "ISTIO_INBOUND",
                    Position::Append,
                    Rule::new(
                        vec![
                            Match::Proto { protos: vec![Proto::Tcp, Proto::Udp] },
                            Match::DstPort {
                                ports: vec![PortRange::single(1).expect("p"), PortRange::single(2).expect("p")],
                                neg: true,
                            },
                        ],
                        Target::Return,
                    ),
                ),
            ],
            ipv6: false,
            tproxy_route: None,
        };
        let out = render(&plan);
        assert!(out.contains("set exclude-outbound-ip-ranges-v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tauto-merge\n\t\telements = { 10.0.0.0/8, 192.168.0.0/16 }"), "{out}");
        assert!(
            out.contains(
                "ip daddr @exclude-outbound-ip-ranges-v4 counter return comment \"exclude-outbound-ip-ranges\""
            ),
            "{out}"
        );
        assert!(out.contains("ip daddr 1.2.3.4 counter return\n"), "{out}");
        assert!(out.contains("set exclude-inbound-ports {\n\t\ttype inet_service"), "{out}");
        assert!(out.contains("elements = { 15090, 8000-8100 }"), "{out}");
        assert!(out.contains("tcp dport @exclude-inbound-ports counter return"), "{out}");
        assert!(out.contains("meta l4proto { tcp, udp } th dport != @set-1 counter return"), "{out}");
    }

    #[test]
    fn ipv6_disabled_gates_every_base_chain() {
        let plan = Plan {
            ops: vec![
                op(
                    Scope::Both,
                    "OUTPUT",
                    Position::Append,
                    Rule::new(vec![], Target::Jump { chain: Chain::new("ISTIO_OUTPUT") }),
                ),
                op(Scope::Both, "PREROUTING", Position::Append, ret("p")),
                op(Scope::Both, "ISTIO_OUTPUT", Position::Append, ret("o")),
            ],
            ipv6: false,
            tproxy_route: None,
        };
        let out = render(&plan);
        let gate = format!("meta nfproto ipv6 counter return comment \"{IPV6_GATE_COMMENT}\"");
        assert_eq!(out.matches(&gate).count(), 2, "{out}");
        assert!(out.contains(&format!("chain nat-output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\t{gate}\n\t\tcounter jump nat-istio-output\n")), "{out}");
        // No family qualifiers: the gate already keeps IPv6 out.
        assert!(!out.contains("meta nfproto ipv4"), "{out}");
        let mut with_v6 = plan;
        with_v6.ipv6 = true;
        assert!(!render(&with_v6).contains(IPV6_GATE_COMMENT));
    }

    #[test]
    fn single_family_rules_are_qualified_when_ipv6_is_on() {
        let plan = Plan {
            ops: vec![
                op(Scope::V4, "ISTIO_OUTPUT", Position::Append, ret("only-v4")),
                op(
                    Scope::V6,
                    "ISTIO_OUTPUT",
                    Position::Append,
                    Rule::new(vec![Match::DstNet { nets: vec![net("::1/128")], neg: false }], Target::Return),
                ),
                op(Scope::Both, "ISTIO_OUTPUT", Position::Append, ret("both")),
            ],
            ipv6: true,
            tproxy_route: None,
        };
        let out = render(&plan);
        assert!(out.contains("meta nfproto ipv4 counter return comment \"only-v4\""), "{out}");
        assert!(out.contains("\t\tip6 daddr ::1 counter return\n"), "{out}");
        assert!(out.contains("\t\tcounter return comment \"both\""), "{out}");
    }

    #[test]
    fn tproxy_is_followed_by_a_drop_and_hash_is_stable() {
        let plan = Plan {
            ops: vec![Op {
                scope: Scope::V4,
                table: Table::Mangle,
                chain: Chain::new("ISTIO_TPROXY"),
                position: Position::Append,
                rule: Rule::new(
                    vec![Match::Proto { protos: vec![Proto::Tcp] }],
                    Target::Tproxy { port: 15006, mark: 1337, mask: u32::MAX },
                ),
            }],
            ipv6: true,
            tproxy_route: None,
        };
        let out = render(&plan);
        assert!(
            out.contains("meta nfproto ipv4 meta l4proto tcp counter tproxy ip to :15006 meta mark set 1337 accept\n"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "meta nfproto ipv4 meta l4proto tcp counter drop comment \"{TPROXY_FALLBACK_COMMENT}\""
            )),
            "{out}"
        );
        assert_eq!(plan_hash(&plan), plan_hash(&plan.clone()));
        assert!(out.contains(&format!("comment \"plan {}\"", plan_hash(&plan))));
    }

    #[test]
    fn comments_are_bounded_and_safe() {
        let long = "x".repeat(300);
        assert_eq!(comment_text(&long).len(), COMMENT_MAX);
        assert_eq!(comment_text("a\"b\\c"), "a_b_c");
    }
}
