//! Holding on loopback: requests for a workload with no ready pod are held and each answered
//! once by the app when a pod becomes ready; what cannot be held is refused with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_held_requests_are_each_answered_once_when_a_pod_becomes_ready() {
    let activator = Running::start(&[]);
    activator.route_web(serde_json::json!({"maxPendingRequests": 1000}), 0);
    // The pod is scheduled: Kubernetes lists its address, nothing listens there yet.
    let (data, admin, app) = (local(free_port()), local(free_port()), local(free_port()));
    activator.pods(&[(data, admin, false)]);

    let client = http1_client();
    let mut requests = Vec::new();
    for i in 0..1000 {
        let client = client.clone();
        let addr = activator.addr;
        requests.push(tokio::spawn(async move {
            let request = Request::get(format!("http://{addr}/work"))
                .header("host", "web.shop.svc.cluster.local:80")
                .header("x-request-id", format!("r{i}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = client.request(request).await.unwrap();
            let status = response.status().as_u16();
            let cold = cold_start_ms(response.headers());
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (i, status, cold, body)
        }));
    }
    eventually("1000 requests held", Duration::from_secs(60), async || {
        activator.held() == 1000
    })
    .await;
    let stats = activator.stats().await;
    assert_eq!(stats["held"][WORKLOAD], 1000, "{stats}");

    // The pod comes up: its app, then its proxy, which answers /readyz once the app listens.
    let counting = CountingApp::default();
    counting.start(app);
    start_proxy(data, admin, app);

    for r in requests {
        let (i, status, cold, body) = r.await.unwrap();
        assert_eq!(status, 200, "request {i}: {body:?}");
        assert_eq!(&body[..], format!("r{i}").as_bytes());
        assert!(cold.is_some(), "request {i} was held and says so");
    }
    assert_eq!(counting.count(), 1000, "each request reached the app once");
    let seen = counting.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1000);
    assert!(seen.values().all(|n| *n == 1), "a request was duplicated");
    assert_eq!(activator.held(), 0);
    let stats = activator.stats().await;
    assert_eq!(stats["requests"]["forwarded_held"], 1000, "{stats}");
    assert_eq!(stats["held_total"], 0);

    // Up now: the next request goes at once, not held, and says nothing of a cold start.
    let (status, headers, _) = request(
        activator.addr,
        Request::get("/again").header("host", "web.shop"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(cold_start_ms(&headers), None);
    assert_eq!(activator.stats().await["requests"]["forwarded"], 1);
}

#[tokio::test]
async fn what_cannot_be_held_is_refused_with_the_reason() {
    let activator = Running::start(&[]);
    activator.route_web(
        serde_json::json!({"maxPendingRequests": 2, "timeout": "1s"}),
        0,
    );

    // Unknown host: 404 naming it.
    let (status, body) = get(activator.addr, "/", "nobody.example").await.unwrap();
    assert_eq!(status, 404);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("nobody.example"), "{body}");

    // Held longer than activation.timeout: 504 saying so.
    let (status, headers, body) = request(activator.addr, Request::get("/").header("host", "web"))
        .await
        .unwrap();
    assert_eq!(status, 504);
    assert!(headers.get("retry-after").is_none());
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("no pod of shop/deployment/web was ready within 1s"),
        "{body}"
    );

    // The queue full: 503 with Retry-After. Two wait, the third is refused at once.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let addr = activator.addr;
            tokio::spawn(async move { get(addr, "/", "web.shop").await })
        })
        .collect();
    eventually("two held", Duration::from_secs(10), async || {
        activator.held() == 2
    })
    .await;
    let (status, headers, body) =
        request(activator.addr, Request::get("/").header("host", "web.shop"))
            .await
            .unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "1");
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("shop/deployment/web already has 2 requests waiting"),
        "{body}"
    );
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap().0, 504);
    }

    // A client that leaves while held leaves the queue, and is counted.
    let addr = activator.addr;
    let leaving = tokio::spawn(async move { get(addr, "/", "web").await });
    eventually("one held", Duration::from_secs(10), async || {
        activator.held() == 1
    })
    .await;
    leaving.abort();
    eventually("the client gone", Duration::from_secs(10), async || {
        activator.held() == 0
    })
    .await;
    eventually("counted as gone", Duration::from_secs(10), async || {
        activator.stats().await["requests"]["client_gone"] == 1
    })
    .await;
    let stats = activator.stats().await;
    assert_eq!(stats["requests"]["no_route"], 1, "{stats}");
    assert_eq!(stats["requests"]["rejected"], 1, "{stats}");
    assert_eq!(stats["requests"]["timed_out"], 3, "{stats}");
}
