//! The mesh-wide capture defaults of a cluster: the Helm values Istio's sidecar injector
//! renders pods with, read from (and, when the operator asks and RBAC allows, written to) the
//! `values` key of the `istio-sidecar-injector` ConfigMap in Istio's namespace.
//!
//! Istio's chart writes that key as the pretty-printed JSON of the values
//! (`manifests/charts/istio-control/istio-discovery/templates/istiod-injector-configmap.yaml`)
//! and the injector parses it as YAML into a map (`pkg/kube/inject/webhook.go`,
//! `NewValuesConfig`); the template then reads `.Values.global.proxy.*`
//! ([`meshpass_settings::mesh`]). Reading does exactly that. Writing changes only the
//! `global.proxy` capture values, keeps everything else, and is a JSON merge patch of
//! `data.values` with the ConfigMap's `resourceVersion` as precondition, so a concurrent change
//! (an upgrade, another operator) is reported, never overwritten. istiod watches the ConfigMap:
//! pods created from then on get the new values; running pods keep theirs until restarted.

use crate::error::{api_code, map_kube_error, Action};
use crate::KubeBackend;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use meshpass_api::backend::MeshDefaultsInfo;
use meshpass_api::model::WorkloadRef;
use meshpass_api::BackendError;
use meshpass_settings::{MeshDefaults, SettingError};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Istio's namespace (`istioctl install`'s and the chart's default).
pub const ISTIO_NAMESPACE: &str = "istio-system";
/// The injector's ConfigMap (`istio-sidecar-injector-<revision>` for a revision).
pub const INJECTOR_CONFIGMAP: &str = "istio-sidecar-injector";
/// The key holding the Helm values.
pub const VALUES_KEY: &str = "values";

/// Where a cluster's injector keeps its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectorConfigMap {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Default for InjectorConfigMap {
    fn default() -> Self {
        InjectorConfigMap { namespace: ISTIO_NAMESPACE.into(), name: INJECTOR_CONFIGMAP.into() }
    }
}

impl std::fmt::Display for InjectorConfigMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfigMap {}/{}", self.namespace, self.name)
    }
}

/// A cluster's mesh-wide capture defaults as its injector sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshValues {
    /// The values in force (Istio's default for each one missing or bad).
    pub defaults: MeshDefaults,
    /// What is wrong with the values, one line each (a value missing or invalid, no
    /// ConfigMap at all); pods without the annotation may not start while these last.
    pub problems: Vec<String>,
    /// The ConfigMap's `resourceVersion`, to name when writing (`None`: no ConfigMap).
    pub version: Option<String>,
    /// Where they were read from (`ConfigMap istio-system/istio-sidecar-injector, key values`).
    pub source: String,
}

/// The Helm values of a ConfigMap (its `values` key, YAML or JSON). `Err`: a line saying
/// what is wrong.
pub fn values_of(cm: &ConfigMap, at: &InjectorConfigMap) -> Result<Value, String> {
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(VALUES_KEY)) else {
        return Err(format!("{at} has no `{VALUES_KEY}` key (the injector's Helm values)"));
    };
    serde_yaml::from_str::<Value>(text).map_err(|e| format!("{at}: `{VALUES_KEY}` is not YAML or JSON: {e}"))
}

/// The mesh-wide defaults of a ConfigMap, read as Istio's template reads them.
pub fn mesh_values(cm: &ConfigMap, at: &InjectorConfigMap) -> MeshValues {
    let source = format!("{at}, key {VALUES_KEY}");
    let version = cm.metadata.resource_version.clone();
    match values_of(cm, at) {
        Ok(values) => {
            let (defaults, errors) = MeshDefaults::from_values(&values);
            let problems = errors.iter().map(|e: &SettingError| format!("{at}: {e}")).collect();
            MeshValues { defaults, problems, version, source }
        }
        Err(problem) => MeshValues { defaults: MeshDefaults::default(), problems: vec![problem], version, source },
    }
}

