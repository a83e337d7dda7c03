//! An HTTP/1.1 + h2c app: `/` answers after the configured latency,
//! `/sleep/MS` after MS milliseconds, `/status/N` with status N.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy)]
pub struct AppConfig {
    pub latency: Duration,
    /// Each request's latency is drawn uniformly from latency ± jitter.
    pub jitter: Duration,
}

pub async fn serve(listen: SocketAddr, config: AppConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(%listen, latency = ?config.latency, "demo app serving");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                continue;
            }
        };
        tokio::spawn(async move {
            let service =
                service_fn(move |r| async move { Ok::<_, Infallible>(answer(r, config).await) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>, config: AppConfig) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (head, arg) = (parts.next().unwrap_or(""), parts.next());
    let (status, delay) = match (head, arg.and_then(|a| a.parse::<u64>().ok())) {
        ("sleep", Some(ms)) => (StatusCode::OK, Duration::from_millis(ms)),
        ("status", Some(code)) => (
            u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST),
            Duration::ZERO,
        ),
        _ => (StatusCode::OK, jittered(config)),
    };
    tokio::time::sleep(delay).await;
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"hello from the inflight demo app\n",
    )));
    *response.status_mut() = status;
    response
}

fn jittered(config: AppConfig) -> Duration {
    if config.jitter.is_zero() {
        return config.latency;
    }
    let spread = config.jitter.as_secs_f64();
    let offset = (pseudo_random() * 2.0 - 1.0) * spread;
    Duration::from_secs_f64((config.latency.as_secs_f64() + offset).max(0.0))
}

/// A cheap random number in [0, 1): latency jitter needs no cryptography.
fn pseudo_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
