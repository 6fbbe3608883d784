//! # meshpass-mesh: the local mesh
//!
//! Pods as network namespaces, Services as DNAT in a node namespace, Istio-style sidecar
//! injection with the capture engine's rules, supervision with restarts, rolling restarts and
//! live re-application of capture settings — driven by real Kubernetes YAML.
//!
//! - [`manifest`]: YAML → k8s-openapi types → the supported subset (pure, every error at once)
//! - [`ipam`], [`state`]: address allocation and the state directory (pure / atomic files)
//! - [`net`], [`process`]: namespaces, veths, the services table, processes in namespaces
//! - [`runtime`]: the supervisor (`meshpass up`), [`runtime::down`], [`runtime::sweep`]
//! - [`control`]: the control socket protocol and the synchronous [`Client`]
//! - [`sample`]: the sample programs (`meshpass sample helloworld|http|sleep`)

pub mod backend;
pub mod check;
pub mod control;
pub mod error;
pub mod ipam;
pub mod manifest;
pub mod net;
pub mod output;
pub mod process;
pub mod runtime;
pub mod sample;
pub mod state;
pub mod stop;

pub use backend::LocalBackend;
pub use control::{Client, PodStatus, ServiceStatus, WorkloadStatus};
pub use error::MeshError;
pub use output::Output;
pub use runtime::{down, run, MeshConfig};
pub use stop::Stop;
