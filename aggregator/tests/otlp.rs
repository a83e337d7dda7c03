//! OTLP export: a real OTLP/gRPC receiver (the collector service of `opentelemetry-proto`, served by
//! tonic in this test) gets `http.server.active_requests` and `http.server.request.duration` per
//! workload from the real aggregator, fed by a report stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, Aggregator};
use inflight_proto::v1::ingest_client::IngestClient;
use inflight_proto::v1::{
    report_request, Interval, LatencyHistogram, PodIdentity, PodReport, ReportRequest, WorkloadRef,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Metric};

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn attrs(kv: &[KeyValue]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = kv
        .iter()
        .map(|k| {
            let v = match k.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            (k.key.clone(), v)
        })
        .collect();
    out.sort();
    out
}

fn report(start_ms: i64) -> ReportRequest {
    let mut counts = vec![0; inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1];
    counts[3] = 10;
    counts[10] = 5;
    ReportRequest {
        report: Some(report_request::Report::Pod(PodReport {
            pod: Some(PodIdentity {
                namespace: "shop".into(),
                pod: "web-1".into(),
                workload: Some(WorkloadRef {
                    namespace: "shop".into(),
                    kind: "deployment".into(),
                    name: "web".into(),
                }),
                pod_ip: String::new(),
            }),
            interval: Some(Interval {
                start_unix_ms: start_ms,
                length_ms: 1000,
            }),
            avg_concurrency: 3.0,
            in_flight: 3,
            requests: 15,
            responses: None,
            latency: Some(LatencyHistogram {
                counts,
                sum_seconds: 0.2,
            }),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_are_exported_to_an_otlp_receiver() {
    let receiver = Receiver::default();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://{addr}");
    let aggregator = Aggregator::start_with_env(
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ],
    );
    let mut client = IngestClient::connect(aggregator.url()).await.unwrap();
    let now = inflight_aggregator::now_ms();
    client
        .report(tokio_stream::iter([report(now - 2000), report(now - 1000)]))
        .await
        .unwrap();

    let until = Instant::now() + Duration::from_secs(20);
    let (active, duration) = loop {
        let exports = receiver.0.lock().unwrap().clone();
        let metric = |name: &str| -> Option<Metric> {
            exports
                .iter()
                .rev()
                .flat_map(|e| &e.resource_metrics)
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .find(|m| m.name == name)
                .cloned()
        };
        if let (Some(a), Some(d)) = (
            metric("http.server.active_requests"),
            metric("http.server.request.duration"),
        ) {
            break (a, d);
        }
        assert!(
            Instant::now() < until,
            "no export with both metrics arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let want_attrs = vec![
        ("k8s.deployment.name".to_owned(), "web".to_owned()),
        ("k8s.namespace.name".to_owned(), "shop".to_owned()),
    ];
    let Some(metric::Data::Sum(sum)) = active.data else {
        panic!("active_requests is not a sum: {active:?}")
    };
    assert!(!sum.is_monotonic);
    assert_eq!(sum.data_points.len(), 1);
    assert_eq!(attrs(&sum.data_points[0].attributes), want_attrs);
    assert_eq!(
        sum.data_points[0].value,
        Some(number_data_point::Value::AsInt(3))
    );
    assert_eq!(duration.unit, "s");
    let Some(metric::Data::Histogram(h)) = duration.data else {
        panic!("duration is not a histogram: {duration:?}")
    };
    let point = &h.data_points[0];
    assert_eq!(attrs(&point.attributes), want_attrs);
    assert_eq!(point.count, 30);
    assert!((point.sum.unwrap() - 0.4).abs() < 1e-9);
    assert_eq!(
        point.explicit_bounds,
        inflight_proto::LATENCY_BOUNDS_SECONDS.to_vec()
    );
    assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
    assert_eq!((point.bucket_counts[3], point.bucket_counts[10]), (20, 10));
}
