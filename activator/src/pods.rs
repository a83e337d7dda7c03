//! The pods of each workload as this activator knows them: every pod with an address, ready or
//! not, from the EndpointSlices Kubernetes keeps for the workload's private Service; whether the
//! pod's proxy has answered `/readyz` (the activator asks it itself rather than wait for the
//! kubelet's probe period and the slice's update); and how many requests this activator has
//! sent it that are not done yet, to send the next to the least loaded within
//! `containerConcurrency`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use inflight_runtime::lock;

/// Pods of one workload kept at most; the rest of a larger workload is not used by the activator.
pub const MAX_PODS_PER_WORKLOAD: usize = 4096;
/// Workloads whose pods are kept at most.
pub const MAX_WORKLOADS: usize = 10_000;

/// One pod's entry in an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's proxy, where requests go.
    pub data: SocketAddr,
    /// The pod's proxy's admin port, whose `/readyz` says when requests may go.
    pub admin: SocketAddr,
    /// The pod's name, for the log.
    pub pod: Option<String>,
    /// The slice's `ready` condition: the kubelet found the pod ready.
    pub ready: bool,
    pub terminating: bool,
}

#[derive(Debug)]
struct Pod {
    endpoint: Endpoint,
    /// Our own `/readyz` probe answered 200 (and nothing failed since).
    probed_ready: bool,
    /// A forward to it failed before reaching it: not used until a probe answers 200 again.
    failed: bool,
    probing: bool,
    /// Requests sent and not done.
    active: u32,
}

impl Pod {
    fn usable(&self) -> bool {
        !self.endpoint.terminating && (self.probed_ready || (self.endpoint.ready && !self.failed))
    }
}

#[derive(Debug, Default)]
struct Backend {
    /// Each slice's endpoints, by slice name.
    slices: HashMap<String, Vec<Endpoint>>,
    pods: HashMap<SocketAddr, Pod>,
}

impl Backend {
    fn census(&self) -> Census {
        Census {
            pods: self.pods.len(),
            usable: self.pods.values().filter(|p| p.usable()).count(),
            active: self.pods.values().map(|p| u64::from(p.active)).sum(),
        }
    }

    /// The pods are the union of the slices' endpoints; what is known of a pod that stays is kept.
    fn rebuild(&mut self) {
        let mut listed: HashMap<SocketAddr, Endpoint> = HashMap::new();
        for endpoint in self.slices.values().flatten() {
            if listed.len() >= MAX_PODS_PER_WORKLOAD && !listed.contains_key(&endpoint.data) {
                continue;
            }
            listed
                .entry(endpoint.data)
                .and_modify(|e| {
                    // A pod in two slices (during a slice's rewrite) is as ready as either says.
                    e.ready |= endpoint.ready;
                    e.terminating &= endpoint.terminating;
                })
                .or_insert_with(|| endpoint.clone());
        }
        self.pods.retain(|addr, _| listed.contains_key(addr));
        for (addr, endpoint) in listed {
            match self.pods.get_mut(&addr) {
                Some(pod) => {
                    if endpoint.terminating {
                        pod.probed_ready = false;
                    }
                    pod.endpoint = endpoint;
                }
                None => {
                    self.pods.insert(
                        addr,
                        Pod {
                            endpoint,
                            probed_ready: false,
                            failed: false,
                            probing: false,
                            active: 0,
                        },
                    );
                }
            }
        }
    }
}

/// A pod to ask for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToProbe {
    pub data: SocketAddr,
    pub admin: SocketAddr,
}

/// What `/stats` shows of a workload's pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Census {
    pub pods: usize,
    pub usable: usize,
    pub active: u64,
}

/// The pods of every workload, by the key `<namespace>/<private service>`.
#[derive(Debug, Default)]
pub struct Pods {
    backends: Mutex<HashMap<String, Backend>>,
}

impl Pods {
    pub fn new() -> Self {
        Self::default()
    }

    /// The key of a workload's pods: its namespace and private Service.
    pub fn key(namespace: &str, pods_service: &str) -> String {
        format!("{namespace}/{pods_service}")
    }

