//! [`Client`]: a small async client for the API (hyper over a plain TCP connection per
//! request: the server is on loopback, so pooling would buy nothing), with one typed method per
//! route the CLI needs. API errors come back as [`ClientError::Api`] with the status and the
//! server's error body (including every [`FieldError`](crate::model::FieldError) of a 422).

use crate::auth::TOKEN_FILE;
use crate::model::{
    AuditEntry, AuditList, BatchRequest, BatchResult, BypassReport, CheckReport, CheckRequest, ErrorBody,
    MeshDefaultsDoc, MeshDefaultsUpdate, Operation, OperationState, Passthrough, PassthroughDoc, PassthroughUpdate,
    Preview, SessionInfo, Workload, WorkloadList, WorkloadRef,
};
use crate::server::ADDRESS_FILE;
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What can go wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status and body.
    #[error("{status}: {}", body.message)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's error body (`error` code, `message`, `errors`).
        body: ErrorBody,
    },
    /// The server could not be reached.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The server URL.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {url} failed: {message}")]
    Http {
        /// The server URL.
        url: String,
        /// What hyper said.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer ({status}): {message}")]
    Decode {
        /// The HTTP status.
        status: u16,
        /// Why it did not parse.
        message: String,
    },
    /// The server URL is not `http://HOST:PORT[/PREFIX]`.
    #[error("server URL {0:?} is not http://HOST:PORT")]
    Url(String),
    /// A state-directory file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one server.
#[derive(Clone, Debug)]
pub struct Client {
    url: String,
    authority: String,
    prefix: String,
    token: String,
    cluster: Option<String>,
}

/// Percent-encodes a query value or path segment (everything but unreserved characters).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn wpath(w: &WorkloadRef, rest: &str) -> String {
    format!("/api/v1/namespaces/{}/workloads/{}{rest}", enc(&w.namespace), enc(&w.name))
}

