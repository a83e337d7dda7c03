//! Dating intervals by the wall clock, read at every report.
//!
//! An interval's length and figures come from the monotonic clock; its date
//! from the wall clock at the moment it is reported, so a clock stepped after
//! start (an NTP sync at boot, a VM resumed) is followed at the next report
//! rather than carried as a skew for the pod's life.
//!
//! Each report starts where the previous one ended, so a pod's reports tile
//! time and the aggregator never adds the same second twice. When the wall
//! clock moved more than [`STEP`] away from the monotonic one over an
//! interval, it was stepped:
//! - forward: the report is dated by the new clock, and the skipped span is
//!   a gap (nothing happened in it on the new clock);
//! - back, but not past the previous report's end: the report still starts
//!   at that end, only shorter;
//! - back to at most [`HOLD`] before the previous report's end: the report
//!   starts at that end and lasts 1 ms, dated a moment ahead of the new
//!   clock (within what the aggregator accepts), until the clock catches up;
//! - back further: the earlier reports were dated by a clock that was ahead,
//!   in what is now the future, where the aggregator refuses them; the
//!   timeline restarts at the new clock, since holding it would date every
//!   report in the future until the clock caught up.

use std::time::{Duration, SystemTime};

use inflight_runtime::time::{millis, unix_ms};

/// Disagreement between the wall and monotonic clocks over one interval
/// beyond which the wall clock counts as stepped; below it, ticks' jitter
/// and NTP slewing (at most 0.5 ms/s).
pub const STEP: Duration = Duration::from_millis(250);

/// How far ahead of the wall clock a report may be dated to stay contiguous
/// after a small step back: half of the second the aggregator accepts.
pub const HOLD: Duration = Duration::from_millis(500);

/// Where a report goes on the wall clock, in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub start_unix_ms: i64,
    /// At least 1: a zero-length interval is invalid on the wire.
    pub length_ms: u32,
    /// How far the wall clock was stepped over this interval (positive:
    /// forward), if it was.
    pub stepped_ms: Option<i64>,
}

/// The end of the last report, which the next one starts from.
#[derive(Debug, Default)]
pub struct WallClock {
    last_end_ms: Option<i64>,
}

impl WallClock {
    /// Dates an interval of monotonic length `length` that ends now, when the
    /// wall clock reads `wall_now`.
    pub fn place(&mut self, wall_now: SystemTime, length: Duration) -> Placed {
        let end = unix_ms(wall_now);
        let natural_start = end.saturating_sub(millis(length)).max(0);
        let (step_ms, hold_ms) = (millis(STEP), millis(HOLD));
        let (start, end, stepped_ms) = match self.last_end_ms {
            None => (natural_start, end, None),
            Some(last) => {
                let drift = natural_start.saturating_sub(last);
                let stepped = (drift.abs() > step_ms).then_some(drift);
                if drift > step_ms || last.saturating_sub(end) > hold_ms {
                    (natural_start, end, stepped)
                } else {
                    // Contiguous with the last report; a clock behind it
                    // gives a shorter interval, never an overlap.
                    (last, end.max(last.saturating_add(1)), stepped)
                }
            }
        };
        let length_ms = u32::try_from(end.saturating_sub(start))
            .unwrap_or(u32::MAX)
            .max(1);
        self.last_end_ms = Some(start.saturating_add(i64::from(length_ms)));
        Placed {
            start_unix_ms: start,
            length_ms,
            stepped_ms,
        }
    }
}

