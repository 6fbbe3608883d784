//! "Check effect" on Kubernetes: an inbound request through the API server's service proxy
//! (`/api/v1/namespaces/NS/services/NAME:PORT/proxy/PATH`). The API server connects to a pod
//! from outside the mesh (it has no sidecar), so the response shows whether the pod's sidecar
//! answered (`server: istio-envoy`, `x-envoy-upstream-service-time`) or the app did.

use crate::error::{map_kube_error, timed_out, Action, ApiServerSaid};
use kube::core::Status;
use meshpass_api::model::{CheckReport, CheckRequest, Direction, PeerIdentities, ServiceInfo, Verdict, WorkloadRef};
use meshpass_api::BackendError;
use std::time::Duration;

/// What the report's `from` says.
pub const FROM: &str = "apiserver proxy";

/// Picks the Service and port: the one asked for (a Service port, or a target port), else the
/// first Service's first port.
fn pick<'a>(
    w: &WorkloadRef,
    services: &'a [ServiceInfo],
    port: Option<u16>,
) -> Result<(&'a ServiceInfo, u16), BackendError> {
    if services.is_empty() {
        return Err(BackendError::Invalid(vec![format!(
            "no Service selects the pods of {w}; an inbound check calls the workload through a Service"
        )]));
    }
    match port {
        None => services
            .iter()
            .find_map(|s| s.ports.first().map(|p| (s, p.port)))
            .ok_or_else(|| BackendError::Invalid(vec![format!("the Services of {w} have no ports")])),
        Some(want) => services
            .iter()
            .find_map(|s| s.ports.iter().find(|p| p.port == want).map(|p| (s, p.port)))
            .or_else(|| {
                services.iter().find_map(|s| s.ports.iter().find(|p| p.target_port == want).map(|p| (s, p.port)))
            })
            .ok_or_else(|| BackendError::Invalid(vec![format!("no Service of {w} has port {want}")])),
    }
}

/// The request path: `/` by default; must be an absolute path that forms a valid URI.
fn clean_path(path: Option<&str>) -> Result<String, BackendError> {
    let p = path.unwrap_or("/");
    let p = if p.starts_with('/') { p.to_string() } else { format!("/{p}") };
    if p.parse::<http::uri::PathAndQuery>().is_err() || p.contains("..") {
        return Err(BackendError::Invalid(vec![format!("path {p:?} is not a valid HTTP path")]));
    }
    Ok(p)
}

/// The verdict and evidence lines from the response headers.
pub fn judge(headers: &[(String, String)], target_port: u16) -> (Verdict, Vec<String>) {
    let get = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let server = get("server");
    let ust = get("x-envoy-upstream-service-time");
    let mut evidence = Vec::new();
    let verdict = if server == Some("istio-envoy") || ust.is_some() {
        if let Some(s) = server.filter(|s| *s == "istio-envoy") {
            evidence.push(format!("server: {s} — the pod's sidecar (Envoy) answered"));
        }
        if let Some(t) = ust {
            evidence.push(format!("x-envoy-upstream-service-time: {t} — Envoy timed its call to the app"));
        }
        Verdict::Sidecar
    } else {
        evidence.push(format!(
            "no server: istio-envoy and no x-envoy-upstream-service-time — the app answered directly; port {target_port} bypasses the sidecar"
        ));
        if let Some(s) = server {
            evidence.push(format!("server: {s} — the app's own header"));
        }
        Verdict::Passthrough
    };
    evidence.push(
        "requested through the Kubernetes API server's service proxy: a client outside the mesh, without a sidecar"
            .into(),
    );
    (verdict, evidence)
}

/// Runs the inbound check against one of `services` (those selecting the workload).
pub(crate) async fn inbound(
    client: &kube::Client,
    timeout: Duration,
    w: &WorkloadRef,
    services: &[ServiceInfo],
    request: &CheckRequest,
) -> Result<CheckReport, BackendError> {
    let (svc, port) = pick(w, services, request.port)?;
    let target_port = svc.ports.iter().find(|p| p.port == port).map_or(port, |p| p.target_port);
    let path = clean_path(request.path.as_deref())?;
    let url = format!("/api/v1/namespaces/{}/services/{}:{port}/proxy{path}", w.namespace, svc.name);
    let action =
        Action::new(format!("GET {url} (services proxy)"), format!("get services/proxy in namespace {}", w.namespace))
            .on(w);
    let req = http::Request::get(url.as_str())
        .body(kube::client::Body::from(Vec::new()))
        .map_err(|e| BackendError::Invalid(vec![format!("cannot build the request {url}: {e}")]))?;
    let res = tokio::time::timeout(timeout, client.send(req))
        .await
        .map_err(|_| timed_out(&action, timeout))?
        .map_err(|e| map_kube_error(e, &action))?;
    let status = res.status();
    let headers: Vec<(String, String)> = res
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = tokio::time::timeout(timeout, res.into_body().collect_bytes())
        .await
        .map_err(|_| timed_out(&action, timeout))?
        .map_err(|e| map_kube_error(e, &action))?;
    let body = &body[..body.len().min(BODY_LIMIT)];
    let from_envoy = headers.iter().any(|(k, v)| {
        (k.eq_ignore_ascii_case("server") && v == "istio-envoy")
            || k.eq_ignore_ascii_case("x-envoy-upstream-service-time")
    });
    // An error the API server made itself (not the pod's answer) is a `Status` object.
    if !status.is_success() && !from_envoy {
        if let Some(st) = serde_json::from_slice::<Status>(body).ok().filter(|_| is_status_object(body)) {
            let error = match status.as_u16() {
                403 => BackendError::forbidden(format!(
                    "{}: RBAC forbids it; meshpass's account needs `get` on `services/proxy` in namespace {}",
                    action.what, w.namespace
                )),
                404 => BackendError::failed(format!("{}: the Service or its port was not found", action.what)),
                code => BackendError::unavailable(format!(
                    "{}: the API server could not reach a pod of Service {} ({code})",
                    action.what, svc.name
                )),
            };
            return Err(error.caused_by(ApiServerSaid(Box::new(st))));
        }
    }
    let (verdict, mut evidence) = judge(&headers, target_port);
    evidence.push(format!("Service {}:{port} → target port {target_port}", svc.name));
    Ok(CheckReport {
        direction: Direction::Inbound,
        from: FROM.to_string(),
        target: format!("GET {url}"),
        verdict,
        status_line: Some(format!("HTTP/1.1 {} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))),
        headers,
        evidence,
        // The API server has no sidecar: its hop into the pod is plaintext (a STRICT port
        // refuses it), and no identity is verified on it.
        mtls: false,
        peer_identities: PeerIdentities::default(),
        error: None,
    })
}

/// The most of a response body read (the body is only inspected for an API server `Status`).
const BODY_LIMIT: usize = 64 * 1024;

fn is_status_object(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["kind"] == "Status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let h = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(judge(&h(&[("server", "istio-envoy")]), 5000).0, Verdict::Sidecar);
        assert_eq!(judge(&h(&[("x-envoy-upstream-service-time", "3")]), 5000).0, Verdict::Sidecar);
        assert_eq!(judge(&h(&[("server", "Werkzeug/3.0")]), 5000).0, Verdict::Passthrough);
        assert!(clean_path(Some("/a/../b")).is_err());
        assert_eq!(clean_path(Some("hello")).ok().as_deref(), Some("/hello"));
    }
}
