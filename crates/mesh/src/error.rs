//! Errors of the local mesh, each carrying the context needed to act on it.
//!
//! Every variant's `Display` says only what the mesh was doing; the cause (an I/O error, a
//! failed `ip`/`nft` command, a JSON error) travels as [`std::error::Error::source`]. Where an
//! error has to become text — a reply on the control socket, a progress line — [`report`]
//! writes the whole chain.

use meshpass_capture::linux::LinuxError;
use std::path::PathBuf;

/// A cause of another crate's kind, kept whole behind a [`MeshError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A system command (`ip`, `nft`) could not be run, or failed.
    #[error("{what}")]
    Command {
        /// What the mesh was doing (`creating network namespace mpm-node`).
        what: String,
        /// The command's failure: its command line, exit status and stderr.
        #[source]
        source: LinuxError,
    },
    /// A thread could not enter a network namespace.
    #[error("cannot enter network namespace {}", path.display())]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: LinuxError,
    },
    /// The mesh CA or a workload certificate could not be made, read or written.
    #[error("{what}")]
    Identity {
        /// What the mesh was doing (`issuing the certificate of pod default/sleep-…`).
        what: String,
        /// Why.
        #[source]
        source: meshpass_identity::IdentityError,
    },
    /// Applying or reading capture rules in a pod failed.
    #[error("capture rules for pod {pod}")]
    Capture {
        /// The pod.
        pod: String,
        /// Why.
        #[source]
        source: LinuxError,
    },
    /// The state file could not be read or written.
    #[error("state file {}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// No supervisor answers on the control socket.
    #[error("cannot reach the mesh supervisor at {} (is `meshpass up` running with this --state-dir?)", path.display())]
    NotRunning {
        /// The control socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control protocol (or a sidecar's admin answer) broke: bad JSON, a closed connection.
    #[error("control protocol: {what}")]
    Protocol {
        /// What went wrong, in words.
        what: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },
    /// A connection the mesh made itself (a check's request, a sidecar's admin port) failed.
    #[error("{what}")]
    Connection {
        /// What was being done (`connecting to 198.19.0.1:5000`).
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor refused or failed a request (its message, chain included).
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
    /// The supervisor is tearing the mesh down and takes no more work.
    #[error("the mesh is shutting down")]
    ShuttingDown,
    /// Another supervisor serves this state directory.
    #[error("a mesh supervisor is already running for {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// The supervisor's loop panicked (a bug); the mesh was torn down all the same.
    #[error("the supervisor's loop panicked; the mesh was torn down")]
    Panicked,
}

impl MeshError {
    /// An [`MeshError::Io`] for `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> MeshError {
        let path = path.into();
        move |source| MeshError::Io { what, path, source }
    }

    /// A [`MeshError::Protocol`] caused by `source`.
    pub fn protocol(what: impl Into<String>) -> impl FnOnce(Cause) -> MeshError {
        let what = what.into();
        move |source| MeshError::Protocol { what, source: Some(source) }
    }

    /// The error and its causes as one line (see [`report`]).
    pub fn report(&self) -> String {
        report(self)
    }
}

/// `err` followed by each of its sources, `: `-separated. A source whose text its parent
/// already shows (an error of another crate that prints its own cause) is not repeated.
pub fn report(err: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn io_errors_keep_their_cause_as_source_and_say_only_their_context() {
        let e = MeshError::io("cannot read", "/state/state.json")(std::io::Error::from(
            std::io::ErrorKind::PermissionDenied,
        ));
        assert_eq!(e.to_string(), "cannot read /state/state.json");
        let source = e.source().expect("the I/O error is the source");
        assert_eq!(source.to_string(), "permission denied");
        assert_eq!(e.report(), "cannot read /state/state.json: permission denied");
    }

    #[test]
    fn command_errors_carry_the_failed_command() {
        let e = MeshError::Command {
            what: "creating network namespace mpm-node".into(),
            source: LinuxError::Failed {
                command: "ip netns add mpm-node".into(),
                netns: "the current namespace".into(),
                status: 1,
                stderr: "File exists".into(),
            },
        };
        assert_eq!(e.to_string(), "creating network namespace mpm-node");
        let source = e.source().expect("source").to_string();
        assert!(source.contains("ip netns add mpm-node") && source.contains("File exists"), "{source}");
        assert!(e.report().starts_with("creating network namespace mpm-node: `ip netns add"), "{}", e.report());
    }

    #[test]
    fn report_does_not_repeat_a_cause_its_parent_already_prints() {
        // LinuxError::Spawn prints its io::Error itself and also returns it as its source.
        let e = MeshError::Command {
            what: "listing namespaces".into(),
            source: LinuxError::Spawn {
                program: "ip".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        };
        let r = e.report();
        assert_eq!(r.matches("entity not found").count(), 1, "{r}");
    }

    #[test]
    fn a_state_file_error_names_the_file_and_keeps_the_json_error() {
        let source = serde_json::from_str::<u32>("{").expect_err("bad json");
        let e = MeshError::State { path: "/s/state.json".into(), source };
        assert_eq!(e.to_string(), "state file /s/state.json");
        assert!(e.source().is_some_and(|s| s.to_string().contains("line 1")), "{}", e.report());
    }
}
