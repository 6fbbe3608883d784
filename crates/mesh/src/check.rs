//! Which path did a connection take — through the sidecar or around it? The evidence the
//! `meshpass check` command and the management plane's "Check effect" show.
//!
//! * From the node (outside the mesh): request the target and look for the client's address in
//!   the sidecars' own connection records (`/connections` on each sidecar's admin port). The
//!   node's source address and port are not translated on the way to the pod, so a sidecar that
//!   handled the request lists exactly that client. Envoy's headers (`server: istio-envoy`,
//!   `x-envoy-upstream-service-time`) are corroboration only: a mesh can configure them away.
//! * From a pod (outbound): connect from inside the pod and look for the connection in that
//!   pod's sidecar record; when it is not there, the live rules explain which rule let it
//!   through, with that rule's counter. Headers cannot decide outbound: the client's own sidecar
//!   would add them. Then the destination's side: its sidecar's record of the connection the
//!   client's sidecar opened (found by that connection's source address). The path is
//!   `sidecar` only when every sidecar on the way handled the connection; a destination whose
//!   sidecar has no record (an excluded inbound port) makes it `direct`.
//! * Mutual TLS: the client's sidecar records the TLS it originated and the server identity
//!   it verified, the server's sidecar the TLS it terminated and the client identity it
//!   verified; a refusal (plaintext on a STRICT port, a bad certificate) is in its record too.
//!   A failed request is a result, not an error: the outcome says why.
//! * Matching a record to this check's connection: the client address alone is not enough.
//!   A pod's app and its sidecar take ephemeral ports from the same range of the same pod
//!   address, so an old outbound record of the app (or an old connection whose port was
//!   reused) can carry the very address the sidecar now connects from. A record counts only
//!   when it is of the expected direction and the connection was alive when the check began
//!   (open, or closed after it; a connection the check opened itself must have started after
//!   it).

use crate::error::Cause;
use crate::{Client, MeshError, PodStatus};
use meshpass_capture::explain::{explain, Flow};
use meshpass_capture::ir::Family;
use meshpass_capture::linux::{self, iptables::Tools, Netns, NetnsRunner, RuleBackend};
use meshpass_capture::parse::{iptables_save::parse_save, nft_json::parse_ruleset};
use meshpass_settings::Direction;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// What to connect to: an address, and for HTTP the Host and path to request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `(host, path)` for an HTTP GET; `None` for a plain TCP connection.
    pub http: Option<(String, String)>,
}

/// `http://HOST:PORT/PATH` or `HOST:PORT`, split: (is HTTP, host, port, path).
fn split_target(t: &str) -> Result<(bool, String, u16, String), MeshError> {
    let bad = |why: &str| MeshError::Invalid(vec![format!("check target {t:?}: {why}")]);
    let (http, rest) = match t.strip_prefix("http://") {
        Some(rest) => (true, rest),
        None if t.contains("://") => return Err(bad("only http:// URLs can be checked")),
        None => (false, t),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':').and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h, p))) {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']').to_string(), p),
        None if http => (authority.to_string(), 80),
        None => return Err(bad("give ADDR:PORT or an http:// URL")),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((http, host, port, path.to_string()))
}

