//! HTTP/1.x proxying with hyper: one server connection per downstream connection, requests
//! forwarded over pooled upstream client connections, Envoy-compatible headers.
//!
//! Header handling follows Envoy as Istio configures it:
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

// tokio's clock (the same as `std`'s outside paused-time tests), so deadlines computed from
// these instants agree with the timer wheel.
use tokio::time::Instant;

use bytes::Bytes;
use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, SERVER, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::{grpc_status, Checkin, GrpcWatch, RequestBody, ResponseBody};
use crate::error::UpstreamError;
use crate::fast::Handoff;
use crate::gate::GateState;
use crate::orig_dst::Direction;
use crate::outcome::{Flag, Outcome};
use crate::pool::PoolKey;
use crate::record::ConnHandle;
use crate::timer::{ConnTimer, LazyTimer};
use crate::{Phase, Shared};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_DECORATOR_OPERATION: HeaderName = HeaderName::from_static("x-envoy-decorator-operation");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

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
    /// The response timeout's timer, reused by every request of the connection.
    pub response_timer: LazyTimer,
    /// Whether the connection record has its upstream address yet.
    pub upstream_noted: AtomicBool,
    /// What the HTTP/1 gate in front of hyper found ([`crate::gate`]).
    pub gate: Arc<GateState>,
    /// Requests go to the upstream over HTTP/2.
    pub upstream_h2: bool,
    /// The downstream connection is HTTP/2 (its requests run concurrently, so the
    /// connection-wide [`LazyTimer`] cannot serve them).
    pub downstream_h2: bool,
    /// What the HTTP/1 fast lane left for the first request hyper reads ([`crate::fast`]).
    pub handoff: Mutex<Option<Handoff>>,
    /// Whether `handoff` is set (read without the lock on every request).
    pub handoff_set: AtomicBool,
}

impl HttpCtx {
    /// Leave `h` for the next request the hyper path forwards.
    pub(crate) fn set_handoff(&self, h: Handoff) {
        *self.handoff.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        self.handoff_set.store(true, Ordering::Release);
    }

    fn take_handoff(&self) -> Option<Handoff> {
        if !self.handoff_set.load(Ordering::Acquire) {
            return None;
        }
        self.handoff_set.store(false, Ordering::Release);
        self.handoff.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Drives a downstream connection to its end, asking it once to wind down
/// (`graceful_shutdown`) when the sidecar starts draining. `None` when the drain timeout ran
/// out first: the outcome is recorded as a local reset and the caller drops the connection.
async fn serve_until_drained<C: std::future::Future>(
    mut conn: std::pin::Pin<&mut C>,
    ctx: &HttpCtx,
    graceful_shutdown: impl Fn(std::pin::Pin<&mut C>),
) -> Option<C::Output> {
    let mut drain = ctx.shared.drain.clone();
    let mut force = ctx.shared.drain.clone();
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => return Some(r),
            _ = crate::phase_reached(&mut drain, |p| p != Phase::Running), if !draining => {
                draining = true;
                graceful_shutdown(conn.as_mut());
            }
            _ = crate::phase_reached(&mut force, |p| p >= Phase::Force), if draining => {
                ctx.conn.set_outcome(Outcome::new(Flag::LocalReset, "drain_timeout"));
                return None;
            }
        }
    }
}

/// Serve one downstream HTTP/2 connection (prior knowledge) until it closes, drains (a
/// `GOAWAY`, then in-flight streams finish) or is forced down.
pub(crate) async fn serve_h2<I>(io: I, ctx: Arc<HttpCtx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &ctx.shared.config;
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handle_h2(svc_ctx.clone(), req));
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .initial_stream_window_size(cfg.h2.stream_window)
        .initial_connection_window_size(cfg.h2.connection_window)
        .max_concurrent_streams(cfg.h2.max_concurrent_streams)
        .max_header_list_size(u32::try_from(cfg.max_request_header_bytes).unwrap_or(u32::MAX))
        // Rapid-reset protection: a client that opens and resets streams faster than they
        // are served is cut off.
        .max_pending_accept_reset_streams(Some(100))
        .max_local_error_reset_streams(Some(1024))
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Draining sends GOAWAY: no new streams; the ones in flight finish.
    let Some(res) = serve_until_drained(conn, &ctx, |c| c.graceful_shutdown()).await else { return };
    if let Err(e) = res {
        let outcome = if e.is_timeout() {
            Outcome::new(Flag::StreamIdleTimeout, "timeout").with_source(crate::outcome::Source::Downstream)
        } else {
            Outcome::new(Flag::DownstreamProtocolError, format!("http2: {e}"))
        };
        tracing::debug!(conn = ctx.conn.id, error = %e, "downstream HTTP/2 connection ended");
        ctx.conn.set_outcome(outcome);
    }
}

/// One request of an HTTP/2 client: what the h2 codec lets through but Envoy's refuses resets
/// the stream (hyper resets it with the code of the `h2::Error` the service returns), the
/// `cookie` fields a client may split are joined as RFC 9113 §8.2.3 requires, and the rest is
/// [`handle`]d.
async fn handle_h2(ctx: Arc<HttpCtx>, mut req: Request<Incoming>) -> Result<Response<ResponseBody>, h2::Error> {
    if let Some((reason, details)) = h2_refusal(&req, ctx.shared.config.max_headers) {
        tracing::debug!(conn = ctx.conn.id, details, "HTTP/2 request refused");
        ctx.conn.set_outcome(Outcome::new(Flag::DownstreamProtocolError, details));
        return Err(h2::Error::from(reason));
    }
    join_cookies(req.headers_mut());
    match handle(ctx, req).await {
        Ok(r) => Ok(r),
        Err(never) => match never {},
    }
}

