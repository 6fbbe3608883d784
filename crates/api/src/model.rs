//! The data the backends report and the API serves. Field names are camelCase on the wire, as
//! in Kubernetes' own API. These types are the contract between the backends, the server, the
//! GUI and the CLI: change them together.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A workload's namespace and name: the one way the API, backends and audit log name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkloadRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl WorkloadRef {
    /// A reference to `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        WorkloadRef { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The Service port (what clients call).
    pub port: u16,
    /// The container port it forwards to (what passthrough settings name).
    pub target_port: u16,
}

/// A Service selecting a workload's pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    /// Name (in the workload's namespace).
    pub name: String,
    /// ClusterIP, when it has one.
    pub cluster_ip: Option<String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
}

/// What a backend knows about one workload, in its own terms (annotations, counts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    /// Namespace and name.
    #[serde(flatten)]
    pub workload: WorkloadRef,
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// True when the workload's pods get a sidecar (namespace injection or pod-template
    /// `sidecar.istio.io/inject`).
    pub meshed: bool,
    /// True when running pods were created from an older template, so a restart is needed
    /// for the current template (and its passthrough settings) to take effect.
    pub pending_restart: bool,
    /// Ready pods.
    pub ready: u32,
    /// Desired pods.
    pub total: u32,
    /// Pods that run a sidecar.
    pub injected: u32,
    /// Services whose selector matches the workload's pods.
    pub services: Vec<ServiceInfo>,
    /// The pod template's annotations (`spec.template.metadata.annotations`).
    pub annotations: BTreeMap<String, String>,
    /// Opaque version of the workload; changes on every write. Writes name the version they
    /// were based on and fail with [`crate::BackendError::Conflict`] when it moved.
    pub resource_version: String,
}

/// The sidecar status column of the workload list (DCE's `Injected` / `Uninjected` /
/// `Pending restart`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SidecarStatus {
    /// Pods run a sidecar and match the current template.
    Injected,
    /// No sidecar.
    Uninjected,
    /// The template changed since the pods started; restart to apply.
    #[serde(rename = "Pending restart")]
    PendingRestart,
}

impl WorkloadInfo {
    /// The status shown in the list.
    pub fn status(&self) -> SidecarStatus {
        if !self.meshed {
            SidecarStatus::Uninjected
        } else if self.pending_restart {
            SidecarStatus::PendingRestart
        } else {
            SidecarStatus::Injected
        }
    }
}

/// A workload's traffic passthrough settings, as the API, GUI and CLI show and take them.
///
/// Each list is the items of one annotation (empty = annotation absent). Items are strings so
/// that port ranges (`8000-8100`) and CIDRs are kept as written; validation is the engine's
/// (`meshpass-settings`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Passthrough {
    /// `traffic.sidecar.istio.io/excludeInboundPorts`: inbound ports that skip the sidecar.
    #[serde(default)]
    pub inbound_ports: Vec<String>,
    /// `traffic.sidecar.istio.io/excludeOutboundPorts`: destination ports that skip it.
    #[serde(default)]
    pub outbound_ports: Vec<String>,
    /// `traffic.sidecar.istio.io/excludeOutboundIPRanges`: destination CIDRs that skip it.
    #[serde(default)]
    pub outbound_ip_ranges: Vec<String>,
    /// Advanced: `traffic.sidecar.istio.io/includeInboundPorts` (`*`, a list, or empty for
    /// none); `None` = annotation absent (Istio's default: the container ports, `*` here).
    #[serde(default)]
    pub include_inbound_ports: Option<String>,
    /// Advanced: `traffic.sidecar.istio.io/includeOutboundPorts`.
    #[serde(default)]
    pub include_outbound_ports: Option<String>,
    /// Advanced: `traffic.sidecar.istio.io/includeOutboundIPRanges` (`*` by default).
    #[serde(default)]
    pub include_outbound_ip_ranges: Option<String>,
    /// Advanced: `sidecar.istio.io/interceptionMode` (`REDIRECT` or `TPROXY`).
    #[serde(default)]
    pub interception_mode: Option<String>,
}

/// How the rules of a backend are rendered in previews.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleFormat {
    /// Native nftables (`nft -f` input): the local mesh's default.
    Nft,
    /// `iptables-restore` input, as Istio's init container / CNI writes it.
    Iptables,
}

/// Which way a check looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the workload, from outside the mesh (the node, or the API server's proxy).
    Inbound,
    /// Out of a pod of the workload.
    Outbound,
}

/// What to check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    /// Inbound (default) or outbound.
    #[serde(default = "inbound")]
    pub direction: Direction,
    /// Inbound: the Service port to call (default: the workload's first Service's first port).
    #[serde(default)]
    pub port: Option<u16>,
    /// Inbound: the HTTP path (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// Outbound: `ADDR:PORT` or `http://ADDR:PORT/PATH` to connect to from a pod.
    #[serde(default)]
    pub target: Option<String>,
}

fn inbound() -> Direction {
    Direction::Inbound
}

/// Which way the checked connection went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Through the workload's sidecar.
    Sidecar,
    /// Around it: traffic passthrough.
    Passthrough,
    /// The evidence does not decide (for example the response headers were configured away).
    Unknown,
}

/// The result of a check, with everything it was decided from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// The direction checked.
    pub direction: Direction,
    /// Where the request came from (`node`, `pod default/sleep-…`, `apiserver proxy`).
    pub from: String,
    /// What was requested (`GET http://198.19.0.10:5000/hello`, or `tcp 198.18.0.9:80`).
    pub target: String,
    /// The decision.
    pub verdict: Verdict,
    /// The response's status line, when the target spoke HTTP.
    pub status_line: Option<String>,
    /// The response headers in order, names as received.
    pub headers: Vec<(String, String)>,
    /// Human-readable evidence lines, strongest first (sidecar connection record, rule and
    /// counter, headers).
    pub evidence: Vec<String>,
}

/// One capture rule with its counters, read from a pod's live rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleCounter {
    /// The pod it was read from.
    pub pod: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// The rule's label (`meshpass_capture::compile::labels`), e.g. `exclude-inbound-ports`.
    pub label: String,
    /// The rule as the kernel lists it.
    pub rule: String,
    /// Packets that matched (nat-table rules see the first packet of each connection, so
    /// there this counts connections).
    pub packets: u64,
    /// Bytes that matched.
    pub bytes: u64,
}
