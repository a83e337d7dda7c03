//! The admin server: `/metrics`, `/healthz`, `/readyz`, `/stats`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(request).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(error) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "admin connection ended with an error");
                }
            });
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz().await,
            "/stats" => self.stats_json(),
            "/metrics" => match crate::metrics::encode(&self.registry) {
                Ok(body) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    r
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz, /stats\n",
            ),
        }
    }

    async fn readyz(&self) -> Response<Full<Bytes>> {
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

    fn stats_json(&self) -> Response<Full<Bytes>> {
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
        let mut r = text(StatusCode::OK, body.to_string());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        r
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
