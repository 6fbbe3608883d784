//! Proxy configuration: a plain struct with Istio-like defaults, and a pure constructor from
//! environment variables.
//!
//! The environment is *injected* ([`ProxyConfig::from_env`] takes a lookup function) so that
//! tests pass a map instead of mutating the process environment. Every variable name is a
//! `pub const ENV_*` below; unset variables keep the default, set ones are validated and all
//! problems are reported at once ([`ConfigErrors`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub use meshpass_settings::InterceptionMode;
use serde::Serialize;

use crate::mesh::MeshSettings;
use crate::protocol::PortProtocols;

/// Default outbound capture port (Istio `ISTIO_REDIRECT` → 15001).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Default inbound capture port (Istio `ISTIO_IN_REDIRECT` → 15006).
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Default admin port (Envoy admin: `/config_dump`, `/connections`, ...).
pub const DEFAULT_ADMIN_PORT: u16 = 15000;
/// Default readiness port (`GET /healthz/ready`).
pub const DEFAULT_READINESS_PORT: u16 = 15021;
/// Default Prometheus port (`GET /stats/prometheus`).
pub const DEFAULT_PROMETHEUS_PORT: u16 = 15090;

/// `host:port` of the outbound listener (default `0.0.0.0:15001`).
pub const ENV_OUTBOUND_ADDR: &str = "MESHPASS_PROXY_OUTBOUND_ADDR";
/// `host:port` of the inbound listener (default `0.0.0.0:15006`).
pub const ENV_INBOUND_ADDR: &str = "MESHPASS_PROXY_INBOUND_ADDR";
/// `host:port` of the admin listener (default `127.0.0.1:15000`; `off` disables it).
pub const ENV_ADMIN_ADDR: &str = "MESHPASS_PROXY_ADMIN_ADDR";
/// `host:port` of the readiness listener (default `0.0.0.0:15021`; `off` disables it).
pub const ENV_READINESS_ADDR: &str = "MESHPASS_PROXY_READINESS_ADDR";
/// `host:port` of the Prometheus listener (default `0.0.0.0:15090`; `off` disables it).
pub const ENV_PROMETHEUS_ADDR: &str = "MESHPASS_PROXY_PROMETHEUS_ADDR";
/// `REDIRECT` (default) or `TPROXY`: how the original destination is recovered.
pub const ENV_INTERCEPTION_MODE: &str = "MESHPASS_PROXY_INTERCEPTION_MODE";
/// IPv4 source address of inbound upstream connections (default `127.0.0.6`; `off` = unbound).
pub const ENV_INBOUND_SOURCE_V4: &str = "MESHPASS_PROXY_INBOUND_SOURCE_V4";
/// IPv6 source address of inbound upstream connections (default `::6`; `off` = unbound).
pub const ENV_INBOUND_SOURCE_V6: &str = "MESHPASS_PROXY_INBOUND_SOURCE_V6";
/// If set, inbound connections go to `<this IP>:<original port>` instead of the original
/// destination (e.g. `127.0.0.1` for apps that listen on localhost only). Unset by default.
pub const ENV_INBOUND_UPSTREAM_OVERRIDE: &str = "MESHPASS_PROXY_INBOUND_UPSTREAM_OVERRIDE";
/// Services this workload backs, `fqdn:port[/targetPort]`, comma separated. Used for
/// `x-envoy-decorator-operation: <fqdn>:<port>/*` on inbound responses.
pub const ENV_SERVICES: &str = "MESHPASS_PROXY_SERVICES";
/// `server` header written on inbound responses (default `istio-envoy`; `off` = pass through).
pub const ENV_INBOUND_SERVER_HEADER: &str = "MESHPASS_PROXY_INBOUND_SERVER_HEADER";
/// `server` header written on outbound responses (default `envoy`; `off` = pass through).
pub const ENV_OUTBOUND_SERVER_HEADER: &str = "MESHPASS_PROXY_OUTBOUND_SERVER_HEADER";
/// `true` (default) / `false`: emit `x-envoy-upstream-service-time` and `x-envoy-attempt-count`.
pub const ENV_ENVOY_DEBUG_HEADERS: &str = "MESHPASS_PROXY_ENVOY_DEBUG_HEADERS";
/// `true` (default) / `false`: forward plain keep-alive HTTP/1 `GET` exchanges without hyper
/// (the same bytes either way; `false` sends every request through hyper).
pub const ENV_H1_FAST_LANE: &str = "MESHPASS_PROXY_H1_FAST_LANE";
/// Protocol sniffing timeout, e.g. `200ms` (default). A client silent this long is opaque TCP.
pub const ENV_SNIFF_TIMEOUT: &str = "MESHPASS_PROXY_SNIFF_TIMEOUT";
/// Upstream TCP connect timeout (default `10s`, Istio's `connectTimeout`).
pub const ENV_CONNECT_TIMEOUT: &str = "MESHPASS_PROXY_CONNECT_TIMEOUT";
/// Time allowed for the upstream's response headers (default `0`: disabled, as Istio's default
/// route timeout).
pub const ENV_RESPONSE_TIMEOUT: &str = "MESHPASS_PROXY_RESPONSE_TIMEOUT";
/// Time allowed for a client to send a complete request head (default `30s`).
pub const ENV_HEADER_READ_TIMEOUT: &str = "MESHPASS_PROXY_HEADER_READ_TIMEOUT";
/// A connection with no bytes in either direction for this long is closed (default `1h`).
pub const ENV_IDLE_TIMEOUT: &str = "MESHPASS_PROXY_IDLE_TIMEOUT";
/// How long in-flight connections may finish after shutdown starts (default `5s`).
pub const ENV_DRAIN_TIMEOUT: &str = "MESHPASS_PROXY_DRAIN_TIMEOUT";
/// Largest request head in bytes (default 61440 = Envoy's 60 KiB; minimum 8192).
pub const ENV_MAX_REQUEST_HEADER_BYTES: &str = "MESHPASS_PROXY_MAX_REQUEST_HEADER_BYTES";
/// Most header fields in a request (default 100, as Envoy).
pub const ENV_MAX_HEADERS: &str = "MESHPASS_PROXY_MAX_HEADERS";
/// Most concurrent downstream connections, inbound + outbound (default 65536).
pub const ENV_MAX_CONNECTIONS: &str = "MESHPASS_PROXY_MAX_CONNECTIONS";
/// Most idle pooled upstream connections per destination (default 64).
pub const ENV_POOL_MAX_IDLE: &str = "MESHPASS_PROXY_POOL_MAX_IDLE";
/// Idle pooled upstream connections older than this are closed (default `60s`).
pub const ENV_POOL_IDLE_TIMEOUT: &str = "MESHPASS_PROXY_POOL_IDLE_TIMEOUT";
/// How many finished connections `/connections` remembers (default 1024).
pub const ENV_CONNECTION_LOG_CAPACITY: &str = "MESHPASS_PROXY_CONNECTION_LOG_CAPACITY";
/// Tokio worker threads for [`crate::build_runtime`] (default 0 = current-thread runtime).
pub const ENV_WORKER_THREADS: &str = "MESHPASS_PROXY_WORKER_THREADS";
/// Inbound port protocols, `PORT=NAME[/APPPROTOCOL],...` keyed by the port the app listens on
/// (see [`crate::protocol`]). Ports not listed are sniffed.
pub const ENV_INBOUND_PORTS: &str = "MESHPASS_PROXY_INBOUND_PORTS";
/// Outbound port protocols, `PORT=NAME[/APPPROTOCOL],...` keyed by the Service port.
pub const ENV_OUTBOUND_PORTS: &str = "MESHPASS_PROXY_OUTBOUND_PORTS";
/// `true` accepts HTTP/1.0 requests (Istio's `ISTIO_META_HTTP10=1`); default `false`: they get
/// 426, as from Istio's sidecar.
pub const ENV_HTTP10: &str = "MESHPASS_PROXY_HTTP10";
/// Most concurrent connections per admin listener (admin, readiness, Prometheus; default 64).
pub const ENV_ADMIN_MAX_CONNECTIONS: &str = "MESHPASS_PROXY_ADMIN_MAX_CONNECTIONS";
/// Time an admin-port client has for its request head, and between keep-alive requests
/// (default `5s`).
pub const ENV_ADMIN_HEADER_TIMEOUT: &str = "MESHPASS_PROXY_ADMIN_HEADER_TIMEOUT";
/// An admin-port connection that moves no byte this long is closed (default `30s`).
pub const ENV_ADMIN_IDLE_TIMEOUT: &str = "MESHPASS_PROXY_ADMIN_IDLE_TIMEOUT";
/// Most concurrent HTTP/2 streams per downstream connection (default 1024).
pub const ENV_H2_MAX_CONCURRENT_STREAMS: &str = "MESHPASS_PROXY_H2_MAX_CONCURRENT_STREAMS";
/// Access log: `off` (default, as Istio's default profile), `stdout` or `stderr`.
pub const ENV_ACCESS_LOG: &str = "MESHPASS_PROXY_ACCESS_LOG";