impl Target {
    /// Parses `http://HOST:PORT/PATH` or `HOST:PORT` where HOST is an IP address.
    pub fn parse(t: &str) -> Result<Target, MeshError> {
        let (http, host, port, path) = split_target(t)?;
        let ip: IpAddr = host.parse().map_err(|_| {
            MeshError::Invalid(vec![format!(
                "check target {t:?}: not an address (use an IP, or a Service name with a running mesh)"
            )])
        })?;
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Target { addr: SocketAddr::new(ip, port), http: http.then_some((authority, path)) })
    }

    /// Like [`Target::parse`], and HOST may also name a Service of the mesh as a cluster's
    /// DNS does: `NAME` (in `namespace`), `NAME.NS`, `NAME.NS.svc` or
    /// `NAME.NS.svc.cluster.local`; it resolves to the Service's ClusterIP.
    pub fn resolve(client: &Client, t: &str, namespace: &str) -> Result<Target, MeshError> {
        let (http, host, port, path) = split_target(t)?;
        if host.parse::<IpAddr>().is_ok() {
            return Target::parse(t);
        }
        let parts: Vec<&str> = host.trim_end_matches('.').split('.').collect();
        let (name, ns) = match parts.as_slice() {
            [name] => (*name, namespace),
            [name, ns] | [name, ns, "svc"] | [name, ns, "svc", "cluster", "local"] => (*name, *ns),
            _ => {
                return Err(MeshError::Invalid(vec![format!(
                    "check target {t:?}: {host} is neither an IP address nor a Service name (NAME[.NAMESPACE[.svc.cluster.local]])"
                )]))
            }
        };
        let svc = client
            .services(Some(ns))?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| MeshError::NotFound(format!("service {ns}/{name}")))?;
        let ip: IpAddr = svc.cluster_ip.parse().map_err(|e: std::net::AddrParseError| {
            MeshError::protocol(format!("service {ns}/{name} has ClusterIP {:?}", svc.cluster_ip))(e.into())
        })?;
        Ok(Target { addr: SocketAddr::new(ip, port), http: http.then(|| (format!("{host}:{port}"), path)) })
    }

    /// `GET http://…` or `tcp ADDR:PORT`, for reports.
    pub fn describe(&self) -> String {
        match &self.http {
            Some((host, path)) => format!("GET http://{host}{path}"),
            None => format!("tcp {}", self.addr),
        }
    }
}

/// What one request produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Exchange {
    /// The client's own address (what a sidecar record names), once connected.
    pub local: Option<SocketAddr>,
    /// `HTTP/1.0 200 OK`, when the target answered HTTP.
    pub status_line: Option<String>,
    /// Response headers in order, names as received.
    pub headers: Vec<(String, String)>,
    /// The start of the response body (up to 512 bytes).
    pub body: String,
    /// Why the exchange failed (refused, reset, closed before answering), if it did.
    pub error: Option<String>,
}

impl Exchange {
    /// The HTTP status, if the target answered HTTP.
    pub fn status(&self) -> Option<u16> {
        self.status_line.as_deref().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok())
    }
}

/// Which way the connection went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathTaken {
    /// Through a sidecar.
    Sidecar,
    /// Around it.
    Direct,
}

/// The mutual TLS of the hop, from the sidecars' own records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HopTls {
    /// Whether the hop between the sidecars was Istio mutual TLS.
    pub mtls: bool,
    /// The client's identity, as the server's sidecar verified it (or as the client's sidecar
    /// presented it).
    pub client_identity: Option<String>,
    /// The server's identity, as the client's sidecar verified it.
    pub server_identity: Option<String>,
}

/// A check's result and its evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    /// `node` or `pod NS/NAME`.
    pub from: String,
    /// The target, described.
    pub target: String,
    /// The decision: through the sidecars on the way, or around one of them.
    pub path: PathTaken,
    /// What the target answered.
    pub response: Exchange,
    /// Mutual TLS of the hop.
    pub tls: HopTls,
    /// Why the request failed: the exchange's error, a sidecar's refusal, or the reason in a
    /// sidecar's own error response.
    pub error: Option<String>,
    /// Evidence lines, strongest first.
    pub evidence: Vec<String>,
}

fn failed(what: &str) -> impl Fn(std::io::Error) -> MeshError + '_ {
    move |source| MeshError::Connection { what: what.to_string(), source }
}

fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T, MeshError> + Send) -> Result<T, MeshError> {
    linux::in_netns(&Netns::Named(ns.to_string()), f)
        .map_err(|source| MeshError::Netns { path: crate::effect::net::netns_path(ns), source })?
}

/// Connects to `t` (and for HTTP sends one GET with `Connection: close`) from the current
/// network namespace. A failure is part of the answer, not an error: the check reports it.
pub fn exchange(t: &Target) -> Exchange {
    let mut ex = Exchange::default();
    let mut s = match TcpStream::connect_timeout(&t.addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            ex.error = Some(format!("connecting to {}: {e}", t.addr));
            return ex;
        }
    };
    ex.local = s.local_addr().ok();
    let Some((host, path)) = &t.http else { return ex };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let sent = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshpass-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = sent {
        ex.error = Some(format!("sending the request: {e}"));
        return ex;
    }
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    ex.status_line = lines.next().map(str::to_string).filter(|l| l.starts_with("HTTP/"));
    if ex.status_line.is_some() {
        ex.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        ex.body = body.chars().take(512).collect();
    }
    match read {
        Err(e) if ex.status_line.is_none() => ex.error = Some(format!("reading the response: {e}")),
        Ok(_) if ex.status_line.is_none() => {
            ex.error = Some(if buf.is_empty() {
                "the connection was closed without an answer".to_string()
            } else {
                format!("the answer is not HTTP: {:?}", text.chars().take(80).collect::<String>())
            })
        }
        _ => {}
    }
    ex
}

