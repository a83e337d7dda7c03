//! The aggregator's own `/metrics` (prefix `inflight_aggregator_`): streams connected, reports
//! taken and refused by reason, what the registry holds, scaler calls by method with latency, and
//! connections to the scaler port by the outcome of their handshake.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry as Prometheus, Unit};

use crate::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Debug)]
pub struct Metrics {
    pub streams: Gauge,
    pub reports: Counter,
    pub rejected: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    pub expired_pods: Counter,
    scaler_calls: Family<Labels, Counter>,
    scaler_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    scaler_connections: Family<Labels, Counter>,
}

fn scaler_histogram() -> Histogram {
    // 20 µs to about 0.3 s.
    Histogram::new(exponential_buckets(0.000_02, 2.0, 15))
}

impl Metrics {
    /// The metrics, registered with `prometheus` together with a collector that reads the
    /// registry's census at scrape time.
    pub fn new(prometheus: &mut Prometheus, registry: Arc<Registry>) -> Arc<Self> {
        let m = Self {
            streams: Gauge::default(),
            reports: Counter::default(),
            rejected: Family::default(),
            refused: Family::default(),
            expired_pods: Counter::default(),
            scaler_calls: Family::default(),
            scaler_seconds: Family::new_with_constructor(scaler_histogram),
            scaler_connections: Family::default(),
        };
        let p = prometheus.sub_registry_with_prefix("aggregator");
        p.register(
            "report_streams",
            "Report streams connected now (sidecars and activators)",
            m.streams.clone(),
        );
        p.register(
            "reports",
            "Reports folded into the figures",
            m.reports.clone(),
        );
        p.register(
            "reports_rejected",
            "Reports refused because they contradict themselves, by reason",
            m.rejected.clone(),
        );
        p.register(
            "ingest_refusals",
            "Report streams and reports refused for who sent them (no token, a token not good \
             here, another pod's or workload's report, held requests from other than an \
             activator), by reason",
            m.refused.clone(),
        );
        p.register(
            "pods_expired",
            "Pods dropped after missing 3 report intervals",
            m.expired_pods.clone(),
        );
        p.register(
            "scaler_calls",
            "External scaler calls by method",
            m.scaler_calls.clone(),
        );
        p.register_with_unit(
            "scaler_call_duration",
            "Time to answer an external scaler call, by method (StreamIsActive: to open the stream)",
            Unit::Seconds,
            m.scaler_seconds.clone(),
        );
        p.register(
            "scaler_connections",
            "Connections to the scaler port by outcome of their TLS handshake (accepted; refused: \
             no client certificate or one of a CA not trusted; timeout; busy: too many handshakes \
             at once)",
            m.scaler_connections.clone(),
        );
        p.register_collector(Box::new(Census(registry)));
        Arc::new(m)
    }

    /// Counts a scaler call and, when the returned guard drops, its duration.
    pub fn scaler_call(&self, method: &'static str) -> CallTimer<'_> {
        self.scaler_calls
            .get_or_create(&vec![("method", method)])
            .inc();
        CallTimer {
            metrics: self,
            method,
            started: Instant::now(),
        }
    }

    pub fn scaler_connection(&self, result: &'static str) {
        self.scaler_connections
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&vec![("reason", reason)]).inc();
    }
}

#[derive(Debug)]
pub struct CallTimer<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    started: Instant,
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .scaler_seconds
            .get_or_create(&vec![("method", self.method)])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[derive(Debug)]
struct Census(Arc<Registry>);

impl Collector for Census {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = self.0.census();
        for (name, help, value) in [
            ("workloads", "Workloads with figures", c.workloads),
            ("pods", "Pods reporting", c.pods),
            (
                "activators",
                "Activator pods reporting held requests",
                c.activators,
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&i64::try_from(value).unwrap_or(i64::MAX))?;
        }
        Ok(())
    }
}
