//! What makes a report contradict itself. A rejected report changes nothing; its reason is a
//! stable label for `/metrics` and a sentence for the gRPC status.

use inflight_proto::v1::{HeldReport, HeldWorkload, Interval, PodIdentity, PodReport, WorkloadRef};
use inflight_proto::LATENCY_BOUNDS_SECONDS;

use std::borrow::Cow;

use crate::workload_key::{KeyRef, WorkloadKey};

/// How far in the future an interval may end, in ms: a report is sent when its interval ends, so
/// anything later is a reporter's clock running fast. Stored, it would take the slot of an older
/// second in the ring and wipe that second for every pod of the workload.
pub const MAX_SKEW_MS: i64 = 1000;

/// The most requests one pod may have in flight, or one activator may hold for one workload: far
/// above what any pod serves, low enough that no sum of them overflows or loses meaning.
pub const MAX_CONCURRENCY: f64 = 1_000_000.0;

/// The most requests a report may count per second of its interval (started, ended by class, or
/// in one latency bucket), and in any interval shorter than a second.
pub const MAX_REQUESTS_PER_SECOND: u64 = 10_000_000;

/// The largest latency sum one report may carry, in seconds (ten million requests of a day each).
pub const MAX_LATENCY_SUM_SECONDS: f64 = 1e12;

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
    #[error(
        "interval starting at {start_unix_ms} ms and {length_ms} ms long is not a time after 1970"
    )]
    BadInterval { start_unix_ms: i64, length_ms: u32 },
    #[error("interval ends {0} ms in the future")]
    FutureInterval(i64),
    #[error("average concurrency {0} is negative, not a number, or above {MAX_CONCURRENCY}")]
    BadConcurrency(f64),
    #[error("{what} {value} is above {limit} for the interval")]
    OutOfRange {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("latency histogram has {got} buckets, expected {want} (or none)")]
    BadHistogram { got: usize, want: usize },
    #[error("latency sum {0} is negative, not a number, or above {MAX_LATENCY_SUM_SECONDS}")]
    BadLatencySum(f64),
    #[error("pod already reports for workload {first}; it now claims {second}")]
    TwoWorkloads { first: String, second: String },
    #[error("{what} {name:?} is not a Kubernetes name ({rule})")]
    BadName {
        what: &'static str,
        name: String,
        rule: &'static str,
    },
    #[error("too many {what}: {limit} at most ({flag})")]
    Limit {
        what: &'static str,
        reason: &'static str,
        limit: usize,
        flag: &'static str,
    },
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
            Self::BadInterval { .. } => "bad_interval",
            Self::FutureInterval(_) => "future_interval",
            Self::BadConcurrency(_) => "bad_concurrency",
            Self::OutOfRange { .. } => "out_of_range",
            Self::BadHistogram { .. } => "bad_histogram",
            Self::BadLatencySum(_) => "bad_latency_sum",
            Self::TwoWorkloads { .. } => "two_workloads",
            Self::BadName { .. } => "bad_name",
            Self::Limit { reason, .. } => reason,
        }
    }

    /// A limit of this aggregator was reached, rather than the report contradicting itself.
    pub fn is_limit(&self) -> bool {
        matches!(self, Self::Limit { .. })
    }
}

/// A DNS-1123 label (namespaces, kinds): at most 63 lower-case letters, digits and `-`, starting
/// and ending with a letter or digit.
const LABEL: &str = "DNS-1123 label: at most 63 of a-z, 0-9 and '-', alphanumeric at both ends";
/// A DNS-1123 subdomain (pod and workload names): at most 253, labels joined with `.`.
const SUBDOMAIN: &str =
    "DNS-1123 subdomain: at most 253 of a-z, 0-9, '-' and '.', alphanumeric at both ends";

/// A name as it goes into a log line and a gRPC status: never more of it than a real name holds.
fn short(s: &str) -> String {
    s.chars().take(253).collect()
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

fn name(what: &'static str, s: &str, subdomain: bool) -> Result<(), Rejection> {
    let (ok, rule) = if subdomain {
        (is_subdomain(s), SUBDOMAIN)
    } else {
        (is_label(s), LABEL)
    };
    if ok {
        return Ok(());
    }
    Err(Rejection::BadName {
        what,
        name: short(s),
        rule,
    })
}

/// A namespace, as reports must name it. The scaler holds its triggers to it too: a trigger
/// naming what no report can name would read nothing, forever.
pub fn namespace(s: &str) -> Result<(), Rejection> {
    name("namespace", s, false)
}

/// A workload's kind (in any case) and name, as reports must name them; see [`namespace`].
pub fn workload(kind: &str, workload: &str) -> Result<(), Rejection> {
    name("workload kind", &kind.to_ascii_lowercase(), false)?;
    name("workload name", workload, true)
}

/// A pod identity's names, and the IP, which is at most an IPv6 address long.
fn pod_names(id: &PodIdentity) -> Result<(), Rejection> {
    name("namespace", &id.namespace, false)?;
    name("pod", &id.pod, true)?;
    if id.pod_ip.len() > 45 {
        return Err(Rejection::BadName {
            what: "pod_ip",
            name: id.pod_ip.chars().take(45).collect(),
            rule: "an IP address",
        });
    }
    Ok(())
}

/// The workload a report names, in `namespace`, if its names are Kubernetes names.
fn workload_key<'a>(w: &'a WorkloadRef, namespace: &'a str) -> Result<KeyRef<'a>, Rejection> {
    if !w.namespace.is_empty() {
        name("workload namespace", &w.namespace, false)?;
    }
    let kind = if w.kind.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(w.kind.to_ascii_lowercase())
    } else {
        Cow::Borrowed(w.kind.as_str())
    };
    name("workload kind", &kind, false)?;
    name("workload name", &w.name, true)?;
    Ok(KeyRef {
        namespace,
        kind,
        name: &w.name,
    })
}

