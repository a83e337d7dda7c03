//! The counting layer over the proxy core: a request is in flight from the
//! moment its headers arrive until its response body has been sent in full
//! (or, for an upgrade, until the tunnel closes; its latency is the time to
//! the 101). How it ended decides its class; if the client goes away first,
//! hyper drops the future or the body, the upstream request is dropped with
//! it, and the request counts as cancelled.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};

use inflight_forward::server::{Handler, KeepWhileOpen, Tunnels};
use inflight_forward::{Forwarder, Speaker, UpstreamBody};

use crate::stats::{Class, Stats};

/// How the sidecar names itself and its upstream when forwarding fails.
const SPEAKER: Speaker = Speaker {
    component: "inflight-proxy",
    upstream: "the app",
};

/// The body the proxy answers with: the upstream's, counted, or our own error.
pub type ProxyBody = Either<CountedBody, Full<Bytes>>;

/// Forwards and counts.
#[derive(Debug, Clone)]
pub struct CountingProxy {
    forwarder: Forwarder,
    stats: Arc<Stats>,
    /// The worker's shard of `stats`.
    shard: usize,
    tunnels: Tunnels,
}

impl Handler for CountingProxy {
    type Body = ProxyBody;
    type Error = <ProxyBody as Body>::Error;

    fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> impl std::future::Future<Output = Response<ProxyBody>> + Send {
        CountingProxy::handle(self, request, client)
    }

    fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }
}

impl CountingProxy {
    /// Counts in `stats`, in the shard of worker `shard`.
    pub fn new(forwarder: Forwarder, stats: Arc<Stats>, shard: usize) -> Self {
        Self {
            forwarder,
            stats,
            shard,
            tunnels: Tunnels::default(),
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The upgraded connections this proxy runs: they outlive the client
    /// connection they came from, so a drain waits for them apart.
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }

    pub async fn handle(
        &self,
        mut request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        // The kubelet's probes pass through but are not load.
        let guard = (!is_probe(&request)).then(|| InFlight::start(self.stats.clone(), self.shard));
        let http1 = request.version() < http::Version::HTTP_2;
        let keep = request.extensions_mut().remove::<KeepWhileOpen>();
        let mut response = self.respond(request, client, guard, keep).await;
        // While draining, a keep-alive client is told to reconnect, so its
        // next request finds a pod that is staying rather than a closing socket.
        if http1
            && self.stats.is_draining()
            && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
        {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        response
    }

    async fn respond(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        guard: Option<InFlight>,
        keep: Option<KeepWhileOpen>,
    ) -> Response<ProxyBody> {
        match self.forwarder.forward(request, client).await {
            Ok(forwarded) => {
                let (parts, body) = forwarded.response.into_parts();
                if let Some(tunnel) = forwarded.tunnel {
                    // The upgraded connection stays in flight for its whole
                    // life, but its latency is the time to the 101: a tunnel
                    // open for hours is no slow request.
                    let mut guard = guard;
                    if let Some(g) = guard.as_mut() {
                        g.class = Some(Class::from_status(parts.status));
                        g.latency = Some(g.started.elapsed());
                    }
                    let open = self.tunnels.open();
                    tokio::spawn(async move {
                        let _open = (open, keep);
                        if let Err(error) = tunnel.run().await {
                            tracing::debug!(%error, "upgraded connection ended with an error");
                        }
                        drop(guard);
                    });
                    return Response::from_parts(parts, Either::Left(CountedBody::uncounted(body)));
                }
                let body = match guard {
                    Some(guard) => CountedBody::new(body, guard, &parts),
                    None => CountedBody::uncounted(body),
                };
                Response::from_parts(parts, Either::Left(body))
            }
            Err(error) => {
                tracing::warn!(error = %error.chain(), "forwarding failed");
                if let Some(mut guard) = guard {
                    guard.class = Some(Class::ServerError);
                }
                error.to_response(SPEAKER).map(Either::Right)
            }
        }
    }
}

fn is_probe<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::USER_AGENT)
        .is_some_and(|ua| ua.as_bytes().starts_with(b"kube-probe/"))
}

/// One counted request. Dropping it ends the request: with its class if one
/// was decided, else as cancelled.
#[derive(Debug)]
struct InFlight {
    stats: Arc<Stats>,
    shard: usize,
    started: Instant,
    class: Option<Class>,
    /// The latency to record, when it is not the time until the end.
    latency: Option<std::time::Duration>,
}

impl InFlight {
    fn start(stats: Arc<Stats>, shard: usize) -> Self {
        let started = Instant::now();
        stats.start(shard, started);
        Self {
            stats,
            shard,
            started,
            class: None,
            latency: None,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        let class = self.class.unwrap_or(Class::Cancelled);
        let latency = self
            .latency
            .unwrap_or_else(|| now.saturating_duration_since(self.started));
        self.stats.end(self.shard, now, class, latency);
    }
}

fn grpc_failed(headers: &HeaderMap) -> Option<bool> {
    headers
        .get("grpc-status")
        .map(|status| status.as_bytes() != b"0")
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The upstream's response body, passed through frame by frame; ends the
/// request's count when the last frame has gone.
#[derive(Debug)]
pub struct CountedBody {
    inner: UpstreamBody,
    guard: Option<InFlight>,
    class: Class,
    grpc: bool,
}

impl CountedBody {
    fn uncounted(inner: UpstreamBody) -> Self {
        Self {
            inner,
            guard: None,
            class: Class::Success,
            grpc: false,
        }
    }

    fn new(inner: UpstreamBody, guard: InFlight, parts: &http::response::Parts) -> Self {
        let grpc = is_grpc(&parts.headers);
        let mut class = Class::from_status(parts.status);
        // A trailers-only gRPC response carries its status in the headers.
        if grpc && grpc_failed(&parts.headers) == Some(true) {
            class = Class::GrpcFailure;
        }
        let mut body = Self {
            inner,
            guard: Some(guard),
            class,
            grpc,
        };
        // hyper never polls a body that is already at its end (HEAD, 204…).
        if body.inner.is_end_stream() {
            body.finish(None);
        }
        body
    }

    fn finish(&mut self, class: Option<Class>) {
        if let Some(mut guard) = self.guard.take() {
            guard.class = Some(class.unwrap_or(self.class));
        }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => Some(None),
            Poll::Ready(Some(Err(_))) => Some(Some(Class::ServerError)),
            Poll::Ready(Some(Ok(frame))) => match frame.trailers_ref() {
                Some(trailers) if this.grpc && grpc_failed(trailers) == Some(true) => {
                    Some(Some(Class::GrpcFailure))
                }
                Some(_) => Some(None),
                None => this.inner.is_end_stream().then_some(None),
            },
            Poll::Pending => None,
        };
        if let Some(class) = ended {
            this.finish(class);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