/// Why Envoy's HTTP/2 codec would refuse a request the h2 crate accepted, as the stream's
/// reset code and the details Envoy logs: no `:authority` and no `Host` (a malformed request,
/// RFC 9113 §8.3.1), or more fields than the limit (Envoy resets such a stream).
fn h2_refusal(req: &Request<Incoming>, max_headers: usize) -> Option<(h2::Reason, &'static str)> {
    if req.uri().authority().is_none() && !req.headers().contains_key(http::header::HOST) {
        return Some((h2::Reason::PROTOCOL_ERROR, "http2.missing_host_header"));
    }
    if req.headers().len() > max_headers {
        return Some((h2::Reason::INTERNAL_ERROR, "http2.too_many_headers"));
    }
    None
}

/// Join repeated `cookie` fields with `; ` (RFC 9113 §8.2.3: an HTTP/2 client may split the
/// field; HTTP/1.1 and Envoy's upstreams get one).
fn join_cookies(h: &mut HeaderMap) {
    let mut all = h.get_all(http::header::COOKIE).iter();
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in h.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(http::header::COOKIE, v);
    }
}

/// A gRPC deadline as Envoy reads `grpc-timeout` (RFC-less gRPC wire spec: 1-8 digits and a
/// unit `H`, `M`, `S`, `m`, `u` or `n`), in whole milliseconds; `None` when absent, malformed
/// or below a millisecond (no deadline).
pub(crate) fn grpc_timeout_ms(v: &[u8]) -> Option<u64> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let ms = match unit[0] {
        b'H' => n * 3_600_000,
        b'M' => n * 60_000,
        b'S' => n * 1000,
        b'm' => n,
        b'u' => n / 1000,
        b'n' => n / 1_000_000,
        _ => return None,
    };
    (ms > 0).then_some(ms)
}

/// `grpc-timeout` as Envoy's router rewrites it for the upstream: milliseconds, or a coarser
/// unit when the value would not fit in 8 digits.
pub(crate) fn grpc_timeout_value(ms: u64) -> String {
    const MAX: u64 = 99_999_999;
    let (mut t, mut unit) = (ms, 'm');
    for (div, next) in [(1000, 'S'), (60, 'M'), (60, 'H')] {
        if t <= MAX {
            break;
        }
        t /= div;
        unit = next;
    }
    format!("{}{unit}", t.min(MAX))
}

