//! Reports as a peer may send them: any bytes, decoded as length-delimited `ReportRequest`s (the
//! stream's own framing), each checked by the validator and then folded into a registry with small
//! limits; then every read.
//!
//! - a report the validator takes has every figure within the bounds it claims (`MAX_*`, the
//!   interval not ending past the skew, Kubernetes names), and its key is the workload it names;
//! - the registry takes nothing the validator refuses, and refuses what it takes only for a limit
//!   or a pod claiming a second workload;
//! - a refused report changes no answer; every answer is a finite number at least 0.
#![no_main]

use inflight_aggregator::registry::{KeyRef, Limits, Metric, Registry, Settings, WorkloadKey};
use inflight_aggregator::validate::{
    self, Rejection, MAX_CONCURRENCY, MAX_LATENCY_SUM_SECONDS, MAX_REQUESTS_PER_SECOND, MAX_SKEW_MS,
};
use inflight_proto::v1::{report_request, Interval, PodIdentity, ReportRequest, WorkloadRef};
use inflight_proto::LATENCY_BOUNDS_SECONDS;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const NOW: i64 = 1_700_000_000_000;

fn keys(r: &ReportRequest) -> Vec<WorkloadKey> {
    match &r.report {
        Some(report_request::Report::Pod(p)) => p
            .pod
            .iter()
            .filter_map(|id| {
                let w = id.workload.as_ref()?;
                Some(WorkloadKey::new(&id.namespace, &w.kind, &w.name))
            })
            .collect(),
        Some(report_request::Report::Held(h)) => h
            .workloads
            .iter()
            .filter_map(|w| w.workload.as_ref())
            .map(|w| WorkloadKey::new(&w.namespace, &w.kind, &w.name))
            .collect(),
        None => Vec::new(),
    }
}

fn answers(r: &Registry, keys: &[WorkloadKey], now: i64) -> Vec<(f64, f64, bool)> {
    keys.iter()
        .map(|k| {
            let c = r.value(k, Metric::Concurrency, 10_000, now).unwrap_or(-1.0);
            let q = r.value(k, Metric::RequestRate, 10_000, now).unwrap_or(-1.0);
            assert!(c == -1.0 || (c.is_finite() && c >= 0.0), "{k}: {c}");
            assert!(q == -1.0 || (q.is_finite() && q >= 0.0), "{k}: {q}");
            (c, q, r.is_active(k, 300_000, now))
        })
        .collect()
}

/// A DNS-1123 label, written out from the rule rather than taken from the validator, so that a
/// validator that let something else through is caught.
fn label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(label)
}

fn requests_limit(i: &Interval) -> u64 {
    MAX_REQUESTS_PER_SECOND.saturating_mul(u64::from(i.length_ms.max(1000))) / 1000
}

fn interval_within(i: &Interval, sent: Option<&Interval>, now: i64) {
    assert_eq!(Some(i), sent, "the interval taken is the one sent");
    assert!(i.length_ms > 0 && i.start_unix_ms >= 0, "{i:?}");
    let end = i.start_unix_ms + i64::from(i.length_ms);
    assert!(
        end - now <= MAX_SKEW_MS,
        "{i:?} ends {} ms ahead",
        end - now
    );
}

fn concurrency_within(c: f64) {
    assert!(c.is_finite() && (0.0..=MAX_CONCURRENCY).contains(&c), "{c}");
}

fn identity_within(id: &PodIdentity) {
    assert!(label(&id.namespace), "namespace {:?}", id.namespace);
    assert!(subdomain(&id.pod), "pod {:?}", id.pod);
    assert!(id.pod_ip.len() <= 45, "pod_ip {:?}", id.pod_ip);
}

/// The key is the workload the report names: kind in lower case, nothing else changed, and every
/// part a Kubernetes name.
fn names(key: &KeyRef<'_>, w: &WorkloadRef, namespace: &str) {
    assert_eq!(key.namespace, namespace);
    assert_eq!(key.kind, w.kind.to_ascii_lowercase());
    assert_eq!(key.name, w.name);
    assert!(
        label(key.namespace) && label(&key.kind) && subdomain(key.name),
        "{key}"
    );
}

