//! Lock-free counters, rendered as Prometheus text at `/stats/prometheus`.
//!
//! Every series carries `direction="inbound"|"outbound"`. Counters are relaxed atomics: the hot
//! path pays a few uncontended increments per request and nothing allocates.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::orig_dst::Direction;
use crate::outcome::{Flag, Outcome, Source};
use crate::sniff::Protocol;

/// Upper bounds (milliseconds) of the request-duration histogram; Istio's
/// `istio_request_duration_milliseconds` uses the same style of millisecond buckets.
pub const LATENCY_BUCKETS_MS: [f64; 14] =
    [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// Why a connection was refused before proxying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Over `max_connections`.
    Overflow,
    /// No original destination, or it pointed back at the proxy.
    NoOriginalDst,
}

/// Metrics of one direction.
#[derive(Debug)]
pub struct DirectionMetrics {
    requests: AtomicU64,
    responses: Box<[AtomicU64]>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    conns_http: AtomicU64,
    conns_tcp: AtomicU64,
    conns_h2: AtomicU64,
    /// gRPC responses by `grpc-status` (0..=16; other values in slot 17).
    grpc: [AtomicU64; 18],
    active: AtomicI64,
    overflow: AtomicU64,
    no_orig_dst: AtomicU64,
    /// Failed connections, by flag then source.
    outcomes: [[AtomicU64; 3]; Flag::ALL.len()],
}

