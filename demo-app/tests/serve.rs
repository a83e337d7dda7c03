//! The real `inflight-demo-app serve` on a loopback port: HTTP and `/healthz`,
//! gRPC `Echo` and `Count` on the same port, and a clean, prompt exit on
//! SIGTERM even with a stream in flight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use inflight_proto::demo::v1::demo_client::DemoClient;
use inflight_proto::demo::v1::{CountRequest, EchoRequest};

const POD: &str = "demo-7c9d-xk2p4";

/// A running app; killed on drop so a failing test leaves nothing behind.
struct App {
    child: Child,
    addr: SocketAddr,
}

impl App {
    /// Starts the app on port 0 and learns the port from its startup line,
    /// so no other process can take the port between choosing and binding.
    fn start(latency: &str) -> App {
        let mut child = Command::new(env!("CARGO_BIN_EXE_inflight-demo-app"))
            .args(["serve", "--listen", "127.0.0.1:0", "--latency", latency])
            .args(["--jitter", "0ms"])
            .env("POD_NAME", POD)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("inflight-demo-app starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep the pipe open and drained: a write to a closed stdout
            // would fail in the app.
            lines.for_each(drop);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(error) => {
                let _ = child.kill();
                panic!("no startup line from inflight-demo-app: {error}");
            }
        };
        let mut app = App {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        app.addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in the startup line {line:?}"))
            .parse()
            .unwrap();
        assert!(line.contains(&format!("pod={POD}")), "{line}");
        app
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let response = client.get(self.url(path).parse().unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn grpc(&self) -> DemoClient<tonic::transport::Channel> {
        DemoClient::connect(self.url("")).await.unwrap()
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the app to exit, for at most `within`.
    async fn exit_status(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn http_answers_after_the_latency_and_other_paths_work() {
    let app = App::start("100ms");

    let started = Instant::now();
    let (status, body) = app.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("hello from the inflight demo app on {POD}\n"));
    assert!(started.elapsed() >= Duration::from_millis(100));

    let started = Instant::now();
    assert_eq!(app.get("/sleep/150").await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    assert_eq!(app.get("/status/503").await.0, 503);
    assert_eq!(app.get("/healthz").await, (200, "ok\n".to_owned()));
}

#[tokio::test]
async fn healthz_does_not_wait_for_the_latency() {
    // With an hour of latency, a /healthz that honoured it would never answer
    // within the test's patience.
    let app = App::start("1h");
    let answer = tokio::time::timeout(Duration::from_secs(30), app.get("/healthz")).await;
    assert_eq!(answer.ok(), Some((200, "ok\n".to_owned())));
}

#[tokio::test]
async fn grpc_echo_honours_latency_and_delay_and_names_the_pod() {
    let app = App::start("50ms");
    let mut client = app.grpc().await;

    let started = Instant::now();
    let reply = client
        .echo(EchoRequest {
            message: "hello, gRPC".into(),
            delay_ms: 200,
        })
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert_eq!(reply.message, "hello, gRPC");
    assert_eq!(reply.pod, POD);
    assert!(took >= Duration::from_millis(250), "took {took:?}");

    // HTTP still answers on the same port, next to gRPC.
    assert_eq!(app.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_websocket_is_accepted_names_the_pod_and_echoes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = App::start("0ms");
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/chat", app.addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    let hello = ws.next().await.unwrap().unwrap();
    assert_eq!(hello, Message::text(format!("connected to {POD}")));
    for text in ["one", "two"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2])
    );
    // Plain HTTP goes on beside it.
    assert_eq!(app.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn grpc_count_streams_n_replies_in_order() {
    let app = App::start("0ms");
    let mut client = app.grpc().await;

    let started = Instant::now();
    let mut stream = client
        .count(CountRequest {
            n: 5,
            interval_ms: 30,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        seen.push(reply.i);
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    assert!(started.elapsed() >= Duration::from_millis(4 * 30));

    let empty = client
        .count(CountRequest {
            n: 0,
            interval_ms: 30,
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap();
    assert_eq!(empty, None);
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_promptly_with_a_stream_in_flight() {
    let mut app = App::start("50ms");
    let mut client = app.grpc().await;
    // A stream that would run for 100 s: the exit must not wait for it.
    let mut stream = client
        .count(CountRequest {
            n: 1000,
            interval_ms: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().map(|r| r.i), Some(1));

    app.sigterm();
    let status = app.exit_status(Duration::from_secs(20)).await;
    let status = status.expect("the app exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}
