//! Waking on loopback, against the real aggregator: the first request held for a workload at
//! zero is reported at once, so KEDA's `StreamIsActive` is pushed `true` without waiting for a
//! report interval; with several aggregators, every one is told.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_held_request_pushes_active_to_keda_without_waiting_for_a_report_interval() {
    let aggregator = start_aggregator();
    // Reports every minute: a `true` before then can only come from the report the first held
    // request makes at once.
    let activator = Running::start(&[
        "--aggregator",
        &format!("http://{}", aggregator.ingest),
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

    let mut keda = ExternalScalerClient::connect(format!("http://{}", aggregator.scaler))
        .await
        .unwrap();
    let mut pushes = keda
        .stream_is_active(scaled_object("web"))
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
    let (a, b) = (start_aggregator(), start_aggregator());
    let activator = Running::start(&[
        "--aggregator",
        &format!("http://{},http://{}", a.ingest, b.ingest),
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
    for aggregator in [a, b] {
        let mut keda = ExternalScalerClient::connect(format!("http://{}", aggregator.scaler))
            .await
            .unwrap();
        let mut pushes = keda
            .stream_is_active(scaled_object("web"))
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
