//! Errors: [`KubeError`] for connecting to a cluster, and the translation of kube-rs errors
//! (API server `Status` objects, transport failures, timeouts) into the management plane's
//! [`BackendError`], so that every failure reaches the user as a sentence naming what was
//! attempted, with what the API server (or the transport) said as its cause — never as a crash
//! or a silent no-op.
//!
//! Every error here says only its own part in `Display` and carries its cause as `source`, so
//! the whole chain reads once ([`meshpass_api::backend::error_chain`], anyhow's `{:#}`).

use meshpass_api::backend::BoxError;
use meshpass_api::model::WorkloadRef;
use meshpass_api::BackendError;
use std::time::Duration;

/// Why [`crate::KubeBackend::connect`] could not produce a working client.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig (or the named context in it) could not be loaded.
    #[error("cannot load kubeconfig{}", context_suffix(.context))]
    Kubeconfig {
        /// The context asked for (`--context`), when one was.
        context: Option<String>,
        /// What kube-rs reported.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither a kubeconfig nor the in-cluster service account environment was found.
    #[error("no Kubernetes configuration (set KUBECONFIG, or run in a pod with a service account)")]
    Infer {
        /// What kube-rs reported.
        #[source]
        source: kube::config::InferConfigError,
    },
    /// The configuration was read but a client could not be built from it (TLS, auth plugin).
    #[error("cannot build a Kubernetes client for {cluster_url}")]
    Client {
        /// The API server the configuration names.
        cluster_url: String,
        /// What kube-rs reported.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer `GET /version`.
    #[error("cannot reach the Kubernetes API server at {cluster_url}")]
    Unreachable {
        /// The API server the configuration names.
        cluster_url: String,
        /// Why (connection refused, TLS, timeout, 401 …).
        #[source]
        source: BoxError,
    },
}

fn context_suffix(context: &Option<String>) -> String {
    match context {
        Some(c) => format!(" (context {c:?})"),
        None => String::new(),
    }
}

/// What the backend was doing when a cluster call failed: the error message names it.
#[derive(Clone, Debug)]
pub(crate) struct Action {
    /// `list deployments in namespace default`, `patch deployment default/helloworld-v1` …
    pub what: String,
    /// The RBAC permission the call needs (`patch deployments.apps`), named on 403.
    pub permission: String,
    /// The workload the call is about; a 404 then means [`BackendError::NotFound`].
    pub workload: Option<WorkloadRef>,
}

impl Action {
    pub(crate) fn new(what: impl Into<String>, permission: impl Into<String>) -> Self {
        Action { what: what.into(), permission: permission.into(), workload: None }
    }

    pub(crate) fn on(mut self, workload: &WorkloadRef) -> Self {
        self.workload = Some(workload.clone());
        self
    }
}

/// The HTTP code of an API error, when the error is one.
pub(crate) fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// What the API server answered, as the cause of a [`BackendError`]: its message (or reason,
/// or code when it sent neither).
#[derive(Debug, thiserror::Error)]
#[error("API server: {}", status_text(.0))]
pub struct ApiServerSaid(pub Box<kube::core::Status>);

fn status_text(s: &kube::core::Status) -> String {
    if !s.message.is_empty() {
        s.message.clone()
    } else if !s.reason.is_empty() {
        s.reason.clone()
    } else {
        format!("HTTP {}", s.code)
    }
}

/// The cause a kube-rs error stands for. kube-rs's own messages repeat their source
/// (`HyperError: <the hyper error>`), so the error kept as the cause is the one inside: the
/// context of the [`BackendError`] already says what kube-rs's wrapper adds ("cannot reach the
/// Kubernetes API server", "unexpected answer").
pub(crate) fn cause(err: kube::Error) -> BoxError {
    match err {
        kube::Error::Api(status) => Box::new(ApiServerSaid(status)),
        kube::Error::HyperError(e) => Box::new(e),
        kube::Error::Service(e) => e,
        kube::Error::ReadEvents(e) => Box::new(e),
        kube::Error::SerdeError(e) => Box::new(e),
        kube::Error::FromUtf8(e) => Box::new(e),
        kube::Error::HttpError(e) => Box::new(e),
        kube::Error::BuildRequest(e) => Box::new(e),
        kube::Error::Auth(e) => Box::new(e),
        kube::Error::RustlsTls(e) => Box::new(e),
        other => Box::new(other),
    }
}

/// Translates a kube-rs error into the variant the API maps to the right HTTP status, with
/// the API server's answer (or the transport's error) as its cause. Conflicts (409) are
/// translated by the caller, which knows the versions involved.
pub(crate) fn map_kube_error(err: kube::Error, action: &Action) -> BackendError {
    let what = &action.what;
    let error = match api_code(&err) {
        Some(401) => BackendError::forbidden(format!(
            "{what}: the API server did not accept meshpass's credentials (401); refresh the kubeconfig or the \
             service account token"
        )),
        Some(403) => BackendError::forbidden(format!(
            "{what}: RBAC forbids it; meshpass's account needs `{}`",
            action.permission
        )),
        Some(404) => match &action.workload {
            Some(w) => return BackendError::NotFound(w.clone()),
            None => BackendError::failed(format!("{what}: not found")),
        },
        Some(409) => BackendError::failed(format!("{what}: conflict")),
        Some(422) | Some(400) => {
            // The API server's reason is the item of the refusal: it goes in the list.
            let said = match &err {
                kube::Error::Api(s) => status_text(s),
                other => other.to_string(),
            };
            return BackendError::Invalid(vec![format!("{what}: the API server rejected it: {said}")]);
        }
        Some(429) => BackendError::unavailable(format!("{what}: the API server is throttling requests (429)")),
        Some(code) if code >= 500 => BackendError::unavailable(format!("{what}: the API server failed ({code})")),
        Some(code) => BackendError::failed(format!("{what}: the API server answered {code}")),
        None => match &err {
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                BackendError::unavailable(format!("{what}: cannot reach the Kubernetes API server"))
            }
            kube::Error::SerdeError(_) => {
                BackendError::failed(format!("{what}: unexpected answer from the API server"))
            }
            _ => BackendError::failed(what.clone()),
        },
    };
    error.caused_by(cause(err))
}

/// The error for an API call that took longer than the backend waits.
pub(crate) fn timed_out(action: &Action, after: Duration) -> BackendError {
    BackendError::unavailable(format!(
        "{}: the Kubernetes API server did not answer within {}s",
        action.what,
        after.as_secs()
    ))
}
