//! [`AppState`]: what every handler shares — the clusters and their backends, the
//! credentials, the audit log, the restart operations and the metrics — and the
//! authentication of a request against it.
//!
//! The server serves one or several clusters ([`NamedBackend`]): the local mesh is one
//! cluster, `local`; `meshpass serve --kube` serves one per kubeconfig context. Each cluster
//! keeps its own briefly shared workload list, so one that does not answer costs its own
//! listing only, and [`AppState::resolve`] finds the cluster a request means.

use crate::audit::{AuditLog, AUDIT_FILE};
use crate::auth::{Auth, SESSION_COOKIE, SESSION_TTL};
use crate::backend::{Backend, BackendError, NamedBackend};
use crate::error::ApiError;
use crate::extract::Caller;
use crate::listener::ConnStats;
use crate::metrics::Metrics;
use crate::model::{AuditEntry, AuthKind, ClusterState, ClusterStatus, Operation, WorkloadInfo, WorkloadRef};
use crate::util::ct_eq;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, Method};
use meshpass_capture::InjectorValues;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How many operations are kept for `GET /api/v1/operations/{id}`.
pub const KEEP_OPERATIONS: usize = 100;

/// How long the workload list is reused by default: scrapers, the GUI's refresh and the
/// warnings of every passthrough document within a second share one backend list. Writes
/// drop it at once.
pub const LIST_TTL: Duration = Duration::from_secs(1);

/// How the shared state reuses what the backend reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reuse {
    /// How long one workload list serves every reader ([`LIST_TTL`]; zero: never reused).
    pub list_ttl: Duration,
    /// The shortest time between two collections of the backend's figures for `/metrics`
    /// ([`crate::metrics::MIN_INTERVAL`]; zero: on every scrape).
    pub metrics_interval: Duration,
    /// How many workloads' rule counters one collection reads at once
    /// ([`crate::metrics::COUNTER_READS`]).
    pub counter_reads: usize,
}

impl Default for Reuse {
    fn default() -> Self {
        Reuse {
            list_ttl: LIST_TTL,
            metrics_interval: crate::metrics::MIN_INTERVAL,
            counter_reads: crate::metrics::COUNTER_READS,
        }
    }
}

/// A workload list: when it was read, in which write generation, and the list.
type Listed = (Instant, u64, Arc<Vec<WorkloadInfo>>);

/// The last workload list, and the write generation it was read in.
#[derive(Debug, Default)]
struct ListCache {
    last: tokio::sync::Mutex<Option<Listed>>,
    generation: AtomicU64,
}

/// One cluster: its backend, the injector values its previews use, its shared list.
pub(crate) struct ClusterSlot {
    name: String,
    backend: Arc<dyn Backend>,
    values: InjectorValues,
    list: ListCache,
}

pub(crate) struct Inner {
    clusters: Vec<ClusterSlot>,
    pub(crate) auth: Auth,
    pub(crate) audit: AuditLog,
    pub(crate) ops: Mutex<VecDeque<Operation>>,
    pub(crate) metrics: Metrics,
    pub(crate) conns: Arc<ConnStats>,
    list_ttl: Duration,
}

