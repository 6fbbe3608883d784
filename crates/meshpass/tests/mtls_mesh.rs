//! Mutual TLS in the local mesh, through the real binary (`meshpass up` with the sample):
//!
//! * `sleep` → `helloworld:5000` is mutual TLS, both identities verified and reported by
//!   `meshpass check --from sleep … -o json`;
//! * a STRICT `PeerAuthentication` makes helloworld's sidecar refuse the unmeshed `external`
//!   host, with the reason in the check, the sidecar's log and its metrics;
//! * invalid policy files are refused whole, nothing stored;
//! * bad certificates (expired, another CA, the wrong identity) are refused, logged and
//!   counted by reason;
//! * `meshpass passthrough set --inbound-ports 5000` lists `default/sleep` as failing before
//!   anything changes; once restarted, `sleep` really fails (mutual TLS into a plaintext app,
//!   as on Istio) while the node gets the app's own answer; `--fix-clients` creates the
//!   `DestinationRule` that turns TLS off for that port and `sleep` works (plaintext, past the
//!   server's sidecar); clearing the exclusion removes the rule and brings mutual TLS back;
//! * short-lived certificates rotate under a steady request loop with no failed request.
//!
//! Needs root: `#[ignore = "needs root"]`, run as root by `scripts/test` (`--include-ignored`).

mod support;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use support::mesh::Mesh;

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const HELLO: &str = "spiffe://cluster.local/ns/default/sa/default";
/// Checks after `--fix-clients`, each on a new connection from sleep.
const CHECKS_AFTER_THE_FIX: usize = 5;

/// `meshpass check … -o json`.
fn check(mesh: &Mesh, from: &str, url: &str) -> Result<Value> {
    let out = mesh.cli_ok(&["check", "--from", from, url, "-o", "json"])?;
    Ok(serde_json::from_str(&out)?)
}

