//! Helpers shared by the nftables tests: sample plans, the comparison of a plan with a
//! readback, and (for the privileged tests) namespaces that know the cases' group names and an
//! `nft` runner.
#![allow(dead_code)]

use meshpass_capture::ir::{Effective, Family, OwnerId, OwnerKind};
use meshpass_capture::parse::nft_json::{canonical, canonical_with, Live};
use meshpass_capture::{compile, IstioArgs, Plan};
pub(crate) use meshpass_test_support::Netns;
use meshpass_test_support::TestNamespaces;
use std::path::PathBuf;

/// `testdata/nft` in this crate.
pub(crate) fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/nft")
}

/// Group names used by the Istio cases (`java`, `ftp`) and the numbers the privileged tests
/// give them in the test namespaces' private `/etc/group`, since nft resolves names when it loads a rule and
/// lists numbers.
pub(crate) const GROUPS: [(&str, u32); 2] = [("java", 5001), ("ftp", 5002)];

/// Maps the names of [`GROUPS`] to their numbers.
pub(crate) fn resolve(_kind: OwnerKind, id: &OwnerId) -> OwnerId {
    GROUPS.iter().find(|(n, _)| *n == id.as_str()).map(|(_, g)| OwnerId::numeric(*g)).unwrap_or_else(|| id.clone())
}

/// The plans whose kernel readbacks are stored as `testdata/nft/readback-<name>.json`.
pub(crate) fn sample_plans() -> Vec<(&'static str, Plan)> {
    let s = |v: &str| Some(v.to_string());
    let tproxy = IstioArgs {
        mode: s("TPROXY"),
        proxy_uid: s("1337"),
        include_inbound_ports: s("*"),
        exclude_inbound_ports: s("15090,15021,15020,8000-8100"),
        exclude_outbound_ports: s("3306,9000-9100"),
        include_ip_ranges: s("*"),
        exclude_ip_ranges: s("10.0.0.0/8,192.168.1.7/24,2001:db8::/32,fd00::/8"),
        redirect_dns: true,
        dns_servers: vec!["127.0.0.53".into(), "fd00::53".into()],
        enable_ipv6: true,
        exclude_interfaces: s("veth-x"),
        ..Default::default()
    };
    let redirect_v4 = IstioArgs {
        proxy_uid: s("1337"),
        include_inbound_ports: s("*"),
        exclude_inbound_ports: s("15020,15021,15090"),
        // Adjacent prefixes that nft's auto-merge turns into one range.
        exclude_ip_ranges: s("10.0.0.0/24,10.0.1.0/24,10.0.2.0/24,172.16.0.0/12"),
        include_outbound_ports: s("80,443"),
        include_ip_ranges: s("198.18.0.0/15,100.64.0.0/10"),
        drop_invalid: true,
        owner_groups_exclude: s("2000,2001"),
        ..Default::default()
    };
    // meshpass's untracked exclusions beside DNS capture's raw rules and a rerouted interface.
    let untracked = IstioArgs {
        proxy_uid: s("1337"),
        include_inbound_ports: s("*"),
        exclude_inbound_ports: s("15090,15021,5000,8000-8100,15020"),
        include_ip_ranges: s("*"),
        virtual_interfaces: s("virt0"),
        redirect_dns: true,
        dns_servers: vec!["127.0.0.53".into()],
        enable_ipv6: true,
        untrack_excluded_inbound: true,
        ..Default::default()
    };
    [("tproxy-dual", tproxy), ("redirect-v4", redirect_v4), ("untracked-dual", untracked)]
        .into_iter()
        .map(|(n, a)| (n, compile(&a.to_config().unwrap_or_else(|e| panic!("{n}: {e}")))))
        .collect()
}

/// Compares a readback with the plan, family by family, modulo op indices, counters, text and
/// list order (see `canonical`). Returns a readable diff on mismatch.
pub(crate) fn compare(plan: &Plan, live: &Live) -> Result<(), String> {
    let mut diffs = Vec::new();
    for (family, got) in [(Family::V4, &live.v4), (Family::V6, &live.v6)] {
        let want = canonical_with(&plan.effective(family), family, &resolve);
        let got = canonical(got, family);
        if want != got {
            diffs.push(format!("{family}:\n{}", diff(&want, &got)));
        }
    }
    if live.ipv6_disabled == plan.ipv6 {
        diffs.push(format!("ipv6_disabled = {} but plan.ipv6 = {}", live.ipv6_disabled, plan.ipv6));
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("\n"))
    }
}

fn diff(want: &Effective, got: &Effective) -> String {
    let lines = |e: &Effective| -> Vec<String> {
        let mut v = Vec::new();
        for (t, chains) in &e.tables {
            for (c, rules) in chains {
                for r in &rules.rules {
                    v.push(format!("{t}/{c}: {}", serde_json::to_string(&r.rule).unwrap_or_default()));
                }
            }
        }
        v
    };
    let (w, g) = (lines(want), lines(got));
    let mut out = String::new();
    for l in &w {
        if !g.contains(l) {
            out.push_str(&format!("  - {l}\n"));
        }
    }
    for l in &g {
        if !w.contains(l) {
            out.push_str(&format!("  + {l}\n"));
        }
    }
    if out.is_empty() {
        out = "  (same rules, different order)\n".into();
        for (a, b) in w.iter().zip(&g) {
            if a != b {
                out.push_str(&format!("  want {a}\n  got  {b}\n"));
                break;
            }
        }
    }
    out
}

/// The test's namespace `role`, whose commands see [`GROUPS`] in `/etc/group` (so that nft can
/// resolve the group names of the Istio cases).
pub(crate) fn netns(namespaces: &TestNamespaces, role: &str) -> Netns {
    namespaces.create(role).with_groups(&GROUPS)
}

/// `nft` in a test namespace.
pub(crate) trait Nft {
    /// `nft <args>` inside; panics with nft's message on failure.
    fn nft(&self, args: &[&str], stdin: Option<&str>) -> String;
}

impl Nft for Netns {
    fn nft(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut argv = vec!["nft"];
        argv.extend_from_slice(args);
        let out = self.exec(&argv, stdin);
        assert!(
            out.status.success(),
            "nft {args:?} in {} failed: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
