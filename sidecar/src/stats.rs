//! What the proxy counts: requests in flight now, the time-weighted average
//! of in-flight over each report interval, requests, responses by class and
//! a latency histogram.
//!
//! Counters are cumulative atomics (Prometheus reads them as they are; the
//! reporter takes deltas). Concurrency needs the in-flight count and the time
//! of its last change read together, so it lives under one short lock, the
//! way Knative's queue-proxy does it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use inflight_proto::{latency_bucket, LATENCY_BUCKETS};
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

/// A latency histogram of atomics, with the report protocol's fixed bounds.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        self.counts[latency_bucket(elapsed.as_secs_f64())].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_seconds: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
        }
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

#[derive(Debug)]
struct Concurrency {
    in_flight: u64,
    /// When `in_flight` last changed (or the integral was last brought up to date).
    since: Instant,
    /// Integral of in-flight over time since `interval_start`, in request-nanoseconds.
    integral: u128,
    interval_start: Instant,
    interval_start_wall: SystemTime,
    /// No request has started since the last interval that saw no activity:
    /// the next start is a wake-up and is reported at once.
    idle: bool,
    started_in_interval: u64,
}

impl Concurrency {
    fn catch_up(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since).as_nanos();
        self.integral += u128::from(self.in_flight) * elapsed;
        self.since = now;
    }
}

/// One report interval's concurrency figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntervalConcurrency {
    pub start: SystemTime,
    pub length: Duration,
    /// Integral of in-flight over the interval divided by its length.
    pub average: f64,
    /// In flight at the end of the interval.
    pub in_flight: u64,
}

/// Everything the proxy counts, shared by the data path, the admin server and
/// the reporter.
#[derive(Debug)]
pub struct Stats {
    concurrency: Mutex<Concurrency>,
    requests: AtomicU64,
    classes: [AtomicU64; Class::ALL.len()],
    latency: Histogram,
    /// Rung when a request starts after an idle interval.
    wake: Notify,
    draining: AtomicBool,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            concurrency: Mutex::new(Concurrency {
                in_flight: 0,
                since: now,
                integral: 0,
                interval_start: now,
                interval_start_wall: SystemTime::now(),
                // A new pod's first request is a wake-up: the workload may be at zero.
                idle: true,
                started_in_interval: 0,
            }),
            requests: AtomicU64::new(0),
            classes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Histogram::default(),
            wake: Notify::new(),
            draining: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Concurrency> {
        // The lock guards plain arithmetic that cannot panic half-way, so a
        // poisoned lock still holds consistent figures.
        self.concurrency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A counted request (or upgraded connection) starts.
    pub fn start(&self, now: Instant) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let woke = {
            let mut c = self.lock();
            c.catch_up(now);
            c.in_flight += 1;
            c.started_in_interval += 1;
            std::mem::replace(&mut c.idle, false)
        };
        if woke {
            self.wake.notify_one();
        }
    }

    /// A counted request ends, `elapsed` after it started.
    pub fn end(&self, now: Instant, class: Class, elapsed: Duration) {
        {
            let mut c = self.lock();
            c.catch_up(now);
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        self.classes[class.index()].fetch_add(1, Ordering::Relaxed);
        // A cancelled request has no meaningful duration: the client decided it.
        if class != Class::Cancelled {
            self.latency.observe(elapsed);
        }
    }

    /// Closes the current interval at `now` and opens the next one.
    pub fn take_interval(&self, now: Instant) -> IntervalConcurrency {
        let mut c = self.lock();
        c.catch_up(now);
        let length = now.saturating_duration_since(c.interval_start);
        let average = if length.is_zero() {
            c.in_flight as f64
        } else {
            c.integral as f64 / length.as_nanos() as f64
        };
        let taken = IntervalConcurrency {
            start: c.interval_start_wall,
            length,
            average,
            in_flight: c.in_flight,
        };
        let wall_now = c.interval_start_wall + length;
        if c.in_flight == 0 && c.integral == 0 && c.started_in_interval == 0 {
            c.idle = true;
        }
        c.integral = 0;
        c.started_in_interval = 0;
        c.interval_start = now;
        c.interval_start_wall = wall_now;
        taken
    }

    /// Resolves when a request starts after an idle interval.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    pub fn in_flight(&self) -> u64 {
        self.lock().in_flight
    }

    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn responses(&self, class: Class) -> u64 {
        self.classes[class.index()].load(Ordering::Relaxed)
    }

