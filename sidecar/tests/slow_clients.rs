//! Slow and idle clients on the data port: each costs a bounded amount for a
//! bounded time. A new connection must send its first request head within
//! the header-read timeout, a kept-alive one its next head within the idle
//! timeout, and at the connection cap further clients wait to be accepted.
//! A slow upload is the client's time, never counted against the app.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the proxy closes the connection; panics if it is still open
/// after `within`. Returns what was read.
async fn closed_by_proxy(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all)
        .await
        .expect("the proxy closes the connection");
    seen
}

/// Sends one whole request and reads its response; the connection stays open.
async fn one_request(stream: &mut TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"ok") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{seen:?}");
}

async fn ok_app() -> App {
    App::start(|_r| slow_ok(Duration::ZERO)).await
}

#[tokio::test]
async fn half_sent_heads_and_silent_connections_are_closed_at_the_header_read_timeout() {
    let app = ok_app().await;
    let proxy = Proxy::start(app.addr, &["--header-read-timeout", "1s"]).await;
    let mut clients = Vec::new();
    for i in 0..60 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        match i % 3 {
            // Half a request head, the slowloris way.
            0 => stream
                .write_all(b"GET / HTTP/1.1\r\nhost: web\r\nx-slow: ")
                .await
                .unwrap(),
            // Part of the h2 preface: hyper-util cannot tell the protocol yet.
            1 => stream.write_all(b"PRI * HTTP/2").await.unwrap(),
            // Nothing at all.
            _ => {}
        }
        clients.push(stream);
    }
    for stream in &mut clients {
        let seen = closed_by_proxy(stream, Duration::from_secs(30)).await;
        // No response was made up for a request that never arrived whole
        // (hyper may answer a timed-out head with 408).
        assert!(
            seen.is_empty() || seen.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
    }
    // The proxy still serves, and none of those counted as requests.
    assert_eq!(get(proxy.addr, "/").await.unwrap().0, 200);
    let stats = proxy.stats().await;
    assert_eq!(stats["requests_total"], 1, "{stats}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = ok_app().await;
    let proxy = Proxy::start(app.addr, &["--idle-timeout", "1s"]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    one_request(&mut stream).await;
    // Kept alive for its next request, then closed when none comes.
    let seen = closed_by_proxy(&mut stream, Duration::from_secs(30)).await;
    assert!(
        seen.is_empty() || seen.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&seen)
    );

    // A next head trickled in after a whole first request is bounded too.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    one_request(&mut stream).await;
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    closed_by_proxy(&mut stream, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_slow_response_is_not_cut_by_the_client_timeouts() {
    let app = App::start(|_r| slow_ok(Duration::from_millis(2500))).await;
    let proxy = Proxy::start(
        app.addr,
        &["--header-read-timeout", "500ms", "--idle-timeout", "500ms"],
    )
    .await;
    let (status, body) = get(proxy.addr, "/").await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn an_idle_h2c_connection_is_kept_past_the_http1_timeouts() {
    let app = ok_app().await;
    let proxy = Proxy::start(
        app.addr,
        &["--header-read-timeout", "300ms", "--idle-timeout", "300ms"],
    )
    .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = |path: &str| {
        Request::get(format!("http://{}{path}", proxy.addr))
            .body(full(""))
            .unwrap()
    };
    for round in 0..2 {
        let response = send.send_request(request("/")).await.unwrap();
        assert_eq!(response.status(), 200, "round {round}");
        response.into_body().collect().await.unwrap();
        // Idle well past both HTTP/1 timeouts: gRPC clients keep such
        // connections, and pings, not timers, decide when they are dead.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert!(
        !connection.is_finished(),
        "the h2c connection is still open"
    );
}

#[tokio::test]
async fn clients_beyond_the_connection_cap_wait_until_one_closes() {
    let app = ok_app().await;
    let proxy = Proxy::start(app.addr, &["--max-connections", "2", "--threads", "1"]).await;
    // The admin port answers /stats while the data port is full.
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    one_request(&mut first).await;
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    one_request(&mut second).await;

    let addr: SocketAddr = proxy.addr;
    let third = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        one_request(&mut stream).await;
    });
    // While two are open the third is not served (it waits in the backlog).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !third.is_finished(),
        "a third client was served at a cap of 2"
    );
    assert_eq!(proxy.stats().await["requests_total"], 2);

    drop(first);
    tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("the third client is served once a place frees")
        .unwrap();
    drop(second);
}

#[tokio::test]
async fn a_slow_upload_is_not_an_app_timeout() {
    // The app reads the whole body, then answers at once with its length.
    let app = App::start(|r: Request<hyper::body::Incoming>| async move {
        let body = r.into_body().collect().await.unwrap().to_bytes();
        http::Response::new(full(format!("got {}", body.len())))
    })
    .await;
    let proxy = Proxy::start(app.addr, &["--upstream-timeout", "1s"]).await;
    // The client takes well over the upstream timeout to send its body.
    let (chunks, rx) =
        tokio::sync::mpsc::channel::<Result<_, Box<dyn std::error::Error + Send + Sync>>>(1);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let uploader = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let chunk = hyper::body::Frame::data(hyper::body::Bytes::from_static(b"0123456789"));
            chunks.send(Ok(chunk)).await.unwrap();
        }
    });
    let request = Request::post(format!("http://{}/upload", proxy.addr))
        .body(BodyExt::boxed(body))
        .unwrap();
    let response = http1_client().request(request).await.unwrap();
    uploader.await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"got 50"[..]));
}
