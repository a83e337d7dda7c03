//! The admin server: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use hyper::body::Incoming;
use inflight_runtime::admin::{self, AdminResponse};
use inflight_runtime::http::ConnLimits;
use prometheus_client::registry::Registry as Prometheus;
use tokio::net::TcpListener;

/// Whether this replica may take KEDA's calls, and if not why.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

pub async fn serve(
    listener: TcpListener,
    limits: ConnLimits,
    prometheus: Arc<Prometheus>,
    ready: Readiness,
) {
    admin::serve(listener, limits, move |request| {
        let (prometheus, ready) = (prometheus.clone(), ready.clone());
        async move { route(&request, &prometheus, &ready) }
    })
    .await;
}

fn route(
    request: &http::Request<Incoming>,
    prometheus: &Prometheus,
    ready: &Readiness,
) -> AdminResponse {
    match request.uri().path() {
        "/healthz" => admin::ready(true, ""),
        "/readyz" => match ready() {
            Ok(()) => admin::ready(true, ""),
            Err(why) => admin::ready(false, &why),
        },
        "/metrics" => admin::metrics(prometheus),
        _ => admin::not_found("/metrics, /healthz, /readyz"),
    }
}
