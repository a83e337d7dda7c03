//! What the operator counts, on `/metrics` of `--admin-listen`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, or the error's kind (`kube`, `invalid`, `waiting`…).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Family<Outcome, Counter>,
    pub duration: Histogram,
    /// Reconciles running now: what kube-runtime's scheduler has handed out and not got back.
    pub in_progress: Gauge,
    /// HTTPAutoscalers in the controller's cache.
    pub autoscalers: Gauge,
    pub switches: Family<ModeLabel, Counter>,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            in_progress: Gauge::default(),
            autoscalers: Gauge::default(),
            switches: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("operator");
        r.register(
            "reconciles",
            "Reconciles of HTTPAutoscalers, by result",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "How long one reconcile took",
            m.duration.clone(),
        );
        r.register(
            "reconciles_in_progress",
            "Reconciles running now",
            m.in_progress.clone(),
        );
        r.register(
            "httpautoscalers",
            "HTTPAutoscalers the operator watches",
            m.autoscalers.clone(),
        );
        r.register(
            "mode_switches",
            "Services switched to serve or proxy mode",
            m.switches.clone(),
        );
        r.register(
            "leader",
            "1 while this replica is the leader",
            m.leader.clone(),
        );
        m
    }

    pub fn finished(&self, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&Outcome {
                result: result.to_owned(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn switched(&self, mode: inflight_api::Mode) {
        self.switches
            .get_or_create(&ModeLabel {
                mode: format!("{mode:?}").to_ascii_lowercase(),
            })
            .inc();
    }
}
