//! The bodies of the cargo-fuzz targets in `fuzz/`, as plain functions of the input bytes.
//!
//! Each target in `fuzz/fuzz_targets/` is one line that calls its function here, so the same
//! code runs under libFuzzer (`cargo +nightly fuzz run NAME`, `scripts/fuzz`) and on stable:
//! `tests/regressions.rs` replays every input kept in `fuzz/regressions/<target>/` (crashes
//! found by fuzzing, once fixed, and a few seeds) through [`TARGETS`], and fails when a target
//! of `fuzz/Cargo.toml` has no entry there. A body returns normally for any input; a panic is a
//! finding.

use meshpass_capture::render::iptables::render_restore;
use meshpass_capture::{compile, ir::Family, CaptureConfig, InjectorValues, IstioArgs};
use meshpass_proxy::h1::{self, ChunkScanner, Chunks, Head, Limits};
use meshpass_proxy::path;
use meshpass_settings::{keys, Settings};
use std::collections::BTreeMap;

/// A fuzz target's body.
pub type Body = fn(&[u8]);

/// Every fuzz target by its name in `fuzz/Cargo.toml`.
pub const TARGETS: &[(&str, Body)] =
    &[("annotations", annotations), ("istio_flags", istio_flags), ("http_request", http_request)];

/// Inputs are records separated by U+001E (the ASCII record separator).
const RECORD_SEPARATOR: char = '\u{1e}';

/// Arbitrary annotation maps: parsing must not panic, what is accepted must survive a round
/// trip through its annotations, and must compile and render to rules made only of safe
/// characters (printable ASCII, space, newline).
///
/// A record's first character picks the key (its code point modulo the number of keys), the
/// rest is the value.
pub fn annotations(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut ann = BTreeMap::new();
    for record in text.split(RECORD_SEPARATOR) {
        let mut chars = record.chars();
        let idx = chars.next().map_or(0, |c| c as usize) % keys::ALL.len();
        ann.insert(keys::ALL[idx].to_string(), chars.as_str().to_string());
    }
    if let Ok(s) = Settings::from_annotations(&ann) {
        assert_eq!(Settings::from_annotations(&s.to_annotations()).ok(), Some(s.clone()), "round trip of {ann:?}");
        if let Some(cfg) = CaptureConfig::from_settings(&s, &InjectorValues::default()) {
            let plan = compile(&cfg);
            for fam in [Family::V4, Family::V6] {
                let out = render_restore(&plan, fam);
                assert!(
                    out.chars().all(|c| c.is_ascii_graphic() || c == ' ' || c == '\n'),
                    "unsafe character in the rules of {ann:?}"
                );
            }
            let _ = meshpass_capture::render::nft::render(&plan);
        }
    }
}

/// Arbitrary istio-iptables flag values (one per record, in the order of the fields below):
/// validation must not panic, and an accepted configuration must compile and render.
pub fn istio_flags(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.split(RECORD_SEPARATOR).map(|s| Some(s.to_string()));
    let mut next = || parts.next().flatten();
    let args = IstioArgs {
        include_inbound_ports: next(),
        exclude_inbound_ports: next(),
        include_outbound_ports: next(),
        exclude_outbound_ports: next(),
        include_ip_ranges: next(),
        exclude_ip_ranges: next(),
        virtual_interfaces: next(),
        exclude_interfaces: next(),
        proxy_uid: next(),
        owner_groups_include: next(),
        loopback_cidr: next(),
        enable_ipv6: true,
        ..IstioArgs::default()
    };
    if let Ok(cfg) = args.to_config() {
        let plan = compile(&cfg);
        let _ = render_restore(&plan, Family::V4);
        let _ = render_restore(&plan, Family::V6);
    }
}

/// Arbitrary bytes as a downstream HTTP/1 connection's input: the sidecar's request gate (head
/// check, chunked-body check) and path normalisation must not panic; a head the gate passes
/// must parse with httparse (the HTTP/1 parser behind hyper), so nothing the gate accepts is
/// refused later with hyper's own reply; a chunked body gives the same verdict whole or byte by
/// byte; normalised paths are stable and free of dot segments.
///
/// The first byte's lowest bit says whether HTTP/1.0 is accepted.
pub fn http_request(data: &[u8]) {
    let limits =
        Limits { max_head_bytes: 8192, max_headers: 32, accept_http_10: data.first().is_some_and(|b| b & 1 == 1) };
    let Head::Complete(info) = h1::parse_head(data, &limits) else { return };
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
            // One pass, as Envoy's: decoding can form a new escape (`%6%41` → `%6A`), which
            // a second pass would decode. Any escape of an unreserved character left in the
            // output was formed so (the pass decodes those it is given); otherwise the output
            // must be a fixed point.
            if !has_unreserved_escape(&n) {
                assert_eq!(path::normalize(&n).as_deref(), Some(n.as_str()), "normalisation is stable");
            }
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

/// Whether `s` holds a percent-escape of an RFC 3986 unreserved character (`%41`, `%7e`).
fn has_unreserved_escape(s: &str) -> bool {
    s.as_bytes().windows(3).any(|w| {
        let hex = |b: u8| (b as char).to_digit(16);
        match (w[0], hex(w[1]), hex(w[2])) {
            (b'%', Some(h), Some(l)) => {
                let c = (h * 16 + l) as u8;
                c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
            }
            _ => false,
        }
    })
}
