//! Test harness: the real `inflight-proxy` binary as a child process, real
//! HTTP/gRPC apps and a real Ingest server in the test process, all on
//! loopback.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use inflight_proto::v1::ingest_server::{Ingest, IngestServer};
use inflight_proto::v1::{report_request, PodReport, ReportRequest, ReportSummary};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// An app on loopback that speaks HTTP/1.1 and h2c, with upgrades.
pub struct App {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn start<F, Fut>(handler: F) -> App
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler)
    }

    pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> App
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(r).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App { addr, task }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The real proxy binary, killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr, args: &[&str]) -> Proxy {
        Self::start_with_upstream(&upstream.to_string(), args).await
    }

    pub async fn start_with_upstream(upstream: &str, args: &[&str]) -> Proxy {
        // A free port may be taken again before the proxy binds it: the proxy then exits, and
        // another pair of ports is tried.
        for _ in 0..3 {
            if let Some(proxy) = Self::try_start(upstream, args).await {
                return proxy;
            }
        }
        panic!("inflight-proxy exited before it came up, three times (see its log above)");
    }

    async fn try_start(upstream: &str, args: &[&str]) -> Option<Proxy> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_inflight-proxy"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--upstream")
            .arg(upstream)
            .args(args)
            .env("POD_NAME", "web-7d9f-abcde")
            .env("POD_NAMESPACE", "shop")
            .env("POD_IP", "10.1.2.3")
            .env(
                "RUST_LOG",
                std::env::var("TEST_PROXY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("inflight-proxy starts");
        let mut proxy = Proxy { child, addr, admin };
        // A loaded machine may take seconds to start a debug binary: wait for it to answer, or
        // to exit, with a deadline far beyond any start.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while tokio::time::Instant::now() < deadline {
            if get(admin, "/healthz").await.map(|(s, _)| s) == Some(200) {
                return Some(proxy);
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                eprintln!("inflight-proxy exited before it came up on {admin}: {status}");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("inflight-proxy did not come up on {admin} within 120 s");
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("proxy running")
    }

    pub async fn stats(&self) -> serde_json::Value {
        let (status, body) = get(self.admin, "/stats").await.expect("/stats answers");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("/stats is JSON")
    }

    pub async fn in_flight(&self) -> u64 {
        self.stats().await["in_flight"].as_u64().unwrap()
    }

    /// Waits until `/stats` satisfies `check`, for at most `within`.
    pub async fn wait_stats(
        &self,
        within: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.stats().await;
            if check(&stats) {
                return stats;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("stats never matched within {within:?}: {stats}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Peak and current resident memory of the proxy, in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .unwrap()
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

/// A plain GET over a fresh HTTP/1.1 connection: status and body, or None
/// when nothing answers.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, Bytes)> {
    let client = http1_client();
    let response = client
        .request(
            Request::get(format!("http://{addr}{path}"))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

pub fn http1_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn http2_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A real Ingest server that hands every report it receives to the test.
pub struct IngestSink {
    pub addr: SocketAddr,
    pub reports: mpsc::UnboundedReceiver<PodReport>,
    task: tokio::task::JoinHandle<()>,
}

struct Sink(mpsc::UnboundedSender<PodReport>);

#[tonic::async_trait]
impl Ingest for Sink {
    async fn report(
        &self,
        request: tonic::Request<tonic::Streaming<ReportRequest>>,
    ) -> Result<tonic::Response<ReportSummary>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut accepted = 0;
        while let Some(message) = stream.next().await {
            if let Some(report_request::Report::Pod(report)) = message?.report {
                accepted += 1;
                let _ = self.0.send(report);
            }
        }
        Ok(tonic::Response::new(ReportSummary { accepted }))
    }
}

impl IngestSink {
    pub async fn start() -> IngestSink {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    pub fn on(listener: TcpListener) -> IngestSink {
        let addr = listener.local_addr().unwrap();
        let (tx, reports) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(IngestServer::new(Sink(tx)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        IngestSink {
            addr,
            reports,
            task,
        }
    }

    /// The next report, waiting at most `within`.
    pub async fn next(&mut self, within: Duration) -> PodReport {
        tokio::time::timeout(within, self.reports.recv())
            .await
            .expect("a report arrives in time")
            .expect("ingest server still running")
    }

    /// Reports until `done` says enough, waiting at most `within` overall.
    pub async fn until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&[PodReport]) -> bool,
    ) -> Vec<PodReport> {
        let deadline = tokio::time::Instant::now() + within;
        let mut all = Vec::new();
        while !done(&all) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.reports.recv()).await {
                Ok(Some(report)) => all.push(report),
                _ => panic!("reports never satisfied the test within {within:?}: {all:#?}"),
            }
        }
        all
    }
}

impl Drop for IngestSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An app handler that answers after `delay` with a small body.
pub async fn slow_ok(delay: Duration) -> Response<Body> {
    tokio::time::sleep(delay).await;
    Response::new(full("ok"))
}
