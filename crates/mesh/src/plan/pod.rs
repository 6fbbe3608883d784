//! A pod, as it will be made from its Deployment's template: its name and namespace, whether
//! it is meshed and how it is captured, and every container's command line, user and
//! environment — the sidecar's built in one place ([`sidecar_env`]) from the pod and the
//! Services that select it. Pure: [`crate::effect::pod`] makes what is described here.

use super::capture::{self, Capture};
use super::world::{PodKey, WorkloadKey};
use crate::config::{MeshConfig, PROXY_UID, SIDECAR_NAME};
use crate::manifest::{ContainerSpec, DeploymentSpec, NamespaceSpec, ServiceSpec};
use crate::state::State;
use crate::MeshError;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// How one container is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRun {
    /// Container name (`istio-proxy` for the sidecar).
    pub name: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment on top of a minimal PATH/HOME.
    pub env: Vec<(String, String)>,
    /// UID and GID.
    pub uid: u32,
    /// True for the sidecar.
    pub sidecar: bool,
    /// Declared ports (readiness connects to the app's).
    pub ports: Vec<u16>,
    /// Its log file (stdout and stderr, appended).
    pub log: PathBuf,
    /// Its pidfile (PID and start time), so that `meshpass down` finds it after a crash.
    pub pidfile: PathBuf,
}

/// A pod to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blueprint {
    /// `namespace/name` (`<deployment>-<template hash>-<suffix>`).
    pub key: PodKey,
    /// Its Deployment.
    pub workload: WorkloadKey,
    /// Its template's hash.
    pub hash: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its network namespace (`<prefix><namespace>-<name>`).
    pub netns: String,
    /// Whether it gets a sidecar.
    pub meshed: bool,
    /// Its capture.
    pub capture: Capture,
    /// The stamp of its capture ([`capture::stamp`]).
    pub stamp: String,
    /// Its containers, the sidecar last.
    pub containers: Vec<ContainerRun>,
}

/// Whether pods of `dep` get a sidecar: their namespace is labelled for injection and the
/// template does not opt out.
pub fn meshed(namespaces: &BTreeMap<String, NamespaceSpec>, dep: &DeploymentSpec) -> bool {
    namespaces.get(&dep.namespace).is_some_and(NamespaceSpec::meshed) && !dep.template.opted_out()
}

/// The Services of `dep`'s namespace that select its pods.
pub fn services_of<'a>(state: &'a State, dep: &'a DeploymentSpec) -> impl Iterator<Item = &'a ServiceSpec> + 'a {
    state
        .services
        .values()
        .map(|s| &s.spec)
        .filter(move |s| s.namespace == dep.namespace && s.selects(&dep.template.labels))
}

/// `argv` with a leading `meshpass` meaning the running meshpass binary.
pub fn resolve_argv(cfg: &MeshConfig, argv: &[String]) -> Vec<String> {
    let mut argv = argv.to_vec();
    if argv.first().map(String::as_str) == Some("meshpass") {
        argv[0] = cfg.meshpass_exe.to_string_lossy().into_owned();
    }
    argv
}

/// What every container of a pod is told about the pod (Kubernetes' downward API, as the
/// sample and Istio's injector pass it).
fn pod_env(key: &PodKey, ip: Ipv4Addr) -> Vec<(String, String)> {
    vec![
        ("POD_NAME".to_string(), key.name().to_string()),
        ("POD_NAMESPACE".to_string(), key.namespace().to_string()),
        ("POD_IP".to_string(), ip.to_string()),
    ]
}

