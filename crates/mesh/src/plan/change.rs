//! Changes to the desired state: `apply`, `annotate` and `delete`. Each is decided on a copy
//! of the desired state and either fails as a whole — every problem named, nothing changed —
//! or yields the new state, the kubectl-like lines to answer, and the capture rules to
//! re-apply in place when the change is `--live`. Pure: the supervisor carries the live
//! re-applies out (undoing them if one fails), saves the state, and only then commits it.
//!
//! A template change marks the Deployment's pods *pending restart* (as DCE does) until a
//! rollout restart; a `--live` change that touches only capture annotations re-applies the
//! rules of its meshed pods in place instead.
//!
//! [`set_defaults`] changes the mesh-wide capture defaults the same way: every meshed
//! Deployment whose capture they change (those whose own annotations do not set the changed
//! values) is pending restart, or re-applied live. [`annotate_many`] is a batch of
//! `annotate`s decided one by one, each on its own: one that fails changes nothing and
//! stops nothing else.

use super::capture::{self, Capture};
use super::pod::meshed;
use super::world::{Phase, PodKey, WorkloadKey, World};
use crate::config::MeshConfig;
use crate::ipam::Ipam;
use crate::manifest::{DeploymentSpec, NamespaceSpec, Object};
use crate::state::{key, State, StoredService};
use crate::MeshError;
use meshpass_settings::mesh::VALUE_KEYS;
use meshpass_settings::MeshDefaults;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The desired state being changed: the state file's content and the ClusterIP allocator.
#[derive(Clone, Debug)]
pub struct Desired {
    /// What `meshpass apply` stored.
    pub state: State,
    /// ClusterIPs in use.
    pub cluster_ips: Ipam,
}

/// Capture to re-apply in place in running pods (`--live`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    /// The Deployment.
    pub workload: WorkloadKey,
    /// Its meshed running pods.
    pub pods: Vec<PodKey>,
    /// The new capture.
    pub capture: Capture,
    /// The capture the pods run with now (to undo a partial re-apply).
    pub previous: Capture,
    /// The template's hash, which the pods carry once re-applied.
    pub hash: String,
    /// The new capture's stamp ([`capture::stamp`]), which the pods carry once re-applied.
    pub stamp: String,
}

/// One workload's change in [`annotate_many`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnotateItem {
    /// Namespace.
    pub namespace: String,
    /// Deployment name.
    pub name: String,
    /// Annotations to set.
    pub set: BTreeMap<String, String>,
    /// Annotation keys to remove.
    pub remove: Vec<String>,
    /// Only change it if it is still at this resource version.
    #[serde(default)]
    pub expect_version: Option<String>,
}

/// What a change does besides the new desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// One line per object (`deployment.apps/hello -n default configured (…)`).
    pub lines: Vec<String>,
    /// Live re-applies to carry out before the change counts.
    pub live: Vec<Live>,
}

