//! SIGTERM against the real aggregator binary: with report streams of real inflight-proxies and
//! KEDA-style `StreamIsActive` streams open it ends them and exits 0, and a peer that never
//! answers cannot hold it past `--shutdown-timeout`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::{proxy_in_front_of_demo_app, Aggregator};
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::ScaledObjectRef;

/// Far longer than a stopping aggregator needs on a loaded machine; a hang fails here.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

fn terminate(aggregator: &Aggregator) {
    let status = Command::new("kill")
        .args(["-TERM", &aggregator.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM failed");
}

fn wait_exit(aggregator: &mut Aggregator, within: Duration) -> ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = aggregator.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < until,
            "the aggregator was still running {within:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + EXIT_DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reference(workload: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        name: workload.into(),
        namespace: "shop".into(),
        scaler_metadata: HashMap::from([
            ("workload".to_owned(), format!("deployment/{workload}")),
            ("target".to_owned(), "10".to_owned()),
        ]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_report_and_push_streams_and_exits_0() {
    // A bound far beyond the deadline: only ending the streams can make it exit in time.
    let mut aggregator = Aggregator::start(&["--shutdown-timeout", "1h"]);
    let url = aggregator.url();
    proxy_in_front_of_demo_app(&url, "deployment/web", "web-1");
    proxy_in_front_of_demo_app(&url, "deployment/api", "api-1");
    eventually("both proxies' report streams", async || {
        aggregator
            .metric("inflight_aggregator_report_streams")
            .await
            == Some(2.0)
    })
    .await;

    // KEDA's way: many push streams on one connection, and one more on a connection of its own.
    let scaler_url = aggregator.scaler_url();
    let shared = tonic::transport::Endpoint::from_shared(scaler_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut streams = Vec::new();
    for i in 0..20 {
        let mut scaler = if i == 0 {
            ExternalScalerClient::connect(scaler_url.clone())
                .await
                .unwrap()
        } else {
            ExternalScalerClient::new(shared.clone())
        };
        let workload = if i % 2 == 0 { "web" } else { "api" };
        let mut s = scaler
            .stream_is_active(reference(workload))
            .await
            .unwrap()
            .into_inner();
        assert!(s.message().await.unwrap().is_some(), "a first answer");
        streams.push(s);
    }

    // However many streams, one watcher per watched workload.
    assert_eq!(
        aggregator.metric("inflight_aggregator_push_streams").await,
        Some(20.0)
    );
    assert_eq!(
        aggregator.metric("inflight_aggregator_push_watched").await,
        Some(2.0)
    );

    terminate(&aggregator);
    for mut s in streams {
        let ended = tokio::time::timeout(EXIT_DEADLINE, async {
            loop {
                match s.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(status) => return Some(status.code()),
                }
            }
        })
        .await
        .expect("a push stream still open long after SIGTERM");
        assert_eq!(ended, Some(tonic::Code::Unavailable), "push stream ended");
    }
    let status = tokio::task::block_in_place(|| wait_exit(&mut aggregator, EXIT_DEADLINE));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_cannot_hold_the_shutdown_past_its_bound() {
    let mut aggregator = Aggregator::start(&["--shutdown-timeout", "1s"]);
    // Connected, and then silent: its HTTP/2 handshake never finishes, so tonic's graceful
    // shutdown would wait for it for ever.
    let silent = tokio::net::TcpStream::connect(aggregator.grpc)
        .await
        .unwrap();
    let mut scaler = ExternalScalerClient::connect(aggregator.scaler_url())
        .await
        .unwrap();
    let mut push = scaler
        .stream_is_active(reference("web"))
        .await
        .unwrap()
        .into_inner();
    assert!(push.message().await.unwrap().is_some());
    eventually("the silent connection to be accepted", async || {
        // Accepted connections are not counted anywhere; a second, answered call proves the
        // accept loop has gone past the silent one.
        ExternalScalerClient::connect(aggregator.scaler_url())
            .await
            .is_ok()
    })
    .await;

    terminate(&aggregator);
    let status = tokio::task::block_in_place(|| wait_exit(&mut aggregator, EXIT_DEADLINE));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    drop(silent);
}
