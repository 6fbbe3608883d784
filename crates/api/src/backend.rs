//! The [`Backend`] trait: what the management plane needs from a mesh. The local mesh
//! (`meshpass up`) and Kubernetes (`meshpass serve --kube`) implement it; the API, GUI and CLI
//! are the same over both.
//!
//! Backends deal in pod-template annotations and never validate passthrough settings
//! themselves: the server validates with the engine before it calls
//! [`Backend::patch_annotations`], so a backend only ever receives annotations Istio accepts.

use crate::model::{CheckReport, CheckRequest, RuleCounter, RuleFormat, WorkloadInfo, WorkloadRef};
use async_trait::async_trait;
use meshpass_policy::impact::Call;
use meshpass_policy::{MeshView, PolicySet, Resource, ResourceRef};
use meshpass_settings::MeshDefaults;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Which backend serves the API (shown in the GUI and `/api/v1/session`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The local mesh of network namespaces.
    Local,
    /// A Kubernetes cluster running Istio.
    Kube,
}

/// Receives human-readable progress lines of a long operation (a restart).
pub type Progress = Box<dyn Fn(String) + Send + Sync>;

/// A cause carried by a [`BackendError`]: any error, kept as it is so that its own chain of
/// sources stays intact.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in a backend. The server maps each variant to one HTTP status.
///
/// `Display` says only what the backend was doing; the cause (an I/O error, the API server's
/// answer, …) is the [`std::error::Error::source`], so that logs and the API's error message
/// ([`error_chain`]) show each part once.
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
    #[error("forbidden: {context}")]
    Forbidden {
        /// What was refused, and which permission it needs.
        context: String,
        /// What the mesh or cluster said.
        #[source]
        source: Option<BoxError>,
    },
    /// The operation is not available on this backend (501).
    #[error("not supported by this backend: {0}")]
    Unsupported(String),
    /// The mesh or cluster cannot be reached, or timed out (503).
    #[error("backend unavailable: {context}")]
    Unavailable {
        /// What was attempted.
        context: String,
        /// Why it failed.
        #[source]
        source: Option<BoxError>,
    },
    /// Anything else (500).
    #[error("{context}")]
    Failed {
        /// What failed.
        context: String,
        /// Why.
        #[source]
        source: Option<BoxError>,
    },
}

impl BackendError {
    /// [`BackendError::Forbidden`] without a further cause.
    pub fn forbidden(context: impl Into<String>) -> Self {
        BackendError::Forbidden { context: context.into(), source: None }
    }

    /// [`BackendError::Unavailable`] without a further cause.
    pub fn unavailable(context: impl Into<String>) -> Self {
        BackendError::Unavailable { context: context.into(), source: None }
    }

    /// [`BackendError::Failed`] without a further cause.
    pub fn failed(context: impl Into<String>) -> Self {
        BackendError::Failed { context: context.into(), source: None }
    }

    /// The same error with `cause` as its source (for the variants that carry one; the
    /// others are returned unchanged).
    pub fn caused_by(self, cause: impl Into<BoxError>) -> Self {
        let cause = Some(cause.into());
        match self {
            BackendError::Forbidden { context, .. } => BackendError::Forbidden { context, source: cause },
            BackendError::Unavailable { context, .. } => BackendError::Unavailable { context, source: cause },
            BackendError::Failed { context, .. } => BackendError::Failed { context, source: cause },
            other => other,
        }
    }

    /// The whole message: this error's context, then each cause (see [`error_chain`]).
    pub fn report(&self) -> String {
        error_chain(self)
    }
}

/// `error: cause: cause's cause…`, the way `anyhow` prints `{:#}`: each error of the chain
/// says only its own part, so joining them says everything once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cur = error.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// The mesh as mutual-TLS policy sees it, for the impact of a passthrough change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshPolicies {
    /// Workloads (pod template labels, service account, sidecar or not) and Services.
    pub view: MeshView,
    /// Every `PeerAuthentication` and `DestinationRule`, oldest first.
    pub policies: PolicySet,
    /// Calls sidecars recorded (client workload → Service port), where the backend knows them.
    pub calls: BTreeSet<Call>,
}

/// The mesh-wide capture defaults (Istio's injector values `global.proxy.*`) as a backend
/// keeps them: what every pod gets for each capture annotation its template does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshDefaultsInfo {
    /// The values in force.
    pub defaults: MeshDefaults,
    /// The version to name when writing them (empty: there is nothing to write to).
    pub version: String,
    /// Where they are kept (the local mesh's state, the injector's ConfigMap).
    pub source: String,
    /// What is wrong with them as kept (a value missing or invalid), one line each.
    pub problems: Vec<String>,
    /// Whether this backend can change them.
    pub writable: bool,
}

impl MeshDefaultsInfo {
    /// Istio's own defaults, for a backend that keeps none.
    pub fn istio(source: impl Into<String>) -> Self {
        MeshDefaultsInfo {
            defaults: MeshDefaults::default(),
            version: String::new(),
            source: source.into(),
            problems: Vec::new(),
            writable: false,
        }
    }
}

