//! The backend-independent rule IR.
//!
//! A [`Plan`] is a sequence of builder operations ([`Op`]): append or insert one [`Rule`]
//! into a chain of a table, for IPv4, IPv6 or both. This mirrors how istio-iptables builds
//! its rules, so the iptables renderer can reproduce Istio's `iptables-restore` input line
//! for line, while [`Plan::effective`] replays the operations into the ordered chains the
//! kernel ends up with (what the nftables renderer and `explain` work on).
//!
//! List-valued matches (destination CIDRs, ports, protocols) are one IR rule: the iptables
//! renderer expands them into one line per element (Istio's shape), the nftables renderer
//! turns them into named sets (constant-cost matching however long the list).

use meshpass_settings::{IpNet, PortRange};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 (iptables).
    V4,
    /// IPv6 (ip6tables).
    V6,
}

impl Family {
    /// Both families, v4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// Which families an operation applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Both (Istio's `AppendRule`).
    Both,
    /// IPv4 only (`AppendRuleV4`, or the v4 half of a versioned rule).
    V4,
    /// IPv6 only.
    V6,
}

impl Scope {
    /// True when the op applies to `family`.
    pub fn includes(self, family: Family) -> bool {
        matches!((self, family), (Scope::Both, _) | (Scope::V4, Family::V4) | (Scope::V6, Family::V6))
    }
}

/// A netfilter table. The derive order is iptables-restore's (sorted by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// `filter`.
    Filter,
    /// `mangle`.
    Mangle,
    /// `nat`.
    Nat,
    /// `raw`.
    Raw,
}

impl Table {
    /// The iptables table name.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }

    /// Parses an iptables table name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "filter" => Table::Filter,
            "mangle" => Table::Mangle,
            "nat" => Table::Nat,
            "raw" => Table::Raw,
            _ => return None,
        })
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chain name, built-in (`PREROUTING`) or Istio's (`ISTIO_OUTPUT`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Chain(pub String);

/// Chain names used by the capture plan (Istio's, so existing tooling recognises them).
pub mod chains {
    /// Built-in `PREROUTING`.
    pub const PREROUTING: &str = "PREROUTING";
    /// Built-in `OUTPUT`.
    pub const OUTPUT: &str = "OUTPUT";
    /// Built-in `INPUT`.
    pub const INPUT: &str = "INPUT";
    /// Built-in `FORWARD`.
    pub const FORWARD: &str = "FORWARD";
    /// Built-in `POSTROUTING`.
    pub const POSTROUTING: &str = "POSTROUTING";
    /// Inbound classification.
    pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
    /// Outbound classification.
    pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
    /// REDIRECT to the outbound listener.
    pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
    /// REDIRECT to the inbound listener.
    pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
    /// TPROXY mark-and-accept.
    pub const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
    /// TPROXY to the inbound listener.
    pub const ISTIO_TPROXY: &str = "ISTIO_TPROXY";
    /// DNS capture (nat) and conntrack zones (raw).
    pub const ISTIO_OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
    /// Drop invalid packets.
    pub const ISTIO_DROP: &str = "ISTIO_DROP";
}

