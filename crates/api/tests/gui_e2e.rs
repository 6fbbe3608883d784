//! The web GUI, end to end in a real browser: starts the API server in-process over the sample
//! [`FakeBackend`] on 127.0.0.1:0 and runs `e2e/passthrough.mjs` (playwright-core driving
//! Debian's headless Chromium) against it: Workload list → row menu → "Traffic passthrough
//! settings" → inbound 5000 → Restart now → Confirm changes → toast → Check effect → clear →
//! Check effect again, plus an invalid port.
//!
//! Two runs: the local-mesh flavour (nftables previews, rule counters) and the Kubernetes
//! flavour (iptables previews, Bypassed traffic answers 501), one after the other (one browser
//! at a time on a small machine).
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHROMIUM`) and `e2e/node_modules` (`npm ci` in
//! `e2e/`). Without them the tests are skipped with a message, unless `CI` is set: then they
//! fail. Screenshots go to `E2E_ARTIFACTS`, else `target/e2e-artifacts/` (the Kubernetes run in
//! its `kube/` subdirectory).

use meshpass_api::fake::FakeBackend;
use meshpass_api::model::RuleFormat;
use meshpass_api::{BackendKind, Server, ServerConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One browser at a time.
static BROWSER: Mutex<()> = Mutex::new(());

/// The whole browser run, restarts included (the fake restarts in well under a second).
const E2E_TIMEOUT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/e2e-artifacts` (next to the `tmp` directory cargo gives integration tests).
fn artifacts_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("E2E_ARTIFACTS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("e2e-artifacts")
}

/// What is missing to run the browser test, if anything.
fn missing_prerequisites(root: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => missing.push("node (apt-get install -y nodejs npm)".to_string()),
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    if !Path::new(&chromium).exists() {
        missing.push(format!("{chromium} (apt-get install -y chromium)"));
    }
    if !root.join("e2e/node_modules/playwright-core").is_dir() {
        missing.push("e2e/node_modules (cd e2e && npm ci)".to_string());
    }
    missing
}

#[test]
fn gui_passthrough_flow_local_mesh() -> anyhow::Result<()> {
    run_e2e(FakeBackend::sample(), "")
}

#[test]
fn gui_passthrough_flow_kubernetes() -> anyhow::Result<()> {
    run_e2e(FakeBackend::sample().with_kind(BackendKind::Kube, RuleFormat::Iptables), "kube")
}

/// Serves `backend` on 127.0.0.1:0 and runs e2e/passthrough.mjs against it.
fn run_e2e(backend: FakeBackend, subdir: &str) -> anyhow::Result<()> {
    let root = repo_root();
    let missing = missing_prerequisites(&root);
    if !missing.is_empty() {
        let msg = format!("gui_e2e: cannot run the browser test, missing: {}", missing.join(", "));
        if std::env::var_os("CI").is_some() {
            panic!("{msg} (CI is set, so this is a failure, not a skip)");
        }
        eprintln!("SKIPPED {msg}");
        return Ok(());
    }
    let _one_browser = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let artifacts = if subdir.is_empty() { artifacts_dir() } else { artifacts_dir().join(subdir) };
    std::fs::create_dir_all(&artifacts)?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let state = tempfile::tempdir()?;
    let token = "gui-e2e-token-0123456789abcdef".to_string();
    let output = rt.block_on(async {
        let mut cfg = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), state.path());
        cfg.token = Some(token.clone());
        backend.set_restart_step(Duration::from_millis(150));
        let server = Server::bind(&cfg, Arc::new(backend)).await?;
        let url = server.started().url.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));

        let child = tokio::process::Command::new("node")
            .arg("e2e/passthrough.mjs")
            .current_dir(&root)
            .env("MESHPASS_URL", &url)
            .env("MESHPASS_TOKEN", &token)
            .env("E2E_ARTIFACTS", &artifacts)
            .env("E2E_WORKLOAD", "default/helloworld-v1")
            .env("E2E_PORT", "5000")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let result = tokio::time::timeout(E2E_TIMEOUT, child.wait_with_output()).await;
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
        match result {
            Ok(out) => Ok::<_, anyhow::Error>(out?),
            Err(_) => anyhow::bail!("e2e/passthrough.mjs did not finish within {E2E_TIMEOUT:?}"),
        }
    })?;

    // Printed (and so shown by the harness on failure, or with --nocapture).
    println!("{}", String::from_utf8_lossy(&output.stdout));
    println!("{}", String::from_utf8_lossy(&output.stderr));
    println!("gui_e2e: screenshots in {}", artifacts.display());
    assert!(
        output.status.success(),
        "e2e/passthrough.mjs failed ({}); see the step log above and the screenshots in {}",
        output.status,
        artifacts.display()
    );
    Ok(())
}
