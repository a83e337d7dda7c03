//! The admin server: `/metrics`, `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry as Prometheus;
use tokio::net::TcpListener;

use crate::metrics;

pub async fn serve(listener: TcpListener, prometheus: Arc<Prometheus>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let prometheus = prometheus.clone();
                async move { Ok::<_, Infallible>(route(&request, &prometheus)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(request: &Request<Incoming>, prometheus: &Prometheus) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD\n".into(),
            "text/plain",
        );
    }
    match request.uri().path() {
        // Both servers are bound before the admin server starts: up means ready.
        "/healthz" | "/readyz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/metrics" => match metrics::encode(prometheus) {
            Ok(body) => text(
                StatusCode::OK,
                body,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n".into(),
                "text/plain",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n".into(),
            "text/plain",
        ),
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
