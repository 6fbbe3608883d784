//! Recovering where a redirected connection was originally going.
//!
//! What varies between production and tests is injected through [`OrigDstResolver`]:
//! [`SoOriginalDst`] asks conntrack (NAT `REDIRECT`), [`LocalAddr`] reads the socket's local
//! address (`TPROXY`), and [`FixedTarget`] lets in-process tests name the destination without
//! netfilter.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::SockRef;
use tokio::net::TcpStream;

/// Which listener accepted a connection (inbound: 15006, outbound: 15001).
pub use meshpass_settings::Direction;

/// Why no original destination could be found.
#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    /// The kernel had no NAT record for this connection (it was not redirected).
    #[error("no original destination for {peer}: {source}")]
    Lookup {
        /// Client address of the connection.
        peer: SocketAddr,
        /// The `getsockopt` error.
        #[source]
        source: io::Error,
    },
    /// Reading the socket's addresses failed.
    #[error("socket address of accepted connection: {0}")]
    Socket(#[source] io::Error),
}

/// Finds the original destination of an accepted, redirected connection.
pub trait OrigDstResolver: fmt::Debug + Send + Sync + 'static {
    /// The address the client meant to reach.
    fn original_dst(&self, stream: &TcpStream, direction: Direction) -> Result<SocketAddr, OrigDstError>;

    /// True when the answer is the accepted socket's own local address (TPROXY, eBPF
    /// capture), so "destination == local address" says nothing about a loop.
    fn local_is_original(&self, _direction: Direction) -> bool {
        false
    }
}

/// NAT `REDIRECT` mode: `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6).
#[derive(Debug, Default, Clone, Copy)]
pub struct SoOriginalDst;

impl OrigDstResolver for SoOriginalDst {
    fn original_dst(&self, stream: &TcpStream, _direction: Direction) -> Result<SocketAddr, OrigDstError> {
        let peer = stream.peer_addr().map_err(OrigDstError::Socket)?;
        let sock = SockRef::from(stream);
        // The option must match the family of the *connection*, not of the listening socket:
        // a v4 client on a dual-stack `[::]` listener shows up as a v4-mapped peer but its
        // conntrack entry is IPv4 (same reasoning as linkerd's orig_dst.rs). Try the likely
        // family first and fall back to the other.
        let v4_first = canonical(peer.ip()).is_ipv4();
        let first = if v4_first { sock.original_dst_v4() } else { sock.original_dst_v6() };
        let addr = match first {
            Ok(a) => a,
            Err(e1) => {
                let second = if v4_first { sock.original_dst_v6() } else { sock.original_dst_v4() };
                second.map_err(|_| OrigDstError::Lookup { peer, source: e1 })?
            }
        };
        addr.as_socket().map(canonical_addr).ok_or_else(|| OrigDstError::Lookup {
            peer,
            source: io::Error::new(io::ErrorKind::InvalidData, "not an inet address"),
        })
    }
}

/// `TPROXY` mode: the transparent listener accepted the connection *as* the original
/// destination, so the local address is the answer (as ztunnel's `orig_dst_addr_or_default`).
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalAddr;

impl OrigDstResolver for LocalAddr {
    fn original_dst(&self, stream: &TcpStream, _direction: Direction) -> Result<SocketAddr, OrigDstError> {
        stream.local_addr().map(canonical_addr).map_err(OrigDstError::Socket)
    }

    fn local_is_original(&self, _direction: Direction) -> bool {
        true
    }
}

/// Istio's `TPROXY` mode: only *inbound* connections are delivered by TPROXY (the accepted
/// socket's local address is the destination); outbound ones are still NAT-redirected to
/// 15001, so their destination comes from conntrack (`SO_ORIGINAL_DST`), as Envoy's
/// original-destination listener filter does.
#[derive(Debug, Default, Clone, Copy)]
pub struct TproxyInbound;

impl OrigDstResolver for TproxyInbound {
    fn original_dst(&self, stream: &TcpStream, direction: Direction) -> Result<SocketAddr, OrigDstError> {
        match direction {
            Direction::Inbound => LocalAddr.original_dst(stream, direction),
            Direction::Outbound => SoOriginalDst.original_dst(stream, direction),
        }
    }

    fn local_is_original(&self, direction: Direction) -> bool {
        direction == Direction::Inbound
    }
}

/// Test resolver: every connection of a direction "was going" to a fixed address.
#[derive(Debug, Default, Clone, Copy)]
pub struct FixedTarget {
    /// Destination of inbound connections (`None`: lookup fails, as for a direct connection).
    pub inbound: Option<SocketAddr>,
    /// Destination of outbound connections.
    pub outbound: Option<SocketAddr>,
}

impl FixedTarget {
    /// Both directions go to `addr`.
    pub fn both(addr: SocketAddr) -> Self {
        Self { inbound: Some(addr), outbound: Some(addr) }
    }
}

impl OrigDstResolver for FixedTarget {
    fn original_dst(&self, stream: &TcpStream, direction: Direction) -> Result<SocketAddr, OrigDstError> {
        let t = match direction {
            Direction::Inbound => self.inbound,
            Direction::Outbound => self.outbound,
        };
        t.ok_or_else(|| OrigDstError::Lookup {
            peer: stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            source: io::Error::new(io::ErrorKind::NotFound, "no fixed target configured"),
        })
    }
}

/// Unwrap IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) so comparisons and source-address
/// choice see the real family.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// [`canonical`] for a socket address.
pub fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmaps_v4_mapped() {
        let a: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical_addr(a), "10.0.0.1:80".parse::<SocketAddr>().unwrap());
        let b: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(canonical_addr(b), b);
    }

    #[tokio::test]
    async fn so_original_dst_fails_without_nat() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Without a NAT entry the kernel either has no conntrack record (error) or reports
        // the address itself; both are handled by the proxy's loop check.
        match SoOriginalDst.original_dst(&s, Direction::Outbound) {
            Ok(a) => assert_eq!(a, addr),
            Err(OrigDstError::Lookup { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
        assert_eq!(LocalAddr.original_dst(&s, Direction::Inbound).unwrap(), addr);
    }
}
