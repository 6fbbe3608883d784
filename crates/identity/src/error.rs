//! Errors of the identity crate.

use std::path::PathBuf;

/// What went wrong issuing, loading or checking a certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key or certificate generation failed.
    #[error("cannot generate {what}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM or DER input does not hold what it should.
    #[error("{what} is not valid: {reason}")]
    Invalid {
        /// What was read (e.g. `the mesh CA certificate`).
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// `cannot read`, `cannot write`...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The CA key file is readable by others than its owner.
    #[error("{path} has mode {mode:o}; the mesh CA key must be readable by its owner only (chmod 600)")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// rustls refused a configuration.
    #[error("cannot build the TLS configuration")]
    Tls(#[source] rustls::Error),
}
