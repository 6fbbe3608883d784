//! The management plane (API, GUI) over [`KubeBackend`] whose `kube::Client` talks to an
//! in-memory Kubernetes API server ([`FakeCluster::sample`]: Istio's helloworld-v1 + sleep in
//! namespace `default`). Every GUI action goes through the real Kubernetes backend code —
//! list, get, merge patch with precondition, restart + watch, the services proxy — without a
//! cluster. Used by the GUI end-to-end test (`tests/gui_e2e.rs`).
//!
//! `PORT` (default 15080), `STATE_DIR` (default: a fresh temporary directory),
//! `MESHPASS_TOKEN` (default: the state directory's token, created when missing). Listens on
//! 127.0.0.1 only; stops on Ctrl-C or SIGTERM.

use meshpass_api::{serve, ServerConfig};
use meshpass_kube::fake::FakeCluster;
use meshpass_kube::KubeBackend;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|e| anyhow::anyhow!("PORT={p:?}: {e}"))?,
        Err(_) => 15080,
    };
    // Keep the temporary directory alive for the whole run (it is removed on exit).
    let (state_dir, _tmp) = match std::env::var_os("STATE_DIR") {
        Some(d) => (d.into(), None),
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let cluster = FakeCluster::sample();
    let backend = KubeBackend::new(cluster.client(), Vec::new());
    let mut cfg = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), state_dir);
    cfg.token = std::env::var("MESHPASS_TOKEN").ok().filter(|t| !t.is_empty());
    cfg.on_started = Some(Arc::new(|s| {
        println!("meshpass kube mock server (Kubernetes backend over an in-memory API server) listening on {}", s.url);
        println!("open {}", s.login_url);
    }));
    eprintln!("state directory: {}", cfg.state_dir.display());
    serve(cfg, Arc::new(backend), async {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
    .await?;
    Ok(())
}
