//! What the activator counts, on `/metrics` of `--admin-listen`, under `inflight_activator_`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::dispatch::Activator;

/// How a request the activator took ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to a pod at once, nothing held.
    Forwarded,
    /// Held, then sent to a pod.
    ForwardedHeld,
    /// Sent, and the pod's proxy failed it (502/504 from the forward itself).
    Failed,
    /// No pod within the route's timeout: 504.
    TimedOut,
    /// The workload's queue was full, or too many workloads held: 503.
    Rejected,
    /// No route for its host: 404.
    NoRoute,
    /// The client went away while it was held.
    ClientGone,
    /// Held when the activator shut down: 503.
    Closed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::ForwardedHeld => "forwarded_held",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Rejected => "rejected",
            Outcome::NoRoute => "no_route",
            Outcome::ClientGone => "client_gone",
            Outcome::Closed => "closed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByOutcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByResult {
    result: &'static str,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<ByOutcome, Counter>,
    /// Time from a held request's arrival to its forward, of those forwarded.
    pub time_to_forward: Histogram,
    /// Forwards that never reached their pod and were sent again.
    pub retries: Counter,
    probes: Family<ByResult, Counter>,
    pub routes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            time_to_forward: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
                30.0, 60.0,
            ]),
            retries: Counter::default(),
            probes: Family::default(),
            routes: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn request(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&ByOutcome {
                outcome: outcome.label(),
            })
            .inc();
    }

    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests
            .get_or_create(&ByOutcome {
                outcome: outcome.label(),
            })
            .get()
    }

    pub fn forwarded_after(&self, held: Duration) {
        self.time_to_forward.observe(held.as_secs_f64());
    }

    pub fn probe(&self, ready: bool) {
        let result = if ready { "ready" } else { "not_ready" };
        self.probes.get_or_create(&ByResult { result }).inc();
    }

    /// Registers these and the held requests of `activator`, read at scrape time.
    pub fn register(&self, registry: &mut Registry, activator: &Arc<Activator>) {
        let r = registry.sub_registry_with_prefix("activator");
        r.register(
            "requests",
            "Requests taken, by how they ended",
            self.requests.clone(),
        );
        r.register(
            "time_to_forward_seconds",
            "Time from a held request's arrival to its forward to a ready pod",
            self.time_to_forward.clone(),
        );
        r.register(
            "retries",
            "Forwards that never reached their pod and were sent again",
            self.retries.clone(),
        );
        r.register(
            "probes",
            "/readyz probes of pods' proxies, by answer",
            self.probes.clone(),
        );
        r.register(
            "routes",
            "Host names routed to a workload",
            self.routes.clone(),
        );
        r.register_collector(Box::new(HeldCollector(Arc::downgrade(activator))));
    }
}

/// The requests held per workload now, read from the queues at scrape time.
#[derive(Debug)]
struct HeldCollector(Weak<Activator>);

impl Collector for HeldCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(activator) = self.0.upgrade() else {
            return Ok(());
        };
        let held = activator.holds.by_workload();
        let mut family = encoder.encode_descriptor(
            "held",
            "Requests held now, waiting for a ready pod, by workload",
            None,
            MetricType::Gauge,
        )?;
        for (workload, count) in held {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(count).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&[("workload", workload.as_str())])?)?;
        }
        Ok(())
    }
}
