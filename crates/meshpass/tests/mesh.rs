//! End-to-end test of the local mesh through the real binary: `meshpass up` as a child
//! process, `apply`, a request from the node through the ClusterIP and the sidecar, a rolling
//! restart under a steady request loop, invalid annotations rejected as a whole, `kill -9` of
//! the supervisor followed by `meshpass down` (no residue), and `up` again restoring the
//! workloads from the state directory.
//!
//! Needs root: `#[ignore = "needs root"]`, run as root by `scripts/test` (`--include-ignored`).
//! Uses its own state directory, namespace prefix (the test's) and address blocks, so it runs
//! beside other tests; Drop guards tear everything down even when an assertion fails.

mod support;

use anyhow::{Context, Result};
use std::time::Duration;
use support::mesh::Mesh;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: e2e, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: e2e}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: 5000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
      - name: hello
        command: [meshpass, sample, helloworld, --port, "5000", --version, v1]
        ports: [{containerPort: 5000}]
"#;

meshpass_test_support::namespaced_test! {
    fn mesh_up_request_rollout_kill_down_and_restore(namespaces) -> Result<()> {
        let mut mesh = Mesh::new(namespaces.prefix(), "198.18.64.0/24", "198.19.64.0/24", false)?;
        mesh.up()?;
        let file = mesh.state().join("app.yaml");
        std::fs::write(&file, MANIFEST)?;
        let out = mesh.cli(&["apply", "-f", file.to_str().context("utf-8 path")?])?;
        assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
        mesh.wait_ready("e2e", "hello")?;
        let client = mesh.client()?;
        let svc = client.services(Some("e2e"))?;
        let ip = &svc[0].cluster_ip;
        assert!(ip.starts_with("198.19.64."), "{svc:?}");
        let url = format!("http://{ip}:80/hello");

        // Through the sidecar: Envoy's headers, the app's body.
        let reply = mesh.curl_from_node(&["-i"], &url)?;
        assert!(reply.contains("Hello version: v1, instance: hello-"), "{reply}");
        assert!(reply.to_lowercase().contains("server: istio-envoy"), "{reply}");
        assert!(reply.to_lowercase().contains("x-envoy-upstream-service-time"), "{reply}");

        // Rolling restart under a steady request loop: new pod names, zero failures.
        let before: Vec<String> = client.pods(Some("e2e"))?.into_iter().map(|p| p.name).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loop_thread = mesh.request_loop(url.clone(), stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        let mut steps = Vec::new();
        client.rollout_restart("e2e", "hello", &mut |p| steps.push(p.to_string()))?;
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (ok, failures) = loop_thread.join().map_err(|_| anyhow::anyhow!("request loop panicked"))?;
        assert!(failures.is_empty(), "{} failures during the rollout: {failures:?}\nsteps: {steps:?}", failures.len());
        assert!(ok >= 5, "only {ok} requests during the rollout");
        let after: Vec<String> = client.pods(Some("e2e"))?.into_iter().map(|p| p.name).collect();
        assert_eq!(after.len(), 1);
        assert!(!before.contains(&after[0]), "pod names must change: {before:?} -> {after:?}");
        assert!(steps.iter().any(|s| s.contains("successfully rolled out")), "{steps:?}");

        // Invalid annotations: rejected as a whole, every item reported, nothing changes.
        let bad = MANIFEST.replace(
            "metadata: {labels: {app: hello}}",
            "metadata:\n      labels: {app: hello}\n      annotations:\n        traffic.sidecar.istio.io/excludeInboundPorts: \"99999,abc\"",
        );
        let err = client.apply(&bad, false).expect_err("invalid annotations must be rejected").to_string();
        assert!(err.contains("99999") && err.contains("abc"), "{err}");
        assert!(!client.workloads(Some("e2e"))?[0].pending_restart);

        // kill -9 of the supervisor, then `down`: nothing left.
        mesh.kill9()?;
        let out = mesh.cli(&["down"])?;
        assert!(out.status.success(), "down: {}", String::from_utf8_lossy(&out.stderr));
        let (netns, procs) = mesh.residue("helloworld");
        assert!(netns.is_empty(), "namespaces left: {netns:?}");
        assert_eq!(procs, 0, "sample processes left");

        // `up` again: the workload comes back from the state directory, same ClusterIP.
        mesh.up()?;
        mesh.wait_ready("e2e", "hello")?;
        let client = mesh.client()?;
        assert_eq!(&client.services(Some("e2e"))?[0].cluster_ip, ip);
        let reply = mesh.curl_from_node(&["-i"], &url)?;
        assert!(reply.contains("Hello version: v1"), "{reply}");

        // A clean `down` through the running supervisor.
        let out = mesh.cli(&["down"])?;
        assert!(out.status.success());
        if let Some(mut c) = mesh.child.take() {
            c.wait()?;
        }
        assert_eq!(mesh.residue("helloworld"), (vec![], 0));
        Ok(())
    }
}
