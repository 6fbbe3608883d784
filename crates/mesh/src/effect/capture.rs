//! A pod's capture, installed: the netfilter rules or eBPF programs the planner decided
//! ([`crate::plan::capture`]), applied in the pod's namespace, swapped in place for a live
//! change, and the eBPF pins removed before the namespace goes.

use crate::config::MeshConfig;
use crate::plan::capture::{ebpf_plan, Capture};
use crate::MeshError;
use meshpass_capture::linux::{self as capture_linux, ebpf, Netns, NetnsRunner};
use meshpass_capture::CaptureConfig;

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
        Capture::Ebpf(config) => install_ebpf(Some(config), netns, pod),
    }
}

/// Installs (or swaps) eBPF capture of `config` in a pod's namespace; without capture
/// (`None`: interception mode `NONE`) removes it.
fn install_ebpf(config: Option<&CaptureConfig>, netns: &str, pod: &str) -> Result<(), MeshError> {
    let ns = Netns::Named(netns.to_string());
    let runner = NetnsRunner::new(ns.clone());
    let capture = |source| MeshError::Capture { pod: pod.to_string(), source };
    let Some(config) = config else { return ebpf::remove(&ns, &runner).map_err(capture) };
    let cookie = ebpf::netns_cookie(&ns).map_err(capture)?;
    let plan = ebpf_plan(config, cookie).map_err(MeshError::Invalid)?;
    let cgroup = ebpf::cgroup2_root().map_err(capture)?;
    ebpf::apply(&plan, &ns, &cgroup, &runner).map_err(capture)
}

/// Re-applies a running meshed pod's capture as decided anew (new annotations, or new
/// mesh-wide defaults), in place: the rules are replaced in one transaction (or removed, for
/// interception mode `NONE`); eBPF programs are swapped behind the pod's links in one step.
pub fn reapply(capture: &Capture, netns: &str, pod: &str, cfg: &MeshConfig) -> Result<(), MeshError> {
    match capture {
        Capture::Ebpf(config) => install_ebpf(Some(config), netns, pod),
        Capture::None if cfg.ebpf_capture => install_ebpf(None, netns, pod),
        Capture::Rules(plan) => {
            let runner = NetnsRunner::new(Netns::Named(netns.to_string()));
            capture_linux::apply(plan, cfg.backend, &runner)
                .map(drop)
                .map_err(|source| MeshError::Capture { pod: pod.to_string(), source })
        }
        Capture::None => {
            let runner = NetnsRunner::new(Netns::Named(netns.to_string()));
            capture_linux::cleanup(cfg.backend, false, &runner)
                .map_err(|source| MeshError::Capture { pod: pod.to_string(), source })
        }
    }
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
