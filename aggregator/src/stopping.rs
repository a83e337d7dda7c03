//! The aggregator stopping. tonic's graceful shutdown waits for every connection to close, and
//! report streams and `StreamIsActive` streams would never end on their own: each of them watches
//! [`Stopping`] and ends when it fires, so a SIGTERM finishes.

use tokio::sync::watch;

/// Fires once: [`Stop::stop`] has been called, or the [`Stop`] is gone.
#[derive(Debug, Clone)]
pub struct Stopping(watch::Receiver<bool>);

/// What [`Stopping`] waits for.
#[derive(Debug)]
pub struct Stop(watch::Sender<bool>);

pub fn channel() -> (Stop, Stopping) {
    let (tx, rx) = watch::channel(false);
    (Stop(tx), Stopping(rx))
}

impl Stop {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Stopping {
    /// Completes when the aggregator is stopping.
    pub async fn wait(&self) {
        // An error means the `Stop` was dropped: whoever could have stopped us is gone.
        let _ = self.0.clone().wait_for(|stopping| *stopping).await;
    }

    pub fn is_stopping(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_on_stop_and_when_the_stop_is_dropped() {
        let (stop, stopping) = channel();
        assert!(!stopping.is_stopping());
        let waiter = tokio::spawn({
            let stopping = stopping.clone();
            async move { stopping.wait().await }
        });
        stop.stop();
        waiter.await.unwrap();
        assert!(stopping.is_stopping());
        stopping.wait().await;

        let (stop, stopping) = channel();
        drop(stop);
        assert!(stopping.is_stopping());
        stopping.wait().await;
    }
}
