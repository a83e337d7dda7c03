//! SIGTERM: `/readyz` turns 503 at once so the operator takes this activator out of the
//! Services' endpoints; requests still arriving meanwhile are taken; what is held is forwarded
//! if a pod becomes ready in time, else answered 503 with `Retry-After` at the drain limit, and
//! the process then exits. Nothing held is dropped without an answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::Request;

fn hold_one(addr: SocketAddr, i: usize) -> tokio::task::JoinHandle<(u16, http::HeaderMap, String)> {
    tokio::spawn(async move {
        let (status, headers, body) = request(
            addr,
            Request::get("/")
                .header("host", "web.shop")
                .header("x-request-id", format!("r{i}")),
        )
        .await
        .unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_answered_503_with_retry_after_at_the_drain_limit() {
    let mut activator = Running::start(&["--drain-period", "2s", "--drain-timeout", "5s"]);
    activator.route_web(serde_json::json!({"timeout": "5m"}), 0);
    let (data, admin) = (local(free_port()), local(free_port()));
    activator.pods(&[(data, admin, false)]);
    let held: Vec<_> = (0..10).map(|i| hold_one(activator.addr, i)).collect();
    eventually("10 held", Duration::from_secs(30), async || {
        activator.held() == 10
    })
    .await;
    let (status, _) = get(activator.admin, "/readyz", "admin").await.unwrap();
    assert_eq!(status, 200);

    activator.terminate();
    eventually(
        "/readyz says draining",
        Duration::from_secs(10),
        async || {
            get(activator.admin, "/readyz", "admin")
                .await
                .is_some_and(|(s, _)| s == 503)
        },
    )
    .await;
    // Still in the Service's endpoints for a moment: a request arriving now is taken and held.
    let late = hold_one(activator.addr, 10);
    eventually(
        "the late request held too",
        Duration::from_secs(10),
        async || activator.held() == 11,
    )
    .await;

    for r in held.into_iter().chain([late]) {
        let (status, headers, body) = r.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(headers["retry-after"], "1");
        assert!(body.contains("shutting down"), "{body}");
    }
    eventually("run returned", Duration::from_secs(30), async || {
        activator.exited()
    })
    .await;
    assert_eq!(activator.held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_forwarded_when_a_pod_becomes_ready_during_the_drain() {
    // A drain limit no test waits for: the process exits as soon as nothing is held.
    let mut activator = Running::start(&["--drain-period", "0s", "--drain-timeout", "10m"]);
    activator.route_web(serde_json::json!({"timeout": "5m"}), 0);
    let (data, admin, app) = (local(free_port()), local(free_port()), local(free_port()));
    activator.pods(&[(data, admin, false)]);
    let held: Vec<_> = (0..10).map(|i| hold_one(activator.addr, i)).collect();
    eventually("10 held", Duration::from_secs(30), async || {
        activator.held() == 10
    })
    .await;

    activator.terminate();
    eventually(
        "/readyz says draining",
        Duration::from_secs(10),
        async || {
            get(activator.admin, "/readyz", "admin")
                .await
                .is_some_and(|(s, _)| s == 503)
        },
    )
    .await;
    assert!(!activator.exited(), "it waits for what it holds");
    let counting = CountingApp::default();
    counting.start(app);
    start_proxy(data, admin, app);

    for (i, r) in held.into_iter().enumerate() {
        let (status, headers, body) = r.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("r{i}"));
        assert!(cold_start_ms(&headers).is_some());
    }
    assert_eq!(counting.count(), 10);
    eventually(
        "run returned once nothing was held",
        Duration::from_secs(30),
        async || activator.exited(),
    )
    .await;
}
