//! Mutual TLS between two in-process sidecars on loopback, as Istio's sidecars do it: a client
//! sidecar routes a Service address to an endpoint and originates mutual TLS (or plaintext)
//! as its mesh config says, the server sidecar terminates it per port mode (STRICT /
//! PERMISSIVE / DISABLE) and forwards plaintext to the app; identities land in both
//! connection records; bad certificates are refused and counted by reason; certificates and
//! mesh config are reloaded from their files without dropping connections.

// Test code: a panic is the failure report, also in helpers outside #[test] fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use meshpass_identity::{alpn, files, MeshCa, SpiffeId};
use meshpass_proxy::{FixedTarget, Proxy, ProxyConfig};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOUR: Duration = Duration::from_secs(3600);
/// The "ClusterIP" the client's app dials; the client sidecar's mesh config routes it.
const SERVICE: &str = "127.0.0.1:9";
const HELLO_HOST: &str = "helloworld.default.svc.cluster.local";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(ns, sa).unwrap()
}

/// Writes a workload's credential files issued by `ca` (valid from `from` for `ttl`).
fn write_creds(dir: &Path, ca: &MeshCa, who: &SpiffeId, from: SystemTime, ttl: Duration) {
    let cert = ca.issue_window(who, from, from + ttl).unwrap();
    files::write_dir(dir, &cert, ca.cert_pem(), None).unwrap();
}

fn write_json(path: &Path, v: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

struct Sidecar {
    proxy: Proxy,
    dir: PathBuf,
    config: PathBuf,
}

impl Sidecar {
    async fn start(root: &Path, name: &str, target: SocketAddr, mesh: &serde_json::Value, certs: bool) -> Sidecar {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("mesh.json");
        write_json(&config, mesh);
        let mut c: ProxyConfig = test_config();
        c.mesh.config_file = Some(config.clone());
        c.mesh.cert_dir = certs.then(|| dir.join("certs"));
        c.mesh.reload_interval = Duration::from_millis(50);
        c.mesh.handshake_timeout = Duration::from_secs(5);
        let proxy = Proxy::start_with_resolver(c, Arc::new(FixedTarget::both(target))).await.unwrap();
        Sidecar { proxy, dir, config }
    }

    fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    async fn metrics(&self) -> String {
        get(self.proxy.addrs().admin.unwrap(), "/stats/prometheus").await.1
    }

    async fn metric(&self, series: &str) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
            .parse()
            .unwrap()
    }
}

/// The client sidecar's mesh config: the Service at [`SERVICE`] with one endpoint.
fn client_mesh(endpoint: SocketAddr, tls: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "version": "1",
        "outbound": [{
            "service": "default/helloworld", "host": HELLO_HOST,
            "address": "127.0.0.1", "port": 9,
            "endpoints": [{ "address": endpoint, "workload": "default/helloworld", "tls": tls }]
        }]
    })
}

fn mutual(ids: &[&SpiffeId]) -> serde_json::Value {
    serde_json::json!({ "mode": "ISTIO_MUTUAL", "identities": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>() })
}

fn server_mesh(mode: &str) -> serde_json::Value {
    serde_json::json!({ "version": "1", "inbound": { "mode": mode } })
}

/// A CA, the server ("helloworld") and client ("sleep") sidecars with their credentials.
struct Pair {
    _root: tempfile::TempDir,
    ca: MeshCa,
    app: Upstream,
    server: Sidecar,
    client: Sidecar,
    hello: SpiffeId,
    sleep: SpiffeId,
}

async fn pair(server_mode: &str, client_tls: Option<serde_json::Value>) -> Pair {
    let root = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(SystemTime::now() - HOUR, HOUR * 48).unwrap();
    let (hello, sleep) = (id("default", "helloworld"), id("default", "sleep"));
    let app = Upstream::hello().await;
    write_creds(&root.path().join("server/certs"), &ca, &hello, SystemTime::now() - HOUR, HOUR * 2);
    write_creds(&root.path().join("client/certs"), &ca, &sleep, SystemTime::now() - HOUR, HOUR * 2);
    let server = Sidecar::start(root.path(), "server", app.addr, &server_mesh(server_mode), true).await;
    let tls = client_tls.unwrap_or_else(|| mutual(&[&hello]));
    let client = Sidecar::start(
        root.path(),
        "client",
        SERVICE.parse().unwrap(),
        &client_mesh(server.proxy.addrs().inbound, tls),
        true,
    )
    .await;
    Pair { _root: root, ca, app, server, client, hello, sleep }
}

