//! `meshpass passthrough --cluster` against a management API serving two clusters (the API's
//! in-memory test double as both, `east` and `west`, each with the sample mesh, so every
//! workload name is in both): a name without its cluster is refused naming both, `--cluster`
//! reads and writes that cluster only and the text output names it, an unknown cluster is
//! named. No root or network namespaces: the server listens on 127.0.0.1:0.

use meshpass_api::fake::FakeBackend;
use meshpass_api::model::WorkloadRef;
use meshpass_api::{NamedBackend, Server, ServerConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_meshpass");
const TOKEN: &str = "clusters-cli-token-0123456789abcdef";
const EXCLUDE_OUT: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";

/// `meshpass passthrough ARGS --server URL --token TOKEN`: exit code, stdout, stderr.
fn passthrough(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("passthrough")
        .args(args)
        .args(["--server", url, "--token", TOKEN])
        .env_remove("MESHPASS_SERVER")
        .env_remove("MESHPASS_TOKEN")
        .output()
        .expect("run meshpass");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn passthrough_names_and_addresses_the_cluster() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let state = tempfile::tempdir()?;
    let mut cfg = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), state.path());
    cfg.token = Some(TOKEN.to_string());
    let (east, west) = (Arc::new(FakeBackend::sample()), Arc::new(FakeBackend::sample()));
    let clusters = vec![NamedBackend::new("east", east.clone()), NamedBackend::new("west", west.clone())];
    let server = rt.block_on(Server::bind_clusters(&cfg, clusters))?;
    let url = server.started().url.clone();
    // Served until the runtime is dropped at the end of the test.
    rt.spawn(server.run(std::future::pending()));
    let sleep = WorkloadRef::new("default", "sleep");

    let (code, _, err) = passthrough(&url, &["get", "sleep"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("workload default/sleep exists in clusters east, west"), "{err}");

    let (code, out, err) = passthrough(&url, &["get", "sleep", "--cluster", "west"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cluster:             west\nworkload:            default/sleep"), "{out}");

    let (code, out, err) = passthrough(&url, &["set", "sleep", "--cluster", "west", "--outbound-ports", "3306"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cluster:             west"), "{out}");
    assert_eq!(west.template_annotations(&sleep).get(EXCLUDE_OUT).map(String::as_str), Some("3306"));
    assert_eq!(east.template_annotations(&sleep).get(EXCLUDE_OUT), None, "east untouched");

    let (code, out, err) = passthrough(&url, &["get", "sleep", "--cluster", "west", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!((doc["cluster"].as_str(), doc["settings"]["outboundPorts"][0].as_str()), (Some("west"), Some("3306")));

    let (code, _, err) = passthrough(&url, &["get", "sleep", "--cluster", "north"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no cluster named \"north\"; this server serves east, west"), "{err}");
    Ok(())
}
