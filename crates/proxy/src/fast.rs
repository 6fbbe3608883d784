//! The HTTP/1 fast lane: plain keep-alive `GET` exchanges forwarded without hyper.
//!
//! Most requests a sidecar sees on a keep-alive connection are small bodiless requests whose
//! answer carries a `Content-Length`. For those the proxy's work is: check the head (the same
//! [`crate::h1`] checks as the gate), add Envoy's request headers, write the head upstream,
//! read the response head, set Envoy's response headers and copy the body. Through hyper on
//! both sides the head is parsed twice and copied twice, two header maps and two messages are
//! built and moved through channels and futures: most of the proxy's instructions per
//! request. Here each head is parsed once and each direction is one buffer and one write.
//!
//! The lane writes exactly the bytes the hyper path ([`crate::http`]) writes for the same
//! exchange: lower-case names, the same header order (including where removing a field moves
//! the last one, as `HeaderMap::remove` does), the same added and replaced headers. It takes
//! only what it can do that way and hands everything else to the hyper path, for the rest of
//! the connection:
//! - before a request goes upstream (anything but a plain `GET`, a refused or incomplete head
//!   at the end of the stream, a drain, a failed upstream connect): the bytes not consumed go
//!   back in front of the stream ([`Exit::Handoff`]), with the connect failure if there was
//!   one ([`Handoff::Failed`]), so the gate and hyper see the request as if the lane never ran;
//! - after it went upstream (a response that is not plain — no `Content-Length`, chunked, 1xx,
//!   204, 304, a reason phrase of its own, hop-by-hop fields other than `keep-alive`/`close`,
//!   fields repeated — or an upstream that closed before answering): hyper reads the request
//!   again, and the upstream connection, with the response bytes already read, becomes that
//!   request's hyper client connection with its request write swallowed ([`Handoff::Sent`]).
//!   The app sees the request once; hyper answers from the real response.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::error::UpstreamError;
use crate::h1::{self, BodyFraming, Head, Limits};
use crate::http::HttpCtx;
use crate::io::Rewind;
use crate::orig_dst::Direction;
use crate::outcome::{Flag, Outcome, Source};
use crate::pool::{Sender, UpstreamInfo};
use crate::timer::LazyTimer;
use crate::tls::{AppProtocol, Upstream};
use crate::Phase;

/// Bytes asked of a socket per read.
const READ_CHUNK: usize = 8 * 1024;
/// Fields a head may have and still take the lane (more go to hyper).
const MAX_FIELDS: usize = 32;
/// Response head bytes the lane waits for before leaving the response to hyper.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How the lane left a connection.
#[derive(Debug)]
pub(crate) enum Exit {
    /// The connection is finished (closed by the client, timed out, drained or failed).
    Closed,
    /// The hyper path takes the connection over; these bytes come first.
    Handoff(Bytes),
}

/// What the hyper path uses for the first request it reads after a handoff (kept in
/// [`HttpCtx::handoff`]).
#[derive(Debug)]
pub(crate) enum Handoff {
    /// Opening the upstream connection failed: the request is answered with this.
    Failed(UpstreamError),
    /// The request went out on this connection; its response is read from it.
    Sent(SentUpstream),
}

/// An upstream connection the lane has sent a request on, and what it has read of the answer.
#[derive(Debug)]
pub(crate) struct SentUpstream {
    io: Upstream,
    read: Bytes,
    info: Arc<UpstreamInfo>,
}

impl SentUpstream {
    /// A one-exchange hyper client connection over it: hyper's write of the request (the same
    /// request, read again from the client) is swallowed, the response is the upstream's.
    pub(crate) async fn into_sender(self) -> Result<Sender, UpstreamError> {
        let addr = self.info.addr;
        let io = Swallow { inner: Rewind::new(self.read, self.io), written: false, reader: None };
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with error");
            }
        });
        Ok(Sender::from_parts(tx, self.info))
    }
}

