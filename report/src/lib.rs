//! Reporting to the aggregators, as the sidecar and the activator both do it: a long-lived gRPC
//! stream per aggregator address ([`Fanout`]), each keeping at most one pending report into which
//! unsent ones are merged ([`Report::merge`]), so an outage costs bounded memory; DNS names
//! re-resolved, and each address they yield gets a stream of its own ([`Target`]); report
//! intervals dated by the wall clock, steps and all ([`clock`]); and the time-weighted integral
//! both report their averages from ([`Integral`]).
//!
//! Nothing here is on the data path: the data path only updates an [`Integral`] or counters.

pub mod clock;
mod held;
pub mod identity;
mod integral;
mod link;
mod pod;
mod target;
mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inflight_proto::v1::ReportRequest;
use inflight_runtime::lock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

pub use integral::{average, Integral};
pub use link::LinkState;
pub use pod::merge as merge_pod;
pub use target::{Target, TargetError};
pub use token::TokenFile;

use link::Link;

/// How often DNS names among the aggregator targets are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(10);

/// A report one reporter sends on its stream: the sidecar's `PodReport`, the activator's
/// `HeldReport`.
pub trait Report: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// One report that says what `older` then `newer` said, for a stream that could not send
    /// `older` in time.
    fn merge(older: Self, newer: Self) -> Self;
    fn into_request(self) -> ReportRequest;
}

/// The reporter's own figures, exported beside the component's.
#[derive(Debug, Clone, Default)]
pub struct ReportMetrics {
    pub streams_connected: Gauge,
    pub reports_sent: Counter,
    pub stream_failures: Counter,
    pub clock_steps: Counter,
}

impl ReportMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "report_streams_connected",
            "Report streams open to aggregators",
            self.streams_connected.clone(),
        );
        registry.register(
            "reports_sent",
            "Reports handed to an open stream",
            self.reports_sent.clone(),
        );
        registry.register(
            "report_stream_failures",
            "Report streams that failed to open or ended with an error",
            self.stream_failures.clone(),
        );
        registry.register(
            "report_clock_steps",
            "Reports over whose interval the wall clock was stepped (the report follows the new clock)",
            self.clock_steps.clone(),
        );
    }
}

/// A stream to one aggregator address and the task that drives it.
type LinkTask<R> = (Arc<Link<R>>, JoinHandle<()>);

/// A stream to every aggregator address the targets resolve to, each carrying every report.
#[derive(Debug)]
pub struct Fanout<R> {
    links: Mutex<HashMap<SocketAddr, LinkTask<R>>>,
    metrics: ReportMetrics,
    token: TokenFile,
}

impl<R: Report> Fanout<R> {
    /// Starts resolving `targets` and opening their streams, each with the token `token` holds
    /// when it opens. With no targets nothing is sent.
    pub fn spawn(targets: Vec<Target>, metrics: ReportMetrics, token: TokenFile) -> Arc<Self> {
        let fanout = Arc::new(Self {
            links: Mutex::new(HashMap::new()),
            metrics,
            token,
        });
        tokio::spawn(resolve_loop(fanout.clone(), targets));
        fanout
    }

    /// Queues `report` on every stream (merged into what one has not sent yet).
    pub fn offer(&self, report: &R) {
        for (link, _) in lock(&self.links).values() {
            link.offer(report.clone());
        }
    }

    /// The state of each aggregator stream.
    pub fn states(&self) -> Vec<(SocketAddr, LinkState)> {
        let links = lock(&self.links);
        let mut states: Vec<_> = links.iter().map(|(a, (l, _))| (*a, l.state())).collect();
        states.sort_by_key(|(a, _)| *a);
        states
    }

    /// Waits up to `timeout` for every connected stream to take what it holds.
    pub async fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let busy = lock(&self.links)
                .values()
                .any(|(l, _)| l.state().connected && l.has_pending());
            if !busy {
                // Give the last message a moment to leave the socket.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Opens a stream to each new address. Streams to addresses that are gone are closed, unless
    /// a name failed to resolve this time: a DNS hiccup must not cut reporting.
    fn update(&self, wanted: &[SocketAddr], resolution_failed: bool) {
        let mut links = lock(&self.links);
        for addr in wanted {
            links.entry(*addr).or_insert_with(|| {
                tracing::info!(aggregator = %addr, "opening report stream");
                let link = Arc::new(Link::new(*addr, self.token.clone()));
                let task = tokio::spawn(link.clone().run(self.metrics.clone()));
                (link, task)
            });
        }
        if !resolution_failed {
            links.retain(|addr, (link, task)| {
                let keep = wanted.contains(addr);
                if !keep {
                    tracing::info!(aggregator = %addr, "aggregator address gone, closing its stream");
                    if link.state().connected {
                        self.metrics.streams_connected.dec();
                    }
                    task.abort();
                }
                keep
            });
        }
    }
}

async fn resolve_loop<R: Report>(fanout: Arc<Fanout<R>>, targets: Vec<Target>) {
    if targets.is_empty() {
        return;
    }
    loop {
        let mut wanted = Vec::new();
        let mut failed = false;
        for target in &targets {
            match target.resolve().await {
                Ok(addrs) => wanted.extend(addrs),
                Err(error) => {
                    failed = true;
                    tracing::warn!(%error, "cannot resolve aggregator address");
                }
            }
        }
        fanout.update(&wanted, failed);
        if targets.iter().all(Target::is_literal) {
            return;
        }
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}
