//! [`KubeBackend`]: the management plane's [`Backend`] over a Kubernetes cluster running
//! Istio. Every operation is a handful of plain API calls (list, get, JSON merge patch, watch,
//! the services proxy) so that the RBAC it needs is small and the calls are easy to audit.
//!
//! Calls are made one after another, never in parallel: the order is deterministic (the mock
//! API server in the tests scripts it) and a management plane's load on the API server stays
//! at one request at a time.

use crate::error::{api_code, map_kube_error, timed_out, Action, KubeError};
use crate::injector::InjectorConfigMap;
use crate::inspect::{self, RESTARTED_AT};
use crate::workload::{selector_query, Kind, Rollout, Workload};
use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::watcher;
use kube::{Client, Config, Resource};
use meshpass_api::backend::error_chain;
use meshpass_api::backend::{MeshPolicies, Progress};
use meshpass_api::model::{CheckReport, CheckRequest, Direction, RuleCounter, RuleFormat, WorkloadInfo, WorkloadRef};
use meshpass_api::{Backend, BackendError, BackendKind};
use meshpass_settings::canon::{self, Dialect};
use meshpass_settings::Settings;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How long one API call may take before the user is told the API server is not answering.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restart may take: the default `progressDeadlineSeconds` of a Deployment.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest a single watch request asks to stay open (kube-rs's and client-go's default).
const WATCH_SECONDS: u32 = 290;
/// The field manager recorded in `managedFields` for meshpass's writes.
pub(crate) const FIELD_MANAGER: &str = "meshpass";

/// The management plane's backend for a Kubernetes cluster running Istio.
#[derive(Clone)]
pub struct KubeBackend {
    client: Client,
    namespaces: Vec<String>,
    request_timeout: Duration,
    rollout_timeout: Duration,
    rewatch_pause: Duration,
    injector: InjectorConfigMap,
}

impl Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("namespaces", &self.namespaces)
            .field("request_timeout", &self.request_timeout)
            .field("rollout_timeout", &self.rollout_timeout)
            .finish_non_exhaustive()
    }
}

/// The bounds kube-rs needs to list, get, patch and watch one workload kind.
trait Kindly:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static
where
    Workload: From<Self>,
{
}

impl<K> Kindly for K
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    Workload: From<K>,
{
}

impl KubeBackend {
    /// A backend over `client`, managing the workloads of `namespaces` (every namespace when
    /// empty).
    pub fn new(client: Client, namespaces: Vec<String>) -> Self {
        KubeBackend {
            client,
            namespaces,
            request_timeout: REQUEST_TIMEOUT,
            rollout_timeout: ROLLOUT_TIMEOUT,
            rewatch_pause: Duration::from_millis(200),
            injector: InjectorConfigMap::default(),
        }
    }

    /// Connects with the kubeconfig (`KUBECONFIG` or `~/.kube/config`; `context` picks a
    /// context, else the current one), or, without a kubeconfig, with the in-cluster service
    /// account. Checks that the API server answers (`GET /version`) before returning.
    pub async fn connect(context: Option<String>, namespaces: Vec<String>) -> Result<Self, KubeError> {
        let config = match &context {
            Some(c) => {
                let options = kube::config::KubeConfigOptions { context: Some(c.clone()), ..Default::default() };
                Config::from_kubeconfig(&options)
                    .await
                    .map_err(|source| KubeError::Kubeconfig { context: context.clone(), source })?
            }
            None => Config::infer().await.map_err(|source| KubeError::Infer { source })?,
        };
        Self::from_config(config, namespaces).await
    }

