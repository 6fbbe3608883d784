//! The sidecar's link to the mesh: the mesh config file ([`crate::mesh_config`]) and the
//! workload's credential files ([`meshpass_identity::files`]), read at start — where any
//! problem stops the proxy with the reason — then watched and reloaded while it runs, where a
//! problem is logged, counted (`meshpass_config_reloads_total{result="error"}`) and the
//! previous version stays in use.
//!
//! The files are polled (a `stat` of four files per interval): it needs no inotify instance
//! per pod and sees a file replaced by `rename`, which is how the mesh writes them. After a
//! change is noticed the proxy waits a moment before reading, so that the three credential
//! files written one after the other are read as one set; a key that does not match its
//! certificate is reported only if it persists.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use meshpass_identity::files::{self, Credentials};
use meshpass_identity::IdentityError;
use serde::Serialize;
use tokio::sync::watch;

use crate::mesh_config::{MeshConfig, MeshConfigErrors, OriginId, Origins, PeerMode};
use crate::tls::{MeshTls, ReloadKind, TlsMetrics};
use crate::Phase;

/// Path of the mesh config file (unset: no mesh config; every destination is passed
/// through in plaintext and inbound ports are PERMISSIVE).
pub const ENV_MESH_CONFIG: &str = "MESHPASS_PROXY_MESH_CONFIG";
/// Directory holding `cert-chain.pem`, `key.pem` and `root-cert.pem` (unset: no mutual TLS).
pub const ENV_CERT_DIR: &str = "MESHPASS_PROXY_CERT_DIR";
/// How often the files are checked for changes (default `1s`).
pub const ENV_RELOAD_INTERVAL: &str = "MESHPASS_PROXY_RELOAD_INTERVAL";
/// Time allowed for a TLS handshake, and under STRICT for the ClientHello to arrive
/// (default `10s`).
pub const ENV_TLS_HANDSHAKE_TIMEOUT: &str = "MESHPASS_PROXY_TLS_HANDSHAKE_TIMEOUT";

/// Where the mesh's files are and how they are watched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeshSettings {
    /// The mesh config file.
    pub config_file: Option<PathBuf>,
    /// The credentials directory.
    pub cert_dir: Option<PathBuf>,
    /// Poll interval.
    #[serde(serialize_with = "ser_ms")]
    pub reload_interval: Duration,
    /// TLS handshake timeout.
    #[serde(serialize_with = "ser_ms")]
    pub handshake_timeout: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            config_file: None,
            cert_dir: None,
            reload_interval: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl MeshSettings {
    /// Reads the settings' variables through `get`; every invalid one is returned.
    pub fn from_env(get: &impl Fn(&str) -> Option<String>) -> (Self, Vec<crate::config::ConfigError>) {
        let mut s = MeshSettings::default();
        let mut errs = Vec::new();
        let path = |v: String| (!v.trim().is_empty()).then(|| PathBuf::from(v.trim()));
        s.config_file = get(ENV_MESH_CONFIG).and_then(path);
        s.cert_dir = get(ENV_CERT_DIR).and_then(path);
        for (key, slot) in
            [(ENV_RELOAD_INTERVAL, &mut s.reload_interval), (ENV_TLS_HANDSHAKE_TIMEOUT, &mut s.handshake_timeout)]
        {
            if let Some(v) = get(key) {
                match crate::config::parse_duration(v.trim()) {
                    Ok(d) if !d.is_zero() => *slot = d,
                    Ok(_) => errs.push(crate::config::ConfigError { key, value: v, reason: "must not be 0".into() }),
                    Err(reason) => errs.push(crate::config::ConfigError { key, value: v, reason }),
                }
            }
        }
        (s, errs)
    }
}

/// Why the mesh's files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MeshLoadError {
    /// The credentials are missing or invalid.
    #[error("the workload credentials in {dir} cannot be used")]
    Credentials {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: IdentityError,
    },
    /// The mesh config file cannot be read.
    #[error("cannot read the mesh config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The mesh config file is invalid.
    #[error("the mesh config {path} is invalid")]
    Config {
        /// The file.
        path: PathBuf,
        /// Every problem.
        #[source]
        source: MeshConfigErrors,
    },
    /// The mesh config asks for mutual TLS, but no credentials are configured.
    #[error("the mesh config {path} asks for mutual TLS (STRICT or ISTIO_MUTUAL) but {ENV_CERT_DIR} is not set")]
    NoCredentials {
        /// The file.
        path: PathBuf,
    },
}

