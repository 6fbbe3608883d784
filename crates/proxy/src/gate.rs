//! The HTTP/1 gate: an I/O wrapper between a downstream connection and hyper that lets
//! through only what [`crate::h1`] accepts.
//!
//! Request heads are held back until complete and checked; bodies are passed on as their
//! framing says, chunked ones checked on the way. On a refused head the gate stops feeding
//! hyper (hyper sees the end of the stream, finishes the responses it owes, and shuts the
//! connection down) and then, in that shutdown, writes Envoy's local reply itself — so a
//! refusal never overtakes the responses to earlier pipelined requests and hyper never sees
//! the refused bytes. A malformed chunked body ends the request body with an error instead;
//! the request handler answers it (see [`GateState::body_error`]).
//!
//! Memory is bounded: at most one head (the head limit) is buffered beyond what hyper holds.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::h1::{self, BodyFraming, ChunkScanner, Chunks, Head, Limits, Reject, ReplyStyle};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;

/// What the gate found, shared with the connection's request handler and `serve`.
#[derive(Debug, Default)]
pub struct GateState {
    /// The head refused (its reply is written at shutdown).
    pub rejected: Mutex<Option<Reject>>,
    /// A request body was malformed; the handler answers 400 instead of forwarding.
    pub body_error: AtomicBool,
}

