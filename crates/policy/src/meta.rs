//! Object metadata and the Kubernetes/Istio name rules it must follow.

use crate::error::Reason;
use crate::yaml::{Obj, Sink};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// The two kinds this crate handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    /// `security.istio.io/v1` `PeerAuthentication`.
    PeerAuthentication,
    /// `networking.istio.io/v1` `DestinationRule`.
    DestinationRule,
}

impl Kind {
    /// The kind's name as in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::DestinationRule => "DestinationRule",
        }
    }

    /// The `apiVersion` meshpass writes.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::PeerAuthentication => "security.istio.io/v1",
            Kind::DestinationRule => "networking.istio.io/v1",
        }
    }

    /// Every `apiVersion` Istio serves the kind at (all share the v1 schema).
    pub fn served_versions(self) -> &'static [&'static str] {
        match self {
            Kind::PeerAuthentication => &["security.istio.io/v1", "security.istio.io/v1beta1"],
            Kind::DestinationRule => {
                &["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]
            }
        }
    }

    /// Parses a `kind:` value, also accepting the plural and short names `kubectl` takes.
    pub fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "peerauthentication" | "peerauthentications" | "pa" => Some(Kind::PeerAuthentication),
            "destinationrule" | "destinationrules" | "dr" => Some(Kind::DestinationRule),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which resource: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceRef {
    /// The kind.
    pub kind: Kind,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The metadata meshpass keeps: what identifies the object and what a user wrote on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Meta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (the default namespace when the document has none).
    pub namespace: String,
    /// `metadata.labels`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

const NAME_RULE: &str = "name (DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253)";
const NAMESPACE_RULE: &str = "namespace (DNS-1123 label: lowercase letters, digits and '-', at most 63)";

/// Fields of `metadata` that the API server sets; accepted (so `get -o yaml` output applies
/// again) and dropped.
const SERVER_SET: [&str; 8] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "finalizers",
    "ownerReferences",
];

impl Meta {
    /// Reads `metadata`, reporting a missing or malformed name and namespace.
    pub(crate) fn parse(obj: Option<Obj<'_>>, default_namespace: &str, sink: &mut Sink<'_>) -> Meta {
        let mut meta = Meta { namespace: default_namespace.to_string(), ..Meta::default() };
        let Some(obj) = obj else {
            sink.push("metadata.name", None, Reason::Required);
            return meta;
        };
        let mut known = vec!["name", "namespace", "labels", "annotations"];
        known.extend(SERVER_SET);
        obj.only(&known, "ObjectMeta", sink);
        if !obj.has("name") {
            sink.push("metadata.name", None, Reason::Required);
        } else if let Some(n) = obj.string("name", sink) {
            if n.is_empty() {
                sink.push("metadata.name", None, Reason::Required);
            } else if !is_dns1123_subdomain(&n) {
                sink.push_text("metadata.name", &n, Reason::BadName(NAME_RULE));
            }
            meta.name = n;
        }
        if let Some(ns) = obj.string("namespace", sink) {
            if !is_dns1123_label(&ns) {
                sink.push_text("metadata.namespace", &ns, Reason::BadName(NAMESPACE_RULE));
            }
            meta.namespace = ns;
        }
        if let Some(labels) = obj.string_map("labels", sink) {
            check_labels(&labels, "metadata.labels", sink);
            meta.labels = labels;
        }
        if let Some(annotations) = obj.string_map("annotations", sink) {
            meta.annotations = annotations;
        }
        meta
    }
}

/// Kubernetes' label rules for every key and value of `labels`.
pub(crate) fn check_labels(labels: &BTreeMap<String, String>, path: &str, sink: &mut Sink<'_>) {
    for (k, v) in labels {
        if !is_label_key(k) {
            sink.push_text(&format!("{path}.{k}"), k, Reason::BadLabel("key"));
        }
        if !is_label_value(v) {
            sink.push_text(
                &format!("{path}.{k}"),
                v,
                Reason::BadLabel(
                    "value (at most 63 of letters, digits, '-', '_', '.', starting and ending alphanumeric)",
                ),
            );
        }
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A label name: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 (empty allowed for values).
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_none_or(|c| c.is_ascii_alphanumeric())
        && b.last().is_none_or(|c| c.is_ascii_alphanumeric())
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a non-empty name.
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(|p| !p.is_empty() && is_dns1123_subdomain(p)) && !name.is_empty() && is_qualified_name_part(name)
}

/// A label value: empty, or a name as in [`is_label_key`] without prefix.
pub fn is_label_value(s: &str) -> bool {
    is_qualified_name_part(s)
}

/// Whether every `key: value` of `selector` is in `labels` (an empty selector matches all).
pub fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns1123_label("istio-system"));
        assert!(!is_dns1123_label("Istio"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("helloworld.plaintext-5000"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(is_label_key("app"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("/name"));
        assert!(!is_label_key("a/"));
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_x"));
        assert!(!is_label_value("-v1"));
    }

    #[test]
    fn selector() {
        let labels: BTreeMap<_, _> = [("app".to_string(), "hello".to_string())].into();
        assert!(selector_matches(&BTreeMap::new(), &labels));
        assert!(selector_matches(&labels, &labels));
        let other: BTreeMap<_, _> = [("app".to_string(), "x".to_string())].into();
        assert!(!selector_matches(&other, &labels));
    }
}
