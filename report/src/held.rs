//! The activator's report: requests held per workload.

use std::collections::BTreeMap;

use inflight_proto::v1::{report_request, HeldReport, HeldWorkload, ReportRequest, WorkloadRef};

use crate::Report;

impl Report for HeldReport {
    /// One interval as long as both ([`crate::clock::span`]). The newer report's workloads are the
    /// activator's complete set, so `held` is the newer's (0 for a workload it no longer lists);
    /// `avg_held` is weighted by time over both, `arrived` added.
    fn merge(older: Self, newer: Self) -> Self {
        let (Some(a), Some(b)) = (older.interval, newer.interval) else {
            return newer;
        };
        let interval = crate::clock::span(&a, &b);
        let total = f64::from(interval.length_ms);
        let key = |w: &Option<WorkloadRef>| {
            w.as_ref()
                .map(|w| (w.namespace.clone(), w.kind.clone(), w.name.clone()))
                .unwrap_or_default()
        };
        let mut merged: BTreeMap<_, HeldWorkload> = BTreeMap::new();
        for w in &older.workloads {
            let e = merged.entry(key(&w.workload)).or_default();
            e.workload = w.workload.clone();
            e.avg_held += w.avg_held * f64::from(a.length_ms) / total;
            e.arrived = e.arrived.saturating_add(w.arrived);
        }
        for w in &newer.workloads {
            let e = merged.entry(key(&w.workload)).or_default();
            e.workload = w.workload.clone();
            e.held = w.held;
            e.avg_held += w.avg_held * f64::from(b.length_ms) / total;
            e.arrived = e.arrived.saturating_add(w.arrived);
        }
        HeldReport {
            activator: newer.activator.or(older.activator),
            interval: Some(interval),
            workloads: merged.into_values().collect(),
        }
    }

    fn into_request(self) -> ReportRequest {
        ReportRequest {
            report: Some(report_request::Report::Held(self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inflight_proto::v1::Interval;

    fn workload(name: &str, held: u32, avg: f64, arrived: u64) -> HeldWorkload {
        HeldWorkload {
            workload: Some(WorkloadRef {
                namespace: "shop".into(),
                kind: "deployment".into(),
                name: name.into(),
            }),
            held,
            avg_held: avg,
            arrived,
        }
    }

    fn report(start: i64, length_ms: u32, workloads: Vec<HeldWorkload>) -> HeldReport {
        HeldReport {
            activator: None,
            interval: Some(Interval {
                start_unix_ms: start,
                length_ms,
            }),
            workloads,
        }
    }

    #[test]
    fn unsent_held_reports_merge_by_time_and_keep_the_newer_set() {
        let older = report(
            0,
            1_000,
            vec![workload("web", 4, 4.0, 4), workload("api", 1, 1.0, 1)],
        );
        let newer = report(1_000, 3_000, vec![workload("web", 2, 2.0, 3)]);
        let m = HeldReport::merge(older, newer);
        let i = m.interval.unwrap_or_default();
        assert_eq!((i.start_unix_ms, i.length_ms), (0, 4_000));
        let by_name: BTreeMap<_, _> = m
            .workloads
            .iter()
            .map(|w| (w.workload.clone().unwrap_or_default().name, w.clone()))
            .collect();
        let web = &by_name["web"];
        assert_eq!((web.held, web.arrived), (2, 7));
        assert!((web.avg_held - 2.5).abs() < 1e-9);
        // Listed before, not now: nothing held now, its time held still counts.
        let api = &by_name["api"];
        assert_eq!((api.held, api.arrived), (0, 1));
        assert!((api.avg_held - 0.25).abs() < 1e-9);
    }
}
