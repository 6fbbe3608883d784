//! What the mesh tells one sidecar, as Istio's control plane does over xDS, in one JSON file
//! (`MESHPASS_PROXY_MESH_CONFIG`) that the proxy reloads when it changes:
//!
//! * `inbound`: the mutual-TLS mode of the workload's ports (STRICT, PERMISSIVE or DISABLE),
//!   as `PeerAuthentication` resolves for this workload — the listener's filter chains;
//! * `outbound`: the Services the workload may call, by ClusterIP and port, each with its
//!   endpoints and, per endpoint, what to send it — Istio mutual TLS (SNI
//!   `outbound_.PORT_._.HOST`, the identities its certificate may carry), plaintext, or TLS of
//!   the app's own — as `DestinationRule`s and auto mTLS resolve it for this client: the
//!   clusters and their endpoints.
//!
//! ```json
//! {
//!   "version": "7",
//!   "inbound": { "mode": "PERMISSIVE", "ports": { "5000": "STRICT" } },
//!   "outbound": [ {
//!     "service": "default/helloworld", "host": "helloworld.default.svc.cluster.local",
//!     "address": "198.19.0.10", "port": 5000,
//!     "endpoints": [ { "address": "198.18.0.7:5000", "workload": "default/helloworld-v1",
//!       "tls": { "mode": "ISTIO_MUTUAL",
//!                "identities": ["spiffe://cluster.local/ns/default/sa/default"] } } ]
//!   } ]
//! }
//! ```
//!
//! A connection to an address the file does not list goes to its original destination in
//! plaintext, as Envoy's `PassthroughCluster`. Parsing is pure and reports every problem at
//! once, naming where it is; a file with any problem is not used (the previous one stays).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use meshpass_identity::SpiffeId;
use serde::{Deserialize, Serialize};

/// A port's server-side mutual-TLS mode (`PeerAuthentication`'s `mtls.mode`, resolved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeerMode {
    /// Only mutual TLS from the mesh is accepted; plaintext is refused.
    Strict,
    /// Mutual TLS from the mesh is terminated, everything else passes as it is (the default).
    #[default]
    Permissive,
    /// Nothing is terminated: TLS, even the mesh's, reaches the app as it was sent.
    Disable,
}

impl PeerMode {
    /// As written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerMode::Strict => "STRICT",
            PeerMode::Permissive => "PERMISSIVE",
            PeerMode::Disable => "DISABLE",
        }
    }
}

impl fmt::Display for PeerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The inbound side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// The workload's mode.
    #[serde(default)]
    pub mode: PeerMode,
    /// Ports whose mode differs (`portLevelMtls`), by the port the app listens on.
    #[serde(default)]
    pub ports: BTreeMap<u16, PeerMode>,
}

impl Inbound {
    /// The mode of `port`.
    pub fn mode(&self, port: u16) -> PeerMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }
}

/// What the sidecar sends to one endpoint, as written in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub enum TlsSpec {
    /// Plaintext.
    Disable,
    /// Istio mutual TLS with the workload certificate.
    IstioMutual {
        /// SNI; default `outbound_.PORT_._.HOST`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sni: Option<String>,
        /// Identities the server's certificate may carry; empty accepts any identity the
        /// mesh CA issued.
        #[serde(default)]
        identities: Vec<String>,
    },
    /// TLS to an app that terminates it itself, verified against `ca_certificates` (a PEM
    /// file) or, without one, not verified (`insecureSkipVerify`).
    Simple {
        /// SNI; default the Service host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sni: Option<String>,
        /// PEM bundle of the CAs the server's certificate must chain to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_certificates: Option<String>,
    },
}

/// One endpoint in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Where to connect (pod IP and target port).
    pub address: SocketAddr,
    /// The workload behind it, `NS/NAME`, for records and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// What to send; default plaintext.
    #[serde(default = "plaintext")]
    pub tls: TlsSpec,
}

fn plaintext() -> TlsSpec {
    TlsSpec::Disable
}

