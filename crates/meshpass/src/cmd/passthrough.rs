//! `meshpass passthrough get|set|clear WORKLOAD`: a workload's traffic passthrough settings
//! through the management API (the same calls the web GUI makes), so that validation,
//! optimistic concurrency and the audit log are the same whichever way an operator works.
//!
//! `set` changes only the lists it is given: it reads the settings with their version, merges,
//! and writes with `If-Match`, so a concurrent change elsewhere is reported, never lost.
//!
//! Every write reports its impact on meshed clients' mutual TLS (computed before writing);
//! `--dry-run` shows it without writing, `--fix-clients` also creates the `DestinationRule`s
//! that keep the failing clients working (in plaintext).

use anyhow::Context;
use meshpass_api::model::{
    ImpactEffect, ImpactEntry, Passthrough, PassthroughDoc, PassthroughUpdate, PolicyRef, SidecarStatus, WorkloadRef,
};
use meshpass_api::{Client, ClientError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `meshpass passthrough` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// get | set | clear
    #[arg(value_parser = ["get", "set", "clear"])]
    action: String,
    /// The workload (`NAME`, `NS/NAME` or `deployment/NAME`).
    workload: String,
    /// Namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The cluster of the workload, when the server serves several (`meshpass serve --kube`
    /// with several contexts); default: the one cluster that has it.
    #[arg(long)]
    cluster: Option<String>,
    /// Inbound ports that skip the sidecar (`5000,8000-8100`; `''` clears the list).
    #[arg(long)]
    inbound_ports: Option<String>,
    /// Outbound destination ports that skip the sidecar.
    #[arg(long)]
    outbound_ports: Option<String>,
    /// Outbound destination CIDRs that skip the sidecar (`10.0.0.0/8,fd00::/8`).
    #[arg(long = "outbound-ip-ranges")]
    outbound_ip_ranges: Option<String>,
    /// Restart the workload so the settings take effect (progress is printed); without it the
    /// workload shows "Pending restart".
    #[arg(long)]
    restart: bool,
    /// With `set`: also create a DestinationRule turning TLS off for each Service port whose
    /// meshed clients would otherwise fail (they would send mutual TLS to a port the app now
    /// receives directly). meshpass removes such rules when the exclusion is cleared.
    #[arg(long)]
    fix_clients: bool,
    /// With `set`: show the rule changes and the impact on meshed clients, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output: text or json.
    #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
    /// The management API (default: the one `meshpass up` recorded in the state directory).
    #[arg(long, env = "MESHPASS_SERVER")]
    server: Option<String>,
    /// The API token (default: `api-token` in the state directory).
    #[arg(long, env = "MESHPASS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The state directory of `meshpass up` / `meshpass serve`.
    #[arg(long, default_value = "/var/lib/meshpass")]
    state_dir: PathBuf,
}

/// The items of a comma-separated flag value, as typed (the server canonicalises them and
/// names any it refuses); an empty value is an empty list.
fn items(list: &str) -> Vec<String> {
    if list.trim().is_empty() {
        Vec::new()
    } else {
        list.split(',').map(str::to_string).collect()
    }
}

fn client(a: &Args) -> anyhow::Result<Client> {
    let from_dir = || Client::from_state_dir(&a.state_dir);
    Ok(match (&a.server, &a.token) {
        (Some(url), Some(token)) => Client::new(url, token)?,
        (Some(url), None) => {
            let path = a.state_dir.join(meshpass_api::auth::TOKEN_FILE);
            let token = std::fs::read_to_string(&path)
                .with_context(|| format!("no --token and cannot read {}", path.display()))?;
            Client::new(url, &token)?
        }
        (None, _) => {
            let c = from_dir().with_context(|| {
                format!("is the management plane running (`meshpass up` or `meshpass serve`) with --state-dir {}? give --server", a.state_dir.display())
            })?;
            match &a.token {
                Some(t) => Client::new(c.url(), t)?,
                None => c,
            }
        }
    })
}

