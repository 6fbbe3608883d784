//! Helpers shared by the integration tests of every meshpass crate.
//!
//! Tests that need root and network namespaces call [`privileged`]: they skip (with a
//! message) only when not root and `CI` is unset, and fail loudly when `CI` is set, so a CI run
//! can never pass by skipping them. Tests that read Istio's conformance data find it with
//! [`shared_dir`] (`../shared` beside the checkout, or `MESHPASS_SHARED_DIR`). The browser test
//! and the OpenAPI fuzzer are run through [`tools`].

use std::path::{Path, PathBuf};

pub mod tools;

/// True when a test needing root and network namespaces can run. Skips (false, with a
/// message naming `test`) only when not root and `CI` is unset; panics when `CI` is set.
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

/// The shared reference directory: `MESHPASS_SHARED_DIR`, else `../shared` beside the
/// checkout. `None` (after printing why) when the conformance data is absent outside CI; a
/// panic when it is absent in CI.
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

/// Every Istio conformance case (`conformance/istio/cases/*.json`), parsed, sorted by name.
pub fn cases(shared: &Path) -> Vec<(String, serde_json::Value)> {
    let dir = shared.join("conformance/istio/cases");
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("cases dir").map(|e| e.expect("dir entry").path()).collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_stem().expect("file stem").to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).expect("read case");
            (name, serde_json::from_str(&text).expect("case json"))
        })
        .collect()
}