/// Serve one downstream HTTP/1 connection until it closes, drains or is forced down.
pub(crate) async fn serve<I>(io: I, ctx: Arc<HttpCtx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &ctx.shared.config;
    let svc_ctx = ctx.clone();
    // `handle` is the service future itself (no wrapping `async` block): every level of
    // nesting moves the whole inner future once per request.
    let svc = service_fn(move |req| handle(svc_ctx.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        // One header-read timer per connection instead of a fresh one per request (`timer`).
        .timer(ConnTimer::new())
        // Small heads and bodies: copying them into one buffer and one `write` is cheaper
        // than building an iovec per write.
        .writev(false)
        .header_read_timeout(cfg.header_read_timeout)
        // The gate ends the stream hyper reads at a refused request: hyper must still answer
        // the requests before it (then the gate writes the refusal).
        .half_close(true)
        .max_buf_size(cfg.max_request_header_bytes.max(8192))
        .max_headers(cfg.max_headers)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    // Draining finishes the in-flight response, then closes (hyper adds `connection: close`).
    let Some(res) = serve_until_drained(conn, &ctx, |c| c.graceful_shutdown()).await else { return };
    if let Some(r) = ctx.gate.rejected() {
        // The gate wrote Envoy's reply during hyper's shutdown; count it like a response.
        let flag = if r.is_protocol_error() { Flag::DownstreamProtocolError } else { Flag::NoRoute };
        let m = ctx.shared.metrics.dir(ctx.direction);
        m.request();
        m.response(r.status, std::time::Duration::ZERO);
        ctx.conn.add_request();
        ctx.conn.set_status(r.status);
        let outcome = Outcome::new(flag, r.details);
        ctx.shared.access_log.local(ctx.direction, r.status, &outcome);
        ctx.conn.set_outcome(outcome);
    }
    if let Err(e) = res {
        let outcome = if e.is_timeout() {
            Outcome::new(Flag::StreamIdleTimeout, "header_read_timeout").with_source(crate::outcome::Source::Downstream)
        } else if e.is_parse() || e.is_parse_too_large() {
            Outcome::new(Flag::DownstreamProtocolError, format!("bad_request: {e}"))
        } else {
            Outcome::new(Flag::DownstreamConnectionTermination, format!("connection_error: {e}"))
        };
        tracing::debug!(conn = ctx.conn.id, error = %e, "downstream connection ended");
        ctx.conn.set_outcome(outcome);
    }
}

/// `?` for the labelled forwarding block in [`handle`].
macro_rules! or_break {
    ($label:lifetime, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => break $label Err(e),
        }
    };
}

/// One request: forward it upstream (Envoy's request/response header handling, the pool,
/// the response timeout) or answer it locally, and count it.
async fn handle(ctx: Arc<HttpCtx>, req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    let ctx = &*ctx;
    let start = Instant::now();
    // Set when the upstream's response headers arrived (saves reading the clock again).
    let mut done_at = None;
    let m = ctx.shared.metrics.dir(ctx.direction);
    m.request();
    ctx.conn.add_request();
    // Kept for the access log (the request itself moves upstream).
    let log = ctx.shared.access_log.enabled().then(|| crate::access_log::RequestLine::of(&req));
    let grpc_request = is_grpc(req.headers());
    let mut failure: Option<Outcome> = None;
    let mut req = req;
    // The target becomes origin-form below; an HTTP/2 upstream still gets the scheme.
    let https = req.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
    let target_refused = prepare_target(&mut req);
    let resp = match (&ctx.target, target_refused) {
        (_, Some((status, details, close))) => {
            failure = Some(Outcome::new(Flag::DownstreamProtocolError, details));
            let mut r = empty_reply(ctx, status);
            if close {
                r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
        (Err(why), None) => {
            failure = Some(Outcome::new(Flag::NoRoute, format!("no_original_dst: {why}")));
            let mut r =
                local_reply(ctx, StatusCode::BAD_GATEWAY, format!("meshpass: no original destination: {why}\n"));
            r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            r
        }
        (Ok(key), None) => {
            // The forwarding is written inline (not an `async fn` awaited here): a nested
            // future is moved as a whole into its parent's state, several times per request.
            let key = *key;
            let forwarded: Result<(Response<ResponseBody>, Instant), UpstreamError> = 'forward: {
                let cfg = &ctx.shared.config;
                let scan = Scan::of(req.headers());
                let method = req.method().clone();
                let body_empty = hyper::body::Body::is_end_stream(req.body());
                // The gate let through only WebSocket upgrades and `h2c` offers; the latter is
                // served as plain HTTP/1.1 (Envoy drops it), its headers stripped below.
                let upgrade = scan.is_upgrade() && is_websocket(req.headers());
                let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

                // Edited in place: `into_parts` / `from_parts` would move the whole head twice.
                let headers = req.headers_mut();
                strip_scanned(headers, &scan, upgrade);
                if scan.has(HAS_INTERNAL) {
                    strip_internal(headers);
                }
                // A client's decorator names the tracing span instead of the route's; Envoy
                // takes it off the request and then sends none back.
                let client_decorator =
                    scan.has(HAS_DECORATOR) && headers.remove(&X_ENVOY_DECORATOR_OPERATION).is_some();
                if body_empty && !ctx.upstream_h2 && !req_has_body_framing(&scan, headers) && !bodiless_method(&method)
                {
                    // Envoy's HTTP/1 codec announces an empty body explicitly (RFC 9110 §8.6)
                    // except for methods that never carry one.
                    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
                }
                if scan.has(HAS_EXPECT)
                    && headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
                {
                    headers.remove(EXPECT);
                }
                // Absent per the scan: plain inserts. If `Connection` named headers, they may have been
                // removed since the scan; `entry` checks again.
                if !scan.has(HAS_REQUEST_ID) {
                    headers.insert(X_REQUEST_ID.clone(), request_id());
                } else if scan.conn_named {
                    if let Entry::Vacant(v) = headers.entry(&X_REQUEST_ID) {
                        v.insert(request_id());
                    }
                }
                if !scan.has(HAS_FORWARDED_PROTO) {
                    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
                } else if scan.conn_named {
                    if let Entry::Vacant(v) = headers.entry(&X_FORWARDED_PROTO) {
                        v.insert(HeaderValue::from_static("http"));
                    }
                }
                // Istio's routes take a gRPC client's deadline as the stream's limit
                // (`grpc_timeout_header_max: 0s`), and Envoy sends it on in milliseconds.
                let grpc_deadline = if grpc_request {
                    let d = headers.get(&GRPC_TIMEOUT).and_then(|v| grpc_timeout_ms(v.as_bytes()));
                    if let Some(ms) = d {
                        if let Ok(v) = HeaderValue::from_str(&grpc_timeout_value(ms)) {
                            headers.insert(GRPC_TIMEOUT.clone(), v);
                        }
                    }
                    d.map(std::time::Duration::from_millis)
                } else {
                    None
                };
                if ctx.direction == Direction::Outbound && cfg.envoy_debug_headers {
                    headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from_static("1"));
                }
                *req.version_mut() = Version::HTTP_11;
                let mut request_done = None;
                let mut req = req.map(|body| {
                    let (body, done) = RequestBody::new(body);
                    request_done = Some(done);
                    body
                });
                let request_done = request_done.unwrap_or_default();
                if ctx.upstream_h2 {
                    // Boxed: the HTTP/2 path's state stays out of this (HTTP/1) future.
                    break 'forward Box::pin(forward_h2(ctx, key, req, client_decorator, grpc_deadline, https)).await;
                }
                let response_timeout = match (cfg.response_timeout, grpc_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };

                let pool = &ctx.shared.pool;
                // After the fast lane sent this request itself, its connection carries the
                // response (and goes back to no pool); a connect failure it met is the answer.
                let handoff = ctx.take_handoff();
                let pooled = handoff.is_none();
                let (mut tx, mut reused) = match handoff {
                    Some(Handoff::Failed(e)) => break 'forward Err(e),
                    Some(Handoff::Sent(up)) => (or_break!('forward, up.into_sender().await), false),
                    None => or_break!('forward, pool.get_at(key, start).await),
                };
                if !reused || !ctx.upstream_noted.swap(true, Ordering::Relaxed) {
                    // Only a new upstream connection can go elsewhere (another endpoint): one
                    // lock for the record per upstream connection, not one per request.
                    ctx.conn.set_upstream_info(tx.info());
                }
                // A pooled connection is ready at once, so the request goes out now: the clock read at
                // the start of `handle` serves (microseconds apart, the header has millisecond units).
                let sent_at = if reused { start } else { Instant::now() };
                let mut attempt_at = sent_at;
                let mut resp = loop {
                    let fut = tx.try_send_request(req);
                    let res = match response_timeout {
                        Some(t) if ctx.downstream_h2 || grpc_deadline.is_some() => or_break!(
                            'forward,
                            tokio::time::timeout_at(attempt_at + t, fut)
                                .await
                                .map_err(|_| UpstreamError::ResponseTimeout { addr: key.dst, timeout: t })
                        ),
                        // One timer per connection (see `timer`), not a timer-wheel entry per
                        // request.
                        Some(t) => or_break!(
                            'forward,
                            crate::timer::with_deadline(&ctx.response_timer, attempt_at + t, fut)
                                .await
                                .ok_or(UpstreamError::ResponseTimeout { addr: key.dst, timeout: t })
                        ),
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
                                    tx = or_break!('forward, pool.connect(key).await);
                                    reused = false;
                                    attempt_at = Instant::now();
                                    continue;
                                }
                            }
                            break 'forward Err(UpstreamError::Reset { addr: key.dst, source: e.into_error() });
                        }
                    }
                };
                let got_at = Instant::now();
                let service_ms = got_at.saturating_duration_since(sent_at).as_millis();

                let switching = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut resp));
                let headers = resp.headers_mut();
                let scan = Scan::of(headers);
                strip_scanned(headers, &scan, switching);
                if scan.has(HOP_TE) {
                    headers.remove(TE);
                }
                // No service time on a 101: the exchange goes on as a tunnel.
                let service_ms = (!switching).then_some(service_ms);
                decorate_response(ctx, headers, service_ms, !client_decorator);
                *resp.version_mut() = Version::HTTP_11;

                let resp = match (downstream_upgrade, upstream_upgrade) {
                    (Some(down), Some(up)) => {
                        drop(tx);
                        spawn_tunnel(ctx, down, up);
                        resp.map(|_| ResponseBody::empty())
                    }
                    (Some(_), None) => {
                        // The upstream refused the upgrade: as Envoy, pass its status and
                        // headers without the body, and close (the gate passes everything
                        // after an upgrade request through unchecked).
                        drop(tx);
                        let mut resp = resp.map(|_| ResponseBody::empty());
                        let h = resp.headers_mut();
                        h.remove(TRANSFER_ENCODING);
                        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
                        h.insert(CONNECTION, HeaderValue::from_static("close"));
                        failure = Some(
                            Outcome::new(Flag::UpstreamProtocolError, "websocket_handshake_unsuccessful")
                                .with_source(crate::outcome::Source::Upstream),
                        );
                        resp
                    }
                    _ => {
                        let grpc = grpc_watch(ctx, resp.headers());
                        // Never set: the connection is not pooled.
                        let request_done = if pooled { request_done } else { Arc::default() };
                        resp.map(|inner| ResponseBody::Upstream {
                            inner,
                            checkin: Some(Checkin { pool: pool.clone(), key, sender: tx, request_done }),
                            conn: ctx.conn.clone(),
                            grpc,
                        })
                    }
                };
                Ok((resp, got_at))
            };
            match forwarded {
                Ok((r, at)) => {
                    done_at = Some(at);
                    r
                }
                Err(_) if ctx.gate.body_error.load(Ordering::Acquire) => {
                    // The request body was malformed (the gate cut it): the client's fault.
                    failure = Some(Outcome::new(Flag::DownstreamProtocolError, "http1.codec_error"));
                    let mut r = local_reply(ctx, StatusCode::BAD_REQUEST, "Bad Request".to_owned());
                    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                    r
                }
                Err(e) => {
                    tracing::debug!(conn = ctx.conn.id, error = %e, "upstream failure");
                    failure = Some(e.outcome());
                    let body = match &e {
                        UpstreamError::ResponseTimeout { .. } => "upstream request timeout\n".to_owned(),
                        // Envoy's words for a stream the upstream reset (HTTP/2) or a
                        // connection it closed before the response head.
                        UpstreamError::Reset { source, .. } => format!(
                            "upstream connect error or disconnect/reset before headers. reset reason: {}",
                            if source_is_h2_reset(source) { "remote reset" } else { "connection termination" }
                        ),
                        _ => format!(
                            "upstream connect error or disconnect/reset before headers. reset reason: {}: {e}\n",
                            e.kind()
                        ),
                    };
                    local_reply(ctx, e.status(), body)
                }
            }
        }
    };
    // A gRPC client gets the proxy's refusals as gRPC statuses (a trailers-only response), as
    // Envoy converts its local replies for gRPC requests.
    let resp = if grpc_request && matches!(resp.body(), ResponseBody::Local(_)) && resp.status() != StatusCode::OK {
        grpc_local_reply(ctx, resp)
    } else {
        resp
    };
    let code = resp.status().as_u16();
    let elapsed = done_at.unwrap_or_else(Instant::now).saturating_duration_since(start);
    m.response(code, elapsed);
    ctx.conn.set_status(code);
    if let Some(line) = log {
        ctx.shared.access_log.request(
            ctx.direction,
            &line,
            code,
            failure.as_ref(),
            elapsed,
            ctx.target.as_ref().ok().map(|k| k.dst),
        );
    }
    if let Some(o) = failure {
        ctx.conn.set_outcome(o);
    }
    Ok(resp)
}

