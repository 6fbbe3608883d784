//! `meshpass passthrough defaults get|set`: the mesh-wide capture values (Istio's injector
//! values `global.proxy.*`) that every meshed pod gets for each annotation its template does
//! not have, through the management API, with the workloads each value applies to.
//!
//! `set` takes the list flags of `meshpass passthrough set` (`--outbound-ip-ranges` replaces
//! `global.proxy.excludeIPRanges`, `--add-outbound-ip-ranges` edits it, …) and `--value` for
//! any other value. It reads the values with their version, edits, and writes only the values
//! it changed with that version as precondition, so a concurrent change is reported, never
//! lost. On the local mesh a change reaches pods on their next restart, or at once with
//! `--live`; on Kubernetes it is written to the injector's ConfigMap (pods get it when they
//! are next created).

use super::passthrough::{client, items, report, usage, Args, ListFlags};
use meshpass_api::model::{MeshDefaultsDoc, MeshDefaultsUpdate, Workload};
use meshpass_api::passthrough::same_item;
use meshpass_settings::keys;
use meshpass_settings::mesh::{values, VALUE_KEYS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// The meshed workloads a mesh-wide value reaches, and those whose own annotation replaces it.
#[derive(Debug, Default, Serialize)]
struct Reach {
    /// Meshed workloads without the annotation: they get the mesh-wide value.
    inherit: Vec<String>,
    /// Meshed workloads with the annotation (even empty): theirs replaces the mesh-wide value.
    own: Vec<String>,
}

/// The defaults document with what each value applies to (`-o json`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DefaultsView<'a> {
    #[serde(flatten)]
    doc: &'a MeshDefaultsDoc,
    applies_to: BTreeMap<&'static str, Reach>,
}

fn reach(workloads: &[Workload]) -> BTreeMap<&'static str, Reach> {
    let mut out = BTreeMap::new();
    for (value, annotation) in VALUE_KEYS {
        let mut r = Reach::default();
        for w in workloads.iter().filter(|w| w.info.meshed) {
            let name = w.info.workload.to_string();
            if w.info.annotations.contains_key(annotation) {
                r.own.push(name);
            } else {
                r.inherit.push(name);
            }
        }
        out.insert(value, r);
    }
    out
}

/// At most eight names, then how many more.
fn names(v: &[String]) -> String {
    const SHOWN: usize = 8;
    if v.len() <= SHOWN {
        v.join(", ")
    } else {
        format!("{} and {} more", v[..SHOWN].join(", "), v.len() - SHOWN)
    }
}

fn show(doc: &MeshDefaultsDoc, workloads: Option<&[Workload]>, json: bool) -> anyhow::Result<()> {
    let applies_to = workloads.map(reach).unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&DefaultsView { doc, applies_to })?);
        return Ok(());
    }
    let version =
        if doc.resource_version.is_empty() { String::new() } else { format!(", version {}", doc.resource_version) };
    let writable = if doc.writable { "" } else { ", read-only here" };
    println!("mesh-wide defaults: {}{version}{writable}", doc.source);
    for (value, annotation) in VALUE_KEYS {
        let v = doc.values.get(value).map(String::as_str).unwrap_or_default();
        println!("{value} = {}", if v.is_empty() { "-" } else { v });
        let short = annotation.rsplit('/').next().unwrap_or(annotation);
        if let Some(r) = applies_to.get(value) {
            if r.inherit.is_empty() {
                println!("  applies to no meshed workload");
            } else {
                println!("  applies to {} meshed workload(s): {}", r.inherit.len(), names(&r.inherit));
            }
            if !r.own.is_empty() {
                println!("  replaced by their own {short} on {}: {}", r.own.len(), names(&r.own));
            }
        }
    }
    for p in &doc.problems {
        println!("problem: {p}");
    }
    for c in &doc.changes {
        println!("change: {c}");
    }
    Ok(())
}

