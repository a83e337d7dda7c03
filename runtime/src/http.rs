//! Limits every inflight HTTP server puts on its clients, so a slow or idle client costs a
//! bounded amount and only for a bounded time (slowloris).
//!
//! hyper's HTTP/1 `header_read_timeout` covers a request head from the moment hyper waits for it:
//! right after a connection opens and, on a keep-alive connection, right after the previous
//! response, so it is both the header-read timeout and the idle keep-alive timeout. hyper-util's
//! `auto` builder reads the first bytes to tell HTTP/1 from h2c before any hyper timer runs, so a
//! client that connects and sends nothing would be held forever: [`first_bytes`] bounds that
//! phase. A cap on open connections ([`Admission`]) bounds the rest.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a server allows each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// A connection that has not sent a whole request head this long after it opened, or after
    /// its previous response ended, is closed.
    pub header_read_timeout: Duration,
    /// Connections open at once; accepting pauses at the cap (new clients wait in the listen
    /// backlog) until one closes.
    pub max_connections: usize,
    /// HTTP/2: ping a connection this long idle, and close it when the ping is not answered
    /// within as long again, so the streams of a peer that vanished are reaped.
    pub h2_keepalive: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            h2_keepalive: Duration::from_secs(20),
        }
    }
}

impl ConnLimits {
    /// A hyper-util server builder for HTTP/1.1 and h2c that enforces these limits.
    pub fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.h2_keepalive)
            .keep_alive_timeout(self.h2_keepalive);
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        builder
    }

    pub fn admission(&self) -> Admission {
        Admission(Arc::new(Semaphore::new(self.max_connections.max(1))))
    }
}

/// Server builders for a data port whose clients' protocol is known from their first bytes
/// ([`first_bytes`]): HTTP/1.1 with no timer (the data port keeps HTTP/1's header-read and idle
/// timeouts itself; hyper's header timer costs a timer per request), and h2c that pings
/// connections idle for `h2_keepalive` and closes them when a ping goes unanswered as long.
/// Each protocol's own builder rather than hyper-util's auto one: that one reads the preface
/// again and hands the bytes back through a buffer, after which hyper's read buffer doubles to
/// 16 KiB on every HTTP/1 connection.
pub fn data_port_builders(
    h2_keepalive: Duration,
) -> (
    hyper::server::conn::http1::Builder,
    hyper::server::conn::http2::Builder<TokioExecutor>,
) {
    let h1 = hyper::server::conn::http1::Builder::new();
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .keep_alive_interval(h2_keepalive)
        .keep_alive_timeout(h2_keepalive);
    (h1, h2)
}

/// The open-connection cap: each accepted connection holds a permit until it closes.
#[derive(Debug, Clone)]
pub struct Admission(Arc<Semaphore>);

impl Admission {
    /// Waits until a connection may be accepted. The semaphore is never closed, so this only
    /// waits.
    pub async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().acquire_owned().await.ok()
    }

    /// Connections open now.
    pub fn open(&self, limits: &ConnLimits) -> usize {
        limits
            .max_connections
            .max(1)
            .saturating_sub(self.0.available_permits())
    }
}

/// What a client opens with. The bytes stay unread: hyper reads them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (the whole preface).
    H2c,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits, at most `within`, until the client has sent enough for hyper-util to tell HTTP/1 from
/// h2c (a byte that is not the h2 preface's, or the whole preface), and says which. `None`: it
/// sent nothing in time, closed, or failed; the caller drops the connection.
pub async fn first_bytes(stream: &TcpStream, within: Duration) -> Option<Protocol> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return None,
        };
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == buf.len() {
            return Some(Protocol::H2c);
        }
        // A prefix of the preface: `peek` would answer at once with the same bytes, so wait a
        // moment for the rest (this is only ever a client that pauses inside 24 bytes).
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(5)))
            .await
            .is_err()
        {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_silent_client_is_given_up_on() {
        let (_client, server) = pair().await;
        assert_eq!(first_bytes(&server, Duration::from_millis(50)).await, None);
    }

    #[tokio::test]
    async fn an_http1_or_h2_start_is_recognised_and_left_unread() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            first_bytes(&server, Duration::from_secs(30)).await,
            Some(Protocol::Http1)
        );
        let mut buf = [0u8; 3];
        assert_eq!(server.peek(&mut buf).await.unwrap(), 3);
        assert_eq!(&buf, b"GET");

        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let wait = tokio::spawn(async move { first_bytes(&server, Duration::from_secs(30)).await });
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        assert_eq!(wait.await.unwrap(), Some(Protocol::H2c));
    }

    #[tokio::test]
    async fn a_client_stalled_inside_the_preface_is_given_up_on() {
        let (mut client, server) = pair().await;
        client.write_all(b"PRI * HTTP").await.unwrap();
        assert_eq!(first_bytes(&server, Duration::from_millis(50)).await, None);
    }

    #[tokio::test]
    async fn admission_caps_open_connections() {
        let limits = ConnLimits {
            max_connections: 2,
            ..ConnLimits::default()
        };
        let admission = limits.admission();
        let a = admission.permit().await;
        let _b = admission.permit().await;
        assert_eq!(admission.open(&limits), 2);
        let third = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.permit().await.is_some() })
        };
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "a third connection waits");
        drop(a);
        assert!(third.await.unwrap(), "and is admitted when one closes");
    }
}
