//! The wire contracts of inflight, in one place: KEDA's external scaler
//! protocol, inflight's report protocol, the demo app's gRPC service, the
//! latency buckets both ends of a report must agree on, and the names and
//! ports of the design page.

pub mod names;

/// KEDA's `externalscaler` package, wire-compatible with KEDA v2.17+.
#[allow(clippy::all, missing_debug_implementations, unused_qualifications)]
pub mod externalscaler {
    tonic::include_proto!("externalscaler");
}

/// inflight's report protocol (`inflight.v1.Ingest`).
#[allow(clippy::all, missing_debug_implementations, unused_qualifications)]
pub mod v1 {
    tonic::include_proto!("inflight.v1");
}

/// The demo app's gRPC service (`inflight.demo.v1.Demo`).
#[allow(clippy::all, missing_debug_implementations, unused_qualifications)]
pub mod demo {
    pub mod v1 {
        tonic::include_proto!("inflight.demo.v1");
    }
}

/// Upper bounds, in seconds, of the latency histogram buckets in a report,
/// after which comes +Inf. Reports carry counts only; both ends use this list.
/// Changing it changes the protocol: see `ingest.proto`.
pub const LATENCY_BOUNDS_SECONDS: [f64; 25] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075, 0.1, 0.15,
    0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Number of counts in a report's latency histogram: one per bound, plus +Inf.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_SECONDS.len() + 1;

/// The bucket a duration of `seconds` falls in (bounds are inclusive).
pub fn latency_bucket(seconds: f64) -> usize {
    LATENCY_BOUNDS_SECONDS.partition_point(|bound| *bound < seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_strictly_increasing() {
        assert!(LATENCY_BOUNDS_SECONDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn bucket_bounds_are_inclusive_and_overflow_goes_to_inf() {
        assert_eq!(latency_bucket(0.0), 0);
        assert_eq!(latency_bucket(0.0005), 0);
        assert_eq!(latency_bucket(0.0006), 1);
        assert_eq!(latency_bucket(1.0), 18);
        assert_eq!(latency_bucket(60.0), 24);
        assert_eq!(latency_bucket(61.0), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn bounds_match_the_proto_comment() {
        let proto = include_str!("../proto/inflight/v1/ingest.proto");
        let listed: Vec<f64> = proto
            .lines()
            .skip_while(|l| !l.contains("Fixed bucket bounds"))
            .skip(1)
            .take_while(|l| l.trim_start().starts_with("//   "))
            .flat_map(|l| l.trim_start_matches(['/', ' ']).split_whitespace())
            .filter(|w| *w != "+Inf")
            .map(|w| w.parse().unwrap_or(f64::NAN))
            .collect();
        assert_eq!(listed, LATENCY_BOUNDS_SECONDS);
    }
}
