//! The admin server: `/metrics`, `/healthz`, `/readyz`, `/stats`.

use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use inflight_runtime::admin::{self, text, AdminResponse};
use inflight_runtime::http::ConnLimits;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::dispatch::Activator;
use crate::metrics::Outcome;
use crate::wake::Waker;

#[derive(Debug)]
pub struct Admin {
    pub activator: Arc<Activator>,
    pub registry: Registry,
    pub waker: Waker,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, limits: ConnLimits) {
        admin::serve(listener, limits, move |request| {
            let admin = self.clone();
            async move { admin.route(&request) }
        })
        .await;
    }

    fn route(&self, request: &Request<Incoming>) -> AdminResponse {
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            // Out of the Services' endpoints while draining, and until it can route.
            "/readyz" if self.activator.draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" => admin::ready(
                self.activator.routes_loaded(),
                "the HTTPAutoscalers have not been listed yet",
            ),
            "/metrics" => admin::metrics(&self.registry),
            "/stats" => self.stats(),
            _ => admin::not_found("/metrics, /healthz, /readyz, /stats"),
        }
    }

    fn stats(&self) -> AdminResponse {
        let a = &self.activator;
        let held: serde_json::Map<String, serde_json::Value> = a
            .holds
            .by_workload()
            .into_iter()
            .map(|(w, n)| (w, n.into()))
            .collect();
        let outcomes: serde_json::Map<String, serde_json::Value> = [
            Outcome::Forwarded,
            Outcome::ForwardedHeld,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::Rejected,
            Outcome::NoRoute,
            Outcome::ClientGone,
            Outcome::Closed,
        ]
        .iter()
        .map(|o| (o.label().to_owned(), a.metrics.requests(*o).into()))
        .collect();
        let aggregators: Vec<_> = self
            .waker
            .links()
            .into_iter()
            .map(|(addr, state)| {
                serde_json::json!({"address": addr.to_string(), "connected": state.connected, "reports_sent": state.sent})
            })
            .collect();
        let pods: serde_json::Map<String, serde_json::Value> = a
            .pods
            .censuses()
            .into_iter()
            .map(|(backend, census)| (backend, serde_json::json!(census)))
            .collect();
        admin::json(&serde_json::json!({
            "held": held,
            "pods": pods,
            "held_total": a.holds.held_total(),
            "requests": outcomes,
            "retries": a.metrics.retries.get(),
            "routes": a.routes().len(),
            "draining": a.draining(),
            "aggregators": aggregators,
        }))
    }
}
