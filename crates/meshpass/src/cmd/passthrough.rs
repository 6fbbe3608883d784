//! `meshpass passthrough get|set|clear WORKLOAD`: a workload's traffic passthrough settings
//! through the management API (the same calls the web GUI makes), so that validation,
//! optimistic concurrency and the audit log are the same whichever way an operator works.
//! `set` over several workloads (named, `-l SELECTOR` or `--all`) is one batch request
//! ([`super::batch`]); `defaults get|set` are the mesh-wide values ([`super::defaults`]).
//!
//! `set` changes only the lists it is given: it reads the settings with their version, merges,
//! and writes with `If-Match`, so a concurrent change elsewhere is reported, never lost. The
//! `--add-*` / `--remove-*` flags edit a list instead of replacing it; on one workload the
//! server works out the new list (a batch dry run: a list the workload only inherits starts
//! from the mesh-wide value) and the write is then the same `PUT` as a replacing `set`.
//!
//! Every write reports its impact on meshed clients' mutual TLS (computed before writing);
//! `--dry-run` shows it without writing, `--fix-clients` also creates the `DestinationRule`s
//! that keep the failing clients working (in plaintext).

use anyhow::Context;
use meshpass_api::model::{
    BatchOutcome, BatchRequest, BatchTarget, EffectiveValue, ImpactEffect, ImpactEntry, ListItems, Passthrough,
    PassthroughDoc, PassthroughUpdate, PolicyRef, SidecarStatus, ValueSource, WorkloadRef,
};
use meshpass_api::{Client, ClientError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `meshpass passthrough` flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  meshpass passthrough get sleep
  meshpass passthrough set helloworld-v1 --inbound-ports 5000 --restart
  meshpass passthrough set helloworld-v1 sleep --add-outbound-ports 3306
  meshpass passthrough set -l app=helloworld --remove-inbound-ports 5000 --live
  meshpass passthrough set --all -n default --add-outbound-ip-ranges 10.0.0.0/8 --dry-run
  meshpass passthrough defaults get
  meshpass passthrough defaults set --add-outbound-ip-ranges 198.19.0.0/16

Exit status: 0 when every workload succeeded, 1 when some did not (each is named, with why),
2 on invalid input (nothing changed anywhere).")]
pub(crate) struct Args {
    /// get | set | clear | defaults (`defaults get|set`: the mesh-wide values)
    #[arg(value_parser = ["get", "set", "clear", "defaults"])]
    action: String,
    /// The workloads (`NAME`, `NS/NAME` or `deployment/NAME`; several only with `set`); after
    /// `defaults`: `get` or `set`.
    targets: Vec<String>,
    /// Namespace of the named workloads (default: `default`); with `-l` or `--all`, only this
    /// namespace (default: every namespace).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// The cluster, when the server serves several (`meshpass serve --kube` with several
    /// contexts): of the named workloads (default: the one cluster that has each), of `-l` /
    /// `--all` (default: every cluster), of `defaults`.
    #[arg(long)]
    cluster: Option<String>,
    /// With `set`: every workload whose pods' labels match this selector (`app=helloworld`,
    /// `version!=v1`, `canary`, `!canary`, comma-separated, all must hold).
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    /// With `set`: every workload (in `-n NS` when given).
    #[arg(long)]
    all: bool,
    /// Inbound ports that skip the sidecar (`5000,8000-8100`; `''` clears the list); replaces
    /// the list.
    #[arg(long)]
    inbound_ports: Option<String>,
    /// Outbound destination ports that skip the sidecar; replaces the list.
    #[arg(long)]
    outbound_ports: Option<String>,
    /// Outbound destination CIDRs that skip the sidecar (`10.0.0.0/8,fd00::/8`); replaces the
    /// list.
    #[arg(long = "outbound-ip-ranges")]
    outbound_ip_ranges: Option<String>,
    /// Inbound ports to add to the list (kept once; a list the workload only inherits starts
    /// from the mesh-wide value).
    #[arg(long)]
    add_inbound_ports: Option<String>,
    /// Inbound ports to take out of the list.
    #[arg(long)]
    remove_inbound_ports: Option<String>,
    /// Outbound ports to add to the list.
    #[arg(long)]
    add_outbound_ports: Option<String>,
    /// Outbound ports to take out of the list.
    #[arg(long)]
    remove_outbound_ports: Option<String>,
    /// Outbound IP ranges to add to the list.
    #[arg(long = "add-outbound-ip-ranges")]
    add_outbound_ip_ranges: Option<String>,
    /// Outbound IP ranges to take out of the list.
    #[arg(long = "remove-outbound-ip-ranges")]
    remove_outbound_ip_ranges: Option<String>,
    /// With `defaults set`: any mesh-wide value by its Helm path
    /// (`global.proxy.includeIPRanges=10.0.0.0/8`); repeatable.
    #[arg(long = "value", value_name = "HELM_PATH=TEXT")]
    values: Vec<String>,
    /// Restart the workload so the settings take effect (progress is printed); without it the
    /// workload shows "Pending restart". With several workloads: each one the change wrote.
    #[arg(long)]
    restart: bool,
    /// Apply the change to the running pods in place, without a restart (the local mesh; on
    /// Kubernetes each workload fails with the reason).
    #[arg(long)]
    live: bool,
    /// With `set` on one workload: also create a DestinationRule turning TLS off for each
    /// Service port whose meshed clients would otherwise fail (they would send mutual TLS to a
    /// port the app now receives directly). meshpass removes such rules when the exclusion is
    /// cleared.
    #[arg(long)]
    fix_clients: bool,
    /// With `set`: show the resulting settings, the rule changes (one workload) and the impact
    /// on meshed clients, write nothing.
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

/// The three lists' flags as a batch's `set`, `add` and `remove`.
pub(crate) struct ListFlags {
    pub(crate) set: ListItems,
    pub(crate) add: ListItems,
    pub(crate) remove: ListItems,
}

impl Args {
    /// The list flags, checked on their own: an add or remove flag names at least one item,
    /// and no list is both replaced and edited. `Err`: what is wrong, for exit status 2.
    pub(crate) fn lists(&self) -> Result<ListFlags, String> {
        let replace = |v: &Option<String>| v.as_deref().map(items);
        let edit = |flag: &str, v: &Option<String>| -> Result<Option<Vec<String>>, String> {
            match v.as_deref().map(items) {
                Some(list) if list.is_empty() => Err(format!("--{flag} needs at least one item")),
                other => Ok(other),
            }
        };
        let flags = ListFlags {
            set: ListItems {
                inbound_ports: replace(&self.inbound_ports),
                outbound_ports: replace(&self.outbound_ports),
                outbound_ip_ranges: replace(&self.outbound_ip_ranges),
            },
            add: ListItems {
                inbound_ports: edit("add-inbound-ports", &self.add_inbound_ports)?,
                outbound_ports: edit("add-outbound-ports", &self.add_outbound_ports)?,
                outbound_ip_ranges: edit("add-outbound-ip-ranges", &self.add_outbound_ip_ranges)?,
            },
            remove: ListItems {
                inbound_ports: edit("remove-inbound-ports", &self.remove_inbound_ports)?,
                outbound_ports: edit("remove-outbound-ports", &self.remove_outbound_ports)?,
                outbound_ip_ranges: edit("remove-outbound-ip-ranges", &self.remove_outbound_ip_ranges)?,
            },
        };
        for (list, s, a, r) in [
            ("inbound-ports", &flags.set.inbound_ports, &flags.add.inbound_ports, &flags.remove.inbound_ports),
            ("outbound-ports", &flags.set.outbound_ports, &flags.add.outbound_ports, &flags.remove.outbound_ports),
            (
                "outbound-ip-ranges",
                &flags.set.outbound_ip_ranges,
                &flags.add.outbound_ip_ranges,
                &flags.remove.outbound_ip_ranges,
            ),
        ] {
            if s.is_some() && (a.is_some() || r.is_some()) {
                return Err(format!(
                    "--{list} replaces the list, --add-{list}/--remove-{list} edit it: give one or the other"
                ));
            }
        }
        Ok(flags)
    }

    /// Whether any list flag is given.
    fn any_list_flag(&self) -> bool {
        [
            &self.inbound_ports,
            &self.outbound_ports,
            &self.outbound_ip_ranges,
            &self.add_inbound_ports,
            &self.remove_inbound_ports,
            &self.add_outbound_ports,
            &self.remove_outbound_ports,
            &self.add_outbound_ip_ranges,
            &self.remove_outbound_ip_ranges,
        ]
        .iter()
        .any(|v| v.is_some())
    }

    pub(crate) fn json(&self) -> bool {
        self.output == "json"
    }

    pub(crate) fn restart(&self) -> bool {
        self.restart
    }

    pub(crate) fn live(&self) -> bool {
        self.live
    }

    pub(crate) fn dry_run(&self) -> bool {
        self.dry_run
    }

    pub(crate) fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether a flag that picks or acts on workloads is given.
    pub(crate) fn has_targets_flags(&self) -> bool {
        self.namespace.is_some() || self.selector.is_some() || self.all || self.fix_clients
    }
}

/// Invalid command-line input: the message, exit status 2 (nothing was sent).
pub(crate) fn usage(message: &str) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}");
    eprintln!("nothing was changed");
    Ok(ExitCode::from(super::EXIT_INVALID))
}

