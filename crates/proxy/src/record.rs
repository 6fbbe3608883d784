//! The connection record behind `GET /connections`: every downstream connection the proxy
//! handled, open ones and a bounded ring of finished ones.
//!
//! It is evidence that a connection did (or did not) pass through the sidecar, so entries are
//! created at accept time — before any protocol work can fail — and finalized exactly once when
//! the connection's last user (including an upgraded tunnel) lets go.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::io::IoStats;
use crate::metrics::Metrics;
use crate::orig_dst::Direction;
use crate::outcome::{Outcome, Source};
use crate::pool::UpstreamInfo;
use crate::sniff::Protocol;
use crate::tls::TlsInfo;

/// One connection as reported by `/connections`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// Monotonic id, unique per proxy instance.
    pub id: u64,
    /// `open` or `closed`.
    pub state: &'static str,
    /// Accept time, milliseconds since the Unix epoch.
    pub start_unix_ms: u64,
    /// Which listener accepted it.
    pub direction: Direction,
    /// The downstream peer.
    pub client_addr: SocketAddr,
    /// The original destination, if it could be recovered.
    pub original_dst: Option<SocketAddr>,
    /// Address the proxy connected to (differs from `original_dst` with an inbound override,
    /// or when the mesh routed it to an endpoint).
    pub upstream_addr: Option<SocketAddr>,
    /// The proxy's own address on the upstream connection (what the upstream sees as client).
    pub upstream_local_addr: Option<SocketAddr>,
    /// `http` or `tcp`; `None` while still sniffing.
    pub protocol: Option<Protocol>,
    /// Last HTTP status sent downstream (0 when none).
    pub last_status: u16,
    /// HTTP requests on this connection.
    pub requests: u64,
    /// How it ended: `ok`, or the failure's detail (e.g. `connection_refused`).
    pub outcome: String,
    /// Envoy's response flag for the failure (`UF`, `DPE`, ...), `-` when none.
    pub response_flags: &'static str,
    /// Who caused the failure, if any.
    pub error_source: Option<Source>,
    /// Bytes received from the client.
    pub bytes_received: u64,
    /// Bytes sent to the client.
    pub bytes_sent: u64,
    /// Lifetime in milliseconds (so far, for open connections).
    pub duration_ms: u64,
    /// The mutual TLS the proxy terminated on this connection (inbound), with the client's
    /// identity; `null` for plaintext.
    pub tls: Option<TlsInfo>,
    /// The TLS the proxy originated towards the upstream, with the server's identity; `null`
    /// for plaintext.
    pub upstream_tls: Option<TlsInfo>,
}

