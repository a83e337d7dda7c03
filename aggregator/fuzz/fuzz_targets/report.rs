//! Reports as a peer may send them: any bytes, decoded as length-delimited `ReportRequest`s, are
//! folded into a registry with small limits; then every read. Nothing may panic, a refused report
//! may change no answer, and every answer is a finite number at least 0.
#![no_main]

use inflight_aggregator::registry::{Limits, Metric, Registry, Settings, WorkloadKey};
use inflight_proto::v1::{report_request, ReportRequest};
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
        let keys = keys(&report);
        seen.extend(keys.iter().cloned());
        let before = answers(&registry, &seen, now);
        if registry.apply(&report, now).is_err() {
            assert_eq!(before, answers(&registry, &seen, now), "a refused report changed an answer");
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