/// The interval of two reports folded into one: as long as both, ending where the newer ends.
///
/// A reporter's intervals follow each other without a gap unless the wall clock was stepped
/// between them; then the older one is re-dated to just before the newer (it did happen just
/// before it), rather than stretching one report over the step.
pub fn span(
    older: &inflight_proto::v1::Interval,
    newer: &inflight_proto::v1::Interval,
) -> inflight_proto::v1::Interval {
    let end = newer
        .start_unix_ms
        .saturating_add(i64::from(newer.length_ms));
    let length_ms = older.length_ms.saturating_add(newer.length_ms).max(1);
    inflight_proto::v1::Interval {
        start_unix_ms: end.saturating_sub(i64::from(length_ms)),
        length_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const S: Duration = Duration::from_secs(1);

    fn at(ms: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    fn span(p: Placed) -> (i64, i64) {
        (p.start_unix_ms, p.start_unix_ms + i64::from(p.length_ms))
    }

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn reports_tile_time_and_end_at_the_wall_clock() {
        let mut clock = WallClock::default();
        assert_eq!(span(clock.place(at(T0), S)), (T0 - 1000, T0));
        // Jitter of a few milliseconds keeps the reports contiguous.
        let p = clock.place(at(T0 + 1003), S);
        assert_eq!((span(p), p.stepped_ms), ((T0, T0 + 1003), None));
        let p = clock.place(at(T0 + 1998), S);
        assert_eq!((span(p), p.stepped_ms), ((T0 + 1003, T0 + 1998), None));
    }

    #[test]
    fn a_clock_stepped_forward_is_followed_at_the_next_report() {
        let mut clock = WallClock::default();
        clock.place(at(T0), S);
        // NTP steps the clock an hour forward during the next second.
        let hour = 3_600_000;
        let p = clock.place(at(T0 + hour + 1000), S);
        assert_eq!(span(p), (T0 + hour, T0 + hour + 1000));
        assert_eq!(p.stepped_ms, Some(hour));
        // And from there on, the reports are dated by the new clock.
        let p = clock.place(at(T0 + hour + 2000), S);
        assert_eq!(
            (span(p), p.stepped_ms),
            ((T0 + hour + 1000, T0 + hour + 2000), None)
        );
    }

    #[test]
    fn a_clock_stepped_back_within_an_interval_never_overlaps() {
        let mut clock = WallClock::default();
        clock.place(at(T0), 10 * S);
        // Stepped back 3 s during a 10 s interval: the report is shorter.
        let p = clock.place(at(T0 + 7000), 10 * S);
        assert_eq!(span(p), (T0, T0 + 7000));
        assert_eq!(p.stepped_ms, Some(-3000));
        // Stepped back 600 ms during a 500 ms interval, to 100 ms before the
        // last end: 1 ms held ahead rather than an overlap, until the clock
        // has caught up.
        let half = Duration::from_millis(500);
        let p = clock.place(at(T0 + 6900), half);
        assert_eq!(
            (span(p), p.stepped_ms),
            ((T0 + 7000, T0 + 7001), Some(-600))
        );
        let p = clock.place(at(T0 + 7400), half);
        assert_eq!((span(p), p.stepped_ms), ((T0 + 7001, T0 + 7400), None));
    }

    #[test]
    fn a_clock_stepped_back_past_the_last_report_restarts_at_the_new_time() {
        let mut clock = WallClock::default();
        clock.place(at(T0), S);
        // The clock was an hour fast; NTP steps it back.
        let hour = 3_600_000;
        let p = clock.place(at(T0 - hour + 1000), S);
        assert_eq!(span(p), (T0 - hour, T0 - hour + 1000));
        assert_eq!(p.stepped_ms, Some(-hour));
        let p = clock.place(at(T0 - hour + 2000), S);
        assert_eq!(
            (span(p), p.stepped_ms),
            ((T0 - hour + 1000, T0 - hour + 2000), None)
        );
    }

    #[test]
    fn no_interval_is_empty_even_within_one_millisecond() {
        let mut clock = WallClock::default();
        clock.place(at(T0), S);
        let p = clock.place(at(T0), Duration::from_micros(200));
        assert_eq!(span(p), (T0, T0 + 1));
        let p = clock.place(at(T0 + 1000), S);
        assert_eq!(span(p), (T0 + 1, T0 + 1000));
    }

    /// Invariants over many intervals with random lengths and random clock
    /// steps (a fixed xorshift sequence, so a failure reproduces).
    #[test]
    fn reports_never_overlap_never_run_ahead_and_tile_time_between_steps() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (step, hold) = (millis(STEP), millis(HOLD));
        let mut clock = WallClock::default();
        let mut wall = T0;
        let mut last_end = None::<i64>;
        for i in 0..100_000 {
            let length = 100 + i64::try_from(next(5_000)).unwrap_or(0);
            // Mostly no step; sometimes a small or a large one either way.
            let stepped = match next(10) {
                0 => i64::try_from(next(2 * 3_600_000)).unwrap_or(0) - 3_600_000,
                1 => i64::try_from(next(4_000)).unwrap_or(0) - 2_000,
                _ => i64::try_from(next(5)).unwrap_or(0) - 2,
            };
            wall += length + stepped;
            let p = clock.place(at(wall), Duration::from_millis(length.unsigned_abs()));
            let (start, end) = span(p);
            assert!(p.length_ms >= 1, "{i}: {p:?}");
            assert!(end <= wall + hold + 1, "{i}: {p:?} runs ahead of {wall}");
            if let Some(last) = last_end {
                let restarted = last - wall > hold;
                if !restarted {
                    assert!(start >= last, "{i}: {p:?} overlaps the last end {last}");
                }
                let drift = wall - length - last;
                if drift.abs() <= step && !restarted {
                    assert_eq!(start, last, "{i}: {p:?} leaves a gap");
                }
                assert_eq!(p.stepped_ms.is_some(), drift.abs() > step, "{i}: {p:?}");
            }
            last_end = Some(end);
        }
    }

    #[test]
    fn a_clock_before_the_epoch_is_zero_not_a_panic() {
        let before = UNIX_EPOCH - Duration::from_secs(10);
        let p = WallClock::default().place(before, S);
        assert_eq!(span(p), (0, 1));
    }
}
