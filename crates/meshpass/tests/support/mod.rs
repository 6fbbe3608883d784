//! Test support: privileged-test gating, throwaway network namespaces, the shared data.
#![allow(dead_code, unused_imports)]

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use meshpass_test_support::{cases, privileged, shared_dir};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace that exists for the life of the value (deleted on drop, panics too).
pub struct TestNetns {
    /// Its name.
    pub name: String,
}

impl TestNetns {
    /// Creates `mp-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        let name = format!("mp-{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let st = Command::new("ip").args(["netns", "add", &name]).status().expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        let ns = Self { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside (through `ip netns exec`), with optional stdin and env.
    pub fn exec_with(&self, argv: &[&str], stdin: Option<&str>, env: &[(String, String)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        if let (Some(s), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            let _ = pipe.write_all(s.as_bytes());
        }
        child.wait_with_output().expect("wait")
    }

    /// Runs and returns stdout; panics on failure.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec_with(argv, None, &[]);
        assert!(out.status.success(), "{argv:?} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// iptables-save + ip6tables-save, comments and counters stripped.
    pub fn netfilter_state(&self, legacy: bool) -> String {
        let (v4, v6) = if legacy {
            ("iptables-legacy-save", "ip6tables-legacy-save")
        } else {
            ("iptables-save", "ip6tables-save")
        };
        let mut out = String::new();
        for prog in [v4, v6] {
            out.push_str(&format!("## {prog}\n"));
            let text = self.exec_ok(&[prog]);
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // meshpass keeps a small apply record per namespace (keyed dev-inode) under
        // /run/meshpass; remove this namespace's before the inode can be reused.
        if let Ok(meta) = std::fs::metadata(format!("/run/netns/{}", self.name)) {
            use std::os::unix::fs::MetadataExt;
            for fam in ["ipv4", "ipv6"] {
                let _ =
                    std::fs::remove_file(format!("/run/meshpass/iptables/{}-{}.{fam}.json", meta.dev(), meta.ino()));
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// The meshpass binary under test.
pub fn meshpass() -> &'static str {
    env!("CARGO_BIN_EXE_meshpass")
}
pub mod mesh;
