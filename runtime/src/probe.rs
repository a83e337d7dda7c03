//! Readiness checks as the kubelet makes them: a TCP connect, or a `GET` that answers 2xx or 3xx.
//! The sidecar asks its app this way for `/readyz` (the app's own readiness check when the injector
//! passes one, else whether its port accepts a connection); the operator and the activator ask each
//! pod's proxy for its `/readyz` before they send it traffic.
//!
//! The activator forwards held requests the moment `/readyz` answers 200, so
//! an app that listens before it can serve must be asked, not dialled.

use std::time::Duration;

use http::uri::PathAndQuery;
use http::{header, Request, StatusCode};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One readiness check of one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Ready when `addr` (HOST:PORT) accepts a TCP connection.
    Tcp { addr: String, timeout: Duration },
    /// Ready when `GET path` on `addr` answers 2xx or 3xx, as the kubelet
    /// judges an `httpGet` probe.
    Http {
        addr: String,
        path: PathAndQuery,
        timeout: Duration,
    },
}

/// Why the app is not ready; the text `/readyz` answers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotReady {
    #[error("{addr} does not accept connections: {reason}")]
    Refused { addr: String, reason: String },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("readiness check GET {path} on {addr} failed: {reason}")]
    Failed {
        addr: String,
        path: String,
        reason: String,
    },
    #[error("readiness check GET {path} on {addr} answered {status}")]
    Status {
        addr: String,
        path: String,
        status: u16,
    },
}

impl Check {
    /// The check for an app at `host:port`, with `path` and `port` from the
    /// app's readiness probe when given (`port` alone: a TCP check there).
    pub fn new(
        host: &str,
        port: u16,
        path: Option<PathAndQuery>,
        ready_port: Option<u16>,
        timeout: Duration,
    ) -> Self {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let addr = format!("{host}:{}", ready_port.unwrap_or(port));
        match path {
            Some(path) => Check::Http {
                addr,
                path,
                timeout,
            },
            None => Check::Tcp { addr, timeout },
        }
    }

    pub async fn check(&self) -> Result<(), NotReady> {
        let (addr, timeout) = match self {
            Check::Tcp { addr, timeout } | Check::Http { addr, timeout, .. } => (addr, *timeout),
        };
        let run = async {
            let stream =
                TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| NotReady::Refused {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?;
            match self {
                Check::Tcp { .. } => Ok(()),
                Check::Http { path, .. } => get(stream, addr, path).await,
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(NotReady::Timeout {
                    addr: addr.clone(),
                    timeout,
                })
            })
    }
}

/// One GET over its own connection, closed when the status is known (the
/// body is not read: the kubelet judges a probe by its status alone).
async fn get(stream: TcpStream, addr: &str, path: &PathAndQuery) -> Result<(), NotReady> {
    let failed = |reason: String| NotReady::Failed {
        addr: addr.to_owned(),
        path: path.to_string(),
        reason,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let request = Request::get(path.as_str())
        .header(header::HOST, addr)
        .header(header::CONNECTION, "close")
        .header(
            header::USER_AGENT,
            concat!("inflight/", env!("CARGO_PKG_VERSION"), " (readiness)"),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let send = sender.send_request(request);
    tokio::pin!(connection, send);
    let response = tokio::select! {
        biased;
        response = &mut send => response,
        // The connection may finish first (`Connection: close`) with the
        // response already handed over, or end without one: either way the
        // request's own future tells.
        ended = &mut connection => match ended {
            Ok(()) => send.await,
            Err(e) => return Err(failed(e.to_string())),
        },
    }
    .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    if (StatusCode::OK.as_u16()..StatusCode::BAD_REQUEST.as_u16()).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(NotReady::Status {
            addr: addr.to_owned(),
            path: path.to_string(),
            status: status.as_u16(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn the_check_follows_the_probe_it_is_given() {
        let tcp = Check::new("127.0.0.1", 8080, None, None, T);
        assert_eq!(
            tcp,
            Check::Tcp {
                addr: "127.0.0.1:8080".into(),
                timeout: T
            }
        );
        let other_port = Check::new("127.0.0.1", 8080, None, Some(9000), T);
        assert_eq!(
            other_port,
            Check::Tcp {
                addr: "127.0.0.1:9000".into(),
                timeout: T
            }
        );
        let path = PathAndQuery::from_static("/ready?full=1");
        let http = Check::new("::1", 8080, Some(path.clone()), None, T);
        assert_eq!(
            http,
            Check::Http {
                addr: "[::1]:8080".into(),
                path,
                timeout: T
            }
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_not_ready_with_the_reason() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0");
            l.and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or(1)
        };
        let path = PathAndQuery::from_static("/ready");
        for check in [
            Check::new("127.0.0.1", port, None, None, T),
            Check::new("127.0.0.1", port, Some(path), None, T),
        ] {
            let result = check.check().await;
            assert!(
                matches!(result, Err(NotReady::Refused { .. })),
                "{result:?}"
            );
        }
    }
}
