//! Mutual TLS between two in-memory sidecars: identities verified both ways, Istio's ALPN,
#![allow(clippy::unwrap_used)]
//! rotation without dropping an established connection, and bad certificates refused with
//! errors that say why.

use meshpass_identity::{
    alpn, client_config, server_config, spiffe_id_of, store, CertSlot, MeshCa, Rejection, SpiffeId, WorkloadCert,
    TRUST_DOMAIN,
};
use rustls::pki_types::ServerName;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HOUR: Duration = Duration::from_secs(3600);

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(ns, sa).expect("valid identity")
}

struct Side {
    slot: Arc<CertSlot>,
}

fn side(ca: &MeshCa, who: &SpiffeId) -> Side {
    let cert = ca.issue(who, SystemTime::now(), HOUR).expect("issue");
    Side { slot: CertSlot::new(&cert).expect("slot") }
}

type Outcome = (
    Result<(Option<SpiffeId>, Option<Vec<u8>>), rustls::Error>,
    Result<(Option<SpiffeId>, Option<Vec<u8>>), rustls::Error>,
);

/// One handshake; returns what each side saw (peer identity and ALPN) or its error.
async fn handshake(
    server_ca: &MeshCa,
    server: &Side,
    client_ca: &MeshCa,
    client: &Side,
    expect: Vec<SpiffeId>,
    client_alpn: &[&[u8]],
) -> Outcome {
    let scfg = server_config(Arc::new(server_ca.roots()), TRUST_DOMAIN, server.slot.clone(), alpn::SERVER)
        .expect("server config");
    let ccfg =
        client_config(Arc::new(client_ca.roots()), expect, client.slot.clone(), client_alpn).expect("client config");
    let (a, b) = tokio::io::duplex(64 * 1024);
    let sni = ServerName::try_from("outbound_.5000_._.helloworld.default.svc.cluster.local")
        .expect("Istio's SNI is a valid DNS name for rustls");
    let srv = tokio::spawn(async move {
        match TlsAcceptor::from(scfg).accept(b).await {
            Ok(mut s) => {
                let seen = (
                    meshpass_identity::peer_identity(s.get_ref().1.peer_certificates()),
                    s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
                );
                let mut buf = [0u8; 4];
                let _ = s.read_exact(&mut buf).await;
                let _ = s.write_all(&buf).await;
                Ok(seen)
            }
            Err(e) => Err(unwrap_rustls(e)),
        }
    });
    let cli = match TlsConnector::from(ccfg).connect(sni, a).await {
        Ok(mut c) => {
            let seen = (
                meshpass_identity::peer_identity(c.get_ref().1.peer_certificates()),
                c.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
            );
            let _ = c.write_all(b"ping").await;
            let mut buf = [0u8; 4];
            match c.read_exact(&mut buf).await {
                Ok(_) => Ok(seen),
                Err(e) => Err(unwrap_rustls(e)),
            }
        }
        Err(e) => Err(unwrap_rustls(e)),
    };
    (cli, srv.await.expect("server task"))
}

fn unwrap_rustls(e: std::io::Error) -> rustls::Error {
    match e.into_inner().and_then(|i| i.downcast::<rustls::Error>().ok()) {
        Some(e) => *e,
        None => rustls::Error::General("connection closed".into()),
    }
}

#[tokio::test]
async fn sidecars_verify_each_other_and_speak_istio_alpn() {
    let ca = MeshCa::generate(SystemTime::now(), HOUR * 24).unwrap();
    let (sleep, hello) = (id("default", "sleep"), id("default", "helloworld"));
    let (c, s) = (side(&ca, &sleep), side(&ca, &hello));
    let (cli, srv) = handshake(&ca, &s, &ca, &c, vec![hello.clone()], alpn::CLIENT_HTTP11).await;
    assert_eq!(cli.unwrap(), (Some(hello.clone()), Some(b"http/1.1".to_vec())));
    assert_eq!(srv.unwrap(), (Some(sleep.clone()), Some(b"http/1.1".to_vec())));
    let (cli, _) = handshake(&ca, &s, &ca, &c, vec![hello.clone()], alpn::CLIENT_TCP).await;
    assert_eq!(cli.unwrap().1, Some(b"istio-peer-exchange".to_vec()));
}

#[tokio::test]
async fn wrong_identity_is_refused_by_the_client() {
    let ca = MeshCa::generate(SystemTime::now(), HOUR * 24).unwrap();
    let (c, s) = (side(&ca, &id("default", "sleep")), side(&ca, &id("default", "impostor")));
    let (cli, srv) = handshake(&ca, &s, &ca, &c, vec![id("default", "helloworld")], alpn::CLIENT_TCP).await;
    let e = cli.unwrap_err();
    assert_eq!(Rejection::of(&e), Rejection::WrongIdentity);
    assert_eq!(
        meshpass_identity::describe(&e),
        "invalid peer certificate: peer identity spiffe://cluster.local/ns/default/sa/impostor is not the expected spiffe://cluster.local/ns/default/sa/helloworld"
    );
    assert!(srv.is_err(), "the server sees the client's alert");
}

