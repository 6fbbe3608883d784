//! Protocol detection on the first bytes of a connection.
//!
//! A connection is HTTP/1.1 when its first line is `METHOD SP target SP HTTP/1.1` (HTTP/1.0 too
//! with Istio's HTTP10 switch), and HTTP/2 when it opens with the h2c prior-knowledge preface,
//! as Envoy's HTTP inspector decides. Anything else — TLS, database protocols — is opaque TCP.
//! A client that says nothing within the sniff timeout is assumed to speak a server-first
//! protocol and is also opaque: the upstream gets to talk first.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::io::IoStats;

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1, proxied at L7.
    Http,
    /// HTTP/2 (prior knowledge), proxied at L7.
    Http2,
    /// Anything else, proxied byte for byte.
    Tcp,
}

impl Protocol {
    /// Label for metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Tcp => "tcp",
        }
    }
}

/// Verdict on a (possibly partial) prefix.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Http,
    Http2,
    Tcp,
    NeedMore,
}

/// Longest method token we accept; real methods are short, and a long uppercase run is more
/// likely some text protocol.
const MAX_METHOD: usize = 24;
/// Stop sniffing after this many bytes; a plausible HTTP prefix this long is HTTP (hyper then
/// enforces its own limits).
pub const MAX_SNIFF: usize = 8 * 1024;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn classify(buf: &[u8], http10: bool) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n < H2_PREFACE.len() { Verdict::NeedMore } else { Verdict::Http2 };
    }
    let Some(sp) = buf.iter().position(|&b| b == b' ') else {
        return if buf.len() <= MAX_METHOD && buf.iter().all(u8::is_ascii_uppercase) {
            Verdict::NeedMore
        } else {
            Verdict::Tcp
        };
    };
    if sp == 0 || sp > MAX_METHOD || !buf[..sp].iter().all(u8::is_ascii_uppercase) {
        return Verdict::Tcp;
    }
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_SNIFF { Verdict::Http } else { Verdict::NeedMore };
    };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    // As Istio's listeners match Envoy's HTTP inspector: HTTP/1.1, and HTTP/1.0 only when it
    // is accepted at all (otherwise the connection is better passed on as TCP than refused).
    match line.len().checked_sub(9).map(|i| &line[i..]) {
        Some(b" HTTP/1.1") => Verdict::Http,
        Some(b" HTTP/1.0") if http10 => Verdict::Http,
        _ => Verdict::Tcp,
    }
}

/// Whether an incomplete prefix could still become an HTTP request line.
fn plausible_http(buf: &[u8], http10: bool) -> bool {
    !buf.is_empty() && classify(buf, http10) != Verdict::Tcp && !H2_PREFACE.starts_with(buf)
}

/// Read from `stream` into `buf` until the protocol is known, the client closes, or `timeout`
/// passes. Bytes read are counted into `stats` and must be replayed (see [`crate::io::Rewind`]).
/// `None` means the client closed without sending a byte (a port scan, a health check, a
/// client that gave up): there is nothing to forward, so no upstream connection is opened.
pub async fn sniff(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    timeout: Duration,
    http10: bool,
    stats: &IoStats,
) -> std::io::Result<Option<Protocol>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match classify(buf, http10) {
            Verdict::Http => return Ok(Some(Protocol::Http)),
            Verdict::Http2 => return Ok(Some(Protocol::Http2)),
            Verdict::Tcp => return Ok(Some(Protocol::Tcp)),
            Verdict::NeedMore => {}
        }
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            // Silence: server-first protocol, or a slow HTTP client we still recognise.
            Err(_elapsed) => return Ok(Some(if plausible_http(buf, http10) { Protocol::Http } else { Protocol::Tcp })),
            Ok(Ok(0)) if buf.is_empty() => return Ok(None),
            // Client half-closed after sending something inconclusive: forward as TCP so the
            // upstream still sees exactly what was sent.
            Ok(Ok(0)) => return Ok(Some(Protocol::Tcp)),
            Ok(Ok(n)) => stats.add_rx(n),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// How a client on a port declared HTTP opens the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// The HTTP/2 preface (prior knowledge).
    Http2,
    /// Anything else: HTTP/1.
    Http1,
    /// `PRI * HTTP/2` and then not the rest of the preface: Envoy's codec (AUTO) has chosen
    /// HTTP/2 on those 12 bytes and refuses the connection.
    BrokenPreface,
}

