//! Protocol selection as Istio does it: a Service port's protocol comes from its
//! `appProtocol` or, failing that, its name's prefix (`http-web` → HTTP, `grpc` → gRPC,
//! `tcp-db` → TCP); only ports whose protocol is unknown are sniffed.
//!
//! The proxy is told each port's protocol per direction ([`PortProtocols`], parsed from
//! `MESHPASS_PROXY_INBOUND_PORTS` / `MESHPASS_PROXY_OUTBOUND_PORTS`), the way Istio gives a
//! sidecar one listener per Service port: inbound keyed by the port the app listens on
//! (targetPort), outbound by the Service port the app connects to.
//!
//! What each protocol means for a connection ([`PortProtocol::handling`]):
//! - HTTP-family ports are served at L7 without sniffing; a request that is not valid HTTP
//!   gets a local error reply, never a fall-back to raw TCP;
//! - TCP-family ports (`tcp`, `tls`, `https`, `mongo`, `mysql`, `redis`, ...) are forwarded
//!   byte for byte at once, so server-first protocols do not wait for a sniff timeout;
//! - other ports are sniffed ([`crate::sniff`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// A port protocol in Istio's vocabulary (`pkg/config/protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PortProtocol {
    /// `http`.
    Http,
    /// `http2` (also appProtocol `kubernetes.io/h2c`).
    Http2,
    /// `grpc`.
    Grpc,
    /// `grpc-web`.
    GrpcWeb,
    /// `http_proxy`.
    HttpProxy,
    /// `https`.
    Https,
    /// `tls`.
    Tls,
    /// `tcp`.
    Tcp,
    /// `mongo`.
    Mongo,
    /// `mysql`.
    Mysql,
    /// `redis`.
    Redis,
    /// `udp` (not proxied by a sidecar; treated as opaque).
    Udp,
    /// Anything else: sniffed.
    Unsupported,
}

/// What the proxy does with a connection to a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handling {
    /// L7 HTTP; requests go to the upstream over HTTP/1.1.
    Http1Upstream,
    /// L7 HTTP; requests go to the upstream over HTTP/2 (prior knowledge), as Istio's
    /// clusters for `http2` / `grpc` ports.
    Http2Upstream,
    /// Opaque TCP.
    Tcp,
    /// Sniff the first bytes.
    Sniff,
}

impl PortProtocol {
    /// Istio's `protocol.Parse`: case-insensitive, unknown → [`PortProtocol::Unsupported`].
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "http" => Self::Http,
            "http2" => Self::Http2,
            "grpc" => Self::Grpc,
            "grpc-web" => Self::GrpcWeb,
            "http_proxy" => Self::HttpProxy,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "tcp" => Self::Tcp,
            "mongo" => Self::Mongo,
            "mysql" => Self::Mysql,
            "redis" => Self::Redis,
            "udp" => Self::Udp,
            _ => Self::Unsupported,
        }
    }

    /// A Service port's protocol from its `appProtocol` (first) and its name (Istio's
    /// `kube.ConvertProtocol`): the name's part before the first `-` is the protocol.
    pub fn from_port(name: &str, app_protocol: Option<&str>) -> Self {
        if let Some(ap) = app_protocol {
            let p = match ap {
                "kubernetes.io/h2c" => Self::Http2,
                "kubernetes.io/ws" => Self::Http,
                "kubernetes.io/wss" => Self::Https,
                other => Self::parse(other),
            };
            if p != Self::Unsupported {
                return p;
            }
        }
        Self::parse(name.split('-').next().unwrap_or(name))
    }

    /// What the proxy does with it.
    pub fn handling(self) -> Handling {
        match self {
            Self::Http | Self::HttpProxy => Handling::Http1Upstream,
            Self::Http2 | Self::Grpc | Self::GrpcWeb => Handling::Http2Upstream,
            Self::Https | Self::Tls | Self::Tcp | Self::Mongo | Self::Mysql | Self::Redis | Self::Udp => Handling::Tcp,
            Self::Unsupported => Handling::Sniff,
        }
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        f.write_str(&s)
    }
}

