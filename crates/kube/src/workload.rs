//! The three workload kinds (Deployment, StatefulSet, DaemonSet) behind one [`Workload`] type,
//! and what meshpass derives from them: the pod template, the selector, the replica counts and
//! the rollout status exactly as `kubectl rollout status` decides it.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use std::collections::BTreeMap;
use std::fmt;

/// One of the workload kinds meshpass manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}

impl Kind {
    /// Every kind, in the order a bare name is resolved (a Deployment wins over a StatefulSet
    /// of the same name, as `kubectl` users expect of the most common kind).
    pub const ALL: [Kind; 3] = [Kind::Deployment, Kind::StatefulSet, Kind::DaemonSet];

    /// `Deployment`, `StatefulSet`, `DaemonSet` (the API's `kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
        }
    }

    /// The resource name in URLs and RBAC rules (`deployments`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::StatefulSet => "statefulsets",
            Kind::DaemonSet => "daemonsets",
        }
    }

    /// The words `kubectl rollout status` uses for it (`deployment`, `statefulset`, `daemon set`).
    fn kubectl_noun(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemon set",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workload object as the API server returned it.
#[derive(Clone, Debug)]
pub enum Workload {
    /// A Deployment.
    Deployment(Box<Deployment>),
    /// A StatefulSet.
    StatefulSet(Box<StatefulSet>),
    /// A DaemonSet.
    DaemonSet(Box<DaemonSet>),
}

impl From<Deployment> for Workload {
    fn from(d: Deployment) -> Self {
        Workload::Deployment(Box::new(d))
    }
}

impl From<StatefulSet> for Workload {
    fn from(s: StatefulSet) -> Self {
        Workload::StatefulSet(Box::new(s))
    }
}

impl From<DaemonSet> for Workload {
    fn from(d: DaemonSet) -> Self {
        Workload::DaemonSet(Box::new(d))
    }
}

/// Where a rollout stands, in `kubectl rollout status` terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Still rolling; the line kubectl would print.
    Waiting(String),
    /// Complete; kubectl's success line.
    Done(String),
    /// It cannot complete (progress deadline exceeded, or a strategy without rollout status).
    Failed(String),
}

