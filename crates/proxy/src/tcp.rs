//! Opaque TCP forwarding with half-close: EOF from one side becomes `shutdown(SHUT_WR)` on the
//! other, and the connection ends when both directions are done (or on error, idle timeout or
//! forced drain, where both sockets are reset so the peers learn of the failure).
//!
//! Buffers are allocated on the first readable event, so a connection that never carries
//! data (the 10k-idle-connections case) costs no buffer memory.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use socket2::SockRef;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::io::{idle_watchdog, IoStats};
use crate::outcome::{Flag, Outcome, Source};
use crate::record::ConnHandle;
use crate::tls::{Downstream, Upstream};
use crate::Phase;

const BUF: usize = 16 * 1024;

/// A failed side of the splice: which peer's socket failed, and how.
struct SideError(Source, io::Error);

fn side_outcome(side: Source, e: &io::Error) -> Outcome {
    let flag = match side {
        Source::Upstream => Flag::UpstreamConnectionTermination,
        _ => Flag::DownstreamConnectionTermination,
    };
    Outcome::new(flag, format!("tcp_error: {e}"))
}

/// Copy one direction until EOF, then half-close the writer. `count` sees every chunk.
/// Errors name the side whose socket failed (`from` for reads, `to` for writes).
async fn pipe(
    r: &ReadHalf<'_>,
    w: &mut WriteHalf<'_>,
    (from, to): (Source, Source),
    count: impl Fn(usize),
) -> Result<(), SideError> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        r.readable().await.map_err(|e| SideError(from, e))?;
        if buf.is_empty() {
            buf = vec![0; BUF];
        }
        let n = match r.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(SideError(from, e)),
        };
        if n == 0 {
            // Propagate the half-close; the peer may already be gone, which is fine.
            match w.shutdown().await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(SideError(to, e)),
            }
            return Ok(());
        }
        count(n);
        w.write_all(&buf[..n]).await.map_err(|e| SideError(to, e))?;
    }
}

/// Forward between `down` (client) and `up` (upstream) after replaying `prefix` (bytes the
/// sniffer already read from the client) to the upstream.
pub(crate) async fn forward(
    mut down: TcpStream,
    prefix: Bytes,
    mut up: TcpStream,
    conn: &ConnHandle,
    idle: Duration,
    mut drain: tokio::sync::watch::Receiver<Phase>,
) {
    let stats: &IoStats = &conn.stats;
    let result = async {
        if !prefix.is_empty() {
            up.write_all(&prefix).await.map_err(|e| SideError(Source::Upstream, e))?;
        }
        let (dr, mut dw) = down.split();
        let (ur, mut uw) = up.split();
        let (d, u) = (Source::Downstream, Source::Upstream);
        tokio::try_join!(
            pipe(&dr, &mut uw, (d, u), |n| stats.add_rx(n)),
            pipe(&ur, &mut dw, (u, d), |n| stats.add_tx(n))
        )
        .map(|_| ())
    };
    let outcome = tokio::select! {
        r = result => match r {
            Ok(()) => None,
            Err(SideError(side, e)) => Some(side_outcome(side, &e)),
        },
        _ = idle_watchdog(conn.stats.clone(), idle) => Some(Outcome::new(Flag::StreamIdleTimeout, "idle_timeout")),
        _ = crate::phase_reached(&mut drain, |p| p >= Phase::Force) => Some(Outcome::new(Flag::LocalReset, "drain_timeout")),
    };
    if let Some(o) = outcome {
        // Abortive close (RST) on both sides, so neither peer mistakes a failure for a clean
        // end of stream.
        let _ = SockRef::from(&down).set_linger(Some(Duration::ZERO));
        let _ = SockRef::from(&up).set_linger(Some(Duration::ZERO));
        conn.set_outcome(o);
    }
}

/// Copy one direction of a TLS (or mixed) connection until EOF, then half-close the writer.
async fn pipe_io<R, W>(mut r: R, mut w: W, (from, to): (Source, Source), count: impl Fn(usize)) -> Result<(), SideError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await.map_err(|e| SideError(from, e))?;
        if n == 0 {
            match w.shutdown().await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(SideError(to, e)),
            }
            return Ok(());
        }
        count(n);
        w.write_all(&buf[..n]).await.map_err(|e| SideError(to, e))?;
    }
}

/// [`forward`] for connections where either side may be TLS; plaintext on both sides takes
/// the socket-level path.
pub(crate) async fn forward_io(
    down: Downstream,
    prefix: Bytes,
    up: Upstream,
    conn: &ConnHandle,
    idle: Duration,
    mut drain: tokio::sync::watch::Receiver<Phase>,
) {
    let (mut down, mut up) = match (down, up) {
        (Downstream::Plain(d), Upstream::Plain(u)) => return forward(d, prefix, u, conn, idle, drain).await,
        pair => pair,
    };
    let stats: &IoStats = &conn.stats;
    let result = async {
        if !prefix.is_empty() {
            up.write_all(&prefix).await.map_err(|e| SideError(Source::Upstream, e))?;
        }
        let (dr, dw) = tokio::io::split(&mut down);
        let (ur, uw) = tokio::io::split(&mut up);
        let (d, u) = (Source::Downstream, Source::Upstream);
        tokio::try_join!(pipe_io(dr, uw, (d, u), |n| stats.add_rx(n)), pipe_io(ur, dw, (u, d), |n| stats.add_tx(n)))
            .map(|_| ())
    };
    let outcome = tokio::select! {
        r = result => match r {
            Ok(()) => None,
            Err(SideError(side, e)) => Some(side_outcome(side, &e)),
        },
        _ = idle_watchdog(conn.stats.clone(), idle) => Some(Outcome::new(Flag::StreamIdleTimeout, "idle_timeout")),
        _ = crate::phase_reached(&mut drain, |p| p >= Phase::Force) => Some(Outcome::new(Flag::LocalReset, "drain_timeout")),
    };
    if let Some(o) = outcome {
        let _ = SockRef::from(down.tcp()).set_linger(Some(Duration::ZERO));
        let _ = SockRef::from(up.tcp()).set_linger(Some(Duration::ZERO));
        conn.set_outcome(o);
    }
}
