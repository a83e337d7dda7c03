//! How figures read in both views: ages as kubectl prints them, numbers short.

use std::time::Duration;

/// An age as kubectl's `AGE` column prints it: `42s`, `5m3s`, `17m`, `2h5m`, `30h`, `3d4h`, `40d`,
/// `2y`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, days) = (s / 60, s / 3600, s / 86_400);
    match s {
        0..120 => format!("{s}s"),
        120..600 if s.is_multiple_of(60) => format!("{m}m"),
        120..600 => format!("{m}m{}s", s % 60),
        600..10_800 => format!("{m}m"),
        10_800..28_800 if m.is_multiple_of(60) => format!("{h}h"),
        10_800..28_800 => format!("{h}h{}m", m % 60),
        28_800..172_800 => format!("{h}h"),
        172_800..691_200 if h.is_multiple_of(24) => format!("{days}d"),
        172_800..691_200 => format!("{days}d{}h", h % 24),
        _ if days < 730 => format!("{days}d"),
        _ => format!("{}y", days / 365),
    }
}

/// The time from `then` to `now`, zero if `then` is later (a clock ahead of ours).
pub fn since(now: k8s_openapi::jiff::Timestamp, then: k8s_openapi::jiff::Timestamp) -> Duration {
    let nanos = now.as_nanosecond() - then.as_nanosecond();
    u64::try_from(nanos).map_or(Duration::ZERO, Duration::from_nanos)
}

/// A figure with at most one decimal, none when whole: `3`, `2.5`, `0.3`.
pub fn number(v: f64) -> String {
    let rounded = (v * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}

/// A latency: `850µs`, `12ms`, `1.5s`.
pub fn latency(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 1000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{}ms", number(d.as_secs_f64() * 1000.0))
    } else {
        format!("{}s", number(d.as_secs_f64()))
    }
}

/// Rows of cells as aligned text: each column as wide as its widest cell, three spaces apart (as
/// kubectl pads them), each line after `indent` and without trailing spaces.
pub fn aligned(rows: &[Vec<String>], indent: &str) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{indent}{}", cells.join("   "))
                .trim_end()
                .to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectls() {
        for (secs, text) in [
            (0, "0s"),
            (42, "42s"),
            (119, "119s"),
            (183, "3m3s"),
            (300, "5m"),
            (1020, "17m"),
            (7500, "125m"),
            (11_100, "3h5m"),
            (108_000, "30h"),
            (273_600, "3d4h"),
            (3_456_000, "40d"),
            (63_072_000, "2y"),
        ] {
            assert_eq!(age(Duration::from_secs(secs)), text, "{secs}s");
        }
    }

    #[test]
    fn numbers_and_latencies_are_short() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(2.54), "2.5");
        assert_eq!(number(0.0), "0");
        assert_eq!(latency(Duration::from_micros(850)), "850µs");
        assert_eq!(latency(Duration::from_millis(12)), "12ms");
        assert_eq!(latency(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn columns_align_under_the_widest_cell() {
        let rows = [
            vec!["TYPE".to_owned(), "STATUS".to_owned(), "MESSAGE".to_owned()],
            vec!["Ready".to_owned(), "True".to_owned(), String::new()],
        ];
        assert_eq!(
            aligned(&rows, "  "),
            ["  TYPE    STATUS   MESSAGE", "  Ready   True"]
        );
    }
}
