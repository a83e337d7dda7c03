//! Reports in: who reports for which workload, within the limits, and who stopped.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use inflight_proto::v1::{report_request, HeldReport, PodReport, ReportRequest};
use inflight_runtime::{lock, read, write};

use super::workload::{Member, Observed};
use super::{KeyRef, Registry, WorkloadKey, MISSED_INTERVALS};
use crate::traffic;
use crate::validate::{self, Rejection};
use crate::window::Sample;

#[derive(Debug, Clone)]
pub(super) struct HeldSet {
    pub(super) workloads: Vec<WorkloadKey>,
    pub(super) seen_ms: i64,
}

#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub(super) workload: Arc<WorkloadKey>,
    /// The stream that claimed it, until that stream ends.
    pub(super) stream: Option<u64>,
}

/// Reports that [`Registry::apply`] takes without a stream: their claims last until the pod
/// expires.
pub(super) const NO_STREAM: u64 = 0;

/// Namespace → pod → the workload it reports for. Names are looked up by `&str`, so a report
/// allocates nothing to find its claim, and each name is stored once: the claiming stream and the
/// workload's member list share it (`Arc<str>`), and the workload key is the registry's own.
#[derive(Debug, Default)]
pub(super) struct Claims(HashMap<Arc<str>, HashMap<Arc<str>, Claim>>);

impl Claims {
    pub(super) fn get(&self, namespace: &str, pod: &str) -> Option<&Claim> {
        self.0.get(namespace)?.get(pod)
    }

    fn get_mut(&mut self, namespace: &str, pod: &str) -> Option<&mut Claim> {
        self.0.get_mut(namespace)?.get_mut(pod)
    }

    /// Sets the pod's claim. Returns the shared (namespace, pod) names and whether the claim
    /// changed.
    fn set(&mut self, namespace: &str, pod: &str, claim: Claim) -> (Arc<str>, Arc<str>, bool) {
        let namespace = match self.0.get_key_value(namespace) {
            Some((ns, _)) => ns.clone(),
            None => Arc::from(namespace),
        };
        let pods = self.0.entry(namespace.clone()).or_default();
        let (name, changed) = match pods.get_key_value(pod) {
            Some((name, old)) => (
                name.clone(),
                old.stream != claim.stream || old.workload != claim.workload,
            ),
            None => (Arc::from(pod), true),
        };
        pods.insert(name.clone(), claim);
        (namespace, name, changed)
    }

    fn remove(&mut self, namespace: &str, pod: &str) {
        if let Some(pods) = self.0.get_mut(namespace) {
            pods.remove(pod);
            if pods.is_empty() {
                self.0.remove(namespace);
            }
        }
    }

    /// Every claimed pod, as (namespace, pod).
    pub(super) fn names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|(ns, pods)| pods.keys().map(move |pod| (&**ns, &**pod)))
    }
}

/// One report stream. The pod names it claimed are released when it ends (dropped): another
/// workload may then claim them, so a name squatted by a stream is free once it closes, and a
/// pod that really moved is not refused until its old entry expires.
#[derive(Debug)]
pub struct Stream<'a> {
    registry: &'a Registry,
    id: u64,
    /// (namespace, pod), shared with the claims.
    claimed: Mutex<Vec<(Arc<str>, Arc<str>)>>,
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
        for (namespace, pod) in claimed {
            if let Some(c) = pods.get_mut(&namespace, &pod) {
                if c.stream == Some(self.id) {
                    c.stream = None;
                }
            }
        }
    }
}

/// What a report's pod name is, before the workload is touched.
enum Claimed {
    /// Claimed for this workload by this stream already (most reports): nothing to change.
    Held(Arc<str>),
    /// Unclaimed, or claimed in a way this report may take over.
    Free,
}

