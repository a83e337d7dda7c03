//! What OTLP export reads: per workload, requests in flight now and the cumulative latency
//! histogram.

use inflight_runtime::{lock, read};

use super::{Durations, Registry, WorkloadKey};

/// One workload's figures for OTLP.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    pub workload: WorkloadKey,
    /// Requests in flight now, over its pods' latest reports.
    pub active: u64,
    pub durations: Durations,
}

impl Registry {
    /// Every workload with pods: requests in flight now and the cumulative latency histogram.
    pub fn export(&self) -> Vec<Export> {
        let mut out: Vec<Export> = read(&self.workloads)
            .iter()
            .filter_map(|(key, w)| {
                let w = lock(w);
                (!w.pods.is_empty()).then(|| Export {
                    workload: WorkloadKey::clone(key),
                    active: w.pods.values().map(|m| u64::from(m.now)).sum(),
                    durations: w.durations.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.workload.cmp(&b.workload));
        out
    }
}
