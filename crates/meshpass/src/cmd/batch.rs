//! `meshpass passthrough set` over several workloads (named, `-l SELECTOR` or `--all`): one
//! `POST /api/v1/passthrough/batch`, then one result per workload.
//!
//! The server refuses the whole request when it is invalid (an item no workload could take, a
//! malformed name or selector): nothing is written anywhere and the exit status is 2. Otherwise
//! each workload is decided and written on its own with its version as precondition, so one
//! that is missing, has moved, or would end up with settings the engine refuses is reported
//! (exit status 1) and never half-applied, and never stops the others.

use super::passthrough::{report, several_clusters, show_impact_indented, Args};
use meshpass_api::model::{BatchItem, BatchOutcome, BatchRequest, BatchResult, Passthrough, ValueSource, WorkloadRef};
use meshpass_api::Client;
use meshpass_settings::keys;
use std::process::ExitCode;
use std::time::Duration;

/// Sends the batch, restarts what it wrote when asked, prints one result per workload.
pub(crate) async fn run(client: &Client, a: &Args, request: BatchRequest) -> anyhow::Result<ExitCode> {
    let json = a.json();
    let mut result = match client.batch(&request).await {
        Ok(r) => r,
        Err(e) => return report(e),
    };
    if result.items.is_empty() {
        let mut what = Vec::new();
        if let Some(ns) = &request.namespace {
            what.push(format!("in namespace {ns}"));
        }
        if let Some(sel) = &request.selector {
            what.push(format!("matching -l {sel}"));
        }
        let what = if what.is_empty() { String::new() } else { format!(" {}", what.join(" ")) };
        if json {
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        eprintln!("error: no workload{what}: nothing changed");
        return Ok(ExitCode::from(1));
    }
    let mut restart_failed = 0;
    if a.restart() {
        restart_failed = restart_written(client, &mut result, json).await;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        let clusters = several_clusters(client).await;
        for item in &result.items {
            show_item(item, clusters);
        }
        for c in result.clusters.iter().filter(|c| c.error.is_some()) {
            eprintln!("cluster {}: {}", c.name, c.message.as_deref().or(c.error.as_deref()).unwrap_or_default());
        }
        summary(&result);
    }
    Ok(if result.failed > 0 || restart_failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Restarts every workload the batch wrote (all started, then each waited for), noting each
/// failed restart in its item's warnings; returns how many failed.
async fn restart_written(client: &Client, result: &mut BatchResult, json: bool) -> usize {
    let mut started = Vec::new();
    let mut failed = 0;
    for (i, item) in result.items.iter_mut().enumerate() {
        if item.outcome != BatchOutcome::Changed {
            continue;
        }
        let w = WorkloadRef::new(&item.namespace, &item.name);
        match client.restart(&w).await {
            Ok(op) => started.push((i, w, op.id)),
            Err(e) => {
                item.warnings.push(format!("settings written, but the restart could not start: {e}"));
                failed += 1;
            }
        }
    }
    for (i, w, id) in started {
        let done = client
            .wait_operation(&id, Duration::from_millis(300), |line| {
                if !json {
                    eprintln!("  {w}: {line}");
                }
            })
            .await;
        let item = &mut result.items[i];
        match done {
            Ok(op) => match op.error {
                Some(err) => {
                    item.warnings.push(format!("settings written, but the restart failed: {err}"));
                    failed += 1;
                }
                None => item.message = "ok: restarted with the new settings".into(),
            },
            Err(e) => {
                item.warnings.push(format!("settings written, but the restart's outcome is unknown: {e}"));
                failed += 1;
            }
        }
    }
    failed
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_string()
    } else {
        v.join(",")
    }
}

/// One workload's result: the outcome, the lists (with what they were, when they changed),
/// the values in force with their source, the impact on meshed clients and the warnings.
fn show_item(item: &BatchItem, clusters: bool) {
    let outcome = match item.outcome {
        BatchOutcome::Changed => "changed",
        BatchOutcome::Unchanged => "unchanged",
        BatchOutcome::WouldChange => "would change",
        BatchOutcome::Failed => "FAILED",
    };
    let at = if clusters && !item.cluster.is_empty() { format!("{}: ", item.cluster) } else { String::new() };
    if item.outcome == BatchOutcome::Failed {
        let code = item.error.as_deref().unwrap_or("error");
        println!("{at}{}/{}: FAILED ({} {code}): {}", item.namespace, item.name, item.status, item.message);
        for fe in &item.errors {
            println!("  {}: {:?} {}", fe.key, fe.item, fe.reason);
        }
        return;
    }
    println!("{at}{}/{}: {outcome}: {}", item.namespace, item.name, item.message);
    let empty = Passthrough::default();
    let before = item.before.as_ref().unwrap_or(&empty);
    let after = item.settings.as_ref().unwrap_or(&empty);
    for (what, annotation, b, n) in [
        ("inbound ports", keys::EXCLUDE_INBOUND_PORTS, &before.inbound_ports, &after.inbound_ports),
        ("outbound ports", keys::EXCLUDE_OUTBOUND_PORTS, &before.outbound_ports, &after.outbound_ports),
        ("outbound IP ranges", keys::EXCLUDE_OUTBOUND_IP_RANGES, &before.outbound_ip_ranges, &after.outbound_ip_ranges),
    ] {
        // A list without its own annotation is the mesh-wide value: say so, with that value.
        let value = match item.effective.iter().find(|e| e.annotation == annotation) {
            Some(e) if e.source == ValueSource::Mesh => {
                let v = if e.value.is_empty() { "-" } else { e.value.as_str() };
                format!("{v} (mesh-wide {})", e.mesh_key)
            }
            _ => list(n),
        };
        if b == n {
            println!("  {:<20}{value}", format!("{what}:"));
        } else {
            let was = if b.is_empty() { "none of its own".to_string() } else { list(b) };
            println!("  {:<20}{value} (was {was})", format!("{what}:"));
        }
    }
    show_impact_indented(&item.impact, "  ");
    for w in &item.warnings {
        println!("  warning: {w}");
    }
}

/// The counts, on stderr.
fn summary(result: &BatchResult) {
    let count = |o: BatchOutcome| result.items.iter().filter(|i| i.outcome == o).count();
    let n = result.items.len();
    let failed = count(BatchOutcome::Failed);
    let done = if result.dry_run {
        format!("{} would change, {} unchanged", count(BatchOutcome::WouldChange), count(BatchOutcome::Unchanged))
    } else {
        format!("{} changed, {} unchanged", count(BatchOutcome::Changed), count(BatchOutcome::Unchanged))
    };
    eprintln!("{n} workload{}: {done}, {failed} failed", if n == 1 { "" } else { "s" });
    if result.dry_run {
        eprintln!("dry run: nothing written");
    }
    for i in result.items.iter().filter(|i| i.outcome == BatchOutcome::Failed) {
        eprintln!("failed: {}/{}: {}", i.namespace, i.name, i.message);
    }
}
