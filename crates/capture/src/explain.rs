//! `explain`: what netfilter does with the first packet of a new connection, and why.
//!
//! The input is one family's [`Effective`] ruleset — planned ([`Plan::effective`]) or read
//! back from the kernel ([`crate::parse::iptables_save::parse_save`]) — and a [`Flow`]. The
//! walk follows the kernel's hook order for the tables the capture plan uses:
//!
//! * outbound (locally generated): raw `OUTPUT` → mangle `OUTPUT` → nat `OUTPUT`;
//! * inbound (arriving on an interface): raw `PREROUTING` → mangle `PREROUTING` → nat
//!   `PREROUTING`.
//!
//! A nat `REDIRECT` is a capture by the listener on its port ([`Verdict::Redirect`]), a mangle
//! `TPROXY` likewise ([`Verdict::Tproxy`]; the walk assumes the sidecar listens on that port,
//! as the kernel drops the packet otherwise), `DROP` is [`Verdict::Drop`], and getting through
//! every table without either is [`Verdict::Passthrough`]. The packet mark and the
//! connection mark are tracked across tables (`MARK`, `TPROXY`'s mark, `CONNMARK`
//! save/restore), because later rules match on them; conntrack zones are recorded but change
//! nothing here. The filter table is not walked: it decides whether a packet is allowed, not
//! whether the sidecar captures it.
//!
//! A match the walk cannot decide (today: an owner match by user or group *name*, which
//! needs the system's user database) makes its rule "may match". Both outcomes are then
//! explored; when they agree the verdict stands (the trace says so), otherwise the verdict is
//! [`Verdict::Undetermined`], naming the rule. The walk never guesses silently.
//!
//! Everything here is pure: no I/O.

use crate::config::{INBOUND_CAPTURE_PORT, PROXY_ID};
use crate::ir::{
    chains, Chain, Counters, CtState, EffRule, Effective, Family, Match, OwnerKind, Plan, Proto, Rule, Table, Target,
};
use crate::render::iptables::rule_args;
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// UID and GID of an application process when the flow does not say (any id but the proxy's).
pub const DEFAULT_APP_ID: u32 = 1000;
/// The pod's IPv4 address when the flow does not say (the mesh's default range, 198.18.0.0/15).
pub const DEFAULT_POD_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The pod's IPv6 address when the flow does not say (documentation range).
pub const DEFAULT_POD_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// The peer of an inbound IPv4 flow when the flow does not say (TEST-NET-1).
pub const DEFAULT_PEER_IPV4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The peer of an inbound IPv6 flow when the flow does not say (documentation range).
pub const DEFAULT_PEER_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The source port when the flow does not say (an ephemeral port).
pub const DEFAULT_SRC_PORT: u16 = 40000;
/// The pod's external interface when the flow does not say.
pub const DEFAULT_IFACE: &str = "eth0";

/// Unknown matches explored per explanation before giving up (each doubles the work).
const MAX_FORKS: usize = 6;
/// Nested jumps before the walk assumes a loop (iptables itself refuses loops).
const MAX_DEPTH: usize = 64;

/// Which way the connection goes, seen from the pod.
pub use meshpass_settings::Direction;

/// The first packet of a new connection. Unset fields get documented defaults
/// ([`Flow::resolved`]):
///
/// * outbound: `uid`/`gid` [`DEFAULT_APP_ID`] (an application; [`PROXY_ID`] 1337 is the
///   proxy), `out_iface` `lo` when `dst` is loopback (127/8, `::1`) or equals `pod_ip`, else
///   [`DEFAULT_IFACE`]; no input interface; `src` the loopback address for a loopback `dst`,
///   else `pod_ip` (default [`DEFAULT_POD_IPV4`] / [`DEFAULT_POD_IPV6`]);
/// * inbound: `in_iface` [`DEFAULT_IFACE`], `src` [`DEFAULT_PEER_IPV4`] /
///   [`DEFAULT_PEER_IPV6`], no output interface and no owning socket, so owner matches never
///   match (a negated one does, as in the kernel — iptables allows neither in PREROUTING);
/// * both: `src_port` [`DEFAULT_SRC_PORT`], packet mark 0, connection mark 0, conntrack
///   state `NEW`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Flow {
    /// Inbound or outbound.
    pub direction: Direction,
    /// TCP or UDP.
    pub proto: Proto,
    /// Source address (see the defaults above).
    pub src: Option<IpAddr>,
    /// Source port.
    pub src_port: Option<u16>,
    /// Destination address; for inbound, the pod's address. Its family picks the ruleset.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// UID of the sending process (outbound only).
    pub uid: Option<u32>,
    /// GID of the sending process (outbound only).
    pub gid: Option<u32>,
    /// Input interface (inbound only).
    pub in_iface: Option<String>,
    /// Output interface (outbound only).
    pub out_iface: Option<String>,
    /// The pod's own address, when known: outbound traffic to it leaves over `lo`.
    pub pod_ip: Option<IpAddr>,
}

impl Flow {
    /// An outbound TCP connection from an application to `dst:dst_port`.
    pub fn outbound(dst: IpAddr, dst_port: u16) -> Self {
        Self {
            direction: Direction::Outbound,
            proto: Proto::Tcp,
            src: None,
            src_port: None,
            dst,
            dst_port,
            uid: None,
            gid: None,
            in_iface: None,
            out_iface: None,
            pod_ip: None,
        }
    }