/// Discards writes (the request already went out); holds reads back until the first write,
/// since hyper's client takes bytes that arrive before its request as an error.
#[derive(Debug)]
struct Swallow<T> {
    inner: T,
    written: bool,
    reader: Option<Waker>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Swallow<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.written {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Swallow<T> {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.written = true;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether a connection's requests may take the lane at all: HTTP/1 on both sides, a known
/// upstream, and none of what the lane leaves to hyper for every request (a response timeout,
/// the access log).
pub(crate) fn applies(ctx: &HttpCtx) -> bool {
    let cfg = &ctx.shared.config;
    cfg.h1_fast_lane
        && ctx.target.is_ok()
        && !ctx.upstream_h2
        && !ctx.downstream_h2
        && cfg.response_timeout.is_none()
        && !ctx.shared.access_log.enabled()
}

/// The upstream connection the lane keeps for one downstream connection.
struct Up {
    io: Upstream,
    info: Arc<UpstreamInfo>,
    /// Bytes read from it and not yet passed on.
    rbuf: BytesMut,
}

enum Wait {
    Read(io::Result<usize>),
    Drain,
    Timeout,
}

/// Serve `io`'s requests while they take the lane (see the module docs). Each exchange
/// takes an upstream connection from the pool and puts it back when the response is through,
/// as the hyper path does, so one upstream connection serves downstream connections that
/// follow one another.
pub(crate) async fn serve<I>(io: &mut I, ctx: &HttpCtx, limits: &Limits) -> Exit
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(key) = ctx.target else { return Exit::Handoff(Bytes::new()) };
    let shared = &*ctx.shared;
    let cfg = &shared.config;
    let mut drain_rx = shared.drain.clone();
    let mut drain = pin!(crate::phase_reached(&mut drain_rx, |p| p != Phase::Running));
    let mut force_rx = shared.drain.clone();
    let mut force = pin!(crate::phase_reached(&mut force_rx, |p| p >= Phase::Force));
    // The client's next head, as hyper's header-read timeout (one timer per connection).
    let timer = LazyTimer::new();
    let m = shared.metrics.dir(ctx.direction);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    // The upstream read buffer, kept across exchanges (the connections come and go).
    let mut spare = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // The next request head.
        let mut deadline = None;
        let info = loop {
            if !buf.is_empty() {
                match h1::parse_head(&buf, limits) {
                    Head::Complete(info) => break info,
                    Head::Reject(_) => return Exit::Handoff(buf.freeze()),
                    Head::Incomplete => {}
                }
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + cfg.header_read_timeout);
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            let ev = {
                let mut read = pin!(io.read_buf(&mut buf));
                poll_fn(|cx| {
                    if let Poll::Ready(r) = read.as_mut().poll(cx) {
                        return Poll::Ready(Wait::Read(r));
                    }
                    if drain.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wait::Drain);
                    }
                    timer.poll_until(cx, deadline).map(|()| Wait::Timeout)
                })
                .await
            };
            match ev {
                Wait::Read(Ok(n)) if n > 0 => {}
                // The end of the stream, or a drain: an idle connection just closes (as hyper
                // closes it); a partial head is hyper's to answer.
                Wait::Read(Ok(_)) | Wait::Drain => {
                    return if buf.is_empty() { Exit::Closed } else { Exit::Handoff(buf.freeze()) };
                }
                Wait::Read(Err(e)) => {
                    let o = Outcome::new(Flag::DownstreamConnectionTermination, format!("connection_error: {e}"));
                    ctx.conn.set_outcome(o);
                    return Exit::Closed;
                }
                Wait::Timeout => {
                    ctx.conn.set_outcome(
                        Outcome::new(Flag::StreamIdleTimeout, "header_read_timeout").with_source(Source::Downstream),
                    );
                    return Exit::Closed;
                }
            }
        };
        // A drain finishes the exchange in flight; later ones get hyper's `connection: close`.
        if *shared.drain.borrow() != Phase::Running {
            return Exit::Handoff(buf.freeze());
        }
        out.clear();
        if info.respace.is_some()
            || info.websocket
            || info.body != BodyFraming::Empty
            || !upstream_request(&buf[..info.len], ctx, &mut out)
        {
            return Exit::Handoff(buf.freeze());
        }
        let start = Instant::now();
        // A connection the upstream closed while idle is not used: as through hyper, whose
        // client notices the close before it sends. (A close racing the request is the
        // upstream's failure, answered as hyper answers it.)
        let mut up = None;
        while let Some((io, info)) = shared.pool.take_raw(key, start) {
            if !closed_while_idle(&io) {
                // One lock for the record per downstream connection, as on the hyper path.
                if !ctx.upstream_noted.swap(true, Ordering::Relaxed) {
                    ctx.conn.set_upstream_info(&info);
                }
                up = Some(Up { io, info, rbuf: std::mem::take(&mut spare) });
                break;
            }
        }
        let mut sent_at = start;
        let mut c = match up {
            Some(c) => c,
            None => match shared.pool.connect_upstream(key, AppProtocol::Http1).await {
                Ok((io, info)) => {
                    ctx.conn.set_upstream_info(&info);
                    ctx.upstream_noted.store(true, Ordering::Relaxed);
                    sent_at = Instant::now();
                    Up { io, info, rbuf: std::mem::take(&mut spare) }
                }
                Err(e) => {
                    ctx.set_handoff(Handoff::Failed(e));
                    return Exit::Handoff(buf.freeze());
                }
            },
        };
        let head_len = match or_force(exchange_head(&mut c, &out), force.as_mut()).await {
            None => {
                ctx.conn.set_outcome(Outcome::new(Flag::LocalReset, "drain_timeout"));
                return Exit::Closed;
            }
            Some(Some(n)) => n,
            Some(None) => {
                ctx.set_handoff(Handoff::Sent(SentUpstream { io: c.io, read: c.rbuf.freeze(), info: c.info }));
                return Exit::Handoff(buf.freeze());
            }
        };
        let got_at = Instant::now();
        let service_ms = got_at.saturating_duration_since(sent_at).as_millis();
        out.clear();
        // A drain that began meanwhile ends the connection after this response, which says
        // so, as hyper's graceful shutdown does.
        let closing = *shared.drain.borrow() != Phase::Running;
        let Some(plan) = downstream_response(&c.rbuf[..head_len], ctx, service_ms, closing, &mut out) else {
            ctx.set_handoff(Handoff::Sent(SentUpstream { io: c.io, read: c.rbuf.freeze(), info: c.info }));
            return Exit::Handoff(buf.freeze());
        };
        // The request is the lane's now.
        buf.advance(info.len);
        m.request();
        ctx.conn.add_request();
        m.response(plan.status, got_at.saturating_duration_since(start));
        ctx.conn.set_status(plan.status);
        c.rbuf.advance(head_len);
        let mut left = plan.length;
        let have = c.rbuf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        out.extend_from_slice(&c.rbuf[..have]);
        c.rbuf.advance(have);
        left -= have as u64;
        // Bytes beyond the body are not a response to anything: that connection is not reused.
        let mut keep = plan.keep_alive && c.rbuf.is_empty();
        if let Err(e) = io.write_all(&out).await {
            let o = Outcome::new(Flag::DownstreamConnectionTermination, format!("connection_error: {e}"));
            ctx.conn.set_outcome(o);
            return Exit::Closed;
        }
        while left > 0 {
            c.rbuf.clear();
            if c.rbuf.capacity() < READ_CHUNK {
                c.rbuf.reserve(READ_CHUNK);
            }
            let Some(r) = or_force(c.io.read_buf(&mut c.rbuf), force.as_mut()).await else {
                ctx.conn.set_outcome(Outcome::new(Flag::LocalReset, "drain_timeout"));
                return Exit::Closed;
            };
            match r {
                Ok(n) if n > 0 => {
                    let take = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                    left -= take as u64;
                    keep &= take == n;
                    if let Err(e) = io.write_all(&c.rbuf[..take]).await {
                        let o = Outcome::new(Flag::DownstreamConnectionTermination, format!("connection_error: {e}"));
                        ctx.conn.set_outcome(o);
                        return Exit::Closed;
                    }
                }
                Ok(_) | Err(_) => {
                    // The client cannot tell a cut body from a whole one but by the closed
                    // connection, as through hyper.
                    let why = match r {
                        Err(e) => e.to_string(),
                        Ok(_) => "end of stream before the body's length".to_owned(),
                    };
                    ctx.conn.set_outcome(Outcome::new(
                        Flag::UpstreamConnectionTermination,
                        format!("upstream_reset_mid_body: {why}"),
                    ));
                    return Exit::Closed;
                }
            }
        }
        c.rbuf.clear();
        if keep {
            shared.pool.put_raw(key, c.io, c.info);
        }
        spare = c.rbuf;
        if closing {
            return Exit::Closed;
        }
    }
}

