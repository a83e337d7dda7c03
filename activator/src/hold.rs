//! Holding: per workload, a bounded queue of the requests waiting for a ready pod. A request gets
//! a [`Ticket`] or is refused at once (the queue is full: 503 with `Retry-After`); a ticket is
//! answered with a pod to forward to, in arrival order, or gives up after the route's timeout
//! (504). A client that goes away drops its ticket, which leaves the queue at once: nothing waits
//! for a request nobody will read. The queue keeps the time-weighted count of what it holds for
//! the activator's report.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inflight_report::{average, Integral};
use inflight_runtime::lock;
use tokio::sync::oneshot;

/// Why a request was not held; the 503's body says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{workload} already has {max} requests waiting for a ready pod at this activator")]
    Full { workload: String, max: usize },
    #[error("this activator already holds requests for {max} workloads")]
    TooManyWorkloads { max: usize },
}

/// Why a held request was not given a pod; the 504's body says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    #[error("no pod was ready within {0:?}")]
    TimedOut(Duration),
    #[error("the activator is shutting down")]
    Closed,
}

#[derive(Debug)]
struct Queue<T> {
    waiting: VecDeque<(u64, oneshot::Sender<T>)>,
    next: u64,
    held: Integral,
    arrived: u64,
}

/// What one workload's queue did over an interval, for the activator's `HeldReport`.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub workload: String,
    pub held: u64,
    pub avg_held: f64,
    pub arrived: u64,
}

/// The queues of every workload this activator holds requests for.
#[derive(Debug)]
pub struct Holds<T> {
    queues: Mutex<HashMap<String, Queue<T>>>,
    max_workloads: usize,
    interval_start: Mutex<Instant>,
}

impl<T> Holds<T> {
    pub fn new(max_workloads: usize) -> Arc<Self> {
        Arc::new(Self {
            queues: Mutex::new(HashMap::new()),
            max_workloads: max_workloads.max(1),
            interval_start: Mutex::new(Instant::now()),
        })
    }

    /// Holds a request for `workload`, unless `max_pending` already wait.
    pub fn hold(
        self: &Arc<Self>,
        workload: &str,
        max_pending: usize,
    ) -> Result<Ticket<T>, Refused> {
        let now = Instant::now();
        let mut queues = lock(&self.queues);
        if !queues.contains_key(workload) && queues.len() >= self.max_workloads {
            return Err(Refused::TooManyWorkloads {
                max: self.max_workloads,
            });
        }
        let q = queues.entry(workload.to_owned()).or_insert_with(|| Queue {
            waiting: VecDeque::new(),
            next: 0,
            held: Integral::new(now),
            arrived: 0,
        });
        if q.waiting.len() >= max_pending.max(1) {
            return Err(Refused::Full {
                workload: workload.to_owned(),
                max: max_pending.max(1),
            });
        }
        let first = q.waiting.is_empty();
        let (tx, rx) = oneshot::channel();
        let id = q.next;
        q.next = q.next.wrapping_add(1);
        q.waiting.push_back((id, tx));
        q.held.up(now);
        q.arrived = q.arrived.saturating_add(1);
        Ok(Ticket {
            holds: self.clone(),
            workload: workload.to_owned(),
            id,
            rx,
            since: now,
            first,
        })
    }

    /// Hands the waiting requests of `workload`, oldest first, what `next` yields (a pod to forward
    /// to), until either runs out; returns how many were handed one.
    pub fn release(&self, workload: &str, mut next: impl FnMut() -> Option<T>) -> usize {
        let now = Instant::now();
        // A pod handed to a waiter whose client has just left goes to the next in line. Declared
        // before the lock so that one left over is dropped after it: dropping a `T` may release
        // again.
        let mut spare: Option<T> = None;
        let mut queues = lock(&self.queues);
        let Some(q) = queues.get_mut(workload) else {
            return 0;
        };
        let mut handed = 0;
        while let Some((id, tx)) = q.waiting.pop_front() {
            let Some(target) = spare.take().or_else(&mut next) else {
                q.waiting.push_front((id, tx));
                break;
            };
            q.held.down(now);
            match tx.send(target) {
                Ok(()) => handed += 1,
                Err(target) => spare = Some(target),
            }
        }
        handed
    }

