//! The web GUI end to end in a real browser over the Kubernetes backend: the API server runs
//! in-process on 127.0.0.1:0 over [`KubeBackend`], whose `kube::Client` talks to the
//! in-memory API server [`FakeCluster::sample`] (so every step goes through the backend's
//! real list / get / merge patch / restart + watch / services-proxy code), and
//! `e2e/passthrough.mjs` — unchanged, the same script the management plane's own test runs —
//! drives headless Chromium through it: Workload list → "Traffic passthrough settings" →
//! inbound 5000 (and an invalid 70000) → Restart now → Confirm changes → toast → Check effect
//! → clear → Check effect again.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHROMIUM`) and `e2e/node_modules` (`npm ci` in
//! `e2e/`). Without them the test is skipped with a message, unless `CI` is set: then it
//! fails. Screenshots go to `E2E_ARTIFACTS`, else `target/e2e-artifacts/kube-mock/`.

use meshpass_api::{Server, ServerConfig};
use meshpass_kube::fake::FakeCluster;
use meshpass_kube::KubeBackend;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// The whole browser run (the fake cluster restarts at once).
const E2E_TIMEOUT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn artifacts_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("E2E_ARTIFACTS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("e2e-artifacts").join("kube-mock")
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
    if !root.join("e2e/passthrough.mjs").is_file() {
        missing.push("e2e/passthrough.mjs".to_string());
    }
    if !root.join("e2e/node_modules/playwright-core").is_dir() {
        missing.push("e2e/node_modules (cd e2e && npm ci)".to_string());
    }
    missing
}

#[test]
fn gui_passthrough_flow_over_the_kube_backend_mock() -> anyhow::Result<()> {
    let root = repo_root();
    let missing = missing_prerequisites(&root);
    if !missing.is_empty() {
        let msg = format!("gui_e2e (kube mock): cannot run the browser test, missing: {}", missing.join(", "));
        if std::env::var_os("CI").is_some() {
            panic!("{msg} (CI is set, so this is a failure, not a skip)");
        }
        eprintln!("SKIPPED {msg}");
        return Ok(());
    }
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts)?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let state = tempfile::tempdir()?;
    let token = "gui-e2e-kube-token-0123456789abcdef".to_string();
    let cluster = FakeCluster::sample();
    let output = rt.block_on(async {
        let backend = KubeBackend::new(cluster.client(), Vec::new());
        let mut cfg = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), state.path());
        cfg.token = Some(token.clone());
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
    println!("{}", String::from_utf8_lossy(&output.stdout));
    println!("{}", String::from_utf8_lossy(&output.stderr));
    println!("gui_e2e (kube mock): screenshots in {}", artifacts.display());
    if !output.status.success() {
        // What the GUI made the backend ask the API server, for the log of a failed run.
        for r in cluster.requests() {
            println!("  api server saw: {r}");
        }
    }
    assert!(
        output.status.success(),
        "e2e/passthrough.mjs failed ({}) over the kube backend mock; see the step log above and the screenshots in {}",
        output.status,
        artifacts.display()
    );
    Ok(())
}
