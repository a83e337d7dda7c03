//! inflight's aggregator: the sidecars' and activators' reports in, KEDA's external scaler out.
//!
//! - [`window`]: the per-second ring and the windows maths of the design page, on [`ring`], the
//!   one time-ring that the SMI slots of [`traffic`] use too;
//! - [`registry`]: every workload's figures, pods and activity, by concern ([`workload_key`] names
//!   a workload);
//! - [`validate`]: what makes a report contradict itself;
//! - [`auth`]: who may send a report stream, and which reports;
//! - [`ingest`]: the `Ingest` report streams;
//! - [`scaler`]: KEDA's `ExternalScaler`, with the trigger metadata it understands;
//! - [`smi`]: the SMI Traffic Metrics API for the aggregation layer;
//! - [`otlp`]: OTLP metrics out, when asked for;
//! - [`metrics`], [`admin`]: its own figures;
//! - [`stopping`]: what ends the long-lived streams on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use inflight_proto::externalscaler::external_scaler_server::ExternalScalerServer;
use inflight_proto::v1::ingest_server::IngestServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub mod admin;
pub mod auth;
pub mod config;
pub mod ingest;
pub mod metrics;
pub mod otlp;
pub mod registry;
pub mod ring;
pub mod scaler;
pub mod smi;
pub mod stopping;
pub mod traffic;
pub mod validate;
pub mod window;
pub mod workload_key;

pub use config::Config;

pub use inflight_runtime::now_ms;
use inflight_runtime::time::millis;

