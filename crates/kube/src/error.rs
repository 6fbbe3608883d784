//! Errors: [`KubeError`] for connecting to a cluster, and the translation of kube-rs errors
//! (API server `Status` objects, transport failures, timeouts) into the management plane's
//! [`BackendError`], so that every failure reaches the user as a sentence naming what was
//! attempted and what the API server said — never as a crash or a silent no-op.

use meshpass_api::model::WorkloadRef;
use meshpass_api::BackendError;
use std::time::Duration;

/// Why [`crate::KubeBackend::connect`] could not produce a working client.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig (or the named context in it) could not be loaded.
    #[error("cannot load kubeconfig{}: {source}", context_suffix(.context))]
    Kubeconfig {
        /// The context asked for (`--context`), when one was.
        context: Option<String>,
        /// What kube-rs reported.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither a kubeconfig nor the in-cluster service account environment was found.
    #[error("no Kubernetes configuration: {source} (set KUBECONFIG, or run in a pod with a service account)")]
    Infer {
        /// What kube-rs reported.
        #[source]
        source: kube::config::InferConfigError,
    },
    /// The configuration was read but a client could not be built from it (TLS, auth plugin).
    #[error("cannot build a Kubernetes client for {cluster_url}: {source}")]
    Client {
        /// The API server the configuration names.
        cluster_url: String,
        /// What kube-rs reported.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer `GET /version`.
    #[error("cannot reach the Kubernetes API server at {cluster_url}: {reason}")]
    Unreachable {
        /// The API server the configuration names.
        cluster_url: String,
        /// Why (connection refused, TLS, timeout, 401 …).
        reason: String,
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

/// The API server's own message, or kube-rs's description of a transport error.
fn server_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        kube::Error::Api(status) if !status.reason.is_empty() => status.reason.clone(),
        kube::Error::Api(status) => format!("HTTP {}", status.code),
        other => other.to_string(),
    }
}

/// Translates a kube-rs error into the variant the API maps to the right HTTP status.
/// Conflicts (409) are translated by the caller, which knows the versions involved.
pub(crate) fn map_kube_error(err: kube::Error, action: &Action) -> BackendError {
    let msg = server_message(&err);
    match api_code(&err) {
        Some(401) => BackendError::Forbidden(format!(
            "{}: the API server did not accept meshpass's credentials (401: {msg}); refresh the kubeconfig or the service account token",
            action.what
        )),
        Some(403) => BackendError::Forbidden(format!(
            "{}: RBAC forbids it; meshpass's account needs `{}` (API server: {msg})",
            action.what, action.permission
        )),
        Some(404) => match &action.workload {
            Some(w) => BackendError::NotFound(w.clone()),
            None => BackendError::Failed(format!("{}: not found (API server: {msg})", action.what)),
        },
        Some(409) => BackendError::Failed(format!("{}: conflict (API server: {msg})", action.what)),
        Some(422) | Some(400) => BackendError::Invalid(vec![format!("{}: the API server rejected it: {msg}", action.what)]),
        Some(429) => BackendError::Unavailable(format!("{}: the API server is throttling requests (429: {msg})", action.what)),
        Some(code) if code >= 500 => {
            BackendError::Unavailable(format!("{}: the API server failed ({code}: {msg})", action.what))
        }
        Some(code) => BackendError::Failed(format!("{}: the API server answered {code}: {msg}", action.what)),
        None => match &err {
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                BackendError::Unavailable(format!("{}: cannot reach the Kubernetes API server: {}", action.what, chain(&err)))
            }
            kube::Error::SerdeError(_) => {
                BackendError::Failed(format!("{}: unexpected answer from the API server: {msg}", action.what))
            }
            _ => BackendError::Failed(format!("{}: {}", action.what, chain(&err))),
        },
    }
}

/// The error with its sources, so that "connection refused" under "service error" shows.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// The error for an API call that took longer than the backend waits.
pub(crate) fn timed_out(action: &Action, after: Duration) -> BackendError {
    BackendError::Unavailable(format!(
        "{}: the Kubernetes API server did not answer within {}s",
        action.what,
        after.as_secs()
    ))
}
