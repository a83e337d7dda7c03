//! Reports to the aggregators: one interval's figures every
//! `--report-interval`, and one at once when a request arrives after an idle
//! interval. Each aggregator address gets its own long-lived gRPC stream, so
//! every replica holds the same picture; a DNS name is re-resolved and each
//! address it yields gets a stream of its own.
//!
//! Nothing here is on the data path: the data path only updates [`Stats`].
//! Each stream keeps at most one pending report; reports that could not be
//! sent are merged into it, so an outage costs bounded memory.

pub mod clock;
mod link;
pub mod merge;
mod target;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use inflight_proto::v1::{PodIdentity, PodReport};
use inflight_runtime::lock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

pub use link::LinkState;
pub use target::{Target, TargetError};

use crate::stats::{Counters, Stats};
use clock::WallClock;
use link::Link;

/// How often DNS names among the aggregator targets are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(10);

/// The reporter's own figures, exported beside the proxy's.
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
type LinkTask = (Arc<Link>, JoinHandle<()>);

/// The running reporter.
#[derive(Debug, Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    stats: Arc<Stats>,
    identity: PodIdentity,
    metrics: ReportMetrics,
    links: Mutex<HashMap<SocketAddr, LinkTask>>,
    last: Mutex<Last>,
}

/// What the next report is measured from.
#[derive(Debug)]
struct Last {
    counters: Counters,
    clock: WallClock,
}

impl Reporter {
    /// Starts reporting to `targets`. With no targets nothing is sent, but the
    /// intervals still roll so `/stats` and the figures stay current.
    pub fn spawn(
        stats: Arc<Stats>,
        identity: PodIdentity,
        targets: Vec<Target>,
        interval: Duration,
        metrics: ReportMetrics,
    ) -> Self {
        let inner = Arc::new(Inner {
            last: Mutex::new(Last {
                counters: stats.counters(),
                clock: WallClock::default(),
            }),
            stats,
            identity,
            metrics,
            links: Mutex::new(HashMap::new()),
        });
        tokio::spawn(resolve_loop(inner.clone(), targets));
        tokio::spawn(tick_loop(inner.clone(), interval));
        Self { inner }
    }

    /// The state of each aggregator stream, for `/stats`.
    pub fn links(&self) -> Vec<(SocketAddr, LinkState)> {
        let links = lock(&self.inner.links);
        let mut states: Vec<_> = links.iter().map(|(a, (l, _))| (*a, l.state())).collect();
        states.sort_by_key(|(a, _)| *a);
        states
    }

    /// Sends a last report (used when the proxy exits) and waits up to
    /// `timeout` for every connected stream to take it.
    pub async fn flush(&self, timeout: Duration) {
        self.inner.report_now();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let busy = lock(&self.inner.links)
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
}

impl Inner {
    /// Closes the current interval and queues its report on every link.
    fn report_now(&self) {
        // One report at a time, so the intervals and the counters' deltas
        // follow each other.
        let mut last = lock(&self.last);
        let concurrency = self.stats.take_interval(Instant::now());
        let placed = last.clock.place(SystemTime::now(), concurrency.length);
        if let Some(ms) = placed.stepped_ms {
            self.metrics.clock_steps.inc();
            tracing::warn!(
                step_ms = ms,
                "the wall clock was stepped; reports follow the new clock"
            );
        }
        let counters = self.stats.counters();
        let delta = counters.delta(&last.counters);
        last.counters = counters;
        drop(last);
        let report: PodReport = merge::build(&self.identity, placed, concurrency, &delta);
        for (link, _) in lock(&self.links).values() {
            link.offer(report.clone());
        }
    }
}

async fn tick_loop(inner: Arc<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // A wake-up goes out at once; the next tick closes the rest of
            // the interval as usual.
            _ = inner.stats.woken() => {}
        }
        inner.report_now();
    }
}

async fn resolve_loop(inner: Arc<Inner>, targets: Vec<Target>) {
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
        update_links(&inner, &wanted, failed);
        if targets.iter().all(Target::is_literal) {
            return;
        }
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}

/// Opens a stream to each new address. Streams to addresses that are gone
/// are closed, unless a name failed to resolve this time: a DNS hiccup must
/// not cut reporting.
fn update_links(inner: &Inner, wanted: &[SocketAddr], resolution_failed: bool) {
    let mut links = lock(&inner.links);
    for addr in wanted {
        links.entry(*addr).or_insert_with(|| {
            tracing::info!(aggregator = %addr, "opening report stream");
            let link = Arc::new(Link::new(*addr));
            let task = tokio::spawn(link.clone().run(inner.metrics.clone()));
            (link, task)
        });
    }
    if !resolution_failed {
        links.retain(|addr, (link, task)| {
            let keep = wanted.contains(addr);
            if !keep {
                tracing::info!(aggregator = %addr, "aggregator address gone, closing its stream");
                if link.state().connected {
                    inner.metrics.streams_connected.dec();
                }
                task.abort();
            }
            keep
        });
    }
}
