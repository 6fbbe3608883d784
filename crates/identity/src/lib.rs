//! The mesh's workload identity, as Istio has it: a mesh CA, short-lived workload
//! certificates carrying `spiffe://cluster.local/ns/NS/sa/SA`, a pure renewal schedule, and
//! rustls configurations for mutual TLS between sidecars that verify the peer against the
//! CA and its SPIFFE identity and take rotated certificates without dropping connections.
//!
//! Everything is pure (the clock is an argument) except [`store`], which keeps the CA in the
//! mesh's state directory with its key readable by its owner only. Cryptography is rustls
//! with the ring provider and rcgen; nothing shells out to OpenSSL.

pub mod ca;
pub mod error;
pub mod files;
pub mod rotation;
pub mod spiffe;
pub mod store;
pub mod tls;

pub use ca::{spiffe_id_of, MeshCa, WorkloadCert, CA_VALIDITY, DEFAULT_WORKLOAD_TTL};
pub use error::IdentityError;
pub use files::Credentials;
pub use rotation::{Action, Rotation};
pub use spiffe::{SpiffeId, SpiffeIdError, TRUST_DOMAIN};
pub use tls::{alpn, client_config, describe, peer_identity, server_config, CertSlot, IdentityMismatch, Rejection};