/// Where an outbound connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Not a Service the mesh knows: the original destination, in plaintext.
    Passthrough,
    /// One endpoint of a Service.
    Endpoint {
        /// Where to connect.
        dst: SocketAddr,
        /// The TLS to originate; `None` for plaintext.
        origin: Option<OriginId>,
    },
    /// A Service with no ready endpoint.
    NoEndpoint {
        /// `NS/NAME`.
        service: String,
    },
}

/// A file's identity and version as `stat` sees it.
type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

fn cert_stamps(dir: &Path) -> [Stamp; 3] {
    [files::CERT_CHAIN_FILE, files::KEY_FILE, files::ROOT_CERT_FILE].map(|f| stamp(&dir.join(f)))
}

/// What the mesh said, as currently in use.
pub struct Mesh {
    settings: MeshSettings,
    config: RwLock<Arc<MeshConfig>>,
    /// Mutual-TLS state; `None` without credentials.
    pub tls: Option<Arc<MeshTls>>,
    /// Originations by id.
    pub origins: Origins,
    /// TLS and reload counters.
    pub metrics: Arc<TlsMetrics>,
    stamps: Mutex<([Stamp; 3], Stamp)>,
    generation: AtomicU64,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("settings", &self.settings).field("tls", &self.tls).finish_non_exhaustive()
    }
}

fn read_config(path: &Path, origins: &Origins) -> Result<MeshConfig, MeshLoadError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| MeshLoadError::Read { path: path.to_path_buf(), source })?;
    MeshConfig::parse(&text, origins).map_err(|source| MeshLoadError::Config { path: path.to_path_buf(), source })
}

fn read_credentials(dir: &Path) -> Result<Credentials, MeshLoadError> {
    files::read_dir(dir).map_err(|source| MeshLoadError::Credentials { dir: dir.to_path_buf(), source })
}

/// Logs what is wrong with credentials that did load (they are still used).
fn warn_validity(c: &Credentials, now: SystemTime) {
    if now >= c.not_after {
        tracing::error!(identity = %c.identity, "the workload certificate has expired: peers refuse it until the mesh writes a new one");
    } else if now < c.not_before {
        tracing::error!(identity = %c.identity, "the workload certificate is not valid yet: peers refuse it (is the clock right?)");
    }
}

