//! The API/GUI listener and the limits every connection is held to, so that a flood of idle or
//! slow connections cannot make `/healthz`, the API and the GUI unreachable:
//!
//! * **a cap on connections** ([`Limits::max_connections`]). At the cap, a new connection
//!   takes the place of the oldest one that has no request under way (one that sent nothing,
//!   is still trickling its headers, or idles between requests): those hold nothing but a
//!   slot. When every connection has a request under way, the new one is refused at once with
//!   a `503` and the JSON error body, never queued;
//! * **a header-read timeout** ([`Limits::header_read_timeout`]): a request's headers must
//!   arrive within it (hyper's `header_read_timeout`), so a slowloris client is disconnected;
//! * **an idle timeout** ([`Limits::idle_timeout`]): a connection without a request under way
//!   is closed after it — also one that never sends a byte;
//! * **a request timeout** ([`Limits::request_timeout`]): reading the body and answering must
//!   end within it (`408` otherwise), so a body trickled byte by byte holds no slot for long.
//!
//! The body limit (413), the request target and header limits (414, 431) are the router's
//! ([`crate::routes`]). hyper's own buffer limit is set a little above them, so that what the
//! router refuses it refuses in the API's words.

use crate::error::{error_response, ErrorCode};
use crate::model::ErrorBody;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower::ServiceExt;

/// What every connection of the API/GUI listener is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// How long a request's headers may take to arrive.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open without a request under way.
    pub idle_timeout: Duration,
    /// How long reading a request's body and answering it may take.
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// 256 connections (a browser opens a handful; scrapers and CLIs one each), 10 s for the
    /// headers (a slow link needs far less), 60 s idle (browsers keep connections for reuse),
    /// 30 s per request (the API answers within the backend's own 30 s timeout; restarts run
    /// in the background).
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of what the limits did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused at the cap (every slot busy).
    pub refused: AtomicU64,
    /// Connections closed at the cap to make room (no request under way).
    pub evicted: AtomicU64,
    /// Connections closed after the idle timeout.
    pub idle_closed: AtomicU64,
    /// Requests answered 408 after the request timeout.
    pub request_timeouts: AtomicU64,
}

/// One open connection, as the cap sees it.
#[derive(Debug)]
struct Slot {
    /// Requests under way (from the headers' arrival to the answer's last byte).
    busy: AtomicUsize,
    /// When the connection last had no request under way.
    idle_since: Mutex<Instant>,
    /// Told to close (evicted, or the server stops).
    close: Notify,
}

