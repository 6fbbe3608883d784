//! `/metrics`: Prometheus text exposition of bypassed traffic (the passthrough rules'
//! counters of every meshed workload), workloads by status, API requests, passthrough changes
//! and the listener's connections. A backend that cannot read rules is skipped silently; any
//! other failure becomes a `meshpass_scrape_errors_total` increment, never a failed scrape.
//!
//! Reading rule counters is the expensive part (on the local mesh, one read per pod's network
//! namespace), so a scrape does not always read them: the backend's figures are collected at
//! most once per [`Metrics::min_interval`] (2 s by default), concurrent scrapes share one
//! collection, and the meshed workloads' counters are read [`COUNTER_READS`] at a time. A
//! scraper every few seconds therefore costs one collection per scrape at most, and a burst of
//! scrapers costs one collection in all. `meshpass_metrics_collect_seconds` says how long the
//! last collection took, `meshpass_metrics_age_seconds` how old the figures are.

use crate::backend::{Backend, BackendError};
use crate::listener::ConnStats;
use crate::model::{SidecarStatus, WorkloadInfo};
use futures::StreamExt;
use meshpass_capture::compile::labels;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The labels of passthrough rules and the direction each bypasses.
pub const PASSTHROUGH_LABELS: [(&str, &str); 3] = [
    (labels::EXCLUDE_INBOUND_PORTS, "inbound"),
    (labels::EXCLUDE_OUTBOUND_PORTS, "outbound"),
    (labels::EXCLUDE_OUTBOUND_IP_RANGES, "outbound"),
];

/// How many workloads' rule counters are read at once during a collection.
pub const COUNTER_READS: usize = 8;

/// The default shortest time between two collections of the backend's figures.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// The direction a passthrough rule label bypasses, `None` for any other rule.
pub fn passthrough_direction(label: &str) -> Option<&'static str> {
    PASSTHROUGH_LABELS.iter().find(|(l, _)| *l == label).map(|(_, d)| *d)
}

/// One bypass series: cluster (empty when one is served), namespace, workload, pod,
/// direction, rule label.
type SeriesKey = (String, String, String, String, &'static str, String);

/// One cluster's part of a collection: its name (empty when the server serves one), its
/// backend, and its workload list as read for the scrape.
pub type ClusterFigures = (String, Arc<dyn Backend>, Result<Arc<Vec<WorkloadInfo>>, BackendError>);

/// The backend's figures at one time.
#[derive(Debug)]
struct Collection {
    at: Instant,
    took: Duration,
    /// Workloads by status, per cluster (one entry, `""`, when one is served), and whether the
    /// cluster answered.
    by_status: BTreeMap<String, ([u64; 3], bool)>,
    bypass: BTreeMap<SeriesKey, (u64, u64)>,
}

/// Counters the server keeps itself, and the last collection of the backend's.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    changes: Mutex<BTreeMap<String, u64>>,
    scrape_errors: AtomicU64,
    last: tokio::sync::Mutex<Option<Arc<Collection>>>,
    min_interval: Duration,
    counter_reads: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::with_min_interval(MIN_INTERVAL)
    }
}

/// Escapes a label value for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// What [`read_counters`] gives.
type CounterRead = (String, crate::model::WorkloadRef, Result<Vec<crate::model::RuleCounter>, BackendError>);

/// One workload's rule counters, with the cluster and workload they belong to.
async fn read_counters((cluster, backend, w): (String, Arc<dyn Backend>, crate::model::WorkloadRef)) -> CounterRead {
    let result = backend.rule_counters(&w).await;
    (cluster, w, result)
}

/// `cluster="NAME",` for a series of one of several clusters; nothing with one cluster.
fn cluster_label(cluster: &str) -> String {
    if cluster.is_empty() {
        String::new()
    } else {
        format!("cluster=\"{}\",", esc(cluster))
    }
}

const STATUSES: [&str; 3] = ["Injected", "Uninjected", "Pending restart"];

fn status_index(w: &WorkloadInfo) -> usize {
    match w.status() {
        SidecarStatus::Injected => 0,
        SidecarStatus::Uninjected => 1,
        SidecarStatus::PendingRestart => 2,
    }
}

