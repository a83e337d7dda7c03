//! An upgraded connection (websocket and the like): once both sides have
//! switched protocols, bytes are copied both ways.
//!
//! The tunnel ends when the app has closed its side and everything it sent
//! has reached the client. A client that closes first only half-closes: the
//! app still gets to answer (a websocket close handshake, say). A tunnel that
//! carries no byte either way for its idle timeout is closed on both sides:
//! a peer that vanished would otherwise keep it, and the request it counts
//! as, open for ever (TCP keepalive finds a vanished peer sooner; this also
//! ends one that is there but silent).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

#[derive(Debug)]
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle_timeout: Duration,
}

impl Tunnel {
    pub(super) fn new(client: OnUpgrade, upstream: OnUpgrade, idle_timeout: Duration) -> Self {
        Self {
            client,
            upstream,
            idle_timeout,
        }
    }

    /// Runs until the app's side is done, or nothing has moved for the idle
    /// timeout (an error of kind `TimedOut`); returns the bytes copied to the
    /// app and to the client. Must be spawned: the client's side only
    /// upgrades after the 101 response has been written to it.
    pub async fn run(self) -> std::io::Result<(u64, u64)> {
        let (client, upstream) = tokio::try_join!(
            async { self.client.await.map_err(std::io::Error::other) },
            async { self.upstream.await.map_err(std::io::Error::other) },
        )?;
        let activity = Activity::new();
        let (client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
        let (app_read, mut app_write) = tokio::io::split(TokioIo::new(upstream));
        let mut client_read = activity.watch(client_read);
        let mut app_read = activity.watch(app_read);
        let to_app = async {
            let copied = tokio::io::copy(&mut client_read, &mut app_write).await;
            let _ = app_write.shutdown().await;
            copied
        };
        let to_client = async {
            let copied = tokio::io::copy(&mut app_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
            copied
        };
        let idle = activity.idle_for(self.idle_timeout);
        tokio::pin!(to_app, to_client, idle);
        let mut sent_to_app = None;
        loop {
            tokio::select! {
                copied = &mut to_app, if sent_to_app.is_none() => sent_to_app = Some(copied),
                copied = &mut to_client => {
                    let to_app = match sent_to_app {
                        Some(done) => done?,
                        None => 0,
                    };
                    return Ok((to_app, copied?));
                }
                // Returning drops both connections, which closes them.
                () = &mut idle => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no traffic either way for {:?}", self.idle_timeout),
                    ));
                }
            }
        }
    }
}

/// When a tunnel last read a byte from either side.
#[derive(Debug, Clone)]
struct Activity {
    origin: Instant,
    /// Milliseconds after `origin`.
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn watch<R>(&self, inner: R) -> Watched<R> {
        Watched {
            inner,
            activity: self.clone(),
        }
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Resolves once nothing has been read for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let due = self.last() + timeout;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// A reader that notes in its [`Activity`] each time it reads something.
#[derive(Debug)]
struct Watched<R> {
    inner: R,
    activity: Activity,
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let since = this.activity.origin.elapsed().as_millis();
            this.activity
                .last
                .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        polled
    }
}