/// The merge patch that writes `new` into a ConfigMap's values (everything else kept), with
/// its `resourceVersion` as precondition. The values are written back as Istio's chart writes
/// them: pretty-printed JSON with sorted keys.
pub fn values_patch(cm: &ConfigMap, at: &InjectorConfigMap, new: &MeshDefaults) -> Result<Value, BackendError> {
    let mut values = values_of(cm, at).map_err(|p| BackendError::Invalid(vec![p]))?;
    new.write_values(&mut values).map_err(|e| BackendError::Invalid(vec![format!("{at}: {e}")]))?;
    let text = serde_json::to_string_pretty(&values)
        .map_err(|e| BackendError::failed(format!("encoding the values of {at}")).caused_by(e))?;
    let rv = cm.metadata.resource_version.clone().unwrap_or_default();
    Ok(json!({"metadata": {"resourceVersion": rv}, "data": {VALUES_KEY: text}}))
}

impl KubeBackend {
    fn injector_api(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client().clone(), &self.injector_configmap().namespace)
    }

    /// The ConfigMap, `None` when there is none.
    async fn injector_cm(&self) -> Result<Option<ConfigMap>, BackendError> {
        let at = self.injector_configmap();
        let action =
            Action::new(format!("get {at}"), format!("get configmaps ({} in namespace {})", at.name, at.namespace));
        match self.timed(&action, self.injector_api().get(&at.name)).await? {
            Ok(cm) => Ok(Some(cm)),
            Err(e) if api_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_kube_error(e, &action)),
        }
    }

    /// The cluster's mesh-wide capture defaults. Without the ConfigMap (Istio is not
    /// installed, or with another revision) they are Istio's defaults, and the problem says
    /// so.
    pub async fn mesh_values(&self) -> Result<MeshValues, BackendError> {
        let at = self.injector_configmap();
        Ok(match self.injector_cm().await? {
            Some(cm) => mesh_values(&cm, at),
            None => MeshValues {
                defaults: MeshDefaults::default(),
                problems: vec![format!(
                    "no {at}: Istio's sidecar injector is not installed there (or runs another revision); Istio's \
                     defaults are shown"
                )],
                version: None,
                source: format!("{at} (absent)"),
            },
        })
    }

    /// Writes mesh-wide capture defaults into the injector's ConfigMap, only if it is still at
    /// `expected_version` (else [`BackendError::Conflict`], nothing written). Needs `patch` on
    /// that one ConfigMap (`deploy/rbac-mesh-defaults.yaml`); without it the answer is
    /// [`BackendError::Forbidden`] naming the permission.
    pub async fn set_mesh_values(
        &self,
        new: &MeshDefaults,
        expected_version: &str,
    ) -> Result<MeshValues, BackendError> {
        let at = self.injector_configmap().clone();
        let id = WorkloadRef::new(&at.namespace, &at.name);
        let Some(cm) = self.injector_cm().await? else {
            return Err(BackendError::Invalid(vec![format!(
                "no {at} to write the mesh-wide defaults into: install Istio's sidecar injector first"
            )]));
        };
        let actual = cm.metadata.resource_version.clone().unwrap_or_default();
        if actual != expected_version {
            return Err(BackendError::Conflict { workload: id, expected: expected_version.into(), actual });
        }
        let body = values_patch(&cm, &at, new)?;
        let action =
            Action::new(format!("patch {at}"), format!("patch configmaps ({} in namespace {})", at.name, at.namespace));
        let pp = PatchParams { field_manager: Some(crate::backend::FIELD_MANAGER.into()), ..Default::default() };
        match self.timed(&action, self.injector_api().patch(&at.name, &pp, &Patch::Merge(&body))).await? {
            Ok(cm) => Ok(mesh_values(&cm, &at)),
            Err(e) if api_code(&e) == Some(409) => {
                // Moved on between the read and the write: say to which version.
                let now = self.injector_cm().await.ok().flatten().and_then(|c| c.metadata.resource_version);
                Err(BackendError::Conflict {
                    workload: id,
                    expected: expected_version.into(),
                    actual: now.unwrap_or_else(|| "unknown".into()),
                })
            }
            Err(e) => Err(map_kube_error(e, &action)),
        }
    }
}

impl KubeBackend {
    /// [`KubeBackend::mesh_values`] as the management plane shows them.
    pub(crate) async fn mesh_defaults_info(&self) -> Result<MeshDefaultsInfo, BackendError> {
        let v = self.mesh_values().await?;
        let writable = v.version.is_some();
        Ok(MeshDefaultsInfo {
            defaults: v.defaults,
            version: v.version.unwrap_or_default(),
            source: v.source,
            problems: v.problems,
            writable,
        })
    }

