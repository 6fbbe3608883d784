//! `meshpass serve`: the management plane (REST API, web GUI, metrics) over the local mesh of
//! a running `meshpass up`, or over Kubernetes clusters with `--kube` (the current context,
//! one `--context`, several `--context` flags, or a `--clusters` file). `meshpass up` starts
//! the same server itself ([`spawn_for_mesh`]).
//!
//! One cluster is connected as before: the API server must answer at start-up. Several are
//! each loaded from their kubeconfig context without being asked anything, so that one that
//! is down is shown as unreachable while the others are served.

use anyhow::Context;
use meshpass_api::model::RuleFormat;
use meshpass_api::server::StartedHook;
use meshpass_api::{Backend, NamedBackend, ServerConfig, Started};
use meshpass_kube::clusters::{check_specs, read_clusters_file, ClusterSpec, Clusters, ClustersError};
use meshpass_mesh::{LocalBackend, Output, Stop};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `meshpass serve` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Manage a Kubernetes cluster running Istio (kubeconfig, or the in-cluster service
    /// account) instead of the local mesh.
    #[arg(long)]
    kube: bool,
    /// Kubeconfig context (with --kube; default: the current context). Repeat it to serve
    /// several clusters, each named after its context.
    #[arg(long = "context", requires = "kube")]
    contexts: Vec<String>,
    /// A YAML or JSON file listing the clusters to serve (with --kube; instead of --context):
    /// `clusters: [{name, context, kubeconfig, namespaces, istio_namespace, injector_configmap}]`.
    #[arg(long, requires = "kube", conflicts_with_all = ["contexts", "namespaces"], value_name = "FILE")]
    clusters: Option<PathBuf>,
    /// Only these namespaces (with --kube; repeatable; default: every namespace with injection;
    /// with several contexts, in each cluster).
    #[arg(short = 'n', long = "namespace", requires = "kube")]
    namespaces: Vec<String>,
    /// Where the API and GUI listen. Keep it on loopback unless something in front of it
    /// terminates TLS: the bearer token travels in every request.
    #[arg(long, default_value = "127.0.0.1:15080")]
    listen: SocketAddr,
    /// State directory: the local mesh's (with its control socket), and where the API token
    /// (`api-token`, mode 0600) and the audit log (`audit.log`) are kept.
    #[arg(long, default_value = "/var/lib/meshpass")]
    state_dir: PathBuf,
    /// Use this API token instead of the one in `api-token` (for example from a Kubernetes
    /// Secret); it is written to `api-token` (mode 0600).
    #[arg(long, env = "MESHPASS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The local mesh's rule backend, for previews (nftables or iptables; as `meshpass up`).
    #[arg(long, default_value = "nftables", value_parser = ["nftables", "iptables"])]
    backend: String,
}

/// Prints the URLs once (the token is in the login URL and nowhere else on the terminal),
/// through `out`, which never blocks or panics on a closed or full stream.
fn announce(out: Output) -> StartedHook {
    Arc::new(move |s: &Started| {
        out.line(&format!("management plane (API, GUI, metrics) listening on {}", s.url));
        out.line(&format!("open {} to sign in (token in api-token of the state directory)", s.login_url));
    })
}

/// The rule format previews use for the local mesh's backend name.
pub(crate) fn rule_format(backend: &str) -> RuleFormat {
    if backend.starts_with("iptables") {
        RuleFormat::Iptables
    } else {
        RuleFormat::Nft
    }
}

