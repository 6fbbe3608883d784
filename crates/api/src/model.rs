//! The data the backends report and the API serves. Field names are camelCase on the wire, as
//! in Kubernetes' own API. These types are the contract between the backends, the server, the
//! GUI and the CLI: change them together.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A workload's namespace and name: the one way the API, backends and audit log name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The Service port (what clients call).
    #[schema(maximum = 65535)]
    pub port: u16,
    /// The container port it forwards to (what passthrough settings name).
    #[schema(maximum = 65535)]
    pub target_port: u16,
}

/// A Service selecting a workload's pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The labels of its pods (`spec.template.metadata.labels`): what Services select on and
    /// what a batch's label selector matches.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Opaque version of the workload; changes on every write. Writes name the version they
    /// were based on and fail with [`crate::BackendError::Conflict`] when it moved.
    pub resource_version: String,
}

/// The sidecar status column of the workload list (DCE's `Injected` / `Uninjected` /
/// `Pending restart`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// A Deployment whose one pod is ready and runs its current template (with a sidecar when
    /// `meshed`), without Services or annotations, at version `1`: the starting point of the
    /// fake backend's and the tests' workloads.
    pub fn deployment(workload: WorkloadRef, meshed: bool) -> Self {
        WorkloadInfo {
            workload,
            kind: "Deployment".into(),
            meshed,
            pending_restart: false,
            ready: 1,
            total: 1,
            injected: u32::from(meshed),
            services: Vec::new(),
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            resource_version: "1".into(),
        }
    }

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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleFormat {
    /// Native nftables (`nft -f` input): the local mesh's default.
    Nft,
    /// `iptables-restore` input, as Istio's init container / CNI writes it.
    Iptables,
}

/// Which way a check looks: into the workload from outside the mesh (the node, or the API
/// server's proxy), or out of a pod of the workload.
pub use meshpass_settings::Direction;

/// The OpenAPI schema of [`Direction`] (the type lives in `meshpass-settings`, which knows
/// nothing of OpenAPI): `inbound` or `outbound`.
#[derive(utoipa::ToSchema)]
#[schema(as = Direction, rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum DirectionSchema {
    /// Into the workload, from outside the mesh (the node, or the API server's proxy).
    Inbound,
    /// Out of a pod of the workload.
    Outbound,
}

/// What to check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    /// Inbound (default) or outbound.
    #[serde(default = "inbound")]
    #[schema(value_type = DirectionSchema)]
    pub direction: Direction,
    /// Inbound: the Service port to call (default: the workload's first Service's first port).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
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

impl Default for CheckRequest {
    /// The default check: inbound, the first Service port, `/`.
    fn default() -> Self {
        CheckRequest { direction: Direction::Inbound, port: None, path: None, target: None }
    }
}

/// Which way the checked connection went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// The direction checked.
    #[schema(value_type = DirectionSchema)]
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
    /// Whether the hop into the workload (inbound) or out of it (outbound) was Istio mutual
    /// TLS between two sidecars, as the sidecars recorded it. `false` for plaintext, for a
    /// request refused before it was answered, and for a client outside the mesh (the node,
    /// the API server's proxy).
    pub mtls: bool,
    /// The SPIFFE identities of the hop's two ends, as the sidecars verified them (`null`
    /// where a side's identity is not known, as with plaintext).
    pub peer_identities: PeerIdentities,
    /// Why the request failed (refused, reset, a sidecar's refusal), when it did.
    #[schema(nullable = false)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The SPIFFE identities of a checked hop (`spiffe://cluster.local/ns/NS/sa/SA`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerIdentities {
    /// The client's identity, as the server's sidecar verified it (or as the client's sidecar
    /// presented it).
    pub client: Option<String>,
    /// The server's identity, as the client's sidecar verified it (or as the server's sidecar
    /// presented it).
    pub server: Option<String>,
}

/// One capture rule with its counters, read from a pod's live rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleCounter {
    /// The pod it was read from.
    pub pod: String,
    /// `ipv4` or `ipv6`; `any` for eBPF capture, whose counters serve both.
    pub family: String,
    /// The rule's label (`meshpass_capture::compile::labels`), e.g. `exclude-inbound-ports`.
    pub label: String,
    /// The rule as the kernel lists it.
    pub rule: String,
    /// Packets that matched (nat-table rules see the first packet of each connection, so
    /// there this counts connections; eBPF capture counts connections).
    pub packets: u64,
    /// Bytes that matched.
    pub bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// The API's own documents (what `/api/v1` serves and takes). Added with the server; the CLI and
