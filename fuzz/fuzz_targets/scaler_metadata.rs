//! A ScaledObject's trigger metadata as KEDA passes it (`ScaledObjectRef`): any namespace, any
//! keys and values, under any limits the aggregator's flags allow. Structured input (`arbitrary`):
//! the known keys are drawn often, so the parser is reached past its first check.
//!
//! - a refused trigger names the key that is wrong, one of the keys the parser knows;
//! - an accepted trigger keeps what was asked: the workload is the metadata's `KIND/NAME` (kind in
//!   lower case) in the namespace asked for (the ScaledObject's unless crossing is allowed), the
//!   metric, a finite target above 0, a window between the burst window (at least 1 s) and the
//!   maximum;
//! - it names a workload a report can name: a pod report for that key is taken by the report
//!   validator with the same key (else the trigger reads nothing, forever);
//! - its metric name is lower-case letters, digits, `-` and `.`: a valid Kubernetes metric name.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use inflight_aggregator::registry::Metric;
use inflight_aggregator::scaler::metadata::{self, Limits};
use inflight_aggregator::validate;
use inflight_proto::externalscaler::ScaledObjectRef;
use inflight_proto::v1::{Interval, PodIdentity, PodReport, WorkloadRef};
use libfuzzer_sys::fuzz_target;

const KEYS: [&str; 7] = [
    "workload",
    "namespace",
    "metric",
    "target",
    "window",
    "scaleToZeroAfter",
    "scalerAddress",
];

#[derive(Debug, Arbitrary)]
enum Key {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    name: String,
    namespace: String,
    metadata: Vec<(Key, String)>,
    default_window_s: u16,
    burst_window_ms: u16,
    max_window_s: u16,
    allow_cross_namespace: bool,
}

const NOW: i64 = 1_700_000_000_000;

fuzz_target!(|input: Input| {
    let scaler_metadata: HashMap<String, String> = input
        .metadata
        .into_iter()
        .map(|(k, v)| {
            let k = match k {
                Key::Known(i) => KEYS[usize::from(i) % KEYS.len()].to_owned(),
                Key::Other(k) => k,
            };
            (k, v)
        })
        .collect();
    let r = ScaledObjectRef {
        name: input.name,
        namespace: input.namespace,
        scaler_metadata,
    };
    let limits = Limits {
        default_window: Duration::from_secs(input.default_window_s.into()),
        burst_window: Duration::from_millis(input.burst_window_ms.into()),
        max_window: Duration::from_secs(input.max_window_s.into()),
        allow_cross_namespace: input.allow_cross_namespace,
    };
    let m = &r.scaler_metadata;
    let t = match metadata::parse(&r, &limits) {
        Ok(t) => t,
        Err(e) => {
            assert!(KEYS.contains(&e.key), "{e}");
            assert!(!e.why.is_empty());
            return;
        }
    };

    let (kind, name) = m["workload"].split_once('/').expect("KIND/NAME");
    assert_eq!(t.workload.kind, kind.to_ascii_lowercase());
    assert_eq!(t.workload.name, name);
    let namespace = m.get("namespace").unwrap_or(&r.namespace);
    assert_eq!(&t.workload.namespace, namespace);
    if !limits.allow_cross_namespace {
        assert_eq!(t.workload.namespace, r.namespace, "crossed without leave");
    }
    let metric = match m.get("metric").map(String::as_str) {
        None | Some("concurrency") => Metric::Concurrency,
        Some("requestRate") => Metric::RequestRate,
        Some(other) => panic!("metric {other:?} taken"),
    };
    assert_eq!(t.metric, metric);
    assert!(t.target.is_finite() && t.target > 0.0, "{}", t.target);
    let shortest = limits.burst_window.max(Duration::from_secs(1));
    let shortest_ms = i64::try_from(shortest.as_millis()).expect("short");
    let longest_ms = i64::try_from(limits.max_window.as_millis()).expect("short");
    assert!(
        (shortest_ms..=longest_ms).contains(&t.window_ms),
        "window {} ms outside {shortest_ms}..={longest_ms}",
        t.window_ms
    );
    assert!(t.scale_to_zero_after_ms >= 0);

    let report = PodReport {
        pod: Some(PodIdentity {
            namespace: t.workload.namespace.clone(),
            pod: "p".into(),
            workload: Some(WorkloadRef {
                namespace: String::new(),
                kind: kind.to_owned(),
                name: name.to_owned(),
            }),
            pod_ip: String::new(),
        }),
        interval: Some(Interval {
            start_unix_ms: NOW - 1000,
            length_ms: 1000,
        }),
        ..PodReport::default()
    };
    match validate::pod_report(&report, NOW) {
        Ok((_, key, _)) => assert_eq!(key.to_key(), t.workload),
        Err(why) => panic!(
            "trigger for {} taken, but no report can name it: {why}",
            t.workload
        ),
    }

    let metric_name = t.metric_name();
    assert!(
        metric_name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.')),
        "{metric_name:?}"
    );
});
