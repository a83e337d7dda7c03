//! The data-plane listener: HTTP/1.1 and h2c (prior knowledge) on one port,
//! with upgrades, until told to stop; then connections are closed gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::count::CountingProxy;

/// Serves until `stop` resolves, then stops accepting and waits up to
/// `grace` for open requests to finish.
pub async fn serve(
    listener: TcpListener,
    proxy: CountingProxy,
    stop: impl Future<Output = ()>,
    grace: impl Fn() -> Duration,
) {
    // No header-read timer on HTTP/1: it costs a timer per request, and the
    // clients of a sidecar are the cluster's own proxies, not the internet.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        let (stream, client) = tokio::select! {
            biased;
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
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
            _ = &mut stop, if !stopping => {
                stopping = true;
                continue;
            }
            _ = std::future::ready(()), if stopping => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let session = proxy.session();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            let session = session.clone();
            async move { Ok::<_, Infallible>(proxy.handle(request, client, &session).await) }
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
    drop(listener);
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