// the GUI read the same shapes.
// ---------------------------------------------------------------------------------------------

/// A workload as the API lists it: the backend's [`WorkloadInfo`] plus the derived status
/// column and its passthrough settings (read from the template annotations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// The cluster the workload is in (`local` for the local mesh; the name given to
    /// `meshpass serve --kube --context`/`--clusters`).
    pub cluster: String,
    /// Everything the backend reported.
    #[serde(flatten)]
    pub info: WorkloadInfo,
    /// [`WorkloadInfo::status`].
    pub status: SidecarStatus,
    /// The passthrough settings of the pod template.
    pub passthrough: Passthrough,
    /// One warning per workload value that replaces a mesh-wide default and so drops items
    /// of it (Istio never merges the two); the values in force are the annotations present,
    /// else the mesh-wide defaults (`GET /api/v1/defaults`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
}

/// Whether a cluster answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// It answered.
    Ok,
    /// It could not be reached or did not answer in time (its workloads are missing from the
    /// list; operations on them are 503).
    Unreachable,
    /// It answered with an error (for example RBAC refused the listing).
    Failed,
}

/// One cluster the management plane serves, as the workload list found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Its name.
    pub name: String,
    /// Whether it answered.
    pub state: ClusterState,
    /// Its workloads in this list (after the filters).
    pub workloads: u32,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The error code of that failure (as in [`ErrorBody::error`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::error::ErrorCode>)]
    pub error: Option<String>,
}

/// `GET /api/v1/workloads`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkloadList {
    /// The workloads, filtered and sorted as asked.
    pub items: Vec<Workload>,
    /// Every cluster asked (all of them, or the one filtered on), in the order served: one
    /// that failed is listed with its error while the others' workloads are in `items`.
    #[serde(default)]
    pub clusters: Vec<ClusterStatus>,
}

/// A workload's passthrough settings with their version (`GET …/passthrough` and the answer
/// to every write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassthroughDoc {
    /// The cluster.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The version to name in `If-Match` when writing.
    pub resource_version: String,
    /// The sidecar status column.
    pub status: SidecarStatus,
    /// The settings.
    pub settings: Passthrough,
    /// The passthrough annotations present on the template (only the seven keys).
    pub annotations: BTreeMap<String, String>,
    /// Things the operator should know about these settings (see API.md).
    pub warnings: Vec<String>,
    /// Every capture value in force for the workload's pods and where it comes from: its own
    /// annotation, or the mesh-wide default (Istio's precedence: an annotation, even empty,
    /// replaces the mesh-wide value). Empty when the template's annotations are invalid.
    pub effective: Vec<EffectiveValue>,
    /// The restart started by this write, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// For a write: the meshed clients and destinations the written settings affect and how,
    /// compared with no passthrough settings, computed before writing from the mesh's policies
    /// (empty for a read, on a backend that cannot read policies, or when nothing is affected).
    #[serde(default)]
    pub impact: Vec<ImpactEntry>,
    /// For a write with `fixClients`: the `DestinationRule`s created.
    #[serde(default)]
    pub created: Vec<PolicyRef>,
    /// For a write: the `DestinationRule`s meshpass had created that the change made
    /// unnecessary, removed.
    #[serde(default)]
    pub removed: Vec<PolicyRef>,
}

