//! The local mesh's CLI: `meshpass up|down|get|apply|delete|rollout|exec|logs|sample`.
//! Thin: everything is in `meshpass-mesh`; the commands other than `up`, `down`, `exec`,
//! `logs` and `sample` talk to the running supervisor over its control socket.

use anyhow::{bail, Context};
use meshpass_capture::linux::RuleBackend;
use meshpass_mesh::ipam::Cidr;
use meshpass_mesh::sample::SampleApp;
use meshpass_mesh::{Client, MeshConfig, Output, Stop};
use nix::sys::signal::{SigSet, Signal};
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_STATE_DIR: &str = "/var/lib/meshpass";

/// `meshpass up`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// State directory (manifests, control socket, logs).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Do not install the sample (helloworld, sleep, external) on first start.
    #[arg(long)]
    no_sample: bool,
    /// Backend for the pods' capture rules: nftables or iptables.
    #[arg(long, default_value = "nftables")]
    backend: String,
    /// Pod addresses (the first host address is the node's gateway).
    #[arg(long, default_value = "198.18.0.0/16")]
    pod_cidr: String,
    /// ClusterIP addresses.
    #[arg(long, default_value = "198.19.0.0/16")]
    service_cidr: String,
    /// Prefix of the mesh's network namespaces (tests run meshes side by side).
    #[arg(long, default_value = "mpm-", hide = true)]
    netns_prefix: String,
    /// Sidecar command line, whitespace-separated (default: `<this binary> proxy`).
    #[arg(long, env = "MESHPASS_SIDECAR_COMMAND", hide = true)]
    sidecar_command: Option<String>,
    /// Drain period of terminating pods, in seconds.
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// Where the management plane (API, web GUI, metrics) listens; `off` to not start it.
    /// Keep it on loopback: the token travels in every request.
    #[arg(long, default_value = "127.0.0.1:15080")]
    api_listen: String,
    /// Connections to excluded inbound ports skip connection tracking as well as the sidecar
    /// (raw NOTRACK rules in every pod, off loopback): passthrough then costs what it would
    /// without a mesh. See the README's "Untracked passthrough" for the one caveat.
    #[arg(long)]
    untrack_excluded_inbound: bool,
    /// Capture with eBPF programs instead of netfilter rules: the same passthrough settings,
    /// and passthrough traffic meets no per-packet hook (sidecars run in EBPF mode with
    /// NET_ADMIN and BPF). See the README's "eBPF capture".
    #[arg(long, conflicts_with = "untrack_excluded_inbound")]
    ebpf_capture: bool,
    /// Lifetime of the pods' workload certificates (renewed at half their life), e.g. `24h`
    /// (Istio's default) or `30s`.
    #[arg(long, default_value = "24h")]
    workload_cert_ttl: String,
}

/// `--state-dir` for the client commands.
#[derive(Debug, clap::Args)]
pub(crate) struct StateDir {
    /// State directory of the running mesh.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// `meshpass down`.
#[derive(Debug, clap::Args)]
pub(crate) struct DownArgs {
    #[command(flatten)]
    dir: StateDir,
}

/// `meshpass get`.
#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    /// workloads | pods | svc | peerauthentications (pa) | destinationrules (dr)
    what: String,
    /// Namespace (all namespaces when omitted).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Output format: table or json.
    #[arg(short, long, default_value = "table")]
    output: String,
    #[command(flatten)]
    dir: StateDir,
}

/// `meshpass apply` / `meshpass delete`.
#[derive(Debug, clap::Args)]
pub(crate) struct ApplyArgs {
    /// Manifest file (multi-document YAML; `-` for stdin).
    #[arg(short, long)]
    file: PathBuf,
    /// Apply capture-annotation-only changes to running pods in place (no restart).
    #[arg(long)]
    live: bool,
    #[command(flatten)]
    dir: StateDir,
}

/// `meshpass delete`.
#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    /// Manifest file naming the objects to delete.
    #[arg(short, long)]
    file: PathBuf,
    #[command(flatten)]
    dir: StateDir,
}

/// `meshpass rollout restart deployment/NAME`.
#[derive(Debug, clap::Args)]
pub(crate) struct RolloutArgs {
    /// `restart`
    action: String,
    /// `deployment/NAME`
    target: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    dir: StateDir,
}

