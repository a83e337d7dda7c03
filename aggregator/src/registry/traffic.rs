//! What the SMI Traffic Metrics API asks of the registry: traffic by pod, workload and namespace,
//! and which of them report.

use inflight_runtime::{lock, read};

use super::{Registry, WorkloadKey};
use crate::traffic::Traffic;

impl Registry {
    /// A pod's traffic over `[now - window, now)`, if the pod reports.
    pub fn pod_traffic(
        &self,
        namespace: &str,
        pod: &str,
        window_ms: i64,
        now_ms: i64,
    ) -> Option<Traffic> {
        let key = lock(&self.pods).get(namespace, pod)?.workload.clone();
        let workload = self.existing(&key)?;
        let w = lock(&workload);
        let member = w.pods.get(pod)?;
        Some(
            member
                .traffic
                .as_ref()
                .map_or_else(Traffic::default, |t| t.window(now_ms, window_ms)),
        )
    }

    /// A workload's traffic (its reporting pods added up), if it has pods.
    pub fn workload_traffic(
        &self,
        key: &WorkloadKey,
        window_ms: i64,
        now_ms: i64,
    ) -> Option<Traffic> {
        let workload = self.existing(key)?;
        let w = lock(&workload);
        if w.pods.is_empty() {
            return None;
        }
        let mut total = Traffic::default();
        for t in w.pods.values().filter_map(|m| m.traffic.as_ref()) {
            total.add(&t.window(now_ms, window_ms));
        }
        Some(total)
    }

    /// A namespace's traffic (every reporting pod in it), if it has any.
    pub fn namespace_traffic(
        &self,
        namespace: &str,
        window_ms: i64,
        now_ms: i64,
    ) -> Option<Traffic> {
        let keys = self.workloads_in(Some(namespace), None);
        let mut total: Option<Traffic> = None;
        for key in keys {
            if let Some(t) = self.workload_traffic(&key, window_ms, now_ms) {
                total.get_or_insert_with(Traffic::default).add(&t);
            }
        }
        total
    }

    /// Workloads with reporting pods, in `namespace` (or all) and of `kind` (or any), sorted.
    pub fn workloads_in(&self, namespace: Option<&str>, kind: Option<&str>) -> Vec<WorkloadKey> {
        let mut keys: Vec<WorkloadKey> = read(&self.workloads)
            .iter()
            .filter(|(k, _)| {
                namespace.is_none_or(|ns| k.namespace == ns) && kind.is_none_or(|kd| k.kind == kd)
            })
            .filter(|(_, w)| !lock(w).pods.is_empty())
            .map(|(k, _)| WorkloadKey::clone(k))
            .collect();
        keys.sort();
        keys
    }

    /// Reporting pods, as (namespace, pod), in `namespace` (or all), sorted.
    pub fn pods_in(&self, namespace: Option<&str>) -> Vec<(String, String)> {
        let mut pods: Vec<(String, String)> = lock(&self.pods)
            .names()
            .filter(|(ns, _)| namespace.is_none_or(|n| *ns == n))
            .map(|(ns, pod)| (ns.to_owned(), pod.to_owned()))
            .collect();
        pods.sort();
        pods
    }

    /// Namespaces with reporting pods, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let mut namespaces: Vec<String> = self
            .workloads_in(None, None)
            .into_iter()
            .map(|k| k.namespace)
            .collect();
        namespaces.dedup();
        namespaces
    }
}
