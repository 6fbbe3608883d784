//! The control socket `<state>/control.sock` (mode 0600): one JSON request line per
//! connection, answered by zero or more `{"progress": "..."}` lines and one final
//! `{"ok": ...}` or `{"error": "..."}` line. [`Client`] is the synchronous client the CLI and
//! tests use.

pub use crate::plan::change::AnnotateItem;
use crate::MeshError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The socket's file name in the state directory.
pub const SOCKET: &str = "control.sock";

/// A workload (Deployment) and how far its pods are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `Deployment`.
    pub kind: String,
    /// True when its pods get a sidecar.
    pub meshed: bool,
    /// Ready pods.
    pub ready: u32,
    /// Desired pods (replicas).
    pub total: u32,
    /// True when running pods were made from an older template (a rollout restart applies it).
    pub pending_restart: bool,
    /// The current pod-template annotations.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// Running pods that have a sidecar.
    #[serde(default)]
    pub injected: u32,
    /// Names of the Services selecting its pods.
    #[serde(default)]
    pub services: Vec<String>,
    /// Changes on every change of the Deployment (see [`Client::annotate_if`]).
    #[serde(default)]
    pub resource_version: String,
    /// The labels of its pods (the pod template's).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The mesh-wide capture defaults and their version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultsStatus {
    /// The values (Istio's injector `global.proxy.*`).
    pub defaults: meshpass_settings::MeshDefaults,
    /// Changes on every change of the defaults (see [`Client::set_defaults`]).
    pub version: String,
}

/// A pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its Deployment.
    pub workload: String,
    /// Pod IP.
    pub ip: String,
    /// Its network namespace name (`ip netns exec NETNS …`).
    pub netns: String,
    /// All containers running and passing readiness.
    pub ready: bool,
    /// Has a sidecar.
    pub meshed: bool,
    /// Container restarts so far.
    pub restarts: u32,
}

/// A Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIP.
    pub cluster_ip: String,
    /// `(port, target_port)` pairs.
    pub ports: Vec<(u16, u16)>,
    /// Ready endpoints as `IP:targetPort` of the first port.
    pub endpoints: Vec<String>,
}

/// A request on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// List workloads.
    Workloads {
        /// Namespace filter.
        namespace: Option<String>,
    },
    /// List pods.
    Pods {
        /// Namespace filter.
        namespace: Option<String>,
    },
    /// List services.
    Services {
        /// Namespace filter.
        namespace: Option<String>,
    },
    /// The stored `PeerAuthentication`s and `DestinationRule`s, as Kubernetes objects.
    Policies {
        /// `PeerAuthentication` or `DestinationRule`; both when omitted.
        #[serde(default)]
        kind: Option<String>,
        /// Namespace filter.
        namespace: Option<String>,
    },
    /// The mesh as mutual-TLS policy resolution sees it (workloads, Services).
    MeshView,
    /// The node namespace's name.
    NodeNetns,
    /// Apply manifests.
    Apply {
        /// Multi-document YAML.
        yaml: String,
        /// Re-apply capture-only changes in place.
        live: bool,
    },
    /// Delete the objects named in manifests.
    Delete {
        /// Multi-document YAML.
        yaml: String,
    },
    /// Rolling restart of a Deployment.
    RolloutRestart {
        /// Namespace.
        namespace: String,
        /// Deployment name.
        name: String,
    },
    /// Set and remove pod-template annotations of a Deployment (`kubectl annotate` on the
    /// template, which is what DCE's passthrough dialog writes).
    Annotate {
        /// Namespace.
        namespace: String,
        /// Deployment name.
        name: String,
        /// Annotations to set.
        set: BTreeMap<String, String>,
        /// Annotation keys to remove.
        remove: Vec<String>,
        /// Re-apply capture rules in place instead of marking pods pending restart.
        live: bool,
        /// Only write if the Deployment is still at this resource version.
        #[serde(default)]
        expect_version: Option<String>,
    },
    /// [`Request::Annotate`] for several Deployments, each on its own (one failing changes
    /// nothing and stops nothing else), saved once. The answer is one reply per item.
    AnnotateMany {
        /// The changes, answered in this order.
        items: Vec<AnnotateItem>,
        /// Re-apply capture rules in place instead of marking pods pending restart.
        live: bool,
    },
    /// The mesh-wide capture defaults.
    Defaults,
    /// Change mesh-wide capture defaults: the values given (Helm path such as
    /// `global.proxy.excludeIPRanges` → text) replace those, the others stay.
    SetDefaults {
        /// The values to change.
        values: BTreeMap<String, String>,
        /// Re-apply the capture of affected pods in place instead of marking them pending
        /// restart.
        live: bool,
        /// Only write if the defaults are still at this version.
        #[serde(default)]
        expect_version: Option<String>,
    },
    /// Tear the mesh down and stop the supervisor.
    Shutdown,
}