/// `PUT …/passthrough`: the [`Passthrough`] fields, plus whether to restart and (instead of
/// `If-Match`) the version the change is based on.
///
/// The fields are repeated rather than `#[serde(flatten)]`ed because serde cannot combine
/// `flatten` with `deny_unknown_fields`, and a misspelt field must be a 400, not silently
/// dropped. A unit test keeps the two field lists equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PassthroughUpdate {
    /// See [`Passthrough::inbound_ports`].
    #[serde(default)]
    pub inbound_ports: Vec<String>,
    /// See [`Passthrough::outbound_ports`].
    #[serde(default)]
    pub outbound_ports: Vec<String>,
    /// See [`Passthrough::outbound_ip_ranges`].
    #[serde(default)]
    pub outbound_ip_ranges: Vec<String>,
    /// See [`Passthrough::include_inbound_ports`].
    #[serde(default)]
    pub include_inbound_ports: Option<String>,
    /// See [`Passthrough::include_outbound_ports`].
    #[serde(default)]
    pub include_outbound_ports: Option<String>,
    /// See [`Passthrough::include_outbound_ip_ranges`].
    #[serde(default)]
    pub include_outbound_ip_ranges: Option<String>,
    /// See [`Passthrough::interception_mode`].
    #[serde(default)]
    pub interception_mode: Option<String>,
    /// Restart the workload after writing, so that the settings take effect.
    #[serde(default)]
    pub restart: bool,
    /// Also create the `DestinationRule`s that turn TLS off for the Service ports whose meshed
    /// clients would fail (the preview's `fixes`); refused when the backend cannot read the
    /// mesh's policies. Rules created this way are removed by the write that makes them
    /// unnecessary.
    #[serde(default)]
    pub fix_clients: bool,
    /// The version the change is based on (alternative to `If-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

impl PassthroughUpdate {
    /// An update that sets `settings`.
    pub fn new(settings: Passthrough) -> Self {
        PassthroughUpdate {
            inbound_ports: settings.inbound_ports,
            outbound_ports: settings.outbound_ports,
            outbound_ip_ranges: settings.outbound_ip_ranges,
            include_inbound_ports: settings.include_inbound_ports,
            include_outbound_ports: settings.include_outbound_ports,
            include_outbound_ip_ranges: settings.include_outbound_ip_ranges,
            interception_mode: settings.interception_mode,
            restart: false,
            fix_clients: false,
            resource_version: None,
        }
    }

    /// The settings part.
    pub fn settings(&self) -> Passthrough {
        Passthrough {
            inbound_ports: self.inbound_ports.clone(),
            outbound_ports: self.outbound_ports.clone(),
            outbound_ip_ranges: self.outbound_ip_ranges.clone(),
            include_inbound_ports: self.include_inbound_ports.clone(),
            include_outbound_ports: self.include_outbound_ports.clone(),
            include_outbound_ip_ranges: self.include_outbound_ip_ranges.clone(),
            interception_mode: self.interception_mode.clone(),
        }
    }
}

/// One line of a rules diff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiffLine {
    /// `" "` (both), `"+"` (only proposed) or `"-"` (only current).
    pub op: String,
    /// The line, without its newline.
    pub line: String,
}

/// The istio-iptables command lines of a preview.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IstioArgsPair {
    /// For the current annotations (empty when there is no capture).
    pub current: Vec<String>,
    /// For the proposed ones.
    pub proposed: Vec<String>,
}

/// `POST …/passthrough/preview`: the rules before and after a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The cluster of the workload.
    pub cluster: String,
    /// The proposed settings as they would be stored (canonical: trimmed, no leading zeros,
    /// duplicates collapsed).
    pub settings: Passthrough,
    /// The rule syntax of `current` and `proposed`.
    pub format: RuleFormat,
    /// Rules for the current template annotations (`""` when unmeshed).
    pub current: String,
    /// Rules for the proposed settings (`""` when unmeshed).
    pub proposed: String,
    /// Line diff from `current` to `proposed`.
    pub diff: Vec<DiffLine>,
    /// The istio-iptables arguments for both.
    pub istio_args: IstioArgsPair,
    /// Warnings about the proposed settings.
    pub warnings: Vec<String>,
    /// The meshed clients and destinations the proposed settings affect and how, compared with
    /// no passthrough settings (with the fix rules when `?fixClients=true`); empty on a backend
    /// that cannot read the mesh's policies.
    pub impact: Vec<ImpactEntry>,
    /// The `DestinationRule`s a write with `fixClients` creates.
    pub fixes: Vec<FixRule>,
    /// The `DestinationRule`s meshpass created earlier that the change makes unnecessary: the
    /// write removes them.
    pub removes: Vec<PolicyRef>,
}

/// What a long operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    /// A rolling restart.
    Restart,
}

/// Where a long operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationState {
    /// Still going.
    Running,
    /// Done.
    Succeeded,
    /// Stopped with an error (see [`Operation::error`]).
    Failed,
}

