//! An HTTPS server whose clients each cost a bounded amount for a bounded time (slowloris): a cap
//! on open connections, a deadline for the TLS handshake and each HTTP/1 request head, and an idle
//! timeout for connections with no request in progress. The SMI API and the injector's webhook
//! both serve through it; their callers are API servers.
//!
//! hyper's HTTP/1 `header_read_timeout` runs from the moment hyper waits for a head: right after
//! the handshake and, on a keep-alive connection, right after the previous response, so an idle
//! HTTP/1 connection is closed after it too. HTTP/2 connections (the API server's aggregation
//! layer speaks h2) have no head timer: the idle timeout closes them with a GOAWAY. Unlike the
//! admin servers, which pause accepting at their cap, a connection past this cap is closed at once:
//! the API server retries, and a full house shows at once rather than as a hang.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::http::ConnLimits;

/// What each client is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The TLS handshake, and each HTTP/1 request head, must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

impl Limits {
    /// A server builder for HTTP/1.1 and h2 that enforces the head deadline and pings idle h2
    /// connections (the runtime's, as every inflight HTTP server does).
    pub fn builder(&self) -> auto::Builder<TokioExecutor> {
        ConnLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            ..ConnLimits::default()
        }
        .builder()
    }

    pub fn admission(&self) -> Admission {
        Admission(Arc::new(Semaphore::new(self.max_connections.max(1))))
    }
}

/// The open-connection cap: each connection holds a permit until it closes.
#[derive(Debug, Clone)]
pub struct Admission(Arc<Semaphore>);

impl Admission {
    /// A permit, or none when every place is taken.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// Requests in progress on one connection, and since when that count last changed.
#[derive(Debug, Clone)]
struct Activity(Arc<watch::Sender<(usize, Instant)>>);

impl Activity {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new((0, Instant::now()))))
    }

    /// Counts `request` as in progress while it runs.
    async fn serving<T>(&self, request: impl Future<Output = T>) -> T {
        self.0.send_modify(|(n, at)| {
            *n += 1;
            *at = Instant::now();
        });
        // Decremented however the request ends, even when hyper drops it half-way.
        struct Done<'a>(&'a watch::Sender<(usize, Instant)>);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.send_modify(|(n, at)| {
                    *n = n.saturating_sub(1);
                    *at = Instant::now();
                });
            }
        }
        let _done = Done(&self.0);
        request.await
    }

    /// Completes once no request has been in progress for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let mut rx = self.0.subscribe();
        loop {
            let (in_progress, since) = *rx.borrow_and_update();
            if in_progress == 0 {
                tokio::select! {
                    () = tokio::time::sleep_until(since + idle) => return,
                    _ = rx.changed() => {}
                }
            } else if rx.changed().await.is_err() {
                // The sender lives as long as `self`; this cannot end otherwise.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Serves HTTPS on `listener` for ever, within `limits`. `acceptor` gives the TLS settings for
/// each new connection, so they may change while serving (`None`: the connection is closed).
/// `make` builds the connection's request handler once its handshake is done, from what the
/// handshake established (a client certificate, say).
pub async fn serve<A, M, H, F, B>(listener: TcpListener, limits: Limits, acceptor: A, make: M)
where
    A: Fn() -> Option<TlsAcceptor>,
    M: Fn(&rustls::ServerConnection) -> H + Clone + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let admission = limits.admission();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, mostly: wait for some to close rather than spin.
                tracing::warn!(%error, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = admission.try_admit() else {
            tracing::debug!(%peer, max = limits.max_connections, "connection cap reached; connection closed");
            continue;
        };
        let Some(tls) = acceptor() else {
            continue;
        };
        let make = make.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(stream)) =
                tokio::time::timeout(limits.header_read_timeout, tls.accept(tcp)).await
            else {
                return;
            };
            let tls = stream.get_ref().1;
            // The protocol is settled by ALPN: hyper-util then skips reading the first bytes to
            // tell, a phase no timer of hyper's covers, so a client silent after the handshake
            // meets the head deadline rather than the idle timeout.
            let h2 = tls.alpn_protocol() == Some(b"h2");
            let handler = Arc::new(make(tls));
            let activity = Activity::new();
            let service = service_fn({
                let activity = activity.clone();
                move |request| {
                    let (handler, activity) = (handler.clone(), activity.clone());
                    async move { Ok::<_, Infallible>(activity.serving(handler(request)).await) }
                }
            });
            let builder = if h2 {
                limits.builder().http2_only()
            } else {
                limits.builder().http1_only()
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = activity.idle_for(limits.idle_timeout) => {}
            }
            // Idle: HTTP/1 closes now; h2 sends GOAWAY and closes once its streams are done, which
            // a peer that stopped reading could put off, so that too is bounded.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_read_timeout, connection).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let activity = Activity::new();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(Duration::from_millis(200)).await }
        });
        let started = Instant::now();
        activity
            .serving(tokio::time::sleep(Duration::from_millis(300)))
            .await;
        idle.await.unwrap();
        // Never before the request ended plus a whole idle period (a lower bound only).
        assert!(started.elapsed() >= Duration::from_millis(500));
    }

    #[test]
    fn a_full_house_admits_no_one_until_a_place_frees() {
        let admission = Limits {
            max_connections: 2,
            ..Limits::default()
        }
        .admission();
        let a = admission.try_admit().unwrap();
        let _b = admission.try_admit().unwrap();
        assert!(admission.try_admit().is_none());
        drop(a);
        assert!(admission.try_admit().is_some());
    }
}