/// `meshpass annotate`.
#[derive(Debug, clap::Args)]
pub(crate) struct AnnotateArgs {
    /// `deployment/NAME`
    target: String,
    /// `KEY=VALUE` to set, `KEY-` to remove (pod-template annotations).
    #[arg(required = true)]
    changes: Vec<String>,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Re-apply the capture rules of running pods in place (no restart; nftables backend).
    #[arg(long)]
    live: bool,
    #[command(flatten)]
    dir: StateDir,
}

/// `meshpass exec`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExecArgs {
    /// Run in the node namespace (as root) instead of a pod.
    #[arg(long)]
    node: bool,
    /// Pod name (or a unique prefix of one).
    pod: Option<String>,
    /// Namespace of the pod.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// UID/GID in a pod (the app's, so the sidecar captures the traffic).
    #[arg(long, default_value_t = 1000)]
    uid: u32,
    /// The command.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    #[command(flatten)]
    dir: StateDir,
}

/// `meshpass logs`.
#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// Pod name (or a unique prefix of one).
    pod: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// `app` (the first container), `sidecar`, or a container name.
    #[arg(short, long, default_value = "app")]
    container: String,
    #[command(flatten)]
    dir: StateDir,
}

/// `meshpass sample`.
#[derive(Debug, clap::Args)]
#[command(disable_version_flag = true)]
pub(crate) struct SampleArgs {
    /// helloworld | http | sleep
    app: String,
    /// Listen port.
    #[arg(long, default_value_t = 5000)]
    port: u16,
    /// helloworld's version string.
    #[arg(long, default_value = "v1")]
    version: String,
    /// http's `Server` header.
    #[arg(long, default_value = "external")]
    server: String,
}

/// `meshpass up`: the supervisor, in the foreground until Ctrl-C / SIGTERM / SIGHUP.
///
/// Stopping is unconditional: the first signal starts the teardown (pods drained), a second
/// one cuts its waits short, and nothing the supervisor prints can stop it — its output goes
/// through [`Output`], which drops what a closed or full stdout/stderr cannot take.
pub(crate) fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    // Signals first, before any thread exists: every thread spawned from here on inherits the
    // mask, so SIGINT/SIGTERM/SIGHUP reach only the waiting thread below and can never end the
    // process by their default action half-way through a teardown. SIGPIPE is blocked too (Rust
    // already ignores it): a write to a closed pipe must fail with EPIPE, never kill. Children
    // start with a clean mask and default SIGPIPE (std resets both before exec).
    let mut stopping = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stopping.add(sig);
    }
    let mut blocked = stopping;
    blocked.add(Signal::SIGPIPE);
    blocked.thread_block().context("blocking SIGINT/SIGTERM/SIGHUP/SIGPIPE")?;
    let out = Output::stderr();
    let code = supervise(a, stopping, &out);
    if let Err(e) = &code {
        out.line(&format!("error: {e:#}"));
    }
    // The last lines get a moment; a stream nobody reads must not keep the process alive.
    out.flush(Duration::from_secs(2));
    Ok(code.unwrap_or(ExitCode::from(1)))
}

