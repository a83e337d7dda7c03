//! gRPC through the proxy: a real tonic server behind it, a real tonic
//! client in front, unary and server-streaming calls, trailers intact, and a
//! non-zero grpc-status counted as a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::pin::Pin;
use std::time::Duration;

use common::*;
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::external_scaler_server::{
    ExternalScaler, ExternalScalerServer,
};
use inflight_proto::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// A test scaler: answers from the request so the test can check the data
/// made the round trip.
struct Scaler;

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        r: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let r = r.into_inner();
        if r.name == "missing" {
            return Err(Status::not_found("no such scaled object: missing"));
        }
        Ok(Response::new(IsActiveResponse {
            result: r.scaler_metadata.get("active").map(String::as_str) == Some("true"),
        }))
    }

    type StreamIsActiveStream =
        Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

    async fn stream_is_active(
        &self,
        r: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let n: usize = r.into_inner().scaler_metadata["count"].parse().unwrap();
        let stream = tokio_stream::iter(0..n)
            .map(|i| Ok(IsActiveResponse { result: i % 2 == 0 }))
            .throttle(Duration::from_millis(10));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_metric_spec(
        &self,
        r: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: r.into_inner().name,
                target_size: 10,
                target_size_float: 10.5,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        r: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: r.metric_name,
                metric_value: 3,
                metric_value_float: 2.5,
            }],
        }))
    }
}

async fn scaler_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExternalScalerServer::new(Scaler))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn object(name: &str, meta: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.into(),
        namespace: "shop".into(),
        scaler_metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[tokio::test]
async fn grpc_unary_and_streaming_pass_through_with_trailers() {
    let app = scaler_app().await;
    let proxy = Proxy::start(app, &[]).await;
    let mut client = ExternalScalerClient::connect(format!("http://{}", proxy.addr))
        .await
        .unwrap();

    let active = client
        .is_active(object("web", &[("active", "true")]))
        .await
        .unwrap();
    assert!(active.into_inner().result);
    let spec = client
        .get_metric_spec(object("web", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs[0].metric_name, "web");
    assert_eq!(spec.metric_specs[0].target_size_float, 10.5);
    let metrics = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object("web", &[])),
            metric_name: "s0-inflight".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metrics.metric_values[0].metric_name, "s0-inflight");
    assert_eq!(metrics.metric_values[0].metric_value_float, 2.5);

    let mut stream = client
        .stream_is_active(object("web", &[("count", "25")]))
        .await
        .unwrap()
        .into_inner();
    // While the stream is open, it is one request in flight.
    proxy
        .wait_stats(Duration::from_secs(5), |s| s["in_flight"] == 1)
        .await;
    let mut got = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        got.push(message.result);
    }
    // message() returning None means the trailers arrived with grpc-status 0.
    assert_eq!(got.len(), 25);
    assert_eq!(got.iter().filter(|r| **r).count(), 13);

    let stats = proxy
        .wait_stats(Duration::from_secs(5), |s| {
            s["requests_total"] == 4 && s["in_flight"] == 0
        })
        .await;
    assert_eq!(stats["responses"]["2xx"], 4);
    assert_eq!(stats["responses"]["grpc_failure"], 0);
}

#[tokio::test]
async fn grpc_error_status_is_a_failure_not_a_success() {
    let app = scaler_app().await;
    let proxy = Proxy::start(app, &[]).await;
    let mut client = ExternalScalerClient::connect(format!("http://{}", proxy.addr))
        .await
        .unwrap();
    let status = client.is_active(object("missing", &[])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "no such scaled object: missing");
    let stats = proxy
        .wait_stats(Duration::from_secs(5), |s| {
            s["requests_total"] == 1 && s["in_flight"] == 0
        })
        .await;
    assert_eq!(stats["responses"]["grpc_failure"], 1);
    assert_eq!(stats["responses"]["2xx"], 0);
}