/// Which of a sidecar's records can be this check's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Wanted {
    /// The listener that accepted it.
    direction: Direction,
    /// The downstream address it came from.
    client: SocketAddr,
    /// When the check began, milliseconds since the Unix epoch.
    since_ms: u64,
    /// The check opened this connection itself, so it started after `since_ms`; otherwise
    /// (a client sidecar's pooled upstream connection) it only has to be alive then.
    fresh: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The newest record in a sidecar's `/connections` answer that can be the connection
/// `want` describes.
fn pick_record(connections: &serde_json::Value, want: &Wanted) -> Option<serde_json::Value> {
    let client = want.client.to_string();
    let ms = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap_or(0);
    // Both fields are truncated to milliseconds: start + duration may fall up to 2 ms short
    // of the real end.
    let alive = |r: &serde_json::Value| {
        r["state"] == "open" || ms(r, "start_unix_ms") + ms(r, "duration_ms") + 1 >= want.since_ms
    };
    let opened = |r: &serde_json::Value| !want.fresh || ms(r, "start_unix_ms") >= want.since_ms;
    connections["connections"]
        .as_array()?
        .iter()
        .filter(|r| r["client_addr"] == client.as_str() && r["direction"] == want.direction.as_str())
        .filter(|r| alive(r) && opened(r))
        .max_by_key(|r| (ms(r, "start_unix_ms"), ms(r, "id")))
        .cloned()
}

/// A sidecar's record of the connection `want` describes, if it has one.
fn sidecar_record(netns: &str, want: &Wanted) -> Result<Option<serde_json::Value>, MeshError> {
    Ok(sidecar_connections(netns)?.and_then(|v| pick_record(&v, want)))
}