    pub fn latency(&self) -> HistogramSnapshot {
        self.latency.snapshot()
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Cumulative counters at one moment, for deltas between reports.
    pub fn counters(&self) -> Counters {
        Counters {
            requests: self.requests_total(),
            classes: std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed)),
            latency: self.latency(),
        }
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
        let stats = Stats::new();
        let t0 = Instant::now();
        stats.take_interval(t0);
        // 2 requests for the first 250 ms, 1 for the next 250 ms, 0 for 500 ms:
        // (2*250 + 1*250) / 1000 = 0.75, though in-flight is 0 when sampled.
        stats.start(t0);
        stats.start(t0);
        stats.end(t0 + 250 * MS, Class::Success, 250 * MS);
        stats.end(t0 + 500 * MS, Class::Success, 500 * MS);
        let i = stats.take_interval(t0 + 1000 * MS);
        assert_eq!(i.length, 1000 * MS);
        assert!((i.average - 0.75).abs() < 1e-9, "{}", i.average);
        assert_eq!(i.in_flight, 0);
    }

    #[test]
    fn a_request_spanning_intervals_counts_in_each() {
        let stats = Stats::new();
        let t0 = Instant::now();
        stats.take_interval(t0);
        stats.start(t0 + 500 * MS);
        let first = stats.take_interval(t0 + 1000 * MS);
        assert!((first.average - 0.5).abs() < 1e-9);
        assert_eq!(first.in_flight, 1);
        let second = stats.take_interval(t0 + 2000 * MS);
        assert!((second.average - 1.0).abs() < 1e-9);
        stats.end(t0 + 2500 * MS, Class::Success, 2000 * MS);
        let third = stats.take_interval(t0 + 3000 * MS);
        assert!((third.average - 0.5).abs() < 1e-9);
        assert_eq!(third.in_flight, 0);
    }

    #[test]
    fn classes_and_latency_are_counted_but_cancelled_has_no_latency() {
        let stats = Stats::new();
        let t0 = Instant::now();
        for class in [Class::Success, Class::ServerError, Class::Cancelled] {
            stats.start(t0);
            stats.end(t0 + 2 * MS, class, 2 * MS);
        }
        assert_eq!(stats.requests_total(), 3);
        assert_eq!(stats.responses(Class::Success), 1);
        assert_eq!(stats.responses(Class::ServerError), 1);
        assert_eq!(stats.responses(Class::Cancelled), 1);
        assert_eq!(stats.latency().count(), 2);
        assert!((stats.latency().sum_seconds - 0.004).abs() < 1e-9);
    }

    #[test]
    fn wake_fires_only_on_the_first_start_after_an_idle_interval() {
        let stats = Stats::new();
        let t0 = Instant::now();
        stats.start(t0);
        assert!(!stats.lock().idle);
        stats.end(t0 + MS, Class::Success, MS);
        // The interval had a request: not idle, so the next start is no wake-up.
        stats.take_interval(t0 + 1000 * MS);
        assert!(!stats.lock().idle);
        // A quiet interval makes the workload idle.
        stats.take_interval(t0 + 2000 * MS);
        assert!(stats.lock().idle);
        stats.start(t0 + 2100 * MS);
        assert!(!stats.lock().idle);
    }

    #[test]
    fn counter_deltas() {
        let stats = Stats::new();
        let t0 = Instant::now();
        stats.start(t0);
        stats.end(t0 + MS, Class::Success, MS);
        let a = stats.counters();
        stats.start(t0);
        stats.end(t0 + 3 * MS, Class::ClientError, 3 * MS);
        let d = stats.counters().delta(&a);
        assert_eq!(d.requests, 1);
        assert_eq!(d.class(Class::ClientError), 1);
        assert_eq!(d.class(Class::Success), 0);
        assert_eq!(d.latency.count(), 1);
    }
}