/// Envoy's HTTP/2 detection prefix (`CLIENT_MAGIC_PREFIX`).
const H2_MAGIC_PREFIX: usize = 12;

/// On a port declared HTTP: how the client opens. Reads into `buf` (to be replayed) only as
/// far as needed to tell; `Ok(None)` if the client closed or stayed silent for `timeout`.
pub async fn h2_preface(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    timeout: Duration,
    stats: &IoStats,
) -> std::io::Result<Option<Opening>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            let magic = n >= H2_MAGIC_PREFIX && buf[..H2_MAGIC_PREFIX] == H2_PREFACE[..H2_MAGIC_PREFIX];
            return Ok(Some(if magic { Opening::BrokenPreface } else { Opening::Http1 }));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(Opening::Http2));
        }
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) | Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => stats.add_rx(n),
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn openings_on_an_http_port_as_envoys_auto_codec_tells_them() {
        let stats = IoStats::new();
        let t = Duration::from_secs(5);
        for (input, want) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], Some(Opening::Http2)),
            (b"GET / HTTP/1.1\r\n\r\n", Some(Opening::Http1)),
            // Differs before Envoy's 12-byte `PRI * HTTP/2` prefix is complete: HTTP/1.
            (b"PRI * HTTP/1.1\r\n\r\n", Some(Opening::Http1)),
            (b"PRI / HTTP/1.1\r\n\r\n", Some(Opening::Http1)),
            // The prefix, then not the preface.
            (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", Some(Opening::BrokenPreface)),
            (b"PRI * HTTP/2.1\r\n\r\nSM\r\n\r\n", Some(Opening::BrokenPreface)),
            // Closed before it could tell.
            (b"PRI * HTTP/2.0\r\n", None),
        ] {
            let mut buf = BytesMut::new();
            let mut stream = input;
            let got = h2_preface(&mut stream, &mut buf, t, &stats).await.unwrap();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    fn classify_(b: &[u8]) -> Verdict {
        classify(b, false)
    }

    fn plausible_(b: &[u8]) -> bool {
        plausible_http(b, false)
    }

    #[test]
    fn classifies() {
        assert_eq!(classify_(b"GET / HTTP/1.1\r\nHost: a\r\n"), Verdict::Http);
        assert_eq!(classify_(b"POST /x HTTP/1.0\n"), Verdict::Tcp, "HTTP/1.0 is not matched by default");
        assert_eq!(classify(b"POST /x HTTP/1.0\n", true), Verdict::Http);
        assert_eq!(classify_(b"GET / HTTP/1.2\r\n"), Verdict::Tcp);
        assert_eq!(classify_(b"PROPFIND /x HTTP/1.1\r\n"), Verdict::Http);
        assert_eq!(classify_(b"GE"), Verdict::NeedMore);
        assert_eq!(classify_(b"GET /very/long"), Verdict::NeedMore);
        assert_eq!(classify_(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Verdict::Http2);
        assert_eq!(classify_(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Verdict::Tcp);
        assert_eq!(classify_(b"PRI"), Verdict::NeedMore);
        assert_eq!(classify_(b"\x16\x03\x01\x02\x00"), Verdict::Tcp);
        assert_eq!(classify_(b"SET a b\r\n"), Verdict::Tcp);
        assert_eq!(classify_(b"get / HTTP/1.1\r\n"), Verdict::Tcp);
        assert_eq!(classify_(b"GET /\r\n"), Verdict::Tcp);
        assert_eq!(classify_(b"GET / HTTP/2.0\r\n"), Verdict::Tcp);
        assert!(plausible_(b"GET /slow"));
        assert!(!plausible_(b"PRI * HT"));
        assert!(!plausible_(b""));
    }
}