/// The values `set` writes: each list flag's mesh-wide value, then `--value`s. `Err`: invalid
/// input (exit status 2).
fn new_values(
    current: &BTreeMap<String, String>,
    lists: &ListFlags,
    extra: &[String],
) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let mut out = BTreeMap::new();
    let mut notes = Vec::new();
    for (value, annotation, set, add, remove) in [
        (
            values::EXCLUDE_INBOUND_PORTS,
            keys::EXCLUDE_INBOUND_PORTS,
            &lists.set.inbound_ports,
            &lists.add.inbound_ports,
            &lists.remove.inbound_ports,
        ),
        (
            values::EXCLUDE_OUTBOUND_PORTS,
            keys::EXCLUDE_OUTBOUND_PORTS,
            &lists.set.outbound_ports,
            &lists.add.outbound_ports,
            &lists.remove.outbound_ports,
        ),
        (
            values::EXCLUDE_IP_RANGES,
            keys::EXCLUDE_OUTBOUND_IP_RANGES,
            &lists.set.outbound_ip_ranges,
            &lists.add.outbound_ip_ranges,
            &lists.remove.outbound_ip_ranges,
        ),
    ] {
        if let Some(s) = set {
            out.insert(value.to_string(), s.iter().map(|i| i.trim()).collect::<Vec<_>>().join(","));
            continue;
        }
        if add.is_none() && remove.is_none() {
            continue;
        }
        let mut list = items(current.get(value).map(String::as_str).unwrap_or_default());
        for item in add.iter().flatten() {
            if list.iter().any(|x| same_item(annotation, x, item)) {
                notes.push(format!("{value}: {} is already there", item.trim()));
            } else {
                list.push(item.trim().to_string());
            }
        }
        for item in remove.iter().flatten() {
            let before = list.len();
            list.retain(|x| !same_item(annotation, x, item));
            if list.len() == before {
                notes.push(format!("{value}: {} is not there to remove", item.trim()));
            }
        }
        out.insert(value.to_string(), list.join(","));
    }
    for v in extra {
        let Some((key, text)) = v.split_once('=') else {
            return Err(format!("--value {v:?}: give HELM_PATH=TEXT (global.proxy.includeIPRanges=10.0.0.0/8)"));
        };
        let key = key.trim();
        if out.contains_key(key) {
            return Err(format!("--value {key} and a list flag both change {key}: give one"));
        }
        out.insert(key.to_string(), text.trim().to_string());
    }
    Ok((out, notes))
}

/// Runs `meshpass passthrough defaults get|set`.
pub(crate) fn run(a: &Args, sub: Option<&str>, targets: usize) -> anyhow::Result<ExitCode> {
    let (Some(sub @ ("get" | "set")), 1) = (sub, targets) else {
        return usage("`defaults` takes `get` or `set` (meshpass passthrough defaults get|set)");
    };
    let lists = match a.lists() {
        Ok(l) => l,
        Err(m) => return usage(&m),
    };
    let edits = !(lists.set.is_empty() && lists.add.is_empty() && lists.remove.is_empty() && a.values().is_empty());
    if a.restart() || a.has_targets_flags() {
        return usage("-n, -l, --all, --restart and --fix-clients go with workloads, not with `defaults`");
    }
    if sub == "get" && (edits || a.live() || a.dry_run()) {
        return usage(
            "`defaults get` only reads: the list flags, --value, --live and --dry-run go with `defaults set`",
        );
    }
    if sub == "set" && !edits {
        return usage(
            "nothing to change: give --inbound-ports, --outbound-ports, --outbound-ip-ranges, their --add-/--remove- \
             forms, or --value HELM_PATH=TEXT",
        );
    }
    if a.dry_run() && a.live() {
        return usage("--dry-run writes nothing, so it cannot --live");
    }
    let json = a.json();
    let client = client(a)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let current = match client.get_defaults().await {
            Ok(d) => d,
            Err(e) => return report(e),
        };
        let workloads = client.workloads(None, None).await.ok();
        if sub == "get" {
            show(&current, workloads.as_deref(), json)?;
            return Ok(ExitCode::SUCCESS);
        }
        if !current.writable {
            eprintln!("error: the mesh-wide defaults cannot be changed here ({})", current.source);
            for p in &current.problems {
                eprintln!("  {p}");
            }
            return Ok(ExitCode::from(1));
        }
        let (values, notes) = match new_values(&current.values, &lists, a.values()) {
            Ok(v) => v,
            Err(m) => return usage(&m),
        };
        if !json {
            for n in &notes {
                eprintln!("note: {n}");
            }
        }
        if a.dry_run() {
            let mut next = current.clone();
            for (k, v) in &values {
                let old = current.values.get(k).cloned().unwrap_or_default();
                if old != *v {
                    next.changes.push(format!("{k}: {:?} -> {v:?}", old));
                }
                next.values.insert(k.clone(), v.clone());
            }
            show(&next, workloads.as_deref(), json)?;
            eprintln!("dry run: nothing written (the server checks the values when they are written)");
            return Ok(ExitCode::SUCCESS);
        }
        let update = MeshDefaultsUpdate { values, live: a.live(), resource_version: None };
        let written = match client.put_defaults(&update, Some(&current.resource_version)).await {
            Ok(d) => d,
            Err(e) => return report(e),
        };
        if !json {
            eprintln!("mesh-wide defaults saved{}", if a.live() { " and applied to the running pods" } else { "" });
        }
        show(&written, workloads.as_deref(), json)?;
        Ok(ExitCode::SUCCESS)
    })
}
