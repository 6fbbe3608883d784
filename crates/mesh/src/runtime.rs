//! The supervisor (`meshpass up`): owns the node and pod namespaces, the processes, the
//! services table and the control socket, and reconciles them with the saved manifests.
//!
//! One mutex guards the in-memory world; the reconcile loop (every 200 ms) restarts crashed
//! containers with exponential back-off, keeps replica counts, probes readiness (outside the
//! lock) and rewrites the services' DNAT table atomically whenever the set of ready endpoints
//! changes. Pods are torn down outside the lock (SIGTERM, drain, SIGKILL, namespace removed),
//! so a draining pod never stalls the mesh.

use crate::control::{PodStatus, Reply, Request, ServiceStatus, WorkloadStatus, SOCKET};
use crate::ipam::{Cidr, Ipam};
use crate::manifest::{self, ContainerSpec, DeploymentSpec, NamespaceSpec, Object};
use crate::net::{self, ServiceNat};
use crate::process::{self, ProcSpec};
use crate::state::{key, NetState, State, StoredService};
use crate::stop::Stop;
use crate::{Client, MeshError};
use meshpass_capture::linux::{self as capture_linux, Backend, Netns, NetnsRunner};
use meshpass_capture::{compile, CaptureConfig, InjectorValues, Plan};
use meshpass_settings::Settings;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Default prefix of every network namespace the mesh creates; nothing else is ever touched.
pub const DEFAULT_NETNS_PREFIX: &str = "mpm-";
/// The sidecar's UID and GID (the capture rules exempt its traffic).
pub const PROXY_UID: u32 = 1337;
/// The sidecar container's name, as Istio calls it.
pub const SIDECAR_NAME: &str = "istio-proxy";
/// The supervisor's pidfile in the state directory.
pub const SUPERVISOR_PIDFILE: &str = "supervisor.pid";

const SAMPLE: [&str; 3] = [
    include_str!("../../../examples/sample/helloworld.yaml"),
    include_str!("../../../examples/sample/sleep.yaml"),
    include_str!("../../../examples/sample/external.yaml"),
];

/// How the supervisor runs.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// State directory (state.json, control.sock, logs, pidfiles).
    pub state_dir: PathBuf,
    /// Prefix of the mesh's network namespaces (`mpm-`); lets tests run meshes side by side.
    pub netns_prefix: String,
    /// Pod addresses (the first host address is the node's gateway).
    pub pod_cidr: Cidr,
    /// ClusterIPs.
    pub service_cidr: Cidr,
    /// Backend for the pods' capture rules.
    pub backend: Backend,
    /// Install the sample on first start.
    pub sample: bool,
    /// The meshpass binary: `meshpass` in a container command means this program.
    pub meshpass_exe: PathBuf,
    /// The sidecar command line (default `<meshpass_exe> proxy`).
    pub sidecar_argv: Vec<String>,
    /// UID/GID of application containers.
    pub app_uid: u32,
    /// How long a terminating pod may drain before SIGKILL.
    pub drain: Duration,
    /// Excluded inbound ports skip conntrack too
    /// ([`meshpass_capture::CaptureConfig::untrack_excluded_inbound`]).
    pub untrack_excluded_inbound: bool,
    /// Capture with eBPF programs instead of netfilter rules ([`meshpass_capture::ebpf`]): the
    /// same settings, and passthrough traffic meets no per-packet hook. Sidecars then run in
    /// `EBPF` interception mode with `CAP_NET_ADMIN` and `CAP_BPF`.
    pub ebpf_capture: bool,
}

impl MeshConfig {
    /// Defaults for `state_dir`, with the running executable as the meshpass binary.
    pub fn new(state_dir: &Path) -> Self {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("meshpass"));
        MeshConfig {
            state_dir: state_dir.to_path_buf(),
            netns_prefix: DEFAULT_NETNS_PREFIX.to_string(),
            pod_cidr: Cidr { addr: Ipv4Addr::new(198, 18, 0, 0), len: 16 },
            service_cidr: Cidr { addr: Ipv4Addr::new(198, 19, 0, 0), len: 16 },
            backend: Backend::Nftables,
            sample: true,
            sidecar_argv: vec![exe.to_string_lossy().into_owned(), "proxy".to_string()],
            meshpass_exe: exe,
            app_uid: 1000,
            drain: Duration::from_secs(5),
            untrack_excluded_inbound: false,
            ebpf_capture: false,
        }
    }

    /// The mesh-wide values every pod's rules are compiled with.
    pub fn injector_values(&self) -> InjectorValues {
        mesh_injector_values(self.untrack_excluded_inbound)
    }

    fn validate(&self) -> Result<(), MeshError> {
        let p = &self.netns_prefix;
        let ok = p.len() >= 3
            && p.len() <= 16
            && p.ends_with('-')
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let mut errors = Vec::new();
        if !ok {
            errors.push(format!("netns prefix `{p}` must be 3-16 of [a-z0-9-] ending in '-'"));
        }
        if self.ebpf_capture && self.untrack_excluded_inbound {
            errors.push(
                "--ebpf-capture and --untrack-excluded-inbound exclude each other: eBPF capture tracks nothing".into(),
            );
        }
        if self.pod_cidr.overlaps(self.service_cidr) {
            errors.push(format!("pod CIDR {} overlaps service CIDR {}", self.pod_cidr, self.service_cidr));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(MeshError::Invalid(errors))
        }
    }

    fn node_netns(&self) -> String {
        format!("{}node", self.netns_prefix)
    }

    fn gateway(&self) -> Ipv4Addr {
        self.pod_cidr.nth(1)
    }
}

/// Fails unless the process can create namespaces (effective UID 0).
pub fn require_root() -> Result<(), MeshError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(MeshError::NotRoot("run it as root (sudo meshpass …)".into()))
    }
}

struct Container {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    uid: u32,
    sidecar: bool,
    ports: Vec<u16>,
    child: Option<Child>,
    restarts: u32,
    backoff: Duration,
    next_start: Instant,
    started: Instant,
    log: PathBuf,
    pidfile: PathBuf,
}

struct Pod {
    namespace: String,
    name: String,
    workload: String,
    hash: String,
    labels: BTreeMap<String, String>,
    ip: Ipv4Addr,
    netns: String,
    meshed: bool,
    ready: bool,
    terminating: bool,
    containers: Vec<Container>,
}

struct Inner {
    state: State,
    pods: BTreeMap<String, Pod>,
    pod_ipam: Ipam,
    svc_ipam: Ipam,
    services_applied: Option<Vec<ServiceNat>>,
    services_error: Option<String>,
    veth_seq: u64,
    rolling: BTreeSet<String>,
    failing: BTreeMap<String, Instant>,
}

