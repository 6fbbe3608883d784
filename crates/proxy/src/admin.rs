//! Admin endpoints, Envoy/Istio style:
//! - admin (15000): `GET /config_dump` (effective config as JSON), `GET /connections`
//!   (open + recently finished connections as JSON; `?direction=inbound|outbound`,
//!   `?limit=N` for the newest N), plus `/stats/prometheus` and `/healthz/ready`;
//! - readiness (15021): `GET /healthz/ready` → 200 `ready`, 503 while draining;
//! - Prometheus (15090): `GET /stats/prometheus`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::{Phase, Shared};

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
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, port, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
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
