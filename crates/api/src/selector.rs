//! Label selectors as `kubectl -l` writes them (equality-based): `app=helloworld`,
//! `app==helloworld`, `version!=v1`, `app` (the label exists), `!canary` (it does not), joined
//! by commas, every requirement to hold. A batch picks its workloads with one, matched against
//! the labels of each workload's pods (its pod template), which is what Services select on.
//!
//! Pure: parsing and matching only.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Why a selector was refused: the requirement and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label selector {selector:?}: {requirement:?} {reason}")]
pub struct SelectorError {
    /// The whole selector as given.
    pub selector: String,
    /// The requirement at fault.
    pub requirement: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One requirement of a [`LabelSelector`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// An equality-based label selector; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

/// A label name or value part: at most 63 of `[A-Za-z0-9._-]`, starting and ending with an
/// alphanumeric (Kubernetes' rule).
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !crate::util::is_dns1123_subdomain(p) {
            return Some(format!("has key prefix {p:?}, which is not a DNS subdomain"));
        }
    }
    if !is_label_name(name) {
        return Some(format!(
            "has key {key:?}: a label key is at most 63 of A-Z, a-z, 0-9, '-', '_', '.', starting and ending with a \
             letter or digit (with an optional DNS prefix and '/')"
        ));
    }
    None
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, SelectorError> {
        let err = |requirement: &str, reason: String| SelectorError {
            selector: text.to_string(),
            requirement: requirement.to_string(),
            reason,
        };
        if text.trim().is_empty() {
            return Err(err(text, "is empty: give KEY=VALUE, KEY!=VALUE, KEY or !KEY".into()));
        }
        let mut requirements = Vec::new();
        for raw in text.split(',') {
            let r = raw.trim();
            if r.is_empty() {
                return Err(err(raw, "is empty (a stray comma?)".into()));
            }
            if r.contains(['(', ')']) || r.split_whitespace().any(|w| w == "in" || w == "notin") {
                return Err(err(
                    r,
                    "is set-based (in, notin): only KEY=VALUE, KEY!=VALUE, KEY and !KEY are supported".into(),
                ));
            }
            let req = if let Some((k, v)) = r.split_once("!=") {
                Requirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                Requirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some(k) = r.strip_prefix('!') {
                Requirement::Absent(k.trim().to_string())
            } else {
                Requirement::Exists(r.to_string())
            };
            let (key, value) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
                Requirement::Exists(k) | Requirement::Absent(k) => (k, None),
            };
            if let Some(p) = key_problem(key) {
                return Err(err(r, p));
            }
            if let Some(v) = value {
                if v.contains(['=', '!']) || (!v.is_empty() && !is_label_name(v)) {
                    return Err(err(
                        r,
                        format!(
                            "has value {v:?}: a label value is empty or at most 63 of A-Z, a-z, 0-9, '-', '_', '.', \
                             starting and ending with a letter or digit"
                        ),
                    ));
                }
            }
            requirements.push(req);
        }
        Ok(LabelSelector { text: text.to_string(), requirements })
    }
}

impl LabelSelector {
    /// True when `labels` meet every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn equality_selectors_match_as_kubectl_does() {
        let hello = labels(&[("app", "helloworld"), ("version", "v1")]);
        let sleep = labels(&[("app", "sleep")]);
        let s = |t: &str| t.parse::<LabelSelector>().unwrap();
        assert!(s("app=helloworld").matches(&hello) && !s("app=helloworld").matches(&sleep));
        assert!(s("app==helloworld, version=v1").matches(&hello));
        assert!(!s("app=helloworld,version=v2").matches(&hello));
        assert!(s("version!=v1").matches(&sleep) && !s("version!=v1").matches(&hello));
        assert!(s("version").matches(&hello) && !s("version").matches(&sleep));
        assert!(s("!version").matches(&sleep) && !s("!version").matches(&hello));
        assert!(s("example.com/tier=").matches(&labels(&[("example.com/tier", "")])));
        assert_eq!(s("app=sleep").to_string(), "app=sleep");
    }

    #[test]
    fn bad_selectors_name_the_requirement_and_why() {
        let e = |t: &str| t.parse::<LabelSelector>().unwrap_err();
        assert!(e("").reason.contains("is empty"));
        let x = e("app=hello,");
        assert_eq!(x.requirement, "");
        assert!(x.reason.contains("stray comma"), "{x}");
        let x = e("app in (a,b)");
        assert!(x.reason.contains("set-based"), "{x}");
        let x = e("-app=x");
        assert_eq!(x.requirement, "-app=x");
        assert!(x.reason.contains("label key"), "{x}");
        let x = e("app=a b");
        assert!(x.reason.contains("label value"), "{x}");
        assert!(e("Bad_Prefix/app=x").reason.contains("DNS subdomain"));
        assert!(e("app=x=y").to_string().starts_with("label selector \"app=x=y\": \"app=x=y\" has value"));
    }
}