/// Every environment variable [`ProxyConfig::from_env`] reads, for documentation and `--help`.
pub const ALL_ENV_VARS: &[&str] = &[
    ENV_OUTBOUND_ADDR,
    ENV_INBOUND_ADDR,
    ENV_ADMIN_ADDR,
    ENV_READINESS_ADDR,
    ENV_PROMETHEUS_ADDR,
    ENV_INTERCEPTION_MODE,
    ENV_INBOUND_SOURCE_V4,
    ENV_INBOUND_SOURCE_V6,
    ENV_INBOUND_UPSTREAM_OVERRIDE,
    ENV_SERVICES,
    ENV_INBOUND_SERVER_HEADER,
    ENV_OUTBOUND_SERVER_HEADER,
    ENV_ENVOY_DEBUG_HEADERS,
    ENV_H1_FAST_LANE,
    ENV_SNIFF_TIMEOUT,
    ENV_CONNECT_TIMEOUT,
    ENV_RESPONSE_TIMEOUT,
    ENV_HEADER_READ_TIMEOUT,
    ENV_IDLE_TIMEOUT,
    ENV_DRAIN_TIMEOUT,
    ENV_MAX_REQUEST_HEADER_BYTES,
    ENV_MAX_HEADERS,
    ENV_MAX_CONNECTIONS,
    ENV_POOL_MAX_IDLE,
    ENV_POOL_IDLE_TIMEOUT,
    ENV_CONNECTION_LOG_CAPACITY,
    ENV_WORKER_THREADS,
    crate::mesh::ENV_MESH_CONFIG,
    crate::mesh::ENV_CERT_DIR,
    crate::mesh::ENV_RELOAD_INTERVAL,
    crate::mesh::ENV_TLS_HANDSHAKE_TIMEOUT,
    ENV_INBOUND_PORTS,
    ENV_OUTBOUND_PORTS,
    ENV_HTTP10,
    ENV_ACCESS_LOG,
    ENV_ADMIN_MAX_CONNECTIONS,
    ENV_ADMIN_HEADER_TIMEOUT,
    ENV_ADMIN_IDLE_TIMEOUT,
    ENV_H2_MAX_CONCURRENT_STREAMS,
];

