//! A pod's capture, installed: the netfilter rules or eBPF programs the planner decided
//! ([`crate::plan::capture`]), applied in the pod's namespace, swapped in place for a live
//! change, and the eBPF pins removed before the namespace goes.

use crate::config::MeshConfig;
use crate::plan::capture::{capture_plan, ebpf_plan, Capture};
use crate::MeshError;
use meshpass_capture::linux::{self as capture_linux, ebpf, Netns, NetnsRunner};
use std::collections::BTreeMap;

/// Installs `capture` in the namespace `netns` of `pod`.
pub fn install(capture: &Capture, netns: &str, pod: &str, cfg: &MeshConfig) -> Result<(), MeshError> {
    match capture {
        Capture::None => Ok(()),
        Capture::Rules(plan) => {
            let runner = NetnsRunner::new(Netns::Named(netns.to_string()));
            capture_linux::apply(plan, cfg.backend, &runner)
                .map(drop)
                .map_err(|source| MeshError::Capture { pod: pod.to_string(), source })
        }
        Capture::Ebpf(annotations) => install_ebpf(annotations, netns, pod, cfg),
    }
}

/// Installs (or swaps) eBPF capture for a pod's annotations in its namespace; without
/// capture (interception mode `NONE`) removes it.
fn install_ebpf(
    annotations: &BTreeMap<String, String>,
    netns: &str,
    pod: &str,
    cfg: &MeshConfig,
) -> Result<(), MeshError> {
    let ns = Netns::Named(netns.to_string());
    let runner = NetnsRunner::new(ns.clone());
    let capture = |source| MeshError::Capture { pod: pod.to_string(), source };
    let cookie = ebpf::netns_cookie(&ns).map_err(capture)?;
    match ebpf_plan(annotations, &cfg.injector_values(), cookie).map_err(MeshError::Invalid)? {
        Some(plan) => {
            let cgroup = ebpf::cgroup2_root().map_err(capture)?;
            ebpf::apply(&plan, &ns, &cgroup, &runner).map_err(capture)
        }
        None => ebpf::remove(&ns, &runner).map_err(capture),
    }
}

/// Re-applies a running meshed pod's capture for new `annotations`, in place: the rules are
/// replaced in one transaction (or removed, for interception mode `NONE`); eBPF programs are
/// swapped behind the pod's links in one step.
pub fn reapply(
    annotations: &BTreeMap<String, String>,
    netns: &str,
    pod: &str,
    cfg: &MeshConfig,
) -> Result<(), MeshError> {
    if cfg.ebpf_capture {
        return install_ebpf(annotations, netns, pod, cfg);
    }
    let runner = NetnsRunner::new(Netns::Named(netns.to_string()));
    let result = match capture_plan(annotations, &cfg.injector_values()).map_err(MeshError::Invalid)? {
        Some(plan) => capture_linux::apply(&plan, cfg.backend, &runner).map(drop),
        None => capture_linux::cleanup(cfg.backend, false, &runner),
    };
    result.map_err(|source| MeshError::Capture { pod: pod.to_string(), source })
}

/// Unpins the eBPF capture of namespace `netns`, if it has one (pins outlive the namespace).
pub fn remove_ebpf(netns: &str) -> Result<(), MeshError> {
    let ns = Netns::Named(netns.to_string());
    let capture = |source| MeshError::Capture { pod: netns.to_string(), source };
    if ebpf::is_installed(&ns).map_err(capture)? {
        ebpf::remove(&ns, &NetnsRunner::new(ns.clone())).map_err(capture)?;
    }
    Ok(())
}