const GET: &[u8] = b"GET /hello HTTP/1.1\r\nHost: helloworld:5000\r\nConnection: close\r\n\r\n";

fn record(p: &Proxy, f: impl Fn(&meshpass_proxy::ConnectionRecord) -> bool) -> meshpass_proxy::ConnectionRecord {
    p.connections().into_iter().rev().find(|r| f(r)).expect("a matching connection record")
}

#[tokio::test]
async fn http_between_sidecars_is_mutual_tls_with_both_identities_recorded() {
    let p = pair("STRICT", None).await;
    let r = raw_request(p.client.proxy.addrs().outbound, GET).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.text(), "hello");
    // The app saw a plaintext request from the inbound source address.
    assert_eq!(p.app.last_request().1.ip().to_string(), "127.0.0.6");
    // The client's record closes with its connection; the server's stays open while the
    // client sidecar keeps its upstream connection in the pool.
    eventually("the client's record closed", || p.client.proxy.connections().iter().any(|r| r.state == "closed")).await;
    let out = record(&p.client.proxy, |r| r.upstream_tls.is_some());
    let up = out.upstream_tls.unwrap();
    assert_eq!(up.mode, "ISTIO_MUTUAL");
    assert_eq!(up.peer_identity.as_deref(), Some(p.hello.to_string().as_str()));
    assert_eq!(up.local_identity.as_deref(), Some(p.sleep.to_string().as_str()));
    assert_eq!(up.sni.as_deref(), Some("outbound_.9_._.helloworld.default.svc.cluster.local"));
    assert_eq!(up.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(out.upstream_addr, Some(p.server.proxy.addrs().inbound));
    let inb = record(&p.server.proxy, |r| r.tls.is_some());
    let down = inb.tls.unwrap();
    assert_eq!(down.peer_identity.as_deref(), Some(p.sleep.to_string().as_str()));
    assert_eq!(down.local_identity.as_deref(), Some(p.hello.to_string().as_str()));
    assert_eq!(inb.protocol, Some(meshpass_proxy::Protocol::Http));
    assert_eq!(p.server.metric("meshpass_tls_handshakes_total{direction=\"inbound\"}").await, 1);
    assert_eq!(p.client.metric("meshpass_tls_handshakes_total{direction=\"outbound\"}").await, 1);
}

#[tokio::test]
async fn opaque_tcp_crosses_mutual_tls_byte_exact_with_half_close() {
    // An app that echoes everything and closes after the client's EOF.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.write_all(&all).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let root = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(SystemTime::now() - HOUR, HOUR * 48).unwrap();
    let hello = id("default", "helloworld");
    write_creds(&root.path().join("server/certs"), &ca, &hello, SystemTime::now() - HOUR, HOUR * 2);
    write_creds(&root.path().join("client/certs"), &ca, &id("default", "sleep"), SystemTime::now() - HOUR, HOUR * 2);
    let server = Sidecar::start(root.path(), "server", app, &server_mesh("STRICT"), true).await;
    let client = Sidecar::start(
        root.path(),
        "client",
        SERVICE.parse().unwrap(),
        &client_mesh(server.proxy.addrs().inbound, mutual(&[&hello])),
        true,
    )
    .await;
    let data = random_bytes(1 << 20, 7);
    let mut s = TcpStream::connect(client.proxy.addrs().outbound).await.unwrap();
    // Not HTTP: the first byte is not a method letter.
    s.write_all(&[0u8]).await.unwrap();
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut back)).await.unwrap().unwrap();
    assert_eq!(back.len(), data.len() + 1);
    assert!(back[1..] == data[..]);
    eventually("server record", || server.proxy.connections().iter().any(|r| r.tls.is_some())).await;
    let inb = record(&server.proxy, |r| r.tls.is_some());
    assert_eq!(inb.tls.unwrap().alpn.as_deref(), Some("istio-peer-exchange"));
    assert_eq!(inb.protocol, Some(meshpass_proxy::Protocol::Tcp));
}