/// Whether the server serves several clusters (then text output names the workload's).
async fn several_clusters(client: &Client) -> bool {
    client.session().await.is_ok_and(|s| s.clusters.len() > 1)
}

fn show(doc: &PassthroughDoc, json: bool, cluster: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(doc)?);
        return Ok(());
    }
    let s = &doc.settings;
    let list = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(",") };
    let status = match doc.status {
        SidecarStatus::Injected => "Injected",
        SidecarStatus::Uninjected => "Uninjected",
        SidecarStatus::PendingRestart => "Pending restart",
    };
    if cluster {
        println!("cluster:             {}", doc.cluster);
    }
    println!("workload:            {}/{} ({status})", doc.namespace, doc.name);
    println!("inbound ports:       {}", list(&s.inbound_ports));
    println!("outbound ports:      {}", list(&s.outbound_ports));
    println!("outbound IP ranges:  {}", list(&s.outbound_ip_ranges));
    for (k, v) in [
        ("includeInboundPorts", &s.include_inbound_ports),
        ("includeOutboundPorts", &s.include_outbound_ports),
        ("includeOutboundIPRanges", &s.include_outbound_ip_ranges),
        ("interceptionMode", &s.interception_mode),
    ] {
        if let Some(v) = v {
            println!("{k:<21}{v}");
        }
    }
    println!("resource version:    {}", doc.resource_version);
    show_impact(&doc.impact);
    for (what, list) in [("created", &doc.created), ("removed", &doc.removed)] {
        for r in list {
            println!("{what}: {} {}/{}", r.kind, r.namespace, r.name);
        }
    }
    for w in &doc.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// One line per affected client: who, which Service port, what happens and why.
fn show_impact(impact: &[ImpactEntry]) {
    for e in impact {
        let effect = match e.effect {
            ImpactEffect::Fails => "FAILS",
            ImpactEffect::LosesMtls => "loses mTLS",
            ImpactEffect::Works => "works",
        };
        println!("impact: {} -> {}:{} ({effect}): {}", e.client, e.service, e.service_port, e.reason);
    }
}

/// Prints an API error; 422 lists every rejected item and exits 2 (as the other commands do
/// for invalid input).
fn report(e: ClientError) -> anyhow::Result<ExitCode> {
    if let ClientError::Api { status, body } = &e {
        eprintln!("error: {}", body.message);
        if *status == 422 {
            for fe in &body.errors {
                eprintln!("  {}: {:?} {}", fe.key, fe.item, fe.reason);
            }
            return Ok(ExitCode::from(super::EXIT_INVALID));
        }
        return Ok(ExitCode::from(1));
    }
    Err(e.into())
}