    /// Changes the named values (Helm path → text) in the injector's ConfigMap; the others
    /// stay. Running pods keep what they were injected with: the injector only reads the
    /// values when it creates a pod, so there is no live apply on Kubernetes.
    pub(crate) async fn set_mesh_defaults_values(
        &self,
        values: BTreeMap<String, String>,
        expected_version: &str,
        live: bool,
    ) -> Result<(MeshDefaultsInfo, Vec<String>), BackendError> {
        if live {
            return Err(BackendError::Unsupported(
                "applying mesh-wide defaults to running pods in place: Istio's injector reads them only when it \
                 creates a pod, so restart the workloads instead"
                    .into(),
            ));
        }
        let current = self.mesh_values().await?;
        let mut next = current.defaults.clone();
        let mut errors = Vec::new();
        for (k, v) in &values {
            if let Err(e) = next.set_value(k, v) {
                errors.extend(e.iter().map(ToString::to_string));
            }
        }
        if !errors.is_empty() {
            return Err(BackendError::Invalid(errors));
        }
        let written = self.set_mesh_values(&next, expected_version).await?;
        let at = self.injector_configmap();
        let lines = values
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k} = {v:?} in {at}: pods without their own annotation get it when they are next created \
                     (restart the workloads to apply it)"
                )
            })
            .collect();
        let info = MeshDefaultsInfo {
            writable: written.version.is_some(),
            version: written.version.unwrap_or_default(),
            defaults: written.defaults,
            source: written.source,
            problems: written.problems,
        };
        Ok((info, lines))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cm(values: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.resource_version = Some("42".into());
        c.data = Some(BTreeMap::from([
            ("config".to_string(), "policy: enabled".to_string()),
            (VALUES_KEY.to_string(), values.to_string()),
        ]));
        c
    }

    #[test]
    fn reads_json_or_yaml_values_and_names_each_problem() {
        let at = InjectorConfigMap::default();
        let json = r#"{"global": {"proxy": {"excludeIPRanges": "10.0.0.0/8", "excludeInboundPorts": "",
            "includeIPRanges": "*", "includeInboundPorts": "*", "statusPort": 15020}}}"#;
        let v = mesh_values(&cm(json), &at);
        assert_eq!(v.defaults.exclude_ip_ranges.to_string(), "10.0.0.0/8");
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.version.as_deref(), Some("42"));
        let yaml = "global:\n  proxy:\n    excludeIPRanges: 10.0.0.0/8\n    excludeInboundPorts: ''\n    includeIPRanges: '*'\n    includeInboundPorts: '*'\n    statusPort: 15020\n";
        assert_eq!(mesh_values(&cm(yaml), &at).defaults, v.defaults, "YAML as the injector parses it");
        let bad = mesh_values(&cm("{\"global\": {\"proxy\": {\"excludeIPRanges\": \"10.0.0.0/33\"}}}"), &at);
        assert_eq!(bad.problems.len(), 5, "{:?}", bad.problems);
        assert!(bad.problems[0].starts_with("ConfigMap istio-system/istio-sidecar-injector: global.proxy"));
        let broken = mesh_values(&cm("{not json"), &at);
        assert!(broken.problems[0].contains("is not YAML or JSON"), "{:?}", broken.problems);
    }

    #[test]
    fn the_patch_changes_only_the_capture_values_under_the_version() {
        let at = InjectorConfigMap::default();
        let c = cm(
            r#"{"global": {"hub": "docker.io/istio", "proxy": {"image": "proxyv2", "excludeIPRanges": ""}}, "revision": ""}"#,
        );
        let mut d = MeshDefaults::default();
        d.set_value("global.proxy.excludeIPRanges", "198.19.0.2/32").expect("valid");
        let patch = values_patch(&c, &at, &d).expect("patch");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch.as_object().map(|o| o.len()), Some(2), "metadata and data only");
        let text = patch["data"]["values"].as_str().expect("text");
        let written: Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(written["global"]["hub"], "docker.io/istio");
        assert_eq!(written["global"]["proxy"]["image"], "proxyv2");
        assert_eq!(written["global"]["proxy"]["excludeIPRanges"], "198.19.0.2/32");
        assert_eq!(written["revision"], "");
        assert!(text.starts_with("{\n  \"global\""), "pretty JSON as the chart writes it: {text}");
    }
}