/// Where the access log goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    /// No access log (Istio's default profile).
    Off,
    /// One line per request / TCP connection on standard output.
    Stdout,
    /// The same on standard error.
    Stderr,
}

/// One Kubernetes service this workload backs, for the inbound tracing decorator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceBinding {
    /// Service FQDN, e.g. `reviews.default.svc.cluster.local`.
    pub fqdn: String,
    /// Service port, used in the decorator value `<fqdn>:<port>/*`.
    pub port: u16,
    /// Container port the service targets; inbound connections to this port match.
    /// `None` means the same as `port`.
    pub target_port: Option<u16>,
}

impl ServiceBinding {
    /// The port inbound connections arrive on for this service.
    pub fn effective_target_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

/// Everything the sidecar needs to run. Build it with [`ProxyConfig::default`] (Istio-like
/// defaults) or [`ProxyConfig::from_env`], then adjust fields.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyConfig {
    /// Outbound listener (`ISTIO_REDIRECT` target). Default `0.0.0.0:15001`.
    pub outbound_addr: SocketAddr,
    /// Inbound listener (`ISTIO_IN_REDIRECT` target). Default `0.0.0.0:15006`.
    pub inbound_addr: SocketAddr,
    /// Admin listener (`/config_dump`, `/connections`, also `/stats/prometheus` and
    /// `/healthz/ready`). Default `127.0.0.1:15000`; `None` disables it.
    pub admin_addr: Option<SocketAddr>,
    /// Readiness listener (`/healthz/ready`). Default `0.0.0.0:15021`; `None` disables it.
    pub readiness_addr: Option<SocketAddr>,
    /// Prometheus listener (`/stats/prometheus`). Default `0.0.0.0:15090`; `None` disables it.
    pub prometheus_addr: Option<SocketAddr>,
    /// How the original destination is recovered. Default [`InterceptionMode::Redirect`].
    pub interception_mode: InterceptionMode,
    /// Source address bound before connecting to the app for IPv4 inbound traffic. Istio uses
    /// `127.0.0.6` so that the `-o lo -s 127.0.0.6/32 -j RETURN` rule exempts it from capture.
    pub inbound_source_v4: Option<Ipv4Addr>,
    /// Source address for IPv6 inbound traffic (Istio: `::6`, which must exist on `lo`).
    pub inbound_source_v6: Option<Ipv6Addr>,
    /// Connect inbound traffic to `<this IP>:<original port>` instead of the original
    /// destination. `None` (default) keeps Istio's behaviour: connect to the pod IP:port.
    pub inbound_upstream_override: Option<IpAddr>,
    /// Services backed by this workload (for `x-envoy-decorator-operation`).
    pub services: Vec<ServiceBinding>,
    /// `server` header value on inbound responses; `None` passes the app's header through.
    /// Default `istio-envoy` (Envoy's OVERWRITE transformation, as Istio configures inbound).
    pub inbound_server_header: Option<String>,
    /// `server` header value on outbound responses; `None` passes through. Default `envoy`
    /// (Istio leaves the outbound listener's server name empty, so Envoy's default applies).
    pub outbound_server_header: Option<String>,
    /// Emit `x-envoy-upstream-service-time` (responses) and `x-envoy-attempt-count`
    /// (outbound requests). Istio's `proxyHeaders.envoyDebugHeaders.disabled` turns these off.
    pub envoy_debug_headers: bool,
    /// Forward plain keep-alive HTTP/1 `GET` exchanges (a response with `Content-Length`)
    /// without hyper: one parse and one buffer per direction, the same bytes on the wire as
    /// through hyper. Default on.
    pub h1_fast_lane: bool,
    /// How long to wait for the client's first bytes before treating the connection as opaque
    /// TCP (server-first protocols such as MySQL or SMTP). Default 200 ms.
    #[serde(with = "ms")]
    pub sniff_timeout: Duration,
    /// Upstream TCP connect timeout; expiry answers HTTP with 503. Default 10 s.
    #[serde(with = "ms")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response headers; expiry answers 504. `None` (default)
    /// disables it, as Istio sets `timeout: 0s` on its routes.
    #[serde(with = "opt_ms")]
    pub response_timeout: Option<Duration>,
    /// Time allowed for a client to deliver a full request head; the connection is closed
    /// after it (slowloris protection). hyper arms it whenever it waits for a head, so it also
    /// bounds the idle gap between keep-alive requests. Default 30 s.
    #[serde(with = "ms")]
    pub header_read_timeout: Duration,
    /// A connection with no bytes read or written for this long is closed. Default 1 h
    /// (Envoy's default idle timeout).
    #[serde(with = "ms")]
    pub idle_timeout: Duration,
    /// After shutdown starts, in-flight connections get this long to finish. Default 5 s
    /// (Istio's `terminationDrainDuration`).
    #[serde(with = "ms")]
    pub drain_timeout: Duration,
    /// Largest request head accepted, in bytes (larger gets 431). Default 60 KiB; min 8192.
    pub max_request_header_bytes: usize,
    /// Most header fields per request. Default 100.
    pub max_headers: usize,
    /// Most concurrent downstream connections (inbound + outbound); further connections are
    /// accepted and closed immediately, and counted. Default 65536.
    pub max_connections: usize,
    /// Most idle pooled upstream connections kept per destination. Default 64.
    pub pool_max_idle_per_upstream: usize,
    /// Idle pooled upstream connections are closed after this. Default 60 s.
    #[serde(with = "ms")]
    pub pool_idle_timeout: Duration,
    /// Capacity of the ring of finished connections shown at `/connections`. Default 1024.
    pub connection_log_capacity: usize,
    /// Worker threads for [`crate::build_runtime`]: 0 = current-thread runtime (default), N =
    /// multi-thread runtime with N workers. The current-thread runtime has no cross-thread
    /// wake-ups, and a sidecar should not compete with its app for cores.
    pub worker_threads: usize,
    /// The mesh config and credential files ([`crate::mesh`]).
    pub mesh: MeshSettings,
    /// Inbound port protocols (by the app's port); unlisted ports are sniffed.
    pub inbound_ports: PortProtocols,
    /// Outbound port protocols (by the Service port); unlisted ports are sniffed.
    pub outbound_ports: PortProtocols,
    /// Accept HTTP/1.0 requests (Istio's `HTTP10` switch). Default `false`: 426.
    pub accept_http_10: bool,
    /// Access log destination. Default off.
    pub access_log: AccessLog,
    /// Most concurrent connections per admin listener. Default 64.
    pub admin_max_connections: usize,
    /// Request-head (and keep-alive gap) timeout on the admin listeners. Default 5 s.
    #[serde(with = "ms")]
    pub admin_header_timeout: Duration,
    /// Idle timeout on the admin listeners. Default 30 s.
    #[serde(with = "ms")]
    pub admin_idle_timeout: Duration,
    /// HTTP/2 windows and stream limit (both sides).
    pub h2: crate::pool::H2Settings,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Self {
            outbound_addr: SocketAddr::new(any, DEFAULT_OUTBOUND_PORT),
            inbound_addr: SocketAddr::new(any, DEFAULT_INBOUND_PORT),
            admin_addr: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_ADMIN_PORT)),
            readiness_addr: Some(SocketAddr::new(any, DEFAULT_READINESS_PORT)),
            prometheus_addr: Some(SocketAddr::new(any, DEFAULT_PROMETHEUS_PORT)),
            interception_mode: InterceptionMode::Redirect,
            inbound_source_v4: Some(Ipv4Addr::new(127, 0, 0, 6)),
            inbound_source_v6: Some(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
            inbound_upstream_override: None,
            services: Vec::new(),
            inbound_server_header: Some("istio-envoy".to_owned()),
            outbound_server_header: Some("envoy".to_owned()),
            envoy_debug_headers: true,
            h1_fast_lane: true,
            sniff_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(10),
            response_timeout: None,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(5),
            max_request_header_bytes: 60 * 1024,
            max_headers: 100,
            max_connections: 65536,
            pool_max_idle_per_upstream: 64,
            pool_idle_timeout: Duration::from_secs(60),
            connection_log_capacity: 1024,
            worker_threads: 0,
            mesh: MeshSettings::default(),
            inbound_ports: PortProtocols::default(),
            outbound_ports: PortProtocols::default(),
            accept_http_10: false,
            access_log: AccessLog::Off,
            admin_max_connections: 64,
            admin_header_timeout: Duration::from_secs(5),
            admin_idle_timeout: Duration::from_secs(30),
            h2: crate::pool::H2Settings::default(),
        }
    }
}

