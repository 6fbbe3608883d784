//! HTTP/2 and gRPC at L7: prior-knowledge clients, HTTP/2 to upstreams on grpc ports, unary,
//! server-streaming and bidirectional calls, trailers, a large message, an upstream reset
//! mid-stream (the client gets a gRPC status, not a hang), local replies as gRPC statuses,
//! gRPC status metrics, and GOAWAY on drain. The gRPC app speaks the wire format directly
//! (length-prefixed messages, `grpc-status` trailers) over hyper's HTTP/2 server.

#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshpass_proxy::{PortProtocol, Proxy};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body fed frame by frame through a channel.
struct Frames(mpsc::Receiver<Result<Frame<Bytes>, BoxErr>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = BoxErr;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxErr>>> {
        self.0.poll_recv(cx)
    }
}

fn frames() -> (mpsc::Sender<Result<Frame<Bytes>, BoxErr>>, Frames) {
    let (tx, rx) = mpsc::channel(16);
    (tx, Frames(rx))
}

/// One gRPC message on the wire: uncompressed flag, big-endian length, payload.
fn grpc_msg(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(payload.len()).unwrap());
    b.put_slice(payload);
    b.freeze()
}

/// Splits gRPC messages out of a byte stream.
#[derive(Default)]
struct Deframer(BytesMut);

impl Deframer {
    fn push(&mut self, b: &[u8]) -> Vec<Bytes> {
        self.0.extend_from_slice(b);
        let mut out = Vec::new();
        while self.0.len() >= 5 {
            let len = u32::from_be_bytes([self.0[1], self.0[2], self.0[3], self.0[4]]) as usize;
            if self.0.len() < 5 + len {
                break;
            }
            self.0.advance(5);
            out.push(self.0.split_to(len).freeze());
        }
        out
    }
}

fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    t
}

/// The gRPC app: `/t.S/Unary` echoes one message, `/t.S/Stream` sends three messages (the
/// second and third only after `next` is notified), `/t.S/Bidi` echoes each message as it
/// comes, `/t.S/Reset` sends one message and then resets the stream.
async fn grpc_app(next: Arc<Notify>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let next = next.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let next = next.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        assert_eq!(req.version(), http::Version::HTTP_2, "the app is reached over HTTP/2");
                        let (tx, body) = frames();
                        let mut incoming = req.into_body();
                        tokio::spawn(async move {
                            let mut d = Deframer::default();
                            match path.as_str() {
                                "/t.S/Unary" => {
                                    let mut msgs = Vec::new();
                                    while let Some(Ok(f)) = incoming.frame().await {
                                        if let Ok(data) = f.into_data() {
                                            msgs.extend(d.push(&data));
                                        }
                                    }
                                    for m in msgs {
                                        let _ = tx.send(Ok(Frame::data(grpc_msg(&m)))).await;
                                    }
                                    let _ = tx.send(Ok(Frame::trailers(ok_trailers()))).await;
                                }
                                "/t.S/Stream" => {
                                    for i in 0..3u8 {
                                        if i > 0 {
                                            next.notified().await;
                                        }
                                        let _ = tx.send(Ok(Frame::data(grpc_msg(&[b'm', b'0' + i])))).await;
                                    }
                                    let _ = tx.send(Ok(Frame::trailers(ok_trailers()))).await;
                                }
                                "/t.S/Bidi" => {
                                    while let Some(Ok(f)) = incoming.frame().await {
                                        if let Ok(data) = f.into_data() {
                                            for m in d.push(&data) {
                                                let _ = tx.send(Ok(Frame::data(grpc_msg(&m)))).await;
                                            }
                                        }
                                    }
                                    let _ = tx.send(Ok(Frame::trailers(ok_trailers()))).await;
                                }
                                _ => {
                                    let _ = tx.send(Ok(Frame::data(grpc_msg(b"partial")))).await;
                                    next.notified().await;
                                    let _ = tx.send(Err("reset".into())).await;
                                }
                            }
                        });
                        let resp = Response::builder().header("content-type", "application/grpc").body(body).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, t)
}

