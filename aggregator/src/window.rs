//! The windows maths of the design page, in one place: a ring of per-second buckets per workload,
//! into which each report's interval is spread by overlap, and from which the stable and burst
//! windows are read.
//!
//! A report says "over [start, start + length) this pod averaged `c` requests in flight and
//! finished `n` requests". Its concurrency-milliseconds (`c × length`) and its requests are split
//! over the seconds the interval overlaps, in proportion. Summing concurrency-milliseconds over a
//! window and dividing by the window's length gives the sum over pods of their time-weighted
//! average concurrency in that window: exactly the signal, not a sample of it.

use crate::ring::{Read, TimeRing};
use crate::validate::MAX_SKEW_MS;

/// One second of one workload.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bucket {
    /// Requests in flight × milliseconds, summed over pods.
    concurrency_ms: f64,
    /// Requests held by activators × milliseconds.
    held_ms: f64,
    /// Requests that started at the pods (fractional: an interval's requests are spread like its
    /// concurrency).
    requests: f64,
    /// Requests that arrived at activators: the same requests again once forwarded to a pod, so
    /// kept apart rather than added.
    arrived: f64,
}

/// What a window holds, averaged over the part of it that was observed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowValue {
    /// Average concurrency (pods) plus average held requests (activators).
    pub concurrency: f64,
    /// Requests per second started at the pods.
    pub request_rate: f64,
    /// Requests per second that arrived at activators.
    pub arrival_rate: f64,
}

impl WindowValue {
    /// The workload's request rate. A request the activator held is counted again by the pod's
    /// sidecar once forwarded, so the two are not added: the larger is the rate (the activator's
    /// while no pod serves, the pods' once they do).
    pub fn requests_per_second(&self) -> f64 {
        self.request_rate.max(self.arrival_rate)
    }
}

/// A ring of per-second buckets long enough for the longest window asked of it.
#[derive(Debug, Clone)]
pub struct Ring {
    slots: TimeRing<Bucket>,
}

/// A contribution to the ring: what one report says about one interval.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub start_ms: i64,
    pub length_ms: u32,
    pub concurrency: f64,
    pub held: f64,
    pub requests: f64,
    pub arrived: f64,
}

/// Slots beyond the seconds of history: the second being filled, and one a window may end
/// behind it.
const SPARE: usize = 2;

impl Ring {
    /// A ring holding `seconds` seconds of history.
    pub fn new(seconds: u32) -> Self {
        let len = usize::try_from(seconds).unwrap_or(usize::MAX / 2).max(1) + SPARE;
        Self {
            slots: TimeRing::new(1000, len),
        }
    }

    /// How many whole seconds of history it keeps.
    pub fn capacity(&self) -> u32 {
        u32::try_from(self.slots.slots().saturating_sub(SPARE)).unwrap_or(u32::MAX)
    }

    /// Grows the ring to hold `seconds`, keeping what it has. Workloads start with the stable
    /// window's length and grow only when a trigger asks for a longer window: most never do, and a
    /// second of history costs 40 bytes per workload.
    pub fn grow(&mut self, seconds: u32) {
        if seconds <= self.capacity() {
            return;
        }
        let len = usize::try_from(seconds).unwrap_or(usize::MAX / 2) + SPARE;
        self.slots = self.slots.resized(len);
    }

    /// Spreads a sample over the seconds its interval overlaps. Parts older than the ring holds,
    /// relative to `now_ms`, are dropped (they could only overwrite newer seconds): a sample merged
    /// over a long outage fills only the seconds the ring keeps, and the work is bounded by the
    /// ring's length, never by the length a reporter chose. Parts later than `now_ms` plus
    /// [`MAX_SKEW_MS`] are dropped too: a future second would take the slot of a kept one.
    pub fn add(&mut self, sample: Sample, now_ms: i64) {
        if sample.length_ms == 0 {
            return;
        }
        let oldest = self.slots.oldest(now_ms);
        let end_ms = sample
            .start_ms
            .saturating_add(i64::from(sample.length_ms))
            .min(now_ms.saturating_add(MAX_SKEW_MS));
        let length = f64::from(sample.length_ms);
        let mut at = sample.start_ms.max(oldest.saturating_mul(1000));
        while at < end_ms {
            let second = at.div_euclid(1000);
            let next = ((second + 1) * 1000).min(end_ms);
            #[allow(clippy::cast_precision_loss)]
            let overlap = (next - at) as f64;
            let fraction = overlap / length;
            let Some(b) = self.slots.write(second, now_ms) else {
                at = next;
                continue;
            };
            b.concurrency_ms += sample.concurrency * overlap;
            b.held_ms += sample.held * overlap;
            b.requests += sample.requests * fraction;
            b.arrived += sample.arrived * fraction;
            at = next;
        }
    }

