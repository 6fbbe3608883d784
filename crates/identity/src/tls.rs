//! rustls configurations for Istio-style mutual TLS between sidecars.
//!
//! * Both sides present the workload certificate held in a [`CertSlot`]; rotating it swaps
//!   an `Arc` that only new handshakes read, so established connections are untouched.
//! * Both sides verify the peer's chain against the mesh CA. The client also requires the
//!   server's SPIFFE identity to be one it expects (the service's service accounts, as
//!   Istio's `subjectAltNames`); the server requires a SPIFFE identity in its trust domain.
//! * Istio's parameters: TLS 1.2–1.3, ECDHE with AES-GCM only, ALPN as Istio's sidecars send
//!   and accept ([`alpn`]).

use crate::ca::{spiffe_id_of, WorkloadCert};
use crate::error::IdentityError;
use crate::spiffe::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use std::fmt;
use std::sync::{Arc, RwLock};

/// ALPN values of Istio's sidecars.
pub mod alpn {
    /// TCP with metadata exchange.
    pub const ISTIO_PEER_EXCHANGE: &[u8] = b"istio-peer-exchange";
    /// In-mesh traffic.
    pub const ISTIO: &[u8] = b"istio";
    /// In-mesh HTTP/1.0.
    pub const ISTIO_HTTP10: &[u8] = b"istio-http/1.0";
    /// In-mesh HTTP/1.1.
    pub const ISTIO_HTTP11: &[u8] = b"istio-http/1.1";
    /// In-mesh HTTP/2.
    pub const ISTIO_H2: &[u8] = b"istio-h2";
    /// HTTP/1.1.
    pub const HTTP11: &[u8] = b"http/1.1";
    /// HTTP/2.
    pub const H2: &[u8] = b"h2";

    /// What a client sidecar offers for opaque TCP (`ALPNInMeshWithMxc`).
    pub const CLIENT_TCP: &[&[u8]] = &[ISTIO_PEER_EXCHANGE, ISTIO];
    /// What a client sidecar offers for HTTP/1.1 (the `istio.alpn` filter's override).
    pub const CLIENT_HTTP11: &[&[u8]] = &[ISTIO_HTTP11, ISTIO, HTTP11];
    /// What a client sidecar offers for HTTP/2.
    pub const CLIENT_H2: &[&[u8]] = &[ISTIO_H2, ISTIO, H2];
    /// What a server sidecar offers (`ALPNDownstreamWithMxc`).
    pub const SERVER: &[&[u8]] = &[ISTIO_PEER_EXCHANGE, H2, HTTP11];
    /// Every value a server sidecar recognises as mesh traffic (Istio's `allIstioMtlsALPNs`):
    /// a TLS ClientHello offering one of these is mutual TLS from a sidecar.
    pub const MESH: &[&[u8]] = &[ISTIO, ISTIO_PEER_EXCHANGE, ISTIO_HTTP10, ISTIO_HTTP11, ISTIO_H2];
}

/// The crypto provider: ring, with Istio's cipher suites (ECDHE, AES-GCM).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    Arc::new(p)
}

/// The workload's current certificate, swappable while connections use the old one.
pub struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSlot").finish_non_exhaustive()
    }
}

fn certified(cert: &WorkloadCert) -> Result<Arc<CertifiedKey>, IdentityError> {
    let key = ring::default_provider().key_provider.load_private_key(cert.private_key()).map_err(IdentityError::Tls)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.cert.clone()], key)))
}

impl CertSlot {
    /// A slot holding `cert`.
    pub fn new(cert: &WorkloadCert) -> Result<Arc<Self>, IdentityError> {
        Ok(Arc::new(CertSlot { current: RwLock::new(certified(cert)?) }))
    }

    /// A slot holding an already assembled key (e.g. [`crate::files::Credentials::key`]).
    pub fn from_key(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(CertSlot { current: RwLock::new(key) })
    }

    /// Replaces the certificate for every handshake from now on.
    pub fn rotate(&self, cert: &WorkloadCert) -> Result<(), IdentityError> {
        self.set(certified(cert)?);
        Ok(())
    }

