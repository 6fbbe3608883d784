//! Annotation keys: the contract with manifests written for Istio (and DCE 5.0's mesh).

/// Inbound ports that are captured (`*` = all; `""` = none).
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// Inbound ports that bypass the sidecar (only honoured when the include list is `*`).
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Outbound destination ports that are captured whatever the destination address.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// Outbound destination ports that bypass the sidecar (TCP and UDP).
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// Outbound destination CIDRs that are captured (`*` = all; `""` = none).
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// Outbound destination CIDRs that bypass the sidecar.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// Interfaces whose traffic is never captured.
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// Interfaces whose inbound traffic is treated as outbound (sent to the outbound listener).
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
/// Deprecated spelling of [`REROUTE_VIRTUAL_INTERFACES`]; the new key wins when both are set.
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
/// `REDIRECT`, `TPROXY` or `NONE`.
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
/// The agent's status port, excluded inbound (default 15020, `0` = none).
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";

/// Every key this crate understands, in the order settings render.
pub const ALL: [&str; 11] = [
    INCLUDE_INBOUND_PORTS,
    EXCLUDE_INBOUND_PORTS,
    INCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    INCLUDE_OUTBOUND_IP_RANGES,
    EXCLUDE_OUTBOUND_IP_RANGES,
    EXCLUDE_INTERFACES,
    REROUTE_VIRTUAL_INTERFACES,
    KUBEVIRT_INTERFACES,
    INTERCEPTION_MODE,
    STATUS_PORT,
];

/// Prefixes under which an unknown key is probably a typo of one of ours.
pub const OWNED_PREFIXES: [&str; 2] = ["traffic.sidecar.istio.io/", "istio.io/reroute"];
