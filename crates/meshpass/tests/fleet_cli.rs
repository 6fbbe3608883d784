//! `meshpass passthrough set` over several workloads and `meshpass passthrough defaults`,
//! through the real binary against the real management server over the in-memory sample mesh
//! (`FakeBackend::sample()`: `default/helloworld-v1` and `default/sleep` meshed, labelled
//! `app=helloworld,version=v1` and `app=sleep`; `external/external` unmeshed). No root needed;
//! the same commands run against the real local mesh in `fleet_mesh.rs`.

use anyhow::{ensure, Context, Result};
use meshpass_api::fake::FakeBackend;
use meshpass_api::model::WorkloadRef;
use meshpass_api::{Server, ServerConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_meshpass");
const OUT_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";

/// The server on 127.0.0.1:0 in a thread of its own, over `fake`; it stops with the process.
fn serve(fake: Arc<FakeBackend>) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let state = path.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        rt.block_on(async move {
            let cfg = ServerConfig::new("127.0.0.1:0".parse().expect("address"), &state);
            let server = Server::bind(&cfg, fake).await.expect("bind");
            tx.send(()).expect("started");
            let _ = server.run(std::future::pending::<()>()).await;
        });
    });
    rx.recv_timeout(std::time::Duration::from_secs(30)).context("the server did not start")?;
    Ok((dir, path))
}

/// `meshpass passthrough ARGS --state-dir DIR`: (exit code, stdout, stderr).
fn passthrough(dir: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(BIN).arg("passthrough").args(args).arg("--state-dir").arg(dir).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn json(dir: &Path, args: &[&str], code: i32) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    let (c, out, err) = passthrough(dir, &all)?;
    ensure!(c == code, "{all:?}: exit {c}, expected {code}: {out}{err}");
    serde_json::from_str(&out).with_context(|| format!("{all:?}: not JSON: {out}{err}"))
}

#[test]
fn batch_set_exit_codes_and_output() -> Result<()> {
    let fake = Arc::new(FakeBackend::sample());
    let (hw, sleep) = (WorkloadRef::new("default", "helloworld-v1"), WorkloadRef::new("default", "sleep"));
    fake.set_template_annotation(&hw, OUT_PORTS, "9");
    let (_tmp, dir) = serve(fake.clone())?;
    let ports = |w: &WorkloadRef| fake.template_annotations(w).get(OUT_PORTS).cloned().unwrap_or_default();

    // Adds to both, keeping each one's other values; one result each, with its impact.
    let r = json(&dir, &["set", "helloworld-v1", "sleep", "--add-outbound-ports", "3306"], 0)?;
    ensure!(r["succeeded"] == 2 && r["failed"] == 0, "{r:#}");
    ensure!((ports(&hw), ports(&sleep)) == ("9,3306".into(), "3306".into()));
    let (code, out, err) = passthrough(&dir, &["set", "helloworld-v1", "sleep", "--add-inbound-ports", "5000"])?;
    ensure!(code == 0, "{out}{err}");
    ensure!(
        out.contains("default/helloworld-v1: changed")
            && out.contains("inbound ports:      5000 (was none of its own)"),
        "{out}"
    );
    ensure!(out.contains("impact: default/sleep -> default/helloworld:5000 (FAILS)"), "{out}");
    ensure!(err.contains("2 workloads: 2 changed, 0 unchanged, 0 failed"), "{err}");

    // A missing workload: the others change, it is named, exit 1.
    let (code, out, err) = passthrough(&dir, &["set", "sleep", "nope", "--remove-outbound-ports", "3306"])?;
    ensure!(code == 1, "exit {code}: {out}{err}");
    ensure!(out.contains("default/nope: FAILED (404 not_found)") && err.contains("failed: default/nope"), "{out}{err}");
    ensure!(ports(&sleep).is_empty(), "sleep changed anyway: {}", ports(&sleep));

    // Invalid input: exit 2, what was wrong named, nothing changed anywhere.
    let before = (fake.resource_version(&hw), fake.resource_version(&sleep));
    for (args, says) in [
        (&["set", "helloworld-v1", "sleep", "--add-outbound-ports", "70000,abc"][..], "\"70000\""),
        (&["set", "helloworld-v1", "Bad_Name", "--add-outbound-ports", "1"], "Bad_Name is not a valid workload name"),
        (&["set", "-l", "app in (x)", "--add-outbound-ports", "1"], "set-based"),
        (&["set", "sleep", "--outbound-ports", "1", "--add-outbound-ports", "2"], "give one or the other"),
        (&["set", "sleep", "--add-outbound-ports", ""], "--add-outbound-ports needs at least one item"),
        (&["set", "sleep", "helloworld-v1", "--add-outbound-ports", "1", "--fix-clients"], "one workload at a time"),
        (&["set", "sleep", "-l", "app=sleep", "--add-outbound-ports", "1"], "not both"),
        (&["set", "--all"], "nothing to change"),
        (&["get", "sleep", "helloworld-v1"], "exactly one workload"),
    ] {
        let (code, out, err) = passthrough(&dir, args)?;
        ensure!(
            code == 2 && err.contains(says) && err.contains("nothing was changed"),
            "{args:?}: exit {code}: {out}{err}"
        );
    }
    ensure!((fake.resource_version(&hw), fake.resource_version(&sleep)) == before, "a refused batch changed something");

    // By label, and everything in a namespace; a selector matching nothing is an error.
    let r = json(&dir, &["set", "-l", "app=helloworld", "--remove-inbound-ports", "5000", "--dry-run"], 0)?;
    ensure!(r["dryRun"] == true && r["items"].as_array().map(Vec::len) == Some(1), "{r:#}");
    ensure!(r["items"][0]["outcome"] == "wouldChange" && r["items"][0]["name"] == "helloworld-v1", "{r:#}");
    let r = json(&dir, &["set", "--all", "-n", "default", "--remove-inbound-ports", "5000"], 0)?;
    ensure!(r["succeeded"] == 2, "{r:#}");
    let (code, _, err) = passthrough(&dir, &["set", "-l", "app=nothing", "--add-outbound-ports", "1"])?;
    ensure!(code == 1 && err.contains("no workload matching -l app=nothing"), "exit {code}: {err}");

    // One workload keeps the single-write answer (a PassthroughDoc with impact and created).
    let doc = json(&dir, &["set", "helloworld-v1", "--add-inbound-ports", "5000"], 0)?;
    ensure!(doc["settings"]["inboundPorts"] == serde_json::json!(["5000"]), "{doc:#}");
    ensure!(doc["impact"].as_array().is_some_and(|a| !a.is_empty()) && doc["created"].is_array(), "{doc:#}");
    Ok(())
}