#[tokio::test]
async fn strict_refuses_plaintext_and_permissive_passes_it() {
    let p = pair("STRICT", None).await;
    let mut s = TcpStream::connect(p.server.proxy.addrs().inbound).await.unwrap();
    s.write_all(GET).await.unwrap();
    let mut r = RawReader::new(s);
    assert!(r.closed().await, "a STRICT port closes plaintext connections");
    eventually("refusal recorded", || {
        p.server.proxy.connections().iter().any(|r| r.outcome.starts_with("tls_refused: plaintext"))
    })
    .await;
    let rec = record(&p.server.proxy, |r| r.outcome.starts_with("tls_refused"));
    assert!(rec.outcome.contains("requires mutual TLS (PeerAuthentication STRICT)"), "{}", rec.outcome);
    assert_eq!(p.server.metric("meshpass_tls_refused_total{direction=\"inbound\",reason=\"plaintext\"}").await, 1);
    assert_eq!(p.app.seen.connections.load(std::sync::atomic::Ordering::SeqCst), 0);

    // PERMISSIVE: the same plaintext request reaches the app; mutual TLS still works.
    let p = pair("PERMISSIVE", None).await;
    let r = raw_request(p.server.proxy.addrs().inbound, GET).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("server"), Some("istio-envoy"));
    let r = raw_request(p.client.proxy.addrs().outbound, GET).await;
    assert_eq!(r.status(), 200);
    assert_eq!(p.server.metric("meshpass_tls_handshakes_total{direction=\"inbound\"}").await, 1);
}

/// Starts a raw TCP app that records the first bytes each connection sends.
async fn recording_app() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(buf[..n].to_vec());
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn tls_of_the_apps_own_passes_permissive_and_disable_hands_mesh_tls_to_the_app() {
    let (app, mut seen) = recording_app().await;
    let root = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(SystemTime::now() - HOUR, HOUR * 48).unwrap();
    let hello = id("default", "helloworld");
    write_creds(&root.path().join("server/certs"), &ca, &hello, SystemTime::now() - HOUR, HOUR * 2);
    let server = Sidecar::start(root.path(), "server", app, &server_mesh("PERMISSIVE"), true).await;
    // A ClientHello without Istio's ALPN: the app's own TLS, passed through byte for byte.
    let hello_bytes = client_hello("shop.example", &[b"h2", b"http/1.1"]);
    let mut s = TcpStream::connect(server.proxy.addrs().inbound).await.unwrap();
    s.write_all(&hello_bytes).await.unwrap();
    let got = tokio::time::timeout(GUARD, seen.recv()).await.unwrap().unwrap();
    assert_eq!(got, hello_bytes);
    drop(s);

    // DISABLE: even the mesh's own ClientHello goes to the app, which cannot read it.
    write_json(&server.config, &server_mesh("DISABLE"));
    eventually_reloaded(&server).await;
    let mesh_hello = client_hello("outbound_.9_._.helloworld.default.svc.cluster.local", alpn::CLIENT_HTTP11);
    let mut s = TcpStream::connect(server.proxy.addrs().inbound).await.unwrap();
    s.write_all(&mesh_hello).await.unwrap();
    let got = tokio::time::timeout(GUARD, seen.recv()).await.unwrap().unwrap();
    assert_eq!(got, mesh_hello);
}

async fn eventually_reloaded(s: &Sidecar) {
    let before = s.metric("meshpass_config_reloads_total{file=\"mesh_config\",result=\"ok\"}").await;
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let now = s.metric("meshpass_config_reloads_total{file=\"mesh_config\",result=\"ok\"}").await;
        if now > before || s.proxy.shared().mesh.generation() > 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "mesh config never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first flight of a rustls client offering `alpn`.
fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let mut c = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from(sni.to_owned()).unwrap()).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