async fn grpc_proxy(app: SocketAddr) -> Proxy {
    let mut cfg = test_config();
    cfg.outbound_ports.insert(app.port(), PortProtocol::Grpc);
    cfg.inbound_ports.insert(app.port(), PortProtocol::Grpc);
    start_proxy(cfg, app).await
}

/// An HTTP/2 prior-knowledge client connection.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Frames> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    tx
}

fn grpc_request(path: &str, body: Frames) -> Request<Frames> {
    Request::builder()
        .method("POST")
        .uri(format!("http://grpc.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

/// One `/t.S/Stream` call of the gRPC app, made through the sidecar's outbound listener.
struct OpenStream {
    /// Lets the app send its next message.
    next: Arc<Notify>,
    app: tokio::task::JoinHandle<()>,
    proxy: Proxy,
    client: hyper::client::conn::http2::SendRequest<Frames>,
    /// The response body, whose first message the app sends without waiting.
    body: Incoming,
}

/// Starts the gRPC app and a sidecar in front of it, and opens a server stream through it.
async fn open_stream() -> OpenStream {
    let next = Arc::new(Notify::new());
    let (addr, app) = grpc_app(next.clone()).await;
    let proxy = grpc_proxy(addr).await;
    let mut client = h2_client(proxy.addrs().outbound).await;
    let (tx, body) = frames();
    tx.send(Ok(Frame::data(grpc_msg(b"go")))).await.unwrap();
    drop(tx);
    let resp = client.send_request(grpc_request("/t.S/Stream", body)).await.unwrap();
    OpenStream { next, app, proxy, client, body: resp.into_body() }
}

/// Reads a response body: messages in order, then the trailers.
async fn read_all(mut b: Incoming) -> (Vec<Bytes>, Option<HeaderMap>) {
    let mut d = Deframer::default();
    let mut msgs = Vec::new();
    let mut trailers = None;
    while let Some(f) = tokio::time::timeout(GUARD, b.frame()).await.expect("body progresses") {
        let f = f.unwrap();
        match f.into_data() {
            Ok(data) => msgs.extend(d.push(&data)),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    (msgs, trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_with_trailers_and_a_large_message() {
    let (app, t) = grpc_app(Arc::new(Notify::new())).await;
    let p = grpc_proxy(app).await;
    for addr in [p.addrs().outbound, p.addrs().inbound] {
        let mut c = h2_client(addr).await;
        for size in [5usize, 8 * 1024 * 1024] {
            let payload = random_bytes(size, size as u64);
            let (tx, body) = frames();
            tx.send(Ok(Frame::data(grpc_msg(&payload)))).await.unwrap();
            drop(tx);
            let resp =
                tokio::time::timeout(GUARD, c.send_request(grpc_request("/t.S/Unary", body))).await.unwrap().unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "application/grpc");
            assert!(resp.headers().contains_key("x-envoy-upstream-service-time"));
            let (msgs, trailers) = read_all(resp.into_body()).await;
            assert_eq!(msgs.len(), 1);
            assert_eq!(msgs[0].len(), size);
            assert!(msgs[0] == payload, "message intact");
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
        }
    }
    let m = p.shared().metrics.clone();
    assert_eq!(m.dir(meshpass_proxy::Direction::Outbound).grpc_responses(0), 2);
    assert_eq!(m.dir(meshpass_proxy::Direction::Inbound).grpc_responses(0), 2);
    let text = m.render();
    assert!(text.contains("meshpass_proxy_grpc_responses_total{direction=\"outbound\",grpc_status=\"0\"} 2"), "{text}");
    t.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_streaming_is_not_buffered() {
    // The sidecar and the client connection stay up until the end of the test.
    let OpenStream { next, app: t, proxy: _proxy, client: _client, body: mut b } = open_stream().await;
    let mut d = Deframer::default();
    let mut got = Vec::new();
    // Each message must arrive before the app is allowed to send the next one.
    while got.len() < 3 {
        let f = tokio::time::timeout(GUARD, b.frame()).await.expect("message streamed").unwrap().unwrap();
        if let Ok(data) = f.into_data() {
            let before = got.len();
            got.extend(d.push(&data));
            if got.len() > before {
                next.notify_one();
            }
        }
    }
    assert_eq!(got, vec![Bytes::from_static(b"m0"), Bytes::from_static(b"m1"), Bytes::from_static(b"m2")]);
    let (_, trailers) = read_all(b).await;
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    t.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidirectional_streaming() {
    let (app, t) = grpc_app(Arc::new(Notify::new())).await;
    let p = grpc_proxy(app).await;
    let mut c = h2_client(p.addrs().inbound).await;
    let (tx, body) = frames();
    let resp = c.send_request(grpc_request("/t.S/Bidi", body)).await.unwrap();
    let mut b = resp.into_body();
    let mut d = Deframer::default();
    // Ping-pong: the next message is sent only after the previous echo came back.
    for i in 0..5u8 {
        let m = [b'p', b'0' + i];
        tx.send(Ok(Frame::data(grpc_msg(&m)))).await.unwrap();
        let mut echoed = Vec::new();
        while echoed.is_empty() {
            let f = tokio::time::timeout(GUARD, b.frame()).await.expect("echo").unwrap().unwrap();
            echoed = d.push(&f.into_data().unwrap());
        }
        assert_eq!(echoed, vec![Bytes::copy_from_slice(&m)]);
    }
    drop(tx);
    let (_, trailers) = read_all(b).await;
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    t.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_stream_becomes_a_grpc_status() {
    let next = Arc::new(Notify::new());
    let (app, t) = grpc_app(next.clone()).await;
    let p = grpc_proxy(app).await;
    let mut c = h2_client(p.addrs().outbound).await;
    let (tx, body) = frames();
    drop(tx);
    let resp = c.send_request(grpc_request("/t.S/Reset", body)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut b = resp.into_body();
    let f = tokio::time::timeout(GUARD, b.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(Deframer::default().push(&f.into_data().unwrap()), vec![Bytes::from_static(b"partial")]);
    next.notify_one();
    let (_, trailers) = read_all(b).await;
    let trailers = trailers.expect("trailers, not a broken stream");
    assert_eq!(trailers["grpc-status"], "14");
    assert_eq!(p.shared().metrics.dir(meshpass_proxy::Direction::Outbound).grpc_responses(14), 1);
    drop(c);
    eventually("the record blames the upstream", || {
        p.connections().iter().any(|c| {
            c.state == "closed" && c.response_flags == "UC" && c.error_source == Some(meshpass_proxy::Source::Upstream)
        })
    })
    .await;
    t.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_to_a_dead_upstream_gets_unavailable() {
    let dead = free_port();
    let p = grpc_proxy(dead).await;
    let mut c = h2_client(p.addrs().outbound).await;
    let (tx, body) = frames();
    drop(tx);
    let resp = tokio::time::timeout(GUARD, c.send_request(grpc_request("/t.S/Unary", body))).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "trailers-only gRPC response");
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert!(resp.headers()["grpc-message"].to_str().unwrap().contains("upstream connect error"));
    assert_eq!(resp.headers()["server"], "envoy");
    assert!(resp.into_body().is_end_stream());
}

/// HTTP/2 from the client to a plain HTTP port: the app gets HTTP/1.1 with `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_to_http1_app() {
    let up = Upstream::hello().await;
    let mut cfg = test_config();
    cfg.inbound_ports.insert(up.addr.port(), PortProtocol::Http);
    let p = start_proxy(cfg, up.addr).await;
    let mut c = h2_client(p.addrs().inbound).await;
    let (tx, body) = frames();
    drop(tx);
    let req = Request::builder().uri("http://hello.test/x/../y").body(body).unwrap();
    let resp = tokio::time::timeout(GUARD, c.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["server"], "istio-envoy");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "hello");
    let (parts, _) = up.last_request();
    assert_eq!(parts.version, http::Version::HTTP_11);
    assert_eq!(parts.uri, "/y", "path normalised, origin form");
    assert_eq!(parts.headers["host"], "hello.test");
    assert!(parts.headers.contains_key("x-request-id"));
    assert_eq!(p.connections()[0].protocol, Some(meshpass_proxy::Protocol::Http2));
}

/// Sniffed HTTP/2 (undeclared port) goes to the app in HTTP/2, as Istio's clusters for
/// undeclared ports use the client's protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sniffed_h2_uses_the_clients_protocol_upstream() {
    let (app, t) = grpc_app(Arc::new(Notify::new())).await;
    let p = start_proxy(test_config(), app).await;
    let mut c = h2_client(p.addrs().outbound).await;
    let (tx, body) = frames();
    tx.send(Ok(Frame::data(grpc_msg(b"x")))).await.unwrap();
    drop(tx);
    let resp = tokio::time::timeout(GUARD, c.send_request(grpc_request("/t.S/Unary", body))).await.unwrap().unwrap();
    let (msgs, trailers) = read_all(resp.into_body()).await;
    assert_eq!(msgs, vec![Bytes::from_static(b"x")]);
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    t.abort();
}

/// Drain: the client gets GOAWAY (no new streams), the stream in flight completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_on_drain_lets_streams_in_flight_finish() {
    let OpenStream { next, app: t, proxy: p, client: mut c, body: mut b } = open_stream().await;
    let first = tokio::time::timeout(GUARD, b.frame()).await.unwrap().unwrap().unwrap();
    assert!(first.is_data());
    let shutdown = tokio::spawn(p.shutdown());
    // The GOAWAY reaches the client: new streams are refused.
    let mut refused = false;
    for _ in 0..200 {
        let (tx2, body2) = frames();
        drop(tx2);
        if c.ready().await.is_err() || c.send_request(grpc_request("/t.S/Unary", body2)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(refused, "new streams refused after GOAWAY");
    next.notify_one();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    next.notify_one();
    let (rest, trailers) = read_all(b).await;
    assert_eq!(rest.len(), 2, "the stream in flight finished");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    tokio::time::timeout(GUARD, shutdown).await.unwrap().unwrap().unwrap();
    t.abort();
}

/// An HTTP/2 app that refuses (`REFUSED_STREAM`) the second stream of its first connection
/// and answers every other request `200 ok`; it counts connections and answered requests.
async fn refusing_app() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let a = answered.clone();
    let t = tokio::spawn(async move {
        let mut conns = 0usize;
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            conns += 1;
            let first = conns == 1;
            let a = a.clone();
            tokio::spawn(async move {
                let mut c = h2::server::handshake(s).await.unwrap();
                let mut streams = 0usize;
                while let Some(Ok((_req, mut respond))) = c.accept().await {
                    streams += 1;
                    if first && streams == 2 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    a.fetch_add(1, Ordering::SeqCst);
                    let mut tx = respond.send_response(Response::new(()), false).unwrap();
                    tx.send_data(Bytes::from_static(b"ok"), true).unwrap();
                }
            });
        }
    });
    (addr, answered, t)
}

/// A stream the app refuses unprocessed (`REFUSED_STREAM`) is sent again on a new
/// connection: the client gets the app's answer, not a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_sent_again_on_a_new_connection() {
    use std::sync::atomic::Ordering;
    let (app, answered, t) = refusing_app().await;
    let mut cfg = test_config();
    cfg.inbound_ports.insert(app.port(), PortProtocol::Http2);
    let p = start_proxy(cfg, app).await;
    let s = TcpStream::connect(p.addrs().inbound).await.unwrap();
    let (mut c, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        // No body: the request's HEADERS end the stream.
        let body = http_body_util::Empty::<Bytes>::new();
        let req = Request::builder().uri(format!("http://app.test/{i}")).body(body).unwrap();
        let resp = tokio::time::timeout(GUARD, c.send_request(req)).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    assert_eq!(answered.load(Ordering::SeqCst), 3, "each request answered once");
    t.abort();
}
