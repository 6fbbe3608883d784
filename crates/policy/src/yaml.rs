//! A cursor over parsed YAML that records one [`FieldError`] per bad field and carries on,
//! so that a file's every mistake is reported at once.

use crate::error::{FieldError, Reason};
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;

/// Where errors of one resource go.
pub(crate) struct Sink<'a> {
    pub(crate) resource: String,
    pub(crate) out: &'a mut Vec<FieldError>,
}

impl Sink<'_> {
    /// Records `reason` for the field at `path` holding `value` (`None` when absent).
    pub(crate) fn push(&mut self, path: &str, value: Option<&Value>, reason: Reason) {
        self.out.push(FieldError {
            resource: self.resource.clone(),
            path: path.to_string(),
            value: value.map(show).unwrap_or_default(),
            reason,
        });
    }

    /// Records `reason` for a field whose value is already text.
    pub(crate) fn push_text(&mut self, path: &str, value: &str, reason: Reason) {
        self.out.push(FieldError {
            resource: self.resource.clone(),
            path: path.to_string(),
            value: value.to_string(),
            reason,
        });
    }
}

/// A value as the user wrote it: scalars bare, collections as one-line JSON.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_else(|_| "<unprintable>".into()),
    }
}

/// A mapping key as text (YAML allows `8080:` as a number key).
pub(crate) fn key_text(k: &Value) -> Option<String> {
    match k {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `path.key`, or `key` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A mapping at `path`; absent (`null`) is `None` without an error.
pub(crate) struct Obj<'v> {
    pub(crate) map: &'v Mapping,
    pub(crate) path: String,
}

impl<'v> Obj<'v> {
    /// The mapping at `path`, or an error when `v` is something else. `null` is absent.
    pub(crate) fn new(v: Option<&'v Value>, path: &str, sink: &mut Sink<'_>) -> Option<Self> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(map)) => Some(Obj { map, path: path.to_string() }),
            Some(other) => {
                sink.push(path, Some(other), Reason::WrongType("a mapping"));
                None
            }
        }
    }

    /// The value of `key`, if present and not `null`.
    pub(crate) fn get(&self, key: &str) -> Option<&'v Value> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// Whether `key` is present (even as `null`).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The path of `key` under this mapping.
    pub(crate) fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Reports every key not in `known` as an unknown field of `kind`.
    pub(crate) fn only(&self, known: &[&str], kind: &'static str, sink: &mut Sink<'_>) {
        for (k, v) in self.map {
            match key_text(k) {
                Some(name) if known.contains(&name.as_str()) => {}
                Some(name) => sink.push(&self.at(&name), Some(v), Reason::UnknownField(kind)),
                None => sink.push(&self.path, Some(k), Reason::WrongType("a mapping with text keys")),
            }
        }
    }

    /// A string field; wrong types are errors.
    pub(crate) fn string(&self, key: &str, sink: &mut Sink<'_>) -> Option<String> {
        let v = self.get(key)?;
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                sink.push(&self.at(key), Some(other), Reason::WrongType("a string"));
                None
            }
        }
    }

    /// A boolean field; wrong types are errors.
    pub(crate) fn boolean(&self, key: &str, sink: &mut Sink<'_>) -> Option<bool> {
        let v = self.get(key)?;
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                sink.push(&self.at(key), Some(other), Reason::WrongType("true or false"));
                None
            }
        }
    }

    /// A list of strings; wrong types (of the list or an item) are errors.
    pub(crate) fn strings(&self, key: &str, sink: &mut Sink<'_>) -> Option<Vec<String>> {
        let v = self.get(key)?;
        let Value::Sequence(items) = v else {
            sink.push(&self.at(key), Some(v), Reason::WrongType("a list of strings"));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => sink.push(&format!("{}[{i}]", self.at(key)), Some(other), Reason::WrongType("a string")),
            }
        }
        Some(out)
    }

    /// A mapping of strings to strings (labels, annotations, selectors).
    pub(crate) fn string_map(&self, key: &str, sink: &mut Sink<'_>) -> Option<BTreeMap<String, String>> {
        let obj = Obj::new(self.get(key), &self.at(key), sink)?;
        let mut out = BTreeMap::new();
        for (k, v) in obj.map {
            let Some(name) = key_text(k) else {
                sink.push(&obj.path, Some(k), Reason::WrongType("a mapping with text keys"));
                continue;
            };
            match v {
                Value::String(s) => {
                    out.insert(name, s.clone());
                }
                other => sink.push(&obj.at(&name), Some(other), Reason::WrongType("a string")),
            }
        }
        Some(out)
    }
}
