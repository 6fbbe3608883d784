//! Readback of the live nftables table: `nft -j list table inet meshpass` → one
//! [`Effective`] per family, so that `explain`, counters and drift checks work on the same
//! structure as the plan.
//!
//! The mapping inverts `render::nft`:
//!
//! - chains by name (`nat-istio-output` → nat / `ISTIO_OUTPUT`, `nat-prerouting` → nat /
//!   `PREROUTING`, see [`crate::render::nft::parse_chain_name`]);
//! - named sets (`@exclude-outbound-ip-ranges-v4`) and anonymous sets are resolved into the
//!   list-valued IR matches; nft sorts and merges interval-set elements, so lists come back in
//!   canonical order (compare with [`canonical`]);
//! - a rule goes to the v4 [`Effective`] unless it is IPv6-only (`meta nfproto ipv6`, an `ip6`
//!   header match, `tproxy ip6`) and vice versa; the family qualifiers themselves are not IR
//!   matches (in iptables the family is the table's);
//! - the renderer's helper rules (the IPv6 gate and the drop after each tproxy rule) are
//!   recognised by their comments and folded back.
//!
//! Anything the IR cannot express is an error naming the expression: the readback never
//! guesses.

use crate::ir::{Counters, CtState, EffRule, Effective, Family, Match, OwnerId, OwnerKind, Proto, Rule, Target};
use crate::render::nft::{comment_text, parse_chain_name, IPV6_GATE_COMMENT, PLAN_SET, TABLE, TPROXY_FALLBACK_COMMENT};
use meshpass_settings::{IpNet, PortRange};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// The live meshpass table, per family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// What IPv4 packets traverse (rules with `op: None`, counters and text filled in).
    pub v4: Effective,
    /// What IPv6 packets traverse (empty when [`Live::ipv6_disabled`]).
    pub v6: Effective,
    /// The plan hash the table was rendered from (`render::nft::plan_hash`), if present.
    pub hash: Option<String>,
    /// True when every base chain starts with the renderer's IPv6 gate, i.e. the plan had
    /// IPv6 off and no IPv6 packet is captured.
    pub ipv6_disabled: bool,
}

/// Why a listing could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum NftParseError {
    /// Not JSON at all.
    #[error("nft output is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not shaped like `nft -j list` output.
    #[error("unexpected nft JSON at {context}: expected {expected}")]
    Shape {
        /// Where.
        context: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// A chain whose name is not `<table>-<chain>`.
    #[error("chain {chain:?} is not a meshpass chain (expected <nat|mangle|raw|filter>-<chain>)")]
    UnknownChain {
        /// The nft chain name.
        chain: String,
    },
    /// An expression the IR has no equivalent for.
    #[error("chain {chain:?}, rule handle {handle}: unsupported expression {expr}")]
    UnknownExpression {
        /// The nft chain name.
        chain: String,
        /// The rule handle.
        handle: u64,
        /// The expression, as JSON.
        expr: String,
    },
    /// A reference to a set the table does not define.
    #[error("chain {chain:?}, rule handle {handle}: set @{set} is not defined")]
    UnknownSet {
        /// The nft chain name.
        chain: String,
        /// The rule handle.
        handle: u64,
        /// The set name.
        set: String,
    },
    /// A known expression with a value out of range or of the wrong kind.
    #[error("chain {chain:?}, rule handle {handle}: {what}: bad value {value}")]
    BadValue {
        /// The nft chain name.
        chain: String,
        /// The rule handle.
        handle: u64,
        /// What was being read.
        what: &'static str,
        /// The value, as JSON.
        value: String,
    },
    /// A rule that is well-formed but not expressible as one IR rule.
    #[error("chain {chain:?}, rule handle {handle}: {reason}")]
    Unsupported {
        /// The nft chain name.
        chain: String,
        /// The rule handle.
        handle: u64,
        /// Why.
        reason: String,
    },
}

/// A set element as nft prints it.
#[derive(Clone, Debug)]
enum Elem {
    Num(u64),
    Str(String),
    Prefix(IpAddr, u8),
    Range(Box<Elem>, Box<Elem>),
}

/// Where in the listing we are, for error messages.
struct Ctx<'a> {
    chain: &'a str,
    handle: u64,
}

impl Ctx<'_> {
    fn unknown(&self, v: &Value) -> NftParseError {
        NftParseError::UnknownExpression { chain: self.chain.to_string(), handle: self.handle, expr: v.to_string() }
    }
    fn bad(&self, what: &'static str, v: &Value) -> NftParseError {
        NftParseError::BadValue { chain: self.chain.to_string(), handle: self.handle, what, value: v.to_string() }
    }
    fn unsupported(&self, reason: impl Into<String>) -> NftParseError {
        NftParseError::Unsupported { chain: self.chain.to_string(), handle: self.handle, reason: reason.into() }
    }
}

