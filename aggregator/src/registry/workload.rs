//! The data every concern of the registry shares: one workload's ring, members and activity.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::traffic::PodTraffic;
use crate::window::{Burst, Ring, WindowValue};

#[derive(Debug, Clone)]
pub(super) struct Member {
    /// When its latest report arrived (local clock).
    pub(super) seen_ms: i64,
    pub(super) interval_ms: u32,
    /// End of its latest report's interval: its figures are complete up to there.
    pub(super) until_ms: i64,
    /// Its latest report's average concurrency (or held) and requests per ms: what it is taken
    /// to go on doing when its next report is late.
    pub(super) last_concurrency: f64,
    pub(super) last_requests_per_ms: f64,
    /// In flight (pods) or held (activators) at its latest report.
    pub(super) now: u32,
    /// For the SMI API: allocated when the pod first serves a request.
    pub(super) traffic: Option<Box<PodTraffic>>,
    /// For a pod first heard during warm-up: what it reported since (boxed: only pods of the
    /// first minutes have it).
    pub(super) observed: Option<Box<Observed>>,
}

/// A pod first heard during warm-up was serving before this process could hear it. Until no
/// window reaches back before its first report, the part of a window before it is filled with the
/// pod's average over what was observed of it: each pod is averaged over its own observed span,
/// not over this process's lifetime. (A pod first heard after warm-up is new: before it, it served
/// nothing.)
#[derive(Debug, Clone, Copy)]
pub(super) struct Observed {
    pub(super) from_ms: i64,
    pub(super) concurrency_ms: f64,
    pub(super) requests: f64,
}

#[derive(Debug)]
pub(super) struct Workload {
    pub(super) ring: Ring,
    /// By pod name, shared with the pod's claim.
    pub(super) pods: HashMap<Arc<str>, Member>,
    pub(super) activators: HashMap<String, Member>,
    /// End of the latest interval in which a request arrived or was in flight.
    pub(super) last_request_ms: Option<i64>,
    /// Whether anything is in flight or held right now; watchers hear each change.
    pub(super) busy: watch::Sender<bool>,
    /// Since when the ring's whole length holds data (it may have grown since this process
    /// started).
    pub(super) history_from_ms: i64,
    /// Every latency reported since this process started, for OTLP's cumulative histogram.
    pub(super) durations: Durations,
    /// Burst mode, per stable window asked for (triggers may ask for different ones).
    pub(super) bursts: Vec<(i64, Burst)>,
}

/// How many different stable windows of one workload keep a burst mode; one more replaces the
/// one least recently in burst mode.
pub(super) const BURST_STATES: usize = 4;

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

impl Workload {
    pub(super) fn new(ring_seconds: u32) -> Self {
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

    pub(super) fn refresh_busy(&self) {
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
    pub(super) fn complete_until(&self, now_ms: i64, max_interval_ms: i64) -> i64 {
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
    pub(super) fn window(&self, end_ms: i64, window_ms: i64, since_ms: i64) -> WindowValue {
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
            .filter_map(|m| Some((m, *m.observed.as_deref()?)))
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
    pub(super) fn idle(&self, now_ms: i64, max_window_ms: i64) -> bool {
        let quiet = self
            .last_request_ms
            .is_none_or(|t| now_ms - t > max_window_ms);
        self.pods.is_empty()
            && self.activators.is_empty()
            && quiet
            && self.busy.receiver_count() == 0
    }

    pub(super) fn burst(&mut self, window_ms: i64) -> &mut Burst {
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

    pub(super) fn saw_requests(&mut self, end_ms: i64) {
        self.last_request_ms = Some(self.last_request_ms.map_or(end_ms, |t| t.max(end_ms)));
    }
}
