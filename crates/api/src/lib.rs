//! The meshpass management plane: one axum server with the REST API under `/api/v1` (and its
//! OpenAPI document), the embedded web GUI at `/` and Prometheus metrics at `/metrics`, over a
//! [`Backend`] that the local mesh (`meshpass up`) and Kubernetes (`meshpass serve --kube`)
//! implement.
//!
//! The API speaks in passthrough settings ([`model::Passthrough`]); backends speak in
//! pod-template annotations. This crate translates between the two with `meshpass-settings`,
//! so that validation and its messages are the engine's, whatever the backend.
//!
//! Start a server with [`server::serve`] (or [`server::Server::bind`] + [`server::Server::run`]);
//! talk to one with [`client::Client`]; test against `fake::FakeBackend` (an in-memory backend,
//! compiled only with the `testing` feature, which the crate's own tests and examples enable).

pub mod audit;
pub mod auth;
pub mod backend;
pub mod client;
pub mod error;
pub mod extract;
#[cfg(feature = "testing")]
pub mod fake;
pub mod impact;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod passthrough;
pub mod routes;
pub mod selector;
pub mod server;
pub mod state;
pub mod util;

pub use auth::load_or_create_token;
pub use backend::{Backend, BackendError, BackendKind, NamedBackend};
pub use client::{Client, ClientError};
pub use error::ApiError;
pub use server::{router, serve, serve_clusters, AppState, Server, ServerConfig, Started};
