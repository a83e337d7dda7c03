//! inflight-operator: turns each `HTTPAutoscaler` into a KEDA ScaledObject and the endpoints of the
//! Service its clients call (the ready pods' proxies, or the activator while none is ready), and
//! bootstraps the TLS of the injector's webhook and the aggregator's APIService. Replicas elect a
//! leader with a Lease; only the leader writes.

pub mod aggregator;
pub mod certs;
pub mod config;
pub mod controller;
pub mod endpoints;
pub mod keda;
pub mod leader;
pub mod metrics;
pub mod services;
pub mod status;
pub mod uninstall;

pub use config::Config;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use inflight_api::{HttpAutoscaler, AUTOSCALER_LABEL, PODS_OF_LABEL, SLICE_MANAGER};
use inflight_runtime::admin;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::net::TcpListener;

use crate::controller::{Context, Settings};
use crate::keda::ScaledObject;

pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::with_prefix("inflight");
    let metrics = Arc::new(metrics::Metrics::new(&mut registry));
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes API (service account or KUBECONFIG): {e}"))?;

    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--admin-listen {}: {e}", config.admin_listen))?;
    tracing::info!(admin = %admin_listener.local_addr()?, "inflight-operator starting");
    let serving = Arc::new(AtomicBool::new(false));
    // Made before leading so that its metrics are registered (at zero) on every replica.
    let bootstrap = certs::Bootstrap::new(
        client.clone(),
        &config.namespace,
        &config.certs,
        &mut registry,
    );
    let registry = Arc::new(registry);
    tokio::spawn(admin::serve(admin_listener, config.admin_limits.into(), {
        let serving = serving.clone();
        move |request| {
            let registry = registry.clone();
            let serving = serving.clone();
            async move {
                match request.uri().path() {
                    "/healthz" => admin::ready(true, ""),
                    // Followers are ready too: they are what takes over.
                    "/readyz" => admin::ready(
                        serving.load(Ordering::Relaxed),
                        "not yet in the leader election",
                    ),
                    "/metrics" => admin::metrics(&registry),
                    _ => admin::not_found("/metrics, /healthz, /readyz"),
                }
            }
        }
    }));

    let mut election =
        leader::Election::join(client.clone(), &config.namespace, &config.leader).await?;
    serving.store(true, Ordering::Relaxed);
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {
            election.resign(Duration::from_secs(5)).await;
            return Ok(());
        }
        won = election.leading() => won?,
    }
    metrics.leader.set(1);
    tracing::info!("leading: reconciling HTTPAutoscalers");
    // Only the leader issues certificates; it stops with the leadership (the task is aborted
    // when this function returns).
    let _bootstrap = AbortOnDrop(tokio::spawn(bootstrap.run()));

    let reporter = Reporter {
        controller: "inflight-operator".to_owned(),
        instance: config.leader.identity.clone(),
    };
    let trigger_authentication =
        Some(config.certs.trigger_authentication.clone()).filter(|n| !n.is_empty());
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        aggregator: aggregator::Aggregator::new(
            &config.aggregator_address,
            config.aggregator_dial.as_deref(),
            trigger_authentication
                .as_ref()
                .map(|_| aggregator::ClientSecret {
                    secrets: Api::namespaced(client.clone(), &config.certs.keda_namespace),
                    name: config.certs.keda_client_secret.clone(),
                }),
            Duration::from_secs(1),
        ),
        settings: Settings {
            aggregator_address: config.aggregator_address.clone(),
            trigger_authentication,
            activator_service: config.activator_service.clone(),
            readyz_timeout: config.readyz_timeout,
            resync: config.resync_interval,
            busy_status: config.busy_status_interval,
        },
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let control = control(client, config.watch_namespace.clone(), ctx, async move {
        let _ = stopped.await;
    });
    tokio::pin!(control);
    let outcome = tokio::select! {
        () = &mut control => Err(anyhow::anyhow!("the controller stopped")),
        () = election.lost() => Err(anyhow::anyhow!("lost the Lease: stopping so that only the new leader writes")),
        () = &mut shutdown => {
            let _ = stop.send(());
            // Reconciles under way finish before the Lease is given up.
            control.await;
            Ok(())
        }
    };
    metrics.leader.set(0);
    election.resign(Duration::from_secs(5)).await;
    outcome
}

/// Aborts a task when dropped: a task of the leader must not outlive its leadership.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The controller and what it watches: the HTTPAutoscalers; what they own (ScaledObjects, the
/// private Services, the EndpointSlices the operator writes); the private Services' slices, which
/// Kubernetes keeps (the pods' readiness); adopted Services (a selector put back must be taken
/// off again); and the activator's slices, which every Service in proxy mode follows.
async fn control(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = namespace.as_deref();
    let cfg = watcher::Config::default;
    let (act_ns, act_name) = ctx.settings.activator_service.clone();
    let activator = watcher(
        Api::<EndpointSlice>::namespaced(client.clone(), &act_ns),
        cfg().labels(&format!("kubernetes.io/service-name={act_name}")),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|r| std::future::ready(r.ok().map(drop)));
    let autoscaler_of = |label: &'static str| {
        move |labels: &std::collections::BTreeMap<String, String>, ns: Option<String>| {
            labels
                .get(label)
                .map(|name| ObjectRef::<HttpAutoscaler>::new(name).within(&ns.unwrap_or_default()))
        }
    };
    let pods_of = autoscaler_of(PODS_OF_LABEL);
    let adopted_by = autoscaler_of(AUTOSCALER_LABEL);
    let metrics = ctx.metrics.clone();
    let controller = Controller::new(api::<HttpAutoscaler>(&client, ns), cfg().any_semantic());
    let store = controller.store();
    controller
        .owns_stream(
            watcher(api::<ScaledObject>(&client, ns), cfg())
                .default_backoff()
                .touched_objects(),
        )
        .owns_stream(
            watcher(
                api::<EndpointSlice>(&client, ns),
                cfg().labels(&format!(
                    "endpointslice.kubernetes.io/managed-by={SLICE_MANAGER}"
                )),
            )
            .default_backoff()
            .touched_objects(),
        )
        .watches_stream(
            watcher(
                api::<EndpointSlice>(&client, ns),
                cfg().labels(PODS_OF_LABEL),
            )
            .default_backoff()
            .touched_objects(),
            move |s: EndpointSlice| pods_of(s.labels(), s.namespace()),
        )
        .watches_stream(
            watcher(api::<Service>(&client, ns), cfg().labels(AUTOSCALER_LABEL))
                .default_backoff()
                .touched_objects(),
            move |s: Service| adopted_by(s.labels(), s.namespace()),
        )
        .reconcile_all_on(activator)
        .graceful_shutdown_on(stop)
        .run(controller::reconcile, controller::error_policy, ctx)
        .for_each(|result| {
            metrics
                .autoscalers
                .set(i64::try_from(store.state().len()).unwrap_or(i64::MAX));
            if let Err(error) = result {
                tracing::debug!(%error, "controller");
            }
            std::future::ready(())
        })
        .await;
}