    /// The workloads with requests waiting now.
    pub fn waiting(&self) -> Vec<String> {
        lock(&self.queues)
            .iter()
            .filter(|(_, q)| !q.waiting.is_empty())
            .map(|(w, _)| w.clone())
            .collect()
    }

    /// Requests waiting now per workload, of those with any, by name.
    pub fn by_workload(&self) -> Vec<(String, usize)> {
        let mut out: Vec<_> = lock(&self.queues)
            .iter()
            .filter(|(_, q)| !q.waiting.is_empty())
            .map(|(w, q)| (w.clone(), q.waiting.len()))
            .collect();
        out.sort_unstable();
        out
    }

    /// Requests waiting now, in all.
    pub fn held_total(&self) -> usize {
        lock(&self.queues).values().map(|q| q.waiting.len()).sum()
    }

    /// Answers every waiting request [`Unanswered::Closed`] (the activator is shutting down).
    pub fn close_all(&self) {
        let now = Instant::now();
        let mut queues = lock(&self.queues);
        for q in queues.values_mut() {
            for _ in q.waiting.drain(..) {
                q.held.down(now);
            }
        }
    }

    /// Requests waiting for `workload` now.
    pub fn held(&self, workload: &str) -> usize {
        lock(&self.queues)
            .get(workload)
            .map_or(0, |q| q.waiting.len())
    }

    /// Closes the interval: each workload's held count, its time-weighted average and arrivals.
    /// A workload with nothing held and nothing arrived is forgotten (its queue goes).
    pub fn take_interval(&self, now: Instant) -> Vec<Interval> {
        let mut start = lock(&self.interval_start);
        let length = now.saturating_duration_since(*start);
        *start = (*start).max(now);
        let mut queues = lock(&self.queues);
        let mut out = Vec::new();
        queues.retain(|workload, q| {
            let area = q.held.take(now);
            let held = q.held.level();
            if held == 0 && area == 0 && q.arrived == 0 {
                return false;
            }
            out.push(Interval {
                workload: workload.clone(),
                held,
                avg_held: average(area, length, held),
                arrived: std::mem::take(&mut q.arrived),
            });
            true
        });
        out.sort_by(|a, b| a.workload.cmp(&b.workload));
        out
    }

    fn leave(&self, workload: &str, id: u64) {
        let mut queues = lock(&self.queues);
        if let Some(q) = queues.get_mut(workload) {
            if let Some(at) = q.waiting.iter().position(|(i, _)| *i == id) {
                q.waiting.remove(at);
                q.held.down(Instant::now());
            }
        }
    }
}

/// A held request's place in its workload's queue. Dropping it (the client went away) leaves the
/// queue.
#[derive(Debug)]
pub struct Ticket<T> {
    holds: Arc<Holds<T>>,
    workload: String,
    id: u64,
    rx: oneshot::Receiver<T>,
    since: Instant,
    first: bool,
}

impl<T> Ticket<T> {
    /// Whether nothing else was waiting for the workload when this request was held: the moment
    /// to wake it.
    pub fn first(&self) -> bool {
        self.first
    }

    /// The pod to forward to and how long the request was held, or why there is none.
    pub async fn wait(mut self, timeout: Duration) -> Result<(T, Duration), Unanswered> {
        match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(target)) => Ok((target, self.since.elapsed())),
            Ok(Err(_)) => Err(Unanswered::Closed),
            Err(_) => Err(Unanswered::TimedOut(timeout)),
        }
    }
}