fn supervise(a: UpArgs, signals: SigSet, out: &Output) -> anyhow::Result<ExitCode> {
    if let Err(e) = meshpass_mesh::supervisor::require_root() {
        out.line(&format!("error: {}", e.report()));
        return Ok(ExitCode::from(1));
    }
    let mut cfg = MeshConfig::new(&a.state_dir);
    cfg.sample = !a.no_sample;
    cfg.backend = RuleBackend::parse(&a.backend)
        .filter(|b| *b != RuleBackend::IptablesLegacy)
        .with_context(|| format!("--backend {}: expected nftables or iptables", a.backend))?;
    cfg.pod_cidr = Cidr::parse(&a.pod_cidr).map_err(|e| anyhow::anyhow!("--pod-cidr: {e}"))?;
    cfg.service_cidr = Cidr::parse(&a.service_cidr).map_err(|e| anyhow::anyhow!("--service-cidr: {e}"))?;
    cfg.netns_prefix = a.netns_prefix;
    cfg.drain = Duration::from_secs(a.drain_seconds);
    cfg.untrack_excluded_inbound = a.untrack_excluded_inbound;
    cfg.ebpf_capture = a.ebpf_capture;
    cfg.workload_cert_ttl = meshpass_proxy::config::parse_duration(&a.workload_cert_ttl)
        .map_err(|e| anyhow::anyhow!("--workload-cert-ttl {:?}: {e}", a.workload_cert_ttl))?;
    if let Some(cmd) = a.sidecar_command.filter(|c| !c.trim().is_empty()) {
        cfg.sidecar_argv = cmd.split_whitespace().map(str::to_string).collect();
    }
    let listen = match a.api_listen.as_str() {
        "off" | "none" => None,
        addr => Some(
            addr.parse::<std::net::SocketAddr>()
                .with_context(|| format!("--api-listen {addr:?}: expected IP:PORT or off"))?,
        ),
    };
    let stop = Stop::new();
    {
        let (stop, out) = (stop.clone(), out.clone());
        std::thread::spawn(move || {
            let mut seen = 0;
            while let Ok(sig) = signals.wait() {
                seen += 1;
                if seen == 1 {
                    out.line(&format!("{sig}: tearing the mesh down… (again to stop without draining)"));
                    stop.request();
                } else {
                    out.line(&format!("{sig}: tearing the mesh down now, without draining"));
                    stop.hurry();
                }
            }
        });
    }
    let api = listen.map(|listen| {
        let format = super::serve::rule_format(&a.backend);
        super::serve::spawn_for_mesh(&a.state_dir, listen, format, stop.clone(), out.clone())
    });
    let progress = out.clone();
    let result = meshpass_mesh::run(cfg, stop.clone(), Box::new(move |line: &str| progress.line(line)));
    // The supervisor can also stop on its own (an error, or a Shutdown request): stop the API too.
    stop.request();
    if let Some(api) = api {
        // It stops within a few seconds (open connections get two); never wait on it for long.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !api.is_finished() && std::time::Instant::now() < deadline && !stop.hurried() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    result.map_err(|e| anyhow::anyhow!(e.report()))?;
    Ok(ExitCode::SUCCESS)
}

/// `meshpass down`.
pub(crate) fn down(a: DownArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = meshpass_mesh::supervisor::require_root() {
        eprintln!("error: {}", e.report());
        return Ok(ExitCode::from(1));
    }
    let lines = meshpass_mesh::down(&a.dir.state_dir)?;
    // The teardown is done: a reader that went away (`meshpass down | head -1`) must not turn
    // it into a panic, so write errors are ignored.
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "mesh down (manifests kept in {})", a.dir.state_dir.display());
    Ok(ExitCode::SUCCESS)
}