/// The server's shared state: the backend, credentials, audit log, operations and metrics.
/// Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.backend().kind())
            .field("clusters", &self.cluster_names())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over `backend`, authenticating with `token`, keeping the audit log in
    /// `state_dir`.
    pub fn new(backend: Arc<dyn Backend>, token: String, state_dir: &FsPath) -> Self {
        Self::with_session_ttl(backend, token, state_dir, SESSION_TTL)
    }

    /// As [`AppState::new`], with another browser session lifetime.
    pub fn with_session_ttl(backend: Arc<dyn Backend>, token: String, state_dir: &FsPath, ttl: Duration) -> Self {
        Self::with_auth(backend, Auth::new(token, ttl), state_dir)
    }

    /// As [`AppState::new`], with these credentials (token, session lifetime and cap).
    pub fn with_auth(backend: Arc<dyn Backend>, auth: Auth, state_dir: &FsPath) -> Self {
        Self::with_reuse(backend, auth, state_dir, Reuse::default())
    }

    /// As [`AppState::with_auth`], reusing the backend's answers as `reuse` says.
    pub fn with_reuse(backend: Arc<dyn Backend>, auth: Auth, state_dir: &FsPath, reuse: Reuse) -> Self {
        Self::with_clusters(vec![NamedBackend::single(backend)], auth, state_dir, reuse)
    }

    /// State over several clusters, in the order given (the caller checks that there is at
    /// least one and that the names are unique: [`crate::backend::check_cluster_names`]).
    pub fn with_clusters(clusters: Vec<NamedBackend>, auth: Auth, state_dir: &FsPath, reuse: Reuse) -> Self {
        let clusters = clusters
            .into_iter()
            .map(|c| ClusterSlot {
                values: c.backend.injector_values(),
                name: c.name,
                backend: c.backend,
                list: ListCache::default(),
            })
            .collect();
        AppState {
            inner: Arc::new(Inner {
                clusters,
                auth,
                audit: AuditLog::new(state_dir.join(AUDIT_FILE)),
                ops: Mutex::new(VecDeque::new()),
                metrics: Metrics::with_min_interval(reuse.metrics_interval).with_counter_reads(reuse.counter_reads),
                conns: Arc::new(ConnStats::default()),
                list_ttl: reuse.list_ttl,
            }),
        }
    }

    /// The first cluster's backend (the only one, unless several clusters are served): what
    /// the session reports as the backend kind and rule format.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.clusters[0].backend
    }

    /// The clusters' names, in order.
    pub fn cluster_names(&self) -> Vec<String> {
        self.inner.clusters.iter().map(|c| c.name.clone()).collect()
    }

    /// True when more than one cluster is served (then answers name each workload's cluster
    /// and errors say which cluster failed).
    pub fn multi_cluster(&self) -> bool {
        self.inner.clusters.len() > 1
    }

    /// Every cluster, in order.
    pub fn clusters(&self) -> impl Iterator<Item = Cluster> + '_ {
        (0..self.inner.clusters.len()).map(|index| Cluster { app: self.clone(), index })
    }

    /// The cluster named `name` (404 naming those served otherwise).
    pub fn cluster(&self, name: &str) -> Result<Cluster, ApiError> {
        match self.inner.clusters.iter().position(|c| c.name == name) {
            Some(index) => Ok(Cluster { app: self.clone(), index }),
            None => Err(ApiError::NotFound(format!(
                "no cluster named {name:?}; this server serves {}",
                self.cluster_names().join(", ")
            ))),
        }
    }

    /// The cluster a request means: the one named, or the only one served; without a name and
    /// with several served, when `workload` is given, the one cluster that has it (400
    /// `ambiguous` when several do; 404 when none does; 503 when it was not found and a
    /// cluster could not be asked). Without a workload (the mesh-wide defaults), a name is
    /// required when several clusters are served (400 `ambiguous`).
    pub async fn resolve(&self, name: Option<&str>, workload: Option<&WorkloadRef>) -> Result<Cluster, ApiError> {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            return self.cluster(name);
        }
        if !self.multi_cluster() {
            return Ok(Cluster { app: self.clone(), index: 0 });
        }
        let names = self.cluster_names().join(", ");
        let Some(w) = workload else {
            return Err(ApiError::Ambiguous(format!(
                "this server serves several clusters ({names}): name one with ?cluster="
            )));
        };
        let listed = self.list_all().await;
        let mut found = Vec::new();
        let mut failed = None;
        for (c, result) in listed {
            match result {
                Ok(list) if list.iter().any(|i| &i.workload == w) => found.push(c),
                Ok(_) => {}
                Err(e) => failed = failed.or(Some((c, e))),
            }
        }
        match (found.len(), failed) {
            (1, _) => Ok(found.remove(0)),
            (0, Some((c, e))) => Err(ApiError::InCluster {
                cluster: c.name().to_string(),
                source: BackendError::unavailable(format!(
                    "workload {w} is in none of the clusters that answered, and this one could not be asked"
                ))
                .caused_by(e),
            }),
            (0, None) => Err(ApiError::NotFound(format!("workload {w} not found in any cluster ({names})"))),
            _ => Err(ApiError::Ambiguous(format!(
                "workload {w} exists in clusters {}: name one with ?cluster= (or \"cluster\" in a batch)",
                found.iter().map(Cluster::name).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Every cluster's workload list, asked concurrently, in order.
    pub async fn list_all(&self) -> Vec<(Cluster, Result<Arc<Vec<WorkloadInfo>>, BackendError>)> {
        let lists = self.clusters().map(|c| async move {
            let r = c.workloads().await;
            (c, r)
        });
        futures::future::join_all(lists).await
    }

    /// The API token.
    pub fn token(&self) -> &str {
        self.inner.auth.token()
    }

    /// Every workload of the first cluster (see [`Cluster::workloads`]).
    pub async fn workloads(&self) -> Result<Arc<Vec<WorkloadInfo>>, BackendError> {
        Cluster { app: self.clone(), index: 0 }.workloads().await
    }

    /// What the listener's limits did (open, refused, evicted connections, …).
    pub fn conn_stats(&self) -> &Arc<ConnStats> {
        &self.inner.conns
    }

    /// The credentials (token and browser sessions).
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// A kept operation.
    pub fn operation(&self, id: &str) -> Option<Operation> {
        self.inner.ops.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|o| o.id == id).cloned()
    }

    /// Keeps `op` (the oldest beyond [`KEEP_OPERATIONS`] are dropped).
    pub(crate) fn add_op(&self, op: Operation) {
        let mut ops = self.inner.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.push_back(op);
        while ops.len() > KEEP_OPERATIONS {
            ops.pop_front();
        }
    }

    pub(crate) fn update_op(&self, id: &str, f: impl FnOnce(&mut Operation)) {
        let mut ops = self.inner.ops.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = ops.iter_mut().find(|o| o.id == id) {
            f(o);
        }
    }

    /// Appends `entry` to the audit log.
    pub(crate) fn audit(&self, entry: &AuditEntry) {
        if let Err(e) = self.inner.audit.append(entry) {
            // The attempt itself happened; losing its record must at least be visible.
            eprintln!("meshpass-api: cannot write the audit log: {}", crate::backend::error_chain(&e));
        }
    }

    /// Who sent `req`, or why it is refused (401, or 403 for a missing CSRF token).
    pub(crate) fn authenticate(&self, req: &Request) -> Result<Caller, ApiError> {
        let remote = remote(req);
        let headers = req.headers();
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().unwrap_or_default();
            let token = value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
                .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be \"Bearer TOKEN\"".into()))?;
            if !self.inner.auth.token_matches(token) {
                return Err(ApiError::Unauthorized("wrong token".into()));
            }
            return Ok(Caller { auth: AuthKind::Bearer, actor: "bearer".into(), session: None, csrf: None, remote });
        }
        if let Some(id) = session_cookie(headers) {
            if let Some(session) = self.inner.auth.session(&id) {
                let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
                if !safe {
                    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    if !ct_eq(sent.as_bytes(), session.csrf.as_bytes()) {
                        return Err(ApiError::Csrf);
                    }
                }
                return Ok(Caller {
                    auth: AuthKind::Session,
                    actor: session_actor(&id),
                    session: Some(id),
                    csrf: Some(session.csrf),
                    remote,
                });
            }
            return Err(ApiError::Unauthorized("the session expired or was ended: open the login URL again".into()));
        }
        Err(ApiError::Unauthorized(
            "authentication required: send Authorization: Bearer TOKEN (the token is in <state-dir>/api-token), \
             or open the login URL printed at start-up"
                .into(),
        ))
    }
}