/// What the validator says of `report`, after checking that whatever it took is within bounds.
fn validated(report: &ReportRequest, now: i64) -> Result<(), Rejection> {
    match &report.report {
        None => Err(Rejection::Empty),
        Some(report_request::Report::Pod(p)) => {
            let (id, key, interval) = validate::pod_report(p, now)?;
            assert_eq!(Some(id), p.pod.as_ref());
            identity_within(id);
            let w = id
                .workload
                .as_ref()
                .expect("a taken pod report names its workload");
            assert!(
                w.namespace.is_empty() || w.namespace == id.namespace,
                "{w:?}"
            );
            names(&key, w, &id.namespace);
            interval_within(&interval, p.interval.as_ref(), now);
            concurrency_within(p.avg_concurrency);
            concurrency_within(f64::from(p.in_flight));
            let limit = requests_limit(&interval);
            assert!(p.requests <= limit, "{} requests", p.requests);
            if let Some(c) = &p.responses {
                for v in [
                    c.class_1xx,
                    c.class_2xx,
                    c.class_3xx,
                    c.class_4xx,
                    c.class_5xx,
                    c.grpc_failure,
                    c.cancelled,
                ] {
                    assert!(v <= limit, "{c:?}");
                }
            }
            if let Some(h) = &p.latency {
                assert!(
                    h.counts.is_empty() || h.counts.len() == LATENCY_BOUNDS_SECONDS.len() + 1,
                    "{} buckets",
                    h.counts.len()
                );
                assert!(h.counts.iter().all(|c| *c <= limit), "{h:?}");
                assert!(
                    h.sum_seconds.is_finite()
                        && (0.0..=MAX_LATENCY_SUM_SECONDS).contains(&h.sum_seconds),
                    "{}",
                    h.sum_seconds
                );
            }
            Ok(())
        }
        Some(report_request::Report::Held(h)) => {
            let held = validate::held_report(h, now)?;
            assert_eq!(Some(held.activator), h.activator.as_ref());
            identity_within(held.activator);
            interval_within(&held.interval, h.interval.as_ref(), now);
            assert_eq!(
                held.workloads.len(),
                h.workloads.len(),
                "every workload is kept"
            );
            for ((key, taken), sent) in held.workloads.iter().zip(&h.workloads) {
                assert_eq!(*taken, sent);
                let w = sent
                    .workload
                    .as_ref()
                    .expect("a taken held workload is named");
                names(&key.as_ref(), w, &w.namespace);
                concurrency_within(sent.avg_held);
                concurrency_within(f64::from(sent.held));
                assert!(sent.arrived <= requests_limit(&held.interval), "{sent:?}");
            }
            Ok(())
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let registry = Registry::new(Settings {
        stable_ms: 10_000,
        burst_ms: 2_000,
        max_window_ms: 20_000,
        max_report_interval_ms: 10_000,
        started_ms: NOW - 3_600_000,
        warm_up_ms: 15_000,
        limits: Limits {
            pods_per_workload: 4,
            workloads_per_namespace: 4,
            workloads: 8,
            pods: 16,
        },
    });
    let mut buf = data;
    let mut now = NOW;
    let mut seen = Vec::new();
    while !buf.is_empty() {
        let Ok(report) = ReportRequest::decode_length_delimited(&mut buf) else {
            break;
        };
        let verdict = validated(&report, now);
        let keys = keys(&report);
        seen.extend(keys.iter().cloned());
        let before = answers(&registry, &seen, now);
        match (registry.apply(&report, now), verdict) {
            (Ok(()), Ok(())) => {}
            (Ok(()), Err(why)) => panic!("the registry took a report the validator refuses: {why}"),
            (Err(got), verdict) => {
                match verdict {
                    // As text: a reason may carry a NaN, which equals nothing.
                    Err(want) => assert_eq!(
                        got.to_string(),
                        want.to_string(),
                        "the registry's reason is the validator's"
                    ),
                    Ok(()) => assert!(
                        got.is_limit() || matches!(got, Rejection::TwoWorkloads { .. }),
                        "a valid report refused: {got}"
                    ),
                }
                assert_eq!(
                    before,
                    answers(&registry, &seen, now),
                    "a refused report changed an answer"
                );
            }
        }
        now += 500;
    }
    let _ = registry.export();
    let _ = registry.census();
    let _ = registry.workloads_in(None, None);
    let _ = registry.pods_in(None);
    for k in &seen {
        let _ = registry.workload_traffic(k, 60_000, now);
    }
    registry.sweep(now + 60_000);
});
