//! The meshpass management plane: one axum server with the REST API under `/api/v1` (and its
//! OpenAPI document), the embedded web GUI at `/` and Prometheus metrics at `/metrics`, over a
//! [`Backend`] that the local mesh (`meshpass up`) and Kubernetes (`meshpass serve --kube`)
//! implement.
//!
//! The API speaks in passthrough settings ([`model::Passthrough`]); backends speak in
//! pod-template annotations. This crate translates between the two with `meshpass-settings`,
//! so that validation and its messages are the engine's, whatever the backend.

pub mod backend;
pub mod model;

pub use backend::{Backend, BackendError, BackendKind};
