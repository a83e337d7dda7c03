//! A pod coming up never costs a client a 502: a pod listed before its proxy listens, a pod
//! whose proxy is up before its app, and a pod that resets the first connection made to it.
//! Each request is answered 200 by the app, once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// `n` GETs for `web` at once, each with its own `x-request-id`; (status, body) of each.
fn send(addr: SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<(usize, u16, Bytes)>> {
    let client = http1_client();
    (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let request = Request::get(format!("http://{addr}/work"))
                    .header("host", "web.shop.svc")
                    .header("x-request-id", format!("r{i}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let response = client.request(request).await.unwrap();
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (i, status, body)
            })
        })
        .collect()
}

async fn all_answered_once(
    requests: Vec<tokio::task::JoinHandle<(usize, u16, Bytes)>>,
    app: &CountingApp,
) {
    let n = requests.len();
    for r in requests {
        let (i, status, body) = r.await.unwrap();
        assert_eq!(status, 200, "request {i}: {body:?}");
        assert_eq!(&body[..], format!("r{i}").as_bytes());
    }
    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), n);
    assert!(seen.values().all(|c| *c == 1), "a request was duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_listed_ready_before_its_proxy_listens_is_waited_for() {
    let activator = Running::start(&[]);
    activator.route_web(serde_json::json!({}), 0);
    // The slice already says ready (a stale slice, a pod replaced at the same address): the
    // first forward is refused, and the request is held until the pod answers /readyz.
    let (data, admin, app) = (local(free_port()), local(free_port()), local(free_port()));
    activator.pods(&[(data, admin, true)]);
    let requests = send(activator.addr, 50);
    eventually(
        "a forward was refused and the requests held",
        Duration::from_secs(30),
        async || activator.stats().await["retries"].as_u64() >= Some(1) && activator.held() > 0,
    )
    .await;

    let counting = CountingApp::default();
    counting.start(app);
    start_proxy(data, admin, app);
    all_answered_once(requests, &counting).await;
    let stats = activator.stats().await;
    assert_eq!(stats["requests"]["failed"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_app_opens_its_port_after_the_proxy_is_held_for() {
    let activator = Running::start(&[]);
    activator.route_web(serde_json::json!({}), 0);
    let (data, admin, app) = (local(free_port()), local(free_port()), local(free_port()));
    // The proxy is up and answers /readyz 503: the app's port does not accept yet.
    start_proxy(data, admin, app);
    eventually("the proxy listens", Duration::from_secs(20), async || {
        get(admin, "/readyz", "admin")
            .await
            .is_some_and(|(s, _)| s == 503)
    })
    .await;
    activator.pods(&[(data, admin, false)]);
    let requests = send(activator.addr, 50);
    eventually("50 held", Duration::from_secs(30), async || {
        activator.held() == 50
    })
    .await;
    let probes = activator.stats().await;

    let counting = CountingApp::default();
    counting.start(app);
    all_answered_once(requests, &counting).await;
    let stats = activator.stats().await;
    assert_eq!(
        stats["requests"]["forwarded_held"], 50,
        "{stats} (before: {probes})"
    );
    assert_eq!(stats["requests"]["failed"], 0, "{stats}");
}

/// A TCP front on `listen` for the proxy at `to` that resets the first connection it accepts
/// (SO_LINGER 0, closed before reading a byte) and passes every later one through; counts resets.
fn resetting_front(listen: SocketAddr, to: SocketAddr) -> Arc<AtomicUsize> {
    let resets = Arc::new(AtomicUsize::new(0));
    let counted = resets.clone();
    let listener = std::net::TcpListener::bind(listen).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let mut first = true;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                if std::mem::take(&mut first) {
                    stream.set_zero_linger().unwrap();
                    drop(stream);
                    counted.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                tokio::spawn(async move {
                    let mut stream = stream;
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                });
            }
        });
    });
    resets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_resets_the_first_connection_costs_no_client_a_502() {
    let activator = Running::start(&[]);
    activator.route_web(serde_json::json!({}), 0);
    let (front, data, admin, app) = (
        local(free_port()),
        local(free_port()),
        local(free_port()),
        local(free_port()),
    );
    let counting = CountingApp::default();
    counting.start(app);
    start_proxy(data, admin, app);
    let resets = resetting_front(front, data);
    // Clients see the pod at the front; its /readyz is the real proxy's.
    activator.pods(&[(front, admin, false)]);

    let requests = send(activator.addr, 20);
    all_answered_once(requests, &counting).await;
    assert_eq!(
        resets.load(Ordering::SeqCst),
        1,
        "the front reset a connection"
    );
    let stats = activator.stats().await;
    assert!(stats["retries"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["requests"]["failed"], 0, "{stats}");
}
