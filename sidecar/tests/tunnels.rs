//! Upgraded connections (websockets) cannot stay in flight for ever: TCP
//! keepalive is on for both sides, so a peer that vanished is found, and a
//! tunnel that carries nothing either way for its idle timeout is closed on
//! both sides. A tunnel's latency is its time to the 101, not its lifetime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A websocket app that echoes text and binary frames.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_half_open_tunnel_is_closed_after_its_idle_timeout_and_ends_its_count() {
    let app = echo_server().await;
    let proxy = Proxy::start(app, &["--tunnel-idle-timeout", "1s"]).await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);

    // Busy past the idle timeout: traffic keeps it open.
    for i in 0..6 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("ping {i}"))
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(proxy.in_flight().await, 1);

    // Then the client goes silent without closing, as a peer whose host
    // vanished would: neither side sends a byte. The proxy closes the tunnel
    // and the workload can read zero again.
    let stats = proxy
        .wait_stats(Duration::from_secs(30), |s| s["in_flight"] == 0)
        .await;
    assert_eq!(stats["responses"]["1xx"], 1, "{stats}");
    let ended = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the client's side is closed too");
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
}

/// The keepalive timer state of every TCP socket on loopback, by its local
/// and remote ports: `/proc/net/tcp`'s `tr` field is 2 while a keepalive
/// timer is pending on an established socket, 0 with none.
fn tcp_timers() -> Vec<(u16, u16, u8)> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port =
                |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap(), 16).unwrap();
            let timer = u8::from_str_radix(fields[5].split(':').next().unwrap(), 16).unwrap();
            sockets.push((port(fields[1]), port(fields[2]), timer));
        }
    }
    sockets
}

#[tokio::test]
async fn both_sides_of_a_tunnel_have_tcp_keepalive() {
    let app = echo_server().await;
    let proxy = Proxy::start(app, &["--tcp-keepalive", "7s"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let client_port = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(stream) => stream.local_addr().unwrap().port(),
        _ => unreachable!("plain ws"),
    };

    // A socket that has just sent shows its retransmit or loss-probe timer
    // for a moment; once the tunnel is quiet, the keepalive timer shows.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sockets = tcp_timers();
        // The proxy's end of the client's connection.
        let client_side: Vec<_> = sockets
            .iter()
            .filter(|(local, remote, _)| *local == proxy.addr.port() && *remote == client_port)
            .collect();
        // The proxy's end of its connection to the app: the only one to the
        // app's port that the app did not accept.
        let app_side: Vec<_> = sockets
            .iter()
            .filter(|(local, remote, _)| *remote == app.port() && *local != app.port())
            .collect();
        assert_eq!(client_side.len(), 1, "{sockets:?}");
        assert_eq!(app_side.len(), 1, "{sockets:?}");
        if client_side[0].2 == 2 && app_side[0].2 == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no keepalive timer on the client side {client_side:?} or the app side {app_side:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_tunnel_is_recorded_with_its_time_to_101_not_its_lifetime() {
    let app = echo_server().await;
    let proxy = Proxy::start(app, &[]).await;
    let asked = std::time::Instant::now();
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr))
        .await
        .unwrap();
    // The proxy's time to the 101 lies inside this.
    let upper_bound = asked.elapsed();
    assert_eq!(response.status(), 101);
    // Open a good while longer than it took to open.
    let open_until = std::time::Instant::now() + upper_bound * 4 + Duration::from_secs(1);
    while std::time::Instant::now() < open_until {
        ws.send(Message::text("tick")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("tick"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lifetime = asked.elapsed();
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}

    let stats = proxy
        .wait_stats(Duration::from_secs(10), |s| s["in_flight"] == 0)
        .await;
    assert_eq!(stats["latency"]["count"], 1, "{stats}");
    let recorded = stats["latency"]["sum_seconds"].as_f64().unwrap();
    assert!(
        recorded <= upper_bound.as_secs_f64(),
        "recorded {recorded} s for a tunnel that took at most {upper_bound:?} to open \
         and lived {lifetime:?}"
    );
}

#[tokio::test]
async fn an_open_tunnel_keeps_its_place_under_the_connection_cap() {
    let app = echo_server().await;
    let proxy = Proxy::start(app, &["--max-connections", "1"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));

    // The websocket is a client connection for its whole life, not only
    // until its 101: a second client waits while it is open.
    let addr = proxy.addr;
    let second = tokio::spawn(async move { get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !second.is_finished(),
        "served beside an open tunnel at a cap of 1"
    );

    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    let answered = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the second client is served once the tunnel closes")
        .unwrap();
    // The websocket-only app closes a plain request's connection: a 502.
    assert_eq!(answered.map(|(status, _)| status), Some(502));
}
