//! What the SMI Traffic Metrics API reports per pod: successes, failures and the latency
//! histogram, kept in 10-second slots for the last minute. Kept per pod (not per workload) because
//! pods are the finest resource the API names; workloads and namespaces add their pods up.

use inflight_proto::v1::PodReport;
use inflight_proto::LATENCY_BOUNDS_SECONDS;

use crate::ring::TimeRing;

/// Slot length and how many slots a pod keeps (60 s of history plus the slot being filled).
pub const SLOT_MS: i64 = 10_000;
const SLOTS: usize = 7;
/// The longest `?t=` window the API answers.
pub const MAX_WINDOW_MS: i64 = SLOT_MS * (SLOTS as i64 - 1);
const BUCKETS: usize = LATENCY_BOUNDS_SECONDS.len() + 1;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    success: u32,
    failure: u32,
    latency: [u32; BUCKETS],
}

/// One pod's traffic, allocated when it first serves a request.
#[derive(Debug, Clone)]
pub struct PodTraffic {
    slots: TimeRing<Slot>,
}

/// Totals over a window: successes, failures and the latency histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    pub success: u64,
    pub failure: u64,
    pub latency: [u64; BUCKETS],
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            success: 0,
            failure: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Traffic {
    pub fn add(&mut self, other: &Traffic) {
        self.success = self.success.saturating_add(other.success);
        self.failure = self.failure.saturating_add(other.failure);
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a = a.saturating_add(b);
        }
    }

    /// The `q` quantile (0..1) of the latency, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without observations. The +Inf bucket
    /// answers with the largest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.latency.iter().fold(0u64, |t, c| t.saturating_add(*c));
        if total == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let rank = q * total as f64;
        let mut seen = 0u64;
        for (i, count) in self.latency.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let (before, after) = (seen as f64, seen.saturating_add(*count) as f64);
            seen = seen.saturating_add(*count);
            if after >= rank && *count > 0 {
                let Some(&upper) = LATENCY_BOUNDS_SECONDS.get(i) else {
                    return LATENCY_BOUNDS_SECONDS.last().copied();
                };
                let lower = if i == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_SECONDS[i - 1]
                };
                #[allow(clippy::cast_precision_loss)]
                let within = (rank - before) / *count as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
        }
        LATENCY_BOUNDS_SECONDS.last().copied()
    }
}

/// Successes and failures of a report: 5xx and gRPC failures fail; 1xx–4xx succeed (a 4xx is the
/// client's mistake, not the server's); cancelled requests are neither.
fn outcome(r: &PodReport) -> (u64, u64) {
    r.responses.as_ref().map_or((0, 0), |c| {
        (
            c.class_1xx
                .saturating_add(c.class_2xx)
                .saturating_add(c.class_3xx)
                .saturating_add(c.class_4xx),
            c.class_5xx.saturating_add(c.grpc_failure),
        )
    })
}

/// Whether a report carries anything for this API (most idle reports do not).
pub fn has_traffic(r: &PodReport) -> bool {
    let (s, f) = outcome(r);
    s.saturating_add(f) > 0
        || r.latency
            .as_ref()
            .is_some_and(|h| h.counts.iter().any(|c| *c > 0))
}

impl PodTraffic {
    pub fn new() -> Self {
        Self {
            slots: TimeRing::new(SLOT_MS, SLOTS),
        }
    }

    /// Adds a (validated) report, in the slot of its interval's end. One older than the minute
    /// kept, or later than now plus the allowed skew, is dropped (see [`TimeRing::write`]).
    pub fn add(&mut self, r: &PodReport, end_ms: i64, now_ms: i64) {
        let n = self.slots.number(end_ms);
        let Some(slot) = self.slots.write(n, now_ms) else {
            return;
        };
        let (success, failure) = outcome(r);
        let sat = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        slot.success = slot.success.saturating_add(sat(success));
        slot.failure = slot.failure.saturating_add(sat(failure));
        if let Some(h) = &r.latency {
            for (a, b) in slot.latency.iter_mut().zip(&h.counts) {
                *a = a.saturating_add(sat(*b));
            }
        }
    }

    /// Totals of the slots that overlap `[now - window, now)`.
    pub fn window(&self, now_ms: i64, window_ms: i64) -> Traffic {
        let from = now_ms - window_ms.min(MAX_WINDOW_MS);
        let mut t = Traffic::default();
        for (_, s) in self.slots.held().filter(|(n, _)| {
            let start_ms = n.saturating_mul(SLOT_MS);
            start_ms.saturating_add(SLOT_MS) > from && start_ms < now_ms
        }) {
            t.success = t.success.saturating_add(u64::from(s.success));
            t.failure = t.failure.saturating_add(u64::from(s.failure));
            for (a, b) in t.latency.iter_mut().zip(s.latency) {
                *a = a.saturating_add(u64::from(b));
            }
        }
        t
    }
}

impl Default for PodTraffic {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use inflight_proto::v1::{LatencyHistogram, Responses};

    use super::*;

    fn report(ok: u64, bad: u64, latency_bucket: usize) -> PodReport {
        let mut counts = vec![0; BUCKETS];
        counts[latency_bucket] = ok + bad;
        PodReport {
            responses: Some(Responses {
                class_2xx: ok,
                class_5xx: bad,
                cancelled: 7,
                ..Responses::default()
            }),
            latency: Some(LatencyHistogram {
                counts,
                sum_seconds: 0.0,
            }),
            ..PodReport::default()
        }
    }

    #[test]
    fn windows_add_the_slots_they_overlap() {
        let mut p = PodTraffic::new();
        p.add(&report(10, 1, 3), 100_500, 100_500);
        p.add(&report(5, 0, 3), 125_000, 125_000);
        // One dated 70 s ahead would take the slot of the first: dropped.
        p.add(&report(1000, 0, 3), 195_000, 125_000);
        let last_30 = p.window(130_000, 30_000);
        assert_eq!(
            (last_30.success, last_30.failure),
            (15, 1),
            "cancelled requests count as neither"
        );
        let last_10 = p.window(130_000, 10_000);
        assert_eq!((last_10.success, last_10.failure), (5, 0));
        // A minute later the first report has left the slots.
        assert_eq!(p.window(170_000, 60_000).success, 5);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let mut t = Traffic::default();
        t.latency[0] = 100; // all in [0, first bound]
        let first = LATENCY_BOUNDS_SECONDS[0];
        assert!((t.quantile(0.5).unwrap() - first / 2.0).abs() < 1e-12);
        assert!((t.quantile(0.99).unwrap() - first * 0.99).abs() < 1e-12);
        assert_eq!(Traffic::default().quantile(0.5), None);
        let mut slow = Traffic::default();
        slow.latency[BUCKETS - 1] = 1;
        assert_eq!(slow.quantile(0.5), LATENCY_BOUNDS_SECONDS.last().copied());
    }
}
