//! One passthrough change over several workloads: `POST /api/v1/passthrough/batch`.
//!
//! The request as a whole is checked first (the items to add, remove or set must be valid on
//! their own, the workload names well-formed): if it is not, nothing is written anywhere
//! (422). Then each workload is decided on its own, from its own current settings and
//! version: one that is missing, has moved since the version named, or would end up with
//! settings the engine rejects is reported and left alone, and never stops the others. The
//! writes go to the backend in one [`Backend::patch_many`](crate::Backend::patch_many), each
//! with the workload's version as precondition, so a concurrent change is a 409 for that
//! workload, never lost.
//!
//! With several clusters, each workload is placed in its cluster first (named in its entry,
//! or the one cluster that has it: a name several clusters have refuses the whole request,
//! 400 `ambiguous`); each cluster is listed and written on its own, concurrently, so one
//! that cannot be reached fails its own workloads only.

use crate::audit::AuditSlot;
use crate::backend::{AnnotationPatch, BackendError};
use crate::error::{ApiError, ErrorCode};
use crate::extract::{ApiJson, Caller};
use crate::impact::{self, Assessor};
use crate::model::{
    AuditEntry, BatchItem, BatchOutcome, BatchRequest, BatchResult, ListItems, Passthrough, WorkloadInfo, WorkloadRef,
};
use crate::passthrough;
use crate::routes::passthrough::{mesh_defaults, with_defaults};
use crate::selector::LabelSelector;
use crate::state::{cluster_status, AppState, Cluster};
use crate::util::{is_dns1123_label, is_dns1123_subdomain, now};
use axum::extract::State;
use axum::Json;
use meshpass_settings::Settings;
use std::collections::{BTreeMap, BTreeSet};

/// The most workloads one batch may name.
pub const MAX_BATCH: usize = 5000;

fn failed(cluster: &str, w: &WorkloadRef, e: &ApiError) -> BatchItem {
    let body = e.body();
    BatchItem {
        cluster: cluster.to_string(),
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        outcome: BatchOutcome::Failed,
        status: e.status().as_u16(),
        message: body.message,
        error: Some(body.error),
        errors: body.errors,
        before: None,
        settings: None,
        effective: Vec::new(),
        warnings: Vec::new(),
        impact: Vec::new(),
        resource_version: None,
    }
}