    /// An inbound TCP connection to port `dst_port` of the pod at [`DEFAULT_POD_IPV4`].
    pub fn inbound(dst_port: u16) -> Self {
        Self::inbound_to(IpAddr::V4(DEFAULT_POD_IPV4), dst_port)
    }

    /// An inbound TCP connection to `dst:dst_port` (`dst` is the pod's address).
    pub fn inbound_to(dst: IpAddr, dst_port: u16) -> Self {
        Self { direction: Direction::Inbound, pod_ip: Some(dst), ..Self::outbound(dst, dst_port) }
    }

    /// The same flow over `proto`.
    pub fn proto(mut self, proto: Proto) -> Self {
        self.proto = proto;
        self
    }

    /// The same flow over UDP.
    pub fn udp(self) -> Self {
        self.proto(Proto::Udp)
    }

    /// The same flow from `src`.
    pub fn from(mut self, src: IpAddr) -> Self {
        self.src = Some(src);
        self
    }

    /// The same flow from source port `port`.
    pub fn src_port(mut self, port: u16) -> Self {
        self.src_port = Some(port);
        self
    }

    /// The same flow sent by a process with this UID.
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// The same flow sent by a process with this GID.
    pub fn gid(mut self, gid: u32) -> Self {
        self.gid = Some(gid);
        self
    }

    /// The same flow sent by the proxy (UID and GID [`PROXY_ID`]).
    pub fn as_proxy(self) -> Self {
        self.uid(PROXY_ID).gid(PROXY_ID)
    }

    /// The same flow arriving on `iface`.
    pub fn in_iface(mut self, iface: &str) -> Self {
        self.in_iface = Some(iface.to_string());
        self
    }

    /// The same flow leaving through `iface`.
    pub fn out_iface(mut self, iface: &str) -> Self {
        self.out_iface = Some(iface.to_string());
        self
    }

    /// The same flow in a pod whose address is `ip`.
    pub fn pod_ip(mut self, ip: IpAddr) -> Self {
        self.pod_ip = Some(ip);
        self
    }

    /// The family of the destination address (which ruleset applies).
    pub fn family(&self) -> Family {
        if self.dst.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The flow with every default applied (see [`Flow`]).
    pub fn resolved(&self) -> ResolvedFlow {
        let family = self.family();
        let pod = self.pod_ip.unwrap_or(match family {
            Family::V4 => IpAddr::V4(DEFAULT_POD_IPV4),
            Family::V6 => IpAddr::V6(DEFAULT_POD_IPV6),
        });
        let src_port = self.src_port.unwrap_or(DEFAULT_SRC_PORT);
        match self.direction {
            Direction::Outbound => {
                let over_lo = self.dst.is_loopback() || self.pod_ip == Some(self.dst);
                let src = self.src.unwrap_or(if self.dst.is_loopback() {
                    // The kernel picks lo's address for a loopback destination.
                    match family {
                        Family::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        Family::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    }
                } else {
                    pod
                });
                ResolvedFlow {
                    direction: self.direction,
                    family,
                    proto: self.proto,
                    src,
                    src_port,
                    dst: self.dst,
                    dst_port: self.dst_port,
                    uid: Some(self.uid.unwrap_or(DEFAULT_APP_ID)),
                    gid: Some(self.gid.unwrap_or(DEFAULT_APP_ID)),
                    in_iface: self.in_iface.clone(),
                    out_iface: Some(
                        self.out_iface
                            .clone()
                            .unwrap_or_else(|| if over_lo { "lo" } else { DEFAULT_IFACE }.to_string()),
                    ),
                }
            }
            Direction::Inbound => ResolvedFlow {
                direction: self.direction,
                family,
                proto: self.proto,
                src: self.src.unwrap_or(match family {
                    Family::V4 => IpAddr::V4(DEFAULT_PEER_IPV4),
                    Family::V6 => IpAddr::V6(DEFAULT_PEER_IPV6),
                }),
                src_port,
                dst: self.dst,
                dst_port: self.dst_port,
                // No local socket owns an arriving packet.
                uid: None,
                gid: None,
                in_iface: Some(self.in_iface.clone().unwrap_or_else(|| DEFAULT_IFACE.to_string())),
                out_iface: self.out_iface.clone(),
            },
        }
    }
}

/// A [`Flow`] with its defaults applied: the packet the walk evaluates.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ResolvedFlow {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The family of `dst`.
    pub family: Family,
    /// TCP or UDP.
    pub proto: Proto,
    /// Source address.
    pub src: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// Owning socket's UID (`None`: no local socket).
    pub uid: Option<u32>,
    /// Owning socket's GID (`None`: no local socket).
    pub gid: Option<u32>,
    /// Input interface (`None` for locally generated packets).
    pub in_iface: Option<String>,
    /// Output interface (`None` before routing of an arriving packet).
    pub out_iface: Option<String>,
}

