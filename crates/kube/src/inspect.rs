//! Reading Istio's state out of plain Kubernetes objects: whether a namespace or pod template
//! asks for injection, whether a pod runs the sidecar, whether running pods still carry an
//! older template's capture annotations, and which Services select a workload.

use crate::workload::{selector_matches, Workload};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshpass_api::model::{ServiceInfo, ServicePort};
use meshpass_settings::keys;
use std::collections::{BTreeMap, BTreeSet};

/// The sidecar container's name in Istio's injection template.
pub const SIDECAR_CONTAINER: &str = "istio-proxy";
/// The annotation `kubectl rollout restart` sets on the pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The label and annotation that turn injection on or off per pod.
pub const INJECT: &str = "sidecar.istio.io/inject";
/// The annotation Istio's injector leaves on every injected pod.
const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// Ports Istio always excludes from inbound capture and that its injector appends to the pod's
/// `excludeInboundPorts` annotation (status port 15020, health 15021, Prometheus 15090).
const ISTIO_OWN_PORTS: [&str; 3] = ["15020", "15021", "15090"];

/// Whether a workload's pods get a sidecar, following Istio's default webhook selectors:
/// `None` = not a workload meshpass lists (its namespace has no injection label and its
/// template does not mention injection); `Some(meshed)` otherwise.
pub fn mesh_policy(ns_labels: Option<&BTreeMap<String, String>>, workload: &Workload) -> Option<bool> {
    let template = workload.template().and_then(|t| t.metadata.as_ref());
    // The label wins over the (deprecated) annotation, as in Istio's webhook.
    let pod_inject = template
        .and_then(|m| m.labels.as_ref().and_then(|l| l.get(INJECT)))
        .or_else(|| template.and_then(|m| m.annotations.as_ref().and_then(|a| a.get(INJECT))))
        .map(|v| v.eq_ignore_ascii_case("true"));
    let ns_injection = ns_labels.and_then(|l| l.get("istio-injection")).map(String::as_str);
    let ns_rev = ns_labels.is_some_and(|l| l.contains_key("istio.io/rev"));
    match ns_injection {
        Some("disabled") => pod_inject.map(|_| false),
        Some("enabled") => Some(pod_inject.unwrap_or(true)),
        _ if ns_rev => Some(pod_inject.unwrap_or(true)),
        _ => pod_inject,
    }
}

/// True when the pod runs Istio's proxy: a container `istio-proxy`, or the native-sidecar
/// form (an init container `istio-proxy` with `restartPolicy: Always`).
pub fn has_sidecar(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    spec.containers.iter().any(|c| c.name == SIDECAR_CONTAINER)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == SIDECAR_CONTAINER && c.restart_policy.as_deref() == Some("Always"))
}

/// True for a pod that is running and not being deleted: the pods whose settings are in force.
pub fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// True when the pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The annotations whose change only takes effect in new pods.
fn relevant(key: &str) -> bool {
    keys::ALL.contains(&key) || keys::OWNED_PREFIXES.iter().any(|p| key.starts_with(p)) || key == RESTARTED_AT
}

fn items(v: &str) -> BTreeSet<&str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
}

/// True when a running pod was created from a template whose capture annotations (or
/// `restartedAt`) differ from the current template's.
///
/// Istio's injector (with istio-cni) writes its resolved defaults onto injected pods, so on a
/// pod that went through the injector: a capture key absent from the template may be present,
/// and `excludeInboundPorts` may carry Istio's own ports in addition. Neither counts as a
/// difference; anything else does.
pub fn annotations_differ(template: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let empty = BTreeMap::new();
    let pod_ann = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let injected = pod_ann.contains_key(SIDECAR_STATUS);
    let keys: BTreeSet<&String> = template.keys().chain(pod_ann.keys()).filter(|k| relevant(k)).collect();
    let differs = keys.into_iter().any(|k| match (template.get(k), pod_ann.get(k)) {
        (Some(t), Some(p)) if t == p => false,
        (Some(t), Some(p)) if injected && k == keys::EXCLUDE_INBOUND_PORTS => {
            let (t, p) = (items(t), items(p));
            !(t.is_subset(&p) && p.difference(&t).all(|x| ISTIO_OWN_PORTS.contains(x)))
        }
        (None, Some(_)) => !(injected && k != RESTARTED_AT),
        _ => true,
    });
    differs
}

/// The Services of the workload's namespace whose selector matches its pod template's labels,
/// with their target ports resolved (named target ports through the template's containers).
pub fn services_for(workload: &Workload, services: &[Service]) -> Vec<ServiceInfo> {
    let labels = workload.template_labels();
    let mut out: Vec<ServiceInfo> = services
        .iter()
        .filter_map(|svc| {
            let spec = svc.spec.as_ref()?;
            let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
            if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                return None;
            }
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let port = u16::try_from(p.port).ok()?;
                    let target_port = match &p.target_port {
                        None => port,
                        Some(IntOrString::Int(n)) => u16::try_from(*n).ok()?,
                        Some(IntOrString::String(name)) => {
                            named_port(workload, name).or_else(|| name.parse().ok()).unwrap_or(port)
                        }
                    };
                    Some(ServicePort { port, target_port })
                })
                .collect();
            Some(ServiceInfo {
                name: svc.metadata.name.clone().unwrap_or_default(),
                cluster_ip: spec.cluster_ip.clone().filter(|ip| !ip.is_empty() && ip != "None"),
                ports,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn named_port(workload: &Workload, name: &str) -> Option<u16> {
    let spec = workload.template()?.spec.as_ref()?;
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// The pods of `pods` that the workload's selector selects.
pub fn pods_of<'a>(workload: &Workload, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let Some(selector) = workload.selector() else { return Vec::new() };
    let empty = BTreeMap::new();
    pods.iter()
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or_default() == workload.namespace())
        .filter(|p| selector_matches(selector, p.metadata.labels.as_ref().unwrap_or(&empty)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ann: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "annotations": ann}})).expect("pod")
    }

    fn map(v: serde_json::Value) -> BTreeMap<String, String> {
        serde_json::from_value(v).expect("map")
    }

    #[test]
    fn pending_restart_rules() {
        let t = map(json!({"traffic.sidecar.istio.io/excludeInboundPorts": "5000"}));
        assert!(!annotations_differ(&t, &pod(json!({"traffic.sidecar.istio.io/excludeInboundPorts": "5000"}))));
        assert!(annotations_differ(&t, &pod(json!({}))));
        assert!(annotations_differ(
            &BTreeMap::new(),
            &pod(json!({"traffic.sidecar.istio.io/excludeInboundPorts": "5000"}))
        ));
        // Istio-cni: the injector writes resolved values onto the pod.
        let cni = pod(json!({
            "sidecar.istio.io/status": "{}",
            "traffic.sidecar.istio.io/excludeInboundPorts": "5000,15020",
            "traffic.sidecar.istio.io/includeInboundPorts": "*"
        }));
        assert!(!annotations_differ(&t, &cni));
        // restartedAt always counts.
        let r = map(json!({"kubectl.kubernetes.io/restartedAt": "2026-11-26T10:00:00Z"}));
        assert!(annotations_differ(&r, &pod(json!({"sidecar.istio.io/status": "{}"}))));
        // Unrelated annotations never count.
        assert!(!annotations_differ(&map(json!({"prometheus.io/scrape": "true"})), &pod(json!({}))));
    }
}
