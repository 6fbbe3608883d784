//! SPIFFE identities as Istio spells them: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.

use std::fmt;
use std::str::FromStr;

/// Istio's default trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// A workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not an Istio SPIFFE identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an Istio SPIFFE identity (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT): {reason}")]
pub struct SpiffeIdError {
    /// The text as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl SpiffeId {
    /// The identity of service account `service_account` in `namespace` of the default trust domain.
    pub fn new(namespace: &str, service_account: &str) -> Result<Self, SpiffeIdError> {
        Self::with_trust_domain(TRUST_DOMAIN, namespace, service_account)
    }

    /// The identity in another trust domain.
    pub fn with_trust_domain(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let value = || format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        for (part, what) in [
            (trust_domain, "the trust domain is empty or has characters other than letters, digits, '-', '.', '_'"),
            (namespace, "the namespace is empty or has characters other than letters, digits, '-', '.', '_'"),
            (
                service_account,
                "the service account is empty or has characters other than letters, digits, '-', '.', '_'",
            ),
        ] {
            if !segment_ok(part) {
                return Err(SpiffeIdError { value: value(), reason: what });
            }
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| SpiffeIdError { value: s.to_string(), reason };
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| err("it does not start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => SpiffeId::with_trust_domain(td, ns, sa).map_err(|e| err(e.reason)),
            _ => Err(err("the path is not /ns/NAMESPACE/sa/SERVICE_ACCOUNT")),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let id = SpiffeId::new("default", "sleep").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
        assert_eq!(
            "https://x/ns/a/sa/b".parse::<SpiffeId>().unwrap_err().to_string(),
            "\"https://x/ns/a/sa/b\" is not an Istio SPIFFE identity (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT): it does not start with spiffe://"
        );
        assert!("spiffe://cluster.local/ns/a/sa/".parse::<SpiffeId>().is_err());
        assert!("spiffe://cluster.local/ns/a/sa/b/c".parse::<SpiffeId>().is_err());
        assert!(SpiffeId::new("a/b", "c").is_err());
    }
}