impl fmt::Display for ResolvedFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = |a: IpAddr, p: u16| match a {
            IpAddr::V4(a) => format!("{a}:{p}"),
            IpAddr::V6(a) => format!("[{a}]:{p}"),
        };
        write!(
            f,
            "{} {} {} {} -> {}",
            self.direction,
            self.family,
            self.proto,
            addr(self.src, self.src_port),
            addr(self.dst, self.dst_port)
        )?;
        match (self.uid, self.gid) {
            (Some(u), Some(g)) => write!(f, ", uid {u} gid {g}")?,
            _ => f.write_str(", no local socket")?,
        }
        if let Some(i) = &self.in_iface {
            write!(f, ", in {i}")?;
        }
        if let Some(o) = &self.out_iface {
            write!(f, ", out {o}")?;
        }
        f.write_str(", mark 0x0, ct NEW")
    }
}

/// What happens to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Captured: nat `REDIRECT` to a local port (the sidecar's outbound or inbound listener,
    /// or the agent's DNS listener).
    Redirect,
    /// Captured: mangle `TPROXY` to a local port (the sidecar's inbound listener).
    Tproxy,
    /// Not captured: the connection goes where it was addressed.
    Passthrough,
    /// Dropped.
    Drop,
    /// Depends on a match the walk cannot evaluate; see `decided_by`.
    Undetermined,
}

impl Verdict {
    /// True for the verdicts where the sidecar (or agent) gets the connection.
    pub fn is_captured(self) -> bool {
        matches!(self, Verdict::Redirect | Verdict::Tproxy)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Redirect => "captured (REDIRECT)",
            Verdict::Tproxy => "captured (TPROXY)",
            Verdict::Passthrough => "passthrough (not captured)",
            Verdict::Drop => "dropped",
            Verdict::Undetermined => "undetermined",
        })
    }
}

/// A rule of the ruleset, as `explain` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    /// Table.
    pub table: Table,
    /// Chain.
    pub chain: Chain,
    /// 1-based position in the chain (as `iptables -L --line-numbers` counts).
    pub index: usize,
    /// The plan's label for the rule (planned rules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The rule in iptables spelling: for a planned list rule, the element that matched; for
    /// a live rule, as read back.
    pub text: String,
    /// The kernel's counters (live rules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} #{}", self.table, self.chain, self.index)?;
        if let Some(l) = &self.label {
            write!(f, " [{l}]")?;
        }
        write!(f, ": {}", self.text)?;
        if let Some(c) = self.counters {
            write!(f, " ({} packets, {} bytes)", c.packets, c.bytes)?;
        }
        Ok(())
    }
}

/// What a trace step records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// The resolved flow the walk starts from.
    Flow,
    /// The packet enters a table's built-in chain.
    Hook,
    /// A rule matched and its target was applied.
    Match,
    /// A rule may match (a match the walk cannot evaluate).
    MayMatch,
    /// The end of a chain was reached.
    End,
    /// The outcome.
    Verdict,
    /// Anything else worth knowing.
    Note,
}

/// One step of the walk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What kind of step.
    pub kind: StepKind,
    /// The table, when the step is in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<Table>,
    /// The chain, when the step is in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chain>,
    /// The rule, for [`StepKind::Match`] and [`StepKind::MayMatch`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// What happened, in words.
    pub message: String,
}

impl Step {
    fn note(kind: StepKind, message: String) -> Self {
        Self { kind, table: None, chain: None, rule: None, message }
    }
    fn at(kind: StepKind, table: Table, chain: &Chain, message: String) -> Self {
        Self { kind, table: Some(table), chain: Some(chain.clone()), rule: None, message }
    }
    fn rule(kind: StepKind, rule: RuleRef, message: String) -> Self {
        Self { kind, table: Some(rule.table), chain: Some(rule.chain.clone()), rule: Some(rule), message }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.rule, self.table, &self.chain) {
            // The verdict's rule is already printed above the trace.
            (Some(_), _, _) if self.kind == StepKind::Verdict => write!(f, "=> {}", self.message),
            (Some(r), _, _) => write!(f, "{r} => {}", self.message),
            (None, Some(t), Some(c)) => write!(f, "{t} {c}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// Why a connection is or is not captured.
///
/// Serializes (for `--output json`) as `{"verdict", "port", "rule", "table", "chain",
/// "index", "label", "counters", "family", "summary", "trace"}`, the `rule` fields taken from
/// `decided_by` (all `null` when no single rule decided).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The outcome.
    pub verdict: Verdict,
    /// The local port that gets the connection (captured verdicts only).
    pub port: Option<u16>,
    /// The rule that decided: the capturing rule (or the jump that led to a chain holding a
    /// catch-all capture rule), the RETURN that let the connection through, the DROP, or —
    /// for [`Verdict::Undetermined`] — the rule that may or may not match. `None` when the
    /// connection simply matched nothing.
    pub decided_by: Option<RuleRef>,
    /// The walk, step by step.
    pub trace: Vec<Step>,
    /// The family whose rules were walked.
    pub family: Family,
}

impl Explanation {
    /// One line: the verdict, the port and the deciding rule.
    pub fn summary(&self) -> String {
        let mut s = match (self.verdict, self.port) {
            (Verdict::Redirect, Some(p)) => format!("captured: REDIRECT to port {p}"),
            (Verdict::Tproxy, Some(p)) => format!("captured: TPROXY to port {p}"),
            (Verdict::Passthrough, _) => "not captured (passthrough)".to_string(),
            (Verdict::Drop, _) => "dropped".to_string(),
            (Verdict::Undetermined, _) => "undetermined".to_string(),
            (v, None) => v.to_string(),
        };
        match &self.decided_by {
            Some(r) => {
                let by = if self.verdict == Verdict::Undetermined { "depends on" } else { "by" };
                s.push_str(&format!(" {by} {} {} #{}", r.table, r.chain, r.index));
                if let Some(l) = &r.label {
                    s.push_str(&format!(" [{l}]"));
                }
            }
            None if self.verdict == Verdict::Passthrough => {
                if let Some(last) = self.trace.iter().rev().find(|s| s.kind == StepKind::Verdict) {
                    s.push_str(&format!(": {}", last.message));
                }
            }
            None => {}
        }
        s
    }
}

impl Serialize for Explanation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            verdict: Verdict,
            port: Option<u16>,
            rule: Option<&'a str>,
            table: Option<Table>,
            chain: Option<&'a Chain>,
            index: Option<usize>,
            label: Option<&'a str>,
            counters: Option<Counters>,
            family: Family,
            summary: String,
            trace: &'a [Step],
        }
        let r = self.decided_by.as_ref();
        Json {
            verdict: self.verdict,
            port: self.port,
            rule: r.map(|r| r.text.as_str()),
            table: r.map(|r| r.table),
            chain: r.map(|r| &r.chain),
            index: r.map(|r| r.index),
            label: r.and_then(|r| r.label.as_deref()),
            counters: r.and_then(|r| r.counters),
            family: self.family,
            summary: self.summary(),
            trace: &self.trace,
        }
        .serialize(s)
    }
}

