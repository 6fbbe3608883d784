//! # meshpass-proxy: the meshpass sidecar
//!
//! A transparent proxy that runs in a pod's network namespace as UID/GID 1337, behind
//! Istio-shaped netfilter rules:
//!
//! - **outbound** listener (15001): connections the app makes, redirected by `ISTIO_REDIRECT`;
//! - **inbound** listener (15006): connections to the app, redirected by `ISTIO_IN_REDIRECT`;
//!   the proxy reaches the app from source `127.0.0.6` (`::6` for IPv6) so that Istio's
//!   `-o lo -s 127.0.0.6/32 -j RETURN` rule does not capture it again;
//! - **admin** (15000: `/config_dump`, `/connections`), **readiness** (15021:
//!   `/healthz/ready`) and **Prometheus** (15090: `/stats/prometheus`).
//!
//! Each connection's original destination comes from `SO_ORIGINAL_DST` (REDIRECT) or the
//! local address (TPROXY) — see [`orig_dst`]. A connection whose original destination is the
//! proxy itself (a direct connection to 15001/15006) is refused, never looped.
//!
//! The destination port's declared protocol decides what happens next ([`protocol`], Istio's
//! port naming): HTTP ports are served at L7, TCP-family ports forwarded as opaque TCP with
//! half-close ([`tcp`]), undeclared ports sniffed first ([`sniff`]). At L7 every request
//! passes a strict HTTP/1 gate ([`gate`], [`h1`]) that refuses what Envoy refuses, with
//! Envoy's statuses and local replies, before hyper ([`mod@http`]) forwards it with Envoy's
//! header handling (`server: istio-envoy`, `x-envoy-upstream-service-time`,
//! `x-envoy-decorator-operation`, sanitised internal headers, normalised paths — [`path`]).
//!
//! The connection layer is built from I/O wrappers (see `handle_conn`): the gate over the
//! replayed sniff bytes over byte counting over the socket; a TLS stream belongs between the
//! counting and the socket, before protocol handling.
//!
//! With the mesh's files ([`mesh`]) the sidecar speaks Istio mutual TLS ([`tls`]): inbound
//! ports are STRICT, PERMISSIVE or DISABLE as `PeerAuthentication` resolves them (mesh
//! traffic recognised by its ALPN, as Envoy's `tls_inspector`), outbound connections to a
//! Service go to its endpoints with mutual TLS to those that have a sidecar and plaintext to
//! the others (auto mTLS, or what a `DestinationRule` says), peers verified against the mesh
//! CA and their SPIFFE identities, which `/connections` records. Certificates and config are
//! reloaded from their files without dropping connections.
//!
//! Failures map to Envoy's statuses with a short text body (upstream refused / reset before
//! headers → 503, response timeout → 504) and to a typed [`Outcome`] — Envoy's response flag
//! and who caused it — that feeds the connection record, the metrics and the access log
//! ([`access_log`]). Nothing waits forever: connect, header-read, response and idle timeouts,
//! a connection limit, and a graceful drain on shutdown.
//!
//! ## Using it
//!
//! ```no_run
//! # async fn demo() -> Result<(), meshpass_proxy::ProxyError> {
//! use meshpass_proxy::{Proxy, ProxyConfig};
//! let config = ProxyConfig::from_env(&|k| std::env::var(k).ok()).expect("valid env");
//! // Either: run until a shutdown future resolves (SIGTERM in the CLI) ...
//! meshpass_proxy::run(config.clone(), async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! // ... or hold a handle (tests): bound addresses, records, explicit shutdown.
//! let proxy = Proxy::start(config).await?;
//! println!("outbound on {}", proxy.addrs().outbound);
//! proxy.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! ## Configuration (environment variables)
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `MESHPASS_PROXY_OUTBOUND_ADDR` | `0.0.0.0:15001` | outbound listener |
//! | `MESHPASS_PROXY_INBOUND_ADDR` | `0.0.0.0:15006` | inbound listener |
//! | `MESHPASS_PROXY_ADMIN_ADDR` | `127.0.0.1:15000` | admin listener (`off` disables) |
//! | `MESHPASS_PROXY_READINESS_ADDR` | `0.0.0.0:15021` | readiness listener (`off` disables) |
//! | `MESHPASS_PROXY_PROMETHEUS_ADDR` | `0.0.0.0:15090` | Prometheus listener (`off` disables) |
//! | `MESHPASS_PROXY_INTERCEPTION_MODE` | `REDIRECT` | `REDIRECT` or `TPROXY` |
//! | `MESHPASS_PROXY_INBOUND_SOURCE_V4` | `127.0.0.6` | source of inbound upstream connections (`off`: unbound) |
//! | `MESHPASS_PROXY_INBOUND_SOURCE_V6` | `::6` | same for IPv6 |
//! | `MESHPASS_PROXY_INBOUND_UPSTREAM_OVERRIDE` | unset | connect inbound to `<IP>:<orig port>` instead of the original destination |
//! | `MESHPASS_PROXY_SERVICES` | empty | `fqdn:port[/targetPort],...` for `x-envoy-decorator-operation` |
//! | `MESHPASS_PROXY_INBOUND_SERVER_HEADER` | `istio-envoy` | `server` on inbound responses (`off`: pass through) |
//! | `MESHPASS_PROXY_OUTBOUND_SERVER_HEADER` | `envoy` | `server` on outbound responses (`off`: pass through) |
//! | `MESHPASS_PROXY_ENVOY_DEBUG_HEADERS` | `true` | `x-envoy-upstream-service-time`, `x-envoy-attempt-count` |
//! | `MESHPASS_PROXY_SNIFF_TIMEOUT` | `200ms` | silent clients become opaque TCP after this |
//! | `MESHPASS_PROXY_CONNECT_TIMEOUT` | `10s` | upstream connect timeout (→ 503) |
//! | `MESHPASS_PROXY_RESPONSE_TIMEOUT` | `0` | upstream response-headers timeout (→ 504; `0`: none, as Istio) |
//! | `MESHPASS_PROXY_HEADER_READ_TIMEOUT` | `30s` | client request-head timeout (also bounds keep-alive idle gaps) |
//! | `MESHPASS_PROXY_IDLE_TIMEOUT` | `1h` | close connections idle this long |
//! | `MESHPASS_PROXY_DRAIN_TIMEOUT` | `5s` | in-flight grace period on shutdown |
//! | `MESHPASS_PROXY_MAX_REQUEST_HEADER_BYTES` | `61440` | request head limit (→ 431) |
//! | `MESHPASS_PROXY_MAX_HEADERS` | `100` | header count limit |
//! | `MESHPASS_PROXY_MAX_CONNECTIONS` | `65536` | concurrent downstream connections |
//! | `MESHPASS_PROXY_POOL_MAX_IDLE` | `64` | idle upstream connections kept per destination |
//! | `MESHPASS_PROXY_POOL_IDLE_TIMEOUT` | `60s` | idle upstream connection lifetime |
//! | `MESHPASS_PROXY_CONNECTION_LOG_CAPACITY` | `1024` | finished connections kept for `/connections` |
//! | `MESHPASS_PROXY_WORKER_THREADS` | `0` | runtime threads for [`build_runtime`] (`0`: current-thread) |
//! | `MESHPASS_PROXY_MESH_CONFIG` | unset | the mesh config file: inbound mTLS modes, Services and endpoints ([`mesh_config`]) |
//! | `MESHPASS_PROXY_CERT_DIR` | unset | `cert-chain.pem`, `key.pem`, `root-cert.pem`: mutual TLS ([`tls`]) |
//! | `MESHPASS_PROXY_RELOAD_INTERVAL` | `1s` | how often those files are checked for changes |
//! | `MESHPASS_PROXY_TLS_HANDSHAKE_TIMEOUT` | `10s` | TLS handshake limit (and, under STRICT, the wait for a ClientHello) |
//! | `MESHPASS_PROXY_INBOUND_PORTS` | empty | `PORT=NAME[/APPPROTOCOL],...` by app port; unlisted ports are sniffed |
//! | `MESHPASS_PROXY_OUTBOUND_PORTS` | empty | the same by Service port |
//! | `MESHPASS_PROXY_HTTP10` | `false` | accept HTTP/1.0 requests (Istio's `ISTIO_META_HTTP10`) |
//! | `MESHPASS_PROXY_ACCESS_LOG` | `off` | `stdout` / `stderr`: one line per request |
//!
//! Durations take `ms`, `s`, `m` or `h` suffixes. The names are `pub const`s in [`config`].

