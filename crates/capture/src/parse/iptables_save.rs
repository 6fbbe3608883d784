//! `iptables-save -c` / `ip6tables-save -c` output (iptables 1.8.9, nft and legacy backends)
//! → one family's [`Effective`] ruleset with counters, so that `explain` can walk what the
//! kernel really holds.
//!
//! Every table is read (`*table`, `:CHAIN POLICY [p:b]`, `[p:b] -A CHAIN args…`, `COMMIT`).
//! Rules keep their counters and, as `text`, their arguments exactly as printed. The
//! normalized forms iptables-save prints are understood (`-p tcp -m tcp --dport 53`,
//! `-m multiport ! --dports 53,15008`, `--dport 8000:9000`, marks in hex, `MARK --set-xmark
//! V/0xffffffff`, `TPROXY --on-port … --on-ip 0.0.0.0 --tproxy-mark V/M`, `CONNMARK
//! --save-mark --nfmask … --ctmask …`), and `-m comment` is ignored.
//!
//! Anything the rule IR cannot express is an error naming the line and the token — never a
//! silently different rule. A *match* the IR does not model (`-m statistic …`, `--tcp-flags
//! SYN SYN`, a masked mark) is kept apart while parsing so that, once the IR has a
//! `Match::Unknown { text }`, the rule can be kept and `explain` can report "may match"
//! instead of failing the whole read-back; until then it is
//! [`SaveParseError::UnsupportedMatch`].
//!
//! Not kept: chain policies (only `ACCEPT` is accepted for raw/mangle/nat built-in chains,
//! which is all `explain` needs; filter policies are not its concern) and chains without
//! rules, so that a live ruleset has the same shape as [`crate::ir::Plan::effective`].