impl fmt::Display for Explanation {
    /// Multi-line: the summary, the deciding rule, then the trace.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({})", self.summary(), self.family)?;
        if let Some(r) = &self.decided_by {
            writeln!(f, "  rule: {r}")?;
        }
        writeln!(f, "trace:")?;
        for (i, step) in self.trace.iter().enumerate() {
            if i + 1 == self.trace.len() {
                write!(f, "  {step}")?;
            } else {
                writeln!(f, "  {step}")?;
            }
        }
        Ok(())
    }
}

/// Explains `flow` against a plan: the plan's effective ruleset for the flow's family.
///
/// IPv6 flows against a plan without IPv6 rules are passthrough ("IPv6 capture disabled"),
/// as ip6tables is never run then.
pub fn explain_plan(plan: &Plan, flow: &Flow) -> Explanation {
    let family = flow.family();
    if family == Family::V6 && !plan.ipv6 {
        return Explanation {
            verdict: Verdict::Passthrough,
            port: None,
            decided_by: None,
            trace: vec![
                Step::note(StepKind::Flow, flow.resolved().to_string()),
                Step::note(StepKind::Verdict, "IPv6 capture disabled: the plan has no ip6tables rules".into()),
            ],
            family,
        };
    }
    explain(&plan.effective(family), flow)
}

/// Explains `flow` against one family's ruleset (planned or live); the flow's destination
/// must be of that family.
pub fn explain(eff: &Effective, flow: &Flow) -> Explanation {
    let pkt = flow.resolved();
    let mut budget = 1usize << MAX_FORKS;
    explore(eff, &pkt, &HashMap::new(), &mut budget)
}

/// A rule's position, for remembering assumptions about "may match" rules.
type RuleKey = (Table, Chain, usize);

/// Runs the walk under `assume`; forks on a "may match" rule and merges equal outcomes.
fn explore(eff: &Effective, pkt: &ResolvedFlow, assume: &HashMap<RuleKey, bool>, budget: &mut usize) -> Explanation {
    let (walk, outcome) = Walk::new(eff, pkt, assume).run();
    let (key, rule, reason, mut trace) = match outcome {
        Outcome::MayMatch { key, rule, reason, trace } => (key, rule, reason, trace),
        Outcome::Final { verdict, port, by } => return walk.finish(Some((verdict, port, by))),
        Outcome::Through => return walk.finish(None),
        Outcome::TooDeep { at } => return walk.too_deep(at),
    };
    let undetermined = |trace: Vec<Step>, why: String| {
        let mut trace = trace;
        trace.push(Step::rule(StepKind::Verdict, rule.clone(), why));
        Explanation {
            verdict: Verdict::Undetermined,
            port: None,
            decided_by: Some(rule.clone()),
            trace,
            family: pkt.family,
        }
    };
    if assume.len() >= MAX_FORKS || *budget < 2 {
        let why = format!("this rule may match ({reason}); too many undecidable rules to explore every outcome");
        return undetermined(trace, why);
    }
    *budget -= 2;
    let with = |b: bool| {
        let mut a = assume.clone();
        a.insert(key.clone(), b);
        a
    };
    let if_match = explore(eff, pkt, &with(true), budget);
    let if_not = explore(eff, pkt, &with(false), budget);
    if if_match.verdict == if_not.verdict && if_match.port == if_not.port && if_not.verdict != Verdict::Undetermined {
        // Same outcome either way: keep the "does not match" walk and say why it is safe.
        let mut e = if_not;
        let at = trace.len().min(e.trace.len());
        e.trace.insert(
            at,
            Step::rule(
                StepKind::MayMatch,
                rule.clone(),
                format!("may match ({reason}); the verdict is the same either way"),
            ),
        );
        return e;
    }
    trace.push(Step::rule(StepKind::MayMatch, rule.clone(), format!("may match ({reason})")));
    let why = format!(
        "the outcome depends on this rule: if it matches, {}; if not, {}",
        if_match.summary(),
        if_not.summary()
    );
    undetermined(trace, why)
}

