//! A development server: the API and GUI over the in-memory sample mesh
//! ([`FakeBackend::sample`]), for working on the GUI and trying the API without root.
//!
//! `PORT` (default 15080), `STATE_DIR` (default: a fresh temporary directory),
//! `MESHPASS_TOKEN` (default: the state directory's token, created when missing),
//! `RESTART_STEP_MS` (pause between restart progress lines, default 100). Listens on
//! 127.0.0.1 only; stops on Ctrl-C.

use meshpass_api::fake::FakeBackend;
use meshpass_api::{serve, ServerConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

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
    let backend = FakeBackend::sample();
    if let Ok(ms) = std::env::var("RESTART_STEP_MS") {
        backend.set_restart_step(Duration::from_millis(ms.parse()?));
    }
    let mut cfg = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), state_dir);
    cfg.token = std::env::var("MESHPASS_TOKEN").ok().filter(|t| !t.is_empty());
    cfg.on_started = Some(Arc::new(|s| {
        println!("meshpass dev server (fake sample mesh) listening on {}", s.url);
        println!("open {}", s.login_url);
    }));
    let state = cfg.state_dir.clone();
    eprintln!("state directory: {}", state.display());
    serve(cfg, Arc::new(backend), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
