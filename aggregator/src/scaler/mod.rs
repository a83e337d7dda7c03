//! KEDA's `externalscaler.ExternalScaler`, for the `external` and `external-push` triggers.
//!
//! KEDA calls `GetMetrics` and `IsActive` every polling interval and `GetMetrics` again for each
//! HPA query; it strips its own `sX-` prefix from the metric name and relabels whatever comes back
//! with the name it asked for, so exactly one value is returned. `StreamIsActive` ([`push`])
//! answers at once, then pushes `true` the moment a workload gets busy (KEDA ≥ 2.18 acts on each
//! `true` at once) and `false` once it has been idle for `scaleToZeroAfter`, and nothing else.

pub mod metadata;
pub mod push;
pub mod tls;

use std::sync::Arc;

use inflight_proto::externalscaler::external_scaler_server::ExternalScaler;
use inflight_proto::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::now_ms;
use crate::registry::Registry;
use metadata::Trigger;

#[derive(Debug, Clone)]
pub struct ScalerService {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// What a trigger may ask for.
    pub limits: metadata::Limits,
    pub push: Arc<push::Push>,
}

impl ScalerService {
    fn trigger(&self, r: Option<&ScaledObjectRef>) -> Result<Trigger, Status> {
        let r = r.ok_or_else(|| Status::invalid_argument("no scaledObjectRef"))?;
        metadata::parse(r, &self.limits).map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

#[allow(clippy::cast_possible_truncation)]
fn whole(v: f64) -> i64 {
    v.round() as i64
}

#[tonic::async_trait]
impl ExternalScaler for ScalerService {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let _timer = self.metrics.scaler_call("IsActive");
        let t = self.trigger(Some(request.get_ref()))?;
        let result = self
            .registry
            .is_active(&t.workload, t.scale_to_zero_after_ms, now_ms());
        Ok(Response::new(IsActiveResponse { result }))
    }

    type StreamIsActiveStream = push::PushStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let _timer = self.metrics.scaler_call("StreamIsActive");
        let t = self.trigger(Some(request.get_ref()))?;
        let answers = self.push.subscribe(t.workload, t.scale_to_zero_after_ms)?;
        Ok(Response::new(answers))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let _timer = self.metrics.scaler_call("GetMetricSpec");
        let t = self.trigger(Some(request.get_ref()))?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: t.metric_name(),
                target_size: whole(t.target.ceil()).max(1),
                target_size_float: t.target,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let _timer = self.metrics.scaler_call("GetMetrics");
        let r = request.into_inner();
        let t = self.trigger(r.scaled_object_ref.as_ref())?;
        let value = self
            .registry
            .value(&t.workload, t.metric, t.window_ms, now_ms())
            // No answer rather than a false one: the HPA keeps its replicas and KEDA's
            // `fallback` applies.
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let metric_name = if r.metric_name.is_empty() {
            t.metric_name()
        } else {
            r.metric_name
        };
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name,
                metric_value: whole(value),
                metric_value_float: value,
            }],
        }))
    }
}
