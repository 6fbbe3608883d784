//! Shared helpers for the in-process tests: proxy startup on 127.0.0.1 ephemeral ports with a
//! fixed "original destination", small upstream servers, and a raw HTTP/1 response reader
//! (raw sockets let tests see framing, versions and connection closes exactly).

// Not every test binary uses every helper; a panic is the failure report.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use meshpass_proxy::{FixedTarget, Proxy, ProxyConfig};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for any single wait in a test, so a bug fails the test instead of hanging it.
pub(crate) const GUARD: Duration = Duration::from_secs(60);

pub(crate) type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
pub(crate) type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync>;

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e: Infallible| match e {}).boxed()
}

/// A proxy config bound to 127.0.0.1:0 everywhere, with short test-friendly timeouts.
pub(crate) fn test_config() -> ProxyConfig {
    let lo = |_: u16| Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    ProxyConfig {
        outbound_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        inbound_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_addr: lo(0),
        readiness_addr: lo(0),
        prometheus_addr: lo(0),
        // Long enough that a busy CI machine never misclassifies a client that sends at once.
        sniff_timeout: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(5),
        ..ProxyConfig::default()
    }
}

pub(crate) async fn start_proxy(config: ProxyConfig, target: SocketAddr) -> Proxy {
    Proxy::start_with_resolver(config, Arc::new(FixedTarget::both(target))).await.expect("proxy starts")
}

/// What an upstream test server observed.
#[derive(Default, Debug)]
pub(crate) struct Seen {
    pub connections: AtomicUsize,
    pub peers: Mutex<Vec<SocketAddr>>,
    pub requests: Mutex<Vec<(http::request::Parts, SocketAddr)>>,
}

/// A hyper HTTP/1 upstream on 127.0.0.1:0 running `handler` for each request.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub(crate) async fn start(handler: Handler) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = l.accept().await else {
                    return;
                };
                s2.connections.fetch_add(1, Ordering::SeqCst);
                s2.peers.lock().unwrap().push(peer);
                let h = handler.clone();
                let s3 = s2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let h = h.clone();
                        let s3 = s3.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            s3.requests.lock().unwrap().push((parts.clone(), peer));
                            Ok::<_, Infallible>(h(Request::from_parts(parts, body)).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    /// Answers every request with `200 hello` and an app `server` header.
    pub(crate) async fn hello() -> Self {
        Self::start(Arc::new(|_req| {
            Box::pin(async {
                Response::builder().header("server", "testapp/1.0").header("x-app", "yes").body(full("hello")).unwrap()
            })
        }))
        .await
    }

    /// Echoes the request body back, streamed (so chunked when the request was).
    pub(crate) async fn echo() -> Self {
        Self::start(Arc::new(|req: Request<Incoming>| {
            Box::pin(async move {
                let body = req.into_body().map_err(|e| Box::new(e) as _).boxed();
                Response::new(body)
            })
        }))
        .await
    }

    pub(crate) fn last_request(&self) -> (http::request::Parts, SocketAddr) {
        self.seen.requests.lock().unwrap().last().cloned().expect("a request")
    }
}

/// A parsed HTTP/1 response read from a raw socket.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub status_line: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// Whether the body was chunked on the wire.
    pub chunked: bool,
}

impl RawResponse {
    pub(crate) fn status(&self) -> u16 {
        self.status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }
    pub(crate) fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(&k.to_ascii_lowercase()).map(String::as_str)
    }
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Buffered reader over a raw stream, keeping leftovers between responses.
pub(crate) struct RawReader<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> RawReader<S> {
    pub(crate) fn new(stream: S) -> Self {
        Self { stream, buf: Vec::new() }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = self.stream.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(l);
            }
            if self.fill().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Read a response head only (e.g. `100 Continue` or `101`).
    pub(crate) async fn head(&mut self) -> std::io::Result<(String, HashMap<String, String>)> {
        let status_line = self.line().await?;
        let mut headers = HashMap::new();
        loop {
            let l = self.line().await?;
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        Ok((status_line, headers))
    }

    /// Read a full response (`head_request`: no body expected).
    pub(crate) async fn response(&mut self, head_request: bool) -> std::io::Result<RawResponse> {
        let (status_line, headers) = self.head().await?;
        let mut chunked = false;
        let body = if head_request {
            Vec::new()
        } else if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            chunked = true;
            let mut body = Vec::new();
            loop {
                let size_line = self.line().await?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                if size == 0 {
                    // trailers until empty line
                    while !self.line().await?.is_empty() {}
                    break;
                }
                body.extend(self.exact(size).await?);
                self.exact(2).await?;
            }
            body
        } else if let Some(cl) = headers.get("content-length") {
            let n: usize = cl.parse().unwrap();
            self.exact(n).await?
        } else {
            // close-delimited
            while self.fill().await? > 0 {}
            std::mem::take(&mut self.buf)
        };
        Ok(RawResponse { status_line, headers, body, chunked })
    }

    /// The stream and any bytes already read past the last parsed message.
    pub(crate) fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// True when the peer closed (EOF or reset) with nothing more to read.
    pub(crate) async fn closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        matches!(self.fill().await, Ok(0) | Err(_))
    }
}

/// Connect, send `req` verbatim, read one response.
pub(crate) async fn raw_request(addr: SocketAddr, req: &[u8]) -> RawResponse {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let head = req.starts_with(b"HEAD ");
    let mut r = RawReader::new(s);
    tokio::time::timeout(GUARD, r.response(head)).await.expect("response in time").expect("response")
}

/// Deterministic pseudo-random bytes (splitmix64), so failures reproduce.
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub(crate) fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Poll `f` until it returns true (bounded by [`GUARD`]); for states that settle
/// asynchronously, such as a connection record being finalized after the client saw EOF.
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Resident set size of this process in KiB.
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Open file descriptors of this process.
pub(crate) fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// GET `path` from an admin-style listener, returning (status, body).
pub(crate) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r =
        raw_request(addr, format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes()).await;
    (r.status(), r.text())
}