impl Registry {
    /// A new report stream (see [`Stream`]).
    pub fn stream(&self) -> Stream<'_> {
        Stream {
            registry: self,
            id: self.next_stream.fetch_add(1, Ordering::Relaxed),
            claimed: Mutex::default(),
        }
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
        let id = stream.map_or(NO_STREAM, |s| s.id);
        // Before making anything: a refused report makes no workload.
        let claimed = self.claimable(&pod.namespace, &pod.pod, &key, id)?;
        let (key, workload) = self.workload(&key)?;
        let mut w = lock(&workload);
        let known = w.pods.contains_key(&*pod.pod);
        if !known {
            self.admit_pod(w.pods.len())?;
        }
        let name = match claimed {
            Claimed::Held(name) => name,
            Claimed::Free => match self.claim(&pod.namespace, &pod.pod, &key, stream) {
                Ok(name) => name,
                Err(e) => {
                    if !known {
                        self.pod_count.fetch_sub(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            },
        };
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
        let member = w.pods.entry(name).or_insert_with(|| Member {
            seen_ms: now_ms,
            interval_ms: interval.length_ms,
            until_ms: end_ms,
            last_concurrency: 0.0,
            last_requests_per_ms: 0.0,
            now: 0,
            traffic: None,
            observed: warming_up.then(|| {
                Box::new(Observed {
                    from_ms: interval.start_unix_ms,
                    concurrency_ms: 0.0,
                    requests: 0.0,
                })
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
            .map(|(key, _)| self.workload(&key.as_ref()).map(|(_, w)| w))
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

    /// Whether the pod may report for `key` on stream `id`, looked up once: nearly every report
    /// finds its pod already claimed by its own stream, and [`Registry::claim`] is then not needed.
    fn claimable(
        &self,
        namespace: &str,
        pod: &str,
        key: &KeyRef<'_>,
        id: u64,
    ) -> Result<Claimed, Rejection> {
        let pods = lock(&self.pods);
        let Some((name, c)) = pods.0.get(namespace).and_then(|p| p.get_key_value(pod)) else {
            return Ok(Claimed::Free);
        };
        match c.stream {
            Some(_) if !key.names(&c.workload) => Err(Rejection::TwoWorkloads {
                first: c.workload.to_string(),
                second: key.to_string(),
            }),
            Some(s) if s == id => Ok(Claimed::Held(name.clone())),
            _ => Ok(Claimed::Free),
        }
    }

    /// A pod belongs to one workload while the stream that claimed it is open (and, for reports
    /// without a stream, until it expires). Returns the pod's shared name.
    fn claim(
        &self,
        namespace: &str,
        pod: &str,
        key: &Arc<WorkloadKey>,
        stream: Option<&Stream<'_>>,
    ) -> Result<Arc<str>, Rejection> {
        let mut pods = lock(&self.pods);
        if let Some(c) = pods.get(namespace, pod) {
            if c.stream.is_some() && *c.workload != **key {
                return Err(Rejection::TwoWorkloads {
                    first: c.workload.to_string(),
                    second: key.to_string(),
                });
            }
        }
        let claim = Claim {
            workload: key.clone(),
            stream: Some(stream.map_or(NO_STREAM, |s| s.id)),
        };
        let (namespace, name, changed) = pods.set(namespace, pod, claim);
        drop(pods);
        if let Some(s) = stream.filter(|_| changed) {
            lock(&s.claimed).push((namespace, name.clone()));
        }
        Ok(name)
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
                    dropped_pods.push((name.clone(), key.clone()));
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
            for (pod, key) in &dropped_pods {
                // Unless another workload has claimed the name since.
                if pods
                    .get(&key.namespace, pod)
                    .is_some_and(|c| c.workload == *key)
                {
                    pods.remove(&key.namespace, pod);
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

    /// Pods currently tracked for a workload (their names).
    pub fn pods(&self, key: &WorkloadKey) -> Vec<String> {
        self.existing(key).map_or_else(Vec::new, |w| {
            let mut pods: Vec<String> = lock(&w).pods.keys().map(|p| p.to_string()).collect();
            pods.sort();
            pods
        })
    }
}