/// Request-target handling that needs the parsed URI (the gate checked the bytes): an
/// absolute-form target becomes origin-form with its authority as `Host`, as Envoy forwards
/// it; `OPTIONS *` is refused as Envoy's router refuses it; the path is normalised as Istio
/// configures Envoy (`normalize_path`, escaped slashes kept). `Some((status, details, close))`
/// refuses the request.
fn prepare_target(req: &mut Request<Incoming>) -> Option<(StatusCode, &'static str, bool)> {
    if req.version() == Version::HTTP_2 {
        // What the HTTP/1 gate refuses on the bytes, refused here for HTTP/2: CONNECT (no
        // route matches it) and `OPTIONS *`.
        if req.method() == http::Method::CONNECT {
            return Some((StatusCode::NOT_FOUND, "route_not_found", false));
        }
        if req.uri().path_and_query().is_some_and(|p| p.as_str() == "*") {
            return Some((StatusCode::NOT_FOUND, "absolute_path_rejected", false));
        }
    }
    let uri = req.uri();
    if uri.authority().is_some() {
        let authority = uri.authority().map(|a| a.as_str().rsplit('@').next().unwrap_or_default().to_owned());
        let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        if let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            req.headers_mut().insert(http::header::HOST, v);
        }
        *req.uri_mut() = match pq.parse() {
            Ok(u) => u,
            Err(_) => return Some((StatusCode::BAD_REQUEST, "path_normalization_failed", true)),
        };
    } else if uri.path() == "*" {
        return Some((StatusCode::NOT_FOUND, "absolute_path_rejected", false));
    }
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if crate::path::needs_normalizing(pq) {
        let Some(normal) = crate::path::normalize(pq) else {
            return Some((StatusCode::BAD_REQUEST, "path_normalization_failed", true));
        };
        match normal.parse() {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => return Some((StatusCode::BAD_REQUEST, "path_normalization_failed", true)),
        }
    }
    None
}

