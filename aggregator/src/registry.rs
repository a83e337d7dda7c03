//! Every workload's figures: its ring of per-second buckets, the pods and activators reporting for
//! it, and when a request was last seen. Reports go in through [`Registry::apply`]; the scaler reads
//! [`Registry::value`] and [`Registry::is_active`]; [`Registry::sweep`] drops pods that stopped
//! reporting.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use inflight_proto::v1::{
    report_request, HeldReport, PodIdentity, PodReport, ReportRequest, WorkloadRef,
};
use inflight_runtime::{lock, read, write};
use tokio::sync::watch;

use crate::traffic::{self, PodTraffic, Traffic};
use crate::validate::{self, Rejection};
use crate::window::{Burst, Ring, Sample, WindowValue};

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

    pub(crate) fn from_ref(w: &WorkloadRef) -> Self {
        Self::new(&w.namespace, &w.kind, &w.name)
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

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

#[derive(Debug, Clone)]
struct Member {
    /// When its latest report arrived (local clock).
    seen_ms: i64,
    interval_ms: u32,
    /// End of its latest report's interval: its figures are complete up to there.
    until_ms: i64,
    /// Its latest report's average concurrency (or held) and requests per ms: what it is taken
    /// to go on doing when its next report is late.
    last_concurrency: f64,
    last_requests_per_ms: f64,
    /// In flight (pods) or held (activators) at its latest report.
    now: u32,
    /// For the SMI API: allocated when the pod first serves a request.
    traffic: Option<Box<PodTraffic>>,
    /// For a pod first heard during warm-up: what it reported since.
    observed: Option<Observed>,
}

/// A pod first heard during warm-up was serving before this process could hear it. Until no
/// window reaches back before its first report, the part of a window before it is filled with the
/// pod's average over what was observed of it: each pod is averaged over its own observed span,
/// not over this process's lifetime. (A pod first heard after warm-up is new: before it, it served
/// nothing.)
#[derive(Debug, Clone, Copy)]
struct Observed {
    from_ms: i64,
    concurrency_ms: f64,
    requests: f64,
}

#[derive(Debug)]
struct Workload {
    ring: Ring,
    pods: HashMap<String, Member>,
    activators: HashMap<String, Member>,
    /// End of the latest interval in which a request arrived or was in flight.
    last_request_ms: Option<i64>,
    /// Whether anything is in flight or held right now; watchers hear each change.
    busy: watch::Sender<bool>,
    /// Since when the ring's whole length holds data (it may have grown since this process
    /// started).
    history_from_ms: i64,
    /// Every latency reported since this process started, for OTLP's cumulative histogram.
    durations: Durations,
    /// Burst mode, per stable window asked for (triggers may ask for different ones).
    bursts: Vec<(i64, Burst)>,
}

/// How many different stable windows of one workload keep a burst mode; one more replaces the
/// one least recently in burst mode.
const BURST_STATES: usize = 4;

/// A cumulative latency histogram (bucket counts as in `LATENCY_BOUNDS_SECONDS`, plus +Inf).
#[derive(Debug, Clone, PartialEq)]
pub struct Durations {
    pub counts: [u64; inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1],
    pub sum_seconds: f64,
}

impl Default for Durations {
    fn default() -> Self {
        Self {
            counts: [0; inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1],
            sum_seconds: 0.0,
        }
    }
}

/// One workload's figures for OTLP.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    pub workload: WorkloadKey,
    /// Requests in flight now, over its pods' latest reports.
    pub active: u64,
    pub durations: Durations,
}

impl Workload {
    fn new(ring_seconds: u32) -> Self {
        Self {
            ring: Ring::new(ring_seconds),
            pods: HashMap::new(),
            activators: HashMap::new(),
            last_request_ms: None,
            busy: watch::Sender::new(false),
            history_from_ms: i64::MIN,
            durations: Durations::default(),
            bursts: Vec::new(),
        }
    }

    fn refresh_busy(&self) {
        let busy = self
            .pods
            .values()
            .chain(self.activators.values())
            .any(|m| m.now > 0);
        self.busy
            .send_if_modified(|b| std::mem::replace(b, busy) != busy);
    }

    /// Where a window may end: at the earliest end of its members' latest reports (each member's
    /// figures are complete up to there, and not beyond), but never more than two report intervals
    /// behind now, so one member that stopped reporting (or one long merged report still on its
    /// way) cannot hold the answer back. Without members, everything the ring holds is complete.
    fn complete_until(&self, now_ms: i64, max_interval_ms: i64) -> i64 {
        let members = || self.pods.values().chain(self.activators.values());
        let Some(earliest) = members().map(|m| m.until_ms).min() else {
            return now_ms;
        };
        let interval = members()
            .map(|m| i64::from(m.interval_ms).min(max_interval_ms))
            .max()
            .unwrap_or(1000)
            .max(1000);
        earliest.clamp(now_ms - 2 * interval, now_ms)
    }

    /// The ring's window, with the part before each pod first heard during warm-up filled with
    /// that pod's observed average (see [`Observed`]), and the part after the latest report of a
    /// member more than two intervals late (see [`Workload::complete_until`]) with its latest
    /// figures: a late reporter is not a false drop.
    fn window(&self, end_ms: i64, window_ms: i64, since_ms: i64) -> WindowValue {
        let mut v = self.ring.window(end_ms, window_ms, since_ms);
        let start = end_ms.saturating_sub(window_ms).max(since_ms);
        #[allow(clippy::cast_precision_loss)]
        let span = (end_ms - start) as f64;
        if span <= 0.0 {
            return v;
        }
        let late = |m: &Member| {
            #[allow(clippy::cast_precision_loss)]
            let late = (end_ms - m.until_ms.max(start)) as f64;
            late / span
        };
        for m in self.pods.values().filter(|m| m.until_ms < end_ms) {
            v.concurrency += m.last_concurrency * late(m);
            v.request_rate += m.last_requests_per_ms * 1000.0 * late(m);
        }
        for m in self.activators.values().filter(|m| m.until_ms < end_ms) {
            v.concurrency += m.last_concurrency * late(m);
            v.arrival_rate += m.last_requests_per_ms * 1000.0 * late(m);
        }
        for (m, o) in self
            .pods
            .values()
            .filter_map(|m| Some((m, m.observed?)))
            .filter(|(_, o)| o.from_ms > start)
        {
            #[allow(clippy::cast_precision_loss)]
            let (seen, missing) = (
                (m.until_ms - o.from_ms) as f64,
                (o.from_ms.min(end_ms) - start) as f64,
            );
            if seen > 0.0 && span > 0.0 {
                v.concurrency += o.concurrency_ms / seen * missing / span;
                v.request_rate += o.requests * 1000.0 / seen * missing / span;
            }
        }
        v
    }

    /// Nothing to say: no member, no request within the longest window, nobody watching.
    fn idle(&self, now_ms: i64, max_window_ms: i64) -> bool {
        let quiet = self
            .last_request_ms
            .is_none_or(|t| now_ms - t > max_window_ms);
        self.pods.is_empty()
            && self.activators.is_empty()
            && quiet
            && self.busy.receiver_count() == 0
    }

