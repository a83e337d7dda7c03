//! `GET /drain` on the admin port: the app container's preStop hook, which the injector adds.
//!
//! As a native sidecar the proxy is told to stop (SIGTERM) only after the app has exited, which is
//! too late: keep-alive clients would still be sending through it to an app that is gone. So the
//! app's preStop hook asks the proxy to drain first, exactly as on SIGTERM (`/readyz` 503, serving
//! on for the drain period with `Connection: close`, then GOAWAY and the requests in flight
//! finished), and the kubelet sends the app its SIGTERM only once the answer comes, when nothing
//! is in flight. Then the proxy exits: when the pod is being deleted that is its end, and when
//! only the app is being restarted (a failed liveness probe), the kubelet starts the sidecar again
//! (`restartPolicy: Always`), fresh and not draining.
//!
//! Only a caller with the pod's drain token (`--drain-token`, in the hook's header) may drain it:
//! the admin port is reachable from the cluster, and a drain takes the pod out of service.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The header the preStop hook sends the token in.
pub const TOKEN_HEADER: &str = "x-inflight-drain-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
    Drained,
}

/// Shared by the admin server (which asks for a drain and waits for it) and `run` (which drains).
#[derive(Debug)]
pub struct Drain {
    phase: watch::Sender<Phase>,
    token: Option<String>,
    /// `/drain` calls waiting for their answer, so the process stays until they have it.
    answering: AtomicUsize,
}

/// Why a `/drain` call is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// This proxy was started without `--drain-token`.
    NotEnabled,
    /// The token is missing or wrong.
    BadToken,
}

impl Drain {
    pub fn new(token: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            phase: watch::Sender::new(Phase::Serving),
            token: token.filter(|t| !t.is_empty()),
            answering: AtomicUsize::new(0),
        })
    }

    /// Completes when a drain is asked for by `/drain`.
    pub async fn requested(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p != Phase::Serving).await;
    }

    /// The drain has begun (however it was asked for): `/drain` calls now wait for its end.
    pub fn begun(&self) {
        self.phase.send_if_modified(|p| {
            let serving = *p == Phase::Serving;
            if serving {
                *p = Phase::Draining;
            }
            serving
        });
    }

    /// The drain is over: waiting `/drain` calls are answered. Returns once they have their
    /// answer (or after `within`), so the process does not exit under them.
    pub async fn finished(&self, within: Duration) {
        self.phase.send_replace(Phase::Drained);
        let deadline = tokio::time::Instant::now() + within;
        while self.answering.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A `/drain` call with `token`: starts the drain and completes once it is over.
    pub async fn call(&self, token: Option<&[u8]>) -> Result<(), Refused> {
        let Some(expected) = &self.token else {
            return Err(Refused::NotEnabled);
        };
        if !token.is_some_and(|t| same(t, expected.as_bytes())) {
            return Err(Refused::BadToken);
        }
        struct Answering<'a>(&'a AtomicUsize);
        impl Drop for Answering<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.answering.fetch_add(1, Ordering::SeqCst);
        let _answering = Answering(&self.answering);
        let mut rx = self.phase.subscribe();
        self.begun();
        let _ = rx.wait_for(|p| *p == Phase::Drained).await;
        Ok(())
    }
}

/// Compares without stopping at the first difference, so the time taken does not tell a caller
/// how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_with_the_token_starts_the_drain_and_returns_when_it_is_over() {
        let drain = Drain::new(Some("s3cret".into()));
        let call = tokio::spawn({
            let drain = drain.clone();
            async move { drain.call(Some(b"s3cret")).await }
        });
        drain.requested().await;
        assert!(!call.is_finished());
        drain.finished(Duration::from_secs(5)).await;
        assert_eq!(call.await.ok(), Some(Ok(())));
        assert_eq!(drain.answering.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn without_the_right_token_nothing_drains() {
        let drain = Drain::new(Some("s3cret".into()));
        assert_eq!(drain.call(Some(b"guess!")).await, Err(Refused::BadToken));
        assert_eq!(drain.call(None).await, Err(Refused::BadToken));
        assert_eq!(*drain.phase.borrow(), Phase::Serving);
        let off = Drain::new(None);
        assert_eq!(off.call(Some(b"anything")).await, Err(Refused::NotEnabled));
    }
}