/// Forward `req` over the shared HTTP/2 connection to `key` (http2/grpc ports, or the
/// client's protocol on a sniffed port).
async fn forward_h2(
    ctx: &HttpCtx,
    key: PoolKey,
    mut req: Request<RequestBody>,
    client_decorator: bool,
    grpc_deadline: Option<std::time::Duration>,
    https: bool,
) -> Result<(Response<ResponseBody>, Instant), UpstreamError> {
    // An HTTP/2 client's `:scheme` goes on as it came, as from Envoy.
    let scheme = if https { "https" } else { "http" };
    req.body_mut().quiet_when_empty();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_else(|| key.dst.to_string());
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = format!("{scheme}://{authority}{pq}").parse() {
        *req.uri_mut() = uri;
    }
    // HTTP/2 carries the authority as `:authority`.
    req.headers_mut().remove(http::header::HOST);
    *req.version_mut() = Version::HTTP_2;
    // A bodiless request can be sent again if the upstream refuses its stream unprocessed
    // (see `refused_unprocessed`): its head is kept for that.
    let mut replay = hyper::body::Body::is_end_stream(req.body())
        .then(|| (req.method().clone(), req.uri().clone(), req.headers().clone()));
    let pool = &ctx.shared.pool;
    let mut tx = pool.get_h2(key).await?;
    if !ctx.upstream_noted.swap(true, Ordering::Relaxed) {
        ctx.conn.set_upstream(key.dst);
    }
    let timeout = match (ctx.shared.config.response_timeout, grpc_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let start = Instant::now();
    let (mut resp, sent_at) = loop {
        let sent_at = Instant::now();
        let fut = tx.send_request(req);
        let res = match timeout {
            Some(t) => tokio::time::timeout_at(start + t, fut)
                .await
                .map_err(|_| UpstreamError::ResponseTimeout { addr: key.dst, timeout: t })?,
            None => fut.await,
        };
        match res {
            Ok(r) => break (r, sent_at),
            Err(source) => match replay.take() {
                Some((method, uri, headers)) if refused_unprocessed(&source, &method) => {
                    tracing::debug!(conn = ctx.conn.id, error = %source, "upstream refused the stream; sending it again");
                    // That connection is closing: the request goes on a new one.
                    pool.evict_h2(key);
                    tx = pool.get_h2(key).await?;
                    let mut again = Request::new(RequestBody::empty_h2());
                    *again.method_mut() = method;
                    *again.uri_mut() = uri;
                    *again.headers_mut() = headers;
                    *again.version_mut() = Version::HTTP_2;
                    req = again;
                }
                _ => return Err(UpstreamError::Reset { addr: key.dst, source }),
            },
        }
    };
    let got_at = Instant::now();
    let headers = resp.headers_mut();
    let scan = Scan::of(headers);
    strip_scanned(headers, &scan, false);
    if scan.has(HOP_TE) {
        headers.remove(TE);
    }
    decorate_response(ctx, headers, Some(got_at.saturating_duration_since(sent_at).as_millis()), !client_decorator);
    let grpc = grpc_watch(ctx, resp.headers());
    *resp.version_mut() = Version::HTTP_11;
    let conn = ctx.conn.clone();
    Ok((resp.map(|inner| ResponseBody::Upstream { inner, checkin: None, conn, grpc }), got_at))
}

/// Whether the upstream certainly did not process the request `e` failed, so sending it again
/// is safe: the request never left (hyper cancelled it), the upstream refused its stream
/// (`REFUSED_STREAM`, RFC 9113 §8.7), or, for an idempotent method, a GOAWAY from the
/// upstream ended it (RFC 9110 §9.2.2 lets a client repeat those).
fn refused_unprocessed(e: &hyper::Error, method: &http::Method) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<h2::Error>() {
            return h.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h.is_go_away() && h.is_remote() && method.is_idempotent());
        }
        cause = c.source();
    }
    false
}