/// The running mesh.
pub struct Mesh {
    cfg: MeshConfig,
    inner: Mutex<Inner>,
    stop: Stop,
    stopped: AtomicBool,
    connections: AtomicUsize,
    progress: Box<dyn Fn(&str) + Send + Sync>,
}

/// The mesh-wide values of a mesh started with (or without) `--untrack-excluded-inbound`:
/// Istio's defaults otherwise. The supervisor and the management plane's backend (which
/// reads the flag back from state.json) both take them from here.
pub fn mesh_injector_values(untrack_excluded_inbound: bool) -> InjectorValues {
    InjectorValues { untrack_excluded_inbound, ..InjectorValues::default() }
}

/// Parses and validates a pod template's capture annotations, with the mesh-wide `values`,
/// into the rules to install
/// (`None`: interception mode NONE, no rules). Errors are every bad item, one line each.
pub fn capture_plan(
    annotations: &BTreeMap<String, String>,
    values: &InjectorValues,
) -> Result<Option<Plan>, Vec<String>> {
    Ok(capture_config(annotations, values)?.map(|c| compile(&c)))
}

/// The capture configuration of a pod's annotations (`None`: interception mode `NONE`).
pub fn capture_config(
    annotations: &BTreeMap<String, String>,
    values: &InjectorValues,
) -> Result<Option<CaptureConfig>, Vec<String>> {
    let s = Settings::from_annotations(annotations)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok(CaptureConfig::from_settings(&s, values))
}

/// The eBPF programs of a pod's annotations for the namespace with `cookie` (`None`: no
/// capture). Errors name the settings eBPF capture cannot honour.
pub fn ebpf_plan(
    annotations: &BTreeMap<String, String>,
    values: &InjectorValues,
    cookie: u64,
) -> Result<Option<meshpass_capture::ebpf::EbpfPlan>, Vec<String>> {
    let Some(cfg) = capture_config(annotations, values)? else { return Ok(None) };
    meshpass_capture::ebpf::compile_ebpf(&cfg, cookie).map(Some).map_err(|e| vec![e.to_string()])
}

