//! Admin endpoints, Envoy/Istio style:
//! - admin (15000): `GET /config_dump` (effective config as JSON), `GET /connections`
//!   (open + recently finished connections as JSON; `?direction=inbound|outbound`,
//!   `?limit=N` for the newest N), plus `/stats/prometheus` and `/healthz/ready`;
//! - readiness (15021): `GET /healthz/ready` → 200 `ready`, 503 while draining;
//! - Prometheus (15090): `GET /stats/prometheus`.
//!
//! Each listener holds at most `admin_max_connections` connections. A client gets a bounded
//! time to send its request head (`admin_header_timeout`, which also bounds the pause between
//! keep-alive requests) and a connection that moves no byte for `admin_idle_timeout` is
//! closed. When a listener is full, the oldest connection that is not in the middle of a
//! request is closed to make room, and if every one is busy the new connection is refused at
//! once: a flood of idle or slow connections cannot keep the kubelet's readiness probe out.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::io::{IoStats, Metered};
use crate::{Phase, Shared};

/// One admin connection as the listener's table sees it.
#[derive(Debug, Default)]
struct AdminConn {
    /// A request is being served (not evictable).
    busy: AtomicBool,
    /// Told to close (evicted for a newer connection).
    evict: Notify,
}

/// The open connections of one admin listener, oldest first.
#[derive(Debug, Default)]
struct Table(Mutex<VecDeque<Arc<AdminConn>>>);

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<AdminConn>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit a new connection: `None` when the table is full of busy connections.
    fn admit(&self, cap: usize) -> Option<Arc<AdminConn>> {
        let mut t = self.lock();
        if t.len() >= cap {
            let idle = t.iter().position(|c| !c.busy.load(Ordering::Acquire))?;
            if let Some(old) = t.remove(idle) {
                old.evict.notify_one();
            }
        }
        let c = Arc::new(AdminConn::default());
        t.push_back(c.clone());
        Some(c)
    }

    fn remove(&self, c: &Arc<AdminConn>) {
        self.lock().retain(|x| !Arc::ptr_eq(x, c));
    }
}

/// Which admin listener a request arrived on; decides the routes it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AdminPort {
    /// Everything.
    Admin,
    /// Readiness only.
    Readiness,
    /// Prometheus only.
    Prometheus,
}

pub(crate) async fn serve(listener: TcpListener, port: AdminPort, shared: Arc<Shared>) {
    let mut drain = shared.drain.clone();
    let table = Arc::new(Table::default());
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Admin stays up while draining (readiness must be able to say "not ready").
            _ = crate::phase_reached(&mut drain, |p| p == Phase::Stopped) => return,
        };
        let cfg = &shared.config;
        let Some(conn) = table.admit(cfg.admin_max_connections) else {
            // Full of connections in the middle of a request: refuse at once (RST), so the
            // client learns now instead of waiting in the backlog.
            shared.metrics.admin_refused();
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            continue;
        };
        let (shared, table) = (shared.clone(), table.clone());
        let (header_timeout, idle) = (cfg.admin_header_timeout, cfg.admin_idle_timeout);
        tokio::spawn(async move {
            let c = conn.clone();
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                let c = c.clone();
                async move {
                    // Busy from the request's head to its response's head: small bodies, so
                    // the connection goes idle (evictable) right after.
                    c.busy.store(true, Ordering::Release);
                    let r = route(&shared, port, &req);
                    c.busy.store(false, Ordering::Release);
                    Ok::<_, Infallible>(r)
                }
            });
            let stats = Arc::new(IoStats::new());
            let io = Metered::new(stream, stats.clone());
            let serve = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), svc);
            tokio::select! {
                _ = serve => {}
                _ = conn.evict.notified() => {}
                _ = crate::io::idle_watchdog(stats, idle) => {}
            }
            table.remove(&conn);
        });
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(v) {
        Ok(b) => reply(StatusCode::OK, "application/json", b),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("json: {e}\n")),
    }
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// What the mesh told this sidecar, and its identity.
fn mesh_dump(shared: &Shared) -> serde_json::Value {
    let cfg = shared.mesh.config();
    let tls = shared.mesh.tls.as_ref().map(|t| {
        let expires = t.not_after().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        serde_json::json!({ "identity": t.identity().to_string(), "certificate_expires_unix": expires })
    });
    serde_json::json!({ "config": cfg.source, "tls": tls })
}

fn route(shared: &Shared, port: AdminPort, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let path = req.uri().path();
    let allowed = match port {
        AdminPort::Admin => true,
        AdminPort::Readiness => path == "/healthz/ready",
        AdminPort::Prometheus => path == "/stats/prometheus",
    };
    if !allowed {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    match path {
        "/healthz/ready" | "/ready" => {
            if *shared.drain.borrow() == Phase::Running {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            }
        }
        "/stats/prometheus" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            {
                let mut text = shared.metrics.render();
                shared.mesh.metrics.render(&mut text);
                text
            },
        ),
        "/config_dump" => json(&serde_json::json!({
            "config": &shared.config,
            "bound": &shared.bound,
            "pool_idle_connections": shared.pool.idle_count(),
            "mesh": mesh_dump(shared),
        })),
        "/connections" => {
            let dir = query_param(req, "direction");
            let mut recs: Vec<_> = shared
                .log
                .snapshot()
                .into_iter()
                .filter(|r| dir.is_none_or(|d| r.direction.as_str() == d))
                .collect();
            if let Some(n) = query_param(req, "limit").and_then(|v| v.parse::<usize>().ok()) {
                let skip = recs.len().saturating_sub(n);
                recs.drain(..skip);
            }
            json(&serde_json::json!({
                "capacity": shared.log.capacity(),
                "connections": recs,
            }))
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "meshpass proxy admin\n  /config_dump\n  /connections[?direction=inbound|outbound&limit=N]\n  /stats/prometheus\n  /healthz/ready\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_evicts_the_oldest_idle_connection_or_refuses() {
        let t = Table::default();
        let a = t.admit(2).unwrap();
        let b = t.admit(2).unwrap();
        a.busy.store(true, Ordering::Release);
        // Full: `b` is the oldest idle one and makes room.
        let c = t.admit(2).unwrap();
        assert_eq!(t.lock().len(), 2);
        assert!(t.lock().iter().all(|x| !Arc::ptr_eq(x, &b)));
        // Everything busy: refused.
        c.busy.store(true, Ordering::Release);
        assert!(t.admit(2).is_none());
        t.remove(&a);
        assert!(t.admit(2).is_some());
    }
}