/// One invalid environment variable: the key, the offending value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for {key}: {reason}")]
pub struct ConfigError {
    /// Variable name.
    pub key: &'static str,
    /// The value found.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

/// All invalid variables found by [`ProxyConfig::from_env`], reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ProxyConfig {
    /// Build a config from environment variables looked up through `get` (pass
    /// `&|k| std::env::var(k).ok()` in production, a map lookup in tests). Unset variables
    /// keep [`ProxyConfig::default`]'s values. Every invalid variable is reported.
    pub fn from_env(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut c = Self::default();
        let mut errs = Vec::new();
        let mut field = |key: &'static str, apply: &mut dyn FnMut(&str) -> Result<(), String>| {
            if let Some(v) = get(key) {
                if let Err(reason) = apply(v.trim()) {
                    errs.push(ConfigError { key, value: v, reason });
                }
            }
        };
        field(ENV_OUTBOUND_ADDR, &mut |v| set(&mut c.outbound_addr, v.parse()));
        field(ENV_INBOUND_ADDR, &mut |v| set(&mut c.inbound_addr, v.parse()));
        field(ENV_ADMIN_ADDR, &mut |v| set(&mut c.admin_addr, parse_opt(v)));
        field(ENV_READINESS_ADDR, &mut |v| set(&mut c.readiness_addr, parse_opt(v)));
        field(ENV_PROMETHEUS_ADDR, &mut |v| set(&mut c.prometheus_addr, parse_opt(v)));
        field(ENV_INTERCEPTION_MODE, &mut |v| {
            c.interception_mode = match v.to_ascii_uppercase().as_str() {
                "REDIRECT" => InterceptionMode::Redirect,
                "TPROXY" => InterceptionMode::Tproxy,
                "EBPF" => InterceptionMode::Ebpf,
                "NONE" => {
                    return Err("NONE captures nothing, so there is nothing for the sidecar to intercept: \
                                expected REDIRECT, TPROXY or EBPF"
                        .to_owned())
                }
                _ => return Err("expected REDIRECT, TPROXY or EBPF".to_owned()),
            };
            Ok(())
        });
        field(ENV_INBOUND_SOURCE_V4, &mut |v| set(&mut c.inbound_source_v4, parse_opt(v)));
        field(ENV_INBOUND_SOURCE_V6, &mut |v| set(&mut c.inbound_source_v6, parse_opt(v)));
        field(ENV_INBOUND_UPSTREAM_OVERRIDE, &mut |v| set(&mut c.inbound_upstream_override, parse_opt(v)));
        field(ENV_SERVICES, &mut |v| {
            c.services = parse_services(v)?;
            Ok(())
        });
        field(ENV_INBOUND_SERVER_HEADER, &mut |v| {
            c.inbound_server_header = parse_header_value(v)?;
            Ok(())
        });
        field(ENV_OUTBOUND_SERVER_HEADER, &mut |v| {
            c.outbound_server_header = parse_header_value(v)?;
            Ok(())
        });
        field(ENV_ENVOY_DEBUG_HEADERS, &mut |v| {
            c.envoy_debug_headers = parse_bool(v)?;
            Ok(())
        });
        field(ENV_H1_FAST_LANE, &mut |v| {
            c.h1_fast_lane = parse_bool(v)?;
            Ok(())
        });
        field(ENV_SNIFF_TIMEOUT, &mut |v| {
            c.sniff_timeout = parse_duration(v)?;
            Ok(())
        });
        field(ENV_CONNECT_TIMEOUT, &mut |v| {
            c.connect_timeout = parse_duration(v)?;
            Ok(())
        });
        field(ENV_RESPONSE_TIMEOUT, &mut |v| {
            let d = parse_duration(v)?;
            c.response_timeout = (!d.is_zero()).then_some(d);
            Ok(())
        });
        field(ENV_HEADER_READ_TIMEOUT, &mut |v| {
            c.header_read_timeout = parse_duration(v)?;
            Ok(())
        });
        field(ENV_IDLE_TIMEOUT, &mut |v| {
            c.idle_timeout = parse_duration(v)?;
            Ok(())
        });
        field(ENV_DRAIN_TIMEOUT, &mut |v| {
            c.drain_timeout = parse_duration(v)?;
            Ok(())
        });
        field(ENV_MAX_REQUEST_HEADER_BYTES, &mut |v| {
            let n: usize = v.parse().map_err(|e| format!("{e}"))?;
            if n < 8192 {
                return Err("must be at least 8192".to_owned());
            }
            c.max_request_header_bytes = n;
            Ok(())
        });
        field(ENV_MAX_HEADERS, &mut |v| set(&mut c.max_headers, v.parse()));
        field(ENV_MAX_CONNECTIONS, &mut |v| set(&mut c.max_connections, v.parse()));
        field(ENV_POOL_MAX_IDLE, &mut |v| set(&mut c.pool_max_idle_per_upstream, v.parse()));
        field(ENV_POOL_IDLE_TIMEOUT, &mut |v| {
            c.pool_idle_timeout = parse_duration(v)?;
            Ok(())
        });
        field(ENV_CONNECTION_LOG_CAPACITY, &mut |v| set(&mut c.connection_log_capacity, v.parse()));
        field(ENV_WORKER_THREADS, &mut |v| set(&mut c.worker_threads, v.parse()));
        field(ENV_INBOUND_PORTS, &mut |v| {
            c.inbound_ports = PortProtocols::parse(v)?;
            Ok(())
        });
        field(ENV_OUTBOUND_PORTS, &mut |v| {
            c.outbound_ports = PortProtocols::parse(v)?;
            Ok(())
        });
        field(ENV_HTTP10, &mut |v| {
            c.accept_http_10 = parse_bool(v)?;
            Ok(())
        });
        field(ENV_ADMIN_MAX_CONNECTIONS, &mut |v| {
            let n: usize = v.parse().map_err(|e| format!("{e}"))?;
            if n == 0 {
                return Err("must be at least 1".to_owned());
            }
            c.admin_max_connections = n;
            Ok(())
        });
        field(ENV_ADMIN_HEADER_TIMEOUT, &mut |v| {
            c.admin_header_timeout = parse_duration(v)?;
            Ok(())
        });
        field(ENV_ADMIN_IDLE_TIMEOUT, &mut |v| {
            c.admin_idle_timeout = parse_duration(v)?;
            Ok(())
        });
        field(ENV_H2_MAX_CONCURRENT_STREAMS, &mut |v| {
            let n: u32 = v.parse().map_err(|e| format!("{e}"))?;
            if n == 0 {
                return Err("must be at least 1".to_owned());
            }
            c.h2.max_concurrent_streams = n;
            Ok(())
        });
        field(ENV_ACCESS_LOG, &mut |v| {
            c.access_log = match v.to_ascii_lowercase().as_str() {
                "off" | "" => AccessLog::Off,
                "stdout" | "/dev/stdout" => AccessLog::Stdout,
                "stderr" | "/dev/stderr" => AccessLog::Stderr,
                _ => return Err("expected off, stdout or stderr".to_owned()),
            };
            Ok(())
        });
        let (mesh, mesh_errs) = MeshSettings::from_env(get);
        c.mesh = mesh;
        errs.extend(mesh_errs);
        if errs.is_empty() {
            Ok(c)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// The port protocols of `direction`.
    pub fn ports(&self, direction: crate::orig_dst::Direction) -> &PortProtocols {
        match direction {
            crate::orig_dst::Direction::Inbound => &self.inbound_ports,
            crate::orig_dst::Direction::Outbound => &self.outbound_ports,
        }
    }

    /// The HTTP/1 framing limits in force.
    pub fn h1_limits(&self) -> crate::h1::Limits {
        crate::h1::Limits {
            max_head_bytes: self.max_request_header_bytes,
            max_headers: self.max_headers,
            accept_http_10: self.accept_http_10,
        }
    }

    /// The decorator operation (`<fqdn>:<port>/*`) for an inbound connection to `port`.
    pub fn decorator_for_port(&self, port: u16) -> Option<String> {
        self.services.iter().find(|s| s.effective_target_port() == port).map(|s| format!("{}:{}/*", s.fqdn, s.port))
    }
}

fn set<T, E: fmt::Display>(slot: &mut T, parsed: Result<T, E>) -> Result<(), String> {
    *slot = parsed.map_err(|e| e.to_string())?;
    Ok(())
}

/// `off`/`none`/empty → `None`, anything else parsed.
fn parse_opt<T: std::str::FromStr>(v: &str) -> Result<Option<T>, T::Err> {
    if v.is_empty() || v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        v.parse().map(Some)
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

fn parse_header_value(v: &str) -> Result<Option<String>, String> {
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    http::HeaderValue::from_str(v).map_err(|e| e.to_string())?;
    Ok(Some(v.to_owned()))
}

/// Parse `250ms`, `5s`, `2m`, `1h` or `0`.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    let split = v.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| "missing unit (ms, s, m or h)".to_owned())?;
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().map_err(|_| "expected a whole number before the unit".to_owned())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(format!("unknown unit {unit:?} (ms, s, m or h)")),
    }
}

