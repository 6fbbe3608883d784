//! `meshpass check`: prove which path a connection took — through the sidecar or directly.
//!
//! * `meshpass check URL` requests URL from the node (outside the mesh), prints the status
//!   line and headers, and decides from the sidecars' own connection records: the node's
//!   source address and port are not translated on the way to the pod, so a sidecar that
//!   handled the request lists exactly that client address under `/connections`. Envoy's
//!   headers (`server: istio-envoy`, `x-envoy-upstream-service-time`) are shown as
//!   corroboration.
//! * `meshpass check --from WORKLOAD ADDR:PORT|URL` connects from inside a pod of that
//!   workload and looks for the connection in that pod's sidecar record (outbound, same client
//!   address); when it is not there, the live rules explain which rule let it through and
//!   show its counter. Headers cannot decide outbound: the client's own sidecar adds them.

use anyhow::{bail, Context};
use meshpass_capture::explain::{explain, Flow};
use meshpass_capture::ir::Family;
use meshpass_capture::linux::{self, iptables::Tools, Backend, Netns, NetnsRunner};
use meshpass_capture::parse::{iptables_save::parse_save, nft_json::parse_ruleset};
use meshpass_mesh::Client;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `meshpass check` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `http://HOST:PORT/PATH`, or `HOST:PORT` for a plain TCP connection (with --from).
    target: String,
    /// Check outbound from a pod of this workload (`NAME` or `NS/NAME`) instead of from the node.
    #[arg(long)]
    from: Option<String>,
    /// Namespace of --from (default: `default`).
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The mesh's state directory.
    #[arg(long, default_value = "/var/lib/meshpass")]
    state_dir: PathBuf,
    /// Print the result as JSON.
    #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

/// A parsed target.
struct Target {
    addr: SocketAddr,
    http: Option<(String, String)>,
}

fn parse_target(t: &str) -> anyhow::Result<Target> {
    let (http, rest) = match t.strip_prefix("http://") {
        Some(rest) => (true, rest),
        None if t.contains("://") => bail!("only http:// URLs can be checked: {t:?}"),
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
        bail!("{t:?}: give ADDR:PORT or an http:// URL")
    };
    let addr = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("{authority:?} is not an address (use an IP: the mesh has no DNS)"))?;
    Ok(Target { addr, http: http.then(|| (authority.to_string(), path.to_string())) })
}

/// Runs `f` on a thread inside the named network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    linux::in_netns(&Netns::Named(ns.to_string()), f)?
}

/// What one request produced.
#[derive(Debug, serde::Serialize)]
struct Exchange {
    local: SocketAddr,
    status_line: Option<String>,
    headers: Vec<(String, String)>,
}

fn exchange(t: &Target) -> anyhow::Result<Exchange> {
    let mut s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {}", t.addr))?;
    let local = s.local_addr()?;
    let Some((host, path)) = &t.http else {
        return Ok(Exchange { local, status_line: None, headers: Vec::new() });
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshpass-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).context("reading the response")?;
    let text = String::from_utf8_lossy(&buf);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().map(str::to_string).filter(|l| l.starts_with("HTTP/"));
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Ok(Exchange { local, status_line, headers })
}

/// A sidecar's record of the connection, if it has one.
fn sidecar_record(netns: &str, client: SocketAddr) -> anyhow::Result<Option<serde_json::Value>> {
    let body = in_netns(netns, || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], 15000)), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET /connections?limit=1000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    })?;
    let json = body.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    // Chunked or not, the JSON object is the text between the first '{' and the last '}'.
    let (Some(a), Some(b)) = (json.find('{'), json.rfind('}')) else { return Ok(None) };
    let v: serde_json::Value = serde_json::from_str(&json[a..=b]).context("sidecar /connections is not JSON")?;
    let want = client.to_string();
    Ok(v["connections"].as_array().and_then(|recs| recs.iter().find(|r| r["client_addr"] == want.as_str()).cloned()))
}

