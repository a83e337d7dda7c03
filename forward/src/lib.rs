//! The proxy core: forwards one request to one upstream and hands back its
//! response, untouched but for hop-by-hop headers. It knows nothing of
//! counting or holding: the sidecar counts around it (`inflight_proxy::count`),
//! and the activator holds in front of it, with a [`Forwarder`] per ready pod.
//! [`server`] is the data port both serve requests on: one acceptor, a worker
//! thread per CPU, each connection under the same client limits, and a
//! [`server::Handler`] (the sidecar's counting proxy, the activator's holder)
//! for its requests.
//!
//! HTTP/1.x requests go over our own pool of HTTP/1.1 keep-alive connections
//! ([`Http1Pool`]); HTTP/2 requests over hyper's pool of multiplexed h2c
//! connections, so gRPC keeps its trailers and its streams; upgrades
//! (websocket) over a connection of their own. Bodies stream through in
//! both directions.

mod connect;
pub mod headers;
mod pool;
pub mod server;
mod upgrade;
mod upload;

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use connect::{set_tcp_keepalive, FixedConnector};
use hyper::upgrade::OnUpgrade;
use pool::{BoxError, SendError};
pub use pool::{Http1Pool, UpstreamBody};
pub use upgrade::Tunnel;
use upload::{RequestBody, Returnable};

/// Who answers when forwarding fails, in the body the client gets: the
/// sidecar speaks of "the app", the activator of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speaker {
    /// `inflight-proxy`, `inflight-activator`.
    pub component: &'static str,
    /// What the upstream is to the client: `the app`, `the pod`.
    pub upstream: &'static str,
}

/// How to reach the upstream and how to treat requests on the way.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Where every request goes (`127.0.0.1:8080`).
    pub upstream: Authority,
    /// Give up on an upstream that has not sent response headers this long
    /// after the client sent the whole request (504).
    pub timeout: Option<Duration>,
    /// Add `X-Forwarded-For` and `X-Forwarded-Proto`.
    pub forwarded_headers: bool,
    /// Peers whose own `X-Forwarded-For` and `X-Forwarded-Proto` are kept
    /// (appended to); from anyone else they are replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// TCP keepalive on connections to the upstream (see [`set_tcp_keepalive`]).
    pub tcp_keepalive: Duration,
    /// Close an upgraded connection that carried nothing either way this long.
    pub tunnel_idle_timeout: Duration,
}

/// Forwards requests to one upstream over pooled connections.
#[derive(Debug, Clone)]
pub struct Forwarder {
    config: ForwarderConfig,
    /// Upgrade requests: hyper's client hands over the upgraded connection.
    upgrades: Client<FixedConnector, RequestBody>,
    http2: Client<FixedConnector, RequestBody>,
    pool: Http1Pool,
}

/// A forwarded request's response, and for an upgrade, the tunnel to run
/// once the response has gone back to the client.
#[derive(Debug)]
pub struct Forwarded {
    pub response: Response<UpstreamBody>,
    pub tunnel: Option<Tunnel>,
}

/// A retryable forward that failed: why, and the request itself when it
/// never reached the upstream and may be sent again.
#[derive(Debug)]
pub struct Unanswered {
    pub error: ForwardError,
    pub request: Option<Request<Incoming>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream {upstream} refused the connection or could not be reached: {source}")]
    Connect {
        upstream: Authority,
        #[source]
        source: BoxError,
    },
    #[error("upstream {upstream} sent no response headers within {after:?}")]
    Timeout {
        upstream: Authority,
        after: Duration,
    },
    #[error("upstream {upstream} failed before responding: {source}")]
    Upstream {
        upstream: Authority,
        #[source]
        source: BoxError,
    },
}

impl ForwardError {
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The response the client gets: the status and a short body that says
    /// what went wrong in general terms. The cause, which names our
    /// internals, is for the log.
    pub fn to_response(&self, speaker: Speaker) -> Response<Full<Bytes>> {
        let what = match self {
            ForwardError::Connect { .. } => "is not accepting connections",
            ForwardError::Timeout { .. } => "did not respond in time",
            ForwardError::Upstream { .. } => "failed before responding",
        };
        let body = format!("{}: {} {what}\n", speaker.component, speaker.upstream);
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }

    /// This error and its causes, for the log: hyper's own messages are
    /// terse, the root cause says what happened.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            // Our messages already carry their immediate source.
            let c_text = c.to_string();
            if !text.contains(&c_text) {
                text.push_str(": ");
                text.push_str(&c_text);
            }
            cause = c.source();
        }
        text
    }
}

impl Forwarder {
    pub fn new(config: ForwarderConfig) -> Self {
        let connector = FixedConnector::new(config.upstream.clone(), config.tcp_keepalive);
        let mut upgrades = Client::builder(TokioExecutor::new());
        // An upgraded connection is never returned to a pool.
        upgrades.pool_max_idle_per_host(0);
        let mut http2 = Client::builder(TokioExecutor::new());
        http2
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_adaptive_window(true);
        Self {
            upgrades: upgrades.build(connector.clone()),
            http2: http2.build(connector),
            pool: Http1Pool::new(config.upstream.clone(), config.tcp_keepalive),
            config,
        }
    }

    /// The HTTP/1.1 pool, for its figures.
    pub fn http1_pool(&self) -> &Http1Pool {
        &self.pool
    }

    pub fn upstream(&self) -> &Authority {
        &self.config.upstream
    }

    /// Sends `request` upstream and returns the response headers as soon as
    /// they arrive. Dropping the returned future cancels the upstream request.
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Result<Forwarded, ForwardError> {
        let (parts, body) = request.into_parts();
        let (body, uploaded) = RequestBody::new(body, self.config.timeout.is_some());
        self.send(Request::from_parts(parts, body), uploaded, client)
            .await
            .map_err(|(error, _)| error)
    }

