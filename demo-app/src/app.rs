//! An HTTP/1.1 + h2c + gRPC app on one port. HTTP: `/` answers after the
//! configured latency, `/sleep/MS` after MS milliseconds, `/status/N` with
//! status N, `/healthz` at once. Requests with `content-type:
//! application/grpc*` go to the gRPC service `inflight.demo.v1.Demo`. A
//! websocket upgrade (HTTP/1.1, any path) is accepted: the app first says
//! `connected to <pod>`, then echoes every text and binary message.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use inflight_proto::demo::v1::demo_server::{Demo, DemoServer};
use inflight_proto::demo::v1::{CountReply, CountRequest, EchoReply, EchoRequest};
use tokio::net::TcpListener;
use tonic::body::Body;
use tower_service::Service;

/// After the shutdown signal, requests still running get this long before the
/// app exits anyway. Short: the app must be gone within a second of SIGTERM,
/// and a `Count` stream or a `/sleep/60000` would otherwise hold it for as
/// long as the client asked.
pub const DRAIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
pub struct AppConfig {
    pub latency: Duration,
    /// Each request's latency is drawn uniformly from latency ± jitter.
    pub jitter: Duration,
}

/// Serves on `listen` until `shutdown` completes, then lets the requests in
/// flight finish for up to [`DRAIN`] and returns.
pub async fn serve(
    listen: SocketAddr,
    config: AppConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let pod = pod_name();
    // The bound address, not `listen`: with port 0 this line is how a caller
    // learns the port.
    println!(
        "inflight-demo-app serving addr={} protocols=http1,h2c,grpc latency={} jitter={} pod={pod}",
        listener.local_addr()?,
        humantime::format_duration(config.latency),
        humantime::format_duration(config.jitter),
    );
    let pod: Arc<str> = pod.into();
    let grpc = DemoServer::new(DemoService {
        config,
        pod: pod.clone(),
    });
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    eprintln!("inflight-demo-app: accept failed: {error}");
                    // Out of file descriptors fails every accept at once;
                    // pausing keeps that from spinning a core.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let grpc = grpc.clone();
        let pod = pod.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = service_fn(move |r| route(r, config, pod.clone(), grpc.clone()));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(connection).await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    Ok(())
}

async fn route(
    request: Request<Incoming>,
    config: AppConfig,
    pod: Arc<str>,
    mut grpc: DemoServer<DemoService>,
) -> Result<Response<Body>, Infallible> {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_websocket(&request) {
        return Ok(websocket(request, pod));
    }
    if !is_grpc {
        return Ok(answer(request, config, &pod).await.map(Body::new));
    }
    poll_fn(|cx| Service::<Request<Incoming>>::poll_ready(&mut grpc, cx)).await?;
    grpc.call(request).await
}

fn is_websocket(request: &Request<Incoming>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        request.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// Accepts the upgrade (RFC 6455's handshake) and echoes on the upgraded connection.
fn websocket(mut request: Request<Incoming>, pod: Arc<str>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY) else {
        let mut refused = Response::new(Body::empty());
        *refused.status_mut() = StatusCode::BAD_REQUEST;
        return refused;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        if ws
            .send(Message::text(format!("connected to {pod}")))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

async fn answer(request: Request<Incoming>, config: AppConfig, pod: &str) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (head, arg) = (parts.next().unwrap_or(""), parts.next());
    if (head, arg) == ("healthz", None) {
        // Probes measure whether the app is up, not how slow it pretends to be.
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
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
    // The pod's name, so that a client behind a Service can tell which replica answered.
    let mut response = Response::new(Full::new(Bytes::from(format!(
        "hello from the inflight demo app on {pod}\n"
    ))));
    *response.status_mut() = status;
    response
}

#[derive(Debug, Clone)]
struct DemoService {
    config: AppConfig,
    pod: Arc<str>,
}

#[tonic::async_trait]
impl Demo for DemoService {
    async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let EchoRequest { message, delay_ms } = request.into_inner();
        tokio::time::sleep(jittered(self.config) + Duration::from_millis(delay_ms.into())).await;
        Ok(tonic::Response::new(EchoReply {
            message,
            pod: self.pod.to_string(),
        }))
    }

    type CountStream = Pin<Box<dyn Stream<Item = Result<CountReply, tonic::Status>> + Send>>;

    async fn count(
        &self,
        request: tonic::Request<CountRequest>,
    ) -> Result<tonic::Response<Self::CountStream>, tonic::Status> {
        let CountRequest { n, interval_ms } = request.into_inner();
        let interval = Duration::from_millis(interval_ms.into());
        // u64 so that `n = u32::MAX` ends instead of overflowing.
        let replies = futures_util::stream::unfold(1u64, move |i| async move {
            let i_u32 = u32::try_from(i).ok().filter(|i| *i <= n)?;
            if i > 1 {
                tokio::time::sleep(interval).await;
            }
            Some((Ok(CountReply { i: i_u32 }), i + 1))
        });
        Ok(tonic::Response::new(Box::pin(replies)))
    }
}

/// `POD_NAME` (set from the downward API), else the kernel's hostname, which
/// Kubernetes sets to the pod's name. Read from /proc because the image has
/// no `hostname` binary and asking libc would take `unsafe`.
fn pod_name() -> String {
    let non_empty = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    std::env::var("POD_NAME")
        .ok()
        .and_then(non_empty)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(non_empty)
        })
        .or_else(|| std::env::var("HOSTNAME").ok().and_then(non_empty))
        .unwrap_or_else(|| "unknown".to_owned())
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
