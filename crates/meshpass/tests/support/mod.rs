//! Test support: the shared data, the binary under test, and what the namespaced tests read
//! back from a namespace.
#![allow(dead_code, unused_imports)]

pub(crate) use meshpass_test_support::{cases, shared_dir, Netns, TestNamespaces};

/// iptables-save + ip6tables-save in `ns`, comments and counters stripped.
pub(crate) fn netfilter_state(ns: &Netns, legacy: bool) -> String {
    let (v4, v6) =
        if legacy { ("iptables-legacy-save", "ip6tables-legacy-save") } else { ("iptables-save", "ip6tables-save") };
    let mut out = String::new();
    for prog in [v4, v6] {
        out.push_str(&format!("## {prog}\n"));
        let text = ns.exec_ok(&[prog]);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The meshpass binary under test.
pub(crate) fn meshpass() -> &'static str {
    env!("CARGO_BIN_EXE_meshpass")
}

pub(crate) mod mesh;
