//! Istio mutual TLS in the sidecar.
//!
//! * **Inbound** ([`accept_inbound`]): as Envoy's `tls_inspector` and Istio's filter-chain
//!   match, the first bytes decide. Under STRICT only mutual TLS is accepted (plaintext is
//!   refused); under PERMISSIVE a ClientHello offering one of Istio's ALPN values
//!   ([`alpn::MESH`]) is terminated and everything else — plaintext, or TLS of the app's own —
//!   passes as it is; under DISABLE nothing is looked at. A terminated connection continues
//!   as plaintext (HTTP or TCP) to the app, from 127.0.0.6 as any inbound connection.
//! * **Outbound** ([`MeshTls::connect`]): towards an endpoint the mesh marks as meshed, the
//!   sidecar originates mutual TLS with Istio's SNI (`outbound_.PORT_._.HOST`) and ALPN, and
//!   verifies that the server's certificate chains to the mesh CA and carries one of the
//!   identities the Service's workloads have.
//! * **Credentials** come from files the mesh writes ([`meshpass_identity::files`]) and are
//!   swapped in place ([`MeshTls::update`]): new handshakes use the new certificate, open
//!   connections keep theirs.
//! * Every refused handshake is logged with its reason in words and counted by reason
//!   ([`TlsMetrics`]): expired, not yet valid, unknown CA, wrong identity, no certificate,
//!   plaintext (under STRICT), timeout.
//!
//! **Session resumption** is kept: a resumed handshake skips both certificate signatures and
//! verifications, most of a handshake's cost. A resumed connection reports the peer
//! certificate of the handshake it resumes, so resumption state must never outlive what it
//! was verified against: it lives inside the rustls configurations, and those are built
//! again — with empty session caches — whenever this workload's certificate or the mesh CA
//! changes; client configurations are also separate per set of accepted server identities,
//! so a session verified for one Service's identities is never resumed for another's.

pub mod hello;
pub mod stream;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use meshpass_identity::files::Credentials;
use meshpass_identity::{alpn, CertSlot, IdentityError, Rejection, SpiffeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::io::Rewind;
use crate::mesh_config::{Origination, PeerMode};
use crate::orig_dst::Direction;

pub use stream::{Downstream, Upstream};

/// What the client sidecar proxies, which picks the ALPN list it offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AppProtocol {
    /// HTTP/1.1 (`istio-http/1.1`, `istio`, `http/1.1`).
    Http1,
    /// HTTP/2 (`istio-h2`, `istio`, `h2`).
    Http2,
    /// Opaque TCP (`istio-peer-exchange`, `istio`).
    Tcp,
}

impl AppProtocol {
    fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            AppProtocol::Http1 => alpn::CLIENT_HTTP11,
            AppProtocol::Http2 => alpn::CLIENT_H2,
            AppProtocol::Tcp => alpn::CLIENT_TCP,
        }
    }
}

/// What a connection's TLS was, for `/connections`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsInfo {
    /// `ISTIO_MUTUAL` or `SIMPLE`.
    pub mode: &'static str,
    /// The identity the peer's certificate carries (mutual TLS).
    pub peer_identity: Option<String>,
    /// The identity this sidecar presented (mutual TLS).
    pub local_identity: Option<String>,
    /// The SNI (sent outbound, received inbound).
    pub sni: Option<String>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: Option<&'static str>,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}

/// Why a handshake did not happen or was refused (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A certificate problem, as [`Rejection`] classifies it.
    Certificate(Rejection),
    /// Plaintext on a STRICT port.
    Plaintext,
    /// No complete handshake within the handshake timeout.
    Timeout,
    /// A ClientHello larger than [`hello::MAX_HELLO`].
    HelloTooLarge,
    /// The peer closed the connection during the handshake.
    Closed,
}

const REFUSALS: [Refusal; 10] = [
    Refusal::Certificate(Rejection::Expired),
    Refusal::Certificate(Rejection::NotYetValid),
    Refusal::Certificate(Rejection::UnknownCa),
    Refusal::Certificate(Rejection::WrongIdentity),
    Refusal::Certificate(Rejection::NoCertificate),
    Refusal::Certificate(Rejection::Other),
    Refusal::Plaintext,
    Refusal::Timeout,
    Refusal::HelloTooLarge,
    Refusal::Closed,
];

