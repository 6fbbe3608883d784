//! `security.istio.io/v1` `PeerAuthentication`: which inbound connections a workload's
//! sidecar requires to be mutual TLS.

use crate::error::Reason;
use crate::meta::Meta;
use crate::yaml::{key_text, Obj, Sink};
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;
use std::fmt;

/// The mTLS mode of a policy or one of its ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the parent (workload → namespace → mesh; the mesh default is PERMISSIVE).
    Unset,
    /// Plaintext only: the sidecar does not terminate mTLS.
    Disable,
    /// Both mTLS and plaintext are accepted.
    Permissive,
    /// Only mTLS is accepted.
    Strict,
}

impl MtlsMode {
    const CHOICES: &'static str = "UNSET, DISABLE, PERMISSIVE, STRICT";

    /// The mode as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "UNSET" => Some(MtlsMode::Unset),
            "DISABLE" => Some(MtlsMode::Disable),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            "STRICT" => Some(MtlsMode::Strict),
            _ => None,
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed and validated `PeerAuthentication`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerAuthentication {
    /// Name, namespace, labels, annotations.
    pub meta: Meta,
    /// `spec.selector.matchLabels`; `None` or empty = the whole namespace (or the mesh, in the
    /// root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.mtls.mode` (`Some(Unset)` for `mtls: {}`).
    pub mtls: Option<MtlsMode>,
    /// `spec.portLevelMtls`, keyed by the workload's (container) port.
    pub port_level_mtls: Option<BTreeMap<u16, MtlsMode>>,
}

impl PeerAuthentication {
    /// Whether the policy selects workloads by label (otherwise it is namespace- or mesh-wide).
    pub fn has_selector(&self) -> bool {
        self.selector.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Reads and validates `spec` as Istio's webhook and CRD schema do.
    pub(crate) fn parse(meta: Meta, spec: Option<Obj<'_>>, sink: &mut Sink<'_>) -> Self {
        let mut pa = PeerAuthentication { meta, selector: None, mtls: None, port_level_mtls: None };
        let Some(spec) = spec else { return pa };
        spec.only(&["selector", "mtls", "portLevelMtls"], "PeerAuthentication spec", sink);

        if let Some(sel) = Obj::new(spec.get("selector"), &spec.at("selector"), sink) {
            sel.only(&["matchLabels"], "WorkloadSelector", sink);
            let labels = sel.string_map("matchLabels", sink).unwrap_or_default();
            check_selector(&labels, &sel.at("matchLabels"), sink);
            pa.selector = Some(labels);
        }
        if let Some(m) = Obj::new(spec.get("mtls"), &spec.at("mtls"), sink) {
            pa.mtls = Some(mode(&m, sink));
        }
        if let Some(ports) = Obj::new(spec.get("portLevelMtls"), &spec.at("portLevelMtls"), sink) {
            let mut out = BTreeMap::new();
            for (k, v) in ports.map {
                let key = key_text(k).unwrap_or_default();
                let path = ports.at(&key);
                let port = key.parse::<u16>().ok().filter(|p| *p > 0);
                if port.is_none() {
                    sink.push_text(&path, &key, Reason::NotAPort);
                }
                let m = match Obj::new(Some(v), &path, sink) {
                    Some(m) => mode(&m, sink),
                    None if v.is_null() => MtlsMode::Unset,
                    None => continue,
                };
                if let Some(p) = port {
                    out.insert(p, m);
                }
            }
            if ports.map.is_empty() {
                sink.push(&ports.path, None, Reason::EmptyPortLevel);
            }
            if !pa.has_selector() {
                sink.push(&ports.path, None, Reason::PortLevelWithoutSelector);
            }
            pa.port_level_mtls = Some(out);
        }
        pa
    }

    /// The `spec` as Kubernetes JSON.
    pub fn spec_json(&self) -> Json {
        let mut spec = Map::new();
        if let Some(sel) = &self.selector {
            spec.insert("selector".into(), json!({ "matchLabels": sel }));
        }
        if let Some(m) = self.mtls {
            spec.insert("mtls".into(), mode_json(m));
        }
        if let Some(ports) = &self.port_level_mtls {
            let ports: Map<String, Json> = ports.iter().map(|(p, m)| (p.to_string(), mode_json(*m))).collect();
            spec.insert("portLevelMtls".into(), Json::Object(ports));
        }
        Json::Object(spec)
    }
}

fn mode_json(m: MtlsMode) -> Json {
    if m == MtlsMode::Unset {
        json!({})
    } else {
        json!({ "mode": m.as_str() })
    }
}

fn mode(m: &Obj<'_>, sink: &mut Sink<'_>) -> MtlsMode {
    m.only(&["mode"], "PeerAuthentication mtls", sink);
    match m.string("mode", sink) {
        None => MtlsMode::Unset,
        Some(s) => MtlsMode::parse(&s).unwrap_or_else(|| {
            sink.push_text(&m.at("mode"), &s, Reason::NotOneOf(MtlsMode::CHOICES));
            MtlsMode::Unset
        }),
    }
}

/// Istio's `validateWorkloadSelector` plus the CRD's limits on `matchLabels`.
pub(crate) fn check_selector(labels: &BTreeMap<String, String>, path: &str, sink: &mut Sink<'_>) {
    for (k, v) in labels {
        let at = format!("{path}.{k}");
        if k.is_empty() {
            sink.push_text(&at, &format!("{k}={v}"), Reason::EmptySelectorKey);
        }
        if k.contains('*') || v.contains('*') {
            sink.push_text(&at, &format!("{k}={v}"), Reason::WildcardInSelector);
        }
        if v.len() > 63 {
            sink.push_text(&at, v, Reason::BadLabel("value (at most 63 characters)"));
        }
    }
}
