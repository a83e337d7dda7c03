//! Waking on loopback, against the real aggregator: the first request held for a workload at
//! zero is reported at once, so KEDA's `StreamIsActive` is pushed `true` without waiting for a
//! report interval; with several aggregators, every one is told.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::ScaledObjectRef;

/// The real aggregator, in this process on a thread of its own: (gRPC, admin).
fn start_aggregator() -> (SocketAddr, SocketAddr) {
    let (grpc, smi, admin) = (local(free_port()), local(free_port()), local(free_port()));
    let config = inflight_aggregator::Config::try_parse_from([
        "inflight-aggregator",
        "--grpc-listen",
        &grpc.to_string(),
        "--smi-listen",
        &smi.to_string(),
        "--admin-listen",
        &admin.to_string(),
        // A fresh process in a test: no reporter is yet to find it.
        "--warm-up",
        "0s",
    ])
    .unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(inflight_aggregator::run(config, std::future::pending()))
            .unwrap();
    });
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(grpc).is_err() {
        assert!(
            Instant::now() < until,
            "aggregator did not listen on {grpc}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (grpc, admin)
}

/// The ScaledObject KEDA would send for `web` (what the operator writes in its trigger).
fn reference() -> ScaledObjectRef {
    ScaledObjectRef {
        name: "web".into(),
        namespace: "shop".into(),
        scaler_metadata: HashMap::from([
            ("workload".to_owned(), "deployment/web".to_owned()),
            ("target".to_owned(), "10".to_owned()),
            ("scaleToZeroAfter".to_owned(), "5m".to_owned()),
        ]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_held_request_pushes_active_to_keda_without_waiting_for_a_report_interval() {
    let (grpc, _) = start_aggregator();
    // Reports every minute: a `true` before then can only come from the report the first held
    // request makes at once.
    let activator = Running::start(&[
        "--aggregator",
        &format!("http://{grpc}"),
        "--report-interval",
        "60s",
    ]);
    activator.route_web(serde_json::json!({}), 0);
    eventually(
        "the activator's link is up",
        Duration::from_secs(30),
        async || {
            activator.stats().await["aggregators"]
                .as_array()
                .is_some_and(|a| a.iter().any(|l| l["connected"] == true))
        },
    )
    .await;

    let mut keda = ExternalScalerClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut pushes = keda
        .stream_is_active(reference())
        .await
        .unwrap()
        .into_inner();
    let first = pushes.message().await.unwrap().unwrap();
    assert!(!first.result, "nothing was asked of web yet");

    let sent = Instant::now();
    let addr = activator.addr;
    let held = tokio::spawn(async move { get(addr, "/", "web.shop").await });
    let pushed = tokio::time::timeout(Duration::from_secs(30), pushes.message())
        .await
        .expect("no push within half the report interval")
        .unwrap()
        .unwrap();
    let took = sent.elapsed();
    assert!(pushed.result, "the push says active");
    println!("request sent → StreamIsActive true: {took:?} (the figure is bench/activator.sh's)");

    assert_eq!(activator.held(), 1);
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregator_hears_of_the_first_held_request() {
    let (a, _) = start_aggregator();
    let (b, _) = start_aggregator();
    let activator = Running::start(&[
        "--aggregator",
        &format!("http://{a},http://{b}"),
        "--report-interval",
        "60s",
    ]);
    activator.route_web(serde_json::json!({}), 0);
    eventually("both links are up", Duration::from_secs(30), async || {
        activator.stats().await["aggregators"]
            .as_array()
            .is_some_and(|l| l.iter().filter(|l| l["connected"] == true).count() == 2)
    })
    .await;
    let mut streams = Vec::new();
    for grpc in [a, b] {
        let mut keda = ExternalScalerClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let mut pushes = keda
            .stream_is_active(reference())
            .await
            .unwrap()
            .into_inner();
        assert!(!pushes.message().await.unwrap().unwrap().result);
        streams.push(pushes);
    }
    let addr = activator.addr;
    let held = tokio::spawn(async move { get(addr, "/", "web").await });
    for mut pushes in streams {
        let pushed = tokio::time::timeout(Duration::from_secs(30), pushes.message())
            .await
            .expect("no push within half the report interval")
            .unwrap()
            .unwrap();
        assert!(pushed.result);
    }
    held.abort();
}