/// Whether an idle upstream connection is known to be unusable: the upstream closed it or,
/// on plaintext, sent bytes nobody asked for. Only what the reactor already saw is looked
/// at (no system call unless the socket became readable); on TLS, readable bytes may be the
/// TLS layer's own (session tickets), so only a close counts.
fn closed_while_idle(io: &Upstream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut peek = ReadBuf::new(&mut byte);
    match io.tcp().poll_peek(&mut cx, &mut peek) {
        Poll::Pending => false,
        Poll::Ready(Ok(0) | Err(_)) => true,
        Poll::Ready(Ok(_)) => matches!(io, Upstream::Plain(_)),
    }
}

/// Run `fut` unless the drain reaches its force phase first (`None`).
async fn or_force<F: Future>(fut: F, mut force: Pin<&mut impl Future<Output = ()>>) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        force.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Write `req` to `c` and read until a whole response head is in `c.rbuf`: `Some(length of
/// the head)`, or `None` if the upstream failed or closed first or the head grows too large
/// (hyper's to report). Only the end of the head is looked for here; it is parsed once, by
/// [`downstream_response`].
async fn exchange_head(c: &mut Up, req: &[u8]) -> Option<usize> {
    if c.io.write_all(req).await.is_err() {
        return None;
    }
    let mut scanned = 0;
    loop {
        if c.rbuf.capacity() - c.rbuf.len() < READ_CHUNK / 2 {
            c.rbuf.reserve(READ_CHUNK);
        }
        match c.io.read_buf(&mut c.rbuf).await {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
        if let Some(end) = head_end(&c.rbuf, scanned) {
            return Some(end);
        }
        if c.rbuf.len() >= MAX_RESPONSE_HEAD {
            return None;
        }
        // The empty line may straddle two reads.
        scanned = c.rbuf.len().saturating_sub(2);
    }
}

/// Where the head at the start of `buf` ends (just after its empty line, `LF LF` or
/// `LF CR LF`), looking from `from` on.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(p) = buf.get(at..)?.iter().position(|&b| b == b'\n') {
        let nl = at + p;
        match buf.get(nl + 1..nl + 3) {
            Some([b'\n', _]) => return Some(nl + 2),
            Some([b'\r', b'\n']) => return Some(nl + 3),
            None if buf.get(nl + 1) == Some(&b'\n') => return Some(nl + 2),
            _ => at = nl + 1,
        }
    }
    None
}