pub mod access_log;
pub mod admin;
pub mod body;
pub mod config;
pub mod error;
mod fast;
pub mod gate;
pub mod h1;
pub mod http;
pub mod io;
pub mod mesh;
pub mod mesh_config;
pub mod metrics;
pub mod orig_dst;
pub mod outcome;
pub mod path;
pub mod pool;
pub mod protocol;
pub mod record;
pub mod sniff;
pub mod tcp;
pub mod timer;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::http::HeaderValue;
use bytes::BytesMut;
use serde::Serialize;
use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{InterceptionMode, ProxyConfig, ServiceBinding};
pub use error::{ProxyError, UpstreamError};
pub use metrics::Metrics;
pub use orig_dst::{Direction, FixedTarget, LocalAddr, OrigDstResolver, SoOriginalDst, TproxyInbound};
pub use outcome::{Flag, Outcome, Source};
pub use protocol::{Handling, PortProtocol, PortProtocols};
pub use record::ConnectionRecord;
pub use sniff::Protocol;

use crate::gate::{Gate, GateState};
use crate::http::HttpCtx;
use crate::io::{Metered, Rewind};
use crate::metrics::Rejection;
use crate::record::ConnectionLog;
use crate::tls::Downstream;

/// Lifecycle phase, broadcast to every task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Not accepting; in-flight connections finish (HTTP ones close after their response).
    Draining,
    /// Drain timeout passed: remaining connections are closed.
    Force,
    /// Everything, admin included, stops.
    Stopped,
}

