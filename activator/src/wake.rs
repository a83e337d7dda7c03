//! Waking: what this activator holds, reported to every aggregator as a `HeldReport` on the
//! ingest stream. A workload's first held request is reported at once, so the aggregator's
//! `StreamIsActive` tells KEDA to scale it from zero within milliseconds; then every
//! `--report-interval` while anything is held, and once more when it is all gone.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use inflight_proto::v1::{HeldReport, HeldWorkload, Interval, PodIdentity, WorkloadRef};
use inflight_report::clock::WallClock;
use inflight_report::{Fanout, LinkState, ReportMetrics, Target, TokenFile};

use crate::dispatch::Activator;
use crate::hold;

/// The running reporter.
#[derive(Debug, Clone)]
pub struct Waker {
    fanout: Arc<Fanout<HeldReport>>,
}

impl Waker {
    /// Starts reporting what `activator` holds to `targets`, as `identity`.
    pub fn spawn(
        activator: Arc<Activator>,
        identity: PodIdentity,
        targets: Vec<Target>,
        interval: Duration,
        metrics: ReportMetrics,
        token: TokenFile,
    ) -> Self {
        let fanout = Fanout::spawn(targets, metrics.clone(), token);
        tokio::spawn(tick_loop(
            activator,
            identity,
            fanout.clone(),
            interval,
            metrics,
        ));
        Self { fanout }
    }

    pub fn links(&self) -> Vec<(std::net::SocketAddr, LinkState)> {
        self.fanout.states()
    }

    pub async fn flush(&self, timeout: Duration) {
        self.fanout.flush(timeout).await;
    }
}

async fn tick_loop(
    activator: Arc<Activator>,
    identity: PodIdentity,
    fanout: Arc<Fanout<HeldReport>>,
    interval: Duration,
    metrics: ReportMetrics,
) {
    let mut clock = WallClock::default();
    let mut last = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = activator.wake_report.notified() => {}
        }
        let now = Instant::now();
        let intervals = activator.holds.take_interval(now);
        let placed = clock.place(SystemTime::now(), now.saturating_duration_since(last));
        last = now;
        if let Some(ms) = placed.stepped_ms {
            metrics.clock_steps.inc();
            tracing::warn!(
                step_ms = ms,
                "the wall clock was stepped; reports follow the new clock"
            );
        }
        // Nothing held and nothing arrived: nothing to say (a workload is reported once more
        // after its last request leaves, with nothing held).
        if intervals.is_empty() {
            continue;
        }
        let report = HeldReport {
            activator: Some(identity.clone()),
            interval: Some(Interval {
                start_unix_ms: placed.start_unix_ms,
                length_ms: placed.length_ms.max(1),
            }),
            workloads: intervals.iter().filter_map(held_workload).collect(),
        };
        fanout.offer(&report);
    }
}

/// `namespace/kind/name` and its figures as the report carries them.
fn held_workload(i: &hold::Interval) -> Option<HeldWorkload> {
    let mut parts = i.workload.splitn(3, '/');
    let (namespace, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
    Some(HeldWorkload {
        workload: Some(WorkloadRef {
            namespace: namespace.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
        }),
        held: u32::try_from(i.held).unwrap_or(u32::MAX),
        avg_held: i.avg_held,
        arrived: i.arrived,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_workload_is_reported_by_its_parts() {
        let w = held_workload(&hold::Interval {
            workload: "shop/deployment/web".into(),
            held: 3,
            avg_held: 1.5,
            arrived: 4,
        });
        let w = w.unwrap_or_default();
        assert_eq!(
            w.workload,
            Some(WorkloadRef {
                namespace: "shop".into(),
                kind: "deployment".into(),
                name: "web".into()
            })
        );
        assert_eq!((w.held, w.arrived), (3, 4));
    }
}
