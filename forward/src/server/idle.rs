//! The header-read and idle keep-alive timeouts of the data port's HTTP/1
//! connections, kept per connection rather than per request.
//!
//! hyper's own HTTP/1 `header_read_timeout` arms a new timer for every
//! request head and makes the connection try one more read after every
//! response: a boxed sleep, two timer-wheel updates and a read that finds
//! nothing, on every request of a keep-alive connection. At the proxy's
//! rates that was a tenth of its CPU. Here a request costs two counter
//! updates and a clock read, and the connection's one timer wakes only at a
//! deadline, where it decides from the counters.
//!
//! The rules are hyper's: a connection that has not sent its first whole
//! request head within the header-read timeout of opening, or the next one
//! within the idle timeout of its previous response, is closed; a request
//! being answered is never cut, however long it takes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// One HTTP/1 connection's requests, as its idle watch sees them.
#[derive(Debug)]
pub struct Requests {
    opened: Instant,
    /// Requests whose head has arrived (hyper called the service).
    started: AtomicU64,
    /// Requests whose response has been sent in full, or dropped.
    answered: AtomicU64,
    /// When the latest answer ended, in ns after `opened`.
    last_answer_ns: AtomicU64,
}

impl Requests {
    pub fn new(opened: Instant) -> Arc<Self> {
        Arc::new(Self {
            opened,
            started: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            last_answer_ns: AtomicU64::new(0),
        })
    }

    /// A request head has arrived.
    pub fn start(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn answered(&self) {
        let ns = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // The time first: the watch reads the count, then the time.
        self.last_answer_ns.store(ns, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Release);
    }

    /// When the connection is to be closed if nothing changes by then: the
    /// header-read deadline before its first request, `idle` after its latest
    /// answer, and never while a request is being answered (`None`: look
    /// again `idle` from now).
    pub fn deadline(&self, header_read: Duration, idle: Duration) -> Option<Instant> {
        let answered = self.answered.load(Ordering::Acquire);
        let started = self.started.load(Ordering::Relaxed);
        if started > answered {
            return None;
        }
        if started == 0 {
            return Some(self.opened + header_read);
        }
        let last = Duration::from_nanos(self.last_answer_ns.load(Ordering::Relaxed));
        Some(self.opened + last + idle)
    }

    /// `body`, which tells these requests when it has been sent in full.
    pub fn answer<B>(self: &Arc<Self>, body: B) -> Answer<B> {
        Answer {
            inner: body,
            requests: Some(self.clone()),
        }
    }
}

/// Waits until the connection whose requests these are has been idle past
/// its deadline (see [`Requests::deadline`]), then returns.
pub async fn expired(requests: &Requests, header_read: Duration, idle: Duration) {
    loop {
        let at = requests
            .deadline(header_read, idle)
            .unwrap_or_else(|| Instant::now() + idle);
        if at <= Instant::now() {
            return;
        }
        tokio::time::sleep_until(at).await;
    }
}

/// A response body that tells its connection's [`Requests`] when it is done:
/// when hyper drops it, which it does once it has written it in full (or the
/// connection ended).
#[derive(Debug)]
pub struct Answer<B> {
    inner: B,
    requests: Option<Arc<Requests>>,
}

impl<B> Answer<B> {
    /// A body nobody watches (HTTP/2 streams: pings watch their connection).
    pub fn unwatched(inner: B) -> Self {
        Self {
            inner,
            requests: None,
        }
    }
}

impl<B> Drop for Answer<B> {
    fn drop(&mut self) {
        if let Some(requests) = self.requests.take() {
            requests.answered();
        }
    }
}

impl<B: Body + Unpin> Body for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn the_first_head_is_due_by_the_header_read_deadline() {
        let opened = Instant::now();
        let requests = Requests::new(opened);
        assert_eq!(requests.deadline(HEAD, IDLE), Some(opened + HEAD));
        expired(&requests, HEAD, IDLE).await;
        assert_eq!(Instant::now(), opened + HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_answered_is_never_cut() {
        let opened = Instant::now();
        let requests = Requests::new(opened);
        requests.start();
        let body = requests.answer(());
        assert_eq!(requests.deadline(HEAD, IDLE), None);
        tokio::select! {
            () = expired(&requests, HEAD, IDLE) => panic!("expired while answering"),
            () = tokio::time::sleep(IDLE * 5) => {}
        }
        drop(body);
        let answered = Instant::now();
        assert_eq!(requests.deadline(HEAD, IDLE), Some(answered + IDLE));
        expired(&requests, HEAD, IDLE).await;
        assert_eq!(Instant::now(), answered + IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn each_answer_moves_the_idle_deadline() {
        let opened = Instant::now();
        let requests = Requests::new(opened);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(7)).await;
            requests.start();
            drop(requests.answer(()));
        }
        assert_eq!(
            requests.deadline(HEAD, IDLE),
            Some(opened + Duration::from_secs(21) + IDLE)
        );
        let unwatched = Answer::unwatched(());
        drop(unwatched);
        assert_eq!(requests.answered.load(Ordering::Relaxed), 3);
    }
}