/// One line of a reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A progress message (rollouts).
    Progress(String),
    /// Success, with the result.
    Ok(serde_json::Value),
    /// Failure.
    Error(String),
    /// Rejected input: one message per bad item (kept apart so clients can exit 2).
    Invalid(Vec<String>),
    /// The Deployment does not exist.
    WorkloadNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Some other object does not exist.
    NotFound(String),
    /// A precondition on the resource version failed.
    Conflict {
        /// `namespace/name`.
        workload: String,
        /// The version the write was based on.
        expected: String,
        /// The current version.
        actual: String,
    },
}

impl Reply {
    /// The outcome a final reply stands for (a progress line is a protocol error here).
    pub fn into_result(self) -> Result<serde_json::Value, MeshError> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Progress(p) => {
                Err(MeshError::Protocol { what: format!("a progress line as an answer: {p}"), source: None })
            }
            Reply::Error(e) => Err(MeshError::Remote(e)),
            Reply::Invalid(v) => Err(MeshError::Invalid(v)),
            Reply::WorkloadNotFound { namespace, name } => Err(MeshError::WorkloadNotFound { namespace, name }),
            Reply::NotFound(what) => Err(MeshError::NotFound(what)),
            Reply::Conflict { workload, expected, actual } => Err(MeshError::Conflict { workload, expected, actual }),
        }
    }
}