/// One cluster of an [`AppState`], as handlers use it. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    app: AppState,
    index: usize,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.name()).finish_non_exhaustive()
    }
}

impl Cluster {
    fn slot(&self) -> &ClusterSlot {
        &self.app.inner.clusters[self.index]
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.slot().name
    }

    /// Its backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.slot().backend
    }

    /// The injector values its previews use.
    pub(crate) fn values(&self) -> &InjectorValues {
        &self.slot().values
    }

    /// `e` as the API answers it: naming this cluster when several are served.
    pub(crate) fn err(&self, e: BackendError) -> ApiError {
        if self.app.multi_cluster() {
            ApiError::InCluster { cluster: self.name().to_string(), source: e }
        } else {
            ApiError::Backend(e)
        }
    }

    /// Every workload of this cluster, as its backend lists them: one list serves every
    /// reader for [`Reuse::list_ttl`], and readers that arrive while it is being read wait for
    /// it rather than asking the backend again. A write ([`Cluster::changed`]) drops it.
    pub async fn workloads(&self) -> Result<Arc<Vec<WorkloadInfo>>, BackendError> {
        let slot = self.slot();
        let cache = &slot.list;
        let mut last = cache.last.lock().await;
        let generation = cache.generation.load(Ordering::SeqCst);
        if let Some((at, g, list)) = last.as_ref() {
            if *g == generation && at.elapsed() < self.app.inner.list_ttl {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(slot.backend.list().await?);
        *last = Some((Instant::now(), generation, list.clone()));
        Ok(list)
    }

    /// Something changed in this cluster (a write, a restart): its next list is read afresh.
    pub(crate) fn changed(&self) {
        self.slot().list.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// A cluster's line in a list answer: how its listing went, and how many workloads it gave.
pub(crate) fn cluster_status(name: &str, result: Result<u32, &BackendError>) -> ClusterStatus {
    match result {
        Ok(n) => {
            ClusterStatus { name: name.to_string(), state: ClusterState::Ok, workloads: n, message: None, error: None }
        }
        Err(e) => ClusterStatus {
            name: name.to_string(),
            state: match e {
                BackendError::Unavailable { .. } => ClusterState::Unreachable,
                _ => ClusterState::Failed,
            },
            workloads: 0,
            message: Some(e.report()),
            error: Some(crate::error::ErrorCode::of_backend(e).as_str().to_string()),
        },
    }
}

/// `session:XXXXXXXX`: a session as the audit log names it (the first 8 characters of its id,
/// enough to tell sessions apart without writing a credential to the log).
pub(crate) fn session_actor(id: &str) -> String {
    let short: String = id.chars().take(8).collect();
    format!("session:{short}")
}

/// The client's address, `unknown` when the transport does not say.
pub(crate) fn remote(req: &Request) -> String {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map_or_else(|| "unknown".to_string(), |c| c.0.to_string())
}

/// The `meshpass_session` cookie of a request.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}
