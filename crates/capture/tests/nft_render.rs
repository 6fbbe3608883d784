//! Golden tests of the native nftables renderer: for every Istio capture case with an
//! nftables golden, `render::nft::render` of the compiled plan equals
//! `testdata/nft/<case>.nft`. `UPDATE_GOLDEN=1` rewrites the files (review the diff!).
//!
//! The goldens are ours, not Istio's: Istio's nft layout (three tables, one rule per list
//! element) differs on purpose. `nft_kernel.rs` proves that every golden loads into the kernel
//! and reads back as the plan.

mod common;

use meshpass_capture::render::nft;
use meshpass_capture::{compile, IstioArgs};
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/nft")
}

#[test]
fn nft_goldens_match() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (name, case) in common::cases(&shared) {
        if case.pointer("/expected/nftables").is_none_or(|v| v.is_null()) {
            continue;
        }
        let cfg = IstioArgs::from_case_config(&case["config"]).to_config().unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = nft::render(&compile(&cfg));
        let path = golden_dir().join(format!("{name}.nft"));
        if update {
            std::fs::create_dir_all(golden_dir()).expect("create testdata/nft");
            std::fs::write(&path, &got).expect("write golden");
        } else {
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if want != got {
                failures.push(format!("== {name} ({})\n-- got\n{got}", path.display()));
            }
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} goldens differ (UPDATE_GOLDEN=1 rewrites):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, 28, "expected the 28 capture cases with an nftables golden");
}

#[test]
fn rendering_is_deterministic_and_hash_matches() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    for (name, case) in common::cases(&shared) {
        if case.pointer("/expected/nftables").is_none_or(|v| v.is_null()) {
            continue;
        }
        let cfg = IstioArgs::from_case_config(&case["config"]).to_config().unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan = compile(&cfg);
        let a = nft::render(&plan);
        assert_eq!(a, nft::render(&compile(&cfg)), "{name}");
        assert!(a.contains(&format!("comment \"meshpass plan {}\"", nft::plan_hash(&plan))), "{name}");
        // Only chains with rules or jumped to, and every jump target is declared.
        for line in a.lines() {
            if let Some(target) = line.split("jump ").nth(1).and_then(|t| t.split_whitespace().next()) {
                assert!(a.contains(&format!("\tchain {target} {{")), "{name}: jump to undeclared {target}");
            }
        }
    }
}