/// `meshpass apply`: validates every object first (namespaces exist, capture annotations
/// compile for this mesh, a `--live` change is safe), then stores them.
pub fn apply(
    d: &mut Desired,
    world: &World,
    objects: Vec<Object>,
    live: bool,
    cfg: &MeshConfig,
) -> Result<Outcome, MeshError> {
    let mut namespaces = d.state.namespaces.clone();
    for o in &objects {
        if let Object::Namespace(n) = o {
            namespaces.insert(n.name.clone(), n.clone());
        }
    }
    let mut errors = Vec::new();
    for o in &objects {
        let ns = match o {
            Object::Namespace(_) => continue,
            Object::Deployment(dep) => &dep.namespace,
            Object::Service(s) => &s.namespace,
            Object::Policy(r) => &r.meta().namespace,
        };
        // Istio's root namespace holds mesh-wide policies; the local mesh has it implicitly.
        let root = matches!(o, Object::Policy(_)) && ns == meshpass_policy::ROOT_NAMESPACE;
        if !namespaces.contains_key(ns) && ns != "default" && !root {
            errors.push(format!(
                "{}: namespace `{ns}` not found (apply its Namespace first or in the same file)",
                o.describe()
            ));
            continue;
        }
        if let Object::Deployment(dep) = o {
            if meshed(&namespaces, dep) {
                if let Err(errs) = capture::check(&dep.template.annotations, cfg, &d.state.mesh_defaults) {
                    errors.extend(errs.into_iter().map(|e| format!("{}: {e}", o.describe())));
                }
            }
            if live {
                let old = d.state.deployments.get(&key(&dep.namespace, &dep.name));
                let why = old.and_then(|old| capture::live_template_change(old, dep, cfg, &d.state.mesh_defaults));
                errors.extend(why.map(|e| format!("{}: {e}", o.describe())));
            }
        }
    }
    // Policies are applied as one batch: a conflict anywhere refuses them all.
    let (policies, objects): (Vec<Object>, Vec<Object>) =
        objects.into_iter().partition(|o| matches!(o, Object::Policy(_)));
    let resources: Vec<meshpass_policy::Resource> = policies
        .into_iter()
        .filter_map(|o| match o {
            Object::Policy(r) => Some(*r),
            _ => None,
        })
        .collect();
    let mut policy_lines = Vec::new();
    if !resources.is_empty() {
        match d.state.policies.0.apply(resources) {
            Ok((next, changes)) => {
                policy_lines = changes
                    .into_iter()
                    .map(|(r, change)| format!("{} {change}", crate::manifest::policy_name(&r)))
                    .collect();
                if errors.is_empty() {
                    d.state.policies = crate::state::Policies(next);
                }
            }
            Err(e) => errors.extend(e.iter().map(ToString::to_string)),
        }
    }
    if !errors.is_empty() {
        return Err(MeshError::Invalid(errors));
    }
    d.state
        .namespaces
        .entry("default".to_string())
        .or_insert_with(|| NamespaceSpec { name: "default".to_string(), labels: BTreeMap::new() });
    let mut out = Outcome::default();
    for o in objects {
        let what = o.describe();
        let verdict = match o {
            Object::Namespace(n) => match d.state.namespaces.insert(n.name.clone(), n.clone()) {
                Some(old) if old == n => "unchanged".to_string(),
                Some(_) => "configured".to_string(),
                None => "created".to_string(),
            },
            Object::Service(s) => {
                let k = key(&s.namespace, &s.name);
                match d.state.services.get(&k).cloned() {
                    Some(old) if old.spec == s => "unchanged".to_string(),
                    Some(old) => {
                        d.state.services.insert(k, StoredService { spec: s, cluster_ip: old.cluster_ip });
                        "configured".to_string()
                    }
                    None => {
                        let cluster_ip = d.cluster_ips.allocate()?;
                        d.state.services.insert(k, StoredService { spec: s, cluster_ip });
                        format!("created (ClusterIP {cluster_ip})")
                    }
                }
            }
            Object::Deployment(dep) => deployment(d, world, dep, live, cfg, &mut out),
            Object::Policy(_) => continue,
        };
        out.lines.push(format!("{what} {verdict}"));
    }
    out.lines.extend(policy_lines);
    Ok(out)
}

/// `meshpass annotate`: sets and removes pod-template annotations of a Deployment, with the
/// same validation and the same outcome (pending restart, or live re-apply) as applying the
/// edited manifest. With `expect_version`, nothing is written unless the Deployment is still
/// at that resource version.
#[allow(clippy::too_many_arguments)]
pub fn annotate(
    d: &mut Desired,
    world: &World,
    ns: &str,
    name: &str,
    set: BTreeMap<String, String>,
    remove: Vec<String>,
    live: bool,
    expect_version: Option<&str>,
    cfg: &MeshConfig,
) -> Result<Outcome, MeshError> {
    let Some(old) = d.state.deployments.get(&key(ns, name)) else {
        return Err(MeshError::WorkloadNotFound { namespace: ns.to_string(), name: name.to_string() });
    };
    let actual = d.state.version(ns, name);
    if let Some(expected) = expect_version.filter(|e| *e != actual) {
        return Err(MeshError::Conflict { workload: key(ns, name), expected: expected.to_string(), actual });
    }
    let mut dep = old.clone();
    for k in &remove {
        dep.template.annotations.remove(k);
    }
    dep.template.annotations.extend(set);
    let invalid = |errs: Vec<String>| {
        MeshError::Invalid(errs.into_iter().map(|e| format!("deployment {ns}/{name}: {e}")).collect())
    };
    if meshed(&d.state.namespaces, &dep) {
        capture::check(&dep.template.annotations, cfg, &d.state.mesh_defaults).map_err(invalid)?;
    }
    if live {
        if let Some(why) = capture::live_template_change(old, &dep, cfg, &d.state.mesh_defaults) {
            return Err(invalid(vec![why]));
        }
    }
    let mut out = Outcome::default();
    let verdict = deployment(d, world, dep, live, cfg, &mut out);
    out.lines.push(format!("deployment.apps/{name} -n {ns} {verdict}"));
    Ok(out)
}

