//! `meshpass`: sidecar traffic passthrough for a service mesh.
//!
//! The binary is thin: each subcommand parses its flags and calls into the crates
//! (`meshpass-settings`, `meshpass-capture`, `meshpass-proxy`). Invoked as `istio-iptables`
//! it behaves as `meshpass iptables`, a drop-in for Istio's init tool.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Sidecar traffic passthrough: which traffic skips the sidecar, per workload.
#[derive(Debug, Parser)]
#[command(name = "meshpass", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drop-in for Istio's istio-iptables: same flags and environment variables.
    Iptables(Box<cmd::iptables::Args>),
    /// Capture rules from a workload's annotations: print them, apply them, or clean up.
    Rules(Box<cmd::rules::Args>),
    /// Explain what happens to a connection: captured by the sidecar (and where) or passed
    /// through, and which rule decided it.
    Explain(Box<cmd::explain::Args>),
    /// Run the sidecar proxy (in a pod's network namespace, as UID/GID 1337).
    Proxy(Box<cmd::proxy::Args>),
}

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_default();
    if invoked_as == "istio-iptables" {
        args.insert(1, "iptables".into());
    }
    let cli = Cli::parse_from(args);
    let env = |k: &str| std::env::var(k).ok();
    let result = match cli.command {
        Command::Iptables(a) => cmd::iptables::run(*a, &env),
        Command::Rules(a) => cmd::rules::run(*a),
        Command::Explain(a) => cmd::explain::run(*a),
        Command::Proxy(a) => cmd::proxy::run(*a, &env),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
