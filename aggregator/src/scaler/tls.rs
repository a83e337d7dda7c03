//! The scaler port's mutual TLS: only a caller with a client certificate of `--scaler-client-ca`
//! (KEDA, with the certificate the operator gives it through a ClusterTriggerAuthentication) gets
//! as far as a gRPC call. Handshakes run beside the accept loop, each within a deadline and at most
//! [`MAX_HANDSHAKES`] at once, so a client that connects and says nothing holds neither the loop
//! nor a slot for long.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::Metrics;

/// Who may call the scaler (`--scaler-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// TLS, and the caller must present a client certificate of `--scaler-client-ca`.
    Mtls,
    /// Plaintext, anyone: loopback development only.
    None,
}

/// A handshake not finished by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; a connection beyond is closed at once.
pub const MAX_HANDSHAKES: usize = 256;
/// Connections handshaken and not yet taken by the gRPC server.
const QUEUE: usize = 64;

/// The settings of each accepted TCP connection.
#[derive(Debug, Clone, Copy)]
pub struct Tcp {
    pub keepalive: Duration,
}

/// The TLS connections of `listener` that finished their handshake, for tonic's
/// `serve_with_incoming`. The accept loop ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tcp: Tcp,
    metrics: Arc<Metrics>,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(%error, "scaler port: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.scaler_connection("busy");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let sock = socket2::SockRef::from(&stream);
            let _ = sock.set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(tcp.keepalive)
                    .with_interval(tcp.keepalive),
            );
            let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let shaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                drop(slot);
                match shaken {
                    Ok(Ok(tls)) => {
                        metrics.scaler_connection("accepted");
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => {
                        metrics.scaler_connection("refused");
                        tracing::debug!(%error, "scaler port: handshake refused");
                    }
                    Err(_) => metrics.scaler_connection("timeout"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