fn identity(id: Option<&PodIdentity>) -> Result<(&PodIdentity, KeyRef<'_>), Rejection> {
    let id = id
        .filter(|i| !i.namespace.is_empty() && !i.pod.is_empty())
        .ok_or(Rejection::MissingIdentity)?;
    let w = id.workload.as_ref().ok_or(Rejection::MissingWorkload)?;
    if w.kind.is_empty() || w.name.is_empty() {
        return Err(Rejection::BadWorkload(format!(
            "{}/{}",
            short(&w.kind),
            short(&w.name)
        )));
    }
    pod_names(id)?;
    let key = workload_key(w, &id.namespace)?;
    if !w.namespace.is_empty() && w.namespace != id.namespace {
        return Err(Rejection::WorkloadNamespace {
            pod: id.namespace.clone(),
            workload: w.namespace.clone(),
        });
    }
    Ok((id, key))
}

fn interval(i: Option<&Interval>, now_ms: i64) -> Result<Interval, Rejection> {
    let i = *i.ok_or(Rejection::MissingInterval)?;
    if i.length_ms == 0 {
        return Err(Rejection::ZeroInterval);
    }
    let end = i
        .start_unix_ms
        .checked_add(i64::from(i.length_ms))
        .filter(|_| i.start_unix_ms >= 0)
        .ok_or(Rejection::BadInterval {
            start_unix_ms: i.start_unix_ms,
            length_ms: i.length_ms,
        })?;
    let ahead = end.saturating_sub(now_ms);
    if ahead > MAX_SKEW_MS {
        return Err(Rejection::FutureInterval(ahead));
    }
    Ok(i)
}

fn concurrency(c: f64) -> Result<(), Rejection> {
    if c.is_finite() && (0.0..=MAX_CONCURRENCY).contains(&c) {
        Ok(())
    } else {
        Err(Rejection::BadConcurrency(c))
    }
}

/// The most requests an interval of `length_ms` may count.
fn requests_limit(length_ms: u32) -> u64 {
    MAX_REQUESTS_PER_SECOND.saturating_mul(u64::from(length_ms.max(1000))) / 1000
}

fn count(what: &'static str, value: u64, interval: &Interval) -> Result<(), Rejection> {
    let limit = requests_limit(interval.length_ms);
    if value > limit {
        return Err(Rejection::OutOfRange { what, value, limit });
    }
    Ok(())
}

/// A pod report's identity, workload and interval, if it is consistent.
pub fn pod_report(
    r: &PodReport,
    now_ms: i64,
) -> Result<(&PodIdentity, KeyRef<'_>, Interval), Rejection> {
    let (id, key) = identity(r.pod.as_ref())?;
    let interval = interval(r.interval.as_ref(), now_ms)?;
    concurrency(r.avg_concurrency)?;
    concurrency(f64::from(r.in_flight))?;
    count("requests", r.requests, &interval)?;
    if let Some(c) = &r.responses {
        for (what, value) in [
            ("class_1xx", c.class_1xx),
            ("class_2xx", c.class_2xx),
            ("class_3xx", c.class_3xx),
            ("class_4xx", c.class_4xx),
            ("class_5xx", c.class_5xx),
            ("grpc_failure", c.grpc_failure),
            ("cancelled", c.cancelled),
        ] {
            count(what, value, &interval)?;
        }
    }
    if let Some(h) = &r.latency {
        let want = LATENCY_BOUNDS_SECONDS.len() + 1;
        if !h.counts.is_empty() && h.counts.len() != want {
            return Err(Rejection::BadHistogram {
                got: h.counts.len(),
                want,
            });
        }
        for c in &h.counts {
            count("latency bucket", *c, &interval)?;
        }
        if !h.sum_seconds.is_finite() || !(0.0..=MAX_LATENCY_SUM_SECONDS).contains(&h.sum_seconds) {
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
    pod_names(id)?;
    let interval = interval(r.interval.as_ref(), now_ms)?;
    let mut workloads = Vec::with_capacity(r.workloads.len());
    for h in &r.workloads {
        let w = h.workload.as_ref().ok_or(Rejection::MissingWorkload)?;
        if w.namespace.is_empty() || w.kind.is_empty() || w.name.is_empty() {
            return Err(Rejection::BadWorkload(format!(
                "{}/{}/{}",
                short(&w.namespace),
                short(&w.kind),
                short(&w.name)
            )));
        }
        let key = workload_key(w, &w.namespace)?;
        concurrency(h.avg_held)?;
        concurrency(f64::from(h.held))?;
        count("arrived", h.arrived, &interval)?;
        workloads.push((key.to_key(), h));
    }
    Ok(Held {
        activator: id,
        interval,
        workloads,
    })
}
