//! Connecting: a kubeconfig context that does not exist, and an API server that does not
//! answer, are reported as `KubeError`s naming the context / the server. The second case also
//! proves that a TLS client can be built (kube's rustls with the ring provider). Only
//! 127.0.0.1 is contacted (port 1: nothing listens there). The kubeconfig is passed in, not
//! through the environment (`KubeBackend::connect` reads `KUBECONFIG` the same way).

use kube::config::Kubeconfig;
use meshpass_kube::{KubeBackend, KubeError};

const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:1
contexts:
- name: kind-meshpass
  context:
    cluster: local
    user: local
    namespace: default
users:
- name: local
  user:
    token: not-a-real-token
current-context: kind-meshpass
";

fn kubeconfig() -> Kubeconfig {
    Kubeconfig::from_yaml(KUBECONFIG).expect("kubeconfig")
}

#[tokio::test]
async fn a_missing_context_is_named() {
    match KubeBackend::from_kubeconfig(kubeconfig(), Some("no-such-context".into()), vec![]).await {
        Err(e @ KubeError::Kubeconfig { .. }) => {
            println!("{e}");
            assert!(e.to_string().contains("no-such-context"), "{e}");
        }
        other => panic!("want KubeError::Kubeconfig, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_api_server_is_named() {
    for context in [Some("kind-meshpass".to_string()), None] {
        match KubeBackend::from_kubeconfig(kubeconfig(), context, vec!["default".into()]).await {
            Err(e @ KubeError::Unreachable { .. }) => {
                assert!(!e.to_string().contains("refused"), "Display says only its own context: {e}");
                let msg = meshpass_api::backend::error_chain(&e);
                println!("{msg}");
                assert!(msg.contains("https://127.0.0.1:1"), "{msg}");
                assert!(msg.contains("refused"), "the cause is shown: {msg}");
                // Each part of the chain once: no message repeats its cause's.
                let parts: Vec<&str> = msg.split(": ").collect();
                for (i, p) in parts.iter().enumerate() {
                    assert!(!parts[i + 1..].contains(p), "{p:?} twice in {msg}");
                }
            }
            other => panic!("want KubeError::Unreachable, got {other:?}"),
        }
    }
}

/// Several clusters from a kubeconfig file: each context is loaded without contacting its API
/// server (so one that is down does not stop the server starting), the server then reports it
/// unreachable; a context the file does not have is named, as is the file itself.
#[tokio::test]
async fn several_contexts_are_loaded_without_contacting_them() {
    use meshpass_kube::clusters::{ClusterSpec, Clusters};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    let two = KUBECONFIG
        .replace("contexts:\n", "contexts:\n- name: kind-west\n  context:\n    cluster: local\n    user: local\n");
    std::fs::write(&path, two).expect("write kubeconfig");
    let spec = |context: &str, name: Option<&str>| ClusterSpec {
        name: name.map(str::to_string),
        kubeconfig: Some(path.clone()),
        ..ClusterSpec::context(context, vec!["default".into()])
    };
    let clusters =
        Clusters::connect(vec![spec("kind-meshpass", Some("east")), spec("kind-west", None)]).await.expect("loaded");
    let named = clusters.clone().into_named();
    assert_eq!(named.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["east", "kind-west"]);
    for (name, result) in clusters.list().await {
        let err = result.expect_err("nothing listens on 127.0.0.1:1");
        assert!(matches!(err, meshpass_api::BackendError::Unavailable { .. }), "{name}: {err:?}");
    }
    match Clusters::connect(vec![spec("kind-east", None)]).await {
        Err(e @ KubeError::Kubeconfig { .. }) => assert!(e.to_string().contains("kind-east"), "{e}"),
        other => panic!("want KubeError::Kubeconfig naming the context, got {other:?}"),
    }
}
