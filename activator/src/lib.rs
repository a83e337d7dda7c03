//! inflight-activator: takes the traffic of Services in proxy mode (no ready pod), holds each
//! request, makes the workload wake at once, and forwards the request the moment a pod's proxy
//! answers `/readyz` (design: modes of a Service).
//!
//! [`routes`] maps a request's host to its workload and [`pods`] keeps each workload's pods, both
//! fed from the Kubernetes API by [`source`]; [`hold`] queues what cannot go yet and
//! [`dispatch`] hands it pods as they have room; [`probe`] asks pods' proxies whether they are
//! ready; [`wake`] reports what is held to the aggregators, which wakes the workload through
//! KEDA; [`proxy`] serves the requests on `inflight-forward`'s data-port server.

pub mod admin;
pub mod config;
pub mod dispatch;
pub mod hold;
pub mod metrics;
pub mod pods;
pub mod probe;
pub mod proxy;
pub mod routes;
pub mod source;
pub mod wake;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use inflight_forward::{server, ForwarderConfig};
use inflight_report::{ReportMetrics, Target, TokenFile};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub use config::Config;
pub use dispatch::Activator;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Target(#[from] inflight_report::TargetError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot start a worker thread: {0}")]
    Worker(#[source] std::io::Error),
}

/// The shared state for `config`, to hand to [`run`].
pub fn activator(config: &Config) -> Arc<Activator> {
    let max_workloads = usize::try_from(config.max_workloads).unwrap_or(usize::MAX);
    Activator::new(max_workloads, metrics::Metrics::default())
}

/// Serves until `shutdown` resolves, then drains and returns. With a `client`, routes and pods
/// come from its Kubernetes API; without one, the caller keeps `activator`'s up to date.
pub async fn run(
    config: Config,
    activator: Arc<Activator>,
    client: Option<kube::Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let targets = Target::parse_list(&config.aggregator)?;
    let identity = match config.identity() {
        Ok(identity) => identity,
        Err(_) if targets.is_empty() => Default::default(),
        Err(error) => return Err(error.into()),
    };
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })
    };
    let listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;

    let mut registry = Registry::with_prefix(inflight_proto::names::METRIC_PREFIX);
    activator.metrics.register(&mut registry, &activator);
    let report_metrics = ReportMetrics::default();
    report_metrics.register(&mut registry);
    let waker = wake::Waker::spawn(
        activator.clone(),
        identity,
        targets,
        config.report_interval,
        report_metrics,
        TokenFile::new(Some(config.token_file.clone())),
    );
    tokio::spawn(probe::run(
        activator.clone(),
        config.probe_interval,
        config.probe_timeout,
    ));
    if let Some(client) = client {
        tokio::spawn(source::watch(
            client,
            activator.clone(),
            config.watch_namespace.clone(),
            config.cluster_domain.clone(),
        ));
    }
    let admin = Arc::new(admin::Admin {
        activator: activator.clone(),
        registry,
        waker: waker.clone(),
    });
    tokio::spawn(admin.serve(admin_listener, config.admin_limits.into()));

    let forwarding = ForwarderConfig {
        // Each pod's forwarder sets its own.
        upstream: http::uri::Authority::from_static("0.0.0.0:15080"),
        timeout: config.upstream_timeout,
        forwarded_headers: config.forwarded_headers,
        trusted_proxies: Vec::new(),
        tcp_keepalive: config.connections.tcp_keepalive,
        tunnel_idle_timeout: config.connections.tunnel_idle_timeout,
    };
    let drain_started = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let hard_limit = config.drain_timeout;
    let grace: server::Grace = {
        let drain_started = drain_started.clone();
        Arc::new(move || {
            let started = inflight_runtime::lock(&drain_started).unwrap_or_else(Instant::now);
            (started + hard_limit)
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(500))
        })
    };
    let worker_count = config.workers();
    let mut workers = Vec::new();
    let mut done = Vec::new();
    for index in 0..worker_count {
        let (activator, forwarding) = (activator.clone(), forwarding.clone());
        let (worker, worker_done) = server::spawn_worker_thread(
            format!("inflight-worker-{index}"),
            move || proxy::HoldingProxy::new(activator, forwarding),
            grace.clone(),
            config.connections,
        )
        .map_err(Error::Worker)?;
        workers.push(worker);
        done.push(worker_done);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let acceptor = tokio::spawn(server::accept(
        listener,
        workers,
        config.connections,
        stop_rx,
    ));
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        workers = worker_count,
        aggregators = ?config.aggregator,
        probe_interval = ?config.probe_interval,
        "inflight-activator serving"
    );

    shutdown.await;
    let started = Instant::now();
    *inflight_runtime::lock(&drain_started) = Some(started);
    activator.set_draining();
    tracing::info!(
        held = activator.holds.held_total(),
        drain_period = ?config.drain_period,
        "SIGTERM: draining"
    );
    // Serve on while the Services' endpoints drop this activator; held requests go on being
    // forwarded as pods become ready, up to the limit.
    let period_end = started + config.drain_period.min(config.drain_timeout);
    let limit = started + config.drain_timeout;
    tokio::time::sleep_until(period_end).await;
    while activator.holds.held_total() > 0 && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = activator.holds.held_total();
    if left > 0 {
        tracing::warn!(
            held = left,
            "drain limit reached with requests held; answering them 503"
        );
    }
    activator.holds.close_all();
    let _ = stop_tx.send(true);
    if let Err(error) = acceptor.await {
        tracing::warn!(%error, "acceptor task failed");
    }
    for worker in done {
        let _ = worker.await;
    }
    waker.flush(Duration::from_millis(500)).await;
    tracing::info!("drained; exiting");
    Ok(())
}