impl Chain {
    /// A chain by name.
    pub fn new(name: &str) -> Self {
        Chain(name.to_string())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the kernel's built-in chains.
    pub fn is_builtin(&self) -> bool {
        matches!(
            self.0.as_str(),
            chains::PREROUTING | chains::OUTPUT | chains::INPUT | chains::FORWARD | chains::POSTROUTING
        )
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` / `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Owner match kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerKind {
    /// `--uid-owner` / `skuid`.
    Uid,
    /// `--gid-owner` / `skgid`.
    Gid,
}

/// A user or group, numeric or by name. Names are restricted to the POSIX portable
/// character set so that they can never break out of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OwnerId(String);

impl OwnerId {
    /// Validates a numeric id or a `[a-z_][a-z0-9_-]*$?` name (at most 32 chars).
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 32 {
            return None;
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse::<u32>().ok().map(|_| OwnerId(s.to_string()));
        }
        let body = s.strip_suffix('$').unwrap_or(s);
        let mut bytes = body.bytes();
        let first = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        let rest = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        (first && rest).then(|| OwnerId(s.to_string()))
    }

    /// A numeric id.
    pub fn numeric(id: u32) -> Self {
        OwnerId(id.to_string())
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The numeric value, if the id is a number.
    pub fn as_number(&self) -> Option<u32> {
        self.0.parse().ok()
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Conntrack states used by the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CtState {
    /// `INVALID`.
    Invalid,
    /// `NEW`.
    New,
    /// `RELATED`.
    Related,
    /// `ESTABLISHED`.
    Established,
}

impl CtState {
    /// iptables spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CtState::Invalid => "INVALID",
            CtState::New => "NEW",
            CtState::Related => "RELATED",
            CtState::Established => "ESTABLISHED",
        }
    }
}

/// One match of a rule. A rule matches when all of its matches do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "match", rename_all = "snake_case")]
pub enum Match {
    /// The packet's family (`meta nfproto`); implicit in iptables, whose tables are per family.
    Family {
        /// The family.
        family: Family,
    },
    /// Layer-4 protocol, one of the list.
    Proto {
        /// Protocols (usually one).
        protos: Vec<Proto>,
    },
    /// Source address in one of the prefixes (or in none, with `neg`).
    SrcNet {
        /// Prefixes.
        nets: Vec<IpNet>,
        /// Negated.
        neg: bool,
    },
    /// Destination address in one of the prefixes (or in none, with `neg`).
    DstNet {
        /// Prefixes.
        nets: Vec<IpNet>,
        /// Negated.
        neg: bool,
    },
    /// Input interface (`-i`).
    InIface {
        /// Interface name.
        name: String,
        /// Negated.
        neg: bool,
    },
    /// Output interface (`-o`).
    OutIface {
        /// Interface name.
        name: String,
        /// Negated.
        neg: bool,
    },
    /// Destination port in one of the ranges (or in none, with `neg`).
    DstPort {
        /// Ports.
        ports: Vec<PortRange>,
        /// Negated.
        neg: bool,
    },
    /// Source port in one of the ranges.
    SrcPort {
        /// Ports.
        ports: Vec<PortRange>,
        /// Negated.
        neg: bool,
    },
    /// Socket owner (locally generated packets only).
    Owner {
        /// UID or GID.
        kind: OwnerKind,
        /// The id.
        id: OwnerId,
        /// Negated.
        neg: bool,
    },
    /// Packet mark equals `value`.
    Mark {
        /// Mark value.
        value: u32,
        /// Negated.
        neg: bool,
    },
    /// Connection mark equals `value`.
    ConnMark {
        /// Mark value.
        value: u32,
    },
    /// Conntrack state is one of these.
    CtState {
        /// States.
        states: Vec<CtState>,
    },
    /// A TCP packet with SYN set and FIN, RST and ACK clear: the first packet of a
    /// connection (iptables `--syn`, nft `tcp flags & (fin | syn | rst | ack) == syn`). Used
    /// where conntrack cannot say "new", because the rule runs before conntrack (raw table).
    TcpSyn,
}

/// What a matching rule does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum Target {
    /// Leave this chain (from a built-in chain: the table is done with the packet).
    Return,
    /// Accept the packet.
    Accept,
    /// Drop the packet.
    Drop,
    /// Continue in another chain.
    Jump {
        /// The chain.
        chain: Chain,
    },
    /// NAT the destination to a local port.
    Redirect {
        /// The port.
        port: u16,
        /// Istio spells one of its UDP DNS rules `--to-port`; both mean the same.
        singular: bool,
    },
    /// Transparent-proxy to a local port, marking the packet.
    Tproxy {
        /// The port.
        port: u16,
        /// Mark value.
        mark: u32,
        /// Mark mask.
        mask: u32,
    },
    /// Set the packet mark.
    SetMark {
        /// Mark value.
        mark: u32,
    },
    /// Copy the packet mark into the connection mark.
    ConnMarkSave,
    /// Copy the connection mark into the packet mark.
    ConnMarkRestore,
    /// Put the connection into a conntrack zone.
    CtZone {
        /// Zone id.
        zone: u16,
    },
    /// Do not track the packet (iptables `-j CT --notrack`, nft `notrack`). Like `CtZone` it
    /// does not end the chain. An untracked packet never reaches the nat table, so nothing
    /// can redirect it: its connection bypasses the sidecar, and costs no conntrack work.
    NoTrack,
}

/// One rule: all matches, then the target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// Matches, in the order Istio writes them.
    pub matches: Vec<Match>,
    /// The target.
    #[serde(flatten)]
    pub target: Target,
    /// A stable name for what the rule is for (e.g. `exclude-outbound-ip-ranges`), used for
    /// nftables comments and set names, counters and `explain`.
    pub label: Option<String>,
}

impl Rule {
    /// A rule.
    pub fn new(matches: Vec<Match>, target: Target) -> Self {
        Self { matches, target, label: None }
    }