    fn burst(&mut self, window_ms: i64) -> &mut Burst {
        let i = match self.bursts.iter().position(|(w, _)| *w == window_ms) {
            Some(i) => i,
            None if self.bursts.len() < BURST_STATES => {
                self.bursts.push((window_ms, Burst::default()));
                self.bursts.len() - 1
            }
            None => {
                let i = self
                    .bursts
                    .iter()
                    .position(|(_, b)| !b.active())
                    .unwrap_or(0);
                self.bursts[i] = (window_ms, Burst::default());
                i
            }
        };
        &mut self.bursts[i].1
    }

    fn saw_requests(&mut self, end_ms: i64) {
        self.last_request_ms = Some(self.last_request_ms.map_or(end_ms, |t| t.max(end_ms)));
    }
}

/// Counts of what the registry holds, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub workloads: usize,
    pub pods: usize,
    pub activators: usize,
}

#[derive(Debug)]
pub struct Registry {
    settings: Settings,
    ring_seconds: u32,
    workloads: RwLock<HashMap<WorkloadKey, Arc<Mutex<Workload>>>>,
    /// Workloads per namespace; changed only under the `workloads` write lock.
    namespaces: Mutex<HashMap<String, usize>>,
    /// (namespace, pod) → its workload: a pod that claims a second workload is refused while the
    /// stream that claimed it is open.
    pods: Mutex<HashMap<(String, String), Claim>>,
    /// Pods tracked, over all workloads.
    pod_count: AtomicUsize,
    /// Activator (`namespace/pod`) → the workloads its latest report listed: a report is its
    /// complete set, so a workload it no longer lists holds nothing there.
    held_sets: Mutex<HashMap<String, HeldSet>>,
    next_stream: AtomicU64,
}

#[derive(Debug, Clone)]
struct HeldSet {
    workloads: Vec<WorkloadKey>,
    seen_ms: i64,
}

#[derive(Debug, Clone)]
struct Claim {
    workload: WorkloadKey,
    /// The stream that claimed it, until that stream ends.
    stream: Option<u64>,
}

/// Reports that [`Registry::apply`] takes without a stream: their claims last until the pod
/// expires.
const NO_STREAM: u64 = 0;

/// One report stream. The pod names it claimed are released when it ends (dropped): another
/// workload may then claim them, so a name squatted by a stream is free once it closes, and a
/// pod that really moved is not refused until its old entry expires.
#[derive(Debug)]
pub struct Stream<'a> {
    registry: &'a Registry,
    id: u64,
    claimed: Mutex<Vec<(String, String)>>,
}

