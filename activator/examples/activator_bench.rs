//! The activator's benchmarks on loopback, without Kubernetes: the real library, with the route
//! and pods a cluster would give it set from the command line. Run by `bench/activator.sh`;
//! nothing here asserts a number, it prints what it measured as one JSON object.
//!
//!   serve        an activator for Host `web.shop` (and each `--host`), pods from `--pod`,
//!                until killed: the process whose memory and forwarding cost are measured
//!   activations  readyz → forward: N activations; each holds a request for a workload at zero,
//!                turns the pod's /readyz to 200 at a random phase of the probe period, and
//!                times the request's arrival at the app
//!   held         N requests held by a `serve` child; its RSS; then the pod comes up and every
//!                request must be answered 200
//!   wake         N workloads at zero, one request each: the time from sending it to the real
//!                aggregator pushing `true` on a StreamIsActive stream opened before, as KEDA's

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{free_port, get, hta_named, local, scaled_object, start_aggregator, Running};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use inflight_activator::pods::Endpoint;
use inflight_activator::routes::Routes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Parser)]
enum Bench {
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        admin_listen: SocketAddr,
        /// A pod: `DATA_ADDR,ADMIN_ADDR[,ready]` (`ready`: the slice says so; else the
        /// activator waits for its /readyz).
        #[arg(long, required = true)]
        pod: Vec<String>,
        /// More Host names routed to the workload (`spec.hosts`).
        #[arg(long)]
        host: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        max_pending: u32,
        #[arg(long, default_value_t = 0)]
        container_concurrency: u32,
        #[arg(long, default_value_t = 1)]
        threads: u16,
    },
    Activations {
        #[arg(long, default_value_t = 100)]
        n: usize,
        #[arg(long, default_value = "25ms")]
        probe_interval: String,
    },
    Wake {
        #[arg(long, default_value_t = 100)]
        n: usize,
    },
    Held {
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        #[arg(long, default_value_t = 100)]
        container_concurrency: u32,
    },
}

fn main() {
    let bench = Bench::parse();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    match bench {
        Bench::Serve {
            listen,
            admin_listen,
            pod,
            host,
            max_pending,
            container_concurrency,
            threads,
        } => serve(
            listen,
            admin_listen,
            &pod,
            &host,
            max_pending,
            container_concurrency,
            threads,
        ),
        Bench::Activations { n, probe_interval } => rt().block_on(activations(n, &probe_interval)),
        Bench::Held {
            n,
            container_concurrency,
        } => rt().block_on(held(n, container_concurrency)),
        Bench::Wake { n } => rt().block_on(wake(n)),
    }
}

fn serve(
    listen: SocketAddr,
    admin: SocketAddr,
    pods: &[String],
    hosts: &[String],
    max_pending: u32,
    cc: u32,
    threads: u16,
) {
    let threads = threads.to_string();
    let activator = Running::start_on(
        listen,
        admin,
        &["--threads", &threads, "--max-workloads", "10"],
    );
    let mut hta = serde_json::to_value(common::hta(
        serde_json::json!({"maxPendingRequests": max_pending, "timeout": "5m"}),
        cc,
    ))
    .unwrap();
    hta["spec"]["hosts"] = serde_json::json!(hosts);
    let hta = serde_json::from_value(hta).unwrap();
    activator
        .activator
        .set_routes(Routes::build([&hta], "cluster.local"));
    let pods: Vec<(SocketAddr, SocketAddr, bool)> = pods
        .iter()
        .map(|p| {
            let mut parts = p.split(',');
            let data = parts.next().unwrap().parse().expect("DATA_ADDR");
            let admin = parts
                .next()
                .expect("ADMIN_ADDR")
                .parse()
                .expect("ADMIN_ADDR");
            (data, admin, parts.next() == Some("ready"))
        })
        .collect();
    activator.pods(&pods);
    loop {
        std::thread::park();
    }
}

