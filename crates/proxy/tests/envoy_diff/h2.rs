//! The HTTP/2 corpus (prior knowledge): well-formed requests, gRPC calls, and hostile input at
//! the header and at the frame level — bad pseudo-headers, connection-specific fields,
//! upper-case names, a `content-length` that the DATA does not match, frames on the wrong
//! stream, flow-control and HPACK violations.

use super::h2wire::{fields, frame, Act, END_HEADERS};

fn get(stream: u32, path: &str) -> Act {
    Act::Headers {
        stream,
        fields: fields(&[(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", "a")]),
        end_stream: true,
    }
}

/// A request head from `f` (in order, as given) on `stream`.
fn head_on(stream: u32, f: &[(&str, &str)], end_stream: bool) -> Act {
    Act::Headers { stream, fields: fields(f), end_stream }
}

fn head(f: &[(&str, &str)], end_stream: bool) -> Act {
    head_on(1, f, end_stream)
}

/// GET / on `stream` with `extra` fields after the pseudo-headers.
fn get_on(stream: u32, extra: &[(&str, &str)]) -> Act {
    let mut f = vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")];
    f.extend_from_slice(extra);
    head_on(stream, &f, true)
}

fn get_with(extra: &[(&str, &str)]) -> Act {
    get_on(1, extra)
}

fn post_on(stream: u32, extra: &[(&str, &str)]) -> Act {
    let mut f = vec![(":method", "POST"), (":scheme", "http"), (":path", "/p"), (":authority", "a")];
    f.extend_from_slice(extra);
    head_on(stream, &f, false)
}

fn post(extra: &[(&str, &str)]) -> Act {
    post_on(1, extra)
}

/// A GET on stream 1, answered, before `rest` (hostile input on stream 3 and up), so the
/// refusal hits a connection in use.
fn after_ok(rest: Vec<Act>) -> Vec<Act> {
    let mut v = vec![get(1, "/first"), Act::Await];
    v.extend(rest);
    v
}

/// As [`after_ok`], for one hostile request head on stream 3.
fn bad_head(f: &[(&str, &str)]) -> Vec<Act> {
    after_ok(vec![head_on(3, f, true)])
}

/// As [`bad_head`], a GET / with `extra` fields.
fn bad_get(extra: &[(&str, &str)]) -> Vec<Act> {
    after_ok(vec![get_on(3, extra)])
}

fn data(stream: u32, d: &[u8], end_stream: bool) -> Act {
    Act::Data { stream, data: d.to_vec(), end_stream }
}

fn raw(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Act {
    Act::Raw(frame(ty, flags, stream, payload))
}

/// One gRPC message: uncompressed flag, big-endian length, payload.
pub(crate) fn grpc_msg(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    b.extend_from_slice(payload);
    b
}

fn grpc_call(path: &str, extra: &[(&str, &str)]) -> Vec<Act> {
    let mut f = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "a"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    f.extend_from_slice(extra);
    vec![head(&f, false), data(1, &grpc_msg(b"ping"), true)]
}

/// The corpus: (name, frames after the preface and an empty SETTINGS). Every case runs
/// inbound and outbound, to an app on an `http` port (HTTP/1.1 upstream) and on a `grpc` port
/// (HTTP/2 upstream).
pub(crate) fn corpus() -> Vec<(&'static str, Vec<Act>)> {
    let mut internal = vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")];
    for h in [
        "x-envoy-internal",
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-retry-on",
        "x-envoy-max-retries",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-original-path",
        "x-envoy-decorator-operation",
        "x-forwarded-client-cert",
        "x-forwarded-for",
        "x-forwarded-host",
    ] {
        internal.push((h, "v"));
    }
    let big_value = "v".repeat(1000);
    let mut big = vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")];
    let names: Vec<String> = (0..70).map(|i| format!("x-h{i}")).collect();
    for n in &names {
        big.push((n.as_str(), big_value.as_str()));
    }
    let mut many = vec![(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")];
    let many_names: Vec<String> = (0..120).map(|i| format!("x-m{i}")).collect();
    for n in &many_names {
        many.push((n.as_str(), "v"));
    }
    let window_flood: Vec<u8> = vec![b'x'; 70_000];

    let c: Vec<(&'static str, Vec<Act>)> = vec![
        // Well-formed.
        ("h2-get", vec![get(1, "/")]),
        ("h2-head", vec![head(&[(":method", "HEAD"), (":scheme", "http"), (":path", "/"), (":authority", "a")], true)]),
        ("h2-post", vec![post(&[("content-length", "5")]), data(1, b"hello", true)]),
        ("h2-post-no-length", vec![post(&[]), data(1, b"hello", true)]),
        (
            "h2-post-empty",
            vec![head(&[(":method", "POST"), (":scheme", "http"), (":path", "/p"), (":authority", "a")], true)],
        ),
        ("h2-post-split", vec![post(&[]), data(1, b"hel", false), data(1, b"lo", false), data(1, b"", true)]),
        ("h2-two-streams", vec![get(1, "/1"), get(3, "/2")]),
        ("h2-request-trailers", vec![post(&[("te", "trailers")]), data(1, b"hi", false), head(&[("x-t", "1")], true)]),
        (
            "h2-host-no-authority",
            vec![head(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), ("host", "a")], true)],
        ),
        ("h2-no-authority", vec![head(&[(":method", "GET"), (":scheme", "http"), (":path", "/")], true)]),
        ("h2-authority-and-host", vec![get_with(&[("host", "b")])]),
        (
            "h2-authority-port",
            vec![head(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a:8080")], true)],
        ),
        (
            "h2-scheme-https",
            vec![head(&[(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "a")], true)],
        ),
        ("h2-cookies", vec![get_with(&[("cookie", "a=1"), ("cookie", "b=2")])]),
        ("h2-te-trailers", vec![get_with(&[("te", "trailers")])]),
        ("h2-request-id-kept", vec![get_with(&[("x-request-id", "abc")])]),
        ("h2-xfp-kept", vec![get_with(&[("x-forwarded-proto", "https")])]),
        ("h2-internal-headers", vec![head(&internal, true)]),
        ("h2-underscore-header", vec![get_with(&[("x_under", "1")])]),
        (
            "h2-expect-continue",
            vec![post(&[("expect", "100-continue"), ("content-length", "2")]), data(1, b"hi", true)],
        ),
        ("h2-dotdot", vec![get(1, "/x/../y")]),
        ("h2-pct-dotdot", vec![get(1, "/x/%2e%2e/y")]),
        ("h2-pct-slash", vec![get(1, "/x%2Fy")]),
        ("h2-double-slash", vec![get(1, "//x//y")]),
        ("h2-above-root", vec![get(1, "/../../etc")]),
        ("h2-backslash", vec![get(1, "/x\\y")]),
        ("h2-query", vec![get(1, "/a?x=/../b")]),
        ("h2-fragment", vec![get(1, "/p#frag")]),
        ("h2-space-in-path", vec![get(1, "/a b")]),
        ("h2-del-in-path", vec![get(1, "/a\x7fb")]),
        (
            "h2-path-asterisk",
            vec![head(&[(":method", "OPTIONS"), (":scheme", "http"), (":path", "*"), (":authority", "a")], true)],
        ),
        ("h2-path-absolute", vec![get(1, "http://other.example/p")]),
        (
            "h2-custom-method",
            vec![head(&[(":method", "FOO"), (":scheme", "http"), (":path", "/"), (":authority", "a")], true)],
        ),
        (
            "h2-lower-method",
            vec![head(&[(":method", "get"), (":scheme", "http"), (":path", "/"), (":authority", "a")], true)],
        ),
        ("h2-connect", vec![head(&[(":method", "CONNECT"), (":authority", "example.com:443")], false)]),
        (
            "h2-extended-connect",
            vec![head(
                &[
                    (":method", "CONNECT"),
                    (":protocol", "websocket"),
                    (":scheme", "http"),
                    (":path", "/ws"),
                    (":authority", "a"),
                ],
                false,
            )],
        ),
        (
            "h2-ping-priority-unknown",
            vec![
                raw(6, 0, 0, b"12345678"),
                raw(2, 0, 1, &[0, 0, 0, 0, 15]),
                raw(0xfa, 0, 0, b"ignored"),
                raw(8, 0, 0, &1000u32.to_be_bytes()),
                get(1, "/"),
            ],
        ),
        (
            "h2-padded",
            vec![Act::Raw(frame(1, 0x8 | END_HEADERS | 0x1, 1, &{
                let block = super::h2wire::hpack_literal(&fields(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "a"),
                ]));
                let mut p = vec![3u8];
                p.extend(block);
                p.extend([0, 0, 0]);
                p
            }))],
        ),
        (
            "h2-client-reset",
            vec![post(&[]), data(1, b"hel", false), raw(3, 0, 1, &8u32.to_be_bytes()), get(3, "/after")],
        ),
        // Responses: trailers, a large body (flow control), a reset mid-body.
        ("h2-response-trailers", vec![get_with(&[("te", "trailers")]).with_path("/trailers")]),
        ("h2-big-response", vec![get(1, "/big")]),
        ("h2-upstream-reset", vec![get(1, "/reset")]),
        // gRPC.
        ("grpc-unary", grpc_call("/pkg.Svc/Call", &[])),
        ("grpc-timeout", grpc_call("/pkg.Svc/Call", &[("grpc-timeout", "5S")])),
        ("grpc-error", grpc_call("/grpc-error", &[])),
        ("grpc-upstream-reset", grpc_call("/reset", &[])),
        ("grpc-upstream-reset-after-headers", grpc_call("/reset-later", &[])),
        // Hostile: field names and values.
        ("h2-upper-name", bad_get(&[("X-Upper", "1")])),
        ("h2-upper-name-first", vec![get_with(&[("X-Upper", "1")])]),
        ("h2-connection", bad_get(&[("connection", "keep-alive")])),
        ("h2-connection-first", vec![get_with(&[("connection", "keep-alive")])]),
        ("h2-keep-alive", bad_get(&[("keep-alive", "timeout=5")])),
        ("h2-proxy-connection", bad_get(&[("proxy-connection", "keep-alive")])),
        (
            "h2-transfer-encoding",
            after_ok(vec![post_on(3, &[("transfer-encoding", "chunked")]), data(3, b"hello", true)]),
        ),
        ("h2-upgrade", bad_get(&[("upgrade", "websocket")])),
        ("h2-te-gzip", bad_get(&[("te", "gzip")])),
        ("h2-nul-in-value", bad_get(&[("x-a", "a\0b")])),
        ("h2-cr-in-value", bad_get(&[("x-a", "a\rb")])),
        ("h2-lf-in-value", bad_get(&[("x-a", "a\nb")])),
        ("h2-value-edge-space", bad_get(&[("x-a", " v ")])),
        ("h2-space-in-name", bad_get(&[("x a", "1")])),
        ("h2-colon-in-name", bad_get(&[("x:a", "1")])),
        ("h2-empty-name", bad_get(&[("", "1")])),
        ("h2-big-headers", after_ok(vec![head_on(3, &big, true)])),
        ("h2-many-headers", after_ok(vec![head_on(3, &many, true)])),
        // Hostile: pseudo-headers.
        ("h2-no-method", bad_head(&[(":scheme", "http"), (":path", "/"), (":authority", "a")])),
        ("h2-no-path", bad_head(&[(":method", "GET"), (":scheme", "http"), (":authority", "a")])),
        ("h2-no-scheme", bad_head(&[(":method", "GET"), (":path", "/"), (":authority", "a")])),
        ("h2-empty-path", bad_head(&[(":method", "GET"), (":scheme", "http"), (":path", ""), (":authority", "a")])),
        (
            "h2-path-no-slash",
            bad_head(&[(":method", "GET"), (":scheme", "http"), (":path", "abc"), (":authority", "a")]),
        ),
        (
            "h2-dup-path",
            bad_head(&[(":method", "GET"), (":scheme", "http"), (":path", "/a"), (":path", "/b"), (":authority", "a")]),
        ),
        (
            "h2-dup-method",
            bad_head(&[
                (":method", "GET"),
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "a"),
            ]),
        ),
        ("h2-unknown-pseudo", bad_get(&[(":foo", "bar")])),
        ("h2-status-in-request", bad_get(&[(":status", "200")])),
        (
            "h2-pseudo-after-regular",
            bad_head(&[(":method", "GET"), (":scheme", "http"), ("x-a", "1"), (":path", "/"), (":authority", "a")]),
        ),
        (
            "h2-pseudo-in-trailers",
            after_ok(vec![post_on(3, &[]), data(3, b"hi", false), head_on(3, &[(":path", "/x")], true)]),
        ),
        ("h2-protocol-without-connect", bad_get(&[(":protocol", "websocket")])),
        // Hostile: content-length against the DATA.
        ("h2-cl-more-data", after_ok(vec![post_on(3, &[("content-length", "2")]), data(3, b"hello", true)])),
        ("h2-cl-less-data", after_ok(vec![post_on(3, &[("content-length", "10")]), data(3, b"hello", true)])),
        ("h2-cl-invalid", after_ok(vec![post_on(3, &[("content-length", "abc")]), data(3, b"hello", true)])),
        (
            "h2-cl-two-values",
            after_ok(vec![post_on(3, &[("content-length", "5"), ("content-length", "6")]), data(3, b"hello", true)]),
        ),
        ("h2-cl-on-get-no-data", bad_get(&[("content-length", "5")])),
        // Hostile: frames.
        ("h2-data-on-stream-0", after_ok(vec![raw(0, 1, 0, b"x")])),
        ("h2-headers-even-stream", after_ok(vec![get(4, "/")])),
        ("h2-stream-id-reused", after_ok(vec![get(1, "/again")])),
        ("h2-stream-id-decreasing", after_ok(vec![get(7, "/"), get(5, "/")])),
        ("h2-data-on-idle-stream", after_ok(vec![raw(0, 1, 7, b"x")])),
        ("h2-data-after-end-stream", after_ok(vec![raw(0, 1, 1, b"more")])),
        ("h2-continuation-orphan", after_ok(vec![raw(9, END_HEADERS, 3, b"")])),
        (
            "h2-headers-interrupted",
            after_ok(vec![
                Act::Raw(frame(1, 0, 3, &super::h2wire::hpack_literal(&fields(&[(":method", "GET")])))),
                raw(6, 0, 0, b"12345678"),
            ]),
        ),
        ("h2-settings-bad-length", after_ok(vec![raw(4, 0, 0, &[0, 1, 0, 0, 0])])),
        ("h2-settings-ack-payload", after_ok(vec![raw(4, 1, 0, &[0, 3, 0, 0, 0, 1])])),
        ("h2-settings-on-stream", after_ok(vec![raw(4, 0, 1, &[])])),
        ("h2-settings-window-too-big", after_ok(vec![raw(4, 0, 0, &[0, 4, 0x80, 0, 0, 0])])),
        ("h2-settings-frame-size-small", after_ok(vec![raw(4, 0, 0, &[0, 5, 0, 0, 0, 100])])),
        ("h2-settings-enable-push-2", after_ok(vec![raw(4, 0, 0, &[0, 2, 0, 0, 0, 2])])),
        ("h2-ping-bad-length", after_ok(vec![raw(6, 0, 0, b"123")])),
        ("h2-ping-on-stream", after_ok(vec![raw(6, 0, 1, b"12345678")])),
        ("h2-window-update-zero", after_ok(vec![raw(8, 0, 0, &0u32.to_be_bytes())])),
        ("h2-window-overflow", after_ok(vec![raw(8, 0, 0, &0x7fff_ffffu32.to_be_bytes())])),
        ("h2-rst-stream-0", after_ok(vec![raw(3, 0, 0, &8u32.to_be_bytes())])),
        ("h2-rst-idle-stream", after_ok(vec![raw(3, 0, 9, &8u32.to_be_bytes())])),
        ("h2-priority-self", after_ok(vec![raw(2, 0, 3, &[0, 0, 0, 3, 15]), get(3, "/")])),
        ("h2-push-promise-from-client", after_ok(vec![raw(5, END_HEADERS, 1, &[0, 0, 0, 2])])),
        ("h2-frame-too-big", after_ok(vec![post_on(3, &[]), raw(0, 1, 3, &vec![b'x'; 16_385])])),
        ("h2-data-beyond-window", after_ok(vec![post_on(3, &[]), data(3, &window_flood, true)])),
        ("h2-hpack-garbage", after_ok(vec![raw(1, END_HEADERS | 1, 3, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff])])),
        ("h2-padding-too-long", after_ok(vec![raw(1, END_HEADERS | 0x8 | 1, 3, &[10, 0x82])])),
        ("h2-goaway-from-client", after_ok(vec![raw(7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0])])),
    ];
    c
}

trait WithPath {
    fn with_path(self, path: &str) -> Self;
}

impl WithPath for Act {
    fn with_path(mut self, path: &str) -> Self {
        if let Act::Headers { fields, .. } = &mut self {
            for (k, v) in fields.iter_mut() {
                if k == b":path" {
                    *v = path.as_bytes().to_vec();
                }
            }
        }
        self
    }
}
