//! HTTP/1.x proxying with hyper: one server connection per downstream connection, requests
//! forwarded over pooled upstream client connections, Envoy-compatible headers.
//!
//! Header handling follows Envoy as Istio configures it (shared/reference peers.md §4):
//! - responses: `server` overwritten (`istio-envoy` inbound, `envoy` outbound; configurable or
//!   pass-through), `x-envoy-upstream-service-time` in milliseconds, and on inbound
//!   `x-envoy-decorator-operation: <fqdn>:<port>/*` when the port belongs to a known service;
//! - requests: `x-request-id` generated when absent, `x-forwarded-proto: http` when absent,
//!   `x-envoy-attempt-count` on outbound (Istio enables it on outbound routes only);
//! - hop-by-hop headers are dropped in both directions and bodies re-framed by hyper, so an
//!   HTTP/1.0 upstream answer (close-delimited) reaches an HTTP/1.1 client chunked and an
//!   HTTP/1.0 client close-delimited; the upstream always gets HTTP/1.1, as from Envoy.
//! - `Expect: 100-continue` is answered by the proxy itself (hyper sends `100 Continue` when
//!   the body is first polled, i.e. when the upstream is ready for it) and not forwarded,
//!   which is Envoy's default (`proxy_100_continue: false`).

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, SERVER, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::{Checkin, RequestBody, ResponseBody};
use crate::error::UpstreamError;
use crate::orig_dst::Direction;
use crate::pool::PoolKey;
use crate::record::ConnHandle;
use crate::{Phase, Shared};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_DECORATOR_OPERATION: HeaderName = HeaderName::from_static("x-envoy-decorator-operation");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Per-connection context shared by all requests on one downstream connection.
#[derive(Debug)]
pub(crate) struct HttpCtx {
    pub shared: Arc<Shared>,
    pub direction: Direction,
    /// Where requests go, or why they cannot.
    pub target: Result<PoolKey, String>,
    pub conn: ConnHandle,
    /// `server` header value for this direction (`None`: pass the upstream's through).
    pub server_header: Option<HeaderValue>,
    /// Inbound decorator for the original destination port.
    pub decorator: Option<HeaderValue>,
}

/// Serve one downstream HTTP/1 connection until it closes, drains or is forced down.
pub(crate) async fn serve<I>(io: I, ctx: Arc<HttpCtx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &ctx.shared.config;
    let mut drain = ctx.shared.drain.clone();
    let mut force = ctx.shared.drain.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_request_header_bytes.max(8192))
        .max_headers(cfg.max_headers)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    let res = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = crate::phase_reached(&mut drain, |p| p != Phase::Running), if !draining => {
                // Finish the in-flight response, then close (hyper adds `connection: close`).
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = crate::phase_reached(&mut force, |p| p >= Phase::Force), if draining => {
                ctx.conn.set_outcome("drain_timeout");
                return;
            }
        }
    };
    if let Err(e) = res {
        let what = if e.is_timeout() {
            "header_read_timeout".to_owned()
        } else if e.is_parse() || e.is_parse_too_large() {
            format!("bad_request: {e}")
        } else {
            format!("connection_error: {e}")
        };
        tracing::debug!(conn = ctx.conn.id, error = %e, "downstream connection ended");
        ctx.conn.set_outcome(what);
    }
}

async fn handle(ctx: &HttpCtx, req: Request<Incoming>) -> Response<ResponseBody> {
    let start = Instant::now();
    let m = ctx.shared.metrics.dir(ctx.direction);
    m.request();
    ctx.conn.add_request();
    let resp = match &ctx.target {
        Err(why) => {
            let mut r =
                local_reply(ctx, StatusCode::BAD_GATEWAY, format!("meshpass: no original destination: {why}\n"));
            r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            r
        }
        Ok(key) => match forward(ctx, *key, req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(conn = ctx.conn.id, error = %e, "upstream failure");
                ctx.conn.set_outcome(e.kind());
                let body = match &e {
                    UpstreamError::ResponseTimeout { .. } => "upstream request timeout\n".to_owned(),
                    _ => format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: {}: {e}\n",
                        e.kind()
                    ),
                };
                local_reply(ctx, e.status(), body)
            }
        },
    };
    let code = resp.status().as_u16();
    m.response(code, start.elapsed());
    ctx.conn.set_status(code);
    resp
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(UPGRADE) && connection_has(h, "upgrade")
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(CONNECTION)
        .iter()
        .any(|v| v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false))
}

/// The fixed hop-by-hop names, as bits (`Connection` may name further ones).
const HOP_CONNECTION: u8 = 1;
const HOP_UPGRADE: u8 = 2;

