//! Linux effects at the edge: run `iptables-restore` / `nft` inside a network namespace,
//! atomically replace a plan's rules, clean them up, and read the live rules back.
//!
//! Everything that touches the machine goes through a [`Runner`], so the logic here is
//! tested with a scripted fake, and the real thing ([`NetnsRunner`]) is tested in network
//! namespaces the tests create. Commands are executed directly, never through a shell.

pub mod ebpf;
pub mod iptables;
pub mod netns;
pub mod nft;
pub mod route;

pub use netns::{in_netns, Netns, NetnsRunner};

use crate::ir::Plan;
use std::fmt;

/// What a finished command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit status (-1 when killed by a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CmdOutput {
    /// True for exit status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Runs a program (never a shell) with arguments and optional standard input, in whatever
/// network namespace the runner is bound to.
pub trait Runner {
    /// Runs `program args…`, feeding `stdin`. An `Err` means the program could not be run at
    /// all; a non-zero exit is an `Ok` with that status.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<CmdOutput, LinuxError>;

    /// Where the commands run, for messages.
    fn describe(&self) -> String;

    /// A stable identity of the namespace (`dev-inode` of its nsfs file), used to key the
    /// small apply records under `/run/meshpass`. `None`: keep no record.
    fn netns_id(&self) -> Option<String> {
        None
    }

    /// Runs and turns a non-zero exit into [`LinuxError::Failed`].
    fn check(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<CmdOutput, LinuxError> {
        let out = self.run(program, args, stdin)?;
        if out.success() {
            Ok(out)
        } else {
            Err(LinuxError::Failed {
                command: format!("{program} {}", args.join(" ")),
                netns: self.describe(),
                status: out.status,
                stderr: out.stderr.trim().to_string(),
            })
        }
    }
}

/// Errors from the Linux edge.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// The namespace could not be opened.
    #[error("cannot open network namespace {netns}: {source}")]
    NetnsOpen {
        /// The namespace as given.
        netns: String,
        /// Why.
        source: std::io::Error,
    },
    /// setns(2) failed.
    #[error("cannot enter network namespace {netns}: {source} (entering a namespace needs CAP_SYS_ADMIN, i.e. root)")]
    Setns {
        /// The namespace as given.
        netns: String,
        /// Why.
        source: nix::Error,
    },
    /// A program could not be started.
    #[error("cannot run {program}: {source} (is it installed? Debian: apt-get install -y nftables iptables iproute2)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A program exited non-zero.
    #[error("`{command}` failed in {netns} (exit {status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Where.
        netns: String,
        /// Exit status.
        status: i32,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The thread that entered a namespace panicked.
    #[error("the thread working inside a network namespace panicked")]
    Panicked,
    /// A bpf(2) operation failed.
    #[error(transparent)]
    Bpf(#[from] meshpass_bpf::BpfError),
    /// A file that eBPF capture needs could not be used.
    #[error("{what} {path}: {source}")]
    EbpfFile {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The live rules could not be understood.
    #[error("cannot read back the live rules: {0}")]
    ReadBack(String),
    /// The apply failed and the previous rules were restored.
    #[error("applying the rules failed, previous rules restored: {0}")]
    RolledBack(Box<LinuxError>),
    /// The apply failed and so did the restore of the previous rules.
    #[error("applying the rules failed ({apply}); restoring the previous rules failed too ({restore})")]
    RollbackFailed {
        /// The apply error.
        apply: Box<LinuxError>,
        /// The restore error.
        restore: Box<LinuxError>,
    },
}

/// The rule backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleBackend {
    /// Native nftables: table `inet meshpass` (the default).
    #[default]
    Nftables,
    /// iptables, Istio's chains (the `iptables-restore` the system selects, usually nft-based).
    Iptables,
    /// iptables with the legacy (x_tables) kernel interface.
    IptablesLegacy,
}

impl RuleBackend {
    /// Parses `nftables|nft|iptables|iptables-legacy`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nftables" | "nft" => Some(RuleBackend::Nftables),
            "iptables" | "iptables-nft" => Some(RuleBackend::Iptables),
            "iptables-legacy" | "legacy" => Some(RuleBackend::IptablesLegacy),
            _ => None,
        }
    }
}

impl fmt::Display for RuleBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleBackend::Nftables => "nftables",
            RuleBackend::Iptables => "iptables",
            RuleBackend::IptablesLegacy => "iptables-legacy",
        })
    }
}

/// What an apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// The rules were installed (or replaced).
    Applied,
    /// The same rules were already in place; nothing was touched (counters kept).
    Unchanged,
}

/// Applies `plan` with `backend` through `runner`: atomically replaces whatever meshpass (or
/// Istio, for the iptables backends) installed before; on failure the previous rules are
/// left, or put back, as they were.
pub fn apply(plan: &Plan, backend: RuleBackend, runner: &dyn Runner) -> Result<ApplyOutcome, LinuxError> {
    let outcome = match backend {
        RuleBackend::Nftables => nft::apply(plan, runner)?,
        RuleBackend::Iptables | RuleBackend::IptablesLegacy => {
            iptables::apply(plan, iptables::Tools::for_backend(backend), runner)?
        }
    };
    route::apply(plan, runner)?;
    Ok(outcome)
}

/// Removes what [`apply`] installed with `backend`. With `istio`, also Istio's own tables and
/// chains (`ISTIO_*`, `inet istio-proxy-*`).
pub fn cleanup(backend: RuleBackend, istio: bool, runner: &dyn Runner) -> Result<(), LinuxError> {
    match backend {
        RuleBackend::Nftables => {
            nft::cleanup(istio, runner)?;
            if istio {
                iptables::cleanup(iptables::Tools::for_backend(RuleBackend::Iptables), runner)?;
            }
        }
        RuleBackend::Iptables | RuleBackend::IptablesLegacy => {
            iptables::cleanup(iptables::Tools::for_backend(backend), runner)?;
            if istio {
                nft::cleanup(true, runner)?;
            }
        }
    }
    route::cleanup(runner)
}