/// A workload as typed (`NAME`, `NS/NAME`, `deployment/NAME`, `deployment/NS/NAME`).
fn workload_ref(typed: &str, namespace: Option<&str>) -> WorkloadRef {
    let name = typed.strip_prefix("deployment/").unwrap_or(typed);
    match name.split_once('/') {
        Some((ns, n)) => WorkloadRef::new(ns, n),
        None => WorkloadRef::new(namespace.unwrap_or("default"), name),
    }
}

/// The items of a comma-separated flag value, as typed (the server canonicalises them and
/// names any it refuses); an empty value is an empty list.
pub(crate) fn items(list: &str) -> Vec<String> {
    if list.trim().is_empty() {
        Vec::new()
    } else {
        list.split(',').map(str::to_string).collect()
    }
}

pub(crate) fn client(a: &Args) -> anyhow::Result<Client> {
    Ok(server_client(a)?.with_cluster(a.cluster.clone()))
}

fn server_client(a: &Args) -> anyhow::Result<Client> {
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

/// Whether the server serves several clusters (then text output names each workload's).
pub(crate) async fn several_clusters(client: &Client) -> bool {
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
    show_effective(&doc.effective, "");
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

/// The capture values in force, each with where it comes from: the workload's own annotation
/// or the mesh-wide default (Istio's precedence: an annotation, even empty, replaces it).
pub(crate) fn show_effective(effective: &[EffectiveValue], indent: &str) {
    if effective.is_empty() {
        return;
    }
    println!("{indent}in force (value, source):");
    for e in effective {
        // The short name of the traffic.sidecar.istio.io/ keys; the status port's in full.
        let key = match e.annotation.rsplit_once('/') {
            Some((_, k)) if k != "port" => k,
            _ => e.annotation.as_str(),
        };
        let value = if e.value.is_empty() { "-" } else { e.value.as_str() };
        let source = match e.source {
            ValueSource::Workload => "workload".to_string(),
            ValueSource::Mesh => format!("mesh ({})", e.mesh_key),
        };
        println!("{indent}  {key:<28} {value:<20} {source}");
    }
}

/// One line per affected client: who, which Service port, what happens and why.
pub(crate) fn show_impact(impact: &[ImpactEntry]) {
    show_impact_indented(impact, "");
}

/// [`show_impact`] under a heading line.
pub(crate) fn show_impact_indented(impact: &[ImpactEntry], indent: &str) {
    for e in impact {
        let effect = match e.effect {
            ImpactEffect::Fails => "FAILS",
            ImpactEffect::LosesMtls => "loses mTLS",
            ImpactEffect::Works => "works",
        };
        println!("{indent}impact: {} -> {}:{} ({effect}): {}", e.client, e.service, e.service_port, e.reason);
    }
}

/// Prints an API error; 422 lists every rejected item and exits 2 (as the other commands do
/// for invalid input).
pub(crate) fn report(e: ClientError) -> anyhow::Result<ExitCode> {
    if let ClientError::Api { status, body } = &e {
        if *status == 422 && !body.errors.is_empty() {
            // The message repeats the items: list each once.
            eprintln!("error: {} invalid item(s):", body.errors.len());
        } else {
            eprintln!("error: {}", body.message);
        }
        if *status == 422 {
            for fe in &body.errors {
                eprintln!("  {}: {:?} {}", fe.key, fe.item, fe.reason);
            }
            eprintln!("nothing was changed");
            return Ok(ExitCode::from(super::EXIT_INVALID));
        }
        return Ok(ExitCode::from(1));
    }
    Err(e.into())
}

/// Runs `meshpass passthrough`.
pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.action == "defaults" {
        return super::defaults::run(&a, a.targets.first().map(String::as_str), a.targets.len());
    }
    if !a.values.is_empty() {
        return usage("--value goes with `defaults set`");
    }
    let lists = match a.lists() {
        Ok(l) => l,
        Err(m) => return usage(&m),
    };
    let picked = a.selector.is_some() || a.all;
    if a.action != "set" {
        if a.any_list_flag() {
            return usage("the list flags (--inbound-ports, --add-outbound-ports, ...) go with `set`");
        }
        if a.fix_clients || a.dry_run || a.live {
            return usage("--fix-clients, --dry-run and --live go with `set`");
        }
        if picked || a.targets.len() != 1 {
            return usage(&format!("`{}` takes exactly one workload (NAME or NS/NAME)", a.action));
        }
    } else {
        if !a.any_list_flag() {
            return usage("nothing to change: give --inbound-ports, --outbound-ports, --outbound-ip-ranges or their --add-/--remove- forms");
        }
        if picked && !a.targets.is_empty() {
            return usage(&format!(
                "name workloads or pick them with -l/--all, not both (named: {})",
                a.targets.join(" ")
            ));
        }
        if !picked && a.targets.is_empty() {
            return usage("no workload: name at least one, or pick them with -l SELECTOR or --all");
        }
        if a.live && a.restart {
            return usage("--live applies the change to the running pods, --restart replaces them: give one");
        }
    }
    if a.dry_run && (a.restart || a.live) {
        return usage("--dry-run writes nothing, so it cannot --restart or --live");
    }
    let batch = a.action == "set" && (picked || a.targets.len() > 1 || a.live);
    if batch && a.fix_clients {
        return usage(
            "--fix-clients works on one workload at a time (it creates the DestinationRules for that workload's \
             ports): run `set WORKLOAD --fix-clients` for each workload that needs it",
        );
    }
    let client = client(&a)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if batch {
        let request = BatchRequest {
            workloads: a
                .targets
                .iter()
                .map(|t| {
                    let w = workload_ref(t, a.namespace.as_deref());
                    BatchTarget { cluster: None, namespace: w.namespace, name: w.name, resource_version: None }
                })
                .collect(),
            all: picked,
            cluster: None,
            namespace: if picked { a.namespace.clone() } else { None },
            search: None,
            selector: a.selector.clone(),
            set: lists.set,
            add: lists.add,
            remove: lists.remove,
            live: a.live,
            dry_run: a.dry_run,
        };
        return rt.block_on(super::batch::run(&client, &a, request));
    }
    let w = workload_ref(&a.targets[0], a.namespace.as_deref());
    rt.block_on(one(&client, &a, &w, lists))
}

/// `get`, `clear` or `set` of one workload.
async fn one(client: &Client, a: &Args, w: &WorkloadRef, lists: ListFlags) -> anyhow::Result<ExitCode> {
    let json = a.json();
    let current = match client.get_passthrough(w).await {
        Ok(d) => d,
        Err(e) => return report(e),
    };
    let clusters = !json && several_clusters(client).await;
    let mut sent: Option<Passthrough> = None;
    let written = match a.action.as_str() {
        "get" => return show(&current, json, clusters).map(|()| ExitCode::SUCCESS),
        "set" => {
            let (s, version) = if lists.add.is_empty() && lists.remove.is_empty() {
                let mut s: Passthrough = current.settings.clone();
                for (list, given) in [
                    (&mut s.inbound_ports, lists.set.inbound_ports),
                    (&mut s.outbound_ports, lists.set.outbound_ports),
                    (&mut s.outbound_ip_ranges, lists.set.outbound_ip_ranges),
                ] {
                    if let Some(v) = given {
                        *list = v;
                    }
                }
                (s, current.resource_version.clone())
            } else {
                // The server edits the lists (as a batch would), without writing; the write
                // below names the version it was worked out from.
                let request = BatchRequest {
                    workloads: vec![BatchTarget {
                        cluster: Some(current.cluster.clone()).filter(|c| !c.is_empty()),
                        namespace: w.namespace.clone(),
                        name: w.name.clone(),
                        resource_version: Some(current.resource_version.clone()),
                    }],
                    set: lists.set,
                    add: lists.add,
                    remove: lists.remove,
                    dry_run: true,
                    ..BatchRequest::default()
                };
                let result = match client.batch(&request).await {
                    Ok(r) => r,
                    Err(e) => return report(e),
                };
                let Some(item) = result.items.into_iter().next() else {
                    anyhow::bail!("the server answered the change of {w} with no result");
                };
                if item.outcome == BatchOutcome::Failed {
                    eprintln!("error: {w}: {}", item.message);
                    for fe in &item.errors {
                        eprintln!("  {}: {:?} {}", fe.key, fe.item, fe.reason);
                    }
                    return Ok(ExitCode::from(if item.status == 422 { super::EXIT_INVALID } else { 1 }));
                }
                if !json {
                    for n in &item.warnings {
                        eprintln!("note: {n}");
                    }
                }
                let version = item.resource_version.unwrap_or_else(|| current.resource_version.clone());
                (item.settings.unwrap_or_else(|| current.settings.clone()), version)
            };
            if a.dry_run {
                return dry_run(client, w, &s, a.fix_clients, json).await;
            }
            sent = Some(s.clone());
            let mut update = PassthroughUpdate::new(s);
            update.restart = a.restart;
            update.fix_clients = a.fix_clients;
            client.put_passthrough(w, &update, Some(&version)).await
        }
        _ => client.delete_passthrough(w, a.restart, Some(&current.resource_version)).await,
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
        match client.get_passthrough(w).await {
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