/// Three-valued match result.
enum Tri {
    Yes,
    No,
    Maybe(String),
}

/// How one walk ended.
enum Outcome {
    /// A terminal verdict (redirect, tproxy, drop) by this rule.
    Final { verdict: Verdict, port: Option<u16>, by: RuleRef },
    /// Every table was traversed without a capture.
    Through,
    /// A rule that may match was reached; the walk stopped there.
    MayMatch { key: RuleKey, rule: RuleRef, reason: String, trace: Vec<Step> },
    /// Jumps nested too deep (a loop); cannot happen with rules iptables accepted.
    TooDeep { at: RuleRef },
}

/// One walk over the tables under fixed assumptions.
struct Walk<'a> {
    eff: &'a Effective,
    pkt: &'a ResolvedFlow,
    assume: &'a HashMap<RuleKey, bool>,
    mark: u32,
    ct_mark: u32,
    /// The first `NOTRACK` rule that matched: the packet is untracked from there on.
    untracked_by: Option<RuleRef>,
    trace: Vec<Step>,
    /// The last RETURN/ACCEPT executed per table: what let a passthrough connection through.
    let_through: BTreeMap<Table, RuleRef>,
}

/// A chain being walked.
struct Frame {
    chain: Chain,
    pos: usize,
    /// The jump that entered this chain.
    via: Option<RuleRef>,
}

/// How a table's traversal ended.
enum TableEnd {
    /// The table is done with the packet (fell off or returned from the built-in chain, or
    /// ACCEPT); the next table sees it.
    Continue,
    /// The walk is over.
    Stop(Outcome),
}

impl<'a> Walk<'a> {
    fn new(eff: &'a Effective, pkt: &'a ResolvedFlow, assume: &'a HashMap<RuleKey, bool>) -> Self {
        Self {
            eff,
            pkt,
            assume,
            mark: 0,
            ct_mark: 0,
            untracked_by: None,
            trace: vec![Step::note(StepKind::Flow, pkt.to_string())],
            let_through: BTreeMap::new(),
        }
    }

    fn run(mut self) -> (Self, Outcome) {
        let hook = self.hook();
        for table in [Table::Raw, Table::Mangle, Table::Nat] {
            if table == Table::Nat && self.untracked_by.is_some() {
                // The nat hooks only act on tracked connections (nf_nat_inet_fn returns
                // straight away without a conntrack entry): the chain is never walked.
                let msg = "skipped: an untracked packet is never NATed, so never redirected".to_string();
                self.trace.push(Step::at(StepKind::Hook, table, &Chain::new(hook), msg));
                continue;
            }
            if let TableEnd::Stop(o) = self.table(table, hook) {
                return (self, o);
            }
        }
        (self, Outcome::Through)
    }