impl Refusal {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Certificate(r) => r.as_str(),
            Refusal::Plaintext => "plaintext",
            Refusal::Timeout => "handshake_timeout",
            Refusal::HelloTooLarge => "client_hello_too_large",
            Refusal::Closed => "peer_closed",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::Certificate(Rejection::Expired) => 0,
            Refusal::Certificate(Rejection::NotYetValid) => 1,
            Refusal::Certificate(Rejection::UnknownCa) => 2,
            Refusal::Certificate(Rejection::WrongIdentity) => 3,
            Refusal::Certificate(Rejection::NoCertificate) => 4,
            Refusal::Certificate(Rejection::Other) => 5,
            Refusal::Plaintext => 6,
            Refusal::Timeout => 7,
            Refusal::HelloTooLarge => 8,
            Refusal::Closed => 9,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused or failed handshake: the classification and the words for the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TlsFailure {
    /// The metric label.
    pub reason: Refusal,
    /// What happened, for people.
    pub message: String,
}

impl TlsFailure {
    fn from_io(e: &std::io::Error) -> Self {
        let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        match tls {
            Some(t) => {
                TlsFailure { reason: Refusal::Certificate(Rejection::of(t)), message: meshpass_identity::describe(t) }
            }
            None if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
            {
                TlsFailure {
                    reason: Refusal::Closed,
                    message: format!("the peer closed the connection during the TLS handshake ({e})"),
                }
            }
            None => TlsFailure {
                reason: Refusal::Certificate(Rejection::Other),
                message: format!("TLS handshake failed: {e}"),
            },
        }
    }
}

/// Handshake and credential counters, rendered with the proxy's other metrics.
#[derive(Debug, Default)]
pub struct TlsMetrics {
    handshakes: [AtomicU64; 2],
    resumed: [AtomicU64; 2],
    refused: [[AtomicU64; REFUSALS.len()]; 2],
    /// Failed reloads: `[certificates, mesh config]`.
    reload_errors: [AtomicU64; 2],
    /// Successful reloads: `[certificates, mesh config]`.
    reloads: [AtomicU64; 2],
    cert_expiry: AtomicI64,
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

/// Which file a reload was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadKind {
    /// The workload certificate, key and roots.
    Certificates,
    /// The mesh config file.
    MeshConfig,
}

impl ReloadKind {
    fn index(self) -> usize {
        match self {
            ReloadKind::Certificates => 0,
            ReloadKind::MeshConfig => 1,
        }
    }

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadKind::Certificates => "certificates",
            ReloadKind::MeshConfig => "mesh_config",
        }
    }
}

