//! A workload's identity, shared by the reports' validation, the registry and the scaler.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A workload: namespace, lower-case kind (`deployment`, `statefulset`…) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

impl WorkloadKey {
    pub fn new(namespace: &str, kind: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            kind: kind.to_ascii_lowercase(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// A workload as a report names it, borrowed from the report, so that the registry finds the
/// workload without making a key (three strings) for every report. It hashes as the
/// [`WorkloadKey`] it names: the same fields, in the same order.
#[derive(Debug, Clone, Hash)]
pub struct KeyRef<'a> {
    pub namespace: &'a str,
    /// Lower case: borrowed unless the report's was not.
    pub kind: Cow<'a, str>,
    pub name: &'a str,
}

impl KeyRef<'_> {
    pub fn names(&self, key: &WorkloadKey) -> bool {
        self.namespace == key.namespace && self.kind == key.kind && self.name == key.name
    }

    pub fn to_key(&self) -> WorkloadKey {
        WorkloadKey {
            namespace: self.namespace.to_owned(),
            kind: self.kind.clone().into_owned(),
            name: self.name.to_owned(),
        }
    }
}

impl WorkloadKey {
    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            namespace: &self.namespace,
            kind: Cow::Borrowed(&self.kind),
            name: &self.name,
        }
    }
}

impl hashbrown::Equivalent<Arc<WorkloadKey>> for KeyRef<'_> {
    fn equivalent(&self, key: &Arc<WorkloadKey>) -> bool {
        self.names(key)
    }
}

impl fmt::Display for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn a_borrowed_key_hashes_and_compares_as_the_key_it_names() {
        let state = std::hash::RandomState::new();
        let key = Arc::new(WorkloadKey::new("shop", "Deployment", "web"));
        let named = KeyRef {
            namespace: "shop",
            kind: Cow::Borrowed("deployment"),
            name: "web",
        };
        assert_eq!(state.hash_one(&key), state.hash_one(&named));
        assert!(hashbrown::Equivalent::equivalent(&named, &key));
        assert_eq!(named.to_key(), *key);
        assert_eq!(named.to_string(), key.to_string());
        let other = KeyRef {
            name: "web-2",
            ..named
        };
        assert!(!hashbrown::Equivalent::equivalent(&other, &key));
    }
}
