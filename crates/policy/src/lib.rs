//! Istio's mutual-TLS policy resources, and what a traffic-passthrough change does to them.
//!
//! * [`PeerAuthentication`] (`security.istio.io/v1`) and [`DestinationRule`]
//!   (`networking.istio.io/v1`) parsed from Kubernetes YAML and validated as Istio's
//!   validation webhook and CRD schema do ([`parse_documents`]): every bad field is
//!   reported at once, naming the resource, the field path, the value and the reason; a file
//!   with any error is refused whole.
//! * [`PolicySet`]: the stored resources and what `apply` / `delete` make of them, all or none.
//! * [`resolve`]: the server-side mode of a workload port (mesh → namespace → workload →
//!   port, oldest policy first) and what a client sidecar sends to a service port (the
//!   destination rule Istio would pick, then auto mTLS).
//! * [`impact`]: for a proposed passthrough change, every meshed client whose calls would
//!   fail, keep working, or lose mutual TLS — and the fix rule for the failures.
//!
//! The crate is pure: no I/O, no async, no clock.

pub mod destination_rule;
pub mod error;
pub mod impact;
pub mod mesh;
pub mod meta;
pub mod peer_authentication;
pub mod resolve;
pub mod resource;
pub mod store;
mod yaml;

pub use destination_rule::{ClientTls, DestinationRule, PortPolicy, Subset, TlsMode, TrafficPolicy};
pub use error::{FieldError, PolicyErrors, Reason};
pub use impact::{impact, Call, Capture, Effect, Evidence, Impact, ImpactEntry, Proposal, Side};
pub use mesh::{MeshView, Service, ServicePort, Workload, WorkloadId};
pub use meta::{Kind, Meta, ResourceRef};
pub use peer_authentication::{MtlsMode, PeerAuthentication};
pub use resolve::{server_mode, ClientDecision, Origination, Resolver, ServerMode, ROOT_NAMESPACE};
pub use resource::{parse_documents, Resource};
pub use store::{Change, NotFound, PolicySet, Stored};
