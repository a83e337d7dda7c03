//! The admin server: `/metrics`, `/healthz`, `/readyz`, `/stats`.

use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use inflight_runtime::admin::{self, text, AdminResponse};
use inflight_runtime::http::ConnLimits;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::drain::{Drain, Refused, TOKEN_HEADER};
use crate::report::Reporter;
use crate::stats::{Class, Stats};
use inflight_runtime::probe::Check as AppCheck;

#[derive(Debug)]
pub struct Admin {
    /// `/drain`, the app's preStop hook.
    pub drain: Arc<Drain>,
    pub stats: Arc<Stats>,
    pub registry: Registry,
    pub reporter: Reporter,
    /// How `/readyz` asks the app whether it is ready.
    pub app: AppCheck,
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
            "/drain" => {
                let token = request.headers().get(TOKEN_HEADER).map(|v| v.as_bytes());
                match self.drain.call(token).await {
                    Ok(()) => text(StatusCode::OK, "drained\n"),
                    Err(Refused::NotEnabled) => text(
                        StatusCode::NOT_FOUND,
                        "/drain is not served: no --drain-token\n",
                    ),
                    Err(Refused::BadToken) => text(
                        StatusCode::FORBIDDEN,
                        "/drain needs this pod's token in X-Inflight-Drain-Token\n",
                    ),
                }
            }
            _ => admin::not_found("/metrics, /healthz, /readyz, /stats, /drain"),
        }
    }

    async fn readyz(&self) -> AdminResponse {
        if self.stats.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        match self.app.check().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(not_ready) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{not_ready}\n")),
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
