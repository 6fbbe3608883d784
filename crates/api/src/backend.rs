//! The [`Backend`] trait: what the management plane needs from a mesh. The local mesh
//! (`meshpass up`) and Kubernetes (`meshpass serve --kube`) implement it; the API, GUI and CLI
//! are the same over both.
//!
//! Backends deal in pod-template annotations and never validate passthrough settings
//! themselves: the server validates with the engine before it calls
//! [`Backend::patch_annotations`], so a backend only ever receives annotations Istio accepts.

use crate::model::{CheckReport, CheckRequest, RuleCounter, RuleFormat, WorkloadInfo, WorkloadRef};
use async_trait::async_trait;
use std::collections::BTreeMap;

/// Which backend serves the API (shown in the GUI and `/api/v1/session`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The local mesh of network namespaces.
    Local,
    /// A Kubernetes cluster running Istio.
    Kube,
}

/// Receives human-readable progress lines of a long operation (a restart).
pub type Progress = Box<dyn Fn(String) + Send + Sync>;

/// What can go wrong in a backend. The server maps each variant to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The workload does not exist (404).
    #[error("workload {0} not found")]
    NotFound(WorkloadRef),
    /// The workload changed since the version the write was based on (409).
    #[error("workload {workload} changed since version {expected} (now {actual}); reload and retry")]
    Conflict {
        /// The workload.
        workload: WorkloadRef,
        /// The version the write was based on.
        expected: String,
        /// The version it has now.
        actual: String,
    },
    /// The backend refused the input; one message per problem (422).
    #[error("rejected: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The backend may not do this (Kubernetes RBAC) (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The operation is not available on this backend (501).
    #[error("not supported by this backend: {0}")]
    Unsupported(String),
    /// The mesh or cluster cannot be reached, or timed out (503).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Anything else, with the reason (500).
    #[error("{0}")]
    Failed(String),
}

/// A mesh the management plane can manage.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// The rule syntax its previews use (nftables for the local mesh, iptables on Istio).
    fn rule_format(&self) -> RuleFormat;

    /// The mesh-wide injector values that previews combine with a workload's annotations
    /// (IPv6, DNS capture, proxy UID, …). Default: Istio's defaults.
    fn injector_values(&self) -> meshpass_capture::InjectorValues {
        meshpass_capture::InjectorValues::default()
    }

    /// Every workload the backend manages (meshed or not), sorted by namespace and name.
    async fn list(&self) -> Result<Vec<WorkloadInfo>, BackendError>;

    /// One workload.
    async fn get(&self, workload: &WorkloadRef) -> Result<WorkloadInfo, BackendError>;

    /// Sets and removes pod-template annotations in one atomic write, only if the workload is
    /// still at `expected_version` (else [`BackendError::Conflict`], nothing written). Running
    /// pods keep their settings until a restart (the workload then reports
    /// `pending_restart`). Returns the workload as written.
    async fn patch_annotations(
        &self,
        workload: &WorkloadRef,
        expected_version: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<WorkloadInfo, BackendError>;

    /// Rolling restart (`kubectl rollout restart`); returns once the rollout completed or
    /// failed, reporting each step to `progress`.
    async fn restart(&self, workload: &WorkloadRef, progress: Progress) -> Result<(), BackendError>;

    /// Makes a request as [`CheckRequest`] says and reports which path it took.
    async fn check(&self, workload: &WorkloadRef, request: &CheckRequest) -> Result<CheckReport, BackendError>;

    /// The live capture rules of the workload's running pods with their counters (every
    /// labelled rule; the server picks the passthrough ones).
    /// [`BackendError::Unsupported`] where the rules cannot be read (Kubernetes).
    async fn rule_counters(&self, workload: &WorkloadRef) -> Result<Vec<RuleCounter>, BackendError>;
}
