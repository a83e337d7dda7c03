//! What the proxy counts: requests in flight now, the time-weighted average
//! of in-flight over each report interval, requests, responses by class and
//! a latency histogram.
//!
//! Counters are cumulative (Prometheus reads them as they are; the reporter
//! takes deltas). Concurrency needs the in-flight count and the time of its
//! last change read together, so it lives under a short lock, the way
//! Knative's queue-proxy does it; but one lock per worker, so the workers
//! never wait for each other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use inflight_proto::{latency_bucket, LATENCY_BUCKETS};
use inflight_report::{average, Integral};
use inflight_runtime::lock;
use tokio::sync::Notify;

/// How a counted request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 1xx: in practice a 101 for an upgraded connection, counted when it closes.
    Informational,
    Success,
    Redirection,
    ClientError,
    /// 5xx, including the proxy's own 502 and 504.
    ServerError,
    /// HTTP 200 with a `grpc-status` other than 0.
    GrpcFailure,
    /// The client went away before the response was complete.
    Cancelled,
}

impl Class {
    pub const ALL: [Class; 7] = [
        Class::Informational,
        Class::Success,
        Class::Redirection,
        Class::ClientError,
        Class::ServerError,
        Class::GrpcFailure,
        Class::Cancelled,
    ];

    pub fn from_status(status: http::StatusCode) -> Self {
        match status.as_u16() {
            100..=199 => Class::Informational,
            200..=299 => Class::Success,
            300..=399 => Class::Redirection,
            400..=499 => Class::ClientError,
            _ => Class::ServerError,
        }
    }

    /// The label used in `/stats` and in `inflight_requests_total{class=…}`.
    pub fn label(self) -> &'static str {
        match self {
            Class::Informational => "1xx",
            Class::Success => "2xx",
            Class::Redirection => "3xx",
            Class::ClientError => "4xx",
            Class::ServerError => "5xx",
            Class::GrpcFailure => "grpc_failure",
            Class::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Cumulative histogram values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub counts: [u64; LATENCY_BUCKETS],
    pub sum_seconds: f64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Self {
            counts: [0; LATENCY_BUCKETS],
            sum_seconds: 0.0,
        }
    }
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn delta(&self, earlier: &Self) -> Self {
        Self {
            counts: std::array::from_fn(|i| self.counts[i].saturating_sub(earlier.counts[i])),
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
        }
    }
}

/// One worker's share of the figures. Only its own worker changes it on the
/// request path; the reporter, `/stats` and `/metrics` read it now and then.
#[derive(Debug)]
struct Tally {
    /// Requests in flight, and their integral over time since the interval began.
    in_flight: Integral,
    started_in_interval: u64,
    requests: u64,
    classes: [u64; Class::ALL.len()],
    latency: [u64; LATENCY_BUCKETS],
    latency_sum_nanos: u64,
}

impl Tally {
    fn new(now: Instant) -> Self {
        Self {
            in_flight: Integral::new(now),
            started_in_interval: 0,
            requests: 0,
            classes: [0; Class::ALL.len()],
            latency: [0; LATENCY_BUCKETS],
            latency_sum_nanos: 0,
        }
    }
}

/// A shard on a cache line of its own (128 bytes covers the adjacent-line
/// prefetch of x86 and the line of Apple's arm64), so one worker's writes
/// never evict another worker's shard.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(Mutex<Tally>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Tally> {
        lock(&self.0)
    }
}

/// One report interval's concurrency figures, timed by the monotonic clock
/// (the reporter dates it by the wall clock when it sends it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntervalConcurrency {
    pub length: Duration,
    /// Integral of in-flight over the interval divided by its length.
    pub average: f64,
    /// In flight at the end of the interval.
    pub in_flight: u64,
}

/// Everything the proxy counts, shared by the data path, the admin server and
/// the reporter.
///
/// Each worker counts in a shard of its own, under a lock that only it takes
/// on the request path (the reporter takes it once per interval, a scrape
/// once per scrape), and the shards are added up when read. The integral of
/// in-flight over time is linear, so the sum of the shards' integrals is
/// exactly the integral of the pod's in-flight.
#[derive(Debug)]
pub struct Stats {
    shards: Box<[Shard]>,
    /// When the current report interval began.
    interval_start: Mutex<Instant>,
    /// No request has started since the last interval that saw no activity:
    /// the next start is a wake-up and is reported at once.
    idle: AtomicBool,
    /// Rung when a request starts after an idle interval.
    wake: Notify,
    draining: AtomicBool,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new(1)
    }
}

