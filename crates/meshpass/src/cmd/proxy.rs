//! `meshpass proxy`: the sidecar (crate `meshpass-proxy`), configured by environment
//! variables (`MESHPASS_PROXY_*`, listed in `--help`) and a few flags that override them.
//!
//! Runs inside a pod's network namespace as UID/GID 1337 so the capture rules exempt its own
//! traffic. Prints one `READY {json}` line with the bound addresses once listening, and
//! drains gracefully on SIGTERM or SIGINT.

use meshpass_proxy::ProxyConfig;
use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

/// `meshpass proxy` flags; each overrides its environment variable.
#[derive(Debug, clap::Args)]
#[command(after_long_help = ENV_HELP)]
pub(crate) struct Args {
    /// Outbound listener [env: MESHPASS_PROXY_OUTBOUND_ADDR, default 0.0.0.0:15001].
    #[arg(long)]
    outbound: Option<String>,
    /// Inbound listener [env: MESHPASS_PROXY_INBOUND_ADDR, default 0.0.0.0:15006].
    #[arg(long)]
    inbound: Option<String>,
    /// Admin listener, `off` to disable [env: MESHPASS_PROXY_ADMIN_ADDR, default 127.0.0.1:15000].
    #[arg(long)]
    admin: Option<String>,
    /// Services this workload backs, `fqdn:port[/targetPort],...`, for
    /// `x-envoy-decorator-operation` [env: MESHPASS_PROXY_SERVICES].
    #[arg(long)]
    services: Option<String>,
    /// REDIRECT or TPROXY [env: MESHPASS_PROXY_INTERCEPTION_MODE].
    #[arg(long)]
    mode: Option<String>,
    /// The mesh config file: inbound mTLS modes, Services, endpoints and their TLS; reloaded
    /// when it changes [env: MESHPASS_PROXY_MESH_CONFIG].
    #[arg(long)]
    mesh_config: Option<String>,
    /// Directory with cert-chain.pem, key.pem and root-cert.pem (mutual TLS); reloaded when
    /// they change [env: MESHPASS_PROXY_CERT_DIR].
    #[arg(long)]
    cert_dir: Option<String>,
}

const ENV_HELP: &str = "Environment (flags win):
  MESHPASS_PROXY_OUTBOUND_ADDR        0.0.0.0:15001   outbound listener
  MESHPASS_PROXY_INBOUND_ADDR         0.0.0.0:15006   inbound listener
  MESHPASS_PROXY_ADMIN_ADDR           127.0.0.1:15000 admin (/config_dump, /connections; off disables)
  MESHPASS_PROXY_READINESS_ADDR       0.0.0.0:15021   GET /healthz/ready (off disables)
  MESHPASS_PROXY_PROMETHEUS_ADDR      0.0.0.0:15090   GET /stats/prometheus (off disables)
  MESHPASS_PROXY_INTERCEPTION_MODE    REDIRECT        REDIRECT or TPROXY
  MESHPASS_PROXY_INBOUND_SOURCE_V4    127.0.0.6       source of connections to the app (off: unbound)
  MESHPASS_PROXY_INBOUND_SOURCE_V6    ::6
  MESHPASS_PROXY_INBOUND_UPSTREAM_OVERRIDE            connect inbound to <IP>:<orig port> instead
  MESHPASS_PROXY_SERVICES                             fqdn:port[/targetPort],... (decorator header)
  MESHPASS_PROXY_INBOUND_SERVER_HEADER  istio-envoy   server header on inbound responses (off: keep the app's)
  MESHPASS_PROXY_OUTBOUND_SERVER_HEADER envoy         server header on outbound responses (off: keep)
  MESHPASS_PROXY_ENVOY_DEBUG_HEADERS  true            x-envoy-upstream-service-time, x-envoy-attempt-count
  MESHPASS_PROXY_SNIFF_TIMEOUT        200ms           silent clients become opaque TCP after this
  MESHPASS_PROXY_CONNECT_TIMEOUT      10s             upstream connect timeout (503)
  MESHPASS_PROXY_RESPONSE_TIMEOUT     0               upstream response-headers timeout (504; 0: none, as Istio)
  MESHPASS_PROXY_HEADER_READ_TIMEOUT  30s             client request-head timeout
  MESHPASS_PROXY_IDLE_TIMEOUT         1h              close idle connections
  MESHPASS_PROXY_DRAIN_TIMEOUT        5s              grace period on shutdown
  MESHPASS_PROXY_MAX_REQUEST_HEADER_BYTES 61440       request head limit (431)
  MESHPASS_PROXY_MAX_HEADERS          100             header count limit
  MESHPASS_PROXY_MAX_CONNECTIONS      65536           concurrent downstream connections
  MESHPASS_PROXY_POOL_MAX_IDLE        64              idle upstream connections per destination
  MESHPASS_PROXY_POOL_IDLE_TIMEOUT    60s             idle upstream connection lifetime
  MESHPASS_PROXY_CONNECTION_LOG_CAPACITY 1024         finished connections kept for /connections
  MESHPASS_PROXY_WORKER_THREADS       0               runtime threads (0: current-thread)
  MESHPASS_PROXY_MESH_CONFIG                          mesh config file (inbound mTLS modes, Services, endpoints)
  MESHPASS_PROXY_CERT_DIR                             cert-chain.pem, key.pem, root-cert.pem (mutual TLS)
  MESHPASS_PROXY_RELOAD_INTERVAL      1s              how often those files are checked for changes
  MESHPASS_PROXY_TLS_HANDSHAKE_TIMEOUT 10s            TLS handshake limit (and the wait for a ClientHello under STRICT)
  MESHPASS_PROXY_INBOUND_PORTS                        PORT=NAME[/APPPROTOCOL],... by app port (Istio port naming)
  MESHPASS_PROXY_OUTBOUND_PORTS                       the same by Service port; unlisted ports are sniffed
  MESHPASS_PROXY_HTTP10               false           accept HTTP/1.0 requests (otherwise 426, as Istio)
  MESHPASS_PROXY_ACCESS_LOG           off             stdout or stderr: one line per request
Durations take ms, s, m or h suffixes.";

/// Runs the sidecar until SIGTERM/SIGINT.
pub(crate) fn run(a: Args, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    // Logs go to stderr (the mesh keeps them per container); RUST_LOG sets the level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes only on a terminal: the mesh keeps sidecar logs in files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
    let mut overrides = HashMap::new();
    for (flag, var) in [
        (&a.outbound, "MESHPASS_PROXY_OUTBOUND_ADDR"),
        (&a.inbound, "MESHPASS_PROXY_INBOUND_ADDR"),
        (&a.admin, "MESHPASS_PROXY_ADMIN_ADDR"),
        (&a.services, "MESHPASS_PROXY_SERVICES"),
        (&a.mode, "MESHPASS_PROXY_INTERCEPTION_MODE"),
        (&a.mesh_config, meshpass_proxy::mesh::ENV_MESH_CONFIG),
        (&a.cert_dir, meshpass_proxy::mesh::ENV_CERT_DIR),
    ] {
        if let Some(v) = flag {
            overrides.insert(var, v.clone());
        }
    }
    let get = |k: &str| overrides.get(k).cloned().or_else(|| env(k));
    let config = ProxyConfig::from_env(&get).map_err(|e| anyhow::anyhow!("invalid proxy configuration:\n{e}"))?;
    meshpass_proxy::run_until_signal(config, |addrs| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "READY {}", serde_json::to_string(addrs).unwrap_or_default());
        let _ = out.flush();
    })?;
    Ok(ExitCode::SUCCESS)
}
