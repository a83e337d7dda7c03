//! What makes a report contradict itself. A rejected report changes nothing; its reason is a
//! stable label for `/metrics` and a sentence for the gRPC status.

use inflight_proto::v1::{HeldReport, HeldWorkload, Interval, PodIdentity, PodReport};
use inflight_proto::LATENCY_BOUNDS_SECONDS;

use crate::registry::WorkloadKey;

/// How far in the future an interval may end (clock skew between nodes), in ms.
const MAX_SKEW_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("empty report: neither `pod` nor `held` is set")]
    Empty,
    #[error("no pod identity (namespace and pod name are required)")]
    MissingIdentity,
    #[error("no workload in the pod identity")]
    MissingWorkload,
    #[error("workload {0:?} lacks a kind or a name")]
    BadWorkload(String),
    #[error("pod in namespace {pod:?} claims workload in namespace {workload:?}")]
    WorkloadNamespace { pod: String, workload: String },
    #[error("no interval")]
    MissingInterval,
    #[error("interval of 0 ms")]
    ZeroInterval,
    #[error("interval ends {0} ms in the future")]
    FutureInterval(i64),
    #[error("average concurrency {0} is negative or not a number")]
    BadConcurrency(f64),
    #[error("latency histogram has {got} buckets, expected {want} (or none)")]
    BadHistogram { got: usize, want: usize },
    #[error("latency sum {0} is negative or not a number")]
    BadLatencySum(f64),
    #[error("pod already reports for workload {first}; it now claims {second}")]
    TwoWorkloads { first: String, second: String },
}

impl Rejection {
    /// A short stable label, for the `reason` of the rejected-reports counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::MissingIdentity => "missing_identity",
            Self::MissingWorkload => "missing_workload",
            Self::BadWorkload(_) => "bad_workload",
            Self::WorkloadNamespace { .. } => "workload_namespace",
            Self::MissingInterval => "missing_interval",
            Self::ZeroInterval => "zero_interval",
            Self::FutureInterval(_) => "future_interval",
            Self::BadConcurrency(_) => "bad_concurrency",
            Self::BadHistogram { .. } => "bad_histogram",
            Self::BadLatencySum(_) => "bad_latency_sum",
            Self::TwoWorkloads { .. } => "two_workloads",
        }
    }
}

fn identity(id: Option<&PodIdentity>) -> Result<(&PodIdentity, WorkloadKey), Rejection> {
    let id = id
        .filter(|i| !i.namespace.is_empty() && !i.pod.is_empty())
        .ok_or(Rejection::MissingIdentity)?;
    let w = id.workload.as_ref().ok_or(Rejection::MissingWorkload)?;
    if w.kind.is_empty() || w.name.is_empty() {
        return Err(Rejection::BadWorkload(format!("{}/{}", w.kind, w.name)));
    }
    if !w.namespace.is_empty() && w.namespace != id.namespace {
        return Err(Rejection::WorkloadNamespace {
            pod: id.namespace.clone(),
            workload: w.namespace.clone(),
        });
    }
    Ok((id, WorkloadKey::new(&id.namespace, &w.kind, &w.name)))
}

fn interval(i: Option<&Interval>, now_ms: i64) -> Result<Interval, Rejection> {
    let i = *i.ok_or(Rejection::MissingInterval)?;
    if i.length_ms == 0 {
        return Err(Rejection::ZeroInterval);
    }
    let ahead = i.start_unix_ms + i64::from(i.length_ms) - now_ms;
    if ahead > MAX_SKEW_MS {
        return Err(Rejection::FutureInterval(ahead));
    }
    Ok(i)
}

/// A pod report's identity, workload and interval, if it is consistent.
pub fn pod_report(
    r: &PodReport,
    now_ms: i64,
) -> Result<(&PodIdentity, WorkloadKey, Interval), Rejection> {
    let (id, key) = identity(r.pod.as_ref())?;
    let interval = interval(r.interval.as_ref(), now_ms)?;
    if !r.avg_concurrency.is_finite() || r.avg_concurrency < 0.0 {
        return Err(Rejection::BadConcurrency(r.avg_concurrency));
    }
    if let Some(h) = &r.latency {
        let want = LATENCY_BOUNDS_SECONDS.len() + 1;
        if !h.counts.is_empty() && h.counts.len() != want {
            return Err(Rejection::BadHistogram {
                got: h.counts.len(),
                want,
            });
        }
        if !h.sum_seconds.is_finite() || h.sum_seconds < 0.0 {
            return Err(Rejection::BadLatencySum(h.sum_seconds));
        }
    }
    Ok((id, key, interval))
}

/// A consistent activator report: its identity, interval and every workload it holds requests for.
#[derive(Debug)]
pub struct Held<'a> {
    pub activator: &'a PodIdentity,
    pub interval: Interval,
    pub workloads: Vec<(WorkloadKey, &'a HeldWorkload)>,
}

pub fn held_report(r: &HeldReport, now_ms: i64) -> Result<Held<'_>, Rejection> {
    let id = r
        .activator
        .as_ref()
        .filter(|i| !i.namespace.is_empty() && !i.pod.is_empty())
        .ok_or(Rejection::MissingIdentity)?;
    let interval = interval(r.interval.as_ref(), now_ms)?;
    let mut workloads = Vec::with_capacity(r.workloads.len());
    for h in &r.workloads {
        let w = h.workload.as_ref().ok_or(Rejection::MissingWorkload)?;
        if w.namespace.is_empty() || w.kind.is_empty() || w.name.is_empty() {
            return Err(Rejection::BadWorkload(format!(
                "{}/{}/{}",
                w.namespace, w.kind, w.name
            )));
        }
        if !h.avg_held.is_finite() || h.avg_held < 0.0 {
            return Err(Rejection::BadConcurrency(h.avg_held));
        }
        workloads.push((WorkloadKey::from_ref(w), h));
    }
    Ok(Held {
        activator: id,
        interval,
        workloads,
    })
}