/// Repeats `check` until `ok` holds (sidecars reload their files within a second).
fn check_until(mesh: &Mesh, from: &str, url: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = check(mesh, from, url)?;
        if ok(&v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: never happened; last check: {v:#}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn apply(mesh: &Mesh, name: &str, yaml: &str) -> Result<std::process::Output> {
    let file = mesh.state().join(name);
    std::fs::write(&file, yaml)?;
    mesh.cli(&["apply", "-f", file.to_str().context("utf-8 path")?])
}

/// `meshpass passthrough ARGS -o json` (through the management API), parsed.
fn passthrough_json(mesh: &Mesh, args: &[&str]) -> Result<Value> {
    let mut all = vec!["passthrough"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = mesh.cli_ok(&all)?;
    serde_json::from_str(&out).with_context(|| format!("meshpass {all:?}: not JSON: {out}"))
}

fn delete(mesh: &Mesh, name: &str) -> Result<String> {
    let file = mesh.state().join(name);
    mesh.cli_ok(&["delete", "-f", file.to_str().context("utf-8 path")?])
}

/// The first pod of `workload` in `ns`.
fn pod(mesh: &Mesh, ns: &str, workload: &str) -> Result<meshpass_mesh::PodStatus> {
    mesh.client()?
        .pods(Some(ns))?
        .into_iter()
        .find(|p| p.workload == workload && p.ready)
        .with_context(|| format!("a ready pod of {ns}/{workload}"))
}

/// A sidecar's Prometheus text.
fn metrics(mesh: &Mesh, ns: &str, workload: &str) -> Result<String> {
    let p = pod(mesh, ns, workload)?;
    let out = std::process::Command::new(support::mesh::BIN)
        .args(["exec", &p.name, "-n", ns, "--state-dir"])
        .arg(mesh.state())
        .args(["--", "curl", "-sS", "--max-time", "5", "http://127.0.0.1:15090/stats/prometheus"])
        .output()?;
    if !out.status.success() {
        bail!("metrics of {ns}/{workload}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
}

/// A sidecar's log.
fn sidecar_log(mesh: &Mesh, ns: &str, workload: &str) -> Result<String> {
    let p = pod(mesh, ns, workload)?;
    mesh.cli_ok(&["logs", &p.name, "-n", ns, "-c", "sidecar"])
}

/// Waits until a sidecar's log says `needle`.
fn log_says(mesh: &Mesh, ns: &str, workload: &str, needle: &str) -> Result<String> {
    refused_until_logged(mesh, None, ns, workload, needle)
}

/// Checks `url` from `from` (when given) again and again — new handshakes once the sidecars
/// have reloaded what changed (until then a call may still succeed on what they had) — until
/// the sidecar of `ns/workload` logs `needle`.
fn refused_until_logged(
    mesh: &Mesh,
    from: Option<(&str, &str)>,
    ns: &str,
    workload: &str,
    needle: &str,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((from, url)) = from {
            check(mesh, from, url)?;
        }
        let log = sidecar_log(mesh, ns, workload)?;
        if log.contains(needle) {
            return Ok(log);
        }
        if Instant::now() > deadline {
            bail!("the sidecar log of {ns}/{workload} never said {needle:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Overwrites a pod's credential files (as a broken or malicious issuer would).
fn tamper(
    mesh: &Mesh,
    ns: &str,
    workload: &str,
    issuer: &meshpass_identity::MeshCa,
    roots: &str,
    identity: &str,
    window: (SystemTime, SystemTime),
) -> Result<()> {
    let p = pod(mesh, ns, workload)?;
    let cert = issuer.issue_window(&identity.parse()?, window.0, window.1)?;
    let dir = mesh.state().join("pods").join(&p.netns).join("certs");
    meshpass_identity::files::write_dir(&dir, &cert, roots, Some((1337, 1337)))?;
    Ok(())
}

fn mesh_ca(state: &Path) -> Result<meshpass_identity::MeshCa> {
    let (ca, created) = meshpass_identity::store::load_or_create(state, SystemTime::now(), Duration::from_secs(3600))?;
    assert!(!created, "the mesh made its CA");
    Ok(ca)
}

meshpass_test_support::namespaced_test! {
fn sample_mesh_mutual_tls_strict_policy_and_bad_certificates(namespaces) -> Result<()> {
    let mut mesh = Mesh::new(namespaces.prefix(), "198.18.80.0/24", "198.19.80.0/24", true)?;
    mesh.up()?;
    for (ns, w) in [("default", "helloworld-v1"), ("default", "sleep"), ("external", "external")] {
        mesh.wait_ready(ns, w)?;
    }
    // The CA key is the state directory's, readable by root only.
    let key = mesh.state().join("ca-key.pem");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions()) & 0o777, 0o600);

    let url = "http://helloworld:5000/hello";
    let v = check_until(&mesh, "sleep", url, "mutual TLS from sleep", |v| v["status"] == 200)?;
    assert_eq!(v["mtls"], true, "{v:#}");
    assert_eq!(v["path"], "sidecar", "{v:#}");
    assert_eq!(v["error"], Value::Null, "{v:#}");
    assert_eq!(v["peer_identities"]["client"], SLEEP, "{v:#}");
    assert_eq!(v["peer_identities"]["server"], HELLO, "{v:#}");

    // STRICT on helloworld: the unmeshed `external` host is refused, sleep still gets through.
    let strict = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: helloworld-strict, namespace: default}
spec:
  selector: {matchLabels: {app: helloworld}}
  mtls: {mode: STRICT}
"#;
    let out = apply(&mesh, "strict.yaml", strict)?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "peerauthentication.security.istio.io/helloworld-strict -n default created"
    );
    let got = mesh.cli_ok(&["get", "pa", "-n", "default"])?;
    assert!(got.contains("helloworld-strict") && got.contains("STRICT"), "{got}");
    let v = check_until(&mesh, "external/external", "http://helloworld.default:5000/hello", "STRICT refusal", |v| {
        v["status"].is_null()
    })?;
    assert_eq!(v["mtls"], false);
    let err = v["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("refused by the sidecar of pod default/helloworld-v1-")
            && err.contains("port 5000 requires mutual TLS (PeerAuthentication STRICT) and the client sent plaintext"),
        "{v:#}"
    );
    log_says(&mesh, "default", "helloworld-v1", "inbound mutual TLS refused")?;
    let m = metrics(&mesh, "default", "helloworld-v1")?;
    assert!(metric(&m, "meshpass_tls_refused_total{direction=\"inbound\",reason=\"plaintext\"}") >= 1, "{m}");
    let v = check(&mesh, "sleep", url)?;
    assert_eq!((v["status"].as_u64(), &v["mtls"]), (Some(200), &Value::Bool(true)), "{v:#}");
    assert!(delete(&mesh, "strict.yaml")?.contains("helloworld-strict -n default deleted"));
    check_until(&mesh, "external/external", "http://helloworld.default:5000/hello", "PERMISSIVE again", |v| {
        v["status"] == 200
    })?;

    // A file with one bad document is refused whole: nothing stored.
    let bad = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: fine, namespace: default}
spec:
  host: helloworld
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: broken, namespace: default}
spec:
  mtls: {mode: SOMETIMES}
"#;
    let out = apply(&mesh, "bad.yaml", bad)?;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.mtls.mode") && stderr.contains("SOMETIMES"), "{stderr}");
    assert!(!mesh.cli_ok(&["get", "dr"])?.contains("fine"), "nothing stored");

    // Bad certificates. The client's: expired, then from another CA.
    let ca = mesh_ca(mesh.state())?;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    tamper(&mesh, "default", "sleep", &ca, ca.cert_pem(), SLEEP, (now - 3 * hour, now - hour))?;
    let v = check_until(&mesh, "sleep", url, "an expired client certificate refused", |v| v["status"] != 200)?;
    assert_eq!(v["mtls"], false, "{v:#}");
    refused_until_logged(&mesh, Some(("sleep", url)), "default", "helloworld-v1", "reason=\"expired\"")?;
    let m = metrics(&mesh, "default", "helloworld-v1")?;
    assert!(metric(&m, "meshpass_tls_refused_total{direction=\"inbound\",reason=\"expired\"}") >= 1, "{m}");

    let rogue = meshpass_identity::MeshCa::generate(now - hour, 24 * hour)?;
    // The client trusts both CAs (so it accepts helloworld); helloworld trusts only the mesh's.
    let roots = format!("{}{}", rogue.cert_pem(), ca.cert_pem());
    tamper(&mesh, "default", "sleep", &rogue, &roots, SLEEP, (now - hour, now + hour))?;
    refused_until_logged(&mesh, Some(("sleep", url)), "default", "helloworld-v1", "reason=\"unknown_ca\"")?;
    log_says(&mesh, "default", "helloworld-v1", "by the mesh CA")?;
    let m = metrics(&mesh, "default", "helloworld-v1")?;
    assert!(metric(&m, "meshpass_tls_refused_total{direction=\"inbound\",reason=\"unknown_ca\"}") >= 1, "{m}");

    // The client's certificate restored; the server's replaced by one with the wrong identity.
    tamper(&mesh, "default", "sleep", &ca, ca.cert_pem(), SLEEP, (now - hour, now + hour))?;
    check_until(&mesh, "sleep", url, "restored", |v| v["status"] == 200)?;
    tamper(
        &mesh,
        "default",
        "helloworld-v1",
        &ca,
        ca.cert_pem(),
        "spiffe://cluster.local/ns/default/sa/impostor",
        (now - hour, now + hour),
    )?;
    // sleep's sidecar keeps the connections it pooled before (as Envoy does); a rotation of
    // its own certificate makes it open new ones, which meet the new server certificate.
    std::thread::sleep(Duration::from_secs(1));
    tamper(&mesh, "default", "sleep", &ca, ca.cert_pem(), SLEEP, (now - hour, now + hour))?;
    refused_until_logged(
        &mesh,
        Some(("sleep", url)),
        "default",
        "sleep",
        "peer identity spiffe://cluster.local/ns/default/sa/impostor is not the expected spiffe://cluster.local/ns/default/sa/default",
    )?;
    let v = check(&mesh, "sleep", url)?;
    assert_ne!(v["status"], 200, "{v:#}");
    assert!(v["error"].as_str().unwrap_or_default().contains("impostor"), "{v:#}");
    let m = metrics(&mesh, "default", "sleep")?;
    assert!(metric(&m, "meshpass_tls_refused_total{direction=\"outbound\",reason=\"wrong_identity\"}") >= 1, "{m}");
    Ok(())
}

fn excluded_inbound_port_breaks_mtls_clients_until_the_fix_and_rotation_drops_nothing(namespaces) -> Result<()> {
    let mut mesh = Mesh::new(namespaces.prefix(), "198.18.81.0/24", "198.19.81.0/24", true)?;
    // Short-lived certificates: renewed about every 10 s.
    mesh.up_args = vec!["--workload-cert-ttl", "20s"];
    mesh.up()?;
    mesh.wait_ready("default", "helloworld-v1")?;
    mesh.wait_ready("default", "sleep")?;
    let url = "http://helloworld:5000/hello";
    check_until(&mesh, "sleep", url, "mutual TLS", |v| v["status"] == 200 && v["mtls"] == true)?;

    // Certificate rotation under a steady request loop from sleep: nothing fails.
    let sleep_pod = pod(&mesh, "default", "sleep")?;
    let before = (
        metric(
            &metrics(&mesh, "default", "sleep")?,
            "meshpass_config_reloads_total{file=\"certificates\",result=\"ok\"}",
        ),
        metric(
            &metrics(&mesh, "default", "helloworld-v1")?,
            "meshpass_config_reloads_total{file=\"certificates\",result=\"ok\"}",
        ),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // curl has no DNS here: the ClusterIP.
    let direct_url = format!("http://{}:5000/hello", mesh.service_ip("helloworld")?);
    let looping = mesh.pod_request_loop(&sleep_pod.name, "default", direct_url, stop.clone());
    std::thread::sleep(Duration::from_secs(25));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failures) = looping.join().map_err(|_| anyhow::anyhow!("request loop panicked"))?;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during rotation: {failures:?}",
        failures.len(),
        ok + failures.len() as u32
    );
    assert!(ok > 20, "{ok} requests");
    let after = (
        metric(
            &metrics(&mesh, "default", "sleep")?,
            "meshpass_config_reloads_total{file=\"certificates\",result=\"ok\"}",
        ),
        metric(
            &metrics(&mesh, "default", "helloworld-v1")?,
            "meshpass_config_reloads_total{file=\"certificates\",result=\"ok\"}",
        ),
    );
    assert!(after.0 > before.0 && after.1 > before.1, "both sidecars took new certificates: {before:?} → {after:?}");

    // Excluding inbound 5000 on helloworld, before anything changes: sleep is listed as
    // failing (its sidecar would keep sending mutual TLS to a port the app receives itself).
    let hello_pod = pod(&mesh, "default", "helloworld-v1")?.name;
    let dry = passthrough_json(&mesh, &["set", "helloworld-v1", "--inbound-ports", "5000", "--dry-run"])?;
    let sleep_entry = |v: &Value| {
        v["impact"].as_array().into_iter().flatten().find(|e| e["client"] == "default/sleep" && e["port"] == 5000).cloned()
    };
    let e = sleep_entry(&dry).with_context(|| format!("sleep not in the impact: {dry:#}"))?;
    assert_eq!(e["effect"], "fails", "{dry:#}");
    // sleep's sidecar recorded the loop's calls to helloworld:5000.
    assert_eq!(e["evidence"], "observed", "{dry:#}");
    assert_eq!(dry["fixes"][0]["name"], "helloworld-passthrough-5000", "{dry:#}");
    assert_eq!(pod(&mesh, "default", "helloworld-v1")?.name, hello_pod, "the dry run changed nothing");
    check_until(&mesh, "sleep", url, "still mutual TLS", |v| v["status"] == 200 && v["mtls"] == true)?;

    // The change itself, restarted: the call from sleep really fails (as it would on Istio)
    // while the node, in plaintext, gets the app's own answer.
    let set = passthrough_json(&mesh, &["set", "helloworld-v1", "--inbound-ports", "5000", "--restart"])?;
    assert_eq!(sleep_entry(&set).map(|e| e["effect"].clone()), Some(Value::from("fails")), "{set:#}");
    assert_eq!(set["created"], serde_json::json!([]), "{set:#}");
    mesh.wait_ready("default", "helloworld-v1")?;
    let v = check_until(&mesh, "sleep", url, "the call from sleep fails", |v| v["status"] != 200)?;
    assert_eq!(v["mtls"], false, "{v:#}");
    assert_ne!(v["error"], Value::Null, "{v:#}");
    let ip = mesh.service_ip("helloworld")?;
    let reply = mesh.curl_from_node(&["-i"], &format!("http://{ip}:5000/hello"))?;
    assert!(reply.contains("Hello version: v1"), "{reply}");
    assert!(!reply.to_lowercase().contains("server: istio-envoy"), "the app answered itself: {reply}");

    // --fix-clients: the DestinationRule that turns TLS off for exactly that Service port.
    let fixed = passthrough_json(&mesh, &["set", "helloworld-v1", "--inbound-ports", "5000", "--fix-clients"])?;
    assert_eq!(sleep_entry(&fixed).map(|e| e["effect"].clone()), Some(Value::from("loses-mtls")), "{fixed:#}");
    assert_eq!(fixed["created"][0]["name"], "helloworld-passthrough-5000", "{fixed:#}");
    let rules = mesh.cli_ok(&["get", "destinationrules", "-n", "default"])?;
    assert!(rules.contains("helloworld-passthrough-5000"), "{rules}");
    check_until(&mesh, "sleep", url, "the fix works", |v| v["status"] == 200)?;
    // Every call now: sleep's sidecar connects from ports its app used before (one range,
    // one pod address), and an old record of the app's must not pass for helloworld's.
    for _ in 0..CHECKS_AFTER_THE_FIX {
        let v = check(&mesh, "sleep", url)?;
        assert_eq!((v["status"].as_u64(), &v["mtls"]), (Some(200), &Value::Bool(false)), "{v:#}");
        assert_eq!(v["path"], "direct", "past helloworld's sidecar: {v:#}");
    }

    // Cleared: the rule goes with the exclusion, the port is captured again, mutual TLS is back.
    let cleared = passthrough_json(&mesh, &["clear", "helloworld-v1", "--restart"])?;
    assert_eq!(cleared["removed"][0]["name"], "helloworld-passthrough-5000", "{cleared:#}");
    let rules = mesh.cli_ok(&["get", "destinationrules", "-n", "default"])?;
    assert!(!rules.contains("helloworld-passthrough-5000"), "{rules}");
    mesh.wait_ready("default", "helloworld-v1")?;
    let v = check_until(&mesh, "sleep", url, "mutual TLS back", |v| v["status"] == 200 && v["mtls"] == true)?;
    assert_eq!(v["path"], "sidecar", "{v:#}");
    Ok(())
}
}
