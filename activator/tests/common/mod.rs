//! The activator on loopback: the real library serving on its own threads, as the binary does,
//! with its routes and pods given by the test rather than watched in a cluster (the test bed's
//! tests do that); pods made of the real inflight-proxy in front of an app, each on a runtime of
//! its own thread; real HTTP, gRPC and websocket clients.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use inflight_activator::pods::Endpoint;
use inflight_activator::routes::Routes;
use inflight_activator::Activator;
use inflight_api::HttpAutoscaler;

pub const WORKLOAD: &str = "shop/deployment/web";
pub const BACKEND: &str = "shop/web-inflight";

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits for `what` to hold, checking every 10 ms, for at most `within`.
pub async fn eventually<F: Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) {
    let until = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < until, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The activator, serving until dropped.
pub struct Running {
    pub activator: Arc<Activator>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn start(extra: &[&str]) -> Running {
        Self::start_on(local(free_port()), local(free_port()), extra)
    }

    pub fn start_on(addr: SocketAddr, admin: SocketAddr, extra: &[&str]) -> Running {
        let mut args: Vec<String> = [
            "inflight-activator",
            "--listen",
            &addr.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--pod-name",
            "activator-0",
            "--pod-namespace",
            "inflight-system",
        ]
        .map(str::to_owned)
        .to_vec();
        for (flag, value) in [("--threads", "2"), ("--drain-period", "0s")] {
            if !extra.contains(&flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = inflight_activator::Config::try_from_args(args).unwrap();
        let activator = inflight_activator::activator(&config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let a = activator.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(inflight_activator::run(config, a, None, async {
                let _ = stopped.await;
            }))
            .unwrap();
        });
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err()
            || std::net::TcpStream::connect(admin).is_err()
        {
            assert!(Instant::now() < until, "activator did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Running {
            activator,
            addr,
            admin,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Routes the Service `web` of namespace `shop` (HTTPAutoscaler `web`, workload
    /// `deployment/web`) with `activation` and `containerConcurrency`.
    pub fn route_web(&self, activation: serde_json::Value, concurrency: u32) {
        self.activator.set_routes(Routes::build(
            [&hta(activation, concurrency)],
            "cluster.local",
        ));
    }

    /// Lists the pods of `web` as Kubernetes' slice would: `(proxy, admin, ready)`.
    pub fn pods(&self, pods: &[(SocketAddr, SocketAddr, bool)]) {
        let endpoints = pods
            .iter()
            .enumerate()
            .map(|(i, (data, admin, ready))| Endpoint {
                data: *data,
                admin: *admin,
                pod: Some(format!("web-{i}")),
                ready: *ready,
                terminating: false,
            })
            .collect();
        self.activator
            .pods
            .set_slice(BACKEND, "web-inflight-1", endpoints);
    }

    pub fn held(&self) -> usize {
        self.activator.holds.held_total()
    }

    pub async fn stats(&self) -> serde_json::Value {
        let (_, body) = get(self.admin, "/stats", "admin").await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Sends SIGTERM's equivalent.
    pub fn terminate(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether `run` has returned.
    pub fn exited(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Sends SIGTERM's equivalent and waits for `run` to return.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn hta(activation: serde_json::Value, concurrency: u32) -> HttpAutoscaler {
    hta_named("web", activation, concurrency)
}

/// The HTTPAutoscaler `name` of namespace `shop`, for the Service and Deployment `name`.
pub fn hta_named(name: &str, activation: serde_json::Value, concurrency: u32) -> HttpAutoscaler {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "inflight.dev/v1alpha1", "kind": "HTTPAutoscaler",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": name},
            "service": {"name": name, "port": 80},
            "minReplicas": 0, "maxReplicas": 10,
            "containerConcurrency": concurrency,
            "activation": activation,
        }
    }))
    .unwrap()
}

/// A pod: the real inflight-proxy on `data` and `admin` in front of the app at `app`, started
/// now on a thread of its own.
pub fn start_proxy(data: SocketAddr, admin: SocketAddr, app: SocketAddr) {
    let args = [
        "inflight-proxy",
        "--listen",
        &data.to_string(),
        "--admin-listen",
        &admin.to_string(),
        "--upstream",
        &app.to_string(),
        "--threads",
        "1",
    ]
    .map(str::to_owned);
    let config = inflight_proxy::Config::try_parse_from(args).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(inflight_proxy::run(config, std::future::pending()))
            .unwrap();
    });
}

/// The demo app (HTTP/1.1, h2c and gRPC) on `addr`, on a thread of its own.
pub fn start_demo_app(addr: SocketAddr) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = inflight_demo_app::app::AppConfig {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
        };
        rt.block_on(inflight_demo_app::app::serve(
            addr,
            config,
            std::future::pending(),
        ))
        .unwrap();
    });
}

