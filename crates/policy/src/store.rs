//! The set of stored policies, and what `apply` / `delete` do to it — pure: the caller
//! persists the new set (and only if the operation succeeded).

use crate::error::{FieldError, PolicyErrors, Reason};
use crate::meta::{Kind, ResourceRef};
use crate::resolve::ROOT_NAMESPACE;
use crate::resource::Resource;
use serde::Serialize;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::fmt;

/// A stored resource and its creation order (Istio breaks ties between policies by age).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Creation order: smaller is older; kept when the resource is updated.
    pub seq: u64,
    /// The resource.
    pub resource: Resource,
}

/// What `apply` did to one resource, in `kubectl`'s words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// It did not exist.
    Created,
    /// It existed and differed.
    Configured,
    /// It existed as written.
    Unchanged,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Configured => "configured",
            Change::Unchanged => "unchanged",
        })
    }
}

/// `delete` named resources that are not there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not found: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
pub struct NotFound(pub Vec<ResourceRef>);

/// Every stored `PeerAuthentication` and `DestinationRule`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    entries: BTreeMap<ResourceRef, Stored>,
    next_seq: u64,
}

impl PolicySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from resources, oldest first.
    pub fn from_resources(resources: impl IntoIterator<Item = Resource>) -> Self {
        let mut set = PolicySet::new();
        for r in resources {
            set.insert(r);
        }
        set
    }

    fn insert(&mut self, r: Resource) -> Change {
        let key = r.reference();
        match self.entries.get_mut(&key) {
            Some(s) if s.resource == r => Change::Unchanged,
            Some(s) => {
                s.resource = r;
                Change::Configured
            }
            None => {
                self.entries.insert(key, Stored { seq: self.next_seq, resource: r });
                self.next_seq += 1;
                Change::Created
            }
        }
    }

    /// Every stored resource with its creation order, by kind, namespace and name.
    pub fn iter(&self) -> impl Iterator<Item = &Stored> {
        self.entries.values()
    }

    /// The number of stored resources.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One resource.
    pub fn get(&self, r: &ResourceRef) -> Option<&Resource> {
        self.entries.get(r).map(|s| &s.resource)
    }

    /// Resources of `kind` (in `namespace`, when given).
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<&Resource> {
        self.entries
            .iter()
            .filter(|(k, _)| k.kind == kind && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, s)| &s.resource)
            .collect()
    }

    /// Applies `resources` (create or replace each), refusing all of them if any conflicts
    /// with what is stored or with another in the same batch.
    pub fn apply(&self, resources: Vec<Resource>) -> Result<(PolicySet, Vec<(ResourceRef, Change)>), PolicyErrors> {
        let mut next = self.clone();
        let mut changes = Vec::new();
        for r in resources {
            let key = r.reference();
            let change = next.insert(r);
            changes.retain(|(k, _): &(ResourceRef, Change)| *k != key);
            changes.push((key, change));
        }
        let errors = next.conflicts(&changes);
        if errors.is_empty() {
            Ok((next, changes))
        } else {
            Err(PolicyErrors(errors))
        }
    }

    /// Deletes `refs`, all or none.
    pub fn delete(&self, refs: &[ResourceRef]) -> Result<PolicySet, NotFound> {
        let missing: Vec<ResourceRef> = refs.iter().filter(|r| !self.entries.contains_key(r)).cloned().collect();
        if !missing.is_empty() {
            return Err(NotFound(missing));
        }
        let mut next = self.clone();
        for r in refs {
            next.entries.remove(r);
        }
        Ok(next)
    }

    /// Two selector-less `PeerAuthentication`s in one namespace: Istio silently uses only the
    /// older. Reported against the resources of this batch.
    fn conflicts(&self, batch: &[(ResourceRef, Change)]) -> Vec<FieldError> {
        let mut wide: BTreeMap<&str, Vec<&Stored>> = BTreeMap::new();
        for s in self.entries.values() {
            if let Resource::PeerAuthentication(pa) = &s.resource {
                if !pa.has_selector() {
                    wide.entry(pa.meta.namespace.as_str()).or_default().push(s);
                }
            }
        }
        let mut errors = Vec::new();
        for (ns, mut list) in wide {
            if list.len() < 2 {
                continue;
            }
            list.sort_by_key(|s| s.seq);
            let oldest = list[0].resource.reference();
            for s in &list[1..] {
                let r = s.resource.reference();
                // Report it against a member of the batch: the newer policy if it is new,
                // otherwise the older one the batch touched.
                let (culprit, other) =
                    if batch.iter().any(|(k, _)| *k == r) { (r, oldest.clone()) } else { (oldest.clone(), r) };
                errors.push(FieldError {
                    resource: culprit.to_string(),
                    path: "spec.selector".into(),
                    value: String::new(),
                    reason: Reason::Conflict {
                        existing: format!("{}/{}", other.namespace, other.name),
                        scope: if ns == ROOT_NAMESPACE { "mesh-wide" } else { "namespace-wide" },
                    },
                });
            }
        }
        errors
    }

    /// The set as JSON for storage: every object with its creation order.
    pub fn to_json(&self) -> Json {
        let mut items: Vec<&Stored> = self.entries.values().collect();
        items.sort_by_key(|s| s.seq);
        json!({ "items": items.iter().map(|s| json!({ "seq": s.seq, "object": s.resource.to_json() })).collect::<Vec<_>>() })
    }

    /// Reads a set written by [`PolicySet::to_json`], validating every object again.
    pub fn from_json(v: &Json) -> Result<PolicySet, PolicyErrors> {
        let mut set = PolicySet::new();
        let mut errors = Vec::new();
        for item in v.get("items").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default() {
            let seq = item.get("seq").and_then(Json::as_u64).unwrap_or(set.next_seq);
            match item.get("object").map(|o| Resource::from_json(o, "default")) {
                Some(Ok(r)) => {
                    set.entries.insert(r.reference(), Stored { seq, resource: r });
                    set.next_seq = set.next_seq.max(seq + 1);
                }
                Some(Err(e)) => errors.extend(e.0),
                None => {}
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(PolicyErrors(errors))
        }
    }
}
