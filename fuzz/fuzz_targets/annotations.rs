//! Arbitrary annotation maps through parsing, round trip, compilation and both renderers
//! (`meshpass_fuzz_harness::annotations`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshpass_fuzz_harness::annotations(data));