#[tokio::test]
async fn another_ca_is_refused_by_both_sides() {
    let ca = MeshCa::generate(SystemTime::now(), HOUR * 24).unwrap();
    let rogue = MeshCa::generate(SystemTime::now(), HOUR * 24).unwrap();
    let hello = id("default", "helloworld");
    // A server with a certificate from another CA.
    let (cli, _) = handshake(
        &ca,
        &side(&rogue, &hello),
        &ca,
        &side(&ca, &id("default", "sleep")),
        vec![hello.clone()],
        alpn::CLIENT_TCP,
    )
    .await;
    let e = cli.unwrap_err();
    assert_eq!(Rejection::of(&e), Rejection::UnknownCa, "{e}");
    // A client with a certificate from another CA.
    let (cli, srv) =
        handshake(&ca, &side(&ca, &hello), &ca, &side(&rogue, &id("default", "sleep")), vec![hello], alpn::CLIENT_TCP)
            .await;
    let e = srv.unwrap_err();
    assert_eq!(Rejection::of(&e), Rejection::UnknownCa, "{e}");
    assert_eq!(meshpass_identity::describe(&e), "invalid peer certificate: not signed by the mesh CA (bad signature)");
    assert!(cli.is_err());
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let ca = MeshCa::generate(SystemTime::now() - HOUR * 48, HOUR * 24 * 365).unwrap();
    let hello = id("default", "helloworld");
    let now = SystemTime::now();
    let expired = ca.issue_window(&id("default", "sleep"), now - HOUR * 2, now - HOUR).unwrap();
    let client = Side { slot: CertSlot::new(&expired).unwrap() };
    let (_, srv) = handshake(&ca, &side(&ca, &hello), &ca, &client, vec![hello.clone()], alpn::CLIENT_TCP).await;
    let e = srv.unwrap_err();
    assert_eq!(Rejection::of(&e), Rejection::Expired);
    assert!(e.to_string().contains("certificate expired"), "{e}");
    let early = ca.issue_window(&hello, now + HOUR, now + HOUR * 2).unwrap();
    let server = Side { slot: CertSlot::new(&early).unwrap() };
    let (cli, _) =
        handshake(&ca, &server, &ca, &side(&ca, &id("default", "sleep")), vec![hello], alpn::CLIENT_TCP).await;
    assert_eq!(Rejection::of(&cli.unwrap_err()), Rejection::NotYetValid);
}

#[tokio::test]
async fn rotation_keeps_established_connections_and_serves_the_new_certificate() {
    let ca = MeshCa::generate(SystemTime::now(), HOUR * 24).unwrap();
    let hello = id("default", "helloworld");
    let server = side(&ca, &hello);
    let client = side(&ca, &id("default", "sleep"));
    let scfg = server_config(Arc::new(ca.roots()), TRUST_DOMAIN, server.slot.clone(), alpn::SERVER).unwrap();
    let ccfg = client_config(Arc::new(ca.roots()), vec![hello.clone()], client.slot.clone(), alpn::CLIENT_TCP).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(scfg.clone());
    let srv = tokio::spawn(async move {
        let mut s = acceptor.accept(b).await.unwrap();
        let mut buf = [0u8; 1];
        let mut n = 0;
        while s.read_exact(&mut buf).await.is_ok() {
            s.write_all(&buf).await.unwrap();
            n += 1;
        }
        n
    });
    let sni = ServerName::try_from("outbound_.5000_._.helloworld.default.svc.cluster.local").unwrap();
    let mut conn = TlsConnector::from(ccfg.clone()).connect(sni.clone(), a).await.unwrap();
    let first = conn.get_ref().1.peer_certificates().unwrap()[0].clone();
    let mut echo = [0u8; 1];
    for i in 0..100u8 {
        if i == 50 {
            // Both sides rotate mid-stream.
            server.slot.rotate(&ca.issue(&hello, SystemTime::now(), HOUR).unwrap()).unwrap();
            client.slot.rotate(&ca.issue(&id("default", "sleep"), SystemTime::now(), HOUR).unwrap()).unwrap();
        }
        conn.write_all(&[i]).await.unwrap();
        conn.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo[0], i);
    }
    conn.shutdown().await.unwrap();
    drop(conn);
    assert_eq!(srv.await.unwrap(), 100);
    // A new connection gets the new certificate (a fresh client: a resumed session would
    // report the certificate it was first established with).
    let ccfg = client_config(Arc::new(ca.roots()), vec![hello.clone()], client.slot.clone(), alpn::CLIENT_TCP).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(scfg);
    tokio::spawn(async move {
        let _ = acceptor.accept(b).await;
    });
    let conn = TlsConnector::from(ccfg).connect(sni, a).await.unwrap();
    let second = conn.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(first, second);
    assert_eq!(spiffe_id_of(&second).unwrap(), hello);
}