#[tokio::test]
async fn excluded_port_analogue_mesh_tls_to_a_plaintext_app_fails_and_disable_rule_fixes_it() {
    // The server's port "passes through": its sidecar is DISABLE, the app reads plaintext.
    let p = pair("DISABLE", None).await;
    let r = raw_request(p.client.proxy.addrs().outbound, GET).await;
    assert_eq!(r.status(), 503, "mutual TLS into a plaintext app cannot work: {}", r.text());
    // The client's TLS mode for the Service turned off (the fix rule): plaintext works.
    write_json(&p.client.config, &client_mesh(p.server.proxy.addrs().inbound, serde_json::json!({"mode": "DISABLE"})));
    eventually_reloaded(&p.client).await;
    let r = raw_request(p.client.proxy.addrs().outbound, GET).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let out = record(&p.client.proxy, |r| r.last_status == 200);
    assert_eq!(out.upstream_tls, None);
}

#[tokio::test]
async fn bad_certificates_are_refused_and_counted_by_reason() {
    // A client certificate that expired.
    let p = pair("STRICT", None).await;
    write_creds(&p.client.certs(), &p.ca, &p.sleep, SystemTime::now() - HOUR * 3, HOUR);
    reloaded_certs(&p.client).await;
    let r = raw_request(p.client.proxy.addrs().outbound, GET).await;
    assert_eq!(r.status(), 503);
    assert_eq!(p.server.metric("meshpass_tls_refused_total{direction=\"inbound\",reason=\"expired\"}").await, 1);
    let rec = record(&p.server.proxy, |r| r.outcome.starts_with("tls_refused"));
    assert!(rec.outcome.contains("expired"), "{}", rec.outcome);

    // A client certificate from another CA.
    let p = pair("STRICT", None).await;
    let rogue = MeshCa::generate(SystemTime::now() - HOUR, HOUR * 48).unwrap();
    let cert = rogue.issue(&p.sleep, SystemTime::now() - HOUR, HOUR * 2).unwrap();
    // The client trusts both CAs (so it accepts the server); the server trusts only the mesh's.
    let roots = format!("{}{}", rogue.cert_pem(), p.ca.cert_pem());
    files::write_dir(&p.client.certs(), &cert, &roots, None).unwrap();
    reloaded_certs(&p.client).await;
    let r = raw_request(p.client.proxy.addrs().outbound, GET).await;
    assert_eq!(r.status(), 503);
    assert_eq!(p.server.metric("meshpass_tls_refused_total{direction=\"inbound\",reason=\"unknown_ca\"}").await, 1);
    let rec = record(&p.server.proxy, |r| r.outcome.starts_with("tls_refused"));
    assert!(rec.outcome.contains("not signed by the mesh CA"), "{}", rec.outcome);

    // A server whose identity is not the one the client expects.
    let impostor = id("default", "impostor");
    let p = pair("STRICT", Some(mutual(&[&impostor]))).await;
    let r = raw_request(p.client.proxy.addrs().outbound, GET).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().contains("is not the expected spiffe://cluster.local/ns/default/sa/impostor"), "{}", r.text());
    assert_eq!(
        p.client.metric("meshpass_tls_refused_total{direction=\"outbound\",reason=\"wrong_identity\"}").await,
        1
    );
}

