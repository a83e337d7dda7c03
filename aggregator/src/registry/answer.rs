//! The scaler's answers: the windowed value and whether a workload is active.

use inflight_runtime::lock;
use tokio::sync::watch;

use super::{seconds, Metric, NotObserved, Registry, WorkloadKey};

impl Registry {
    /// The scaler's value: concurrency (stable window, or the burst window in burst mode, see
    /// [`Burst`]) or request rate (requests/s over the window). During warm-up there is none: a
    /// workload whose pods have not found this process yet would read less than it serves, or 0.
    /// After it, a workload nobody reports for reads 0.
    pub fn value(
        &self,
        key: &WorkloadKey,
        metric: Metric,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<f64, NotObserved> {
        if !self.warmed_up(now_ms) {
            return Err(NotObserved {
                observed_ms: now_ms.saturating_sub(self.settings.started_ms),
                warm_up_ms: self.settings.warm_up_ms,
            });
        }
        let Some(workload) = self.existing(key) else {
            return Ok(0.0);
        };
        let mut w = lock(&workload);
        // Never `clamp`: it panics when the bounds cross.
        let window_ms = window_ms.min(self.settings.max_window_ms).max(1000);
        let seconds = seconds(window_ms);
        if seconds > w.ring.capacity() {
            // The older seconds of the longer window were never kept: until they pass, average
            // over what the ring held.
            w.history_from_ms = now_ms - i64::from(w.ring.capacity()) * 1000;
            w.ring.grow(seconds);
        }
        // Whole seconds only: the second being filled holds only the part reported so far, and
        // reading a fraction of it as if it were spread over the whole second under-reads it.
        let end = w
            .complete_until(now_ms, self.settings.max_report_interval_ms)
            .div_euclid(1000)
            * 1000;
        let since = self
            .settings
            .started_ms
            .max(w.history_from_ms)
            .saturating_add(999)
            .div_euclid(1000)
            * 1000;
        let stable = w.window(end, window_ms, since);
        Ok(match metric {
            Metric::RequestRate => stable.requests_per_second(),
            Metric::Concurrency => {
                let burst = w.window(end, self.settings.burst_ms, since);
                w.burst(window_ms)
                    .answer(stable.concurrency, burst.concurrency, window_ms, now_ms)
            }
        })
    }

    /// Active: something in flight or held now, or a request within `delay_ms`. A workload that
    /// has pods is not called inactive until `delay_ms` has passed since this process started:
    /// after a restart the aggregator does not know how long it has been idle. One without pods
    /// (at zero) is not woken by a restart: activators that list it holding nothing do not count.
    pub fn is_active(&self, key: &WorkloadKey, delay_ms: i64, now_ms: i64) -> bool {
        let Some(workload) = self.existing(key) else {
            return false;
        };
        let w = lock(&workload);
        if *w.busy.borrow() {
            return true;
        }
        let recent = w.last_request_ms.is_some_and(|t| now_ms - t < delay_ms);
        recent || (!w.pods.is_empty() && now_ms - self.settings.started_ms < delay_ms)
    }

    /// Wakes whoever waits on a change of the workload's "something in flight or held".
    /// At the limits on workloads, a watch that never changes: the watcher then polls.
    pub fn watch_busy(&self, key: &WorkloadKey) -> watch::Receiver<bool> {
        match self.workload(&key.as_ref()) {
            Ok((_, w)) => lock(&w).busy.subscribe(),
            Err(_) => watch::channel(false).1,
        }
    }
}
