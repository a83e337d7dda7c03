//! The data-plane listener: HTTP/1.1 and h2c (prior knowledge) on one port,
//! with upgrades, until told to stop; then connections are closed gracefully.
//!
//! One acceptor hands connections round-robin to workers, each a thread with
//! its own single-threaded runtime and its own upstream pools (the way nginx
//! runs one event loop per core). A connection lives on one worker, so the
//! per-request path crosses no thread and takes no contended lock.
//!
//! In serve mode any pod in the cluster dials this port, so a client costs a
//! bounded amount for a bounded time ([`Connections`]): a cap on open
//! connections (accepting pauses at it), a deadline for a new connection's
//! first bytes and first request head, an idle keep-alive timeout from the
//! end of each response to the next head ([`idle`], one timer a connection
//! rather than hyper's one a request), and HTTP/2 pings that reap the
//! connections of vanished peers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use inflight_runtime::http::{data_port_builders, first_bytes, Protocol};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

mod idle;

use http::{Request, Response};
use http_body::Body;
use hyper::body::{Bytes, Incoming};
use inflight_runtime::admin::positive_duration;

/// What serves the requests of the connections a worker takes: the sidecar's counting proxy,
/// the activator's holder.
pub trait Handler: Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error = Self::Error> + Send + Unpin + 'static;
    type Error: Into<Box<dyn std::error::Error + Send + Sync>>;
    fn handle(
        &self,
        request: Request<Incoming>,
        client: std::net::SocketAddr,
    ) -> impl std::future::Future<Output = Response<Self::Body>> + Send;
    /// Upgraded connections still open, which a drain waits for.
    fn tunnels(&self) -> &Tunnels;
}

/// How long open connections may take to finish once accepting has stopped.
pub type Grace = Arc<dyn Fn() -> Duration + Send + Sync>;

/// Where accepted connections go.
#[derive(Debug, Clone)]
pub struct Worker {
    connections: mpsc::UnboundedSender<Accepted>,
}

/// An accepted connection and its place under the connection cap, held
/// until the connection closes.
#[derive(Debug)]
struct Accepted {
    stream: std::net::TcpStream,
    permit: OwnedSemaphorePermit,
}

/// Starts a worker on a thread of its own with a single-threaded runtime.
/// `make_proxy` runs on that thread, so the proxy's pools belong to it.
pub fn spawn_worker_thread<H: Handler>(
    name: String,
    make_proxy: impl FnOnce() -> H + Send + 'static,
    grace: Grace,
    limits: Connections,
) -> std::io::Result<(Worker, oneshot::Receiver<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new().name(name).spawn(move || {
        runtime.block_on(work(rx, make_proxy(), grace, limits));
        let _ = done_tx.send(());
    })?;
    Ok((Worker { connections: tx }, done_rx))
}

