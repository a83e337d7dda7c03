//! The HTTP/1.1 connection pool to the app: a stack of idle keep-alive
//! connections per worker.
//!
//! A connection leaves the stack for one request and goes back the moment
//! its response body has been read to the end, so a thousand idle clients
//! cost no upstream connections and a busy client reuses the connection it
//! just used. A response that is not read to the end (the client went away)
//! takes its connection down with it: what is left of the body is unknown.
//! Each worker owns its pool, so the lock is never contended; this is much
//! less machinery per request than a general-purpose pool with a task per
//! checkout.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::upload::RequestBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections kept; more are closed when their response ends.
const MAX_IDLE: usize = 128;

/// The app is on the same host: a connection it does not accept at once
/// will not be accepted.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a request failed.
#[derive(Debug)]
pub enum SendError {
    /// The upstream could not be dialled.
    Connect(BoxError),
    /// The request was sent (or may have been) and then failed.
    Upstream(BoxError),
}

type Idle = Arc<Mutex<Vec<SendRequest<RequestBody>>>>;

#[derive(Debug, Clone)]
pub struct Http1Pool {
    upstream: Authority,
    keepalive: std::time::Duration,
    idle: Idle,
}

impl Http1Pool {
    pub fn new(upstream: Authority, keepalive: std::time::Duration) -> Self {
        Self {
            upstream,
            keepalive,
            idle: Arc::default(),
        }
    }

    /// Idle connections now in the pool.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    fn pop(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, SendError> {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.upstream.as_str()))
                .await
                .map_err(|_| {
                    SendError::Connect(format!("no answer within {CONNECT_TIMEOUT:?}").into())
                })?
                .map_err(|e| SendError::Connect(e.into()))?;
        let _ = stream.set_nodelay(true);
        super::set_tcp_keepalive(&stream, self.keepalive);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `request` on an idle connection, or a new one. A request that a
    /// pooled connection never sent (the app closed it while it sat idle) is
    /// retried once on a new connection.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut request = request;
        // A connection-level client writes the URI as given: origin form.
        if let Some(path) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = http::Uri::from(path);
        }
        let mut retried = false;
        loop {
            let pooled = self.pop();
            let fresh = pooled.is_none();
            let mut sender = match pooled {
                Some(sender) => sender,
                None => self.connect().await?,
            };
            // A pooled connection that closed while idle is skipped.
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(SendError::Upstream(
                        "the upstream closed a new connection at once".into(),
                    ));
                }
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let idle = self.idle.clone();
                    return Ok(response.map(|body| UpstreamBody::pooled(body, sender, idle)));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !retried => {
                        retried = true;
                        request = unsent;
                    }
                    _ => return Err(SendError::Upstream(error.into_error().into())),
                },
            }
        }
    }
}

/// An upstream response body. Read to the end, it puts its connection back
/// in the pool it came from.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    give_back: Option<(SendRequest<RequestBody>, Idle)>,
}

impl UpstreamBody {
    /// A body whose connection is not ours to pool (HTTP/2, upgrades).
    pub fn plain(inner: Incoming) -> Self {
        Self {
            inner,
            give_back: None,
        }
    }

    fn pooled(inner: Incoming, sender: SendRequest<RequestBody>, idle: Idle) -> Self {
        let mut body = Self {
            inner,
            give_back: Some((sender, idle)),
        };
        // hyper never polls a body that is already at its end (HEAD, 204…).
        if body.inner.is_end_stream() {
            body.done();
        }
        body
    }

    fn done(&mut self) {
        if let Some((sender, idle)) = self.give_back.take() {
            if let Ok(mut idle) = idle.lock() {
                if idle.len() < MAX_IDLE {
                    idle.push(sender);
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.done(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.done(),
            // A broken body leaves the connection in an unknown state.
            Poll::Ready(Some(Err(_))) => this.give_back = None,
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
