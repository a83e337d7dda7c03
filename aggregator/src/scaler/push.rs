//! `StreamIsActive`'s answers. However many streams watch a workload (KEDA opens one per
//! ScaledObject, on one connection), one watcher per watched workload and `scaleToZeroAfter`
//! recomputes its activity: at once when its busy state changes, and on one ticker for the idle
//! deadline. Streams hear only changes; the transport's keepalive keeps them alive (a repeated
//! `true` would make KEDA run a scale check each time). The number of streams is capped, which
//! also bounds the workloads a caller can make the registry watch.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inflight_proto::externalscaler::IsActiveResponse;
use inflight_runtime::{lock, now_ms};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::registry::{Registry, WorkloadKey};
use crate::stopping::Stopping;

/// How often a watcher looks whether the idle deadline has passed.
const TICK: Duration = Duration::from_secs(1);

pub type PushStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

/// One workload as one `scaleToZeroAfter` sees it.
type Watched = (WorkloadKey, i64);

#[derive(Debug)]
pub struct Push {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    watched: Mutex<HashMap<Watched, Arc<watch::Sender<bool>>>>,
    streams: Arc<Semaphore>,
    max_streams: usize,
    refused: AtomicU64,
    stopping: Stopping,
}

impl Push {
    pub fn new(registry: Arc<Registry>, max_streams: usize, stopping: Stopping) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                watched: Mutex::default(),
                streams: Arc::new(Semaphore::new(max_streams)),
                max_streams,
                refused: AtomicU64::new(0),
                stopping,
            }),
        }
    }

    /// The workload's activity now, then each change; it ends with `UNAVAILABLE` when the
    /// aggregator stops.
    pub fn subscribe(&self, workload: WorkloadKey, delay_ms: i64) -> Result<PushStream, Status> {
        let inner = &self.inner;
        if inner.stopping.is_stopping() {
            return Err(Status::unavailable("the aggregator is shutting down"));
        }
        let Ok(permit) = inner.streams.clone().try_acquire_owned() else {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "{} StreamIsActive streams are open, the most --max-push-streams allows",
                inner.max_streams
            )));
        };
        let receiver = {
            let mut watched = lock(&inner.watched);
            let key = (workload, delay_ms);
            match watched.get(&key) {
                Some(sender) => sender.subscribe(),
                None => {
                    let active = inner.registry.is_active(&key.0, delay_ms, now_ms());
                    let sender = Arc::new(watch::Sender::new(active));
                    let receiver = sender.subscribe();
                    watched.insert(key.clone(), sender.clone());
                    tokio::spawn(inner.clone().watch(key, sender));
                    receiver
                }
            }
        };
        Ok(answers(receiver, permit))
    }

    /// Streams open and workloads watched, for `/metrics`.
    pub fn collector(&self) -> Box<dyn Collector> {
        Box::new(Census(self.inner.clone()))
    }
}

/// The receiver's values without repeats (a watch may coalesce `true, false, true` into one more
/// `true`), holding the stream's permit for as long as it is open.
fn answers(receiver: watch::Receiver<bool>, permit: OwnedSemaphorePermit) -> PushStream {
    let mut last = None;
    let changes = WatchStream::new(receiver).filter_map(move |active| {
        let _open = &permit;
        (last.replace(active) != Some(active)).then_some(Ok(IsActiveResponse { result: active }))
    });
    // The watch ends only when its watcher does, and that is only when the aggregator stops.
    let end = tokio_stream::once(Err(Status::unavailable("the aggregator is shutting down")));
    Box::pin(changes.chain(end))
}

impl Inner {
    async fn watch(self: Arc<Self>, key: Watched, sender: Arc<watch::Sender<bool>>) {
        let (workload, delay_ms) = (&key.0, key.1);
        let mut busy = self.registry.watch_busy(workload);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = busy.changed() => if changed.is_err() {
                    // The registry let go of the workload: watch its new entry.
                    busy = self.registry.watch_busy(workload);
                },
                _ = tick.tick() => {}
                () = sender.closed() => {
                    let mut watched = lock(&self.watched);
                    // A stream may have subscribed since; subscribing happens under this lock.
                    if sender.receiver_count() == 0 {
                        watched.remove(&key);
                        return;
                    }
                    continue;
                }
                () = self.stopping.wait() => {
                    lock(&self.watched).remove(&key);
                    return;
                }
            }
            let active = self.registry.is_active(workload, delay_ms, now_ms());
            sender.send_if_modified(|was| std::mem::replace(was, active) != active);
        }
    }
}

#[derive(Debug)]
struct Census(Arc<Inner>);

impl Collector for Census {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let open = inner
            .max_streams
            .saturating_sub(inner.streams.available_permits());
        let watched = lock(&inner.watched).len();
        for (name, help, value) in [
            ("push_streams", "StreamIsActive streams open now", open),
            (
                "push_watched",
                "Workloads (with a scaleToZeroAfter) that StreamIsActive streams watch",
                watched,
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&i64::try_from(value).unwrap_or(i64::MAX))?;
        }
        encoder
            .encode_descriptor(
                "push_streams_refused",
                "StreamIsActive streams refused at --max-push-streams",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                &inner.refused.load(Ordering::Relaxed),
                None,
            )?;
        Ok(())
    }
}
