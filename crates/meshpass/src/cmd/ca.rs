//! `meshpass ca issue`: a workload's mutual-TLS credentials from a mesh CA, as the files a
//! sidecar reads (`cert-chain.pem`, `key.pem`, `root-cert.pem`; what `meshpass proxy
//! --cert-dir` and Envoy's static secrets take). The CA is created in `--ca-dir` when it has
//! none (its key readable by its owner only). The local mesh issues its pods' certificates
//! itself; this is for sidecars run by hand and for benchmarks.

use anyhow::Context;
use meshpass_identity::{files, store, SpiffeId, CA_VALIDITY};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

/// `meshpass ca` subcommands.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CaCommand {
    /// Issue a workload certificate and write the sidecar's three files.
    Issue(IssueArgs),
}

/// `meshpass ca issue` flags.
#[derive(Debug, clap::Args)]
struct IssueArgs {
    /// Directory of the mesh CA (`ca-cert.pem`, `ca-key.pem`); created when empty.
    #[arg(long)]
    ca_dir: PathBuf,
    /// The workload identity, `spiffe://cluster.local/ns/NS/sa/SA`.
    #[arg(long)]
    identity: String,
    /// Where to write `cert-chain.pem`, `key.pem` and `root-cert.pem`.
    #[arg(long)]
    out: PathBuf,
    /// Lifetime, e.g. `24h` (Istio's default) or `30m`.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// Owner of the written files, `UID:GID` (e.g. `1337:1337` for a sidecar).
    #[arg(long)]
    owner: Option<String>,
}

/// Runs `meshpass ca`.
pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let CaCommand::Issue(a) = a.command;
    let id: SpiffeId = a.identity.parse()?;
    let ttl = meshpass_proxy::config::parse_duration(&a.ttl).map_err(|e| anyhow::anyhow!("--ttl {:?}: {e}", a.ttl))?;
    let owner = a
        .owner
        .as_deref()
        .map(|o| -> anyhow::Result<(u32, u32)> {
            let (u, g) = o.split_once(':').with_context(|| format!("--owner {o:?}: expected UID:GID"))?;
            Ok((
                u.parse().with_context(|| format!("--owner {o:?}"))?,
                g.parse().with_context(|| format!("--owner {o:?}"))?,
            ))
        })
        .transpose()?;
    let now = SystemTime::now();
    let (ca, created) = store::load_or_create(&a.ca_dir, now, CA_VALIDITY)?;
    if created {
        eprintln!("created a mesh CA in {}", a.ca_dir.display());
    }
    let cert = ca.issue(&id, now, ttl)?;
    files::write_dir(&a.out, &cert, ca.cert_pem(), owner)?;
    println!("{id}: {} (valid for {})", a.out.display(), a.ttl);
    Ok(ExitCode::SUCCESS)
}
