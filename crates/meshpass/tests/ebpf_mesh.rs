//! The local mesh with eBPF capture (`meshpass up --ebpf-capture`): the sample's curl checks
//! pass as with Istio's rules (inbound through the sidecar, passthrough after
//! `excludeInboundPorts` and a restart, back to the sidecar after a *live* change that swaps
//! the programs without restarting), outbound from `sleep` is decided by the connect hooks,
//! settings eBPF capture cannot honour are refused by name with nothing changed, and `down`
//! leaves no pinned object behind.

mod support;

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use support::mesh::Mesh;

const EXCLUDE_IN: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
const EXCLUDE_IPS: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";

fn pinned() -> BTreeSet<String> {
    std::fs::read_dir("/sys/fs/bpf/meshpass")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn has_sidecar(reply: &str) -> bool {
    let l = reply.to_ascii_lowercase();
    l.contains("server: istio-envoy") && l.contains("x-envoy-upstream-service-time")
}

fn is_direct(reply: &str) -> bool {
    reply.starts_with("HTTP/1.0 200") && reply.contains("Server: helloworld/v1")
}

fn restart(mesh: &Mesh, name: &str) -> Result<()> {
    let out = mesh.cli_ok(&["rollout", "restart", &format!("deployment/{name}")])?;
    anyhow::ensure!(out.contains("successfully rolled out"), "rollout of {name}: {out}");
    Ok(())
}

meshpass_test_support::namespaced_test! {
    fn local_mesh_with_ebpf_capture(namespaces) -> Result<()> {
        let before = pinned();
        let mut mesh = Mesh::new(namespaces.prefix(), "198.18.84.0/24", "198.19.84.0/24", true)?;
        mesh.up_args.push("--ebpf-capture");
        mesh.up()?;
        for w in ["helloworld-v1", "sleep"] {
            mesh.wait_ready("default", w)?;
        }
        mesh.wait_ready("external", "external")?;
        let ip_of = |name: &str| mesh.service_ip(name);
        let url = format!("http://{}:5000/hello", ip_of("helloworld")?);

        // Inbound: the sk_lookup program hands port 5000 to the sidecar.
        let r = mesh.curl_from_node(&["-I"], &url)?;
        assert!(has_sidecar(&r), "expected the sidecar:\n{r}");

        // Passthrough after a restart, then back to the sidecar *live* (programs swapped).
        mesh.cli_ok(&["annotate", "deployment/helloworld-v1", &format!("{EXCLUDE_IN}=5000")])?;
        restart(&mesh, "helloworld-v1")?;
        let r = mesh.curl_from_node(&["-I"], &url)?;
        assert!(is_direct(&r), "expected the app itself:\n{r}");
        // The management plane's bypass counters come from the programs' connection counters.
        let (api, token) = mesh.api()?;
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{api}/api/v1/namespaces/default/workloads/helloworld-v1/bypass"))
            .output()?;
        let bypass: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("{out:?}"))?;
        assert!(bypass["totals"]["inbound"]["packets"].as_u64().unwrap_or(0) >= 1, "{bypass}");
        assert!(bypass.to_string().contains("eBPF capture"), "{bypass}");
        let out = mesh.cli_ok(&["annotate", "--live", "deployment/helloworld-v1", &format!("{EXCLUDE_IN}-")])?;
        assert!(out.contains("re-applied live"), "{out}");
        let r = mesh.curl_from_node(&["-I"], &url)?;
        assert!(has_sidecar(&r), "a live change reaches new connections at once:\n{r}");

        // Outbound from sleep: captured by the connect hook, then excluded by address.
        let ext = format!("http://{}:8080/", ip_of("external")?);
        let check = |mesh: &Mesh| -> Result<serde_json::Value> {
            Ok(serde_json::from_str(&mesh.cli_ok(&["check", "--from", "sleep", &ext, "-o", "json"])?)?)
        };
        assert_eq!(check(&mesh)?["path"], "sidecar");
        mesh.cli_ok(&["annotate", "deployment/sleep", &format!("{EXCLUDE_IPS}={}/32", ip_of("external")?)])?;
        restart(&mesh, "sleep")?;
        let v = check(&mesh)?;
        assert_eq!(v["path"], "direct", "{v}");
        assert!(v["evidence"].to_string().contains("eBPF capture"), "{v}");

        // A setting without meaning for eBPF capture: refused by name, nothing stored.
        let out = mesh.cli(&["annotate", "deployment/sleep", "traffic.sidecar.istio.io/kubevirtInterfaces=virt0"])?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("kube-virt-interfaces"), "{err}");
        let w = mesh.client()?.workloads(Some("default"))?;
        let sleep = w.iter().find(|w| w.name == "sleep").context("sleep")?;
        assert!(!sleep.annotations.contains_key("traffic.sidecar.istio.io/kubevirtInterfaces"), "{sleep:?}");

        mesh.cli_ok(&["down"])?;
        // The supervisor answers `down` before it has exited.
        if let Some(mut sup) = mesh.child.take() {
            sup.wait()?;
        }
        let (netns, procs) = mesh.residue("");
        assert!(netns.is_empty(), "namespaces left after down: {netns:?}");
        assert_eq!(procs, 0, "processes left after down");
        let left: Vec<_> = pinned().difference(&before).cloned().collect();
        assert!(left.is_empty(), "pinned eBPF objects left after down: {left:?}");
        Ok(())
    }
}