impl Client {
    /// A client of the server at `url` (`http://127.0.0.1:15080`) with `token`.
    pub fn new(url: &str, token: &str) -> Result<Self, ClientError> {
        let url = url.trim().trim_end_matches('/');
        let rest = url.strip_prefix("http://").ok_or_else(|| ClientError::Url(url.to_string()))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(ClientError::Url(url.to_string()));
        }
        // `http://host` means port 80, as in a browser (a bracketed IPv6 host has colons of
        // its own, so look for the port after the closing bracket).
        let host_end = authority.rfind(']').unwrap_or(0);
        let authority =
            if authority[host_end..].contains(':') { authority.to_string() } else { format!("{authority}:80") };
        Ok(Client {
            url: url.to_string(),
            authority,
            prefix: prefix.to_string(),
            token: token.trim().to_string(),
            cluster: None,
        })
    }

    /// The same client, addressing workloads and mesh-wide defaults in `cluster` (`?cluster=`
    /// on every workload route and the defaults, `cluster` in batch entries that name none);
    /// `None`: the server decides (its only cluster, or the one that has the workload).
    pub fn with_cluster(mut self, cluster: Option<String>) -> Self {
        self.cluster = cluster.filter(|c| !c.is_empty());
        self
    }

    /// The cluster this client addresses, when one was given.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// `path` with `cluster=` added when this client names a cluster and the route takes one.
    fn scoped(&self, path: &str) -> String {
        let takes =
            ["/api/v1/namespaces/", "/api/v1/defaults", "/api/v1/workloads"].iter().any(|p| path.starts_with(p));
        match &self.cluster {
            Some(c) if takes => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}cluster={}", enc(c))
            }
            _ => path.to_string(),
        }
    }

    /// The client of the server whose state directory is `dir` (`api-address`, `api-token`).
    pub fn from_state_dir(dir: &Path) -> Result<Self, ClientError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| ClientError::Io { path, source })
        };
        Self::new(&read(ADDRESS_FILE)?, &read(TOKEN_FILE)?)
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        if_match: Option<&str>,
    ) -> Result<T, ClientError> {
        let http_err = |e: &dyn std::fmt::Display| ClientError::Http { url: self.url.clone(), message: e.to_string() };
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|source| ClientError::Connect { url: self.url.clone(), source })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| http_err(&e))?;
        // The connection task ends when the exchange does (the request is the only one).
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.prefix, self.scoped(path)))
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::ACCEPT, "application/json");
        if let Some(v) = if_match {
            let v = if v.starts_with('"') || v.starts_with("W/") { v.to_string() } else { format!("\"{v}\"") };
            req = req.header(header::IF_MATCH, v);
        }
        let payload = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b).map_err(|e| http_err(&e))?)
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(payload)).map_err(|e| http_err(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| http_err(&e))?.to_bytes();
        conn.abort();
        if !status.is_success() {
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
                error: status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_"),
                message: String::from_utf8_lossy(&bytes).into_owned(),
                errors: Vec::new(),
            });
            return Err(ClientError::Api { status: status.as_u16(), body });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode { status: status.as_u16(), message: e.to_string() })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::GET, path, None, None).await
    }

    /// `GET /api/v1/session`.
    pub async fn session(&self) -> Result<SessionInfo, ClientError> {
        self.get("/api/v1/session").await
    }

    /// `GET /api/v1/workloads` as the server answers it: the workloads and each cluster's
    /// state (in this client's cluster only, when it names one).
    pub async fn workload_list(
        &self,
        namespace: Option<&str>,
        search: Option<&str>,
    ) -> Result<WorkloadList, ClientError> {
        let mut q = Vec::new();
        if let Some(ns) = namespace {
            q.push(format!("namespace={}", enc(ns)));
        }
        if let Some(s) = search {
            q.push(format!("search={}", enc(s)));
        }
        let path =
            if q.is_empty() { "/api/v1/workloads".to_string() } else { format!("/api/v1/workloads?{}", q.join("&")) };
        self.get::<WorkloadList>(&path).await
    }

    /// `GET /api/v1/workloads`, optionally in one namespace and matching `search`.
    pub async fn workloads(&self, namespace: Option<&str>, search: Option<&str>) -> Result<Vec<Workload>, ClientError> {
        Ok(self.workload_list(namespace, search).await?.items)
    }

    /// `GET …/{ns}/workloads/{name}`.
    pub async fn workload(&self, w: &WorkloadRef) -> Result<Workload, ClientError> {
        self.get(&wpath(w, "")).await
    }

    /// `GET …/passthrough` (its `resource_version` is the ETag to send back).
    pub async fn get_passthrough(&self, w: &WorkloadRef) -> Result<PassthroughDoc, ClientError> {
        self.get(&wpath(w, "/passthrough")).await
    }

    /// `PUT …/passthrough` with `If-Match: "if_match"` (or the update's `resource_version`).
    pub async fn put_passthrough(
        &self,
        w: &WorkloadRef,
        update: &PassthroughUpdate,
        if_match: Option<&str>,
    ) -> Result<PassthroughDoc, ClientError> {
        self.send(Method::PUT, &wpath(w, "/passthrough"), Some(update), if_match).await
    }

    /// `DELETE …/passthrough?restart=…` with `If-Match: "if_match"`.
    pub async fn delete_passthrough(
        &self,
        w: &WorkloadRef,
        restart: bool,
        if_match: Option<&str>,
    ) -> Result<PassthroughDoc, ClientError> {
        self.send::<(), _>(Method::DELETE, &wpath(w, &format!("/passthrough?restart={restart}")), None, if_match).await
    }

    /// `POST …/passthrough/preview`; with `fix_clients`, the impact as it will be once the fix
    /// rules exist.
    pub async fn preview(
        &self,
        w: &WorkloadRef,
        settings: &Passthrough,
        fix_clients: bool,
    ) -> Result<Preview, ClientError> {
        let query = if fix_clients { "/passthrough/preview?fixClients=true" } else { "/passthrough/preview" };
        self.send(Method::POST, &wpath(w, query), Some(settings), None).await
    }

    /// `POST /api/v1/passthrough/batch`: one result per workload.
    pub async fn batch(&self, request: &BatchRequest) -> Result<BatchResult, ClientError> {
        match &self.cluster {
            Some(c) => {
                let mut r = request.clone();
                if r.all {
                    r.cluster.get_or_insert_with(|| c.clone());
                }
                for t in &mut r.workloads {
                    t.cluster.get_or_insert_with(|| c.clone());
                }
                self.send(Method::POST, "/api/v1/passthrough/batch", Some(&r), None).await
            }
            None => self.send(Method::POST, "/api/v1/passthrough/batch", Some(request), None).await,
        }
    }

    /// `GET /api/v1/defaults`.
    pub async fn get_defaults(&self) -> Result<MeshDefaultsDoc, ClientError> {
        self.get("/api/v1/defaults").await
    }

    /// `PUT /api/v1/defaults` with `If-Match: "if_match"` (or the update's `resource_version`).
    pub async fn put_defaults(
        &self,
        update: &MeshDefaultsUpdate,
        if_match: Option<&str>,
    ) -> Result<MeshDefaultsDoc, ClientError> {
        self.send(Method::PUT, "/api/v1/defaults", Some(update), if_match).await
    }

    /// `POST …/restart`: the operation as it starts.
    pub async fn restart(&self, w: &WorkloadRef) -> Result<Operation, ClientError> {
        self.send::<(), _>(Method::POST, &wpath(w, "/restart"), None, None).await
    }

    /// `GET /api/v1/operations/{id}`.
    pub async fn operation(&self, id: &str) -> Result<Operation, ClientError> {
        self.get(&format!("/api/v1/operations/{}", enc(id))).await
    }

    /// Polls operation `id` every `interval` until it ends, calling `on_progress` with each
    /// new progress line once; returns the finished operation.
    pub async fn wait_operation(
        &self,
        id: &str,
        interval: Duration,
        mut on_progress: impl FnMut(&str) + Send,
    ) -> Result<Operation, ClientError> {
        let mut seen = 0;
        loop {
            let op = self.operation(id).await?;
            for line in op.progress.iter().skip(seen) {
                on_progress(line);
            }
            seen = seen.max(op.progress.len());
            if op.state != OperationState::Running {
                return Ok(op);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// `POST …/check`.
    pub async fn check(&self, w: &WorkloadRef, request: &CheckRequest) -> Result<CheckReport, ClientError> {
        self.send(Method::POST, &wpath(w, "/check"), Some(request), None).await
    }

    /// `GET …/bypass`.
    pub async fn bypass(&self, w: &WorkloadRef) -> Result<BypassReport, ClientError> {
        self.get(&wpath(w, "/bypass")).await
    }

    /// `GET /api/v1/audit?limit=N`, newest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, ClientError> {
        Ok(self.get::<AuditList>(&format!("/api/v1/audit?limit={limit}")).await?.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = Client::new("http://127.0.0.1:15080/", "t\n").unwrap();
        assert_eq!((c.authority.as_str(), c.prefix.as_str(), c.token.as_str()), ("127.0.0.1:15080", "", "t"));
        let c = Client::new("http://localhost/mesh", "t").unwrap();
        assert_eq!((c.authority.as_str(), c.prefix.as_str()), ("localhost:80", "/mesh"));
        assert_eq!(Client::new("http://[::1]:8080", "t").unwrap().authority, "[::1]:8080");
        assert_eq!(Client::new("http://[::1]", "t").unwrap().authority, "[::1]:80");
        assert!(Client::new("https://x", "t").is_err() && Client::new("http://", "t").is_err());
        assert_eq!(enc("a b/é"), "a%20b%2F%C3%A9");
        let c = Client::new("http://127.0.0.1:15080", "t").unwrap().with_cluster(Some("east".into()));
        let w = WorkloadRef::new("default", "sleep");
        assert_eq!(c.scoped(&wpath(&w, "")), "/api/v1/namespaces/default/workloads/sleep?cluster=east");
        assert_eq!(
            c.scoped(&wpath(&w, "/passthrough?restart=true")),
            "/api/v1/namespaces/default/workloads/sleep/passthrough?restart=true&cluster=east"
        );
        assert_eq!(c.scoped("/api/v1/defaults"), "/api/v1/defaults?cluster=east");
        assert_eq!(c.scoped("/api/v1/session"), "/api/v1/session");
    }
}
