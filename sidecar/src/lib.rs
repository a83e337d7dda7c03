//! `inflight-proxy`: the per-pod reverse proxy of inflight.
//!
//! It serves and forwards every request to the app on localhost (the
//! `inflight-forward` crate: the data-port server and the forwarding core),
//! counts what is in flight ([`count`], [`stats`]), reports each interval to
//! the aggregators ([`report`]) and answers the kubelet and Prometheus
//! ([`admin`]). On SIGTERM, or when the app's preStop hook calls `/drain`
//! ([`drain`]), it drains: `/readyz` turns 503 at once, serving and accepting
//! go on for the drain period, then every client is told to go away (HTTP/2
//! GOAWAY, HTTP/1 `Connection: close`) and what is in flight finishes, up to
//! a hard limit.

pub mod admin;
pub mod config;
pub mod count;
pub mod drain;
pub mod metrics;
pub mod report;
use inflight_forward::server;
pub mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub use config::Config;

use crate::count::CountingProxy;
use crate::report::Reporter;
use crate::stats::Stats;
use inflight_forward::{Forwarder, ForwarderConfig};
use inflight_report::{ReportMetrics, Target, TokenFile};

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

/// Runs the proxy until `shutdown` resolves, then drains and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let targets = Target::parse_list(&config.aggregator)?;
    let identity = match config.identity() {
        Ok(identity) => identity,
        // Nothing is reported, so nothing needs the namespace.
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

    let worker_count = config.workers();
    let stats = Arc::new(Stats::new(worker_count));
    let mut registry = Registry::with_prefix(inflight_proto::names::METRIC_PREFIX);
    metrics::register(&mut registry, stats.clone());
    let report_metrics = ReportMetrics::default();
    report_metrics.register(&mut registry);
    let reporter = Reporter::spawn(
        stats.clone(),
        identity,
        targets,
        config.report_interval,
        report_metrics,
        TokenFile::new(Some(config.token_file.clone())),
    );

    let forwarder_config = ForwarderConfig {
        upstream: config.upstream.clone(),
        timeout: config.upstream_timeout,
        forwarded_headers: config.forwarded_headers,
        trusted_proxies: config.trusted_proxies.clone(),
        tcp_keepalive: config.connections.tcp_keepalive,
        tunnel_idle_timeout: config.connections.tunnel_idle_timeout,
    };
    let drain_switch = drain::Drain::new(config.drain_token.clone());
    let admin = Arc::new(admin::Admin {
        drain: drain_switch.clone(),
        stats: stats.clone(),
        registry,
        reporter: reporter.clone(),
        app: config.app_check(),
    });
    tokio::spawn(admin.serve(admin_listener, config.admin_limits.into()));
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        upstream = %config.upstream,
        workers = worker_count,
        aggregators = ?config.aggregator,
        "inflight-proxy serving"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain_started = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let hard_limit = config.drain_timeout;
    let grace: server::Grace = {
        let drain_started = drain_started.clone();
        Arc::new(move || {
            let started = drain_started
                .lock()
                .map(|s| *s)
                .unwrap_or(None)
                .unwrap_or_else(Instant::now);
            // Whatever is left of the hard limit, and a moment for connections
            // to close even when the limit is spent.
            (started + hard_limit)
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(500))
        })
    };
    // Every worker is a thread with an event loop of its own; this runtime
    // keeps the control plane (the acceptor, the admin server, the reporter
    // and its DNS re-resolution), so `/readyz` and report ticks never queue
    // behind requests.
    let mut workers = Vec::new();
    let mut done = Vec::new();
    for index in 0..worker_count {
        let stats = stats.clone();
        let forwarder_config = forwarder_config.clone();
        let (worker, worker_done) = server::spawn_worker_thread(
            format!("inflight-worker-{index}"),
            move || CountingProxy::new(Forwarder::new(forwarder_config), stats, index),
            grace.clone(),
            config.connections,
        )
        .map_err(Error::Worker)?;
        workers.push(worker);
        done.push(worker_done);
    }
    let acceptor = tokio::spawn(server::accept(
        listener,
        workers,
        config.connections,
        stop_rx,
    ));

    let why = tokio::select! {
        () = shutdown => "SIGTERM",
        () = drain_switch.requested() => "preStop hook (/drain)",
    };
    drain_switch.begun();
    let started = Instant::now();
    if let Ok(mut s) = drain_started.lock() {
        *s = Some(started);
    }
    stats.set_draining();
    tracing::info!(
        in_flight = stats.in_flight(),
        drain_period = ?config.drain_period,
        "{why}: draining"
    );
    drain(started, config.drain_period, config.drain_timeout).await;
    let _ = stop_tx.send(true);
    if let Err(error) = acceptor.await {
        tracing::warn!(%error, "acceptor task failed");
    }
    for worker in done {
        let _ = worker.await;
    }
    if stats.in_flight() > 0 {
        tracing::warn!(
            in_flight = stats.in_flight(),
            limit = ?config.drain_timeout,
            "drain limit reached with requests in flight"
        );
    }
    reporter.flush(Duration::from_millis(500)).await;
    drain_switch.finished(Duration::from_secs(1)).await;
    tracing::info!(
        requests = stats.requests_total(),
        in_flight = stats.in_flight(),
        "drained; exiting"
    );
    Ok(())
}

/// Serves on, accepting, for `period` (never past `limit`). Then accepting
/// stops and every connection is told to go away (HTTP/2 GOAWAY), and the
/// workers wait for what is in flight to end, up to `limit`.
async fn drain(started: Instant, period: Duration, limit: Duration) {
    tokio::time::sleep_until(started + period.min(limit)).await;
}