/// An app that answers 200 with the request's `x-request-id` and counts each id it sees.
#[derive(Clone, Default)]
pub struct CountingApp {
    pub seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl CountingApp {
    /// Serves on `addr` from now, on a thread of its own.
    pub fn start(&self, addr: SocketAddr) {
        let seen = self.seen.clone();
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |r: Request<Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let id = r
                                    .headers()
                                    .get("x-request-id")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned();
                                let body = r.into_body().collect().await.map(|b| b.to_bytes());
                                *seen.lock().unwrap().entry(id.clone()).or_default() += 1;
                                let mut answer = id.into_bytes();
                                if let Ok(body) = body {
                                    answer.extend_from_slice(&body);
                                }
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
    }

    pub fn count(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .values()
            .map(|n| *n as usize)
            .sum()
    }
}

/// One GET over a connection of its own: status and body.
pub async fn get(addr: SocketAddr, path: &str, host: &str) -> Option<(u16, Bytes)> {
    let r = request(addr, Request::get(path).header("host", host)).await?;
    Some((r.0, r.2))
}

/// Sends `builder` with an empty body over a connection of its own: status, headers, body.
pub async fn request(
    addr: SocketAddr,
    builder: http::request::Builder,
) -> Option<(u16, http::HeaderMap, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let response = sender
        .send_request(builder.body(Full::new(Bytes::new())).ok()?)
        .await
        .ok()?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, headers, body))
}

pub fn http1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn http2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// The milliseconds of a response's `X-Inflight-Cold-Start`.
pub fn cold_start_ms(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get("x-inflight-cold-start")?
        .to_str()
        .ok()?
        .strip_suffix("ms")?
        .parse()
        .ok()
}

/// The real aggregator's addresses: where reports go, and where KEDA calls.
#[derive(Debug, Clone, Copy)]
pub struct Aggregator {
    pub ingest: SocketAddr,
    pub scaler: SocketAddr,
}

/// The real aggregator, in this process on a thread of its own, its scaler port plaintext (who
/// may call it is the aggregator's and the operator's tests' to show).
pub fn start_aggregator() -> Aggregator {
    let (grpc, scaler, smi, admin) = (
        local(free_port()),
        local(free_port()),
        local(free_port()),
        local(free_port()),
    );
    let config = inflight_aggregator::Config::try_parse_from([
        "inflight-aggregator",
        "--grpc-listen",
        &grpc.to_string(),
        "--scaler-listen",
        &scaler.to_string(),
        "--scaler-auth",
        "none",
        "--smi-listen",
        &smi.to_string(),
        "--admin-listen",
        &admin.to_string(),
        // A fresh process in a test: no reporter is yet to find it.
        "--warm-up",
        "0s",
        // No cluster here to review tokens with.
        "--ingest-auth",
        "none",
    ])
    .unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(inflight_aggregator::run(config, std::future::pending()))
            .unwrap();
    });
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(grpc).is_err() {
        assert!(
            Instant::now() < until,
            "aggregator did not listen on {grpc}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Aggregator {
        ingest: grpc,
        scaler,
    }
}

/// The ScaledObject KEDA would send for the Deployment `name` of `shop` (what the operator
/// writes in its trigger).
pub fn scaled_object(name: &str) -> inflight_proto::externalscaler::ScaledObjectRef {
    inflight_proto::externalscaler::ScaledObjectRef {
        name: name.into(),
        namespace: "shop".into(),
        scaler_metadata: HashMap::from([
            ("workload".to_owned(), format!("deployment/{name}")),
            ("target".to_owned(), "10".to_owned()),
            ("scaleToZeroAfter".to_owned(), "5m".to_owned()),
        ]),
    }
}
