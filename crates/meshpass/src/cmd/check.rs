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
pub(crate) struct Args {
    /// `http://HOST:PORT/PATH`, or `HOST:PORT` for a plain TCP connection (with --from); HOST
    /// is an IP address or a Service name (`NAME`, `NAME.NAMESPACE`, ...).
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

/// Runs `meshpass check`. Exits 0 when the check ran (whatever path the request took and
/// whether it succeeded: that is its result), 1 when it could not run.
pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&a.state_dir).context("is `meshpass up` running?")?;
    let outcome = match &a.from {
        None => check::from_node(&client, &Target::resolve(&client, &a.target, &a.namespace)?)?,
        Some(w) => {
            let (ns, name) = w.split_once('/').unwrap_or((a.namespace.as_str(), w.as_str()));
            check::from_pod(&client, ns, name, &Target::resolve(&client, &a.target, ns)?)?
        }
    };
    let path = match outcome.path {
        PathTaken::Sidecar => "sidecar",
        PathTaken::Direct => "direct",
    };
    let ex = &outcome.response;
    if a.output == "json" {
        let v = serde_json::json!({
            "from": outcome.from,
            "target": outcome.target,
            "path": path,
            "mtls": outcome.tls.mtls,
            "peer_identities": {
                "client": outcome.tls.client_identity,
                "server": outcome.tls.server_identity,
            },
            "status": ex.status(),
            "error": outcome.error,
            "evidence": outcome.evidence,
            "response": ex,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(s) = &ex.status_line {
            println!("{s}");
            for (k, v) in &ex.headers {
                println!("{k}: {v}");
            }
            println!();
        } else if let Some(local) = ex.local {
            println!("connected to {} from {local}", outcome.target);
        }
        if let Some(e) = &outcome.error {
            println!("error: {e}");
        }
        println!("path: {path}");
        if outcome.tls.mtls {
            println!(
                "mtls: yes (client {}, server {})",
                outcome.tls.client_identity.as_deref().unwrap_or("?"),
                outcome.tls.server_identity.as_deref().unwrap_or("?")
            );
        } else {
            println!("mtls: no");
        }
        for e in &outcome.evidence {
            println!("  evidence: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