/// Whether hyper's error is the upstream's `RST_STREAM`.
fn source_is_h2_reset(e: &hyper::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<h2::Error>() {
            return h.is_reset();
        }
        cause = c.source();
    }
    false
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A watch for a gRPC response (`None` for anything else); a trailers-only response's status
/// is counted here, a streamed one's when its trailers pass.
fn grpc_watch(ctx: &HttpCtx, h: &HeaderMap) -> Option<Box<GrpcWatch>> {
    if !is_grpc(h) {
        return None;
    }
    let metrics = ctx.shared.metrics.clone();
    let saw_status = match grpc_status(h) {
        Some(s) => {
            metrics.dir(ctx.direction).grpc_status(s);
            true
        }
        None => false,
    };
    Some(Box::new(GrpcWatch { metrics, direction: ctx.direction, saw_status, finished: false }))
}

/// Envoy's HTTP → gRPC status mapping for local replies.
fn grpc_status_for(http: StatusCode) -> u32 {
    match http.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// A local reply to a gRPC request as a trailers-only gRPC response.
fn grpc_local_reply(ctx: &HttpCtx, resp: Response<ResponseBody>) -> Response<ResponseBody> {
    let status = grpc_status_for(resp.status());
    let (parts, body) = resp.into_parts();
    let message = match &body {
        ResponseBody::Local(Some(b)) => String::from_utf8_lossy(b).trim().to_owned(),
        _ => parts.status.canonical_reason().unwrap_or("").to_owned(),
    };
    let mut r = Response::new(ResponseBody::empty());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(status));
    // grpc-message is percent-encoded (gRPC over HTTP/2 spec); ours are ASCII, so only
    // controls and `%` need it.
    let encoded: String = message
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) && b != b'%' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    if let Some(s) = &ctx.server_header {
        h.insert(SERVER, s.clone());
    }
    if let Some(d) = &ctx.decorator {
        h.insert(X_ENVOY_DECORATOR_OPERATION.clone(), d.clone());
    }
    if let Some(c) = parts.headers.get(CONNECTION) {
        h.insert(CONNECTION, c.clone());
    }
    if !ctx.downstream_h2 {
        // HTTP/1 needs the framing; HTTP/2 ends the stream with the headers.
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    ctx.shared.metrics.dir(ctx.direction).grpc_status(status);
    r
}

