//! Network namespaces for tests that need root: one guard per test ([`TestNamespaces`]),
//! created by the [`namespaced_test!`](crate::namespaced_test) macro, which also marks the test
//! `#[ignore = "needs root"]`.
//!
//! Every namespace a test creates is named after the test (`mpt-<test>-<role>`, the test's
//! name shortened to fit the local mesh's 16-character prefix), so a namespace left by a
//! crashed run says which test made it, and the next run of that test removes it first. The
//! guard's `Drop` always cleans up, also when the test panics: it kills the processes still
//! inside its namespaces, deletes every namespace with its prefix, and removes what meshpass
//! keeps per namespace (`/etc/netns/<name>`, the iptables apply records under
//! `/run/meshpass`).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest prefix the guard hands out: the local mesh's `--netns-prefix` limit.
const MAX_PREFIX: usize = 16;

/// Prefixes of the guards alive in this test binary; two that overlap would sweep each
/// other's namespaces.
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Panics unless the process runs as root, naming `test` and how to run it. Tests that need
/// root are `#[ignore = "needs root"]`: this only runs when they were asked for
/// (`--include-ignored`, as `scripts/test` does as root), so a run without root fails
/// instead of passing.
pub fn require_root(test: &str) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "{test} needs root (network namespaces): run it as root, e.g. `sudo scripts/test`, or `cargo test -- \
         --include-ignored` as root"
    );
}

/// The network namespaces of one test; see the module docs.
#[derive(Debug)]
pub struct TestNamespaces {
    test: String,
    prefix: String,
}

impl TestNamespaces {
    /// The guard of `test` (its function name): checks for root, takes the test's prefix,
    /// and removes namespaces left with that prefix by an earlier, crashed run.
    pub fn new(test: &str) -> Self {
        require_root(test);
        let prefix = prefix_for(test);
        {
            let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(other) = live.iter().find(|p| p.starts_with(&prefix) || prefix.starts_with(p.as_str())) {
                panic!("{test}: namespace prefix {prefix} overlaps {other} of a test running beside it; rename one");
            }
            live.insert(prefix.clone());
        }
        let guard = Self { test: test.to_string(), prefix };
        for line in guard.sweep() {
            eprintln!("{}: before the test, {line} (left by an earlier run)", guard.test);
        }
        guard
    }

    /// The test's name.
    pub fn test(&self) -> &str {
        &self.test
    }

    /// `mpt-<test>-`, at most 16 characters of `[a-z0-9-]`: the start of every namespace name
    /// of this test, usable as the local mesh's `--netns-prefix`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates the namespace `<prefix><role>` with its loopback up. It is deleted when the
    /// returned value is dropped, and in any case when the guard is.
    pub fn create(&self, role: &str) -> Netns {
        let name = format!("{}{role}", self.prefix);
        assert!(!Path::new("/run/netns").join(&name).exists(), "{}: namespace {name} exists already", self.test);
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("run ip netns add");
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        let ns = Netns { name, groups: None };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespaces whose names start with the prefix (also those a program under test,
    /// such as `meshpass up --netns-prefix`, made).
    pub fn list(&self) -> Vec<String> {
        list_with_prefix(&self.prefix)
    }

    /// Kills what runs in the test's namespaces and deletes them; one line per thing removed.
    fn sweep(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for name in self.list() {
            remove_netns(&name);
            removed.push(format!("removed network namespace {name}"));
        }
        removed
    }
}

impl Drop for TestNamespaces {
    fn drop(&mut self) {
        for line in self.sweep() {
            eprintln!("{}: cleanup {line}", self.test);
        }
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.prefix);
    }
}

/// One namespace of a test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// A private `/etc/group` for the commands run inside ([`Netns::with_groups`]).
    groups: Option<tempfile::NamedTempFile>,
}

