//! Requests in flight for the status, asked of the aggregator the way KEDA asks it
//! (`externalscaler.GetMetrics`), so `kubectl get hta` shows the figure KEDA scales on.

use std::collections::HashMap;
use std::time::Duration;

use inflight_api::HttpAutoscaler;
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use inflight_proto::names::scaler_metric_name;
use tonic::transport::Channel;

#[derive(Debug, Clone)]
pub struct Aggregator {
    client: Option<ExternalScalerClient<Channel>>,
    timeout: Duration,
}

impl Aggregator {
    /// A client for `address` (HOST:PORT), connected on first use. An address that is not a URI
    /// leaves the figure unknown rather than stopping the operator.
    pub fn new(address: &str, timeout: Duration) -> Self {
        let client = Channel::from_shared(format!("http://{address}"))
            .map_err(|e| tracing::warn!(%address, error = %e, "--aggregator-address is not HOST:PORT: in-flight figures stay unknown"))
            .ok()
            .map(|endpoint| ExternalScalerClient::new(endpoint.connect_timeout(timeout).connect_lazy()));
        Self { client, timeout }
    }

    /// The workload's concurrency (requests in flight, windowed) in `namespace`, or `None` when the
    /// aggregator cannot say (down, or not yet a full window since it started).
    pub async fn in_flight(&self, hta: &HttpAutoscaler) -> Option<f64> {
        let mut client = self.client.clone()?;
        let namespace = hta.metadata.namespace.as_deref()?;
        let name = hta.metadata.name.as_deref()?;
        let target = &hta.spec.scale_target_ref;
        let workload = hta.workload();
        let metric_name = scaler_metric_name(namespace, target.kind.lowercase(), &target.name);
        let request = GetMetricsRequest {
            scaled_object_ref: Some(ScaledObjectRef {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                scaler_metadata: HashMap::from([
                    ("workload".to_owned(), workload.clone()),
                    ("metric".to_owned(), "concurrency".to_owned()),
                    ("target".to_owned(), "1".to_owned()),
                ]),
            }),
            metric_name,
        };
        let answer = tokio::time::timeout(self.timeout, client.get_metrics(request))
            .await
            .ok()?
            .map_err(|status| tracing::debug!(%status, %workload, "aggregator gave no figure"))
            .ok()?;
        let value = answer.into_inner().metric_values.into_iter().next()?;
        let v = if value.metric_value_float > 0.0 {
            value.metric_value_float
        } else {
            value.metric_value as f64
        };
        v.is_finite().then_some(v)
    }
}