/// Wait until the phase satisfies `f` (or the proxy handle is gone). Returns nothing so the
/// watch guard never lives across an await (it is not `Send`).
pub(crate) async fn phase_reached(rx: &mut watch::Receiver<Phase>, f: impl Fn(Phase) -> bool) {
    let _ = rx.wait_for(|p| f(*p)).await;
}

/// Addresses the proxy actually bound (ports resolved when `:0` was asked for).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct BoundAddrs {
    /// Outbound listener.
    pub outbound: SocketAddr,
    /// Inbound listener.
    pub inbound: SocketAddr,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// Readiness listener.
    pub readiness: Option<SocketAddr>,
    /// Prometheus listener.
    pub prometheus: Option<SocketAddr>,
}

/// State shared by all tasks of one proxy instance.
#[derive(Debug)]
pub struct Shared {
    /// Effective configuration.
    pub config: ProxyConfig,
    /// Bound addresses.
    pub bound: BoundAddrs,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Connection record.
    pub log: Arc<ConnectionLog>,
    /// Upstream HTTP connection pool.
    pub pool: Arc<pool::Pool>,
    /// What the mesh said: routes, inbound mTLS modes, credentials.
    pub mesh: Arc<mesh::Mesh>,
    /// The access log.
    pub access_log: access_log::AccessLogger,
    resolver: Arc<dyn OrigDstResolver>,
    drain: watch::Receiver<Phase>,
    active: AtomicUsize,
    server_inbound: Option<HeaderValue>,
    server_outbound: Option<HeaderValue>,
}

impl Shared {
    /// Whether `dst` is one of the proxy's own capture listeners: a connection made directly
    /// to 15001/15006 (no redirect) reports itself as its original destination, and
    /// forwarding it would loop forever.
    fn is_self(&self, dst: SocketAddr, local: Option<SocketAddr>, direction: Direction) -> bool {
        // With REDIRECT a redirected connection's local address is the listener's, so
        // "destination == local address" means nobody redirected it. Where the resolver reads
        // the destination *from* the local address, only the port test below applies.
        if Some(dst) == local && !self.resolver.local_is_original(direction) {
            return true;
        }
        let own_port = dst.port() == self.bound.outbound.port() || dst.port() == self.bound.inbound.port();
        own_port
            && (dst.ip().is_loopback()
                || dst.ip().is_unspecified()
                || local.is_some_and(|l| l.ip() == dst.ip())
                || [self.bound.outbound.ip(), self.bound.inbound.ip()].contains(&dst.ip()))
    }
}