/// A socket bound to `addr`, not listening yet; address reuse as `TcpListener::bind` sets it.
fn bound(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Serves until `shutdown` completes, then ends every report and push stream, lets calls in
/// progress finish and returns once every gRPC connection has closed, or after
/// `--shutdown-timeout`.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let registry = Arc::new(registry::Registry::new(registry::Settings {
        stable_ms: millis(config.stable_window),
        burst_ms: millis(config.burst_window),
        max_window_ms: millis(config.max_window),
        max_report_interval_ms: millis(config.max_report_interval),
        started_ms: now_ms(),
        warm_up_ms: millis(config.warm_up),
        limits: registry::Limits {
            pods_per_workload: config.max_pods_per_workload,
            workloads_per_namespace: config.max_workloads_per_namespace,
            workloads: config.max_workloads,
            pods: config.max_pods,
        },
    }));
    let mut prometheus = prometheus_client::registry::Registry::with_prefix("inflight");
    let metrics = metrics::Metrics::new(&mut prometheus, registry.clone());
    let (stop, stopping) = stopping::channel();
    let push = Arc::new(scaler::push::Push::new(
        registry.clone(),
        config.max_push_streams,
        stopping.clone(),
    ));
    prometheus
        .sub_registry_with_prefix("aggregator")
        .register_collector(push.collector());

    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--grpc-listen {}: {e}", config.grpc_listen))?;
    let scaler_port = TcpListener::bind(config.scaler_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--scaler-listen {}: {e}", config.scaler_listen))?;
    // One serving certificate for the SMI API and the scaler port, read again as the operator
    // (or cert-manager) renews it.
    let serving = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let files = inflight_runtime::tls::CertFiles::load(cert, key)
                .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?;
            tokio::spawn(files.clone().watch(CERT_CHECK, |_| {}));
            Some(files)
        }
        _ => None,
    };
    let scaler_tls = scaler_acceptor(&config, serving.as_ref())?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--admin-listen {}: {e}", config.admin_listen))?;
    // Bound now, so a port taken fails the start; listening only once the SMI API can check
    // its callers (smi::serve).
    let smi = bound(config.smi_listen)
        .map_err(|e| anyhow::anyhow!("--smi-listen {}: {e}", config.smi_listen))?;
    let identity = match &serving {
        Some(files) => smi::Identity::files(files.clone()),
        None => smi::Identity::self_signed(vec!["inflight-aggregator".into(), "localhost".into()])
            .map_err(anyhow::Error::msg)?,
    };
    // In a pod: its service account; on a workstation: KUBECONFIG. Without either the SMI API
    // cannot authorize callers (nor, without --requestheader-client-ca-file, authenticate
    // them); scaling works regardless.
    let kube = kube::Client::try_default().await.ok();
    let auth = match (config.ingest_auth, &kube) {
        (auth::Mode::None, _) => {
            tracing::warn!("--ingest-auth none: any peer that reaches the gRPC port may report anything; for loopback development only");
            None
        }
        (auth::Mode::Tokenreview, Some(client)) => {
            let auth = auth::Authenticator::new(
                client.clone(),
                config.token_audience.clone(),
                config.max_cached_tokens,
            );
            prometheus.sub_registry_with_prefix("aggregator").register(
                "token_reviews",
                "TokenReviews of report streams' tokens, by result (accepted, or why not)",
                auth.reviewed.clone(),
            );
            Some(Arc::new(auth))
        }
        (auth::Mode::Tokenreview, None) => anyhow::bail!(
            "--ingest-auth tokenreview needs a Kubernetes API to review report tokens, and there \
             is none (no in-cluster config, no KUBECONFIG); pass --ingest-auth none for loopback \
             development"
        ),
    };
    let source = match (&config.requestheader_client_ca_file, &kube) {
        (Some(ca), _) => Some(smi::auth::Source::File {
            ca: ca.clone(),
            allowed_names: config.requestheader_allowed_names.clone(),
        }),
        (None, Some(client)) => Some(smi::auth::Source::ConfigMap(client.clone())),
        (None, None) => None,
    };
    tracing::info!(
        ingest_auth = ?config.ingest_auth, scaler_auth = ?config.scaler_auth,
        grpc = %grpc.local_addr()?, scaler = %scaler_port.local_addr()?, smi = %smi.local_addr()?, admin = %admin.local_addr()?,
        kubernetes = kube.is_some(), "inflight-aggregator serving"
    );
    // Ready once warmed up: until then this replica has not heard every pod, and KEDA's Service
    // should send its calls to a replica that has (the sidecars' headless Service publishes
    // not-ready addresses, so the reports arrive all the same).
    let ready: admin::Readiness = {
        let registry = registry.clone();
        Arc::new(move || {
            if registry.warmed_up(now_ms()) {
                Ok(())
            } else {
                Err("warming up: not every reporting pod has been heard yet".to_owned())
            }
        })
    };
    let smi_figures = Arc::new(smi::Figures::default());
    smi_figures.register(prometheus.sub_registry_with_prefix("aggregator"));
    let (smi_ready, smi_readiness) =
        tokio::sync::watch::channel(Err("the requestheader client CA is not read yet".to_owned()));
    tokio::spawn(admin::serve(
        admin,
        config.admin_limits.into(),
        Arc::new(prometheus),
        ready,
        Arc::new(move || smi_readiness.borrow().clone()),
    ));
    let smi_settings = smi::Settings {
        limits: inflight_runtime::https::Limits {
            header_read_timeout: config.smi_header_read_timeout,
            idle_timeout: config.smi_idle_timeout,
            max_connections: config.smi_max_connections,
        },
        identity,
        source,
        client: kube,
        figures: smi_figures,
    };
    tokio::spawn(smi::serve(smi, smi_settings, registry.clone(), smi_ready));
    if let Some(settings) = otlp::Settings::from_env(|k| std::env::var(k).ok()) {
        tracing::info!(endpoint = %settings.endpoint, interval = ?settings.interval, "exporting OTLP metrics");
        tokio::spawn(otlp::run(settings, registry.clone()));
    }

    let sweeper = {
        let (registry, metrics) = (registry.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let dropped = registry.sweep(now_ms());
                metrics
                    .expired_pods
                    .inc_by(u64::try_from(dropped).unwrap_or(0));
            }
        })
    };

    let ingest = ingest::IngestService {
        registry: registry.clone(),
        metrics: metrics.clone(),
        stopping: stopping.clone(),
        auth,
        activators: config.activator_service_accounts.clone().into(),
    };
    let metrics_for_tls = metrics.clone();
    let scaler = scaler::ScalerService {
        registry,
        metrics,
        limits: scaler::metadata::Limits {
            default_window: config.stable_window,
            burst_window: config.burst_window,
            max_window: config.max_window,
            allow_cross_namespace: config.allow_cross_namespace,
        },
        push: push.clone(),
    };
    let tcp = |listener| {
        TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(config.grpc_tcp_keepalive))
            .with_keepalive_interval(Some(config.grpc_tcp_keepalive))
            .with_keepalive_retries(Some(3))
    };
    let server = || {
        tonic::transport::Server::builder()
            .max_concurrent_streams(config.grpc_max_concurrent_streams)
            .http2_keepalive_interval(Some(config.grpc_keepalive))
            .http2_keepalive_timeout(Some(config.grpc_keepalive))
    };
    let ended = |stopping: stopping::Stopping| async move { stopping.wait().await };
    let ingest_served = server()
        .add_service(IngestServer::new(ingest))
        .serve_with_incoming_shutdown(tcp(grpc), ended(stopping.clone()));
    let scaler_server = server().add_service(ExternalScalerServer::new(scaler));
    let scaler_served: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match scaler_tls {
        Some(acceptor) => {
            let tcp = scaler::tls::Tcp {
                keepalive: config.grpc_tcp_keepalive,
            };
            let incoming = scaler::tls::incoming(scaler_port, acceptor, tcp, metrics_for_tls);
            Box::pin(scaler_server.serve_with_incoming_shutdown(incoming, ended(stopping)))
        }
        None => {
            Box::pin(scaler_server.serve_with_incoming_shutdown(tcp(scaler_port), ended(stopping)))
        }
    };
    let served = async move {
        let (ingest, scaler) = tokio::join!(ingest_served, scaler_served);
        ingest.and(scaler)
    };
    tokio::pin!(served);
    let served = tokio::select! {
        served = &mut served => served,
        () = shutdown => {
            tracing::info!("shutting down: ending the report and push streams");
            stop.stop();
            // tonic stops accepting, sends GOAWAY and waits for each connection to close: those
            // whose streams have ended close at once, but a peer that never answers (or never
            // finished its handshake) would hold the process until SIGKILL.
            match tokio::time::timeout(config.shutdown_timeout, &mut served).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!(after = ?config.shutdown_timeout, "gRPC connections still open; leaving them to the process's end");
                    Ok(())
                }
            }
        }
    };
    sweeper.abort();
    served.map_err(|e| anyhow::anyhow!("gRPC server: {e}"))
}

/// The scaler port's TLS, with the serving certificate of `serving` and the client CAs of
/// `--scaler-client-ca`, watched for changes; `None` with `--scaler-auth none`.
fn scaler_acceptor(
    config: &Config,
    serving: Option<&Arc<inflight_runtime::tls::CertFiles>>,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use inflight_runtime::client_ca::ClientCaFile;

    let (scaler::tls::Mode::Mtls, Some(files), Some(ca)) =
        (config.scaler_auth, serving, &config.scaler_client_ca)
    else {
        tracing::warn!("--scaler-auth none: any peer that reaches the scaler port may read every workload's figures; for loopback development only");
        return Ok(None);
    };
    let clients = ClientCaFile::load(ca).map_err(|e| anyhow::anyhow!("--scaler-client-ca: {e}"))?;
    let tls = files
        .mutual_config(clients.clone(), &[b"h2"])
        .map_err(anyhow::Error::msg)?;
    tokio::spawn(clients.watch(CERT_CHECK));
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
}

/// How often the serving certificate and the scaler's client CAs are looked at: the kubelet
/// updates a Secret volume within about a minute anyway.
const CERT_CHECK: Duration = Duration::from_secs(10);
