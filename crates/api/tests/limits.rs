//! The API/GUI listener under a connection flood, on a real socket on 127.0.0.1: idle
//! connections beyond the cap, slowloris clients trickling their headers, and slow bodies.
//! `/healthz` and an authenticated request still answer; slow clients are disconnected within
//! the header timeout; with every slot busy a new connection is refused at once with JSON.
//!
//! The bounds below are liveness bounds (a few seconds for what takes milliseconds), not
//! performance targets.

#![allow(clippy::unwrap_used)]

use meshpass_api::fake::FakeBackend;
use meshpass_api::server::{Limits, Server, ServerConfig};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "limits-token-0123456789abcdef";

/// A server on 127.0.0.1:0 with `limits`, served until the runtime drops.
fn start(limits: Limits) -> (tokio::runtime::Runtime, SocketAddr, tempfile::TempDir) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    cfg.token = Some(TOKEN.into());
    cfg.limits = limits;
    let server = rt.block_on(Server::bind(&cfg, Arc::new(FakeBackend::sample()))).unwrap();
    let addr = server.started().addr;
    rt.spawn(server.run(std::future::pending()));
    (rt, addr, dir)
}

/// One request on a fresh connection: (status, body), or the I/O error.
fn request(addr: SocketAddr, head: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(head.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn healthz(addr: SocketAddr) -> std::io::Result<(u16, String)> {
    request(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

fn workloads(addr: SocketAddr) -> std::io::Result<(u16, String)> {
    request(
        addr,
        &format!(
            "GET /api/v1/workloads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// True once the server has closed `s` (EOF or reset), waiting at most `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_floods_and_slowloris_clients_leave_health_and_the_api_reachable() {
    let limits = Limits {
        max_connections: 32,
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(5),
    };
    let (_rt, addr, _dir) = start(limits);
    // Four times the cap in idle connections that never send a byte.
    let mut idle: Vec<TcpStream> = (0..128).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Slowloris: one header byte every 100 ms, forever.
    let slow: Vec<std::thread::JoinHandle<Duration>> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut s = TcpStream::connect(addr).unwrap();
                for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
                    if s.write_all(&[*b]).is_err() {
                        break;
                    }
                    if closed_within(&mut s, Duration::from_millis(100)) {
                        break;
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        break;
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let t = Instant::now();
        let (status, body) = healthz(addr).unwrap();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert!(t.elapsed() < Duration::from_secs(5), "/healthz took {:?}", t.elapsed());
        let t = Instant::now();
        let (status, body) = workloads(addr).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("helloworld-v1"), "{body}");
        assert!(t.elapsed() < Duration::from_secs(5), "GET /api/v1/workloads took {:?}", t.elapsed());
    }
    // Slow clients are gone within the header timeout (or sooner, making room).
    for h in slow {
        let lasted = h.join().unwrap();
        assert!(lasted < Duration::from_secs(3), "a slowloris client stayed connected for {lasted:?}");
    }
    // The idle flood: every connection beyond the cap was closed to make room, the rest
    // within the idle timeout.
    for s in &mut idle {
        assert!(closed_within(s, Duration::from_secs(6)), "an idle connection is still open");
    }
    let (status, _) = healthz(addr).unwrap();
    assert_eq!(status, 200);
    // A kept-alive connection that idles after its request is closed too.
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 256];
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = kept.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    assert!(closed_within(&mut kept, Duration::from_secs(6)), "an idle kept-alive connection is still open");
    println!("kept-alive connection closed after {:?} idle", t.elapsed());
    let (status, metrics) = request(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(status, 200);
    for name in ["meshpass_api_connections_evicted_total", "meshpass_api_connections_accepted_total"] {
        let n: u64 = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "{name} is {n}:\n{metrics}");
    }
}

#[test]
fn with_every_slot_busy_a_new_connection_is_refused_at_once_and_slow_bodies_time_out() {
    let limits = Limits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(2),
    };
    let (_rt, addr, _dir) = start(limits);
    // Four requests whose bodies never finish arriving: every slot has a request under way.
    let mut busy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let head = format!(
                "POST /api/v1/namespaces/default/workloads/helloworld-v1/passthrough/preview HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n{{\"inboundPorts\":"
            );
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (status, body) = healthz(addr).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "the refusal took {:?}", t.elapsed());
    assert_eq!(status, 503, "{body}");
    let b: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(b["error"], "overloaded", "{b}");
    // The slow bodies get 408 with the JSON error body once the request timeout is up.
    for s in &mut busy {
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let mut out = vec![0u8; 4096];
        let n = s.read(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out[..n]);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    }
    drop(busy);
    std::thread::sleep(Duration::from_millis(200));
    let (status, _) = healthz(addr).unwrap();
    assert_eq!(status, 200, "slots are free again");
}
