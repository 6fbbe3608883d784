//! Kubernetes manifests → the mesh's own object model.
//!
//! Real Kubernetes YAML (multi-document) is parsed into k8s-openapi types, so what runs here
//! runs on a cluster; then it is validated and lowered to the small subset the local mesh
//! honours (Namespace, Deployment, Service, and Istio's PeerAuthentication and
//! DestinationRule, validated as Istio's webhook does by `meshpass-policy`). Anything that cannot be honoured is rejected with
//! a message naming the document, the object and the field — every problem at once — rather
//! than being silently ignored. Pure: no I/O.

use crate::MeshError;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The namespace label that turns on sidecar injection.
pub const INJECTION_LABEL: &str = "istio-injection";
/// The pod-template annotation that opts a workload out of injection.
pub const INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";

/// A namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSpec {
    /// Name.
    pub name: String,
    /// Labels (`istio-injection=enabled` makes it meshed).
    pub labels: BTreeMap<String, String>,
}

impl NamespaceSpec {
    /// True when pods created here get a sidecar (unless they opt out).
    pub fn meshed(&self) -> bool {
        self.labels.get(INJECTION_LABEL).map(String::as_str) == Some("enabled")
    }
}

/// One container: a local program, not an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// `command` followed by `args`; a leading `meshpass` means the running meshpass binary.
    pub argv: Vec<String>,
    /// Literal environment variables.
    pub env: Vec<(String, String)>,
    /// Declared TCP container ports (readiness connects to them).
    pub ports: Vec<u16>,
}

/// A pod template: what every pod of a Deployment is made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodTemplate {
    /// Pod labels (services select on them).
    pub labels: BTreeMap<String, String>,
    /// Pod annotations (the capture settings live here).
    pub annotations: BTreeMap<String, String>,
    /// Containers.
    pub containers: Vec<ContainerSpec>,
    /// `serviceAccountName`: the pods' identity is `spiffe://cluster.local/ns/NS/sa/SA`
    /// (`default` when unset). Left out of the JSON when unset, so templates written before
    /// it existed keep their hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl PodTemplate {
    /// A short stable hash, like Kubernetes' pod-template-hash: pods made from the same
    /// template share it, so a changed template is visible as "pending restart".
    pub fn hash(&self) -> String {
        // FNV-1a over the canonical JSON (BTreeMaps keep it deterministic).
        let json = serde_json::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in json.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{:010x}", h & 0xff_ffff_ffff)
    }

    /// The service account its pods run as.
    pub fn service_account(&self) -> &str {
        self.service_account.as_deref().unwrap_or("default")
    }

    /// True when the template says `sidecar.istio.io/inject: "false"`.
    pub fn opted_out(&self) -> bool {
        self.annotations.get(INJECT_ANNOTATION).map(String::as_str) == Some("false")
            || self.labels.get(INJECT_ANNOTATION).map(String::as_str) == Some("false")
    }

    /// True when `other` differs from `self` only in annotations other than the injection
    /// switch (i.e. only capture settings changed) — what `--live` may apply in place.
    pub fn differs_only_in_capture(&self, other: &PodTemplate) -> bool {
        self.labels == other.labels
            && self.containers == other.containers
            && self.service_account == other.service_account
            && self.annotations.get(INJECT_ANNOTATION) == other.annotations.get(INJECT_ANNOTATION)
    }
}

/// A Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Desired pod count.
    pub replicas: u32,
    /// `matchLabels` of the selector.
    pub selector: BTreeMap<String, String>,
    /// The pod template.
    pub template: PodTemplate,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// The ClusterIP port.
    pub port: u16,
    /// The pod port it forwards to.
    pub target_port: u16,
    /// The port's name; its prefix is the protocol in Istio's port naming (`http-web`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `appProtocol`, which Istio prefers to the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// The port as the sidecar's port-protocol lists take it: `NAME[/APPPROTOCOL]`, or `None`
    /// when neither is set (the sidecar then sniffs the port).
    pub fn protocol_spec(&self) -> Option<String> {
        match (&self.name, &self.app_protocol) {
            (None, None) => None,
            (n, None) => n.clone(),
            (n, Some(a)) => Some(format!("{}/{a}", n.as_deref().unwrap_or(""))),
        }
    }
}

