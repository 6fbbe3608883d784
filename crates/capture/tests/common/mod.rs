//! Helpers shared by the capture integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared` beside the checkout (CI lays it there), or `MESHPASS_SHARED_DIR`.
/// `None` (after printing why) when it is absent outside CI; a panic when absent in CI.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MESHPASS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.join("conformance/istio/cases").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but the Istio conformance data is missing at {}", dir.display());
    }
    eprintln!("skipping: Istio conformance data not found at {} (set MESHPASS_SHARED_DIR)", dir.display());
    None
}

/// Every conformance case file, parsed.
pub fn cases(shared: &std::path::Path) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let dir = shared.join("conformance/istio/cases");
    let mut entries: Vec<_> = std::fs::read_dir(&dir).expect("cases dir").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_stem().expect("stem").to_string_lossy().to_string();
        let text = std::fs::read_to_string(&p).expect("read case");
        out.push((name, serde_json::from_str(&text).expect("case json")));
    }
    out
}

/// True when tests that need root and network namespaces can run. Skips (false, with a
/// message) only when not root and `CI` is unset; panics when `CI` is set and not root.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI is set but the test is not running as root (it needs network namespaces)");
    }
    eprintln!("skipping {test}: needs root for network namespaces (run as root, or set CI to make this fatal)");
    false
}
