//! What Envoy's `tls_inspector` learns from a connection's first bytes: whether it is a TLS
//! ClientHello, and if so its SNI and ALPN list. Pure: the caller reads, this module parses
//! whatever has arrived so far (a ClientHello may span several TCP segments, or several TLS
//! records).

/// The largest ClientHello looked at (Envoy's `tls_inspector` default `max_client_hello_size`
/// is 64 KiB; a sidecar's hello is well under 2 KiB even with post-quantum key shares).
pub const MAX_HELLO: usize = 64 * 1024;

/// What the bytes so far say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough bytes to decide.
    NeedMore,
    /// Not a TLS ClientHello: plaintext (or something else entirely).
    NotTls,
    /// A complete ClientHello.
    Tls(Hello),
    /// The bytes are a TLS handshake, but the ClientHello is larger than [`MAX_HELLO`].
    TooLarge,
}

/// The parts of a ClientHello that pick a filter chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// The `server_name` extension's host name, if any.
    pub sni: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

impl Hello {
    /// Whether the client offered one of `protocols`.
    pub fn offers_any(&self, protocols: &[&[u8]]) -> bool {
        self.alpn.iter().any(|a| protocols.contains(&a.as_slice()))
    }
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// Classifies `buf`, the connection's first bytes.
pub fn inspect(buf: &[u8]) -> Verdict {
    // Reassemble the handshake message from as many records as have arrived.
    let mut msg: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        if rest.is_empty() {
            return Verdict::NeedMore;
        }
        if rest[0] != HANDSHAKE {
            return Verdict::NotTls;
        }
        if rest.len() < 3 {
            return Verdict::NeedMore;
        }
        // TLS 1.0-1.3 all put 3.x in the record version (1.3 keeps 3.1 there).
        if rest[1] != 3 || rest[2] > 4 {
            return Verdict::NotTls;
        }
        if rest.len() < 5 {
            return Verdict::NeedMore;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Verdict::NotTls;
        }
        if rest.len() < 5 + len {
            // The first record tells the message type and length early; refuse giants before
            // waiting for them.
            if msg.is_empty() && rest.len() >= 9 {
                if rest[5] != CLIENT_HELLO {
                    return Verdict::NotTls;
                }
                if hello_len(&rest[6..9]) > MAX_HELLO {
                    return Verdict::TooLarge;
                }
            }
            return Verdict::NeedMore;
        }
        msg.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if msg.len() >= 4 {
            if msg[0] != CLIENT_HELLO {
                return Verdict::NotTls;
            }
            let want = hello_len(&msg[1..4]);
            if want > MAX_HELLO {
                return Verdict::TooLarge;
            }
            if msg.len() >= 4 + want {
                return match parse_body(&msg[4..4 + want]) {
                    Some(h) => Verdict::Tls(h),
                    // A handshake record that is not a well-formed hello: Envoy's inspector
                    // gives up the same way and the connection is matched as plaintext.
                    None => Verdict::NotTls,
                };
            }
        }
    }
}

fn hello_len(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A cursor over a byte slice whose reads fail (None) past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn parse_body(body: &[u8]) -> Option<Hello> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut hello = Hello::default();
    if r.0.is_empty() {
        // No extensions at all (an old client): no SNI, no ALPN.
        return Some(hello);
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let mut data = Reader(exts.vec16()?);
        match ty {
            EXT_SERVER_NAME => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let kind = list.u8()?;
                    let name = list.vec16()?;
                    if kind == 0 && hello.sni.is_none() {
                        hello.sni = std::str::from_utf8(name).ok().map(str::to_owned);
                    }
                }
            }
            EXT_ALPN => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    hello.alpn.push(list.vec8()?.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::pki_types::ServerName;
    use std::sync::Arc;

    /// The first flight of a real rustls client offering `alpn` to `sni`.
    fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let mut c =
            rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from(sni.to_owned()).unwrap()).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_real_hello() {
        let sni = "outbound_.5000_._.helloworld.default.svc.cluster.local";
        let bytes = client_hello(sni, &[b"istio-http/1.1", b"istio", b"http/1.1"]);
        let Verdict::Tls(h) = inspect(&bytes) else { panic!("not recognised: {:?}", inspect(&bytes)) };
        assert_eq!(h.sni.as_deref(), Some(sni));
        assert_eq!(h.alpn, vec![b"istio-http/1.1".to_vec(), b"istio".to_vec(), b"http/1.1".to_vec()]);
        assert!(h.offers_any(&[b"istio"]));
        assert!(!h.offers_any(&[b"h2"]));
        // Every prefix is undecided, never misclassified.
        for n in 0..bytes.len() {
            assert_eq!(inspect(&bytes[..n]), Verdict::NeedMore, "prefix of {n} bytes");
        }
        // Bytes after the hello (none expected before the server answers) do not matter.
        let mut more = bytes;
        more.extend_from_slice(b"garbage");
        assert!(matches!(inspect(&more), Verdict::Tls(_)));
    }

    #[test]
    fn a_hello_split_over_two_records_is_reassembled() {
        let bytes = client_hello("a.example", &[b"h2"]);
        let body = &bytes[5..];
        let (a, b) = body.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
            split.extend_from_slice(part);
        }
        let Verdict::Tls(h) = inspect(&split) else { panic!() };
        assert_eq!(h.alpn, vec![b"h2".to_vec()]);
        assert_eq!(inspect(&split[..50]), Verdict::NeedMore);
    }

    #[test]
    fn plaintext_and_other_records_are_not_tls() {
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Verdict::NotTls);
        assert_eq!(inspect(b"PRI * HTTP/2.0"), Verdict::NotTls);
        assert_eq!(inspect(b""), Verdict::NeedMore);
        assert_eq!(inspect(&[22]), Verdict::NeedMore);
        assert_eq!(inspect(&[22, 9, 9]), Verdict::NotTls);
        // An alert record, and a handshake record carrying a ServerHello.
        assert_eq!(inspect(&[21, 3, 3, 0, 2, 2, 40]), Verdict::NotTls);
        assert_eq!(inspect(&[22, 3, 3, 0, 4, 2, 0, 0, 0]), Verdict::NotTls);
        // A ClientHello whose body is truncated garbage.
        assert_eq!(inspect(&[22, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3]), Verdict::NotTls);
        // A ClientHello announcing more than the limit.
        assert_eq!(inspect(&[22, 3, 1, 0x40, 0, 1, 0x10, 0, 0]), Verdict::TooLarge);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = inspect(&bytes);
            let mut tls = vec![22u8, 3, 1];
            tls.extend_from_slice(&bytes);
            let _ = inspect(&tls);
        }
    }
}
