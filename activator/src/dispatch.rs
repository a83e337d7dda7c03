//! What every worker shares: the routes, the pods, the held requests, and the rule that joins
//! them. A request for a workload with a usable pod and nothing held before it goes at once;
//! otherwise it is held, and held requests are handed pods, oldest first, whenever a pod
//! becomes usable or one of this activator's requests to a pod ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use crate::hold::{Holds, Refused, Ticket};
use crate::metrics::Metrics;
use crate::pods::Pods;
use crate::routes::{Route, Routes};

/// The activator's shared state.
#[derive(Debug)]
pub struct Activator {
    routes: RwLock<Arc<Routes>>,
    routes_loaded: AtomicBool,
    pub pods: Pods,
    pub holds: Arc<Holds<Lease>>,
    /// A workload's first held request: report and probe at once, not at the next tick.
    pub(crate) wake_report: Notify,
    pub(crate) wake_probe: Notify,
    draining: AtomicBool,
    pub metrics: Metrics,
}

/// A place on a pod, taken for one request until its response ends (for an upgrade, until the
/// tunnel closes). Dropping it frees the place and hands it to what is held.
#[derive(Debug)]
pub struct Lease {
    activator: Arc<Activator>,
    route: Arc<Route>,
    data: SocketAddr,
}

impl Lease {
    /// The pod's proxy.
    pub fn pod(&self) -> SocketAddr {
        self.data
    }

    /// The forward failed before reaching the pod: ask its `/readyz` before using it again.
    pub fn failed(self) {
        self.activator.pods.failed(&self.route.backend(), self.data);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.activator.pods.done(&self.route.backend(), self.data);
        if self.activator.holds.held(&self.route.key()) > 0 {
            self.activator.dispatch(&self.route);
        }
    }
}

/// What becomes of a request when it arrives.
#[derive(Debug)]
pub enum Admission {
    /// A pod has room now.
    Now(Lease),
    Held(Ticket<Lease>),
    Refused(Refused),
}

impl Activator {
    pub fn new(max_workloads: usize, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            routes: RwLock::new(Arc::new(Routes::default())),
            routes_loaded: AtomicBool::new(false),
            pods: Pods::new(),
            holds: Holds::new(max_workloads),
            wake_report: Notify::new(),
            wake_probe: Notify::new(),
            draining: AtomicBool::new(false),
            metrics,
        })
    }

    pub fn routes(&self) -> Arc<Routes> {
        inflight_runtime::read(&self.routes).clone()
    }

    /// Replaces the routing table. Held requests whose HTTPAutoscaler is gone wait out their
    /// timeout: it may come back, and the client was told nothing yet.
    pub fn set_routes(self: &Arc<Self>, routes: Routes) {
        *inflight_runtime::write(&self.routes) = Arc::new(routes);
        self.routes_loaded.store(true, Ordering::Release);
        // A route may have changed its pods or its concurrency.
        self.dispatch_all();
    }

    /// Whether the routes have been loaded once: until then every host would be unknown.
    pub fn routes_loaded(&self) -> bool {
        self.routes_loaded.load(Ordering::Acquire)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A request for `route` arrives.
    pub fn admit(self: &Arc<Self>, route: &Arc<Route>) -> Admission {
        let key = route.key();
        // Nothing held before it: it may go at once.
        if self.holds.held(&key) == 0 {
            if let Some(lease) = self.lease(route) {
                return Admission::Now(lease);
            }
        }
        match self.holds.hold(&key, route.max_pending) {
            Ok(ticket) => {
                if ticket.first() {
                    self.wake_report.notify_one();
                    self.wake_probe.notify_one();
                }
                // A pod may have become usable between the look above and the hold.
                self.dispatch(route);
                Admission::Held(ticket)
            }
            Err(refused) => Admission::Refused(refused),
        }
    }

    /// Hands the held requests of `route` the pods that have room.
    pub fn dispatch(self: &Arc<Self>, route: &Arc<Route>) {
        let handed = self.holds.release(&route.key(), || self.lease(route));
        if handed > 0 {
            tracing::debug!(workload = %route.key(), handed, "held requests handed a pod");
        }
    }

    /// [`Activator::dispatch`] for every workload with requests held.
    pub fn dispatch_all(self: &Arc<Self>) {
        let routes = self.routes();
        for key in self.holds.waiting() {
            if let Some(route) = routes.workload(&key) {
                self.dispatch(&route);
            }
        }
    }

    fn lease(self: &Arc<Self>, route: &Arc<Route>) -> Option<Lease> {
        let data = self
            .pods
            .pick(&route.backend(), route.container_concurrency)?;
        Some(Lease {
            activator: self.clone(),
            route: route.clone(),
            data,
        })
    }
}