fn is_plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// A small list of a head's fields in the order hyper's `HeaderMap` iterates them, with its
/// `swap_remove` on removal.
struct Fields<'a> {
    list: [(&'a str, &'a [u8]); MAX_FIELDS],
    len: usize,
}

impl<'a> Fields<'a> {
    fn new() -> Self {
        Self { list: [("", &[][..]); MAX_FIELDS], len: 0 }
    }

    fn push(&mut self, name: &'a str, value: &'a [u8]) -> bool {
        if self.len == MAX_FIELDS {
            return false;
        }
        self.list[self.len] = (name, value);
        self.len += 1;
        true
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.list[..self.len].iter().position(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Take `name` out, keeping the others' order.
    fn skip(&mut self, name: &str) {
        if let Some(i) = self.position(name) {
            self.list[i..self.len].rotate_left(1);
            self.len -= 1;
        }
    }

    /// Remove `name` as `HeaderMap::remove` does: the last field takes its place.
    fn remove(&mut self, name: &str) {
        if let Some(i) = self.position(name) {
            self.list.swap(i, self.len - 1);
            self.len -= 1;
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        for (n, v) in &self.list[..self.len] {
            let at = out.len();
            out.extend_from_slice(n.as_bytes());
            out[at..].make_ascii_lowercase();
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Whether `name` (any case) is among `fields`' names before index `upto`.
fn repeated(fields: &[httparse::Header<'_>], upto: usize) -> bool {
    let name = fields[upto].name;
    fields[..upto].iter().any(|f| f.name.eq_ignore_ascii_case(name))
}

/// The upstream request for a checked head, as the hyper path sends it, into `out`; `false`
/// when the head is not one the lane takes.
fn upstream_request(head: &[u8], ctx: &HttpCtx, out: &mut Vec<u8>) -> bool {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut parsed);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let (Some("GET"), Some(target), Some(1)) = (req.method, req.path, req.version) else { return false };
    if !target.starts_with('/') || !target.bytes().all(is_plain_target_byte) || crate::path::needs_normalizing(target) {
        return false;
    }
    let mut fields = Fields::new();
    let (mut request_id, mut forwarded_proto, mut connection) = (false, false, false);
    for (i, f) in req.headers.iter().enumerate() {
        let name = f.name;
        if repeated(req.headers, i) {
            return false;
        }
        let lower = |s: &str| name.eq_ignore_ascii_case(s);
        if lower("connection") {
            // `keep-alive` is HTTP/1.1's default; anything else changes the exchange.
            if !f.value.eq_ignore_ascii_case(b"keep-alive") {
                return false;
            }
            connection = true;
        } else if lower("upgrade")
            || lower("te")
            || lower("trailer")
            || lower("transfer-encoding")
            || lower("content-length")
            || lower("keep-alive")
            || lower("proxy-connection")
            || lower("expect")
            || lower("x-forwarded-client-cert")
            || (name.len() > 8 && name[..8].eq_ignore_ascii_case("x-envoy-"))
            || (lower("content-type") && f.value.starts_with(b"application/grpc"))
        {
            return false;
        } else if lower("x-request-id") {
            request_id = true;
        } else if lower("x-forwarded-proto") {
            forwarded_proto = true;
        }
        if !fields.push(name, f.value) {
            return false;
        }
    }
    if connection {
        fields.remove("connection");
    }
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    fields.write(out);
    if !request_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(&crate::http::request_id_text());
        out.extend_from_slice(b"\r\n");
    }
    if !forwarded_proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
    if ctx.direction == Direction::Outbound && ctx.shared.config.envoy_debug_headers {
        out.extend_from_slice(b"x-envoy-attempt-count: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    true
}

/// What [`downstream_response`] found.
struct Plan {
    status: u16,
    /// The body's `Content-Length`.
    length: u64,
    /// The upstream keeps the connection open.
    keep_alive: bool,
}

/// The downstream response head for an upstream response head, as the hyper path writes it,
/// into `out`; `None` when the response is not one the lane takes.
fn downstream_response(head: &[u8], ctx: &HttpCtx, service_ms: u128, closing: bool, out: &mut Vec<u8>) -> Option<Plan> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut parsed);
    if resp.parse(head) != Ok(httparse::Status::Complete(head.len())) {
        return None;
    }
    let (Some(1), Some(code)) = (resp.version, resp.code) else { return None };
    if !(200..600).contains(&code) || code == 204 || code == 304 {
        return None;
    }
    let status = http::StatusCode::from_u16(code).ok()?;
    let reason = status.canonical_reason()?;
    if resp.reason != Some(reason) {
        return None;
    }
    let mut fields = Fields::new();
    let (mut length, mut keep_alive, mut connection, mut keep_alive_field, mut date) =
        (None, true, false, false, false);
    for (i, f) in resp.headers.iter().enumerate() {
        let name = f.name;
        if repeated(resp.headers, i) {
            return None;
        }
        let lower = |s: &str| name.eq_ignore_ascii_case(s);
        if lower("content-length") {
            let v = f.value;
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return None;
            }
            length = std::str::from_utf8(v).ok()?.parse::<u64>().ok();
        } else if lower("connection") {
            if f.value.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if !f.value.eq_ignore_ascii_case(b"keep-alive") {
                return None;
            }
            connection = true;
        } else if lower("keep-alive") {
            keep_alive_field = true;
        } else if lower("date") {
            date = true;
        } else if lower("transfer-encoding")
            || lower("te")
            || lower("trailer")
            || lower("upgrade")
            || lower("proxy-connection")
            || lower("x-envoy-upstream-service-time")
            || lower("x-envoy-decorator-operation")
            || (lower("content-type") && f.value.starts_with(b"application/grpc"))
        {
            return None;
        }
        if !fields.push(name, f.value) {
            return None;
        }
    }
    // hyper adds a `date` when the response has none: left to it.
    let length = length.filter(|_| date)?;
    // The order of the hyper path's edits: hop-by-hop fields out, then `server`, the service
    // time and the decorator.
    if connection {
        fields.remove("connection");
    }
    if keep_alive_field {
        fields.remove("keep-alive");
    }
    let server = ctx.server_header.as_ref().map(http::HeaderValue::as_bytes);
    if let Some(s) = server {
        match fields.position("server") {
            Some(i) => fields.list[i].1 = s,
            None => {
                fields.push("server", s);
            }
        }
    }
    let service_time = ctx.shared.config.envoy_debug_headers.then(|| crate::http::service_time_value(service_ms));
    if let Some(v) = &service_time {
        fields.push("x-envoy-upstream-service-time", v.as_bytes()).then_some(())?;
    }
    if let Some(d) = &ctx.decorator {
        fields.push("x-envoy-decorator-operation", d.as_bytes()).then_some(())?;
    }
    if closing {
        fields.push("connection", b"close").then_some(())?;
    }
    if length == 0 {
        // hyper writes an empty body's length itself, after the other fields.
        fields.skip("content-length");
        fields.push("content-length", b"0").then_some(())?;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    fields.write(out);
    out.extend_from_slice(b"\r\n");
    Some(Plan { status: code, length, keep_alive })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_finds_the_empty_line_in_either_style() {
        let crlf = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody";
        assert_eq!(head_end(crlf, 0), Some(crlf.len() - 4));
        let lf = b"HTTP/1.1 200 OK\nA: b\n\nbody";
        assert_eq!(head_end(lf, 0), Some(lf.len() - 4));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n", 0), None);
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r", 0), None);
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\n\n", 0), Some(23));
        // Resumed after a read that ended inside the empty line.
        let whole = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
        assert_eq!(head_end(whole, whole.len() - 3), Some(whole.len()));
        assert_eq!(head_end(b"", 0), None);
        assert_eq!(head_end(b"ab", 5), None);
    }
}