/// The sidecar's environment: the pod, the Services that select it
/// (`MESHPASS_PROXY_SERVICES`, `name.namespace.svc.cluster.local:port/targetPort`, which the
/// sidecar names its inbound clusters after), the port protocols from the Services' port
/// names and `appProtocol` (`MESHPASS_PROXY_INBOUND_PORTS` by target port from the Services
/// that select it, `MESHPASS_PROXY_OUTBOUND_PORTS` by Service port from all Services, as
/// Istio's per-port listeners) and its interception mode.
pub fn sidecar_env<'a>(
    cfg: &MeshConfig,
    key: &PodKey,
    ip: Ipv4Addr,
    services: impl IntoIterator<Item = &'a ServiceSpec>,
    all_services: impl IntoIterator<Item = &'a ServiceSpec>,
    annotations: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env = pod_env(key, ip);
    let services: Vec<&ServiceSpec> = services.into_iter().collect();
    let inbound = port_protocols(services.iter().flat_map(|s| s.ports.iter().map(|p| (p.target_port, p))));
    let outbound = port_protocols(all_services.into_iter().flat_map(|s| s.ports.iter().map(|p| (p.port, p))));
    let services: Vec<String> = services
        .into_iter()
        .flat_map(|s| {
            s.ports
                .iter()
                .map(move |p| format!("{}.{}.svc.cluster.local:{}/{}", s.name, s.namespace, p.port, p.target_port))
        })
        .collect();
    env.push(("MESHPASS_PROXY_SERVICES".to_string(), services.join(",")));
    env.push(("MESHPASS_PROXY_INBOUND_PORTS".to_string(), inbound));
    env.push(("MESHPASS_PROXY_OUTBOUND_PORTS".to_string(), outbound));
    if cfg.ebpf_capture {
        env.push(("MESHPASS_PROXY_INTERCEPTION_MODE".to_string(), "EBPF".to_string()));
    } else if let Some(mode) = annotations.get("sidecar.istio.io/interceptionMode") {
        env.push(("MESHPASS_PROXY_INTERCEPTION_MODE".to_string(), mode.clone()));
    }
    env
}

/// `PORT=NAME[/APPPROTOCOL],...` for the sidecar. A port two Services declare differently
/// is left out, so the sidecar sniffs it (Istio resolves such a conflict by sniffing too).
fn port_protocols<'a>(ports: impl IntoIterator<Item = (u16, &'a crate::manifest::ServicePort)>) -> String {
    let mut by_port: BTreeMap<u16, Option<String>> = BTreeMap::new();
    for (port, p) in ports {
        let Some(spec) = p.protocol_spec() else { continue };
        by_port
            .entry(port)
            .and_modify(|e| {
                if e.as_deref() != Some(spec.as_str()) {
                    *e = None;
                }
            })
            .or_insert(Some(spec));
    }
    by_port.into_iter().filter_map(|(port, spec)| Some(format!("{port}={}", spec?))).collect::<Vec<_>>().join(",")
}

