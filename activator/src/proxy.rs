//! The activator's requests: routed by host, sent at once to a pod with room, or held until one
//! has room; sent again when the pod could not take them (a pod that has just started may refuse
//! its first connection), so a client never gets a 502 from a pod coming up. A response to a
//! request that was held says so and for how long in `X-Inflight-Cold-Start`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use inflight_forward::server::{Handler, KeepWhileOpen, Tunnels};
use inflight_forward::{Forwarded, Forwarder, ForwarderConfig, Speaker, Unanswered, UpstreamBody};
use inflight_runtime::lock;

use crate::dispatch::{Activator, Admission, Lease};
use crate::hold;
use crate::metrics::Outcome;

/// How the activator names itself and its upstream in the bodies it answers with.
pub const SPEAKER: Speaker = Speaker {
    component: "inflight-activator",
    upstream: "the pod",
};

pub use inflight_proto::names::COLD_START_HEADER;

/// Seconds a client is asked to wait before trying again after a 503.
const RETRY_AFTER_SECONDS: &str = "1";

/// A pod's connections kept per worker at most; a worker that has talked to more forgets those of
/// pods that are gone.
const MAX_FORWARDERS: usize = 1024;

pub type ActivatorBody = Either<LeasedBody, Full<Bytes>>;

/// One worker's handler: its own connection pools, one per pod.
#[derive(Debug)]
pub struct HoldingProxy {
    activator: Arc<Activator>,
    /// The template of each pod's forwarder; its upstream is set per pod.
    forwarding: ForwarderConfig,
    forwarders: Mutex<HashMap<SocketAddr, Forwarder>>,
    tunnels: Tunnels,
}

impl Handler for HoldingProxy {
    type Body = ActivatorBody;
    type Error = <ActivatorBody as Body>::Error;

    fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> impl std::future::Future<Output = Response<ActivatorBody>> + Send {
        HoldingProxy::handle(self, request, client)
    }

    fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }
}

impl HoldingProxy {
    pub fn new(activator: Arc<Activator>, forwarding: ForwarderConfig) -> Self {
        Self {
            activator,
            forwarding,
            forwarders: Mutex::new(HashMap::new()),
            tunnels: Tunnels::default(),
        }
    }

    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ActivatorBody> {
        // hyper drops this future when the client goes away before its response: counted so.
        let mut gone = ClientGone(Some(&self.activator.metrics));
        let response = self.route_and_forward(request, client).await;
        gone.0 = None;
        response
    }

