//! In-process HTTP/1 behaviour through the proxy: framing, streaming, keep-alive, upgrades and
//! the Envoy-compatible headers. The "original destination" is injected with `FixedTarget`.

// Test code: a panic is the failure report, also in helpers outside #[test] fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use meshpass_proxy::{FixedTarget, Proxy, ProxyConfig, ServiceBinding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn inbound_headers_like_istio_sidecar() {
    let up = Upstream::hello().await;
    let cfg = ProxyConfig {
        services: vec![ServiceBinding {
            fqdn: "hello.default.svc.cluster.local".into(),
            port: 80,
            target_port: Some(up.addr.port()),
        }],
        ..test_config()
    };
    let p = start_proxy(cfg, up.addr).await;
    let r = raw_request(p.addrs().inbound, b"GET /x HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status(), 200);
    assert!(r.status_line.starts_with("HTTP/1.1 "));
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("server"), Some("istio-envoy"), "app server header replaced");
    assert_eq!(r.header("x-app"), Some("yes"));
    let ms: u64 = r.header("x-envoy-upstream-service-time").unwrap().parse().unwrap();
    assert!(ms < 60_000);
    assert_eq!(r.header("x-envoy-decorator-operation"), Some("hello.default.svc.cluster.local:80/*"));
    let (parts, peer) = up.last_request();
    assert_eq!(peer.ip().to_string(), "127.0.0.6", "inbound comes from 127.0.0.6");
    assert_eq!(parts.headers["x-forwarded-proto"], "http");
    assert_eq!(parts.headers["x-request-id"].len(), 36);
    assert!(parts.headers.get("x-envoy-attempt-count").is_none());
    assert!(parts.headers.get("connection").is_none(), "hop-by-hop stripped");
}

#[tokio::test]
async fn outbound_headers_like_istio_outbound_listener() {
    let up = Upstream::hello().await;
    let p = start_proxy(test_config(), up.addr).await;
    let r = raw_request(p.addrs().outbound, b"GET / HTTP/1.1\r\nHost: hello\r\nx-request-id: keep-me\r\n\r\n").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("server"), Some("envoy"));
    assert!(r.header("x-envoy-upstream-service-time").is_some());
    assert!(r.header("x-envoy-decorator-operation").is_none());
    let (parts, peer) = up.last_request();
    assert_eq!(peer.ip().to_string(), "127.0.0.1", "outbound keeps the default source");
    assert_eq!(parts.headers["x-request-id"], "keep-me", "existing id preserved");
    assert_eq!(parts.headers["x-envoy-attempt-count"], "1");
}

#[tokio::test]
async fn server_header_pass_through_and_debug_headers_off() {
    let up = Upstream::hello().await;
    let cfg = ProxyConfig { inbound_server_header: None, envoy_debug_headers: false, ..test_config() };
    let p = start_proxy(cfg, up.addr).await;
    let r = raw_request(p.addrs().inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.header("server"), Some("testapp/1.0"));
    assert!(r.header("x-envoy-upstream-service-time").is_none());
}

#[tokio::test]
async fn chunked_request_and_response() {
    let up = Upstream::echo().await;
    let p = start_proxy(test_config(), up.addr).await;
    let r = raw_request(
        p.addrs().inbound,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.chunked, "streamed response re-chunked: {:?}", r.headers);
    assert_eq!(r.text(), "hello world");
    let (parts, _) = up.last_request();
    assert_eq!(parts.headers["transfer-encoding"], "chunked");
}