/// One workload's part of a batch write ([`Backend::patch_many`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationPatch {
    /// The workload.
    pub workload: WorkloadRef,
    /// The version the change is based on; the workload is left alone when it moved.
    pub expected_version: String,
    /// Annotations to set.
    pub set: BTreeMap<String, String>,
    /// Annotation keys to remove.
    pub remove: Vec<String>,
}

/// A mesh the management plane can manage.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// The rule syntax its previews use (nftables for the local mesh, iptables on Istio).
    fn rule_format(&self) -> RuleFormat;

    /// Whose sidecar injector reads the annotations this backend writes: what the management
    /// plane may store (Istio's injector refuses port ranges, meshpass's takes them). Default:
    /// meshpass's.
    fn dialect(&self) -> meshpass_settings::Dialect {
        meshpass_settings::Dialect::Meshpass
    }

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

    /// The mesh and its mutual-TLS policies ([`MeshPolicies`]). Default:
    /// [`BackendError::Unsupported`] (a passthrough change is then made without its impact).
    async fn mesh_policies(&self) -> Result<MeshPolicies, BackendError> {
        Err(BackendError::Unsupported("reading the mesh's mutual-TLS policies".into()))
    }

    /// Creates a policy resource (the `DestinationRule` of passthrough's fix). One that exists
    /// with the same spec is left as it is; one of the same name with another spec is an error
    /// (it is not meshpass's to overwrite).
    async fn create_policy(&self, resource: &Resource) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!("creating {}", resource.reference())))
    }

    /// Deletes a policy resource; one that is already gone is fine.
    async fn delete_policy(&self, resource: &ResourceRef) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!("deleting {resource}")))
    }

    /// Several [`Backend::patch_annotations`] at once, one result per item in order: each item
    /// is written whole or not at all, and one failing never stops the others. With `live`,
    /// the running pods get the new capture rules in place (an item whose pods cannot be
    /// changed is taken back). The default writes one after the other and cannot apply live.
    async fn patch_many(&self, items: Vec<AnnotationPatch>, live: bool) -> Vec<Result<WorkloadInfo, BackendError>> {
        let mut out = Vec::with_capacity(items.len());
        for i in items {
            out.push(if live {
                Err(BackendError::Unsupported("applying capture changes to running pods in place (live)".into()))
            } else {
                self.patch_annotations(&i.workload, &i.expected_version, i.set, i.remove).await
            });
        }
        out
    }

    /// The mesh-wide capture defaults. Default: Istio's, read-only.
    async fn mesh_defaults(&self) -> Result<MeshDefaultsInfo, BackendError> {
        Ok(MeshDefaultsInfo::istio("Istio's defaults (this backend keeps no mesh-wide values)"))
    }

    /// Changes mesh-wide capture defaults: `values` (Helm path such as
    /// `global.proxy.excludeIPRanges` → text, already validated) replace those values, the
    /// others stay; only if the defaults are still at `expected_version` (else
    /// [`BackendError::Conflict`]). With `live`, pods that take a changed value get it in
    /// place; otherwise on their next restart. Returns the new defaults and one line per
    /// consequence (which workloads are affected and how).
    async fn set_mesh_defaults(
        &self,
        values: BTreeMap<String, String>,
        expected_version: &str,
        live: bool,
    ) -> Result<(MeshDefaultsInfo, Vec<String>), BackendError> {
        let _ = (values, expected_version, live);
        Err(BackendError::Unsupported("changing the mesh-wide capture defaults".into()))
    }
}

/// One cluster the management plane serves: a backend and the name every answer about it
/// carries.
#[derive(Clone)]
pub struct NamedBackend {
    /// The cluster's name (`[A-Za-z0-9._-]+`, unique among those served).
    pub name: String,
    /// Its backend.
    pub backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for NamedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedBackend").field("name", &self.name).field("kind", &self.backend.kind()).finish()
    }
}

impl NamedBackend {
    /// `backend` named `name`.
    pub fn new(name: impl Into<String>, backend: Arc<dyn Backend>) -> Self {
        NamedBackend { name: name.into(), backend }
    }

    /// The one cluster of a server over a single backend, named after its kind
    /// ([`default_cluster_name`]).
    pub fn single(backend: Arc<dyn Backend>) -> Self {
        NamedBackend { name: default_cluster_name(backend.kind()).to_string(), backend }
    }
}

/// The name of the one cluster a single backend serves: `local` for the local mesh, `kube`
/// for a Kubernetes cluster whose context was not named.
pub fn default_cluster_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Local => "local",
        BackendKind::Kube => "kube",
    }
}

/// Whether `name` can name a cluster: `[A-Za-z0-9._-]`, 1 to 63 characters (it travels in
/// URL queries and is shown in a column).
pub fn is_cluster_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Every problem with a list of cluster names at once: none at all, a name that is not
/// [`is_cluster_name`], a name listed twice.
pub fn check_cluster_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for n in names {
        if !is_cluster_name(n) {
            errors.push(format!("cluster name {n:?} must be 1 to 63 letters, digits, '.', '_' or '-'"));
        }
        if !seen.insert(n.to_string()) {
            errors.push(format!("cluster name {n:?} is listed twice"));
        }
    }
    if seen.is_empty() {
        errors.push("no clusters listed".to_string());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