    /// Like [`KubeBackend::connect`], from a kubeconfig already loaded (for example with
    /// `kube::config::Kubeconfig::read_from(path)`); `context` picks a context, else its
    /// current one.
    pub async fn from_kubeconfig(
        kubeconfig: kube::config::Kubeconfig,
        context: Option<String>,
        namespaces: Vec<String>,
    ) -> Result<Self, KubeError> {
        let options = kube::config::KubeConfigOptions { context: context.clone(), ..Default::default() };
        let config = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|source| KubeError::Kubeconfig { context, source })?;
        Self::from_config(config, namespaces).await
    }

    /// A backend for `context` of the kubeconfig at `path` (default: `KUBECONFIG` or
    /// `~/.kube/config`), *without* asking the API server anything: for one of several
    /// clusters, where one being down must not stop the others ([`crate::clusters`]).
    pub async fn for_context(
        path: Option<&std::path::Path>,
        context: &str,
        namespaces: Vec<String>,
    ) -> Result<Self, KubeError> {
        let options = kube::config::KubeConfigOptions { context: Some(context.to_string()), ..Default::default() };
        let loaded = match path {
            Some(p) => kube::config::Kubeconfig::read_from(p),
            None => kube::config::Kubeconfig::read(),
        };
        let err = |source| KubeError::Kubeconfig { context: Some(context.to_string()), source };
        let config = Config::from_custom_kubeconfig(loaded.map_err(err)?, &options).await.map_err(err)?;
        let cluster_url = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|source| KubeError::Client { cluster_url, source })?;
        Ok(KubeBackend::new(client, namespaces))
    }

    /// Builds the client and checks that the API server answers (`GET /version`).
    async fn from_config(config: Config, namespaces: Vec<String>) -> Result<Self, KubeError> {
        let cluster_url = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .map_err(|source| KubeError::Client { cluster_url: cluster_url.clone(), source })?;
        match tokio::time::timeout(REQUEST_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(KubeError::Unreachable { cluster_url, source: crate::error::cause(e) }),
            Err(_) => {
                return Err(KubeError::Unreachable {
                    cluster_url,
                    source: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()).into(),
                })
            }
        }
        Ok(KubeBackend::new(client, namespaces))
    }

    /// How long one API call may take (default 30 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a restart may take before it is reported failed (default 600 s).
    pub fn with_rollout_timeout(mut self, timeout: Duration) -> Self {
        self.rollout_timeout = timeout;
        self
    }

    /// The pause before resuming a rollout's watch whose connection broke (default 200 ms; it
    /// doubles up to 5 s while connections keep breaking, and starts again with news).
    pub fn with_rewatch_pause(mut self, pause: Duration) -> Self {
        self.rewatch_pause = pause;
        self
    }

    /// Where the cluster's injector keeps its Helm values (default: ConfigMap
    /// `istio-system/istio-sidecar-injector`; `istio-sidecar-injector-<rev>` for a revision).
    pub fn with_injector_configmap(mut self, at: InjectorConfigMap) -> Self {
        self.injector = at;
        self
    }

    /// Where the mesh-wide capture defaults are read from ([`crate::injector`]).
    pub fn injector_configmap(&self) -> &InjectorConfigMap {
        &self.injector
    }

    /// The namespaces managed (empty = all).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The kube-rs client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) async fn timed<T>(
        &self,
        action: &Action,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, BackendError> {
        tokio::time::timeout(self.request_timeout, fut).await.map_err(|_| timed_out(action, self.request_timeout))
    }

    pub(crate) async fn call<T>(
        &self,
        action: &Action,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, BackendError> {
        self.timed(action, fut).await?.map_err(|e| map_kube_error(e, action))
    }

    fn check_scope(&self, w: &WorkloadRef) -> Result<(), BackendError> {
        if self.namespaces.is_empty() || self.namespaces.contains(&w.namespace) {
            Ok(())
        } else {
            // Outside the namespaces it was told to manage, a workload does not exist for
            // this backend, whatever RBAC would allow.
            Err(BackendError::NotFound(w.clone()))
        }
    }

    /// Namespace name → labels. `only` restricts the list to one namespace (a field selector,
    /// so that `list` permission suffices). `Ok(None)` when RBAC forbids listing namespaces but
    /// the backend was told which namespaces to manage (it then works without their labels).
    pub(crate) async fn namespace_labels(
        &self,
        only: Option<&str>,
    ) -> Result<Option<BTreeMap<String, BTreeMap<String, String>>>, BackendError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut lp = ListParams::default();
        if let Some(ns) = only {
            lp = lp.fields(&format!("metadata.name={ns}"));
        }
        let action = Action::new("list namespaces", "list namespaces");
        match self.timed(&action, api.list(&lp)).await? {
            Ok(list) => Ok(Some(
                list.items
                    .into_iter()
                    .map(|n| (n.metadata.name.unwrap_or_default(), n.metadata.labels.unwrap_or_default()))
                    .collect(),
            )),
            Err(e) if api_code(&e) == Some(403) && (!self.namespaces.is_empty() || only.is_some()) => {
                tracing::warn!("cannot list namespaces ({e}); deciding injection from the pod templates and pods");
                Ok(None)
            }
            Err(e) => Err(map_kube_error(e, &action)),
        }
    }

    async fn list_kind<K: Kindly>(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Workload>, BackendError>
    where
        Workload: From<K>,
    {
        let (api, scope): (Api<K>, String) = match namespace {
            Some(ns) => (Api::namespaced(self.client.clone(), ns), format!("in namespace {ns}")),
            None => (Api::all(self.client.clone()), "in all namespaces".into()),
        };
        let action = Action::new(format!("list {} {scope}", kind.plural()), format!("list {}.apps", kind.plural()));
        let list = self.call(&action, api.list(&ListParams::default())).await?;
        Ok(list.items.into_iter().map(Workload::from).collect())
    }

    pub(crate) async fn list_workloads(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<Vec<Workload>, BackendError> {
        match kind {
            Kind::Deployment => self.list_kind::<Deployment>(kind, namespace).await,
            Kind::StatefulSet => self.list_kind::<StatefulSet>(kind, namespace).await,
            Kind::DaemonSet => self.list_kind::<DaemonSet>(kind, namespace).await,
        }
    }

    async fn get_kind<K: Kindly>(&self, kind: Kind, w: &WorkloadRef) -> Result<Option<Workload>, BackendError>
    where
        Workload: From<K>,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &w.namespace);
        let action = Action::new(format!("get {} {w}", kind.plural()), format!("get {}.apps", kind.plural())).on(w);
        match self.timed(&action, api.get(&w.name)).await? {
            Ok(k) => Ok(Some(Workload::from(k))),
            Err(e) if api_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_kube_error(e, &action)),
        }
    }

    /// The workload named `w`, whichever kind it is.
    async fn get_workload(&self, w: &WorkloadRef) -> Result<Workload, BackendError> {
        self.check_scope(w)?;
        for kind in Kind::ALL {
            let found = match kind {
                Kind::Deployment => self.get_kind::<Deployment>(kind, w).await?,
                Kind::StatefulSet => self.get_kind::<StatefulSet>(kind, w).await?,
                Kind::DaemonSet => self.get_kind::<DaemonSet>(kind, w).await?,
            };
            if let Some(found) = found {
                return Ok(found);
            }
        }
        Err(BackendError::NotFound(w.clone()))
    }

    async fn list_pods(&self, namespace: &str, selector: Option<String>) -> Result<Vec<Pod>, BackendError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut lp = ListParams::default();
        if let Some(s) = selector.as_deref().filter(|s| !s.is_empty()) {
            lp = lp.labels(s);
        }
        let action = Action::new(format!("list pods in namespace {namespace}"), "list pods");
        Ok(self.call(&action, api.list(&lp)).await?.items)
    }

    pub(crate) async fn list_services(&self, namespace: &str) -> Result<Vec<Service>, BackendError> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let action = Action::new(format!("list services in namespace {namespace}"), "list services");
        Ok(self.call(&action, api.list(&ListParams::default())).await?.items)
    }

    /// Everything the API shows about one workload, from its object, its namespace's labels
    /// (None = unknown), its pods and its namespace's Services.
    fn info(
        workload: &Workload,
        ns_labels: Option<&BTreeMap<String, String>>,
        labels_known: bool,
        pods: &[&Pod],
        services: &[Service],
    ) -> WorkloadInfo {
        let running: Vec<&Pod> = pods.iter().copied().filter(|p| inspect::is_running(p)).collect();
        let injected = running.iter().filter(|p| inspect::has_sidecar(p)).count();
        let policy = inspect::mesh_policy(ns_labels, workload);
        // Without the namespace's labels, the pods tell whether injection is on.
        let meshed = match policy {
            Some(m) => m,
            None if !labels_known => injected > 0,
            None => false,
        };
        let template = workload.template_annotations();
        let pending_restart = running
            .iter()
            .any(|p| inspect::annotations_differ(&template, p) || (meshed != inspect::has_sidecar(p) && labels_known));
        WorkloadInfo {
            workload: WorkloadRef::new(workload.namespace(), workload.name()),
            kind: workload.kind().as_str().to_string(),
            meshed,
            pending_restart,
            ready: u32::try_from(running.iter().filter(|p| inspect::is_ready(p)).count()).unwrap_or(u32::MAX),
            total: workload.desired(),
            injected: u32::try_from(injected).unwrap_or(u32::MAX),
            services: inspect::services_for(workload, services),
            annotations: template,
            labels: workload.template_labels(),
            resource_version: workload.resource_version().to_string(),
        }
    }

    /// [`Self::info`] for one workload, fetching its namespace, pods and Services.
    async fn describe(&self, workload: &Workload) -> Result<WorkloadInfo, BackendError> {
        let ns = workload.namespace().to_string();
        let labels = self.namespace_labels(Some(&ns)).await?;
        let ns_labels = labels.as_ref().map(|m| m.get(&ns).cloned().unwrap_or_default());
        let selector = workload.selector().map(selector_query);
        let pods = self.list_pods(&ns, selector).await?;
        let services = self.list_services(&ns).await?;
        let mine = inspect::pods_of(workload, &pods);
        Ok(Self::info(workload, ns_labels.as_ref(), labels.is_some(), &mine, &services))
    }

    async fn merge_patch<K: Kindly>(
        &self,
        action: &Action,
        w: &WorkloadRef,
        body: &Value,
    ) -> Result<Result<K, kube::Error>, BackendError>
    where
        Workload: From<K>,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &w.namespace);
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        self.timed(action, api.patch(&w.name, &pp, &Patch::Merge(body))).await
    }

    async fn patch_workload(
        &self,
        kind: Kind,
        action: &Action,
        w: &WorkloadRef,
        body: &Value,
    ) -> Result<Result<Workload, kube::Error>, BackendError> {
        Ok(match kind {
            Kind::Deployment => self.merge_patch::<Deployment>(action, w, body).await?.map(Workload::from),
            Kind::StatefulSet => self.merge_patch::<StatefulSet>(action, w, body).await?.map(Workload::from),
            Kind::DaemonSet => self.merge_patch::<DaemonSet>(action, w, body).await?.map(Workload::from),
        })
    }

    /// Follows the workload until its rollout completes (`Ok`) or fails, as
    /// `kubectl rollout status` does, through kube-runtime's watcher: it lists the object,
    /// watches from there, resumes a watch that ends and re-lists when the API server says the
    /// version is gone (410). Each new status line goes to `progress`.
    async fn wait_rollout<K: Kindly>(
        &self,
        w: &WorkloadRef,
        initial: Workload,
        progress: &Progress,
    ) -> Result<(), BackendError>
    where
        Workload: From<K>,
    {
        let kind = initial.kind();
        let deadline = Instant::now() + self.rollout_timeout;
        let mut last_line: Option<String> = None;
        let mut settle = |wl: &Workload| -> Option<Result<(), BackendError>> {
            let (line, done) = match wl.rollout() {
                Rollout::Waiting(line) => (line, None),
                Rollout::Done(line) => (line, Some(Ok(()))),
                Rollout::Failed(reason) => {
                    return Some(Err(BackendError::failed(format!("rollout of {kind} {w} failed: {reason}"))))
                }
            };
            if last_line.as_deref() != Some(line.as_str()) {
                progress(line.clone());
                last_line = Some(line);
            }
            done
        };
        if let Some(done) = settle(&initial) {
            return done;
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &w.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", w.name)).timeout(WATCH_SECONDS);
        let action =
            Action::new(format!("watch {} {w}", kind.plural()), format!("list and watch {}.apps", kind.plural())).on(w);
        let deleted = || BackendError::failed(format!("{kind} {w} was deleted during its rollout"));
        let mut events = std::pin::pin!(watcher::watcher(api, config));
        // Whether the object was in the current (re-)list: absent from it means deleted.
        let mut listed = false;
        let mut pause = self.rewatch_pause;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, events.next()).await else {
                return Err(self.rollout_timed_out(kind, w, &last_line));
            };
            let error = match next {
                // The watcher's stream does not end; should it, the rollout cannot be followed.
                None => return Err(BackendError::failed(format!("the watch of {kind} {w} ended"))),
                Some(Ok(event)) => {
                    pause = self.rewatch_pause;
                    match event {
                        watcher::Event::Init => listed = false,
                        watcher::Event::InitDone if !listed => return Err(deleted()),
                        watcher::Event::InitDone => {}
                        watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                            listed = true;
                            if let Some(done) = settle(&Workload::from(obj)) {
                                return done;
                            }
                        }
                        watcher::Event::Delete(_) => return Err(deleted()),
                    }
                    continue;
                }
                Some(Err(e)) => e,
            };
            match error {
                // The version is too old: the watcher re-lists on its own.
                watcher::Error::WatchError(status) if status.code == 410 => {
                    tracing::debug!("watch of {w}: {} (410 Gone); re-listing", status.message);
                    continue;
                }
                watcher::Error::WatchError(status) => return Err(map_kube_error(kube::Error::Api(status), &action)),
                watcher::Error::InitialListFailed(e)
                | watcher::Error::WatchStartFailed(e)
                | watcher::Error::WatchFailed(e) => match e {
                    e if api_code(&e) == Some(410) => continue,
                    e @ (kube::Error::ReadEvents(_) | kube::Error::HyperError(_) | kube::Error::Service(_)) => {
                        // A broken connection: the watcher resumes; do not spin on the API server.
                        tracing::warn!("watch of {w} broke ({}); re-watching", error_chain(&e));
                        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                    e => return Err(map_kube_error(e, &action)),
                },
                e @ watcher::Error::NoResourceVersion => {
                    return Err(BackendError::failed(format!("cannot watch {kind} {w}")).caused_by(e))
                }
            }
        }
    }

    fn rollout_timed_out(&self, kind: Kind, w: &WorkloadRef, last: &Option<String>) -> BackendError {
        BackendError::failed(format!(
            "rollout of {kind} {w} did not complete within {:?}{}",
            self.rollout_timeout,
            last.as_deref().map(|l| format!(" (last status: {l})")).unwrap_or_default()
        ))
    }
}

