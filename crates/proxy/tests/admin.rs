//! Admin endpoints (readiness, Prometheus, config dump, connection record) and graceful drain.

// Test code: a panic is the failure report, also in helpers outside #[test] fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use hyper::body::Incoming;
use hyper::{Request, Response};
use meshpass_proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn readiness_metrics_config_dump_and_connections() {
    let up = Upstream::hello().await;
    let p = start_proxy(test_config(), up.addr).await;
    let a = *p.addrs();

    let (code, body) = get(a.readiness.unwrap(), "/healthz/ready").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    // Each special port serves only its own path.
    assert_eq!(get(a.readiness.unwrap(), "/config_dump").await.0, 404);
    assert_eq!(get(a.prometheus.unwrap(), "/connections").await.0, 404);

    // One inbound HTTP exchange and one outbound TCP connection.
    let mut s = TcpStream::connect(a.inbound).await.unwrap();
    let http_client = s.local_addr().unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    assert!(resp.starts_with(b"HTTP/1.1 200"));

    let mut t = TcpStream::connect(a.outbound).await.unwrap();
    let tcp_client = t.local_addr().unwrap();
    t.write_all(b"\x00\x01\x02").await.unwrap();
    t.shutdown().await.unwrap();
    let mut sink = Vec::new();
    let _ = t.read_to_end(&mut sink).await;

    eventually("both connections closed in the record", || {
        p.connections().iter().filter(|c| c.state == "closed").count() == 2
    })
    .await;

    let (code, body) = get(a.admin.unwrap(), "/connections").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let conns = v["connections"].as_array().unwrap();
    let http = conns.iter().find(|c| c["client_addr"] == http_client.to_string()).expect("http connection recorded");
    assert_eq!(http["direction"], "inbound");
    assert_eq!(http["protocol"], "http");
    assert_eq!(http["state"], "closed");
    assert_eq!(http["original_dst"], up.addr.to_string());
    assert_eq!(http["upstream_addr"], up.addr.to_string());
    assert_eq!(http["last_status"], 200);
    assert_eq!(http["requests"], 1);
    assert_eq!(http["outcome"], "ok");
    assert!(http["bytes_received"].as_u64().unwrap() > 0);
    assert_eq!(http["bytes_sent"].as_u64().unwrap(), resp.len() as u64);
    assert!(http["start_unix_ms"].as_u64().unwrap() > 0);
    assert!(http["duration_ms"].is_u64());
    let tcp = conns.iter().find(|c| c["client_addr"] == tcp_client.to_string()).expect("tcp connection recorded");
    assert_eq!(tcp["direction"], "outbound");
    assert_eq!(tcp["protocol"], "tcp");
    assert_eq!(tcp["bytes_received"], 3);

    let (_, body) = get(a.admin.unwrap(), "/connections?direction=outbound").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["connections"].as_array().unwrap().iter().all(|c| c["direction"] == "outbound"));

    let (code, text) = get(a.prometheus.unwrap(), "/stats/prometheus").await;
    assert_eq!(code, 200);
    for needle in [
        "meshpass_proxy_requests_total{direction=\"inbound\"} 1",
        "meshpass_proxy_responses_total{direction=\"inbound\",code=\"200\"} 1",
        "meshpass_proxy_request_duration_milliseconds_count{direction=\"inbound\"} 1",
        "meshpass_proxy_connections_total{direction=\"outbound\",protocol=\"tcp\"} 1",
        "meshpass_proxy_connections_total{direction=\"inbound\",protocol=\"http\"} 1",
        "meshpass_proxy_received_bytes_total{direction=\"outbound\"} 3",
        "meshpass_proxy_active_connections{direction=\"inbound\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    let (code, body) = get(a.admin.unwrap(), "/config_dump").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["config"]["inbound_server_header"], "istio-envoy");
    assert_eq!(v["config"]["sniff_timeout"], 1000);
    assert_eq!(v["bound"]["inbound"], a.inbound.to_string());
}