    async fn route_and_forward(
        &self,
        mut request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ActivatorBody> {
        let arrived = Instant::now();
        let metrics = &self.activator.metrics;
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        let route = match self.activator.routes().lookup(authority.as_deref()) {
            Ok(route) => route,
            Err(no_route) => {
                metrics.request(Outcome::NoRoute);
                return answer(StatusCode::NOT_FOUND, &no_route.to_string(), false);
            }
        };
        let keep = request.extensions_mut().remove::<KeepWhileOpen>();
        let deadline = arrived + route.timeout;
        let mut held = false;
        loop {
            let lease = match self.activator.admit(&route) {
                Admission::Now(lease) => lease,
                Admission::Held(ticket) => {
                    if !held {
                        request = detach_head(request);
                    }
                    held = true;
                    // Dropping the ticket (the client went away, hyper drops this future)
                    // leaves the queue.
                    let left = deadline.saturating_duration_since(Instant::now());
                    match ticket.wait(left).await {
                        Ok((lease, _)) => lease,
                        Err(hold::Unanswered::TimedOut(_)) => {
                            metrics.request(Outcome::TimedOut);
                            let why = format!(
                                "no pod of {} was ready within {}",
                                route.key(),
                                humantime::format_duration(route.timeout)
                            );
                            return answer(StatusCode::GATEWAY_TIMEOUT, &why, false);
                        }
                        Err(hold::Unanswered::Closed) => {
                            metrics.request(Outcome::Closed);
                            return answer(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "the activator is shutting down; try again",
                                true,
                            );
                        }
                    }
                }
                Admission::Refused(refused) => {
                    metrics.request(Outcome::Rejected);
                    return answer(StatusCode::SERVICE_UNAVAILABLE, &refused.to_string(), true);
                }
            };
            let sent_at = Instant::now();
            let forwarder = self.forwarder(lease.pod());
            // Boxed, with its forwarder: a connection's request future is allocated at its full
            // size when the connection opens, and a held request must not carry the forward's.
            let forward = async move { forwarder.forward_retryable(request, client).await };
            match Box::pin(forward).await {
                Ok(forwarded) => {
                    let waited = sent_at.saturating_duration_since(arrived);
                    if held {
                        metrics.request(Outcome::ForwardedHeld);
                        metrics.forwarded_after(waited);
                    } else {
                        metrics.request(Outcome::Forwarded);
                    }
                    return self.respond(forwarded, lease, held.then_some(waited), keep);
                }
                Err(Unanswered {
                    error,
                    request: Some(unsent),
                }) => {
                    metrics.retries.inc();
                    tracing::debug!(
                        pod = %lease.pod(),
                        workload = %route.key(),
                        error = %error.chain(),
                        "the pod did not take the request; sending it again"
                    );
                    lease.failed();
                    if Instant::now() >= deadline {
                        metrics.request(Outcome::TimedOut);
                        return answer(
                            StatusCode::GATEWAY_TIMEOUT,
                            &format!(
                                "no pod of {} took the request within {}",
                                route.key(),
                                humantime::format_duration(route.timeout)
                            ),
                            false,
                        );
                    }
                    request = unsent;
                }
                Err(Unanswered {
                    error,
                    request: None,
                }) => {
                    metrics.request(Outcome::Failed);
                    tracing::warn!(
                        pod = %lease.pod(),
                        workload = %route.key(),
                        error = %error.chain(),
                        "forward failed"
                    );
                    return error.to_response(SPEAKER).map(Either::Right);
                }
            }
        }
    }

    fn respond(
        &self,
        forwarded: Forwarded,
        lease: Lease,
        held_for: Option<Duration>,
        keep: Option<KeepWhileOpen>,
    ) -> Response<ActivatorBody> {
        let (mut parts, body) = forwarded.response.into_parts();
        if let Some(held_for) = held_for {
            if let Ok(value) = HeaderValue::from_str(&format!("{}ms", held_for.as_millis())) {
                parts.headers.insert(COLD_START_HEADER, value);
            }
        }
        if let Some(tunnel) = forwarded.tunnel {
            // The pod keeps the place for the tunnel's life: a websocket is a request in flight.
            let open = self.tunnels.open();
            tokio::spawn(async move {
                let _held = (open, keep, lease);
                if let Err(error) = tunnel.run().await {
                    tracing::debug!(%error, "upgraded connection ended with an error");
                }
            });
            return Response::from_parts(parts, Either::Left(LeasedBody::new(body, None)));
        }
        Response::from_parts(parts, Either::Left(LeasedBody::new(body, Some(lease))))
    }

    /// This worker's forwarder to the pod at `data`.
    fn forwarder(&self, data: SocketAddr) -> Forwarder {
        let mut forwarders = lock(&self.forwarders);
        if let Some(f) = forwarders.get(&data) {
            return f.clone();
        }
        if forwarders.len() >= MAX_FORWARDERS {
            forwarders.retain(|addr, _| self.activator.pods.knows(*addr));
            if forwarders.len() >= MAX_FORWARDERS {
                forwarders.clear();
            }
        }
        let mut config = self.forwarding.clone();
        // A socket address always makes an authority; the template's otherwise.
        if let Ok(upstream) = data.to_string().parse() {
            config.upstream = upstream;
        }
        let f = Forwarder::new(config);
        forwarders.insert(data, f.clone());
        f
    }
}

/// The request with its head in memory of its own. hyper's header values and path share the
/// connection's read buffer, and its next read (which watches for the client leaving) has
/// already taken a second: a request held long, in thousands, lets the first go.
fn detach_head(request: Request<Incoming>) -> Request<Incoming> {
    let (mut parts, body) = request.into_parts();
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        headers.append(name.clone(), copy);
    }
    parts.headers = headers;
    if let Ok(uri) = http::Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    Request::from_parts(parts, body)
}

/// Counts a request whose client went away before its response, unless disarmed.
struct ClientGone<'a>(Option<&'a crate::metrics::Metrics>);

impl Drop for ClientGone<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.0 {
            metrics.request(Outcome::ClientGone);
        }
    }
}

/// The activator's own answer: the status and a body that says why.
fn answer(status: StatusCode, why: &str, retry_after: bool) -> Response<ActivatorBody> {
    let body = format!("{}: {why}\n", SPEAKER.component);
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if retry_after {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
    }
    response
}

/// A pod's response body, which keeps the pod's place until it has been sent in full.
#[derive(Debug)]
pub struct LeasedBody {
    inner: UpstreamBody,
    lease: Option<Lease>,
}

impl LeasedBody {
    fn new(inner: UpstreamBody, lease: Option<Lease>) -> Self {
        let mut body = Self { inner, lease };
        // hyper never polls a body that is already at its end.
        if body.inner.is_end_stream() {
            body.lease = None;
        }
        body
    }
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None | Some(Err(_))) => this.lease = None,
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.lease = None,
            _ => {}
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
