//! In-process opaque-TCP behaviour: byte-exact forwarding, half-close, server-first protocols
//! and HTTP/2 prior knowledge.

// Test code: a panic is the failure report, also in helpers outside #[test] fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use meshpass_proxy::{Protocol, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw TCP upstream running `f` on each accepted connection.
async fn tcp_upstream<F, Fut>(f: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(f(s));
        }
    });
    (addr, t)
}

#[tokio::test]
async fn random_bytes_both_ways_byte_exact() {
    const N: usize = 4 * 1024 * 1024;
    let to_up = random_bytes(N, 1);
    let to_down = random_bytes(N, 2);
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(Some(tx));
    let send_back = to_down.clone();
    let (addr, t) = tcp_upstream(move |s| {
        let tx = tx.lock().unwrap().take();
        let send_back = send_back.clone();
        async move {
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                w.write_all(&send_back).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            if let Some(tx) = tx {
                let _ = tx.send(got);
            }
        }
    })
    .await;
    let p = start_proxy(test_config(), addr).await;
    // Make sure the first byte cannot look like an HTTP method.
    let mut payload = to_up.clone();
    payload[0] = 0x16;
    let s = TcpStream::connect(p.addrs().outbound).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let pl = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&pl).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(GUARD, r.read_to_end(&mut got)).await.unwrap().unwrap();
    writer.await.unwrap();
    assert!(got == to_down, "downstream received exactly the upstream's bytes");
    let up_got = tokio::time::timeout(GUARD, rx).await.unwrap().unwrap();
    assert!(up_got == payload, "upstream received exactly the client's bytes");
    eventually("record closed", || {
        p.connections().iter().any(|r| r.state == "closed" && r.protocol == Some(Protocol::Tcp))
    })
    .await;
    let rec = p.connections().pop().unwrap();
    assert_eq!(rec.bytes_received, N as u64);
    assert_eq!(rec.bytes_sent, N as u64);
    assert_eq!(rec.outcome, "ok");
    t.abort();
}

#[tokio::test]
async fn half_close_propagates() {
    // The upstream answers only after the client's EOF reaches it.
    let (addr, t) = tcp_upstream(|mut s| async move {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let p = start_proxy(test_config(), addr).await;
    let mut s = TcpStream::connect(p.addrs().inbound).await.unwrap();
    s.write_all(b"\x00\x01binary-protocol-payload").await.unwrap();
    s.shutdown().await.unwrap(); // half-close: we can still read
    let mut resp = String::new();
    tokio::time::timeout(GUARD, s.read_to_string(&mut resp)).await.unwrap().unwrap();
    assert_eq!(resp, "got 25 bytes");
    t.abort();
}

#[tokio::test]
async fn server_first_protocol() {
    let (addr, t) = tcp_upstream(|mut s| async move {
        s.write_all(b"220 smtp.example ESMTP ready\r\n").await.unwrap();
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"QUIT\r\n");
        s.write_all(b"221 bye\r\n").await.unwrap();
    })
    .await;
    let cfg = ProxyConfig { sniff_timeout: Duration::from_millis(100), ..test_config() };
    let p = start_proxy(cfg, addr).await;
    let s = TcpStream::connect(p.addrs().outbound).await.unwrap();
    // Say nothing: the server must get to speak first.
    let mut r = RawReader::new(s);
    let mut greeting = [0u8; 30];
    tokio::time::timeout(GUARD, r.stream.read_exact(&mut greeting)).await.unwrap().unwrap();
    assert_eq!(&greeting, b"220 smtp.example ESMTP ready\r\n");
    r.stream.write_all(b"QUIT\r\n").await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(GUARD, r.stream.read_to_string(&mut rest)).await.unwrap().unwrap();
    assert_eq!(rest, "221 bye\r\n");
    t.abort();
}

/// On a port declared TCP nothing is sniffed: even an HTTP/2 preface passes byte for byte.
#[tokio::test]
async fn declared_tcp_port_is_opaque_even_for_http2() {
    let (addr, t) = tcp_upstream(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await;
    let mut cfg = test_config();
    cfg.outbound_ports.insert(addr.port(), meshpass_proxy::PortProtocol::Tcp);
    let p = start_proxy(cfg, addr).await;
    let mut s = TcpStream::connect(p.addrs().outbound).await.unwrap();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    s.write_all(preface).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, preface);
    t.abort();
}