impl DirectionMetrics {
    fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            // Index = status code; codes outside 100..=599 are not counted.
            responses: (0..600).map(|_| AtomicU64::new(0)).collect(),
            latency_buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            conns_http: AtomicU64::new(0),
            conns_tcp: AtomicU64::new(0),
            conns_h2: AtomicU64::new(0),
            grpc: Default::default(),
            active: AtomicI64::new(0),
            overflow: AtomicU64::new(0),
            no_orig_dst: AtomicU64::new(0),
            outcomes: Default::default(),
        }
    }

    /// An HTTP request arrived.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A response with `code` was sent after `elapsed`.
    pub fn response(&self, code: u16, elapsed: Duration) {
        if let Some(c) = self.responses.get(usize::from(code)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let ms = elapsed.as_secs_f64() * 1000.0;
        for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
            if ms <= *le {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A downstream connection opened.
    pub fn conn_opened(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A downstream connection closed after moving `rx`/`tx` bytes.
    pub fn conn_closed(&self, protocol: Option<Protocol>, rx: u64, tx: u64) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.received.fetch_add(rx, Ordering::Relaxed);
        self.sent.fetch_add(tx, Ordering::Relaxed);
        match protocol {
            Some(Protocol::Http) => self.conns_http.fetch_add(1, Ordering::Relaxed),
            Some(Protocol::Tcp) => self.conns_tcp.fetch_add(1, Ordering::Relaxed),
            Some(Protocol::Http2) => self.conns_h2.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }

    /// A gRPC response ended with `grpc-status: status`.
    pub fn grpc_status(&self, status: u32) {
        let i = usize::try_from(status).unwrap_or(17).min(17);
        self.grpc[i].fetch_add(1, Ordering::Relaxed);
    }

    /// gRPC responses counted with `status` (17: any other value).
    pub fn grpc_responses(&self, status: usize) -> u64 {
        self.grpc.get(status).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// A connection ended with a failure.
    pub fn outcome(&self, o: &Outcome) {
        self.outcomes[o.flag.index()][source_index(o.source)].fetch_add(1, Ordering::Relaxed);
    }

    /// Failures counted so far with `flag` caused by `source`.
    pub fn outcomes(&self, flag: Flag, source: Source) -> u64 {
        self.outcomes[flag.index()][source_index(source)].load(Ordering::Relaxed)
    }

    /// A connection was refused.
    pub fn rejected(&self, why: Rejection) {
        match why {
            Rejection::Overflow => self.overflow.fetch_add(1, Ordering::Relaxed),
            Rejection::NoOriginalDst => self.no_orig_dst.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Currently open downstream connections.
    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests seen so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// All proxy metrics.
#[derive(Debug)]
pub struct Metrics {
    inbound: DirectionMetrics,
    outbound: DirectionMetrics,
    admin_refused: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self { inbound: DirectionMetrics::new(), outbound: DirectionMetrics::new(), admin_refused: AtomicU64::new(0) }
    }
}

impl Metrics {
    /// The metrics of `d`.
    pub fn dir(&self, d: Direction) -> &DirectionMetrics {
        match d {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// An admin-port connection was refused (every slot busy).
    pub fn admin_refused(&self) {
        self.admin_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Admin-port connections refused so far.
    pub fn admin_refused_total(&self) -> u64 {
        self.admin_refused.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8 * 1024);
        let dirs = [(Direction::Inbound, &self.inbound), (Direction::Outbound, &self.outbound)];
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        header(&mut o, "meshpass_proxy_requests_total", "counter", "HTTP requests received.");
        for (d, m) in &dirs {
            let _ = writeln!(o, "meshpass_proxy_requests_total{{direction=\"{d}\"}} {}", load(&m.requests));
        }
        header(
            &mut o,
            "meshpass_proxy_responses_total",
            "counter",
            "HTTP responses sent downstream, by status code (proxy-generated ones included).",
        );
        for (d, m) in &dirs {
            for (code, c) in m.responses.iter().enumerate() {
                let v = load(c);
                if v > 0 {
                    let _ = writeln!(o, "meshpass_proxy_responses_total{{direction=\"{d}\",code=\"{code}\"}} {v}");
                }
            }
        }
        header(
            &mut o,
            "meshpass_proxy_request_duration_milliseconds",
            "histogram",
            "Time from request head received to response head sent.",
        );
        for (d, m) in &dirs {
            let mut cum = 0;
            for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
                cum += load(&m.latency_buckets[i]);
                let _ = writeln!(
                    o,
                    "meshpass_proxy_request_duration_milliseconds_bucket{{direction=\"{d}\",le=\"{le}\"}} {cum}"
                );
            }
            let count = load(&m.latency_count);
            let _ = writeln!(
                o,
                "meshpass_proxy_request_duration_milliseconds_bucket{{direction=\"{d}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                o,
                "meshpass_proxy_request_duration_milliseconds_sum{{direction=\"{d}\"}} {}",
                load(&m.latency_sum_us) as f64 / 1000.0
            );
            let _ = writeln!(o, "meshpass_proxy_request_duration_milliseconds_count{{direction=\"{d}\"}} {count}");
        }
        header(
            &mut o,
            "meshpass_proxy_received_bytes_total",
            "counter",
            "Bytes received from downstream clients (closed connections).",
        );
        for (d, m) in &dirs {
            let _ = writeln!(o, "meshpass_proxy_received_bytes_total{{direction=\"{d}\"}} {}", load(&m.received));
        }
        header(
            &mut o,
            "meshpass_proxy_sent_bytes_total",
            "counter",
            "Bytes sent to downstream clients (closed connections).",
        );
        for (d, m) in &dirs {
            let _ = writeln!(o, "meshpass_proxy_sent_bytes_total{{direction=\"{d}\"}} {}", load(&m.sent));
        }
        header(
            &mut o,
            "meshpass_proxy_connections_total",
            "counter",
            "Closed downstream connections, by detected protocol.",
        );
        for (d, m) in &dirs {
            let _ = writeln!(
                o,
                "meshpass_proxy_connections_total{{direction=\"{d}\",protocol=\"http\"}} {}",
                load(&m.conns_http)
            );
            let _ = writeln!(
                o,
                "meshpass_proxy_connections_total{{direction=\"{d}\",protocol=\"tcp\"}} {}",
                load(&m.conns_tcp)
            );
            let _ = writeln!(
                o,
                "meshpass_proxy_connections_total{{direction=\"{d}\",protocol=\"http2\"}} {}",
                load(&m.conns_h2)
            );
        }
        header(&mut o, "meshpass_proxy_active_connections", "gauge", "Open downstream connections.");
        for (d, m) in &dirs {
            let _ = writeln!(o, "meshpass_proxy_active_connections{{direction=\"{d}\"}} {}", m.active());
        }
        header(
            &mut o,
            "meshpass_proxy_rejected_connections_total",
            "counter",
            "Connections closed without proxying, by reason.",
        );
        for (d, m) in &dirs {
            let _ = writeln!(
                o,
                "meshpass_proxy_rejected_connections_total{{direction=\"{d}\",reason=\"overflow\"}} {}",
                load(&m.overflow)
            );
            let _ = writeln!(
                o,
                "meshpass_proxy_rejected_connections_total{{direction=\"{d}\",reason=\"no_original_dst\"}} {}",
                load(&m.no_orig_dst)
            );
        }
        header(
            &mut o,
            "meshpass_proxy_grpc_responses_total",
            "counter",
            "gRPC responses sent downstream, by grpc-status (proxy-generated ones included; \"other\" for values outside 0-16).",
        );
        for (d, m) in &dirs {
            for (i, c) in m.grpc.iter().enumerate() {
                let v = load(c);
                if v > 0 {
                    let code = if i == 17 { "other".to_owned() } else { i.to_string() };
                    let _ = writeln!(
                        o,
                        "meshpass_proxy_grpc_responses_total{{direction=\"{d}\",grpc_status=\"{code}\"}} {v}"
                    );
                }
            }
        }
        header(
            &mut o,
            "meshpass_proxy_admin_refused_connections_total",
            "counter",
            "Connections to the admin, readiness and Prometheus ports refused because every slot was busy.",
        );
        let _ = writeln!(o, "meshpass_proxy_admin_refused_connections_total {}", load(&self.admin_refused));
        header(
            &mut o,
            "meshpass_proxy_failed_connections_total",
            "counter",
            "Closed downstream connections that ended in a failure, by Envoy response flag and by who caused it.",
        );
        for (d, m) in &dirs {
            for f in Flag::ALL {
                for s in SOURCES {
                    let v = load(&m.outcomes[f.index()][source_index(s)]);
                    if v > 0 {
                        let _ = writeln!(
                            o,
                            "meshpass_proxy_failed_connections_total{{direction=\"{d}\",response_flags=\"{f}\",source=\"{}\"}} {v}",
                            s.as_str()
                        );
                    }
                }
            }
        }
        o
    }
}

const SOURCES: [Source; 3] = [Source::Downstream, Source::Upstream, Source::Local];

fn source_index(s: Source) -> usize {
    match s {
        Source::Downstream => 0,
        Source::Upstream => 1,
        Source::Local => 2,
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_series() {
        let m = Metrics::default();
        m.dir(Direction::Inbound).request();
        m.dir(Direction::Inbound).response(200, Duration::from_millis(3));
        m.dir(Direction::Outbound).conn_opened();
        let t = m.render();
        assert!(t.contains("meshpass_proxy_requests_total{direction=\"inbound\"} 1"));
        assert!(t.contains("meshpass_proxy_responses_total{direction=\"inbound\",code=\"200\"} 1"));
        assert!(t.contains("meshpass_proxy_request_duration_milliseconds_bucket{direction=\"inbound\",le=\"5\"} 1"));
        assert!(t.contains("meshpass_proxy_request_duration_milliseconds_bucket{direction=\"inbound\",le=\"2.5\"} 0"));
        assert!(t.contains("meshpass_proxy_active_connections{direction=\"outbound\"} 1"));
    }
}
