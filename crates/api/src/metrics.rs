//! `/metrics`: Prometheus text exposition of bypassed traffic (the passthrough rules'
//! counters of every meshed workload), workloads by status, API requests and passthrough
//! changes. A backend that cannot read rules is skipped silently; any other failure becomes a
//! `meshpass_scrape_errors_total` increment, never a failed scrape.

use crate::backend::{Backend, BackendError};
use crate::model::SidecarStatus;
use meshpass_capture::compile::labels;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The labels of passthrough rules and the direction each bypasses.
pub const PASSTHROUGH_LABELS: [(&str, &str); 3] = [
    (labels::EXCLUDE_INBOUND_PORTS, "inbound"),
    (labels::EXCLUDE_OUTBOUND_PORTS, "outbound"),
    (labels::EXCLUDE_OUTBOUND_IP_RANGES, "outbound"),
];

/// The direction a passthrough rule label bypasses, `None` for any other rule.
pub fn passthrough_direction(label: &str) -> Option<&'static str> {
    PASSTHROUGH_LABELS.iter().find(|(l, _)| *l == label).map(|(_, d)| *d)
}

/// One bypass series: namespace, workload, pod, direction, rule label.
type SeriesKey = (String, String, String, &'static str, String);

/// Counters the server keeps itself.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    changes: Mutex<BTreeMap<String, u64>>,
    scrape_errors: AtomicU64,
}

/// Escapes a label value for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
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

    /// The exposition, reading counters from `backend`.
    pub async fn render(&self, backend: &dyn Backend) -> String {
        let mut out = String::new();
        let mut bypass: BTreeMap<SeriesKey, (u64, u64)> = BTreeMap::new();
        let mut by_status: BTreeMap<&str, u64> =
            [("Injected", 0), ("Uninjected", 0), ("Pending restart", 0)].into_iter().collect();
        match backend.list().await {
            Ok(list) => {
                for w in &list {
                    let status = match w.status() {
                        SidecarStatus::Injected => "Injected",
                        SidecarStatus::Uninjected => "Uninjected",
                        SidecarStatus::PendingRestart => "Pending restart",
                    };
                    *by_status.entry(status).or_default() += 1;
                    if !w.meshed {
                        continue;
                    }
                    match backend.rule_counters(&w.workload).await {
                        Ok(counters) => {
                            for c in counters {
                                let Some(dir) = passthrough_direction(&c.label) else { continue };
                                let key = (w.workload.namespace.clone(), w.workload.name.clone(), c.pod, dir, c.label);
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
            }
            Err(_) => {
                self.scrape_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (name, help, pick) in [
            ("meshpass_bypassed_packets_total", "Packets (connections, for nat rules) that bypassed the sidecar.", 0),
            ("meshpass_bypassed_bytes_total", "Bytes that bypassed the sidecar.", 1),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((ns, wl, pod, dir, rule), (p, b)) in &bypass {
                let v = if pick == 0 { p } else { b };
                let _ = writeln!(
                    out,
                    "{name}{{namespace=\"{}\",workload=\"{}\",pod=\"{}\",direction=\"{dir}\",rule=\"{}\"}} {v}",
                    esc(ns),
                    esc(wl),
                    esc(pod),
                    esc(rule)
                );
            }
        }
        let _ =
            writeln!(out, "# HELP meshpass_workloads Workloads by sidecar status.\n# TYPE meshpass_workloads gauge");
        for (status, n) in &by_status {
            let _ = writeln!(out, "meshpass_workloads{{status=\"{status}\"}} {n}");
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
        out
    }
}
