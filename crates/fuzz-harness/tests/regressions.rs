//! Replays every input kept in `fuzz/regressions/<target>/` through the same body the fuzz
//! target runs, on stable: crashes that fuzzing found stay fixed. Fails when a target of
//! `fuzz/Cargo.toml` has no body in [`TARGETS`] or no regression directory, so a new target
//! is replayed from the start.

use meshpass_fuzz_harness::TARGETS;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The `[[bin]]` names of `fuzz/Cargo.toml`: the targets `cargo fuzz list` shows.
fn fuzz_targets() -> Vec<String> {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("read fuzz/Cargo.toml");
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(value) = line.strip_prefix("name").map(str::trim).and_then(|l| l.strip_prefix('=')) {
                names.push(value.trim().trim_matches('"').to_string());
            }
        }
    }
    names
}

#[test]
fn every_fuzz_target_has_a_body_and_regression_inputs() {
    let targets = fuzz_targets();
    assert!(!targets.is_empty(), "no [[bin]] in fuzz/Cargo.toml");
    for t in &targets {
        assert!(
            TARGETS.iter().any(|(name, _)| name == t),
            "fuzz target {t} has no body in meshpass_fuzz_harness::TARGETS (its fuzz_target! should call one)"
        );
        let dir = fuzz_dir().join("regressions").join(t);
        assert!(dir.is_dir(), "{} is missing: keep the target's crash inputs (and a seed) there", dir.display());
    }
    for (name, _) in TARGETS {
        assert!(targets.iter().any(|t| t == name), "{name} is in TARGETS but not a [[bin]] of fuzz/Cargo.toml");
    }
}

#[test]
fn regression_inputs_replay_without_a_finding() {
    let mut failures = Vec::new();
    for (name, body) in TARGETS {
        let dir = fuzz_dir().join("regressions").join(name);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        inputs.sort();
        for input in &inputs {
            let data = std::fs::read(input).expect("read input");
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                failures.push(input.display().to_string());
            }
        }
        println!("{name}: replayed {} input(s) from fuzz/regressions/{name}", inputs.len());
        assert!(!inputs.is_empty(), "{}: no inputs (keep at least a seed)", dir.display());
    }
    assert!(failures.is_empty(), "inputs that still fail (the panic is printed above each):\n{}", failures.join("\n"));
}