impl TlsMetrics {
    /// A handshake completed.
    pub fn handshake(&self, d: Direction, resumed: bool) {
        self.handshakes[dir_index(d)].fetch_add(1, Ordering::Relaxed);
        if resumed {
            self.resumed[dir_index(d)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A handshake was refused or failed.
    pub fn refused(&self, d: Direction, why: Refusal) {
        self.refused[dir_index(d)][why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far for `d` and `why` (tests, `/config_dump`).
    pub fn refusals(&self, d: Direction, why: Refusal) -> u64 {
        self.refused[dir_index(d)][why.index()].load(Ordering::Relaxed)
    }

    /// A reload succeeded or failed.
    pub fn reload(&self, kind: ReloadKind, ok: bool) {
        let c = if ok { &self.reloads } else { &self.reload_errors };
        c[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed reloads of `kind` so far.
    pub fn reload_errors(&self, kind: ReloadKind) -> u64 {
        self.reload_errors[kind.index()].load(Ordering::Relaxed)
    }

    fn set_expiry(&self, not_after: SystemTime) {
        let s = not_after.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.cert_expiry.store(i64::try_from(s).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let dirs = [Direction::Inbound, Direction::Outbound];
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(out, "meshpass_tls_handshakes_total", "counter", "Completed mutual TLS handshakes.");
        for d in dirs {
            let _ = writeln!(
                out,
                "meshpass_tls_handshakes_total{{direction=\"{d}\"}} {}",
                self.handshakes[dir_index(d)].load(Ordering::Relaxed)
            );
        }
        head(out, "meshpass_tls_resumed_handshakes_total", "counter", "Handshakes that resumed an earlier session.");
        for d in dirs {
            let _ = writeln!(
                out,
                "meshpass_tls_resumed_handshakes_total{{direction=\"{d}\"}} {}",
                self.resumed[dir_index(d)].load(Ordering::Relaxed)
            );
        }
        head(
            out,
            "meshpass_tls_refused_total",
            "counter",
            "Connections refused or failed at the mutual TLS handshake, by reason.",
        );
        for d in dirs {
            for r in &REFUSALS {
                let _ = writeln!(
                    out,
                    "meshpass_tls_refused_total{{direction=\"{d}\",reason=\"{}\"}} {}",
                    r.as_str(),
                    self.refusals(d, *r)
                );
            }
        }
        head(out, "meshpass_config_reloads_total", "counter", "Reloads of the files the mesh writes, by result.");
        for k in [ReloadKind::Certificates, ReloadKind::MeshConfig] {
            for (result, c) in [("ok", &self.reloads), ("error", &self.reload_errors)] {
                let _ = writeln!(
                    out,
                    "meshpass_config_reloads_total{{file=\"{}\",result=\"{result}\"}} {}",
                    k.as_str(),
                    c[k.index()].load(Ordering::Relaxed)
                );
            }
        }
        head(
            out,
            "meshpass_tls_certificate_expiry_seconds",
            "gauge",
            "When the workload certificate in use expires (Unix time).",
        );
        let _ = writeln!(out, "meshpass_tls_certificate_expiry_seconds {}", self.cert_expiry.load(Ordering::Relaxed));
    }
}

/// The credentials in use and the configurations built from them.
struct Material {
    identity: SpiffeId,
    not_after: SystemTime,
    roots: Arc<RootCertStore>,
    server: Arc<ServerConfig>,
}

/// Server sessions kept for resumption (rustls's default is 256).
const SERVER_SESSIONS: usize = 4096;

/// Client configurations by what they originate and for which protocol.
type ClientConfigs = HashMap<(Arc<Origination>, AppProtocol), Arc<ClientConfig>>;

/// The sidecar's mutual-TLS state: its certificate, the mesh CA, and the rustls
/// configurations built from them.
pub struct MeshTls {
    slot: Arc<CertSlot>,
    material: RwLock<Arc<Material>>,
    clients: Mutex<ClientConfigs>,
    /// Counters.
    pub metrics: Arc<TlsMetrics>,
}

impl fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls").field("identity", &self.identity().to_string()).finish_non_exhaustive()
    }
}

fn server_config(
    roots: Arc<RootCertStore>,
    slot: Arc<CertSlot>,
    trust_domain: &str,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let base = meshpass_identity::server_config(roots, trust_domain, slot, alpn::SERVER)?;
    let mut cfg = (*base).clone();
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(SERVER_SESSIONS);
    Ok(Arc::new(cfg))
}

impl MeshTls {
    /// State for `creds`.
    pub fn new(creds: &Credentials, metrics: Arc<TlsMetrics>) -> Result<Self, IdentityError> {
        let slot = CertSlot::from_key(creds.key.clone());
        let server = server_config(creds.roots.clone(), slot.clone(), creds.identity.trust_domain())?;
        metrics.set_expiry(creds.not_after);
        Ok(MeshTls {
            material: RwLock::new(Arc::new(Material {
                identity: creds.identity.clone(),
                not_after: creds.not_after,
                roots: creds.roots.clone(),
                server,
            })),
            slot,
            clients: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn material(&self) -> Arc<Material> {
        match self.material.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Takes new credentials: new handshakes present the new certificate and trust the new
    /// roots; open connections are untouched. Resumption state starts afresh (see the module
    /// documentation).
    pub fn update(&self, creds: &Credentials) -> Result<(), IdentityError> {
        let server = server_config(creds.roots.clone(), self.slot.clone(), creds.identity.trust_domain())?;
        let next = Arc::new(Material {
            identity: creds.identity.clone(),
            not_after: creds.not_after,
            roots: creds.roots.clone(),
            server,
        });
        // Certificate first: a handshake that picks up the new configuration must not still
        // find the old certificate.
        self.slot.set(creds.key.clone());
        match self.material.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.metrics.set_expiry(creds.not_after);
        Ok(())
    }

    /// This workload's identity.
    pub fn identity(&self) -> SpiffeId {
        self.material().identity.clone()
    }

    /// When this workload's certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.material().not_after
    }

    /// The server configuration for inbound mutual TLS.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.material().server.clone()
    }

    fn client_config(&self, origin: &Arc<Origination>, proto: AppProtocol) -> Result<Arc<ClientConfig>, TlsFailure> {
        let key = (origin.clone(), proto);
        if let Some(c) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let m = self.material();
        let built = match &**origin {
            Origination::IstioMutual { identities, .. } => {
                meshpass_identity::client_config(m.roots.clone(), identities.clone(), self.slot.clone(), proto.alpn())
                    .map_err(|e| TlsFailure { reason: Refusal::Certificate(Rejection::Other), message: e.to_string() })?
            }
            Origination::Simple { ca_certificates, .. } => simple_client_config(ca_certificates.as_deref())?,
            Origination::Plaintext => {
                return Err(TlsFailure {
                    reason: Refusal::Certificate(Rejection::Other),
                    message: "no TLS is originated in plaintext".into(),
                })
            }
        };
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(key, built.clone());
        Ok(built)
    }

    /// Originates TLS on `tcp` as `origin` says, for `proto`, within `timeout`.
    pub async fn connect(
        &self,
        origin: &Arc<Origination>,
        proto: AppProtocol,
        tcp: TcpStream,
        timeout: Duration,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, TlsInfo), TlsFailure> {
        let (sni, mode) = match &**origin {
            Origination::IstioMutual { sni, .. } => (sni.as_str(), "ISTIO_MUTUAL"),
            Origination::Simple { sni, .. } => (sni.as_str(), "SIMPLE"),
            Origination::Plaintext => ("", "DISABLE"),
        };
        let cfg = self.client_config(origin, proto)?;
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| TlsFailure {
            reason: Refusal::Certificate(Rejection::Other),
            message: format!("{sni:?} is not a valid TLS server name: {e}"),
        })?;
        let conn = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp);
        let stream = match tokio::time::timeout(timeout, conn).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let f = TlsFailure::from_io(&e);
                self.metrics.refused(Direction::Outbound, f.reason);
                return Err(f);
            }
            Err(_) => {
                self.metrics.refused(Direction::Outbound, Refusal::Timeout);
                return Err(TlsFailure {
                    reason: Refusal::Timeout,
                    message: format!("no TLS handshake within {}ms", timeout.as_millis()),
                });
            }
        };
        let c = stream.get_ref().1;
        let mutual = origin.is_mutual();
        let resumed = c.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let info = TlsInfo {
            mode,
            peer_identity: if mutual {
                meshpass_identity::peer_identity(c.peer_certificates()).map(|i| i.to_string())
            } else {
                None
            },
            local_identity: mutual.then(|| self.identity().to_string()),
            sni: Some(sni.to_owned()),
            alpn: c.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned()),
            version: c.protocol_version().map(version_name),
            resumed,
        };
        self.metrics.handshake(Direction::Outbound, resumed);
        Ok((stream, info))
    }
}

fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "other",
    }
}

/// TLS to an app that terminates it itself (`DestinationRule` `SIMPLE`).
fn simple_client_config(ca_file: Option<&str>) -> Result<Arc<ClientConfig>, TlsFailure> {
    let fail = |message: String| TlsFailure { reason: Refusal::Certificate(Rejection::Other), message };
    let provider = meshpass_identity::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?;
    let cfg = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read caCertificates {path}: {e}")))?;
            let mut roots = RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| fail(format!("caCertificates {path}: {e}")))?;
                roots.add(c).map_err(|e| fail(format!("caCertificates {path}: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
        }
    };
    Ok(Arc::new(cfg))
}

/// `insecureSkipVerify`: a `SIMPLE` rule without `caCertificates` does not verify the server
/// (the signatures of the handshake itself are still checked).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the inbound side made of a new connection.
pub enum Accepted {
    /// Not terminated: go on in plaintext with these bytes already read.
    Plain(TcpStream, BytesMut),
    /// Mutual TLS terminated.
    Mutual(Box<tokio_rustls::server::TlsStream<Rewind<TcpStream>>>, TlsInfo),
    /// Refused (already logged and counted); close the connection.
    Refused(TlsFailure),
}

/// How long to wait for the first bytes before deciding.
#[derive(Clone, Copy, Debug)]
pub struct InboundTimeouts {
    /// PERMISSIVE: a client silent this long is plaintext (server-first protocols).
    pub first_bytes: Duration,
    /// The whole handshake (and, under STRICT, the wait for a ClientHello).
    pub handshake: Duration,
}

/// Inspects and, as `mode` says, terminates an inbound connection to `port` from `peer`.
pub async fn accept_inbound(
    tls: Option<&MeshTls>,
    mode: PeerMode,
    mut stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    t: InboundTimeouts,
) -> Accepted {
    let mut buf = BytesMut::new();
    let Some(tls) = tls.filter(|_| mode != PeerMode::Disable) else { return Accepted::Plain(stream, buf) };
    let strict = mode == PeerMode::Strict;
    let start = tokio::time::Instant::now();
    let first_deadline = start + if strict { t.handshake } else { t.first_bytes };
    let refuse = |f: TlsFailure| {
        tls.metrics.refused(Direction::Inbound, f.reason);
        tracing::warn!(
            %peer, port, mode = %mode, reason = f.reason.as_str(), error = %f.message,
            "inbound mutual TLS refused"
        );
        Accepted::Refused(f)
    };
    let hello = loop {
        match hello::inspect(&buf) {
            hello::Verdict::NeedMore => {}
            hello::Verdict::NotTls if strict => {
                return refuse(TlsFailure {
                    reason: Refusal::Plaintext,
                    message: format!(
                        "port {port} requires mutual TLS (PeerAuthentication STRICT) and the client sent plaintext"
                    ),
                })
            }
            hello::Verdict::NotTls => return Accepted::Plain(stream, buf),
            hello::Verdict::TooLarge => {
                return refuse(TlsFailure {
                    reason: Refusal::HelloTooLarge,
                    message: format!("the TLS ClientHello is larger than {} bytes", hello::MAX_HELLO),
                })
            }
            hello::Verdict::Tls(h) => break h,
        }
        buf.reserve(2048);
        match tokio::time::timeout_at(first_deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) if buf.is_empty() || !strict => return Accepted::Plain(stream, buf),
            Ok(Ok(0)) => {
                return refuse(TlsFailure {
                    reason: Refusal::Closed,
                    message: "the client closed the connection before its TLS ClientHello was complete".into(),
                })
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if !strict => {
                tracing::debug!(%peer, error = %e, "inbound read failed before the protocol was known");
                return Accepted::Plain(stream, buf);
            }
            Ok(Err(e)) => return refuse(TlsFailure { reason: Refusal::Closed, message: format!("reading the ClientHello: {e}") }),
            Err(_) if strict => {
                return refuse(TlsFailure {
                    reason: Refusal::Timeout,
                    message: format!(
                        "port {port} requires mutual TLS (PeerAuthentication STRICT) and no TLS ClientHello arrived within {}ms",
                        t.handshake.as_millis()
                    ),
                })
            }
            // A silent client under PERMISSIVE: a server-first protocol in plaintext.
            Err(_) => return Accepted::Plain(stream, buf),
        }
    };
    if !strict && !hello.offers_any(alpn::MESH) {
        // TLS of the app's own (Istio's "plain TLS" filter chain): passed through untouched.
        return Accepted::Plain(stream, buf);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    let accept = acceptor.accept(Rewind::new(buf.freeze(), stream));
    let s = match tokio::time::timeout_at(start + t.handshake, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(TlsFailure::from_io(&e)),
        Err(_) => {
            return refuse(TlsFailure {
                reason: Refusal::Timeout,
                message: format!("no complete TLS handshake within {}ms", t.handshake.as_millis()),
            })
        }
    };
    let c = s.get_ref().1;
    let resumed = c.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let info = TlsInfo {
        mode: "ISTIO_MUTUAL",
        peer_identity: meshpass_identity::peer_identity(c.peer_certificates()).map(|i| i.to_string()),
        local_identity: Some(tls.identity().to_string()),
        sni: hello.sni,
        alpn: c.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned()),
        version: c.protocol_version().map(version_name),
        resumed,
    };
    tls.metrics.handshake(Direction::Inbound, resumed);
    tracing::debug!(%peer, port, peer_identity = ?info.peer_identity, resumed, "inbound mutual TLS");
    Accepted::Mutual(Box::new(s), info)
}