async fn work<H: Handler>(
    mut connections: mpsc::UnboundedReceiver<Accepted>,
    proxy: H,
    grace: Grace,
    limits: Connections,
) {
    // HTTP/1's header-read and idle timeouts are kept per connection
    // ([`idle`]), not by hyper's header timer, which costs a timer per request.
    // Shared, not copied into each connection's task: a task is allocated at its full size.
    let builders = Arc::new(data_port_builders(limits.h2_keepalive));
    let proxy = Arc::new(proxy);
    // Every connection task holds a sender; the drain waits for the last to go.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    // Connections that have not yet sent their first bytes when the drain
    // ends are dropped at once rather than waited for: they have sent
    // nothing that could be lost.
    let (closing, not_closing) = watch::channel(false);
    while let Some(Accepted { stream, permit }) = connections.recv().await {
        let opened = Instant::now();
        let Ok(stream) = TcpStream::from_std(stream) else {
            continue;
        };
        let client = match stream.peer_addr() {
            Ok(client) => client,
            Err(_) => continue,
        };
        let (proxy, builders, open) = (proxy.clone(), builders.clone(), open.clone());
        let mut closing = not_closing.clone();
        tokio::spawn(async move {
            let _open = open;
            // An upgraded connection outlives this task: the tunnel keeps
            // the connection's place under the cap until it closes.
            let slot = Arc::new(permit);
            let started = tokio::select! {
                started = first_bytes(&stream, limits.header_read_timeout) => started,
                _ = closing.wait_for(|closing| *closing) => None,
            };
            let Some(protocol) = started else {
                tracing::debug!(%client, "no request started in time; closing");
                return;
            };
            // HTTP/1 requests are watched for the idle timeouts; an h2c
            // client may keep an idle connection open, and pings watch it.
            let requests = (protocol == Protocol::Http1).then(|| idle::Requests::new(opened));
            let watched = requests.clone();
            let service = service_fn(move |mut request: Request<_>| {
                if request.headers().contains_key(http::header::UPGRADE) {
                    let slot: Arc<dyn std::any::Any + Send + Sync> = slot.clone();
                    request.extensions_mut().insert(KeepWhileOpen(slot));
                }
                if let Some(requests) = &watched {
                    requests.start();
                }
                let (proxy, watched) = (proxy.clone(), watched.clone());
                async move {
                    let response = proxy.handle(request, client).await;
                    Ok::<_, Infallible>(response.map(|body| match &watched {
                        Some(requests) => requests.answer(body),
                        None => idle::Answer::unwatched(body),
                    }))
                }
            });
            let io = TokioIo::new(stream);
            let Some(requests) = requests else {
                // Boxed: an HTTP/1 connection's task need not have room for HTTP/2's state.
                let connection = builders.1.serve_connection(io, service);
                let ended = until_drained(connection, |c| c.graceful_shutdown(), &mut closing);
                log_end(Box::pin(ended).await, client);
                return;
            };
            let connection = builders.0.serve_connection(io, service).with_upgrades();
            let connection = until_drained(connection, |c| c.graceful_shutdown(), &mut closing);
            tokio::select! {
                ended = connection => log_end(ended, client),
                () = idle::expired(&requests, limits.header_read_timeout, limits.idle_timeout) => {
                    tracing::debug!(%client, "no whole request head in time; closing");
                }
            }
        });
    }
    // Accepting has stopped: HTTP/1 connections close once their response is
    // out, h2c ones get GOAWAY and finish the streams they have open. Then
    // the upgraded connections, which no longer belong to a client
    // connection, are waited for as well.
    let grace = grace();
    let deadline = Instant::now() + grace;
    let tunnels = proxy.tunnels().clone();
    drop(proxy);
    let _ = closing.send(true);
    drop(open);
    if tokio::time::timeout_at(deadline, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the drain limit; closing them"
        );
    }
    if tokio::time::timeout_at(deadline, tunnels.all_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            tunnels = tunnels.open_now(),
            "upgraded connections still open after the drain limit; closing them"
        );
    }
}

/// Serves `connection` until it ends; once the drain starts, asks it to finish what it has
/// begun and close (HTTP/1: after the response in progress; h2: GOAWAY).
async fn until_drained<C: std::future::Future>(
    connection: C,
    shutdown: impl FnOnce(std::pin::Pin<&mut C>),
    closing: &mut watch::Receiver<bool>,
) -> C::Output {
    tokio::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => return ended,
        _ = closing.wait_for(|closing| *closing) => {}
    }
    shutdown(connection.as_mut());
    connection.await
}

fn log_end(ended: Result<(), hyper::Error>, client: std::net::SocketAddr) {
    if let Err(error) = ended {
        tracing::debug!(%error, %client, "connection ended with an error");
    }
}

