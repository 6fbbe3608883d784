//! How a request or connection ended, as a typed value: who caused it ([`Source`]), Envoy's
//! response flag for it ([`Flag`]) and a short detail. The same value feeds the connection
//! record (`/connections`), the access log and the metric labels, so they cannot disagree.
//!
//! The flags are Envoy's (`%RESPONSE_FLAGS%`, the `response_flags` label of Istio's metrics):
//! an operator who knows `UF` or `DPE` from an Istio sidecar reads meshpass's the same way.
//! The source says whose fault it was, as pingora's `ErrorSource` does: the client
//! (downstream), the app or remote server (upstream), or the proxy itself (local).

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;

/// Who caused an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The client: malformed or refused input, a reset, a client too slow to send its request.
    Downstream,
    /// The app or remote server: refused or failed connections, resets, timeouts.
    Upstream,
    /// The proxy: its own limits, its drain, a connection that was not redirected.
    Local,
}

impl Source {
    /// Lower-case label for metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Downstream => "downstream",
            Source::Upstream => "upstream",
            Source::Local => "local",
        }
    }
}

/// Envoy's response flags (the subset a sidecar without retries or rate limits can produce).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Flag {
    /// `DPE`: downstream protocol error (malformed or refused request).
    DownstreamProtocolError,
    /// `DC`: downstream connection termination (the client went away mid-exchange).
    DownstreamConnectionTermination,
    /// `UF`: upstream connection failure (refused, unreachable, connect timeout).
    UpstreamConnectionFailure,
    /// `UC`: upstream connection termination (closed or reset before or during the response).
    UpstreamConnectionTermination,
    /// `UR`: upstream remote reset (an HTTP/2 stream reset by the upstream).
    UpstreamRemoteReset,
    /// `UT`: upstream request timeout (no response headers within the response timeout).
    UpstreamRequestTimeout,
    /// `UPE`: upstream protocol error (an answer that is not valid HTTP).
    UpstreamProtocolError,
    /// `NR`: no route (no original destination, a direct connection to the proxy, `CONNECT`).
    NoRoute,
    /// `SI`: idle or header-read timeout.
    StreamIdleTimeout,
    /// `LR`: connection reset locally (forced at the end of a drain).
    LocalReset,
    /// `OM`: overload (the connection limit).
    OverloadManager,
}

impl Flag {
    /// Envoy's short code.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::DownstreamProtocolError => "DPE",
            Flag::DownstreamConnectionTermination => "DC",
            Flag::UpstreamConnectionFailure => "UF",
            Flag::UpstreamConnectionTermination => "UC",
            Flag::UpstreamRemoteReset => "UR",
            Flag::UpstreamRequestTimeout => "UT",
            Flag::UpstreamProtocolError => "UPE",
            Flag::NoRoute => "NR",
            Flag::StreamIdleTimeout => "SI",
            Flag::LocalReset => "LR",
            Flag::OverloadManager => "OM",
        }
    }

    /// Every flag, for metric rendering.
    pub const ALL: [Flag; 11] = [
        Flag::DownstreamProtocolError,
        Flag::DownstreamConnectionTermination,
        Flag::UpstreamConnectionFailure,
        Flag::UpstreamConnectionTermination,
        Flag::UpstreamRemoteReset,
        Flag::UpstreamRequestTimeout,
        Flag::UpstreamProtocolError,
        Flag::NoRoute,
        Flag::StreamIdleTimeout,
        Flag::LocalReset,
        Flag::OverloadManager,
    ];

    /// Position in [`Flag::ALL`] (metric slot).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Who a flag blames unless the case says otherwise ([`Outcome::with_source`]).
    pub fn default_source(self) -> Source {
        match self {
            Flag::DownstreamProtocolError | Flag::DownstreamConnectionTermination => Source::Downstream,
            Flag::UpstreamConnectionFailure
            | Flag::UpstreamConnectionTermination
            | Flag::UpstreamRemoteReset
            | Flag::UpstreamRequestTimeout
            | Flag::UpstreamProtocolError => Source::Upstream,
            Flag::NoRoute | Flag::StreamIdleTimeout | Flag::LocalReset | Flag::OverloadManager => Source::Local,
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one request or connection failed: the flag, who caused it and a detail (Envoy's
/// `%RESPONSE_CODE_DETAILS%` where there is one, e.g. `http1.codec_error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Envoy's response flag.
    pub flag: Flag,
    /// Who caused it.
    pub source: Source,
    /// Short machine-readable detail, then optionally `: ` and a human explanation.
    pub detail: Cow<'static, str>,
}

impl Outcome {
    /// An outcome with the flag's usual source.
    pub fn new(flag: Flag, detail: impl Into<Cow<'static, str>>) -> Self {
        Self { flag, source: flag.default_source(), detail: detail.into() }
    }

    /// The same outcome blamed on `source`.
    pub fn with_source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.detail, self.flag, self.source.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_index_their_slot_and_blame_by_default() {
        for (i, f) in Flag::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
        assert_eq!(Outcome::new(Flag::UpstreamConnectionFailure, "x").source, Source::Upstream);
        assert_eq!(Outcome::new(Flag::DownstreamProtocolError, "x").source, Source::Downstream);
        let o = Outcome::new(Flag::UpstreamConnectionFailure, "bind_source").with_source(Source::Local);
        assert_eq!(o.to_string(), "bind_source (UF, local)");
    }
}
