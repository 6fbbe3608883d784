//! The HTTP/1 half of the differential test: raw request bytes in, the responses read back
//! from the socket as normalised lines (status line, headers by name, body, bytes after the
//! last response, whether the proxy closed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed response.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Resp {
    status_line: String,
    headers: BTreeMap<String, Vec<String>>,
    body: Vec<u8>,
}

pub(crate) fn find(h: &[u8], pat: &[u8]) -> Option<usize> {
    h.windows(pat.len()).position(|w| w == pat)
}

/// The responses in `buf` (`heads` says which requests were HEAD: no body), the bytes after
/// the last one that did not parse (e.g. tunnel data), and whether the last one is complete.
fn parse_responses(mut buf: &[u8], mut heads: Vec<bool>) -> (Vec<Resp>, Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut complete = true;
    while let Some(end) = find(buf, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_owned();
        if !status_line.starts_with("HTTP/") {
            break;
        }
        let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.entry(k.trim().to_ascii_lowercase()).or_default().push(v.trim().to_owned());
            }
        }
        let rest = &buf[end + 4..];
        let informational = (100..200).contains(&status) && status != 101;
        let is_head = !informational && !heads.is_empty() && heads.remove(0);
        let (body, used) = if informational || status == 101 || status == 204 || status == 304 || is_head {
            complete = true;
            (Vec::new(), 0)
        } else if let Some(cl) = headers.get("content-length").and_then(|v| v[0].parse::<usize>().ok()) {
            let n = cl.min(rest.len());
            complete = n == cl;
            (rest[..n].to_vec(), n)
        } else if headers.get("transfer-encoding").is_some_and(|v| v[0].eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            let mut at = 0;
            complete = false;
            while let Some(nl) = find(&rest[at..], b"\r\n") {
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&rest[at..at + nl]).split(';').next().unwrap_or("0").trim(),
                    16,
                )
                .unwrap_or(0);
                at += nl + 2;
                if size == 0 {
                    if let Some(e) = find(&rest[at..], b"\r\n") {
                        at += e + 2;
                        complete = true;
                    }
                    break;
                }
                let n = size.min(rest.len() - at);
                body.extend_from_slice(&rest[at..at + n]);
                at = (at + n + 2).min(rest.len());
            }
            (body, at)
        } else {
            // Delimited by the close.
            complete = false;
            (rest.to_vec(), rest.len())
        };
        out.push(Resp { status_line, headers, body });
        buf = &rest[used..];
        if status == 101 {
            break;
        }
    }
    (out, buf.to_vec(), complete)
}

/// Methods of the requests in `input` (for HEAD handling and for knowing how many responses
/// to wait for), roughly.
fn request_starts(input: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(input);
    text.split("\r\n\r\n")
        .filter_map(|chunk| chunk.trim_start_matches("\r\n").split(' ').next().map(str::to_owned))
        .filter(|m| m.chars().all(|c| c.is_ascii_uppercase()) && !m.is_empty())
        .collect()
}

/// Send `input`; collect what comes back until the proxy closes, or every request has a
/// complete final response and nothing more arrives, or nothing arrives for a while.
pub(crate) async fn exchange(addr: SocketAddr, input: &[u8]) -> (Vec<String>, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(input).await;
    let starts = request_starts(input);
    let heads: Vec<bool> = starts.iter().map(|m| m == "HEAD").collect();
    let mut got = Vec::new();
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut buf = vec![0u8; 65536];
    loop {
        let (responses, _, complete) = parse_responses(&got, heads.clone());
        let finals = responses.iter().filter(|r| !r.status_line.contains(" 100 ")).count();
        let upgraded = responses.iter().any(|r| r.status_line.contains(" 101 "));
        // A response announcing `connection: close` is followed by the close (Envoy closes
        // after its 1 s delayed-close timeout), so wait for it; so does an incomplete one.
        let closing = responses.iter().any(|r| r.headers.get("connection").is_some_and(|v| v[0] == "close"));
        let quiet = if got.is_empty() || closing || !complete {
            Duration::from_millis(2500)
        } else if upgraded {
            Duration::from_millis(300)
        } else if finals >= starts.len().max(1) {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(600)
        };
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
    }
    let (responses, trailing, _) = parse_responses(&got, heads);
    let mut lines = Vec::new();
    for (i, r) in responses.iter().enumerate() {
        lines.push(format!("response {i} {}", r.status_line));
        for (k, vs) in &r.headers {
            for v in vs {
                let v = match k.as_str() {
                    "date" => continue,
                    "x-envoy-upstream-service-time" => "<ms>",
                    _ => v.as_str(),
                };
                lines.push(format!("response {i} header {k}: {v}"));
            }
        }
        if !r.body.is_empty() {
            lines.push(format!("response {i} body {:?}", String::from_utf8_lossy(&r.body)));
        }
    }
    if !trailing.is_empty() {
        lines.push(format!("trailing bytes {:?}", String::from_utf8_lossy(&trailing)));
    }
    (lines, closed)
}

