//! Fuzzes the REST API from its own OpenAPI document: starts the server in-process over the
//! sample [`FakeBackend`] on 127.0.0.1:0 and runs `scripts/schemathesis --no-install` against
//! it, writes included (no 5xx, status codes / content types / response bodies as documented).
//! `crates/meshpass/tests/management.rs` runs the read-only pass against `meshpass up`.
//!
//! Needs schemathesis in the venv `MESHPASS_VENV` (default `/opt/meshpass-venv`, made by
//! `scripts/setup`); without it the test is skipped with a message, unless `CI` is set: then it
//! fails. `ST_MAX_EXAMPLES` (default here 100 per operation and phase) sizes the run and
//! `ST_SEED` (default 1) fixes it; it is killed after 15 minutes. schemathesis's own output and
//! a summary (cases and failures per pass, in total) are printed; `scripts/test` shows them
//! (`--nocapture`). JUnit reports go to `target/schemathesis/`.

use meshpass_api::fake::FakeBackend;
use meshpass_api::{Server, ServerConfig};
use meshpass_test_support::tools;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Examples per operation and phase.
const MAX_EXAMPLES: u32 = 100;

#[test]
fn openapi_document_holds_under_schemathesis() -> anyhow::Result<()> {
    let Some(venv) = tools::schemathesis_venv("openapi_fuzz") else { return Ok(()) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let state = tempfile::tempdir()?;
    let token = "openapi-fuzz-token-0123456789abcdef";
    let mut cfg = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), state.path());
    cfg.token = Some(token.to_string());
    let backend = FakeBackend::sample();
    backend.set_restart_step(Duration::from_millis(5));
    let server = rt.block_on(Server::bind(&cfg, Arc::new(backend)))?;
    let url = server.started().url.clone();
    // Served until the runtime is dropped at the end of the test.
    rt.spawn(server.run(std::future::pending()));
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let reports = tmp.parent().unwrap_or(tmp).join("schemathesis");
    tools::run_schemathesis(&url, token, &venv, &reports, &[], MAX_EXAMPLES).map_err(anyhow::Error::msg)
}