    fn hook(&self) -> &'static str {
        match self.pkt.direction {
            Direction::Outbound => chains::OUTPUT,
            Direction::Inbound => chains::PREROUTING,
        }
    }

    /// Traverses one table from its built-in chain `hook`.
    fn table(&mut self, table: Table, hook: &str) -> TableEnd {
        let builtin = Chain::new(hook);
        if self.eff.chain(table, hook).is_empty() {
            self.trace.push(Step::at(StepKind::Hook, table, &builtin, "no rules".into()));
            return TableEnd::Continue;
        }
        self.trace.push(Step::at(StepKind::Hook, table, &builtin, "enter".into()));
        let mut stack = vec![Frame { chain: builtin, pos: 0, via: None }];
        loop {
            let Some(frame) = stack.last_mut() else {
                return TableEnd::Continue;
            };
            let rules = self.eff.chain(table, frame.chain.as_str());
            let Some(er) = rules.get(frame.pos) else {
                let done = frame.chain.clone();
                stack.pop();
                match stack.last() {
                    None => {
                        self.trace.push(Step::at(StepKind::End, table, &done, "end of chain: policy ACCEPT".into()));
                        return TableEnd::Continue;
                    }
                    Some(parent) => {
                        let msg = format!("end of chain: back to {}", parent.chain);
                        self.trace.push(Step::at(StepKind::End, table, &done, msg));
                        continue;
                    }
                }
            };
            frame.pos += 1;
            let index = frame.pos;
            let chain = frame.chain.clone();
            let key: RuleKey = (table, chain.clone(), index);
            let result = match self.assume.get(&key) {
                Some(true) => Tri::Yes,
                Some(false) => Tri::No,
                None => self.eval_rule(&er.rule),
            };
            match result {
                Tri::No => continue,
                Tri::Maybe(reason) => {
                    let rule = self.rule_ref(table, &chain, index, er);
                    return TableEnd::Stop(Outcome::MayMatch {
                        key,
                        rule,
                        reason,
                        trace: std::mem::take(&mut self.trace),
                    });
                }
                Tri::Yes => {}
            }
            let rref = self.rule_ref(table, &chain, index, er);
            match &er.rule.target {
                Target::Return => {
                    self.let_through.insert(table, rref.clone());
                    if stack.len() == 1 {
                        self.trace.push(Step::rule(
                            StepKind::Match,
                            rref,
                            format!("RETURN from built-in chain: {table} is done with the packet"),
                        ));
                        return TableEnd::Continue;
                    }
                    stack.pop();
                    let back = stack.last().map(|f| f.chain.to_string()).unwrap_or_default();
                    self.trace.push(Step::rule(StepKind::Match, rref, format!("RETURN to {back}")));
                }
                Target::Accept => {
                    self.let_through.insert(table, rref.clone());
                    self.trace.push(Step::rule(
                        StepKind::Match,
                        rref,
                        format!("ACCEPT: {table} is done with the packet"),
                    ));
                    return TableEnd::Continue;
                }
                Target::Drop => {
                    self.trace.push(Step::rule(StepKind::Match, rref.clone(), "DROP".into()));
                    return TableEnd::Stop(Outcome::Final { verdict: Verdict::Drop, port: None, by: rref });
                }
                Target::Jump { chain: to } => {
                    if stack.len() >= MAX_DEPTH {
                        return TableEnd::Stop(Outcome::TooDeep { at: rref });
                    }
                    let msg = if self.eff.chain(table, to.as_str()).is_empty() {
                        format!("jump to {to} (empty)")
                    } else {
                        format!("jump to {to}")
                    };
                    self.trace.push(Step::rule(StepKind::Match, rref.clone(), msg));
                    stack.push(Frame { chain: to.clone(), pos: 0, via: Some(rref) });
                }
                Target::Redirect { port, .. } => {
                    let by = decider(&er.rule, rref.clone(), &stack);
                    let what = if *port == INBOUND_CAPTURE_PORT { " (inbound listener)" } else { "" };
                    self.trace.push(Step::rule(StepKind::Match, rref, format!("REDIRECT to port {port}{what}")));
                    return TableEnd::Stop(Outcome::Final { verdict: Verdict::Redirect, port: Some(*port), by });
                }
                Target::Tproxy { port, mark, mask } => {
                    self.mark = (self.mark & !mask) ^ mark;
                    let by = decider(&er.rule, rref.clone(), &stack);
                    let msg = format!(
                        "TPROXY to port {port}, mark {:#x}; the socket is assigned here, later tables do not change that",
                        self.mark
                    );
                    self.trace.push(Step::rule(StepKind::Match, rref, msg));
                    return TableEnd::Stop(Outcome::Final { verdict: Verdict::Tproxy, port: Some(*port), by });
                }
                Target::SetMark { mark } => {
                    self.mark = *mark;
                    self.trace.push(Step::rule(StepKind::Match, rref, format!("packet mark set to {mark:#x}")));
                }
                Target::ConnMarkSave => {
                    self.ct_mark = self.mark;
                    let msg =
                        format!("connection mark set to the packet mark {:#x} (no effect on this packet)", self.mark);
                    self.trace.push(Step::rule(StepKind::Match, rref, msg));
                }
                Target::ConnMarkRestore => {
                    self.mark = self.ct_mark;
                    let msg = format!("packet mark restored from the connection mark: {:#x}", self.mark);
                    self.trace.push(Step::rule(StepKind::Match, rref, msg));
                }
                Target::CtZone { zone } => {
                    let msg = format!("conntrack zone {zone} (no effect on capture)");
                    self.trace.push(Step::rule(StepKind::Match, rref, msg));
                }
                Target::NoTrack => {
                    self.untracked_by.get_or_insert_with(|| rref.clone());
                    let msg = "NOTRACK: the connection is not tracked, so no nat rule sees it".to_string();
                    self.trace.push(Step::rule(StepKind::Match, rref, msg));
                }
            }
        }
    }

    fn rule_ref(&self, table: Table, chain: &Chain, index: usize, er: &EffRule) -> RuleRef {
        let text = match &er.text {
            Some(t) => t.clone(),
            None => rule_args(&narrow(&er.rule, self.pkt)).join(" | "),
        };
        RuleRef { table, chain: chain.clone(), index, label: er.rule.label.clone(), text, counters: er.counters }
    }

    fn eval_rule(&self, rule: &Rule) -> Tri {
        let mut maybe = None;
        for m in &rule.matches {
            match self.eval_match(m) {
                Tri::No => return Tri::No,
                Tri::Maybe(r) => {
                    maybe.get_or_insert(r);
                }
                Tri::Yes => {}
            }
        }
        maybe.map_or(Tri::Yes, Tri::Maybe)
    }

    fn eval_match(&self, m: &Match) -> Tri {
        let p = self.pkt;
        let yes = |b: bool| if b { Tri::Yes } else { Tri::No };
        match m {
            Match::Family { family } => yes(*family == p.family),
            Match::Proto { protos } => yes(protos.contains(&p.proto)),
            Match::SrcNet { nets, neg } => yes(nets.iter().any(|n| n.contains(p.src)) != *neg),
            Match::DstNet { nets, neg } => yes(nets.iter().any(|n| n.contains(p.dst)) != *neg),
            Match::InIface { name, neg } => yes(iface_matches(name, p.in_iface.as_deref()) != *neg),
            Match::OutIface { name, neg } => yes(iface_matches(name, p.out_iface.as_deref()) != *neg),
            Match::DstPort { ports, neg } => yes(ports.iter().any(|r| r.contains(p.dst_port)) != *neg),
            Match::SrcPort { ports, neg } => yes(ports.iter().any(|r| r.contains(p.src_port)) != *neg),
            Match::Owner { kind, id, neg } => {
                let have = match kind {
                    OwnerKind::Uid => p.uid,
                    OwnerKind::Gid => p.gid,
                };
                // Without a socket, xt_owner matches exactly when the match is negated.
                let Some(have) = have else { return yes(*neg) };
                match id.as_number() {
                    Some(want) => yes((have == want) != *neg),
                    None => {
                        let what = match kind {
                            OwnerKind::Uid => "user",
                            OwnerKind::Gid => "group",
                        };
                        Tri::Maybe(format!(
                            "owner {what} name '{id}' cannot be resolved without the pod's user database"
                        ))
                    }
                }
            }
            Match::Mark { value, neg } => yes((self.mark == *value) != *neg),
            Match::ConnMark { value } => yes(self.untracked_by.is_none() && self.ct_mark == *value),
            // An untracked packet has no conntrack state and no connection mark to match.
            Match::CtState { states } => yes(self.untracked_by.is_none() && states.contains(&CtState::New)),
            Match::TcpSyn => yes(self.pkt.proto == Proto::Tcp),
        }
    }

    /// The explanation of a walk that ended with `terminal` (redirect, tproxy or drop by a
    /// rule) or, for `None`, went through every table.
    fn finish(mut self, terminal: Option<(Verdict, Option<u16>, RuleRef)>) -> Explanation {
        let family = self.pkt.family;
        let (verdict, port, decided_by) = match terminal {
            Some((verdict, port, by)) => {
                let msg = match port {
                    Some(p) => format!("captured: the listener on port {p} gets the connection"),
                    None => "dropped".to_string(),
                };
                self.trace.push(Step::rule(StepKind::Verdict, by.clone(), msg));
                (verdict, port, Some(by))
            }
            None => {
                // nat decides REDIRECT capture, mangle TPROXY capture: a RETURN there is what
                // let the connection through; raw cannot capture.
                let by = self
                    .let_through
                    .remove(&Table::Nat)
                    .or_else(|| self.let_through.remove(&Table::Mangle))
                    .or_else(|| self.untracked_by.take());
                match &by {
                    Some(r) => self.trace.push(Step::rule(
                        StepKind::Verdict,
                        r.clone(),
                        "not captured: this rule let the connection through".into(),
                    )),
                    None => {
                        let msg = format!("no rule matched in nat {}: not captured", self.hook());
                        self.trace.push(Step::note(StepKind::Verdict, msg));
                    }
                }
                (Verdict::Passthrough, None, by)
            }
        };
        Explanation { verdict, port, decided_by, trace: self.trace, family }
    }

    /// The explanation when jumps nest too deep to be a real ruleset.
    fn too_deep(mut self, at: RuleRef) -> Explanation {
        let msg = format!("jumps nested deeper than {MAX_DEPTH}: a loop?");
        self.trace.push(Step::rule(StepKind::Verdict, at.clone(), msg));
        Explanation {
            verdict: Verdict::Undetermined,
            port: None,
            decided_by: Some(at),
            trace: self.trace,
            family: self.pkt.family,
        }
    }
}