fn is_websocket(h: &HeaderMap) -> bool {
    h.get(UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Request headers Envoy's connection manager removes from requests of a client that is not
/// internal (a sidecar's clients never are: Istio sets `use_remote_address: false` and, since
/// Envoy 1.33, no internal address ranges): the router's control headers, and
/// `x-forwarded-client-cert` of a plaintext client (`APPEND_FORWARD` / `SANITIZE` without a
/// client certificate).
const INTERNAL_REQUEST_HEADERS: [&str; 16] = [
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-stream-duration-ms",
    "x-forwarded-client-cert",
];

fn strip_internal(h: &mut HeaderMap) {
    for n in INTERNAL_REQUEST_HEADERS {
        h.remove(n);
    }
}

#[cfg(test)]
fn is_upgrade(h: &HeaderMap) -> bool {
    Scan::of(h).is_upgrade()
}

// Bits of `Scan::present`: the fixed hop-by-hop names (`Connection` may name further ones) and
// the request headers the proxy adds or drops.
const HOP_CONNECTION: u16 = 1;
const HOP_UPGRADE: u16 = 2;
const HOP_TE: u16 = 4;
const HOP_TRAILER: u16 = 8;
const HOP_TRANSFER_ENCODING: u16 = 16;
const HOP_KEEP_ALIVE: u16 = 32;
const HOP_PROXY_CONNECTION: u16 = 64;
const HOP_OTHER_FIXED: u16 = HOP_TE | HOP_TRAILER | HOP_TRANSFER_ENCODING | HOP_KEEP_ALIVE | HOP_PROXY_CONNECTION;
const HAS_EXPECT: u16 = 128;
const HAS_REQUEST_ID: u16 = 256;
const HAS_FORWARDED_PROTO: u16 = 512;
const HAS_INTERNAL: u16 = 1024;
const HAS_DECORATOR: u16 = 2048;

fn header_bit(n: &HeaderName) -> u16 {
    // `as_str` of a standard name is a table lookup and every name is lower case, so a match
    // on the length and then a short comparison classifies a name in a few instructions
    // (each hashed `HeaderMap` lookup this replaces costs far more).
    let s = n.as_str();
    match s.len() {
        2 if s == "te" => HOP_TE,
        6 if s == "expect" => HAS_EXPECT,
        7 if s == "upgrade" => HOP_UPGRADE,
        7 if s == "trailer" => HOP_TRAILER,
        10 if s == "connection" => HOP_CONNECTION,
        10 if s == "keep-alive" => HOP_KEEP_ALIVE,
        12 if s == "x-request-id" => HAS_REQUEST_ID,
        16 if s == "proxy-connection" => HOP_PROXY_CONNECTION,
        17 if s == "transfer-encoding" => HOP_TRANSFER_ENCODING,
        17 if s == "x-forwarded-proto" => HAS_FORWARDED_PROTO,
        27 if s == "x-envoy-decorator-operation" => HAS_DECORATOR,
        _ if (s.starts_with("x-envoy-") || s == "x-forwarded-client-cert") && INTERNAL_REQUEST_HEADERS.contains(&s) => {
            HAS_INTERNAL
        }
        _ => 0,
    }
}

/// What one pass over a header map found: which of the names above are present and what the
/// `Connection` tokens say. It replaces a hashed lookup per name the proxy cares about.
#[derive(Clone, Copy, Debug, Default)]
struct Scan {
    present: u16,
    /// `Connection` lists `upgrade`.
    conn_upgrade: bool,
    /// `Connection` lists a token other than `keep-alive` / `upgrade` (a header to drop, or
    /// `close`).
    conn_named: bool,
}

impl Scan {
    fn of(h: &HeaderMap) -> Self {
        let mut s = Scan::default();
        for (k, v) in h {
            let bit = header_bit(k);
            s.present |= bit;
            if bit == HOP_CONNECTION {
                // The usual single tokens without the general token split.
                let b = v.as_bytes();
                if b.eq_ignore_ascii_case(b"keep-alive") {
                    continue;
                }
                if b.eq_ignore_ascii_case(b"close") {
                    s.conn_named = true;
                    continue;
                }
                let Ok(v) = v.to_str() else { continue };
                for t in v.split(',').map(str::trim) {
                    if t.eq_ignore_ascii_case("upgrade") {
                        s.conn_upgrade = true;
                    } else if !t.is_empty() && !t.eq_ignore_ascii_case("keep-alive") {
                        s.conn_named = true;
                    }
                }
            }
        }
        s
    }

    fn has(&self, bit: u16) -> bool {
        self.present & bit != 0
    }

    fn is_upgrade(&self) -> bool {
        self.has(HOP_UPGRADE) && self.conn_upgrade
    }
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1) — `Connection` and what it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade` —
/// except the upgrade pair while an upgrade is being negotiated.
#[cfg(test)]
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let s = Scan::of(h);
    strip_scanned(h, &s, keep_upgrade);
}

/// [`strip_hop_by_hop`] with the scan of `h` already done: only the names present are
/// removed (a hashed `remove` per absent name cost more than the rest of this).
fn strip_scanned(h: &mut HeaderMap, s: &Scan, keep_upgrade: bool) {
    // While upgrading, a plain `Connection: upgrade` goes on as it came (Envoy keeps the
    // sender's spelling); anything longer is cut down to the one token.
    let plain_upgrade = keep_upgrade && !s.conn_named && h.get_all(CONNECTION).iter().count() == 1;
    if s.has(HOP_CONNECTION) && !plain_upgrade {
        if s.conn_named {
            // Names listed in `Connection`; `keep-alive` and `upgrade` are handled with the
            // fixed names below, so the common `Connection: keep-alive` never gets here.
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
        }
        h.remove(CONNECTION);
    }
    if keep_upgrade {
        if !plain_upgrade {
            h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
    } else if s.has(HOP_UPGRADE) {
        h.remove(UPGRADE);
    }
    if s.has(HOP_OTHER_FIXED) {
        h.remove(&KEEP_ALIVE);
        h.remove(&PROXY_CONNECTION);
        h.remove(TRAILER);
        h.remove(TRANSFER_ENCODING);
        if s.has(HOP_TE) {
            // Envoy keeps `te: trailers` (gRPC needs it) and drops any other TE value.
            let trailers = h
                .get_all(TE)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
            h.remove(TE);
            if trailers {
                h.insert(TE, HeaderValue::from_static("trailers"));
            }
        }
    }
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
                conn.set_outcome(Outcome::new(Flag::UpstreamConnectionTermination, format!("upgrade_failed: {e}")));
                return;
            }
        };
        // The idle watchdog below reads the activity stamp, which `serve` had turned off.
        conn.stats.track_activity(true);
        let mut d = TokioIo::new(d);
        let mut u = TokioIo::new(u);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut d, &mut u) => {
                if let Err(e) = r {
                    conn.set_outcome(Outcome::new(Flag::DownstreamConnectionTermination, format!("tunnel_error: {e}")));
                }
            }
            _ = crate::io::idle_watchdog(conn.stats.clone(), idle) => {
                conn.set_outcome(Outcome::new(Flag::StreamIdleTimeout, "idle_timeout"));
            }
            _ = crate::phase_reached(&mut drain, |p| p >= Phase::Force) => {
                conn.set_outcome(Outcome::new(Flag::LocalReset, "drain_timeout"));
            }
        }
        // `conn` drops here: the record closes when the tunnel ends, not at the 101.
    });
}

fn decorate_response(ctx: &HttpCtx, h: &mut HeaderMap, service_ms: Option<u128>, decorator: bool) {
    if let Some(s) = &ctx.server_header {
        h.insert(SERVER, s.clone());
    }
    if let Some(ms) = service_ms {
        if ctx.shared.config.envoy_debug_headers {
            h.insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), service_time_value(ms));
        }
    }
    if let Some(d) = ctx.decorator.as_ref().filter(|_| decorator) {
        h.insert(X_ENVOY_DECORATOR_OPERATION.clone(), d.clone());
    }
}

/// Whether the request says how its body is framed (`Content-Length` or chunked).
fn req_has_body_framing(scan: &Scan, h: &HeaderMap) -> bool {
    scan.has(HOP_TRANSFER_ENCODING) || h.contains_key(CONTENT_LENGTH)
}

/// Methods Envoy sends without `content-length: 0` when they have no body.
fn bodiless_method(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::DELETE | http::Method::TRACE | http::Method::CONNECT
    )
}

/// `x-envoy-upstream-service-time` value: the usual small values come from a table built once
/// (a clone is a reference-count bump), larger ones are formatted.
pub(crate) fn service_time_value(ms: u128) -> HeaderValue {
    const CACHED: usize = 100;
    static SMALL: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    match usize::try_from(ms) {
        Ok(i) if i < CACHED => SMALL.get_or_init(|| (0..CACHED).map(HeaderValue::from).collect())[i].clone(),
        _ => HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX)),
    }
}

/// A proxy-generated response with an empty body (Envoy's router and connection-manager
/// refusals: 404 for `OPTIONS *`, 400 for a path it cannot normalise).
fn empty_reply(ctx: &HttpCtx, status: StatusCode) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Some(s) = &ctx.server_header {
        h.insert(SERVER, s.clone());
    }
    if !ctx.downstream_h2 {
        // HTTP/2 ends the stream with the headers.
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    r
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
    // These replies come after routing, so they carry the route's decorator as Envoy's do.
    if let Some(d) = &ctx.decorator {
        h.insert(X_ENVOY_DECORATOR_OPERATION.clone(), d.clone());
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
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&request_id_text()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The text of a new random UUIDv4.
pub(crate) fn request_id_text() -> [u8; 36] {
    let hi = (next_u64() & 0xffff_ffff_ffff_0fff) | 0x4000;
    let lo = (next_u64() & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    uuid_text(hi, lo)
}

/// `hi`/`lo` as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (lowercase hex).
fn uuid_text(hi: u64, lo: u64) -> [u8; 36] {
    // Measured: this plain loop lets the compiler see that every byte is a valid header-value
    // byte, and `HeaderValue::from_bytes`' check nearly vanishes; table-free or reordered
    // variants were cheaper here but made that check cost more than they saved.
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
        // Routed through the mesh config when the proxy opens the upstream connection.
        Direction::Outbound => PoolKey { dst: orig, src: None, mesh: Some(shared.mesh.generation()) },
        Direction::Inbound => {
            let ip = cfg.inbound_upstream_override.unwrap_or(orig.ip());
            let dst = SocketAddr::new(ip, orig.port());
            let src = if dst.is_ipv4() {
                cfg.inbound_source_v4.map(Into::into)
            } else {
                cfg.inbound_source_v6.map(Into::into)
            };
            PoolKey { dst, src, mesh: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_read_and_rewritten_as_envoy_does() {
        assert_eq!(grpc_timeout_ms(b"5S"), Some(5000));
        assert_eq!(grpc_timeout_ms(b"2M"), Some(120_000));
        assert_eq!(grpc_timeout_ms(b"1H"), Some(3_600_000));
        assert_eq!(grpc_timeout_ms(b"250m"), Some(250));
        assert_eq!(grpc_timeout_ms(b"1500u"), Some(1));
        assert_eq!(grpc_timeout_ms(b"2000000n"), Some(2));
        // Below a millisecond, malformed, too many digits, or no unit: no deadline.
        for bad in [&b"999u"[..], b"5", b"S", b"", b"5s", b"123456789S", b"-1S", b"1.5S", b"5SS"] {
            assert_eq!(grpc_timeout_ms(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(grpc_timeout_value(5000), "5000m");
        assert_eq!(grpc_timeout_value(99_999_999), "99999999m");
        assert_eq!(grpc_timeout_value(100_000_000), "100000S");
        assert_eq!(grpc_timeout_value(99_999_999 * 3_600_000), "99999999H");
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(http::header::COOKIE).iter().count(), 1);
        h.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(http::header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
    }

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
        assert_eq!(h.get(CONNECTION).unwrap(), "Upgrade", "a plain upgrade keeps its spelling");
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade, x-a"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
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