/// A Service (ClusterIP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Pods with all of these labels are its endpoints.
    pub selector: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
}

impl ServiceSpec {
    /// True when a pod with `labels` is selected.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty() && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A supported object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    /// `v1/Namespace`.
    Namespace(NamespaceSpec),
    /// `apps/v1/Deployment`.
    Deployment(DeploymentSpec),
    /// `v1/Service`.
    Service(ServiceSpec),
    /// `security.istio.io/v1` `PeerAuthentication` or `networking.istio.io/v1`
    /// `DestinationRule` (stored with the state through [`meshpass_policy::PolicySet`]).
    #[serde(skip)]
    Policy(Box<meshpass_policy::Resource>),
}

impl Object {
    /// `kind/namespace/name`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Object::Namespace(n) => format!("namespace/{}", n.name),
            Object::Deployment(d) => format!("deployment.apps/{} -n {}", d.name, d.namespace),
            Object::Service(s) => format!("service/{} -n {}", s.name, s.namespace),
            Object::Policy(r) => policy_name(&r.reference()),
        }
    }
}

/// `peerauthentication.security.istio.io/NAME -n NS`, as kubectl names these objects.
pub fn policy_name(r: &meshpass_policy::ResourceRef) -> String {
    let group = match r.kind {
        meshpass_policy::Kind::PeerAuthentication => "peerauthentication.security.istio.io",
        meshpass_policy::Kind::DestinationRule => "destinationrule.networking.istio.io",
    };
    format!("{group}/{} -n {}", r.name, r.namespace)
}

/// A policy document, validated as Istio's webhook validates it, then checked for what the
/// local mesh's sidecars can do.
fn lower_policy(value: serde_yaml::Value, at: &str) -> Result<Object, Vec<String>> {
    let json = serde_json::to_value(&value).map_err(|e| vec![format!("{at}: {e}")])?;
    let r = meshpass_policy::Resource::from_json(&json, "default")
        .map_err(|e| e.iter().map(|f| format!("{at}: {f}")).collect::<Vec<_>>())?;
    let mut errors = Vec::new();
    if let meshpass_policy::Resource::DestinationRule(dr) = &r {
        let mut policies: Vec<(String, &meshpass_policy::TrafficPolicy)> =
            dr.traffic_policy.iter().map(|p| ("spec.trafficPolicy".to_string(), p)).collect();
        for s in &dr.subsets {
            if let Some(p) = &s.traffic_policy {
                policies.push((format!("spec.subsets[{}].trafficPolicy", s.name), p));
            }
        }
        for (path, p) in policies {
            let tls =
                p.tls.iter().map(|t| (format!("{path}.tls"), t)).chain(p.port_level_settings.iter().filter_map(|pl| {
                    pl.tls.as_ref().map(|t| (format!("{path}.portLevelSettings[port {}].tls", pl.port), t))
                }));
            for (field, t) in tls {
                if t.mode == meshpass_policy::TlsMode::Mutual {
                    errors.push(format!(
                        "{at}: {field}.mode MUTUAL: the local mesh's sidecars originate ISTIO_MUTUAL, SIMPLE or DISABLE, not MUTUAL with certificates of your own"
                    ));
                }
                if t.credential_name.is_some() {
                    errors.push(format!(
                        "{at}: {field}.credentialName: the local mesh has no Secrets; use caCertificates with a file path"
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(Object::Policy(Box::new(r)))
    } else {
        Err(errors)
    }
}

/// Parses multi-document YAML; returns every object or every problem.
pub fn parse(yaml: &str) -> Result<Vec<Object>, MeshError> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let at = format!("document {}", i + 1);
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{at}: not valid YAML: {e}"));
                // The YAML stream is broken past this point; later documents are unreliable.
                break;
            }
        };
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
        let name = value.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("").to_string();
        let at = if name.is_empty() { format!("{at} ({kind})") } else { format!("{at} ({kind} {name})") };
        let result = match kind.as_str() {
            "Namespace" => serde_yaml::from_value::<Namespace>(value)
                .map_err(|e| vec![format!("{at}: {e}")])
                .and_then(|n| lower_namespace(&n, &at)),
            "Deployment" => serde_yaml::from_value::<Deployment>(value)
                .map_err(|e| vec![format!("{at}: {e}")])
                .and_then(|d| lower_deployment(&d, &at)),
            "Service" => serde_yaml::from_value::<Service>(value)
                .map_err(|e| vec![format!("{at}: {e}")])
                .and_then(|s| lower_service(&s, &at)),
            "PeerAuthentication" | "DestinationRule" => lower_policy(value, &at),
            "" => Err(vec![format!("{at}: no `kind`")]),
            other => Err(vec![format!(
                "{at}: unsupported kind `{other}` (the local mesh runs Namespace, Deployment, Service, PeerAuthentication and DestinationRule)"
            )]),
        };
        match result {
            Ok(o) => objects.push(o),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(MeshError::Invalid(errors))
    }
}

/// Kubernetes' DNS-1123 label rule, which also keeps names safe for files and netns names.
fn check_name(name: &str, at: &str, field: &str, errors: &mut Vec<String>) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        errors.push(format!(
            "{at}: {field} `{name}` must be a DNS-1123 label (lowercase letters, digits, '-', at most 63)"
        ));
    }
}

