//! Errors of the local mesh, each carrying the context needed to act on it.

use std::path::PathBuf;

/// Everything that can go wrong in the local mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The manifest could not be accepted; every problem is listed, nothing was applied.
    #[error("rejected, nothing was changed:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    /// The mesh needs privileges the process does not have.
    #[error("the local mesh needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces: {0}")]
    NotRoot(String),
    /// A file or socket operation failed.
    #[error("{what} {}: {error}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        error: std::io::Error,
    },
    /// A system command (`ip`, `nft`) failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// Applying capture rules in a pod failed.
    #[error("capture rules for pod {pod}: {error}")]
    Capture {
        /// The pod.
        pod: String,
        /// Why.
        error: meshpass_capture::linux::LinuxError,
    },
    /// The state file could not be read or written.
    #[error("state file {}: {reason}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No supervisor answers on the control socket.
    #[error("cannot reach the mesh supervisor at {}: {error} (is `meshpass up` running with this --state-dir?)", path.display())]
    NotRunning {
        /// The control socket.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The control protocol broke (bad JSON, closed connection).
    #[error("control protocol: {0}")]
    Protocol(String),
    /// The supervisor refused or failed a request.
    #[error("{0}")]
    Remote(String),
    /// An address range ran out.
    #[error("no free address left in {0}")]
    Exhausted(String),
    /// A Deployment does not exist (kept structured so the API can name it).
    #[error("deployment {namespace}/{name} not found")]
    WorkloadNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Some other object was not found (what it is, in words).
    #[error("{0} not found")]
    NotFound(String),
    /// A write named a resource version the object no longer has.
    #[error("{workload} changed since version {expected} (now {actual}); nothing was written")]
    Conflict {
        /// `namespace/name`.
        workload: String,
        /// The version the write was based on.
        expected: String,
        /// The current version.
        actual: String,
    },
    /// A wait ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl MeshError {
    /// An [`MeshError::Io`] for `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> MeshError {
        let path = path.into();
        move |error| MeshError::Io { what, path, error }
    }
}
