//! Passthrough across several workloads and the mesh-wide defaults, in the real local mesh
//! (`meshpass up` with the sample), through the CLI and the management API:
//!
//! * `meshpass passthrough set helloworld-v1 sleep --add-outbound-ports 3306` adds 3306 to both
//!   and keeps each one's other values;
//! * a batch naming a workload that does not exist changes the others, names the missing one
//!   and exits 1; invalid input (a bad port, a malformed name or selector) exits 2 and changes
//!   nothing anywhere; `-l app=helloworld` picks by the pods' labels;
//! * a mesh-wide `excludeIPRanges` holding the `external` Service's ClusterIP sends `sleep`'s
//!   calls to it directly once `sleep` restarts (`meshpass check --from sleep` says `direct`),
//!   and `meshpass passthrough get sleep -o json` shows the range with its source `mesh`;
//! * sleep's own `excludeOutboundIPRanges` then replaces the mesh-wide value (not extends it),
//!   with the warning, and after a restart its calls go through the sidecar again.
//!
//! Needs root: `#[ignore = "needs root"]`, run as root by `scripts/test` (`--include-ignored`).

mod support;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::process::Command;
use support::mesh::{Mesh, BIN};

/// `meshpass passthrough ARGS --state-dir DIR`: (exit code, stdout, stderr).
fn passthrough(mesh: &Mesh, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(BIN).arg("passthrough").args(args).arg("--state-dir").arg(mesh.state()).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `meshpass passthrough ARGS -o json`, which must exit `code`; its output parsed.
fn passthrough_json(mesh: &Mesh, args: &[&str], code: i32) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    let (c, out, err) = passthrough(mesh, &all)?;
    ensure!(c == code, "meshpass passthrough {all:?}: exit {c}, expected {code}: {err}{out}");
    serde_json::from_str(&out).with_context(|| format!("meshpass passthrough {all:?}: not JSON: {out}{err}"))
}

/// A workload's settings document (`passthrough get NAME -o json`).
fn get(mesh: &Mesh, name: &str) -> Result<Value> {
    passthrough_json(mesh, &["get", name], 0)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// The value in force for `annotation` (`excludeOutboundIPRanges`) in a document's `effective`.
fn effective(doc: &Value, annotation: &str) -> Result<Value> {
    doc["effective"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["annotation"] == format!("traffic.sidecar.istio.io/{annotation}")))
        .cloned()
        .with_context(|| format!("no effective {annotation} in {doc:#}"))
}

fn check_from_sleep(mesh: &Mesh, url: &str) -> Result<Value> {
    Ok(serde_json::from_str(&mesh.cli_ok(&["check", "--from", "sleep", url, "-o", "json"])?)?)
}

fn restart(mesh: &Mesh, name: &str) -> Result<()> {
    let out = mesh.cli_ok(&["rollout", "restart", &format!("deployment/{name}")])?;
    ensure!(out.contains("successfully rolled out"), "rollout of {name}: {out}");
    Ok(())
}

