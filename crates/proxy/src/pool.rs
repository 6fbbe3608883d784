//! Upstream connections: TCP connect (with the inbound source address), and a keep-alive pool
//! of HTTP/1 client connections per (destination, source) pair.
//!
//! An outbound destination the mesh knows (a Service's ClusterIP and port) is routed when a
//! connection is opened: each new upstream connection goes to the Service's next endpoint,
//! with the TLS the mesh says that endpoint gets ([`crate::mesh::Route`]). Keys carry the
//! mesh config's generation, so after a change new connections follow the new config.
//!
//! A connection goes back to the pool only after *both* the request body was fully sent and
//! the response body fully received (see [`crate::body`]); anything else (early response,
//! client gone mid-body, upstream `Connection: close`) drops it, which closes it. That keeps a
//! half-used connection from ever carrying a second request.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::error::UpstreamError;
use crate::mesh::{Mesh, Route};
use crate::tls::{AppProtocol, TlsInfo, Upstream};

/// Pool key: where to connect and from which source address.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct PoolKey {
    /// Destination: the address to connect to, or with `mesh` the original destination the
    /// mesh config routes.
    pub dst: SocketAddr,
    /// Source address to bind (inbound: 127.0.0.6 / ::6), or `None`.
    pub src: Option<IpAddr>,
    /// `Some(generation of the mesh config)` when `dst` is routed through the mesh config.
    pub mesh: Option<u64>,
}

/// Where an upstream connection went and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpstreamInfo {
    /// The address connected to (an endpoint, when the mesh routed it).
    pub addr: SocketAddr,
    /// The proxy's own address on that connection: what the upstream (and its sidecar's
    /// records) sees as the client.
    pub local: Option<SocketAddr>,
    /// The TLS originated, if any.
    pub tls: Option<TlsInfo>,
}

/// The sending half of a pooled HTTP/1 connection, and where that connection goes.
#[derive(Debug)]
pub struct Sender {
    tx: SendRequest<RequestBody>,
    info: Arc<UpstreamInfo>,
}

impl Sender {
    /// A connection opened elsewhere (the HTTP/1 fast lane's) and where it goes.
    pub(crate) fn from_parts(tx: SendRequest<RequestBody>, info: Arc<UpstreamInfo>) -> Self {
        Self { tx, info }
    }

    /// Where the connection goes, and its TLS.
    pub fn info(&self) -> &Arc<UpstreamInfo> {
        &self.info
    }
}

