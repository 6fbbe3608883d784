//! I/O wrappers: [`Rewind`] replays bytes consumed by protocol sniffing, [`Metered`] counts
//! bytes and stamps activity for the idle timeout and the connection record.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Byte counters and the last-activity stamp of one downstream connection.
///
/// Atomics rather than a lock: hyper owns the I/O object while the admin endpoint and the idle
/// watchdog read the numbers from other tasks.
#[derive(Debug)]
pub struct IoStats {
    epoch: Instant,
    /// Bytes read from the peer.
    pub rx: AtomicU64,
    /// Bytes written to the peer.
    pub tx: AtomicU64,
    /// Milliseconds since `epoch` of the last successful read or write.
    last_activity_ms: AtomicU64,
    /// Whether reads and writes stamp `last_activity_ms`. Only an idle watchdog reads the
    /// stamp, and an HTTP connection has none until it becomes a tunnel; a clock read per
    /// I/O call is a measurable part of a small request's cost.
    track_activity: AtomicBool,
}

impl IoStats {
    /// Fresh counters; activity stamped now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            rx: AtomicU64::new(0),
            tx: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            track_activity: AtomicBool::new(true),
        }
    }

    /// Stop (`false`) or resume (`true`) stamping activity; resuming stamps now, so an idle
    /// watchdog started right after counts from this moment.
    pub fn track_activity(&self, on: bool) {
        self.track_activity.store(on, Ordering::Relaxed);
        if on {
            self.stamp();
        }
    }

    fn touch(&self) {
        if self.track_activity.load(Ordering::Relaxed) {
            self.stamp();
        }
    }

    fn stamp(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Only store when it changed: avoids dirtying the cache line on every small I/O.
        if self.last_activity_ms.load(Ordering::Relaxed) != ms {
            self.last_activity_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Record `n` bytes read.
    pub fn add_rx(&self, n: usize) {
        self.rx.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    /// Record `n` bytes written.
    pub fn add_tx(&self, n: usize) {
        self.tx.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    /// When the connection last moved a byte.
    pub fn last_activity(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    /// `(rx, tx)` so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.rx.load(Ordering::Relaxed), self.tx.load(Ordering::Relaxed))
    }
}

impl Default for IoStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves once `stats` has seen no activity for `idle`. Sleeps in idle-sized steps, so
/// its cost is one timer per connection, not one per I/O operation.
pub async fn idle_watchdog(stats: Arc<IoStats>, idle: Duration) {
    loop {
        let deadline = stats.last_activity() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// An I/O object that counts bytes into [`IoStats`].
#[derive(Debug)]
pub struct Metered<T> {
    inner: T,
    stats: Arc<IoStats>,
}

impl<T> Metered<T> {
    /// Wrap `inner`.
    pub fn new(inner: T, stats: Arc<IoStats>) -> Self {
        Self { inner, stats }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.stats.add_rx(n);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.stats.add_tx(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.stats.add_tx(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An I/O object that first yields `prefix` (bytes already read while sniffing), then reads
/// from `inner`. Writes go straight to `inner`.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// Replay `prefix` before `inner`'s bytes.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    /// Put `bytes` back in front of what is still to be read.
    pub fn unread(&mut self, bytes: Bytes) {
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else if !bytes.is_empty() {
            let mut all = bytes::BytesMut::with_capacity(bytes.len() + self.prefix.len());
            all.extend_from_slice(&bytes);
            all.extend_from_slice(&self.prefix);
            self.prefix = all.freeze();
        }
    }

    /// The wrapped I/O object.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewind_then_inner_and_metering() {
        let (a, mut b) = tokio::io::duplex(64);
        let stats = Arc::new(IoStats::new());
        let mut io = Rewind::new(Bytes::from_static(b"hello "), Metered::new(a, stats.clone()));
        b.write_all(b"world").await.unwrap();
        drop(b);
        let mut s = String::new();
        io.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
        // Only bytes read from the socket count; the replayed prefix was counted by the sniffer.
        assert_eq!(stats.bytes(), (5, 0));
    }
}
