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