/// A pod's admin port: `/readyz` 503 until `ready`, then 200; records when it first said 200.
fn readyz_server(
    listener: tokio::net::TcpListener,
    ready: Arc<AtomicBool>,
    first_200: Arc<Mutex<Option<Instant>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (ready, first_200) = (ready.clone(), first_200.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_r: Request| {
                    let status = if ready.load(Ordering::SeqCst) {
                        first_200.lock().unwrap().get_or_insert_with(Instant::now);
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

type Request = http::Request<Incoming>;

/// The app: answers 200 at once; records when its first request arrived.
fn app_server(
    listener: tokio::net::TcpListener,
    first: Arc<Mutex<Option<Instant>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let first = first.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_r: Request| {
                    first.lock().unwrap().get_or_insert_with(Instant::now);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    serde_json::json!({
        "n": ms.len(),
        "p50_ms": percentile(&ms, 50.0),
        "p99_ms": percentile(&ms, 99.0),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
    })
}

async fn activations(n: usize, probe_interval: &str) {
    let activator = Running::start(&["--probe-interval", probe_interval]);
    activator.route_web(serde_json::json!({"timeout": "5m"}), 0);
    let period = humantime::parse_duration(probe_interval).unwrap();
    let mut from_ready = Vec::new();
    let mut from_first_200 = Vec::new();
    // A fixed-seed LCG: each activation's readiness falls at another phase of the probe period.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..n {
        let admin_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (admin, data) = (admin_l.local_addr().unwrap(), app_l.local_addr().unwrap());
        let ready = Arc::new(AtomicBool::new(false));
        let first_200 = Arc::new(Mutex::new(None));
        let arrived = Arc::new(Mutex::new(None));
        let servers = [
            readyz_server(admin_l, ready.clone(), first_200.clone()),
            app_server(app_l, arrived.clone()),
        ];
        activator.activator.pods.set_slice(
            common::BACKEND,
            "web-inflight-1",
            vec![Endpoint {
                data,
                admin,
                pod: Some("web-0".into()),
                ready: false,
                terminating: false,
            }],
        );
        let addr = activator.addr;
        let request = tokio::spawn(async move { get(addr, "/", "web.shop").await });
        while activator.held() != 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let phase = period.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64);
        tokio::time::sleep(period + phase).await;
        let flipped = Instant::now();
        ready.store(true, Ordering::SeqCst);
        let (status, _) = request.await.unwrap().expect("answered");
        assert_eq!(status, 200);
        let at_app = arrived.lock().unwrap().expect("the app saw it");
        let said_200 = first_200.lock().unwrap().expect("a probe saw 200");
        from_ready.push(at_app.saturating_duration_since(flipped).as_secs_f64() * 1e3);
        from_first_200.push(at_app.saturating_duration_since(said_200).as_secs_f64() * 1e3);
        for s in servers {
            s.abort();
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "probe_interval": probe_interval,
            "ready_to_app": summary(from_ready),
            "first_200_to_app": summary(from_first_200),
        })
    );
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn held(n: usize, cc: u32) {
    let (listen, admin) = (local(free_port()), local(free_port()));
    let (pod_data, pod_admin) = (local(free_port()), local(free_port()));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["serve", "--listen", &listen.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--pod", &format!("{pod_data},{pod_admin}")])
        .args(["--max-pending", &n.to_string()])
        .args(["--container-concurrency", &cc.to_string()])
        .args(["--threads", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    while std::net::TcpStream::connect(admin).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rss_idle, _) = rss_kib(pid);

    // Each request on a connection of its own, as n clients would send them.
    let start = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        clients.push(tokio::spawn(async move {
            let head = format!("GET /r{i} HTTP/1.1\r\nHost: web.shop\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response).await;
            response.starts_with(b"HTTP/1.1 200")
        }));
    }
    let stats = |admin| async move {
        let (_, body) = get(admin, "/stats", "admin").await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    while stats(admin).await["held_total"].as_u64() != Some(n as u64) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_held = start.elapsed();
    let (rss_held, hwm_held) = rss_kib(pid);

    // The pod comes up.
    let woke = Instant::now();
    let ready = Arc::new(AtomicBool::new(true));
    let _servers = [
        readyz_server(
            tokio::net::TcpListener::bind(pod_admin).await.unwrap(),
            ready,
            Arc::new(Mutex::new(None)),
        ),
        app_server(
            tokio::net::TcpListener::bind(pod_data).await.unwrap(),
            Arc::new(Mutex::new(None)),
        ),
    ];
    let mut ok = 0usize;
    for c in clients {
        if c.await.unwrap() {
            ok += 1;
        }
    }
    let drained = woke.elapsed();
    let (rss_after, hwm_after) = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{}",
        serde_json::json!({
            "held": n,
            "container_concurrency": cc,
            "seconds_to_hold_all": all_held.as_secs_f64(),
            "rss_idle_kib": rss_idle,
            "rss_held_kib": rss_held,
            "hwm_held_kib": hwm_held,
            "answered_200": ok,
            "seconds_from_wake_to_all_answered": drained.as_secs_f64(),
            "rss_after_kib": rss_after,
            "hwm_after_kib": hwm_after,
        })
    );
}

async fn wake(n: usize) {
    let aggregator = start_aggregator();
    let activator = Running::start(&[
        "--aggregator",
        &format!("http://{}", aggregator.ingest),
        "--report-interval",
        "60s",
    ]);
    let names: Vec<String> = (0..n).map(|i| format!("web{i}")).collect();
    let htas: Vec<_> = names
        .iter()
        .map(|name| hta_named(name, serde_json::json!({"timeout": "5m"}), 0))
        .collect();
    activator
        .activator
        .set_routes(Routes::build(htas.iter(), "cluster.local"));
    let mut keda =
        inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient::connect(
            format!("http://{}", aggregator.scaler),
        )
        .await
        .unwrap();
    while !activator.stats().await["aggregators"][0]["connected"]
        .as_bool()
        .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut took = Vec::new();
    let mut held = Vec::new();
    for name in &names {
        let mut pushes = keda
            .stream_is_active(scaled_object(name))
            .await
            .unwrap()
            .into_inner();
        let first = pushes.message().await.unwrap().unwrap();
        assert!(!first.result, "{name} was active before its request");
        let addr = activator.addr;
        let host = format!("{name}.shop");
        let sent = Instant::now();
        held.push(tokio::spawn(async move { get(addr, "/", &host).await }));
        let pushed = pushes.message().await.unwrap().unwrap();
        assert!(pushed.result);
        took.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    for h in held {
        h.abort();
    }
    println!(
        "{}",
        serde_json::json!({"request_to_stream_is_active_true": summary(took)})
    );
}
