//! A websocket through the proxy: the upgrade passes, frames echo both ways,
//! and the connection is one request in flight for its whole life.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

async fn echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        ws.send(message).await.unwrap();
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_is_one_request_in_flight_for_its_life() {
    let app = echo_server().await;
    let proxy = Proxy::start(app, &[]).await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("hello {i}"))
        );
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data(), big);

    let open = proxy.stats().await;
    assert_eq!(open["in_flight"], 1);
    assert_eq!(open["requests_total"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.in_flight().await, 1, "still in flight while open");

    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    let closed = proxy
        .wait_stats(Duration::from_secs(5), |s| s["in_flight"] == 0)
        .await;
    assert_eq!(closed["responses"]["1xx"], 1);
    assert_eq!(closed["responses"]["cancelled"], 0);
}

#[tokio::test]
async fn refused_upgrade_is_an_ordinary_response() {
    // An app that does not speak websocket answers the upgrade with 200.
    let app = App::start(|_r| async { http::Response::new(full("no upgrade here")) }).await;
    let proxy = Proxy::start(app.addr, &[]).await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("200"), "{err}");
    let stats = proxy
        .wait_stats(Duration::from_secs(5), |s| s["in_flight"] == 0)
        .await;
    assert_eq!(stats["requests_total"], 1);
}