/// Decrements the active-connection count when a connection task ends.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running proxy. Dropping it without [`Proxy::shutdown`] stops it abruptly.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    tasks: Vec<JoinHandle<()>>,
}

/// True when a listener bound to `addr` takes IPv4 connections (an IPv4 address, or `[::]`
/// without `IPV6_V6ONLY`).
fn serves_v4(sock: &SockRef<'_>, addr: SocketAddr) -> bool {
    addr.is_ipv4() || !sock.only_v6().unwrap_or(true)
}

fn bind(listener: &'static str, addr: SocketAddr, transparent: bool) -> Result<TcpListener, ProxyError> {
    let err = |source| ProxyError::Bind { listener, addr, source };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `[::]` serves IPv4 too (v4-mapped), like Envoy's dual-stack listeners.
        sock.set_only_v6(false).map_err(err)?;
    }
    if transparent && serves_v4(&SockRef::from(&sock), addr) {
        // TPROXY and eBPF capture deliver connections addressed to foreign IPs; the socket
        // must accept them (the flag also covers a dual-stack socket's IPv4 connections).
        sock.set_ip_transparent_v4(true).map_err(err)?;
    }
    sock.set_nonblocking(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(4096).map_err(err)?;
    TcpListener::from_std(sock.into()).map_err(err)
}

/// Puts `listener` in eBPF capture's listener map, in the slots of the families it serves (a
/// dual-stack `[::]` listener serves both). The map entry goes away with the socket.
fn register_ebpf(listener: &TcpListener, direction: Direction) -> Result<(), ProxyError> {
    use meshpass_capture::ebpf::ListenerSlot;
    use std::os::fd::{AsFd, AsRawFd};
    let name = direction.as_str();
    let fail = |reason: String| ProxyError::Ebpf { listener: name, reason };
    let dir = meshpass_capture::linux::ebpf::pin_dir_for_current_netns().map_err(|e| fail(e.to_string()))?;
    let map = meshpass_bpf::Map::open_pinned(&dir.join(meshpass_capture::linux::ebpf::LISTENER_MAP))
        .map_err(|e| fail(e.to_string()))?;
    let sock = SockRef::from(listener);
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let v4 = serves_v4(&sock, addr);
    let v6 = addr.is_ipv6();
    let inbound = direction == Direction::Inbound;
    let slots = [
        (v4 && inbound, ListenerSlot::InboundV4),
        (v4 && !inbound, ListenerSlot::OutboundV4),
        (v6 && inbound, ListenerSlot::InboundV6),
        (v6 && !inbound, ListenerSlot::OutboundV6),
    ];
    let fd = u64::try_from(listener.as_fd().as_raw_fd()).map_err(|e| fail(e.to_string()))?;
    for (_, slot) in slots.iter().filter(|(on, _)| *on) {
        map.update(&(*slot as u32).to_ne_bytes(), &fd.to_ne_bytes()).map_err(|e| fail(e.to_string()))?;
    }
    tracing::info!(listener = name, %addr, "registered with eBPF capture");
    Ok(())
}

impl Proxy {
    /// Bind every listener and start serving, with the resolver that matches
    /// `config.interception_mode`.
    pub async fn start(config: ProxyConfig) -> Result<Self, ProxyError> {
        let resolver: Arc<dyn OrigDstResolver> = match config.interception_mode {
            InterceptionMode::Redirect => Arc::new(SoOriginalDst),
            InterceptionMode::Tproxy => Arc::new(TproxyInbound),
            InterceptionMode::Ebpf => Arc::new(LocalAddr),
            InterceptionMode::None => return Err(ProxyError::NoInterception),
        };
        Self::start_with_resolver(config, resolver).await
    }

