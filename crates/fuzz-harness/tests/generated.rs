//! The `http_request` fuzz body over generated request-ish inputs on every `cargo test`, so
//! its properties (what the gate passes, httparse accepts; path normalisation is stable; chunk
//! verdicts do not depend on how the bytes arrive) are checked between fuzzing runs too.

use proptest::prelude::*;

/// A request line from parts that are sometimes valid, headers from a small alphabet (colons,
/// spaces, CR/LF, control bytes), then arbitrary body bytes.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let method = "(GET|POST|get|CONNECT|OPTIONS|[A-Z]{1,6})";
    let target = "(/|[*]|/[a-z./%2eE\\\\?#]{0,12}|http://[a-z]{1,5}/[a-z]{0,3})";
    let version = "(HTTP/1[.]1|HTTP/1[.]0|HTTP/2[.]0|)";
    let header = proptest::collection::vec(
        prop::sample::select(b"aHost: \t\r\n:xTransfer-Encoding,chunkedContent-Length0129\x00\x7f".to_vec()),
        0..40,
    );
    let body = proptest::collection::vec(any::<u8>(), 0..64);
    (method, target, version, header, body).prop_map(|(m, t, v, h, b)| {
        let mut out = format!("{m} {t} {v}\r\n").into_bytes();
        out.extend(h);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend(b);
        out
    })
}

proptest! {
    #[test]
    fn http_request_holds_on_generated_requests(input in request_bytes()) {
        meshpass_fuzz_harness::http_request(&input);
    }
}
