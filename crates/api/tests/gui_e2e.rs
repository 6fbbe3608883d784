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
//! Needs `node`, `/usr/bin/chromium` (or `CHROMIUM`) and `e2e/node_modules`; without them the
//! tests are skipped with a message, unless `CI` is set: then they fail. Screenshots go to
//! `E2E_ARTIFACTS`, else `target/e2e-artifacts/` (the Kubernetes run in its `kube/`
//! subdirectory).

use meshpass_api::fake::FakeBackend;
use meshpass_api::model::RuleFormat;
use meshpass_api::{BackendKind, Server, ServerConfig};
use meshpass_test_support::tools;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One browser at a time.
static BROWSER: Mutex<()> = Mutex::new(());

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
    if !tools::browser_ready("gui_e2e") {
        return Ok(());
    }
    let _one_browser = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let artifacts = tools::artifacts_dir(env!("CARGO_TARGET_TMPDIR"), subdir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let state = tempfile::tempdir()?;
    let token = "gui-e2e-token-0123456789abcdef";
    let mut cfg = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), state.path());
    cfg.token = Some(token.to_string());
    backend.set_restart_step(Duration::from_millis(150));
    let server = rt.block_on(Server::bind(&cfg, Arc::new(backend)))?;
    let url = server.started().url.clone();
    // Served until the runtime is dropped at the end of the test.
    rt.spawn(server.run(std::future::pending()));
    tools::run_browser_flow(&url, token, &artifacts).map_err(anyhow::Error::msg)
}