/// Runs `meshpass passthrough`.
pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let name = a.workload.strip_prefix("deployment/").unwrap_or(&a.workload);
    let w = match name.split_once('/') {
        Some((ns, n)) => WorkloadRef::new(ns, n),
        None => WorkloadRef::new(a.namespace.clone(), name),
    };
    let json = a.output == "json";
    if a.action != "set" && (a.inbound_ports.is_some() || a.outbound_ports.is_some() || a.outbound_ip_ranges.is_some())
    {
        anyhow::bail!("--inbound-ports/--outbound-ports/--outbound-ip-ranges go with `set`");
    }
    if a.action != "set" && (a.fix_clients || a.dry_run) {
        anyhow::bail!("--fix-clients and --dry-run go with `set`");
    }
    if a.dry_run && a.restart {
        anyhow::bail!("--dry-run writes nothing, so it cannot --restart");
    }
    let client = client(&a)?.with_cluster(a.cluster.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let current = match client.get_passthrough(&w).await {
            Ok(d) => d,
            Err(e) => return report(e),
        };
        let clusters = !json && several_clusters(&client).await;
        let mut sent: Option<Passthrough> = None;
        let written = match a.action.as_str() {
            "get" => return show(&current, json, clusters).map(|()| ExitCode::SUCCESS),
            "set" => {
                let mut s: Passthrough = current.settings.clone();
                if let Some(v) = &a.inbound_ports {
                    s.inbound_ports = items(v);
                }
                if let Some(v) = &a.outbound_ports {
                    s.outbound_ports = items(v);
                }
                if let Some(v) = &a.outbound_ip_ranges {
                    s.outbound_ip_ranges = items(v);
                }
                if a.dry_run {
                    return dry_run(&client, &w, &s, a.fix_clients, json).await;
                }
                sent = Some(s.clone());
                let mut update = PassthroughUpdate::new(s);
                update.restart = a.restart;
                update.fix_clients = a.fix_clients;
                client.put_passthrough(&w, &update, Some(&current.resource_version)).await
            }
            _ => client.delete_passthrough(&w, a.restart, Some(&current.resource_version)).await,
        };
        let doc = match written {
            Ok(d) => d,
            Err(e) => return report(e),
        };
        if !json {
            eprintln!("Traffic passthrough setup successful");
            // The server stores every list in one spelling (trimmed, no leading zeros,
            // duplicates collapsed): say so when that is not what was typed.
            if let Some(sent) = &sent {
                for (what, asked, stored) in [
                    ("inbound ports", &sent.inbound_ports, &doc.settings.inbound_ports),
                    ("outbound ports", &sent.outbound_ports, &doc.settings.outbound_ports),
                    ("outbound IP ranges", &sent.outbound_ip_ranges, &doc.settings.outbound_ip_ranges),
                ] {
                    if asked != stored {
                        eprintln!("{what} stored as {} (canonical form)", stored.join(","));
                    }
                }
            }
        }
        let mut code = ExitCode::SUCCESS;
        if let Some(op) = &doc.operation {
            let done = client
                .wait_operation(&op.id, Duration::from_millis(300), |line| {
                    if !json {
                        eprintln!("  {line}");
                    }
                })
                .await?;
            if let Some(err) = &done.error {
                eprintln!("error: restart of {w} failed: {err}");
                code = ExitCode::from(1);
            } else if !json {
                eprintln!("restart of {w} complete");
            }
        } else if !a.restart && !json && doc.settings != current.settings {
            eprintln!("the running pods keep their old settings until a restart (`--restart`): Pending restart");
        }
        // Show the state after the restart, not the one the write answered with (but the
        // write's impact and rule changes, which a read does not report).
        let after = if doc.operation.is_some() {
            match client.get_passthrough(&w).await {
                Ok(mut now) => {
                    now.impact = doc.impact.clone();
                    now.created = doc.created.clone();
                    now.removed = doc.removed.clone();
                    now
                }
                Err(_) => doc,
            }
        } else {
            doc
        };
        show(&after, json, clusters)?;
        Ok(code)
    })
}

/// `set --dry-run`: the preview's rule diff and impact; nothing is written.
async fn dry_run(
    client: &Client,
    w: &WorkloadRef,
    settings: &Passthrough,
    fix_clients: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let p = match client.preview(w, settings, fix_clients).await {
        Ok(p) => p,
        Err(e) => return report(e),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(ExitCode::SUCCESS);
    }
    for l in &p.diff {
        if l.op != " " {
            println!("{}{}", l.op, l.line);
        }
    }
    show_impact(&p.impact);
    let names =
        |v: &[PolicyRef]| v.iter().map(|r| format!("{} {}/{}", r.kind, r.namespace, r.name)).collect::<Vec<_>>();
    for f in &p.fixes {
        let verb = if fix_clients { "creates" } else { "--fix-clients would create" };
        println!(
            "{verb}: {} {}/{} (TLS off for {}:{})",
            f.reference.kind, f.reference.namespace, f.reference.name, f.host, f.port
        );
    }
    for r in names(&p.removes) {
        println!("removes: {r}");
    }
    for w in &p.warnings {
        println!("warning: {w}");
    }
    eprintln!("dry run: nothing written");
    Ok(ExitCode::SUCCESS)
}
