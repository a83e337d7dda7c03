//! Connection affinity for HTTP/1.1: each client connection borrows one
//! upstream connection for its whole life and gives it back when it closes.
//!
//! An HTTP/1.1 connection carries one request at a time, so the borrowed
//! upstream connection is always free when the next request arrives. That
//! takes the shared pool, its lock and its bookkeeping off the per-request
//! path: the pool is touched once per client connection instead. A client
//! connection that stays idle for a sweep period gives its upstream
//! connection back early, so a thousand idle clients do not hold a thousand
//! upstream connections. (Driving
//! the upstream connection from the client connection's own task was tried
//! and cost more CPU per request than this: hyper's dispatcher then wakes its
//! own task for every message.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle upstream connections kept for the next client connection.
const MAX_IDLE: usize = 128;

/// How often sessions idle since the previous sweep give their upstream
/// connection back to the pool.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why a request failed.
#[derive(Debug)]
pub enum SendError {
    /// The upstream could not be dialled.
    Connect(BoxError),
    /// The request was sent (or may have been) and then failed.
    Upstream(BoxError),
}

/// Upstream HTTP/1.1 connections not borrowed by any client connection.
#[derive(Debug, Clone, Default)]
pub(super) struct IdlePool {
    idle: Arc<Mutex<Vec<SendRequest<Incoming>>>>,
}

impl IdlePool {
    fn take(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, sender: SendRequest<Incoming>) {
        if !sender.is_ready() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
    }
}

/// The sessions of one worker, so idle ones can be swept.
#[derive(Debug, Clone, Default)]
pub(super) struct Sessions {
    live: Arc<Mutex<Vec<Weak<Inner>>>>,
    /// Counts sweeps; a session records it on each request.
    epoch: Arc<AtomicU64>,
}

impl Sessions {
    pub(super) fn open(&self, upstream: Authority, pool: IdlePool) -> Session {
        let inner = Arc::new(Inner {
            upstream,
            pool,
            sender: Mutex::new(None),
            epoch: self.epoch.clone(),
            last_used: AtomicU64::new(self.epoch.load(Ordering::Relaxed)),
        });
        if let Ok(mut live) = self.live.lock() {
            live.push(Arc::downgrade(&inner));
        }
        Session { inner }
    }

    /// Takes back the upstream connection of every session that sent nothing
    /// since the last sweep, and forgets sessions that have closed.
    pub(super) fn sweep(&self) {
        let now = self.epoch.fetch_add(1, Ordering::Relaxed);
        let Ok(mut live) = self.live.lock() else {
            return;
        };
        live.retain(|weak| {
            let Some(inner) = weak.upgrade() else {
                return false;
            };
            if inner.last_used.load(Ordering::Relaxed) < now {
                let idle = inner
                    .sender
                    .lock()
                    .ok()
                    .and_then(|mut s| s.take_if(|s| s.is_ready()));
                if let Some(sender) = idle {
                    inner.pool.give_back(sender);
                }
            }
            true
        });
    }
}

/// One client connection's upstream HTTP/1.1 connection.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    upstream: Authority,
    pool: IdlePool,
    sender: Mutex<Option<SendRequest<Incoming>>>,
    epoch: Arc<AtomicU64>,
    last_used: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.get_mut().ok().and_then(Option::take) {
            self.pool.give_back(sender);
        }
    }
}

impl Session {
    fn take(&self) -> Option<SendRequest<Incoming>> {
        self.inner.sender.lock().ok().and_then(|mut s| s.take())
    }

    fn put(&self, sender: SendRequest<Incoming>) {
        if let Ok(mut s) = self.inner.sender.lock() {
            *s = Some(sender);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, SendError> {
        if let Some(sender) = self.inner.pool.take() {
            return Ok(sender);
        }
        let stream = TcpStream::connect(self.inner.upstream.as_str())
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        let _ = stream.set_nodelay(true);
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

    /// Sends `request` on this session's upstream connection, borrowing or
    /// opening one if there is none or the old one has closed. A request that
    /// the old connection never sent (the app closed it while idle) is
    /// retried once on another.
    pub async fn send(&self, request: Request<Incoming>) -> Result<Response<Incoming>, SendError> {
        let mut request = request;
        // A connection-level client writes the URI as given: origin form.
        if let Some(path) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = http::Uri::from(path);
        }
        let epoch = self.inner.epoch.load(Ordering::Relaxed);
        self.inner.last_used.store(epoch, Ordering::Relaxed);
        for attempt in 0..2 {
            let mut sender = match self.take() {
                Some(sender) if !sender.is_closed() => sender,
                _ => self.connect().await?,
            };
            if sender.ready().await.is_err() {
                continue;
            }
            let sent = sender.try_send_request(request);
            // The client's next request only comes once this response is
            // done, and hyper queues it until then.
            self.put(sender);
            match sent.await {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if attempt == 0 => request = unsent,
                    _ => return Err(SendError::Upstream(error.into_error().into())),
                },
            }
        }
        Err(SendError::Upstream(
            "the upstream closed two connections before the request could be sent".into(),
        ))
    }
}
