//! Arbitrary bytes as a downstream HTTP/1 connection's input through the sidecar's request
//! gate and path normalisation (`meshpass_fuzz_harness::http_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshpass_fuzz_harness::http_request(data));
