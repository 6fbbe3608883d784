//! Failure handling: dead, slow and resetting upstreams, vanishing and slow clients, and many
//! idle connections. No assertion depends on timing beyond configured timeouts firing.

// Test code: a panic is the failure report, also in helpers outside #[test] fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use meshpass_proxy::{Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn upstream_down_is_503() {
    let dead = free_port();
    let p = start_proxy(test_config(), dead).await;
    let r = raw_request(p.addrs().outbound, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status(), 503);
    assert!(r.text().contains("connection_refused"), "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("server"), Some("envoy"));
    eventually("record", || {
        p.connections().iter().any(|c| c.state == "closed" && c.last_status == 503 && c.outcome == "connection_refused")
    })
    .await;
}

#[tokio::test]
async fn tcp_to_dead_upstream_is_reset() {
    let p = start_proxy(test_config(), free_port()).await;
    let mut s = TcpStream::connect(p.addrs().outbound).await.unwrap();
    s.write_all(b"\x00binary").await.unwrap();
    let mut buf = Vec::new();
    // EOF or reset, but never a hang.
    let _ = tokio::time::timeout(GUARD, s.read_to_end(&mut buf)).await.unwrap();
    assert!(buf.is_empty());
}

#[tokio::test]
async fn slow_upstream_is_504_after_response_timeout() {
    // Accepts and reads, never answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            held.push(s);
        }
    });
    let cfg = ProxyConfig { response_timeout: Some(Duration::from_millis(300)), ..test_config() };
    let p = start_proxy(cfg, addr).await;
    let r = raw_request(p.addrs().inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status(), 504);
    assert_eq!(r.text(), "upstream request timeout\n");
    t.abort();
}

/// An upstream that answers a 200 with a 100,000-byte body, sends 1,000 bytes of it, waits
/// `pause` and then resets the connection.
async fn resetting_upstream(pause: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n").await.unwrap();
            s.write_all(&[b'x'; 1000]).await.unwrap();
            tokio::time::sleep(pause).await;
            // Zero linger: close with RST at once (does not block).
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
            drop(s); // RST
        }
    });
    (addr, t)
}

/// Send one request through the proxy and read until the proxy ends the connection: it must
/// not hang. Returns what the client received.
async fn read_until_closed(p: &Proxy) -> String {
    let mut s = TcpStream::connect(p.addrs().outbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(GUARD, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("proxy ends the downstream connection");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn upstream_reset_mid_body() {
    // The reset comes while the body streams: the client has the head and part of the body,
    // then the connection ends; it never receives a complete (fake) response.
    let (addr, t) = resetting_upstream(Duration::from_millis(200)).await;
    let p = start_proxy(test_config(), addr).await;
    let text = read_until_closed(&p).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body_len = text.len() - text.find("\r\n\r\n").unwrap() - 4;
    assert!(body_len < 100_000, "truncated, not completed");
    eventually("record notes the reset", || {
        p.connections().iter().any(|c| c.state == "closed" && c.outcome.starts_with("upstream_reset_mid_body"))
    })
    .await;
    t.abort();
}

#[tokio::test]
async fn upstream_reset_right_after_the_head() {
    // The reset can arrive in the same read as the head: then the proxy may not have flushed
    // the head yet, and the client gets a closed connection with at most a truncated response.
    let (addr, t) = resetting_upstream(Duration::ZERO).await;
    let p = start_proxy(test_config(), addr).await;
    let text = read_until_closed(&p).await;
    if let Some(head_end) = text.find("\r\n\r\n") {
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.len() - head_end - 4 < 100_000, "truncated, not completed");
    }
    eventually("record notes the reset", || {
        p.connections().iter().any(|c| c.state == "closed" && c.outcome.starts_with("upstream_reset"))
    })
    .await;
    // The proxy stays up: the next request is handled the same way, without hanging.
    let again = read_until_closed(&p).await;
    assert!(again.is_empty() || again.starts_with("HTTP/1.1 200"), "{again}");
    t.abort();
}

#[tokio::test]
async fn client_gone_mid_request() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<usize, String>>();
    let up = Upstream::start(Arc::new(move |req: Request<Incoming>| {
        let tx = tx.clone();
        Box::pin(async move {
            let r = req.into_body().collect().await.map(|b| b.to_bytes().len()).map_err(|e| e.to_string());
            let _ = tx.send(r);
            Response::new(full("done"))
        })
    }))
    .await;
    let p = start_proxy(test_config(), up.addr).await;
    let mut s = TcpStream::connect(p.addrs().inbound).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n").await.unwrap();
    s.write_all(&[b'a'; 1000]).await.unwrap();
    drop(s);
    let seen = tokio::time::timeout(GUARD, rx.recv()).await.unwrap().unwrap();
    assert!(seen.is_err(), "upstream must see an incomplete body, got {seen:?}");
    eventually("connection released", || p.active_connections() == 0).await;
    // Still healthy.
    let r = raw_request(p.addrs().inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn slowloris_is_cut_by_header_read_timeout() {
    let up = Upstream::hello().await;
    let cfg = ProxyConfig { header_read_timeout: Duration::from_millis(500), ..test_config() };
    let p = start_proxy(cfg, up.addr).await;
    let mut s = TcpStream::connect(p.addrs().inbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // Trickle one header line at a time, never finishing the head.
    let trickle = async {
        for i in 0.. {
            if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut b = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(GUARD, trickle).await.expect("the proxy closes a client that never completes its head");
    eventually("record says header_read_timeout", || {
        p.connections().iter().any(|c| c.state == "closed" && c.outcome == "header_read_timeout")
    })
    .await;
    assert!(up.seen.requests.lock().unwrap().is_empty(), "nothing forwarded");
}

#[tokio::test]
async fn oversized_header_is_rejected() {
    let up = Upstream::hello().await;
    let p = start_proxy(test_config(), up.addr).await;
    let big = "a".repeat(70 * 1024);
    let r =
        raw_request(p.addrs().inbound, format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
    assert_eq!(r.status(), 431);
}

#[tokio::test]
async fn malformed_request_is_400() {
    let up = Upstream::hello().await;
    let p = start_proxy(test_config(), up.addr).await;
    let r = raw_request(p.addrs().inbound, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header Without Colon\r\n\r\n").await;
    assert_eq!(r.status(), 400);
    assert!(up.seen.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn connection_limit_closes_extra_connections() {
    let up = Upstream::hello().await;
    let cfg = ProxyConfig { max_connections: 2, sniff_timeout: Duration::from_secs(30), ..test_config() };
    let p = start_proxy(cfg, up.addr).await;
    let _a = TcpStream::connect(p.addrs().inbound).await.unwrap();
    let _b = TcpStream::connect(p.addrs().inbound).await.unwrap();
    eventually("two active", || p.active_connections() == 2).await;
    let mut c = TcpStream::connect(p.addrs().inbound).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(GUARD, c.read(&mut buf)).await.unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "third connection closed");
    let text = p.shared().metrics.render();
    assert!(text.contains("meshpass_proxy_rejected_connections_total{direction=\"inbound\",reason=\"overflow\"} 1"));
}
