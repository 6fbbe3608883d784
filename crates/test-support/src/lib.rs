//! Helpers shared by the integration tests of every meshpass crate.
//!
//! Tests that need root and network namespaces are written with [`namespaced_test!`]: they are
//! `#[ignore = "needs root"]` (a run without root lists them as ignored; `scripts/test` runs
//! them as root with `--include-ignored`) and get a [`TestNamespaces`] guard named after the
//! test that removes everything on drop ([`netns`]). Tests that read Istio's conformance data
//! find it with [`shared_dir`] (`../shared` beside the checkout, or `MESHPASS_SHARED_DIR`). The
//! browser test and the OpenAPI fuzzer are run through [`tools`].

use std::path::{Path, PathBuf};

pub mod netns;
pub mod tools;

pub use netns::{require_root, Netns, TestNamespaces};

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