#[test]
fn workload_certificates_are_istio_shaped_and_read_back() {
    let ca = MeshCa::generate(SystemTime::now(), HOUR).unwrap();
    let sleep = id("default", "sleep");
    let cert = ca.issue(&sleep, SystemTime::now(), HOUR).unwrap();
    assert_eq!(spiffe_id_of(&cert.cert).unwrap(), sleep);
    let back = WorkloadCert::from_pem(&cert.cert_pem(), &cert.key_pem()).unwrap();
    assert_eq!(back.identity, sleep);
    assert_eq!(back.cert, cert.cert);
    // The CA's own certificate carries no SPIFFE identity.
    assert!(spiffe_id_of(ca.cert_der()).unwrap_err().to_string().contains("no URI subject alternative name"));
}

#[test]
fn ca_is_stored_with_its_key_private_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (ca, created) = store::load_or_create(dir.path(), now, HOUR).unwrap();
    assert!(created);
    let key = dir.path().join(store::CA_KEY_FILE);
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(dir.path().join(store::CA_CERT_FILE)).unwrap().permissions().mode() & 0o777, 0o644);
    let (again, created) = store::load_or_create(dir.path(), now, HOUR).unwrap();
    assert!(!created);
    assert_eq!(again.cert_der(), ca.cert_der());
    // Certificates issued by the reloaded CA chain to the original.
    let c = again.issue(&id("default", "a"), now, HOUR).unwrap();
    assert_eq!(spiffe_id_of(&c.cert).unwrap(), id("default", "a"));

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = store::load_or_create(dir.path(), now, HOUR).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("{} has mode 644; the mesh CA key must be readable by its owner only (chmod 600)", key.display())
    );
    std::fs::remove_file(&key).unwrap();
    let e = store::load_or_create(dir.path(), now, HOUR).err().unwrap();
    assert!(e.to_string().contains("ca-cert.pem exists but ca-key.pem does not"), "{e}");
}

#[test]
fn a_key_that_is_not_the_cas_is_refused() {
    let a = MeshCa::generate(SystemTime::now(), HOUR).unwrap();
    let b = MeshCa::generate(SystemTime::now(), HOUR).unwrap();
    let e = MeshCa::from_pem(a.cert_pem(), &b.key_pem()).err().unwrap();
    assert_eq!(e.to_string(), "the mesh CA is not valid: the private key does not belong to the certificate");
    let leaf = a.issue(&id("x", "y"), SystemTime::now(), HOUR).unwrap();
    let e = MeshCa::from_pem(&leaf.cert_pem(), &leaf.key_pem()).err().unwrap();
    assert!(e.to_string().contains("not a CA certificate"), "{e}");
}

#[test]
fn credential_files_are_checked_before_use() {
    use meshpass_identity::files;
    let ca = MeshCa::generate(SystemTime::now(), HOUR * 24).unwrap();
    let other = MeshCa::generate(SystemTime::now(), HOUR * 24).unwrap();
    let sleep = id("default", "sleep");
    let a = ca.issue(&sleep, SystemTime::now(), HOUR).unwrap();
    let b = ca.issue(&sleep, SystemTime::now(), HOUR).unwrap();
    let ok = files::parse(a.cert_pem().as_bytes(), a.key_pem().as_bytes(), ca.cert_pem().as_bytes()).unwrap();
    assert_eq!(ok.identity, sleep);
    let e = files::parse(a.cert_pem().as_bytes(), b.key_pem().as_bytes(), ca.cert_pem().as_bytes()).unwrap_err();
    assert_eq!(e.to_string(), "key.pem is not valid: the key does not belong to the certificate in cert-chain.pem");
    let e = files::parse(a.cert_pem().as_bytes(), a.key_pem().as_bytes(), other.cert_pem().as_bytes()).unwrap_err();
    assert!(
        e.to_string().contains(
            "the certificate of spiffe://cluster.local/ns/default/sa/sleep is not issued by the CA in root-cert.pem"
        ),
        "{e}"
    );
    let e = files::parse(b"", a.key_pem().as_bytes(), ca.cert_pem().as_bytes()).unwrap_err();
    assert_eq!(e.to_string(), "cert-chain.pem is not valid: it holds no certificate");
    // An expired certificate still loads (the caller reports it): a sidecar keeps a certificate.
    let old = ca.issue_window(&sleep, SystemTime::now() - HOUR * 3, SystemTime::now() - HOUR).unwrap();
    assert!(files::parse(old.cert_pem().as_bytes(), old.key_pem().as_bytes(), ca.cert_pem().as_bytes()).is_ok());
    // Written and read back, the key private to its owner.
    let dir = tempfile::tempdir().unwrap();
    files::write_dir(dir.path(), &a, ca.cert_pem(), None).unwrap();
    let mode = std::fs::metadata(dir.path().join(files::KEY_FILE)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(files::read_dir(dir.path()).unwrap().identity, sleep);
}
