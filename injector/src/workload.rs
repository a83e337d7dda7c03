//! The workload a pod belongs to, from its ownerReferences: what the sidecar reports under and the
//! aggregator sums over.

use k8s_openapi::api::core::v1::Pod;

/// `<kind>/<name>` of a workload; `kind` is lower case (`deployment`, `statefulset`, `pod`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

impl Workload {
    /// `deployment/web`, as the sidecar's `--workload` takes it.
    pub fn flag(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// `deployment.web`, the value of the `inflight.dev/workload` label; `None` when that is not
    /// a valid label value (over 63 characters), so the pod is not refused for a label.
    pub fn label(&self) -> Option<String> {
        let value = format!("{}.{}", self.kind, self.name);
        let valid = value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && value
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && value
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        valid.then_some(value)
    }
}

/// The pod's workload: its controller (or first owner); a ReplicaSet whose name is
/// `<deployment>-<pod-template-hash>` stands for its Deployment. A pod with no owner is its own
/// workload; `None` when such a pod has no name yet (`generateName`): the sidecar then takes its
/// name from the downward API.
pub fn of(pod: &Pod) -> Option<Workload> {
    let meta = &pod.metadata;
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());
    let Some(owner) = owner else {
        return meta
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .map(|name| Workload {
                kind: "pod".to_owned(),
                name: name.to_owned(),
            });
    };
    if owner.kind == "ReplicaSet" {
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
            .filter(|h| !h.is_empty());
        if let Some(deployment) = hash.and_then(|h| {
            owner
                .name
                .strip_suffix(h.as_str())
                .and_then(|rest| rest.strip_suffix('-'))
                .filter(|d| !d.is_empty())
        }) {
            return Some(Workload {
                kind: "deployment".to_owned(),
                name: deployment.to_owned(),
            });
        }
    }
    Some(Workload {
        kind: owner.kind.to_ascii_lowercase(),
        name: owner.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn owned(kind: &str, name: &str, hash: Option<&str>) -> Pod {
        let mut labels = serde_json::Map::new();
        if let Some(h) = hash {
            labels.insert("pod-template-hash".into(), h.into());
        }
        pod(
            serde_json::json!({"metadata": {"generateName": format!("{name}-"), "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}]}}),
        )
    }

    #[test]
    fn a_replicaset_named_after_its_template_hash_is_its_deployment() {
        let w = of(&owned("ReplicaSet", "web-7d9f8c6b5", Some("7d9f8c6b5"))).unwrap();
        assert_eq!(w.flag(), "deployment/web");
        assert_eq!(w.label().as_deref(), Some("deployment.web"));
        // A hyphenated Deployment name keeps its hyphens.
        let w = of(&owned("ReplicaSet", "my-web-app-5c4b", Some("5c4b"))).unwrap();
        assert_eq!(w.flag(), "deployment/my-web-app");
    }

    #[test]
    fn a_replicaset_of_its_own_stays_a_replicaset() {
        assert_eq!(
            of(&owned("ReplicaSet", "standalone", None)).unwrap().flag(),
            "replicaset/standalone"
        );
        // The hash label names another ReplicaSet: not stripped.
        assert_eq!(
            of(&owned("ReplicaSet", "web-abc", Some("xyz")))
                .unwrap()
                .flag(),
            "replicaset/web-abc"
        );
    }

    #[test]
    fn statefulsets_daemonsets_and_jobs_are_their_owner() {
        for (kind, flag) in [
            ("StatefulSet", "statefulset/db"),
            ("DaemonSet", "daemonset/db"),
            ("Job", "job/db"),
        ] {
            assert_eq!(of(&owned(kind, "db", None)).unwrap().flag(), flag);
        }
    }

    #[test]
    fn a_bare_pod_is_its_own_workload_once_it_has_a_name() {
        let named = pod(serde_json::json!({"metadata": {"name": "debug"}}));
        assert_eq!(of(&named).unwrap().flag(), "pod/debug");
        let unnamed = pod(serde_json::json!({"metadata": {"generateName": "debug-"}}));
        assert_eq!(of(&unnamed), None);
    }

    #[test]
    fn the_controller_owner_wins_over_others() {
        let p = pod(
            serde_json::json!({"metadata": {"name": "x", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "1"},
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "2", "controller": true}]}}),
        );
        assert_eq!(of(&p).unwrap().flag(), "statefulset/db");
    }

    #[test]
    fn a_label_too_long_for_kubernetes_is_left_out() {
        let w = Workload {
            kind: "deployment".into(),
            name: "x".repeat(60),
        };
        assert_eq!(w.label(), None);
        assert_eq!(w.flag(), format!("deployment/{}", "x".repeat(60)));
    }
}
