//! The HTTP/1 fast lane against the hyper path: the same requests and upstream answers go
//! through a proxy with the lane and one without it (`h1_fast_lane: false`), and the bytes the
//! client receives and the request heads the app receives must be the same, byte for byte
//! (after masking what is random or timed: `x-request-id`, the service time, a `date` hyper
//! writes). The cases cover what the lane takes (plain `GET`s with and without hop-by-hop and
//! proxy headers, responses whose `connection` field moves the last field, bodies in several
//! reads) and what it hands to hyper before or after sending (chunked, no `date`, 204, a
//! reason phrase of its own, a body on the request, the upstream closing).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use meshpass_proxy::{ProxyConfig, ServiceBinding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DATE: &str = "Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n";

/// The app's raw answer to a request for `path`, and whether it closes the connection after.
fn answer(path: &str) -> (Vec<u8>, bool) {
    let plain = |extra: &str, body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nServer: app/1\r\n{DATE}Content-Type: text/plain\r\nContent-Length: {}\r\n{extra}X-Last: 1\r\n\r\n{body}",
            body.len()
        )
    };
    let (text, close) = match path {
        "/plain" => (plain("", "hello"), false),
        "/keep-alive" => (plain("Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n", "hi"), false),
        "/no-server" => {
            (format!("HTTP/1.1 200 OK\r\n{DATE}Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok"), false)
        }
        "/not-found" => (format!("HTTP/1.1 404 Not Found\r\n{DATE}Content-Length: 4\r\n\r\nnope"), false),
        "/big" => (plain("", &"x".repeat(300_000)), false),
        "/close" => (plain("Connection: close\r\n", "bye"), true),
        "/chunked" => (
            format!("HTTP/1.1 200 OK\r\n{DATE}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
            false,
        ),
        "/no-date" => ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned(), false),
        "/no-content" => (format!("HTTP/1.1 204 No Content\r\n{DATE}\r\n"), false),
        "/own-reason" => (format!("HTTP/1.1 200 Fine\r\n{DATE}Content-Length: 2\r\n\r\nok"), false),
        "/gone" => (String::new(), true),
        _ => (format!("HTTP/1.1 200 OK\r\n{DATE}Content-Length: 0\r\n\r\n"), false),
    };
    (text.into_bytes(), close)
}

/// An app that records each request head (and body, by `Content-Length`) and answers with
/// [`answer`]. `/gone` closes without answering.
async fn app() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .map_or(0, |v| v.parse().unwrap());
                    while buf.len() < end + len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[end..end + len]).into_owned();
                    buf.drain(..end + len);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    log.lock().unwrap().push(format!("{head}{body}"));
                    let (resp, close) = answer(&path);
                    if s.write_all(&resp).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// `text` with the values of the named fields (any case) replaced by `*`.
fn mask(text: &str, names: &[&str]) -> String {
    text.split("\r\n")
        .map(|l| match l.split_once(": ") {
            Some((n, _)) if names.iter().any(|m| n.eq_ignore_ascii_case(m)) => format!("{n}: *"),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Send `requests` on one connection, close the sending side, and read everything back.
async fn exchange(addr: SocketAddr, requests: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(requests).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut got)).await.expect("the proxy answers and closes").unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

struct Side {
    proxy: meshpass_proxy::Proxy,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn side(lane: bool) -> Side {
    let (addr, seen) = app().await;
    let cfg = ProxyConfig {
        h1_fast_lane: lane,
        services: vec![ServiceBinding {
            fqdn: "hello.default.svc.cluster.local".into(),
            port: 80,
            target_port: Some(addr.port()),
        }],
        ..test_config()
    };
    Side { proxy: start_proxy(cfg, addr).await, seen }
}

#[tokio::test]
async fn the_fast_lane_writes_what_the_hyper_path_writes() {
    let get = |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nHost: hello\r\n{extra}\r\n");
    let twice = |path: &str, extra: &str| format!("{}{}", get(path, extra), get(path, extra));
    let cases: Vec<(&str, String)> = vec![
        ("plain", twice("/plain", "User-Agent: t\r\nAccept: */*\r\n")),
        (
            "client keep-alive and proxy headers",
            twice(
                "/plain?q=1",
                "Connection: keep-alive\r\nX-Request-Id: abc\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n",
            ),
        ),
        ("response keep-alive fields", twice("/keep-alive", "")),
        ("no server header", twice("/no-server", "")),
        ("404", twice("/not-found", "")),
        ("big body", twice("/big", "")),
        ("upstream closes", twice("/close", "")),
        ("chunked response", twice("/chunked", "")),
        ("no date", twice("/no-date", "")),
        ("204", twice("/no-content", "")),
        ("own reason phrase", twice("/own-reason", "")),
        ("upstream gone", get("/gone", "")),
        ("then plain again", format!("{}{}", get("/gone", ""), get("/plain", ""))),
        ("gone on a reused connection", format!("{}{}", get("/plain", ""), get("/gone", ""))),
        ("head", format!("HEAD /plain HTTP/1.1\r\nHost: hello\r\n\r\n{}", get("/plain", ""))),
        ("post", format!("POST /plain HTTP/1.1\r\nHost: hello\r\nContent-Length: 3\r\n\r\nabc{}", get("/plain", ""))),
        ("dot segments", twice("/a/../plain", "")),
        ("connection close", get("/plain", "Connection: close\r\n")),
        ("refused", format!("{}get / HTTP/1.1\r\nHost: a\r\n\r\n", get("/plain", ""))),
        ("repeated field", twice("/plain", "Accept: a\r\nAccept: b\r\n")),
        ("http/1.0", "GET /plain HTTP/1.0\r\nHost: hello\r\n\r\n".to_owned()),
    ];
    let (with, without) = (side(true).await, side(false).await);
    for (name, requests) in &cases {
        for inbound in [true, false] {
            let mut got = Vec::new();
            for s in [&with, &without] {
                s.seen.lock().unwrap().clear();
                let a = s.proxy.addrs();
                let text = exchange(if inbound { a.inbound } else { a.outbound }, requests.as_bytes()).await;
                let client = mask(&text, &["x-envoy-upstream-service-time", "date"]);
                let app = s.seen.lock().unwrap().iter().map(|h| mask(h, &["x-request-id"])).collect::<Vec<_>>();
                got.push((client, app));
            }
            let dir = if inbound { "inbound" } else { "outbound" };
            assert_eq!(got[0].0, got[1].0, "{name} ({dir}): what the client got");
            assert_eq!(got[0].1, got[1].1, "{name} ({dir}): what reached the app");
        }
    }
}
