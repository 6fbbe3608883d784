//! `meshpass`: sidecar traffic passthrough for a service mesh.
//!
//! The binary is thin: each subcommand parses its flags and calls into the crates
//! (`meshpass-settings`, `meshpass-capture`, `meshpass-proxy`). Invoked as `istio-iptables`
//! it behaves as `meshpass iptables`, a drop-in for Istio's init tool.

mod cmd;

// The same binary is every pod's sidecar (`meshpass proxy`), which allocates and frees small
// objects for every request: mimalloc's thread-local free lists make those cheaper than glibc's
// malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::io::Write;
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
    /// The mesh CA: issue a workload's mutual-TLS credentials as files.
    Ca(Box<cmd::ca::Args>),
    /// Bring the local mesh up and supervise it in the foreground (needs root).
    Up(Box<cmd::mesh::UpArgs>),
    /// Set or remove a Deployment's pod-template annotations (its passthrough settings).
    Annotate(Box<cmd::mesh::AnnotateArgs>),
    /// Traffic passthrough settings of a workload, through the management API:
    /// `get`, `set`, `clear`.
    Passthrough(Box<cmd::passthrough::Args>),
    /// Run the management plane (REST API, web GUI, metrics) for the local mesh or, with
    /// `--kube`, for a Kubernetes cluster running Istio.
    Serve(Box<cmd::serve::Args>),
    /// Check which path a request took: through the sidecar or directly, with the evidence.
    Check(Box<cmd::check::Args>),
    /// Remove everything the local mesh made (also after a crash); keeps the manifests.
    Down(Box<cmd::mesh::DownArgs>),
    /// List workloads, pods or services of the local mesh.
    Get(Box<cmd::mesh::GetArgs>),
    /// Apply Kubernetes manifests to the local mesh.
    Apply(Box<cmd::mesh::ApplyArgs>),
    /// Delete the objects a manifest names from the local mesh.
    Delete(Box<cmd::mesh::DeleteArgs>),
    /// Rolling restart: `rollout restart deployment/NAME`.
    Rollout(Box<cmd::mesh::RolloutArgs>),
    /// Run a command in a pod's (or the node's) network namespace.
    Exec(Box<cmd::mesh::ExecArgs>),
    /// Print a pod container's log.
    Logs(Box<cmd::mesh::LogsArgs>),
    /// The sample programs the local mesh runs (helloworld, http, sleep).
    Sample(Box<cmd::mesh::SampleArgs>),
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
        Command::Up(a) => cmd::mesh::up(*a),
        Command::Check(a) => cmd::check::run(*a),
        Command::Passthrough(a) => cmd::passthrough::run(*a),
        Command::Serve(a) => cmd::serve::run(*a),
        Command::Annotate(a) => cmd::mesh::annotate(*a),
        Command::Down(a) => cmd::mesh::down(*a),
        Command::Get(a) => cmd::mesh::get(*a),
        Command::Apply(a) => cmd::mesh::apply(*a),
        Command::Delete(a) => cmd::mesh::delete(*a),
        Command::Rollout(a) => cmd::mesh::rollout(*a),
        Command::Exec(a) => cmd::mesh::exec(*a),
        Command::Logs(a) => cmd::mesh::logs(*a),
        Command::Sample(a) => cmd::mesh::sample(*a),
        Command::Proxy(a) => cmd::proxy::run(*a, &env),
        Command::Ca(a) => cmd::ca::run(*a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed (the reader of a pipe went away).
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(1)
        }
    }
}
