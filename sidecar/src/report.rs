//! Reports to the aggregators: one interval's figures every
//! `--report-interval`, and one at once when a request arrives after an idle
//! interval. Each aggregator address gets its own long-lived gRPC stream, so
//! every replica holds the same picture; a DNS name is re-resolved and each
//! address it yields gets a stream of its own.
//!
//! Nothing here is on the data path: the data path only updates [`Stats`].
//! Each stream keeps at most one pending report; reports that could not be
//! sent are merged into it, so an outage costs bounded memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use inflight_proto::v1::{Interval, LatencyHistogram, PodIdentity, PodReport, Responses};
use inflight_report::clock::{Placed, WallClock};
use inflight_report::{Fanout, LinkState, ReportMetrics, Target, TokenFile};
use inflight_runtime::lock;

use crate::stats::{Class, Counters, IntervalConcurrency, Stats};

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
    fanout: Arc<Fanout<PodReport>>,
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
        token: TokenFile,
    ) -> Self {
        let inner = Arc::new(Inner {
            last: Mutex::new(Last {
                counters: stats.counters(),
                clock: WallClock::default(),
            }),
            stats,
            identity,
            fanout: Fanout::spawn(targets, metrics.clone(), token),
            metrics,
        });
        tokio::spawn(tick_loop(inner.clone(), interval));
        Self { inner }
    }

    /// The state of each aggregator stream, for `/stats`.
    pub fn links(&self) -> Vec<(std::net::SocketAddr, LinkState)> {
        self.inner.fanout.states()
    }

    /// Sends a last report (used when the proxy exits) and waits up to
    /// `timeout` for every connected stream to take it.
    pub async fn flush(&self, timeout: Duration) {
        self.inner.report_now();
        self.inner.fanout.flush(timeout).await;
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
        let report = build(&self.identity, placed, concurrency, &delta);
        self.fanout.offer(&report);
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

/// The report of one interval, dated where `placed` puts it.
pub fn build(
    identity: &PodIdentity,
    placed: Placed,
    concurrency: IntervalConcurrency,
    delta: &Counters,
) -> PodReport {
    PodReport {
        pod: Some(identity.clone()),
        interval: Some(Interval {
            start_unix_ms: placed.start_unix_ms,
            length_ms: placed.length_ms.max(1),
        }),
        avg_concurrency: concurrency.average,
        in_flight: u32::try_from(concurrency.in_flight).unwrap_or(u32::MAX),
        requests: delta.requests,
        responses: Some(Responses {
            class_1xx: delta.class(Class::Informational),
            class_2xx: delta.class(Class::Success),
            class_3xx: delta.class(Class::Redirection),
            class_4xx: delta.class(Class::ClientError),
            class_5xx: delta.class(Class::ServerError),
            grpc_failure: delta.class(Class::GrpcFailure),
            cancelled: delta.class(Class::Cancelled),
        }),
        latency: Some(LatencyHistogram {
            counts: delta.latency.counts.to_vec(),
            sum_seconds: delta.latency.sum_seconds,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inflight_proto::LATENCY_BUCKETS;

    #[test]
    fn build_never_sends_a_zero_length_interval() {
        let placed = Placed {
            start_unix_ms: 5,
            length_ms: 0,
            stepped_ms: None,
        };
        let c = IntervalConcurrency {
            length: Duration::from_micros(200),
            average: 1.0,
            in_flight: 1,
        };
        let r = build(&PodIdentity::default(), placed, c, &Counters::default());
        let i = r.interval.unwrap_or_default();
        assert_eq!((i.start_unix_ms, i.length_ms), (5, 1));
        assert_eq!(r.latency.unwrap_or_default().counts.len(), LATENCY_BUCKETS);
    }
}
