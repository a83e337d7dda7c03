//! HTTP/1.1 and h2c through the real proxy to a real app.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;

/// Echoes what the app saw: method, path, version, headers, body length.
async fn echo(request: Request<hyper::body::Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let mut seen = format!("{} {} {:?}\n", parts.method, parts.uri, parts.version);
    let mut headers: Vec<_> = parts
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
        .collect();
    headers.sort();
    seen.push_str(&headers.join("\n"));
    seen.push_str(&format!("\nbody: {}", String::from_utf8_lossy(&body)));
    Response::builder()
        .header("x-app", "yes")
        .header("keep-alive", "timeout=5")
        .body(full(seen))
        .unwrap()
}

#[tokio::test]
async fn http1_request_passes_through_with_only_hop_by_hop_headers_changed() {
    let app = App::start(echo).await;
    let proxy = Proxy::start(app.addr, &[]).await;
    let client = http1_client();
    let request = Request::post(format!("http://{}/orders?id=7", proxy.addr))
        .header("host", "web.shop.svc")
        .header("x-custom", "kept")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("proxy-authorization", "Basic eA==")
        .header("x-forwarded-for", "10.9.9.9")
        .header("x-forwarded-proto", "https")
        .body(full("hello"))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-app"], "yes");
    assert!(response.headers().get("keep-alive").is_none());
    let seen = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(seen.starts_with("POST /orders?id=7 HTTP/1.1\n"), "{seen}");
    assert!(seen.contains("\nhost: web.shop.svc\n"), "{seen}");
    assert!(seen.contains("\nx-custom: kept\n"), "{seen}");
    // The client is no trusted proxy: what it claimed is replaced.
    assert!(seen.contains("\nx-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("\nx-forwarded-proto: http\n"), "{seen}");
    assert!(!seen.contains("10.9.9.9"), "{seen}");
    assert!(!seen.contains("https"), "{seen}");
    assert!(!seen.contains("x-drop-me"), "{seen}");
    assert!(!seen.contains("proxy-authorization"), "{seen}");
    assert!(seen.ends_with("body: hello"), "{seen}");

    let stats = proxy
        .wait_stats(Duration::from_secs(5), |s| s["requests_total"] == 1)
        .await;
    assert_eq!(stats["responses"]["2xx"], 1);
    assert_eq!(stats["in_flight"], 0);
}

#[tokio::test]
async fn a_trusted_proxy_keeps_its_forwarded_headers() {
    let app = App::start(echo).await;
    let proxy = Proxy::start(app.addr, &["--trusted-proxies", "10.0.0.0/8,127.0.0.0/8"]).await;
    let request = Request::get(format!("http://{}/", proxy.addr))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .body(full(""))
        .unwrap();
    let response = http1_client().request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen = String::from_utf8_lossy(&body);
    assert!(
        seen.contains("\nx-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("\nx-forwarded-proto: https\n"), "{seen}");
}

#[tokio::test]
async fn forwarded_headers_can_be_turned_off() {
    let app = App::start(echo).await;
    let proxy = Proxy::start(app.addr, &["--forwarded-headers", "false"]).await;
    let (_, body) = get(proxy.addr, "/").await.unwrap();
    let seen = String::from_utf8_lossy(&body);
    assert!(!seen.contains("x-forwarded"), "{seen}");
}

/// An app that answers "ok", behind a relay that counts the connections
/// made to it: its address, the count, and the app (alive while held).
async fn counted_app() -> (std::net::SocketAddr, Arc<AtomicUsize>, App) {
    let connections = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inner_addr = inner.local_addr().unwrap();
    let app = App::serve(inner, |_r| async { Response::new(full("ok")) });
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut a, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut b = tokio::net::TcpStream::connect(inner_addr).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
        }
    });
    (addr, connections, app)
}

#[tokio::test]
async fn keep_alive_connections_to_the_app_are_reused() {
    let (addr, connections, _app) = counted_app().await;
    let proxy = Proxy::start(addr, &[]).await;
    for _ in 0..50 {
        assert_eq!(get(proxy.addr, "/").await.unwrap().0, 200);
    }
    // Each `get` is a new client connection; the upstream connection goes
    // back to the pool as each response ends and serves the next client.
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        opened <= 2,
        "{opened} upstream connections for 50 sequential client connections"
    );

    // One client connection with many requests uses one upstream connection.
    let before = connections.load(Ordering::SeqCst);
    let client = http1_client();
    for _ in 0..50 {
        let r = client
            .request(
                Request::get(format!("http://{}/", proxy.addr))
                    .body(full(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap();
    }
    assert!(connections.load(Ordering::SeqCst) - before <= 1);
}

#[tokio::test]
async fn h2c_request_keeps_its_authority_and_version() {
    let app = App::start(echo).await;
    let proxy = Proxy::start(app.addr, &[]).await;
    let client = http2_client();
    let request = Request::get(format!("http://{}/h2", proxy.addr))
        .version(Version::HTTP_2)
        .body(full(""))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    let seen = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let first = seen.lines().next().unwrap();
    assert_eq!(
        first,
        format!("GET http://{}/h2 HTTP/2.0", proxy.addr),
        "{seen}"
    );
}

#[tokio::test]
async fn app_down_gives_a_short_502_that_names_no_internals() {
    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start_with_upstream(&dead, &[]).await;
    let (status, body) = get(proxy.addr, "/").await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "inflight-proxy: the app is not accepting connections\n"
    );
    let stats = proxy
        .wait_stats(Duration::from_secs(5), |s| s["requests_total"] == 1)
        .await;
    assert_eq!(stats["responses"]["5xx"], 1);
    let (ready, why) = get(proxy.admin, "/readyz").await.unwrap();
    assert_eq!(ready, 503, "{}", String::from_utf8_lossy(&why));
}

#[tokio::test]
async fn slow_app_gives_504_with_upstream_timeout() {
    let app = App::start(|_r| slow_ok(Duration::from_secs(5))).await;
    let proxy = Proxy::start(app.addr, &["--upstream-timeout", "200ms"]).await;
    let (status, body) = get(proxy.addr, "/").await.unwrap();
    assert_eq!(status, 504);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "inflight-proxy: the app did not respond in time\n"
    );
    let (ready, _) = get(proxy.admin, "/readyz").await.unwrap();
    assert_eq!(ready, 200);
}

#[tokio::test]
async fn n_slow_requests_in_flight_read_as_n() {
    let app = App::start(|_r| slow_ok(Duration::from_millis(1500))).await;
    let proxy = Proxy::start(app.addr, &[]).await;
    const N: u64 = 12;
    let client = http1_client();
    let mut requests = Vec::new();
    for _ in 0..N {
        let client = client.clone();
        let uri = format!("http://{}/slow", proxy.addr);
        requests.push(tokio::spawn(async move {
            client
                .request(Request::get(uri).body(full("")).unwrap())
                .await
                .unwrap()
                .status()
        }));
    }
    let during = proxy
        .wait_stats(Duration::from_secs(5), |s| s["in_flight"] == N)
        .await;
    assert_eq!(during["requests_total"], N);
    let metrics =
        String::from_utf8(get(proxy.admin, "/metrics").await.unwrap().1.to_vec()).unwrap();
    assert!(
        metrics.contains(&format!("\ninflight_requests_in_flight {N}\n")),
        "{metrics}"
    );
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    let after = proxy
        .wait_stats(Duration::from_secs(5), |s| s["in_flight"] == 0)
        .await;
    assert_eq!(after["responses"]["2xx"], N);
    // The connections were spread over the workers' shards; a scrape adds
    // them up.
    let metrics =
        String::from_utf8(get(proxy.admin, "/metrics").await.unwrap().1.to_vec()).unwrap();
    assert!(
        metrics.contains(&format!("\ninflight_requests_total{{class=\"2xx\"}} {N}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("\ninflight_request_duration_seconds_count {N}\n")),
        "{metrics}"
    );
}

#[tokio::test]
async fn kube_probe_requests_are_proxied_but_not_counted() {
    let app = App::start(echo).await;
    let proxy = Proxy::start(app.addr, &[]).await;
    let client = http1_client();
    let probe = Request::get(format!("http://{}/healthz", proxy.addr))
        .header("user-agent", "kube-probe/1.34")
        .body(full(""))
        .unwrap();
    assert_eq!(client.request(probe).await.unwrap().status(), 200);
    assert_eq!(get(proxy.addr, "/real").await.unwrap().0, 200);
    let stats = proxy
        .wait_stats(Duration::from_secs(5), |s| s["requests_total"] == 1)
        .await;
    assert_eq!(stats["responses"]["2xx"], 1);
}

#[tokio::test]
async fn client_cancel_is_cancelled_upstream_and_counted_as_cancelled() {
    let (dropped_tx, mut dropped_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let app = App::start(move |_r| {
        let dropped = dropped_tx.clone();
        let _ = arrived_tx.send(());
        async move {
            // Tells the test when the proxy gives up on this request.
            struct OnDrop(tokio::sync::mpsc::UnboundedSender<()>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    let _ = self.0.send(());
                }
            }
            let _guard = OnDrop(dropped);
            slow_ok(Duration::from_secs(30)).await
        }
    })
    .await;
    let proxy = Proxy::start(app.addr, &[]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    proxy
        .wait_stats(Duration::from_secs(5), |s| s["in_flight"] == 1)
        .await;
    // In flight at the proxy is not yet at the app: the worker runs apart
    // from the admin server, so wait until the app has the request.
    tokio::time::timeout(Duration::from_secs(30), arrived_rx.recv())
        .await
        .expect("the request reaches the app");
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), dropped_rx.recv())
        .await
        .expect("the app's request is cancelled when the client goes away");
    let stats = proxy
        .wait_stats(Duration::from_secs(5), |s| s["in_flight"] == 0)
        .await;
    assert_eq!(stats["responses"]["cancelled"], 1);
    assert_eq!(stats["responses"]["5xx"], 0);
    assert_eq!(stats["latency"]["count"], 0);
}

#[tokio::test]
async fn head_and_no_content_responses_end_their_count() {
    let app = App::start(|r: Request<hyper::body::Incoming>| async move {
        let status = if r.uri().path() == "/empty" { 204 } else { 200 };
        Response::builder().status(status).body(full("")).unwrap()
    })
    .await;
    let proxy = Proxy::start(app.addr, &[]).await;
    assert_eq!(get(proxy.addr, "/empty").await.unwrap().0, 204);
    let client = http1_client();
    let head = Request::head(format!("http://{}/", proxy.addr))
        .body(full(""))
        .unwrap();
    assert_eq!(client.request(head).await.unwrap().status(), 200);
    let stats = proxy
        .wait_stats(Duration::from_secs(5), |s| s["responses"]["2xx"] == 2)
        .await;
    assert_eq!(stats["in_flight"], 0);
    assert_eq!(stats["responses"]["cancelled"], 0);
}

#[tokio::test]
async fn any_number_of_workers_share_one_set_of_figures() {
    let app = App::start(|_r| slow_ok(Duration::from_millis(500))).await;
    for threads in ["1", "3"] {
        let proxy = Proxy::start(app.addr, &["--threads", threads]).await;
        let calls: Vec<_> = (0..30)
            .map(|_| {
                let addr = proxy.addr;
                tokio::spawn(async move { get(addr, "/").await.map(|r| r.0) })
            })
            .collect();
        proxy
            .wait_stats(Duration::from_secs(5), |s| s["in_flight"] == 30)
            .await;
        for call in calls {
            assert_eq!(call.await.unwrap(), Some(200));
        }
        let stats = proxy
            .wait_stats(Duration::from_secs(5), |s| s["in_flight"] == 0)
            .await;
        assert_eq!(stats["responses"]["2xx"], 30, "with {threads} workers");
    }
}

/// Opens a raw keep-alive connection, sends one request, reads the answer
/// and returns the still-open connection.
async fn one_request_and_stay_open(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"ok") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "proxy closed the connection: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    stream
}

#[tokio::test]
async fn idle_client_connections_hold_no_upstream_connection() {
    let (addr, connections, _app) = counted_app().await;
    let proxy = Proxy::start(addr, &["--threads", "1"]).await;
    // Forty clients, one after the other, each sending one request and then
    // keeping its connection open: the upstream connection goes back to the
    // pool as each response ends, so one serves them all.
    let mut open = Vec::new();
    for _ in 0..40 {
        open.push(one_request_and_stay_open(proxy.addr).await);
    }
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        opened <= 2,
        "{opened} upstream connections for 40 idle clients"
    );
    drop(open);
}
