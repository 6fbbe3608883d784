//! Privileged: planned rules vs. the kernel's.
//!
//! For several compiled plans, the rendered `iptables-restore` input is applied with
//! `iptables-restore --noflush` / `ip6tables-restore --noflush` (nft and legacy backends) in a
//! fresh network namespace, read back with `iptables-save -c`, parsed, and `explain` over the
//! live rules must give the same verdict and port as `explain_plan` for a grid of flows.
//!
//! A second test sends real connections inside a pair of namespaces it creates (a pod and a
//! peer joined by a veth pair; nothing can leave them) and checks that the kernel counted
//! each first packet on exactly the rule `explain` named.
//!
//! Needs root: `#[ignore = "needs root"]`, run as root by `scripts/test` (`--include-ignored`).

use meshpass_capture::explain::{explain, explain_plan, Flow, StepKind, Verdict};
use meshpass_capture::ir::{Effective, Family, OwnerId, Plan, Proto, Table};
use meshpass_capture::parse::iptables_save::parse_save;
use meshpass_capture::render::iptables::render_restore;
use meshpass_capture::{compile, CaptureConfig, InjectorValues, OwnerGroups};
use meshpass_settings::{keys, Settings};
use meshpass_test_support::TestNamespaces;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// A network namespace of the test (its name, and the guard that deletes it on drop).
struct Netns(String, #[allow(dead_code)] meshpass_test_support::Netns);

impl Netns {
    fn new(namespaces: &TestNamespaces, role: &str) -> Self {
        let ns = namespaces.create(role);
        Netns(ns.name().to_string(), ns)
    }

    /// Runs `prog args` inside the namespace; panics with its stderr on failure.
    fn exec(&self, prog: &str, args: &[&str], stdin: Option<&str>) -> String {
        let mut a = vec!["netns", "exec", self.0.as_str(), prog];
        a.extend_from_slice(args);
        run("ip", &a, stdin)
    }
}

fn run(prog: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}\n{}\n--- stdin\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        stdin.unwrap_or("")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One iptables backend's tools.
struct IptablesTools {
    name: &'static str,
    restore: [&'static str; 2],
    save: [&'static str; 2],
}

const BACKENDS: [IptablesTools; 2] = [
    IptablesTools {
        name: "nft",
        restore: ["iptables-nft-restore", "ip6tables-nft-restore"],
        save: ["iptables-nft-save", "ip6tables-nft-save"],
    },
    IptablesTools {
        name: "legacy",
        restore: ["iptables-legacy-restore", "ip6tables-legacy-restore"],
        save: ["iptables-legacy-save", "ip6tables-legacy-save"],
    },
];

fn fam_idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// Applies `plan` in `ns` and returns the live rules per family.
fn apply_and_read(ns: &Netns, b: &IptablesTools, plan: &Plan) -> BTreeMap<Family, Effective> {
    let mut live = BTreeMap::new();
    for family in Family::ALL {
        let i = fam_idx(family);
        let input = render_restore(plan, family);
        if !input.is_empty() {
            ns.exec(b.restore[i], &["--noflush"], Some(&input));
        }
        live.insert(family, read(ns, b, family));
    }
    live
}

fn read(ns: &Netns, b: &IptablesTools, family: Family) -> Effective {
    let saved = ns.exec(b.save[fam_idx(family)], &["-c"], None);
    parse_save(&saved).unwrap_or_else(|e| panic!("{} save output does not parse: {e}\n{saved}", b.name))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

const POD4: &str = "198.18.0.10";
const PEER4: &str = "198.18.0.1";
const POD6: &str = "2001:db8::10";
const PEER6: &str = "2001:db8::1";

fn config(annotations: &[(&str, &str)], edit: impl FnOnce(&mut CaptureConfig)) -> CaptureConfig {
    let map: BTreeMap<String, String> = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let settings = Settings::from_annotations(&map).expect("valid annotations");
    let mut cfg = CaptureConfig::from_settings(&settings, &InjectorValues::default()).expect("capture on");
    cfg.enable_ipv6 = true;
    edit(&mut cfg);
    cfg
}

/// Plans that together use every rule shape the compiler emits.
fn plans() -> Vec<(&'static str, Plan)> {
    let g = OwnerId::numeric;
    vec![
        (
            "redirect-excludes",
            compile(&config(
                &[
                    (keys::EXCLUDE_OUTBOUND_PORTS, "5432,8000-8100"),
                    (keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.1.0.0/16,2001:db8:1::/48"),
                    (keys::EXCLUDE_INBOUND_PORTS, "7000-7010"),
                    (keys::INCLUDE_OUTBOUND_PORTS, "443"),
                ],
                |_| {},
            )),
        ),
        (
            "tproxy",
            compile(&config(
                &[
                    (keys::INTERCEPTION_MODE, "TPROXY"),
                    (keys::EXCLUDE_INTERFACES, "eth1"),
                    (keys::EXCLUDE_INBOUND_PORTS, "7005"),
                ],
                |c| c.drop_invalid = true,
            )),
        ),
        (
            "dns-groups",
            compile(&config(&[], |c| {
                c.redirect_dns = true;
                c.dns_servers_v4 = vec![ip("10.96.0.10")];
                c.dns_servers_v6 = vec![ip("fd00::10")];
                c.owner_groups = OwnerGroups::AllExcept(vec![g(3000)]);
                c.proxy_uids = vec![g(1337), g(2000)];
            })),
        ),
        (
            "include-lists",
            compile(&config(
                &[
                    (keys::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8"),
                    (keys::INCLUDE_INBOUND_PORTS, "8080,9000-9010"),
                    (keys::EXCLUDE_INBOUND_PORTS, "8080"),
                    (keys::REROUTE_VIRTUAL_INTERFACES, "virt0"),
                    (keys::INCLUDE_OUTBOUND_PORTS, "3000-3010"),
                ],
                |_| {},
            )),
        ),
        (
            "only-groups-loopback-include",
            compile(&config(&[(keys::INCLUDE_OUTBOUND_IP_RANGES, "127.1.2.3/32,10.0.0.0/8")], |c| {
                c.owner_groups = OwnerGroups::Only(vec![g(3000), g(3001)]);
                c.capture_all_dns = true;
                c.redirect_dns = true;
            })),
        ),
    ]
}

/// Every combination of the interesting values, both directions.
fn grid(family: Family) -> Vec<Flow> {
    let (pod, dsts, passthrough_src): (&str, &[&str], &str) = match family {
        Family::V4 => {
            (POD4, &[POD4, "127.0.0.1", "127.1.2.3", "10.1.2.3", "10.2.0.1", "10.96.0.10", "203.0.113.5"], "127.0.0.6")
        }
        Family::V6 => (POD6, &[POD6, "::1", "2001:db8:1::5", "fd00::10", "2001:db8:5::1"], "::6"),
    };
    let ports = [53, 80, 443, 3005, 5432, 7005, 8050, 8080, 9005, 15008, 15021];
    let owners = [(1000, 1000), (1337, 1337), (0, 1337), (2000, 3000), (1000, 3001)];
    let mut flows = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        for port in ports {
            for dst in dsts {
                for (uid, gid) in owners {
                    for src in [None, Some(passthrough_src)] {
                        for out_if in [None, Some("eth1")] {
                            let mut f = Flow::outbound(ip(dst), port).pod_ip(ip(pod)).proto(proto).uid(uid).gid(gid);
                            f.src = src.map(ip);
                            f.out_iface = out_if.map(str::to_string);
                            flows.push(f);
                        }
                    }
                }
            }
            for iface in ["eth0", "lo", "eth1", "virt0"] {
                for src in [None, Some(passthrough_src)] {
                    for dst in [pod, dsts[3]] {
                        let mut f = Flow::inbound_to(ip(dst), port).proto(proto).in_iface(iface);
                        f.src = src.map(ip);
                        flows.push(f);
                    }
                }
            }
        }
    }
    flows
}

meshpass_test_support::namespaced_test! {
    fn live_rules_explain_like_the_plan(namespaces) {
        let mut compared = 0;
        let mut failures = Vec::new();
        for b in &BACKENDS {
            for (name, plan) in plans() {
                let ns = Netns::new(&namespaces, "l");
                let live = apply_and_read(&ns, b, &plan);
                for family in Family::ALL {
                    let eff = &live[&family];
                    for flow in grid(family) {
                        let want = explain_plan(&plan, &flow);
                        let got = explain(eff, &flow);
                        compared += 1;
                        if (got.verdict, got.port) != (want.verdict, want.port) || got.verdict == Verdict::Undetermined {
                            failures.push(format!("{} {name} {flow:?}\n-- plan:\n{want}\n-- live:\n{got}\n", b.name));
                        }
                        if let Some(r) = &got.decided_by {
                            assert!(r.counters.is_some(), "live rules carry counters: {r}");
                        }
                    }
                }
            }
        }
        let shown: Vec<&String> = failures.iter().take(5).collect();
        assert!(failures.is_empty(), "{} of {compared} flows differ; first ones:\n{shown:#?}", failures.len());
        eprintln!("explain_live: {compared} flows agree between plan and kernel");
    }
}

/// The pod/peer pair for real traffic: `eth0` in the pod, routes both ways, the peer owning
/// the outbound destinations. Nothing is reachable beyond the two namespaces.
struct Pair {
    pod: Netns,
    peer: Netns,
}

impl Pair {
    fn new(namespaces: &TestNamespaces) -> Self {
        let pod = Netns::new(namespaces, "p");
        let peer = Netns::new(namespaces, "q");
        run(
            "ip",
            &["-n", &pod.0, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", &peer.0],
            None,
        );
        for (ns, dev, a4, a6) in [(&pod, "eth0", POD4, POD6), (&peer, "peer0", PEER4, PEER6)] {
            let n = ns.0.as_str();
            run("ip", &["-n", n, "addr", "add", &format!("{a4}/24"), "dev", dev], None);
            run("ip", &["-n", n, "addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"], None);
            run("ip", &["-n", n, "link", "set", dev, "up"], None);
            run("ip", &["-n", n, "link", "set", "lo", "up"], None);
        }
        run("ip", &["-n", &pod.0, "route", "add", "default", "via", PEER4], None);
        run("ip", &["-n", &pod.0, "-6", "route", "add", "default", "via", PEER6], None);
        for a in ["10.1.2.3/32", "10.2.0.1/32", "10.96.0.10/32", "203.0.113.5/32"] {
            run("ip", &["-n", &peer.0, "addr", "add", a, "dev", "lo"], None);
        }
        for a in ["2001:db8:1::5/128", "fd00::10/128", "2001:db8:5::1/128"] {
            run("ip", &["-n", &peer.0, "addr", "add", a, "dev", "lo", "nodad"], None);
        }
        Pair { pod, peer }
    }
}

/// Opens one connection (TCP) or sends one datagram (UDP) from `ns` as `uid`/`gid`; the
/// outcome does not matter, only that the first packet went through netfilter.
fn send(ns: &Netns, uid: u32, gid: u32, proto: Proto, dst: IpAddr, port: u16) {
    let dev = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let script = format!("exec 3<>/dev/{dev}/{dst}/{port}; echo x >&3");
    let (u, g) = (uid.to_string(), gid.to_string());
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.0, "timeout", "0.5", "setpriv", "--reuid", &u, "--regid", &g, "--clear-groups"])
        .args(["bash", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    // Refused, reset or timed out are all fine; a failure to start is not.
    assert_ne!(status.code(), Some(127), "could not run bash/setpriv in {}", ns.0);
}

fn packets(eff: &Effective, table: Table, chain: &str, index: usize) -> u64 {
    eff.chain(table, chain)
        .get(index - 1)
        .and_then(|r| r.counters)
        .map(|c| c.packets)
        .unwrap_or_else(|| panic!("no rule {table} {chain} #{index}"))
}

/// (from the peer?, uid, gid, proto, destination, port)
type Case = (bool, u32, u32, Proto, &'static str, u16);

/// Flows sent for real, per plan; the verdicts come from `explain_plan`.
fn traffic_cases(plan: &str) -> Vec<Case> {
    let (t, u) = (Proto::Tcp, Proto::Udp);
    match plan {
        "redirect-excludes" => vec![
            (false, 1000, 1000, t, "203.0.113.5", 80),
            (false, 1000, 1000, t, "10.1.2.3", 80),
            (false, 1000, 1000, t, "203.0.113.5", 5432),
            (false, 1000, 1000, u, "203.0.113.5", 8050),
            (false, 1000, 1000, u, "203.0.113.5", 9999),
            (false, 1337, 1337, t, "203.0.113.5", 80),
            (false, 1337, 1337, t, POD4, 9090),
            (false, 1000, 1000, t, POD4, 9090),
            (false, 1000, 1000, t, "127.0.0.1", 9090),
            (false, 1000, 1000, t, "2001:db8:5::1", 80),
            (false, 1000, 1000, t, "2001:db8:1::5", 80),
            (false, 1337, 1337, t, POD6, 9090),
            (true, 0, 0, t, POD4, 8080),
            (true, 0, 0, t, POD4, 7005),
            (true, 0, 0, t, POD4, 15021),
            (true, 0, 0, t, POD4, 15008),
            (true, 0, 0, t, POD6, 8080),
        ],
        "tproxy" => vec![
            (true, 0, 0, t, POD4, 8080),
            (true, 0, 0, t, POD4, 7005),
            (true, 0, 0, t, POD4, 15008),
            (true, 0, 0, t, POD6, 8080),
            (false, 1000, 1000, t, "203.0.113.5", 80),
            (false, 0, 1337, t, "203.0.113.5", 80),
            (false, 1337, 1337, t, POD4, 9090),
        ],
        "dns-groups" => vec![
            (false, 1000, 1000, u, "10.96.0.10", 53),
            (false, 1000, 1000, t, "10.96.0.10", 53),
            (false, 1000, 1000, u, "fd00::10", 53),
            (false, 1337, 1337, u, "10.96.0.10", 53),
            (false, 1000, 3000, t, "203.0.113.5", 80),
            (false, 2000, 2000, t, POD4, 9090),
            (false, 2000, 2000, t, "203.0.113.5", 80),
            (true, 0, 0, t, POD4, 8080),
        ],
        _ => Vec::new(),
    }
}

meshpass_test_support::namespaced_test! {
    fn kernel_counts_the_rule_explain_names(namespaces) {
        let nft = &BACKENDS[0];
        let mut checked = 0;
        for (name, plan) in plans() {
            let cases = traffic_cases(name);
            if cases.is_empty() {
                continue;
            }
            let pair = Pair::new(&namespaces);
            apply_and_read(&pair.pod, nft, &plan);
            let mut verdicts = Vec::new();
            for (inbound, uid, gid, proto, dst, port) in cases {
                let dst = ip(dst);
                let flow = if inbound {
                    let peer = if dst.is_ipv4() { PEER4 } else { PEER6 };
                    Flow::inbound_to(dst, port).proto(proto).from(ip(peer))
                } else {
                    let pod = if dst.is_ipv4() { POD4 } else { POD6 };
                    Flow::outbound(dst, port).pod_ip(ip(pod)).proto(proto).uid(uid).gid(gid)
                };
                let family = flow.family();
                let before = read(&pair.pod, nft, family);
                let e = explain(&before, &flow);
                let want = explain_plan(&plan, &flow);
                assert_eq!((e.verdict, e.port), (want.verdict, want.port), "{name} {flow:?}\n{e}\n{want}");
                verdicts.push(e.verdict);
                send(if inbound { &pair.peer } else { &pair.pod }, uid, gid, proto, dst, port);
                let after = read(&pair.pod, nft, family);
                // Every rule explain says matched must have counted this flow's first packet.
                let matched = e.trace.iter().filter(|s| s.kind == StepKind::Match).filter_map(|s| s.rule.as_ref());
                for r in matched.chain(e.decided_by.as_ref()) {
                    let count = |eff: &Effective| packets(eff, r.table, r.chain.as_str(), r.index);
                    let (b, a) = (count(&before), count(&after));
                    assert!(a > b, "{name} {flow:?}: the kernel did not count {r} ({b} -> {a})\n{e}");
                    checked += 1;
                }
            }
            verdicts.dedup();
            assert!(verdicts.len() > 1, "{name}: the cases should not all have one verdict");
        }
        eprintln!("kernel counted all {checked} rules explain named");
    }
}