/// Stores one (validated) Deployment; the verdict says what happens to its pods.
fn deployment(
    d: &mut Desired,
    world: &World,
    dep: DeploymentSpec,
    live: bool,
    cfg: &MeshConfig,
    out: &mut Outcome,
) -> String {
    let k = key(&dep.namespace, &dep.name);
    let Some(old) = d.state.deployments.get(&k).cloned() else {
        d.state.put_deployment(dep);
        return "created".to_string();
    };
    if old == dep {
        return "unchanged".to_string();
    }
    let hash = dep.template.hash();
    if old.template.hash() == hash {
        let n = dep.replicas;
        d.state.put_deployment(dep);
        return format!("configured (scaled to {n})");
    }
    let wk = WorkloadKey::new(&dep.namespace, &dep.name);
    let running: Vec<&super::world::Pod> = world.pods_of(&wk, Phase::Running).collect();
    if live && old.template.differs_only_in_capture(&dep.template) {
        let pods: Vec<PodKey> = running.iter().filter(|p| p.meshed).map(|p| p.key.clone()).collect();
        let n = pods.len();
        if n > 0 {
            let defaults = &d.state.mesh_defaults;
            let decided =
                |a: &BTreeMap<String, String>| capture::decide(true, a, cfg, defaults).unwrap_or(Capture::None);
            out.live.push(Live {
                workload: wk,
                pods,
                capture: decided(&dep.template.annotations),
                previous: decided(&old.template.annotations),
                hash,
                stamp: capture::stamp(true, &dep.template.annotations, cfg, defaults),
            });
        }
        d.state.put_deployment(dep);
        return format!("configured (capture rules re-applied live in {n} pod(s), no restart)");
    }
    let (ns, name, n) = (dep.namespace.clone(), dep.name.clone(), running.len());
    d.state.put_deployment(dep);
    format!("configured ({n} pod(s) pending restart: meshpass rollout restart deployment/{name} -n {ns})")
}

/// A batch of [`annotate`]s, decided one after the other on `d`, each on its own: an item
/// that fails (missing, stale version, invalid, unsafe live) changes nothing and is answered
/// with its error; the others go ahead. Results are in item order.
pub fn annotate_many(
    d: &mut Desired,
    world: &World,
    items: &[AnnotateItem],
    live: bool,
    cfg: &MeshConfig,
) -> Vec<Result<Outcome, MeshError>> {
    items
        .iter()
        .map(|i| {
            let (set, remove) = (i.set.clone(), i.remove.clone());
            annotate(d, world, &i.namespace, &i.name, set, remove, live, i.expect_version.as_deref(), cfg)
        })
        .collect()
}

/// Puts Deployment `namespace/name` of `d` back as it is in `original` (its template and
/// version; gone if it was not there): how a batch item whose live re-apply failed is
/// taken back while the others stand.
pub fn revert(d: &mut Desired, original: &State, namespace: &str, name: &str) {
    let k = key(namespace, name);
    match original.deployments.get(&k) {
        Some(dep) => {
            d.state.deployments.insert(k.clone(), dep.clone());
        }
        None => {
            d.state.deployments.remove(&k);
        }
    }
    match original.versions.get(&k) {
        Some(v) => {
            d.state.versions.insert(k, *v);
        }
        None => {
            d.state.versions.remove(&k);
        }
    }
}

/// The mesh-wide defaults with `values` (Helm path → text, as
/// [`MeshDefaults::set_value`] takes them) changed and every other value kept. Every bad
/// value is reported at once.
pub fn merged_defaults(current: &MeshDefaults, values: &BTreeMap<String, String>) -> Result<MeshDefaults, MeshError> {
    let mut next = current.clone();
    let mut errors = Vec::new();
    for (k, v) in values {
        if let Err(e) = next.set_value(k, v) {
            errors.extend(e.iter().map(|e| format!("mesh-wide defaults: {e}")));
        }
    }
    if errors.is_empty() {
        Ok(next)
    } else {
        Err(MeshError::Invalid(errors))
    }
}