/// A sidecar's `/connections` answer (its open connections and the last ones it closed).
fn sidecar_connections(netns: &str) -> Result<Option<serde_json::Value>, MeshError> {
    let body = in_netns(netns, || {
        let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
        let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).map_err(failed("sidecar admin"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(failed("sidecar admin"))?;
        write!(s, "GET /connections?limit=1000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .map_err(failed("sidecar admin"))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).map_err(failed("sidecar admin"))?;
        Ok(buf)
    })?;
    let json = body.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    // Chunked or not, the JSON object is the text between the first '{' and the last '}'.
    let (Some(a), Some(b)) = (json.find('{'), json.rfind('}')) else { return Ok(None) };
    let v: serde_json::Value = serde_json::from_str(&json[a..=b])
        .map_err(|e| MeshError::protocol("sidecar /connections is not JSON")(e.into()))?;
    Ok(Some(v))
}

/// A call a client's sidecar recorded: `(client namespace, client workload, Service
/// namespace/name, Service port)`.
pub type ObservedCall = (String, String, String, u16);

/// The Service ports a sidecar's records show its workload calling: its outbound connections
/// whose original destination is a Service's ClusterIP and port. Records are the sidecar's
/// open connections and its last closed ones (a bounded ring), so a call long past may be
/// missing; what is listed did happen.
fn calls_in(pod: &PodStatus, connections: &serde_json::Value, services: &[crate::ServiceStatus]) -> Vec<ObservedCall> {
    let by_addr: std::collections::HashMap<String, String> = services
        .iter()
        .flat_map(|s| {
            s.ports.iter().map(move |(port, _)| {
                let addr = SocketAddr::new(s.cluster_ip.parse().ok()?, *port);
                Some((addr.to_string(), format!("{}/{}", s.namespace, s.name)))
            })
        })
        .flatten()
        .collect();
    connections["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["direction"] == Direction::Outbound.as_str())
        .filter_map(|r| {
            let dst = r["original_dst"].as_str()?;
            let svc = by_addr.get(dst)?;
            let port = dst.parse::<SocketAddr>().ok()?.port();
            Some((pod.namespace.clone(), pod.workload.clone(), svc.clone(), port))
        })
        .collect()
}

/// Every call to a Service port that the meshed pods' sidecars have a record of, asked of all
/// of them at once. A sidecar that does not answer adds nothing (its workload's calls stay
/// possible, not observed).
pub fn observed_calls(client: &Client) -> Result<std::collections::BTreeSet<ObservedCall>, MeshError> {
    let pods: Vec<PodStatus> = client.pods(None)?.into_iter().filter(|p| p.meshed && p.ready).collect();
    let services = client.services(None)?;
    let found: Vec<Vec<ObservedCall>> = std::thread::scope(|s| {
        let asks: Vec<_> = pods
            .iter()
            .map(|pod| {
                let services = &services;
                s.spawn(move || {
                    sidecar_connections(&pod.netns)
                        .ok()
                        .flatten()
                        .map(|v| calls_in(pod, &v, services))
                        .unwrap_or_default()
                })
            })
            .collect();
        asks.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    Ok(found.into_iter().flatten().collect())
}

/// Asks every meshed pod's sidecar, at once, for its inbound record of the connection from
/// `client` (see [`Wanted`] for `since_ms` and `fresh`).
fn find_inbound(
    pods: &[PodStatus],
    client: SocketAddr,
    since_ms: u64,
    fresh: bool,
) -> Option<(&PodStatus, serde_json::Value)> {
    let meshed: Vec<&PodStatus> = pods.iter().filter(|p| p.meshed).collect();
    let want = Wanted { direction: Direction::Inbound, client, since_ms, fresh };
    // One after the other, a check took seconds on the sample mesh.
    let records: Vec<_> = std::thread::scope(|s| {
        let asks: Vec<_> = meshed.iter().map(|pod| s.spawn(move || sidecar_record(&pod.netns, &want))).collect();
        asks.into_iter().map(|h| h.join().ok().and_then(|r| r.ok().flatten())).collect()
    });
    meshed.into_iter().zip(records).find_map(|(pod, rec)| rec.map(|r| (pod, r)))
}

/// The live rules of a pod's namespace, for one address family.
pub fn live_rules(netns: &str, family: Family) -> Result<meshpass_capture::ir::Effective, MeshError> {
    let runner = NetnsRunner::new(Netns::Named(netns.to_string()));
    let capture = |source| MeshError::Capture { pod: netns.to_string(), source };
    let parse = |e: Cause| MeshError::protocol(format!("reading back the rules of {netns}"))(e);
    match linux::nft::list_json(&runner).map_err(capture)? {
        Some(json) => {
            let live = parse_ruleset(&json).map_err(|e| parse(e.into()))?;
            Ok(if family == Family::V6 { live.v6 } else { live.v4 })
        }
        None => {
            let text =
                linux::iptables::save(Tools::for_backend(RuleBackend::Iptables), family, &runner).map_err(capture)?;
            parse_save(&text).map_err(|e| parse(e.into()))
        }
    }
}

/// Which live rule let a pod's outbound connection through, with its counter.
fn rule_evidence(netns: &str, flow: &Flow) -> Result<String, MeshError> {
    let eff = live_rules(netns, flow.family())?;
    let e = explain(&eff, flow);
    let counters = e
        .decided_by
        .as_ref()
        .and_then(|r| r.counters)
        .map(|c| format!(" (rule counter: {} packets, {} bytes)", c.packets, c.bytes))
        .unwrap_or_default();
    Ok(format!("{}{counters}", e.summary()))
}

fn header_evidence(ex: &Exchange, evidence: &mut Vec<String>) {
    for h in ["server", "x-envoy-upstream-service-time", "x-envoy-decorator-operation"] {
        if let Some((k, v)) = ex.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(h)) {
            evidence.push(format!("header {k}: {v}"));
        }
    }
}

fn text(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Evidence and the refusal (if any) from the server's sidecar record.
fn server_evidence(pod: &PodStatus, rec: &serde_json::Value, evidence: &mut Vec<String>) -> Option<String> {
    let tls = &rec["tls"];
    let how = if tls.is_null() {
        "in plaintext".to_string()
    } else {
        format!("with mutual TLS from {}", tls["peer_identity"].as_str().unwrap_or("an unknown identity"))
    };
    evidence.push(format!(
        "the sidecar of pod {}/{} recorded this connection (inbound, client {}, id {}, {how})",
        pod.namespace,
        pod.name,
        rec["client_addr"].as_str().unwrap_or_default(),
        rec["id"]
    ));
    let outcome = rec["outcome"].as_str().unwrap_or_default();
    outcome.strip_prefix("tls_refused: ").map(|why| {
        evidence.push(format!("the sidecar of pod {}/{} refused it: {why}", pod.namespace, pod.name));
        format!("refused by the sidecar of pod {}/{}: {why}", pod.namespace, pod.name)
    })
}

/// A sidecar's own error answer (503 with Envoy's reset reason), as the reason the call failed.
fn proxy_error(ex: &Exchange) -> Option<String> {
    let local = ex.status().is_some_and(|s| s >= 500)
        && ex.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("server") && v.contains("envoy"))
        && !ex.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("x-envoy-upstream-service-time"));
    (local && !ex.body.is_empty()).then(|| ex.body.trim().to_string())
}

/// Requests `target` from the node (outside the mesh) and decides from the sidecars' records.
pub fn from_node(client: &Client, target: &Target) -> Result<CheckOutcome, MeshError> {
    let node = client.node_netns()?;
    let since_ms = now_ms();
    let ex = in_netns(&node, || Ok(exchange(target)))?;
    let mut evidence = Vec::new();
    let mut path = PathTaken::Direct;
    let mut error = ex.error.clone();
    let pods = client.pods(None)?;
    let mut tls = HopTls::default();
    match ex.local.and_then(|local| find_inbound(&pods, local, since_ms, true)) {
        Some((pod, rec)) => {
            path = PathTaken::Sidecar;
            if let Some(refused) = server_evidence(pod, &rec, &mut evidence) {
                error = Some(refused);
            }
            tls.mtls = !rec["tls"].is_null();
            tls.client_identity = text(&rec["tls"]["peer_identity"]);
        }
        None => evidence.push(match ex.local {
            Some(l) => format!("no sidecar recorded a connection from {l}"),
            None => "the connection was not established".to_string(),
        }),
    }
    header_evidence(&ex, &mut evidence);
    Ok(CheckOutcome { from: "node".into(), target: target.describe(), path, response: ex, tls, error, evidence })
}

/// The pods a destination address lands on: the Service's ready endpoints for a ClusterIP,
/// else the pod with that address.
fn destination_pods<'a>(
    client: &Client,
    pods: &'a [PodStatus],
    addr: SocketAddr,
) -> Result<Vec<&'a PodStatus>, MeshError> {
    let ip = addr.ip().to_string();
    let services = client.services(None)?;
    let ips: Vec<String> = match services.iter().find(|s| s.cluster_ip == ip) {
        Some(s) => s.endpoints.iter().map(|e| e.rsplit_once(':').map_or(e.as_str(), |(h, _)| h).to_string()).collect(),
        None => vec![ip],
    };
    Ok(pods.iter().filter(|p| ips.contains(&p.ip)).collect())
}

/// Connects to `target` from a ready pod of workload `ns/name` and decides from the sidecars'
/// records (the pod's own and the destination's) or, where the pod's sidecar has none, from
/// its live rules.
pub fn from_pod(client: &Client, ns: &str, name: &str, target: &Target) -> Result<CheckOutcome, MeshError> {
    let pods = client.pods(None)?;
    let pod = pods
        .iter()
        .find(|p| p.namespace == ns && p.workload == name && p.ready)
        .ok_or_else(|| MeshError::NotFound(format!("a ready pod of workload {ns}/{name}")))?;
    let since_ms = now_ms();
    let ex = in_netns(&pod.netns, || Ok(exchange(target)))?;
    let mut evidence = Vec::new();
    let mut error = ex.error.clone();
    let mut tls = HopTls::default();
    // The client side: the pod's sidecar, or the rule that let the connection pass.
    let own = match (pod.meshed, ex.local) {
        (true, Some(local)) => sidecar_record(
            &pod.netns,
            &Wanted { direction: Direction::Outbound, client: local, since_ms, fresh: true },
        )?,
        _ => None,
    };
    let client_side = if !pod.meshed {
        evidence.push(format!("pod {}/{} has no sidecar", pod.namespace, pod.name));
        PathTaken::Direct
    } else if let Some(rec) = &own {
        let up = &rec["upstream_tls"];
        let how = match up["mode"].as_str() {
            Some("ISTIO_MUTUAL") => {
                format!("mutual TLS to {}", up["peer_identity"].as_str().unwrap_or("an unverified peer"))
            }
            Some(m) => format!("TLS ({m})"),
            None => "plaintext".to_string(),
        };
        evidence.push(format!(
            "the sidecar of pod {}/{} recorded this connection (outbound, client {}, original destination {}, upstream {}, id {}, {how})",
            pod.namespace,
            pod.name,
            rec["client_addr"].as_str().unwrap_or_default(),
            rec["original_dst"],
            rec["upstream_addr"],
            rec["id"]
        ));
        if up["mode"] == "ISTIO_MUTUAL" {
            tls.server_identity = text(&up["peer_identity"]);
            tls.client_identity = text(&up["local_identity"]);
        }
        PathTaken::Sidecar
    } else {
        if let Some(local) = ex.local {
            evidence.push(format!("the sidecar of pod {}/{} has no record of client {local}", pod.namespace, pod.name));
        }
        let mut flow = Flow::outbound(target.addr.ip(), target.addr.port()).uid(0).gid(0);
        if let Ok(ip) = pod.ip.parse::<IpAddr>() {
            flow = flow.pod_ip(ip);
        }
        let netns = Netns::Named(pod.netns.clone());
        if meshpass_capture::linux::ebpf::is_installed(&netns).unwrap_or(false) {
            // No rules to read: the connect hook decided, and did not hand it to the sidecar.
            evidence.push("eBPF capture is installed in the pod and did not hand this connection to the sidecar (its settings let it pass)".to_string());
        } else {
            evidence.push(format!("live rules: {}", rule_evidence(&pod.netns, &flow)?));
        }
        PathTaken::Direct
    };
    // The server side: the destination's sidecar, found by the address the connection came
    // from (the client's sidecar's, or the pod's own when it went around its sidecar).
    // The sidecar's upstream connection may be one it pooled before the check; the pod's own
    // connection is the check's.
    let upstream =
        own.as_ref().and_then(|r| r["upstream_local_addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok()));
    let (from_addr, fresh) = match upstream {
        Some(a) => (Some(a), false),
        None => (ex.local, true),
    };
    let dests = destination_pods(client, &pods, target.addr)?;
    let dest_meshed = dests.iter().any(|p| p.meshed);
    let server = from_addr.and_then(|a| find_inbound(&pods, a, since_ms, fresh));
    let server_side = match &server {
        Some((p, rec)) => {
            if let Some(refused) = server_evidence(p, rec, &mut evidence) {
                error = Some(refused);
            }
            if !rec["tls"].is_null() {
                tls.mtls = true;
                tls.client_identity = text(&rec["tls"]["peer_identity"]);
                tls.server_identity = tls.server_identity.clone().or_else(|| text(&rec["tls"]["local_identity"]));
            }
            PathTaken::Sidecar
        }
        None if dest_meshed && ex.local.is_some() => {
            let names: Vec<String> =
                dests.iter().filter(|p| p.meshed).map(|p| format!("{}/{}", p.namespace, p.name)).collect();
            evidence.push(format!(
                "the destination {} has a sidecar, and it has no record of this connection: it went straight to the app",
                names.join(", ")
            ));
            PathTaken::Direct
        }
        None => PathTaken::Sidecar,
    };
    if error.is_none() {
        error = proxy_error(&ex);
    }
    let path = if client_side == PathTaken::Sidecar && server_side == PathTaken::Sidecar {
        PathTaken::Sidecar
    } else {
        PathTaken::Direct
    };
    header_evidence(&ex, &mut evidence);
    Ok(CheckOutcome {
        from: format!("pod {}/{}", pod.namespace, pod.name),
        target: target.describe(),
        path,
        response: ex,
        tls,
        error,
        evidence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, state: &str, direction: &str, client: &str, start: u64, duration: u64) -> serde_json::Value {
        serde_json::json!({"id": id, "state": state, "direction": direction, "client_addr": client,
            "start_unix_ms": start, "duration_ms": duration})
    }

    fn want(direction: Direction, client: &str, since_ms: u64, fresh: bool) -> Wanted {
        Wanted { direction, client: client.parse().unwrap(), since_ms, fresh }
    }

    #[test]
    fn a_record_of_the_app_with_the_sidecars_address_is_not_the_servers() {
        // The client pod's own sidecar once proxied an app connection from the port its
        // upstream connection now uses: an outbound record, and long finished.
        let sleep_sidecar = serde_json::json!({"connections": [
            rec(7, "closed", "outbound", "198.18.81.5:40112", 1_000, 30),
        ]});
        let w = want(Direction::Inbound, "198.18.81.5:40112", 50_000, false);
        assert_eq!(pick_record(&sleep_sidecar, &w), None);
        // Even asked for outbound, it ended before the check began.
        let w = want(Direction::Outbound, "198.18.81.5:40112", 50_000, false);
        assert_eq!(pick_record(&sleep_sidecar, &w), None);
    }

    #[test]
    fn a_pooled_connection_counts_while_it_lives_and_a_fresh_one_only_from_the_check_on() {
        let recs = serde_json::json!({"connections": [
            rec(3, "open", "inbound", "198.18.81.5:40112", 10_000, 40_000),
            rec(1, "closed", "inbound", "198.18.81.5:40112", 1_000, 5),
        ]});
        let pooled = want(Direction::Inbound, "198.18.81.5:40112", 50_000, false);
        assert_eq!(pick_record(&recs, &pooled).unwrap()["id"], 3);
        // The check's own connection cannot have started before the check.
        let fresh = want(Direction::Inbound, "198.18.81.5:40112", 50_000, true);
        assert_eq!(pick_record(&recs, &fresh), None);
        // Closed after the check began (Connection: close): still this check's.
        let recs = serde_json::json!({"connections": [
            rec(9, "closed", "inbound", "198.18.81.5:40112", 50_002, 3),
            rec(4, "closed", "inbound", "198.18.81.5:40112", 20_000, 10),
        ]});
        assert_eq!(pick_record(&recs, &fresh).unwrap()["id"], 9);
        assert_eq!(pick_record(&recs, &want(Direction::Inbound, "198.18.81.5:40113", 50_000, true)), None);
    }

    #[test]
    fn outbound_records_to_a_service_port_are_calls_of_the_pods_workload() {
        let pod = PodStatus {
            namespace: "default".into(),
            name: "sleep-abc".into(),
            workload: "sleep".into(),
            ip: "198.18.0.5".into(),
            netns: "x".into(),
            ready: true,
            meshed: true,
            restarts: 0,
        };
        let services = vec![crate::ServiceStatus {
            namespace: "default".into(),
            name: "helloworld".into(),
            cluster_ip: "198.19.0.10".into(),
            ports: vec![(5000, 5000)],
            endpoints: vec!["198.18.0.7:5000".into()],
        }];
        let recs = serde_json::json!({"connections": [
            {"direction": "outbound", "original_dst": "198.19.0.10:5000"},
            // Not a Service port, not outbound, or no destination: not calls.
            {"direction": "outbound", "original_dst": "198.19.0.10:5001"},
            {"direction": "outbound", "original_dst": "203.0.113.5:443"},
            {"direction": "inbound", "original_dst": "198.19.0.10:5000"},
            {"direction": "outbound", "original_dst": null},
        ]});
        assert_eq!(
            calls_in(&pod, &recs, &services),
            vec![("default".to_string(), "sleep".to_string(), "default/helloworld".to_string(), 5000)]
        );
    }

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://198.19.0.10:5000/hello").unwrap();
        assert_eq!(t.addr, "198.19.0.10:5000".parse().unwrap());
        assert_eq!(t.http, Some(("198.19.0.10:5000".into(), "/hello".into())));
        assert_eq!(t.describe(), "GET http://198.19.0.10:5000/hello");
        let t = Target::parse("http://198.19.0.10").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(Target::parse("198.18.0.9:80").unwrap().http, None);
        for bad in ["https://x:1/", "198.18.0.9", "helloworld:5000"] {
            assert!(matches!(Target::parse(bad), Err(MeshError::Invalid(_))), "{bad}");
        }
    }
}
