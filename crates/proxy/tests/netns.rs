//! Namespaced integration tests (Linux, root): real network namespaces, a veth pair, Istio's
//! nat REDIRECT rules applied with `iptables-restore --noflush`, and the proxy running as
//! UID/GID 1337 in a child process — exactly the sidecar's situation in a pod.
//!
//! Topology (all addresses inside 198.18.0.0/15, nothing routes off the machine):
//!
//! ```text
//!  pod netns  mpt-<test>-pod                peer netns  mpt-<test>-peer
//!  198.18.0.1/24  vetha  <==============>  vethb  198.18.0.2/24, 198.18.1.2/32
//!  app :8080 (captured), :8081 (excluded)   app :9090 (captured), :9091 (excluded port)
//!  meshpass proxy (uid 1337) 15001/15006/15000/15021/15090
//! ```
//!
//! Needs root: `#[ignore = "needs root"]`, run as root by `scripts/test` (`--include-ignored`).

// Test code: a panic is the failure report, also in helpers outside #[test] fns.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const GUARD: Duration = Duration::from_secs(60);
const POD_IP: &str = "198.18.0.1";
const PEER_IP: &str = "198.18.0.2";
/// A second peer address, excluded from capture by CIDR.
const PEER_EXCLUDED_IP: &str = "198.18.1.2";

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("spawning {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Two namespaces of the test joined by a veth pair; deleted on drop (also on panic).
struct Topology {
    pod: String,
    peer: String,
    /// Deleting a namespace also deletes its end of the veth pair (and so the pair).
    _namespaces: [meshpass_test_support::Netns; 2],
}

impl Topology {
    fn new(namespaces: &meshpass_test_support::TestNamespaces) -> Result<Self> {
        let (pod_ns, peer_ns) = (namespaces.create("pod"), namespaces.create("peer"));
        let t = Topology {
            pod: pod_ns.name().to_string(),
            peer: peer_ns.name().to_string(),
            _namespaces: [pod_ns, peer_ns],
        };
        // Created inside the two namespaces, so the names cannot collide with the host's.
        let (va, vb) = ("vetha", "vethb");
        run("ip", &["link", "add", va, "netns", &t.pod, "type", "veth", "peer", "name", vb, "netns", &t.peer])?;
        for (ns, dev, addrs) in [
            (&t.pod, va, vec![format!("{POD_IP}/24")]),
            (&t.peer, vb, vec![format!("{PEER_IP}/24"), format!("{PEER_EXCLUDED_IP}/32")]),
        ] {
            for a in addrs {
                run("ip", &["-n", ns, "addr", "add", &a, "dev", dev])?;
            }
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        run("ip", &["-n", &t.pod, "route", "add", &format!("{PEER_EXCLUDED_IP}/32"), "dev", va])?;
        Ok(t)
    }
}

/// Run `f` on a fresh thread that has entered network namespace `ns`. Sockets created there
/// stay in that namespace; the thread exits afterwards, so nothing else is affected.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let fd = std::fs::File::open(&path).with_context(|| path.clone())?;
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// Applies the real engine's capture rules in `netns`: the workload's passthrough
/// annotations go through meshpass-settings and Istio's injector defaults (so 15090, 15021 and
/// 15020 are excluded inbound as in a real pod), are compiled by meshpass-capture, and applied
/// atomically with the nftables backend. Returns the rendered rules for the log.
fn apply_capture_rules(
    netns: &str,
    exclude_inbound_ports: &[u16],
    exclude_outbound_cidrs: &[&str],
    exclude_outbound_ports: &[u16],
) -> Result<String> {
    apply_rules(netns, exclude_inbound_ports, exclude_outbound_cidrs, exclude_outbound_ports, None)
}

/// [`apply_capture_rules`] in Istio's `TPROXY` interception mode (mangle-table TPROXY for
/// inbound, its mark routes, REDIRECT for outbound).
fn apply_tproxy_rules(
    netns: &str,
    exclude_inbound_ports: &[u16],
    exclude_outbound_cidrs: &[&str],
    exclude_outbound_ports: &[u16],
) -> Result<String> {
    apply_rules(netns, exclude_inbound_ports, exclude_outbound_cidrs, exclude_outbound_ports, Some("TPROXY"))
}

fn apply_rules(
    netns: &str,
    exclude_inbound_ports: &[u16],
    exclude_outbound_cidrs: &[&str],
    exclude_outbound_ports: &[u16],
    mode: Option<&str>,
) -> Result<String> {
    use meshpass_capture::linux::{self, Netns, NetnsRunner, RuleBackend};
    use meshpass_settings::{keys, Settings};
    let join = |v: Vec<String>| v.join(",");
    let ann: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::from([
        (keys::EXCLUDE_INBOUND_PORTS.to_string(), join(exclude_inbound_ports.iter().map(u16::to_string).collect())),
        (
            keys::EXCLUDE_OUTBOUND_IP_RANGES.to_string(),
            join(exclude_outbound_cidrs.iter().map(|c| c.to_string()).collect()),
        ),
        (keys::EXCLUDE_OUTBOUND_PORTS.to_string(), join(exclude_outbound_ports.iter().map(u16::to_string).collect())),
    ])
    .into_iter()
    .chain(mode.map(|m| (keys::INTERCEPTION_MODE.to_string(), m.to_string())))
    .collect();
    let settings = Settings::from_annotations(&ann).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = meshpass_capture::CaptureConfig::from_settings(&settings, &meshpass_capture::InjectorValues::default())
        .context("interception mode NONE")?;
    let plan = meshpass_capture::compile(&cfg);
    linux::apply(&plan, RuleBackend::Nftables, &NetnsRunner::new(Netns::Named(netns.to_string())))?;
    Ok(meshpass_capture::render::nft::render(&plan))
}

/// The same passthrough settings as [`apply_capture_rules`], installed as eBPF capture
/// (`sk_lookup` in the namespace, connect hooks on the cgroup v2 root, which the programs
/// narrow to this namespace).
fn apply_ebpf_capture(
    netns: &str,
    exclude_inbound_ports: &[u16],
    exclude_outbound_cidrs: &[&str],
    exclude_outbound_ports: &[u16],
) -> Result<String> {
    use meshpass_capture::linux::{ebpf, Netns, NetnsRunner};
    let args = meshpass_capture::IstioArgs {
        proxy_uid: Some("1337".into()),
        include_inbound_ports: Some("*".into()),
        exclude_inbound_ports: Some(exclude_inbound_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")),
        include_ip_ranges: Some("*".into()),
        exclude_ip_ranges: Some(exclude_outbound_cidrs.join(",")),
        exclude_outbound_ports: Some(exclude_outbound_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")),
        ..Default::default()
    };
    let cfg = args.to_config().map_err(|e| anyhow::anyhow!("{e}"))?;
    let ns = Netns::Named(netns.to_string());
    let plan = meshpass_capture::ebpf::compile_ebpf(&cfg, ebpf::netns_cookie(&ns)?)?;
    ebpf::apply(&plan, &ns, &ebpf::cgroup2_root()?, &NetnsRunner::new(ns.clone()))?;
    Ok(plan.listing())
}

/// How the pod's traffic reaches the sidecar.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// Istio's nat rules (nftables backend), REDIRECT.
    Rules,
    /// eBPF capture; the sidecar runs in EBPF mode with NET_ADMIN and BPF.
    Ebpf,
    /// Istio's rules in TPROXY mode; the sidecar runs in TPROXY mode with NET_ADMIN.
    Tproxy,
}

/// A blocking HTTP app that answers `peer=<source ip>` with its own `Server` header.
struct App {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl App {
    fn start(ns: &str, port: u16) -> Result<Self> {
        let l = in_netns(ns, move || TcpListener::bind(("0.0.0.0", port)))??;
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut req = Vec::new();
                        let mut b = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut b) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&b[..n]),
                            }
                        }
                        let body = format!("peer={}", peer.ip());
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nServer: testapp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(App { stop, thread: Some(thread) })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The proxy as UID/GID 1337 inside the pod namespace; SIGTERM + wait on drop.
struct ProxyProcess(Child);

impl ProxyProcess {
    fn start(ns: &str, capture: Capture) -> Result<Self> {
        Self::start_with(ns, capture, Vec::new(), None)
    }

    /// [`ProxyProcess::start`] with extra environment variables and, when given, the proxy's
    /// log (stderr) written to a file.
    fn start_with(
        ns: &str,
        capture: Capture,
        env: Vec<(&'static str, String)>,
        log: Option<std::fs::File>,
    ) -> Result<Self> {
        let bin = env!("CARGO_BIN_EXE_meshpass-proxy-standalone");
        let child = in_netns(ns, move || {
            let mut cmd = match capture {
                Capture::Rules => {
                    let mut c = Command::new(bin);
                    c.uid(1337).gid(1337);
                    c
                }
                Capture::Tproxy => {
                    // As Istio's TPROXY sidecar: NET_ADMIN for the transparent listener.
                    let mut c = Command::new("setpriv");
                    c.args([
                        "--reuid=1337",
                        "--regid=1337",
                        "--clear-groups",
                        "--inh-caps=+net_admin",
                        "--ambient-caps=+net_admin",
                        "--",
                        bin,
                    ])
                    .env("MESHPASS_PROXY_INTERCEPTION_MODE", "TPROXY");
                    c
                }
                Capture::Ebpf => {
                    // As a sidecar container with `capabilities: add: [NET_ADMIN, BPF]`:
                    // transparent listeners, and the listener map.
                    let mut c = Command::new("setpriv");
                    c.args([
                        "--reuid=1337",
                        "--regid=1337",
                        "--clear-groups",
                        "--inh-caps=+net_admin,+bpf",
                        "--ambient-caps=+net_admin,+bpf",
                        "--",
                        bin,
                    ])
                    .env("MESHPASS_PROXY_INTERCEPTION_MODE", "EBPF");
                    c
                }
            };
            cmd.env("MESHPASS_PROXY_SERVICES", "app.default.svc.cluster.local:80/8080")
                .env("MESHPASS_PROXY_SNIFF_TIMEOUT", "1s")
                .env("RUST_LOG", "warn")
                .envs(env)
                .stdout(Stdio::piped());
            if let Some(f) = log {
                cmd.stderr(f);
            }
            cmd.spawn()
        })??;
        let mut p = ProxyProcess(child);
        let stdout = p.0.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if !line.starts_with("READY ") {
            bail!("proxy did not start: {line:?}");
        }
        Ok(p)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str())
    }
}

/// `GET http://addr/path` from inside `ns`, `Connection: close`, whole response.
fn http_get(ns: &str, addr: SocketAddr, path: &str) -> Result<Resp> {
    let path = path.to_owned();
    in_netns(ns, move || -> Result<Resp> {
        let mut s = TcpStream::connect_timeout(&addr, GUARD)?;
        s.set_read_timeout(Some(GUARD))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
        let mut lines = head.lines();
        let status =
            lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).context("status line")?;
        let headers =
            lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
        Ok(Resp { status, headers, body: body.to_owned() })
    })?
}

/// The proxy's `/connections` record, read from inside the pod.
fn connections(ns: &str) -> Result<Vec<serde_json::Value>> {
    let r = http_get(ns, "127.0.0.1:15000".parse()?, "/connections")?;
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    Ok(v["connections"].as_array().cloned().unwrap_or_default())
}

/// Wait for a closed record matching `pred` (the record closes just after the client's EOF).
fn wait_record(ns: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Result<serde_json::Value> {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(c) = connections(ns)?.into_iter().find(|c| c["state"] == "closed" && pred(c)) {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("no matching connection record");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_ready(ns: &str) -> Result<()> {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Ok(r) = http_get(ns, "127.0.0.1:15021".parse()?, "/healthz/ready") {
            if r.status == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("proxy never became ready");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything one test needs, torn down in field order: proxy, apps, then namespaces.
struct Pod {
    _proxy: ProxyProcess,
    _apps: Vec<App>,
    _ebpf: Option<EbpfGuard>,
    topo: Topology,
}

/// Removes eBPF capture (its pins) before the namespace goes.
struct EbpfGuard(String);

impl Drop for EbpfGuard {
    fn drop(&mut self) {
        use meshpass_capture::linux::{ebpf, Netns, NetnsRunner};
        let ns = Netns::Named(self.0.clone());
        let _ = ebpf::remove(&ns, &NetnsRunner::new(ns.clone()));
    }
}

fn setup(namespaces: &meshpass_test_support::TestNamespaces, capture: Capture) -> Result<Pod> {
    let topo = Topology::new(namespaces)?;
    let apps = vec![
        App::start(&topo.pod, 8080)?,
        App::start(&topo.pod, 8081)?,
        App::start(&topo.peer, 9090)?,
        App::start(&topo.peer, 9091)?,
    ];
    let apply = match capture {
        Capture::Rules => apply_capture_rules,
        Capture::Ebpf => apply_ebpf_capture,
        Capture::Tproxy => apply_tproxy_rules,
    };
    let rules = apply(
        &topo.pod,
        // Istio's injector always excludes 15090, 15021 and 15020; 8081 is the passthrough port.
        &[15090, 15021, 15020, 8081],
        &[&format!("{PEER_EXCLUDED_IP}/32")],
        &[9091],
    )?;
    eprintln!("applied in {}:\n{rules}", topo.pod);
    let ebpf = (capture == Capture::Ebpf).then(|| EbpfGuard(topo.pod.clone()));
    let proxy = ProxyProcess::start(&topo.pod, capture)?;
    wait_ready(&topo.pod)?;
    Ok(Pod { _proxy: proxy, _apps: apps, _ebpf: ebpf, topo })
}

meshpass_test_support::namespaced_test! {
    fn inbound_captured_and_excluded_ports(namespaces) -> Result<()> {
        inbound_case(&namespaces, Capture::Rules)
    }
}

meshpass_test_support::namespaced_test! {
    fn tproxy_inbound_captured_and_excluded_ports(namespaces) -> Result<()> {
        inbound_case(&namespaces, Capture::Tproxy)
    }
}

meshpass_test_support::namespaced_test! {
    fn tproxy_outbound_captured_and_excluded_destinations(namespaces) -> Result<()> {
        outbound_case(&namespaces, Capture::Tproxy)
    }
}

meshpass_test_support::namespaced_test! {
    fn ebpf_inbound_captured_and_excluded_ports(namespaces) -> Result<()> {
        inbound_case(&namespaces, Capture::Ebpf)
    }
}

fn inbound_case(namespaces: &meshpass_test_support::TestNamespaces, capture: Capture) -> Result<()> {
    let pod = setup(namespaces, capture)?;
    let (podns, peerns) = (&pod.topo.pod, &pod.topo.peer);

    // Captured port: through the sidecar.
    let r = http_get(peerns, format!("{POD_IP}:8080").parse()?, "/")?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("server"), Some("istio-envoy"), "{r:?}");
    assert!(r.header("x-envoy-upstream-service-time").is_some(), "{r:?}");
    assert_eq!(r.header("x-envoy-decorator-operation"), Some("app.default.svc.cluster.local:80/*"));
    assert_eq!(r.body, "peer=127.0.0.6", "the app sees the sidecar's 127.0.0.6");
    let rec = wait_record(podns, |c| c["direction"] == "inbound" && c["original_dst"] == format!("{POD_IP}:8080"))?;
    assert_eq!(rec["protocol"], "http");
    assert_eq!(rec["last_status"], 200);
    assert!(rec["client_addr"].as_str().unwrap().starts_with(&format!("{PEER_IP}:")));

    // Excluded port: straight to the app.
    let r = http_get(peerns, format!("{POD_IP}:8081").parse()?, "/")?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("server"), Some("testapp"), "{r:?}");
    assert!(r.header("x-envoy-upstream-service-time").is_none());
    assert_eq!(r.body, format!("peer={PEER_IP}"), "the app sees the real client");
    let recs = connections(podns)?;
    assert!(
        !recs.iter().any(|c| c["original_dst"].as_str().is_some_and(|d| d.ends_with(":8081"))),
        "excluded port must not reach the sidecar: {recs:?}"
    );
    Ok(())
}

meshpass_test_support::namespaced_test! {
    fn outbound_captured_and_excluded_destinations(namespaces) -> Result<()> {
        outbound_case(&namespaces, Capture::Rules)
    }
}

meshpass_test_support::namespaced_test! {
    fn ebpf_outbound_captured_and_excluded_destinations(namespaces) -> Result<()> {
        outbound_case(&namespaces, Capture::Ebpf)
    }
}

fn outbound_case(namespaces: &meshpass_test_support::TestNamespaces, capture: Capture) -> Result<()> {
    let pod = setup(namespaces, capture)?;
    let podns = &pod.topo.pod;

    // Captured: the app (root, not 1337) calls the peer; the sidecar forwards it.
    let r = http_get(podns, format!("{PEER_IP}:9090").parse()?, "/")?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("server"), Some("envoy"), "{r:?}");
    assert!(r.header("x-envoy-upstream-service-time").is_some());
    assert_eq!(r.body, format!("peer={POD_IP}"));
    let rec = wait_record(podns, |c| c["direction"] == "outbound" && c["original_dst"] == format!("{PEER_IP}:9090"))?;
    assert_eq!(rec["protocol"], "http");
    assert_eq!(rec["upstream_addr"], format!("{PEER_IP}:9090"));

    // Excluded port and excluded CIDR: direct, never seen by the sidecar.
    for dst in [format!("{PEER_IP}:9091"), format!("{PEER_EXCLUDED_IP}:9090")] {
        let r = http_get(podns, dst.parse()?, "/")?;
        assert_eq!(r.status, 200, "{dst}: {r:?}");
        assert_eq!(r.header("server"), Some("testapp"), "{dst}: {r:?}");
        assert!(r.header("x-envoy-upstream-service-time").is_none());
    }
    let recs = connections(podns)?;
    let outbound: Vec<_> = recs.iter().filter(|c| c["direction"] == "outbound").collect();
    assert_eq!(outbound.len(), 1, "only the captured call went through the sidecar: {recs:?}");
    Ok(())
}

/// Writes a workload's credentials where a sidecar running as 1337 can read them (the key
/// readable by it only), and its mesh config; returns the environment that points at them.
fn sidecar_files(
    dir: &std::path::Path,
    ca: &meshpass_identity::MeshCa,
    who: &meshpass_identity::SpiffeId,
    mesh: &serde_json::Value,
) -> Result<Vec<(&'static str, String)>> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let now = std::time::SystemTime::now();
    let cert = ca.issue(who, now - Duration::from_secs(60), Duration::from_secs(3600))?;
    meshpass_identity::files::write_dir(&dir.join("certs"), &cert, ca.cert_pem(), Some((1337, 1337)))?;
    std::fs::write(dir.join("mesh.json"), serde_json::to_vec(mesh)?)?;
    Ok(vec![
        ("MESHPASS_PROXY_CERT_DIR", dir.join("certs").display().to_string()),
        ("MESHPASS_PROXY_MESH_CONFIG", dir.join("mesh.json").display().to_string()),
    ])
}

meshpass_test_support::namespaced_test! {
    /// Two pods, each with a sidecar behind Istio's rules: the client's sidecar originates mutual
    /// TLS to the server's STRICT port, the server's terminates it and the app sees plaintext from
    /// 127.0.0.6; both records name the peer's identity. Plaintext that bypasses the client's
    /// sidecar (an excluded destination) is refused by the server's sidecar, with the reason in
    /// its log and its metrics.
    fn mutual_tls_between_two_sidecars_and_strict_refusal(namespaces) -> Result<()> {
        use meshpass_identity::{MeshCa, SpiffeId};
        let topo = Topology::new(&namespaces)?;
        let _app = App::start(&topo.peer, 9090)?;
        let injected = [15090, 15021, 15020];
        apply_capture_rules(&topo.pod, &injected, &[&format!("{PEER_EXCLUDED_IP}/32")], &[])?;
        apply_capture_rules(&topo.peer, &injected, &[], &[])?;
        let tmp = tempfile::tempdir()?;
        let ca = MeshCa::generate(std::time::SystemTime::now() - Duration::from_secs(60), Duration::from_secs(86400))?;
        let (sleep, hello) = (SpiffeId::new("default", "sleep")?, SpiffeId::new("default", "helloworld")?);
        let client_mesh = serde_json::json!({
            "version": "1",
            "outbound": [{
                "service": "default/helloworld", "host": "helloworld.default.svc.cluster.local",
                "address": PEER_IP, "port": 9090,
                "endpoints": [{ "address": format!("{PEER_IP}:9090"), "workload": "default/helloworld",
                                "tls": { "mode": "ISTIO_MUTUAL", "identities": [hello.to_string()] } }]
            }]
        });
        let server_mesh = serde_json::json!({ "version": "1", "inbound": { "mode": "STRICT" } });
        let client_env = sidecar_files(&tmp.path().join("client"), &ca, &sleep, &client_mesh)?;
        let server_env = sidecar_files(&tmp.path().join("server"), &ca, &hello, &server_mesh)?;
        let server_log = tmp.path().join("server.log");
        let _server =
            ProxyProcess::start_with(&topo.peer, Capture::Rules, server_env, Some(std::fs::File::create(&server_log)?))?;
        let _client = ProxyProcess::start_with(&topo.pod, Capture::Rules, client_env, None)?;
        wait_ready(&topo.peer)?;
        wait_ready(&topo.pod)?;

        let r = http_get(&topo.pod, format!("{PEER_IP}:9090").parse()?, "/")?;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "peer=127.0.0.6", "the server's sidecar forwarded plaintext from 127.0.0.6");
        let out = wait_record(&topo.pod, |c| c["direction"] == "outbound")?;
        assert_eq!(out["upstream_tls"]["mode"], "ISTIO_MUTUAL", "{out}");
        assert_eq!(out["upstream_tls"]["peer_identity"], hello.to_string(), "{out}");
        let deadline = Instant::now() + GUARD;
        let inb = loop {
            if let Some(c) =
                connections(&topo.peer)?.into_iter().find(|c| c["direction"] == "inbound" && !c["tls"].is_null())
            {
                break c;
            }
            if Instant::now() > deadline {
                bail!("the server's sidecar recorded no mutual TLS connection");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(inb["tls"]["peer_identity"], sleep.to_string(), "{inb}");
        assert_eq!(inb["original_dst"], format!("{PEER_IP}:9090"));

        // Plaintext past the client's sidecar (its excluded CIDR) meets the STRICT port.
        let refused = http_get(&topo.pod, format!("{PEER_EXCLUDED_IP}:9090").parse()?, "/");
        assert!(refused.is_err(), "a STRICT port must not answer plaintext: {refused:?}");
        let m = http_get(&topo.peer, "127.0.0.1:15090".parse()?, "/stats/prometheus")?;
        assert!(m.body.contains("meshpass_tls_refused_total{direction=\"inbound\",reason=\"plaintext\"} 1"), "{}", m.body);
        let deadline = Instant::now() + GUARD;
        loop {
            let log = std::fs::read_to_string(&server_log)?;
            if log.contains("inbound mutual TLS refused")
                && log.contains("port 9090 requires mutual TLS (PeerAuthentication STRICT) and the client sent plaintext")
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the refusal is not in the server's log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
