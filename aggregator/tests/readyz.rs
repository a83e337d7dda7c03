//! `/readyz` of the real aggregator binary: not ready until warmed up, so KEDA's Service sends its
//! calls to a replica that has heard every pod.

#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::time::{Duration, Instant};

use common::Aggregator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(a: &Aggregator, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(a.admin).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn not_ready_while_warming_up_but_alive() {
    let a = Aggregator::start(&["--warm-up", "1h"]);
    let ready = get(&a, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.0 503"), "{ready}");
    assert!(ready.contains("warming up"), "{ready}");
    let healthy = get(&a, "/healthz").await;
    assert!(healthy.starts_with("HTTP/1.0 200"), "{healthy}");
}

#[tokio::test]
async fn ready_once_the_warm_up_has_passed() {
    let a = Aggregator::start(&["--warm-up", "1s"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = get(&a, "/readyz").await;
        if ready.starts_with("HTTP/1.0 200") {
            break;
        }
        assert!(ready.contains("warming up"), "{ready}");
        assert!(Instant::now() < deadline, "still not ready: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