/// The rule to credit with a capture: the capturing rule itself when it selects the packet
/// (a positive address/port/interface/owner/mark match, like the DNS rules), otherwise the
/// jump that led to its chain — `ISTIO_REDIRECT`, `ISTIO_IN_REDIRECT` and `ISTIO_TPROXY`
/// hold one catch-all rule, and the interesting decision was the jump. Decided by shape, not
/// by label, so that planned and live (unlabelled) rules credit the same rule.
fn decider(rule: &Rule, this: RuleRef, stack: &[Frame]) -> RuleRef {
    let selective = rule.matches.iter().any(|m| match m {
        Match::Family { .. } | Match::Proto { .. } | Match::TcpSyn => false,
        Match::SrcNet { neg, .. } | Match::DstNet { neg, .. } => !neg,
        Match::DstPort { neg, .. } | Match::SrcPort { neg, .. } => !neg,
        Match::InIface { neg, .. } | Match::OutIface { neg, .. } => !neg,
        Match::Owner { neg, .. } | Match::Mark { neg, .. } => !neg,
        Match::ConnMark { .. } | Match::CtState { .. } => true,
    });
    if selective {
        return this;
    }
    stack.last().and_then(|f| f.via.clone()).unwrap_or(this)
}

/// iptables interface matching: a trailing `+` matches any name with that prefix; a packet
/// without that interface matches no name.
fn iface_matches(pattern: &str, iface: Option<&str>) -> bool {
    let Some(iface) = iface else { return false };
    match pattern.strip_suffix('+') {
        Some(prefix) => iface.starts_with(prefix),
        None => iface == pattern,
    }
}