    /// The window `[end_ms - window_ms, end_ms)`, averaged over the part of it at or after
    /// `observed_since_ms` (a restarted aggregator averages what it holds, it does not count the
    /// time before it started as zero). Seconds at the edges count in proportion.
    pub fn window(&self, end_ms: i64, window_ms: i64, observed_since_ms: i64) -> WindowValue {
        let start_ms = (end_ms - window_ms).max(observed_since_ms);
        let mut span_ms = end_ms - start_ms;
        if span_ms <= 0 {
            return WindowValue::default();
        }
        let (mut conc_ms, mut requests, mut arrived) = (0.0, 0.0, 0.0);
        for second in start_ms.div_euclid(1000)..=(end_ms - 1).div_euclid(1000) {
            let from = (second * 1000).max(start_ms);
            let to = ((second + 1) * 1000).min(end_ms);
            let b = match self.slots.read(second) {
                Read::Held(b) => b,
                Read::Empty => continue,
                Read::Lost => {
                    // Its slot holds a newer second: unobserved, not zero.
                    span_ms -= to - from;
                    continue;
                }
            };
            #[allow(clippy::cast_precision_loss)]
            let fraction = (to - from) as f64 / 1000.0;
            conc_ms += (b.concurrency_ms + b.held_ms) * fraction;
            requests += b.requests * fraction;
            arrived += b.arrived * fraction;
        }
        if span_ms <= 0 {
            return WindowValue::default();
        }
        #[allow(clippy::cast_precision_loss)]
        let span = span_ms as f64;
        WindowValue {
            concurrency: conc_ms / span,
            request_rate: requests * 1000.0 / span,
            arrival_rate: arrived * 1000.0 / span,
        }
    }
}

/// Knative's panic mode, with its memory. When the burst window reads at least twice the stable
/// one, the burst value is answered, so a spike scales out in seconds rather than after a whole
/// stable window. The mode lasts until a whole stable window has passed without that condition,
/// and while it lasts the answer never falls: a sustained step from c0 to c1 > 2·c0 would
/// otherwise be answered about c1/2 part-way through the stable window (when the stable value
/// reaches half the burst one), and an HPA with a short scale-down stabilization would scale down
/// in the middle of the load.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Burst {
    /// When the condition last held, while in burst mode.
    held_at_ms: Option<i64>,
    /// The highest value answered in this burst mode.
    answered: f64,
}