meshpass_test_support::namespaced_test! {
    fn fleet_batch_and_mesh_wide_defaults(namespaces) -> Result<()> {
        let mut mesh = Mesh::new(namespaces.prefix(), "198.18.100.0/24", "198.19.100.0/24", true)?;
        mesh.up()?;
        mesh.wait_ready("default", "helloworld-v1")?;
        mesh.wait_ready("default", "sleep")?;
        mesh.wait_ready("external", "external")?;

        // Each workload has a value of its own first.
        for (name, ports) in [("helloworld-v1", "9"), ("sleep", "25")] {
            let (code, out, err) = passthrough(&mesh, &["set", name, "--outbound-ports", ports])?;
            ensure!(code == 0, "set {name}: {out}{err}");
        }

        // Adding to both keeps each one's other values.
        let r = passthrough_json(&mesh, &["set", "helloworld-v1", "sleep", "--add-outbound-ports", "3306"], 0)?;
        ensure!(r["succeeded"] == 2 && r["failed"] == 0, "{r:#}");
        ensure!(strings(&get(&mesh, "helloworld-v1")?["settings"]["outboundPorts"]) == ["9", "3306"]);
        ensure!(strings(&get(&mesh, "sleep")?["settings"]["outboundPorts"]) == ["25", "3306"]);
        // In text, one block per workload.
        let (code, out, err) = passthrough(&mesh, &["set", "helloworld-v1", "sleep", "--remove-outbound-ports", "3306"])?;
        ensure!(code == 0, "{out}{err}");
        ensure!(
            out.contains("default/helloworld-v1: changed") && out.contains("default/sleep: changed"),
            "{out}"
        );
        ensure!(out.contains("outbound ports:     25 (was 25,3306)"), "{out}");
        ensure!(err.contains("2 workloads: 2 changed, 0 unchanged, 0 failed"), "{err}");

        // One workload that does not exist: the others change, it is named, exit 1.
        let (code, out, err) =
            passthrough(&mesh, &["set", "helloworld-v1", "nope", "sleep", "--add-outbound-ports", "5432"])?;
        ensure!(code == 1, "exit {code}: {out}{err}");
        ensure!(out.contains("default/nope: FAILED (404 not_found)"), "{out}");
        ensure!(err.contains("failed: default/nope: workload default/nope not found"), "{err}");
        ensure!(strings(&get(&mesh, "helloworld-v1")?["settings"]["outboundPorts"]) == ["9", "5432"]);
        ensure!(strings(&get(&mesh, "sleep")?["settings"]["outboundPorts"]) == ["25", "5432"]);

        // Invalid input: exit 2, every bad item named, nothing changed anywhere.
        let versions = |mesh: &Mesh| -> Result<Vec<Value>> {
            Ok(vec![get(mesh, "helloworld-v1")?["resourceVersion"].clone(), get(mesh, "sleep")?["resourceVersion"].clone()])
        };
        let before = versions(&mesh)?;
        let (code, _, err) =
            passthrough(&mesh, &["set", "helloworld-v1", "sleep", "--add-outbound-ports", "3307,70000,abc"])?;
        ensure!(code == 2, "exit {code}: {err}");
        ensure!(err.contains("\"70000\"") && err.contains("\"abc\"") && err.contains("nothing was changed"), "{err}");
        for args in [
            &["set", "helloworld-v1", "Bad_Name", "--add-outbound-ports", "3307"][..],
            &["set", "-l", "app in (sleep)", "--add-outbound-ports", "3307"],
            &["set", "helloworld-v1", "sleep", "--outbound-ports", "1", "--add-outbound-ports", "2"],
            &["set", "helloworld-v1", "sleep", "--add-outbound-ports", "1", "--fix-clients"],
        ] {
            let (code, out, err) = passthrough(&mesh, args)?;
            ensure!(code == 2 && err.starts_with("error: "), "{args:?}: exit {code}: {out}{err}");
        }
        ensure!(versions(&mesh)? == before, "a refused batch changed something");

        // By label: only helloworld's pods carry app=helloworld.
        let r = passthrough_json(&mesh, &["set", "-l", "app=helloworld", "--remove-outbound-ports", "5432"], 0)?;
        let names: Vec<&str> = r["items"].as_array().context("items")?.iter().filter_map(|i| i["name"].as_str()).collect();
        ensure!(names == ["helloworld-v1"], "{r:#}");

        // Mesh-wide: external's ClusterIP skips every sidecar that has no value of its own.
        let ext_ip = mesh.service_ip("external")?;
        let ext = format!("http://{ext_ip}:8080/");
        let range = format!("{ext_ip}/32");
        ensure!(check_from_sleep(&mesh, &ext)?["path"] == "sidecar");
        let d = passthrough_json(&mesh, &["defaults", "set", "--add-outbound-ip-ranges", &range], 0)?;
        ensure!(d["values"]["global.proxy.excludeIPRanges"] == range.as_str(), "{d:#}");
        ensure!(
            strings(&d["appliesTo"]["global.proxy.excludeIPRanges"]["inherit"]).contains(&"default/sleep".to_string()),
            "{d:#}"
        );
        let d = passthrough_json(&mesh, &["defaults", "get"], 0)?;
        ensure!(d["values"]["global.proxy.excludeIPRanges"] == range.as_str(), "{d:#}");
        // Saved, not live: the running pod keeps its rules until it restarts.
        ensure!(check_from_sleep(&mesh, &ext)?["path"] == "sidecar");
        restart(&mesh, "sleep")?;
        let v = check_from_sleep(&mesh, &ext)?;
        ensure!(v["path"] == "direct", "after the restart: {v:#}");
        let doc = get(&mesh, "sleep")?;
        let e = effective(&doc, "excludeOutboundIPRanges")?;
        ensure!(e["value"] == range.as_str() && e["source"] == "mesh", "{doc:#}");
        ensure!(e["meshKey"] == "global.proxy.excludeIPRanges", "{e}");
        let (_, text, _) = passthrough(&mesh, &["get", "sleep"])?;
        ensure!(text.contains(&range) && text.contains("mesh (global.proxy.excludeIPRanges)"), "{text}");

        // sleep's own value replaces the mesh-wide one, with the warning; once restarted, the
        // external ClusterIP goes through the sidecar again.
        let doc = passthrough_json(&mesh, &["set", "sleep", "--outbound-ip-ranges", "198.19.250.0/24"], 0)?;
        let e = effective(&doc, "excludeOutboundIPRanges")?;
        ensure!(e["value"] == "198.19.250.0/24" && e["source"] == "workload", "{doc:#}");
        ensure!(
            strings(&doc["warnings"]).iter().any(|w| w.contains("replaces the mesh-wide global.proxy.excludeIPRanges")
                && w.contains(&range)),
            "{doc:#}"
        );
        let doc = get(&mesh, "sleep")?;
        ensure!(strings(&doc["warnings"]).iter().any(|w| w.contains("instead of adding to it")), "{doc:#}");
        restart(&mesh, "sleep")?;
        let v = check_from_sleep(&mesh, &ext)?;
        ensure!(v["path"] == "sidecar", "the workload's value replaced the mesh-wide one: {v:#}");

        // Adding to the mesh-wide value through a batch keeps it: the workload's list starts
        // from the mesh-wide value.
        let both = [range, "198.19.251.0/24".to_string()];
        let version = get(&mesh, "helloworld-v1")?["resourceVersion"].clone();
        let p = passthrough_json(
            &mesh,
            &["set", "helloworld-v1", "--add-outbound-ip-ranges", "198.19.251.0/24", "--dry-run"],
            0,
        )?;
        ensure!(strings(&p["settings"]["outboundIpRanges"]) == both, "{p:#}");
        ensure!(get(&mesh, "helloworld-v1")?["resourceVersion"] == version, "a dry run wrote");
        let r = passthrough_json(&mesh, &["set", "--all", "-n", "default", "-l", "app=helloworld", "--add-outbound-ip-ranges", "198.19.251.0/24"], 0)?;
        ensure!(strings(&r["items"][0]["settings"]["outboundIpRanges"]) == both, "{r:#}");
        Ok(())
    }
}