/// The request as a whole: well-formed names, something to change, no list both set and
/// edited, every item valid on its own. `Err`: nothing is done.
fn check_request(
    r: &BatchRequest,
    clusters: &[String],
    dialects: &[meshpass_settings::Dialect],
) -> Result<(), ApiError> {
    let invalid = |m: String| ApiError::Invalid { message: m, errors: Vec::new() };
    if r.all && !r.workloads.is_empty() {
        return Err(invalid("name workloads or ask for all of them, not both".into()));
    }
    if !r.all && r.selector.is_some() {
        return Err(invalid("a selector picks workloads with all: true, not among named ones".into()));
    }
    if let Some(sel) = &r.selector {
        sel.parse::<LabelSelector>().map_err(|e| invalid(e.to_string()))?;
    }
    if !r.all && r.workloads.is_empty() {
        return Err(invalid("no workloads: name at least one, or ask for all".into()));
    }
    if r.workloads.len() > MAX_BATCH {
        return Err(invalid(format!("{} workloads in one batch; at most {MAX_BATCH}", r.workloads.len())));
    }
    let mut bad = Vec::new();
    let mut seen = BTreeSet::new();
    let known = |c: &Option<String>| c.as_deref().is_none_or(|c| c.is_empty() || clusters.iter().any(|k| k == c));
    if !known(&r.cluster) {
        bad.push(format!(
            "no cluster named {:?} (served: {})",
            r.cluster.as_deref().unwrap_or_default(),
            clusters.join(", ")
        ));
    }
    if r.cluster.is_some() && !r.all {
        bad.push("cluster (of the request) filters `all`; name each workload's cluster in its own entry".into());
    }
    for t in &r.workloads {
        let at = t.cluster.as_deref().filter(|c| !c.is_empty()).map(|c| format!(" (cluster {c})")).unwrap_or_default();
        if !is_dns1123_label(&t.namespace) || !is_dns1123_subdomain(&t.name) {
            bad.push(format!("{}/{}{at} is not a valid workload name", t.namespace, t.name));
        } else if !known(&t.cluster) {
            bad.push(format!(
                "{}/{}: no cluster named {:?} (served: {})",
                t.namespace,
                t.name,
                t.cluster.as_deref().unwrap_or_default(),
                clusters.join(", ")
            ));
        } else if !seen.insert((t.cluster.as_deref().filter(|c| !c.is_empty()), &t.namespace, &t.name)) {
            bad.push(format!("{}/{}{at} is named twice", t.namespace, t.name));
        }
    }
    if !bad.is_empty() {
        return Err(invalid(bad.join("; ")));
    }
    if r.set.is_empty() && r.add.is_empty() && r.remove.is_empty() {
        return Err(invalid("nothing to change: give items to set, add or remove".into()));
    }
    let both = |s: bool, e: bool| s && e;
    for (name, s, a, m) in [
        (
            "inboundPorts",
            r.set.inbound_ports.is_some(),
            r.add.inbound_ports.is_some(),
            r.remove.inbound_ports.is_some(),
        ),
        (
            "outboundPorts",
            r.set.outbound_ports.is_some(),
            r.add.outbound_ports.is_some(),
            r.remove.outbound_ports.is_some(),
        ),
        (
            "outboundIpRanges",
            r.set.outbound_ip_ranges.is_some(),
            r.add.outbound_ip_ranges.is_some(),
            r.remove.outbound_ip_ranges.is_some(),
        ),
    ] {
        if both(s, a || m) {
            return Err(invalid(format!("{name} is both set outright and added to or removed from; do one")));
        }
    }
    // Every item on its own, as the engine reads it (a removed item must be valid too: a
    // typo would otherwise silently remove nothing).
    let all_items = |l: &ListItems| l.clone();
    let mut p = Passthrough::default();
    for l in [all_items(&r.set), all_items(&r.add), all_items(&r.remove)] {
        p.inbound_ports.extend(l.inbound_ports.unwrap_or_default());
        p.outbound_ports.extend(l.outbound_ports.unwrap_or_default());
        p.outbound_ip_ranges.extend(l.outbound_ip_ranges.unwrap_or_default());
    }
    // Valid for every cluster's injector (they may differ: the local mesh takes port ranges).
    for d in dialects {
        passthrough::prepare(&BTreeMap::new(), &p, *d)
            .map_err(|e| ApiError::Invalid { message: e.to_string(), errors: passthrough::field_errors(&e) })?;
    }
    Ok(())
}

/// Where a workload named in a batch is: its cluster (index into the views), name and expected
/// version; or why it could not be placed.
enum Placement {
    At(usize, WorkloadRef, Option<String>),
    Failed(Box<BatchItem>),
}

/// One cluster as a batch sees it: its workloads as listed now, its mesh-wide defaults and
/// the injector values around them, its mutual-TLS policies.
struct View {
    cluster: Cluster,
    list: Result<Vec<WorkloadInfo>, BackendError>,
    defaults: meshpass_settings::MeshDefaults,
    values: meshpass_capture::InjectorValues,
    policies: Result<crate::backend::MeshPolicies, BackendError>,
}

/// What one workload would get, or why it gets nothing.
struct Decided {
    /// Its cluster (index into the views).
    view: usize,
    info: WorkloadInfo,
    impact: Vec<crate::model::ImpactEntry>,
    before: Passthrough,
    after: Passthrough,
    set: BTreeMap<String, String>,
    remove: Vec<String>,
    warnings: Vec<String>,
}

/// Change the passthrough lists of several workloads at once: add or remove items, or set
/// lists outright; one result per workload. A workload that fails is left unchanged and
/// does not stop the others.
#[utoipa::path(post, path = "/api/v1/passthrough/batch", tag = "passthrough", operation_id = "batchPassthrough",
    params(
        ("X-CSRF-Token" = Option<String>, Header, nullable = false, description = "required with the session cookie (from GET /api/v1/session); not with a bearer token"),
    ),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per workload (`failed` > 0 when some were left unchanged)", body = BatchResult),
        crate::routes::errors::Batch,
    ))]
