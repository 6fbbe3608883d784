//! `meshpass check`: prove which path a connection took — through the sidecar or directly.
//!
//! * `meshpass check URL` requests URL from the node (outside the mesh) and decides from the
//!   sidecars' own connection records (`meshpass_mesh::check::from_node`).
//! * `meshpass check --from WORKLOAD ADDR:PORT|URL` connects from inside a pod of that
//!   workload and decides from its sidecar record or its live rules
//!   (`meshpass_mesh::check::from_pod`).

use anyhow::Context;
use meshpass_mesh::check::{self, PathTaken, Target};
use meshpass_mesh::Client;
use std::path::PathBuf;
use std::process::ExitCode;

/// `meshpass check` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `http://HOST:PORT/PATH`, or `HOST:PORT` for a plain TCP connection (with --from).
    target: String,
    /// Check outbound from a pod of this workload (`NAME` or `NS/NAME`) instead of from the node.
    #[arg(long)]
    from: Option<String>,
    /// Namespace of --from (default: `default`).
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The mesh's state directory.
    #[arg(long, default_value = "/var/lib/meshpass")]
    state_dir: PathBuf,
    /// Print the result as JSON.
    #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

/// Runs `meshpass check`.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&a.state_dir).context("is `meshpass up` running?")?;
    let target = Target::parse(&a.target)?;
    let outcome = match &a.from {
        None => check::from_node(&client, &target)?,
        Some(w) => {
            let (ns, name) = w.split_once('/').unwrap_or((a.namespace.as_str(), w.as_str()));
            check::from_pod(&client, ns, name, &target)?
        }
    };
    let path = match outcome.path {
        PathTaken::Sidecar => "sidecar",
        PathTaken::Direct => "direct",
    };
    let ex = &outcome.response;
    if a.output == "json" {
        let v = serde_json::json!({ "path": path, "evidence": outcome.evidence, "response": ex });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(s) = &ex.status_line {
            println!("{s}");
            for (k, v) in &ex.headers {
                println!("{k}: {v}");
            }
            println!();
        } else {
            println!("connected to {} from {}", target.addr, ex.local);
        }
        println!("path: {path}");
        for e in &outcome.evidence {
            println!("  evidence: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
