//! The management plane over the real local mesh (`meshpass up`, as root): the CLI
//! `meshpass passthrough` through the API, the API's rejections (nothing changed), bypassed
//! traffic from the live rule counters, the effect checked from the node, and the web GUI's
//! browser test (`e2e/passthrough.mjs`, headless Chromium) doing the seed's steps.

mod support;

use anyhow::{ensure, Result};
use meshpass_test_support::tools;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use support::mesh::{Mesh, BIN};

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// `meshpass passthrough ARGS --state-dir DIR`: (exit code, stdout, stderr).
fn passthrough(mesh: &Mesh, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(BIN).arg("passthrough").args(args).arg("--state-dir").arg(mesh.state()).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn helloworld_url(mesh: &Mesh) -> Result<String> {
    Ok(format!("http://{}:5000/hello", mesh.service_ip("helloworld")?))
}

fn api_get(url: &str, token: &str, path: &str) -> Result<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H", &format!("Authorization: Bearer {token}"), &format!("{url}{path}")])
        .output()?;
    ensure!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

meshpass_test_support::namespaced_test! {
    fn passthrough_through_the_management_plane(namespaces) -> Result<()> {
        let mut mesh = Mesh::new(namespaces.prefix(), "198.18.90.0/24", "198.19.90.0/24", true)?;
        // Untracked exclusions here (the seed scenario runs Istio's rules as they are): the
        // bypass counters below then come from the raw table's SYN rules, not the nat table's.
        mesh.up_args.push("--untrack-excluded-inbound");
        mesh.up()?;
        mesh.wait_ready("default", "helloworld-v1")?;
        mesh.wait_ready("default", "sleep")?;
        let (api, token) = mesh.api()?;
        let url = helloworld_url(&mesh)?;

        // The login URL is printed once, on the supervisor's terminal.
        let log = std::fs::read_to_string(mesh.state().join("up.log"))?;
        ensure!(log.matches("?token=").count() == 1, "login URL not printed exactly once:\n{log}");
        let mode = std::fs::metadata(mesh.state().join("api-token"))?;
        ensure!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777 == 0o600, "api-token not 0600");

        // No token, no answer.
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{api}/api/v1/workloads")])
            .output()?;
        ensure!(String::from_utf8_lossy(&out.stdout) == "401", "without a token: {}", String::from_utf8_lossy(&out.stdout));

        // The workload list: helloworld-v1 Injected, external Uninjected.
        let list = api_get(&api, &token, "/api/v1/workloads")?;
        let status = |list: &serde_json::Value, name: &str| {
            list["items"].as_array().and_then(|a| a.iter().find(|w| w["name"] == name)).map(|w| w["status"].clone())
        };
        ensure!(status(&list, "helloworld-v1") == Some("Injected".into()), "{list}");
        ensure!(status(&list, "external") == Some("Uninjected".into()), "{list}");

        // Before: through the sidecar.
        let before = lower(&mesh.curl_from_node(&["-I"], &url)?);
        ensure!(before.contains("server: istio-envoy") && before.contains("x-envoy-upstream-service-time"), "{before}");

        // Bad input: exit 2, every bad item named, nothing changed.
        let version = api_get(&api, &token, "/api/v1/namespaces/default/workloads/helloworld-v1/passthrough")?
            ["resourceVersion"]
            .clone();
        let (code, _, err) = passthrough(&mesh, &["set", "helloworld-v1", "--inbound-ports", "70000,abc,5000"])?;
        ensure!(code == 2, "exit {code}: {err}");
        ensure!(err.contains("\"70000\"") && err.contains("\"abc\"") && err.contains("excludeInboundPorts"), "{err}");
        let doc = api_get(&api, &token, "/api/v1/namespaces/default/workloads/helloworld-v1/passthrough")?;
        ensure!(doc["resourceVersion"] == version && doc["settings"]["inboundPorts"] == serde_json::json!([]), "{doc}");

        // Saved without a restart: Pending restart, and the pods still go through the sidecar.
        let (code, _, err) = passthrough(&mesh, &["set", "helloworld-v1", "--outbound-ports", "9"])?;
        ensure!(code == 0, "{err}");
        let list = api_get(&api, &token, "/api/v1/workloads")?;
        ensure!(status(&list, "helloworld-v1") == Some("Pending restart".into()), "{list}");
        let (code, out, err) = passthrough(&mesh, &["get", "helloworld-v1"])?;
        ensure!(code == 0 && out.contains("(Pending restart)") && out.contains("outbound ports:      9"), "{out}{err}");

        // Inbound 5000 with a restart: the app answers itself (HTTP/1.0, its own Server header).
        let (code, out, err) = passthrough(&mesh, &["set", "helloworld-v1", "--inbound-ports", "5000", "--restart"])?;
        ensure!(code == 0, "{err}");
        ensure!(
            err.contains("Traffic passthrough setup successful")
                && err.contains("restart of default/helloworld-v1 complete"),
            "{err}"
        );
        ensure!(out.contains("inbound ports:       5000") && out.contains("outbound ports:      9"), "{out}");
        mesh.wait_ready("default", "helloworld-v1")?;
        let after = mesh.curl_from_node(&["-I"], &url)?;
        ensure!(after.starts_with("HTTP/1.0 200") && after.contains("Server: helloworld/v1"), "{after}");
        ensure!(!lower(&after).contains("istio-envoy"), "{after}");

        // The check says so too, from the sidecars' records; and the bypass counters moved.
        let check = mesh.cli_ok(&["check", &url])?;
        ensure!(check.contains("path: direct"), "{check}");
        let bypass = api_get(&api, &token, "/api/v1/namespaces/default/workloads/helloworld-v1/bypass")?;
        let inbound = bypass["totals"]["inbound"]["packets"].as_u64().unwrap_or(0);
        ensure!(inbound >= 2, "inbound bypass counters did not move: {bypass}");
        ensure!(bypass.to_string().contains("notrack"), "the untracked SYN rules should count the bypass: {bypass}");
        let metrics = Command::new("curl")
            .args(["-sS", "-H", &format!("Authorization: Bearer {token}"), &format!("{api}/metrics")])
            .output()?;
        let metrics = String::from_utf8_lossy(&metrics.stdout);
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("meshpass_bypassed_packets_total{") && l.contains("workload=\"helloworld-v1\"")),
            "{metrics}"
        );

        // The audit log has who changed what.
        let audit = std::fs::read_to_string(mesh.state().join("audit.log"))?;
        ensure!(audit.lines().filter(|l| l.contains("\"passthrough.set\"")).count() >= 2, "{audit}");

        // Clear with a restart: back through the sidecar.
        let (code, _, err) = passthrough(&mesh, &["clear", "helloworld-v1", "--restart"])?;
        ensure!(code == 0, "{err}");
        mesh.wait_ready("default", "helloworld-v1")?;
        let back = lower(&mesh.curl_from_node(&["-I"], &url)?);
        ensure!(back.contains("server: istio-envoy"), "{back}");

        // With untracked exclusions, a *live* change of the excluded ports would reset the open
        // connections to them: refused, nothing changed, and a change that leaves them alone is
        // still applied live.
        let before = api_get(&api, &token, "/api/v1/namespaces/default/workloads/helloworld-v1/passthrough")?;
        let refused = mesh.cli(&[
            "annotate",
            "--live",
            "deployment/helloworld-v1",
            "traffic.sidecar.istio.io/excludeInboundPorts=5000",
        ])?;
        let text = String::from_utf8_lossy(&refused.stderr);
        ensure!(!refused.status.success() && text.contains("apply without --live and restart"), "{text}");
        let after = api_get(&api, &token, "/api/v1/namespaces/default/workloads/helloworld-v1/passthrough")?;
        ensure!(before == after, "a refused change changed something: {before} -> {after}");
        mesh.cli_ok(&[
            "annotate",
            "--live",
            "deployment/helloworld-v1",
            "traffic.sidecar.istio.io/excludeOutboundPorts=9",
        ])?;
        mesh.cli_ok(&["annotate", "--live", "deployment/helloworld-v1", "traffic.sidecar.istio.io/excludeOutboundPorts-"])?;

        // Two restarts at once (a second click, a second operator): the later one joins the
        // rollout in progress instead of failing, and the workload ends up complete and serving.
        let restart = || {
            let mut c = Command::new(BIN);
            c.args(["rollout", "restart", "deployment/helloworld-v1", "--state-dir"]).arg(mesh.state());
            c
        };
        let mut first = restart().stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        // The second starts once the first is rolling (its first progress line).
        let mut first_out = BufReader::new(first.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
        let mut first_text = String::new();
        first_out.read_line(&mut first_text)?;
        let second = restart().output()?;
        first_out.read_to_string(&mut first_text)?;
        let first = first.wait_with_output()?;
        let second_text = format!("{}{}", String::from_utf8_lossy(&second.stdout), String::from_utf8_lossy(&second.stderr));
        let both = format!("{first_text}{}\n---\n{second_text}", String::from_utf8_lossy(&first.stderr));
        ensure!(first.status.success() && second.status.success(), "{both}");
        ensure!(
            first_text.contains("successfully rolled out")
                && second_text.contains("already in progress; waiting for it")
                && second_text.contains("by the rollout that was in progress"),
            "{both}"
        );
        mesh.wait_ready("default", "helloworld-v1")?;
        let w = api_get(&api, &token, "/api/v1/namespaces/default/workloads/helloworld-v1")?;
        ensure!(w["ready"] == w["total"] && w["pendingRestart"] == false, "{w}");
        let back = lower(&mesh.curl_from_node(&["-I"], &url)?);
        ensure!(back.contains("server: istio-envoy"), "after two restarts at once: {back}");

        // The web GUI in a real browser, against this mesh.
        if tools::browser_ready("management: browser flow") {
            let artifacts = tools::artifacts_dir(env!("CARGO_TARGET_TMPDIR"), "local-mesh");
            tools::run_browser_flow(&api, &token, &artifacts).map_err(anyhow::Error::msg)?;
        }
        let back = lower(&mesh.curl_from_node(&["-I"], &url)?);
        ensure!(back.contains("server: istio-envoy"), "after the browser run: {back}");

        // The OpenAPI fuzz run against this server and the real backend: reads, previews and
        // checks with generated input, no 5xx and responses as documented. (Writes are fuzzed
        // against the in-memory backend in crates/api/tests/openapi_fuzz.rs: here every generated
        // write would restart a pod.)
        if let Some(venv) = tools::schemathesis_venv("management: OpenAPI fuzz") {
            let reports = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis-local-mesh");
            tools::run_schemathesis(&api, &token, &venv, &reports, &["--read-only"], 15).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}