/// Live state of one connection, shared by its tasks.
#[derive(Debug)]
pub struct ConnInfo {
    /// Record id.
    pub id: u64,
    start_unix_ms: u64,
    started: Instant,
    /// Which listener accepted it.
    pub direction: Direction,
    /// The downstream peer.
    pub client_addr: SocketAddr,
    original_dst: Mutex<Option<SocketAddr>>,
    upstream_addr: Mutex<Option<SocketAddr>>,
    upstream_local_addr: Mutex<Option<SocketAddr>>,
    protocol: AtomicU8,
    last_status: AtomicU16,
    requests: AtomicU64,
    outcome: Mutex<Option<Outcome>>,
    tls: Mutex<Option<TlsInfo>>,
    upstream_tls: Mutex<Option<TlsInfo>>,
    /// Byte counters of the downstream socket.
    pub stats: Arc<IoStats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these small locks cannot leave the data inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnInfo {
    /// Set the original destination.
    pub fn set_original_dst(&self, a: Option<SocketAddr>) {
        *lock(&self.original_dst) = a;
    }

    /// Set where the proxy connected.
    pub fn set_upstream(&self, a: SocketAddr) {
        *lock(&self.upstream_addr) = Some(a);
    }

    /// Set where the proxy connected and the TLS it originated there.
    pub fn set_upstream_info(&self, u: &UpstreamInfo) {
        *lock(&self.upstream_addr) = Some(u.addr);
        *lock(&self.upstream_local_addr) = u.local;
        *lock(&self.upstream_tls) = u.tls.clone();
    }

    /// Set the mutual TLS terminated on the downstream connection.
    pub fn set_tls(&self, t: TlsInfo) {
        *lock(&self.tls) = Some(t);
    }

    /// Set the detected protocol.
    pub fn set_protocol(&self, p: Protocol) {
        self.protocol.store(
            match p {
                Protocol::Http => 1,
                Protocol::Tcp => 2,
                Protocol::Http2 => 3,
            },
            Ordering::Relaxed,
        );
    }

    /// The detected protocol, if known.
    pub fn protocol(&self) -> Option<Protocol> {
        match self.protocol.load(Ordering::Relaxed) {
            1 => Some(Protocol::Http),
            2 => Some(Protocol::Tcp),
            3 => Some(Protocol::Http2),
            _ => None,
        }
    }

    /// A request arrived.
    pub fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A response with `code` was sent.
    pub fn set_status(&self, code: u16) {
        self.last_status.store(code, Ordering::Relaxed);
    }

    /// Record how the connection failed; the first failure wins, and counts in the metrics
    /// (labelled by flag and source) when the connection closes.
    pub fn set_outcome(&self, o: Outcome) {
        let mut g = lock(&self.outcome);
        if g.is_none() {
            *g = Some(o);
        }
    }

    /// The recorded failure, if any.
    pub fn outcome(&self) -> Option<Outcome> {
        lock(&self.outcome).clone()
    }

    fn snapshot(&self, state: &'static str) -> ConnectionRecord {
        let (rx, tx) = self.stats.bytes();
        let outcome = lock(&self.outcome).clone();
        ConnectionRecord {
            id: self.id,
            state,
            start_unix_ms: self.start_unix_ms,
            direction: self.direction,
            client_addr: self.client_addr,
            original_dst: *lock(&self.original_dst),
            upstream_addr: *lock(&self.upstream_addr),
            upstream_local_addr: *lock(&self.upstream_local_addr),
            protocol: self.protocol(),
            last_status: self.last_status.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            outcome: outcome
                .as_ref()
                .map(|o| o.detail.to_string())
                .unwrap_or_else(|| if state == "open" { "" } else { "ok" }.to_owned()),
            response_flags: outcome.as_ref().map_or("-", |o| o.flag.as_str()),
            error_source: outcome.as_ref().map(|o| o.source),
            bytes_received: rx,
            bytes_sent: tx,
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            tls: lock(&self.tls).clone(),
            upstream_tls: lock(&self.upstream_tls).clone(),
        }
    }
}

/// Open connections plus a ring of finished ones.
#[derive(Debug)]
pub struct ConnectionLog {
    next_id: AtomicU64,
    capacity: usize,
    open: Mutex<HashMap<u64, Arc<ConnInfo>>>,
    closed: Mutex<VecDeque<ConnectionRecord>>,
}

impl ConnectionLog {
    /// A log remembering `capacity` finished connections.
    pub fn new(capacity: usize) -> Self {
        Self {
            next_id: AtomicU64::new(1),
            capacity,
            open: Mutex::new(HashMap::new()),
            closed: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
        }
    }

    /// Register a new connection.
    /// Also counts the connection as active in `metrics` until the handle's last clone drops.
    pub fn open(self: &Arc<Self>, direction: Direction, client_addr: SocketAddr, metrics: Arc<Metrics>) -> ConnHandle {
        metrics.dir(direction).conn_opened();
        let info = Arc::new(ConnInfo {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            start_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            started: Instant::now(),
            direction,
            client_addr,
            original_dst: Mutex::new(None),
            upstream_addr: Mutex::new(None),
            upstream_local_addr: Mutex::new(None),
            protocol: AtomicU8::new(0),
            last_status: AtomicU16::new(0),
            requests: AtomicU64::new(0),
            outcome: Mutex::new(None),
            tls: Mutex::new(None),
            upstream_tls: Mutex::new(None),
            stats: Arc::new(IoStats::new()),
        });
        lock(&self.open).insert(info.id, info.clone());
        ConnHandle(Arc::new(HandleInner { info, log: self.clone(), metrics }))
    }

    fn close(&self, info: &ConnInfo) {
        lock(&self.open).remove(&info.id);
        let rec = info.snapshot("closed");
        if self.capacity > 0 {
            let mut ring = lock(&self.closed);
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(rec);
        }
    }

    /// Open connections (oldest first), then finished ones (oldest first).
    pub fn snapshot(&self) -> Vec<ConnectionRecord> {
        let mut open: Vec<_> = lock(&self.open).values().map(|i| i.snapshot("open")).collect();
        open.sort_by_key(|r| r.id);
        open.extend(lock(&self.closed).iter().cloned());
        open
    }

    /// Ring capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Owner handle of one live connection: dropping the last clone finalizes the record exactly
/// once (the inner `Drop` runs when the last `Arc` goes, whichever task holds it).
#[derive(Debug, Clone)]
pub struct ConnHandle(Arc<HandleInner>);

#[derive(Debug)]
struct HandleInner {
    info: Arc<ConnInfo>,
    log: Arc<ConnectionLog>,
    metrics: Arc<Metrics>,
}

impl std::ops::Deref for ConnHandle {
    type Target = ConnInfo;
    fn deref(&self) -> &ConnInfo {
        &self.0.info
    }
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        let (rx, tx) = self.info.stats.bytes();
        let m = self.metrics.dir(self.info.direction);
        m.conn_closed(self.info.protocol(), rx, tx);
        if let Some(o) = lock(&self.info.outcome).as_ref() {
            m.outcome(o);
        }
        self.log.close(&self.info);
    }
}