    /// Sets what one EndpointSlice lists.
    pub fn set_slice(&self, backend: &str, slice: &str, endpoints: Vec<Endpoint>) {
        let mut backends = lock(&self.backends);
        if !backends.contains_key(backend) && backends.len() >= MAX_WORKLOADS {
            tracing::warn!(
                backend,
                max = MAX_WORKLOADS,
                "too many workloads; their pods are not tracked"
            );
            return;
        }
        let b = backends.entry(backend.to_owned()).or_default();
        b.slices.insert(slice.to_owned(), endpoints);
        b.rebuild();
    }

    pub fn remove_slice(&self, backend: &str, slice: &str) {
        let mut backends = lock(&self.backends);
        if let Some(b) = backends.get_mut(backend) {
            b.slices.remove(slice);
            b.rebuild();
            if b.slices.is_empty() && b.pods.values().all(|p| p.active == 0) {
                backends.remove(backend);
            }
        }
    }

    /// Replaces every slice (a relist): `(backend, slice, endpoints)`.
    pub fn replace_all(&self, slices: Vec<(String, String, Vec<Endpoint>)>) {
        let mut grouped: HashMap<String, HashMap<String, Vec<Endpoint>>> = HashMap::new();
        for (backend, slice, endpoints) in slices {
            grouped.entry(backend).or_default().insert(slice, endpoints);
        }
        let mut backends = lock(&self.backends);
        for (key, b) in backends.iter_mut() {
            b.slices = grouped.remove(key).unwrap_or_default();
            b.rebuild();
        }
        backends.retain(|_, b| !b.slices.is_empty() || b.pods.values().any(|p| p.active > 0));
        for (key, slices) in grouped {
            if backends.len() >= MAX_WORKLOADS {
                break;
            }
            let b = backends.entry(key).or_default();
            b.slices = slices;
            b.rebuild();
        }
    }

    /// Takes a place on the least loaded usable pod with room under `concurrency` (0: no limit).
    pub fn pick(&self, backend: &str, concurrency: u32) -> Option<SocketAddr> {
        let mut backends = lock(&self.backends);
        let pod = backends
            .get_mut(backend)?
            .pods
            .values_mut()
            .filter(|p| p.usable() && (concurrency == 0 || p.active < concurrency))
            .min_by_key(|p| p.active)?;
        pod.active = pod.active.saturating_add(1);
        Some(pod.endpoint.data)
    }

    /// A request sent to `data` by [`Pods::pick`] is done.
    pub fn done(&self, backend: &str, data: SocketAddr) {
        let mut backends = lock(&self.backends);
        if let Some(pod) = backends
            .get_mut(backend)
            .and_then(|b| b.pods.get_mut(&data))
        {
            pod.active = pod.active.saturating_sub(1);
        }
    }

    /// A forward to `data` failed before reaching it: not used again until `/readyz` says so.
    pub fn failed(&self, backend: &str, data: SocketAddr) {
        let mut backends = lock(&self.backends);
        if let Some(pod) = backends
            .get_mut(backend)
            .and_then(|b| b.pods.get_mut(&data))
        {
            pod.failed = true;
            pod.probed_ready = false;
        }
    }

    /// The pods of `backend` not known to be usable, not terminating and not being asked already;
    /// each is marked as being asked.
    pub fn to_probe(&self, backend: &str) -> Vec<ToProbe> {
        let mut backends = lock(&self.backends);
        let Some(b) = backends.get_mut(backend) else {
            return Vec::new();
        };
        b.pods
            .values_mut()
            .filter(|p| !p.usable() && !p.endpoint.terminating && !p.probing)
            .map(|p| {
                p.probing = true;
                ToProbe {
                    data: p.endpoint.data,
                    admin: p.endpoint.admin,
                }
            })
            .collect()
    }

    /// The answer to a probe from [`Pods::to_probe`]; true when the pod became usable.
    pub fn probed(&self, backend: &str, data: SocketAddr, ready: bool) -> bool {
        let mut backends = lock(&self.backends);
        let Some(pod) = backends
            .get_mut(backend)
            .and_then(|b| b.pods.get_mut(&data))
        else {
            return false;
        };
        pod.probing = false;
        if ready && !pod.endpoint.terminating {
            let was = pod.usable();
            pod.probed_ready = true;
            pod.failed = false;
            return !was;
        }
        false
    }