impl Stats {
    /// Figures counted in `shards` shards (one per worker; at least one).
    pub fn new(shards: usize) -> Self {
        let now = Instant::now();
        Self {
            shards: (0..shards.max(1))
                .map(|_| Shard(Mutex::new(Tally::new(now))))
                .collect(),
            interval_start: Mutex::new(now),
            // A new pod's first request is a wake-up: the workload may be at zero.
            idle: AtomicBool::new(true),
            wake: Notify::new(),
            draining: AtomicBool::new(false),
        }
    }

    /// The shard a worker counts in; any number is valid (it wraps).
    fn shard(&self, shard: usize) -> MutexGuard<'_, Tally> {
        self.shards[shard % self.shards.len()].lock()
    }

    fn each_shard(&self) -> impl Iterator<Item = MutexGuard<'_, Tally>> {
        self.shards.iter().map(Shard::lock)
    }

    /// A counted request (or upgraded connection) starts on worker `shard`.
    pub fn start(&self, shard: usize, now: Instant) {
        {
            let mut t = self.shard(shard);
            t.in_flight.up(now);
            t.started_in_interval += 1;
            t.requests += 1;
        }
        // A plain load first: while busy the flag stays false and its cache
        // line stays shared between the workers instead of bouncing.
        if self.idle.load(Ordering::Relaxed) && self.idle.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// A counted request on worker `shard` ends, `elapsed` after it started.
    pub fn end(&self, shard: usize, now: Instant, class: Class, elapsed: Duration) {
        let mut t = self.shard(shard);
        t.in_flight.down(now);
        t.classes[class.index()] += 1;
        // A cancelled request has no meaningful duration: the client decided it.
        if class != Class::Cancelled {
            t.latency[latency_bucket(elapsed.as_secs_f64())] += 1;
            let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            t.latency_sum_nanos = t.latency_sum_nanos.saturating_add(nanos);
        }
    }

    /// Closes the current interval at `now` and opens the next one.
    pub fn take_interval(&self, now: Instant) -> IntervalConcurrency {
        let mut interval_start = lock(&self.interval_start);
        let (mut integral, mut in_flight, mut started) = (0u128, 0u64, 0u64);
        for mut t in self.each_shard() {
            integral = integral.saturating_add(t.in_flight.take(now));
            in_flight = in_flight.saturating_add(t.in_flight.level());
            started = started.saturating_add(std::mem::take(&mut t.started_in_interval));
        }
        let length = now.saturating_duration_since(*interval_start);
        *interval_start = (*interval_start).max(now);
        if in_flight == 0 && integral == 0 && started == 0 {
            self.idle.store(true, Ordering::SeqCst);
            // A request that started on a shard already read above saw the
            // flag still false and rang nothing: it is the wake-up. (One that
            // starts after this store rings it itself; the swap makes sure
            // exactly one of the two does.)
            let slipped_in = self.each_shard().any(|t| t.started_in_interval > 0);
            if slipped_in && self.idle.swap(false, Ordering::AcqRel) {
                self.wake.notify_one();
            }
        }
        let average = average(integral, length, in_flight);
        IntervalConcurrency {
            length,
            average,
            in_flight,
        }
    }

    /// Resolves when a request starts after an idle interval.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    pub fn in_flight(&self) -> u64 {
        self.each_shard()
            .fold(0, |n, t| n.saturating_add(t.in_flight.level()))
    }

    pub fn requests_total(&self) -> u64 {
        self.each_shard()
            .fold(0, |n, t| n.saturating_add(t.requests))
    }

    pub fn responses(&self, class: Class) -> u64 {
        self.each_shard()
            .fold(0, |n, t| n.saturating_add(t.classes[class.index()]))
    }

    pub fn latency(&self) -> HistogramSnapshot {
        self.counters().latency
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Cumulative counters at one moment, for deltas between reports.
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        let mut sum_nanos = 0u64;
        for t in self.each_shard() {
            c.requests = c.requests.saturating_add(t.requests);
            for (total, n) in c.classes.iter_mut().zip(t.classes) {
                *total = total.saturating_add(n);
            }
            for (total, n) in c.latency.counts.iter_mut().zip(t.latency) {
                *total = total.saturating_add(n);
            }
            sum_nanos = sum_nanos.saturating_add(t.latency_sum_nanos);
        }
        c.latency.sum_seconds = Duration::from_nanos(sum_nanos).as_secs_f64();
        c
    }
}

