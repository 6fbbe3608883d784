//! The web GUI over two clusters in a real browser: starts the API server in-process over two
//! [`FakeBackend`]s, `east` (the sample mesh) and `west` (unreachable), on 127.0.0.1:0 and runs
//! `e2e/cluster-column.mjs` (playwright-core driving Debian's headless Chromium): the Cluster column
//! and filter, the badge of the unreachable cluster, and the passthrough dialog naming the
//! workload's cluster.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHROMIUM`) and `e2e/node_modules`; without them the
//! test is skipped with a message, unless `CI` is set: then it fails.

use meshpass_api::fake::FakeBackend;
use meshpass_api::{NamedBackend, Server, ServerConfig};
use meshpass_test_support::tools;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

#[test]
fn gui_cluster_column_filter_and_unreachable_badge() -> anyhow::Result<()> {
    if !tools::browser_ready("gui_clusters") {
        return Ok(());
    }
    let artifacts = tools::artifacts_dir(env!("CARGO_TARGET_TMPDIR"), "clusters");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let state = tempfile::tempdir()?;
    let token = "gui-clusters-token-0123456789abcdef";
    let mut cfg = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), state.path());
    cfg.token = Some(token.to_string());
    let west = FakeBackend::sample();
    west.set_unreachable(true);
    let clusters =
        vec![NamedBackend::new("east", Arc::new(FakeBackend::sample())), NamedBackend::new("west", Arc::new(west))];
    let server = rt.block_on(Server::bind_clusters(&cfg, clusters))?;
    let url = server.started().url.clone();
    // Served until the runtime is dropped at the end of the test.
    rt.spawn(server.run(std::future::pending()));
    tools::run_browser_script("e2e/cluster-column.mjs", &url, token, &artifacts, &[]).map_err(anyhow::Error::msg)
}