/// Changes the mesh-wide capture defaults to `new`, validated against every meshed
/// Deployment first (each must still compile for this mesh's capture; with `live`, the
/// change must be safe to re-apply), and only if they are still at `expect_version`.
///
/// Each meshed Deployment whose capture changes — one whose own annotations do not set the
/// changed values — gets its running pods of the current template re-applied in place
/// (`live`) or marked pending restart; the others are unaffected, because their annotation
/// replaces the mesh-wide value. Pods created from now on get the new defaults.
pub fn set_defaults(
    d: &mut Desired,
    world: &World,
    new: MeshDefaults,
    live: bool,
    expect_version: Option<&str>,
    cfg: &MeshConfig,
) -> Result<Outcome, MeshError> {
    let actual = d.state.defaults_version.to_string();
    if let Some(expected) = expect_version.filter(|e| *e != actual) {
        return Err(MeshError::Conflict {
            workload: "mesh-wide defaults".into(),
            expected: expected.to_string(),
            actual,
        });
    }
    let old = d.state.mesh_defaults.clone();
    let mut out = Outcome::default();
    if old == new {
        out.lines.push("mesh-wide defaults unchanged".to_string());
        return Ok(out);
    }
    let mut errors = Vec::new();
    let mut affected = Vec::new();
    let mut unaffected = 0;
    for dep in d.state.deployments.values().filter(|dep| meshed(&d.state.namespaces, dep)) {
        let ann = &dep.template.annotations;
        let what = format!("deployment {}/{}", dep.namespace, dep.name);
        let capture = match capture::decide(true, ann, cfg, &new) {
            Ok(c) => c,
            Err(errs) => {
                errors.extend(errs.into_iter().map(|e| format!("{what}: {e}")));
                continue;
            }
        };
        let stamp = capture::stamp(true, ann, cfg, &new);
        if stamp == capture::stamp(true, ann, cfg, &old) {
            unaffected += 1;
            continue;
        }
        if live {
            if let Some(why) = capture::live_untrack_change((ann, &old), (ann, &new), cfg) {
                errors.push(format!("{what}: {why}"));
            }
        }
        affected.push((dep, capture, stamp));
    }
    if !errors.is_empty() {
        return Err(MeshError::Invalid(errors));
    }
    for ((path, _), ((_, before), (_, after))) in
        VALUE_KEYS.iter().zip(old.to_value_strings().into_iter().zip(new.to_value_strings()))
    {
        if before != after {
            out.lines.push(format!("mesh-wide {path}: {before:?} -> {after:?}"));
        }
    }
    for (dep, capture, stamp) in affected {
        let wk = WorkloadKey::new(&dep.namespace, &dep.name);
        let hash = dep.template.hash();
        // Pods of an older template are pending restart anyway; only current ones change.
        let pods: Vec<PodKey> =
            world.pods_of(&wk, Phase::Running).filter(|p| p.meshed && p.hash == hash).map(|p| p.key.clone()).collect();
        let (ns, name, n) = (&dep.namespace, &dep.name, pods.len());
        if n == 0 {
            out.lines.push(format!("deployment.apps/{name} -n {ns}: its next pods get the new defaults"));
        } else if live {
            let previous = capture::decide(true, &dep.template.annotations, cfg, &old).unwrap_or(Capture::None);
            out.live.push(Live { workload: wk, pods, capture, previous, hash, stamp });
            out.lines.push(format!(
                "deployment.apps/{name} -n {ns}: capture rules re-applied live in {n} pod(s), no restart"
            ));
        } else {
            out.lines.push(format!(
                "deployment.apps/{name} -n {ns}: {n} pod(s) pending restart: meshpass rollout restart deployment/{name} -n {ns}"
            ));
        }
    }
    if unaffected > 0 {
        out.lines.push(format!(
            "{unaffected} meshed deployment(s) unaffected: their own annotations set every value that changed"
        ));
    }
    d.state.put_mesh_defaults(new);
    Ok(out)
}