impl Deref for Sender {
    type Target = SendRequest<RequestBody>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl DerefMut for Sender {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// The sending half of a shared HTTP/2 connection (cloned per request: streams multiplex).
pub type H2Sender = hyper::client::conn::http2::SendRequest<RequestBody>;

#[derive(Debug)]
struct IdleConn {
    tx: Sender,
    since: Instant,
}

/// An idle upstream connection of the HTTP/1 fast lane (no hyper client on it).
#[derive(Debug)]
struct IdleRaw {
    io: Upstream,
    info: Arc<UpstreamInfo>,
    since: Instant,
}

/// Hasher for [`PoolKey`]s (a few integers): a multiply-rotate mix with a random per-pool
/// seed. SipHash, the std default, cost about as much per request as the rest of the pool
/// bookkeeping; keys are socket addresses, so the seed is enough against crafted collisions
/// from an app choosing many destinations.
#[derive(Clone, Copy, Debug)]
struct KeyHasherBuilder(u64);

impl KeyHasherBuilder {
    fn new() -> Self {
        Self(RandomState::new().hash_one(0x5851_f42d_4c95_7f2d_u64) | 1)
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
    }
}

#[derive(Debug)]
struct KeyHasher(u64);

impl KeyHasher {
    fn mix(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.mix(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
    fn finish(&self) -> u64 {
        // Final avalanche so the low bits hashbrown uses depend on every input bit.
        let mut z = self.0;
        z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^ (z >> 33)
    }
}

/// Keep-alive pool of upstream HTTP/1 connections.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<IdleConn>, KeyHasherBuilder>>,
    /// Idle connections of the HTTP/1 fast lane ([`crate::fast`]), kept apart: a hyper client
    /// connection cannot become a plain one again, nor the other way round.
    raw: Mutex<HashMap<PoolKey, Vec<IdleRaw>, KeyHasherBuilder>>,
    /// One multiplexed HTTP/2 connection per key.
    h2: Mutex<HashMap<PoolKey, H2Sender, KeyHasherBuilder>>,
    h2_settings: H2Settings,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    mesh: Arc<Mesh>,
}

impl Pool {
    /// An empty pool; routes and TLS for mesh destinations come from `mesh`.
    pub fn new(max_idle: usize, idle_timeout: Duration, connect_timeout: Duration, mesh: Arc<Mesh>) -> Self {
        Self::with_h2(max_idle, idle_timeout, connect_timeout, mesh, H2Settings::default())
    }

    /// An empty pool whose HTTP/2 connections use `h2_settings`.
    pub fn with_h2(
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        mesh: Arc<Mesh>,
        h2_settings: H2Settings,
    ) -> Self {
        Self {
            idle: Mutex::new(HashMap::with_hasher(KeyHasherBuilder::new())),
            raw: Mutex::new(HashMap::with_hasher(KeyHasherBuilder::new())),
            h2: Mutex::new(HashMap::with_hasher(KeyHasherBuilder::new())),
            h2_settings,
            max_idle,
            idle_timeout,
            connect_timeout,
            mesh,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<IdleConn>, KeyHasherBuilder>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready connection for `key`: a pooled one if any is still alive, else a new one.
    /// The flag says whether it was reused (a reused connection may have been closed by the
    /// upstream in the meantime, which makes a retry of an unsent request safe).
    pub async fn get(&self, key: PoolKey) -> Result<(Sender, bool), UpstreamError> {
        self.get_at(key, Instant::now()).await
    }

    /// [`Pool::get`] with the current time supplied by the caller (who has usually just read
    /// the clock), for the idle-timeout check.
    pub async fn get_at(&self, key: PoolKey, now: Instant) -> Result<(Sender, bool), UpstreamError> {
        loop {
            let next = {
                let mut g = self.lock();
                g.get_mut(&key).and_then(Vec::pop)
            };
            let Some(mut c) = next else { break };
            if c.tx.is_closed() || now.saturating_duration_since(c.since) > self.idle_timeout {
                continue;
            }
            // Normally immediate: the connection was returned only after its exchange ended.
            if c.tx.ready().await.is_ok() {
                return Ok((c.tx, true));
            }
        }
        Ok((self.connect(key).await?, false))
    }

    /// Return a connection after a complete exchange.
    pub fn put(&self, key: PoolKey, tx: Sender) {
        if tx.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut g = self.lock();
        let v = g.entry(key).or_default();
        if v.len() < self.max_idle {
            v.push(IdleConn { tx, since: Instant::now() });
        }
    }

    /// Close idle connections past the idle timeout (run periodically).
    pub fn sweep(&self) {
        let mut g = self.lock();
        g.retain(|_, v| {
            v.retain(|c| !c.tx.is_closed() && c.since.elapsed() <= self.idle_timeout);
            !v.is_empty()
        });
        drop(g);
        self.lock_raw().retain(|_, v| {
            v.retain(|c| c.since.elapsed() <= self.idle_timeout);
            !v.is_empty()
        });
    }

    /// Idle connections currently pooled (for tests and the config dump).
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum::<usize>() + self.lock_raw().values().map(Vec::len).sum::<usize>()
    }

    fn lock_raw(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<IdleRaw>, KeyHasherBuilder>> {
        self.raw.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle fast-lane connection for `key` within the idle timeout, if any. The upstream
    /// may have closed it meanwhile; the lane sends a request that found it closed again on
    /// a new connection.
    pub(crate) fn take_raw(&self, key: PoolKey, now: Instant) -> Option<(Upstream, Arc<UpstreamInfo>)> {
        let mut g = self.lock_raw();
        let v = g.get_mut(&key)?;
        while let Some(c) = v.pop() {
            if now.saturating_duration_since(c.since) <= self.idle_timeout {
                return Some((c.io, c.info));
            }
        }
        None
    }

    /// Return a fast-lane connection after a complete exchange.
    pub(crate) fn put_raw(&self, key: PoolKey, io: Upstream, info: Arc<UpstreamInfo>) {
        if self.max_idle == 0 {
            return;
        }
        let mut g = self.lock_raw();
        let v = g.entry(key).or_default();
        if v.len() < self.max_idle {
            v.push(IdleRaw { io, info, since: Instant::now() });
        }
    }

    /// Opens a connection for `key` carrying `proto`: routed and with TLS as the mesh says
    /// for a mesh destination, else plaintext to `key.dst`.
    pub async fn connect_upstream(
        &self,
        key: PoolKey,
        proto: AppProtocol,
    ) -> Result<(Upstream, Arc<UpstreamInfo>), UpstreamError> {
        let (dst, origin) = match key.mesh.map(|_| self.mesh.route(key.dst)) {
            None | Some(Route::Passthrough) => (key.dst, None),
            Some(Route::Endpoint { dst, origin }) => (dst, origin),
            Some(Route::NoEndpoint { service }) => return Err(UpstreamError::NoHealthyUpstream { service }),
        };
        let tcp = connect_tcp(dst, key.src, self.connect_timeout).await?;
        let local = tcp.local_addr().ok().map(crate::orig_dst::canonical_addr);
        let Some(origin) = origin.and_then(|id| self.mesh.origins.get(id)) else {
            return Ok((Upstream::Plain(tcp), Arc::new(UpstreamInfo { addr: dst, local, tls: None })));
        };
        let Some(tls) = &self.mesh.tls else {
            // The mesh config was refused at load time if it asked for TLS without credentials.
            return Ok((Upstream::Plain(tcp), Arc::new(UpstreamInfo { addr: dst, local, tls: None })));
        };
        match tls.connect(&origin, proto, tcp, self.connect_timeout).await {
            Ok((s, info)) => {
                Ok((Upstream::Tls(Box::new(s)), Arc::new(UpstreamInfo { addr: dst, local, tls: Some(info) })))
            }
            Err(failure) => {
                tracing::warn!(
                    upstream = %dst, reason = failure.reason.as_str(), error = %failure.message,
                    "outbound TLS handshake failed"
                );
                Err(UpstreamError::Tls { addr: dst, failure })
            }
        }
    }

    /// A ready HTTP/2 stream sender for `key`: the shared connection, or a new one when there
    /// is none or it is closing (a GOAWAY from the upstream).
    pub async fn get_h2(&self, key: PoolKey) -> Result<H2Sender, UpstreamError> {
        let existing = self.h2.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        if let Some(mut tx) = existing.filter(|t| !t.is_closed()) {
            if tx.ready().await.is_ok() {
                return Ok(tx);
            }
        }
        let (stream, info) = self.connect_upstream(key, AppProtocol::Http2).await?;
        let s = &self.h2_settings;
        let (mut tx, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .initial_stream_window_size(s.stream_window)
            .initial_connection_window_size(s.connection_window)
            .max_concurrent_reset_streams(64)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr: info.addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with error");
            }
        });
        tx.ready().await.map_err(|source| UpstreamError::Handshake { addr: info.addr, source })?;
        self.h2.lock().unwrap_or_else(|e| e.into_inner()).insert(key, tx.clone());
        Ok(tx)
    }

    /// Forget the shared HTTP/2 connection to `key` (it refused a stream), so the next
    /// [`Pool::get_h2`] opens a new one; streams still on it finish there.
    pub fn evict_h2(&self, key: PoolKey) {
        self.h2.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }

    /// Open a new HTTP/1 client connection; its driver runs as its own task.
    pub async fn connect(&self, key: PoolKey) -> Result<Sender, UpstreamError> {
        let (stream, info) = self.connect_upstream(key, AppProtocol::Http1).await?;
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            // As on the server side: one flat buffer and one `write` per message.
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr: info.addr, source })?;
        tokio::spawn(async move {
            // Errors here (upstream reset, ...) also surface on the request/response that was
            // in flight, where they are classified; this is just the driver.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with error");
            }
        });
        Ok(Sender { tx, info })
    }
}

/// HTTP/2 flow-control windows and stream limits, for both sides of the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct H2Settings {
    /// Per-stream receive window, bytes (flow control: what one stream may have in flight).
    pub stream_window: u32,
    /// Per-connection receive window, bytes.
    pub connection_window: u32,
    /// Concurrent streams a client may open on one downstream connection.
    pub max_concurrent_streams: u32,
}

impl Default for H2Settings {
    fn default() -> Self {
        // Bounded buffering per connection (unlike Envoy's 256 MiB windows): a slow reader
        // pushes back on its writer through the proxy instead of filling the proxy's memory.
        Self { stream_window: 1 << 20, connection_window: 4 << 20, max_concurrent_streams: 1024 }
    }
}

/// Connect to `dst`, binding `src:0` first when given (inbound traffic leaves from
/// 127.0.0.6 so Istio's `-o lo -s 127.0.0.6/32 -j RETURN` rule lets it reach the app).
pub async fn connect_tcp(dst: SocketAddr, src: Option<IpAddr>, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let sock = if dst.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|source| UpstreamError::Connect { addr: dst, source })?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0)).map_err(|source| UpstreamError::BindSource {
            source_ip: ip,
            addr: dst,
            source,
        })?;
    }
    // Small request/response exchanges must not wait for Nagle.
    sock.set_nodelay(true).map_err(|source| UpstreamError::Connect { addr: dst, source })?;
    match tokio::time::timeout(timeout, sock.connect(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(UpstreamError::Connect { addr: dst, source }),
        Err(_) => Err(UpstreamError::ConnectTimeout { addr: dst, timeout }),
    }
}
