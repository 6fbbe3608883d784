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
//! Then the fleet (`e2e/fleet.mjs`), in both flavours, over the sample mesh plus 200 workloads
//! in namespace `fleet`: the mesh-wide defaults page (an invalid value refused by name, a
//! change saved, the list and the dialog showing the value with its source `mesh` and the
//! warning when a workload's own value replaces it), selecting rows (mouse and keyboard), the
//! batch dialog (an invalid item refused whole with the API's error, the per-workload preview,
//! one workload changed behind the dialog's back failing with 409 while the other is changed,
//! the error toast naming it, Retry failed with Restart now), and all 200 workloads matching a
//! filter changed in one batch, with the page and the dialog inside the window.
//!
//! And a server over two clusters (`e2e/clusters.mjs`): the defaults page picks the cluster and
//! changes one cluster's defaults only, the list marks each workload's inherited values from its
//! own cluster's, and one batch changes a workload in each cluster.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHROMIUM`) and `e2e/node_modules`; without them the
//! tests are skipped with a message, unless `CI` is set: then they fail. Screenshots go to
//! `E2E_ARTIFACTS`, else `target/e2e-artifacts/` (the Kubernetes run in its `kube/`
//! subdirectory).

use meshpass_api::backend::NamedBackend;
use meshpass_api::fake::FakeBackend;
use meshpass_api::model::{RuleFormat, WorkloadRef};
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

#[test]
fn gui_fleet_flow_local_mesh() -> anyhow::Result<()> {
    run_fleet(with_fleet(FakeBackend::sample()), "fleet")
}

#[test]
fn gui_fleet_flow_kubernetes() -> anyhow::Result<()> {
    run_fleet(with_fleet(FakeBackend::sample().with_kind(BackendKind::Kube, RuleFormat::Iptables)), "fleet-kube")
}

#[test]
fn gui_two_clusters() -> anyhow::Result<()> {
    // `east` is the sample mesh; `west` another mesh whose workload names differ from east's.
    let west = FakeBackend::new();
    west.add(WorkloadRef::new("shop", "cart"), true, Vec::new(), Default::default());
    west.add(WorkloadRef::new("shop", "checkout"), true, Vec::new(), Default::default());
    let clusters =
        vec![NamedBackend::new("east", Arc::new(FakeBackend::sample())), NamedBackend::new("west", Arc::new(west))];
    serve_clusters_and(clusters, "clusters", |url, token, artifacts| {
        tools::run_browser_script(
            "e2e/clusters.mjs",
            url,
            token,
            artifacts,
            &[("E2E_A", "east/default/sleep"), ("E2E_B", "west/shop/cart")],
        )
    })
}

/// `backend` plus 200 meshed workloads `fleet/app-000` … `fleet/app-199`: more than ten pages.
fn with_fleet(backend: FakeBackend) -> FakeBackend {
    for i in 0..200 {
        backend.add(WorkloadRef::new("fleet", format!("app-{i:03}")), true, Vec::new(), Default::default());
    }
    backend
}

/// Serves `backend` on 127.0.0.1:0 and runs e2e/passthrough.mjs against it.
fn run_e2e(backend: FakeBackend, subdir: &str) -> anyhow::Result<()> {
    serve_and(backend, subdir, tools::run_browser_flow)
}

/// Serves `backend` on 127.0.0.1:0 and runs e2e/fleet.mjs against it.
fn run_fleet(backend: FakeBackend, subdir: &str) -> anyhow::Result<()> {
    serve_and(backend, subdir, |url, token, artifacts| {
        tools::run_browser_script("e2e/fleet.mjs", url, token, artifacts, &[("E2E_FLEET_NS", "fleet")])
    })
}

/// Serves `backend` on 127.0.0.1:0 (with a token) and runs `flow(url, token, artifacts)`.
fn serve_and(
    backend: FakeBackend,
    subdir: &str,
    flow: impl FnOnce(&str, &str, &std::path::Path) -> Result<(), String>,
) -> anyhow::Result<()> {
    backend.set_restart_step(Duration::from_millis(150));
    serve_clusters_and(vec![NamedBackend::single(Arc::new(backend))], subdir, flow)
}

/// Serves `clusters` on 127.0.0.1:0 (with a token) and runs `flow(url, token, artifacts)`.
fn serve_clusters_and(
    clusters: Vec<NamedBackend>,
    subdir: &str,
    flow: impl FnOnce(&str, &str, &std::path::Path) -> Result<(), String>,
) -> anyhow::Result<()> {
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
    let server = rt.block_on(Server::bind_clusters(&cfg, clusters))?;
    let url = server.started().url.clone();
    // Served until the runtime is dropped at the end of the test.
    rt.spawn(server.run(std::future::pending()));
    flow(&url, token, &artifacts).map_err(anyhow::Error::msg)
}
