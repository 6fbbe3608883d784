//! Arbitrary annotation maps: parsing must not panic, and whatever is accepted must compile
//! and render to rules made only of safe characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_capture::render::iptables::render_restore;
use meshpass_capture::{compile, ir::Family, CaptureConfig, InjectorValues};
use meshpass_settings::{keys, Settings};
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Records separated by U+001E; a record's first character picks the key, the rest is the
    // value.
    let mut ann = BTreeMap::new();
    for record in text.split('\u{1e}') {
        let mut chars = record.chars();
        let idx = chars.next().map_or(0, |c| c as usize) % keys::ALL.len();
        ann.insert(keys::ALL[idx].to_string(), chars.as_str().to_string());
    }
    if let Ok(s) = Settings::from_annotations(&ann) {
        assert_eq!(Settings::from_annotations(&s.to_annotations()).ok(), Some(s.clone()));
        if let Some(cfg) = CaptureConfig::from_settings(&s, &InjectorValues::default()) {
            let plan = compile(&cfg);
            for fam in [Family::V4, Family::V6] {
                let out = render_restore(&plan, fam);
                assert!(out.chars().all(|c| c.is_ascii_graphic() || c == ' ' || c == '\n'));
            }
            let _ = meshpass_capture::render::nft::render(&plan);
        }
    }
});
