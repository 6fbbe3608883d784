//! The mesh CA and the workload certificates it issues. Pure: the clock is an argument and
//! nothing touches the file system (see [`crate::store`] for that).

use crate::error::IdentityError;
use crate::spiffe::{SpiffeId, TRUST_DOMAIN};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;
use std::time::{Duration, SystemTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// How long a generated mesh CA is valid (Istio's self-signed root: ten years).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Istio's default workload certificate lifetime (24 hours).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// The CA's subject, as Istio's self-signed root names it: `O=cluster.local`.
fn ca_params(not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, TRUST_DOMAIN);
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = not_before.into();
    p.not_after = not_after.into();
    p
}

/// The mesh's certificate authority: a self-signed root that signs every workload certificate.
pub struct MeshCa {
    key: KeyPair,
    params: CertificateParams,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_after: SystemTime,
}

impl MeshCa {
    /// A new CA valid from `now` for `validity`.
    pub fn generate(now: SystemTime, validity: Duration) -> Result<Self, IdentityError> {
        let key = KeyPair::generate().map_err(|source| IdentityError::Generate { what: "the mesh CA key", source })?;
        let params = ca_params(now, now + validity);
        let cert = params
            .self_signed(&key)
            .map_err(|source| IdentityError::Generate { what: "the mesh CA certificate", source })?;
        Ok(MeshCa { cert_pem: cert.pem(), cert_der: cert.der().clone(), not_after: now + validity, key, params })
    }

    /// A CA read back from its certificate and key (PEM); refuses a certificate that is not a
    /// CA, or a key that does not belong to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let invalid = |reason: String| IdentityError::Invalid { what: "the mesh CA".into(), reason };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(format!("no PEM certificate: {e}")))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(format!("no usable PEM private key: {e}")))?;
        let (_, x509) = X509Certificate::from_der(&cert_der)
            .map_err(|e| invalid(format!("the certificate does not parse: {e}")))?;
        if !x509.is_ca() {
            return Err(invalid("the certificate is not a CA certificate (basicConstraints CA:FALSE)".into()));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid("the private key does not belong to the certificate".into()));
        }
        let not_before = to_system_time(x509.validity().not_before.timestamp());
        let not_after = to_system_time(x509.validity().not_after.timestamp());
        // Issued certificates name the CA by subject and key identifier, both of which
        // `ca_params` reproduces from the same trust domain and key.
        let params = ca_params(not_before, not_after);
        Ok(MeshCa { key, params, cert_pem: cert_pem.to_string(), cert_der, not_after })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA key, PEM (PKCS#8). Store it readable by its owner only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// When the CA expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The trust anchors for verifying peers: this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // A certificate we generated or already parsed: adding it cannot fail, and if it did
        // every handshake would say so.
        let _ = roots.add(self.cert_der.clone());
        roots
    }

    /// A workload certificate for `id`, valid from `now` for `ttl`, with a fresh key.
    ///
    /// As Istio's: an empty subject, the SPIFFE URI as the only subject alternative name,
    /// usable for both TLS server and client authentication.
    pub fn issue(&self, id: &SpiffeId, now: SystemTime, ttl: Duration) -> Result<WorkloadCert, IdentityError> {
        self.issue_window(id, now, now + ttl)
    }

    /// A workload certificate valid from `not_before` to `not_after` (tests use this to make
    /// expired and not-yet-valid certificates).
    pub fn issue_window(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCert, IdentityError> {
        let key = KeyPair::generate().map_err(|source| IdentityError::Generate { what: "a workload key", source })?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        let uri = id
            .to_string()
            .try_into()
            .map_err(|source| IdentityError::Generate { what: "the SPIFFE URI SAN", source })?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        p.not_before = not_before.into();
        p.not_after = not_after.into();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|source| IdentityError::Generate { what: "a workload certificate", source })?;
        Ok(WorkloadCert {
            identity: id.clone(),
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_before,
            not_after,
        })
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// A workload's certificate and key.
pub struct WorkloadCert {
    /// The identity in the certificate.
    pub identity: SpiffeId,
    /// The certificate (DER), signed by the mesh CA.
    pub cert: CertificateDer<'static>,
    /// Its private key (PKCS#8 DER).
    pub key: PrivatePkcs8KeyDer<'static>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl WorkloadCert {
    /// The key in the form rustls loads.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem_block("CERTIFICATE", self.cert.as_ref())
    }

    /// The key, PEM.
    pub fn key_pem(&self) -> String {
        pem_block("PRIVATE KEY", self.key.secret_pkcs8_der())
    }

    /// Reads a certificate and key back from PEM, taking identity and validity from the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let invalid = |reason: String| IdentityError::Invalid { what: "the workload certificate".into(), reason };
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(format!("no PEM certificate: {e}")))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| invalid(format!("no PKCS#8 PEM key: {e}")))?;
        let identity = spiffe_id_of(&cert)?;
        let (_, x509) = X509Certificate::from_der(&cert).map_err(|e| invalid(e.to_string()))?;
        let not_before = to_system_time(x509.validity().not_before.timestamp());
        let not_after = to_system_time(x509.validity().not_after.timestamp());
        Ok(WorkloadCert { identity, cert, key, not_before, not_after })
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// The SPIFFE identity in a certificate's URI subject alternative name.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let invalid = |reason: String| IdentityError::Invalid { what: "the peer certificate".into(), reason };
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).map_err(|e| invalid(format!("it does not parse: {e}")))?;
    let mut uris = Vec::new();
    for ext in x509.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(u) = name {
                    uris.push(u.to_string());
                }
            }
        }
    }
    match uris.as_slice() {
        [] => Err(invalid("it has no URI subject alternative name (no SPIFFE identity)".into())),
        [one] => one.parse().map_err(|e: crate::spiffe::SpiffeIdError| invalid(e.to_string())),
        many => Err(invalid(format!(
            "it has {} URI subject alternative names; a workload has exactly one identity",
            many.len()
        ))),
    }
}