impl Metrics {
    /// Metrics whose backend figures are collected at most once per `min_interval` (zero:
    /// on every scrape).
    pub fn with_min_interval(min_interval: Duration) -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            changes: Mutex::new(BTreeMap::new()),
            scrape_errors: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
            min_interval,
            counter_reads: COUNTER_READS,
        }
    }

    /// The same, reading `n` workloads' rule counters at once (at least one).
    pub fn with_counter_reads(mut self, n: usize) -> Self {
        self.counter_reads = n.max(1);
        self
    }

    /// The shortest time between two collections of the backend's figures.
    pub fn min_interval(&self) -> Duration {
        self.min_interval
    }

    /// Counts one answered request (`route` is the route template, e.g.
    /// `/api/v1/namespaces/{ns}/workloads/{name}`, so that the series stay few).
    pub fn request(&self, method: &str, route: &str, code: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((method.to_string(), route.to_string(), code)).or_default() += 1;
    }

    /// Counts one passthrough change attempt by result (`ok`, `invalid`, `conflict`, `error`).
    pub fn change(&self, result: &str) {
        let mut m = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(result.to_string()).or_default() += 1;
    }

    /// Reads the backends' figures: each cluster's workload list, then the rule counters of
    /// the meshed workloads, [`COUNTER_READS`] (or as configured) at a time.
    async fn collect(&self, clusters: Vec<ClusterFigures>) -> Collection {
        let started = Instant::now();
        let mut by_status = BTreeMap::new();
        let mut bypass: BTreeMap<SeriesKey, (u64, u64)> = BTreeMap::new();
        let mut meshed = Vec::new();
        for (cluster, backend, list) in clusters {
            let (list, up) = match list {
                Ok(l) => (l, true),
                Err(_) => {
                    self.scrape_errors.fetch_add(1, Ordering::Relaxed);
                    (Arc::new(Vec::new()), false)
                }
            };
            let entry = by_status.entry(cluster.clone()).or_insert(([0u64; 3], up));
            for w in list.iter() {
                entry.0[status_index(w)] += 1;
            }
            meshed.extend(
                list.iter().filter(|w| w.meshed).map(|w| (cluster.clone(), backend.clone(), w.workload.clone())),
            );
        }
        // Boxed so that the stream's item type names no borrowed lifetime (the handler's
        // future must be Send for every lifetime).
        let reads: Vec<futures::future::BoxFuture<'static, CounterRead>> = meshed
            .into_iter()
            .map(|m| Box::pin(read_counters(m)) as futures::future::BoxFuture<'static, CounterRead>)
            .collect();
        let mut reads = futures::stream::iter(reads).buffer_unordered(self.counter_reads);
        while let Some((cluster, w, result)) = reads.next().await {
            match result {
                Ok(counters) => {
                    for c in counters {
                        let Some(dir) = passthrough_direction(&c.label) else { continue };
                        let key = (cluster.clone(), w.namespace.clone(), w.name.clone(), c.pod, dir, c.label);
                        let e = bypass.entry(key).or_default();
                        e.0 += c.packets;
                        e.1 += c.bytes;
                    }
                }
                Err(BackendError::Unsupported(_)) => {}
                Err(_) => {
                    self.scrape_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Collection { at: Instant::now(), took: started.elapsed(), by_status, bypass }
    }

    /// The exposition. `clusters` gives each cluster's backend and workload list when a
    /// collection is due (the server passes its shared, briefly cached lists; with one
    /// cluster, named `""`, no series carries a `cluster` label); `conns` are the listener's
    /// counters.
    pub async fn render<F, Fut>(&self, clusters: F, conns: &ConnStats) -> String
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Vec<ClusterFigures>>,
    {
        let collection = {
            // One collection at a time: scrapes that arrive during one wait for it and share it.
            let mut last = self.last.lock().await;
            match last.as_ref().filter(|c| c.at.elapsed() < self.min_interval) {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(self.collect(clusters().await).await);
                    *last = Some(c.clone());
                    c
                }
            }
        };
        let mut out = String::with_capacity(4096 + collection.bypass.len() * 400);
        for (name, help, pick) in [
            ("meshpass_bypassed_packets_total", "Packets (connections, for nat rules) that bypassed the sidecar.", 0),
            ("meshpass_bypassed_bytes_total", "Bytes that bypassed the sidecar.", 1),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((cluster, ns, wl, pod, dir, rule), (p, b)) in &collection.bypass {
                let v = if pick == 0 { p } else { b };
                let _ = writeln!(
                    out,
                    "{name}{{{}namespace=\"{}\",workload=\"{}\",pod=\"{}\",direction=\"{dir}\",rule=\"{}\"}} {v}",
                    cluster_label(cluster),
                    esc(ns),
                    esc(wl),
                    esc(pod),
                    esc(rule)
                );
            }
        }
        let _ =
            writeln!(out, "# HELP meshpass_workloads Workloads by sidecar status.\n# TYPE meshpass_workloads gauge");
        for (cluster, (counts, _)) in &collection.by_status {
            for (status, n) in STATUSES.iter().zip(counts) {
                let _ = writeln!(out, "meshpass_workloads{{{}status=\"{status}\"}} {n}", cluster_label(cluster));
            }
        }
        if collection.by_status.keys().any(|c| !c.is_empty()) {
            let _ = writeln!(
                out,
                "# HELP meshpass_cluster_up Whether the cluster's workloads could be listed at the last collection.\n\
                 # TYPE meshpass_cluster_up gauge"
            );
            for (cluster, (_, up)) in &collection.by_status {
                let _ = writeln!(out, "meshpass_cluster_up{{cluster=\"{}\"}} {}", esc(cluster), u8::from(*up));
            }
        }
        let _ = writeln!(
            out,
            "# HELP meshpass_api_requests_total API requests by method, route template and status code.\n\
             # TYPE meshpass_api_requests_total counter"
        );
        for ((method, route, code), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "meshpass_api_requests_total{{method=\"{}\",route=\"{}\",code=\"{code}\"}} {n}",
                esc(method),
                esc(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP meshpass_passthrough_changes_total Passthrough change attempts by result.\n\
             # TYPE meshpass_passthrough_changes_total counter"
        );
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for r in ["ok", "invalid", "conflict"] {
            changes.entry(r.to_string()).or_default();
        }
        for (result, n) in &changes {
            let _ = writeln!(out, "meshpass_passthrough_changes_total{{result=\"{}\"}} {n}", esc(result));
        }
        let _ = writeln!(
            out,
            "# HELP meshpass_scrape_errors_total Rule counter reads that failed during scrapes.\n\
             # TYPE meshpass_scrape_errors_total counter\nmeshpass_scrape_errors_total {}",
            self.scrape_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP meshpass_metrics_collect_seconds How long the last collection of the backend's figures took.\n\
             # TYPE meshpass_metrics_collect_seconds gauge\nmeshpass_metrics_collect_seconds {:.6}\n\
             # HELP meshpass_metrics_age_seconds How old the backend's figures in this answer are.\n\
             # TYPE meshpass_metrics_age_seconds gauge\nmeshpass_metrics_age_seconds {:.3}",
            collection.took.as_secs_f64(),
            collection.at.elapsed().as_secs_f64()
        );
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP meshpass_api_connections Connections open on the API/GUI listener.\n\
             # TYPE meshpass_api_connections gauge\nmeshpass_api_connections {}",
            conns.open.load(Ordering::Relaxed)
        );
        for (name, help, v) in [
            ("accepted", "Connections accepted.", load(&conns.accepted)),
            ("refused", "Connections refused at the cap, every slot having a request under way.", load(&conns.refused)),
            (
                "evicted",
                "Connections without a request under way closed at the cap to make room.",
                load(&conns.evicted),
            ),
            ("idle_closed", "Connections closed after the idle timeout.", load(&conns.idle_closed)),
        ] {
            let _ = writeln!(
                out,
                "# HELP meshpass_api_connections_{name}_total {help}\n\
                 # TYPE meshpass_api_connections_{name}_total counter\nmeshpass_api_connections_{name}_total {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP meshpass_api_request_timeouts_total Requests answered 408 after the request timeout.\n\
             # TYPE meshpass_api_request_timeouts_total counter\nmeshpass_api_request_timeouts_total {}",
            load(&conns.request_timeouts)
        );
        out
    }
}