/// One Service port in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSpec {
    /// `NS/NAME`.
    pub service: String,
    /// The Service's host name, `NAME.NS.svc.cluster.local`.
    pub host: String,
    /// The ClusterIP.
    pub address: IpAddr,
    /// The Service port.
    pub port: u16,
    /// The ready endpoints; none means every connection fails (Envoy's "no healthy upstream").
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

/// The file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfigFile {
    /// Free text that names this version in logs and `/config_dump`.
    #[serde(default)]
    pub version: String,
    /// The inbound side.
    #[serde(default)]
    pub inbound: Inbound,
    /// The outbound side.
    #[serde(default)]
    pub outbound: Vec<OutboundSpec>,
}

/// What the sidecar originates towards an endpoint, validated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Origination {
    /// Plaintext.
    Plaintext,
    /// Istio mutual TLS.
    IstioMutual {
        /// The SNI.
        sni: String,
        /// Accepted server identities (sorted; empty = any the mesh CA issued).
        identities: Vec<SpiffeId>,
    },
    /// TLS of the app's own.
    Simple {
        /// The SNI.
        sni: String,
        /// CA bundle file; `None` skips verification.
        ca_certificates: Option<String>,
    },
}

impl Origination {
    /// Whether this is Istio mutual TLS.
    pub fn is_mutual(&self) -> bool {
        matches!(self, Origination::IstioMutual { .. })
    }
}

/// A small, copyable name for an [`Origination`], so that connection-pool keys stay `Copy`
/// and connections to one address with different TLS settings never share a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginId(u32);

/// Every [`Origination`] the proxy has seen, each with its [`OriginId`] (stable for the
/// process's life; the set is bounded by the mesh's Services and policies).
#[derive(Debug, Default)]
pub struct Origins {
    ids: Mutex<HashMap<Arc<Origination>, OriginId>>,
    list: RwLock<Vec<Arc<Origination>>>,
}

impl Origins {
    /// The id of `o`, and the shared copy of it.
    pub fn intern(&self, o: Origination) -> (OriginId, Arc<Origination>) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, id)) = ids.get_key_value(&o) {
            return (*id, k.clone());
        }
        let o = Arc::new(o);
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        let id = OriginId(u32::try_from(list.len()).unwrap_or(u32::MAX));
        list.push(o.clone());
        ids.insert(o.clone(), id);
        (id, o)
    }

    /// The origination named `id`.
    pub fn get(&self, id: OriginId) -> Option<Arc<Origination>> {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        list.get(id.0 as usize).cloned()
    }
}

/// One endpoint, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// `NS/NAME` of its workload, when known.
    pub workload: Option<String>,
    /// What to send it.
    pub tls: Arc<Origination>,
    /// Its id; `None` for plaintext.
    pub origin: Option<OriginId>,
}

/// One Service port, validated, with its round-robin position.
#[derive(Debug)]
pub struct Cluster {
    /// `NS/NAME`.
    pub service: String,
    /// Host name.
    pub host: String,
    /// ClusterIP and port.
    pub address: SocketAddr,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    next: AtomicUsize,
}

impl Cluster {
    /// The next endpoint, round robin; `None` when there is none.
    pub fn pick(&self) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints.get(i)
    }
}

/// The parsed, validated file.
#[derive(Debug, Default)]
pub struct MeshConfig {
    /// The version text.
    pub version: String,
    /// The inbound side.
    pub inbound: Inbound,
    clusters: HashMap<SocketAddr, Arc<Cluster>>,
    /// The file as read (for `/config_dump`).
    pub source: MeshConfigFile,
}

/// One problem in the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct MeshConfigProblem {
    /// Where: a JSON path such as `outbound[1].endpoints[0].tls.identities[2]`, or `line 3 column 7`.
    pub at: String,
    /// What is wrong.
    pub reason: String,
}

/// Every problem in a mesh config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct MeshConfigErrors(pub Vec<MeshConfigProblem>);

impl fmt::Display for MeshConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl MeshConfig {
    /// Parses and validates the file's text; originations get their ids from `origins`.
    pub fn parse(text: &str, origins: &Origins) -> Result<Self, MeshConfigErrors> {
        let file: MeshConfigFile = serde_json::from_str(text).map_err(|e| {
            MeshConfigErrors(vec![MeshConfigProblem {
                at: format!("line {} column {}", e.line(), e.column()),
                reason: e.to_string(),
            }])
        })?;
        Self::from_file(file, origins)
    }

