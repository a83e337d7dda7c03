//! Requests sent by hand to the bed's Services and pods, so that a test knows whether a failed
//! one was ever sent (a client may only try again what never went out); and a load of such
//! requests that counts what became of each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `ip:port`, for a pod's address as the API reports it (an address that does not parse is the
/// unspecified one, which no connection reaches: the caller's request then says so).
pub fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(
        ip.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        port,
    )
}

/// What one request came to.
#[derive(Debug)]
pub enum Outcome {
    /// A response: its status, its `X-Inflight-Cold-Start` header, its body.
    Answered {
        status: u16,
        cold_start: Option<String>,
        body: String,
    },
    /// Nothing reached a server: the connection was refused, reset or unreachable before the
    /// request went out. The only failure a client may try again.
    NotSent(String),
    /// The request went out and no whole response came back.
    Failed(String),
}

/// `GET path` with `Host: host` on a new connection to `addr`, the answer read to its end.
pub async fn send(addr: SocketAddr, host: &str, path: &str, within: Duration) -> Outcome {
    let mut stream =
        match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Outcome::NotSent(format!("connect: {:?}", e.kind())),
            Err(_) => return Outcome::NotSent("connect: timed out".into()),
        };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        // The kernel refuses to queue the request only on a connection already reset.
        return Outcome::NotSent(format!("write: {:?}", e.kind()));
    }
    let mut raw = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut raw)).await {
        Err(_) => return Outcome::Failed(format!("no whole answer within {within:?}")),
        Ok(Err(e)) => {
            return Outcome::Failed(format!(
                "read after {} bytes: {e} ({:?})",
                raw.len(),
                e.kind()
            ))
        }
        Ok(Ok(_)) => {}
    }
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Failed(format!("no response head in {text:?}"));
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    let Some(status) = status else {
        return Outcome::Failed(format!("no status line in {head:?}"));
    };
    let cold_start = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("x-inflight-cold-start"))
        .map(|(_, value)| value.trim().to_owned());
    Outcome::Answered {
        status,
        cold_start,
        body: body.to_owned(),
    }
}

/// The JSON an admin port answers at `path`.
pub async fn admin_json(addr: SocketAddr, path: &str) -> Option<Value> {
    match send(addr, "admin", path, Duration::from_secs(5)).await {
        Outcome::Answered {
            status: 200, body, ..
        } => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

pub async fn admin_text(addr: SocketAddr, path: &str) -> Option<String> {
    match send(addr, "admin", path, Duration::from_secs(5)).await {
        Outcome::Answered {
            status: 200, body, ..
        } => Some(body),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster's side.

/// What became of the requests of a [`Load`].
#[derive(Debug, Default)]
pub struct Tally {
    /// Answered 200 with a body that names the app.
    pub answered: AtomicU64,
    /// Of those, held by an activator while the workload woke.
    pub cold_starts: AtomicU64,
    /// Tries that never went out (connection refused or reset before the request), sent again.
    pub resent: AtomicU64,
    pub resent_why: Mutex<BTreeMap<String, u64>>,
    /// Requests that went out and got no whole answer, or another answer than the app's 200.
    pub failures: Mutex<Vec<String>>,
}

impl Tally {
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The failures so far (a poisoned lock is read through: a panicking client is a failure
    /// of its own).
    pub fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn fail(&self, why: String) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(why);
    }
}

/// Clients each sending `GET path` with `Host: host` to `addr` (a Service's ClusterIP), one request
/// after another on a new connection each (kube-proxy picks an endpoint per connection), until
/// stopped. A request that was never sent is sent again, and counted; any other failure is
/// recorded. An answer counts as the app's when its body contains `marker`.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, host: &str, path: &str, marker: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let clients = (0..clients)
            .map(|_| {
                let (stop, tally) = (stop.clone(), tally.clone());
                let (host, path, marker) = (host.to_owned(), path.to_owned(), marker.to_owned());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        one_request(addr, &host, &path, &marker, &tally).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            tally,
            clients,
        }
    }

    /// What became of the requests so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Stops the clients once their requests are answered.
    pub async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            if let Err(e) = c.await {
                self.tally.fail(format!("a client panicked: {e}"));
            }
        }
        self.tally
    }
}

/// One request, sent again only while it was never sent (at most 100 times).
pub async fn one_request(addr: SocketAddr, host: &str, path: &str, marker: &str, tally: &Tally) {
    for _ in 0..100 {
        match send(addr, host, path, Duration::from_secs(90)).await {
            Outcome::Answered {
                status: 200,
                cold_start,
                body,
            } if body.contains(marker) => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
                if cold_start.is_some() {
                    tally.cold_starts.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Outcome::Answered { status, body, .. } => {
                tally.fail(format!("{status}: {}", body.trim()));
                return;
            }
            Outcome::Failed(why) => {
                tally.fail(why);
                return;
            }
            Outcome::NotSent(why) => {
                tally.resent.fetch_add(1, Ordering::Relaxed);
                *tally
                    .resent_why
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(why)
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tally.fail("never sent in 100 tries".into());
}
