//! Asking pods' proxies whether they are ready, every `--probe-interval` (25 ms by default), for
//! the workloads with requests held: a held request goes the moment its pod's proxy answers
//! `/readyz` 200, not when the kubelet next probes it (10 s by default) and the EndpointSlice
//! catches up. Knative's activator asks every 200 ms.

use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use inflight_runtime::probe::Check;
use tokio::sync::Semaphore;

use crate::dispatch::Activator;

/// Probes in flight at once, over all pods.
pub const MAX_PROBES_AT_ONCE: usize = 256;

/// Probes until the process ends.
pub async fn run(activator: Arc<Activator>, interval: Duration, timeout: Duration) {
    let permits = Arc::new(Semaphore::new(MAX_PROBES_AT_ONCE));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = activator.wake_probe.notified() => {}
        }
        let routes = activator.routes();
        for key in activator.holds.waiting() {
            let Some(route) = routes.workload(&key) else {
                continue;
            };
            let backend = route.backend();
            for pod in activator.pods.to_probe(&backend) {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    // Asked next time round.
                    activator.pods.probed(&backend, pod.data, false);
                    continue;
                };
                let (activator, route, backend) =
                    (activator.clone(), route.clone(), backend.clone());
                tokio::spawn(async move {
                    let check = Check::Http {
                        addr: pod.admin.to_string(),
                        path: PathAndQuery::from_static("/readyz"),
                        timeout,
                    };
                    let ready = check.check().await.is_ok();
                    drop(permit);
                    activator.metrics.probe(ready);
                    if activator.pods.probed(&backend, pod.data, ready) {
                        tracing::debug!(pod = %pod.data, workload = %route.key(), "pod ready");
                        activator.dispatch(&route);
                    }
                });
            }
        }
    }
}