impl Stream<'_> {
    /// Folds one report in, or refuses it without changing anything.
    pub fn apply(&self, report: &ReportRequest, now_ms: i64) -> Result<(), Rejection> {
        self.registry.apply_on(report, Some(self), now_ms)
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        let claimed = std::mem::take(&mut *lock(&self.claimed));
        let mut pods = lock(&self.registry.pods);
        for key in claimed {
            if let Some(c) = pods.get_mut(&key) {
                if c.stream == Some(self.id) {
                    c.stream = None;
                }
            }
        }
    }
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

    /// A new report stream (see [`Stream`]).
    pub fn stream(&self) -> Stream<'_> {
        Stream {
            registry: self,
            id: self.next_stream.fetch_add(1, Ordering::Relaxed),
            claimed: Mutex::default(),
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

    /// The workload, made if the limits allow.
    fn workload(&self, key: &WorkloadKey) -> Result<Arc<Mutex<Workload>>, Rejection> {
        if let Some(w) = read(&self.workloads).get(key) {
            return Ok(w.clone());
        }
        let limits = self.settings.limits;
        let mut workloads = write(&self.workloads);
        if let Some(w) = workloads.get(key) {
            return Ok(w.clone());
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
        let in_namespace = namespaces.entry(key.namespace.clone()).or_insert(0);
        if *in_namespace >= limits.workloads_per_namespace {
            return Err(Rejection::Limit {
                what: "workloads in the namespace",
                reason: "workloads_per_namespace",
                limit: limits.workloads_per_namespace,
                flag: "--max-workloads-per-namespace",
            });
        }
        *in_namespace += 1;
        let w = Arc::new(Mutex::new(Workload::new(self.ring_seconds)));
        workloads.insert(key.clone(), w.clone());
        Ok(w)
    }

    fn existing(&self, key: &WorkloadKey) -> Option<Arc<Mutex<Workload>>> {
        read(&self.workloads).get(key).cloned()
    }

    /// Folds one report in, or refuses it without changing anything (a refused report may leave
    /// an empty workload, which the next sweep drops). Reports of a stream go through
    /// [`Registry::stream`].
    pub fn apply(&self, report: &ReportRequest, now_ms: i64) -> Result<(), Rejection> {
        self.apply_on(report, None, now_ms)
    }

    fn apply_on(
        &self,
        report: &ReportRequest,
        stream: Option<&Stream<'_>>,
        now_ms: i64,
    ) -> Result<(), Rejection> {
        match &report.report {
            Some(report_request::Report::Pod(p)) => self.apply_pod(p, stream, now_ms),
            Some(report_request::Report::Held(h)) => self.apply_held(h, now_ms),
            None => Err(Rejection::Empty),
        }
    }

    fn apply_pod(
        &self,
        report: &PodReport,
        stream: Option<&Stream<'_>>,
        now_ms: i64,
    ) -> Result<(), Rejection> {
        let (pod, key, interval) = validate::pod_report(report, now_ms)?;
        // Before making anything: a refused report makes no workload.
        self.claimable(pod, &key)?;
        let workload = self.workload(&key)?;
        let mut w = lock(&workload);
        if !w.pods.contains_key(&pod.pod) {
            self.admit_pod(w.pods.len())?;
        }
        if let Err(e) = self.claim(pod, &key, stream) {
            if !w.pods.contains_key(&pod.pod) {
                self.pod_count.fetch_sub(1, Ordering::Relaxed);
            }
            return Err(e);
        }
        let end_ms = interval
            .start_unix_ms
            .saturating_add(i64::from(interval.length_ms));
        #[allow(clippy::cast_precision_loss)]
        let requests = report.requests as f64;
        w.ring.add(
            Sample {
                start_ms: interval.start_unix_ms,
                length_ms: interval.length_ms,
                concurrency: report.avg_concurrency,
                held: 0.0,
                requests,
                arrived: 0.0,
            },
            now_ms,
        );
        if report.requests > 0 || report.in_flight > 0 || report.avg_concurrency > 0.0 {
            w.saw_requests(end_ms);
        }
        if let Some(h) = &report.latency {
            for (total, c) in w.durations.counts.iter_mut().zip(&h.counts) {
                *total = total.saturating_add(*c);
            }
            w.durations.sum_seconds += h.sum_seconds;
        }
        let warming_up = !self.warmed_up(now_ms);
        let member = w.pods.entry(pod.pod.clone()).or_insert_with(|| Member {
            seen_ms: now_ms,
            interval_ms: interval.length_ms,
            until_ms: end_ms,
            last_concurrency: 0.0,
            last_requests_per_ms: 0.0,
            now: 0,
            traffic: None,
            observed: warming_up.then_some(Observed {
                from_ms: interval.start_unix_ms,
                concurrency_ms: 0.0,
                requests: 0.0,
            }),
        });
        if let Some(o) = &mut member.observed {
            o.concurrency_ms += report.avg_concurrency * f64::from(interval.length_ms);
            o.requests += requests;
            // No window reaches back before it any more.
            let reach = self.settings.max_window_ms + 2 * self.settings.max_report_interval_ms;
            if o.from_ms < now_ms - reach {
                member.observed = None;
            }
        }
        member.seen_ms = now_ms;
        member.interval_ms = interval.length_ms;
        member.until_ms = end_ms;
        member.last_concurrency = report.avg_concurrency;
        member.last_requests_per_ms = requests / f64::from(interval.length_ms);
        member.now = report.in_flight;
        if traffic::has_traffic(report) {
            member
                .traffic
                .get_or_insert_with(Box::default)
                .add(report, end_ms, now_ms);
        }
        w.refresh_busy();
        Ok(())
    }

    fn apply_held(&self, report: &HeldReport, now_ms: i64) -> Result<(), Rejection> {
        let validate::Held {
            activator,
            interval,
            workloads,
        } = validate::held_report(report, now_ms)?;
        let end_ms = interval
            .start_unix_ms
            .saturating_add(i64::from(interval.length_ms));
        // Every workload first, so that a limit refuses the report before anything changed.
        let handles = workloads
            .iter()
            .map(|(key, _)| self.workload(key))
            .collect::<Result<Vec<_>, _>>()?;
        let name = format!("{}/{}", activator.namespace, activator.pod);
        {
            let sets = lock(&self.held_sets);
            if !sets.contains_key(&name) && sets.len() >= self.settings.limits.pods {
                return Err(Rejection::Limit {
                    what: "activators",
                    reason: "pods",
                    limit: self.settings.limits.pods,
                    flag: "--max-pods",
                });
            }
        }
        for workload in &handles {
            let w = lock(workload);
            if !w.activators.contains_key(&name)
                && w.activators.len() >= self.settings.limits.pods_per_workload
            {
                return Err(Rejection::Limit {
                    what: "activators of the workload",
                    reason: "pods_per_workload",
                    limit: self.settings.limits.pods_per_workload,
                    flag: "--max-pods-per-workload",
                });
            }
        }
        for ((_, held), workload) in workloads.iter().zip(&handles) {
            let mut w = lock(workload);
            #[allow(clippy::cast_precision_loss)]
            let arrived = held.arrived as f64;
            // Requests that arrived at the activator count for the workload's rate, apart from the
            // pods' (see `WindowValue::requests_per_second`).
            w.ring.add(
                Sample {
                    start_ms: interval.start_unix_ms,
                    length_ms: interval.length_ms,
                    concurrency: 0.0,
                    held: held.avg_held,
                    requests: 0.0,
                    arrived,
                },
                now_ms,
            );
            if held.held > 0 || held.arrived > 0 {
                w.saw_requests(end_ms);
            }
            w.activators.insert(
                name.clone(),
                Member {
                    seen_ms: now_ms,
                    interval_ms: interval.length_ms,
                    until_ms: end_ms,
                    last_concurrency: held.avg_held,
                    last_requests_per_ms: arrived / f64::from(interval.length_ms),
                    now: held.held,
                    traffic: None,
                    observed: None,
                },
            );
            w.refresh_busy();
        }
        let listed: Vec<WorkloadKey> = workloads.into_iter().map(|(k, _)| k).collect();
        let before = lock(&self.held_sets).insert(
            name.clone(),
            HeldSet {
                workloads: listed.clone(),
                seen_ms: now_ms,
            },
        );
        let listed: std::collections::HashSet<&WorkloadKey> = listed.iter().collect();
        for key in before
            .map(|b| b.workloads)
            .unwrap_or_default()
            .iter()
            .filter(|k| !listed.contains(k))
        {
            if let Some(workload) = self.existing(key) {
                let mut w = lock(&workload);
                w.activators.remove(&name);
                w.refresh_busy();
            }
        }
        Ok(())
    }

    /// Counts a new pod in, if the limits allow: `in_workload` pods are already there.
    fn admit_pod(&self, in_workload: usize) -> Result<(), Rejection> {
        let limits = self.settings.limits;
        if in_workload >= limits.pods_per_workload {
            return Err(Rejection::Limit {
                what: "pods in the workload",
                reason: "pods_per_workload",
                limit: limits.pods_per_workload,
                flag: "--max-pods-per-workload",
            });
        }
        self.pod_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limits.pods).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| Rejection::Limit {
                what: "pods",
                reason: "pods",
                limit: limits.pods,
                flag: "--max-pods",
            })
    }

    fn claimable(&self, pod: &PodIdentity, key: &WorkloadKey) -> Result<(), Rejection> {
        match lock(&self.pods).get(&(pod.namespace.clone(), pod.pod.clone())) {
            Some(c) if c.workload != *key && c.stream.is_some() => Err(Rejection::TwoWorkloads {
                first: c.workload.to_string(),
                second: key.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// A pod belongs to one workload while the stream that claimed it is open (and, for reports
    /// without a stream, until it expires).
    fn claim(
        &self,
        pod: &PodIdentity,
        key: &WorkloadKey,
        stream: Option<&Stream<'_>>,
    ) -> Result<(), Rejection> {
        let id = stream.map_or(NO_STREAM, |s| s.id);
        let name = (pod.namespace.clone(), pod.pod.clone());
        let mut pods = lock(&self.pods);
        match pods.get_mut(&name) {
            Some(c) if c.workload != *key && c.stream.is_some() => Err(Rejection::TwoWorkloads {
                first: c.workload.to_string(),
                second: key.to_string(),
            }),
            Some(c) if c.workload == *key && c.stream == Some(id) => Ok(()),
            Some(c) => {
                c.workload = key.clone();
                c.stream = Some(id);
                drop(pods);
                if let Some(s) = stream {
                    lock(&s.claimed).push(name);
                }
                Ok(())
            }
            None => {
                pods.insert(
                    name.clone(),
                    Claim {
                        workload: key.clone(),
                        stream: Some(id),
                    },
                );
                drop(pods);
                if let Some(s) = stream {
                    lock(&s.claimed).push(name);
                }
                Ok(())
            }
        }
    }

    /// Drops members that missed [`MISSED_INTERVALS`] intervals, and workloads left with nothing to
    /// say (no member, no request within the longest window). Returns how many pods were dropped.
    pub fn sweep(&self, now_ms: i64) -> usize {
        // A reporter's own interval, counted at most --max-report-interval: a reporter that claims
        // a 49-day interval does not make itself immortal.
        let max_interval = self.settings.max_report_interval_ms.max(1000);
        let stale = |m: &Member| {
            now_ms - m.seen_ms
                > MISSED_INTERVALS * i64::from(m.interval_ms).clamp(1000, max_interval)
        };
        let mut dropped_pods = Vec::new();
        let mut empty = Vec::new();
        for (key, workload) in read(&self.workloads).iter() {
            let mut w = lock(workload);
            let before = (w.pods.len(), w.activators.len());
            w.pods.retain(|name, m| {
                let keep = !stale(m);
                if !keep {
                    dropped_pods.push(((key.namespace.clone(), name.clone()), key.clone()));
                }
                keep
            });
            w.activators.retain(|_, m| !stale(m));
            if (w.pods.len(), w.activators.len()) != before {
                w.refresh_busy();
            }
            if w.idle(now_ms, self.settings.max_window_ms) {
                empty.push(key.clone());
            }
        }
        lock(&self.held_sets).retain(|_, h| now_ms - h.seen_ms <= MISSED_INTERVALS * max_interval);
        if !dropped_pods.is_empty() {
            self.pod_count
                .fetch_sub(dropped_pods.len(), Ordering::Relaxed);
            let mut pods = lock(&self.pods);
            for (p, key) in &dropped_pods {
                // Unless another workload has claimed the name since.
                if pods.get(p).is_some_and(|c| c.workload == *key) {
                    pods.remove(p);
                }
            }
        }
        if !empty.is_empty() {
            let mut workloads = write(&self.workloads);
            let mut namespaces = lock(&self.namespaces);
            for key in empty {
                // Decided under the read lock: a report may have come in since.
                let still_idle = workloads
                    .get(&key)
                    .is_some_and(|w| lock(w).idle(now_ms, self.settings.max_window_ms));
                if still_idle && workloads.remove(&key).is_some() {
                    if let Some(n) = namespaces.get_mut(&key.namespace) {
                        *n -= 1;
                        if *n == 0 {
                            namespaces.remove(&key.namespace);
                        }
                    }
                }
            }
        }
        dropped_pods.len()
    }

    /// The scaler's value: concurrency (stable window, or the burst window in burst mode, see
    /// [`Burst`]) or request rate (requests/s over the window). During warm-up there is none: a
    /// workload whose pods have not found this process yet would read less than it serves, or 0.
    /// After it, a workload nobody reports for reads 0.
    pub fn value(
        &self,
        key: &WorkloadKey,
        metric: Metric,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<f64, NotObserved> {
        if !self.warmed_up(now_ms) {
            return Err(NotObserved {
                observed_ms: now_ms.saturating_sub(self.settings.started_ms),
                warm_up_ms: self.settings.warm_up_ms,
            });
        }
        let Some(workload) = self.existing(key) else {
            return Ok(0.0);
        };
        let mut w = lock(&workload);
        // Never `clamp`: it panics when the bounds cross.
        let window_ms = window_ms.min(self.settings.max_window_ms).max(1000);
        let seconds = seconds(window_ms);
        if seconds > w.ring.capacity() {
            // The older seconds of the longer window were never kept: until they pass, average
            // over what the ring held.
            w.history_from_ms = now_ms - i64::from(w.ring.capacity()) * 1000;
            w.ring.grow(seconds);
        }
        // Whole seconds only: the second being filled holds only the part reported so far, and
        // reading a fraction of it as if it were spread over the whole second under-reads it.
        let end = w
            .complete_until(now_ms, self.settings.max_report_interval_ms)
            .div_euclid(1000)
            * 1000;
        let since = self
            .settings
            .started_ms
            .max(w.history_from_ms)
            .saturating_add(999)
            .div_euclid(1000)
            * 1000;
        let stable = w.window(end, window_ms, since);
        Ok(match metric {
            Metric::RequestRate => stable.requests_per_second(),
            Metric::Concurrency => {
                let burst = w.window(end, self.settings.burst_ms, since);
                w.burst(window_ms)
                    .answer(stable.concurrency, burst.concurrency, window_ms, now_ms)
            }
        })
    }

    /// Active: something in flight or held now, or a request within `delay_ms`. A workload that
    /// has pods is not called inactive until `delay_ms` has passed since this process started:
    /// after a restart the aggregator does not know how long it has been idle. One without pods
    /// (at zero) is not woken by a restart: activators that list it holding nothing do not count.
    pub fn is_active(&self, key: &WorkloadKey, delay_ms: i64, now_ms: i64) -> bool {
        let Some(workload) = self.existing(key) else {
            return false;
        };
        let w = lock(&workload);
        if *w.busy.borrow() {
            return true;
        }
        let recent = w.last_request_ms.is_some_and(|t| now_ms - t < delay_ms);
        recent || (!w.pods.is_empty() && now_ms - self.settings.started_ms < delay_ms)
    }

    /// Wakes whoever waits on a change of the workload's "something in flight or held".
    /// At the limits on workloads, a watch that never changes: the watcher then polls.
    pub fn watch_busy(&self, key: &WorkloadKey) -> watch::Receiver<bool> {
        match self.workload(key) {
            Ok(w) => lock(&w).busy.subscribe(),
            Err(_) => watch::channel(false).1,
        }
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

    /// A pod's traffic over `[now - window, now)`, if the pod reports.
    pub fn pod_traffic(
        &self,
        namespace: &str,
        pod: &str,
        window_ms: i64,
        now_ms: i64,
    ) -> Option<Traffic> {
        let key = lock(&self.pods)
            .get(&(namespace.to_owned(), pod.to_owned()))?
            .workload
            .clone();
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
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Reporting pods, as (namespace, pod), in `namespace` (or all), sorted.
    pub fn pods_in(&self, namespace: Option<&str>) -> Vec<(String, String)> {
        let mut pods: Vec<(String, String)> = lock(&self.pods)
            .keys()
            .filter(|(ns, _)| namespace.is_none_or(|n| ns == n))
            .cloned()
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

    /// Every workload with pods: requests in flight now and the cumulative latency histogram.
    pub fn export(&self) -> Vec<Export> {
        let mut out: Vec<Export> = read(&self.workloads)
            .iter()
            .filter_map(|(key, w)| {
                let w = lock(w);
                (!w.pods.is_empty()).then(|| Export {
                    workload: key.clone(),
                    active: w.pods.values().map(|m| u64::from(m.now)).sum(),
                    durations: w.durations.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.workload.cmp(&b.workload));
        out
    }

    /// Pods currently tracked for a workload (their names).
    pub fn pods(&self, key: &WorkloadKey) -> Vec<String> {
        self.existing(key).map_or_else(Vec::new, |w| {
            let mut pods: Vec<String> = lock(&w).pods.keys().cloned().collect();
            pods.sort();
            pods
        })
    }
}

#[cfg(test)]
mod tests {
    use inflight_proto::v1::{Interval, LatencyHistogram};

    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn registry(started_ms: i64) -> Registry {
        Registry::new(Settings {
            stable_ms: 60_000,
            burst_ms: 6_000,
            max_window_ms: 600_000,
            max_report_interval_ms: 10_000,
            started_ms,
            warm_up_ms: 15_000,
            limits: Limits::default(),
        })
    }

    fn report(
        pod: &str,
        workload: &str,
        start_ms: i64,
        concurrency: f64,
        in_flight: u32,
        requests: u64,
    ) -> ReportRequest {
        let (kind, name) = workload.split_once('/').unwrap();
        ReportRequest {
            report: Some(report_request::Report::Pod(PodReport {
                pod: Some(PodIdentity {
                    namespace: "shop".into(),
                    pod: pod.into(),
                    workload: Some(WorkloadRef {
                        namespace: "shop".into(),
                        kind: kind.into(),
                        name: name.into(),
                    }),
                    pod_ip: "10.0.0.1".into(),
                }),
                interval: Some(Interval {
                    start_unix_ms: start_ms,
                    length_ms: 1000,
                }),
                avg_concurrency: concurrency,
                in_flight,
                requests,
                responses: None,
                latency: None,
            })),
        }
    }

    fn with_length(mut r: ReportRequest, length_ms: u32) -> ReportRequest {
        if let Some(report_request::Report::Pod(p)) = &mut r.report {
            p.interval = Some(Interval {
                start_unix_ms: p.interval.unwrap().start_unix_ms,
                length_ms,
            });
        }
        r
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn after_an_outage_longer_than_the_ring_the_answer_is_current() {
        let r = registry(T0 - 3_600_000);
        for s in 0..60 {
            let at = T0 + s * 1000;
            r.apply(
                &report("web-1", "deployment/web", at, 10.0, 10, 10),
                at + 1000,
            )
            .unwrap();
        }
        // The aggregator was unreachable for 70 s: the proxy sends one merged 70 s report.
        let start = T0 + 60_000;
        let merged = with_length(
            report("web-1", "deployment/web", start, 10.0, 10, 700),
            70_000,
        );
        let mut now = start + 70_000 + 20;
        r.apply(&merged, now).unwrap();
        assert!(close(
            r.value(&web(), Metric::Concurrency, 60_000, now).unwrap(),
            10.0
        ));
        // And every answer after it is current, not 70 s behind.
        for s in 0..5 {
            let at = start + 70_000 + s * 1000;
            now = at + 1000 + 20;
            r.apply(&report("web-1", "deployment/web", at, 10.0, 10, 10), now)
                .unwrap();
            let v = r.value(&web(), Metric::Concurrency, 60_000, now).unwrap();
            assert!(close(v, 10.0), "{s} s after the outage: {v}");
        }
    }

    #[test]
    fn one_huge_interval_does_not_hold_the_window_back() {
        let r = registry(T0 - 3_600_000);
        let now = T0 + 1_000_000_000;
        let huge = u32::MAX;
        let start = now - i64::from(huge);
        r.apply(
            &with_length(report("web-1", "deployment/web", start, 4.0, 4, 0), huge),
            now,
        )
        .unwrap();
        let v = r.value(&web(), Metric::Concurrency, 60_000, now).unwrap();
        assert!(close(v, 4.0), "{v}");
    }

    fn web() -> WorkloadKey {
        WorkloadKey::new("shop", "deployment", "web")
    }

    #[test]
    fn pods_add_up_and_the_burst_rule_answers_a_spike() {
        let r = registry(T0 - 3_600_000);
        for s in 0..60 {
            let at = T0 + s * 1000;
            r.apply(
                &report("web-1", "deployment/web", at, 1.0, 1, 10),
                at + 1000,
            )
            .unwrap();
            // The second pod gets a spike in the last 6 s: 10 in flight.
            let c = if s >= 54 { 10.0 } else { 1.0 };
            r.apply(&report("web-2", "deployment/web", at, c, 1, 10), at + 1000)
                .unwrap();
        }
        let now = T0 + 61_000; // figures complete up to now - 1 s
        let stable = 1.0 + (54.0 + 60.0) / 60.0;
        let burst = 11.0;
        assert!(burst >= 2.0 * stable);
        let v = r.value(&web(), Metric::Concurrency, 60_000, now).unwrap();
        assert!((v - burst).abs() < 1e-6, "{v}");
        let rate = r.value(&web(), Metric::RequestRate, 60_000, now).unwrap();
        assert!((rate - 20.0).abs() < 1e-6, "{rate}");
        assert_eq!(r.pods(&web()), vec!["web-1", "web-2"]);
    }

    #[test]
    fn a_sustained_step_is_never_answered_with_less() {
        let r = registry(T0);
        let mut last = 0.0;
        for s in 0..150 {
            let at = T0 + s * 1000;
            // One in flight for a minute, then ten for as long as the test runs.
            let c = if s < 60 { 1.0 } else { 10.0 };
            let now = at + 1000;
            r.apply(&report("web-1", "deployment/web", at, c, 1, 1), now)
                .unwrap();
            let Ok(v) = r.value(&web(), Metric::Concurrency, 60_000, now) else {
                assert!(s < 15, "an answer once warmed up");
                continue;
            };
            if s < 60 {
                assert!(close(v, 1.0), "{s}: {v}");
            } else {
                assert!(v >= last - 1e-9, "{s} s: fell from {last} to {v}");
            }
            if s >= 66 {
                // The burst window holds only the step from 6 s on.
                assert!(close(v, 10.0), "{s} s: {v}");
            }
            last = v;
        }
    }

    fn pod(r: &mut ReportRequest) -> &mut PodReport {
        match &mut r.report {
            Some(report_request::Report::Pod(p)) => p,
            _ => unreachable!(),
        }
    }

    #[test]
    fn absurd_figures_are_refused_and_change_nothing() {
        let r = registry(T0 - 3_600_000);
        let now = T0 + 1000;
        let good = || report("web-1", "deployment/web", T0, 3.0, 3, 30);
        let mut cases: Vec<(&str, ReportRequest)> = Vec::new();
        let mut c = good();
        pod(&mut c).avg_concurrency = 1e308;
        cases.push(("bad_concurrency", c));
        let mut c = good();
        pod(&mut c).in_flight = u32::MAX;
        cases.push(("bad_concurrency", c));
        let mut c = good();
        pod(&mut c).requests = u64::MAX;
        cases.push(("out_of_range", c));
        let mut c = good();
        pod(&mut c).responses = Some(inflight_proto::v1::Responses {
            class_2xx: u64::MAX,
            ..Default::default()
        });
        cases.push(("out_of_range", c));
        let mut c = good();
        pod(&mut c).latency = Some(LatencyHistogram {
            counts: vec![u64::MAX; inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1],
            sum_seconds: 1.0,
        });
        cases.push(("out_of_range", c));
        let mut c = good();
        pod(&mut c).latency = Some(LatencyHistogram {
            counts: vec![1; inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1],
            sum_seconds: 1e308,
        });
        cases.push(("bad_latency_sum", c));
        let mut c = good();
        pod(&mut c).interval = Some(Interval {
            start_unix_ms: i64::MAX - 10,
            length_ms: u32::MAX,
        });
        cases.push(("bad_interval", c));
        let mut c = good();
        pod(&mut c).interval = Some(Interval {
            start_unix_ms: i64::MIN,
            length_ms: 1000,
        });
        cases.push(("bad_interval", c));
        for (reason, c) in &cases {
            // Twice: a sum of two accepted absurd figures would overflow.
            for _ in 0..2 {
                assert_eq!(r.apply(c, now).unwrap_err().reason(), *reason, "{c:?}");
            }
        }
        assert_eq!(r.census(), Census::default(), "nothing was made");
        // The largest figures accepted add up without overflow or infinity.
        let mut big = good();
        pod(&mut big).avg_concurrency = validate::MAX_CONCURRENCY;
        pod(&mut big).requests = validate::MAX_REQUESTS_PER_SECOND;
        pod(&mut big).latency = Some(LatencyHistogram {
            counts: vec![
                validate::MAX_REQUESTS_PER_SECOND;
                inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1
            ],
            sum_seconds: validate::MAX_LATENCY_SUM_SECONDS,
        });
        for _ in 0..3 {
            r.apply(&big, now).unwrap();
        }
        let v = r.value(&web(), Metric::Concurrency, 60_000, now).unwrap();
        // 3 × 10⁶ in flight for one second: the burst window (6 s) reads 5 × 10⁵.
        assert!(close(v, 3e6 / 6.0), "{v}");
        assert!(r.export()[0].durations.sum_seconds.is_finite());
    }

    #[test]
    fn a_pod_whose_clock_runs_fast_is_refused_and_wipes_nothing() {
        let r = registry(T0 - 3_600_000);
        let mut now = T0;
        for s in 0..60 {
            let at = T0 + s * 1000;
            now = at + 1000;
            for p in ["web-1", "web-2"] {
                r.apply(&report(p, "deployment/web", at, 2.0, 2, 2), now)
                    .unwrap();
            }
        }
        assert!(close(
            r.value(&web(), Metric::Concurrency, 60_000, now).unwrap(),
            4.0
        ));
        // web-2's clock is 3 s fast: its next report ends 3 s after now.
        let ahead = report("web-2", "deployment/web", now + 2000, 9.0, 9, 9);
        assert_eq!(
            r.apply(&ahead, now).unwrap_err().reason(),
            "future_interval"
        );
        // A second ahead is allowed (a report is sent when its interval ends).
        r.apply(&report("web-1", "deployment/web", now, 2.0, 2, 2), now)
            .unwrap();
        let v = r.value(&web(), Metric::Concurrency, 60_000, now).unwrap();
        assert!(close(v, 4.0), "{v}");
    }

    #[test]
    fn after_a_restart_no_answer_until_warmed_up_then_each_pod_over_its_own_span() {
        let r = registry(T0);
        // web-1 found this process at once, web-2 only 10 s later (its next DNS re-resolve).
        for s in 0..30 {
            let at = T0 + s * 1000;
            let now = at + 1000;
            r.apply(&report("web-1", "deployment/web", at, 5.0, 5, 5), now)
                .unwrap();
            if s >= 10 {
                r.apply(&report("web-2", "deployment/web", at, 5.0, 5, 5), now)
                    .unwrap();
            }
            let v = r.value(&web(), Metric::Concurrency, 60_000, now);
            let nobody = r.value(
                &WorkloadKey::new("shop", "deployment", "nope"),
                Metric::Concurrency,
                60_000,
                now,
            );
            if now - T0 < 15_000 {
                assert!(v.is_err() && nobody.is_err(), "{s} s: {v:?} {nobody:?}");
                assert!(!r.warmed_up(now));
            } else {
                assert!(r.warmed_up(now));
                assert_eq!(nobody, Ok(0.0), "after warm-up, nobody reports for it: 0");
                // Not 5 + 5 × (s - 10) / s: web-2 is averaged over what was seen of it.
                let v = v.unwrap();
                assert!(close(v, 10.0), "{s} s: {v}");
                let rate = r.value(&web(), Metric::RequestRate, 60_000, now).unwrap();
                assert!(close(rate, 10.0), "{s} s: {rate}");
            }
        }
        // A pod first heard after warm-up is new: before it, it served nothing.
        let r = registry(T0 - 3_600_000);
        for s in 0..60 {
            let at = T0 + s * 1000;
            r.apply(&report("web-1", "deployment/web", at, 5.0, 5, 5), at + 1000)
                .unwrap();
        }
        let at = T0 + 60_000;
        r.apply(&report("web-1", "deployment/web", at, 5.0, 5, 5), at + 1000)
            .unwrap();
        r.apply(&report("web-2", "deployment/web", at, 6.0, 6, 6), at + 1000)
            .unwrap();
        let v = r
            .value(&web(), Metric::Concurrency, 60_000, at + 1000)
            .unwrap();
        assert!(close(v, 5.0 + 6.0 / 60.0), "{v}");
    }

    #[test]
    fn a_restart_does_not_wake_a_workload_at_zero() {
        use inflight_proto::v1::{HeldReport, HeldWorkload};
        let r = registry(T0);
        // The activator lists the workload, holding nothing for it.
        let held = ReportRequest {
            report: Some(report_request::Report::Held(HeldReport {
                activator: Some(PodIdentity {
                    namespace: "inflight".into(),
                    pod: "activator-1".into(),
                    ..PodIdentity::default()
                }),
                interval: Some(Interval {
                    start_unix_ms: T0,
                    length_ms: 1000,
                }),
                workloads: vec![HeldWorkload {
                    workload: Some(WorkloadRef {
                        namespace: "shop".into(),
                        kind: "deployment".into(),
                        name: "web".into(),
                    }),
                    ..HeldWorkload::default()
                }],
            })),
        };
        r.apply(&held, T0 + 1000).unwrap();
        assert!(!r.is_active(&web(), 300_000, T0 + 1000));
    }

    #[test]
    fn reports_out_of_phase_with_the_seconds_add_up() {
        // Reports every second at 437 ms past it, on a process started at 50 ms past a second.
        let t0 = T0 + 437;
        let r = registry(t0 + 2050);
        for s in 0..30 {
            let at = t0 + s * 1000;
            let now = at + 1000;
            for p in ["web-1", "web-2", "web-3"] {
                r.apply(&report(p, "deployment/web", at, 1.0, 1, 1), now)
                    .unwrap();
            }
            if let Ok(v) = r.value(&web(), Metric::Concurrency, 60_000, now + 10) {
                assert!(close(v, 3.0), "{s}: {v}");
            }
        }
    }

    fn report_in(namespace: &str, pod_name: &str, kind: &str, name: &str) -> ReportRequest {
        let mut r = report(pod_name, "deployment/x", T0, 1.0, 1, 1);
        let p = pod(&mut r);
        let id = p.pod.as_mut().unwrap();
        id.namespace = namespace.into();
        id.workload = Some(WorkloadRef {
            namespace: namespace.into(),
            kind: kind.into(),
            name: name.into(),
        });
        r
    }

    #[test]
    fn names_must_be_kubernetes_names() {
        let r = registry(T0 - 3_600_000);
        let now = T0 + 1000;
        let long = "a".repeat(254);
        let label_64 = "a".repeat(64);
        for (ns, pod, kind, name) in [
            ("Shop", "web-1", "deployment", "web"),
            (label_64.as_str(), "web-1", "deployment", "web"),
            ("shop", "web_1", "deployment", "web"),
            ("shop", long.as_str(), "deployment", "web"),
            ("shop", "-web", "deployment", "web"),
            ("shop", "web-1", "deploy ment", "web"),
            ("shop", "web-1", "deployment", "web/x"),
            ("shop", "web-1", "deployment", long.as_str()),
            ("shop", "web-1", "deployment", "Web"),
        ] {
            let e = r.apply(&report_in(ns, pod, kind, name), now).unwrap_err();
            assert_eq!(e.reason(), "bad_name", "{ns} {pod} {kind} {name}: {e}");
            assert!(
                e.to_string().len() < 400,
                "the message quotes at most a name"
            );
        }
        let mut ip = report("web-1", "deployment/web", T0, 1.0, 1, 1);
        pod(&mut ip).pod.as_mut().unwrap().pod_ip = "1".repeat(46);
        assert_eq!(r.apply(&ip, now).unwrap_err().reason(), "bad_name");
        // Real names pass: a subdomain pod name, an upper-case kind (lower-cased).
        r.apply(
            &report_in("shop", "web-7d4b9.x", "Deployment", "web.v2"),
            now,
        )
        .unwrap();
        assert_eq!(r.census().pods, 1);
    }

    #[test]
    fn limits_on_pods_and_workloads_refuse_by_reason() {
        let r = Registry::new(Settings {
            limits: Limits {
                pods_per_workload: 2,
                workloads_per_namespace: 2,
                workloads: 3,
                pods: 4,
            },
            ..registry(T0 - 3_600_000).settings()
        });
        let now = T0 + 1000;
        let ok =
            |ns: &str, pod: &str, name: &str| r.apply(&report_in(ns, pod, "deployment", name), now);
        ok("a", "p1", "w1").unwrap();
        ok("a", "p2", "w1").unwrap();
        assert_eq!(
            ok("a", "p3", "w1").unwrap_err().reason(),
            "pods_per_workload"
        );
        // A pod already tracked goes on reporting.
        ok("a", "p1", "w1").unwrap();
        ok("a", "p4", "w2").unwrap();
        let e = ok("a", "p5", "w3").unwrap_err();
        assert_eq!(e.reason(), "workloads_per_namespace");
        assert!(e.is_limit());
        ok("b", "p6", "w1").unwrap();
        assert_eq!(ok("c", "p7", "w1").unwrap_err().reason(), "workloads");
        assert_eq!(ok("b", "p8", "w1").unwrap_err().reason(), "pods");
        assert_eq!(
            r.census(),
            Census {
                workloads: 3,
                pods: 4,
                activators: 0
            }
        );
        // Expired pods and emptied workloads (quiet for the longest window) make room again.
        let later = now + 700_000;
        assert_eq!(r.sweep(later), 4);
        assert_eq!(r.census(), Census::default());
        r.apply(&report_in("c", "p7", "deployment", "w1"), later)
            .unwrap();
    }

    #[test]
    fn a_reporter_cannot_make_itself_immortal_with_a_long_interval() {
        let r = registry(T0 - 3_600_000);
        let now = T0 + 1_000_000_000;
        let huge = u32::MAX;
        r.apply(
            &with_length(
                report("web-1", "deployment/web", now - i64::from(huge), 1.0, 0, 0),
                huge,
            ),
            now,
        )
        .unwrap();
        assert_eq!(r.sweep(now + 29_000), 0);
        // Three intervals counted at most --max-report-interval (10 s).
        assert_eq!(r.sweep(now + 31_000), 1);
    }

    #[test]
    fn a_name_squatted_by_a_stream_is_free_when_the_stream_ends() {
        let r = registry(T0 - 3_600_000);
        let now = T0 + 1000;
        let squatter = r.stream();
        squatter
            .apply(&report_in("shop", "db-0", "deployment", "fake"), now)
            .unwrap();
        let real = r.stream();
        let db = report_in("shop", "db-0", "statefulset", "db");
        assert_eq!(real.apply(&db, now).unwrap_err().reason(), "two_workloads");
        drop(squatter);
        real.apply(&db, now).unwrap();
        assert_eq!(
            r.pods(&WorkloadKey::new("shop", "statefulset", "db")),
            vec!["db-0"]
        );
        // Now the real pod's stream holds it.
        let other = r.stream();
        assert_eq!(
            other
                .apply(&report_in("shop", "db-0", "deployment", "fake"), now)
                .unwrap_err()
                .reason(),
            "two_workloads"
        );
    }

    fn held(start_ms: i64, workloads: &[(&str, u32, f64, u64)]) -> ReportRequest {
        use inflight_proto::v1::{HeldReport, HeldWorkload};
        ReportRequest {
            report: Some(report_request::Report::Held(HeldReport {
                activator: Some(PodIdentity {
                    namespace: "inflight".into(),
                    pod: "activator-1".into(),
                    ..PodIdentity::default()
                }),
                interval: Some(Interval {
                    start_unix_ms: start_ms,
                    length_ms: 1000,
                }),
                workloads: workloads
                    .iter()
                    .map(|(name, held, avg_held, arrived)| HeldWorkload {
                        workload: Some(WorkloadRef {
                            namespace: "shop".into(),
                            kind: "deployment".into(),
                            name: (*name).into(),
                        }),
                        held: *held,
                        avg_held: *avg_held,
                        arrived: *arrived,
                    })
                    .collect(),
            })),
        }
    }

    #[test]
    fn a_workload_is_no_longer_busy_when_its_activator_expires_or_omits_it() {
        let r = registry(T0 - 3_600_000);
        let api = WorkloadKey::new("shop", "deployment", "api");
        let web_busy = r.watch_busy(&web());
        let api_busy = r.watch_busy(&api);
        r.apply(
            &held(T0, &[("web", 2, 2.0, 2), ("api", 1, 1.0, 1)]),
            T0 + 1000,
        )
        .unwrap();
        assert!(*web_busy.borrow() && *api_busy.borrow());
        // The next report omits api: it holds nothing there any more.
        r.apply(&held(T0 + 1000, &[("web", 2, 2.0, 0)]), T0 + 2000)
            .unwrap();
        assert!(*web_busy.borrow());
        assert!(!*api_busy.borrow(), "an omitted workload holds 0");
        // The activator stops reporting: once it expires, web is not busy either.
        assert_eq!(r.sweep(T0 + 6000), 0);
        assert!(
            !*web_busy.borrow(),
            "busy recomputed when an activator expires"
        );
        assert_eq!(r.census().activators, 0);
    }

    #[test]
    fn requests_held_then_served_are_counted_once() {
        let r = registry(T0 - 3_600_000);
        // 10 requests arrive at the activator in one second and are forwarded to web-1, whose
        // sidecar counts the same 10.
        r.apply(&held(T0, &[("web", 0, 0.5, 10)]), T0 + 1000)
            .unwrap();
        r.apply(
            &report("web-1", "deployment/web", T0, 0.5, 0, 10),
            T0 + 1000,
        )
        .unwrap();
        let rate = r
            .value(&web(), Metric::RequestRate, 10_000, T0 + 1000)
            .unwrap();
        assert!(close(rate, 1.0), "10 requests over 10 s, not 20: {rate}");
        // While no pod serves, the activator's arrivals are the rate.
        let api = WorkloadKey::new("shop", "deployment", "api");
        r.apply(&held(T0 + 1000, &[("api", 5, 5.0, 5)]), T0 + 2000)
            .unwrap();
        let rate = r
            .value(&api, Metric::RequestRate, 10_000, T0 + 2000)
            .unwrap();
        assert!(close(rate, 0.5), "{rate}");
    }

    #[test]
    fn a_fractional_window_and_a_max_window_under_a_second() {
        let r = Registry::new(Settings {
            stable_ms: 2500,
            burst_ms: 1000,
            max_window_ms: 2500,
            ..registry(T0 - 3_600_000).settings()
        });
        for s in 0..10 {
            let at = T0 + s * 1000;
            r.apply(&report("web-1", "deployment/web", at, 2.0, 2, 2), at + 1000)
                .unwrap();
        }
        // The latest report ended 1.9 s ago: the window reads seconds 3 to 5.5 s back.
        let now = T0 + 11_900;
        let v = r.value(&web(), Metric::Concurrency, 2500, now).unwrap();
        assert!(close(v, 2.0), "{v}");
        // A max window under a second makes no call panic.
        let r = Registry::new(Settings {
            stable_ms: 500,
            burst_ms: 100,
            max_window_ms: 500,
            ..registry(T0 - 3_600_000).settings()
        });
        r.apply(&report("web-1", "deployment/web", T0, 2.0, 2, 2), T0 + 1000)
            .unwrap();
        let v = r
            .value(&web(), Metric::Concurrency, 60_000, T0 + 1000)
            .unwrap();
        assert!(close(v, 2.0), "{v}");
    }

    #[test]
    fn a_bad_report_changes_nothing() {
        let r = registry(T0);
        r.apply(&report("web-1", "deployment/web", T0, 2.0, 2, 1), T0 + 1000)
            .unwrap();
        let before = r.value(&web(), Metric::Concurrency, 60_000, T0 + 2000);
        let mut bad = report("web-1", "deployment/web", T0 + 1000, f64::NAN, 0, 1);
        assert_eq!(
            r.apply(&bad, T0 + 2000).unwrap_err().reason(),
            "bad_concurrency"
        );
        if let Some(report_request::Report::Pod(p)) = &mut bad.report {
            p.avg_concurrency = 1.0;
            p.interval = Some(Interval {
                start_unix_ms: T0,
                length_ms: 0,
            });
        }
        assert_eq!(
            r.apply(&bad, T0 + 2000).unwrap_err().reason(),
            "zero_interval"
        );
        if let Some(report_request::Report::Pod(p)) = &mut bad.report {
            p.interval = Some(Interval {
                start_unix_ms: T0,
                length_ms: 1000,
            });
            p.latency = Some(LatencyHistogram {
                counts: vec![1, 2, 3],
                sum_seconds: 0.1,
            });
        }
        assert_eq!(
            r.apply(&bad, T0 + 2000).unwrap_err().reason(),
            "bad_histogram"
        );
        let other = report("web-1", "deployment/api", T0 + 1000, 5.0, 5, 5);
        assert_eq!(
            r.apply(&other, T0 + 2000).unwrap_err().reason(),
            "two_workloads"
        );
        assert_eq!(
            r.apply(&ReportRequest { report: None }, T0)
                .unwrap_err()
                .reason(),
            "empty"
        );
        assert_eq!(
            r.value(&web(), Metric::Concurrency, 60_000, T0 + 2000),
            before
        );
        assert_eq!(
            r.census(),
            Census {
                workloads: 1,
                pods: 1,
                activators: 0
            }
        );
    }

    #[test]
    fn activity_after_a_restart_and_after_idling() {
        let delay = 300_000;
        // Started 10 s ago; the pod reports but has served nothing since.
        let r = registry(T0);
        r.apply(
            &report("web-1", "deployment/web", T0, 0.0, 0, 0),
            T0 + 10_000,
        )
        .unwrap();
        assert!(
            r.is_active(&web(), delay, T0 + 10_000),
            "no false zero before a whole delay since the restart"
        );
        assert!(
            !r.is_active(&web(), delay, T0 + delay + 1000),
            "idle for the whole delay"
        );
        // A request in flight makes it active at once, and the busy watch hears it.
        let busy = r.watch_busy(&web());
        r.apply(
            &report("web-1", "deployment/web", T0 + delay, 0.5, 1, 0),
            T0 + delay + 1000,
        )
        .unwrap();
        assert!(busy.has_changed().unwrap());
        assert!(r.is_active(&web(), delay, T0 + delay + 1000));
        // Unknown workloads are inactive.
        assert!(!r.is_active(&WorkloadKey::new("shop", "deployment", "nope"), delay, T0));
    }

    #[test]
    fn a_held_request_wakes_a_workload_at_zero() {
        use inflight_proto::v1::{HeldReport, HeldWorkload};
        let r = registry(T0 - 3_600_000);
        let busy = r.watch_busy(&web());
        assert!(!r.is_active(&web(), 300_000, T0));
        let held = ReportRequest {
            report: Some(report_request::Report::Held(HeldReport {
                activator: Some(PodIdentity {
                    namespace: "inflight".into(),
                    pod: "activator-1".into(),
                    ..PodIdentity::default()
                }),
                interval: Some(Interval {
                    start_unix_ms: T0 - 1000,
                    length_ms: 1000,
                }),
                workloads: vec![HeldWorkload {
                    workload: Some(WorkloadRef {
                        namespace: "shop".into(),
                        kind: "deployment".into(),
                        name: "web".into(),
                    }),
                    held: 2,
                    avg_held: 1.5,
                    arrived: 2,
                }],
            })),
        };
        r.apply(&held, T0).unwrap();
        assert!(
            busy.has_changed().unwrap(),
            "StreamIsActive hears it at once"
        );
        assert!(r.is_active(&web(), 300_000, T0));
        // Held requests count as concurrency (no pod runs yet).
        // 1.5 held for one second: the burst window (6 s) reads 0.25, four times the stable one.
        let v = r
            .value(&web(), Metric::Concurrency, 60_000, T0 + 1000)
            .unwrap();
        assert!(close(v, 0.25), "{v}");
        assert_eq!(r.census().activators, 1);
    }

    #[test]
    fn silent_pods_expire_after_three_intervals() {
        let r = registry(T0);
        r.apply(&report("web-1", "deployment/web", T0, 1.0, 1, 1), T0 + 1000)
            .unwrap();
        r.apply(&report("web-2", "deployment/web", T0, 1.0, 0, 1), T0 + 1000)
            .unwrap();
        assert_eq!(r.sweep(T0 + 3500), 0);
        r.apply(
            &report("web-2", "deployment/web", T0 + 3000, 1.0, 0, 1),
            T0 + 4000,
        )
        .unwrap();
        assert_eq!(r.sweep(T0 + 4500), 1, "web-1 missed 3 intervals");
        assert_eq!(r.pods(&web()), vec!["web-2"]);
        // A pod that expired may come back under another workload (a new pod with an old name).
        r.apply(
            &report("web-1", "deployment/api", T0 + 5000, 1.0, 0, 1),
            T0 + 6000,
        )
        .unwrap();
    }
}
