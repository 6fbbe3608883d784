//! Standalone sidecar binary, configured only by `MESHPASS_PROXY_*` environment variables.
//!
//! It exists for the namespaced integration tests (which must run the proxy as UID 1337 in a
//! child process) and for `bench/proxy/run.sh`, until the `meshpass proxy` CLI subcommand
//! exposes the same library. Prints one `READY {json}` line with the bound addresses on
//! stdout once listening, and drains gracefully on SIGTERM or SIGINT.

use std::io::Write;

use meshpass_proxy::{run_until_signal, ProxyConfig};

// The proxy allocates and frees small objects for every request (hyper's header maps, read
// buffers, channel slots); mimalloc's thread-local free lists make those far cheaper than
// glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    run_until_signal(config, |addrs| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "READY {}", serde_json::to_string(addrs).unwrap_or_default());
        let _ = out.flush();
    })?;
    Ok(())
}
