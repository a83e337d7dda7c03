//! Starting the real aggregator binary, and the real proxy and demo app beside it, on loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod smi;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` of an admin port (the aggregator's, a proxy's): the whole answer, head and body.
pub async fn admin_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

/// The `inflight-aggregator` binary, killed when dropped.
pub struct Aggregator {
    pub child: Child,
    /// `Ingest`.
    pub grpc: SocketAddr,
    /// KEDA's external scaler.
    pub scaler: SocketAddr,
    pub admin: SocketAddr,
}

impl Aggregator {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], free_port())), extra)
    }

    pub fn start_on(grpc: SocketAddr, extra: &[&str]) -> Self {
        Self::start_with_env(grpc, extra, &[])
    }

    pub fn start_with_env(grpc: SocketAddr, extra: &[&str], env: &[(&str, &str)]) -> Self {
        // No cluster, so no TokenReview: tests/ingest_auth.rs is where reports are authenticated;
        // and no operator's certificates: tests/scaler_tls.rs is where KEDA's are checked.
        let mut command = Command::new(env!("CARGO_BIN_EXE_inflight-aggregator"));
        command
            .envs(env.iter().copied())
            .env_remove("KUBECONFIG")
            .args(["--ingest-auth", "none"]);
        Self::spawn(command, grpc, extra)
    }

    /// An aggregator that reviews every report stream's token with the cluster of `kubeconfig`.
    pub fn start_reviewing(kubeconfig: &std::path::Path, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_inflight-aggregator"));
        command.env("KUBECONFIG", kubeconfig);
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::spawn(command, grpc, extra)
    }

    fn spawn(mut command: Command, grpc: SocketAddr, extra: &[&str]) -> Self {
        if !extra.contains(&"--scaler-auth") {
            command.args(["--scaler-auth", "none"]);
        }
        // A port just released may be handed out again at once: four distinct ones.
        let other = |taken: &[u16]| loop {
            let p = free_port();
            if !taken.contains(&p) {
                break p;
            }
        };
        let admin = SocketAddr::from(([127, 0, 0, 1], other(&[grpc.port()])));
        let scaler = SocketAddr::from(([127, 0, 0, 1], other(&[grpc.port(), admin.port()])));
        let smi = other(&[grpc.port(), admin.port(), scaler.port()]);
        let child = command
            .args([
                "--grpc-listen",
                &grpc.to_string(),
                "--scaler-listen",
                &scaler.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            // Tests run side by side: the SMI API on a port of its own.
            .args(["--smi-listen", &format!("127.0.0.1:{smi}")])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let a = Self {
            child,
            grpc,
            scaler,
            admin,
        };
        a.wait_ready();
        a
    }

    fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.grpc).is_err()
            || std::net::TcpStream::connect(self.scaler).is_err()
            || std::net::TcpStream::connect(self.admin).is_err()
        {
            assert!(
                Instant::now() < until,
                "aggregator did not listen on {} and {}",
                self.grpc,
                self.admin
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where reports go.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Where KEDA calls (plaintext: `--scaler-auth none`).
    pub fn scaler_url(&self) -> String {
        format!("http://{}", self.scaler)
    }

    /// `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics").await
    }

    /// The value of one sample line of `/metrics` (exact name with labels), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().await.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the demo app and an inflight-proxy in front of it (the real libraries, each on a runtime
/// of its own thread), reporting to `aggregator` as pod `pod` of `workload` in namespace `shop`.
/// Returns the proxy's data address.
pub fn proxy_in_front_of_demo_app(aggregator: &str, workload: &str, pod: &str) -> SocketAddr {
    proxy_reporting(aggregator, workload, "shop", pod, &[]).0
}

/// As [`proxy_in_front_of_demo_app`], as pod `pod` of namespace `namespace`, with `extra` flags;
/// returns the proxy's data and admin addresses.
pub fn proxy_reporting(
    aggregator: &str,
    workload: &str,
    namespace: &str,
    pod: &str,
    extra: &[&str],
) -> (SocketAddr, SocketAddr) {
    let app = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
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
            app,
            config,
            std::future::pending(),
        ))
        .unwrap();
    });
    let args = [
        "inflight-proxy",
        "--listen",
        &proxy.to_string(),
        "--admin-listen",
        &admin.to_string(),
        "--upstream",
        &app.to_string(),
        "--aggregator",
        aggregator,
        "--workload",
        workload,
        "--pod-name",
        pod,
        "--pod-namespace",
        namespace,
        "--threads",
        "1",
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(str::to_owned)
    .collect::<Vec<_>>();
    std::thread::spawn(move || {
        let config =
            <inflight_proxy::config::Config as clap::Parser>::try_parse_from(args).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(inflight_proxy::run(config, std::future::pending()))
            .unwrap();
    });
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(proxy).is_err() {
        assert!(Instant::now() < until, "proxy did not listen on {proxy}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (proxy, admin)
}
