//! Start-up and the listener: binding, the state directory (`api-token`, `api-address`), the
//! login URL, and the limits every connection is held to. The routes live in
//! [`crate::routes`], the shared state in [`crate::state`].

use crate::auth::{load_or_create_token, write_token, Auth, MAX_SESSIONS, SESSION_TTL};
use crate::backend::{check_cluster_names, Backend, NamedBackend};
use crate::error::ApiError;
pub use crate::listener::Limits;
use axum::http::Method;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::extract::Caller;
pub use crate::routes::audit::MAX_AUDIT_LIMIT;
pub use crate::routes::{router, CSP};
pub use crate::state::{AppState, Reuse, KEEP_OPERATIONS};

/// The file (in the state directory) that names the server's address, for clients.
pub const ADDRESS_FILE: &str = "api-address";
/// The largest request body taken (413 beyond): a passthrough update with every list at its
/// cap fits several times over.
pub const BODY_LIMIT: usize = 64 * 1024;
/// The longest request target (path and query) taken (414 beyond).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most request header fields taken (431 beyond).
pub const MAX_HEADERS: usize = 100;
/// The most request header bytes taken (431 beyond).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// One route of the server, as the OpenAPI document (derived from the router's own route
/// lists) declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// The HTTP method.
    pub method: Method,
    /// The path template (`/api/v1/operations/{id}`).
    pub path: String,
    /// True when the route needs a bearer token or a session.
    pub auth: bool,
}

/// Every route of the server.
pub fn routes() -> Vec<RouteSpec> {
    let doc = crate::openapi::document();
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            (Method::GET, &item.get),
            (Method::PUT, &item.put),
            (Method::POST, &item.post),
            (Method::DELETE, &item.delete),
            (Method::PATCH, &item.patch),
        ] {
            if let Some(op) = op {
                let auth = op.security.as_ref().is_some_and(|s| !s.is_empty());
                out.push(RouteSpec { method, path: path.clone(), auth });
            }
        }
    }
    out
}

/// What the caller prints once the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The bound address.
    pub addr: SocketAddr,
    /// `http://IP:PORT` (also written to `<state-dir>/api-address`).
    pub url: String,
    /// `http://IP:PORT/?token=TOKEN`: opens a browser session.
    pub login_url: String,
}

/// Called once when the server listens (print the login URL here).
pub type StartedHook = Arc<dyn Fn(&Started) + Send + Sync>;

/// How to run the server.
#[derive(Clone)]
pub struct ServerConfig {
    /// Where to listen (`127.0.0.1:15080` by default; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where `api-token`, `api-address` and `audit.log` live.
    pub state_dir: PathBuf,
    /// Use this token (and write it to `api-token`) instead of the stored or a new one.
    pub token: Option<String>,
    /// Browser session lifetime.
    pub session_ttl: Duration,
    /// Told the URLs once the server listens.
    pub on_started: Option<StartedHook>,
    /// What every connection is held to (cap, timeouts).
    pub limits: Limits,
    /// Browser sessions open at most (the least recently used closes past it).
    pub max_sessions: usize,
    /// How long the backend's workload list and `/metrics` figures are reused.
    pub reuse: Reuse,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("state_dir", &self.state_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("session_ttl", &self.session_ttl)
            .field("limits", &self.limits)
            .field("max_sessions", &self.max_sessions)
            .field("reuse", &self.reuse)
            .finish_non_exhaustive()
    }
}

/// The default listen address, `127.0.0.1:15080`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15080);

impl ServerConfig {
    /// Listen on `listen`, keep state in `state_dir`, everything else default.
    pub fn new(listen: SocketAddr, state_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen,
            state_dir: state_dir.into(),
            token: None,
            session_ttl: SESSION_TTL,
            on_started: None,
            limits: Limits::default(),
            max_sessions: MAX_SESSIONS,
            reuse: Reuse::default(),
        }
    }
}

/// A bound server, not yet answering: read [`Server::started`], then [`Server::run`].
pub struct Server {
    listener: tokio::net::TcpListener,
    limits: Limits,
    app: AppState,
    started: Started,
    state_dir: PathBuf,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("started", &self.started).finish_non_exhaustive()
    }
}

impl Server {
    /// Prepares the state directory (token, `api-address`) and binds the listener.
    pub async fn bind(cfg: &ServerConfig, backend: Arc<dyn Backend>) -> Result<Server, ApiError> {
        Self::bind_clusters(cfg, vec![NamedBackend::single(backend)]).await
    }

    /// As [`Server::bind`], serving several clusters (at least one, names unique and
    /// [`crate::backend::is_cluster_name`]s; every problem is named at once).
    pub async fn bind_clusters(cfg: &ServerConfig, clusters: Vec<NamedBackend>) -> Result<Server, ApiError> {
        check_cluster_names(clusters.iter().map(|c| c.name.as_str()))
            .map_err(|errors| ApiError::BadRequest(format!("clusters: {}", errors.join("; "))))?;
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| ApiError::io(&cfg.state_dir, e))?;
        let token = match &cfg.token {
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => {
                write_token(&cfg.state_dir, t)?;
                t.clone()
            }
            Some(_) => return Err(ApiError::BadRequest("the token must be non-empty printable ASCII".into())),
            None => load_or_create_token(&cfg.state_dir)?,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ApiError::Bind { addr: cfg.listen, source: e })?;
        let addr = listener.local_addr().map_err(|e| ApiError::Bind { addr: cfg.listen, source: e })?;
        // A wildcard listen address is not something to browse to; loopback always works.
        let shown = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
            IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
            _ => addr,
        };
        let url = format!("http://{shown}");
        let path = cfg.state_dir.join(ADDRESS_FILE);
        std::fs::write(&path, format!("{url}\n")).map_err(|e| ApiError::io(&path, e))?;
        let login_url = format!("{url}/?token={token}");
        let auth = Auth::with_max_sessions(token, cfg.session_ttl, cfg.max_sessions);
        let app = AppState::with_clusters(clusters, auth, &cfg.state_dir, cfg.reuse);
        Ok(Server {
            listener,
            limits: cfg.limits,
            app,
            started: Started { addr, url, login_url },
            state_dir: cfg.state_dir.clone(),
        })
    }

    /// Where it listens and how to log in.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// The shared state (tests reach the operations and the token through it).
    pub fn state(&self) -> &AppState {
        &self.app
    }

    /// Answers requests until `shutdown` completes, then removes `api-address` (when it
    /// still names this server).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ApiError> {
        let stats = self.app.conn_stats().clone();
        let app = router(self.app);
        let result = crate::listener::serve(self.listener, app, self.limits, stats, shutdown)
            .await
            .map_err(|e| ApiError::Internal(format!("server failed: {e}")));
        let path = self.state_dir.join(ADDRESS_FILE);
        if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == self.started.url) {
            let _ = std::fs::remove_file(&path);
        }
        result
    }
}

/// Binds, writes `<state-dir>/api-address`, tells `cfg.on_started` the login URL, and serves
/// until `shutdown` completes.
pub async fn serve(
    cfg: ServerConfig,
    backend: Arc<dyn Backend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    serve_clusters(cfg, vec![NamedBackend::single(backend)], shutdown).await
}

/// As [`serve`], over several clusters ([`Server::bind_clusters`]).
pub async fn serve_clusters(
    cfg: ServerConfig,
    clusters: Vec<NamedBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let server = Server::bind_clusters(&cfg, clusters).await?;
    if let Some(hook) = &cfg.on_started {
        hook(server.started());
    }
    server.run(shutdown).await
}
