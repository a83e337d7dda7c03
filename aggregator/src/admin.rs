//! The admin server: `/metrics`, `/healthz`, `/readyz` (KEDA's calls) and `/readyz/smi` (the SMI
//! API's callers).

use std::sync::Arc;

use hyper::body::Incoming;
use inflight_runtime::admin::{self, AdminResponse};
use inflight_runtime::http::ConnLimits;
use prometheus_client::registry::Registry as Prometheus;
use tokio::net::TcpListener;

/// Whether this replica may take KEDA's calls, and if not why.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// `smi_ready` is apart from `ready`: scaling works without the SMI API (no RBAC for it, no
/// aggregation layer), and a replica must not leave KEDA's Service for that.
pub async fn serve(
    listener: TcpListener,
    limits: ConnLimits,
    prometheus: Arc<Prometheus>,
    ready: Readiness,
    smi_ready: Readiness,
) {
    admin::serve(listener, limits, move |request| {
        let (prometheus, ready, smi_ready) = (prometheus.clone(), ready.clone(), smi_ready.clone());
        async move { route(&request, &prometheus, &ready, &smi_ready) }
    })
    .await;
}

fn route(
    request: &http::Request<Incoming>,
    prometheus: &Prometheus,
    ready: &Readiness,
    smi_ready: &Readiness,
) -> AdminResponse {
    let answer = |r: &Readiness| match r() {
        Ok(()) => admin::ready(true, ""),
        Err(why) => admin::ready(false, &why),
    };
    match request.uri().path() {
        "/healthz" => admin::ready(true, ""),
        "/readyz" => answer(ready),
        "/readyz/smi" => answer(smi_ready),
        "/metrics" => admin::metrics(prometheus),
        _ => admin::not_found("/metrics, /healthz, /readyz, /readyz/smi"),
    }
}
