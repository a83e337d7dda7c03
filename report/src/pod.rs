//! A sidecar's report: folding reports that could not be sent into one, so a
//! reporter cut off from an aggregator holds one report per aggregator,
//! however long the outage.

use inflight_proto::v1::{report_request, LatencyHistogram, PodReport, ReportRequest, Responses};
use inflight_proto::LATENCY_BUCKETS;

use crate::Report;

impl Report for PodReport {
    fn merge(older: Self, newer: Self) -> Self {
        merge(older, newer)
    }

    fn into_request(self) -> ReportRequest {
        ReportRequest {
            report: Some(report_request::Report::Pod(self)),
        }
    }
}

/// Folds `newer` into `older`: one interval as long as both, ending where
/// the newer ends ([`crate::clock::span`]), counts added, average concurrency
/// weighted by time, in-flight as of the newer one.
pub fn merge(older: PodReport, newer: PodReport) -> PodReport {
    let (Some(a), Some(b)) = (older.interval, newer.interval) else {
        return newer;
    };
    let interval = crate::clock::span(&a, &b);
    let length_ms = interval.length_ms;
    let weighted = older.avg_concurrency * f64::from(a.length_ms)
        + newer.avg_concurrency * f64::from(b.length_ms);
    let responses = match (older.responses, newer.responses) {
        (Some(x), Some(y)) => Some(Responses {
            class_1xx: x.class_1xx.saturating_add(y.class_1xx),
            class_2xx: x.class_2xx.saturating_add(y.class_2xx),
            class_3xx: x.class_3xx.saturating_add(y.class_3xx),
            class_4xx: x.class_4xx.saturating_add(y.class_4xx),
            class_5xx: x.class_5xx.saturating_add(y.class_5xx),
            grpc_failure: x.grpc_failure.saturating_add(y.grpc_failure),
            cancelled: x.cancelled.saturating_add(y.cancelled),
        }),
        (x, y) => y.or(x),
    };
    let latency = match (older.latency, newer.latency) {
        (Some(x), Some(y))
            if x.counts.len() == LATENCY_BUCKETS && y.counts.len() == LATENCY_BUCKETS =>
        {
            Some(LatencyHistogram {
                counts: x
                    .counts
                    .iter()
                    .zip(&y.counts)
                    .map(|(p, q)| p.saturating_add(*q))
                    .collect(),
                sum_seconds: x.sum_seconds + y.sum_seconds,
            })
        }
        (x, y) => y.or(x),
    };
    PodReport {
        pod: newer.pod.or(older.pod),
        interval: Some(interval),
        avg_concurrency: weighted / f64::from(length_ms),
        in_flight: newer.in_flight,
        requests: older.requests.saturating_add(newer.requests),
        responses,
        latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inflight_proto::v1::{Interval, PodIdentity};

    fn report(start: i64, length_ms: u32, avg: f64, requests: u64, ok: u64) -> PodReport {
        let mut counts = vec![0; LATENCY_BUCKETS];
        counts[3] = ok;
        PodReport {
            pod: Some(PodIdentity {
                pod: "web-1".into(),
                ..Default::default()
            }),
            interval: Some(Interval {
                start_unix_ms: start,
                length_ms,
            }),
            avg_concurrency: avg,
            in_flight: 1,
            requests,
            responses: Some(Responses {
                class_2xx: ok,
                ..Default::default()
            }),
            latency: Some(LatencyHistogram {
                counts,
                sum_seconds: 0.003 * ok as f64,
            }),
        }
    }

    #[test]
    fn merged_report_covers_both_intervals_with_a_time_weighted_average() {
        let mut newer = report(2_000, 3_000, 4.0, 7, 6);
        newer.in_flight = 5;
        let merged = merge(report(1_000, 1_000, 2.0, 3, 3), newer);
        let interval = merged.interval.unwrap_or_default();
        assert_eq!((interval.start_unix_ms, interval.length_ms), (1_000, 4_000));
        assert!((merged.avg_concurrency - 3.5).abs() < 1e-9);
        assert_eq!(merged.requests, 10);
        assert_eq!(merged.in_flight, 5);
        assert_eq!(merged.responses.unwrap_or_default().class_2xx, 9);
        let latency = merged.latency.unwrap_or_default();
        assert_eq!(latency.counts[3], 9);
        assert!((latency.sum_seconds - 0.027).abs() < 1e-9);
    }

    #[test]
    fn reports_either_side_of_a_clock_step_merge_without_spanning_it() {
        let hour = 3_600_000;
        // Stepped forward: one report of both lengths, ending at the newer.
        let merged = merge(
            report(1_000, 1_000, 2.0, 3, 3),
            report(hour, 1_000, 4.0, 7, 6),
        );
        let i = merged.interval.unwrap_or_default();
        assert_eq!((i.start_unix_ms, i.length_ms), (hour - 1_000, 2_000));
        assert!((merged.avg_concurrency - 3.0).abs() < 1e-9);
        // Stepped back past the older: likewise.
        let merged = merge(
            report(hour, 1_000, 2.0, 3, 3),
            report(1_000, 1_000, 4.0, 7, 6),
        );
        let i = merged.interval.unwrap_or_default();
        assert_eq!((i.start_unix_ms, i.length_ms), (0, 2_000));
        assert_eq!(merged.requests, 10);
    }
}