/// Kubernetes' DNS-1123 subdomain rule (service account names).
fn check_subdomain(name: &str, at: &str, field: &str, errors: &mut Vec<String>) {
    if !meshpass_policy::meta::is_dns1123_subdomain(name) {
        errors
            .push(format!("{at}: {field} `{name}` must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.')"));
    }
}

fn lower_namespace(n: &Namespace, at: &str) -> Result<Object, Vec<String>> {
    let mut errors = Vec::new();
    let name = n.metadata.name.clone().unwrap_or_default();
    check_name(&name, at, "metadata.name", &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Object::Namespace(NamespaceSpec { name, labels: n.metadata.labels.clone().unwrap_or_default() }))
}

fn port(value: i32, at: &str, field: &str, errors: &mut Vec<String>) -> u16 {
    match u16::try_from(value) {
        Ok(p) if p > 0 => p,
        _ => {
            errors.push(format!("{at}: {field} {value} is not a port (1-65535)"));
            0
        }
    }
}

fn lower_container(c: &Container, at: &str, errors: &mut Vec<String>) -> ContainerSpec {
    let at = format!("{at}: container `{}`", c.name);
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    if argv.is_empty() {
        errors.push(format!("{at}: containers need `command`: meshpass runs local programs, not images"));
    }
    argv.extend(c.args.clone().unwrap_or_default());
    let mut env = Vec::new();
    for e in c.env.iter().flatten() {
        if e.value_from.is_some() {
            errors.push(format!("{at}: env `{}`: valueFrom is not supported (use a literal value)", e.name));
        } else {
            env.push((e.name.clone(), e.value.clone().unwrap_or_default()));
        }
    }
    let mut ports = Vec::new();
    for p in c.ports.iter().flatten() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            errors.push(format!("{at}: containerPort {}: only TCP is supported", p.container_port));
        }
        ports.push(port(p.container_port, &at, "containerPort", errors));
    }
    for (what, set) in [
        ("volumeMounts", c.volume_mounts.as_ref().is_some_and(|v| !v.is_empty())),
        ("envFrom", c.env_from.as_ref().is_some_and(|v| !v.is_empty())),
    ] {
        if set {
            errors.push(format!("{at}: {what} is not supported by the local mesh"));
        }
    }
    ContainerSpec { name: c.name.clone(), argv, env, ports }
}

