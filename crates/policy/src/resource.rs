//! Kubernetes YAML in, typed resources out (and back): the documents of one file are parsed
//! and validated together, and any error refuses the file whole.

use crate::destination_rule::DestinationRule;
use crate::error::{FieldError, PolicyErrors, Reason};
use crate::meta::{Kind, Meta, ResourceRef};
use crate::peer_authentication::PeerAuthentication;
use crate::yaml::{Obj, Sink};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use serde_yaml::Value;

/// One policy resource.
// A handful of these exist at a time, never on a hot path: boxing would only cost clarity.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    /// A `PeerAuthentication`.
    PeerAuthentication(PeerAuthentication),
    /// A `DestinationRule`.
    DestinationRule(DestinationRule),
}

impl Resource {
    /// The resource's metadata.
    pub fn meta(&self) -> &Meta {
        match self {
            Resource::PeerAuthentication(p) => &p.meta,
            Resource::DestinationRule(d) => &d.meta,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
            Resource::DestinationRule(_) => Kind::DestinationRule,
        }
    }

    /// Kind, namespace and name.
    pub fn reference(&self) -> ResourceRef {
        ResourceRef { kind: self.kind(), namespace: self.meta().namespace.clone(), name: self.meta().name.clone() }
    }

    /// The whole object as Kubernetes JSON (`apiVersion`, `kind`, `metadata`, `spec`).
    pub fn to_json(&self) -> Json {
        let meta = self.meta();
        let mut metadata = json!({ "name": meta.name, "namespace": meta.namespace });
        if !meta.labels.is_empty() {
            metadata["labels"] = json!(meta.labels);
        }
        if !meta.annotations.is_empty() {
            metadata["annotations"] = json!(meta.annotations);
        }
        let spec = match self {
            Resource::PeerAuthentication(p) => p.spec_json(),
            Resource::DestinationRule(d) => d.spec_json(),
        };
        json!({ "apiVersion": self.kind().api_version(), "kind": self.kind().as_str(), "metadata": metadata, "spec": spec })
    }

    /// The whole object as one YAML document.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&self.to_json()).unwrap_or_default()
    }

    /// Parses one object already in JSON form (e.g. read back from a store or an API server).
    pub fn from_json(v: &Json, default_namespace: &str) -> Result<Resource, PolicyErrors> {
        let yaml: Value = serde_yaml::to_value(v).map_err(|e| yaml_error("object", &e.to_string()))?;
        let mut errors = Vec::new();
        let mut out = Vec::new();
        parse_object(&yaml, "object", default_namespace, &mut out, &mut errors);
        match (errors.is_empty(), out.pop()) {
            (true, Some(r)) => Ok(r),
            _ => Err(PolicyErrors(errors)),
        }
    }
}

fn yaml_error(resource: &str, why: &str) -> PolicyErrors {
    PolicyErrors(vec![FieldError {
        resource: resource.to_string(),
        path: String::new(),
        value: String::new(),
        reason: Reason::Yaml(why.to_string()),
    }])
}

/// Parses every document of `text` (`---`-separated; a `kind: List` is unpacked). Documents
/// without a namespace get `default_namespace`. Any error in any document fails the whole
/// file, listing every error found.
pub fn parse_documents(text: &str, default_namespace: &str) -> Result<Vec<Resource>, PolicyErrors> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let label = format!("document {}", i + 1);
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(v) => parse_object(&v, &label, default_namespace, &mut out, &mut errors),
            Err(e) => {
                errors.extend(yaml_error(&label, &e.to_string()).0);
                // The YAML stream cannot be resumed after a syntax error.
                break;
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(PolicyErrors(errors))
    }
}

fn parse_object(
    v: &Value,
    label: &str,
    default_namespace: &str,
    out: &mut Vec<Resource>,
    errors: &mut Vec<FieldError>,
) {
    let mut sink = Sink { resource: label.to_string(), out: errors };
    let Some(obj) = Obj::new(Some(v), "", &mut sink) else { return };
    let kind_text = obj.string("kind", &mut sink);
    if kind_text.as_deref() == Some("List") {
        obj.only(&["apiVersion", "kind", "items", "metadata"], "List", &mut sink);
        match obj.get("items") {
            Some(Value::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    parse_object(item, &format!("{label} items[{i}]"), default_namespace, out, errors);
                }
            }
            Some(other) => sink.push("items", Some(other), Reason::WrongType("a list")),
            None => {}
        }
        return;
    }
    let Some(kind_text) = kind_text else {
        sink.push("kind", None, Reason::Required);
        return;
    };
    let Some(kind) = Kind::parse(&kind_text).filter(|k| k.as_str() == kind_text) else {
        sink.push_text("kind", &kind_text, Reason::UnknownKind);
        return;
    };
    let meta_obj = Obj::new(obj.get("metadata"), "metadata", &mut sink);
    // Name errors go under the kind; everything after under `Kind namespace/name`.
    let meta = Meta::parse(meta_obj, default_namespace, &mut sink);
    sink.resource = if meta.name.is_empty() {
        format!("{kind} ({label})")
    } else {
        format!("{kind} {}/{}", meta.namespace, meta.name)
    };
    for e in sink.out.iter_mut().filter(|e| e.resource == label) {
        e.resource = sink.resource.clone();
    }
    obj.only(&["apiVersion", "kind", "metadata", "spec", "status"], kind.as_str(), &mut sink);
    match obj.string("apiVersion", &mut sink) {
        Some(v) if kind.served_versions().contains(&v.as_str()) => {}
        Some(v) => sink.push_text(
            "apiVersion",
            &v,
            Reason::ApiVersion { kind: kind.as_str(), expected: kind.served_versions()[0] },
        ),
        None if !obj.has("apiVersion") => sink.push("apiVersion", None, Reason::Required),
        None => {}
    }
    let spec = Obj::new(obj.get("spec"), "spec", &mut sink);
    let resource = match kind {
        Kind::PeerAuthentication => Resource::PeerAuthentication(PeerAuthentication::parse(meta, spec, &mut sink)),
        Kind::DestinationRule => Resource::DestinationRule(DestinationRule::parse(meta, spec, &mut sink)),
    };
    out.push(resource);
}