/// 100 MB each way with flow control in the test itself: the sender never gets more than
/// `WINDOW` ahead of what the receiver has seen. A proxy that buffered a whole body would
/// deadlock this test (caught by the guard), so passing proves streaming; RSS is also checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_100mb_both_ways_with_bounded_memory() {
    const TOTAL: u64 = 100 * 1024 * 1024;
    const WINDOW: u64 = 8 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let upstream_got = Arc::new(AtomicU64::new(0));
    let client_got = Arc::new(AtomicU64::new(0));

    let (ug, cg) = (upstream_got.clone(), client_got.clone());
    let up = Upstream::start(Arc::new(move |req: Request<Incoming>| {
        let (ug, cg) = (ug.clone(), cg.clone());
        Box::pin(async move {
            // Consume the request body, counting.
            let mut body = req.into_body();
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    ug.fetch_add(d.len() as u64, Ordering::SeqCst);
                }
            }
            // Produce the response body lazily, gated on what the client has received.
            let body = GatedBody {
                produced: 0,
                total: TOTAL,
                chunk: Bytes::from(vec![b'r'; CHUNK]),
                gate: cg,
                window: WINDOW,
                sleep: None,
            };
            Response::builder().header("content-length", TOTAL.to_string()).body(body.boxed()).unwrap()
        })
    }))
    .await;
    let p = start_proxy(test_config(), up.addr).await;
    let rss_before = rss_kib();
    let peak = Arc::new(AtomicU64::new(rss_before));

    let mut s = TcpStream::connect(p.addrs().inbound).await.unwrap();
    s.write_all(
        format!("PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: {TOTAL}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let ug = upstream_got.clone();
    let pk = peak.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'q'; CHUNK];
        let mut sent = 0u64;
        while sent < TOTAL {
            while sent > ug.load(Ordering::SeqCst) + WINDOW {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            wr.write_all(&chunk).await.unwrap();
            sent += CHUNK as u64;
            pk.fetch_max(rss_kib(), Ordering::SeqCst);
        }
        wr
    });
    let cg = client_got.clone();
    let pk = peak.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        let mut head = Vec::new();
        // skip the response head
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            rd.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            cg.fetch_add(n as u64, Ordering::SeqCst);
            pk.fetch_max(rss_kib(), Ordering::SeqCst);
        }
        head
    });
    let _wr = tokio::time::timeout(Duration::from_secs(300), writer)
        .await
        .expect("request body streamed (proxy must not buffer it)")
        .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("response body streamed (proxy must not buffer it)")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(upstream_got.load(Ordering::SeqCst), TOTAL);
    assert_eq!(client_got.load(Ordering::SeqCst), TOTAL);
    let growth_mib = (peak.load(Ordering::SeqCst).saturating_sub(rss_before)) / 1024;
    // Loose: in-flight is bounded by 2 x WINDOW plus socket and hyper buffers; a whole
    // 100 MB body held anywhere would exceed this.
    assert!(growth_mib < 64, "RSS grew by {growth_mib} MiB while streaming 2 x 100 MB");
}

/// A response body of `total` bytes produced only while the consumer is less than `window`
/// behind (`gate` counts what the client received).
struct GatedBody {
    produced: u64,
    total: u64,
    chunk: Bytes,
    gate: Arc<AtomicU64>,
    window: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for GatedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.produced >= self.total {
            return Poll::Ready(None);
        }
        while self.produced > self.gate.load(Ordering::SeqCst) + self.window {
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(1))));
            std::task::ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        let n = self.chunk.len() as u64;
        self.produced += n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test]
async fn expect_100_continue() {
    let up = Upstream::echo().await;
    let p = start_proxy(test_config(), up.addr).await;
    let mut s = TcpStream::connect(p.addrs().inbound).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut r = RawReader::new(s);
    // The client must get the interim response before it sends the body.
    let (line, _) = tokio::time::timeout(GUARD, r.head()).await.unwrap().unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue");
    r.stream.write_all(b"hello").await.unwrap();
    let resp = r.response(false).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text(), "hello");
    let (parts, _) = up.last_request();
    // Envoy's default: the proxy answers 100-continue itself and does not forward Expect.
    assert!(parts.headers.get("expect").is_none());
}

