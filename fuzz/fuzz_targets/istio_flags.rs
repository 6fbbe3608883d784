//! Arbitrary istio-iptables flag values through validation, compilation and rendering
//! (`meshpass_fuzz_harness::istio_flags`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshpass_fuzz_harness::istio_flags(data));
