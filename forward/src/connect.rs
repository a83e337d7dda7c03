//! A connector that always dials the one upstream, whatever authority the
//! request's URI carries, so HTTP/2 requests keep their `:authority`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

#[derive(Debug, Clone)]
pub struct FixedConnector {
    target: Uri,
    inner: HttpConnector,
}

/// Turns TCP keepalive on, so a peer that vanished without closing (a
/// half-open connection) is found: the first probe after `idle` without
/// traffic, then three more a third of that apart.
pub fn set_tcp_keepalive(stream: &TcpStream, idle: Duration) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(probe_interval(idle))
        .with_retries(KEEPALIVE_PROBES);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&probes) {
        tracing::debug!(%error, "cannot turn TCP keepalive on");
    }
}

const KEEPALIVE_PROBES: u32 = 3;

fn probe_interval(idle: Duration) -> Duration {
    (idle / KEEPALIVE_PROBES).max(Duration::from_secs(1))
}

impl FixedConnector {
    pub fn new(upstream: Authority, keepalive: Duration) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_nodelay(true);
        inner.set_keepalive(Some(keepalive));
        inner.set_keepalive_interval(Some(probe_interval(keepalive)));
        inner.set_keepalive_retries(Some(KEEPALIVE_PROBES));
        inner.set_connect_timeout(Some(Duration::from_secs(5)));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(upstream);
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        let target = Uri::from_parts(parts).unwrap_or_default();
        Self { target, inner }
    }
}

type Connecting = Pin<
    Box<
        dyn Future<Output = Result<TokioIo<TcpStream>, Box<dyn std::error::Error + Send + Sync>>>
            + Send,
    >,
>;

impl Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _requested: Uri) -> Self::Future {
        let connecting = self.inner.call(self.target.clone());
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}
