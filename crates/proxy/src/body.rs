//! Streaming body types. Bodies are forwarded frame by frame as hyper yields them — never
//! collected — so memory per request is bounded by hyper's read buffers, whatever the size.
//!
//! The wrappers exist to learn *when* each side of an exchange ended, which decides whether
//! the upstream connection can be reused (both ended cleanly) or must be dropped.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::metrics::Metrics;
use crate::orig_dst::Direction;
use crate::pool::{Pool, PoolKey, Sender};
use crate::record::ConnHandle;

/// Watches a gRPC response body: counts its `grpc-status` and, if the upstream fails after
/// the response headers went out, ends the body with `grpc-status: 14` (UNAVAILABLE) trailers
/// instead of leaving the client with a broken stream.
#[derive(Debug)]
pub struct GrpcWatch {
    /// Where the status is counted.
    pub metrics: Arc<Metrics>,
    /// Direction label.
    pub direction: Direction,
    /// Trailers (with a status) have passed.
    pub saw_status: bool,
    /// The body has ended (after synthetic trailers).
    pub finished: bool,
}

/// The `grpc-status` in `h`, if any.
pub fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// A downstream request body on its way upstream; flags `done` at its clean end.
#[derive(Debug)]
pub struct RequestBody {
    /// `None`: an empty body of the proxy's own (a bodiless request sent again).
    inner: Option<Incoming>,
    done: Arc<AtomicBool>,
    /// An empty body says nothing of its size, so hyper's HTTP/2 client adds no
    /// `content-length: 0` (Envoy's HTTP/2 upstreams get none).
    quiet_when_empty: bool,
}

impl RequestBody {
    /// Wrap `inner`; `done` is set now if it is already empty.
    pub fn new(inner: Incoming) -> (Self, Arc<AtomicBool>) {
        let done = Arc::new(AtomicBool::new(inner.is_end_stream()));
        (Self { inner: Some(inner), done: done.clone(), quiet_when_empty: false }, done)
    }

    /// An empty body toward an HTTP/2 upstream, for a bodiless request sent again.
    pub fn empty_h2() -> Self {
        Self { inner: None, done: Arc::new(AtomicBool::new(true)), quiet_when_empty: true }
    }

    /// For an HTTP/2 upstream: see `quiet_when_empty`.
    pub fn quiet_when_empty(&mut self) {
        self.quiet_when_empty = true;
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let r = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.done.store(true, Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) if !(self.quiet_when_empty && inner.is_end_stream()) => inner.size_hint(),
            Some(_) => SizeHint::default(),
            None if self.quiet_when_empty => SizeHint::default(),
            None => SizeHint::with_exact(0),
        }
    }
}

/// What to do with the upstream connection once the response body has ended.
#[derive(Debug)]
pub struct Checkin {
    /// Pool to return to.
    pub pool: Arc<Pool>,
    /// Pool key.
    pub key: PoolKey,
    /// The connection.
    pub sender: Sender,
    /// Set when the request body was fully sent.
    pub request_done: Arc<AtomicBool>,
}

impl Checkin {
    fn finish(self) {
        // A response can complete before the request body was sent (e.g. an early 413);
        // such a connection is mid-message and must not be reused.
        if self.request_done.load(Ordering::Acquire) {
            self.pool.put(self.key, self.sender);
        }
    }
}

/// Response body sent downstream.
#[derive(Debug)]
pub enum ResponseBody {
    /// Streamed from the upstream.
    Upstream {
        /// The upstream body.
        inner: Incoming,
        /// Connection return, taken at the end of the body.
        checkin: Option<Checkin>,
        /// Connection record, to note a reset mid-body.
        conn: ConnHandle,
        /// Set for gRPC responses.
        grpc: Option<Box<GrpcWatch>>,
    },
    /// A proxy-generated body (local reply).
    Local(Option<Bytes>),
}

impl ResponseBody {
    /// A local reply body.
    pub fn local(b: impl Into<Bytes>) -> Self {
        ResponseBody::Local(Some(b.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Local(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Upstream { inner, checkin, conn, grpc } => {
                if grpc.as_ref().is_some_and(|g| g.finished) {
                    return Poll::Ready(None);
                }
                let r = Pin::new(inner).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => {
                        if let Some(c) = checkin.take() {
                            c.finish();
                        }
                    }
                    Poll::Ready(Some(Ok(f))) => {
                        if let (Some(g), Some(t)) = (grpc.as_mut(), f.trailers_ref()) {
                            if let Some(s) = grpc_status(t) {
                                g.metrics.dir(g.direction).grpc_status(s);
                                g.saw_status = true;
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        conn.set_outcome(crate::outcome::Outcome::new(
                            crate::outcome::Flag::UpstreamConnectionTermination,
                            format!("upstream_reset_mid_body: {e}"),
                        ));
                        checkin.take();
                        if let Some(g) = grpc.as_mut().filter(|g| !g.saw_status) {
                            g.finished = true;
                            g.metrics.dir(g.direction).grpc_status(14);
                            let mut t = http::HeaderMap::new();
                            t.insert("grpc-status", http::HeaderValue::from_static("14"));
                            t.insert(
                                "grpc-message",
                                http::HeaderValue::from_static(
                                    "upstream connection termination after response headers",
                                ),
                            );
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                    }
                    _ => {}
                }
                r
            }
            ResponseBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { inner, grpc, .. } => {
                inner.is_end_stream() || grpc.as_ref().is_some_and(|g| g.finished)
            }
            ResponseBody::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
            ResponseBody::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper does not poll a body that is already at its end (Content-Length: 0, HEAD,
        // 204, 304), so the clean end may only be visible here.
        if let ResponseBody::Upstream { inner, checkin, .. } = self {
            if inner.is_end_stream() {
                if let Some(c) = checkin.take() {
                    c.finish();
                }
            }
        }
    }
}