/// The sidecar's command line under eBPF capture: started as root through `setpriv`, which
/// drops to UID/GID 1337 keeping only the two capabilities it needs, as a sidecar container
/// with `capabilities: add: [NET_ADMIN, BPF]`.
pub fn ebpf_sidecar_argv(argv: &[String]) -> Vec<String> {
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

/// The pod of `dep` named with `suffix` at address `ip`. Fails (every setting named) when a
/// meshed pod's capture annotations cannot be honoured.
pub fn blueprint(
    cfg: &MeshConfig,
    state: &State,
    dep: &DeploymentSpec,
    suffix: &str,
    ip: Ipv4Addr,
) -> Result<Blueprint, MeshError> {
    let meshed = meshed(&state.namespaces, dep);
    let defaults = &state.mesh_defaults;
    let capture = capture::decide(meshed, &dep.template.annotations, cfg, defaults).map_err(MeshError::Invalid)?;
    let stamp = capture::stamp(meshed, &dep.template.annotations, cfg, defaults);
    let hash = dep.template.hash();
    let name = format!("{}-{}-{}", dep.name, hash, suffix);
    let key = PodKey::new(&dep.namespace, &name);
    let netns = format!("{}{}-{}", cfg.netns_prefix, dep.namespace, name);
    let logs = cfg.state_dir.join("logs").join(&dep.namespace).join(&name);
    let pids = cfg.state_dir.join("pids");
    let run =
        |c: &ContainerSpec, argv: Vec<String>, env: Vec<(String, String)>, uid: u32, sidecar: bool| ContainerRun {
            name: c.name.clone(),
            argv,
            env,
            uid,
            sidecar,
            ports: c.ports.clone(),
            log: logs.join(format!("{}.log", c.name)),
            pidfile: pids.join(format!("{netns}.{}.pid", c.name)),
        };
    let mut containers: Vec<ContainerRun> = dep
        .template
        .containers
        .iter()
        .map(|c| {
            let mut env = pod_env(&key, ip);
            env.extend(c.env.iter().cloned());
            run(c, resolve_argv(cfg, &c.argv), env, cfg.app_uid, false)
        })
        .collect();
    if meshed {
        let all = state.services.values().map(|s| &s.spec);
        let mut env = sidecar_env(cfg, &key, ip, services_of(state, dep), all, &dep.template.annotations);
        env.extend(super::mtls::sidecar_env(cfg, &netns));
        let spec = ContainerSpec { name: SIDECAR_NAME.to_string(), argv: vec![], env: vec![], ports: vec![] };
        containers.push(if cfg.ebpf_capture {
            // Root through setpriv, which keeps only NET_ADMIN and BPF.
            run(&spec, ebpf_sidecar_argv(&cfg.sidecar_argv), env, 0, true)
        } else {
            run(&spec, cfg.sidecar_argv.clone(), env, PROXY_UID, true)
        });
    }
    Ok(Blueprint {
        key,
        workload: WorkloadKey::new(&dep.namespace, &dep.name),
        hash,
        labels: dep.template.labels.clone(),
        ip,
        netns,
        meshed,
        capture,
        stamp,
        containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{cfg, deployment, meshed_state, service};

    fn env<'a>(c: &'a ContainerRun, k: &str) -> Option<&'a str> {
        c.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_meshed_pod_gets_the_sidecar_last_with_the_services_that_select_it() {
        let c = cfg();
        let mut state = meshed_state();
        let dep = deployment("default", "hello", 1);
        service(&mut state, "default", "hello", &[(80, 5000), (81, 5001)]);
        service(&mut state, "other", "hello", &[(80, 5000)]);
        let b = blueprint(&c, &state, &dep, "x2x4z", Ipv4Addr::new(198, 18, 0, 7)).expect("blueprint");
        assert!(b.key.name().starts_with("hello-") && b.key.name().ends_with("-x2x4z"), "{}", b.key);
        assert_eq!(b.netns, format!("mpm-default-{}", b.key.name()));
        assert!(b.meshed && matches!(b.capture, Capture::Rules(_)));
        let [app, sidecar] = b.containers.as_slice() else { panic!("app and sidecar: {:?}", b.containers) };
        assert_eq!((app.uid, app.sidecar, sidecar.uid, sidecar.sidecar), (1000, false, 1337, true));
        assert_eq!(app.argv[0], c.meshpass_exe.to_string_lossy(), "`meshpass` means this binary");
        assert_eq!(env(app, "POD_IP"), Some("198.18.0.7"));
        assert_eq!(env(app, "GREETING"), Some("hi"), "the container's own env follows the pod's");
        assert_eq!(
            env(sidecar, "MESHPASS_PROXY_SERVICES"),
            Some("hello.default.svc.cluster.local:80/5000,hello.default.svc.cluster.local:81/5001"),
            "only the Services of its namespace that select it"
        );
        assert_eq!(env(sidecar, "MESHPASS_PROXY_INTERCEPTION_MODE"), None);
        assert!(sidecar.log.ends_with(format!("logs/default/{}/istio-proxy.log", b.key.name())));
        assert!(sidecar.pidfile.ends_with(format!("pids/{}.istio-proxy.pid", b.netns)));
    }

    #[test]
    fn the_sidecar_learns_port_protocols_from_port_names_and_app_protocol() {
        let c = cfg();
        let mut state = meshed_state();
        let dep = deployment("default", "hello", 1);
        service(&mut state, "default", "hello", &[(80, 5000), (81, 5001), (82, 5002)]);
        service(&mut state, "default", "db", &[(3306, 3306), (82, 82)]);
        let set = |state: &mut State, svc: &str, i: usize, name: Option<&str>, app: Option<&str>| {
            let p = &mut state.services.get_mut(&crate::state::key("default", svc)).unwrap().spec.ports[i];
            p.name = name.map(Into::into);
            p.app_protocol = app.map(Into::into);
        };
        set(&mut state, "hello", 0, Some("http-web"), None);
        set(&mut state, "hello", 1, Some("web"), Some("grpc"));
        set(&mut state, "db", 0, Some("mysql"), None);
        // Port 82: http in one Service, tcp in another: left to sniffing.
        set(&mut state, "hello", 2, Some("http"), None);
        set(&mut state, "db", 1, Some("tcp"), None);
        let b = blueprint(&c, &state, &dep, "x2x4z", Ipv4Addr::new(198, 18, 0, 7)).expect("blueprint");
        let sidecar = b.containers.last().unwrap();
        assert_eq!(env(sidecar, "MESHPASS_PROXY_INBOUND_PORTS"), Some("5000=http-web,5001=web/grpc,5002=http"));
        assert_eq!(env(sidecar, "MESHPASS_PROXY_OUTBOUND_PORTS"), Some("80=http-web,81=web/grpc,3306=mysql"));
    }

    #[test]
    fn unmeshed_and_opted_out_pods_have_no_sidecar_and_no_capture() {
        let c = cfg();
        let mut state = meshed_state();
        let mut dep = deployment("plain", "app", 1);
        let b = blueprint(&c, &state, &dep, "aaaaa", Ipv4Addr::new(198, 18, 0, 8)).expect("blueprint");
        assert!(!b.meshed && b.capture == Capture::None && b.containers.len() == 1);
        dep.namespace = "default".into();
        dep.template.annotations.insert("sidecar.istio.io/inject".into(), "false".into());
        let b = blueprint(&c, &state, &dep, "aaaaa", Ipv4Addr::new(198, 18, 0, 8)).expect("blueprint");
        assert!(!b.meshed && b.containers.len() == 1);
        state.namespaces.clear();
        assert!(!meshed(&state.namespaces, &deployment("default", "x", 1)), "no namespace object, no injection");
    }

    #[test]
    fn the_sidecar_runs_in_the_templates_interception_mode_or_ebpf() {
        let mut c = cfg();
        let state = meshed_state();
        let mut dep = deployment("default", "hello", 1);
        dep.template.annotations.insert("sidecar.istio.io/interceptionMode".into(), "TPROXY".into());
        let b = blueprint(&c, &state, &dep, "aaaaa", Ipv4Addr::new(198, 18, 0, 9)).expect("blueprint");
        assert_eq!(env(&b.containers[1], "MESHPASS_PROXY_INTERCEPTION_MODE"), Some("TPROXY"));
        c.ebpf_capture = true;
        dep.template.annotations.clear();
        let b = blueprint(&c, &state, &dep, "aaaaa", Ipv4Addr::new(198, 18, 0, 9)).expect("blueprint");
        let sidecar = &b.containers[1];
        assert_eq!(env(sidecar, "MESHPASS_PROXY_INTERCEPTION_MODE"), Some("EBPF"));
        assert_eq!((sidecar.uid, sidecar.argv[0].as_str()), (0, "setpriv"), "root, dropped by setpriv");
        assert!(sidecar.argv.contains(&"--ambient-caps=+net_admin,+bpf".to_string()));
        assert!(matches!(b.capture, Capture::Ebpf(_)));
    }

    #[test]
    fn bad_capture_annotations_make_no_pod() {
        let state = meshed_state();
        let mut dep = deployment("default", "hello", 1);
        dep.template.annotations.insert("traffic.sidecar.istio.io/excludeInboundPorts".into(), "abc".into());
        let err = blueprint(&cfg(), &state, &dep, "aaaaa", Ipv4Addr::new(198, 18, 0, 9)).expect_err("invalid");
        assert!(matches!(err, MeshError::Invalid(ref v) if v.iter().any(|e| e.contains("abc"))), "{err}");
    }
}
