//! Error types. [`ProxyError`] is what starting or running the proxy can fail with;
//! [`UpstreamError`] classifies per-request failures into the status codes Envoy would send.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::StatusCode;

/// Failure to start or run the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("bind {listener} listener on {addr}: {source}")]
    Bind {
        /// Which listener (`outbound`, `inbound`, `admin`, ...).
        listener: &'static str,
        /// The address requested.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The listeners could not be registered with eBPF capture.
    #[error("registering the {listener} listener with eBPF capture (is `meshpass iptables --ebpf` applied in this network namespace, and the bpf file system visible at /sys/fs/bpf? `ip netns exec` remounts /sys and hides it: enter the namespace with `nsenter --net=...`): {reason}")]
    Ebpf {
        /// Which listener.
        listener: &'static str,
        /// What failed.
        reason: String,
    },
    /// The interception mode is `NONE`: nothing is captured, so no original destination can
    /// be recovered.
    #[error("interception mode NONE captures nothing, so there is nothing for the sidecar to intercept (use REDIRECT, TPROXY or EBPF)")]
    NoInterception,
    /// A background task panicked or was cancelled.
    #[error("proxy task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The mesh config or the workload credentials cannot be used.
    #[error("cannot start with the mesh's files")]
    Mesh(#[from] crate::mesh::MeshLoadError),
    /// Setting up the process (runtime, signal handlers) failed.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a request could not be forwarded upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Binding the source address (e.g. 127.0.0.6) failed.
    #[error("cannot bind source address {source_ip} to reach {addr}: {source}")]
    BindSource {
        /// Source address requested.
        source_ip: IpAddr,
        /// Destination.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The TCP connect failed (refused, unreachable, ...).
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// Destination.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The TCP connect did not finish in time.
    #[error("connect to {addr} timed out after {}ms", timeout.as_millis())]
    ConnectTimeout {
        /// Destination.
        addr: SocketAddr,
        /// The configured limit.
        timeout: Duration,
    },
    /// The HTTP/1 client handshake failed.
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        /// Destination.
        addr: SocketAddr,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The upstream closed or reset before sending response headers.
    #[error("upstream {addr} disconnected or reset before response headers: {source}")]
    Reset {
        /// Destination.
        addr: SocketAddr,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// No response headers within the response timeout.
    #[error("upstream {addr} sent no response headers within {}ms", timeout.as_millis())]
    ResponseTimeout {
        /// Destination.
        addr: SocketAddr,
        /// The configured limit.
        timeout: Duration,
    },
    /// The TLS handshake with the upstream failed or its certificate was refused.
    #[error("TLS handshake with {addr} failed: {failure}")]
    Tls {
        /// Destination.
        addr: SocketAddr,
        /// Why, classified.
        failure: crate::tls::TlsFailure,
    },
    /// The mesh lists the Service but none of its endpoints.
    #[error("no healthy upstream: {service} has no ready endpoint")]
    NoHealthyUpstream {
        /// `NS/NAME`.
        service: String,
    },
}

impl UpstreamError {
    /// The status sent downstream: 504 for a response timeout, 503 for everything that
    /// means "could not get a response from the upstream" (Envoy's UF/UC/URX → 503).
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The typed outcome: Envoy's flag (`UF` for failed connects, `UC` for resets, `UT` for
    /// the response timeout) and who caused it (a source address that cannot be bound is the
    /// proxy's own problem).
    pub fn outcome(&self) -> crate::outcome::Outcome {
        use crate::outcome::{Flag, Outcome, Source};
        let flag = match self {
            UpstreamError::Reset { .. } => Flag::UpstreamConnectionTermination,
            UpstreamError::ResponseTimeout { .. } => Flag::UpstreamRequestTimeout,
            _ => Flag::UpstreamConnectionFailure,
        };
        let o = Outcome::new(flag, self.kind());
        match self {
            UpstreamError::BindSource { .. } => o.with_source(Source::Local),
            _ => o,
        }
    }

    /// Short reason for logs, the connection record and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::BindSource { .. } => "bind_source",
            UpstreamError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused => {
                "connection_refused"
            }
            UpstreamError::Connect { .. } => "connect_failure",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::Handshake { .. } => "handshake",
            UpstreamError::Reset { .. } => "upstream_reset",
            UpstreamError::ResponseTimeout { .. } => "upstream_timeout",
            UpstreamError::Tls { .. } => "tls_handshake",
            UpstreamError::NoHealthyUpstream { .. } => "no_healthy_upstream",
        }
    }
}