impl Mesh {
    /// Reads the files `settings` names; any problem is an error.
    pub fn load(settings: &MeshSettings) -> Result<Self, MeshLoadError> {
        let origins = Origins::default();
        let metrics = Arc::new(TlsMetrics::default());
        let config = match &settings.config_file {
            Some(p) => read_config(p, &origins)?,
            None => MeshConfig::default(),
        };
        let tls = match &settings.cert_dir {
            Some(dir) => {
                let creds = read_credentials(dir)?;
                warn_validity(&creds, SystemTime::now());
                let tls = MeshTls::new(&creds, metrics.clone())
                    .map_err(|source| MeshLoadError::Credentials { dir: dir.clone(), source })?;
                tracing::info!(identity = %creds.identity, dir = %dir.display(), "mutual TLS credentials loaded");
                Some(Arc::new(tls))
            }
            None => None,
        };
        if tls.is_none() && config.needs_certificates() {
            return Err(MeshLoadError::NoCredentials { path: settings.config_file.clone().unwrap_or_default() });
        }
        let stamps = (
            settings.cert_dir.as_deref().map(cert_stamps).unwrap_or_default(),
            settings.config_file.as_deref().and_then(stamp),
        );
        Ok(Mesh {
            settings: settings.clone(),
            config: RwLock::new(Arc::new(config)),
            tls,
            origins,
            metrics,
            stamps: Mutex::new(stamps),
            generation: AtomicU64::new(0),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &MeshSettings {
        &self.settings
    }

    /// The mesh config in use.
    pub fn config(&self) -> Arc<MeshConfig> {
        match self.config.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Counts changes of the mesh config and of the credentials; pool keys carry it, so that
    /// requests after a change go over connections opened under it (routes and TLS as the
    /// new config says, handshakes with the new certificate) while older pooled connections
    /// finish what they carry and close when idle.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The mutual-TLS mode of inbound `port`.
    pub fn inbound_mode(&self, port: u16) -> PeerMode {
        if self.tls.is_none() {
            return PeerMode::Disable;
        }
        self.config().inbound.mode(port)
    }

    /// Where an outbound connection to `orig` goes.
    pub fn route(&self, orig: SocketAddr) -> Route {
        let cfg = self.config();
        let Some(cluster) = cfg.cluster(orig) else { return Route::Passthrough };
        match cluster.pick() {
            Some(ep) => Route::Endpoint { dst: ep.address, origin: ep.origin },
            None => Route::NoEndpoint { service: cluster.service.clone() },
        }
    }

    /// Looks at the files once; reloads what changed. Returns what was reloaded.
    pub async fn poll(&self) -> Vec<ReloadKind> {
        let (certs_now, config_now) = (
            self.settings.cert_dir.as_deref().map(cert_stamps).unwrap_or_default(),
            self.settings.config_file.as_deref().and_then(stamp),
        );
        let (certs_changed, config_changed) = {
            let g = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            (certs_now != g.0, config_now != g.1)
        };
        if !certs_changed && !config_changed {
            return Vec::new();
        }
        // Let a writer finish the set of files it is replacing.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut done = Vec::new();
        if certs_changed {
            if let (Some(dir), Some(tls)) = (&self.settings.cert_dir, &self.tls) {
                let stamps = cert_stamps(dir);
                match read_credentials(dir).and_then(|c| {
                    tls.update(&c).map_err(|source| MeshLoadError::Credentials { dir: dir.clone(), source })?;
                    Ok(c)
                }) {
                    Ok(c) => {
                        warn_validity(&c, SystemTime::now());
                        tracing::info!(identity = %c.identity, "workload certificate reloaded");
                        self.generation.fetch_add(1, Ordering::Relaxed);
                        self.metrics.reload(ReloadKind::Certificates, true);
                        done.push(ReloadKind::Certificates);
                        self.stamps.lock().unwrap_or_else(|e| e.into_inner()).0 = stamps;
                    }
                    Err(e) => {
                        // A key and certificate caught between two writes are retried at the next
                        // poll without a report; a set that stays broken is reported once.
                        let settled = cert_stamps(dir) == stamps;
                        if settled {
                            tracing::error!(error = %report(&e), "keeping the previous workload certificate");
                            self.metrics.reload(ReloadKind::Certificates, false);
                            self.stamps.lock().unwrap_or_else(|e| e.into_inner()).0 = stamps;
                        }
                    }
                }
            }
        }
        if config_changed {
            if let Some(path) = &self.settings.config_file {
                let st = stamp(path);
                let loaded = read_config(path, &self.origins).and_then(|c| {
                    if self.tls.is_none() && c.needs_certificates() {
                        Err(MeshLoadError::NoCredentials { path: path.clone() })
                    } else {
                        Ok(c)
                    }
                });
                match loaded {
                    Ok(c) => {
                        tracing::info!(version = %c.version, "mesh config reloaded");
                        match self.config.write() {
                            Ok(mut g) => *g = Arc::new(c),
                            Err(p) => *p.into_inner() = Arc::new(c),
                        }
                        self.generation.fetch_add(1, Ordering::Relaxed);
                        self.metrics.reload(ReloadKind::MeshConfig, true);
                        done.push(ReloadKind::MeshConfig);
                    }
                    Err(e) => {
                        tracing::error!(error = %report(&e), "keeping the previous mesh config");
                        self.metrics.reload(ReloadKind::MeshConfig, false);
                    }
                }
                self.stamps.lock().unwrap_or_else(|e| e.into_inner()).1 = st;
            }
        }
        done
    }

    /// Polls until the proxy stops.
    pub(crate) async fn watch(self: Arc<Self>, mut phase: watch::Receiver<Phase>) {
        if self.settings.cert_dir.is_none() && self.settings.config_file.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.reload_interval) => { self.poll().await; }
                _ = crate::phase_reached(&mut phase, |p| p >= Phase::Stopped) => return,
            }
        }
    }
}

/// An error and its causes on one line.
pub fn report(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