impl GateState {
    /// The refusal, if a head was refused.
    pub fn rejected(&self) -> Option<Reject> {
        *self.rejected.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
enum Framing {
    Head,
    Length(u64),
    Chunked(ChunkScanner),
    /// After a WebSocket upgrade request: whatever follows is the tunnel's (or, if the
    /// upstream refuses, the connection closes after the response).
    Tunnel,
}

/// See the module docs.
#[derive(Debug)]
pub struct Gate<I> {
    inner: I,
    limits: Limits,
    framing: Framing,
    /// Bytes read from `inner` that hyper has not been given.
    pending: BytesMut,
    /// Where reads from `inner` land, zeroed once: reading straight into `pending` would mean
    /// zero-filling a fresh 8 KiB tail on every read (no `unsafe` here to skip that), which
    /// costs more than copying the few bytes a read returns.
    scratch: Box<[u8]>,
    /// How many leading bytes of `pending` are checked and may go to hyper.
    cleared: usize,
    eof: bool,
    /// The local reply still to write (set on a refused head).
    reply: Option<Bytes>,
    body_failed: bool,
    state: Arc<GateState>,
    server: Option<HeaderValue>,
}

impl<I> Gate<I> {
    /// Wrap `inner`; `server` is the `server` header of local replies.
    pub fn new(inner: I, limits: Limits, server: Option<HeaderValue>, state: Arc<GateState>) -> Self {
        Self {
            inner,
            limits,
            framing: Framing::Head,
            pending: BytesMut::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            cleared: 0,
            eof: false,
            reply: None,
            body_failed: false,
            state,
            server,
        }
    }

    /// Decide what the unchecked bytes at the front of `pending` are.
    fn classify(&mut self) {
        if self.pending.is_empty() || self.reply.is_some() {
            return;
        }
        match &mut self.framing {
            Framing::Head => match h1::parse_head(&self.pending, &self.limits) {
                Head::Incomplete => {}
                Head::Complete(info) => {
                    self.cleared = info.len;
                    if let Some((start, end)) = info.respace {
                        let line = h1::normalise_request_line(&self.pending[start..end]);
                        let mut head = BytesMut::with_capacity(self.pending.len());
                        head.put_slice(&self.pending[..start]);
                        head.put_slice(&line);
                        head.put_slice(&self.pending[end..]);
                        self.cleared -= (end - start) - line.len();
                        self.pending = head;
                    }
                    self.framing = if info.websocket {
                        Framing::Tunnel
                    } else {
                        match info.body {
                            BodyFraming::Empty => Framing::Head,
                            BodyFraming::Length(n) => Framing::Length(n),
                            BodyFraming::Chunked => Framing::Chunked(ChunkScanner::new()),
                        }
                    };
                }
                Head::Reject(r) => {
                    *self.state.rejected.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    self.reply = Some(local_reply(&r, self.server.as_ref()));
                    self.pending.clear();
                }
            },
            Framing::Length(n) => {
                let k = self.pending.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
                self.cleared = k;
                *n -= k as u64;
                if *n == 0 {
                    self.framing = Framing::Head;
                }
            }
            Framing::Chunked(s) => match s.scan(&self.pending) {
                Chunks::More => self.cleared = self.pending.len(),
                Chunks::Done(k) => {
                    self.cleared = k;
                    self.framing = Framing::Head;
                }
                Chunks::Invalid(k) => {
                    self.cleared = k;
                    self.body_failed = true;
                    self.state.body_error.store(true, Ordering::Release);
                }
            },
            Framing::Tunnel => self.cleared = self.pending.len(),
        }
    }
}

/// Envoy's local reply for a refused request, as bytes on the wire.
fn local_reply(r: &Reject, server: Option<&HeaderValue>) -> Bytes {
    let reason = h1::reason(r.status);
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(format!("HTTP/1.1 {} {reason}\r\n", r.status).as_bytes());
    let server_line = |out: &mut BytesMut| {
        if let Some(s) = server {
            out.put_slice(b"server: ");
            out.put_slice(s.as_bytes());
            out.put_slice(b"\r\n");
        }
    };
    match r.style {
        ReplyStyle::ReasonBody => {
            out.put_slice(
                format!("content-length: {}\r\ncontent-type: text/plain\r\ndate: {date}\r\n", reason.len()).as_bytes(),
            );
            server_line(&mut out);
            out.put_slice(b"connection: close\r\n\r\n");
            out.put_slice(reason.as_bytes());
        }
        ReplyStyle::Empty => {
            out.put_slice(format!("date: {date}\r\n").as_bytes());
            server_line(&mut out);
            out.put_slice(b"connection: close\r\ncontent-length: 0\r\n\r\n");
        }
    }
    out.freeze()
}

impl<I: AsyncRead + Unpin> AsyncRead for Gate<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.cleared > 0 {
                let n = this.cleared.min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                this.cleared -= n;
                return Poll::Ready(Ok(()));
            }
            if this.body_failed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "malformed chunked request body")));
            }
            if this.reply.is_some() || (this.eof && this.pending.is_empty()) {
                // The end of the stream, as far as hyper is concerned.
                return Poll::Ready(Ok(()));
            }
            this.classify();
            if this.cleared > 0 || this.reply.is_some() || this.body_failed {
                continue;
            }
            if this.eof {
                // An incomplete head at the end of the stream: nothing to forward.
                this.pending.clear();
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            this.pending.extend_from_slice(&this.scratch[..n]);
            if n == 0 {
                this.eof = true;
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Gate<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper shuts down once it has written everything it owes: the refusal goes last.
        let this = &mut *self;
        while let Some(reply) = this.reply.as_mut().filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, reply))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            reply.advance(n);
        }
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn through(input: &[u8]) -> (Vec<u8>, Vec<u8>, Arc<GateState>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let state = Arc::new(GateState::default());
        let mut g = Gate::new(server, Limits::default(), Some(HeaderValue::from_static("envoy")), state.clone());
        let mut passed = Vec::new();
        let _ = g.read_to_end(&mut passed).await;
        g.shutdown().await.unwrap();
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.unwrap();
        (passed, written, state)
    }

    #[tokio::test]
    async fn passes_valid_requests_and_stops_at_a_refused_one() {
        let ok = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut input = ok.to_vec();
        input.extend_from_slice(b"get /c HTTP/1.1\r\nHost: a\r\n\r\nGET /d HTTP/1.1\r\nHost: a\r\n\r\n");
        let (passed, written, state) = through(&input).await;
        assert_eq!(passed, ok);
        let w = String::from_utf8(written).unwrap();
        assert!(w.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n"), "{w}");
        assert!(w.contains("\r\nserver: envoy\r\nconnection: close\r\n\r\nBad Request"), "{w}");
        assert_eq!(state.rejected().map(|r| r.status), Some(400));
    }

    #[tokio::test]
    async fn chunked_bodies_are_checked() {
        let good = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        let (passed, written, state) = through(good).await;
        assert_eq!(passed, good);
        assert!(written.is_empty());
        assert!(!state.body_error.load(Ordering::Relaxed));

        let bad = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX";
        let (passed, _, state) = through(bad).await;
        assert_eq!(passed, &bad[..bad.len() - 2]);
        assert!(state.body_error.load(Ordering::Relaxed));
    }
}