#[tokio::test]
async fn keep_alive_reuses_one_upstream_connection() {
    let up = Upstream::hello().await;
    let p = start_proxy(test_config(), up.addr).await;
    // One downstream connection, N requests.
    let s = TcpStream::connect(p.addrs().outbound).await.unwrap();
    let mut r = RawReader::new(s);
    for i in 0..20 {
        r.stream.write_all(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.unwrap();
        let resp = r.response(false).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text(), "hello");
    }
    drop(r);
    // Further downstream connections, one after another, reuse the pooled upstream one.
    for _ in 0..5 {
        let resp = raw_request(p.addrs().outbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(up.seen.requests.lock().unwrap().len(), 25);
    assert_eq!(up.seen.connections.load(Ordering::SeqCst), 1, "upstream saw one connection");
}

#[tokio::test]
async fn pooled_connection_closed_by_the_upstream_is_not_used_again() {
    // An app that closes each keep-alive connection shortly after its answer (as servers do at
    // their idle timeout), and says when it has.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    let t = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            acc.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
            let _ = closed_tx.send(());
        }
    });
    let p = start_proxy(test_config(), addr).await;
    for i in 0..3 {
        let resp = raw_request(p.addrs().outbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!((resp.status(), resp.text().as_str()), (200, "ok"), "request {i}");
        // The pooled connection is closed by the app before the next request takes it: the
        // proxy must notice and open a new one instead of answering 503.
        closed_rx.recv().await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "one upstream connection per request");
    t.abort();
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let up = Upstream::hello().await;
    let p = start_proxy(test_config(), up.addr).await;
    let mut s = TcpStream::connect(p.addrs().inbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut r = RawReader::new(s);
    let resp = r.response(false).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(tokio::time::timeout(GUARD, r.closed()).await.unwrap(), "proxy closed the connection");
    // The upstream connection stays pooled: `Connection: close` is hop-by-hop.
    let (parts, _) = up.last_request();
    assert!(parts.headers.get("connection").is_none());
}

/// With Istio's `HTTP10` switch on, an HTTP/1.0 client is served in HTTP/1.0.
#[tokio::test]
async fn http10_client_with_the_http10_switch() {
    let up = Upstream::hello().await;
    let p = start_proxy(ProxyConfig { accept_http_10: true, ..test_config() }, up.addr).await;
    let mut s = TcpStream::connect(p.addrs().inbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await.unwrap();
    let mut r = RawReader::new(s);
    let resp = r.response(false).await.unwrap();
    assert!(resp.status_line.starts_with("HTTP/1.0 200"), "{}", resp.status_line);
    assert_eq!(resp.text(), "hello");
    assert_eq!(resp.header("server"), Some("istio-envoy"));
    assert!(tokio::time::timeout(GUARD, r.closed()).await.unwrap(), "1.0 without keep-alive closes");
    let (parts, _) = up.last_request();
    assert_eq!(parts.version, http::Version::HTTP_11, "upstream always gets HTTP/1.1");
}

/// By default (as Istio's sidecar) HTTP/1.0 requests are not HTTP: on a declared HTTP port
/// they get 426 from the proxy; on an undeclared port the sniffer passes them on as TCP.
#[tokio::test]
async fn http10_refused_by_default() {
    let up = Upstream::hello().await;
    let mut cfg = test_config();
    cfg.inbound_ports.insert(up.addr.port(), meshpass_proxy::PortProtocol::Http);
    let p = start_proxy(cfg, up.addr).await;
    let resp = raw_request(p.addrs().inbound, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert_eq!(resp.status(), 426);
    assert_eq!(resp.text(), "Upgrade Required");
    assert_eq!(resp.header("server"), Some("istio-envoy"));
    assert!(up.seen.requests.lock().unwrap().is_empty(), "nothing reached the app");

    // Undeclared: opaque TCP, so the app answers HTTP/1.0 itself, without the proxy's headers.
    let p = start_proxy(test_config(), up.addr).await;
    let resp = raw_request(p.addrs().inbound, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(resp.status_line.starts_with("HTTP/1.0 200"), "{}", resp.status_line);
    assert_eq!(resp.header("server"), Some("testapp/1.0"));
    let recs = p.connections();
    assert_eq!(recs[0].protocol, Some(meshpass_proxy::Protocol::Tcp));
}

/// An app that answers like Python's BaseHTTPRequestHandler (Werkzeug dev server): HTTP/1.0,
/// no Content-Length, body delimited by closing the connection.
async fn http10_app() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&b[..n]);
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.0 200 OK\r\nServer: Werkzeug/3.0.1 Python/3.11\r\nContent-Type: text/plain\r\n\r\nhello from werkzeug",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, t)
}

#[tokio::test]
async fn http10_upstream_to_http11_and_http10_clients() {
    let (app, t) = http10_app().await;
    let p = start_proxy(ProxyConfig { accept_http_10: true, ..test_config() }, app).await;
    // HTTP/1.1 client: gets an HTTP/1.1 response (chunked, since the length is unknown) and
    // can keep using its connection.
    let s = TcpStream::connect(p.addrs().inbound).await.unwrap();
    let mut r = RawReader::new(s);
    for _ in 0..3 {
        r.stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let resp = tokio::time::timeout(GUARD, r.response(false)).await.unwrap().unwrap();
        assert!(resp.status_line.starts_with("HTTP/1.1 200"), "{}", resp.status_line);
        assert!(resp.chunked);
        assert_eq!(resp.text(), "hello from werkzeug");
        assert_eq!(resp.header("server"), Some("istio-envoy"));
        assert!(resp.header("x-envoy-upstream-service-time").is_some());
    }
    // HTTP/1.0 client: HTTP/1.0 response, close-delimited.
    let resp = raw_request(p.addrs().inbound, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(resp.status_line.starts_with("HTTP/1.0 200"), "{}", resp.status_line);
    assert!(!resp.chunked);
    assert_eq!(resp.text(), "hello from werkzeug");
    t.abort();
}

#[tokio::test]
async fn websocket_upgrade_carries_bytes_both_ways() {
    let up = Upstream::start(Arc::new(|mut req: Request<Incoming>| {
        Box::pin(async move {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(on.await.unwrap());
                io.write_all(b"hello-from-upstream").await.unwrap();
                let mut buf = [0u8; 4];
                io.read_exact(&mut buf).await.unwrap();
                io.write_all(&[b"echo:".as_slice(), &buf].concat()).await.unwrap();
                io.shutdown().await.unwrap();
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(full(""))
                .unwrap()
        })
    }))
    .await;
    let p = start_proxy(test_config(), up.addr).await;
    let mut s = TcpStream::connect(p.addrs().inbound).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut r = RawReader::new(s);
    let (line, h) = tokio::time::timeout(GUARD, r.head()).await.unwrap().unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    assert_eq!(h.get("upgrade").map(String::as_str), Some("websocket"));
    assert_eq!(h.get("server").map(String::as_str), Some("istio-envoy"));
    let (parts, _) = up.last_request();
    assert_eq!(parts.headers["upgrade"], "websocket");
    let (mut s, mut got) = r.into_parts();
    while got.len() < "hello-from-upstream".len() {
        let mut b = [0u8; 64];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "tunnel closed early");
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(got, b"hello-from-upstream");
    s.write_all(b"ping").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(rest, b"echo:ping");
}

#[tokio::test]
async fn direct_connection_to_listener_is_refused_not_looped() {
    // Real SO_ORIGINAL_DST resolver, no NAT: the "original destination" is the listener
    // itself (or unknown). Must answer an error, never connect to itself.
    let p = Proxy::start_with_resolver(test_config(), Arc::new(meshpass_proxy::SoOriginalDst)).await.unwrap();
    for addr in [p.addrs().inbound, p.addrs().outbound] {
        let r = raw_request(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(r.status(), 502);
        assert!(r.text().contains("no original destination"), "{}", r.text());
    }
    // Same with a resolver that names the listener explicitly.
    let cfg = test_config();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let inbound = l.local_addr().unwrap();
    drop(l);
    let p2 = Proxy::start_with_resolver(
        ProxyConfig { inbound_addr: inbound, ..cfg },
        Arc::new(FixedTarget { inbound: Some(inbound), outbound: None }),
    )
    .await
    .unwrap();
    let r = raw_request(inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status(), 502);
    assert!(r.text().contains("own listener"), "{}", r.text());
    eventually("two records, both rejected", || {
        let recs = p2.connections();
        recs.len() == 1 && recs[0].state == "closed" && recs[0].outcome.starts_with("no_original_dst")
    })
    .await;
}
