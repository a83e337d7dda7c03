//! The admin server every inflight binary runs (`/metrics`, `/healthz`, `/readyz`, and whatever
//! else a binary adds): the accept loop with its client limits, and the responses they all give.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::http::{first_bytes, ConnLimits};

/// An admin response: always a small body in memory.
pub type AdminResponse = Response<Full<Bytes>>;

/// Limits of the admin port, as flags every binary takes. Its clients are the kubelet and
/// Prometheus: few connections, each sending its request at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct AdminLimits {
    /// Admin port: close a connection that has not sent a whole request head this long after
    /// opening or after its previous response.
    #[arg(
        long = "admin-header-read-timeout",
        env = "INFLIGHT_ADMIN_HEADER_READ_TIMEOUT",
        default_value = "10s",
        value_parser = positive_duration
    )]
    pub header_read_timeout: Duration,
    /// Admin port: connections open at once (more wait to be accepted).
    #[arg(
        long = "admin-max-connections",
        env = "INFLIGHT_ADMIN_MAX_CONNECTIONS",
        default_value_t = 64,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub max_connections: u16,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

impl From<AdminLimits> for ConnLimits {
    fn from(a: AdminLimits) -> Self {
        ConnLimits {
            header_read_timeout: a.header_read_timeout,
            max_connections: usize::from(a.max_connections),
            ..ConnLimits::default()
        }
    }
}

/// A duration flag that must be more than zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(d)
}

/// Serves `handler` on `listener` for ever, within `limits`. Only GET and HEAD reach the handler.
pub async fn serve<H, F>(listener: TcpListener, limits: ConnLimits, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = AdminResponse> + Send + 'static,
{
    let builder = limits.builder();
    let admission = limits.admission();
    loop {
        let Some(permit) = admission.permit().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, mostly: wait for some to close rather than spin.
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (handler, builder) = (handler.clone(), builder.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if first_bytes(&stream, limits.header_read_timeout)
                .await
                .is_none()
            {
                return;
            }
            let service = service_fn(move |request: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    if request.method() != Method::GET && request.method() != Method::HEAD {
                        return Ok::<_, Infallible>(text(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "only GET and HEAD\n",
                        ));
                    }
                    Ok(handler(request).await)
                }
            });
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> AdminResponse {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    with_type(status, body.into(), "text/plain; charset=utf-8")
}

/// A JSON response.
pub fn json(value: &serde_json::Value) -> AdminResponse {
    with_type(
        StatusCode::OK,
        Bytes::from(value.to_string()),
        "application/json",
    )
}

/// The OpenMetrics text of `registry`.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// `/metrics`: the OpenMetrics text of `registry`.
pub fn metrics(registry: &Registry) -> AdminResponse {
    match encode(registry) {
        Ok(body) => with_type(
            StatusCode::OK,
            Bytes::from(body),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
    }
}

/// 200 `ok` when `ready`, else 503 with `why`.
pub fn ready(ready: bool, why: &str) -> AdminResponse {
    if ready {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
    }
}

/// 404 listing what there is.
pub fn not_found(paths: &str) -> AdminResponse {
    text(StatusCode::NOT_FOUND, format!("not found: try {paths}\n"))
}