/// Cumulative counters; two of them give an interval's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub requests: u64,
    pub classes: [u64; Class::ALL.len()],
    pub latency: HistogramSnapshot,
}

impl Counters {
    pub fn delta(&self, earlier: &Self) -> Self {
        Self {
            requests: self.requests.saturating_sub(earlier.requests),
            classes: std::array::from_fn(|i| self.classes[i].saturating_sub(earlier.classes[i])),
            latency: self.latency.delta(&earlier.latency),
        }
    }

    pub fn class(&self, class: Class) -> u64 {
        self.classes[class.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn average_is_the_time_weighted_integral_not_a_sample() {
        let stats = Stats::new(1);
        let t0 = Instant::now();
        stats.take_interval(t0);
        // 2 requests for the first 250 ms, 1 for the next 250 ms, 0 for 500 ms:
        // (2*250 + 1*250) / 1000 = 0.75, though in-flight is 0 when sampled.
        stats.start(0, t0);
        stats.start(0, t0);
        stats.end(0, t0 + 250 * MS, Class::Success, 250 * MS);
        stats.end(0, t0 + 500 * MS, Class::Success, 500 * MS);
        let i = stats.take_interval(t0 + 1000 * MS);
        assert_eq!(i.length, 1000 * MS);
        assert!((i.average - 0.75).abs() < 1e-9, "{}", i.average);
        assert_eq!(i.in_flight, 0);
    }

    #[test]
    fn shards_add_up_to_the_pods_integral() {
        // The same requests as above, spread over three workers' shards.
        let stats = Stats::new(3);
        let t0 = Instant::now();
        stats.take_interval(t0);
        stats.start(0, t0);
        stats.start(2, t0 + 100 * MS);
        stats.start(1, t0 + 200 * MS);
        stats.end(2, t0 + 400 * MS, Class::Success, 300 * MS);
        assert_eq!(stats.in_flight(), 2);
        stats.end(0, t0 + 600 * MS, Class::ClientError, 600 * MS);
        // 0→600 ms, 100→400 ms, and 200 ms→end (still in flight): 600+300+800.
        let i = stats.take_interval(t0 + 1000 * MS);
        assert!((i.average - 1.7).abs() < 1e-9, "{}", i.average);
        assert_eq!(i.in_flight, 1);
        assert_eq!(stats.requests_total(), 3);
        assert_eq!(stats.responses(Class::Success), 1);
        assert_eq!(stats.responses(Class::ClientError), 1);
        assert_eq!(stats.latency().count(), 2);
        assert!((stats.latency().sum_seconds - 0.9).abs() < 1e-9);
        // The request still in flight carries on into the next interval.
        stats.end(1, t0 + 1500 * MS, Class::Success, 1300 * MS);
        let next = stats.take_interval(t0 + 2000 * MS);
        assert!((next.average - 0.5).abs() < 1e-9, "{}", next.average);
    }

    #[test]
    fn a_start_on_one_worker_never_waits_for_another_workers_shard() {
        let stats = std::sync::Arc::new(Stats::new(2));
        // Worker 0's shard is busy (held for as long as this test likes).
        let held = stats.shard(0);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let other = stats.clone();
        let worker = std::thread::spawn(move || {
            let now = Instant::now();
            other.start(1, now);
            other.end(1, now + MS, Class::Success, MS);
            let _ = done_tx.send(());
        });
        // With one lock for every worker this would wait until `held` is dropped.
        let finished = done_rx.recv_timeout(Duration::from_secs(30));
        drop(held);
        let _ = worker.join();
        assert!(finished.is_ok(), "worker 1 waited for worker 0's lock");
        assert_eq!(stats.responses(Class::Success), 1);
    }

    #[test]
    fn concurrent_workers_lose_nothing() {
        let stats = std::sync::Arc::new(Stats::new(4));
        let t0 = Instant::now();
        stats.take_interval(t0);
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    // Two requests at a time, back to back, for a second of
                    // the clock the test chooses: 2 in flight throughout.
                    for i in 0..1000u32 {
                        let at = t0 + MS * i;
                        stats.start(w, at);
                        stats.start(w, at);
                        stats.end(w, at + MS, Class::Success, MS);
                        stats.end(w, at + MS, Class::Success, MS);
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        let i = stats.take_interval(t0 + Duration::from_secs(1));
        assert_eq!(stats.requests_total(), 8000);
        assert_eq!(stats.responses(Class::Success), 8000);
        assert_eq!(i.in_flight, 0);
        assert!((i.average - 8.0).abs() < 1e-9, "{}", i.average);
    }

    #[test]
    fn a_request_spanning_intervals_counts_in_each() {
        let stats = Stats::new(2);
        let t0 = Instant::now();
        stats.take_interval(t0);
        stats.start(1, t0 + 500 * MS);
        let first = stats.take_interval(t0 + 1000 * MS);
        assert!((first.average - 0.5).abs() < 1e-9);
        assert_eq!(first.in_flight, 1);
        let second = stats.take_interval(t0 + 2000 * MS);
        assert!((second.average - 1.0).abs() < 1e-9);
        stats.end(1, t0 + 2500 * MS, Class::Success, 2000 * MS);
        let third = stats.take_interval(t0 + 3000 * MS);
        assert!((third.average - 0.5).abs() < 1e-9);
        assert_eq!(third.in_flight, 0);
    }

    #[test]
    fn classes_and_latency_are_counted_but_cancelled_has_no_latency() {
        let stats = Stats::new(2);
        let t0 = Instant::now();
        for (shard, class) in [Class::Success, Class::ServerError, Class::Cancelled]
            .into_iter()
            .enumerate()
        {
            stats.start(shard, t0);
            stats.end(shard, t0 + 2 * MS, class, 2 * MS);
        }
        assert_eq!(stats.requests_total(), 3);
        assert_eq!(stats.responses(Class::Success), 1);
        assert_eq!(stats.responses(Class::ServerError), 1);
        assert_eq!(stats.responses(Class::Cancelled), 1);
        assert_eq!(stats.latency().count(), 2);
        assert!((stats.latency().sum_seconds - 0.004).abs() < 1e-9);
    }

    fn idle(stats: &Stats) -> bool {
        stats.idle.load(Ordering::SeqCst)
    }

    #[test]
    fn wake_fires_only_on_the_first_start_after_an_idle_interval() {
        let stats = Stats::new(2);
        let t0 = Instant::now();
        stats.start(0, t0);
        assert!(!idle(&stats));
        stats.end(0, t0 + MS, Class::Success, MS);
        // The interval had a request: not idle, so the next start is no wake-up.
        stats.take_interval(t0 + 1000 * MS);
        assert!(!idle(&stats));
        // A quiet interval makes the workload idle.
        stats.take_interval(t0 + 2000 * MS);
        assert!(idle(&stats));
        // The first start on any worker wakes it, once.
        stats.start(1, t0 + 2100 * MS);
        assert!(!idle(&stats));
    }

    #[tokio::test]
    async fn a_start_after_an_idle_interval_rings_the_wake() {
        let stats = Stats::new(2);
        let t0 = Instant::now();
        // A new pod is idle: its first request rings.
        stats.start(1, t0);
        let woken = tokio::time::timeout(Duration::from_secs(30), stats.woken()).await;
        assert!(woken.is_ok(), "a new pod's first request did not wake");
        stats.end(1, t0 + MS, Class::Success, MS);
        stats.take_interval(t0 + 1000 * MS);
        stats.take_interval(t0 + 2000 * MS);
        stats.start(0, t0 + 2500 * MS);
        let woken = tokio::time::timeout(Duration::from_secs(30), stats.woken()).await;
        assert!(
            woken.is_ok(),
            "a request after an idle interval did not wake"
        );
    }

    #[test]
    fn counter_deltas() {
        let stats = Stats::new(2);
        let t0 = Instant::now();
        stats.start(0, t0);
        stats.end(0, t0 + MS, Class::Success, MS);
        let a = stats.counters();
        stats.start(1, t0);
        stats.end(1, t0 + 3 * MS, Class::ClientError, 3 * MS);
        let d = stats.counters().delta(&a);
        assert_eq!(d.requests, 1);
        assert_eq!(d.class(Class::ClientError), 1);
        assert_eq!(d.class(Class::Success), 0);
        assert_eq!(d.latency.count(), 1);
    }
}
