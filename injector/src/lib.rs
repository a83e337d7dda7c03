//! inflight-injector: the mutating admission webhook that adds `inflight-proxy` to every pod
//! created in a namespace labelled `inflight.dev/inject=enabled`.
//!
//! A request walks down: [`server`] (HTTP: `POST /mutate`, the body bounded) → [`review`]
//! (AdmissionReview in and out, never blocking a pod) → [`mutate`] (pod to JSON Patch, a plain
//! function) which asks [`workload`] whose pod it is, [`app`] where its app listens and how it
//! tells it is ready, and [`sidecar`] for the container to add.

pub mod app;
pub mod config;
pub mod metrics;
pub mod mutate;
pub mod review;
pub mod server;
pub mod sidecar;
pub mod version;
pub mod workload;

use std::future::Future;
use std::sync::Arc;

use inflight_runtime::admin;
use inflight_runtime::tls::CertFiles;
use tokio::net::TcpListener;

pub use config::Config;

/// Serves the webhook and the admin port until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut prometheus = prometheus_client::registry::Registry::with_prefix("inflight");
    let metrics = Arc::new(metrics::Metrics::new(&mut prometheus));
    let certs = CertFiles::load(&config.tls_cert, &config.tls_key)
        .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?;
    let tls = certs
        .server_config(&[b"h2", b"http/1.1"])
        .map_err(anyhow::Error::msg)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let native = version::native_sidecar(config.native_sidecar).await;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--admin-listen {}: {e}", config.admin_listen))?;
    tracing::info!(
        listen = %listener.local_addr()?, admin = %admin_listener.local_addr()?,
        native_sidecar = native, image = %config.proxy.proxy_image,
        "inflight-injector serving"
    );

    tokio::spawn({
        let metrics = metrics.clone();
        certs.watch(config.tls_reload_interval, move |r| {
            metrics.tls_reloaded(r.is_ok());
        })
    });
    let webhook = Arc::new(server::Webhook {
        settings: sidecar::Settings::new(&config.proxy, native),
        metrics: metrics.clone(),
        body_timeout: config.limits.body_timeout,
        max_body_bytes: config.limits.max_body_bytes as usize,
    });
    tokio::spawn(inflight_runtime::https::serve(
        listener,
        config.limits.into(),
        move || Some(acceptor.clone()),
        move |_: &_| {
            let webhook = webhook.clone();
            move |request| {
                let webhook = webhook.clone();
                async move { webhook.handle(request).await }
            }
        },
    ));
    let prometheus = Arc::new(prometheus);
    tokio::spawn(admin::serve(
        admin_listener,
        config.admin_limits.into(),
        move |request| {
            let prometheus = prometheus.clone();
            async move {
                match request.uri().path() {
                    "/healthz" | "/readyz" => admin::ready(true, ""),
                    "/metrics" => admin::metrics(&prometheus),
                    _ => admin::not_found("/metrics, /healthz, /readyz"),
                }
            }
        },
    ));
    shutdown.await;
    tracing::info!("inflight-injector stopping");
    Ok(())
}
