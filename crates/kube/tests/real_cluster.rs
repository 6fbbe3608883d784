//! Against a real cluster running Istio, when `KUBECONFIG` is set (otherwise it prints
//! "skipped: KUBECONFIG not set" and passes — also in CI, which has no cluster). The steps
//! of `deploy/README.md` ("Trying it on kind"): Istio's helloworld sample in namespace
//! `default` with injection on. The test sets inbound passthrough for port 5000 on
//! `helloworld-v1`, restarts it, checks that the app now answers without the sidecar, clears
//! the setting, restarts again and checks that the sidecar answers again.
//!
//! `MESHPASS_TEST_NAMESPACE` / `MESHPASS_TEST_WORKLOAD` override `default` / `helloworld-v1`.

use meshpass_api::model::{CheckRequest, Direction, Verdict, WorkloadRef};
use meshpass_api::Backend;
use meshpass_kube::KubeBackend;
use std::collections::BTreeMap;
use std::time::Duration;

const EXCLUDE_IN: &str = "traffic.sidecar.istio.io/excludeInboundPorts";

#[tokio::test]
async fn set_restart_check_clear_on_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none_or(|k| k.is_empty()) {
        println!("skipped: KUBECONFIG not set (see deploy/README.md, \"Trying it on kind\")");
        return;
    }
    let ns = std::env::var("MESHPASS_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
    let name = std::env::var("MESHPASS_TEST_WORKLOAD").unwrap_or_else(|_| "helloworld-v1".into());
    let w = WorkloadRef::new(ns.clone(), name);
    let backend = KubeBackend::connect(None, vec![ns])
        .await
        .expect("connect to the cluster")
        .with_rollout_timeout(Duration::from_secs(300));

    let listed = backend.list().await.expect("list");
    let info = listed.iter().find(|i| i.workload == w).unwrap_or_else(|| panic!("{w} is not listed: {listed:#?}"));
    assert!(info.meshed, "{w} is not meshed: label its namespace istio-injection=enabled and restart it");
    let check =
        CheckRequest { direction: Direction::Inbound, port: Some(5000), path: Some("/hello".into()), target: None };
    let progress = || Box::new(|l: String| println!("  {l}")) as meshpass_api::backend::Progress;

    // Start from a clean state (an earlier aborted run may have left the exclusion).
    if info.annotations.contains_key(EXCLUDE_IN) {
        backend
            .patch_annotations(&w, &info.resource_version, BTreeMap::new(), vec![EXCLUDE_IN.into()])
            .await
            .expect("pre-clean");
        backend.restart(&w, progress()).await.expect("pre-clean restart");
    }
    let before = backend.check(&w, &check).await.expect("check before");
    println!("before: {:?} {:?}", before.verdict, before.headers);
    assert_eq!(before.verdict, Verdict::Sidecar);

    // Set.
    let now = backend.get(&w).await.expect("get");
    let set = BTreeMap::from([(EXCLUDE_IN.to_string(), "5000".to_string())]);
    let written = backend.patch_annotations(&w, &now.resource_version, set, vec![]).await.expect("set 5000");
    assert_eq!(written.annotations.get(EXCLUDE_IN).map(String::as_str), Some("5000"));
    // A stale version is refused.
    let stale = backend.patch_annotations(&w, &now.resource_version, BTreeMap::new(), vec![EXCLUDE_IN.into()]).await;
    assert!(matches!(stale, Err(meshpass_api::BackendError::Conflict { .. })), "{stale:?}");

    // Restart, check.
    backend.restart(&w, progress()).await.expect("restart");
    let after = backend.get(&w).await.expect("get after restart");
    assert!(!after.pending_restart, "still pending restart after the rollout: {after:#?}");
    let passthrough = backend.check(&w, &check).await.expect("check after");
    println!("after: {:?} {:?}", passthrough.verdict, passthrough.headers);
    assert_eq!(passthrough.verdict, Verdict::Passthrough);

    // Clear, restart, check.
    backend
        .patch_annotations(&w, &after.resource_version, BTreeMap::new(), vec![EXCLUDE_IN.into()])
        .await
        .expect("clear");
    backend.restart(&w, progress()).await.expect("restart after clear");
    let cleared = backend.check(&w, &check).await.expect("check after clear");
    assert_eq!(cleared.verdict, Verdict::Sidecar);
}