/// The corpus: (name, raw bytes). Every case runs inbound and outbound.
pub(crate) fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut c: Vec<(&'static str, Vec<u8>)> = vec![
        ("ok", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("ok-close", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec()),
        ("pipelined", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("pipelined-then-bad", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nget /2 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("head", b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("post-length", b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        ("post-chunked", b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("chunk-ext", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nhi\r\n0\r\n\r\n".to_vec()),
        ("chunk-trailer", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n".to_vec()),
        ("te-chunked-upper", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n2\r\nhi\r\n0\r\n\r\n".to_vec()),
        ("get-body", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi".to_vec()),
        ("delete", b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("patch-empty", b"PATCH /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("expect-continue", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi".to_vec()),
        ("leading-crlf", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("bare-lf", b"GET / HTTP/1.1\nHost: a\n\n".to_vec()),
        ("tab-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\tb\r\n\r\n".to_vec()),
        ("underscore-header", b"GET / HTTP/1.1\r\nHost: a\r\nx_under: 1\r\n\r\n".to_vec()),
        ("host-port", b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n".to_vec()),
        ("host-empty", b"GET / HTTP/1.1\r\nHost:\r\n\r\n".to_vec()),
        ("te-trailers", b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n".to_vec()),
        ("te-other", b"GET / HTTP/1.1\r\nHost: a\r\nTE: gzip\r\n\r\n".to_vec()),
        ("conn-named", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\nx-secret: 1\r\n\r\n".to_vec()),
        ("request-id-kept", b"GET / HTTP/1.1\r\nHost: a\r\nx-request-id: abc\r\n\r\n".to_vec()),
        ("xfp-kept", b"GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-proto: https\r\n\r\n".to_vec()),
        // Methods, request lines, versions.
        ("lower-method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("custom-method", b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("propfind", b"PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("garbage", b"\x01\x02garbage\r\n\r\n".to_vec()),
        ("http09", b"GET /\r\n\r\n".to_vec()),
        ("http10", b"GET / HTTP/1.0\r\nHost: a\r\n\r\n".to_vec()),
        ("version-2", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_vec()),
        ("version-13", b"GET / HTTP/1.3\r\nHost: a\r\n\r\n".to_vec()),
        ("double-space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("no-leading-slash", b"GET abc HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("del-in-path", b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("utf8-path", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("fragment", b"GET /p#frag HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        // Framing.
        ("te-cl", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("bad-chunk-size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec()),
        ("chunk-no-crlf", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX0\r\n\r\n".to_vec()),
        ("chunk-size-huge", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhi\r\n0\r\n\r\n".to_vec()),
        ("dup-cl-same", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi".to_vec()),
        ("dup-cl-diff", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi".to_vec()),
        ("cl-letters", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\nhi".to_vec()),
        ("cl-plus", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nhi".to_vec()),
        ("cl-comma", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nhi".to_vec()),
        ("cl-huge", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nhi".to_vec()),
        ("te-gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("te-identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n".to_vec()),
        ("te-twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n".to_vec()),
        // Header syntax.
        ("space-in-name", b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".to_vec()),
        ("space-before-colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n".to_vec()),
        ("no-colon", b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n".to_vec()),
        ("empty-name", b"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n".to_vec()),
        ("nul-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n".to_vec()),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n".to_vec()),
        ("no-host", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("two-host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()),
        ("host-space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec()),
        // Targets and path normalisation.
        ("dotdot", b"GET /x/../y HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("pct-dotdot", b"GET /x/%2e%2e/y HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("pct-slash", b"GET /x%2Fy HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("double-slash", b"GET //x//y HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("above-root", b"GET /../../etc HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("backslash", b"GET /x\\y HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("dot-segments", b"GET /./a/. HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("pct-unreserved", b"GET /%7e/%7E/%41 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("pct-invalid", b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("pct-slash-dotdot", b"GET /a/..%2f..%2fb HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("query-dotdot", b"GET /a?x=/../b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("absolute", b"GET http://other.example/p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("absolute-https", b"GET https://x.example/p HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("absolute-no-path", b"GET http://x.example HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("options-asterisk", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        // Upgrades and CONNECT.
        ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec()),
        ("connect-path", b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        (
            "h2c-upgrade",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
                .to_vec(),
        ),
        ("upgrade-other", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n".to_vec()),
        ("upgrade-without-connection", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n".to_vec()),
        (
            "websocket",
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nping"
                .to_vec(),
        ),
        // h2c: an upgrade offer with a body is served as HTTP/1.1 (Envoy does not upgrade
        // to h2c), and a broken HTTP/2 preface is no HTTP/2.
        (
            "h2c-upgrade-post",
            b"POST /p HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec(),
        ),
        ("h2-preface-broken", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec()),
        ("pri-method", b"PRI / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
    ];
    // Internal and sanitised headers.
    let internal = [
        "x-envoy-max-retries",
        "x-envoy-retry-grpc-on",
        "x-envoy-upstream-rq-per-try-timeout-ms",
        "x-envoy-hedge-on-per-try-timeout",
        "x-envoy-retriable-status-codes",
        "x-envoy-retriable-header-names",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-force-trace",
        "x-envoy-upstream-alt-stat-name",
        "x-envoy-ip-tags",
        "x-envoy-upstream-stream-duration-ms",
        "x-envoy-internal",
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-retry-on",
        "x-envoy-upstream-rq-timeout-alt-response",
        "x-forwarded-client-cert",
        "x-envoy-original-path",
        "x-envoy-decorator-operation",
        "x-envoy-peer-metadata",
        "x-forwarded-for",
        "x-forwarded-host",
        "keep-alive",
        "proxy-connection",
        "traceparent",
    ];
    let mut r = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for h in internal {
        r.extend_from_slice(format!("{h}: v\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    c.push(("internal-headers", r));
    // Limits.
    let mut long_uri = b"GET /".to_vec();
    long_uri.extend(std::iter::repeat_n(b'a', 70_000));
    long_uri.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    c.push(("long-uri", long_uri));
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..70 {
        big.extend_from_slice(format!("X-H{i}: {}\r\n", "v".repeat(1000)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    c.push(("big-headers", big));
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..120 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    c.push(("many-headers", many));
    c
}
