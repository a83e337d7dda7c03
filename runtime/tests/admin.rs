//! The admin server against real TCP clients on loopback: slow and idle clients are closed, the
//! connection cap holds, and well-behaved callers are served meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Duration;

use http::StatusCode;
use inflight_runtime::admin;
use inflight_runtime::http::ConnLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn server(limits: ConnLimits) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin::serve(listener, limits, |request| async move {
        match request.uri().path() {
            "/healthz" => admin::ready(true, ""),
            _ => admin::not_found("/healthz"),
        }
    }));
    addr
}

/// Reads until the server closes; true on EOF (or reset), within a deadline far beyond any
/// timeout the test sets.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .is_ok()
}

async fn get(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn limits(max_connections: usize) -> ConnLimits {
    ConnLimits {
        header_read_timeout: Duration::from_millis(300),
        max_connections,
        ..ConnLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sending_half_a_request_head_are_closed_and_others_are_served() {
    let addr = server(limits(1000)).await;
    let mut slow = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Half a head, or nothing at all (hyper's own timer never starts for those).
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    let mut good = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut good, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(s).await, "slow client {i} still open");
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let addr = server(limits(10)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut s, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed_by_server(&mut s).await);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let addr = server(ConnLimits {
        header_read_timeout: Duration::from_secs(30),
        max_connections: 1,
        ..ConnLimits::default()
    })
    .await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut first, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    // The second connects (the kernel's backlog) but is not served while the first is open.
    let second = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        get(&mut s, "/nope").await
    });
    // The first keeps working: its slot is its own.
    assert!(get(&mut first, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(!second.is_finished());
    drop(first);
    let answer = second.await.unwrap();
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {}", StatusCode::NOT_FOUND.as_u16())),
        "{answer}"
    );
}

#[tokio::test]
async fn only_get_and_head_reach_the_handler() {
    let addr = server(limits(10)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
}