    /// Replaces the certificate and key for every handshake from now on.
    pub fn set(&self, next: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut g) => *g = next,
            // A writer that panicked left a whole `Arc` behind; replace it all the same.
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The certificate new handshakes present.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The peer's certificate carries an identity other than the ones accepted.
#[derive(Debug, thiserror::Error)]
pub enum IdentityMismatch {
    /// A server identity the client did not expect.
    #[error("peer identity {got} is not the expected {}", expected_list(.expected))]
    Unexpected {
        /// What the certificate says.
        got: String,
        /// What was accepted.
        expected: Vec<SpiffeId>,
    },
    /// A client identity from another trust domain.
    #[error("peer identity {got} is not in trust domain {trust_domain}")]
    TrustDomain {
        /// What the certificate says.
        got: SpiffeId,
        /// The mesh's trust domain.
        trust_domain: String,
    },
    /// No usable SPIFFE identity at all.
    #[error("{0}")]
    Missing(String),
}

fn expected_list(ids: &[SpiffeId]) -> String {
    match ids {
        [one] => one.to_string(),
        many => format!("one of {}", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    }
}

fn mismatch(e: IdentityMismatch) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn identity(cert: &CertificateDer<'_>) -> Result<SpiffeId, Error> {
    spiffe_id_of(cert).map_err(|e| mismatch(IdentityMismatch::Missing(e.to_string())))
}

/// Verifies a server sidecar: chain to the mesh CA, then its SPIFFE identity.
#[derive(Debug)]
struct ServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<SpiffeId>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let got = identity(end_entity)?;
        if !self.expected.is_empty() && !self.expected.contains(&got) {
            return Err(mismatch(IdentityMismatch::Unexpected {
                got: got.to_string(),
                expected: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Verifies a client sidecar: webpki's client verification against the mesh CA, then a
/// SPIFFE identity of the mesh's trust domain.
#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let got = identity(end_entity)?;
        if got.trust_domain() != self.trust_domain {
            return Err(mismatch(IdentityMismatch::TrustDomain { got, trust_domain: self.trust_domain.clone() }));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server sidecar's config: presents `slot`'s certificate, requires a client certificate
/// chained to `roots` with a SPIFFE identity in `trust_domain`, offers `alpn`.
pub fn server_config(
    roots: Arc<RootCertStore>,
    trust_domain: &str,
    slot: Arc<CertSlot>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, IdentityError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| IdentityError::Invalid { what: "the mesh CA roots".into(), reason: e.to_string() })?;
    let verifier = Arc::new(ClientVerifier { inner, trust_domain: trust_domain.to_string() });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(IdentityError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A client sidecar's config for one destination: presents `slot`'s certificate, requires
/// the server's chain to `roots` and its identity to be one of `expected` (any identity of
/// the CA when empty), offers `alpn`.
pub fn client_config(
    roots: Arc<RootCertStore>,
    expected: Vec<SpiffeId>,
    slot: Arc<CertSlot>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, IdentityError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let verifier = Arc::new(ServerVerifier { roots, expected, algs });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(IdentityError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(slot);
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The identity the peer of an established connection presented.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    certs.and_then(|c| c.first()).and_then(|c| spiffe_id_of(c).ok())
}

/// Why a handshake was refused, for logs and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The peer's certificate has expired.
    Expired,
    /// The peer's certificate is not valid yet.
    NotYetValid,
    /// The peer's certificate is not signed by the mesh CA.
    UnknownCa,
    /// The peer's identity is not the one expected.
    WrongIdentity,
    /// The peer sent no certificate.
    NoCertificate,
    /// Anything else that failed the handshake.
    Other,
}

impl Rejection {
    /// A metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::UnknownCa => "unknown_ca",
            Rejection::WrongIdentity => "wrong_identity",
            Rejection::NoCertificate => "no_certificate",
            Rejection::Other => "other",
        }
    }

    /// Classifies a rustls error, from either side of the handshake (the side that refused
    /// the certificate has the error, the other side the alert it sent).
    pub fn of(e: &Error) -> Rejection {
        match e {
            Error::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => Rejection::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => Rejection::NotYetValid,
                CertificateError::UnknownIssuer | CertificateError::BadSignature => Rejection::UnknownCa,
                CertificateError::Other(o) if o.0.downcast_ref::<IdentityMismatch>().is_some() => {
                    Rejection::WrongIdentity
                }
                _ => Rejection::Other,
            },
            Error::NoCertificatesPresented => Rejection::NoCertificate,
            Error::AlertReceived(a) => match a {
                AlertDescription::CertificateExpired => Rejection::Expired,
                AlertDescription::UnknownCA => Rejection::UnknownCa,
                AlertDescription::CertificateRequired => Rejection::NoCertificate,
                _ => Rejection::Other,
            },
            _ => Rejection::Other,
        }
    }
}

/// A handshake error in words an operator can act on (rustls prints some causes only as
/// debug names, e.g. `BadSignature`).
pub fn describe(e: &Error) -> String {
    match e {
        Error::InvalidCertificate(CertificateError::Other(o)) => format!("invalid peer certificate: {}", o.0),
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "invalid peer certificate: not issued by the mesh CA (unknown issuer)".to_string()
        }
        Error::InvalidCertificate(CertificateError::BadSignature) => {
            "invalid peer certificate: not signed by the mesh CA (bad signature)".to_string()
        }
        Error::NoCertificatesPresented => "the peer presented no certificate (mutual TLS requires one)".to_string(),
        other => other.to_string(),
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
