//! A workload's identity, shared by the reports' validation, the registry and the scaler.

use std::fmt;

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