async fn reloaded_certs(s: &Sidecar) {
    let series = "meshpass_config_reloads_total{file=\"certificates\",result=\"ok\"}";
    let deadline = tokio::time::Instant::now() + GUARD;
    while s.metric(series).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "certificates never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rotation_under_load_drops_nothing_and_new_handshakes_use_the_new_certificate() {
    let p = pair("STRICT", None).await;
    let out = p.client.proxy.addrs().outbound;
    // A keep-alive connection opened before the rotation...
    let mut keep = RawReader::new(TcpStream::connect(out).await.unwrap());
    let ka = b"GET /hello HTTP/1.1\r\nHost: helloworld\r\n\r\n";
    keep.stream.write_all(ka).await.unwrap();
    assert_eq!(keep.response(false).await.unwrap().status(), 200);
    let expiry = |s: String| -> u64 {
        s.lines().find_map(|l| l.strip_prefix("meshpass_tls_certificate_expiry_seconds ")).unwrap().parse().unwrap()
    };
    let (server_before, client_before) = (expiry(p.server.metrics().await), expiry(p.client.metrics().await));
    // ... and a steady loop of new connections while both sides rotate, several times.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let loop_task = {
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = tokio::time::timeout(GUARD, async {
                    let mut s = RawReader::new(TcpStream::connect(out).await?);
                    s.stream.write_all(GET).await?;
                    s.response(false).await
                })
                .await;
                match r {
                    Ok(Ok(r)) if r.status() == 200 => done.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    _ => failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                };
            }
        })
    };
    for i in 1..=3u64 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let ttl = HOUR * 2 + Duration::from_secs(60 * i);
        write_creds(&p.server.certs(), &p.ca, &p.hello, SystemTime::now() - HOUR, ttl);
        write_creds(&p.client.certs(), &p.ca, &p.sleep, SystemTime::now() - HOUR, ttl);
    }
    let deadline = tokio::time::Instant::now() + GUARD;
    while expiry(p.server.metrics().await) == server_before || expiry(p.client.metrics().await) == client_before {
        assert!(tokio::time::Instant::now() < deadline, "rotation never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    loop_task.await.unwrap();
    assert_eq!(failures.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(done.load(std::sync::atomic::Ordering::Relaxed) > 10);
    // The connection from before the rotation still works.
    keep.stream.write_all(ka).await.unwrap();
    assert_eq!(keep.response(false).await.unwrap().status(), 200);
    assert_eq!(p.server.metric("meshpass_config_reloads_total{file=\"certificates\",result=\"error\"}").await, 0);
}

#[tokio::test]
async fn a_broken_reload_keeps_the_previous_files_and_says_so() {
    let p = pair("STRICT", None).await;
    std::fs::write(p.server.certs().join(files::KEY_FILE), b"not a key").unwrap();
    write_json(&p.server.config, &serde_json::json!({ "inbound": { "mode": "SOMETIMES" } }));
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let m = p.server.metrics().await;
        if m.contains("meshpass_config_reloads_total{file=\"certificates\",result=\"error\"} 1")
            && m.contains("meshpass_config_reloads_total{file=\"mesh_config\",result=\"error\"} 1")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "reload errors never counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = raw_request(p.client.proxy.addrs().outbound, GET).await;
    assert_eq!(r.status(), 200, "the previous certificate and mode stay in use");
}

#[tokio::test]
async fn a_service_without_endpoints_is_503_no_healthy_upstream() {
    let root = tempfile::tempdir().unwrap();
    let mesh = serde_json::json!({ "outbound": [{ "service": "default/empty", "host": "empty.default.svc.cluster.local",
        "address": "127.0.0.1", "port": 9, "endpoints": [] }] });
    let client = Sidecar::start(root.path(), "client", SERVICE.parse().unwrap(), &mesh, false).await;
    let r = raw_request(client.proxy.addrs().outbound, GET).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().contains("no healthy upstream"), "{}", r.text());
}

#[tokio::test]
async fn start_refuses_files_it_cannot_use() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("mesh.json");
    write_json(&path, &server_mesh("STRICT"));
    let mut c = test_config();
    c.mesh.config_file = Some(path.clone());
    let e = Proxy::start(c.clone()).await.unwrap_err();
    let chain = meshpass_proxy::mesh::report(&e);
    assert!(
        chain.contains("asks for mutual TLS (STRICT or ISTIO_MUTUAL) but MESHPASS_PROXY_CERT_DIR is not set"),
        "{chain}"
    );
    c.mesh.cert_dir = Some(root.path().join("nothing-here"));
    let e = Proxy::start(c).await.unwrap_err();
    let chain = meshpass_proxy::mesh::report(&e);
    assert!(chain.contains("cannot read") && chain.contains("cert-chain.pem"), "{chain}");
}
