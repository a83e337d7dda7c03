//! OTLP metrics out, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_METRICS_ENDPOINT`) is set: per
//! workload, `http.server.active_requests` and `http.server.request.duration` (a cumulative
//! histogram in seconds, with the reports' own bucket bounds), attributed with
//! `k8s.namespace.name` and `k8s.<kind>.name`. Nothing runs and nothing is kept for it otherwise
//! beyond the per-workload cumulative counts.
//!
//! The reports arrive pre-aggregated (bucket counts per interval), which the OpenTelemetry SDK's
//! instruments cannot take in, so the export requests are built from `opentelemetry-proto`'s types
//! and sent with its gRPC client.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use inflight_proto::LATENCY_BOUNDS_SECONDS;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::registry::{Export, Registry};

/// Where and how often to export, from the standard environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub endpoint: String,
    pub interval: Duration,
}

impl Settings {
    /// `None` when no endpoint is set (export off) or when the protocol is not gRPC (said in the log).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let endpoint = var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|e| !e.is_empty())?;
        let protocol = var("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if protocol.as_deref().is_some_and(|p| p != "grpc") {
            tracing::warn!(
                ?protocol,
                "OTLP export needs OTEL_EXPORTER_OTLP_PROTOCOL=grpc; not exporting"
            );
            return None;
        }
        let interval = var("OTEL_METRIC_EXPORT_INTERVAL")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(Duration::from_secs(60), Duration::from_millis);
        Some(Self { endpoint, interval })
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// The semantic-convention attribute for a workload kind (`k8s.deployment.name`…).
fn workload_attribute(kind: &str) -> String {
    match kind {
        "deployment" | "statefulset" | "daemonset" | "replicaset" | "job" | "cronjob" | "pod" => {
            format!("k8s.{kind}.name")
        }
        _ => "inflight.workload.name".into(),
    }
}

/// One export request for the workloads' figures.
pub fn request(
    workloads: &[Export],
    started: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let (start, time) = (nanos(started), nanos(now));
    let attributes = |e: &Export| {
        vec![
            attribute("k8s.namespace.name", &e.workload.namespace),
            attribute(&workload_attribute(&e.workload.kind), &e.workload.name),
        ]
    };
    let active = workloads
        .iter()
        .map(|e| NumberDataPoint {
            attributes: attributes(e),
            start_time_unix_nano: start,
            time_unix_nano: time,
            value: Some(number_data_point::Value::AsInt(
                i64::try_from(e.active).unwrap_or(i64::MAX),
            )),
            ..NumberDataPoint::default()
        })
        .collect();
    let durations = workloads
        .iter()
        .map(|e| HistogramDataPoint {
            attributes: attributes(e),
            start_time_unix_nano: start,
            time_unix_nano: time,
            count: e.durations.counts.iter().sum(),
            sum: Some(e.durations.sum_seconds),
            bucket_counts: e.durations.counts.to_vec(),
            explicit_bounds: LATENCY_BOUNDS_SECONDS.to_vec(),
            ..HistogramDataPoint::default()
        })
        .collect();
    let metrics = vec![
        Metric {
            name: "http.server.active_requests".into(),
            description: "Requests being served now, over the workload's pods".into(),
            unit: "{request}".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: active,
                aggregation_temporality: AggregationTemporality::Cumulative.into(),
                is_monotonic: false,
            })),
            ..Metric::default()
        },
        Metric {
            name: "http.server.request.duration".into(),
            description: "Duration of the requests the workload's pods served".into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: durations,
                aggregation_temporality: AggregationTemporality::Cumulative.into(),
            })),
            ..Metric::default()
        },
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "inflight-aggregator")],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "inflight".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

/// Exports every `settings.interval` until the process ends; failures are logged and retried at
/// the next interval (the histogram is cumulative, so nothing is lost by a missed export).
pub async fn run(settings: Settings, registry: Arc<Registry>) {
    let started = SystemTime::now();
    let channel = match tonic::transport::Endpoint::from_shared(settings.endpoint.clone()) {
        Ok(endpoint) => endpoint.connect_lazy(),
        Err(error) => {
            tracing::warn!(endpoint = %settings.endpoint, %error, "OTLP endpoint is not a URL; not exporting");
            return;
        }
    };
    let mut client = MetricsServiceClient::new(channel);
    let mut tick = tokio::time::interval(settings.interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let workloads = registry.export();
        if workloads.is_empty() {
            continue;
        }
        if let Err(status) = client
            .export(request(&workloads, started, SystemTime::now()))
            .await
        {
            tracing::warn!(endpoint = %settings.endpoint, %status, "OTLP export failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_standard_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(Settings::from_env(env(&[])), None);
        assert_eq!(
            Settings::from_env(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "500")
            ])),
            Some(Settings {
                endpoint: "http://c:4317".into(),
                interval: Duration::from_millis(500)
            })
        );
        assert_eq!(
            Settings::from_env(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            ])),
            None
        );
    }
}
