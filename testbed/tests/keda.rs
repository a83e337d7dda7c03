//! Real KEDA on the test bed: a ScaledObject with an `external` trigger pointing at an external
//! scaler served by this test (KEDA's own gRPC protocol, on the host end of the bed's veth pair)
//! scales a Deployment 0→1, the HPA takes it on through KEDA's external metrics API, and it goes
//! back to 0 after the cooldown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use common::{apply, demo_deployment, eventually};
use futures_util::Stream;
use inflight_proto::externalscaler::external_scaler_server::{
    ExternalScaler, ExternalScalerServer,
};
use inflight_proto::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use inflight_testbed::TestBed;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Scaler {
    active: Arc<AtomicBool>,
    value: Arc<AtomicI64>,
    calls: Arc<Mutex<HashMap<&'static str, u32>>>,
    seen: Arc<Mutex<Vec<ScaledObjectRef>>>,
}

impl Scaler {
    fn count(&self, method: &'static str) {
        *self.calls.lock().unwrap().entry(method).or_default() += 1;
    }
    fn calls(&self, method: &str) -> u32 {
        self.calls.lock().unwrap().get(method).copied().unwrap_or(0)
    }
}

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        r: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        self.count("IsActive");
        self.seen.lock().unwrap().push(r.into_inner());
        Ok(Response::new(IsActiveResponse {
            result: self.active.load(Ordering::SeqCst),
        }))
    }

    type StreamIsActiveStream =
        Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

    async fn stream_is_active(
        &self,
        _: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        Err(Status::unimplemented(
            "this test drives the `external` (polling) trigger",
        ))
    }

    async fn get_metric_spec(
        &self,
        _: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        self.count("GetMetricSpec");
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: "wake".into(),
                target_size: 1,
                target_size_float: 1.0,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        r: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        self.count("GetMetrics");
        let value = self.value.load(Ordering::SeqCst);
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: r.into_inner().metric_name,
                metric_value: value,
                #[allow(clippy::cast_precision_loss)]
                metric_value_float: value as f64,
            }],
        }))
    }
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> (i32, i32) {
    let d = deployments.get(name).await.unwrap();
    let spec = d.spec.and_then(|s| s.replicas).unwrap_or(0);
    let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    (spec, ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_keda_scales_zero_to_one_to_two_and_back_to_zero() {
    let tb = TestBed::shared().await.unwrap();
    let scaler = Scaler::default();
    // The host end of the veth pair: pods reach it through the node's default route.
    let listener = tokio::net::TcpListener::bind((tb.layout().host_ip(), 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExternalScalerServer::new(scaler.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    apply(&tb, &demo_deployment("wake", 0));
    apply(
        &tb,
        &serde_json::json!({
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "wake"},
            "spec": {
                "scaleTargetRef": {"name": "wake"},
                "minReplicaCount": 0, "maxReplicaCount": 3,
                "pollingInterval": 1, "cooldownPeriod": 5,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                    "scaleDown": {"stabilizationWindowSeconds": 0}
                }}},
                "triggers": [{"type": "external", "metadata": {
                    "scalerAddress": address.to_string(), "workload": "deployment/wake"
                }}]
            }
        }),
    );
    let deployments: Api<Deployment> = Api::namespaced(tb.client(), tb.namespace());

    // Inactive: KEDA polls us and leaves the Deployment at zero.
    eventually("KEDA to poll IsActive 3 times", 120, || async {
        (scaler.calls("IsActive") >= 3).then_some(())
    })
    .await;
    assert_eq!(replicas(&deployments, "wake").await.0, 0);
    let seen = scaler.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.name, "wake");
    assert_eq!(seen.namespace, tb.namespace());
    assert_eq!(
        seen.scaler_metadata.get("workload").map(String::as_str),
        Some("deployment/wake")
    );

    // Active with a value of 2 per target of 1: KEDA scales 0→1, then the HPA, reading the value
    // through KEDA's external metrics API server, scales to ceil(2 / 1) = 2.
    scaler.value.store(2, Ordering::SeqCst);
    scaler.active.store(true, Ordering::SeqCst);
    eventually(
        "KEDA to scale wake to at least 1 ready replica",
        120,
        || async { (replicas(&deployments, "wake").await.1 >= 1).then_some(()) },
    )
    .await;
    eventually("the HPA to scale wake to 2 ready replicas", 180, || async {
        (replicas(&deployments, "wake").await == (2, 2)).then_some(())
    })
    .await;
    assert!(scaler.calls("GetMetrics") > 0);
    let raw = tb
        .kubectl(&[
            "get",
            "--raw",
            &format!(
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/s0-wake?labelSelector=scaledobject.keda.sh%2Fname%3Dwake",
                tb.namespace()
            ),
        ])
        .unwrap();
    let metrics: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(metrics["items"][0]["value"], "2", "{raw}");
    let hpa = tb
        .kubectl(&[
            "get",
            "hpa",
            "keda-hpa-wake",
            "-o",
            "jsonpath={.spec.metrics[0].external.metric.name}",
        ])
        .unwrap();
    assert_eq!(hpa, "s0-wake");

    // Idle again: after the cooldown KEDA takes it back to zero.
    scaler.value.store(0, Ordering::SeqCst);
    scaler.active.store(false, Ordering::SeqCst);
    eventually("KEDA to scale wake back to 0", 180, || async {
        (replicas(&deployments, "wake").await.0 == 0).then_some(())
    })
    .await;
    server.abort();
}