fn table(rows: Vec<Vec<String>>) {
    let widths: Vec<usize> =
        (0..rows.first().map_or(0, Vec::len)).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// `meshpass get workloads|pods|svc`.
pub(crate) fn get(a: GetArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&a.dir.state_dir)?;
    let ns = a.namespace.as_deref();
    let json = a.output == "json";
    if !json && a.output != "table" {
        bail!("-o {}: expected table or json", a.output);
    }
    match a.what.as_str() {
        "workloads" | "workload" | "deployments" | "deploy" => {
            let w = client.workloads(ns)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&w)?);
            } else {
                let mut rows = vec![["NAMESPACE", "NAME", "KIND", "MESHED", "READY", "PENDING-RESTART"]
                    .map(String::from)
                    .to_vec()];
                rows.extend(w.into_iter().map(|w| {
                    vec![
                        w.namespace,
                        w.name,
                        w.kind,
                        w.meshed.to_string(),
                        format!("{}/{}", w.ready, w.total),
                        w.pending_restart.to_string(),
                    ]
                }));
                table(rows);
            }
        }
        "pods" | "pod" | "po" => {
            let p = client.pods(ns)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                let mut rows = vec![["NAMESPACE", "NAME", "READY", "RESTARTS", "IP", "MESHED", "NETNS"]
                    .map(String::from)
                    .to_vec()];
                rows.extend(p.into_iter().map(|p| {
                    vec![
                        p.namespace,
                        p.name,
                        p.ready.to_string(),
                        p.restarts.to_string(),
                        p.ip,
                        p.meshed.to_string(),
                        p.netns,
                    ]
                }));
                table(rows);
            }
        }
        "svc" | "services" | "service" => {
            let s = client.services(ns)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                let mut rows = vec![["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "ENDPOINTS"]
                    .map(String::from)
                    .to_vec()];
                rows.extend(s.into_iter().map(|s| {
                    let ports: Vec<String> = s.ports.iter().map(|(p, t)| format!("{p}->{t}/TCP")).collect();
                    let eps = if s.endpoints.is_empty() { "<none>".to_string() } else { s.endpoints.join(",") };
                    vec![s.namespace, s.name, "ClusterIP".into(), s.cluster_ip, ports.join(","), eps]
                }));
                table(rows);
            }
        }
        "peerauthentications" | "peerauthentication" | "pa" | "destinationrules" | "destinationrule" | "dr" => {
            let kind = if a.what.starts_with('p') { "PeerAuthentication" } else { "DestinationRule" };
            let items = client.policies(Some(kind), ns)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
                    )?
                );
            } else {
                let mut rows = vec![["NAMESPACE", "NAME", "MODE"].map(String::from).to_vec()];
                rows.extend(items.iter().map(|o| {
                    let mode = if kind == "PeerAuthentication" {
                        o["spec"]["mtls"]["mode"].as_str().unwrap_or("UNSET").to_string()
                    } else {
                        let p = &o["spec"]["trafficPolicy"];
                        let mut modes: Vec<String> =
                            p["tls"]["mode"].as_str().map(str::to_string).into_iter().collect();
                        for pl in p["portLevelSettings"].as_array().into_iter().flatten() {
                            if let Some(m) = pl["tls"]["mode"].as_str() {
                                modes.push(format!("{}:{m}", pl["port"]["number"]));
                            }
                        }
                        if modes.is_empty() {
                            "-".into()
                        } else {
                            modes.join(",")
                        }
                    };
                    vec![
                        o["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
                        o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                        mode,
                    ]
                }));
                table(rows);
            }
        }
        other => bail!("cannot get `{other}`: expected workloads, pods, svc, peerauthentications or destinationrules"),
    }
    Ok(ExitCode::SUCCESS)
}