impl<T> Drop for Ticket<T> {
    fn drop(&mut self) {
        self.holds.leave(&self.workload, self.id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const WEB: &str = "shop/deployment/web";

    #[tokio::test]
    async fn held_requests_get_a_pod_in_arrival_order_each_once() {
        let holds = Holds::<u32>::new(8);
        let tickets: Vec<_> = (0..1000).map(|_| holds.hold(WEB, 1000).unwrap()).collect();
        assert_eq!(holds.held(WEB), 1000);
        let mut pods = 0..;
        assert_eq!(holds.release(WEB, || pods.next()), 1000);
        for (i, t) in tickets.into_iter().enumerate() {
            let (pod, _) = t.wait(Duration::from_secs(5)).await.unwrap();
            assert_eq!(pod as usize, i);
        }
        assert_eq!(holds.held(WEB), 0);
    }

    #[tokio::test]
    async fn release_stops_when_the_pods_run_out_and_the_rest_keep_waiting() {
        let holds = Holds::<u32>::new(8);
        let tickets: Vec<_> = (0..3).map(|_| holds.hold(WEB, 10).unwrap()).collect();
        let mut one = Some(7);
        assert_eq!(holds.release(WEB, || one.take()), 1);
        assert_eq!(holds.held(WEB), 2);
        assert_eq!(holds.release("other", || Some(1)), 0);
        let mut it = tickets.into_iter();
        assert_eq!(
            it.next()
                .unwrap()
                .wait(Duration::from_secs(5))
                .await
                .unwrap()
                .0,
            7
        );
    }

    #[test]
    fn a_full_queue_and_too_many_workloads_are_refused_with_the_reason() {
        let holds = Holds::<u32>::new(1);
        let _a = holds.hold(WEB, 2).unwrap();
        let _b = holds.hold(WEB, 2).unwrap();
        let full = holds.hold(WEB, 2).unwrap_err();
        assert_eq!(
            full,
            Refused::Full {
                workload: WEB.into(),
                max: 2
            }
        );
        assert!(full.to_string().contains("2 requests waiting"));
        assert_eq!(
            holds.hold("shop/deployment/api", 2).unwrap_err(),
            Refused::TooManyWorkloads { max: 1 }
        );
    }

    #[tokio::test]
    async fn a_client_that_leaves_or_times_out_leaves_the_queue_and_its_pod_goes_to_the_next() {
        let holds = Holds::<u32>::new(8);
        let gone = holds.hold(WEB, 10).unwrap();
        let late = holds.hold(WEB, 10).unwrap();
        let waiting = holds.hold(WEB, 10).unwrap();
        drop(gone);
        assert_eq!(holds.held(WEB), 2);
        assert_eq!(
            late.wait(Duration::from_millis(1)).await.unwrap_err(),
            Unanswered::TimedOut(Duration::from_millis(1))
        );
        assert_eq!(holds.held(WEB), 1);
        let mut pods = vec![9];
        assert_eq!(holds.release(WEB, || pods.pop()), 1);
        assert_eq!(waiting.wait(Duration::from_secs(5)).await.unwrap().0, 9);
    }

    #[test]
    fn the_interval_reports_held_arrived_and_forgets_idle_workloads() {
        let holds = Holds::<u32>::new(8);
        let t0 = Instant::now();
        let ticket = holds.hold(WEB, 10).unwrap();
        let first = holds.take_interval(t0 + Duration::from_secs(1));
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].held, first[0].arrived), (1, 1));
        assert!(first[0].avg_held > 0.0 && first[0].avg_held <= 1.0);
        // Still held over the next interval: reported again, with nothing new arrived.
        let second = holds.take_interval(t0 + Duration::from_secs(2));
        assert_eq!((second[0].held, second[0].arrived), (1, 0));
        assert!((second[0].avg_held - 1.0).abs() < 1e-9);
        // Gone, and nothing held or arrived since: the workload is forgotten.
        drop(ticket);
        let later = Instant::now().max(t0 + Duration::from_secs(2));
        let third = holds.take_interval(later);
        assert!(third.iter().all(|i| i.held == 0 && i.arrived == 0));
        assert!(holds
            .take_interval(later + Duration::from_secs(1))
            .is_empty());
    }
}