impl Netns {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path under `/run/netns`.
    pub fn path(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Commands run inside from now on see an `/etc/group` that knows only `root` and
    /// `groups` (name, gid): the groups a case names exist for the test alone, in a private
    /// mount namespace per command, and vanish with it; the machine's own file is untouched.
    pub fn with_groups(mut self, groups: &[(&str, u32)]) -> Self {
        let mut text = String::from("root:x:0:\n");
        for (name, gid) in groups {
            text.push_str(&format!("{name}:x:{gid}:\n"));
        }
        let mut file = tempfile::NamedTempFile::new().expect("temporary group file");
        file.write_all(text.as_bytes()).expect("write group file");
        self.groups = Some(file);
        self
    }

    /// Runs `argv` inside (through `ip netns exec`), with `stdin` and extra `env`.
    pub fn exec_with(&self, argv: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
        let mut cmd = match &self.groups {
            Some(group) => {
                let mut cmd = Command::new("unshare");
                cmd.args(["--mount", "--", "sh", "-c", "mount --bind \"$1\" /etc/group && shift && exec \"$@\"", "sh"])
                    .arg(group.path())
                    .arg("ip");
                cmd
            }
            None => Command::new("ip"),
        };
        cmd.args(["netns", "exec", &self.name]).args(argv).envs(env.iter().copied());
        run(cmd, stdin)
    }

    /// Runs `argv` inside, with `stdin`.
    pub fn exec(&self, argv: &[&str], stdin: Option<&str>) -> Output {
        self.exec_with(argv, stdin, &[])
    }

    /// Runs `argv` inside and returns its stdout; panics with its stderr when it fails.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv, None);
        assert!(out.status.success(), "{argv:?} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread of its own that has entered the namespace: sockets it creates
    /// stay in the namespace, and nothing else of the test is moved.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e}", self.name));
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
    }
}

/// Runs `cmd` with `stdin` piped in (or none), collecting its output.
fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("write stdin of {cmd:?}: {e}"));
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("wait for {cmd:?}: {e}"))
}

/// `mpt-` and the test's name (`_` as `-`, shortened), ending in `-`.
fn prefix_for(test: &str) -> String {
    let mut short: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(MAX_PREFIX - "mpt--".len())
        .collect();
    while short.ends_with('-') {
        short.pop();
    }
    format!("mpt-{short}-")
}

/// Namespaces under `/run/netns` whose names start with `prefix`.
fn list_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Kills the processes inside `name` and deletes it with what meshpass keeps for it.
fn remove_netns(name: &str) {
    let path = Path::new("/run/netns").join(name);
    if !path.exists() {
        return;
    }
    kill_inside(name);
    // meshpass keeps a small apply record per namespace (keyed by the namespace file's
    // device and inode) under /run/meshpass; remove it before the inode can be reused.
    if let Ok(meta) = std::fs::metadata(&path) {
        use std::os::unix::fs::MetadataExt;
        for fam in ["ipv4", "ipv6"] {
            let _ = std::fs::remove_file(format!("/run/meshpass/iptables/{}-{}.{fam}.json", meta.dev(), meta.ino()));
        }
    }
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!("cleanup: ip netns del {name}: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => eprintln!("cleanup: ip netns del {name}: {e}"),
    }
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
}

/// SIGKILLs every process in namespace `name` (never this one) and waits up to 2 s for them.
fn kill_inside(name: &str) {
    let pids = || -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|&p| p != std::process::id() as i32)
            .collect()
    };
    let mut left = pids();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !left.is_empty() && Instant::now() < deadline {
        for &p in &left {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
        left = pids();
    }
}

/// A test that needs root and network namespaces: `#[test]`, `#[ignore = "needs root"]` (so
/// a run without root lists it as ignored, and `--include-ignored` as root runs it), and a
/// [`TestNamespaces`] guard named after the test, bound to the given name for the body and
/// dropped after everything the body made.
///
/// ```no_run
/// meshpass_test_support::namespaced_test! {
///     /// What it checks.
///     fn pods_talk(ns) -> anyhow::Result<()> {
///         let pod = ns.create("pod");
///         pod.exec_ok(&["ip", "addr"]);
///         Ok(())
///     }
/// }
/// ```
#[macro_export]
macro_rules! namespaced_test {
    ($(#[$attr:meta])* fn $name:ident($ns:ident) $(-> $ret:ty)? $body:block $($rest:tt)*) => {
        $(#[$attr])*
        #[test]
        #[ignore = "needs root"]
        fn $name() $(-> $ret)? {
            let $ns = $crate::netns::TestNamespaces::new(stringify!($name));
            let _ = &$ns;
            $body
        }
        $crate::namespaced_test! { $($rest)* }
    };
    () => {};
}

#[cfg(test)]
mod tests {
    use super::prefix_for;

    #[test]
    fn prefixes_are_named_after_the_test_and_fit_the_mesh() {
        assert_eq!(prefix_for("seed_scenario"), "mpt-seed-scenar-");
        assert_eq!(prefix_for("a"), "mpt-a-");
        assert_eq!(prefix_for("mesh_up_request_rollout"), "mpt-mesh-up-req-");
        // A cut that ends on a separator does not double it.
        assert_eq!(prefix_for("abcdefghij_x"), "mpt-abcdefghij-");
        for t in ["seed_scenario", "x", "passthrough_through_the_management_plane"] {
            let p = prefix_for(t);
            assert!(p.len() <= 16 && p.ends_with('-'), "{p}");
        }
    }
}