    /// Like [`Proxy::start`] with an explicit resolver (tests use [`FixedTarget`]).
    pub async fn start_with_resolver(
        config: ProxyConfig,
        resolver: Arc<dyn OrigDstResolver>,
    ) -> Result<Self, ProxyError> {
        let tproxy = config.interception_mode == InterceptionMode::Tproxy;
        let ebpf = config.interception_mode == InterceptionMode::Ebpf;
        let outbound = bind("outbound", config.outbound_addr, ebpf)?;
        let inbound = bind("inbound", config.inbound_addr, tproxy || ebpf)?;
        if ebpf {
            register_ebpf(&inbound, Direction::Inbound)?;
            register_ebpf(&outbound, Direction::Outbound)?;
        }
        let admin = config.admin_addr.map(|a| bind("admin", a, false)).transpose()?;
        let readiness = config.readiness_addr.map(|a| bind("readiness", a, false)).transpose()?;
        let prometheus = config.prometheus_addr.map(|a| bind("prometheus", a, false)).transpose()?;
        let local = |l: &TcpListener, name, addr| {
            l.local_addr().map_err(|source| ProxyError::Bind { listener: name, addr, source })
        };
        let bound = BoundAddrs {
            outbound: local(&outbound, "outbound", config.outbound_addr)?,
            inbound: local(&inbound, "inbound", config.inbound_addr)?,
            admin: admin.as_ref().and_then(|l| l.local_addr().ok()),
            readiness: readiness.as_ref().and_then(|l| l.local_addr().ok()),
            prometheus: prometheus.as_ref().and_then(|l| l.local_addr().ok()),
        };
        let mesh = Arc::new(mesh::Mesh::load(&config.mesh)?);
        let (phase, drain) = watch::channel(Phase::Running);
        let header = |v: &Option<String>| v.as_deref().and_then(|s| HeaderValue::from_str(s).ok());
        let shared = Arc::new(Shared {
            bound,
            metrics: Arc::new(Metrics::default()),
            log: Arc::new(ConnectionLog::new(config.connection_log_capacity)),
            pool: Arc::new(pool::Pool::with_h2(
                config.pool_max_idle_per_upstream,
                config.pool_idle_timeout,
                config.connect_timeout,
                mesh.clone(),
                config.h2,
            )),
            mesh: mesh.clone(),
            resolver,
            access_log: access_log::AccessLogger::new(config.access_log),
            drain,
            active: AtomicUsize::new(0),
            server_inbound: header(&config.inbound_server_header),
            server_outbound: header(&config.outbound_server_header),
            config,
        });
        let mut tasks = vec![
            tokio::spawn(accept_loop(outbound, Direction::Outbound, shared.clone())),
            tokio::spawn(accept_loop(inbound, Direction::Inbound, shared.clone())),
        ];
        for (l, port) in [
            (admin, admin::AdminPort::Admin),
            (readiness, admin::AdminPort::Readiness),
            (prometheus, admin::AdminPort::Prometheus),
        ] {
            if let Some(l) = l {
                tasks.push(tokio::spawn(admin::serve(l, port, shared.clone())));
            }
        }
        tasks.push(tokio::spawn(mesh.watch(shared.drain.clone())));
        let sweeper = shared.clone();
        tasks.push(tokio::spawn(async move {
            let every = (sweeper.config.pool_idle_timeout / 2).max(Duration::from_millis(100));
            let mut drain = sweeper.drain.clone();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => sweeper.pool.sweep(),
                    _ = crate::phase_reached(&mut drain, |p| p >= Phase::Force) => return,
                }
            }
        }));
        tracing::info!(?bound, "meshpass proxy listening");
        Ok(Self { shared, phase, tasks })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> &BoundAddrs {
        &self.shared.bound
    }

    /// The shared state (metrics, connection log, effective config).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Open and recently finished connections, as `/connections` reports them.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        self.shared.log.snapshot()
    }

    /// Downstream connections currently being handled.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Graceful shutdown: stop accepting, let in-flight connections finish for up to
    /// `drain_timeout` (HTTP connections close after their current response), then close
    /// the rest and stop the admin listeners.
    pub async fn shutdown(mut self) -> Result<(), ProxyError> {
        self.phase.send_replace(Phase::Draining);
        let deadline = tokio::time::Instant::now() + self.shared.config.drain_timeout;
        while self.active_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.phase.send_replace(Phase::Force);
        // Forced connections exit at their next poll; give them a moment to record why.
        for _ in 0..100 {
            if self.active_connections() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.phase.send_replace(Phase::Stopped);
        for t in std::mem::take(&mut self.tasks) {
            t.await?;
        }
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.phase.send_replace(Phase::Stopped);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Run the proxy until `shutdown` resolves, then drain gracefully (see [`Proxy::shutdown`]).
pub async fn run(config: ProxyConfig, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
    let proxy = Proxy::start(config).await?;
    shutdown.await;
    tracing::info!("shutdown requested, draining");
    proxy.shutdown().await
}

/// Runs the sidecar the way a process does: builds the runtime ([`build_runtime`]), starts
/// the listeners, hands the bound addresses to `ready` (the CLI prints them), and drains on
/// SIGTERM or SIGINT. Both `meshpass proxy` and the standalone test binary use this.
pub fn run_until_signal(config: ProxyConfig, ready: impl FnOnce(&BoundAddrs)) -> Result<(), ProxyError> {
    use tokio::signal::unix::{signal, SignalKind};
    let setup = |what| move |source| ProxyError::Setup { what, source };
    let rt = build_runtime(&config).map_err(setup("building the tokio runtime"))?;
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate()).map_err(setup("installing the SIGTERM handler"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(setup("installing the SIGINT handler"))?;
        let proxy = Proxy::start(config).await?;
        ready(proxy.addrs());
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested, draining");
        proxy.shutdown().await
    })
}

/// The tokio runtime the sidecar should run on: current-thread when `worker_threads == 0`,
/// else multi-thread with that many workers.
pub fn build_runtime(config: &ProxyConfig) -> std::io::Result<tokio::runtime::Runtime> {
    if config.worker_threads == 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.worker_threads).enable_all().build()
    }
}