    /// The same rule with a label.
    pub fn labeled(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// The chain this rule jumps to, if any.
    pub fn jump_target(&self) -> Option<&Chain> {
        match &self.target {
            Target::Jump { chain } => Some(chain),
            _ => None,
        }
    }
}

/// Where an op puts its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// At the end of the chain.
    Append,
    /// At this 1-based position in the chain as built so far.
    Insert(u32),
}

/// One builder operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Op {
    /// Families.
    pub scope: Scope,
    /// Table.
    pub table: Table,
    /// Chain.
    pub chain: Chain,
    /// Append or insert.
    pub position: Position,
    /// The rule.
    pub rule: Rule,
}

/// Policy routing that TPROXY mode needs (`ip rule add fwmark M lookup T`,
/// `ip route add local default dev lo table T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TproxyRoute {
    /// fwmark.
    pub mark: u32,
    /// Routing table.
    pub table: u32,
}

/// A compiled capture plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Builder operations, in order.
    pub ops: Vec<Op>,
    /// Whether IPv6 rules are part of the plan (iptables: whether ip6tables is run).
    pub ipv6: bool,
    /// TPROXY routing to set up alongside the rules.
    pub tproxy_route: Option<TproxyRoute>,
}

/// Packet and byte counters of one rule, as read back from the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Counters {
    /// Packets that matched.
    pub packets: u64,
    /// Bytes that matched.
    pub bytes: u64,
}

/// One rule of an effective chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffRule {
    /// Index of the plan op that produced it (`None` when read back from the kernel).
    pub op: Option<usize>,
    /// The rule.
    pub rule: Rule,
    /// Counters (read back from the kernel only).
    pub counters: Option<Counters>,
    /// The rule as the backend spells it, when read back (for display).
    pub text: Option<String>,
}

/// The rules of one chain in evaluation order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EffectiveChain {
    /// Rules in evaluation order.
    pub rules: Vec<EffRule>,
}

/// One family's tables, planned (replayed ops) or live (read back): table → chain → rules.
///
/// Built-in chains use iptables' names (`PREROUTING`, `OUTPUT`) and Istio's chain names
/// are kept, whatever the backend, so that `explain` walks one structure for both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// Tables.
    pub tables: BTreeMap<Table, BTreeMap<Chain, EffectiveChain>>,
}

impl Effective {
    /// The rules of `table`/`chain` (empty if absent).
    pub fn chain(&self, table: Table, chain: &str) -> &[EffRule] {
        self.tables.get(&table).and_then(|t| t.get(&Chain::new(chain))).map(|c| c.rules.as_slice()).unwrap_or(&[])
    }

    /// Appends a rule (creating the chain).
    pub fn push(&mut self, table: Table, chain: Chain, rule: EffRule) {
        self.tables.entry(table).or_default().entry(chain).or_default().rules.push(rule);
    }
}

impl Plan {
    /// The ops that apply to `family` (none for v6 when IPv6 is off), with their indices.
    pub fn ops_for(&self, family: Family) -> impl Iterator<Item = (usize, &Op)> {
        let enabled = family == Family::V4 || self.ipv6;
        self.ops.iter().enumerate().filter(move |(_, op)| enabled && op.scope.includes(family))
    }

    /// Replays the ops for `family` on empty chains.
    pub fn effective(&self, family: Family) -> Effective {
        let mut eff = Effective::default();
        for (i, op) in self.ops_for(family) {
            let chain = eff.tables.entry(op.table).or_default().entry(op.chain.clone()).or_default();
            let r = EffRule { op: Some(i), rule: op.rule.clone(), counters: None, text: None };
            match op.position {
                Position::Append => chain.rules.push(r),
                Position::Insert(n) => {
                    let at = (n.saturating_sub(1) as usize).min(chain.rules.len());
                    chain.rules.insert(at, r);
                }
            }
        }
        eff
    }
}