fn read_manifest(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `meshpass apply -f FILE [--live]`.
pub(crate) fn apply(a: ApplyArgs) -> anyhow::Result<ExitCode> {
    let yaml = read_manifest(&a.file)?;
    match Client::connect(&a.dir.state_dir)?.apply(&yaml, a.live) {
        Ok(lines) => {
            lines.iter().for_each(|l| println!("{l}"));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {}", e.report());
            Ok(ExitCode::from(super::EXIT_INVALID))
        }
    }
}

/// `meshpass delete -f FILE`.
pub(crate) fn delete(a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let yaml = read_manifest(&a.file)?;
    for l in Client::connect(&a.dir.state_dir)?.delete(&yaml)? {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `meshpass rollout restart deployment/NAME`.
pub(crate) fn rollout(a: RolloutArgs) -> anyhow::Result<ExitCode> {
    if a.action != "restart" {
        bail!("rollout {}: only `restart` is supported", a.action);
    }
    let name = a
        .target
        .strip_prefix("deployment/")
        .or_else(|| a.target.strip_prefix("deployments/"))
        .or_else(|| a.target.strip_prefix("deploy/"))
        .with_context(|| format!("`{}`: expected deployment/NAME", a.target))?;
    let client = Client::connect(&a.dir.state_dir)?;
    client.rollout_restart(&a.namespace, name, &mut |p| println!("{p}"))?;
    Ok(ExitCode::SUCCESS)
}

fn deployment_name(target: &str) -> anyhow::Result<&str> {
    target
        .strip_prefix("deployment/")
        .or_else(|| target.strip_prefix("deployments/"))
        .or_else(|| target.strip_prefix("deploy/"))
        .with_context(|| format!("`{target}`: expected deployment/NAME"))
}

/// `meshpass annotate deployment/NAME KEY=VALUE… KEY-…`: changes the pod template's
/// annotations (the traffic passthrough settings); invalid values are refused, all at once.
pub(crate) fn annotate(a: AnnotateArgs) -> anyhow::Result<ExitCode> {
    let name = deployment_name(&a.target)?;
    let mut set = std::collections::BTreeMap::new();
    let mut remove = Vec::new();
    for c in &a.changes {
        if let Some((k, v)) = c.split_once('=') {
            set.insert(k.to_string(), v.to_string());
        } else if let Some(k) = c.strip_suffix('-') {
            remove.push(k.to_string());
        } else {
            bail!("`{c}`: expected KEY=VALUE or KEY-");
        }
    }
    let client = Client::connect(&a.dir.state_dir)?;
    match client.annotate(&a.namespace, name, set, remove, a.live) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(meshpass_mesh::MeshError::Invalid(errors)) => {
            eprintln!("error: {} invalid value(s); nothing was changed", errors.len());
            for e in errors {
                eprintln!("  {e}");
            }
            Ok(ExitCode::from(super::EXIT_INVALID))
        }
        Err(e) => Err(e.into()),
    }
}

/// `meshpass exec (--node | POD) -- CMD…`: runs CMD in that network namespace, exit code
/// propagated. In a pod it runs as the app's UID so the sidecar captures its traffic.
pub(crate) fn exec(a: ExecArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&a.dir.state_dir)?;
    let (netns, uid) = if a.node {
        (client.node_netns()?, None)
    } else {
        let want = a.pod.as_deref().context("name a pod, or --node")?;
        let pods = client.pods(Some(&a.namespace))?;
        let matches: Vec<_> = match pods.iter().find(|p| p.name == want) {
            Some(p) => vec![p],
            None => pods.iter().filter(|p| p.name.starts_with(want)).collect(),
        };
        match matches.as_slice() {
            [p] => (p.netns.clone(), Some(a.uid)),
            [] => bail!("pod {want} not found in namespace {}", a.namespace),
            _ => bail!("`{want}` matches {} pods in namespace {}; be more specific", matches.len(), a.namespace),
        }
    };
    let (program, args) = a.command.split_first().context("no command")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid).env("HOME", "/tmp");
    }
    let status =
        meshpass_mesh::effect::net::in_netns(&meshpass_mesh::effect::net::netns_path(&netns), move || cmd.status())?
            .with_context(|| format!("cannot run {program}"))?;
    Ok(ExitCode::from(status.code().map_or(128 + 9, |c| c.clamp(0, 255)) as u8))
}

/// `meshpass logs POD [-c app|sidecar]`.
pub(crate) fn logs(a: LogsArgs) -> anyhow::Result<ExitCode> {
    let dir = a.dir.state_dir.join("logs").join(&a.namespace);
    let mut pods: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("no logs for namespace {} in {}", a.namespace, dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    pods.sort();
    let pod = if pods.contains(&a.pod) {
        a.pod.clone()
    } else {
        let m: Vec<&String> = pods.iter().filter(|p| p.starts_with(&a.pod)).collect();
        match m.as_slice() {
            [p] => (*p).clone(),
            [] => bail!("no logs for pod {} in namespace {}", a.pod, a.namespace),
            _ => bail!("`{}` matches {} pods; be more specific", a.pod, m.len()),
        }
    };
    let pod_dir = dir.join(&pod);
    let file = match a.container.as_str() {
        "sidecar" | "istio-proxy" => pod_dir.join("istio-proxy.log"),
        "app" => {
            let mut apps: Vec<PathBuf> = std::fs::read_dir(&pod_dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|f| f != "istio-proxy.log"))
                .collect();
            apps.sort();
            apps.into_iter().next().context("the pod has no app log yet")?
        }
        name => pod_dir.join(format!("{name}.log")),
    };
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `meshpass sample helloworld|http|sleep`.
pub(crate) fn sample(a: SampleArgs) -> anyhow::Result<ExitCode> {
    let app = match a.app.as_str() {
        "helloworld" => SampleApp::Helloworld { version: a.version },
        "http" => SampleApp::Http { server: a.server },
        "sleep" => meshpass_mesh::sample::sleep_forever(),
        other => bail!("unknown sample `{other}`: expected helloworld, http or sleep"),
    };
    meshpass_mesh::sample::serve(app, a.port)?;
    Ok(ExitCode::SUCCESS)
}