/// Parse `fqdn:port[/targetPort]` items separated by commas.
fn parse_services(v: &str) -> Result<Vec<ServiceBinding>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (svc, target) = match item.split_once('/') {
            Some((s, t)) => (s, Some(t)),
            None => (item, None),
        };
        let (fqdn, port) = svc.rsplit_once(':').ok_or_else(|| format!("{item:?}: expected fqdn:port[/targetPort]"))?;
        if fqdn.is_empty() {
            return Err(format!("{item:?}: empty service name"));
        }
        let port: u16 = port.parse().map_err(|_| format!("{item:?}: invalid port {port:?}"))?;
        let target_port =
            target.map(|t| t.parse::<u16>().map_err(|_| format!("{item:?}: invalid target port {t:?}"))).transpose()?;
        out.push(ServiceBinding { fqdn: fqdn.to_owned(), port, target_port });
    }
    Ok(out)
}

/// Serialize a `Duration` as whole milliseconds (readable `/config_dump`).
mod ms {
    use serde::Serializer;
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Serialize an optional `Duration` as milliseconds or `null`.
mod opt_ms {
    use serde::Serializer;
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_are_istio_ports() {
        let c = ProxyConfig::from_env(&env(&[])).unwrap();
        assert_eq!(c.outbound_addr.port(), 15001);
        assert_eq!(c.inbound_addr.port(), 15006);
        assert_eq!(c.admin_addr.unwrap().port(), 15000);
        assert_eq!(c.readiness_addr.unwrap().port(), 15021);
        assert_eq!(c.prometheus_addr.unwrap().port(), 15090);
        assert_eq!(c.inbound_server_header.as_deref(), Some("istio-envoy"));
        assert_eq!(c.outbound_server_header.as_deref(), Some("envoy"));
    }