async fn accept_loop(listener: TcpListener, direction: Direction, shared: Arc<Shared>) {
    let mut drain = shared.drain.clone();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = crate::phase_reached(&mut drain, |p| p != Phase::Running) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning.
                    tracing::warn!(%direction, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if shared.active.load(Ordering::Relaxed) >= shared.config.max_connections {
            shared.metrics.dir(direction).rejected(Rejection::Overflow);
            tracing::debug!(%direction, %peer, "connection limit reached, closing");
            drop(stream);
            continue;
        }
        shared.active.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(shared.clone());
        tokio::spawn(handle_conn(stream, peer, direction, slot));
    }
}

async fn handle_conn(stream: TcpStream, peer: SocketAddr, direction: Direction, slot: Slot) {
    let shared = &slot.0;
    let _ = stream.set_nodelay(true);
    let conn = shared.log.open(direction, orig_dst::canonical_addr(peer), shared.metrics.clone());
    let local = stream.local_addr().ok().map(orig_dst::canonical_addr);
    let target: Result<SocketAddr, String> = match shared.resolver.original_dst(&stream, direction) {
        Ok(dst) => {
            conn.set_original_dst(Some(dst));
            if shared.is_self(dst, local, direction) {
                Err(format!("original destination {dst} is this proxy's own listener (connection was not redirected)"))
            } else {
                Ok(dst)
            }
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(why) = &target {
        shared.metrics.dir(direction).rejected(Rejection::NoOriginalDst);
        conn.set_outcome(Outcome::new(Flag::NoRoute, format!("no_original_dst: {why}")));
    }

    let mut drain = shared.drain.clone();
    // Inbound mutual TLS, as the port's PeerAuthentication mode says (`tls`): the protocol
    // handling below sees the decrypted stream.
    let (mut stream, mut buf, alpn_proto) = match (direction, &target) {
        (Direction::Inbound, Ok(dst)) => {
            let mode = shared.mesh.inbound_mode(dst.port());
            let timeouts = tls::InboundTimeouts {
                first_bytes: shared.config.sniff_timeout,
                handshake: shared.config.mesh.handshake_timeout,
            };
            let accepted = tokio::select! {
                a = tls::accept_inbound(shared.mesh.tls.as_deref(), mode, stream, peer, dst.port(), timeouts) => a,
                _ = crate::phase_reached(&mut drain, |p| p >= Phase::Force) => {
                    conn.set_outcome(Outcome::new(Flag::LocalReset, "drain_timeout"));
                    return;
                }
            };
            match accepted {
                tls::Accepted::Plain(s, b) => {
                    conn.stats.add_rx(b.len());
                    (Downstream::Plain(s), b, None)
                }
                tls::Accepted::Mutual(s, info) => {
                    // The client sidecar's ALPN says what it proxies, as Istio's filter chains
                    // match it: HTTP/1.1 needs no sniffing, Istio's TCP values mean opaque TCP.
                    let proto = match info.alpn.as_deref() {
                        Some("http/1.1") => Some(Protocol::Http),
                        Some("istio-peer-exchange" | "istio") => Some(Protocol::Tcp),
                        _ => None,
                    };
                    conn.set_tls(info);
                    (Downstream::Tls(s), BytesMut::new(), proto)
                }
                tls::Accepted::Refused(f) => {
                    conn.set_outcome(Outcome::new(
                        Flag::DownstreamProtocolError,
                        format!("tls_refused: {}: {}", f.reason, f.message),
                    ));
                    return;
                }
            }
        }
        _ => (Downstream::Plain(stream), BytesMut::new(), None),
    };

    // Protocol selection as Istio's listeners do it: a declared port is served as declared
    // (no sniffing: a malformed request on an HTTP port gets an HTTP error, and server-first
    // TCP protocols do not wait), an undeclared one is sniffed.
    let handling = match &target {
        Ok(dst) => shared.config.ports(direction).get(dst.port()).handling(),
        Err(_) => Handling::Sniff,
    };
    let proto = match (alpn_proto, handling) {
        // A peer sidecar said what it proxies (mutual TLS ALPN).
        (Some(p), _) => p,
        (None, Handling::Http1Upstream | Handling::Http2Upstream) => {
            // Envoy's codec on an HTTP port is AUTO: HTTP/2 prior knowledge or HTTP/1.
            let preface = tokio::select! {
                r = sniff::h2_preface(&mut stream, &mut buf, shared.config.header_read_timeout, &conn.stats) => r,
                _ = crate::phase_reached(&mut drain, |p| p >= Phase::Force) => {
                    conn.set_outcome(Outcome::new(Flag::LocalReset, "drain_timeout"));
                    return;
                }
            };
            match preface {
                Ok(Some(sniff::Opening::Http2)) => Protocol::Http2,
                Ok(Some(sniff::Opening::Http1)) => Protocol::Http,
                Ok(Some(sniff::Opening::BrokenPreface)) => {
                    conn.set_outcome(Outcome::new(Flag::DownstreamProtocolError, "http2.invalid_preface"));
                    return;
                }
                Ok(None) => {
                    conn.set_outcome(Outcome::new(Flag::DownstreamConnectionTermination, "client_closed_before_data"));
                    return;
                }
                Err(e) => {
                    conn.set_outcome(Outcome::new(Flag::DownstreamConnectionTermination, format!("client_error: {e}")));
                    return;
                }
            }
        }
        (None, Handling::Tcp) => Protocol::Tcp,
        (None, Handling::Sniff) => {
            let http10 = shared.config.accept_http_10;
            let sniffed = tokio::select! {
                r = sniff::sniff(&mut stream, &mut buf, shared.config.sniff_timeout, http10, &conn.stats) => r,
                _ = crate::phase_reached(&mut drain, |p| p >= Phase::Force) => {
                    conn.set_outcome(Outcome::new(Flag::LocalReset, "drain_timeout"));
                    return;
                }
            };
            match sniffed {
                Ok(Some(p)) => p,
                Ok(None) => {
                    conn.set_outcome(Outcome::new(Flag::DownstreamConnectionTermination, "client_closed_before_data"));
                    return;
                }
                Err(e) => {
                    conn.set_outcome(Outcome::new(Flag::DownstreamConnectionTermination, format!("client_error: {e}")));
                    return;
                }
            }
        }
    };
    conn.set_protocol(proto);

    match proto {
        Protocol::Http | Protocol::Http2 => {
            let (server_header, decorator) = match direction {
                Direction::Inbound => (
                    shared.server_inbound.clone(),
                    target
                        .as_ref()
                        .ok()
                        .and_then(|dst| shared.config.decorator_for_port(dst.port()))
                        .and_then(|d| HeaderValue::from_str(&d).ok()),
                ),
                Direction::Outbound => (shared.server_outbound.clone(), None),
            };
            let key = target.map(|dst| http::upstream_key(shared, direction, dst));
            let gate = Arc::new(GateState::default());
            let limits = shared.config.h1_limits();
            let gate_server = server_header.clone();
            let ctx = Arc::new(HttpCtx {
                shared: shared.clone(),
                direction,
                target: key,
                conn: conn.clone(),
                server_header,
                decorator,
                response_timer: timer::LazyTimer::new(),
                upstream_noted: std::sync::atomic::AtomicBool::new(false),
                gate: gate.clone(),
                // HTTP/2 to the app on http2/grpc ports, as Istio's clusters; on a sniffed
                // port the client's protocol, as Istio's clusters for undeclared ports.
                downstream_h2: proto == Protocol::Http2,
                upstream_h2: match handling {
                    Handling::Http2Upstream => true,
                    Handling::Sniff => proto == Protocol::Http2,
                    _ => false,
                },
                handoff: std::sync::Mutex::new(None),
                handoff_set: std::sync::atomic::AtomicBool::new(false),
            });
            // Nothing watches an HTTP connection's idle time until it turns into a tunnel
            // (`http::spawn_tunnel` turns tracking back on): its timeouts are hyper's.
            conn.stats.track_activity(false);
            // The layers, outermost first: the HTTP/1 gate (checks every request before hyper
            // sees it), the bytes the sniffer already read, byte counting, the socket. A TLS
            // stream, when there is one, belongs between the counting and the socket.
            let mut io = Rewind::new(buf.freeze(), Metered::new(stream, conn.stats.clone()));
            if proto == Protocol::Http2 {
                http::serve_h2(io, ctx).await;
            } else {
                // Plain keep-alive exchanges take the fast lane; the first one it leaves goes
                // through the gate and hyper, with the rest of the connection.
                if fast::applies(&ctx) {
                    match fast::serve(&mut io, &ctx, &limits).await {
                        fast::Exit::Closed => return,
                        fast::Exit::Handoff(rest) => io.unread(rest),
                    }
                }
                let io = Gate::new(io, limits, gate_server, gate);
                http::serve(io, ctx).await;
            }
        }
        Protocol::Tcp => {
            let Ok(dst) = target else {
                // Nothing sensible to say in an unknown protocol: just close.
                return;
            };
            let key = http::upstream_key(shared, direction, dst);
            let up = tokio::select! {
                r = shared.pool.connect_upstream(key, tls::AppProtocol::Tcp) => r,
                _ = crate::phase_reached(&mut drain, |p| p >= Phase::Force) => {
                    conn.set_outcome(Outcome::new(Flag::LocalReset, "drain_timeout"));
                    return;
                }
            };
            match up {
                Ok((up, info)) => {
                    conn.set_upstream_info(&info);
                    tcp::forward_io(stream, buf.freeze(), up, &conn, shared.config.idle_timeout, drain).await
                }
                Err(e) => {
                    conn.set_outcome(e.outcome());
                    // Reset the client so it sees a failure, as Envoy does for TCP proxies.
                    let _ = socket2::SockRef::from(stream.tcp()).set_linger(Some(Duration::ZERO));
                }
            }
        }
    }
}