/// A long operation (a restart) and its progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Its id (`GET /api/v1/operations/{id}`).
    pub id: String,
    /// What it is.
    pub kind: OperationKind,
    /// The workload's cluster.
    pub cluster: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's name.
    pub name: String,
    /// Where it is.
    pub state: OperationState,
    /// Progress lines so far, oldest first.
    pub progress: Vec<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// When it ended (RFC 3339, UTC).
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// One line of the audit log (`<state-dir>/audit.log`, `GET /api/v1/audit`): one write
/// attempt, accepted or refused, or the end of a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// `bearer`, `session:XXXXXXXX` (the first 8 characters of the session id), or
    /// `anonymous` for an attempt without a valid credential.
    pub actor: String,
    /// The client's address (`127.0.0.1:PORT`).
    pub remote: String,
    /// `passthrough.set`, `passthrough.clear` or `restart`.
    pub action: String,
    /// The cluster, as the request named it or as it was resolved (empty in entries written
    /// before the server knew clusters).
    #[serde(default)]
    pub cluster: String,
    /// The workload's namespace, as the request named it.
    pub namespace: String,
    /// The workload's name, as the request named it.
    pub name: String,
    /// The settings before the change (when the workload was read).
    #[serde(default)]
    pub before: Option<Passthrough>,
    /// The settings asked for (as sent, when the body could be read).
    #[serde(default)]
    pub after: Option<Passthrough>,
    /// Whether a restart was asked for (always true for `restart`).
    pub restart: bool,
    /// `ok`, or why the attempt failed or was refused (the error message).
    pub result: String,
    /// The HTTP status the attempt was answered with (none for the end of a restart).
    #[serde(default)]
    pub status: Option<u16>,
    /// The error code of a failed or refused attempt (`invalid`, `conflict`,
    /// `precondition_required`, `csrf`, `unauthorized`, …).
    #[serde(default)]
    #[schema(value_type = Option<crate::error::ErrorCode>)]
    pub error: Option<String>,
}

/// `GET /api/v1/audit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub items: Vec<AuditEntry>,
}

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Traffic {
    /// Packets (connections, for nat-table rules).
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Bypassed traffic by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BypassTotals {
    /// `exclude-inbound-ports`.
    pub inbound: Traffic,
    /// `exclude-outbound-ports` and `exclude-outbound-ip-ranges`.
    pub outbound: Traffic,
}

/// `GET …/bypass`: the passthrough rules' counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BypassReport {
    /// The passthrough rules, per pod.
    pub items: Vec<RuleCounter>,
    /// Their sums.
    pub totals: BypassTotals,
}

/// How the caller is authenticated (`GET /api/v1/session`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// `Authorization: Bearer`.
    Bearer,
    /// The browser session cookie.
    Session,
}

/// `GET /api/v1/session`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// The backend serving the API.
    pub backend: crate::BackendKind,
    /// The CSRF token to send as `X-CSRF-Token` (cookie sessions only).
    pub csrf_token: Option<String>,
    /// How this request was authenticated.
    pub auth: AuthKind,
    /// The rule syntax of previews.
    pub rule_format: RuleFormat,
    /// The clusters served, in order (one, `local`, for the local mesh). With more than one,
    /// workload references name their cluster.
    pub clusters: Vec<String>,
}

/// One rejected item (422), from `meshpass_settings::SettingError`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The [`Passthrough`] field (camelCase), or the annotation key when the item is in
    /// another annotation.
    pub field: String,
    /// The annotation key.
    pub key: String,
    /// The item exactly as written.
    pub item: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Every error answer's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The code (`unauthorized`, `invalid`, …; see API.md).
    #[schema(value_type = crate::error::ErrorCode)]
    pub error: String,
    /// Human-readable text.
    pub message: String,
    /// One entry per rejected item (422 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Where a capture value in force comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ValueSource {
    /// The workload's own annotation (present, possibly empty).
    Workload,
    /// The mesh-wide default (the annotation is absent).
    Mesh,
}

/// One capture value in force for a workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveValue {
    /// The annotation (`traffic.sidecar.istio.io/excludeOutboundIPRanges`).
    pub annotation: String,
    /// The mesh-wide value it replaces (`global.proxy.excludeIPRanges`).
    pub mesh_key: String,
    /// The value in force, as the annotation would spell it (`""`: none; `*`: all).
    pub value: String,
    /// Where it comes from.
    pub source: ValueSource,
}

