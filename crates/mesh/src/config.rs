//! How the local mesh runs (`meshpass up`'s flags): plain data the planner reads and the
//! supervisor carries out. Pure.

use crate::ipam::Cidr;
use crate::plan::capture::mesh_injector_values;
use crate::MeshError;
use meshpass_capture::linux::RuleBackend;
use meshpass_capture::InjectorValues;
use meshpass_settings::MeshDefaults;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default prefix of every network namespace the mesh creates; nothing else is ever touched.
pub const DEFAULT_NETNS_PREFIX: &str = "mpm-";
/// The sidecar's UID and GID (the capture rules exempt its traffic).
pub const PROXY_UID: u32 = 1337;
/// The sidecar container's name, as Istio calls it.
pub const SIDECAR_NAME: &str = "istio-proxy";

/// How the supervisor runs.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// State directory (state.json, control.sock, logs, pidfiles).
    pub state_dir: PathBuf,
    /// Prefix of the mesh's network namespaces (`mpm-`); lets tests run meshes side by side.
    pub netns_prefix: String,
    /// Pod addresses (the first host address is the node's gateway).
    pub pod_cidr: Cidr,
    /// ClusterIPs.
    pub service_cidr: Cidr,
    /// Backend for the pods' capture rules.
    pub backend: RuleBackend,
    /// Install the sample on first start.
    pub sample: bool,
    /// The meshpass binary: `meshpass` in a container command means this program.
    pub meshpass_exe: PathBuf,
    /// The sidecar command line (default `<meshpass_exe> proxy`).
    pub sidecar_argv: Vec<String>,
    /// UID/GID of application containers.
    pub app_uid: u32,
    /// How long a terminating pod may drain before SIGKILL.
    pub drain: Duration,
    /// Excluded inbound ports skip conntrack too
    /// ([`meshpass_capture::CaptureConfig::untrack_excluded_inbound`]).
    pub untrack_excluded_inbound: bool,
    /// Capture with eBPF programs instead of netfilter rules ([`meshpass_capture::ebpf`]): the
    /// same settings, and passthrough traffic meets no per-packet hook. Sidecars then run in
    /// `EBPF` interception mode with `CAP_NET_ADMIN` and `CAP_BPF`.
    pub ebpf_capture: bool,
    /// Lifetime of the pods' workload certificates (Istio's default: 24 h); each is renewed
    /// at half its life.
    pub workload_cert_ttl: Duration,
}

impl MeshConfig {
    /// Defaults for `state_dir`, with the running executable as the meshpass binary.
    pub fn new(state_dir: &Path) -> Self {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("meshpass"));
        MeshConfig {
            state_dir: state_dir.to_path_buf(),
            netns_prefix: DEFAULT_NETNS_PREFIX.to_string(),
            pod_cidr: Cidr { addr: Ipv4Addr::new(198, 18, 0, 0), len: 16 },
            service_cidr: Cidr { addr: Ipv4Addr::new(198, 19, 0, 0), len: 16 },
            backend: RuleBackend::Nftables,
            sample: true,
            sidecar_argv: vec![exe.to_string_lossy().into_owned(), "proxy".to_string()],
            meshpass_exe: exe,
            app_uid: 1000,
            drain: Duration::from_secs(5),
            untrack_excluded_inbound: false,
            ebpf_capture: false,
            workload_cert_ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// The mesh-wide values every pod's rules are compiled with, around the mesh-wide
    /// capture defaults kept in the state ([`crate::state::State::mesh_defaults`]).
    pub fn injector_values(&self, defaults: &MeshDefaults) -> InjectorValues {
        mesh_injector_values(self.untrack_excluded_inbound, defaults)
    }

    /// Every problem with the settings at once.
    pub fn validate(&self) -> Result<(), MeshError> {
        let p = &self.netns_prefix;
        let ok = p.len() >= 3
            && p.len() <= 16
            && p.ends_with('-')
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let mut errors = Vec::new();
        if !ok {
            errors.push(format!("netns prefix `{p}` must be 3-16 of [a-z0-9-] ending in '-'"));
        }
        if self.ebpf_capture && self.untrack_excluded_inbound {
            errors.push(
                "--ebpf-capture and --untrack-excluded-inbound exclude each other: eBPF capture tracks nothing".into(),
            );
        }
        if self.workload_cert_ttl < Duration::from_secs(10) {
            errors.push(format!(
                "workload certificate lifetime {:?} is too short (at least 10s: certificates are renewed at half their life)",
                self.workload_cert_ttl
            ));
        }
        if self.pod_cidr.overlaps(self.service_cidr) {
            errors.push(format!("pod CIDR {} overlaps service CIDR {}", self.pod_cidr, self.service_cidr));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(MeshError::Invalid(errors))
        }
    }

    /// The node namespace's name.
    pub fn node_netns(&self) -> String {
        format!("{}node", self.netns_prefix)
    }

    /// The node's address in the pod block (every pod's default gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        self.pod_cidr.nth(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_all_reported() {
        let mut cfg = MeshConfig::new(Path::new("/tmp/x"));
        cfg.validate().expect("defaults are valid");
        cfg.netns_prefix = "NS".into();
        cfg.ebpf_capture = true;
        cfg.untrack_excluded_inbound = true;
        cfg.service_cidr = cfg.pod_cidr;
        let Err(MeshError::Invalid(errors)) = cfg.validate() else { panic!("invalid") };
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(cfg.gateway(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(MeshConfig::new(Path::new("/tmp/x")).node_netns(), "mpm-node");
    }
}