    #[test]
    fn parses_everything() {
        let c = ProxyConfig::from_env(&env(&[
            (ENV_OUTBOUND_ADDR, "127.0.0.1:0"),
            (ENV_ADMIN_ADDR, "off"),
            (ENV_INTERCEPTION_MODE, "tproxy"),
            (ENV_SERVICES, "reviews.default.svc.cluster.local:9080, a.b:80/8080"),
            (ENV_INBOUND_SERVER_HEADER, "off"),
            (ENV_SNIFF_TIMEOUT, "1s"),
            (ENV_RESPONSE_TIMEOUT, "0"),
            (ENV_INBOUND_UPSTREAM_OVERRIDE, "127.0.0.1"),
        ]))
        .unwrap();
        assert_eq!(c.outbound_addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.admin_addr, None);
        assert_eq!(c.interception_mode, InterceptionMode::Tproxy);
        assert_eq!(c.inbound_server_header, None);
        assert_eq!(c.sniff_timeout, Duration::from_secs(1));
        assert_eq!(c.response_timeout, None);
        assert_eq!(c.decorator_for_port(9080).as_deref(), Some("reviews.default.svc.cluster.local:9080/*"));
        assert_eq!(c.decorator_for_port(8080).as_deref(), Some("a.b:80/*"));
        assert_eq!(c.decorator_for_port(80), None);
        assert_eq!(c.inbound_upstream_override, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn reports_all_errors() {
        let e = ProxyConfig::from_env(&env(&[
            (ENV_OUTBOUND_ADDR, "nope"),
            (ENV_SNIFF_TIMEOUT, "5"),
            (ENV_MAX_REQUEST_HEADER_BYTES, "10"),
            (ENV_SERVICES, "x:y"),
        ]))
        .unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|e| e.key).collect();
        assert_eq!(keys, vec![ENV_OUTBOUND_ADDR, ENV_SERVICES, ENV_SNIFF_TIMEOUT, ENV_MAX_REQUEST_HEADER_BYTES]);
        assert!(e.to_string().contains("missing unit"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