/// The mesh-wide capture defaults (`GET /api/v1/defaults` and the answer to a change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshDefaultsDoc {
    /// The cluster whose defaults these are.
    pub cluster: String,
    /// Every value by its Helm path (`global.proxy.excludeIPRanges` → `10.0.0.0/8`).
    pub values: BTreeMap<String, String>,
    /// The version to name when writing (empty when the backend keeps none).
    pub resource_version: String,
    /// Where they are kept.
    pub source: String,
    /// What is wrong with them as kept, one line each.
    pub problems: Vec<String>,
    /// Whether they can be changed here.
    pub writable: bool,
    /// After a change: what it does to the workloads, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// `PUT /api/v1/defaults`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshDefaultsUpdate {
    /// The values to change by Helm path (`global.proxy.excludeIPRanges`); the others stay.
    pub values: BTreeMap<String, String>,
    /// Apply to running pods in place instead of on their next restart (local mesh).
    #[serde(default)]
    pub live: bool,
    /// The version the change is based on (alternative to `If-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// A workload named in a batch, optionally with the version the change is based on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchTarget {
    /// The cluster (default: the one cluster served, or the one cluster that has a workload of
    /// this namespace and name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Leave the workload alone (409) unless it is still at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// Items of the three passthrough lists, for a batch's `add`, `remove` or `set`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListItems {
    /// Inbound ports (`excludeInboundPorts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_ports: Option<Vec<String>>,
    /// Outbound ports (`excludeOutboundPorts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_ports: Option<Vec<String>>,
    /// Outbound IP ranges (`excludeOutboundIPRanges`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_ip_ranges: Option<Vec<String>>,
}

impl ListItems {
    /// True when no list is given.
    pub fn is_empty(&self) -> bool {
        self.inbound_ports.is_none() && self.outbound_ports.is_none() && self.outbound_ip_ranges.is_none()
    }
}

/// `POST /api/v1/passthrough/batch`: one change for several workloads, decided and written
/// workload by workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRequest {
    /// The workloads (or `all`).
    #[serde(default)]
    pub workloads: Vec<BatchTarget>,
    /// Every workload matching `namespace` and `search` instead of a list.
    #[serde(default)]
    pub all: bool,
    /// With `all`: only this cluster (default: every cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// With `all`: only this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// With `all`: only workloads whose `NAMESPACE/NAME` contains this (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    /// With `all`: only workloads whose pods' labels match this selector, as `kubectl -l`
    /// writes it (`app=helloworld,version!=v1`, `canary`, `!canary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Lists set outright: a list given replaces the workload's.
    #[serde(default)]
    pub set: ListItems,
    /// Items added to each workload's lists (kept once).
    #[serde(default)]
    pub add: ListItems,
    /// Items removed from each workload's lists.
    #[serde(default)]
    pub remove: ListItems,
    /// Apply to running pods in place (local mesh) instead of marking them pending restart.
    #[serde(default)]
    pub live: bool,
    /// Only show what each workload would get; write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a batch did to one workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum BatchOutcome {
    /// Written.
    Changed,
    /// Already as asked: nothing written.
    Unchanged,
    /// Dry run: would be written.
    WouldChange,
    /// Not changed at all: see `error` and `message`.
    Failed,
}

