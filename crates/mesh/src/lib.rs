//! # meshpass-mesh: the local mesh
//!
//! Pods as network namespaces, Services as DNAT in a node namespace, Istio-style sidecar
//! injection with the capture engine's rules, supervision with restarts, rolling restarts and
//! live re-application of capture settings — driven by real Kubernetes YAML.
//!
//! The crate is split between deciding and doing:
//!
//! - [`plan`] — **the decisions, pure**: desired state (manifests, templates, settings) and
//!   observed state (pods, processes, readiness, the services table, rollouts) in, a list of
//!   [`plan::Action`]s out. Restarts with back-off, replica counts, pod blueprints and the
//!   sidecar's environment, capture choice, rollout steps with their join and abort rules,
//!   endpoint switching, `apply`/`annotate`/`delete` with live re-apply or pending restart,
//!   teardown order, status. No I/O, no clock, no threads; unit-tested without root.
//! - [`effect`] — **the doing, thin**: namespaces and veths, the services table, processes,
//!   capture rules and eBPF programs, readiness probes, pod creation and teardown, and the
//!   sweep of what a crashed mesh left behind.
//! - [`supervisor`] — `meshpass up`: the loop that records what happened, asks the planner
//!   and carries out its actions; startup, the unconditional teardown, and `meshpass down`.
//! - [`rollout`] — a rollout request's side: joins the queue, streams the progress back.
//! - [`server`] / [`control`] — the control socket: the supervisor's server, and the
//!   protocol with its synchronous [`Client`] (CLI, tests, the management plane's backend).
//! - [`stop`], [`output`] — how the supervisor is told to stop (once: drain; twice: now), and
//!   its progress output, which never blocks or panics on a closed or full stream.
//! - [`manifest`], [`ipam`], [`state`], [`config`] — YAML to the supported subset (pure,
//!   every error at once), address allocation (pure), the state file (atomic), the settings.
//! - [`backend`], [`check`], [`sample`] — the management plane's local backend, which path a
//!   request took, the sample programs (`meshpass sample helloworld|http|sleep`).

pub mod backend;
pub mod check;
pub mod config;
pub mod control;
pub mod effect;
pub mod error;
pub mod ipam;
pub mod manifest;
pub mod output;
pub mod plan;
pub mod rollout;
pub mod sample;
pub mod server;
pub mod state;
pub mod stop;
pub mod supervisor;

pub use backend::LocalBackend;
pub use config::MeshConfig;
pub use control::{Client, PodStatus, ServiceStatus, WorkloadStatus};
pub use error::MeshError;
pub use output::Output;
pub use stop::Stop;
pub use supervisor::{down, run};
