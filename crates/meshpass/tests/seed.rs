//! The seed scenario, end to end, as an operator runs it: `meshpass up` with the sample;
//! `get svc` shows helloworld's ClusterIP and port 5000; `curl -sSI` from the node shows
//! the sidecar (`server: istio-envoy`, `x-envoy-upstream-service-time`); after
//! `excludeInboundPorts: "5000"` and a restart, the app's own `Server` header and HTTP/1.0;
//! clearing it and restarting brings the sidecar back. The same for outbound from `sleep` to
//! the unmeshed external host, with `excludeOutboundIPRanges` and with `excludeOutboundPorts`,
//! judged by `meshpass check --from sleep` (sidecar records and rule counters, not headers).
//! Then: zero failed requests during a rolling restart and during a live apply; `kill -9` of
//! the supervisor in the middle of a restart and `meshpass down` leave nothing behind; `up`
//! again brings the mesh back with the saved settings.

mod support;

use anyhow::{bail, Context, Result};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::mesh::{Mesh, BIN};

const EXCLUDE_IN: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
const EXCLUDE_IPS: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
const EXCLUDE_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn assert_sidecar(reply: &str) {
    let l = lower(reply);
    assert!(l.contains("server: istio-envoy"), "expected the sidecar's headers:\n{reply}");
    assert!(l.contains("x-envoy-upstream-service-time"), "expected the sidecar's headers:\n{reply}");
}

fn assert_direct(reply: &str) {
    assert!(reply.starts_with("HTTP/1.0 200"), "expected the app's own HTTP/1.0 answer:\n{reply}");
    assert!(reply.contains("Server: helloworld/v1"), "expected the app's own Server header:\n{reply}");
    assert!(!lower(reply).contains("x-envoy"), "no Envoy headers expected:\n{reply}");
}

