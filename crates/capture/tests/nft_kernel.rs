//! Privileged tests of the nftables backend against the real kernel, each in a fresh network
//! namespace (deleted by a guard, also on failure):
//!
//! - every golden of `testdata/nft` passes `nft -c`, loads, shows up in `nft list`, loads
//!   again over itself (atomic replacement), and reads back (`nft -j` → `parse_ruleset`) as
//!   exactly the plan's effective chains for both families, with the plan hash;
//! - a different plan replaces it, and `render_delete` removes the table;
//! - the stored JSON readback samples (`readback-*.json`) are regenerated with
//!   `UPDATE_GOLDEN=1`.
//!
//! Needs root: `#[ignore = "needs root"]`, run as root by `scripts/test` (`--include-ignored`).

mod common;
mod nft_support;

use meshpass_capture::parse::nft_json::parse_ruleset;
use meshpass_capture::render::nft;
use meshpass_capture::{compile, IstioArgs};
use nft_support::{compare, netns, sample_plans, testdata, Netns, Nft as _};

const LIST: [&str; 4] = ["list", "table", "inet", nft::TABLE];
const LIST_JSON: [&str; 5] = ["-j", "list", "table", "inet", nft::TABLE];

meshpass_test_support::namespaced_test! {
    fn every_golden_loads_replaces_and_reads_back(namespaces) {
        let Some(shared) = common::shared_dir() else {
            return;
        };
        let mut checked = 0;
        let mut failures = Vec::new();
        for (name, case) in common::cases(&shared) {
            if case.pointer("/expected/nftables").is_none_or(|v| v.is_null()) {
                continue;
            }
            let cfg = IstioArgs::from_case_config(&case["config"]).to_config().unwrap_or_else(|e| panic!("{name}: {e}"));
            let plan = compile(&cfg);
            let path = testdata().join(format!("{name}.nft"));
            let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let ns = netns(&namespaces, "golden");
            let file = path.to_str().expect("utf-8 path");
            ns.nft(&["-c", "-f", file], None);
            ns.nft(&["-f", file], None);
            let listed = ns.nft(&LIST, None);
            let hash = nft::plan_hash(&plan);
            assert!(listed.contains(&format!("table inet {} {{", nft::TABLE)), "{name}: {listed}");
            assert!(listed.contains(&format!("comment \"meshpass plan {hash}\"")), "{name}: stale golden? {listed}");
            // Loading the same transaction again replaces the table atomically.
            ns.nft(&["-f", "-"], Some(&golden));
            let live = parse_ruleset(&ns.nft(&LIST_JSON, None)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(live.hash.as_deref(), Some(hash.as_str()), "{name}");
            // Every rule carries a counter and readable text; a readback without rules would
            // compare equal to an empty plan and check nothing.
            let mut rules = 0;
            for eff in [&live.v4, &live.v6] {
                for chains in eff.tables.values() {
                    for c in chains.values() {
                        for r in &c.rules {
                            assert!(r.counters.is_some() && r.text.is_some(), "{name}: {r:?}");
                            rules += 1;
                        }
                    }
                }
            }
            if rules == 0 {
                failures.push(format!("== {name}: the kernel holds no rule of the golden"));
            } else if let Err(d) = compare(&plan, &live) {
                failures.push(format!("== {name}\n{d}"));
            } else {
                checked += 1;
            }
        }
        assert!(failures.is_empty(), "{} readbacks differ from their plans:\n{}", failures.len(), failures.join("\n"));
        assert_eq!(checked, 28);
    }
}

meshpass_test_support::namespaced_test! {
    fn replacement_and_delete(namespaces) {
        let plans = sample_plans();
        let ns = netns(&namespaces, "replace");
        for (name, plan) in &plans {
            ns.nft(&["-f", "-"], Some(&nft::render(plan)));
            let live = parse_ruleset(&ns.nft(&LIST_JSON, None)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(live.hash, Some(nft::plan_hash(plan)), "{name}");
            compare(plan, &live).unwrap_or_else(|d| panic!("{name}: nothing of the previous plan may remain:\n{d}"));
        }
        ns.nft(&["-f", "-"], Some(&nft::render_delete()));
        let tables = ns.nft(&["list", "tables"], None);
        assert!(!tables.contains(nft::TABLE), "{tables}");
        // Deleting what is not there is fine too (the transaction creates it first).
        ns.nft(&["-f", "-"], Some(&nft::render_delete()));
    }
}

meshpass_test_support::namespaced_test! {
    fn readback_samples_are_current(namespaces) {
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        for (name, plan) in sample_plans() {
            let ns = netns(&namespaces, "sample");
            ns.nft(&["-f", "-"], Some(&nft::render(&plan)));
            // Some traffic to our own loopback, so that counters are not all zero.
            let _ = ns.exec(&["curl", "-s", "--max-time", "1", "http://127.0.0.1:9/"], None);
            let json = ns.nft(&LIST_JSON, None);
            let live = parse_ruleset(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
            compare(&plan, &live).unwrap_or_else(|d| panic!("{name}:\n{d}"));
            let packets: u64 = live
                .v4
                .tables
                .values()
                .flat_map(|t| t.values())
                .flat_map(|c| &c.rules)
                .filter_map(|r| r.counters.map(|c| c.packets))
                .sum();
            assert!(packets > 0, "{name}: the loopback connection attempt should have been counted");
            let path = testdata().join(format!("readback-{name}.json"));
            if update {
                let pretty: serde_json::Value = serde_json::from_str(&json).expect("nft JSON");
                let text = serde_json::to_string_pretty(&pretty).expect("serialize") + "\n";
                std::fs::write(&path, text).expect("write sample");
            } else {
                assert!(path.exists(), "{} is missing (UPDATE_GOLDEN=1 writes it)", path.display());
            }
        }
    }
}

meshpass_test_support::namespaced_test! {
    fn ten_thousand_exclusions_are_one_rule_on_one_set(namespaces) {
        // 10,000 non-adjacent host addresses (198.19.0.0, .2, .4, ...), so auto-merge keeps them.
        let ranges: Vec<String> =
            (0u32..10_000).map(|i| format!("{}/32", std::net::Ipv4Addr::from(0xc613_0000 + 2 * i))).collect();
        let args = IstioArgs {
            include_ip_ranges: Some("*".into()),
            exclude_ip_ranges: Some(ranges.join(",")),
            ..Default::default()
        };
        let plan = compile(&args.to_config().expect("config"));
        let text = nft::render(&plan);
        let rules = text.lines().filter(|l| l.contains("@exclude-outbound-ip-ranges-v4")).count();
        assert_eq!(rules, 1, "one rule, whatever the length of the list");
        let ns = netns(&namespaces, "10k");
        let t = std::time::Instant::now();
        ns.nft(&["-f", "-"], Some(&text));
        eprintln!("applied 10,000 exclusions in {:?}", t.elapsed());
        let live = parse_ruleset(&ns.nft(&LIST_JSON, None)).expect("parse");
        compare(&plan, &live).unwrap_or_else(|d| panic!("{d}"));
    }
}

/// Packets of the first rule labeled `label` in nat `ISTIO_OUTPUT` (v4).
fn packets(live: &meshpass_capture::parse::nft_json::Live, label: &str) -> u64 {
    use meshpass_capture::ir::{chains, Table};
    live.v4
        .chain(Table::Nat, chains::ISTIO_OUTPUT)
        .iter()
        .find(|r| r.rule.label.as_deref() == Some(label))
        .and_then(|r| r.counters)
        .map_or(0, |c| c.packets)
}

meshpass_test_support::namespaced_test! {
    fn sets_classify_real_connections(namespaces) {
        let (_, plan) = sample_plans().into_iter().find(|(n, _)| *n == "redirect-v4").expect("sample");
        // The pod namespace (rules) and a peer namespace holding the destinations, joined by a
        // veth pair: one address in an excluded range (inside the auto-merged 10.0.0.0-10.0.2.255
        // range), one in an included range. Nothing leaves the two namespaces.
        let ns = netns(&namespaces, "traffic");
        let peer = netns(&namespaces, "peer");
        let run = |n: &Netns, argv: &[&str]| {
            let out = n.exec(argv, None);
            assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let st = std::process::Command::new("ip")
            .args(["link", "add", "mp-pod", "netns", ns.name(), "type", "veth", "peer", "name", "mp-peer", "netns"])
            .arg(peer.name())
            .status()
            .expect("ip link add");
        assert!(st.success());
        run(&ns, &["ip", "addr", "add", "192.0.2.1/24", "dev", "mp-pod"]);
        run(&ns, &["ip", "link", "set", "mp-pod", "up"]);
        run(&ns, &["ip", "route", "add", "10.0.1.0/24", "dev", "mp-pod"]);
        run(&ns, &["ip", "route", "add", "198.18.0.0/24", "dev", "mp-pod"]);
        run(&peer, &["ip", "addr", "add", "192.0.2.2/24", "dev", "mp-peer"]);
        for addr in ["10.0.1.5/32", "198.18.0.1/32"] {
            run(&peer, &["ip", "addr", "add", addr, "dev", "mp-peer"]);
        }
        run(&peer, &["ip", "link", "set", "mp-peer", "up"]);
        ns.nft(&["-f", "-"], Some(&nft::render(&plan)));
        let curl = |url: &str| {
            let _ = ns.exec(&["curl", "-s", "--max-time", "1", url], None);
            parse_ruleset(&ns.nft(&LIST_JSON, None)).expect("parse")
        };
        let live = curl("http://10.0.1.5:80/");
        assert_eq!(packets(&live, "exclude-outbound-ip-ranges"), 1, "excluded destination bypasses capture");
        assert_eq!(packets(&live, "include-outbound-ports"), 0);
        let live = curl("http://198.18.0.1:80/");
        assert_eq!(packets(&live, "exclude-outbound-ip-ranges"), 1);
        assert_eq!(packets(&live, "include-outbound-ports"), 1, "port 80 is captured");
        let live = curl("http://198.18.0.1:8080/");
        assert_eq!(packets(&live, "include-outbound-ip-ranges"), 1, "included range captures other ports");
    }
}