async fn ctrl_c_or_term() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs `meshpass serve` in the foreground until Ctrl-C / SIGTERM.
pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let clusters: Vec<NamedBackend> = if a.kube {
            kube_clusters(&a).await?
        } else {
            meshpass_mesh::Client::connect(&a.state_dir)
                .context("serving the local mesh needs `meshpass up` running (or use --kube)")?;
            let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(&a.state_dir, rule_format(&a.backend)));
            vec![NamedBackend::single(b)]
        };
        let mut cfg = ServerConfig::new(a.listen, &a.state_dir);
        cfg.on_started = Some(announce(Output::stderr()));
        cfg.token = a.token.clone().filter(|t| !t.is_empty());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stop = async move {
            ctrl_c_or_term().await;
            let _ = tx.send(true);
        };
        let mut rx2 = rx.clone();
        // As in `up`: open browser connections get two seconds after the signal.
        let grace = async move {
            let _ = rx2.wait_for(|v| *v).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        tokio::select! {
            r = meshpass_api::serve_clusters(cfg, clusters, stop) => r?,
            () = grace => {}
        }
        drop(rx);
        anyhow::Ok(())
    })?;
    // Browsers keep connections open; do not wait for them once told to stop.
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(ExitCode::SUCCESS)
}

/// The clusters `--kube` serves: the current or one named context, connected and checked as a
/// single cluster; several `--context`s or a `--clusters` file, each loaded (not asked) so that
/// one that is down does not stop the others. Bad input is named (the entry and field of a
/// clusters file) before anything is served.
async fn kube_clusters(a: &Args) -> anyhow::Result<Vec<NamedBackend>> {
    let specs = match (&a.clusters, a.contexts.as_slice()) {
        (Some(file), _) => read_clusters_file(file)?,
        (None, [] | [_]) => {
            let context = a.contexts.first().cloned();
            let b = meshpass_kube::KubeBackend::connect(context.clone(), a.namespaces.clone()).await?;
            let name = context.unwrap_or_else(|| meshpass_api::backend::default_cluster_name(b.kind()).to_string());
            // A context name that cannot name a cluster (a URL query value, a column) is kept
            // as the kubeconfig has it only when it can; otherwise the default name.
            let name = if meshpass_api::backend::is_cluster_name(&name) { name } else { "kube".to_string() };
            return Ok(vec![NamedBackend::new(name, Arc::new(b))]);
        }
        (None, contexts) => {
            let specs: Vec<ClusterSpec> =
                contexts.iter().map(|c| ClusterSpec::context(c.clone(), a.namespaces.clone())).collect();
            check_specs(&specs).map_err(|problems| ClustersError::Invalid { origin: None, problems })?;
            specs
        }
    };
    Ok(Clusters::connect(specs).await?.into_named())
}

/// Starts the management plane for the local mesh that `meshpass up` is bringing up, on its
/// own thread and runtime: it waits for the supervisor's control socket, serves until `stop`
/// is requested, and reports (not fails) through `out` when it cannot listen, since the mesh
/// itself is still useful from the CLI.
pub(crate) fn spawn_for_mesh(
    state_dir: &Path,
    listen: SocketAddr,
    format: RuleFormat,
    stop: Stop,
    out: Output,
) -> std::thread::JoinHandle<()> {
    let dir = state_dir.to_path_buf();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return out.line(&format!("management plane not started: {e}")),
        };
        let stopping = {
            let stop = stop.clone();
            move || {
                let stop = stop.clone();
                async move {
                    while !stop.requested() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        };
        rt.block_on(async {
            while meshpass_mesh::Client::connect(&dir).is_err() {
                if stop.requested() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut cfg = ServerConfig::new(listen, &dir);
            cfg.on_started = Some(announce(out.clone()));
            let backend = Arc::new(LocalBackend::new(&dir, format));
            // Graceful shutdown waits for open connections, and a browser keeps one open:
            // give them a moment, then stop anyway (the mesh is being torn down).
            let grace = async {
                stopping().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            };
            tokio::select! {
                r = meshpass_api::serve(cfg, backend, stopping()) => {
                    if let Err(e) = r {
                        out.line(&format!("management plane stopped: {e}"));
                    }
                }
                () = grace => {}
            }
        });
        rt.shutdown_timeout(Duration::from_secs(2));
    })
}