impl Workload {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Workload::Deployment(_) => Kind::Deployment,
            Workload::StatefulSet(_) => Kind::StatefulSet,
            Workload::DaemonSet(_) => Kind::DaemonSet,
        }
    }

    /// Its metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Workload::Deployment(d) => &d.metadata,
            Workload::StatefulSet(s) => &s.metadata,
            Workload::DaemonSet(d) => &d.metadata,
        }
    }

    /// `metadata.name` (empty if the server sent none, which it never does).
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`.
    pub fn namespace(&self) -> &str {
        self.meta().namespace.as_deref().unwrap_or_default()
    }

    /// `metadata.resourceVersion`.
    pub fn resource_version(&self) -> &str {
        self.meta().resource_version.as_deref().unwrap_or_default()
    }

    /// `spec.template`.
    pub fn template(&self) -> Option<&PodTemplateSpec> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref().map(|s| &s.template),
            Workload::StatefulSet(s) => s.spec.as_ref().map(|s| &s.template),
            Workload::DaemonSet(d) => d.spec.as_ref().map(|s| &s.template),
        }
    }

    /// `spec.template.metadata.annotations` (empty when absent).
    pub fn template_annotations(&self) -> BTreeMap<String, String> {
        self.template().and_then(|t| t.metadata.as_ref()).and_then(|m| m.annotations.clone()).unwrap_or_default()
    }

    /// `spec.template.metadata.labels` (empty when absent).
    pub fn template_labels(&self) -> BTreeMap<String, String> {
        self.template().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default()
    }

    /// `spec.selector`.
    pub fn selector(&self) -> Option<&LabelSelector> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref().map(|s| &s.selector),
            Workload::StatefulSet(s) => s.spec.as_ref().map(|s| &s.selector),
            Workload::DaemonSet(d) => d.spec.as_ref().map(|s| &s.selector),
        }
    }

    /// Desired pods: `spec.replicas` (default 1), or the DaemonSet's scheduled count.
    pub fn desired(&self) -> u32 {
        let n = match self {
            Workload::Deployment(d) => d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            Workload::StatefulSet(s) => s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            Workload::DaemonSet(d) => d.status.as_ref().map(|s| s.desired_number_scheduled).unwrap_or(0),
        };
        u32::try_from(n).unwrap_or(0)
    }

    /// Ready pods as the controller counts them (`status.readyReplicas` / `numberReady`).
    pub fn ready(&self) -> u32 {
        let n = match self {
            Workload::Deployment(d) => d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
            Workload::StatefulSet(s) => s.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
            Workload::DaemonSet(d) => d.status.as_ref().map(|s| s.number_ready).unwrap_or(0),
        };
        u32::try_from(n).unwrap_or(0)
    }

    /// Whether the controller is still moving pods to the current template: the latest spec is
    /// not observed yet, or some pods still run an older revision. Unlike [`Workload::rollout`]
    /// this is false for a workload that is merely unavailable on its current template (a pod
    /// crashing, a node down), where a restart is what the operator asks for.
    pub fn template_rollout_pending(&self) -> bool {
        let generation = self.meta().generation.unwrap_or(0);
        match self {
            Workload::Deployment(d) => {
                let Some(st) = d.status.as_ref() else { return true };
                let updated = st.updated_replicas.unwrap_or(0);
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                generation > st.observed_generation.unwrap_or(0) || updated < want || st.replicas.unwrap_or(0) > updated
            }
            Workload::StatefulSet(sts) => {
                let Some(st) = sts.status.as_ref() else { return true };
                generation > st.observed_generation.unwrap_or(0)
                    || st.update_revision.as_deref().unwrap_or_default()
                        != st.current_revision.as_deref().unwrap_or_default()
            }
            Workload::DaemonSet(ds) => {
                let Some(st) = ds.status.as_ref() else { return true };
                generation > st.observed_generation.unwrap_or(0)
                    || st.updated_number_scheduled.unwrap_or(0) < st.desired_number_scheduled
            }
        }
    }

    /// The rollout status, decided exactly as `kubectl rollout status` does
    /// (kubectl's `polymorphichelpers/rollout_status.go`), with its wording.
    pub fn rollout(&self) -> Rollout {
        let noun = self.kind().kubectl_noun();
        let name = self.name();
        let generation = self.meta().generation.unwrap_or(0);
        match self {
            Workload::Deployment(d) => {
                let Some(st) = d.status.as_ref() else {
                    return Rollout::Waiting(format!("Waiting for {noun} spec update to be observed..."));
                };
                if generation > st.observed_generation.unwrap_or(0) {
                    return Rollout::Waiting(format!("Waiting for {noun} spec update to be observed..."));
                }
                let timed_out = st
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
                if timed_out {
                    return Rollout::Failed(format!("{noun} {name:?} exceeded its progress deadline"));
                }
                let updated = st.updated_replicas.unwrap_or(0);
                let replicas = st.replicas.unwrap_or(0);
                let available = st.available_replicas.unwrap_or(0);
                if let Some(want) = d.spec.as_ref().and_then(|s| s.replicas) {
                    if updated < want {
                        return Rollout::Waiting(format!(
                            "Waiting for {noun} {name:?} rollout to finish: {updated} out of {want} new replicas have been updated..."
                        ));
                    }
                }
                if replicas > updated {
                    return Rollout::Waiting(format!(
                        "Waiting for {noun} {name:?} rollout to finish: {} old replicas are pending termination...",
                        replicas - updated
                    ));
                }
                if available < updated {
                    return Rollout::Waiting(format!(
                        "Waiting for {noun} {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
                    ));
                }
                Rollout::Done(format!("{noun} {name:?} successfully rolled out"))
            }
            Workload::DaemonSet(ds) => {
                let strategy =
                    ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|u| u.type_.as_deref());
                if let Some(t) = strategy.filter(|t| *t != "RollingUpdate") {
                    return Rollout::Failed(format!(
                        "rollout status is only available for RollingUpdate strategy type (daemon set {name:?} uses {t}: its pods take the new template only when deleted)"
                    ));
                }
                let Some(st) = ds.status.as_ref() else {
                    return Rollout::Waiting(format!("Waiting for {noun} spec update to be observed..."));
                };
                if generation > st.observed_generation.unwrap_or(0) {
                    return Rollout::Waiting(format!("Waiting for {noun} spec update to be observed..."));
                }
                let updated = st.updated_number_scheduled.unwrap_or(0);
                let desired = st.desired_number_scheduled;
                let available = st.number_available.unwrap_or(0);
                if updated < desired {
                    return Rollout::Waiting(format!(
                        "Waiting for {noun} {name:?} rollout to finish: {updated} out of {desired} new pods have been updated..."
                    ));
                }
                if available < desired {
                    return Rollout::Waiting(format!(
                        "Waiting for {noun} {name:?} rollout to finish: {available} of {desired} updated pods are available..."
                    ));
                }
                Rollout::Done(format!("{noun} {name:?} successfully rolled out"))
            }
            Workload::StatefulSet(sts) => {
                let spec = sts.spec.as_ref();
                let strategy = spec.and_then(|s| s.update_strategy.as_ref());
                if let Some(t) = strategy.and_then(|u| u.type_.as_deref()).filter(|t| *t != "RollingUpdate") {
                    return Rollout::Failed(format!(
                        "rollout status is only available for RollingUpdate strategy type (statefulset {name:?} uses {t}: its pods take the new template only when deleted)"
                    ));
                }
                let Some(st) = sts.status.as_ref() else {
                    return Rollout::Waiting(format!("Waiting for {noun} spec update to be observed..."));
                };
                let observed = st.observed_generation.unwrap_or(0);
                if observed == 0 || generation > observed {
                    return Rollout::Waiting(format!("Waiting for {noun} spec update to be observed..."));
                }
                let ready = st.ready_replicas.unwrap_or(0);
                let want = spec.and_then(|s| s.replicas);
                if let Some(want) = want {
                    if ready < want {
                        return Rollout::Waiting(format!("Waiting for {} pods to be ready...", want - ready));
                    }
                }
                let partition =
                    strategy.and_then(|u| u.rolling_update.as_ref()).and_then(|r| r.partition).filter(|p| *p > 0);
                let updated = st.updated_replicas.unwrap_or(0);
                if let (Some(partition), Some(want)) = (partition, want) {
                    if updated < want - partition {
                        return Rollout::Waiting(format!(
                            "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...",
                            want - partition
                        ));
                    }
                    return Rollout::Done(format!(
                        "partitioned roll out complete: {updated} new pods have been updated..."
                    ));
                }
                let update_rev = st.update_revision.as_deref().unwrap_or_default();
                let current_rev = st.current_revision.as_deref().unwrap_or_default();
                if update_rev != current_rev {
                    return Rollout::Waiting(format!(
                        "waiting for statefulset rolling update to complete {updated} pods at revision {update_rev}..."
                    ));
                }
                Rollout::Done(format!(
                    "statefulset rolling update complete {} pods at revision {current_rev}...",
                    st.current_replicas.unwrap_or(0)
                ))
            }
        }
    }
}

/// True when `labels` satisfy `selector` (matchLabels and every matchExpression), as the API
/// server decides it. An empty selector selects everything.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k).is_some_and(|have| have == v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            // An operator the API server would have rejected: select nothing rather than all.
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// The selector in the `labelSelector=` query syntax (`app=helloworld,tier in (a,b),!legacy`).
pub fn selector_query(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors_match_and_render() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "helloworld")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "version".into(),
                    operator: "In".into(),
                    values: Some(vec!["v1".into(), "v2".into()]),
                },
                LabelSelectorRequirement { key: "legacy".into(), operator: "DoesNotExist".into(), values: None },
            ]),
        };
        assert!(selector_matches(&sel, &labels(&[("app", "helloworld"), ("version", "v1")])));
        assert!(!selector_matches(&sel, &labels(&[("app", "helloworld"), ("version", "v3")])));
        assert!(!selector_matches(&sel, &labels(&[("app", "helloworld"), ("version", "v1"), ("legacy", "")])));
        assert_eq!(selector_query(&sel), "app=helloworld,version in (v1,v2),!legacy");
    }

    #[test]
    fn deployment_rollout_wording_is_kubectls() {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}
        }))
        .expect("deployment");
        assert_eq!(
            Workload::from(d).rollout(),
            Rollout::Waiting(
                r#"Waiting for deployment "x" rollout to finish: 1 of 2 updated replicas are available..."#.into()
            )
        );
    }

    #[test]
    fn a_template_rollout_is_pending_only_while_pods_move_to_the_new_template() {
        let dep = |generation: i64, status: serde_json::Value| -> Workload {
            let d: Deployment = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x", "generation": generation},
                "spec": {"replicas": 2, "selector": {}, "template": {}},
                "status": status
            }))
            .expect("deployment");
            d.into()
        };
        let done =
            serde_json::json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2});
        assert!(!dep(3, done.clone()).template_rollout_pending());
        // Just patched: the new generation is not observed yet.
        assert!(dep(4, done).template_rollout_pending());
        // Observed, one pod still on the old template.
        let mid =
            serde_json::json!({"observedGeneration": 4, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2});
        assert!(dep(4, mid).template_rollout_pending());
        // All pods on the current template, one of them unavailable: not a template rollout (a
        // restart is what is asked for), though `kubectl rollout status` would still wait.
        let sick =
            serde_json::json!({"observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1});
        assert!(!dep(4, sick.clone()).template_rollout_pending());
        assert!(matches!(dep(4, sick).rollout(), Rollout::Waiting(_)));

        let sts = |status: serde_json::Value| -> Workload {
            let s: StatefulSet = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "db", "generation": 2},
                "spec": {"replicas": 3, "serviceName": "db", "selector": {}, "template": {}},
                "status": status
            }))
            .expect("statefulset");
            s.into()
        };
        assert!(sts(serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
            "currentRevision": "db-1", "updateRevision": "db-2"}))
        .template_rollout_pending());
        assert!(!sts(serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 2,
            "currentRevision": "db-2", "updateRevision": "db-2"}))
        .template_rollout_pending());
    }

    #[test]
    fn statefulset_and_daemonset_rollouts_are_kubectls() {
        let sts = |status: serde_json::Value, strategy: &str| -> Workload {
            let s: StatefulSet = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "db", "generation": 2},
                "spec": {"replicas": 3, "serviceName": "db", "selector": {}, "template": {}, "updateStrategy": {"type": strategy}},
                "status": status
            }))
            .expect("statefulset");
            s.into()
        };
        let st = serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 2, "updatedReplicas": 1,
            "currentRevision": "db-1", "updateRevision": "db-2"});
        assert_eq!(sts(st, "RollingUpdate").rollout(), Rollout::Waiting("Waiting for 1 pods to be ready...".into()));
        let st = serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 2,
            "currentRevision": "db-1", "updateRevision": "db-2"});
        assert_eq!(
            sts(st, "RollingUpdate").rollout(),
            Rollout::Waiting("waiting for statefulset rolling update to complete 2 pods at revision db-2...".into())
        );
        let st = serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
            "currentReplicas": 3, "currentRevision": "db-2", "updateRevision": "db-2"});
        assert_eq!(
            sts(st.clone(), "RollingUpdate").rollout(),
            Rollout::Done("statefulset rolling update complete 3 pods at revision db-2...".into())
        );
        assert!(matches!(sts(st, "OnDelete").rollout(), Rollout::Failed(m) if m.contains("OnDelete")));

        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent", "generation": 5},
            "spec": {"selector": {}, "template": {}, "updateStrategy": {"type": "RollingUpdate"}},
            "status": {"observedGeneration": 5, "desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberMisscheduled": 0,
                "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}
        }))
        .expect("daemonset");
        assert_eq!(
            Workload::from(ds).rollout(),
            Rollout::Waiting(
                r#"Waiting for daemon set "agent" rollout to finish: 2 of 3 updated pods are available..."#.into()
            )
        );
    }
}
