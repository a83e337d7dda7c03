//! `/metrics`: the proxy's figures in the Prometheus text format, read
//! straight from [`Stats`] at scrape time so the data path pays nothing extra
//! (one look at each worker's shard per scrape, so the figures agree).

use std::sync::Arc;

use inflight_proto::LATENCY_BOUNDS_SECONDS;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::stats::{Class, Stats};

#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = &self.0;
        let counters = stats.counters();
        encoder
            .encode_descriptor(
                "requests_in_flight",
                "Requests being served now (upgraded connections count for their whole life)",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&i64::try_from(stats.in_flight()).unwrap_or(i64::MAX))?;

        let mut requests = encoder.encode_descriptor(
            "requests",
            "Requests that ended, by class (kube-probe requests are not counted)",
            None,
            MetricType::Counter,
        )?;
        for class in Class::ALL {
            requests
                .encode_family(&[("class", class.label())])?
                .encode_counter::<NoLabelSet, _, u64>(&counters.class(class), None)?;
        }

        let latency = &counters.latency;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_SECONDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(latency.counts.iter().copied())
            .collect();
        encoder
            .encode_descriptor(
                "request_duration",
                "Time from request headers to the end of the response, of requests that completed",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(latency.sum_seconds, latency.count(), &buckets, None)?;

        encoder
            .encode_descriptor(
                "draining",
                "1 once SIGTERM was received",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&i64::from(stats.is_draining()))?;
        Ok(())
    }
}

/// Registers the proxy's figures under the `inflight_` prefix.
pub fn register(registry: &mut Registry, stats: Arc<Stats>) {
    registry.register_collector(Box::new(StatsCollector(stats)));
}