impl Burst {
    /// The answer at `now_ms` for the windows' values, updating the mode.
    pub fn answer(&mut self, stable: f64, burst: f64, stable_window_ms: i64, now_ms: i64) -> f64 {
        if burst > 0.0 && burst >= 2.0 * stable {
            self.held_at_ms = Some(now_ms);
        } else if self
            .held_at_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= stable_window_ms)
        {
            *self = Self::default();
        }
        if self.held_at_ms.is_none() {
            return stable;
        }
        self.answered = self.answered.max(burst);
        self.answered
    }

    /// Whether it is in burst mode.
    pub fn active(&self) -> bool {
        self.held_at_ms.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start_ms: i64, length_ms: u32, concurrency: f64, requests: f64) -> Sample {
        Sample {
            start_ms,
            length_ms,
            concurrency,
            held: 0.0,
            requests,
            arrived: 0.0,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn steady_pods_add_up() {
        let mut ring = Ring::new(60);
        // Two pods, each 3 in flight for 60 s, reporting every second out of phase.
        for s in 0..60 {
            ring.add(sample(1_000_000 + s * 1000, 1000, 3.0, 30.0), 1_061_000);
            ring.add(sample(1_000_400 + s * 1000, 1000, 3.0, 30.0), 1_061_000);
        }
        let w = ring.window(1_060_000, 60_000, 0);
        // The second pod's first 400 ms lie before the window's start... and its last 400 ms after it.
        assert!((w.concurrency - 6.0).abs() < 0.05, "{w:?}");
        assert!((w.request_rate - 60.0).abs() < 0.5, "{w:?}");
    }

    #[test]
    fn an_interval_is_spread_over_the_seconds_it_overlaps() {
        let mut ring = Ring::new(10);
        ring.add(sample(10_500, 1000, 4.0, 10.0), 12_000);
        // Half in second 10, half in second 11.
        let first = ring.window(11_000, 1000, 0);
        let second = ring.window(12_000, 1000, 0);
        assert!(
            close(first.concurrency, 2.0) && close(second.concurrency, 2.0),
            "{first:?} {second:?}"
        );
        assert!(close(first.request_rate, 5.0) && close(second.request_rate, 5.0));
    }

    #[test]
    fn a_part_filled_window_is_averaged_over_what_it_holds() {
        let mut ring = Ring::new(60);
        for s in 0..10 {
            ring.add(sample(100_000 + s * 1000, 1000, 5.0, 1.0), 110_000);
        }
        // Observed only since 100 s: the 60 s window holds 10 s, averaged over those 10 s.
        assert!(close(
            ring.window(110_000, 60_000, 100_000).concurrency,
            5.0
        ));
        // Without that knowledge the same data is 5 × 10 / 60.
        assert!(close(
            ring.window(110_000, 60_000, 0).concurrency,
            5.0 * 10.0 / 60.0
        ));
    }

    #[test]
    fn old_seconds_do_not_linger_in_reused_slots() {
        let mut ring = Ring::new(5);
        ring.add(sample(0, 1000, 9.0, 9.0), 1000);
        // Seven seconds later the slot of second 0 is reused by second 7: nothing of 9.0 remains,
        // and second 0 counts as unobserved, not as zero.
        ring.add(sample(7000, 1000, 1.0, 1.0), 8000);
        assert!(close(ring.window(8000, 8000, 0).concurrency, 1.0 / 7.0));
        assert!(close(ring.window(8000, 7000, 0).concurrency, 1.0 / 7.0));
        // A report older than the ring is dropped rather than written over newer seconds.
        ring.add(sample(1000, 1000, 100.0, 0.0), 8000);
        assert!(close(ring.window(8000, 7000, 0).concurrency, 1.0 / 7.0));
        // So is one dated after now: second 12 would take the slot of second 5.
        ring.add(sample(5000, 1000, 3.0, 0.0), 8000);
        ring.add(sample(12_000, 1000, 50.0, 0.0), 8000);
        assert!(close(ring.window(8000, 7000, 0).concurrency, 4.0 / 7.0));
    }

    #[test]
    fn held_requests_count_as_concurrency() {
        let mut ring = Ring::new(10);
        ring.add(
            Sample {
                start_ms: 0,
                length_ms: 1000,
                concurrency: 0.0,
                held: 2.0,
                requests: 0.0,
                arrived: 0.0,
            },
            1000,
        );
        assert!(close(ring.window(1000, 1000, 0).concurrency, 2.0));
    }

    #[test]
    fn growing_keeps_history() {
        let mut ring = Ring::new(5);
        ring.add(sample(10_000, 1000, 2.0, 2.0), 11_000);
        ring.grow(60);
        assert_eq!(ring.capacity(), 60);
        assert!(close(ring.window(11_000, 1000, 0).concurrency, 2.0));
        ring.add(sample(40_000, 1000, 4.0, 0.0), 41_000);
        assert!(close(
            ring.window(41_000, 31_000, 0).concurrency,
            6.0 / 31.0
        ));
    }

    #[test]
    fn the_burst_rule() {
        let mut b = Burst::default();
        assert!(close(b.answer(10.0, 19.9, 60_000, 0), 10.0));
        assert!(!b.active());
        assert!(close(b.answer(10.0, 20.0, 60_000, 1000), 20.0));
        assert!(b.active());
        let mut b = Burst::default();
        assert!(close(b.answer(0.0, 0.5, 60_000, 0), 0.5));
        let mut b = Burst::default();
        assert!(close(b.answer(0.0, 0.0, 60_000, 0), 0.0));
        assert!(!b.active(), "nothing in flight is no burst");
    }

    #[test]
    fn burst_mode_lasts_a_stable_window_and_never_lowers_its_answer() {
        let mut b = Burst::default();
        assert!(close(b.answer(1.0, 10.0, 60_000, 0), 10.0));
        // The condition no longer holds, and the burst value fell: the answer stays.
        assert!(close(b.answer(6.0, 8.0, 60_000, 30_000), 10.0));
        // It rises with the burst value.
        assert!(close(b.answer(7.0, 12.0, 60_000, 59_999), 12.0));
        // A whole stable window without the condition: back to the stable value.
        assert!(close(b.answer(7.0, 12.0, 60_000, 60_000), 7.0));
        assert!(!b.active());
        // The condition holding again later starts a new mode, from its own value.
        assert!(close(b.answer(2.0, 4.0, 60_000, 70_000), 4.0));
    }
}
