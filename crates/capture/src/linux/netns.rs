//! Running commands inside a network namespace.
//!
//! A namespace is entered with setns(2) on a dedicated thread, and the command is spawned
//! from that thread: a child inherits the network namespace of the thread that forks it, and
//! the rest of the process never leaves its own namespace. This is what `ip netns exec`
//! does, minus the mount namespace it also sets up (which iptables and nft do not need).

use super::{CmdOutput, LinuxError, Runner};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Netns {
    /// The caller's own namespace.
    Current,
    /// A named namespace (`ip netns add NAME`, i.e. `/run/netns/NAME`).
    Named(String),
    /// A namespace file, e.g. `/proc/PID/ns/net`.
    Path(PathBuf),
}

impl Netns {
    /// `NAME` or a path (anything containing `/`).
    pub fn parse(s: &str) -> Self {
        if s.contains('/') {
            Netns::Path(PathBuf::from(s))
        } else {
            Netns::Named(s.to_string())
        }
    }

    /// The namespace file, if not the current namespace.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Netns::Current => None,
            Netns::Named(n) => Some(PathBuf::from("/run/netns").join(n)),
            Netns::Path(p) => Some(p.clone()),
        }
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Netns::Current => f.write_str("the current network namespace"),
            Netns::Named(n) => write!(f, "network namespace {n}"),
            Netns::Path(p) => write!(f, "network namespace {}", p.display()),
        }
    }
}

/// Runs `f` on a thread that has entered `netns` (for [`Netns::Current`], on the caller's
/// thread). The calling thread never moves: setns(2) affects only the thread that calls it,
/// and sockets or children created there stay in (or inherit) that namespace.
pub fn in_netns<T: Send>(netns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, LinuxError> {
    let Some(path) = netns.path() else { return Ok(f()) };
    let name = netns.to_string();
    let file = File::open(&path).map_err(|source| LinuxError::NetnsOpen { netns: name.clone(), source })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| LinuxError::Setns { netns: name, source })?;
            Ok(f())
        })
        .join()
        .unwrap_or(Err(LinuxError::Panicked))
    })
}

/// The real [`Runner`]: spawns programs in a given network namespace.
#[derive(Clone, Debug)]
pub struct NetnsRunner {
    netns: Netns,
}

impl NetnsRunner {
    /// A runner bound to `netns`.
    pub fn new(netns: Netns) -> Self {
        Self { netns }
    }

    /// The namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

fn spawn(program: &str, args: &[&str], stdin: Option<&str>) -> Result<CmdOutput, LinuxError> {
    let spawn_err = |source| LinuxError::Spawn { program: program.to_string(), source };
    // In a process group of its own: a Ctrl-C meant for meshpass (a supervisor tearing the mesh
    // down, say) must not kill an `ip netns del` or an `nft -f` half-way.
    let mut child = Command::new(program)
        .process_group(0)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that exits early closes its stdin; its exit status says why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    Ok(CmdOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

impl Runner for NetnsRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<CmdOutput, LinuxError> {
        // The child inherits the namespace of the thread that forks it.
        in_netns(&self.netns, || spawn(program, args, stdin))?
    }

    fn describe(&self) -> String {
        self.netns.to_string()
    }

    fn netns_id(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let path = self.netns.path().unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
        let meta = std::fs::metadata(path).ok()?;
        Some(format!("{}-{}", meta.dev(), meta.ino()))
    }
}