#[test]
fn mesh_wide_defaults_get_set_and_their_source() -> Result<()> {
    let fake = Arc::new(FakeBackend::sample());
    let (_tmp, dir) = serve(fake)?;
    let d = json(&dir, &["defaults", "get"], 0)?;
    ensure!(d["values"]["global.proxy.excludeIPRanges"] == "", "{d:#}");
    let applies = |d: &Value| d["appliesTo"]["global.proxy.excludeIPRanges"]["inherit"].clone();
    ensure!(applies(&d) == serde_json::json!(["default/helloworld-v1", "default/sleep"]), "{d:#}");

    let d = json(&dir, &["defaults", "set", "--add-outbound-ip-ranges", "198.19.0.0/16,10.9.0.0/16"], 0)?;
    ensure!(d["values"]["global.proxy.excludeIPRanges"] == "198.19.0.0/16,10.9.0.0/16", "{d:#}");
    let d = json(
        &dir,
        &[
            "defaults",
            "set",
            "--remove-outbound-ip-ranges",
            "10.9.0.0/16",
            "--value",
            "global.proxy.excludeInboundPorts=15999",
        ],
        0,
    )?;
    ensure!(d["values"]["global.proxy.excludeIPRanges"] == "198.19.0.0/16", "{d:#}");
    ensure!(d["values"]["global.proxy.excludeInboundPorts"] == "15999", "{d:#}");
    // Invalid: exit 2, nothing written.
    let version = json(&dir, &["defaults", "get"], 0)?["resourceVersion"].clone();
    for args in [
        &["defaults", "set", "--add-outbound-ip-ranges", "10.0.0.0/33"][..],
        &["defaults", "set", "--value", "global.proxy.nope=1"],
        &["defaults", "set", "--value", "novalue"],
        &["defaults", "get", "--add-outbound-ports", "1"],
        &["defaults", "set"],
        &["defaults", "list"],
    ] {
        let (code, out, err) = passthrough(&dir, args)?;
        ensure!(code == 2 && err.contains("nothing was changed"), "{args:?}: exit {code}: {out}{err}");
    }
    ensure!(json(&dir, &["defaults", "get"], 0)?["resourceVersion"] == version);

    // sleep inherits the range (source mesh); its own value replaces it, with the warning.
    let doc = json(&dir, &["get", "sleep"], 0)?;
    let range = |doc: &Value| {
        doc["effective"].as_array().and_then(|a| {
            a.iter().find(|v| v["annotation"] == "traffic.sidecar.istio.io/excludeOutboundIPRanges").cloned()
        })
    };
    let r = range(&doc).context("effective range")?;
    ensure!(r["value"] == "198.19.0.0/16" && r["source"] == "mesh", "{doc:#}");
    let (_, text, _) = passthrough(&dir, &["get", "sleep"])?;
    ensure!(text.contains("198.19.0.0/16") && text.contains("mesh (global.proxy.excludeIPRanges)"), "{text}");
    let doc = json(&dir, &["set", "sleep", "--outbound-ip-ranges", "10.1.0.0/16"], 0)?;
    let r = range(&doc).context("effective range")?;
    ensure!(r["value"] == "10.1.0.0/16" && r["source"] == "workload", "{doc:#}");
    let warned = doc["warnings"].as_array().is_some_and(|w| {
        w.iter().any(|w| w.as_str().is_some_and(|w| w.contains("replaces the mesh-wide global.proxy.excludeIPRanges")))
    });
    ensure!(warned, "{doc:#}");
    // Adding to helloworld's inherited list keeps the mesh-wide items.
    let r = json(&dir, &["set", "helloworld-v1", "sleep", "--add-outbound-ip-ranges", "10.2.0.0/16"], 0)?;
    ensure!(
        r["items"][0]["settings"]["outboundIpRanges"] == serde_json::json!(["198.19.0.0/16", "10.2.0.0/16"]),
        "{r:#}"
    );
    ensure!(
        r["items"][1]["settings"]["outboundIpRanges"] == serde_json::json!(["10.1.0.0/16", "10.2.0.0/16"]),
        "{r:#}"
    );
    Ok(())
}