/// Accepts until `stop` turns true, handing connections to `workers` in
/// turn, at most `limits.max_connections` open at once: at the cap,
/// accepting waits and new clients wait in the listen backlog. Dropping the
/// workers' senders on return tells them to finish.
pub async fn accept(
    listener: TcpListener,
    workers: Vec<Worker>,
    limits: Connections,
    mut stop: watch::Receiver<bool>,
) {
    if workers.is_empty() {
        return;
    }
    let max_connections = usize::try_from(limits.max_connections).unwrap_or(usize::MAX);
    let admission = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut next = 0;
    let mut stopping = false;
    // At the cap under a flood, one warning a minute is enough.
    let mut warned: Option<Instant> = None;
    loop {
        let permit = match admission.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // Once stopping, there is no waiting for a place.
            Err(_) if stopping => break,
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(max_connections, "connection cap reached; accepting waits");
                    warned = Some(Instant::now());
                }
                tokio::select! {
                    permit = admission.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    told = async { stop.wait_for(|stop| *stop).await.is_ok() } => {
                        stopping = true;
                        if !told {
                            tracing::debug!("stop signal dropped; stopping");
                        }
                        continue;
                    }
                }
            }
        };
        let stream = tokio::select! {
            biased;
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) if !stopping => {
                    // Out of file descriptors and the like: back off, keep going.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => break,
            },
            // Once told to stop, connections the kernel already accepted are
            // still taken and served: closing the listener would reset them.
            told = async { stop.wait_for(|stop| *stop).await.is_ok() }, if !stopping => {
                stopping = true;
                if !told {
                    tracing::debug!("stop signal dropped; stopping");
                }
                continue;
            }
            _ = std::future::ready(()), if stopping => break,
        };
        let _ = stream.set_nodelay(true);
        crate::set_tcp_keepalive(&stream, limits.tcp_keepalive);
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let _ = workers[next].connections.send(Accepted { stream, permit });
        next = (next + 1) % workers.len();
    }
}

/// What the data port allows its clients, and how long connections live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Connections {
    /// Close a new connection that has not sent a whole request head (HTTP/1)
    /// or told HTTP/1 from h2c (its first bytes) within this long.
    #[arg(
        id = "data_header_read_timeout",
        long = "header-read-timeout",
        value_name = "DURATION",
        env = "INFLIGHT_HEADER_READ_TIMEOUT",
        default_value = "10s",
        value_parser = positive_duration
    )]
    pub header_read_timeout: Duration,

    /// Close an HTTP/1 keep-alive connection that has not sent the whole head
    /// of its next request within this long of the previous response.
    #[arg(long, env = "INFLIGHT_IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// Client connections open at once; more wait in the listen backlog
    /// until one closes.
    #[arg(
        id = "data_max_connections",
        long = "max-connections",
        value_name = "N",
        env = "INFLIGHT_MAX_CONNECTIONS",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,

    /// HTTP/2 clients: ping a connection idle this long and close it when
    /// the ping is not answered within as long again.
    #[arg(long, env = "INFLIGHT_H2_KEEPALIVE", default_value = "20s", value_parser = positive_duration)]
    pub h2_keepalive: Duration,

    /// TCP keepalive on client and app connections: the first probe after
    /// this long without traffic, so a peer that vanished (a half-open
    /// connection) is found in about twice this.
    #[arg(long, env = "INFLIGHT_TCP_KEEPALIVE", default_value = "30s", value_parser = positive_duration)]
    pub tcp_keepalive: Duration,

    /// Close an upgraded connection (websocket) that has carried no byte
    /// either way for this long.
    #[arg(long, env = "INFLIGHT_TUNNEL_IDLE_TIMEOUT", default_value = "1h", value_parser = positive_duration)]
    pub tunnel_idle_timeout: Duration,
}

/// What an upgraded connection keeps for its whole life, beyond the
/// request that opened it (the server's place for it under the connection
/// cap); the server puts it in the request's extensions.
#[derive(Debug, Clone)]
pub struct KeepWhileOpen(pub Arc<dyn std::any::Any + Send + Sync>);

/// How many upgraded connections are open.
#[derive(Debug, Clone)]
pub struct Tunnels(Arc<watch::Sender<usize>>);

impl Default for Tunnels {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl Tunnels {
    /// One more open; one fewer when the returned guard is dropped.
    pub fn open(&self) -> OpenTunnel {
        self.0.send_modify(|open| *open += 1);
        OpenTunnel(self.0.clone())
    }

    /// Open now.
    pub fn open_now(&self) -> usize {
        *self.0.borrow()
    }

    /// Resolves when none is open.
    pub async fn all_closed(&self) {
        let mut open = self.0.subscribe();
        // The sender lives in `self`, so this only returns once none is open.
        let _ = open.wait_for(|open| *open == 0).await;
    }
}

#[derive(Debug)]
pub struct OpenTunnel(Arc<watch::Sender<usize>>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open = open.saturating_sub(1));
    }
}
