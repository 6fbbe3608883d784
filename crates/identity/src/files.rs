//! A workload's credentials as files, the way Istio mounts them for a sidecar without an
//! agent (`/etc/certs`): `cert-chain.pem` (the workload certificate, then any intermediates),
//! `key.pem` (its private key, readable by the sidecar only) and `root-cert.pem` (the mesh
//! CA, possibly several during a CA rotation).
//!
//! [`parse`] is pure and checks everything a sidecar needs before it uses the files: the key
//! belongs to the certificate, the certificate carries one SPIFFE identity and chains to one
//! of the roots. [`read_dir`] and [`write_dir`] are the file effects.

use crate::ca::{spiffe_id_of, WorkloadCert};
use crate::error::IdentityError;
use crate::spiffe::SpiffeId;
use crate::store::write_atomic;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The workload certificate and its intermediates.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The workload key.
pub const KEY_FILE: &str = "key.pem";
/// The mesh CA certificate(s).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// Credentials read from files and checked.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Certificate chain and signing key, as rustls presents them.
    pub key: Arc<CertifiedKey>,
    /// The identity in the certificate.
    pub identity: SpiffeId,
    /// Start of the certificate's validity.
    pub not_before: SystemTime,
    /// End of the certificate's validity.
    pub not_after: SystemTime,
    /// The trust anchors for verifying peers.
    pub roots: Arc<RootCertStore>,
    /// The roots as read, DER (to notice a CA change).
    pub root_ders: Vec<CertificateDer<'static>>,
}

fn invalid(what: &str, reason: impl Into<String>) -> IdentityError {
    IdentityError::Invalid { what: what.to_string(), reason: reason.into() }
}

fn validity(cert: &CertificateDer<'_>, what: &str) -> Result<(SystemTime, SystemTime), IdentityError> {
    let (_, x509) = X509Certificate::from_der(cert).map_err(|e| invalid(what, format!("it does not parse: {e}")))?;
    let t = |unix: i64| {
        if unix >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
        }
    };
    Ok((t(x509.validity().not_before.timestamp()), t(x509.validity().not_after.timestamp())))
}

/// Checks and assembles credentials from the three files' contents.
///
/// Time is not checked: an expired or not yet valid certificate is still loaded (the caller
/// reports it; peers refuse it), so a sidecar never ends up with no certificate at all.
pub fn parse(cert_chain_pem: &[u8], key_pem: &[u8], root_pem: &[u8]) -> Result<Credentials, IdentityError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(CERT_CHAIN_FILE, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(CERT_CHAIN_FILE, "it holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(KEY_FILE, format!("no PEM private key (PKCS#8, SEC1 or PKCS#1): {e}")))?;
    let root_ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(root_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(ROOT_CERT_FILE, format!("not PEM certificates: {e}")))?;
    if root_ders.is_empty() {
        return Err(invalid(ROOT_CERT_FILE, "it holds no certificate"));
    }
    let mut roots = RootCertStore::empty();
    for (i, r) in root_ders.iter().enumerate() {
        roots
            .add(r.clone())
            .map_err(|e| invalid(ROOT_CERT_FILE, format!("certificate {} is not a usable CA: {e}", i + 1)))?;
    }
    let provider = ring::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(KEY_FILE, format!("the key cannot sign: {e}")))?;
    let certified = CertifiedKey::new(chain.clone(), signer);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(invalid(KEY_FILE, format!("the key does not belong to the certificate in {CERT_CHAIN_FILE}")))
        }
    }
    let identity = spiffe_id_of(&chain[0])?;
    let (not_before, not_after) = validity(&chain[0], CERT_CHAIN_FILE)?;
    // Chain to the roots at a moment inside the certificate's validity: expiry is reported
    // separately, a wrong CA is an error.
    let parsed = ParsedCertificate::try_from(&chain[0])
        .map_err(|e| invalid(CERT_CHAIN_FILE, format!("the certificate does not parse: {e}")))?;
    let at = not_before + (not_after.duration_since(not_before).unwrap_or_default() / 2);
    let at = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &chain[1..],
        at,
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| {
        invalid(
            CERT_CHAIN_FILE,
            format!(
                "the certificate of {identity} is not issued by the CA in {ROOT_CERT_FILE}: {}",
                crate::tls::describe(&e)
            ),
        )
    })?;
    Ok(Credentials { key: Arc::new(certified), identity, not_before, not_after, roots: Arc::new(roots), root_ders })
}

/// Reads and checks the three files in `dir`.
pub fn read_dir(dir: &Path) -> Result<Credentials, IdentityError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| IdentityError::Io { action: "cannot read", path, source })
    };
    parse(&read(CERT_CHAIN_FILE)?, &read(KEY_FILE)?, &read(ROOT_CERT_FILE)?)
}

/// Writes a workload's files into `dir` (created 0755 when missing): the key first, readable
/// by its owner only, then the certificate, then the roots, each replaced atomically. `owner`
/// (uid, gid) hands the files to the sidecar's user.
pub fn write_dir(
    dir: &Path,
    cert: &WorkloadCert,
    roots_pem: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
        action: "cannot create",
        path: dir.to_path_buf(),
        source,
    })?;
    for (name, data, mode) in [
        (KEY_FILE, cert.key_pem(), 0o600),
        (CERT_CHAIN_FILE, cert.cert_pem(), 0o644),
        (ROOT_CERT_FILE, roots_pem.to_string(), 0o644),
    ] {
        let path = dir.join(name);
        write_atomic(&path, data.as_bytes(), mode, owner)?;
    }
    Ok(())
}
