//! What a mesh leaves in the machine when its supervisor could not tear it down (a crash,
//! `kill -9`, a power cut): processes recorded in the pidfiles or living in its namespaces,
//! eBPF pins, and the namespaces themselves. Only names that start with the mesh's prefix are
//! touched.

use super::{capture, net, process};
use crate::stop::Stop;
use crate::MeshError;
use std::path::Path;
use std::time::Duration;

/// Removes what a mesh with `prefix` left behind; returns what was removed.
pub fn sweep(state_dir: &Path, prefix: &str) -> Result<Vec<String>, MeshError> {
    sweep_with(state_dir, prefix, &Stop::new())
}

/// [`sweep`], its waits cut short once `stop` is hurried.
pub fn sweep_with(state_dir: &Path, prefix: &str, stop: &Stop) -> Result<Vec<String>, MeshError> {
    if prefix.len() < 3 {
        return Err(MeshError::Invalid(vec![format!("refusing to sweep with the short prefix `{prefix}`")]));
    }
    let mut out = Vec::new();
    let mut pids = Vec::new();
    let pid_dir = state_dir.join("pids");
    if let Ok(entries) = std::fs::read_dir(&pid_dir) {
        for e in entries.flatten() {
            if let Some(pid) = process::live_pid(&e.path()) {
                pids.push(pid);
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
    let namespaces = net::list_netns(prefix);
    for ns in &namespaces {
        pids.extend(net::netns_pids(ns));
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&p| p != std::process::id() as i32);
    if !pids.is_empty() {
        process::kill_pids(&pids, Duration::from_secs(2), stop);
        out.push(format!("killed {} process(es)", pids.len()));
    }
    for ns in namespaces {
        // Pins would outlive the namespace (until the next eBPF apply sweeps them).
        let _ = capture::remove_ebpf(&ns);
        net::netns_del(&ns)?;
        out.push(format!("removed network namespace {ns}"));
    }
    Ok(out)
}