fn lower_deployment(d: &Deployment, at: &str) -> Result<Object, Vec<String>> {
    let mut errors = Vec::new();
    let name = d.metadata.name.clone().unwrap_or_default();
    check_name(&name, at, "metadata.name", &mut errors);
    let namespace = d.metadata.namespace.clone().unwrap_or_else(|| "default".to_string());
    check_name(&namespace, at, "metadata.namespace", &mut errors);
    let Some(spec) = &d.spec else {
        errors.push(format!("{at}: no `spec`"));
        return Err(errors);
    };
    let replicas = match spec.replicas {
        None => 1,
        Some(r) => u32::try_from(r).unwrap_or_else(|_| {
            errors.push(format!("{at}: spec.replicas {r} is negative"));
            0
        }),
    };
    if replicas > 64 {
        errors.push(format!("{at}: spec.replicas {replicas}: the local mesh runs at most 64 per Deployment"));
    }
    if spec.selector.match_expressions.as_ref().is_some_and(|m| !m.is_empty()) {
        errors.push(format!("{at}: spec.selector.matchExpressions is not supported (use matchLabels)"));
    }
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    if selector.is_empty() {
        errors.push(format!("{at}: spec.selector.matchLabels is empty"));
    }
    let meta = spec.template.metadata.clone().unwrap_or_default();
    let labels = meta.labels.unwrap_or_default();
    if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        errors.push(format!("{at}: spec.selector does not match spec.template.metadata.labels"));
    }
    let annotations = meta.annotations.unwrap_or_default();
    let mut containers = Vec::new();
    let mut service_account = None;
    match &spec.template.spec {
        None => errors.push(format!("{at}: no spec.template.spec")),
        Some(pod) => {
            service_account = pod.service_account_name.clone().filter(|s| !s.is_empty());
            if let Some(sa) = &service_account {
                check_subdomain(sa, at, "spec.template.spec.serviceAccountName", &mut errors);
            }
            if pod.containers.is_empty() {
                errors.push(format!("{at}: spec.template.spec.containers is empty"));
            }
            if pod.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
                errors.push(format!("{at}: initContainers are not supported by the local mesh"));
            }
            if pod.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
                errors.push(format!("{at}: volumes are not supported by the local mesh"));
            }
            for c in &pod.containers {
                check_name(&c.name, at, "container name", &mut errors);
                if c.name == "istio-proxy" {
                    errors.push(format!("{at}: container name `istio-proxy` is reserved for the sidecar"));
                }
                containers.push(lower_container(c, at, &mut errors));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Object::Deployment(DeploymentSpec {
        namespace,
        name,
        replicas,
        selector,
        template: PodTemplate { labels, annotations, containers, service_account },
    }))
}

