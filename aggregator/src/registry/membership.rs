//! Reports in: who reports for which workload, within the limits, and who stopped.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use inflight_proto::v1::{report_request, HeldReport, PodReport, ReportRequest};
use inflight_runtime::{lock, read, write};

use super::workload::{Member, Observed};
use super::{Registry, WorkloadKey, MISSED_INTERVALS};
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
    pub(super) workload: WorkloadKey,
    /// The stream that claimed it, until that stream ends.
    pub(super) stream: Option<u64>,
}

/// Reports that [`Registry::apply`] takes without a stream: their claims last until the pod
/// expires.
pub(super) const NO_STREAM: u64 = 0;

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
        // Made once: both claim lookups below use it, and most reports change no claim.
        let name = (pod.namespace.clone(), pod.pod.clone());
        // Before making anything: a refused report makes no workload.
        self.claimable(&name, &key)?;
        let workload = self.workload(&key)?;
        let mut w = lock(&workload);
        if !w.pods.contains_key(&pod.pod) {
            self.admit_pod(w.pods.len())?;
        }
        if let Err(e) = self.claim(&name, &key, stream) {
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

    fn claimable(&self, name: &(String, String), key: &WorkloadKey) -> Result<(), Rejection> {
        match lock(&self.pods).get(name) {
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
        name: &(String, String),
        key: &WorkloadKey,
        stream: Option<&Stream<'_>>,
    ) -> Result<(), Rejection> {
        let id = stream.map_or(NO_STREAM, |s| s.id);
        let mut pods = lock(&self.pods);
        match pods.get_mut(name) {
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
                    lock(&s.claimed).push(name.clone());
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
                    lock(&s.claimed).push(name.clone());
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

    /// Pods currently tracked for a workload (their names).
    pub fn pods(&self, key: &WorkloadKey) -> Vec<String> {
        self.existing(key).map_or_else(Vec::new, |w| {
            let mut pods: Vec<String> = lock(&w).pods.keys().cloned().collect();
            pods.sort();
            pods
        })
    }
}
