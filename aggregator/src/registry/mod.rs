//! Every workload's figures: its ring of per-second buckets, the pods and activators reporting for
//! it, and when a request was last seen. Reports go in through [`Registry::apply`] or a
//! [`Stream`] ([`membership`]); the scaler reads [`Registry::value`] and [`Registry::is_active`]
//! ([`answer`]); the SMI API reads traffic ([`traffic`]); OTLP reads [`Registry::export`]
//! ([`export`]); [`Registry::sweep`] drops members that stopped reporting. What they share is one
//! small type, [`workload::Workload`].

mod answer;
mod export;
mod membership;
mod traffic;
mod workload;

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};

use inflight_runtime::{lock, read, write};

use crate::validate::Rejection;
pub use crate::workload_key::{KeyRef, WorkloadKey};
pub use export::Export;
pub use membership::Stream;
use membership::{Claims, HeldSet, NO_STREAM};
pub use workload::Durations;
use workload::Workload;

/// Window lengths and the moment this aggregator started observing.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub stable_ms: i64,
    pub burst_ms: i64,
    /// The longest window a scaler may ask for (the ring's length).
    pub max_window_ms: i64,
    /// The longest report interval the aggregator believes: a member is dropped after
    /// [`MISSED_INTERVALS`] of its interval counted at most this, and a window may end at most
    /// two of them behind now.
    pub max_report_interval_ms: i64,
    /// Unix ms when this process started: windows are averaged over what was observed since, and
    /// nothing that has pods is called inactive before a whole scale-to-zero delay has passed.
    pub started_ms: i64,
    /// How long after the start every reporter has found this process (sidecars resolve the
    /// aggregators' addresses every 10 s): until then no workload is fully observed.
    pub warm_up_ms: i64,
    pub limits: Limits,
}

/// How much state reporters may make: every name is a workload (a ring) or a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Pods of one workload (and, apart, activators reporting for one workload).
    pub pods_per_workload: usize,
    pub workloads_per_namespace: usize,
    pub workloads: usize,
    pub pods: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pods_per_workload: 1000,
            workloads_per_namespace: 1000,
            workloads: 10_000,
            pods: 50_000,
        }
    }
}

/// No answer yet: this process has not heard every reporter, and a partial sum would read less
/// than the truth (a false zero for a workload whose pods have not found it yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "not yet fully observed: this aggregator started {observed_ms} ms ago and warms up for \
     {warm_up_ms} ms, until every reporter has found it"
)]
pub struct NotObserved {
    pub observed_ms: i64,
    pub warm_up_ms: i64,
}

/// What the scaler can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Concurrency,
    RequestRate,
}

/// Whole seconds of a length in ms, rounded up.
fn seconds(ms: i64) -> u32 {
    u32::try_from(ms.max(0).saturating_add(999).div_euclid(1000)).unwrap_or(u32::MAX)
}

/// A pod missing this many of its report intervals is dropped.
pub const MISSED_INTERVALS: i64 = 3;

/// Counts of what the registry holds, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub workloads: usize,
    pub pods: usize,
    pub activators: usize,
}

/// One workload's state, locked on its own: reports for different workloads never wait for each
/// other.
type Handle = Arc<Mutex<Workload>>;

#[derive(Debug)]
pub struct Registry {
    settings: Settings,
    ring_seconds: u32,
    /// Each key is shared with the pods' claims, which name their workload. hashbrown's map, for
    /// look-ups by a [`KeyRef`] borrowed from a report; std's hasher, whose keys are random.
    workloads: RwLock<hashbrown::HashMap<Arc<WorkloadKey>, Handle, RandomState>>,
    /// Workloads per namespace; changed only under the `workloads` write lock.
    namespaces: Mutex<HashMap<String, usize>>,
    /// Which workload each pod reports for: a pod that claims a second workload is refused while
    /// the stream that claimed it is open.
    pods: Mutex<Claims>,
    /// Pods tracked, over all workloads.
    pod_count: AtomicUsize,
    /// Activator (`namespace/pod`) → the workloads its latest report listed: a report is its
    /// complete set, so a workload it no longer lists holds nothing there.
    held_sets: Mutex<HashMap<String, HeldSet>>,
    next_stream: AtomicU64,
}

impl Registry {
    pub fn new(settings: Settings) -> Self {
        // A ring starts as long as the stable window and grows when a trigger asks for more.
        // Whole seconds, rounded up: a 1.5 s window reads parts of 2 seconds.
        let ring_seconds = seconds(settings.stable_ms);
        Self {
            settings,
            ring_seconds,
            workloads: RwLock::default(),
            namespaces: Mutex::default(),
            pods: Mutex::default(),
            pod_count: AtomicUsize::new(0),
            held_sets: Mutex::default(),
            next_stream: AtomicU64::new(NO_STREAM + 1),
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Whether warm-up is over: every reporter has had the time to find this process, and every
    /// workload's answer is a whole one. `/readyz` waits for it.
    pub fn warmed_up(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.settings.started_ms) >= self.settings.warm_up_ms
    }

    /// The workload and its shared key, made if the limits allow.
    fn workload(&self, key: &KeyRef<'_>) -> Result<(Arc<WorkloadKey>, Handle), Rejection> {
        let found = |(k, w): (&Arc<WorkloadKey>, &Handle)| (k.clone(), w.clone());
        if let Some(found) = read(&self.workloads).get_key_value(key).map(found) {
            return Ok(found);
        }
        let limits = self.settings.limits;
        let mut workloads = write(&self.workloads);
        if let Some(found) = workloads.get_key_value(key).map(found) {
            return Ok(found);
        }
        if workloads.len() >= limits.workloads {
            return Err(Rejection::Limit {
                what: "workloads",
                reason: "workloads",
                limit: limits.workloads,
                flag: "--max-workloads",
            });
        }
        let mut namespaces = lock(&self.namespaces);
        let in_namespace = namespaces.entry(key.namespace.to_owned()).or_insert(0);
        if *in_namespace >= limits.workloads_per_namespace {
            return Err(Rejection::Limit {
                what: "workloads in the namespace",
                reason: "workloads_per_namespace",
                limit: limits.workloads_per_namespace,
                flag: "--max-workloads-per-namespace",
            });
        }
        *in_namespace += 1;
        let key = Arc::new(key.to_key());
        let w = Arc::new(Mutex::new(Workload::new(self.ring_seconds)));
        workloads.insert(key.clone(), w.clone());
        Ok((key, w))
    }

    fn existing(&self, key: &WorkloadKey) -> Option<Handle> {
        read(&self.workloads).get(key).cloned()
    }

    pub fn census(&self) -> Census {
        let workloads = read(&self.workloads);
        let mut c = Census {
            workloads: workloads.len(),
            ..Census::default()
        };
        for w in workloads.values() {
            let w = lock(w);
            c.pods += w.pods.len();
            c.activators += w.activators.len();
        }
        c
    }
}

#[cfg(test)]
mod tests;