    /// Validates a parsed file.
    pub fn from_file(file: MeshConfigFile, origins: &Origins) -> Result<Self, MeshConfigErrors> {
        let mut problems = Vec::new();
        let mut clusters = HashMap::new();
        for (i, svc) in file.outbound.iter().enumerate() {
            let at = |rest: &str| format!("outbound[{i}]{rest}");
            let address = SocketAddr::new(svc.address, svc.port);
            if svc.host.is_empty() {
                problems.push(MeshConfigProblem { at: at(".host"), reason: "must not be empty".into() });
            }
            let mut endpoints = Vec::new();
            for (j, ep) in svc.endpoints.iter().enumerate() {
                let at = |rest: &str| at(&format!(".endpoints[{j}]{rest}"));
                let tls = match &ep.tls {
                    TlsSpec::Disable => Origination::Plaintext,
                    TlsSpec::IstioMutual { sni, identities } => {
                        let mut ids = Vec::new();
                        for (k, s) in identities.iter().enumerate() {
                            match s.parse::<SpiffeId>() {
                                Ok(id) => ids.push(id),
                                Err(e) => problems.push(MeshConfigProblem {
                                    at: at(&format!(".tls.identities[{k}]")),
                                    reason: e.to_string(),
                                }),
                            }
                        }
                        ids.sort();
                        ids.dedup();
                        let sni = sni.clone().unwrap_or_else(|| format!("outbound_.{}_._.{}", svc.port, svc.host));
                        check_sni(&sni, &at(".tls.sni"), &mut problems);
                        Origination::IstioMutual { sni, identities: ids }
                    }
                    TlsSpec::Simple { sni, ca_certificates } => {
                        let sni = sni.clone().unwrap_or_else(|| svc.host.clone());
                        check_sni(&sni, &at(".tls.sni"), &mut problems);
                        Origination::Simple { sni, ca_certificates: ca_certificates.clone() }
                    }
                };
                let (origin, tls) = match tls {
                    Origination::Plaintext => (None, Arc::new(Origination::Plaintext)),
                    other => {
                        let (id, o) = origins.intern(other);
                        (Some(id), o)
                    }
                };
                endpoints.push(Endpoint { address: ep.address, workload: ep.workload.clone(), tls, origin });
            }
            let cluster = Cluster {
                service: svc.service.clone(),
                host: svc.host.clone(),
                address,
                endpoints,
                next: AtomicUsize::new(0),
            };
            if clusters.insert(address, Arc::new(cluster)).is_some() {
                problems.push(MeshConfigProblem { at: at(""), reason: format!("{address} is listed more than once") });
            }
        }
        if problems.is_empty() {
            Ok(MeshConfig { version: file.version.clone(), inbound: file.inbound.clone(), clusters, source: file })
        } else {
            Err(MeshConfigErrors(problems))
        }
    }

    /// The Service port at `dst` (ClusterIP and port), if the mesh knows it.
    pub fn cluster(&self, dst: SocketAddr) -> Option<&Arc<Cluster>> {
        if self.clusters.is_empty() {
            return None;
        }
        self.clusters.get(&crate::orig_dst::canonical_addr(dst))
    }

    /// Whether any endpoint needs the workload certificate.
    pub fn needs_certificates(&self) -> bool {
        self.inbound.mode != PeerMode::Disable
            && (self.inbound.mode == PeerMode::Strict || self.inbound.ports.values().any(|m| *m == PeerMode::Strict))
            || self.clusters.values().any(|c| c.endpoints.iter().any(|e| e.tls.is_mutual()))
    }
}