use crate::ir::{Chain, Counters, CtState, EffRule, Effective, Match, OwnerId, OwnerKind, Proto, Rule, Table, Target};
use meshpass_settings::{IpNet, PortRange};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Why save output could not be read. Line numbers are 1-based in the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaveParseError {
    /// A chain or rule line before any `*table` line.
    #[error("line {line}: `{text}` outside a table (expected a `*table` line first)")]
    OutsideTable {
        /// Line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A table netfilter does not have (or a new table before the last one's `COMMIT`).
    #[error("line {line}: unexpected table line `{text}`")]
    BadTable {
        /// Line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// The input ended inside a table.
    #[error("line {line}: table {table} is not closed by COMMIT")]
    MissingCommit {
        /// Line of the `*table` line.
        line: usize,
        /// The table.
        table: Table,
    },
    /// A `:CHAIN POLICY [p:b]` line that does not have that shape.
    #[error("line {line}: malformed chain declaration `{text}`")]
    BadChain {
        /// Line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A built-in chain whose policy `explain` would have to model (e.g. `DROP`).
    #[error("line {line}: policy {policy} of {table} {chain} is not modelled (only ACCEPT is)")]
    UnsupportedPolicy {
        /// Line number.
        line: usize,
        /// Table.
        table: Table,
        /// Chain.
        chain: String,
        /// The policy.
        policy: String,
    },
    /// A `[packets:bytes]` prefix that is not two numbers.
    #[error("line {line}: malformed counters `{text}`")]
    BadCounters {
        /// Line number.
        line: usize,
        /// The counters as written.
        text: String,
    },
    /// A rule in a chain the table never declared.
    #[error("line {line}: rule for undeclared chain `{chain}`")]
    UndeclaredChain {
        /// Line number.
        line: usize,
        /// The chain.
        chain: String,
    },
    /// A quoted argument without its closing quote.
    #[error("line {line}: unterminated quote")]
    UnterminatedQuote {
        /// Line number.
        line: usize,
    },
    /// An option at the end of the line without its value.
    #[error("line {line}: `{option}` needs a value")]
    MissingValue {
        /// Line number.
        line: usize,
        /// The option.
        option: String,
    },
    /// An option whose value does not parse.
    #[error("line {line}: bad value `{value}` for `{option}`: {reason}")]
    BadValue {
        /// Line number.
        line: usize,
        /// The option.
        option: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A match the rule IR does not model (kept as text until the IR has `Match::Unknown`).
    #[error("line {line}: match `{token}` is not modelled by the rule IR")]
    UnsupportedMatch {
        /// Line number.
        line: usize,
        /// The match as written (`-m statistic --mode random`).
        token: String,
    },
    /// A target (or target option) the rule IR does not model.
    #[error("line {line}: target `{token}` is not modelled by the rule IR")]
    UnsupportedTarget {
        /// Line number.
        line: usize,
        /// The target as written (`-j DNAT --to-destination 10.0.0.1`).
        token: String,
    },
    /// A rule without `-j` (a pure counting rule); the IR has no "continue" target.
    #[error("line {line}: rule has no target")]
    NoTarget {
        /// Line number.
        line: usize,
    },
    /// A token that is not an option where an option was expected.
    #[error("line {line}: unexpected `{token}`")]
    UnexpectedToken {
        /// Line number.
        line: usize,
        /// The token.
        token: String,
    },
    /// A line that is none of the above (`-I`, `-N` …: restore input, not save output).
    #[error("line {line}: unrecognised line `{text}`")]
    UnexpectedLine {
        /// Line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// Parses `iptables-save -c` (or `ip6tables-save -c`, or `iptables-save` without counters)
/// output of one family into its effective ruleset.
pub fn parse_save(text: &str) -> Result<Effective, SaveParseError> {
    let mut eff = Effective::default();
    // (table, line of `*table`, declared chains)
    let mut open: Option<(Table, usize, BTreeSet<String>)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(name) = l.strip_prefix('*') {
            let table = Table::parse(name.trim())
                .filter(|_| open.is_none())
                .ok_or_else(|| SaveParseError::BadTable { line, text: l.to_string() })?;
            open = Some((table, line, BTreeSet::new()));
            continue;
        }
        let Some((table, _, declared)) = open.as_mut() else {
            return Err(SaveParseError::OutsideTable { line, text: l.to_string() });
        };
        let table = *table;
        if l == "COMMIT" {
            open = None;
        } else if let Some(decl) = l.strip_prefix(':') {
            declared.insert(chain_decl(line, table, decl, l)?);
        } else {
            let (counters, rest) = split_counters(line, l)?;
            let Some(after) = rest.strip_prefix("-A ") else {
                return Err(SaveParseError::UnexpectedLine { line, text: l.to_string() });
            };
            let after = after.trim_start();
            let (chain, args) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
            if !declared.contains(chain) && !Chain::new(chain).is_builtin() {
                return Err(SaveParseError::UndeclaredChain { line, chain: chain.to_string() });
            }
            let args = args.trim();
            let rule = parse_rule(line, args, declared)?;
            eff.push(table, Chain::new(chain), EffRule { op: None, rule, counters, text: Some(args.to_string()) });
        }
    }
    match open {
        Some((table, line, _)) => Err(SaveParseError::MissingCommit { line, table }),
        None => Ok(eff),
    }
}

/// `NAME POLICY [p:b]` → the chain name, checking the policy.
fn chain_decl(line: usize, table: Table, decl: &str, text: &str) -> Result<String, SaveParseError> {
    let bad = || SaveParseError::BadChain { line, text: text.to_string() };
    let mut parts = decl.split_whitespace();
    let (Some(name), Some(policy)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    if let Some(c) = parts.next() {
        parse_counters(c).ok_or_else(bad)?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    let builtin = Chain::new(name).is_builtin();
    if builtin == (policy == "-") {
        return Err(bad());
    }
    // explain walks raw/mangle/nat and assumes their built-in chains accept at the end.
    if builtin && policy != "ACCEPT" && table != Table::Filter {
        return Err(SaveParseError::UnsupportedPolicy {
            line,
            table,
            chain: name.to_string(),
            policy: policy.to_string(),
        });
    }
    Ok(name.to_string())
}

/// Splits an optional `[p:b] ` prefix off a rule line.
fn split_counters(line: usize, l: &str) -> Result<(Option<Counters>, &str), SaveParseError> {
    if !l.starts_with('[') {
        return Ok((None, l));
    }
    let end = l.find(']').ok_or_else(|| SaveParseError::BadCounters { line, text: l.to_string() })?;
    let c = &l[..=end];
    let counters = parse_counters(c).ok_or_else(|| SaveParseError::BadCounters { line, text: c.to_string() })?;
    Ok((Some(counters), l[end + 1..].trim_start()))
}

fn parse_counters(c: &str) -> Option<Counters> {
    let inner = c.strip_prefix('[')?.strip_suffix(']')?;
    let (p, b) = inner.split_once(':')?;
    Some(Counters { packets: p.parse().ok()?, bytes: b.parse().ok()? })
}

/// Splits arguments as iptables-restore does: whitespace-separated, `"…"` (with `\"` and
/// `\\` escapes, as iptables-save writes comments) or `'…'` quoting.
fn tokenize(line: usize, args: &str) -> Result<Vec<String>, SaveParseError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quote: Option<char> = None;
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some('"') if c == '\\' => match chars.next() {
                Some(n) => cur.push(n),
                None => return Err(SaveParseError::UnterminatedQuote { line }),
            },
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_token = true;
            }
            None if c.is_whitespace() => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            None => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if quote.is_some() {
        return Err(SaveParseError::UnterminatedQuote { line });
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

/// A parsed match: one the IR models, or the text of one it does not.
enum Parsed {
    Known(Match),
    Unknown(String),
}

/// Core (non-module) options: they end a module's option list.
fn is_core_option(t: &str) -> bool {
    matches!(
        t,
        "-s" | "--source"
            | "-d"
            | "--destination"
            | "-i"
            | "--in-interface"
            | "-o"
            | "--out-interface"
            | "-p"
            | "--protocol"
            | "-f"
            | "--fragment"
            | "-m"
            | "--match"
            | "-j"
            | "--jump"
            | "-g"
            | "--goto"
    )
}

/// Parses the arguments of one rule (everything after `-A CHAIN`).
fn parse_rule(line: usize, args: &str, declared: &BTreeSet<String>) -> Result<Rule, SaveParseError> {
    let toks = tokenize(line, args)?;
    let mut matches: Vec<Parsed> = Vec::new();
    let mut target: Option<Target> = None;
    let mut module: Option<String> = None;
    let mut neg = false;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].as_str();
        i += 1;
        if t == "!" {
            neg = true;
            continue;
        }
        let value = |i: &mut usize| -> Result<String, SaveParseError> {
            let v =
                toks.get(*i).cloned().ok_or_else(|| SaveParseError::MissingValue { line, option: t.to_string() })?;
            *i += 1;
            Ok(v)
        };
        let bang = if neg { "! " } else { "" };
        match t {
            "-s" | "--source" | "-d" | "--destination" => {
                module = None;
                let v = value(&mut i)?;
                let net = parse_net(&v).ok_or_else(|| bad(line, t, &v, "not an address or prefix"))?;
                let nets = vec![net];
                matches.push(Parsed::Known(if t.starts_with("-s") || t == "--source" {
                    Match::SrcNet { nets, neg }
                } else {
                    Match::DstNet { nets, neg }
                }));
            }
            "-i" | "--in-interface" => {
                module = None;
                matches.push(Parsed::Known(Match::InIface { name: value(&mut i)?, neg }));
            }
            "-o" | "--out-interface" => {
                module = None;
                matches.push(Parsed::Known(Match::OutIface { name: value(&mut i)?, neg }));
            }
            "-p" | "--protocol" => {
                let v = value(&mut i)?;
                // The implicit tcp/udp module takes --dport/--sport without `-m tcp`.
                module = None;
                match (neg, proto(&v)) {
                    (false, Some(p)) => {
                        module = Some(p.as_str().to_string());
                        matches.push(Parsed::Known(Match::Proto { protos: vec![p] }));
                    }
                    _ => matches.push(Parsed::Unknown(format!("{bang}{t} {v}"))),
                }
            }
            "-f" | "--fragment" => {
                module = None;
                matches.push(Parsed::Unknown(format!("{bang}{t}")));
            }
            "-m" | "--match" => {
                module = Some(value(&mut i)?);
            }
            "-j" | "--jump" => {
                module = None;
                let name = value(&mut i)?;
                let start = i;
                while i < toks.len() && !starts_core(&toks, i) {
                    i += 1;
                }
                let opts = &toks[start..i];
                target = Some(parse_target(line, &name, opts, declared)?);
            }
            "-g" | "--goto" => {
                let v = value(&mut i)?;
                return Err(SaveParseError::UnsupportedTarget { line, token: format!("{t} {v}") });
            }
            _ if t.starts_with("--") => {
                let Some(m) = module.clone() else {
                    return Err(SaveParseError::UnexpectedToken { line, token: t.to_string() });
                };
                // An option's values run up to the next option; a comment is always one
                // (possibly quoted) value, whatever it starts with.
                let start = i;
                if t == "--comment" {
                    i = (i + 1).min(toks.len());
                } else {
                    while i < toks.len() && !toks[i].starts_with('-') && toks[i] != "!" {
                        i += 1;
                    }
                }
                let vals: Vec<&str> = toks[start..i].iter().map(String::as_str).collect();
                if let Some(p) = module_option(line, &m, t, &vals, neg)? {
                    matches.push(p);
                }
            }
            _ => return Err(SaveParseError::UnexpectedToken { line, token: t.to_string() }),
        }
        neg = false;
    }
    if neg {
        return Err(SaveParseError::UnexpectedToken { line, token: "!".into() });
    }
    let target = target.ok_or(SaveParseError::NoTarget { line })?;
    let mut out = Vec::with_capacity(matches.len());
    for m in matches {
        match m {
            Parsed::Known(m) => out.push(m),
            // With `Match::Unknown { text }` in the IR: `out.push(Match::Unknown { text })`.
            Parsed::Unknown(token) => return Err(SaveParseError::UnsupportedMatch { line, token }),
        }
    }
    Ok(Rule::new(out, target))
}

/// True when `toks[i]` starts a core option (possibly after `!`).
fn starts_core(toks: &[String], i: usize) -> bool {
    let t = toks[i].as_str();
    is_core_option(t) || (t == "!" && toks.get(i + 1).is_some_and(|n| is_core_option(n)))
}

fn bad(line: usize, option: &str, value: &str, reason: &str) -> SaveParseError {
    SaveParseError::BadValue { line, option: option.to_string(), value: value.to_string(), reason: reason.to_string() }
}

fn proto(v: &str) -> Option<Proto> {
    match v {
        "tcp" | "6" => Some(Proto::Tcp),
        "udp" | "17" => Some(Proto::Udp),
        _ => None,
    }
}

/// `addr/len` as iptables-save prints it, or a bare address (restore input).
fn parse_net(v: &str) -> Option<IpNet> {
    if v.contains('/') {
        let (a, l) = v.split_once('/')?;
        IpNet::new(a.parse().ok()?, l.parse().ok()?)
    } else {
        v.parse::<IpAddr>().ok().map(IpNet::host)
    }
}

/// A decimal or `0x` hexadecimal u32.
fn parse_u32(v: &str) -> Option<u32> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// `V` or `V/M` → (value, mask); the mask defaults to all ones.
fn parse_masked(v: &str) -> Option<(u32, u32)> {
    match v.split_once('/') {
        Some((a, m)) => Some((parse_u32(a)?, parse_u32(m)?)),
        None => Some((parse_u32(v)?, u32::MAX)),
    }
}

/// `N` or `A:B` (either end may be omitted, as iptables allows). Port 0 cannot be a
/// connection's port, so `0:B` is `1:B`; `None` for an empty range.
fn parse_port_range(v: &str) -> Option<Option<PortRange>> {
    let num = |s: &str, d: u16| {
        if s.is_empty() {
            Some(d)
        } else {
            s.parse::<u16>().ok()
        }
    };
    let (a, b) = match v.split_once(':') {
        Some((a, b)) => (num(a, 0)?, num(b, u16::MAX)?),
        None => {
            let p = v.parse::<u16>().ok()?;
            (p, p)
        }
    };
    if a > b {
        return None;
    }
    Some(PortRange::new(a.max(1), b))
}

/// One option of a `-m` module (or of the implicit tcp/udp module after `-p`).
fn module_option(
    line: usize,
    module: &str,
    opt: &str,
    vals: &[&str],
    neg: bool,
) -> Result<Option<Parsed>, SaveParseError> {
    let bang = if neg { "! " } else { "" };
    let unknown = || Parsed::Unknown(format!("-m {module} {bang}{opt} {}", vals.join(" ")).trim_end().to_string());
    let one = || -> Result<&str, SaveParseError> {
        match vals {
            [v] => Ok(*v),
            [] => Err(SaveParseError::MissingValue { line, option: opt.to_string() }),
            _ => Err(SaveParseError::UnexpectedToken { line, token: vals[1].to_string() }),
        }
    };
    let ports = |list: &str| -> Result<Option<Vec<PortRange>>, SaveParseError> {
        let mut out = Vec::new();
        for item in list.split(',') {
            match parse_port_range(item).ok_or_else(|| bad(line, opt, list, "not a port or port range"))? {
                Some(r) => out.push(r),
                // Port 0 alone: no connection has it, so the IR cannot say this.
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    };
    let parsed = match (module, opt) {
        ("comment", "--comment") => return Ok(None),
        ("tcp" | "udp", "--dport" | "--destination-port") | ("multiport", "--dports" | "--destination-ports") => {
            ports(one()?)?.map(|ports| Parsed::Known(Match::DstPort { ports, neg })).unwrap_or_else(unknown)
        }
        ("tcp" | "udp", "--sport" | "--source-port") | ("multiport", "--sports" | "--source-ports") => {
            ports(one()?)?.map(|ports| Parsed::Known(Match::SrcPort { ports, neg })).unwrap_or_else(unknown)
        }
        ("owner", "--uid-owner" | "--gid-owner") => {
            let kind = if opt == "--uid-owner" { OwnerKind::Uid } else { OwnerKind::Gid };
            // Ranges (`1000-2000`) are not an OwnerId.
            match OwnerId::parse(one()?) {
                Some(id) => Parsed::Known(Match::Owner { kind, id, neg }),
                None => unknown(),
            }
        }
        ("mark", "--mark") => {
            let v = one()?;
            match parse_masked(v).ok_or_else(|| bad(line, opt, v, "not a mark"))? {
                (value, u32::MAX) => Parsed::Known(Match::Mark { value, neg }),
                _ => unknown(),
            }
        }
        ("connmark", "--mark") => {
            let v = one()?;
            match parse_masked(v).ok_or_else(|| bad(line, opt, v, "not a mark"))? {
                (value, u32::MAX) if !neg => Parsed::Known(Match::ConnMark { value }),
                _ => unknown(),
            }
        }
        // `--syn` (restore input) and how iptables-save prints it.
        ("tcp", "--syn") if vals.is_empty() && !neg => Parsed::Known(Match::TcpSyn),
        ("tcp", "--tcp-flags") => match vals {
            [mask, comp]
                if !neg && tcp_flags(mask) == tcp_flags("FIN,SYN,RST,ACK") && tcp_flags(comp) == tcp_flags("SYN") =>
            {
                Parsed::Known(Match::TcpSyn)
            }
            _ => unknown(),
        },
        ("conntrack", "--ctstate") | ("state", "--state") => {
            let states: Option<Vec<CtState>> = one()?.split(',').map(ct_state).collect();
            match states {
                Some(states) if !neg => Parsed::Known(Match::CtState { states }),
                _ => unknown(),
            }
        }
        _ => unknown(),
    };
    Ok(Some(parsed))
}

fn ct_state(s: &str) -> Option<CtState> {
    Some(match s {
        "INVALID" => CtState::Invalid,
        "NEW" => CtState::New,
        "RELATED" => CtState::Related,
        "ESTABLISHED" => CtState::Established,
        _ => return None,
    })
}

/// Parses `-j NAME opts…`.
fn parse_target(
    line: usize,
    name: &str,
    opts: &[String],
    declared: &BTreeSet<String>,
) -> Result<Target, SaveParseError> {
    let unsupported = || SaveParseError::UnsupportedTarget {
        line,
        token: std::iter::once(format!("-j {name}")).chain(opts.iter().cloned()).collect::<Vec<_>>().join(" "),
    };
    // Options as (flag, value-if-any) pairs.
    let mut pairs: Vec<(&str, Option<&str>)> = Vec::new();
    let mut k = 0;
    while k < opts.len() {
        let o = opts[k].as_str();
        if !o.starts_with("--") {
            return Err(SaveParseError::UnexpectedToken { line, token: o.to_string() });
        }
        let v = opts.get(k + 1).map(String::as_str).filter(|v| !v.starts_with("--"));
        k += if v.is_some() { 2 } else { 1 };
        pairs.push((o, v));
    }
    let get = |flag: &str| pairs.iter().find(|(f, _)| *f == flag).and_then(|(_, v)| *v);
    let only = |allowed: &[&str]| pairs.iter().all(|(f, _)| allowed.contains(f));
    let port = |flag: &str| -> Result<Option<u16>, SaveParseError> {
        match get(flag) {
            None => Ok(None),
            Some(v) => v.parse::<u16>().map(Some).map_err(|_| bad(line, flag, v, "not a single port")),
        }
    };
    let full_mask = |flag: &str| get(flag).is_none_or(|v| parse_u32(v) == Some(u32::MAX));
    match name {
        "RETURN" | "ACCEPT" | "DROP" if pairs.is_empty() => Ok(match name {
            "RETURN" => Target::Return,
            "ACCEPT" => Target::Accept,
            _ => Target::Drop,
        }),
        "REDIRECT" if only(&["--to-ports", "--to-port"]) => match (port("--to-ports")?, port("--to-port")?) {
            (Some(p), None) | (None, Some(p)) => Ok(Target::Redirect { port: p, singular: false }),
            _ => Err(unsupported()),
        },
        "TPROXY" if only(&["--on-port", "--on-ip", "--tproxy-mark"]) => {
            // The IR's TPROXY always uses the address the packet was sent to.
            if let Some(ip) = get("--on-ip") {
                let any = ip.parse::<IpAddr>().map_err(|_| bad(line, "--on-ip", ip, "not an address"))?;
                if !any.is_unspecified() {
                    return Err(unsupported());
                }
            }
            let port = port("--on-port")?.filter(|p| *p != 0).ok_or_else(unsupported)?;
            let (mark, mask) = match get("--tproxy-mark") {
                Some(v) => parse_masked(v).ok_or_else(|| bad(line, "--tproxy-mark", v, "not a mark"))?,
                None => (0, 0),
            };
            Ok(Target::Tproxy { port, mark, mask })
        }
        "MARK" if pairs.len() == 1 => {
            let (flag, v) = pairs[0];
            let v = v.ok_or_else(|| SaveParseError::MissingValue { line, option: flag.to_string() })?;
            let (mark, mask) = parse_masked(v).ok_or_else(|| bad(line, flag, v, "not a mark"))?;
            match flag {
                "--set-xmark" | "--set-mark" if mask == u32::MAX => Ok(Target::SetMark { mark }),
                _ => Err(unsupported()),
            }
        }
        "CONNMARK" if only(&["--save-mark", "--restore-mark", "--nfmask", "--ctmask", "--mask"]) => {
            let masks_full = full_mask("--nfmask") && full_mask("--ctmask") && full_mask("--mask");
            match (get_flag(&pairs, "--save-mark"), get_flag(&pairs, "--restore-mark"), masks_full) {
                (true, false, true) => Ok(Target::ConnMarkSave),
                (false, true, true) => Ok(Target::ConnMarkRestore),
                _ => Err(unsupported()),
            }
        }
        "CT" if pairs.len() == 1 && pairs[0] == ("--notrack", None) => Ok(Target::NoTrack),
        "CT" if only(&["--zone"]) => {
            let v = get("--zone").ok_or_else(unsupported)?;
            let zone = v.parse::<u16>().map_err(|_| bad(line, "--zone", v, "not a zone id"))?;
            Ok(Target::CtZone { zone })
        }
        _ if declared.contains(name) && pairs.is_empty() => Ok(Target::Jump { chain: Chain::new(name) }),
        _ => Err(unsupported()),
    }
}

/// A `--tcp-flags` list as a sorted set of names (`None` for a name iptables does not know),
/// so that `SYN,ACK` and `ACK,SYN` compare equal.
fn tcp_flags(list: &str) -> Option<Vec<&str>> {
    const KNOWN: [&str; 8] = ["SYN", "ACK", "FIN", "RST", "URG", "PSH", "ALL", "NONE"];
    let mut v: Vec<&str> = list.split(',').map(|f| KNOWN.iter().copied().find(|k| *k == f)).collect::<Option<_>>()?;
    v.sort_unstable();
    v.dedup();
    Some(v)
}

fn get_flag(pairs: &[(&str, Option<&str>)], flag: &str) -> bool {
    pairs.iter().any(|(f, _)| *f == flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_quotes() {
        let t = tokenize(1, r#"-m comment --comment "a \"b\" c" -j X 'y z'"#).unwrap();
        assert_eq!(t, ["-m", "comment", "--comment", "a \"b\" c", "-j", "X", "y z"]);
        assert_eq!(tokenize(3, r#"--comment "open"#), Err(SaveParseError::UnterminatedQuote { line: 3 }));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("8000:9000"), Some(PortRange::new(8000, 9000)));
        assert_eq!(parse_port_range("0:1023"), Some(PortRange::new(1, 1023)));
        assert_eq!(parse_port_range(":1023"), Some(PortRange::new(1, 1023)));
        assert_eq!(parse_port_range("0"), Some(None));
        assert_eq!(parse_port_range("9:8"), None);
    }
}
