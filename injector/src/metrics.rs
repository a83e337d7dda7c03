//! The injector's `/metrics` (prefix `inflight_injector_`): reviews answered, pods injected, pods
//! skipped by reason, errors by kind, review latency, certificate reloads.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Debug)]
pub struct Metrics {
    reviews: Counter,
    injected: Counter,
    skipped: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    pub seconds: Histogram,
    tls_reloads: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new(prometheus: &mut Registry) -> Self {
        let m = Self {
            reviews: Counter::default(),
            injected: Counter::default(),
            skipped: Family::default(),
            errors: Family::default(),
            // 50 µs to about 0.8 s.
            seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 15)),
            tls_reloads: Family::default(),
        };
        let p = prometheus.sub_registry_with_prefix("injector");
        p.register("reviews", "AdmissionReviews answered", m.reviews.clone());
        p.register("injected", "Pods given the proxy", m.injected.clone());
        p.register(
            "skipped",
            "Pods admitted unchanged, by reason",
            m.skipped.clone(),
        );
        p.register(
            "errors",
            "Requests that were not a usable AdmissionReview, and pods that could not be read, by kind",
            m.errors.clone(),
        );
        p.register_with_unit(
            "review_duration",
            "Time from a request's arrival to its answer, body read included",
            Unit::Seconds,
            m.seconds.clone(),
        );
        p.register(
            "tls_reloads",
            "Serving certificate changes read, by result",
            m.tls_reloads.clone(),
        );
        m
    }

    pub fn reviewed(&self) {
        self.reviews.inc();
    }
    pub fn injected(&self) {
        self.injected.inc();
    }
    pub fn skipped(&self, reason: &'static str) {
        self.skipped.get_or_create(&vec![("reason", reason)]).inc();
    }
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&vec![("kind", kind)]).inc();
    }
    pub fn tls_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_reloads
            .get_or_create(&vec![("result", result)])
            .inc();
    }
}
