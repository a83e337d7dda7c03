//! The time-weighted integral of a level (requests in flight, requests held): what an interval's
//! average is made of, exactly, rather than a sample of the level at the moment of the report.

use std::time::Instant;

/// A level and its integral over time since the last [`Integral::take`].
#[derive(Debug, Clone, Copy)]
pub struct Integral {
    level: u64,
    /// When `level` last changed (or the integral was last brought up to date).
    since: Instant,
    /// In level-nanoseconds.
    area: u128,
}

impl Integral {
    pub fn new(now: Instant) -> Self {
        Self {
            level: 0,
            since: now,
            area: 0,
        }
    }

    pub fn level(&self) -> u64 {
        self.level
    }

    /// Brings the integral up to `now` at the current level.
    pub fn catch_up(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since).as_nanos();
        self.area = self
            .area
            .saturating_add(u128::from(self.level).saturating_mul(elapsed));
        self.since = self.since.max(now);
    }

    pub fn up(&mut self, now: Instant) {
        self.catch_up(now);
        self.level = self.level.saturating_add(1);
    }

    pub fn down(&mut self, now: Instant) {
        self.catch_up(now);
        self.level = self.level.saturating_sub(1);
    }

    /// The area since the last take, up to `now`, in level-nanoseconds; starts the next.
    pub fn take(&mut self, now: Instant) -> u128 {
        self.catch_up(now);
        std::mem::take(&mut self.area)
    }
}

/// An interval's average from its area and length (the level itself for an empty interval).
pub fn average(area: u128, length: std::time::Duration, level: u64) -> f64 {
    if length.is_zero() {
        level as f64
    } else {
        area as f64 / length.as_nanos() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_average_is_the_area_not_a_sample() {
        let t0 = Instant::now();
        let mut i = Integral::new(t0);
        i.up(t0);
        i.up(t0 + Duration::from_millis(500));
        // 1 for 500 ms, 2 for 500 ms: 1.5 on average, though 2 at the end.
        let area = i.take(t0 + Duration::from_secs(1));
        assert!((average(area, Duration::from_secs(1), i.level()) - 1.5).abs() < 1e-9);
        i.down(t0 + Duration::from_millis(1500));
        i.down(t0 + Duration::from_millis(1500));
        assert_eq!(i.take(t0 + Duration::from_secs(2)), 2 * 500_000_000);
        assert_eq!(i.level(), 0);
        assert_eq!(average(0, Duration::ZERO, 3), 3.0);
    }
}
