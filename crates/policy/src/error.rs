//! Validation errors: one per bad field, each naming the resource, the field path, the value
//! and the reason. A document with any error is refused whole.

use std::fmt;

/// Why a field was rejected. The `Display` text completes the sentence
/// `<resource>: <path>: <value> <reason>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// A required field is absent or empty.
    #[error("is required")]
    Required,
    /// A field this kind does not have (Kubernetes' strict field validation refuses these).
    #[error("is not a field of {0}")]
    UnknownField(&'static str),
    /// The YAML type is wrong (e.g. a list where a mapping is expected).
    #[error("must be {0}")]
    WrongType(&'static str),
    /// A value outside an enumeration.
    #[error("is not one of {0}")]
    NotOneOf(&'static str),
    /// Not a port number.
    #[error("is not a port (1-65535)")]
    NotAPort,
    /// An `apiVersion` this kind is not served at.
    #[error("is not served for {kind}: use {expected}")]
    ApiVersion {
        /// The kind.
        kind: &'static str,
        /// The versions served.
        expected: &'static str,
    },
    /// A kind meshpass does not handle in policy files.
    #[error("is not a kind meshpass applies here: use PeerAuthentication (security.istio.io/v1) or DestinationRule (networking.istio.io/v1)")]
    UnknownKind,
    /// Not a DNS-1123 name of the required shape.
    #[error("is not a valid {0}")]
    BadName(&'static str),
    /// A label key or value Kubernetes would refuse.
    #[error("is not a valid label {0}")]
    BadLabel(&'static str),
    /// Istio's webhook refuses `*` in selectors.
    #[error("wildcard is not supported in selector")]
    WildcardInSelector,
    /// Istio's webhook refuses empty selector keys.
    #[error("empty key is not supported in selector")]
    EmptySelectorKey,
    /// `portLevelMtls` on a mesh- or namespace-wide policy.
    #[error("mesh/namespace peer authentication cannot have port level mTLS (portLevelMtls requires selector)")]
    PortLevelWithoutSelector,
    /// `portLevelMtls: {}`.
    #[error("port level mTLS, if defined, must have at least one element")]
    EmptyPortLevel,
    /// A traffic policy with nothing in it.
    #[error("traffic policy must have at least one field")]
    EmptyTrafficPolicy,
    /// A port traffic policy with nothing but a port.
    #[error("port traffic policy must have at least one field")]
    EmptyPortTrafficPolicy,
    /// `tunnel` together with `proxyProtocol`.
    #[error("tunnel and proxyProtocol must not be set together")]
    TunnelWithProxyProtocol,
    /// `MUTUAL` without the client certificate or key it needs.
    #[error("is required for mutual tls (or set credentialName)")]
    RequiredForMutual,
    /// Certificates set next to `credentialName`.
    #[error("cannot specify client certificates or CA certificate or CA CRL if credentialName is set")]
    CertificatesWithCredentialName,
    /// Verification material with `insecureSkipVerify: true`.
    #[error("cannot specify caCertificates, credentialName or subjectAltNames when insecureSkipVerify is set true")]
    VerifyWithInsecureSkipVerify,
    /// A duplicated subset name.
    #[error("duplicate subset names")]
    DuplicateSubset,
    /// An `exportTo` entry Istio refuses.
    #[error("{0}")]
    ExportTo(String),
    /// A host Istio refuses.
    #[error("{0}")]
    BadHost(String),
    /// A second mesh- or namespace-wide policy where Istio would silently use only the oldest.
    #[error(
        "conflicts with {existing}: Istio would use only the older of two {scope} policies; edit or delete it instead"
    )]
    Conflict {
        /// `namespace/name` of the policy already there.
        existing: String,
        /// `mesh-wide` or `namespace-wide`.
        scope: &'static str,
    },
    /// The YAML itself does not parse.
    #[error("is not valid YAML: {0}")]
    Yaml(String),
}

/// One rejected field of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `Kind namespace/name`, or `document N` before the name is known.
    pub resource: String,
    /// The field's path, e.g. `spec.portLevelMtls.8080.mode`.
    pub path: String,
    /// The offending value as written (empty when absent).
    pub value: String,
    /// Why it was rejected.
    pub reason: Reason,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.resource)?;
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        if !self.value.is_empty() {
            // `{:?}` quotes the value and keeps control characters visible on one line.
            write!(f, ": {:?}", self.value)?;
        }
        write!(f, " {}", self.reason)
    }
}

impl std::error::Error for FieldError {}

/// Every error found in one file, in document order then field order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<FieldError>);

impl PolicyErrors {
    /// The individual errors.
    pub fn iter(&self) -> impl Iterator<Item = &FieldError> {
        self.0.iter()
    }

    /// How many fields were rejected.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing was rejected.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}