fn elem(v: &Value) -> Option<Elem> {
    match v {
        Value::Number(n) => n.as_u64().map(Elem::Num),
        Value::String(s) => Some(Elem::Str(s.clone())),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let addr = p.get("addr")?.as_str()?.parse().ok()?;
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                Some(Elem::Prefix(addr, len))
            } else if let Some(r) = o.get("range") {
                let r = r.as_array()?;
                if r.len() != 2 {
                    return None;
                }
                Some(Elem::Range(Box::new(elem(&r[0])?), Box::new(elem(&r[1])?)))
            } else if let Some(e) = o.get("elem") {
                // An element with attributes (counter, timeout, comment): its value.
                elem(e.get("val")?)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The elements of the right-hand side of a match: a value, an anonymous set or `@named`.
fn rhs_elems(v: &Value, sets: &HashMap<String, Vec<Elem>>, ctx: &Ctx<'_>) -> Result<Vec<Elem>, NftParseError> {
    if let Some(name) = v.as_str().and_then(|s| s.strip_prefix('@')) {
        return sets.get(name).cloned().ok_or_else(|| NftParseError::UnknownSet {
            chain: ctx.chain.to_string(),
            handle: ctx.handle,
            set: name.to_string(),
        });
    }
    if let Some(list) = v.get("set") {
        let list = list.as_array().ok_or_else(|| ctx.bad("anonymous set", v))?;
        return list.iter().map(|e| elem(e).ok_or_else(|| ctx.bad("set element", e))).collect();
    }
    Ok(vec![elem(v).ok_or_else(|| ctx.bad("value", v))?])
}

fn addr_of(e: &Elem) -> Option<IpAddr> {
    match e {
        Elem::Str(s) => s.parse().ok(),
        _ => None,
    }
}

/// Addresses, prefixes and address ranges → prefixes of family `fam`.
fn nets_of(elems: &[Elem], fam: Family, ctx: &Ctx<'_>, raw: &Value) -> Result<Vec<IpNet>, NftParseError> {
    let mut out = Vec::new();
    for e in elems {
        let (a, b) = match e {
            Elem::Str(_) => {
                let a = addr_of(e).ok_or_else(|| ctx.bad("address", raw))?;
                out.push(IpNet::host(a));
                continue;
            }
            Elem::Prefix(a, len) => {
                out.push(IpNet::new(*a, *len).ok_or_else(|| ctx.bad("prefix", raw))?);
                continue;
            }
            Elem::Range(a, b) => (
                addr_of(a).ok_or_else(|| ctx.bad("address range", raw))?,
                addr_of(b).ok_or_else(|| ctx.bad("address range", raw))?,
            ),
            Elem::Num(_) => return Err(ctx.bad("address", raw)),
        };
        // auto-merge can turn adjacent prefixes into a range; split it back into prefixes.
        let (lo, hi, width) = (addr_bits(a), addr_bits(b), width_of(a));
        if a.is_ipv4() != b.is_ipv4() || lo > hi {
            return Err(ctx.bad("address range", raw));
        }
        out.extend(interval_to_nets(lo, hi, width));
    }
    if out.iter().any(|n| n.is_ipv4() != (fam == Family::V4)) {
        return Err(ctx.bad("address family", raw));
    }
    Ok(out)
}

fn port_of(e: &Elem) -> Option<u16> {
    match e {
        Elem::Num(n) => u16::try_from(*n).ok(),
        // Only with `nft -S` would services be names; accept digits in strings.
        Elem::Str(s) => s.parse().ok(),
        _ => None,
    }
}

fn ports_of(elems: &[Elem], ctx: &Ctx<'_>, raw: &Value) -> Result<Vec<PortRange>, NftParseError> {
    elems
        .iter()
        .map(|e| {
            let r = match e {
                Elem::Range(a, b) => port_of(a).zip(port_of(b)).and_then(|(a, b)| PortRange::new(a, b)),
                _ => port_of(e).and_then(PortRange::single),
            };
            r.ok_or_else(|| ctx.bad("port", raw))
        })
        .collect()
}

fn proto_of(e: &Elem) -> Option<Proto> {
    match e {
        Elem::Str(s) if s == "tcp" => Some(Proto::Tcp),
        Elem::Str(s) if s == "udp" => Some(Proto::Udp),
        Elem::Num(6) => Some(Proto::Tcp),
        Elem::Num(17) => Some(Proto::Udp),
        _ => None,
    }
}

fn addr_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn width_of(a: IpAddr) -> u32 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

fn bits_addr(bits: u128, width: u32) -> IpAddr {
    if width == 32 {
        IpAddr::from(std::net::Ipv4Addr::from(bits as u32))
    } else {
        IpAddr::from(std::net::Ipv6Addr::from(bits))
    }
}

/// The minimal list of prefixes covering exactly `[lo, hi]`.
fn interval_to_nets(mut lo: u128, hi: u128, width: u32) -> Vec<IpNet> {
    let mut out = Vec::new();
    loop {
        // The largest aligned block starting at lo that does not pass hi.
        let mut size_bits = if lo == 0 { width } else { lo.trailing_zeros().min(width) };
        while size_bits > 0 && block_end(lo, size_bits).is_none_or(|end| end > hi) {
            size_bits -= 1;
        }
        let len = (width - size_bits) as u8;
        if let Some(n) = IpNet::new(bits_addr(lo, width), len) {
            out.push(n);
        }
        match block_end(lo, size_bits) {
            Some(end) if end < hi => lo = end + 1,
            _ => break,
        }
    }
    out
}

fn block_end(lo: u128, size_bits: u32) -> Option<u128> {
    if size_bits >= 128 {
        return if lo == 0 { Some(u128::MAX) } else { None };
    }
    lo.checked_add((1u128 << size_bits) - 1)
}

/// What one `match` expression contributes.
#[derive(Default)]
struct Contribution {
    matches: Vec<Match>,
    family: Option<Family>,
}

fn key_of(left: &Value) -> Option<(&str, &str)> {
    if let Some(m) = left.get("meta") {
        return Some(("meta", m.get("key")?.as_str()?));
    }
    if let Some(c) = left.get("ct") {
        if c.get("dir").is_some() {
            return None;
        }
        return Some(("ct", c.get("key")?.as_str()?));
    }
    if let Some(p) = left.get("payload") {
        return Some((p.get("protocol")?.as_str()?, p.get("field")?.as_str()?));
    }
    None
}

/// True for the operands of `tcp flags & (fin | syn | rst | ack) == syn`: `and` is
/// `[tcp flags, [flag names]]` (nft lists the mask as an array of names) and `right` is `syn`.
fn is_syn_only(and: &Value, right: &Value) -> bool {
    let Some([flags, mask]) = and.as_array().map(Vec::as_slice) else { return false };
    if key_of(flags) != Some(("tcp", "flags")) || right.as_str() != Some("syn") {
        return false;
    }
    let mut names: Vec<&str> = match mask {
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        Value::String(s) => vec![s.as_str()],
        _ => return false,
    };
    names.sort_unstable();
    names == ["ack", "fin", "rst", "syn"]
}

fn parse_match(
    m: &Value,
    sets: &HashMap<String, Vec<Elem>>,
    ctx: &Ctx<'_>,
    whole: &Value,
) -> Result<Contribution, NftParseError> {
    let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
    let neg = match op {
        "==" | "in" => false,
        "!=" => true,
        _ => return Err(ctx.unknown(whole)),
    };
    let left = m.get("left").ok_or_else(|| ctx.unknown(whole))?;
    let right = m.get("right").ok_or_else(|| ctx.unknown(whole))?;
    let mut c = Contribution::default();
    if let Some(and) = left.get("&") {
        // `tcp flags & (fin | syn | rst | ack) == syn`, the only masked match the IR has.
        if !neg && is_syn_only(and, right) {
            c.matches.push(Match::TcpSyn);
            return Ok(c);
        }
        return Err(ctx.unknown(whole));
    }
    let (proto, field) = key_of(left).ok_or_else(|| ctx.unknown(whole))?;
    let single_num = |what: &'static str| -> Result<u64, NftParseError> {
        match rhs_elems(right, sets, ctx)?.as_slice() {
            [Elem::Num(n)] => Ok(*n),
            [Elem::Str(s)] => s.parse().map_err(|_| ctx.bad(what, right)),
            _ => Err(ctx.bad(what, right)),
        }
    };
    let no_neg = |c: &Ctx<'_>| if neg { Err(c.unknown(whole)) } else { Ok(()) };
    match (proto, field) {
        ("meta", "nfproto") => {
            no_neg(ctx)?;
            c.family = Some(match right.as_str() {
                Some("ipv4") => Family::V4,
                Some("ipv6") => Family::V6,
                _ => return Err(ctx.bad("nfproto", right)),
            });
        }
        ("meta", "l4proto") => {
            no_neg(ctx)?;
            let protos = rhs_elems(right, sets, ctx)?
                .iter()
                .map(|e| proto_of(e).ok_or_else(|| ctx.bad("l4proto", right)))
                .collect::<Result<Vec<_>, _>>()?;
            c.matches.push(Match::Proto { protos });
        }
        ("meta", "iifname") | ("meta", "oifname") => {
            let name = right.as_str().ok_or_else(|| ctx.bad("interface name", right))?.to_string();
            c.matches.push(if field == "iifname" {
                Match::InIface { name, neg }
            } else {
                Match::OutIface { name, neg }
            });
        }
        ("meta", "skuid") | ("meta", "skgid") => {
            let text = match right {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => return Err(ctx.bad("owner", right)),
            };
            let id = OwnerId::parse(&text).ok_or_else(|| ctx.bad("owner", right))?;
            let kind = if field == "skuid" { OwnerKind::Uid } else { OwnerKind::Gid };
            c.matches.push(Match::Owner { kind, id, neg });
        }
        ("meta", "mark") => {
            let value = u32::try_from(single_num("mark")?).map_err(|_| ctx.bad("mark", right))?;
            c.matches.push(Match::Mark { value, neg });
        }
        ("ct", "mark") => {
            no_neg(ctx)?;
            let value = u32::try_from(single_num("ct mark")?).map_err(|_| ctx.bad("ct mark", right))?;
            c.matches.push(Match::ConnMark { value });
        }
        ("ct", "state") => {
            no_neg(ctx)?;
            let names: Vec<&str> = match right {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => return Err(ctx.bad("ct state", right)),
            };
            let states = names
                .iter()
                .map(|s| {
                    Ok(match *s {
                        "invalid" => CtState::Invalid,
                        "new" => CtState::New,
                        "related" => CtState::Related,
                        "established" => CtState::Established,
                        _ => return Err(ctx.bad("ct state", right)),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            c.matches.push(Match::CtState { states });
        }
        ("ip", "saddr") | ("ip", "daddr") | ("ip6", "saddr") | ("ip6", "daddr") => {
            let fam = if proto == "ip" { Family::V4 } else { Family::V6 };
            let nets = nets_of(&rhs_elems(right, sets, ctx)?, fam, ctx, right)?;
            c.family = Some(fam);
            c.matches.push(if field == "saddr" { Match::SrcNet { nets, neg } } else { Match::DstNet { nets, neg } });
        }
        ("tcp" | "udp" | "th", "dport" | "sport") => {
            let ports = ports_of(&rhs_elems(right, sets, ctx)?, ctx, right)?;
            match proto {
                "tcp" => c.matches.push(Match::Proto { protos: vec![Proto::Tcp] }),
                "udp" => c.matches.push(Match::Proto { protos: vec![Proto::Udp] }),
                _ => {}
            }
            c.matches.push(if field == "dport" {
                Match::DstPort { ports, neg }
            } else {
                Match::SrcPort { ports, neg }
            });
        }
        _ => return Err(ctx.unknown(whole)),
    }
    Ok(c)
}

fn is_meta(v: &Value, key: &str) -> bool {
    v.get("meta").and_then(|m| m.get("key")).and_then(Value::as_str) == Some(key)
}

fn is_ct(v: &Value, key: &str) -> bool {
    v.get("ct").and_then(|m| m.get("key")).and_then(Value::as_str) == Some(key) && v["ct"].get("dir").is_none()
}

/// The `(mark, mask)` of a `meta mark set ...` value: a number (full mask), or
/// `(meta mark & A) | B`, which is how nft lists `meta mark and ~mask xor value`.
fn mark_value(v: &Value, ctx: &Ctx<'_>) -> Result<(u32, u32), NftParseError> {
    let num = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    if let Some(n) = num(v) {
        return Ok((n, u32::MAX));
    }
    let or = v.get("|").and_then(Value::as_array).filter(|a| a.len() == 2).ok_or_else(|| ctx.bad("mark", v))?;
    let and = or[0].get("&").and_then(Value::as_array).filter(|a| a.len() == 2).ok_or_else(|| ctx.bad("mark", v))?;
    if !is_meta(&and[0], "mark") {
        return Err(ctx.bad("mark", v));
    }
    let (a, b) = (num(&and[1]).ok_or_else(|| ctx.bad("mark", v))?, num(&or[1]).ok_or_else(|| ctx.bad("mark", v))?);
    Ok((b, !a | b))
}

/// The statements after the matches → the IR target (and the family `tproxy` implies).
fn parse_target(stmts: &[&Value], ctx: &Ctx<'_>) -> Result<(Target, Option<Family>), NftParseError> {
    let verdict = |s: &Value| -> Option<Target> {
        if s.get("return").is_some() {
            Some(Target::Return)
        } else if s.get("accept").is_some() {
            Some(Target::Accept)
        } else if s.get("drop").is_some() {
            Some(Target::Drop)
        } else {
            None
        }
    };
    match stmts {
        [] => Err(ctx.unsupported("rule has no verdict or action (the IR has no match-only rules)")),
        [s] => {
            if let Some(t) = verdict(s) {
                return Ok((t, None));
            }
            if s.get("notrack").is_some() {
                return Ok((Target::NoTrack, None));
            }
            if let Some(j) = s.get("jump") {
                let target = j.get("target").and_then(Value::as_str).ok_or_else(|| ctx.unknown(s))?;
                let (_, chain) = parse_chain_name(target)
                    .ok_or_else(|| NftParseError::UnknownChain { chain: target.to_string() })?;
                return Ok((Target::Jump { chain }, None));
            }
            if let Some(r) = s.get("redirect") {
                let port = r
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| ctx.unknown(s))?;
                if r.get("addr").is_some() || r.get("flags").is_some() {
                    return Err(ctx.unknown(s));
                }
                return Ok((Target::Redirect { port, singular: false }, None));
            }
            if let Some(m) = s.get("mangle") {
                let key = m.get("key").ok_or_else(|| ctx.unknown(s))?;
                let value = m.get("value").ok_or_else(|| ctx.unknown(s))?;
                if is_meta(key, "mark") && is_ct(value, "mark") {
                    return Ok((Target::ConnMarkRestore, None));
                }
                if is_ct(key, "mark") && is_meta(value, "mark") {
                    return Ok((Target::ConnMarkSave, None));
                }
                if is_meta(key, "mark") {
                    let (mark, mask) = mark_value(value, ctx)?;
                    if mask != u32::MAX {
                        return Err(ctx.unknown(s));
                    }
                    return Ok((Target::SetMark { mark }, None));
                }
                if is_ct(key, "zone") {
                    let zone =
                        value.as_u64().and_then(|z| u16::try_from(z).ok()).ok_or_else(|| ctx.bad("ct zone", value))?;
                    return Ok((Target::CtZone { zone }, None));
                }
            }
            Err(ctx.unknown(s))
        }
        [t, rest @ ..] if t.get("tproxy").is_some() => {
            let tp = &t["tproxy"];
            if tp.get("addr").is_some() {
                return Err(ctx.unknown(t));
            }
            let port = tp
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| ctx.unknown(t))?;
            let fam = match tp.get("family").and_then(Value::as_str) {
                Some("ip") => Some(Family::V4),
                Some("ip6") => Some(Family::V6),
                _ => None,
            };
            let (mark, mask, last) = match rest {
                [m, last] if m.get("mangle").is_some_and(|x| x.get("key").is_some_and(|k| is_meta(k, "mark"))) => {
                    let (mark, mask) = mark_value(&m["mangle"]["value"], ctx)?;
                    (mark, mask, *last)
                }
                [last] => (0, 0, *last),
                _ => return Err(ctx.unsupported("tproxy must be followed by `meta mark set` and `accept`")),
            };
            if last.get("accept").is_none() {
                return Err(ctx.unknown(last));
            }
            Ok((Target::Tproxy { port, mark, mask }, fam))
        }
        [first, ..] => Err(ctx.unsupported(format!("several actions in one rule, starting with {first}"))),
    }
}

/// A readable, nft-like rendering of one rule's expressions (for display only).
pub fn expr_text(exprs: &[Value]) -> String {
    fn val(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Array(a) => a.iter().map(val).collect::<Vec<_>>().join(","),
            Value::Object(o) => {
                if let Some(s) = o.get("set").and_then(Value::as_array) {
                    format!("{{ {} }}", s.iter().map(val).collect::<Vec<_>>().join(", "))
                } else if let Some(p) = o.get("prefix") {
                    format!("{}/{}", val(&p["addr"]), val(&p["len"]))
                } else if let Some(r) = o.get("range").and_then(Value::as_array) {
                    r.iter().map(val).collect::<Vec<_>>().join("-")
                } else if let Some(m) = o.get("meta") {
                    format!("meta {}", val(&m["key"]))
                } else if let Some(c) = o.get("ct") {
                    format!("ct {}", val(&c["key"]))
                } else if let Some(p) = o.get("payload") {
                    format!("{} {}", val(&p["protocol"]), val(&p["field"]))
                } else if let Some(a) = o.get("&").and_then(Value::as_array) {
                    // A mask listed as flag names reads as nft writes it: `(fin | syn)`.
                    let operand = |v: &Value| match v {
                        Value::Array(f) => format!("({})", f.iter().map(val).collect::<Vec<_>>().join(" | ")),
                        v => val(v),
                    };
                    a.iter().map(operand).collect::<Vec<_>>().join(" & ")
                } else if let Some(a) = o.get("|").and_then(Value::as_array) {
                    a.iter().map(val).collect::<Vec<_>>().join(" | ")
                } else {
                    v.to_string()
                }
            }
            other => other.to_string(),
        }
    }
    let mut parts = Vec::new();
    for e in exprs {
        let Some((k, v)) = e.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        parts.push(match k.as_str() {
            "match" => {
                let op = match v.get("op").and_then(Value::as_str) {
                    Some("!=") => "!= ",
                    _ if v["left"].get("&").is_some() => "== ",
                    _ => "",
                };
                let right = &v["right"];
                let r = if matches!(&v["left"], l if l.get("meta").is_some_and(|m| matches!(m["key"].as_str(), Some("iifname" | "oifname")))) {
                    format!("\"{}\"", val(right))
                } else {
                    val(right)
                };
                format!("{} {op}{r}", val(&v["left"]))
            }
            "counter" => "counter".to_string(),
            "jump" => format!("jump {}", val(&v["target"])),
            "goto" => format!("goto {}", val(&v["target"])),
            "return" | "accept" | "drop" | "notrack" => k.clone(),
            "redirect" => format!("redirect to :{}", val(&v["port"])),
            "tproxy" => format!("tproxy {} to :{}", val(&v["family"]), val(&v["port"])),
            "mangle" => format!("{} set {}", val(&v["key"]), val(&v["value"])),
            _ => e.to_string(),
        });
    }
    parts.join(" ")
}

fn shape(context: impl Into<String>, expected: &'static str) -> NftParseError {
    NftParseError::Shape { context: context.into(), expected }
}

/// Reads `nft -j list table inet meshpass` (or `nft -j list ruleset`: other tables are
/// ignored) into the per-family effective chains.
pub fn parse_ruleset(json: &str) -> Result<Live, NftParseError> {
    let doc: Value = serde_json::from_str(json)?;
    let items =
        doc.get("nftables").and_then(Value::as_array).ok_or_else(|| shape("top level", "{\"nftables\": [...]}"))?;
    let ours = |o: &Value| {
        o.get("family").and_then(Value::as_str) == Some("inet")
            && (o.get("table").or_else(|| o.get("name"))).and_then(Value::as_str) == Some(TABLE)
    };
    let mut live = Live::default();
    let mut sets: HashMap<String, Vec<Elem>> = HashMap::new();
    let mut base_chains: BTreeSet<String> = BTreeSet::new();
    let mut gated: BTreeSet<String> = BTreeSet::new();
    for item in items {
        if let Some(t) = item.get("table").filter(|t| ours(t)) {
            if let Some(h) = t.get("comment").and_then(Value::as_str).and_then(|c| c.strip_prefix("meshpass plan ")) {
                live.hash = Some(h.to_string());
            }
        } else if let Some(s) = item.get("set").filter(|s| ours(s)) {
            let name = s.get("name").and_then(Value::as_str).ok_or_else(|| shape("set", "a name"))?;
            if name == PLAN_SET {
                if let Some(h) = s.get("comment").and_then(Value::as_str).and_then(|c| c.strip_prefix("plan ")) {
                    live.hash = Some(h.to_string());
                }
                continue;
            }
            let elems = match s.get("elem") {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|e| elem(e).ok_or_else(|| shape(format!("set {name}"), "set elements")))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(shape(format!("set {name}"), "an element array")),
            };
            sets.insert(name.to_string(), elems);
        } else if let Some(c) = item.get("chain").filter(|c| ours(c)) {
            let name = c.get("name").and_then(Value::as_str).ok_or_else(|| shape("chain", "a name"))?;
            if parse_chain_name(name).is_none() {
                return Err(NftParseError::UnknownChain { chain: name.to_string() });
            }
            if c.get("hook").is_some() {
                base_chains.insert(name.to_string());
            }
        }
    }
    for item in items {
        let Some(r) = item.get("rule").filter(|r| ours(r)) else {
            continue;
        };
        let chain_nft = r.get("chain").and_then(Value::as_str).ok_or_else(|| shape("rule", "a chain name"))?;
        let handle = r.get("handle").and_then(Value::as_u64).unwrap_or(0);
        let ctx = Ctx { chain: chain_nft, handle };
        let (table, chain) =
            parse_chain_name(chain_nft).ok_or_else(|| NftParseError::UnknownChain { chain: chain_nft.to_string() })?;
        let exprs = r.get("expr").and_then(Value::as_array).ok_or_else(|| shape(format!("rule {handle}"), "expr"))?;
        let comment = r.get("comment").and_then(Value::as_str);
        if comment == Some(TPROXY_FALLBACK_COMMENT) {
            continue; // the renderer's companion of a tproxy rule: part of that IR rule
        }
        let mut matches: Vec<Match> = Vec::new();
        let mut fams: BTreeSet<Family> = BTreeSet::new();
        let mut counters = None;
        let mut stmts: Vec<&Value> = Vec::new();
        for e in exprs {
            if let Some(m) = e.get("match") {
                if !stmts.is_empty() {
                    return Err(ctx.unsupported("a match after an action"));
                }
                let c = parse_match(m, &sets, &ctx, e)?;
                fams.extend(c.family);
                for m in c.matches {
                    if !matches.contains(&m) {
                        matches.push(m);
                    }
                }
            } else if let Some(c) = e.get("counter") {
                let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
                counters = Some(Counters { packets: n("packets"), bytes: n("bytes") });
            } else {
                stmts.push(e);
            }
        }
        let (target, tfam) = parse_target(&stmts, &ctx)?;
        fams.extend(tfam);
        if fams.len() > 1 {
            return Err(ctx.unsupported("rule matches both IPv4 and IPv6 headers"));
        }
        if comment == Some(IPV6_GATE_COMMENT) && base_chains.contains(chain_nft) {
            gated.insert(chain_nft.to_string());
        }
        let rule = Rule { matches, target, label: comment.map(str::to_string) };
        let mut text = expr_text(exprs);
        if let Some(c) = comment {
            text.push_str(&format!(" comment \"{c}\""));
        }
        let eff = EffRule { op: None, rule, counters, text: Some(text) };
        let fam = fams.into_iter().next();
        if fam != Some(Family::V6) {
            live.v4.push(table, chain.clone(), eff.clone());
        }
        if fam != Some(Family::V4) {
            live.v6.push(table, chain, eff);
        }
    }
    live.ipv6_disabled = !base_chains.is_empty() && gated == base_chains;
    if live.ipv6_disabled {
        live.v6 = Effective::default();
    }
    Ok(live)
}

/// `eff` in a canonical form for comparing a plan with a readback, for `family`: op indices,
/// counters and text dropped; matches sorted and deduplicated; lists sorted, merged and (for
/// prefixes) reduced to the minimal covering prefixes of the family; family matches folded;
/// rules that can never match (an empty list, the other family) and empty chains removed;
/// labels cut as nft comments are. Owner names are kept as written (see [`canonical_with`]).
pub fn canonical(eff: &Effective, family: Family) -> Effective {
    canonical_with(eff, family, &|_, id| id.clone())
}

/// [`canonical`], mapping owner ids through `resolve` first (nft resolves user and group names
/// when it loads a rule and lists numbers, so a plan with names compares after resolving them).
pub fn canonical_with(eff: &Effective, family: Family, resolve: &dyn Fn(OwnerKind, &OwnerId) -> OwnerId) -> Effective {
    let mut out = Effective::default();
    for (table, chains) in &eff.tables {
        for (chain, c) in chains {
            for r in &c.rules {
                if let Some(rule) = canonical_rule(&r.rule, family, resolve) {
                    out.push(*table, chain.clone(), EffRule { op: None, rule, counters: None, text: None });
                }
            }
        }
    }
    out
}

fn canonical_rule(rule: &Rule, family: Family, resolve: &dyn Fn(OwnerKind, &OwnerId) -> OwnerId) -> Option<Rule> {
    let mut matches: Vec<Match> = Vec::new();
    for m in &rule.matches {
        let m = match m {
            Match::Family { family: f } => {
                if *f != family {
                    return None;
                }
                continue;
            }
            Match::Proto { protos } => {
                let mut p = protos.clone();
                p.sort();
                p.dedup();
                if p.is_empty() {
                    return None;
                }
                Match::Proto { protos: p }
            }
            Match::SrcNet { nets, neg } | Match::DstNet { nets, neg } => {
                let nets = canonical_nets(nets, family);
                if nets.is_empty() {
                    return None;
                }
                if matches!(m, Match::SrcNet { .. }) {
                    Match::SrcNet { nets, neg: *neg }
                } else {
                    Match::DstNet { nets, neg: *neg }
                }
            }
            Match::DstPort { ports, neg } | Match::SrcPort { ports, neg } => {
                let ports = canonical_ports(ports);
                if ports.is_empty() {
                    return None;
                }
                if matches!(m, Match::DstPort { .. }) {
                    Match::DstPort { ports, neg: *neg }
                } else {
                    Match::SrcPort { ports, neg: *neg }
                }
            }
            Match::CtState { states } => {
                let mut s = states.clone();
                s.sort_by_key(|s| s.as_str());
                s.dedup();
                if s.is_empty() {
                    return None;
                }
                Match::CtState { states: s }
            }
            Match::Owner { kind, id, neg } => Match::Owner { kind: *kind, id: resolve(*kind, id), neg: *neg },
            other => other.clone(),
        };
        matches.push(m);
    }
    let mut keyed: Vec<(String, Match)> =
        matches.into_iter().map(|m| (serde_json::to_string(&m).unwrap_or_default(), m)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    let target = match &rule.target {
        Target::Redirect { port, .. } => Target::Redirect { port: *port, singular: false },
        t => t.clone(),
    };
    Some(Rule {
        matches: keyed.into_iter().map(|(_, m)| m).collect(),
        target,
        label: rule.label.as_deref().map(comment_text),
    })
}

/// Prefixes of `family`, host bits cleared, as the minimal sorted list covering their union.
pub fn canonical_nets(nets: &[IpNet], family: Family) -> Vec<IpNet> {
    let width = if family == Family::V4 { 32 } else { 128 };
    let mut iv: Vec<(u128, u128)> = nets
        .iter()
        .filter(|n| n.is_ipv4() == (family == Family::V4))
        .map(|n| {
            let n = n.network();
            (addr_bits(n.addr()), addr_bits(n.broadcast()))
        })
        .collect();
    iv.sort();
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for (lo, hi) in iv {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged.into_iter().flat_map(|(lo, hi)| interval_to_nets(lo, hi, width)).collect()
}

/// Port ranges sorted, overlapping and adjacent ones merged.
pub fn canonical_ports(ports: &[PortRange]) -> Vec<PortRange> {
    let mut iv: Vec<(u16, u16)> = ports.iter().map(|p| (p.start(), p.end())).collect();
    iv.sort();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in iv {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged.into_iter().filter_map(|(a, b)| PortRange::new(a, b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        IpNet::parse(s).expect("net")
    }

    #[test]
    fn ranges_split_into_prefixes() {
        let v4 = |lo: &str, hi: &str| {
            let (a, b): (IpAddr, IpAddr) = (lo.parse().expect("a"), hi.parse().expect("b"));
            interval_to_nets(addr_bits(a), addr_bits(b), 32).iter().map(|n| n.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(v4("10.0.0.0", "10.0.2.255"), ["10.0.0.0/23", "10.0.2.0/24"]);
        assert_eq!(v4("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(v4("10.0.0.1", "10.0.0.1"), ["10.0.0.1/32"]);
        let all6 = interval_to_nets(0, u128::MAX, 128);
        assert_eq!(all6, vec![net("::/0")]);
    }

    #[test]
    fn canonical_lists_merge() {
        let nets =
            canonical_nets(&[net("10.0.1.7/24"), net("10.0.0.0/24"), net("::1/128"), net("10.0.0.0/8")], Family::V4);
        assert_eq!(nets, vec![net("10.0.0.0/8")]);
        let p = |a, b| PortRange::new(a, b).expect("range");
        assert_eq!(
            canonical_ports(&[p(15090, 15090), p(15020, 15020), p(15021, 15021)]),
            vec![p(15020, 15021), p(15090, 15090)]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(parse_ruleset("nope"), Err(NftParseError::Json(_))));
        assert!(matches!(parse_ruleset("{}"), Err(NftParseError::Shape { .. })));
        let unknown = r#"{"nftables":[{"chain":{"family":"inet","table":"meshpass","name":"nat-output","hook":"output"}},
            {"rule":{"family":"inet","table":"meshpass","chain":"nat-output","handle":7,
             "expr":[{"limit":{"rate":1,"per":"second"}},{"accept":null}]}}]}"#;
        let err = parse_ruleset(unknown).expect_err("limit is not in the IR");
        assert!(err.to_string().contains("limit"), "{err}");
        assert!(err.to_string().contains("nat-output"), "{err}");
        let bad_chain = r#"{"nftables":[{"chain":{"family":"inet","table":"meshpass","name":"weird"}}]}"#;
        assert!(matches!(parse_ruleset(bad_chain), Err(NftParseError::UnknownChain { .. })));
        let missing_set = r#"{"nftables":[{"rule":{"family":"inet","table":"meshpass","chain":"nat-output","handle":1,
            "expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"@nope"}},{"return":null}]}}]}"#;
        assert!(matches!(parse_ruleset(missing_set), Err(NftParseError::UnknownSet { .. })));
    }
}