#[tokio::test]
async fn graceful_drain_finishes_in_flight_requests() {
    // The upstream holds each request until released, so the drain provably starts while a
    // request is in flight.
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let rel = release.clone();
    let up = Upstream::start(Arc::new(move |_req: Request<Incoming>| {
        let got_tx = got_tx.clone();
        let rel = rel.clone();
        Box::pin(async move {
            let _ = got_tx.send(());
            rel.notified().await;
            Response::new(full("finished"))
        })
    }))
    .await;
    let p = start_proxy(test_config(), up.addr).await;
    let a = *p.addrs();
    let mut s = TcpStream::connect(a.inbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    got_rx.recv().await.unwrap();

    let shutdown = tokio::spawn(p.shutdown());
    // Readiness flips to 503 while draining; new connections are no longer accepted.
    eventually_async(|| async { get(a.readiness.unwrap(), "/healthz/ready").await.0 == 503 }).await;
    let refused = loop {
        match TcpStream::connect(a.inbound).await {
            Err(_) => break true,
            // The listener may still exist for a moment; it must then close without serving.
            Ok(mut c) => {
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
                let mut b = [0u8; 1];
                if matches!(c.read(&mut b).await, Ok(0) | Err(_)) {
                    break true;
                }
            }
        }
    };
    assert!(refused);

    release.notify_one();
    let mut r = RawReader::new(s);
    let resp = r.response(false).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text(), "finished");
    assert_eq!(resp.header("connection"), Some("close"), "drained connection closes");
    tokio::time::timeout(GUARD, shutdown).await.expect("shutdown completes").unwrap().unwrap();
}

async fn eventually_async<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "condition never held");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn config_from_env_map_starts() {
    let env: std::collections::HashMap<&str, &str> = [
        (meshpass_proxy::config::ENV_OUTBOUND_ADDR, "127.0.0.1:0"),
        (meshpass_proxy::config::ENV_INBOUND_ADDR, "127.0.0.1:0"),
        (meshpass_proxy::config::ENV_ADMIN_ADDR, "127.0.0.1:0"),
        (meshpass_proxy::config::ENV_READINESS_ADDR, "off"),
        (meshpass_proxy::config::ENV_PROMETHEUS_ADDR, "off"),
    ]
    .into_iter()
    .collect();
    let cfg = ProxyConfig::from_env(&|k| env.get(k).map(|v| (*v).to_owned())).unwrap();
    let up = Upstream::hello().await;
    let p = start_proxy(cfg, up.addr).await;
    assert!(p.addrs().readiness.is_none());
    let r = raw_request(p.addrs().outbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status(), 200);
    p.shutdown().await.unwrap();
}

/// The admin listeners under a flood: more idle connections than the cap plus slowloris
/// clients on the readiness port, while the kubelet's probe (and the admin port) still get
/// answers, and the slow clients are cut off once the header timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ports_answer_through_idle_floods_and_slowloris() {
    const CAP: usize = 8;
    let header_timeout = std::time::Duration::from_secs(1);
    let cfg = ProxyConfig { admin_max_connections: CAP, admin_header_timeout: header_timeout, ..test_config() };
    let up = Upstream::hello().await;
    let p = start_proxy(cfg, up.addr).await;
    let ready = p.addrs().readiness.unwrap();

    // Three times the cap in idle connections, each holding a slot until evicted.
    let mut idle = Vec::new();
    for _ in 0..3 * CAP {
        idle.push(TcpStream::connect(ready).await.unwrap());
    }
    // Slowloris: one byte of a request head every 100 ms, never finishing it.
    let mut slow = Vec::new();
    for _ in 0..5 {
        slow.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut s = TcpStream::connect(ready).await.unwrap();
            for b in b"GET /healthz/ready HTTP/1.1\r\nHost: a\r\nX-Slow: ".iter().cycle() {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                let mut buf = [0u8; 64];
                match tokio::time::timeout(std::time::Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
                assert!(start.elapsed() < GUARD, "slow client never disconnected");
            }
            start.elapsed()
        }));
    }
    for _ in 0..10 {
        let (code, body) = tokio::time::timeout(GUARD, get(ready, "/healthz/ready")).await.expect("probe answered");
        assert_eq!((code, body.as_str()), (200, "ready\n"));
    }
    assert_eq!(get(p.addrs().admin.unwrap(), "/healthz/ready").await.0, 200);
    for t in slow {
        let lived = t.await.unwrap();
        // Evicted earlier for a probe, or cut by the header timeout: never much past it.
        assert!(lived < header_timeout + std::time::Duration::from_secs(3), "slow client lived {lived:?}");
    }
    // The idle flood was closed to make room (evicted) or by the header timeout.
    let mut closed = 0;
    for mut s in idle {
        let mut buf = [0u8; 1];
        if matches!(tokio::time::timeout(GUARD, s.read(&mut buf)).await, Ok(Ok(0) | Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 3 * CAP);
}