/// Port → protocol for one direction. Ports not listed are sniffed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PortProtocols(BTreeMap<u16, PortProtocol>);

impl PortProtocols {
    /// The protocol declared for `port`.
    pub fn get(&self, port: u16) -> PortProtocol {
        self.0.get(&port).copied().unwrap_or(PortProtocol::Unsupported)
    }

    /// Declare `port` as `protocol`.
    pub fn insert(&mut self, port: u16, protocol: PortProtocol) {
        self.0.insert(port, protocol);
    }

    /// Parse `PORT=NAME[/APPPROTOCOL],...` (a Service port's number, name and optional
    /// appProtocol), e.g. `9080=http-web,50051=grpc,8080=web/kubernetes.io/h2c,3306=mysql`.
    /// Every bad item is named in the error.
    pub fn parse(v: &str) -> Result<Self, String> {
        let mut out = Self::default();
        let mut errs = Vec::new();
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((port, proto)) = item.split_once('=') else {
                errs.push(format!("{item:?}: expected PORT=NAME[/APPPROTOCOL]"));
                continue;
            };
            let port = match port.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    errs.push(format!("{item:?}: {port:?} is not a port (1-65535)"));
                    continue;
                }
            };
            let (name, app) = match proto.trim().split_once('/') {
                Some((n, a)) => (n, Some(a)),
                None => (proto.trim(), None),
            };
            if name.is_empty() && app.is_none() {
                errs.push(format!("{item:?}: empty port name"));
                continue;
            }
            if out.0.contains_key(&port) {
                errs.push(format!("{item:?}: port {port} listed twice"));
                continue;
            }
            out.insert(port, PortProtocol::from_port(name, app));
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_port_naming() {
        assert_eq!(PortProtocol::from_port("http", None), PortProtocol::Http);
        assert_eq!(PortProtocol::from_port("http-web", None), PortProtocol::Http);
        assert_eq!(PortProtocol::from_port("HTTP2-x", None), PortProtocol::Http2);
        assert_eq!(PortProtocol::from_port("grpc-web", None), PortProtocol::Grpc, "prefix before the first '-'");
        assert_eq!(PortProtocol::from_port("x", Some("grpc-web")), PortProtocol::GrpcWeb);
        assert_eq!(PortProtocol::from_port("tcp-db", None), PortProtocol::Tcp);
        assert_eq!(PortProtocol::from_port("web", None), PortProtocol::Unsupported);
        assert_eq!(PortProtocol::from_port("web", Some("kubernetes.io/h2c")), PortProtocol::Http2);
        assert_eq!(PortProtocol::from_port("http", Some("tcp")), PortProtocol::Tcp, "appProtocol wins");
        assert_eq!(PortProtocol::from_port("http", Some("nonsense")), PortProtocol::Http);
        assert_eq!(PortProtocol::from_port("mysql", None).handling(), Handling::Tcp);
        assert_eq!(PortProtocol::Grpc.handling(), Handling::Http2Upstream);
        assert_eq!(PortProtocol::Unsupported.handling(), Handling::Sniff);
    }

    #[test]
    fn parses_port_lists_and_names_bad_items() {
        let p = PortProtocols::parse("9080=http-web, 50051=grpc,8080=web/kubernetes.io/h2c,3306=mysql").unwrap();
        assert_eq!(p.get(9080), PortProtocol::Http);
        assert_eq!(p.get(50051), PortProtocol::Grpc);
        assert_eq!(p.get(8080), PortProtocol::Http2);
        assert_eq!(p.get(3306), PortProtocol::Mysql);
        assert_eq!(p.get(1), PortProtocol::Unsupported);
        let e = PortProtocols::parse("x=http,70000=tcp,80,81=http,81=tcp").unwrap_err();
        assert!(e.contains("\"x=http\""), "{e}");
        assert!(e.contains("\"70000=tcp\""), "{e}");
        assert!(e.contains("\"80\": expected"), "{e}");
        assert!(e.contains("port 81 listed twice"), "{e}");
    }
}