pub(crate) async fn batch(
    State(app): State<AppState>,
    caller: Caller,
    slot: AuditSlot,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<Json<BatchResult>, ApiError> {
    let names = app.cluster_names();
    let mut dialects: Vec<meshpass_settings::Dialect> = Vec::new();
    for c in app.clusters() {
        let d = c.backend().dialect();
        if !dialects.contains(&d) {
            dialects.push(d);
        }
    }
    check_request(&req, &names, &dialects)?;
    let wanted = |c: &Cluster| {
        if req.all {
            req.cluster.as_deref().is_none_or(|n| n.is_empty() || n == c.name())
        } else {
            !app.multi_cluster()
                || req.workloads.iter().any(|t| t.cluster.as_deref().is_none_or(|n| n.is_empty() || n == c.name()))
        }
    };
    // Every cluster concerned, listed afresh and concurrently, with its mesh-wide defaults.
    let asked: Vec<Cluster> = app.clusters().filter(|c| wanted(c)).collect();
    let listed = futures::future::join_all(asked.into_iter().map(|c| async move {
        let list = c.backend().list().await;
        let defaults = mesh_defaults(&c).await;
        let policies = c.backend().mesh_policies().await;
        (c, list, defaults, policies)
    }))
    .await;
    let mut statuses = Vec::new();
    let mut views: Vec<View> = Vec::new();
    for (c, list, defaults, policies) in listed {
        statuses.push(cluster_status(c.name(), list.as_ref().map(|l| u32::try_from(l.len()).unwrap_or(u32::MAX))));
        let values = with_defaults(c.values(), defaults.clone());
        views.push(View { cluster: c, list, defaults, values, policies });
    }
    // The impact of each change on meshed clients' mutual TLS, judged on its own against its
    // cluster as it is (as a single write's): advice, so a cluster whose policies cannot be
    // read only loses it (with a warning when reading failed). Every other workload's capture
    // is compiled once per cluster, not once per change.
    let assessors: Vec<Option<Assessor<'_>>> = views
        .iter()
        .map(|v| match (&v.list, &v.policies) {
            (Ok(list), Ok(m)) => Some(Assessor::new(list, &v.values, m)),
            _ => None,
        })
        .collect();
    let not_assessed = |v: &View| match &v.policies {
        Err(BackendError::Unsupported(_)) | Ok(_) => None,
        Err(e) => Some(format!("The impact on meshed clients' mutual TLS was not computed: {}", e.report())),
    };
    let view = |name: &str| views.iter().position(|v| v.cluster.name() == name);

    // Each workload placed in its cluster (index into `views`), or failed.
    let mut targets: Vec<Placement> = Vec::new();
    if req.all {
        let needle = req.search.clone().unwrap_or_default().to_lowercase();
        let selector = req
            .selector
            .as_deref()
            .map(str::parse::<LabelSelector>)
            .transpose()
            .map_err(|e| ApiError::Invalid { message: e.to_string(), errors: Vec::new() })?;
        for (i, v) in views.iter().enumerate() {
            let Ok(list) = &v.list else { continue };
            targets.extend(
                list.iter()
                    .filter(|w| req.namespace.as_deref().is_none_or(|ns| ns.is_empty() || ns == w.workload.namespace))
                    .filter(|w| needle.is_empty() || w.workload.to_string().to_lowercase().contains(&needle))
                    .filter(|w| selector.as_ref().is_none_or(|s| s.matches(&w.labels)))
                    .map(|w| Placement::At(i, w.workload.clone(), None)),
            );
        }
    } else {
        let mut ambiguous = Vec::new();
        for t in &req.workloads {
            let w = WorkloadRef::new(&t.namespace, &t.name);
            let placed = match t.cluster.as_deref().filter(|c| !c.is_empty()) {
                Some(name) => {
                    view(name).ok_or_else(|| failed(name, &w, &ApiError::NotFound(format!("no cluster {name:?}"))))
                }
                None if views.len() == 1 => Ok(0),
                None => {
                    let has: Vec<usize> = views
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.list.as_ref().is_ok_and(|l| l.iter().any(|i| i.workload == w)))
                        .map(|(i, _)| i)
                        .collect();
                    match has.as_slice() {
                        [one] => Ok(*one),
                        [] => Err(match views.iter().find(|v| v.list.is_err()) {
                            // Not found where asked, and a cluster could not be asked: unavailable.
                            Some(down) => failed("", &w, &ApiError::InCluster {
                                cluster: down.cluster.name().to_string(),
                                source: BackendError::unavailable(format!(
                                    "workload {w} is in none of the clusters that answered, and this one could not be asked"
                                )),
                            }),
                            None => failed("", &w, &ApiError::NotFound(format!(
                                "workload {w} not found in any cluster ({})", names.join(", ")
                            ))),
                        }),
                        several => {
                            let c: Vec<&str> = several.iter().map(|i| views[*i].cluster.name()).collect();
                            ambiguous.push(format!("{w} exists in clusters {}", c.join(", ")));
                            continue;
                        }
                    }
                }
            };
            targets.push(match placed {
                Ok(i) => Placement::At(i, w, t.resource_version.clone()),
                Err(f) => Placement::Failed(Box::new(f)),
            });
        }
        // An ambiguous name is a mistake in the request: nothing is done anywhere.
        if !ambiguous.is_empty() {
            return Err(ApiError::Ambiguous(format!("{}: name each one's cluster", ambiguous.join("; "))));
        }
    }

    // Decide each workload on its own, against its cluster's list and defaults.
    let multi = app.multi_cluster();
    let mut items: Vec<Result<Decided, BatchItem>> = Vec::with_capacity(targets.len());
    for t in targets {
        let (i, w, expected) = match t {
            Placement::At(i, w, expected) => (i, w, expected),
            Placement::Failed(f) => {
                items.push(Err(*f));
                continue;
            }
        };
        let v = &views[i];
        let cname = v.cluster.name();
        let all = match &v.list {
            Ok(all) => all,
            Err(e) => {
                let e = BackendError::unavailable(format!("listing the workloads of cluster {cname}"))
                    .caused_by(e.report());
                items.push(Err(failed(cname, &w, &in_cluster(multi, cname, e))));
                continue;
            }
        };
        let Some(info) = all.iter().find(|i| i.workload == w).cloned() else {
            items.push(Err(failed(cname, &w, &in_cluster(multi, cname, BackendError::NotFound(w.clone())))));
            continue;
        };
        if let Some(expected) = expected.as_deref().filter(|e| !e.is_empty()) {
            if *expected != info.resource_version {
                let e = ApiError::Conflict(format!(
                    "workload {w} changed since version {expected} (now {}); reload and retry",
                    info.resource_version
                ));
                items.push(Err(failed(cname, &w, &e)));
                continue;
            }
        }
        let dialect = v.cluster.backend().dialect();
        let before = passthrough::from_annotations(&info.annotations);
        let (after, mut notes) =
            passthrough::edit_lists(&before, &info.annotations, &v.defaults, &req.set, &req.add, &req.remove);
        let (after, settings) = match passthrough::prepare(&info.annotations, &after, dialect) {
            Ok(p) => {
                notes.extend(p.warnings);
                (p.canonical, p.settings)
            }
            Err(e) => {
                let err = ApiError::Invalid { message: e.to_string(), errors: passthrough::field_errors(&e) };
                items.push(Err(failed(cname, &w, &err)));
                continue;
            }
        };
        let mut warnings = passthrough::warnings(&info, &settings, all);
        warnings.append(&mut notes);
        let (set, remove) = passthrough::patch(&info.annotations, &after);
        let mut impact = Vec::new();
        if let Some(a) = &assessors[i] {
            let judged = a.assess(&info, &passthrough::candidate(&info.annotations, &after), false);
            impact = impact::entries(&judged.impact);
            warnings.extend(judged.impact.notes);
        }
        warnings.extend(not_assessed(v));
        items.push(Ok(Decided { view: i, info, impact, before, after, set, remove, warnings }));
    }

    // Write those that change: one call per cluster, the clusters concurrently.
    let mut written: BTreeMap<(usize, WorkloadRef), Result<WorkloadInfo, BackendError>> = BTreeMap::new();
    if !req.dry_run {
        let mut per_cluster: BTreeMap<usize, Vec<AnnotationPatch>> = BTreeMap::new();
        for d in items.iter().flatten() {
            if !(d.set.is_empty() && d.remove.is_empty()) {
                per_cluster.entry(d.view).or_default().push(AnnotationPatch {
                    workload: d.info.workload.clone(),
                    expected_version: d.info.resource_version.clone(),
                    set: d.set.clone(),
                    remove: d.remove.clone(),
                });
            }
        }
        let writes = per_cluster.into_iter().map(|(i, patches)| {
            let c = views[i].cluster.clone();
            async move {
                let refs: Vec<WorkloadRef> = patches.iter().map(|p| p.workload.clone()).collect();
                let results = c.backend().patch_many(patches, req.live).await;
                // The workload list served to readers is dropped, as after any write.
                c.changed();
                (i, refs, results)
            }
        });
        for (i, refs, results) in futures::future::join_all(writes).await {
            for (w, r) in refs.into_iter().zip(results) {
                written.insert((i, w), r);
            }
        }
    }

    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let d = match item {
            Ok(d) => d,
            Err(f) => {
                out.push(f);
                continue;
            }
        };
        let v = &views[d.view];
        let cname = v.cluster.name().to_string();
        let w = d.info.workload.clone();
        let unchanged = d.set.is_empty() && d.remove.is_empty();
        let (outcome, info) = if unchanged {
            (BatchOutcome::Unchanged, d.info)
        } else if req.dry_run {
            (BatchOutcome::WouldChange, d.info)
        } else {
            let result = written
                .remove(&(d.view, w.clone()))
                .unwrap_or_else(|| Err(BackendError::failed("no answer for this workload")));
            app.audit(&AuditEntry {
                time: now(),
                actor: caller.actor.clone(),
                remote: caller.remote.clone(),
                action: "passthrough.batch".into(),
                cluster: cname.clone(),
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                before: Some(d.before.clone()),
                after: Some(d.after.clone()),
                restart: false,
                result: result
                    .as_ref()
                    .map_or_else(|e| e.report(), |_| if req.live { "ok (live)" } else { "ok" }.into()),
                status: Some(result.as_ref().map_or_else(|e| ErrorCode::of_backend(e).status().as_u16(), |_| 200)),
                error: result.as_ref().err().map(|e| ErrorCode::of_backend(e).as_str().to_string()),
            });
            match result {
                Ok(info) => {
                    app.inner.metrics.change("ok");
                    (BatchOutcome::Changed, info)
                }
                Err(e) => {
                    app.inner.metrics.change(match e {
                        BackendError::Conflict { .. } => "conflict",
                        BackendError::Invalid(_) => "invalid",
                        _ => "error",
                    });
                    let mut f = failed(&cname, &w, &in_cluster(multi, &cname, e));
                    f.before = Some(d.before);
                    out.push(f);
                    continue;
                }
            }
        };
        let (effective, replaced) =
            match Settings::from_annotations(&passthrough::candidate(&info.annotations, &d.after)) {
                Ok(s) => passthrough::effective(&s, &v.defaults),
                Err(_) => (Vec::new(), Vec::new()),
            };
        let mut warnings = d.warnings;
        warnings.extend(replaced);
        out.push(BatchItem {
            cluster: cname,
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            outcome,
            status: 200,
            message: match outcome {
                BatchOutcome::Unchanged => "unchanged: already as asked".into(),
                BatchOutcome::WouldChange => "would change (dry run)".into(),
                _ if req.live => "ok: applied to the running pods".into(),
                _ if info.meshed => "ok: the running pods keep their old settings until a restart".into(),
                _ => "ok".into(),
            },
            error: None,
            errors: Vec::new(),
            before: Some(d.before),
            settings: Some(d.after),
            effective,
            warnings,
            impact: d.impact,
            resource_version: Some(info.resource_version),
        });
    }
    slot.note(|n| n.recorded = true);
    let failed_n = out.iter().filter(|i| i.outcome == BatchOutcome::Failed).count();
    Ok(Json(BatchResult {
        succeeded: u32::try_from(out.len() - failed_n).unwrap_or(u32::MAX),
        failed: u32::try_from(failed_n).unwrap_or(u32::MAX),
        dry_run: req.dry_run,
        items: out,
        clusters: if req.all { statuses } else { Vec::new() },
    }))
}

/// A backend error as the API names it: with its cluster when several are served.
fn in_cluster(multi: bool, cluster: &str, e: BackendError) -> ApiError {
    if multi {
        ApiError::InCluster { cluster: cluster.to_string(), source: e }
    } else {
        ApiError::Backend(e)
    }
}