impl Slot {
    fn new() -> Self {
        Slot { busy: AtomicUsize::new(0), idle_since: Mutex::new(Instant::now()), close: Notify::new() }
    }

    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self) {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The open connections, oldest first.
#[derive(Debug, Default)]
struct Registry {
    next: u64,
    slots: BTreeMap<u64, Arc<Slot>>,
}

/// What the cap decides for a new connection.
enum Admit {
    /// Served, in this slot.
    Yes(u64, Arc<Slot>),
    /// Every slot has a request under way.
    Full,
}

impl Registry {
    fn admit(&mut self, max: usize, stats: &ConnStats) -> Admit {
        if self.slots.len() >= max {
            // The longest idle first: it has held its slot for the least.
            let victim = self
                .slots
                .iter()
                .filter(|(_, s)| s.busy.load(Ordering::SeqCst) == 0)
                .min_by_key(|(_, s)| s.idle_since())
                .map(|(id, _)| *id);
            let Some(id) = victim else {
                return Admit::Full;
            };
            if let Some(s) = self.slots.remove(&id) {
                s.close.notify_one();
                stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.next += 1;
        let slot = Arc::new(Slot::new());
        self.slots.insert(self.next, slot.clone());
        Admit::Yes(self.next, slot)
    }
}

/// A response body that keeps its connection's slot busy until it is sent (or dropped).
struct Tracked {
    inner: Body,
    slot: Option<Arc<Slot>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(s) = self.slot.take() {
            s.end();
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            if let Some(s) = self.slot.take() {
                s.end();
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a connection refused at the cap: written at once, then the connection closes.
fn overloaded_bytes(max: usize) -> Vec<u8> {
    let body = serde_json::to_string(&ErrorBody {
        error: ErrorCode::Overloaded.as_str().into(),
        message: format!("the server has {max} connections open, each with a request under way; retry shortly"),
        errors: Vec::new(),
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: \
         1\r\nconnection: close\r\ncache-control: no-store\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `router` on `listener` under `limits` until `shutdown` completes; then stops
/// accepting, asks open connections to finish their request and waits for them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let refusal = Arc::new(overloaded_bytes(limits.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: the listener itself is fine; pause
                // so as not to spin, then go on.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connection tasks as they end.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let admitted = registry.lock().unwrap_or_else(|e| e.into_inner()).admit(limits.max_connections, &stats);
        match admitted {
            Admit::Full => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                let refusal = refusal.clone();
                tasks.spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&refusal)).await;
                    let _ = stream.shutdown().await;
                });
            }
            Admit::Yes(id, slot) => {
                stats.open.fetch_add(1, Ordering::Relaxed);
                let conn = connection(stream, remote, router.clone(), slot, limits, stats.clone(), stop_rx.clone());
                let (registry, stats) = (registry.clone(), stats.clone());
                tasks.spawn(async move {
                    conn.await;
                    registry.lock().unwrap_or_else(|e| e.into_inner()).slots.remove(&id);
                    stats.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One connection: HTTP/1.1 with the header-read timeout, closed when idle too long, when
/// evicted, or (after its request) when the server stops.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    slot: Arc<Slot>,
    limits: Limits,
    stats: Arc<ConnStats>,
    mut stop: watch::Receiver<bool>,
) {
    let svc_slot = slot.clone();
    let svc_stats = stats.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (router, slot, stats) = (router.clone(), svc_slot.clone(), svc_stats.clone());
        slot.start();
        async move {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(remote));
            let resp = match tokio::time::timeout(limits.request_timeout, router.oneshot(req)).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    stats.request_timeouts.fetch_add(1, Ordering::Relaxed);
                    error_response(
                        StatusCode::REQUEST_TIMEOUT,
                        ErrorCode::RequestTimeout,
                        format!("the request was not read and answered within {}s", limits.request_timeout.as_secs()),
                    )
                }
            };
            let (parts, body) = resp.into_parts();
            Ok::<_, std::convert::Infallible>(Response::from_parts(parts, Tracked { inner: body, slot: Some(slot) }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(crate::server::MAX_HEADER_BYTES + crate::server::MAX_URI_BYTES + 16 * 1024)
        .max_headers(crate::server::MAX_HEADERS * 2);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        // Idle: close at the end of the idle period. Busy: look again a period later (the
        // request timeout ends a request long before).
        let wake = if slot.busy.load(Ordering::SeqCst) == 0 {
            slot.idle_since() + limits.idle_timeout
        } else {
            Instant::now() + limits.idle_timeout
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            () = slot.close.notified() => return,
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep_until(wake) => {
                if slot.busy.load(Ordering::SeqCst) == 0 && slot.idle_since().elapsed() >= limits.idle_timeout {
                    stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_makes_room_from_idle_connections_oldest_idle_first_and_refuses_when_all_are_busy() {
        let stats = ConnStats::default();
        let mut r = Registry::default();
        let mut slots = Vec::new();
        for _ in 0..3 {
            let Admit::Yes(id, s) = r.admit(3, &stats) else { panic!("room") };
            slots.push((id, s));
            std::thread::sleep(Duration::from_millis(2));
        }
        // The first is busy; the second has been idle longest of the others.
        slots[0].1.start();
        let Admit::Yes(..) = r.admit(3, &stats) else { panic!("an idle one makes room") };
        assert!(!r.slots.contains_key(&slots[1].0) && r.slots.contains_key(&slots[0].0));
        assert_eq!(stats.evicted.load(Ordering::Relaxed), 1);
        for s in r.slots.values() {
            s.start();
        }
        assert!(matches!(r.admit(3, &stats), Admit::Full), "every slot busy: refused");
        assert_eq!(r.slots.len(), 3);
    }

    #[test]
    fn the_refusal_is_a_complete_json_answer() {
        let text = String::from_utf8(overloaded_bytes(7)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 ") && head.contains(&format!("content-length: {}", body.len())));
        let b: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(b["error"], "overloaded");
    }
}