/// Istio-injector-equivalent validation of the annotations a write would leave on the pod
/// template: every bad item, each naming key, item and reason (the engine's refusals, and what
/// Istio's injector refuses beyond them, such as port ranges).
fn validate(annotations: &BTreeMap<String, String>) -> Result<(), BackendError> {
    let mut errors: Vec<String> = match Settings::from_annotations(annotations) {
        Ok(_) => Vec::new(),
        Err(errs) => errs.iter().map(ToString::to_string).collect(),
    };
    errors.extend(canon::dialect_refusals(annotations, Dialect::Istio).iter().map(ToString::to_string));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(BackendError::Invalid(errors))
    }
}

/// The JSON merge patch that sets and removes pod-template annotations, with the
/// `resourceVersion` precondition (a merge patch carrying `metadata.resourceVersion` fails
/// with 409 when the object has moved on).
pub fn annotations_patch(expected_version: &str, set: &BTreeMap<String, String>, remove: &[String]) -> Value {
    let mut annotations = Map::new();
    for key in remove {
        if !set.contains_key(key) {
            annotations.insert(key.clone(), Value::Null);
        }
    }
    for (k, v) in set {
        annotations.insert(k.clone(), Value::String(v.clone()));
    }
    json!({
        "metadata": {"resourceVersion": expected_version},
        "spec": {"template": {"metadata": {"annotations": annotations}}}
    })
}

