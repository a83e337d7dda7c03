//! Wall-clock time as the report protocol carries it: Unix milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds of `t`; before 1970 is 0 and beyond `i64` saturates, so a clock set to
/// nonsense gives a number the validation downstream refuses rather than a panic here.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_milliseconds() {
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(millis(Duration::MAX), i64::MAX);
        let now = now_ms();
        assert!(now > 1_600_000_000_000, "{now}");
    }
}