    /// As [`Forwarder::forward`], but a request that never reached the
    /// upstream comes back whole with the error, to be sent elsewhere: one
    /// whose connection could not be made, or, for an idempotent method, one
    /// whose connection failed before any response and before any of its
    /// body was read (RFC 9110, 9.2.2). The activator forwards to pods that
    /// have just started this way. It costs a copy of the request head.
    pub async fn forward_retryable(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Result<Forwarded, Unanswered> {
        let (mut parts, body) = request.into_parts();
        let returnable = Returnable::new(body);
        let (body, uploaded) =
            RequestBody::returnable(returnable.clone(), self.config.timeout.is_some());
        let mut out = Request::new(body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = parts.uri.clone();
        *out.version_mut() = parts.version;
        *out.headers_mut() = parts.headers.clone();
        if let Some(upgrade) = parts.extensions.remove::<OnUpgrade>() {
            out.extensions_mut().insert(upgrade);
        }
        match self.send(out, uploaded, client).await {
            Ok(forwarded) => Ok(forwarded),
            Err((error, upgrade)) => {
                let never_reached = match &error {
                    ForwardError::Connect { .. } => true,
                    ForwardError::Upstream { .. } => parts.method.is_idempotent(),
                    ForwardError::Timeout { .. } => false,
                };
                let request = never_reached
                    .then(|| returnable.take_unread())
                    .flatten()
                    .map(|body| {
                        if let Some(upgrade) = upgrade {
                            parts.extensions.insert(upgrade);
                        }
                        Request::from_parts(parts, body)
                    });
                Err(Unanswered { error, request })
            }
        }
    }

    /// Sends a request whose body is ready to go; on failure the client's
    /// upgrade comes back with the error, for a retry.
    async fn send(
        &self,
        mut request: Request<RequestBody>,
        uploaded: Option<upload::Uploaded>,
        client: SocketAddr,
    ) -> Result<Forwarded, (ForwardError, Option<OnUpgrade>)> {
        let http2 = request.version() == Version::HTTP_2;
        let upgrade = if http2 {
            None
        } else {
            headers::upgrade_request(request.headers())
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));

        *request.uri_mut() = self.upstream_uri(request.uri(), http2);
        if !http2 {
            *request.version_mut() = Version::HTTP_11;
        }
        let headers = request.headers_mut();
        headers::strip_hop_by_hop(headers);
        if let Some(protocol) = upgrade {
            headers::set_upgrade(headers, protocol);
        }
        if self.config.forwarded_headers {
            let peer = client.ip().to_canonical();
            let trusted = self
                .config
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&peer));
            headers::add_forwarded(headers, peer, "http", trusted);
        }

        let sent = async {
            if !http2 && client_upgrade.is_none() {
                return self.pool.send(request).await;
            }
            let client = if http2 { &self.http2 } else { &self.upgrades };
            match client.request(request).await {
                Ok(response) => Ok(response.map(UpstreamBody::plain)),
                Err(e) if e.is_connect() => Err(SendError::Connect(e.into())),
                Err(e) => Err(SendError::Upstream(e.into())),
            }
        };
        let result = match self.config.timeout {
            Some(after) => {
                // The app's time starts once it has the whole request: a
                // slow upload is the client's time, not the app's.
                let late = async move {
                    if let Some(uploaded) = uploaded {
                        let _ = uploaded.await;
                    }
                    tokio::time::sleep(after).await;
                };
                tokio::select! {
                    biased;
                    result = sent => result,
                    () = late => {
                        return Err((ForwardError::Timeout {
                            upstream: self.config.upstream.clone(),
                            after,
                        }, client_upgrade))
                    }
                }
            }
            None => sent.await,
        };
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                let upstream = self.config.upstream.clone();
                let error = match error {
                    SendError::Connect(source) => ForwardError::Connect { upstream, source },
                    SendError::Upstream(source) => ForwardError::Upstream { upstream, source },
                };
                return Err((error, client_upgrade));
            }
        };

        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_protocol = headers::upgrade_request(response.headers());
        headers::strip_hop_by_hop(response.headers_mut());
        let tunnel = match (client_upgrade, switching) {
            (Some(client_side), true) => {
                if let Some(protocol) = upstream_protocol {
                    headers::set_upgrade(response.headers_mut(), protocol);
                }
                let upstream_side = hyper::upgrade::on(&mut response);
                Some(Tunnel::new(
                    client_side,
                    upstream_side,
                    self.config.tunnel_idle_timeout,
                ))
            }
            _ => None,
        };
        Ok(Forwarded { response, tunnel })
    }

    /// The upstream request's URI. HTTP/1.1 carries the client's `Host`
    /// header on; HTTP/2 carries the authority in the URI, so it is kept
    /// (the connector ignores it and always dials the upstream).
    fn upstream_uri(&self, original: &Uri, http2: bool) -> Uri {
        let authority = match original.authority() {
            Some(authority) if http2 => authority.clone(),
            _ => self.config.upstream.clone(),
        };
        let path = original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query = Some(path);
        // Scheme, authority and path are all set, so this cannot fail; fall
        // back to the original rather than panic if it ever did.
        Uri::from_parts(parts).unwrap_or_else(|_| original.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_error_answer_names_who_speaks_and_of_what() {
        let e = ForwardError::Timeout {
            upstream: Authority::from_static("10.0.0.1:15080"),
            after: Duration::from_secs(1),
        };
        let speaker = Speaker {
            component: "inflight-activator",
            upstream: "the pod",
        };
        let r = e.to_response(speaker);
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"inflight-activator: the pod did not respond in time\n"
        );
    }
}
