//! A pod made and unmade: its namespace wired to the node, its capture installed (nothing
//! half-made is left when a step fails), and its teardown carried out in the order
//! [`crate::plan::teardown::pod`] gives.

use super::{capture, net, process};
use crate::config::MeshConfig;
use crate::plan::pod::Blueprint;
use crate::plan::teardown::PodStep;
use crate::stop::Stop;
use crate::MeshError;
use std::path::PathBuf;
use std::process::Child;

/// Creates `b`'s namespace with veth `veth` to the node, and installs its capture.
pub fn create(cfg: &MeshConfig, b: &Blueprint, veth: &str) -> Result<(), MeshError> {
    net::create_pod(&cfg.node_netns(), &b.netns, veth, b.ip, cfg.gateway())?;
    if let Err(e) = capture::install(&b.capture, &b.netns, b.key.as_str(), cfg) {
        let _ = net::netns_del(&b.netns);
        return Err(e);
    }
    Ok(())
}

/// What is left of a pod to tear down.
#[derive(Debug)]
pub struct Remains {
    /// `namespace/name`, for messages.
    pub pod: String,
    /// Its network namespace.
    pub netns: String,
    /// Its running containers.
    pub children: Vec<Child>,
    /// Its containers' pidfiles.
    pub pidfiles: Vec<PathBuf>,
}

/// Carries out `steps` for `pod`; `release` returns its address, `say` reports what failed.
/// Every step runs even when an earlier one failed.
pub fn teardown(steps: &[PodStep], mut pod: Remains, stop: &Stop, release: impl FnOnce(), say: &dyn Fn(&str)) {
    let mut release = Some(release);
    for step in steps {
        match step {
            PodStep::Terminate { grace } => std::thread::scope(|s| {
                for child in &mut pod.children {
                    s.spawn(move || process::terminate(child, *grace, stop));
                }
            }),
            PodStep::KillStragglers { grace } => process::kill_pids(&net::netns_pids(&pod.netns), *grace, stop),
            PodStep::RemoveEbpf => {
                if let Err(e) = capture::remove_ebpf(&pod.netns) {
                    say(&format!("pod {}: removing eBPF capture: {}", pod.pod, e.report()));
                }
            }
            PodStep::DeleteNetns => {
                if let Err(e) = net::netns_del(&pod.netns) {
                    say(&format!("pod {}: {}", pod.pod, e.report()));
                }
            }
            PodStep::RemovePidfiles => {
                for f in &pod.pidfiles {
                    let _ = std::fs::remove_file(f);
                }
            }
            PodStep::ReleaseAddress => {
                if let Some(r) = release.take() {
                    r();
                }
            }
        }
    }
}
