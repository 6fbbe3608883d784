//! The two sides of a proxied connection as one type each, plaintext or TLS, so that the
//! protocol handling above (sniffing, HTTP, TCP forwarding) is written once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

use crate::io::Rewind;

/// A downstream connection: as accepted, or with mutual TLS terminated.
#[derive(Debug)]
pub enum Downstream {
    /// Plaintext (or TLS the proxy does not terminate).
    Plain(TcpStream),
    /// Mutual TLS terminated by the proxy; the ClientHello bytes read while inspecting are
    /// replayed to rustls first.
    Tls(Box<server::TlsStream<Rewind<TcpStream>>>),
}

/// An upstream connection: plaintext, or TLS the proxy originated.
#[derive(Debug)]
pub enum Upstream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS (Istio mutual TLS, or a `SIMPLE` destination rule).
    Tls(Box<client::TlsStream<TcpStream>>),
}

impl Downstream {
    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Downstream::Plain(s) => s,
            Downstream::Tls(s) => s.get_ref().0.get_ref(),
        }
    }
}

impl Upstream {
    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Upstream::Plain(s) => s,
            Upstream::Tls(s) => s.get_ref().0,
        }
    }
}

macro_rules! either_io {
    ($ty:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $ty::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $ty::Plain(s) => s.is_write_vectored(),
                    $ty::Tls(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_flush(cx),
                    $ty::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $ty::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
                }
            }
        }
    };
}

either_io!(Downstream);
either_io!(Upstream);