fn check_sni(sni: &str, at: &str, problems: &mut Vec<MeshConfigProblem>) {
    if rustls::pki_types::ServerName::try_from(sni).is_err() {
        problems
            .push(MeshConfigProblem { at: at.to_owned(), reason: format!("{sni:?} is not a valid TLS server name") });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SAMPLE: &str = r#"{
      "version": "7",
      "inbound": { "mode": "PERMISSIVE", "ports": { "5000": "STRICT" } },
      "outbound": [ {
        "service": "default/helloworld", "host": "helloworld.default.svc.cluster.local",
        "address": "198.19.0.10", "port": 5000,
        "endpoints": [
          { "address": "198.18.0.7:5000", "workload": "default/helloworld-v1",
            "tls": { "mode": "ISTIO_MUTUAL", "identities": ["spiffe://cluster.local/ns/default/sa/default"] } },
          { "address": "198.18.0.8:5000" }
        ]
      } ]
    }"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = MeshConfig::parse(SAMPLE, &Origins::default()).unwrap();
        assert_eq!(c.version, "7");
        assert_eq!(c.inbound.mode(5000), PeerMode::Strict);
        assert_eq!(c.inbound.mode(8080), PeerMode::Permissive);
        let cl = c.cluster("198.19.0.10:5000".parse().unwrap()).unwrap();
        // v4-mapped addresses (a dual-stack listener) find the same cluster.
        assert!(c.cluster("[::ffff:198.19.0.10]:5000".parse().unwrap()).is_some());
        assert!(c.cluster("198.19.0.10:5001".parse().unwrap()).is_none());
        let a = cl.pick().unwrap().clone();
        let b = cl.pick().unwrap().clone();
        assert_ne!(a.address, b.address, "round robin");
        assert_eq!(
            *a.tls,
            Origination::IstioMutual {
                sni: "outbound_.5000_._.helloworld.default.svc.cluster.local".into(),
                identities: vec![SpiffeId::new("default", "default").unwrap()],
            }
        );
        assert_eq!(*b.tls, Origination::Plaintext);
        assert_eq!(b.origin, None);
        assert!(c.needs_certificates());
        // The same origination in another file keeps its id.
        let origins = Origins::default();
        let one = MeshConfig::parse(SAMPLE, &origins).unwrap();
        let two = MeshConfig::parse(SAMPLE, &origins).unwrap();
        let id = |c: &MeshConfig| c.cluster("198.19.0.10:5000".parse().unwrap()).unwrap().endpoints[0].origin;
        assert!(id(&one).is_some());
        assert_eq!(id(&one), id(&two));
    }

    #[test]
    fn every_problem_is_named() {
        let text = r#"{ "outbound": [
          { "service": "a/b", "host": "", "address": "10.0.0.1", "port": 80,
            "endpoints": [ { "address": "10.1.0.1:80", "tls": { "mode": "ISTIO_MUTUAL",
              "sni": "bad name!", "identities": ["spiffe://cluster.local/ns/a/sa/b", "https://x"] } } ] },
          { "service": "a/c", "host": "c.a.svc.cluster.local", "address": "10.0.0.1", "port": 80 }
        ] }"#;
        let e = MeshConfig::parse(text, &Origins::default()).unwrap_err();
        let at: Vec<_> = e.0.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "outbound[0].host",
                "outbound[0].endpoints[0].tls.identities[1]",
                "outbound[0].endpoints[0].tls.sni",
                "outbound[1]"
            ]
        );
        assert!(e.to_string().contains("10.0.0.1:80 is listed more than once"), "{e}");
        let e = MeshConfig::parse(r#"{ "inbound": { "mode": "LOOSE" } }"#, &Origins::default()).unwrap_err();
        assert!(e.0[0].at.starts_with("line 1 column"), "{e}");
        assert!(e.to_string().contains("unknown variant `LOOSE`"), "{e}");
        let e = MeshConfig::parse(r#"{ "outbund": [] }"#, &Origins::default()).unwrap_err();
        assert!(e.to_string().contains("unknown field `outbund`"), "{e}");
    }

    #[test]
    fn an_empty_file_means_permissive_and_passthrough() {
        let c = MeshConfig::parse("{}", &Origins::default()).unwrap();
        assert_eq!(c.inbound.mode(1), PeerMode::Permissive);
        assert!(c.cluster("10.0.0.1:80".parse().unwrap()).is_none());
        assert!(!c.needs_certificates());
    }
}
