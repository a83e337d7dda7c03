//! The data-plane listener: HTTP/1.1 and h2c (prior knowledge) on one port,
//! with upgrades, until told to stop; then connections are closed gracefully.
//!
//! One acceptor hands connections round-robin to workers, each a thread with
//! its own single-threaded runtime and its own upstream pools (the way nginx
//! runs one event loop per core). A connection lives on one worker, so the
//! per-request path crosses no thread and takes no contended lock.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::count::CountingProxy;

/// How long open connections may take to finish once accepting has stopped.
pub type Grace = Arc<dyn Fn() -> Duration + Send + Sync>;

/// Where accepted connections go.
#[derive(Debug, Clone)]
pub struct Worker {
    connections: mpsc::UnboundedSender<std::net::TcpStream>,
}

/// Starts a worker on the current runtime; it serves what it is handed and,
/// when the acceptor is gone, closes its connections gracefully and resolves
/// the returned receiver.
pub fn spawn_worker(proxy: CountingProxy, grace: Grace) -> (Worker, oneshot::Receiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        work(rx, proxy, grace).await;
        let _ = done_tx.send(());
    });
    (Worker { connections: tx }, done_rx)
}

/// Starts a worker on a thread of its own with a single-threaded runtime.
/// `make_proxy` runs on that thread, so the proxy's pools belong to it.
pub fn spawn_worker_thread(
    name: String,
    make_proxy: impl FnOnce() -> CountingProxy + Send + 'static,
    grace: Grace,
) -> std::io::Result<(Worker, oneshot::Receiver<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new().name(name).spawn(move || {
        runtime.block_on(work(rx, make_proxy(), grace));
        let _ = done_tx.send(());
    })?;
    Ok((Worker { connections: tx }, done_rx))
}

async fn work(
    mut connections: mpsc::UnboundedReceiver<std::net::TcpStream>,
    proxy: CountingProxy,
    grace: Grace,
) {
    // No header-read timer on HTTP/1: it costs a timer per request, and the
    // clients of a sidecar are the cluster's own proxies, not the internet.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    while let Some(stream) = connections.recv().await {
        let Ok(stream) = TcpStream::from_std(stream) else {
            continue;
        };
        let client = match stream.peer_addr() {
            Ok(client) => client,
            Err(_) => continue,
        };
        let proxy = proxy.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(request, client).await) }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %client, "connection ended with an error");
            }
        });
    }
    let grace = grace();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the drain limit; closing them"
        );
    }
}

/// Accepts until `stop` turns true, handing connections to `workers` in
/// turn. Dropping the workers' senders on return tells them to finish.
pub async fn accept(listener: TcpListener, workers: Vec<Worker>, mut stop: watch::Receiver<bool>) {
    if workers.is_empty() {
        return;
    }
    let mut next = 0;
    let mut stopping = false;
    loop {
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
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let _ = workers[next].connections.send(stream);
        next = (next + 1) % workers.len();
    }
}
