//! The admin server: `/metrics`, `/healthz`, `/readyz`, `/stats`.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use inflight_runtime::admin::{self, text, AdminResponse};
use inflight_runtime::http::ConnLimits;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::report::Reporter;
use crate::stats::{Class, Stats};

#[derive(Debug)]
pub struct Admin {
    pub stats: Arc<Stats>,
    pub registry: Registry,
    pub reporter: Reporter,
    /// The app's address, which `/readyz` dials.
    pub upstream: String,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, limits: ConnLimits) {
        admin::serve(listener, limits, move |request| {
            let admin = self.clone();
            async move { admin.route(request).await }
        })
        .await;
    }

    async fn route(&self, request: Request<Incoming>) -> AdminResponse {
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz().await,
            "/stats" => self.stats_json(),
            "/metrics" => admin::metrics(&self.registry),
            _ => admin::not_found("/metrics, /healthz, /readyz, /stats"),
        }
    }

    async fn readyz(&self) -> AdminResponse {
        if self.stats.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        let dial = tokio::net::TcpStream::connect(self.upstream.as_str());
        match tokio::time::timeout(Duration::from_secs(1), dial).await {
            Ok(Ok(_)) => text(StatusCode::OK, "ready\n"),
            Ok(Err(error)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "app at {} does not accept connections: {error}\n",
                    self.upstream
                ),
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "app at {} did not accept a connection within 1s\n",
                    self.upstream
                ),
            ),
        }
    }

    fn stats_json(&self) -> AdminResponse {
        let s = &self.stats;
        let responses: serde_json::Map<String, serde_json::Value> = Class::ALL
            .iter()
            .map(|c| (c.label().to_owned(), s.responses(*c).into()))
            .collect();
        let latency = s.latency();
        let aggregators: Vec<_> = self
            .reporter
            .links()
            .into_iter()
            .map(|(addr, state)| {
                serde_json::json!({"address": addr.to_string(), "connected": state.connected, "reports_sent": state.sent})
            })
            .collect();
        let body = serde_json::json!({
            "in_flight": s.in_flight(),
            "requests_total": s.requests_total(),
            "responses": responses,
            "latency": {"count": latency.count(), "sum_seconds": latency.sum_seconds},
            "draining": s.is_draining(),
            "aggregators": aggregators,
        });
        admin::json(&body)
    }
}
