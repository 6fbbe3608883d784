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
//!   would add them.

use crate::error::Cause;
use crate::{Client, MeshError};
use meshpass_capture::explain::{explain, Flow};
use meshpass_capture::ir::Family;
use meshpass_capture::linux::{self, iptables::Tools, Netns, NetnsRunner, RuleBackend};
use meshpass_capture::parse::{iptables_save::parse_save, nft_json::parse_ruleset};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// What to connect to: an address, and for HTTP the Host and path to request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `(host, path)` for an HTTP GET; `None` for a plain TCP connection.
    pub http: Option<(String, String)>,
}

impl Target {
    /// Parses `http://HOST:PORT/PATH` or `HOST:PORT` (HOST must be an IP: the mesh has no DNS).
    pub fn parse(t: &str) -> Result<Target, MeshError> {
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
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_string()
        } else if http {
            format!("{authority}:80")
        } else {
            return Err(bad("give ADDR:PORT or an http:// URL"));
        };
        let addr = with_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| bad("not an address (use an IP: the mesh has no DNS)"))?;
        Ok(Target { addr, http: http.then(|| (authority.to_string(), path.to_string())) })
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exchange {
    /// The client's own address (what a sidecar record names).
    pub local: SocketAddr,
    /// `HTTP/1.0 200 OK`, when the target answered HTTP.
    pub status_line: Option<String>,
    /// Response headers in order, names as received.
    pub headers: Vec<(String, String)>,
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

/// A check's result and its evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    /// `node` or `pod NS/NAME`.
    pub from: String,
    /// The target, described.
    pub target: String,
    /// The decision.
    pub path: PathTaken,
    /// What the target answered.
    pub response: Exchange,
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
/// network namespace.
pub fn exchange(t: &Target) -> Result<Exchange, MeshError> {
    let connecting = format!("connecting to {}", t.addr);
    let mut s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(5)).map_err(failed(&connecting))?;
    let local = s.local_addr().map_err(failed("local address"))?;
    let Some((host, path)) = &t.http else {
        return Ok(Exchange { local, status_line: None, headers: Vec::new() });
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(failed("setting a timeout"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshpass-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .map_err(failed("sending the request"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(failed("reading the response"))?;
    let text = String::from_utf8_lossy(&buf);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().map(str::to_string).filter(|l| l.starts_with("HTTP/"));
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Ok(Exchange { local, status_line, headers })
}

/// A sidecar's record of the connection from `client`, if it has one.
fn sidecar_record(netns: &str, client: SocketAddr) -> Result<Option<serde_json::Value>, MeshError> {
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
    let want = client.to_string();
    Ok(v["connections"].as_array().and_then(|recs| recs.iter().find(|r| r["client_addr"] == want.as_str()).cloned()))
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

/// Requests `target` from the node (outside the mesh) and decides from the sidecars' records.
pub fn from_node(client: &Client, target: &Target) -> Result<CheckOutcome, MeshError> {
    let node = client.node_netns()?;
    let ex = in_netns(&node, || exchange(target))?;
    let mut evidence = Vec::new();
    let mut path = PathTaken::Direct;
    let meshed: Vec<_> = client.pods(None)?.into_iter().filter(|p| p.meshed).collect();
    // Any sidecar may have taken the connection (a Service spreads them), so ask all of them,
    // at once: one after the other, a check took seconds on the sample mesh.
    let records: Vec<_> = std::thread::scope(|s| {
        let asks: Vec<_> = meshed.iter().map(|pod| s.spawn(move || sidecar_record(&pod.netns, ex.local))).collect();
        asks.into_iter().map(|h| h.join().ok().and_then(|r| r.ok().flatten())).collect()
    });
    if let Some((pod, rec)) = meshed.iter().zip(records).find_map(|(pod, rec)| rec.map(|r| (pod, r))) {
        evidence.push(format!(
            "the sidecar of pod {}/{} recorded this connection (inbound, client {}, id {}, {} request(s))",
            pod.namespace, pod.name, ex.local, rec["id"], rec["requests"]
        ));
        path = PathTaken::Sidecar;
    }
    if path == PathTaken::Direct {
        evidence.push(format!("no sidecar recorded a connection from {}", ex.local));
    }
    header_evidence(&ex, &mut evidence);
    Ok(CheckOutcome { from: "node".into(), target: target.describe(), path, response: ex, evidence })
}

/// Connects to `target` from a ready pod of workload `ns/name` and decides from that pod's
/// sidecar record, else from its live rules.
pub fn from_pod(client: &Client, ns: &str, name: &str, target: &Target) -> Result<CheckOutcome, MeshError> {
    let pod = client
        .pods(Some(ns))?
        .into_iter()
        .find(|p| p.workload == name && p.ready)
        .ok_or_else(|| MeshError::NotFound(format!("a ready pod of workload {ns}/{name}")))?;
    let ex = in_netns(&pod.netns, || exchange(target))?;
    let mut evidence = Vec::new();
    let path = if !pod.meshed {
        evidence.push(format!("pod {}/{} has no sidecar", pod.namespace, pod.name));
        PathTaken::Direct
    } else if let Some(rec) = sidecar_record(&pod.netns, ex.local)? {
        evidence.push(format!(
            "the sidecar of pod {}/{} recorded this connection (outbound, client {}, original destination {}, id {})",
            pod.namespace, pod.name, ex.local, rec["original_dst"], rec["id"]
        ));
        PathTaken::Sidecar
    } else {
        let mut flow = Flow::outbound(target.addr.ip(), target.addr.port()).uid(0).gid(0);
        if let Ok(ip) = pod.ip.parse::<IpAddr>() {
            flow = flow.pod_ip(ip);
        }
        evidence
            .push(format!("the sidecar of pod {}/{} has no record of client {}", pod.namespace, pod.name, ex.local));
        let ns = Netns::Named(pod.netns.clone());
        if meshpass_capture::linux::ebpf::is_installed(&ns).unwrap_or(false) {
            // No rules to read: the connect hook decided, and did not hand it to the sidecar.
            evidence.push("eBPF capture is installed in the pod and did not hand this connection to the sidecar (its settings let it pass)".to_string());
        } else {
            evidence.push(format!("live rules: {}", rule_evidence(&pod.netns, &flow)?));
        }
        PathTaken::Direct
    };
    header_evidence(&ex, &mut evidence);
    Ok(CheckOutcome {
        from: format!("pod {}/{}", pod.namespace, pod.name),
        target: target.describe(),
        path,
        response: ex,
        evidence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
