//! [`AppState`]: what every handler shares — the backend, the credentials, the audit log, the
//! restart operations and the metrics — and the authentication of a request against it.

use crate::audit::{AuditLog, AUDIT_FILE};
use crate::auth::{Auth, SESSION_COOKIE, SESSION_TTL};
use crate::backend::{Backend, BackendError};
use crate::error::ApiError;
use crate::extract::Caller;
use crate::listener::ConnStats;
use crate::metrics::Metrics;
use crate::model::{AuditEntry, AuthKind, Operation, WorkloadInfo};
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

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) values: InjectorValues,
    pub(crate) auth: Auth,
    pub(crate) audit: AuditLog,
    pub(crate) ops: Mutex<VecDeque<Operation>>,
    pub(crate) metrics: Metrics,
    pub(crate) conns: Arc<ConnStats>,
    list: ListCache,
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
        f.debug_struct("AppState").field("backend", &self.inner.backend.kind()).finish_non_exhaustive()
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
        AppState {
            inner: Arc::new(Inner {
                values: backend.injector_values(),
                backend,
                auth,
                audit: AuditLog::new(state_dir.join(AUDIT_FILE)),
                ops: Mutex::new(VecDeque::new()),
                metrics: Metrics::with_min_interval(reuse.metrics_interval).with_counter_reads(reuse.counter_reads),
                conns: Arc::new(ConnStats::default()),
                list: ListCache::default(),
                list_ttl: reuse.list_ttl,
            }),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The API token.
    pub fn token(&self) -> &str {
        self.inner.auth.token()
    }

    /// Every workload, as the backend lists them: one list serves every reader for
    /// [`Reuse::list_ttl`], and readers that arrive while it is being read wait for it rather
    /// than asking the backend again. A write ([`AppState::changed`]) drops it.
    pub async fn workloads(&self) -> Result<Arc<Vec<WorkloadInfo>>, BackendError> {
        let cache = &self.inner.list;
        let mut last = cache.last.lock().await;
        let generation = cache.generation.load(Ordering::SeqCst);
        if let Some((at, g, list)) = last.as_ref() {
            if *g == generation && at.elapsed() < self.inner.list_ttl {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(self.inner.backend.list().await?);
        *last = Some((Instant::now(), generation, list.clone()));
        Ok(list)
    }

    /// Something changed in the backend (a write, a restart): the next list is read afresh.
    pub(crate) fn changed(&self) {
        self.inner.list.generation.fetch_add(1, Ordering::SeqCst);
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