/// `meshpass delete`: removes the objects named (a Namespace with everything in it; the
/// `default` namespace is kept). Their pods go with the next reconcile.
pub fn delete(d: &mut Desired, objects: Vec<Object>) -> Outcome {
    let mut out = Outcome::default();
    for o in objects {
        let what = o.describe();
        let found = match &o {
            Object::Deployment(dep) => {
                d.state.versions.remove(&key(&dep.namespace, &dep.name));
                d.state.deployments.remove(&key(&dep.namespace, &dep.name)).is_some()
            }
            Object::Service(s) => match d.state.services.remove(&key(&s.namespace, &s.name)) {
                Some(old) => {
                    d.cluster_ips.release(old.cluster_ip);
                    true
                }
                None => false,
            },
            Object::Policy(r) => match d.state.policies.0.delete(&[r.reference()]) {
                Ok(next) => {
                    d.state.policies = crate::state::Policies(next);
                    true
                }
                Err(_) => false,
            },
            Object::Namespace(n) if n.name == "default" => {
                out.lines.push(format!("{what} kept (the default namespace cannot be deleted)"));
                continue;
            }
            Object::Namespace(n) => {
                let prefix = format!("{}/", n.name);
                d.state.deployments.retain(|k, _| !k.starts_with(&prefix));
                d.state.versions.retain(|k, _| !k.starts_with(&prefix));
                let services: Vec<String> =
                    d.state.services.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
                for s in services {
                    if let Some(old) = d.state.services.remove(&s) {
                        d.cluster_ips.release(old.cluster_ip);
                    }
                }
                let gone: Vec<meshpass_policy::ResourceRef> = d
                    .state
                    .policies
                    .0
                    .iter()
                    .map(|p| p.resource.reference())
                    .filter(|r| r.namespace == n.name)
                    .collect();
                if let Ok(next) = d.state.policies.0.delete(&gone) {
                    d.state.policies = crate::state::Policies(next);
                }
                d.state.namespaces.remove(&n.name).is_some()
            }
        };
        out.lines.push(format!("{what} {}", if found { "deleted" } else { "not found" }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Cidr;
    use crate::manifest::parse;
    use crate::plan::testing::{cfg, pod};

    const EXCLUDE_IN: &str = "traffic.sidecar.istio.io/excludeInboundPorts";

    const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: shop}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: 5000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
      - name: hello
        command: [meshpass, sample, helloworld]
        ports: [{containerPort: 5000}]
"#;

    fn desired() -> Desired {
        let cidr = Cidr::parse("198.19.0.0/24").expect("cidr");
        Desired { state: State::default(), cluster_ips: Ipam::new(cidr, 0) }
    }

    fn objects(yaml: &str) -> Vec<Object> {
        parse(yaml).expect("manifest")
    }

    /// The app applied, with its two pods running (meshed) from the applied template.
    fn running_app() -> (Desired, World) {
        let mut d = desired();
        apply(&mut d, &World::default(), objects(APP), false, &cfg()).expect("apply");
        let hash = d.state.deployments["shop/hello"].template.hash();
        let mut world = World::default();
        pod(&mut world, "shop", "hello", &hash, 2);
        pod(&mut world, "shop", "hello", &hash, 3);
        (d, world)
    }

    #[test]
    fn a_first_apply_creates_everything_and_allocates_a_cluster_ip() {
        let mut d = desired();
        let out = apply(&mut d, &World::default(), objects(APP), false, &cfg()).expect("apply");
        assert_eq!(
            out.lines,
            vec![
                "namespace/shop created",
                "service/hello -n shop created (ClusterIP 198.19.0.1)",
                "deployment.apps/hello -n shop created",
            ]
        );
        assert!(d.state.namespaces.contains_key("default"), "the default namespace always exists");
        assert_eq!(d.state.version("shop", "hello"), "1");
        let again = apply(&mut d, &World::default(), objects(APP), false, &cfg()).expect("apply");
        assert!(again.lines.iter().all(|l| l.ends_with("unchanged")), "{:?}", again.lines);
    }

    #[test]
    fn every_problem_is_reported_and_nothing_is_stored() {
        let mut d = desired();
        let bad = APP
            .replace("metadata: {name: shop, labels: {istio-injection: enabled}}", "metadata: {name: elsewhere}")
            .replace(
                "metadata: {labels: {app: hello}}",
                "metadata:\n      labels: {app: hello}\n      annotations: {traffic.sidecar.istio.io/excludeInboundPorts: \"99999,abc\"}",
            );
        let err = apply(&mut d, &World::default(), objects(&bad), false, &cfg()).expect_err("invalid");
        let MeshError::Invalid(errors) = err else { panic!("{err}") };
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| e.contains("namespace `shop` not found")), "{errors:?}");
        let mut d = desired();
        let bad = APP.replace(
            "metadata: {labels: {app: hello}}",
            "metadata:\n      labels: {app: hello}\n      annotations: {traffic.sidecar.istio.io/excludeInboundPorts: \"99999,abc\"}",
        );
        let Err(MeshError::Invalid(errors)) = apply(&mut d, &World::default(), objects(&bad), false, &cfg()) else {
            panic!("invalid")
        };
        assert!(errors.iter().any(|e| e.contains("99999")) && errors.iter().any(|e| e.contains("abc")), "{errors:?}");
        assert_eq!(d.state, State::default(), "nothing stored");
    }

    #[test]
    fn a_changed_template_marks_the_running_pods_pending_restart() {
        let (mut d, world) = running_app();
        let set = BTreeMap::from([(EXCLUDE_IN.to_string(), "5000".to_string())]);
        let out = annotate(&mut d, &world, "shop", "hello", set, vec![], false, None, &cfg()).expect("annotate");
        assert_eq!(
            out.lines,
            vec!["deployment.apps/hello -n shop configured (2 pod(s) pending restart: meshpass rollout restart deployment/hello -n shop)"]
        );
        assert!(out.live.is_empty());
        assert_eq!(
            d.state.deployments["shop/hello"].template.annotations.get(EXCLUDE_IN).map(String::as_str),
            Some("5000")
        );
        assert_eq!(d.state.version("shop", "hello"), "2", "a new resource version");
    }

    #[test]
    fn a_live_capture_change_re_applies_the_rules_of_the_meshed_pods_in_place() {
        let (mut d, world) = running_app();
        let old = d.state.deployments["shop/hello"].template.annotations.clone();
        let set = BTreeMap::from([(EXCLUDE_IN.to_string(), "5000".to_string())]);
        let out = annotate(&mut d, &world, "shop", "hello", set, vec![], true, None, &cfg()).expect("annotate");
        assert_eq!(
            out.lines,
            vec!["deployment.apps/hello -n shop configured (capture rules re-applied live in 2 pod(s), no restart)"]
        );
        let [live] = out.live.as_slice() else { panic!("{:?}", out.live) };
        assert_eq!(live.pods, world.pods.keys().cloned().collect::<Vec<_>>());
        let defaults = MeshDefaults::default();
        assert_eq!(live.previous, capture::decide(true, &old, &cfg(), &defaults).expect("compiles"));
        let now = &d.state.deployments["shop/hello"].template;
        assert_eq!(live.capture, capture::decide(true, &now.annotations, &cfg(), &defaults).expect("compiles"));
        assert_eq!(live.hash, now.hash());
        assert_eq!(live.stamp, capture::stamp(true, &now.annotations, &cfg(), &defaults));
    }

    #[test]
    fn a_live_change_that_is_not_only_capture_still_needs_a_restart() {
        let (mut d, world) = running_app();
        let set = BTreeMap::from([("sidecar.istio.io/inject".to_string(), "false".to_string())]);
        let out = annotate(&mut d, &world, "shop", "hello", set, vec![], true, None, &cfg()).expect("annotate");
        assert!(out.live.is_empty() && out.lines[0].contains("pending restart"), "{out:?}");
    }

    #[test]
    fn scaling_is_configured_without_a_restart() {
        let (mut d, world) = running_app();
        let out =
            apply(&mut d, &world, objects(&APP.replace("replicas: 2", "replicas: 3")), false, &cfg()).expect("apply");
        assert_eq!(out.lines[2], "deployment.apps/hello -n shop configured (scaled to 3)");
    }

    #[test]
    fn annotate_names_a_missing_workload_and_refuses_a_stale_version() {
        let (mut d, world) = running_app();
        let err = annotate(&mut d, &world, "shop", "nope", BTreeMap::new(), vec![], false, None, &cfg())
            .expect_err("missing");
        assert!(matches!(err, MeshError::WorkloadNotFound { ref name, .. } if name == "nope"), "{err}");
        let set = BTreeMap::from([(EXCLUDE_IN.to_string(), "5000".to_string())]);
        let before = d.state.clone();
        let err = annotate(&mut d, &world, "shop", "hello", set, vec![], false, Some("0"), &cfg()).expect_err("stale");
        assert!(
            matches!(err, MeshError::Conflict { ref expected, ref actual, .. } if expected == "0" && actual == "1")
        );
        assert_eq!(d.state, before);
    }

    #[test]
    fn annotate_refuses_bad_values_and_unsafe_live_changes_by_name() {
        let (mut d, world) = running_app();
        let set = BTreeMap::from([(EXCLUDE_IN.to_string(), "70000".to_string())]);
        let Err(MeshError::Invalid(e)) = annotate(&mut d, &world, "shop", "hello", set, vec![], false, None, &cfg())
        else {
            panic!("invalid")
        };
        assert!(e[0].starts_with("deployment shop/hello: ") && e[0].contains("70000"), "{e:?}");
        let mut untracking = cfg();
        untracking.untrack_excluded_inbound = true;
        let set = BTreeMap::from([(EXCLUDE_IN.to_string(), "5000".to_string())]);
        let Err(MeshError::Invalid(e)) =
            annotate(&mut d, &world, "shop", "hello", set, vec![], true, None, &untracking)
        else {
            panic!("refused")
        };
        assert!(e[0].contains("apply without --live and restart"), "{e:?}");
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const EXCLUDE_IPS: &str = "global.proxy.excludeIPRanges";

    #[test]
    fn mesh_wide_defaults_mark_the_pods_they_reach_pending_restart() {
        let (mut d, world) = running_app();
        let new = merged_defaults(&d.state.mesh_defaults, &values(&[(EXCLUDE_IPS, "198.19.0.2/32")])).expect("valid");
        let out = set_defaults(&mut d, &world, new.clone(), false, None, &cfg()).expect("set");
        assert_eq!(
            out.lines,
            vec![
                "mesh-wide global.proxy.excludeIPRanges: \"\" -> \"198.19.0.2/32\"",
                "deployment.apps/hello -n shop: 2 pod(s) pending restart: meshpass rollout restart deployment/hello -n shop",
            ]
        );
        assert!(out.live.is_empty());
        assert_eq!(d.state.mesh_defaults, new);
        assert_eq!(d.state.defaults_version, d.state.revision, "a new version");
        let again = set_defaults(&mut d, &world, new, false, None, &cfg()).expect("same");
        assert_eq!(again.lines, vec!["mesh-wide defaults unchanged"]);
    }

    #[test]
    fn a_workload_that_sets_the_value_itself_is_not_affected() {
        let (mut d, world) = running_app();
        let own =
            BTreeMap::from([("traffic.sidecar.istio.io/excludeOutboundIPRanges".to_string(), "10.0.0.0/8".into())]);
        annotate(&mut d, &world, "shop", "hello", own, vec![], false, None, &cfg()).expect("annotate");
        let new = merged_defaults(&d.state.mesh_defaults, &values(&[(EXCLUDE_IPS, "198.19.0.2/32")])).expect("valid");
        let out = set_defaults(&mut d, &world, new, true, None, &cfg()).expect("set");
        assert!(out.live.is_empty(), "{out:?}");
        assert_eq!(
            out.lines.last().map(String::as_str),
            Some("1 meshed deployment(s) unaffected: their own annotations set every value that changed")
        );
    }

    #[test]
    fn mesh_wide_defaults_re_apply_live_in_the_pods_of_the_current_template() {
        let (mut d, mut world) = running_app();
        // A third pod of an older template is pending restart anyway: left alone.
        pod(&mut world, "shop", "hello", "oldhash", 4);
        let before = d.state.mesh_defaults.clone();
        let new = merged_defaults(&before, &values(&[(EXCLUDE_IPS, "198.19.0.2/32")])).expect("valid");
        let out = set_defaults(&mut d, &world, new.clone(), true, None, &cfg()).expect("set");
        let [live] = out.live.as_slice() else { panic!("{out:?}") };
        assert_eq!(live.pods.len(), 2);
        assert!(live.pods.iter().all(|k| !k.name().contains("oldhash")));
        let ann = &d.state.deployments["shop/hello"].template.annotations;
        assert_eq!(live.capture, capture::decide(true, ann, &cfg(), &new).expect("compiles"));
        assert_eq!(live.previous, capture::decide(true, ann, &cfg(), &before).expect("compiles"));
        assert_eq!(live.stamp, capture::stamp(true, ann, &cfg(), &new));
        assert_ne!(live.capture, live.previous);
        assert!(out.lines[1].ends_with("capture rules re-applied live in 2 pod(s), no restart"), "{out:?}");
    }

    #[test]
    fn mesh_wide_defaults_are_refused_whole_with_every_problem() {
        let (mut d, world) = running_app();
        let err =
            merged_defaults(&d.state.mesh_defaults, &values(&[(EXCLUDE_IPS, "10.0.0.0/33"), ("global.proxy.x", "1")]))
                .expect_err("invalid");
        let MeshError::Invalid(lines) = err else { panic!("{err}") };
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("mesh-wide defaults: global.proxy.excludeIPRanges: \"10.0.0.0/33\""), "{lines:?}");
        let new = merged_defaults(&d.state.mesh_defaults, &values(&[(EXCLUDE_IPS, "198.19.0.2/32")])).expect("valid");
        let before = d.state.clone();
        let err = set_defaults(&mut d, &world, new.clone(), false, Some("7"), &cfg()).expect_err("stale");
        assert!(
            matches!(err, MeshError::Conflict { ref expected, ref actual, .. } if expected == "7" && actual == "0")
        );
        // With untracked exclusions, a live change of the excluded inbound ports is refused.
        let mut untracking = cfg();
        untracking.untrack_excluded_inbound = true;
        let ports = merged_defaults(&d.state.mesh_defaults, &values(&[("global.proxy.excludeInboundPorts", "5000")]))
            .expect("valid");
        let Err(MeshError::Invalid(e)) = set_defaults(&mut d, &world, ports, true, None, &untracking) else {
            panic!("refused")
        };
        assert!(e[0].starts_with("deployment shop/hello: ") && e[0].contains("without --live"), "{e:?}");
        // eBPF capture refuses what it cannot honour, per deployment.
        let mut ebpf = cfg();
        ebpf.ebpf_capture = true;
        let mut tproxy = d.state.clone();
        tproxy
            .deployments
            .get_mut("shop/hello")
            .expect("dep")
            .template
            .annotations
            .insert("traffic.sidecar.istio.io/kubevirtInterfaces".into(), "eth1".into());
        let mut d2 = Desired { state: tproxy, cluster_ips: d.cluster_ips.clone() };
        assert!(matches!(set_defaults(&mut d2, &world, new, false, None, &ebpf), Err(MeshError::Invalid(_))));
        assert_eq!(d.state, before, "nothing changed");
    }

    #[test]
    fn a_batch_goes_item_by_item_and_a_failing_item_changes_nothing() {
        let (mut d, world) = running_app();
        let mut other = APP.replace("name: hello", "name: other").replace("app: hello", "app: other");
        other = other.replace("port: 80, targetPort: 5000", "port: 81, targetPort: 5000");
        apply(&mut d, &world, objects(&other), false, &cfg()).expect("apply");
        let item = |name: &str, ports: &str, version: Option<&str>| AnnotateItem {
            namespace: "shop".into(),
            name: name.into(),
            set: BTreeMap::from([(EXCLUDE_IN.to_string(), ports.to_string())]),
            remove: vec![],
            expect_version: version.map(str::to_string),
        };
        let items = [
            item("hello", "5000", None),
            item("missing", "5000", None),
            item("other", "70000", None),
            item("other", "5001", Some("2")),
            item("other", "5002", Some("2")),
        ];
        let before = d.state.clone();
        let results = annotate_many(&mut d, &world, &items, false, &cfg());
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(MeshError::WorkloadNotFound { ref name, .. }) if name == "missing"));
        assert!(matches!(results[2], Err(MeshError::Invalid(ref e)) if e[0].contains("70000")));
        assert!(results[3].is_ok(), "{:?}", results[3]);
        assert!(matches!(results[4], Err(MeshError::Conflict { .. })), "the item before moved it on");
        let ann = |d: &Desired, n: &str| {
            d.state.deployments[&format!("shop/{n}")].template.annotations.get(EXCLUDE_IN).cloned()
        };
        assert_eq!((ann(&d, "hello").as_deref(), ann(&d, "other").as_deref()), (Some("5000"), Some("5001")));
        // An item taken back (its live re-apply failed) is as it was, the others stand.
        revert(&mut d, &before, "shop", "other");
        assert_eq!(ann(&d, "other"), None);
        assert_eq!(d.state.version("shop", "other"), before.version("shop", "other"));
        assert_eq!(ann(&d, "hello").as_deref(), Some("5000"));
    }

    #[test]
    fn deleting_a_namespace_takes_its_objects_and_frees_their_cluster_ips() {
        let (mut d, _) = running_app();
        let out = delete(&mut d, objects("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"));
        assert_eq!(out.lines, vec!["namespace/shop deleted"]);
        assert!(d.state.deployments.is_empty() && d.state.services.is_empty() && d.state.versions.is_empty());
        assert_eq!(d.cluster_ips.allocate().expect("free").to_string(), "198.19.0.2", "next-fit, but .1 is free again");
        let out = delete(&mut d, objects("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n"));
        assert!(out.lines[0].contains("kept"), "{out:?}");
        let out = delete(&mut d, objects(APP));
        assert!(out.lines.iter().all(|l| l.ends_with("not found")), "{out:?}");
    }
}
