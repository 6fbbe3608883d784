//! meshpass's Kubernetes backend: the management plane (REST API, web GUI, CLI) over a
//! cluster running Istio, through kube-rs.
//!
//! * Workloads are the Deployments, StatefulSets and DaemonSets that Istio's injection
//!   concerns (namespace `istio-injection=enabled` / `istio.io/rev`, or a pod template that
//!   sets `sidecar.istio.io/inject`); their sidecar status comes from their pods.
//! * Writing settings is a JSON merge patch of `spec.template.metadata.annotations` with a
//!   `resourceVersion` precondition, after validating the resulting annotations as Istio's
//!   injector does ([`meshpass_settings`]).
//! * "Restart now" joins the rollout a template change already started (the controller rolls
//!   the pods on any template edit, so a restart on top would replace them twice); when none
//!   is under way it patches `kubectl.kubernetes.io/restartedAt` as `kubectl rollout restart`
//!   does. Either way it follows the rollout as `kubectl rollout status` does, through
//!   kube-runtime's watcher (list, watch, resume, re-list on 410).
//! * The mesh-wide capture defaults are the injector's Helm values in the
//!   `istio-sidecar-injector` ConfigMap ([`injector`]), read as Istio's template reads them and
//!   written there only when asked, with the ConfigMap's `resourceVersion` as precondition.
//! * Several clusters ([`clusters`]) are several named backends asked concurrently; one that
//!   cannot be reached is reported as such while the others answer.
//! * "Check effect" calls the workload's Service through the API server's service proxy.
//! * Istio's `PeerAuthentication`s and `DestinationRule`s are read for the impact of a
//!   passthrough change on mutual TLS, and the `DestinationRule` that fixes meshed clients
//!   is created and removed ([`policy`]).
//! * `fake` (with the `testing` feature only) is an in-memory API server for demos and the GUI
//!   end-to-end test.

pub mod backend;
pub mod check;
pub mod clusters;
pub mod error;
#[cfg(feature = "testing")]
pub mod fake;
pub mod injector;
pub mod inspect;
pub mod policy;
pub mod workload;

pub use backend::KubeBackend;
pub use error::KubeError;