/// `meshpass check --from sleep TARGET -o json` → the decided path.
fn check_from_sleep(mesh: &Mesh, target: &str) -> Result<(String, serde_json::Value)> {
    let out = mesh.cli_ok(&["check", "--from", "sleep", target, "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    Ok((v["path"].as_str().unwrap_or_default().to_string(), v))
}

fn restart(mesh: &Mesh, name: &str) -> Result<()> {
    let out = mesh.cli_ok(&["rollout", "restart", &format!("deployment/{name}")])?;
    if !out.contains("successfully rolled out") {
        bail!("rollout of {name}: {out}");
    }
    Ok(())
}

meshpass_test_support::namespaced_test! {
    fn seed_scenario(namespaces) -> Result<()> {
        let mut mesh = Mesh::new(namespaces.prefix(), "198.18.80.0/24", "198.19.80.0/24", true)?;
        mesh.up()?;
        for w in ["helloworld-v1", "sleep"] {
            mesh.wait_ready("default", w)?;
        }
        mesh.wait_ready("external", "external")?;

        // `meshpass get svc`: helloworld's ClusterIP and port 5000.
        let svc = mesh.cli_ok(&["get", "svc"])?;
        let line = svc.lines().find(|l| l.contains("helloworld")).with_context(|| svc.clone())?;
        assert!(line.contains("5000"), "{svc}");
        let ip_of = |name: &str| mesh.service_ip(name);
        let hello_ip = ip_of("helloworld")?;
        assert!(line.contains(&hello_ip), "{svc}");
        let url = format!("http://{hello_ip}:5000/hello");

        // Inbound, through the sidecar.
        assert_sidecar(&mesh.curl_from_node(&["-I"], &url)?);

        // Inbound passthrough for port 5000, then restart: the app answers itself.
        mesh.cli_ok(&["annotate", "deployment/helloworld-v1", &format!("{EXCLUDE_IN}=5000")])?;
        let w = mesh.cli_ok(&["get", "workloads"])?;
        assert!(w.lines().any(|l| l.contains("helloworld-v1") && l.contains("true") && l.ends_with("true")), "{w}");
        restart(&mesh, "helloworld-v1")?;
        assert_direct(&mesh.curl_from_node(&["-I"], &url)?);
        let check = mesh.cli_ok(&["check", &url])?;
        assert!(check.contains("path: direct"), "{check}");

        // Cleared and restarted: the sidecar is back.
        mesh.cli_ok(&["annotate", "deployment/helloworld-v1", &format!("{EXCLUDE_IN}-")])?;
        restart(&mesh, "helloworld-v1")?;
        assert_sidecar(&mesh.curl_from_node(&["-I"], &url)?);
        let check = mesh.cli_ok(&["check", &url])?;
        assert!(check.contains("path: sidecar"), "{check}");

        // Outbound from sleep to the unmeshed external host.
        let ext = format!("{}:8080", ip_of("external")?);
        let ext_url = format!("http://{ext}/");
        assert_eq!(check_from_sleep(&mesh, &ext_url)?.0, "sidecar");
        for (key, value) in [(EXCLUDE_IPS, format!("{}/32", ip_of("external")?)), (EXCLUDE_PORTS, "8080".to_string())] {
            mesh.cli_ok(&["annotate", "deployment/sleep", &format!("{key}={value}")])?;
            restart(&mesh, "sleep")?;
            let (path, v) = check_from_sleep(&mesh, &ext)?;
            assert_eq!(path, "direct", "{key}={value}: {v}");
            let evidence = v["evidence"].to_string();
            assert!(evidence.contains("passthrough") && evidence.contains("rule counter"), "{key}: {evidence}");
            mesh.cli_ok(&["annotate", "deployment/sleep", &format!("{key}-")])?;
            restart(&mesh, "sleep")?;
            assert_eq!(check_from_sleep(&mesh, &ext_url)?.0, "sidecar", "{key} cleared");
        }

        // Zero failed requests during a rolling restart, and during a live apply.
        let stop = Arc::new(AtomicBool::new(false));
        let looping = mesh.request_loop(url.clone(), stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        restart(&mesh, "helloworld-v1")?;
        mesh.cli_ok(&["annotate", "--live", "deployment/helloworld-v1", &format!("{EXCLUDE_IN}=5000")])?;
        std::thread::sleep(Duration::from_millis(500));
        mesh.cli_ok(&["annotate", "--live", "deployment/helloworld-v1", &format!("{EXCLUDE_IN}-")])?;
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        let (ok, failures) = looping.join().map_err(|_| anyhow::anyhow!("request loop panicked"))?;
        assert!(failures.is_empty(), "{} failed requests: {failures:?}", failures.len());
        assert!(ok >= 5, "only {ok} requests in the loop");

        // Saved settings survive a crash: set passthrough, then kill -9 in the middle of a restart.
        mesh.cli_ok(&["annotate", "deployment/helloworld-v1", &format!("{EXCLUDE_IN}=5000")])?;
        let mut rollout = Command::new(BIN)
            .args(["rollout", "restart", "deployment/helloworld-v1", "--state-dir"])
            .arg(mesh.state())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(400));
        mesh.kill9()?;
        let _ = rollout.wait();
        mesh.cli_ok(&["down"])?;
        let (netns, procs) = mesh.residue("");
        assert!(netns.is_empty(), "namespaces left after down: {netns:?}");
        assert_eq!(procs, 0, "meshpass processes (apps, sidecars, supervisor) left after down");
        let links = Command::new("ip").args(["-o", "link"]).output()?;
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(!links.contains(namespaces.prefix()), "links left: {links}");

        // Up again: the mesh comes back with the saved settings (5000 passes through).
        mesh.up()?;
        mesh.wait_ready("default", "helloworld-v1")?;
        let w = mesh.client()?.workloads(Some("default"))?;
        let hw = w.iter().find(|w| w.name == "helloworld-v1").context("helloworld-v1")?;
        assert_eq!(hw.annotations.get(EXCLUDE_IN).map(String::as_str), Some("5000"), "{hw:?}");
        assert_direct(&mesh.curl_from_node(&["-I"], &url)?);
        mesh.cli_ok(&["down"])?;
        Ok(())
    }
}