/// A synchronous client of a running supervisor.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// Connects to the supervisor serving `state_dir` (fails when none is running).
    pub fn connect(state_dir: &Path) -> Result<Client, MeshError> {
        let socket = state_dir.join(SOCKET);
        UnixStream::connect(&socket).map_err(|source| MeshError::NotRunning { path: socket.clone(), source })?;
        Ok(Client { socket })
    }

    fn call(&self, req: &Request, progress: &mut dyn FnMut(&str)) -> Result<serde_json::Value, MeshError> {
        let mut stream = UnixStream::connect(&self.socket)
            .map_err(|source| MeshError::NotRunning { path: self.socket.clone(), source })?;
        let mut line = serde_json::to_string(req).map_err(|e| MeshError::protocol("encoding the request")(e.into()))?;
        line.push('\n');
        stream.write_all(line.as_bytes()).map_err(|e| MeshError::protocol("sending the request")(e.into()))?;
        for line in BufReader::new(stream).lines() {
            let line = line.map_err(|e| MeshError::protocol("reading the reply")(e.into()))?;
            let reply = serde_json::from_str::<Reply>(&line)
                .map_err(|e| MeshError::protocol(format!("a reply that is not one: {line}"))(e.into()))?;
            match reply {
                Reply::Progress(p) => progress(&p),
                other => return other.into_result(),
            }
        }
        Err(MeshError::Protocol { what: "the supervisor closed the connection without an answer".into(), source: None })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, MeshError> {
        let v = self.call(&req, &mut |_| {})?;
        serde_json::from_value(v).map_err(|e| MeshError::protocol("an answer of the wrong shape")(e.into()))
    }

    /// Workloads, optionally in one namespace.
    pub fn workloads(&self, ns: Option<&str>) -> Result<Vec<WorkloadStatus>, MeshError> {
        self.get(Request::Workloads { namespace: ns.map(str::to_string) })
    }

    /// Pods, optionally in one namespace.
    pub fn pods(&self, ns: Option<&str>) -> Result<Vec<PodStatus>, MeshError> {
        self.get(Request::Pods { namespace: ns.map(str::to_string) })
    }

    /// Services, optionally in one namespace.
    pub fn services(&self, ns: Option<&str>) -> Result<Vec<ServiceStatus>, MeshError> {
        self.get(Request::Services { namespace: ns.map(str::to_string) })
    }

    /// Stored policy resources (`kind`: `PeerAuthentication` or `DestinationRule`; both when
    /// `None`), as Kubernetes JSON objects, oldest first.
    pub fn policies(&self, kind: Option<&str>, ns: Option<&str>) -> Result<Vec<serde_json::Value>, MeshError> {
        self.get(Request::Policies { kind: kind.map(str::to_string), namespace: ns.map(str::to_string) })
    }

    /// The mesh as mutual-TLS policy resolution sees it: every Deployment (labels, service
    /// account, sidecar or not) and every Service.
    pub fn mesh_view(&self) -> Result<meshpass_policy::MeshView, MeshError> {
        self.get(Request::MeshView)
    }

    /// The node namespace's name (for `ip netns exec`).
    pub fn node_netns(&self) -> Result<String, MeshError> {
        self.get(Request::NodeNetns)
    }

    /// Applies manifests; returns kubectl-like lines (`deployment.apps/x created`).
    pub fn apply(&self, yaml: &str, live: bool) -> Result<Vec<String>, MeshError> {
        self.get(Request::Apply { yaml: yaml.to_string(), live })
    }

    /// Deletes the objects the manifests name.
    pub fn delete(&self, yaml: &str) -> Result<Vec<String>, MeshError> {
        self.get(Request::Delete { yaml: yaml.to_string() })
    }

    /// Rolling restart; `progress` sees each step; returns when the rollout is complete.
    pub fn rollout_restart(&self, ns: &str, name: &str, progress: &mut dyn FnMut(&str)) -> Result<(), MeshError> {
        self.call(&Request::RolloutRestart { namespace: ns.to_string(), name: name.to_string() }, progress).map(|_| ())
    }

    /// Sets/removes pod-template annotations of a Deployment, validated like `apply`;
    /// returns what changed (`deployment.apps/x -n ns configured (pending restart)`).
    pub fn annotate(
        &self,
        ns: &str,
        name: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        live: bool,
    ) -> Result<Vec<String>, MeshError> {
        self.annotate_if(ns, name, set, remove, live, None)
    }

    /// [`Client::annotate`] with a precondition: when `expect_version` is given and the
    /// Deployment's resource version is another, nothing is written and the answer is
    /// [`MeshError::Conflict`].
    pub fn annotate_if(
        &self,
        ns: &str,
        name: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        live: bool,
        expect_version: Option<&str>,
    ) -> Result<Vec<String>, MeshError> {
        let req = Request::Annotate {
            namespace: ns.to_string(),
            name: name.to_string(),
            set,
            remove,
            live,
            expect_version: expect_version.map(str::to_string),
        };
        self.get(req)
    }

    /// Several annotate changes in one request ([`Request::AnnotateMany`]): one result per
    /// item, in order; `Err` only when the request as a whole failed (nothing changed).
    pub fn annotate_many(
        &self,
        items: Vec<AnnotateItem>,
        live: bool,
    ) -> Result<Vec<Result<Vec<String>, MeshError>>, MeshError> {
        let replies: Vec<Reply> = self.get(Request::AnnotateMany { items, live })?;
        Ok(replies
            .into_iter()
            .map(|r| {
                r.into_result().and_then(|v| {
                    serde_json::from_value(v).map_err(|e| MeshError::protocol("an answer of the wrong shape")(e.into()))
                })
            })
            .collect())
    }

    /// The mesh-wide capture defaults and their version.
    pub fn defaults(&self) -> Result<DefaultsStatus, MeshError> {
        self.get(Request::Defaults)
    }

    /// Changes mesh-wide capture defaults ([`Request::SetDefaults`]); returns what changed
    /// and what happens to the pods.
    pub fn set_defaults(
        &self,
        values: BTreeMap<String, String>,
        live: bool,
        expect_version: Option<&str>,
    ) -> Result<Vec<String>, MeshError> {
        self.get(Request::SetDefaults { values, live, expect_version: expect_version.map(str::to_string) })
    }

    /// Asks the supervisor to tear everything down and exit; returns once it has.
    pub fn shutdown(&self) -> Result<(), MeshError> {
        self.call(&Request::Shutdown, &mut |_| {}).map(|_| ())
    }
}
