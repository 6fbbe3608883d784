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
use meshpass_test_support::tools;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

#[test]
fn gui_passthrough_flow_over_the_kube_backend_mock() -> anyhow::Result<()> {
    if !tools::browser_ready("gui_e2e (kube mock)") {
        return Ok(());
    }
    let artifacts = tools::artifacts_dir(env!("CARGO_TARGET_TMPDIR"), "kube-mock");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let state = tempfile::tempdir()?;
    let token = "gui-e2e-kube-token-0123456789abcdef";
    let cluster = FakeCluster::sample();
    let server = rt.block_on(async {
        let backend = KubeBackend::new(cluster.client(), Vec::new());
        let mut cfg = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), state.path());
        cfg.token = Some(token.to_string());
        Server::bind(&cfg, Arc::new(backend)).await
    })?;
    let url = server.started().url.clone();
    // Served until the runtime is dropped at the end of the test.
    rt.spawn(server.run(std::future::pending()));
    // The mock API server serves no Istio custom resources, so the dialog cannot compute the
    // impact on mutual TLS (it says so); the fake and the local mesh test that step.
    let result = tools::run_browser_flow_with(&url, token, &artifacts, &[("E2E_MTLS_CLIENT", "")]);
    if result.is_err() {
        // What the GUI made the backend ask the API server, for the log of a failed run.
        for r in cluster.requests() {
            println!("  api server saw: {r}");
        }
    }
    result.map_err(|e| anyhow::anyhow!("over the kube backend mock: {e}"))
}