/// The JSON merge patch `kubectl rollout restart` sends (it sends the same map as a strategic
/// merge patch; for this field both mean the same).
pub fn restart_patch(restarted_at: &str) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}}})
}

fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    // Whole seconds, as kubectl writes it (Go's time.RFC3339).
    let secs = now.as_second();
    k8s_openapi::jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_else(|_| now.to_string())
}

#[async_trait]
impl Backend for KubeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kube
    }

    fn rule_format(&self) -> RuleFormat {
        RuleFormat::Iptables
    }

    fn dialect(&self) -> Dialect {
        Dialect::Istio
    }

    async fn list(&self) -> Result<Vec<WorkloadInfo>, BackendError> {
        let labels = self.namespace_labels(None).await?;
        let scopes: Vec<Option<&str>> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().map(|n| Some(n.as_str())).collect()
        };
        let mut workloads = Vec::new();
        for scope in &scopes {
            for kind in Kind::ALL {
                workloads.extend(self.list_workloads(kind, *scope).await?);
            }
        }
        let empty = BTreeMap::new();
        // Only workloads Istio's injection concerns: a namespace with injection, or a pod
        // template that says either way. Without namespace labels, every workload of the
        // namespaces named on the command line.
        workloads.retain(|w| match &labels {
            Some(l) => inspect::mesh_policy(Some(l.get(w.namespace()).unwrap_or(&empty)), w).is_some(),
            None => true,
        });
        let mut by_ns: BTreeMap<String, Vec<Workload>> = BTreeMap::new();
        for w in workloads {
            by_ns.entry(w.namespace().to_string()).or_default().push(w);
        }
        let mut out = Vec::new();
        for (ns, ws) in by_ns {
            let pods = self.list_pods(&ns, None).await?;
            let services = self.list_services(&ns).await?;
            let ns_labels = labels.as_ref().map(|l| l.get(&ns).cloned().unwrap_or_default());
            for w in &ws {
                let mine = inspect::pods_of(w, &pods);
                out.push(Self::info(w, ns_labels.as_ref(), labels.is_some(), &mine, &services));
            }
        }
        out.sort_by(|a, b| a.workload.cmp(&b.workload).then_with(|| a.kind.cmp(&b.kind)));
        Ok(out)
    }

    async fn get(&self, workload: &WorkloadRef) -> Result<WorkloadInfo, BackendError> {
        let w = self.get_workload(workload).await?;
        self.describe(&w).await
    }

    async fn patch_annotations(
        &self,
        workload: &WorkloadRef,
        expected_version: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<WorkloadInfo, BackendError> {
        let current = self.get_workload(workload).await?;
        if current.resource_version() != expected_version {
            return Err(BackendError::Conflict {
                workload: workload.clone(),
                expected: expected_version.to_string(),
                actual: current.resource_version().to_string(),
            });
        }
        let mut merged = current.template_annotations();
        for key in &remove {
            merged.remove(key);
        }
        merged.extend(set.clone());
        // Defensive: the server validated already, but no caller may get a template past
        // meshpass that Istio's injector would reject.
        validate(&merged)?;
        let kind = current.kind();
        let action =
            Action::new(format!("patch {} {workload}", kind.plural()), format!("patch {}.apps", kind.plural()))
                .on(workload);
        let body = annotations_patch(expected_version, &set, &remove);
        let patched = match self.patch_workload(kind, &action, workload, &body).await? {
            Ok(p) => p,
            Err(e) if api_code(&e) == Some(409) => {
                // The precondition failed between our read and the write: report the version
                // the workload has now, so the user can reload.
                let actual = match self.get_workload(workload).await {
                    Ok(now) => now.resource_version().to_string(),
                    Err(_) => "unknown".to_string(),
                };
                return Err(BackendError::Conflict {
                    workload: workload.clone(),
                    expected: expected_version.to_string(),
                    actual,
                });
            }
            Err(e) => return Err(map_kube_error(e, &action)),
        };
        self.describe(&patched).await
    }

    async fn restart(&self, workload: &WorkloadRef, progress: Progress) -> Result<(), BackendError> {
        let current = self.get_workload(workload).await?;
        let kind = current.kind();
        let resource = format!("{}.apps/{}", kind.as_str().to_ascii_lowercase(), workload.name);
        let patched = if current.template_rollout_pending() {
            // On a cluster the passthrough change itself (a pod-template edit) already made the
            // controller roll the pods; a `restartedAt` on top would replace them a second time.
            // Follow the rollout in progress instead.
            progress(format!(
                "{resource} is already rolling out its changed pod template; following that rollout instead of \
                 restarting it again"
            ));
            current
        } else {
            let action =
                Action::new(format!("restart {} {workload}", kind.plural()), format!("patch {}.apps", kind.plural()))
                    .on(workload);
            let body = restart_patch(&now_rfc3339());
            let patched =
                self.patch_workload(kind, &action, workload, &body).await?.map_err(|e| map_kube_error(e, &action))?;
            progress(format!("{resource} restarted"));
            patched
        };
        match kind {
            Kind::Deployment => self.wait_rollout::<Deployment>(workload, patched, &progress).await,
            Kind::StatefulSet => self.wait_rollout::<StatefulSet>(workload, patched, &progress).await,
            Kind::DaemonSet => self.wait_rollout::<DaemonSet>(workload, patched, &progress).await,
        }
    }

    async fn check(&self, workload: &WorkloadRef, request: &CheckRequest) -> Result<CheckReport, BackendError> {
        if request.direction == Direction::Outbound {
            return Err(BackendError::Unsupported(
                "outbound checks run inside a pod; on Kubernetes, use `kubectl exec` into a pod of the workload \
                 (for example `curl -sI http://TARGET`) and read the sidecar's access log"
                    .into(),
            ));
        }
        let wl = self.get_workload(workload).await?;
        let services = self.list_services(&workload.namespace).await?;
        let infos = inspect::services_for(&wl, &services);
        crate::check::inbound(&self.client, self.request_timeout, workload, &infos, request).await
    }

    async fn rule_counters(&self, workload: &WorkloadRef) -> Result<Vec<RuleCounter>, BackendError> {
        Err(BackendError::Unsupported(format!(
            "rule counters live in the pods' network namespaces on the nodes, which the Kubernetes API does not expose; \
             read them with `kubectl debug node/NODE` and `iptables-save -c` in a pod of {workload}"
        )))
    }

    async fn mesh_policies(&self) -> Result<MeshPolicies, BackendError> {
        let policies = self.policies().await?;
        let view = self.mesh_view().await?;
        // Which client called which Service is in the sidecars' telemetry, not in the API
        // server: every meshed workload is a possible caller.
        Ok(MeshPolicies { view, policies, calls: Default::default() })
    }

    async fn create_policy(&self, resource: &meshpass_policy::Resource) -> Result<(), BackendError> {
        match resource.kind() {
            meshpass_policy::Kind::DestinationRule => self.create_destination_rule(resource).await,
            other => Err(BackendError::Unsupported(format!(
                "creating a {other}: meshpass creates only the DestinationRules of passthrough's fix"
            ))),
        }
    }

    async fn delete_policy(&self, resource: &meshpass_policy::ResourceRef) -> Result<(), BackendError> {
        match resource.kind {
            meshpass_policy::Kind::DestinationRule => self.delete_destination_rule(resource).await,
            other => Err(BackendError::Unsupported(format!(
                "deleting a {other}: meshpass deletes only the DestinationRules of passthrough's fix"
            ))),
        }
    }

    async fn mesh_defaults(&self) -> Result<meshpass_api::backend::MeshDefaultsInfo, BackendError> {
        self.mesh_defaults_info().await
    }

    async fn set_mesh_defaults(
        &self,
        values: BTreeMap<String, String>,
        expected_version: &str,
        live: bool,
    ) -> Result<(meshpass_api::backend::MeshDefaultsInfo, Vec<String>), BackendError> {
        self.set_mesh_defaults_values(values, expected_version, live).await
    }
}