/// The sidecar's command line under eBPF capture: started as root through `setpriv`, which
/// drops to UID/GID 1337 keeping only the two capabilities it needs, as a sidecar container
/// with `capabilities: add: [NET_ADMIN, BPF]`.
fn ebpf_sidecar_argv(argv: &[String]) -> Vec<String> {
    let mut v: Vec<String> = [
        "setpriv",
        "--reuid=1337",
        "--regid=1337",
        "--clear-groups",
        "--inh-caps=+net_admin,+bpf",
        "--ambient-caps=+net_admin,+bpf",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(argv.iter().cloned());
    v
}

fn random_suffix() -> String {
    // RandomState is seeded from the OS; Kubernetes' alphabet avoids vowels and look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let mut n = h.finish();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn probe_http(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.") && head.get(9..12) == Some("200")
}

impl Mesh {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock must not take the whole mesh down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn say(&self, msg: &str) {
        (self.progress)(msg);
    }

    fn meshed_for(&self, inner: &Inner, d: &DeploymentSpec) -> bool {
        inner.state.namespaces.get(&d.namespace).is_some_and(NamespaceSpec::meshed) && !d.template.opted_out()
    }

    fn resolve(&self, argv: &[String]) -> Vec<String> {
        let mut argv = argv.to_vec();
        if argv.first().map(String::as_str) == Some("meshpass") {
            argv[0] = self.cfg.meshpass_exe.to_string_lossy().into_owned();
        }
        argv
    }

    /// Whether a meshed pod's annotations compile for this mesh's capture (rules, or eBPF
    /// programs, which refuse a few more settings).
    fn check_capture(&self, annotations: &BTreeMap<String, String>) -> Result<(), Vec<String>> {
        let values = self.cfg.injector_values();
        if self.cfg.ebpf_capture {
            // The cookie only filters sockets; any value checks the settings.
            ebpf_plan(annotations, &values, 0).map(drop)
        } else {
            capture_plan(annotations, &values).map(drop)
        }
    }

    /// Installs (or swaps) eBPF capture for a pod's annotations in its namespace; without
    /// capture (interception mode `NONE`) removes it.
    fn apply_ebpf(&self, annotations: &BTreeMap<String, String>, netns: &str, pod: &str) -> Result<(), MeshError> {
        use meshpass_capture::linux::ebpf;
        let ns = Netns::Named(netns.to_string());
        let runner = NetnsRunner::new(ns.clone());
        let capture = |source| MeshError::Capture { pod: pod.to_string(), source };
        let cookie = ebpf::netns_cookie(&ns).map_err(capture)?;
        match ebpf_plan(annotations, &self.cfg.injector_values(), cookie).map_err(MeshError::Invalid)? {
            Some(plan) => {
                let cgroup = ebpf::cgroup2_root().map_err(capture)?;
                ebpf::apply(&plan, &ns, &cgroup, &runner).map_err(capture)
            }
            None => ebpf::remove(&ns, &runner).map_err(capture),
        }
    }

    /// Creates one pod of `dep` (namespace, veth, rules, containers started). Returns its key.
    fn create_pod(&self, inner: &mut Inner, dep: &DeploymentSpec) -> Result<String, MeshError> {
        let meshed = self.meshed_for(inner, dep);
        let plan = if meshed && !self.cfg.ebpf_capture {
            capture_plan(&dep.template.annotations, &self.cfg.injector_values()).map_err(MeshError::Invalid)?
        } else {
            None
        };
        let hash = dep.template.hash();
        let name = format!("{}-{}-{}", dep.name, hash, random_suffix());
        let netns = format!("{}{}-{}", self.cfg.netns_prefix, dep.namespace, name);
        let ip = inner.pod_ipam.allocate()?;
        inner.veth_seq += 1;
        let veth = format!("mpv{}", inner.veth_seq);
        if let Err(e) = net::create_pod(&self.cfg.node_netns(), &netns, &veth, ip, self.cfg.gateway()) {
            inner.pod_ipam.release(ip);
            return Err(e);
        }
        if let Some(plan) = &plan {
            let runner = NetnsRunner::new(Netns::Named(netns.clone()));
            if let Err(source) = capture_linux::apply(plan, self.cfg.backend, &runner) {
                let _ = net::netns_del(&netns);
                inner.pod_ipam.release(ip);
                return Err(MeshError::Capture { pod: format!("{}/{name}", dep.namespace), source });
            }
        }
        if meshed && self.cfg.ebpf_capture {
            if let Err(e) = self.apply_ebpf(&dep.template.annotations, &netns, &format!("{}/{name}", dep.namespace)) {
                let _ = net::netns_del(&netns);
                inner.pod_ipam.release(ip);
                return Err(e);
            }
        }
        let logs = self.cfg.state_dir.join("logs").join(&dep.namespace).join(&name);
        let pids = self.cfg.state_dir.join("pids");
        let base_env = vec![
            ("POD_NAME".to_string(), name.clone()),
            ("POD_NAMESPACE".to_string(), dep.namespace.clone()),
            ("POD_IP".to_string(), ip.to_string()),
        ];
        let now = Instant::now();
        let container =
            |c: &ContainerSpec, argv: Vec<String>, env: Vec<(String, String)>, uid: u32, sidecar: bool| Container {
                name: c.name.clone(),
                argv,
                env,
                uid,
                sidecar,
                ports: c.ports.clone(),
                child: None,
                restarts: 0,
                backoff: Duration::from_secs(1),
                next_start: now,
                started: now,
                log: logs.join(format!("{}.log", c.name)),
                pidfile: pids.join(format!("{netns}.{}.pid", c.name)),
            };
        let mut containers: Vec<Container> = dep
            .template
            .containers
            .iter()
            .map(|c| {
                let mut env = base_env.clone();
                env.extend(c.env.iter().cloned());
                container(c, self.resolve(&c.argv), env, self.cfg.app_uid, false)
            })
            .collect();
        if meshed {
            let services: Vec<String> = inner
                .state
                .services
                .values()
                .filter(|s| s.spec.namespace == dep.namespace && s.spec.selects(&dep.template.labels))
                .flat_map(|s| {
                    s.spec.ports.iter().map(move |p| {
                        format!("{}.{}.svc.cluster.local:{}/{}", s.spec.name, s.spec.namespace, p.port, p.target_port)
                    })
                })
                .collect();
            let mut env = base_env;
            env.push(("MESHPASS_PROXY_SERVICES".to_string(), services.join(",")));
            let spec = ContainerSpec { name: SIDECAR_NAME.to_string(), argv: vec![], env: vec![], ports: vec![] };
            if self.cfg.ebpf_capture {
                env.push(("MESHPASS_PROXY_INTERCEPTION_MODE".to_string(), "EBPF".to_string()));
                let argv = ebpf_sidecar_argv(&self.cfg.sidecar_argv);
                containers.push(container(&spec, argv, env, 0, true));
            } else {
                if let Some(mode) = dep.template.annotations.get("sidecar.istio.io/interceptionMode") {
                    env.push(("MESHPASS_PROXY_INTERCEPTION_MODE".to_string(), mode.clone()));
                }
                containers.push(container(&spec, self.cfg.sidecar_argv.clone(), env, PROXY_UID, true));
            }
        }
        let key = key(&dep.namespace, &name);
        let mut pod = Pod {
            namespace: dep.namespace.clone(),
            name,
            workload: dep.name.clone(),
            hash,
            labels: dep.template.labels.clone(),
            ip,
            netns,
            meshed,
            ready: false,
            terminating: false,
            containers,
        };
        self.start_due(&mut pod);
        self.say(&format!("pod {key} created ({ip}{})", if meshed { ", sidecar injected" } else { "" }));
        inner.pods.insert(key.clone(), pod);
        Ok(key)
    }

    /// Reaps exited containers and starts those whose back-off has passed.
    fn start_due(&self, pod: &mut Pod) {
        let now = Instant::now();
        for c in &mut pod.containers {
            if let Some(child) = &mut c.child {
                let Ok(Some(status)) = child.try_wait() else { continue };
                c.child = None;
                c.restarts += 1;
                if c.started.elapsed() > Duration::from_secs(30) {
                    c.backoff = Duration::from_secs(1);
                }
                c.next_start = now + c.backoff;
                let note =
                    format!("[meshpass] container {} exited ({status}); restarting in {:?}\n", c.name, c.backoff);
                let _ = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&c.log)
                    .and_then(|mut f| f.write_all(note.as_bytes()));
                self.say(&format!(
                    "pod {}/{}: {}",
                    pod.namespace,
                    pod.name,
                    note.trim_start_matches("[meshpass] ").trim()
                ));
                c.backoff = (c.backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            if pod.terminating || now < c.next_start {
                continue;
            }
            let spec = ProcSpec {
                argv: c.argv.clone(),
                env: c.env.clone(),
                uid: c.uid,
                gid: c.uid,
                log: c.log.clone(),
                netns: net::netns_path(&pod.netns),
            };
            c.started = now;
            match process::spawn(&spec) {
                Ok(child) => {
                    if let Ok(pid) = i32::try_from(child.id()) {
                        let _ = process::write_pidfile(&c.pidfile, pid);
                    }
                    c.child = Some(child);
                }
                Err(e) => {
                    c.restarts += 1;
                    c.next_start = now + c.backoff;
                    c.backoff = (c.backoff * 2).min(Duration::from_secs(30));
                    self.say(&format!("pod {}/{}: cannot start {}: {}", pod.namespace, pod.name, c.name, e.report()));
                }
            }
        }
    }

    /// Stops a pod that is already out of the endpoints: SIGTERM, drain, SIGKILL, any other
    /// process in its namespace killed, namespace removed, address returned.
    fn teardown(self: &Arc<Self>, mut pod: Pod) {
        let grace = self.cfg.drain;
        std::thread::scope(|s| {
            for c in &mut pod.containers {
                if let Some(child) = c.child.as_mut() {
                    s.spawn(move || process::terminate(child, grace, &self.stop));
                }
            }
        });
        process::kill_pids(&net::netns_pids(&pod.netns), Duration::from_millis(500), &self.stop);
        if pod.meshed && self.cfg.ebpf_capture {
            let ns = Netns::Named(pod.netns.clone());
            if let Err(e) = meshpass_capture::linux::ebpf::remove(&ns, &NetnsRunner::new(ns.clone())) {
                self.say(&format!("pod {}/{}: removing eBPF capture: {e}", pod.namespace, pod.name));
            }
        }
        if let Err(e) = net::netns_del(&pod.netns) {
            self.say(&format!("pod {}/{}: {}", pod.namespace, pod.name, e.report()));
        }
        for c in &pod.containers {
            let _ = std::fs::remove_file(&c.pidfile);
        }
        self.lock().pod_ipam.release(pod.ip);
        self.say(&format!("pod {}/{} terminated", pod.namespace, pod.name));
    }

    fn teardown_in_background(self: &Arc<Self>, pods: Vec<Pod>) {
        for pod in pods {
            let me = Arc::clone(self);
            std::thread::spawn(move || me.teardown(pod));
        }
    }

    /// Rewrites the services table if the ready endpoints changed.
    fn sync_services(&self, inner: &mut Inner) {
        let list: Vec<ServiceNat> = inner
            .state
            .services
            .values()
            .map(|s| {
                let mut endpoints: Vec<Ipv4Addr> = inner
                    .pods
                    .values()
                    .filter(|p| {
                        p.ready && !p.terminating && p.namespace == s.spec.namespace && s.spec.selects(&p.labels)
                    })
                    .map(|p| p.ip)
                    .collect();
                endpoints.sort();
                ServiceNat {
                    cluster_ip: s.cluster_ip,
                    ports: s.spec.ports.iter().map(|p| (p.port, p.target_port)).collect(),
                    endpoints,
                }
            })
            .collect();
        if inner.services_applied.as_ref() == Some(&list) {
            return;
        }
        match net::apply_services(&self.cfg.node_netns(), &list) {
            Ok(()) => {
                inner.services_applied = Some(list);
                inner.services_error = None;
            }
            Err(e) => {
                // Retried every pass; reported once per distinct failure.
                let msg = format!("services table: {}", e.report());
                if inner.services_error.as_deref() != Some(msg.as_str()) {
                    self.say(&msg);
                    inner.services_error = Some(msg);
                }
            }
        }
    }

    /// One pass of the control loop.
    fn reconcile(self: &Arc<Self>) {
        let mut inner = self.lock();
        let mut pods: Vec<String> = inner.pods.keys().cloned().collect();
        for k in &pods {
            if let Some(mut pod) = inner.pods.remove(k) {
                self.start_due(&mut pod);
                inner.pods.insert(k.clone(), pod);
            }
        }
        // Pods of deleted deployments go; replica counts are kept (except mid-rollout).
        let mut doomed: Vec<String> = inner
            .pods
            .iter()
            .filter(|(_, p)| !inner.state.deployments.contains_key(&key(&p.namespace, &p.workload)))
            .map(|(k, _)| k.clone())
            .collect();
        let deployments: Vec<DeploymentSpec> = inner.state.deployments.values().cloned().collect();
        for d in &deployments {
            let dk = key(&d.namespace, &d.name);
            if inner.rolling.contains(&dk) {
                continue;
            }
            let mut mine: Vec<(bool, String)> = inner
                .pods
                .iter()
                .filter(|(_, p)| p.namespace == d.namespace && p.workload == d.name && !p.terminating)
                .map(|(k, p)| (p.hash == d.template.hash(), k.clone()))
                .collect();
            let have = mine.len() as u32;
            if have > d.replicas {
                // Scale down the pods of older templates first.
                mine.sort();
                doomed.extend(mine.into_iter().take((have - d.replicas) as usize).map(|(_, k)| k));
            }
            if have < d.replicas {
                if inner.failing.get(&dk).is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
                    continue;
                }
                for _ in have..d.replicas {
                    if let Err(e) = self.create_pod(&mut inner, d) {
                        self.say(&format!("deployment {dk}: cannot create a pod: {}", e.report()));
                        inner.failing.insert(dk.clone(), Instant::now());
                        break;
                    }
                }
            }
        }
        let mut gone = Vec::new();
        for k in doomed {
            if let Some(mut p) = inner.pods.remove(&k) {
                p.terminating = true;
                gone.push(p);
            }
        }
        self.sync_services(&mut inner);
        // Readiness is probed without the lock: a slow pod must not stall the mesh.
        let probes: Vec<(String, String, bool, Vec<u16>, bool)> = inner
            .pods
            .iter()
            .filter(|(_, p)| !p.terminating)
            .map(|(k, p)| {
                let running = p.containers.iter().all(|c| c.child.is_some());
                let settled = p.containers.iter().all(|c| c.started.elapsed() > Duration::from_millis(300));
                let ports = p.containers.iter().filter(|c| !c.sidecar).flat_map(|c| c.ports.clone()).collect();
                (k.clone(), p.netns.clone(), p.meshed, ports, running && settled)
            })
            .collect();
        drop(inner);
        self.teardown_in_background(gone);
        let results: Vec<(String, bool)> = probes
            .into_iter()
            .map(|(k, netns, meshed, ports, running)| {
                let ok = running
                    && net::in_netns(&net::netns_path(&netns), || {
                        let local = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
                        (!meshed || probe_http(local(15021), "/healthz/ready"))
                            && ports
                                .iter()
                                .all(|&p| TcpStream::connect_timeout(&local(p), Duration::from_millis(300)).is_ok())
                    })
                    .unwrap_or(false);
                (k, ok)
            })
            .collect();
        let mut inner = self.lock();
        for (k, ok) in results {
            if let Some(p) = inner.pods.get_mut(&k) {
                if ok && !p.ready {
                    self.say(&format!("pod {k} ready"));
                }
                p.ready = ok;
            }
        }
        self.sync_services(&mut inner);
        pods.clear();
    }

    fn apply(self: &Arc<Self>, yaml: &str, live: bool) -> Result<Vec<String>, MeshError> {
        let objects = manifest::parse(yaml)?;
        let mut inner = self.lock();
        let mut namespaces = inner.state.namespaces.clone();
        for o in &objects {
            if let Object::Namespace(n) = o {
                namespaces.insert(n.name.clone(), n.clone());
            }
        }
        let mut errors = Vec::new();
        for o in &objects {
            let ns = match o {
                Object::Namespace(_) => continue,
                Object::Deployment(d) => &d.namespace,
                Object::Service(s) => &s.namespace,
            };
            if !namespaces.contains_key(ns) && ns != "default" {
                errors.push(format!(
                    "{}: namespace `{ns}` not found (apply its Namespace first or in the same file)",
                    o.describe()
                ));
                continue;
            }
            if let Object::Deployment(d) = o {
                let meshed = namespaces.get(ns).is_some_and(NamespaceSpec::meshed) && !d.template.opted_out();
                if meshed {
                    if let Err(errs) = self.check_capture(&d.template.annotations) {
                        errors.extend(errs.into_iter().map(|e| format!("{}: {e}", o.describe())));
                    }
                }
                if live {
                    errors.extend(self.live_untrack_change(&inner, d).map(|e| format!("{}: {e}", o.describe())));
                }
            }
        }
        if !errors.is_empty() {
            return Err(MeshError::Invalid(errors));
        }
        inner
            .state
            .namespaces
            .entry("default".to_string())
            .or_insert_with(|| NamespaceSpec { name: "default".to_string(), labels: BTreeMap::new() });
        let mut out = Vec::new();
        for o in objects {
            let what = o.describe();
            let verdict = match o {
                Object::Namespace(n) => match inner.state.namespaces.insert(n.name.clone(), n.clone()) {
                    Some(old) if old == n => "unchanged".to_string(),
                    Some(_) => "configured".to_string(),
                    None => "created".to_string(),
                },
                Object::Service(s) => {
                    let k = key(&s.namespace, &s.name);
                    match inner.state.services.get(&k).cloned() {
                        Some(old) if old.spec == s => "unchanged".to_string(),
                        Some(old) => {
                            inner.state.services.insert(k, StoredService { spec: s, cluster_ip: old.cluster_ip });
                            "configured".to_string()
                        }
                        None => {
                            let cluster_ip = inner.svc_ipam.allocate()?;
                            inner.state.services.insert(k, StoredService { spec: s, cluster_ip });
                            format!("created (ClusterIP {cluster_ip})")
                        }
                    }
                }
                Object::Deployment(d) => self.apply_deployment(&mut inner, d, live)?,
            };
            out.push(format!("{what} {verdict}"));
        }
        inner.state.save(&self.cfg.state_dir)?;
        drop(inner);
        self.reconcile();
        Ok(out)
    }

    /// Changes a Deployment's pod-template annotations: the same validation and the same
    /// outcome (pending restart, or live re-apply) as applying the edited manifest.
    fn annotate(
        self: &Arc<Self>,
        ns: &str,
        name: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        live: bool,
        expect_version: Option<&str>,
    ) -> Result<Vec<String>, MeshError> {
        let mut inner = self.lock();
        let Some(mut d) = inner.state.deployments.get(&key(ns, name)).cloned() else {
            return Err(MeshError::WorkloadNotFound { namespace: ns.to_string(), name: name.to_string() });
        };
        let actual = inner.state.version(ns, name);
        if let Some(expected) = expect_version.filter(|e| *e != actual) {
            return Err(MeshError::Conflict { workload: key(ns, name), expected: expected.to_string(), actual });
        }
        for k in &remove {
            d.template.annotations.remove(k);
        }
        d.template.annotations.extend(set);
        let meshed = inner.state.namespaces.get(ns).is_some_and(NamespaceSpec::meshed) && !d.template.opted_out();
        if meshed {
            if let Err(errs) = self.check_capture(&d.template.annotations) {
                return Err(MeshError::Invalid(
                    errs.into_iter().map(|e| format!("deployment {ns}/{name}: {e}")).collect(),
                ));
            }
        }
        if live {
            if let Some(e) = self.live_untrack_change(&inner, &d) {
                return Err(MeshError::Invalid(vec![format!("deployment {ns}/{name}: {e}")]));
            }
        }
        let verdict = self.apply_deployment(&mut inner, d, live)?;
        inner.state.save(&self.cfg.state_dir)?;
        drop(inner);
        self.reconcile();
        Ok(vec![format!("deployment.apps/{name} -n {ns} {verdict}")])
    }

    /// Why re-applying `d`'s rules live would break open connections, if it would: with
    /// untracked exclusions, a port that starts or stops being untracked changes under its
    /// open connections (the tracked ones lose their NAT, the untracked ones are picked up
    /// mid-stream and redirected), so they would be reset. A restart has no such window.
    fn live_untrack_change(&self, inner: &Inner, d: &DeploymentSpec) -> Option<String> {
        let old = inner.state.deployments.get(&key(&d.namespace, &d.name))?;
        if !self.cfg.untrack_excluded_inbound || !old.template.differs_only_in_capture(&d.template) {
            return None;
        }
        let values = self.cfg.injector_values();
        let untracked = |a: &BTreeMap<String, String>| -> Vec<meshpass_capture::ir::Op> {
            let plan = capture_plan(a, &values).ok().flatten();
            plan.map(|p| {
                p.ops.into_iter().filter(|op| op.rule.target == meshpass_capture::ir::Target::NoTrack).collect()
            })
            .unwrap_or_default()
        };
        (untracked(&old.template.annotations) != untracked(&d.template.annotations)).then(|| {
            "the mesh untracks excluded inbound ports (--untrack-excluded-inbound), so changing them \
             live would reset the connections open to those ports; apply without --live and restart"
                .to_string()
        })
    }

    fn apply_deployment(&self, inner: &mut Inner, d: DeploymentSpec, live: bool) -> Result<String, MeshError> {
        let k = key(&d.namespace, &d.name);
        let Some(old) = inner.state.deployments.get(&k).cloned() else {
            inner.state.put_deployment(d);
            return Ok("created".to_string());
        };
        if old == d {
            return Ok("unchanged".to_string());
        }
        let (old_hash, new_hash) = (old.template.hash(), d.template.hash());
        if old_hash == new_hash {
            let n = d.replicas;
            inner.state.put_deployment(d);
            return Ok(format!("configured (scaled to {n})"));
        }
        let pods: Vec<String> = inner
            .pods
            .iter()
            .filter(|(_, p)| p.namespace == d.namespace && p.workload == d.name && !p.terminating)
            .map(|(k, _)| k.clone())
            .collect();
        if live && old.template.differs_only_in_capture(&d.template) {
            let plan = if self.cfg.ebpf_capture {
                None
            } else {
                capture_plan(&d.template.annotations, &self.cfg.injector_values()).map_err(MeshError::Invalid)?
            };
            let mut done = 0;
            for pk in &pods {
                let Some(p) = inner.pods.get_mut(pk) else { continue };
                if !p.meshed {
                    continue;
                }
                if self.cfg.ebpf_capture {
                    // The programs behind the pod's links are swapped in one step.
                    self.apply_ebpf(&d.template.annotations, &p.netns, pk)?;
                    p.hash = new_hash.clone();
                    done += 1;
                    continue;
                }
                let runner = NetnsRunner::new(Netns::Named(p.netns.clone()));
                let result = match &plan {
                    Some(plan) => capture_linux::apply(plan, self.cfg.backend, &runner).map(|_| ()),
                    None => capture_linux::cleanup(self.cfg.backend, false, &runner),
                };
                result.map_err(|source| MeshError::Capture { pod: pk.clone(), source })?;
                p.hash = new_hash.clone();
                done += 1;
            }
            inner.state.put_deployment(d);
            return Ok(format!("configured (capture rules re-applied live in {done} pod(s), no restart)"));
        }
        let (ns, name) = (d.namespace.clone(), d.name.clone());
        inner.state.put_deployment(d);
        Ok(format!(
            "configured ({} pod(s) pending restart: meshpass rollout restart deployment/{name} -n {ns})",
            pods.len()
        ))
    }

    fn delete(self: &Arc<Self>, yaml: &str) -> Result<Vec<String>, MeshError> {
        let objects = manifest::parse(yaml)?;
        let mut inner = self.lock();
        let mut out = Vec::new();
        for o in objects {
            let what = o.describe();
            let found = match &o {
                Object::Deployment(d) => {
                    inner.state.versions.remove(&key(&d.namespace, &d.name));
                    inner.state.deployments.remove(&key(&d.namespace, &d.name)).is_some()
                }
                Object::Service(s) => match inner.state.services.remove(&key(&s.namespace, &s.name)) {
                    Some(old) => {
                        inner.svc_ipam.release(old.cluster_ip);
                        true
                    }
                    None => false,
                },
                Object::Namespace(n) if n.name == "default" => {
                    out.push(format!("{what} kept (the default namespace cannot be deleted)"));
                    continue;
                }
                Object::Namespace(n) => {
                    let prefix = format!("{}/", n.name);
                    inner.state.deployments.retain(|k, _| !k.starts_with(&prefix));
                    let services: Vec<String> =
                        inner.state.services.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
                    for s in services {
                        if let Some(old) = inner.state.services.remove(&s) {
                            inner.svc_ipam.release(old.cluster_ip);
                        }
                    }
                    inner.state.namespaces.remove(&n.name).is_some()
                }
            };
            out.push(format!("{what} {}", if found { "deleted" } else { "not found" }));
        }
        inner.state.save(&self.cfg.state_dir)?;
        drop(inner);
        self.reconcile();
        Ok(out)
    }

    fn rollout(self: &Arc<Self>, ns: &str, name: &str, progress: &mut dyn FnMut(&str)) -> Result<(), MeshError> {
        let dk = key(ns, name);
        let not_found = || MeshError::WorkloadNotFound { namespace: ns.to_string(), name: name.to_string() };
        // A restart asked for while another one runs (a second click, a second operator) joins
        // it: it waits for it, and only rolls again if the template changed in the meantime.
        let wait_deadline = Instant::now() + Duration::from_secs(180);
        let mut joined = false;
        let (old, new) = loop {
            let mut inner = self.lock();
            let dep = inner.state.deployments.get(&dk).cloned().ok_or_else(not_found)?;
            if inner.rolling.contains(&dk) {
                drop(inner);
                if !joined {
                    progress(&format!("a rollout of deployment {dk} is already in progress; waiting for it"));
                    joined = true;
                }
                if Instant::now() > wait_deadline || self.stop.requested() {
                    return Err(MeshError::Timeout(format!("the rollout of deployment {dk} in progress did not end")));
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let hash = dep.template.hash();
            let current = |p: &Pod| p.namespace == ns && p.workload == name && !p.terminating;
            if joined && inner.pods.values().filter(|p| current(p)).all(|p| p.hash == hash) {
                drop(inner);
                progress(&format!(
                    "deployment {dk} successfully rolled out (by the rollout that was in progress; its pods run the \
                     current template)"
                ));
                return Ok(());
            }
            inner.rolling.insert(dk.clone());
            let old: Vec<String> = inner.pods.iter().filter(|(_, p)| current(p)).map(|(k, _)| k.clone()).collect();
            let mut new = Vec::new();
            for _ in 0..dep.replicas {
                match self.create_pod(&mut inner, &dep) {
                    Ok(k) => {
                        progress(&format!("pod {k} created from the current template"));
                        new.push(k);
                    }
                    Err(e) => {
                        let pods: Vec<Pod> = new.iter().filter_map(|k| inner.pods.remove(k)).collect();
                        inner.rolling.remove(&dk);
                        drop(inner);
                        self.teardown_in_background(pods);
                        return Err(e);
                    }
                }
            }
            break (old, new);
        };
        // New pods must be ready before any old one leaves the endpoints.
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut announced = BTreeSet::new();
        loop {
            let ready: Vec<String> = {
                let inner = self.lock();
                new.iter().filter(|k| inner.pods.get(*k).is_some_and(|p| p.ready)).cloned().collect()
            };
            for k in &ready {
                if announced.insert(k.clone()) {
                    progress(&format!("pod {k} ready"));
                }
            }
            if ready.len() == new.len() {
                break;
            }
            if Instant::now() > deadline || self.stop.requested() {
                let pods: Vec<Pod> = {
                    let mut inner = self.lock();
                    inner.rolling.remove(&dk);
                    new.iter().filter_map(|k| inner.pods.remove(k)).collect()
                };
                self.teardown_in_background(pods);
                return Err(MeshError::Timeout(format!(
                    "new pods of deployment {dk} did not become ready; the old pods keep serving (see meshpass logs)"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // One atomic table swap moves the endpoints from the old pods to the new ones.
        let old_pods: Vec<Pod> = {
            let mut inner = self.lock();
            for k in &old {
                if let Some(p) = inner.pods.get_mut(k) {
                    p.terminating = true;
                }
            }
            self.sync_services(&mut inner);
            // `rolling` stays set until the old pods are gone, so a restart asked for meanwhile
            // joins this one rather than rolling pods that just started.
            old.iter().filter_map(|k| inner.pods.remove(k)).collect()
        };
        progress(&format!("endpoints switched to the new pods of deployment {dk}"));
        // Let connections already DNATed to the old pods arrive before they stop accepting.
        std::thread::sleep(Duration::from_secs(1));
        for p in &old_pods {
            progress(&format!(
                "pod {}/{} terminating (SIGTERM, drain up to {:?})",
                p.namespace, p.name, self.cfg.drain
            ));
        }
        let names: Vec<String> = old_pods.iter().map(|p| key(&p.namespace, &p.name)).collect();
        std::thread::scope(|s| {
            for p in old_pods {
                s.spawn(move || self.teardown(p));
            }
        });
        self.lock().rolling.remove(&dk);
        for n in names {
            progress(&format!("pod {n} terminated"));
        }
        progress(&format!("deployment {dk} successfully rolled out"));
        Ok(())
    }

    fn workloads(&self, ns: Option<&str>) -> Vec<WorkloadStatus> {
        let inner = self.lock();
        inner
            .state
            .deployments
            .values()
            .filter(|d| ns.is_none_or(|n| n == d.namespace))
            .map(|d| {
                let meshed = self.meshed_for(&inner, d);
                let hash = d.template.hash();
                let services = inner
                    .state
                    .services
                    .values()
                    .filter(|s| s.spec.namespace == d.namespace && s.spec.selects(&d.template.labels))
                    .map(|s| s.spec.name.clone())
                    .collect();
                let pods: Vec<&Pod> = inner
                    .pods
                    .values()
                    .filter(|p| p.namespace == d.namespace && p.workload == d.name && !p.terminating)
                    .collect();
                WorkloadStatus {
                    namespace: d.namespace.clone(),
                    name: d.name.clone(),
                    kind: "Deployment".to_string(),
                    meshed,
                    ready: pods.iter().filter(|p| p.ready).count() as u32,
                    total: d.replicas,
                    pending_restart: pods.iter().any(|p| p.hash != hash || p.meshed != meshed),
                    annotations: d.template.annotations.clone(),
                    injected: pods.iter().filter(|p| p.meshed).count() as u32,
                    services,
                    resource_version: inner.state.version(&d.namespace, &d.name),
                }
            })
            .collect()
    }

    fn pods(&self, ns: Option<&str>) -> Vec<PodStatus> {
        let inner = self.lock();
        inner
            .pods
            .values()
            .filter(|p| ns.is_none_or(|n| n == p.namespace))
            .map(|p| PodStatus {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                workload: p.workload.clone(),
                ip: p.ip.to_string(),
                netns: p.netns.clone(),
                ready: p.ready,
                meshed: p.meshed,
                restarts: p.containers.iter().map(|c| c.restarts).sum(),
            })
            .collect()
    }

    fn services(&self, ns: Option<&str>) -> Vec<ServiceStatus> {
        let inner = self.lock();
        let applied = inner.services_applied.clone().unwrap_or_default();
        inner
            .state
            .services
            .values()
            .filter(|s| ns.is_none_or(|n| n == s.spec.namespace))
            .map(|s| {
                let eps = applied
                    .iter()
                    .find(|a| a.cluster_ip == s.cluster_ip)
                    .map(|a| a.endpoints.clone())
                    .unwrap_or_default();
                let target = s.spec.ports.first().map(|p| p.target_port).unwrap_or(0);
                ServiceStatus {
                    namespace: s.spec.namespace.clone(),
                    name: s.spec.name.clone(),
                    cluster_ip: s.cluster_ip.to_string(),
                    ports: s.spec.ports.iter().map(|p| (p.port, p.target_port)).collect(),
                    endpoints: eps.iter().map(|ip| format!("{ip}:{target}")).collect(),
                }
            })
            .collect()
    }

    fn handle(self: &Arc<Self>, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let Ok(mut writer) = stream.try_clone() else { return };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            return;
        }
        let mut send = |r: &Reply| {
            let mut text = serde_json::to_string(r).unwrap_or_else(|_| "{\"error\":\"unserializable reply\"}".into());
            text.push('\n');
            let _ = writer.write_all(text.as_bytes());
        };
        let to_value = |r: Result<serde_json::Value, MeshError>| match r {
            Ok(v) => Reply::Ok(v),
            Err(MeshError::Invalid(v)) => Reply::Invalid(v),
            Err(MeshError::WorkloadNotFound { namespace, name }) => Reply::WorkloadNotFound { namespace, name },
            Err(MeshError::NotFound(what)) => Reply::NotFound(what),
            Err(MeshError::Conflict { workload, expected, actual }) => Reply::Conflict { workload, expected, actual },
            Err(e) => Reply::Error(e.report()),
        };
        let json = |v: Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| MeshError::protocol("encoding the answer")(e.into()))
        };
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => return send(&Reply::Error(format!("bad request: {e}"))),
        };
        let reply = match req {
            Request::Workloads { namespace } => {
                to_value(json(serde_json::to_value(self.workloads(namespace.as_deref()))))
            }
            Request::Pods { namespace } => to_value(json(serde_json::to_value(self.pods(namespace.as_deref())))),
            Request::Services { namespace } => {
                to_value(json(serde_json::to_value(self.services(namespace.as_deref()))))
            }
            Request::NodeNetns => Reply::Ok(serde_json::Value::String(self.cfg.node_netns())),
            Request::Apply { yaml, live } => {
                to_value(self.apply(&yaml, live).and_then(|v| json(serde_json::to_value(v))))
            }
            Request::Delete { yaml } => to_value(self.delete(&yaml).and_then(|v| json(serde_json::to_value(v)))),
            Request::RolloutRestart { namespace, name } => {
                let mut progress = |p: &str| send(&Reply::Progress(p.to_string()));
                let r = self.rollout(&namespace, &name, &mut progress);
                to_value(r.map(|()| serde_json::Value::Null))
            }
            Request::Annotate { namespace, name, set, remove, live, expect_version } => to_value(
                self.annotate(&namespace, &name, set, remove, live, expect_version.as_deref())
                    .and_then(|v| json(serde_json::to_value(v))),
            ),
            Request::Shutdown => {
                self.stop.request();
                while !self.stopped.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Reply::Ok(serde_json::Value::Null)
            }
        };
        send(&reply);
    }

    fn serve(self: &Arc<Self>, listener: UnixListener) {
        if listener.set_nonblocking(true).is_err() {
            return;
        }
        while !self.stop.requested() {
            match listener.accept() {
                Ok((stream, _)) => {
                    let me = Arc::clone(self);
                    me.connections.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || {
                        me.handle(stream);
                        me.connections.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Runs the mesh in the foreground until `stop` is requested (by a signal handler, or by a
/// `Shutdown` request on the control socket), then tears everything down — also after an
/// error or a panic of the supervisor's loop. `progress` receives human-readable lines ("pod
/// default/helloworld-… ready"); it must not block or panic (see [`crate::output::Output`]).
pub fn run(cfg: MeshConfig, stop: Stop, progress: Box<dyn Fn(&str) + Send + Sync>) -> Result<(), MeshError> {
    require_root()?;
    cfg.validate()?;
    let dir = cfg.state_dir.clone();
    std::fs::create_dir_all(&dir).map_err(MeshError::io("cannot create state directory", &dir))?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    if Client::connect(&dir).is_ok() {
        return Err(MeshError::Remote(format!("a mesh supervisor is already running for {}", dir.display())));
    }
    let mut state = State::load(&dir)?.unwrap_or_default();
    // Whatever a crashed supervisor left behind goes first (with the prefix it used).
    let mut prefixes = vec![cfg.netns_prefix.clone()];
    if let Some(old) = &state.net {
        if old.netns_prefix != cfg.netns_prefix {
            prefixes.push(old.netns_prefix.clone());
        }
    }
    for p in &prefixes {
        for line in sweep(&dir, p)? {
            progress(&format!("cleaning up a previous run: {line}"));
        }
    }
    state.net = Some(NetState {
        netns_prefix: cfg.netns_prefix.clone(),
        pod_cidr: cfg.pod_cidr.to_string(),
        service_cidr: cfg.service_cidr.to_string(),
        backend: cfg.backend.to_string(),
        untrack_excluded_inbound: cfg.untrack_excluded_inbound,
        ebpf_capture: cfg.ebpf_capture,
    });
    let mut svc_ipam = Ipam::new(cfg.service_cidr, 0);
    let mut lost = Vec::new();
    for (k, s) in &state.services {
        if !svc_ipam.reserve(s.cluster_ip) {
            lost.push(k.clone());
        }
    }
    for k in lost {
        // The service block changed since the last run: give the service a new address.
        if let Some(s) = state.services.get_mut(&k) {
            s.cluster_ip = svc_ipam.allocate()?;
        }
    }
    let install_sample = cfg.sample && !state.sample_installed;
    // Saved before anything is created, so that `meshpass down` after a crash knows the prefix.
    state.save(&dir)?;
    let node = cfg.node_netns();
    progress(&format!("creating node namespace {node} (gateway {}, services {})", cfg.gateway(), cfg.service_cidr));
    if let Err(e) = net::create_node(&node, cfg.gateway(), &cfg.service_cidr.to_string()) {
        let _ = net::netns_del(&node);
        return Err(e);
    }
    let mesh = Arc::new(Mesh {
        inner: Mutex::new(Inner {
            state,
            pods: BTreeMap::new(),
            pod_ipam: Ipam::new(cfg.pod_cidr, 1),
            svc_ipam,
            services_applied: None,
            services_error: None,
            veth_seq: 0,
            rolling: BTreeSet::new(),
            failing: BTreeMap::new(),
        }),
        cfg,
        stop,
        stopped: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        progress,
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve_until_shutdown(&mesh, install_sample)))
        .unwrap_or_else(|_| Err(MeshError::Remote("the supervisor's loop panicked; the mesh was torn down".into())));
    // Teardown happens whatever went wrong above.
    mesh.stop.request();
    let pods: Vec<Pod> = std::mem::take(&mut mesh.lock().pods).into_values().collect();
    mesh.say(&format!("stopping {} pod(s)", pods.len()));
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::thread::scope(|s| {
            for p in pods {
                let m = &mesh;
                s.spawn(move || m.teardown(p));
            }
        })
    }));
    // Whatever the pods' teardown missed (a pod still being created, a rollout's old pods).
    match sweep_with(&dir, &mesh.cfg.netns_prefix, &mesh.stop) {
        Ok(lines) => lines.iter().for_each(|l| mesh.say(l)),
        Err(e) => mesh.say(&format!("cleaning up: {}", e.report())),
    }
    let _ = std::fs::remove_file(dir.join(SOCKET));
    let _ = std::fs::remove_file(dir.join(SUPERVISOR_PIDFILE));
    mesh.say("mesh stopped; manifests kept in the state directory");
    mesh.stopped.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(2);
    while mesh.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    result
}

fn serve_until_shutdown(mesh: &Arc<Mesh>, install_sample: bool) -> Result<(), MeshError> {
    let dir = mesh.cfg.state_dir.clone();
    process::write_pidfile(&dir.join(SUPERVISOR_PIDFILE), std::process::id() as i32)?;
    if install_sample {
        mesh.say("installing the sample (helloworld, sleep, external)");
        for yaml in SAMPLE {
            for line in mesh.apply(yaml, false)? {
                mesh.say(&line);
            }
        }
        let mut inner = mesh.lock();
        inner.state.sample_installed = true;
        inner.state.save(&dir)?;
    }
    let sock = dir.join(SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(MeshError::io("cannot listen on", &sock))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(MeshError::io("cannot chmod", &sock))?;
    let server = {
        let me = Arc::clone(mesh);
        std::thread::spawn(move || me.serve(listener))
    };
    mesh.say(&format!("control socket {} ready", sock.display()));
    while !mesh.stop.requested() {
        mesh.reconcile();
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = server.join();
    Ok(())
}

/// Removes what a mesh with `prefix` left behind in the machine: processes recorded in the
/// pidfiles or living in its namespaces, then the namespaces. Only names starting with
/// `prefix` are touched. Returns what was removed.
pub fn sweep(state_dir: &Path, prefix: &str) -> Result<Vec<String>, MeshError> {
    sweep_with(state_dir, prefix, &Stop::new())
}

/// [`sweep`], its waits cut short once `stop` is hurried.
fn sweep_with(state_dir: &Path, prefix: &str, stop: &Stop) -> Result<Vec<String>, MeshError> {
    if prefix.len() < 3 {
        return Err(MeshError::Invalid(vec![format!("refusing to sweep with the short prefix `{prefix}`")]));
    }
    let mut out = Vec::new();
    let mut pids = Vec::new();
    let pid_dir = state_dir.join("pids");
    if let Ok(entries) = std::fs::read_dir(&pid_dir) {
        for e in entries.flatten() {
            if let Some(pid) = process::live_pid(&e.path()) {
                pids.push(pid);
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
    let namespaces = net::list_netns(prefix);
    for ns in &namespaces {
        pids.extend(net::netns_pids(ns));
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&p| p != std::process::id() as i32);
    if !pids.is_empty() {
        process::kill_pids(&pids, Duration::from_secs(2), stop);
        out.push(format!("killed {} process(es)", pids.len()));
    }
    for ns in namespaces {
        // Pins would outlive the namespace (until the next eBPF apply sweeps them).
        let n = Netns::Named(ns.clone());
        if meshpass_capture::linux::ebpf::is_installed(&n).unwrap_or(false) {
            let _ = meshpass_capture::linux::ebpf::remove(&n, &NetnsRunner::new(n.clone()));
        }
        net::netns_del(&ns)?;
        out.push(format!("removed network namespace {ns}"));
    }
    Ok(out)
}

/// `meshpass down`: stops a running supervisor (which tears everything down), or — after a
/// crash or `kill -9` — kills the supervisor's leftovers and removes every namespace with the
/// mesh's prefix. Keeps state.json, so the next `up` restores the mesh.
pub fn down(state_dir: &Path) -> Result<Vec<String>, MeshError> {
    require_root()?;
    let mut out = Vec::new();
    if let Ok(client) = Client::connect(state_dir) {
        match client.shutdown() {
            Ok(()) => out.push("supervisor stopped the mesh".to_string()),
            Err(e) => out.push(format!("supervisor did not stop cleanly: {e}")),
        }
    }
    if let Some(pid) = process::live_pid(&state_dir.join(SUPERVISOR_PIDFILE)) {
        process::kill_pids(&[pid], Duration::from_secs(5), &Stop::new());
        out.push(format!("killed supervisor {pid}"));
    }
    let prefix = State::load(state_dir)?
        .and_then(|s| s.net.map(|n| n.netns_prefix))
        .unwrap_or_else(|| DEFAULT_NETNS_PREFIX.to_string());
    out.extend(sweep(state_dir, &prefix)?);
    let _ = std::fs::remove_file(state_dir.join(SOCKET));
    let _ = std::fs::remove_file(state_dir.join(SUPERVISOR_PIDFILE));
    Ok(out)
}