fn hop_by_hop_bit(n: &HeaderName) -> u8 {
    // Standard names compare as enum tags, so this is a handful of cheap comparisons.
    if n == CONNECTION {
        HOP_CONNECTION
    } else if n == UPGRADE {
        HOP_UPGRADE
    } else if n == TE {
        4
    } else if n == TRAILER {
        8
    } else if n == TRANSFER_ENCODING {
        16
    } else if n == KEEP_ALIVE {
        32
    } else if n == PROXY_CONNECTION {
        64
    } else {
        0
    }
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1) — `Connection` and what it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade` —
/// except the upgrade pair while an upgrade is being negotiated.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Hot path: one pass over the (few) names finds which fixed ones are present; only those
    // are removed (a hashed `remove` per absent name cost more than the rest of this).
    let present = h.keys().fold(0u8, |acc, k| acc | hop_by_hop_bit(k));
    if present & HOP_CONNECTION != 0 {
        // Names listed in `Connection`; `keep-alive` and `upgrade` are handled with the fixed
        // names below, so the common `Connection: keep-alive` allocates nothing.
        let named: Vec<HeaderName> = h
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("upgrade"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(&n);
        }
        h.remove(CONNECTION);
    }
    if keep_upgrade {
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & HOP_UPGRADE != 0 {
        h.remove(UPGRADE);
    }
    if present & !(HOP_CONNECTION | HOP_UPGRADE) != 0 {
        h.remove(&KEEP_ALIVE);
        h.remove(&PROXY_CONNECTION);
        h.remove(TE);
        h.remove(TRAILER);
        h.remove(TRANSFER_ENCODING);
    }
}

async fn forward(
    ctx: &HttpCtx,
    key: PoolKey,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let cfg = &ctx.shared.config;
    let upgrade = is_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if parts.headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")) {
        parts.headers.remove(EXPECT);
    }
    // `entry` hashes each name once (contains_key + insert would hash twice).
    if let Entry::Vacant(v) = parts.headers.entry(&X_REQUEST_ID) {
        v.insert(request_id());
    }
    if let Entry::Vacant(v) = parts.headers.entry(&X_FORWARDED_PROTO) {
        v.insert(HeaderValue::from_static("http"));
    }
    if ctx.direction == Direction::Outbound && cfg.envoy_debug_headers {
        parts.headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from_static("1"));
    }
    parts.version = Version::HTTP_11;
    let (body, request_done) = RequestBody::new(body);
    let mut req = Request::from_parts(parts, body);

    let pool = &ctx.shared.pool;
    let (mut tx, mut reused) = pool.get(key).await?;
    ctx.conn.set_upstream(key.dst);
    let sent_at = Instant::now();
    let mut resp = loop {
        let fut = tx.try_send_request(req);
        let res = match cfg.response_timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| UpstreamError::ResponseTimeout { addr: key.dst, timeout: t })?,
            None => fut.await,
        };
        match res {
            Ok(r) => break r,
            Err(mut e) => {
                // A pooled connection the upstream closed while idle: the request was never
                // written, so retrying it on a fresh connection is safe (hyper hands it back).
                if reused {
                    if let Some(r) = e.take_message() {
                        req = r;
                        tx = pool.connect(key).await?;
                        reused = false;
                        continue;
                    }
                }
                return Err(UpstreamError::Reset { addr: key.dst, source: e.into_error() });
            }
        }
    };
    let service_ms = sent_at.elapsed().as_millis();

    let switching = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut resp));
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    decorate_response(ctx, &mut parts.headers, Some(service_ms));
    parts.version = Version::HTTP_11;

    let body = match (downstream_upgrade, upstream_upgrade) {
        (Some(down), Some(up)) => {
            drop(tx);
            spawn_tunnel(ctx, down, up);
            ResponseBody::empty()
        }
        _ => ResponseBody::Upstream {
            inner: body,
            checkin: Some(Checkin { pool: pool.clone(), key, sender: tx, request_done }),
            conn: ctx.conn.clone(),
        },
    };
    Ok(Response::from_parts(parts, body))
}

/// Splice the two upgraded connections (WebSocket etc.) until both sides close.
fn spawn_tunnel(ctx: &HttpCtx, down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    let conn = ctx.conn.clone();
    let idle = ctx.shared.config.idle_timeout;
    let mut drain = ctx.shared.drain.clone();
    tokio::spawn(async move {
        let (d, u) = tokio::join!(down, up);
        let (d, u) = match (d, u) {
            (Ok(d), Ok(u)) => (d, u),
            (Err(e), _) | (_, Err(e)) => {
                conn.set_outcome(format!("upgrade_failed: {e}"));
                return;
            }
        };
        let mut d = TokioIo::new(d);
        let mut u = TokioIo::new(u);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut d, &mut u) => {
                if let Err(e) = r {
                    conn.set_outcome(format!("tunnel_error: {e}"));
                }
            }
            _ = crate::io::idle_watchdog(conn.stats.clone(), idle) => conn.set_outcome("idle_timeout"),
            _ = crate::phase_reached(&mut drain, |p| p >= Phase::Force) => conn.set_outcome("drain_timeout"),
        }
        // `conn` drops here: the record closes when the tunnel ends, not at the 101.
    });
}

fn decorate_response(ctx: &HttpCtx, h: &mut HeaderMap, service_ms: Option<u128>) {
    if let Some(s) = &ctx.server_header {
        h.insert(SERVER, s.clone());
    }
    if let Some(ms) = service_ms {
        if ctx.shared.config.envoy_debug_headers {
            h.insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), service_time_value(ms));
        }
    }
    if let Some(d) = &ctx.decorator {
        h.insert(X_ENVOY_DECORATOR_OPERATION.clone(), d.clone());
    }
}

/// `x-envoy-upstream-service-time` value: the usual small values come from a table built once
/// (a clone is a reference-count bump), larger ones are formatted.
fn service_time_value(ms: u128) -> HeaderValue {
    const CACHED: usize = 100;
    static SMALL: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    match usize::try_from(ms) {
        Ok(i) if i < CACHED => SMALL.get_or_init(|| (0..CACHED).map(HeaderValue::from).collect())[i].clone(),
        _ => HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX)),
    }
}

/// A proxy-generated response: short text body saying why, Envoy-style headers.
fn local_reply(ctx: &HttpCtx, status: StatusCode, body: String) -> Response<ResponseBody> {
    let body = Bytes::from(body);
    let mut r = Response::new(ResponseBody::Local(None));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(s) = &ctx.server_header {
        h.insert(SERVER, s.clone());
    }
    *r.body_mut() = ResponseBody::local(body);
    r
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        // Per-thread seed from std's randomly keyed hasher: request ids need uniqueness,
        // not cryptographic strength, and this avoids a dependency and a syscall per id.
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        h.finish() | 1
    });
}

fn next_u64() -> u64 {
    RNG.with(|s| {
        // splitmix64
        let mut z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A random UUIDv4 string, as Envoy's `x-request-id`: hex digits written straight into a stack
/// buffer (formatting machinery and a temporary `String` cost several times more).
fn request_id() -> HeaderValue {
    let hi = (next_u64() & 0xffff_ffff_ffff_0fff) | 0x4000;
    let lo = (next_u64() & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&uuid_text(hi, lo)).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// `hi`/`lo` as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (lowercase hex).
fn uuid_text(hi: u64, lo: u64) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    // 8-4-4-4-12: nibbles of `hi` then `lo`, most significant first, skipping the dashes.
    let mut pos = 0;
    for (word, groups) in [(hi, &[8usize, 4, 4][..]), (lo, &[4usize, 12][..])] {
        let mut shift = 64;
        for &n in groups {
            for _ in 0..n {
                shift -= 4;
                out[pos] = HEX[((word >> shift) & 0xf) as usize];
                pos += 1;
            }
            pos += 1; // dash (the last one falls off the end)
        }
    }
    out
}

/// Where the connection's requests go, given its original destination.
pub(crate) fn upstream_key(shared: &Shared, direction: Direction, orig: SocketAddr) -> PoolKey {
    let cfg = &shared.config;
    match direction {
        Direction::Outbound => PoolKey { dst: orig, src: None },
        Direction::Inbound => {
            let ip = cfg.inbound_upstream_override.unwrap_or(orig.ip());
            let dst = SocketAddr::new(ip, orig.port());
            let src = if dst.is_ipv4() {
                cfg.inbound_source_v4.map(Into::into)
            } else {
                cfg.inbound_source_v6.map(Into::into)
            };
            PoolKey { dst, src }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-foo"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("x-bar", HeaderValue::from_static("2"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-bar"));

        // Names listed in Connection go even when they are not fixed hop-by-hop ones; the
        // keep-alive and upgrade tokens remove those headers too.
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, X-Secret, upgrade"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert("x-keep", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);

        // Nothing hop-by-hop: untouched.
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);

        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn request_ids_look_like_uuid_v4() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        let dashes: Vec<usize> = s.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23]);
        assert!(s.bytes().all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    }

    #[test]
    fn request_id_matches_the_format_reference() {
        // Same layout as the former `format!`-based implementation.
        let (hi, lo) = (0x0123_4567_89ab_4def_u64, 0x8fed_cba9_8765_4321_u64);
        let want = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0xffff,
            lo >> 48,
            lo & 0xffff_ffff_ffff
        );
        assert_eq!(want, "01234567-89ab-4def-8fed-cba987654321");
        assert_eq!(&uuid_text(hi, lo)[..], want.as_bytes());
    }

    #[test]
    fn service_time_values() {
        assert_eq!(service_time_value(0), "0");
        assert_eq!(service_time_value(7), "7");
        assert_eq!(service_time_value(99), "99");
        assert_eq!(service_time_value(100), "100");
        assert_eq!(service_time_value(123_456), "123456");
    }
}
