//! Arbitrary bytes as a downstream HTTP/1 connection's input: the sidecar's request gate
//! (head check, chunked-body check) and path normalisation must never panic; a head the gate
//! passes must parse with httparse (the HTTP/1 parser behind hyper), so nothing the gate
//! accepts is refused later with hyper's own reply; a chunked body gives the same verdict
//! whole or byte by byte; normalised paths are stable and free of dot segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_proxy::h1::{self, ChunkScanner, Chunks, Head, Limits};
use meshpass_proxy::path;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_head_bytes: 8192, max_headers: 32, accept_http_10: data.first().is_some_and(|b| b & 1 == 1) };
    if let Head::Complete(info) = h1::parse_head(data, &limits) {
        assert!(info.len <= data.len());
        let mut head = data[..info.len].to_vec();
        if let Some((start, end)) = info.respace {
            let line = h1::normalise_request_line(&head[start..end]);
            head.splice(start..end, line);
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&head);
        assert!(matches!(parsed, Ok(httparse::Status::Complete(_))), "gate passed what httparse refuses: {parsed:?}");
        if let Some(target) = req.path.filter(|p| p.starts_with('/')) {
            if let Some(n) = path::normalize(target) {
                assert_eq!(path::normalize(&n).as_deref(), Some(n.as_str()), "normalisation is stable");
                let p = n.split('?').next().unwrap_or_default();
                assert!(!p.split('/').any(|s| s == "." || s == ".."), "dot segment left in {n:?}");
            }
        }
        let body = &data[info.len..];
        let whole = ChunkScanner::new().scan(body);
        let mut s = ChunkScanner::new();
        let mut stepwise = Chunks::More;
        for (i, b) in body.iter().enumerate() {
            match s.scan(std::slice::from_ref(b)) {
                Chunks::More => {}
                Chunks::Done(n) => {
                    stepwise = Chunks::Done(i + n);
                    break;
                }
                Chunks::Invalid(n) => {
                    stepwise = Chunks::Invalid(i + n);
                    break;
                }
            }
        }
        assert_eq!(whole, stepwise, "chunk verdict depends on how the bytes arrive");
    }
});
