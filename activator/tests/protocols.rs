//! HTTP/2 and upgrades at zero: gRPC calls (unary and server-streaming) and a websocket, each
//! made while the workload has no ready pod, are held and carried through once it has one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use inflight_proto::demo::v1::demo_client::DemoClient;
use inflight_proto::demo::v1::{CountRequest, EchoRequest};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_at_zero_are_held_and_answered() {
    let activator = Running::start(&[]);
    activator.route_web(serde_json::json!({}), 0);
    let (data, admin, app) = (local(free_port()), local(free_port()), local(free_port()));
    activator.pods(&[(data, admin, false)]);

    // The client dials the activator and names the Service in `:authority`, as a client of
    // the Service would.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", activator.addr))
        .unwrap()
        .origin("http://web.shop.svc.cluster.local:80".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut unary = DemoClient::new(channel.clone());
    let mut streaming = DemoClient::new(channel);
    let echo = tokio::spawn(async move {
        unary
            .echo(EchoRequest {
                message: "cold".into(),
                delay_ms: 0,
            })
            .await
    });
    let count = tokio::spawn(async move {
        let response = streaming
            .count(CountRequest {
                n: 5,
                interval_ms: 10,
            })
            .await?;
        let cold = response
            .metadata()
            .get("x-inflight-cold-start")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let mut stream = response.into_inner();
        let mut got = Vec::new();
        while let Some(reply) = stream.message().await? {
            got.push(reply.i);
        }
        Ok::<_, tonic::Status>((cold, got))
    });
    eventually("both calls held", Duration::from_secs(30), async || {
        activator.held() == 2
    })
    .await;

    start_demo_app(app);
    start_proxy(data, admin, app);

    let echoed = echo.await.unwrap().unwrap();
    assert!(
        echoed.metadata().get("x-inflight-cold-start").is_some(),
        "a held call says so"
    );
    assert_eq!(echoed.into_inner().message, "cold");
    let (cold, got) = count.await.unwrap().unwrap();
    assert!(cold.is_some_and(|c| c.ends_with("ms")));
    assert_eq!(
        got,
        vec![1, 2, 3, 4, 5],
        "every message of the stream, in order"
    );
    let stats = activator.stats().await;
    assert_eq!(stats["requests"]["forwarded_held"], 2, "{stats}");
}

/// An app that echoes websocket messages; other connections (the proxy's readiness check
/// connects and leaves) are let go.
fn start_echo_app(addr: std::net::SocketAddr) {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_at_zero_is_held_then_upgraded_and_keeps_its_pod() {
    let activator = Running::start(&[]);
    activator.route_web(serde_json::json!({}), 0);
    let (data, admin, app) = (local(free_port()), local(free_port()), local(free_port()));
    activator.pods(&[(data, admin, false)]);

    let mut request = format!("ws://{}/chat", activator.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("host", "web.shop".parse().unwrap());
    let opening = tokio::spawn(tokio_tungstenite::connect_async(request));
    eventually("the upgrade held", Duration::from_secs(30), async || {
        activator.held() == 1
    })
    .await;

    start_echo_app(app);
    start_proxy(data, admin, app);

    let (mut ws, response) = opening.await.unwrap().unwrap();
    assert_eq!(response.status(), 101);
    assert!(cold_start_ms(response.headers()).is_some(), "{response:?}");
    for i in 0..10 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("hello {i}"))
        );
    }
    // The open websocket is a request on its pod for its whole life.
    let stats = activator.stats().await;
    assert_eq!(stats["pods"][BACKEND]["active"], 1, "{stats}");
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    eventually(
        "the pod's place freed",
        Duration::from_secs(10),
        async || activator.stats().await["pods"][BACKEND]["active"] == 0,
    )
    .await;
}
