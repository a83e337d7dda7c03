//! One report stream to one aggregator address: connect, stream, and on any
//! failure reconnect after a jittered backoff, keeping the unsent report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inflight_proto::v1::ingest_client::IngestClient;
use inflight_proto::v1::ReportRequest;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use inflight_runtime::lock;

use crate::token::TokenFile;
use crate::{Report, ReportMetrics};

/// How often an idle stream looks whether its token was rotated (kubelet rotates an hour's token
/// with 12 minutes to spare).
const TOKEN_CHECK: Duration = Duration::from_secs(10);

/// What `/stats` shows of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LinkState {
    pub connected: bool,
    pub sent: u64,
}

#[derive(Debug)]
pub(crate) struct Link<R> {
    addr: SocketAddr,
    token: TokenFile,
    pending: Mutex<Option<R>>,
    ready: Notify,
    connected: AtomicBool,
    sent: AtomicU64,
}

/// Reconnect delays: exponential from 100 ms to 5 s, each drawn at random
/// from its upper half, so a restarted aggregator is not hit by every
/// sidecar in the same millisecond.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

impl<R: Report> Link<R> {
    pub(crate) fn new(addr: SocketAddr, token: TokenFile) -> Self {
        Self {
            addr,
            token,
            pending: Mutex::new(None),
            ready: Notify::new(),
            connected: AtomicBool::new(false),
            sent: AtomicU64::new(0),
        }
    }

    pub(crate) fn state(&self) -> LinkState {
        LinkState {
            connected: self.connected.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        lock(&self.pending).is_some()
    }

    /// Queues a report, merging it into one that is still waiting.
    pub(crate) fn offer(&self, report: R) {
        {
            let mut pending = lock(&self.pending);
            *pending = Some(match pending.take() {
                Some(older) => R::merge(older, report),
                None => report,
            });
        }
        self.ready.notify_one();
    }

    fn take(&self) -> Option<R> {
        lock(&self.pending).take()
    }

    /// Puts back a report that could not be sent, ahead of anything newer.
    fn put_back(&self, report: R) {
        let mut pending = lock(&self.pending);
        *pending = Some(match pending.take() {
            Some(newer) => R::merge(report, newer),
            None => report,
        });
    }

    pub(crate) async fn run(self: Arc<Self>, metrics: ReportMetrics) {
        let mut backoff = Backoff::new();
        let mut failures_logged = 0u32;
        loop {
            match self.stream_once(&metrics).await {
                // The next stream goes out at once, with the new token.
                Ok(Ended::Rotated) => {
                    tracing::info!(aggregator = %self.addr, "token rotated; report stream reopened with it");
                    continue;
                }
                Ok(Ended::Lived(lived)) => {
                    if lived > Duration::from_secs(10) {
                        backoff.reset();
                        failures_logged = 0;
                    }
                }
                Err(error) => {
                    metrics.stream_failures.inc();
                    // An aggregator that stays down should not flood the log.
                    if failures_logged < 3 {
                        tracing::warn!(aggregator = %self.addr, %error, "report stream failed; retrying");
                    } else {
                        tracing::debug!(aggregator = %self.addr, %error, "report stream failed; retrying");
                    }
                    failures_logged = failures_logged.saturating_add(1);
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Connects and streams until the stream ends; returns how long it lived, or that it was
    /// ended for a rotated token.
    async fn stream_once(&self, metrics: &ReportMetrics) -> Result<Ended, tonic::Status> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
        let mut client = IngestClient::new(channel);
        let (token, error) = self.token.open();
        if let Some(error) = error {
            tracing::warn!(aggregator = %self.addr, %error, "reporting without a token");
        }
        let (tx, rx) = mpsc::channel::<ReportRequest>(1);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        token.insert(request.metadata_mut());
        let call = client.report(request);
        tokio::pin!(call);

        let opened = tokio::time::Instant::now();
        self.connected.store(true, Ordering::Relaxed);
        metrics.streams_connected.inc();
        let result = loop {
            if self.token.rotated(&token) {
                // Everything sent is taken before the aggregator answers the stream's end.
                drop(tx);
                break match (&mut call).await {
                    Ok(_) => Ok(true),
                    Err(status) => Err(status),
                };
            }
            // A report may have been queued while we were connecting.
            if let Some(report) = self.take() {
                let message = report.clone().into_request();
                tokio::select! {
                    permit = tx.reserve() => match permit {
                        Ok(permit) => {
                            permit.send(message);
                            self.sent.fetch_add(1, Ordering::Relaxed);
                            metrics.reports_sent.inc();
                        }
                        Err(_) => {
                            self.put_back(report);
                            break Err(tonic::Status::unavailable("report stream closed"));
                        }
                    },
                    ended = &mut call => {
                        self.put_back(report);
                        break ended.map(|_| false);
                    }
                }
                continue;
            }
            tokio::select! {
                _ = self.ready.notified() => {}
                // A reporter with nothing to say (an activator holding nothing) still changes
                // streams before its token expires, rather than being cut off at the expiry.
                () = tokio::time::sleep(TOKEN_CHECK) => {}
                ended = &mut call => break ended.map(|_| false),
            }
        };
        self.connected.store(false, Ordering::Relaxed);
        metrics.streams_connected.dec();
        let lived = opened.elapsed();
        match result {
            Ok(true) => Ok(Ended::Rotated),
            Ok(false) => Err(tonic::Status::unavailable(
                "aggregator closed the report stream",
            )),
            Err(status) if lived > Duration::from_secs(10) => {
                tracing::info!(aggregator = %self.addr, %status, "report stream ended");
                Ok(Ended::Lived(lived))
            }
            Err(status) => Err(status),
        }
    }
}

/// How a stream that did not fail ended.
#[derive(Debug)]
enum Ended {
    /// It lived this long, then the aggregator ended it (a restart, a shutdown).
    Lived(Duration),
    /// Its token was rotated: ended by us after its last report, to be opened again at once.
    Rotated,
}

#[cfg(test)]
mod tests {
    use super::*;
    use inflight_proto::v1::PodReport;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[9] >= Duration::from_millis(2500) && delays[9] <= Backoff::MAX);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn unsent_reports_merge_into_one() {
        let link =
            Link::<PodReport>::new(SocketAddr::from(([127, 0, 0, 1], 1)), TokenFile::default());
        for i in 0..1000 {
            link.offer(PodReport {
                interval: Some(inflight_proto::v1::Interval {
                    start_unix_ms: i * 1000,
                    length_ms: 1000,
                }),
                requests: 1,
                ..Default::default()
            });
        }
        let merged = link.take().unwrap_or_default();
        assert_eq!(merged.requests, 1000);
        assert_eq!(merged.interval.unwrap_or_default().length_ms, 1_000_000);
        assert!(!link.has_pending());
    }
}