/// Which live rule let a pod's outbound connection through, with its counter.
fn rule_evidence(netns: &str, flow: &Flow) -> anyhow::Result<String> {
    let runner = NetnsRunner::new(Netns::Named(netns.to_string()));
    let eff = match linux::nft::list_json(&runner)? {
        Some(json) => {
            let live = parse_ruleset(&json)?;
            if flow.family() == Family::V6 {
                live.v6
            } else {
                live.v4
            }
        }
        None => parse_save(&linux::iptables::save(Tools::for_backend(Backend::Iptables), flow.family(), &runner)?)?,
    };
    let e = explain(&eff, flow);
    let counters = e
        .decided_by
        .as_ref()
        .and_then(|r| r.counters)
        .map(|c| format!(" (rule counter: {} packets, {} bytes)", c.packets, c.bytes))
        .unwrap_or_default();
    Ok(format!("{}{counters}", e.summary()))
}

/// Runs `meshpass check`.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&a.state_dir).context("is `meshpass up` running?")?;
    let target = parse_target(&a.target)?;
    let mut evidence = Vec::new();
    let (path, ex) = match &a.from {
        None => {
            let node = client.node_netns()?;
            let ex = in_netns(&node, || exchange(&target))?;
            let mut via = None;
            for pod in client.pods(None)?.into_iter().filter(|p| p.meshed) {
                if let Some(rec) = sidecar_record(&pod.netns, ex.local).ok().flatten() {
                    via = Some(format!(
                        "the sidecar of pod {}/{} recorded this connection (inbound, client {}, id {}, {} request(s))",
                        pod.namespace, pod.name, ex.local, rec["id"], rec["requests"]
                    ));
                    break;
                }
            }
            match via {
                Some(v) => {
                    evidence.push(v);
                    ("sidecar", ex)
                }
                None => {
                    evidence.push(format!("no sidecar recorded a connection from {}", ex.local));
                    ("direct", ex)
                }
            }
        }
        Some(w) => {
            let (ns, name) = w.split_once('/').unwrap_or((a.namespace.as_str(), w.as_str()));
            let pod = client
                .pods(Some(ns))?
                .into_iter()
                .find(|p| p.workload == name && p.ready)
                .with_context(|| format!("no ready pod of workload {ns}/{name}"))?;
            let ex = in_netns(&pod.netns, || exchange(&target))?;
            if !pod.meshed {
                evidence.push(format!("pod {}/{} has no sidecar", pod.namespace, pod.name));
                ("direct", ex)
            } else if let Some(rec) = sidecar_record(&pod.netns, ex.local)? {
                evidence.push(format!(
                    "the sidecar of pod {}/{} recorded this connection (outbound, client {}, original destination {}, id {})",
                    pod.namespace, pod.name, ex.local, rec["original_dst"], rec["id"]
                ));
                ("sidecar", ex)
            } else {
                let pod_ip: Option<IpAddr> = pod.ip.parse().ok();
                let mut flow = Flow::outbound(target.addr.ip(), target.addr.port()).uid(0).gid(0);
                if let Some(ip) = pod_ip {
                    flow = flow.pod_ip(ip);
                }
                evidence.push(format!(
                    "the sidecar of pod {}/{} has no record of client {}",
                    pod.namespace, pod.name, ex.local
                ));
                evidence.push(format!("live rules: {}", rule_evidence(&pod.netns, &flow)?));
                ("direct", ex)
            }
        }
    };
    for h in ["server", "x-envoy-upstream-service-time", "x-envoy-decorator-operation"] {
        if let Some((k, v)) = ex.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(h)) {
            evidence.push(format!("header {k}: {v}"));
        }
    }
    if a.output == "json" {
        let v = serde_json::json!({ "path": path, "evidence": evidence, "response": ex });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(s) = &ex.status_line {
            println!("{s}");
            for (k, v) in &ex.headers {
                println!("{k}: {v}");
            }
            println!();
        } else {
            println!("connected to {} from {}", target.addr, ex.local);
        }
        println!("path: {path}");
        for e in &evidence {
            println!("  evidence: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