/// One workload's result in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchItem {
    /// The cluster (empty when the workload named could not be placed in one).
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What happened.
    pub outcome: BatchOutcome,
    /// The HTTP status this workload alone would have got (200, 404, 409, 422, …).
    pub status: u16,
    /// `ok`, or what went wrong.
    pub message: String,
    /// The error code when it failed (as in [`ErrorBody::error`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::error::ErrorCode>)]
    pub error: Option<String>,
    /// One entry per rejected item (422 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The settings before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Passthrough>,
    /// The settings after (or that a dry run would write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Passthrough>,
    /// The capture values in force after the change, with their source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effective: Vec<EffectiveValue>,
    /// Things the operator should know about the new settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The meshed clients and destinations the new settings affect and how (as a single
    /// write's `impact`), computed before writing; empty when nothing is affected or the
    /// backend cannot read the mesh's policies (a warning then says why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub impact: Vec<ImpactEntry>,
    /// The workload's version after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// The answer to a batch: one item per workload, in the order asked (or sorted, with `all`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    /// Per workload.
    pub items: Vec<BatchItem>,
    /// Items that did not fail.
    pub succeeded: u32,
    /// Items that failed.
    pub failed: u32,
    /// True when nothing was written (a dry run).
    pub dry_run: bool,
    /// With `all`: every cluster asked for its workloads; one that failed is listed with its
    /// error (its workloads were not changed). Otherwise empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_update_carries_exactly_the_passthrough_fields() {
        let all = Passthrough {
            inbound_ports: vec!["5000".into()],
            outbound_ports: vec!["3306".into()],
            outbound_ip_ranges: vec!["198.19.0.0/16".into()],
            include_inbound_ports: Some("*".into()),
            include_outbound_ports: Some("443".into()),
            include_outbound_ip_ranges: Some("*".into()),
            interception_mode: Some("TPROXY".into()),
        };
        // Every field of `Passthrough` is accepted by the update (it denies unknown fields)...
        let json = serde_json::to_value(&all).unwrap();
        let update: PassthroughUpdate = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(update.settings(), all);
        assert_eq!(PassthroughUpdate::new(all.clone()).settings(), all);
        // ...and the update has no settings field that `Passthrough` lacks.
        let mut back = serde_json::to_value(&update).unwrap();
        let obj = back.as_object_mut().unwrap();
        obj.remove("restart");
        obj.remove("resourceVersion");
        obj.remove("fixClients");
        assert_eq!(back, json);
    }
}

// ---------------------------------------------------------------------------------------------
// The impact of a passthrough change on mutual TLS.
// ---------------------------------------------------------------------------------------------

/// What happens to a client's calls once a passthrough change is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImpactEffect {
    /// The calls fail: the client's sidecar sends mutual TLS to a port whose app now receives
    /// it directly, or plaintext reaches a sidecar that requires mutual TLS (STRICT).
    Fails,
    /// The calls keep working, in plaintext where they were mutual TLS.
    LosesMtls,
    /// The calls keep working as before.
    Works,
}

/// How the management plane knows that the client calls the Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImpactEvidence {
    /// A sidecar recorded such a call.
    Observed,
    /// A meshed workload that can reach the Service; no call recorded.
    MayCall,
}

/// One (client, Service port, server) a passthrough change affects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImpactEntry {
    /// `inbound`: the changed workload's port stops being captured and `client` is a workload
    /// calling it; `outbound`: the changed workload (`client`) sends past its sidecar.
    #[schema(value_type = DirectionSchema)]
    pub direction: Direction,
    /// The calling workload, `NAMESPACE/NAME`.
    pub client: String,
    /// The called workload, `NAMESPACE/NAME`.
    pub server: String,
    /// The Service called, `NAMESPACE/NAME`.
    pub service: String,
    /// The Service's ClusterIP, when it has one.
    pub address: Option<String>,
    /// The Service port called.
    #[schema(minimum = 1, maximum = 65535)]
    pub service_port: u16,
    /// The port passthrough concerns: the server's container port (inbound) or the destination
    /// port (outbound).
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// What happens.
    pub effect: ImpactEffect,
    /// Why, in one sentence.
    pub reason: String,
    /// Whether the hop is mutual TLS without passthrough settings (with the sidecar in the path).
    pub mtls_before: bool,
    /// Whether it is mutual TLS after the change (with the fix rules, when they are part of it).
    pub mtls_after: bool,
    /// How the management plane knows the client calls.
    pub evidence: ImpactEvidence,
}

/// A mutual-TLS policy resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyRef {
    /// `DestinationRule` or `PeerAuthentication`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A `DestinationRule` that turns TLS off for exactly one Service port, so that meshed clients
/// call a port that passes through in plaintext (what `fixClients` creates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FixRule {
    /// The rule.
    #[serde(flatten)]
    pub reference: PolicyRef,
    /// The Service's host name.
    pub host: String,
    /// The Service port.
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// The rule as YAML (`meshpass apply -f` / `kubectl apply -f` take it as it is).
    pub yaml: String,
}