    /// Whether `data` is among the pods of any workload.
    pub fn knows(&self, data: SocketAddr) -> bool {
        lock(&self.backends)
            .values()
            .any(|b| b.pods.contains_key(&data))
    }

    pub fn census(&self, backend: &str) -> Census {
        lock(&self.backends)
            .get(backend)
            .map_or(Census::default(), Backend::census)
    }

    /// The census of every workload's pods, by key.
    pub fn censuses(&self) -> Vec<(String, Census)> {
        lock(&self.backends)
            .iter()
            .map(|(key, b)| (key.clone(), b.census()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ep(n: u8, ready: bool) -> Endpoint {
        Endpoint {
            data: SocketAddr::from(([10, 0, 0, n], 15080)),
            admin: SocketAddr::from(([10, 0, 0, n], 15090)),
            pod: Some(format!("web-{n}")),
            ready,
            terminating: false,
        }
    }

    const B: &str = "shop/web-inflight";

    #[test]
    fn a_pod_is_used_once_its_probe_answers_even_before_kubernetes_calls_it_ready() {
        let pods = Pods::new();
        pods.set_slice(B, "s1", vec![ep(1, false)]);
        assert_eq!(pods.pick(B, 0), None);
        let asked = pods.to_probe(B);
        assert_eq!(asked.len(), 1);
        // Asked already: not handed out twice.
        assert!(pods.to_probe(B).is_empty());
        assert!(pods.probed(B, asked[0].data, true));
        assert_eq!(pods.pick(B, 0), Some(ep(1, false).data));
        // The slice's later update (still not ready) keeps what the probe said.
        pods.set_slice(B, "s1", vec![ep(1, false)]);
        assert_eq!(pods.census(B).usable, 1);
    }

    #[test]
    fn least_loaded_first_within_the_concurrency_limit() {
        let pods = Pods::new();
        pods.set_slice(B, "s1", vec![ep(1, true), ep(2, true)]);
        let a = pods.pick(B, 2).unwrap();
        let b = pods.pick(B, 2).unwrap();
        assert_ne!(a, b);
        let c = pods.pick(B, 2).unwrap();
        let d = pods.pick(B, 2).unwrap();
        assert_eq!(pods.pick(B, 2), None);
        assert_eq!(pods.census(B).active, 4);
        pods.done(B, c);
        assert_eq!(pods.pick(B, 2), Some(c));
        let _ = d;
    }

    #[test]
    fn a_failed_pod_waits_for_a_probe_and_a_terminating_one_is_never_used() {
        let pods = Pods::new();
        let mut gone = ep(2, true);
        gone.terminating = true;
        pods.set_slice(B, "s1", vec![ep(1, true)]);
        pods.set_slice(B, "s2", vec![gone]);
        let a = pods.pick(B, 0).unwrap();
        assert_eq!(a, ep(1, true).data);
        pods.done(B, a);
        pods.failed(B, a);
        assert_eq!(pods.pick(B, 0), None);
        let asked = pods.to_probe(B);
        assert_eq!(asked.iter().map(|p| p.data).collect::<Vec<_>>(), vec![a]);
        pods.probed(B, a, true);
        assert_eq!(pods.pick(B, 0), Some(a));
    }

    #[test]
    fn a_relist_replaces_everything_and_keeps_what_is_known_of_pods_that_stay() {
        let pods = Pods::new();
        pods.set_slice(B, "s1", vec![ep(1, false)]);
        pods.set_slice("shop/other-inflight", "o1", vec![ep(9, true)]);
        let asked = pods.to_probe(B);
        pods.probed(B, asked[0].data, true);
        pods.replace_all(vec![(
            B.into(),
            "s1".into(),
            vec![ep(1, false), ep(3, false)],
        )]);
        assert_eq!(pods.census(B).pods, 2);
        assert_eq!(pods.census(B).usable, 1);
        assert_eq!(pods.census("shop/other-inflight").pods, 0);
        assert!(!pods.knows(ep(9, true).data));
        pods.remove_slice(B, "s1");
        assert_eq!(pods.census(B).pods, 0);
    }
}