fn lower_service(s: &Service, at: &str) -> Result<Object, Vec<String>> {
    let mut errors = Vec::new();
    let name = s.metadata.name.clone().unwrap_or_default();
    check_name(&name, at, "metadata.name", &mut errors);
    let namespace = s.metadata.namespace.clone().unwrap_or_else(|| "default".to_string());
    check_name(&namespace, at, "metadata.namespace", &mut errors);
    let spec = s.spec.clone().unwrap_or_default();
    if let Some(t) = spec.type_.as_deref().filter(|t| *t != "ClusterIP") {
        errors.push(format!("{at}: spec.type `{t}` is not supported (ClusterIP only)"));
    }
    if spec.cluster_ip.as_deref().is_some_and(|ip| !ip.is_empty()) {
        errors.push(format!("{at}: spec.clusterIP is allocated by the mesh; leave it out"));
    }
    let selector = spec.selector.unwrap_or_default();
    if selector.is_empty() {
        errors.push(format!("{at}: spec.selector is empty (services without selectors are not supported)"));
    }
    let mut ports = Vec::new();
    for p in spec.ports.unwrap_or_default() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            errors.push(format!("{at}: port {}: only TCP is supported", p.port));
        }
        let service_port = port(p.port, at, "port", &mut errors);
        let target_port = match &p.target_port {
            None => service_port,
            Some(IntOrString::Int(t)) => port(*t, at, "targetPort", &mut errors),
            Some(IntOrString::String(t)) => match t.parse::<i32>() {
                Ok(t) => port(t, at, "targetPort", &mut errors),
                Err(_) => {
                    errors.push(format!("{at}: named targetPort `{t}` is not supported (use a number)"));
                    0
                }
            },
        };
        ports.push(ServicePort {
            port: service_port,
            target_port,
            name: p.name.clone(),
            app_protocol: p.app_protocol.clone(),
        });
    }
    if ports.is_empty() {
        errors.push(format!("{at}: spec.ports is empty"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Object::Service(ServiceSpec { namespace, name, selector, ports }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {istio-injection: enabled}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web, version: v1}
      annotations: {traffic.sidecar.istio.io/excludeInboundPorts: "5000"}
    spec:
      containers:
      - name: web
        command: [meshpass, sample, helloworld]
        args: [--port, "5000"]
        env: [{name: A, value: b}]
        ports: [{containerPort: 5000}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http-web, port: 80, targetPort: 5000}, {port: 5000, appProtocol: grpc}]
"#;

    #[test]
    fn parses_the_supported_kinds() {
        let objs = parse(SAMPLE).expect("valid");
        assert_eq!(objs.len(), 3);
        let Object::Namespace(ns) = &objs[0] else { panic!("namespace first") };
        assert!(ns.meshed());
        let Object::Deployment(d) = &objs[1] else { panic!("deployment second") };
        assert_eq!((d.namespace.as_str(), d.name.as_str(), d.replicas), ("demo", "web", 2));
        assert_eq!(d.template.containers[0].argv, ["meshpass", "sample", "helloworld", "--port", "5000"]);
        assert_eq!(d.template.containers[0].env, [("A".to_string(), "b".to_string())]);
        assert_eq!(d.template.containers[0].ports, [5000]);
        let Object::Service(s) = &objs[2] else { panic!("service third") };
        assert_eq!(
            s.ports,
            [
                ServicePort { port: 80, target_port: 5000, name: Some("http-web".into()), app_protocol: None },
                ServicePort { port: 5000, target_port: 5000, name: None, app_protocol: Some("grpc".into()) }
            ]
        );
        assert!(s.selects(&d.template.labels));
    }

    #[test]
    fn image_only_containers_and_unknown_kinds_are_rejected_together() {
        let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: img}
spec:
  selector: {matchLabels: {app: img}}
  template:
    metadata: {labels: {app: img}}
    spec:
      containers: [{name: c, image: nginx}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
"#;
        let Err(MeshError::Invalid(errors)) = parse(yaml) else { panic!("must be rejected") };
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("containers need `command`: meshpass runs local programs, not images"));
        assert!(errors[1].contains("unsupported kind `StatefulSet`"));
    }

    #[test]
    fn selector_mismatch_and_bad_ports_are_reported() {
        let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {app: y}}
  template:
    metadata: {labels: {app: x}}
    spec:
      containers: [{name: c, command: ["true"], ports: [{containerPort: 70000}]}]
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  type: NodePort
  selector: {app: x}
  ports: [{port: 80, targetPort: http}]
"#;
        let Err(MeshError::Invalid(errors)) = parse(yaml) else { panic!("must be rejected") };
        let all = errors.join("\n");
        assert!(all.contains("does not match"), "{all}");
        assert!(all.contains("70000"), "{all}");
        assert!(all.contains("NodePort"), "{all}");
        assert!(all.contains("named targetPort"), "{all}");
    }

    #[test]
    fn template_hash_tracks_changes_and_capture_only_diffs_are_detected() {
        let Ok(objs) = parse(SAMPLE) else { panic!("valid") };
        let Object::Deployment(d) = &objs[1] else { panic!("deployment") };
        let mut t2 = d.template.clone();
        assert_eq!(d.template.hash(), t2.hash());
        t2.annotations.insert("traffic.sidecar.istio.io/excludeInboundPorts".into(), "6000".into());
        assert_ne!(d.template.hash(), t2.hash());
        assert!(d.template.differs_only_in_capture(&t2));
        t2.containers[0].argv.push("--x".into());
        assert!(!d.template.differs_only_in_capture(&t2));
    }

    #[test]
    fn opt_out_and_empty_documents() {
        let yaml = "---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n";
        let objs = parse(yaml).expect("valid");
        let Object::Namespace(ns) = &objs[0] else { panic!("namespace") };
        assert!(!ns.meshed());
        let t = PodTemplate {
            labels: BTreeMap::new(),
            annotations: [(INJECT_ANNOTATION.to_string(), "false".to_string())].into(),
            containers: vec![],
            service_account: None,
        };
        assert!(t.opted_out());
    }
}