/// The rule with each positive list match narrowed to the element the packet matches, so
/// that the iptables spelling names the one line (of Istio's one-per-element expansion)
/// that applied.
fn narrow(rule: &Rule, p: &ResolvedFlow) -> Rule {
    let mut r = rule.clone();
    for m in &mut r.matches {
        match m {
            Match::Proto { protos } if protos.contains(&p.proto) => *protos = vec![p.proto],
            Match::DstNet { nets, neg: false } => {
                if let Some(n) = nets.iter().find(|n| n.contains(p.dst)) {
                    *nets = vec![*n];
                }
            }
            Match::SrcNet { nets, neg: false } => {
                if let Some(n) = nets.iter().find(|n| n.contains(p.src)) {
                    *nets = vec![*n];
                }
            }
            Match::DstPort { ports, neg: false } => {
                if let Some(x) = ports.iter().find(|x| x.contains(p.dst_port)) {
                    *ports = vec![*x];
                }
            }
            Match::SrcPort { ports, neg: false } => {
                if let Some(x) = ports.iter().find(|x| x.contains(p.src_port)) {
                    *ports = vec![*x];
                }
            }
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::OwnerId;
    use meshpass_settings::IpNet;

    fn eff(rules: Vec<(Table, &str, Rule)>) -> Effective {
        let mut e = Effective::default();
        for (t, c, r) in rules {
            e.push(t, Chain::new(c), EffRule { op: None, rule: r, counters: None, text: None });
        }
        e
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_are_documented_values() {
        let f = Flow::outbound(ip("10.0.0.1"), 80).resolved();
        assert_eq!((f.uid, f.gid, f.out_iface.as_deref()), (Some(1000), Some(1000), Some("eth0")));
        assert_eq!(f.src, IpAddr::V4(DEFAULT_POD_IPV4));
        let f = Flow::outbound(ip("127.0.0.5"), 80).resolved();
        assert_eq!((f.out_iface.as_deref(), f.src), (Some("lo"), ip("127.0.0.1")));
        let f = Flow::outbound(ip("198.18.0.7"), 80).pod_ip(ip("198.18.0.7")).resolved();
        assert_eq!(f.out_iface.as_deref(), Some("lo"));
        let f = Flow::inbound(80).resolved();
        assert_eq!((f.uid, f.in_iface.as_deref(), f.src), (None, Some("eth0"), ip("192.0.2.1")));
        let f = Flow::inbound_to(ip("2001:db8::10"), 80).resolved();
        assert_eq!(f.src, ip("2001:db8::1"));
    }

    #[test]
    fn marks_flow_across_tables() {
        let e = eff(vec![
            (Table::Mangle, "PREROUTING", Rule::new(vec![], Target::SetMark { mark: 7 })),
            (
                Table::Nat,
                "PREROUTING",
                Rule::new(vec![Match::Mark { value: 7, neg: false }], Target::Redirect { port: 1, singular: false }),
            ),
        ]);
        let x = explain(&e, &Flow::inbound(80));
        assert_eq!((x.verdict, x.port), (Verdict::Redirect, Some(1)));
        // CONNMARK restore from a zero connection mark clears the mark again.
        let e = eff(vec![
            (Table::Mangle, "PREROUTING", Rule::new(vec![], Target::SetMark { mark: 7 })),
            (Table::Mangle, "PREROUTING", Rule::new(vec![], Target::ConnMarkRestore)),
            (
                Table::Nat,
                "PREROUTING",
                Rule::new(vec![Match::Mark { value: 7, neg: false }], Target::Redirect { port: 1, singular: false }),
            ),
        ]);
        assert_eq!(explain(&e, &Flow::inbound(80)).verdict, Verdict::Passthrough);
    }

    #[test]
    fn named_owner_is_undetermined_unless_irrelevant() {
        let named = || Match::Owner { kind: OwnerKind::Gid, id: OwnerId::parse("istio").unwrap(), neg: false };
        let e = eff(vec![
            (Table::Nat, "OUTPUT", Rule::new(vec![named()], Target::Return)),
            (Table::Nat, "OUTPUT", Rule::new(vec![], Target::Redirect { port: 15001, singular: false })),
        ]);
        let x = explain(&e, &Flow::outbound(ip("10.0.0.1"), 80));
        assert_eq!(x.verdict, Verdict::Undetermined);
        assert_eq!(x.decided_by.as_ref().map(|r| r.index), Some(1));
        // Both outcomes RETURN-or-fall-through: the verdict is passthrough either way.
        let e = eff(vec![
            (Table::Nat, "OUTPUT", Rule::new(vec![named()], Target::Return)),
            (Table::Nat, "OUTPUT", Rule::new(vec![Match::DstPort { ports: vec![], neg: false }], Target::Drop)),
        ]);
        let x = explain(&e, &Flow::outbound(ip("10.0.0.1"), 80));
        assert_eq!(x.verdict, Verdict::Passthrough);
        assert!(x.trace.iter().any(|s| s.kind == StepKind::MayMatch));
    }

    #[test]
    fn narrowed_text_names_the_matching_element() {
        let nets = vec![IpNet::parse("10.0.0.0/8").unwrap(), IpNet::parse("192.168.0.0/16").unwrap()];
        let r = Rule::new(vec![Match::DstNet { nets, neg: false }], Target::Return).labeled("x");
        let e = eff(vec![(Table::Nat, "OUTPUT", r)]);
        let x = explain(&e, &Flow::outbound(ip("192.168.1.1"), 80));
        assert_eq!(x.verdict, Verdict::Passthrough);
        assert_eq!(x.decided_by.map(|r| r.text), Some("-d 192.168.0.0/16 -j RETURN".to_string()));
    }

    #[test]
    fn wildcard_interfaces() {
        assert!(iface_matches("veth+", Some("veth12")));
        assert!(!iface_matches("veth+", Some("eth0")));
        assert!(!iface_matches("lo", None));
    }
}
