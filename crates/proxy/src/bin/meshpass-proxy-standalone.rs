//! Standalone sidecar binary, configured only by `MESHPASS_PROXY_*` environment variables.
//!
//! It exists for the namespaced integration tests (which must run the proxy as UID 1337 in a
//! child process) and for `bench/proxy/run.sh`, until the `meshpass proxy` CLI subcommand
//! exposes the same library. Prints one `READY {json}` line with the bound addresses on
//! stdout once listening, and drains gracefully on SIGTERM or SIGINT.

use std::io::Write;

use anyhow::Context;
use meshpass_proxy::{build_runtime, Proxy, ProxyConfig};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config =
        ProxyConfig::from_env(&|k| std::env::var(k).ok()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let rt = build_runtime(&config).context("building the tokio runtime")?;
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let proxy = Proxy::start(config).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {}", serde_json::to_string(proxy.addrs())?)?;
        out.flush()?;
        drop(out);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        proxy.shutdown().await?;
        Ok(())
    })
}
