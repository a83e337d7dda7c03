//! The answer KEDA gets, over the real path: the real proxy in front of the demo app, holding
//! requests in flight, reporting to the real aggregator binary, read over the external scaler's
//! gRPC. A sustained step is never answered with less; an outage and a restart under load give
//! no false zero and a current answer within seconds; a flood of invented names is bounded and
//! leaves the real workload alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{proxy_in_front_of_demo_app, Aggregator};
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use inflight_proto::v1::ingest_client::IngestClient;
use inflight_proto::v1::{
    report_request, Interval, PodIdentity, PodReport, ReportRequest, WorkloadRef,
};
use tokio::time::Instant;

type Scaler = ExternalScalerClient<tonic::transport::Channel>;

fn now_ms() -> i64 {
    inflight_runtime::now_ms()
}

/// `n` requests that stay in flight through the proxy (the demo app sleeps on them for ten
/// minutes) for as long as the returned connections are open.
fn hold(proxy: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(proxy).unwrap();
            c.write_all(b"GET /sleep/600000 HTTP/1.1\r\nHost: web\r\n\r\n")
                .unwrap();
            c
        })
        .collect()
}

async fn answer(scaler: &mut Scaler, window: &str) -> Result<f64, tonic::Status> {
    let r = ScaledObjectRef {
        name: "web".into(),
        namespace: "shop".into(),
        scaler_metadata: HashMap::from([
            ("workload".to_owned(), "deployment/web".to_owned()),
            ("target".to_owned(), "1".to_owned()),
            ("window".to_owned(), window.to_owned()),
        ]),
    };
    let r = scaler
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(r),
            metric_name: "m".into(),
        })
        .await?
        .into_inner();
    Ok(r.metric_values[0].metric_value_float)
}

/// Polls until `check` holds, every 200 ms, for at most `secs`.
async fn eventually(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn close(v: f64, want: f64) -> bool {
    (v - want).abs() <= 0.01 * want.max(1.0)
}

/// 1 in flight, then 10 for longer than the whole stable window: once the answer has reached 10
/// it never falls back (a burst rule without memory answered about 5 half-way through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_step_is_never_answered_with_less() {
    let aggregator = Aggregator::start(&[
        "--stable-window",
        "12s",
        "--burst-window",
        "2s",
        "--max-window",
        "12s",
        "--warm-up",
        "1s",
    ]);
    let proxy = proxy_in_front_of_demo_app(&aggregator.url(), "deployment/web", "web-1");
    let mut scaler = Scaler::connect(aggregator.scaler_url()).await.unwrap();
    let _one = hold(proxy, 1);
    eventually("1 in flight over a whole window", 60, async || {
        answer(&mut scaler, "12s")
            .await
            .is_ok_and(|v| close(v, 1.0))
    })
    .await;
    let _nine = hold(proxy, 9);
    eventually("the burst window to read the step", 30, async || {
        answer(&mut scaler, "12s")
            .await
            .is_ok_and(|v| close(v, 10.0))
    })
    .await;
    // Past a whole stable window and a half after the step, read every 200 ms.
    let until = Instant::now() + Duration::from_secs(18);
    while Instant::now() < until {
        let v = answer(&mut scaler, "12s").await.unwrap();
        assert!(close(v, 10.0), "fell back to {v} during a sustained step");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// 5 in flight; the aggregator is down for longer than its ring (the proxy merges the missed
/// seconds into one report), then comes back; later it restarts at once. After each, every answer
/// is UNAVAILABLE (warming up) or 5, never 0 nor anything lower, and 5 within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_and_a_restart_under_load_never_read_a_false_zero() {
    let args = [
        "--stable-window",
        "8s",
        "--burst-window",
        "2s",
        "--max-window",
        "8s",
        // Longer than the proxy's reconnect back-off (at most 5 s), as the default (15 s) is
        // longer than it and the sidecars' 10 s DNS re-resolve: a warm-up shorter than the time
        // reporters take to come back would answer 0 for a workload none of whose pods is back.
        "--warm-up",
        "7s",
    ];
    let mut aggregator = Aggregator::start(&args);
    let grpc = aggregator.grpc;
    let proxy = proxy_in_front_of_demo_app(&aggregator.url(), "deployment/web", "web-1");
    let _five = hold(proxy, 5);
    let mut scaler = Scaler::connect(aggregator.scaler_url()).await.unwrap();
    eventually("5 in flight over a whole window", 60, async || {
        answer(&mut scaler, "8s").await.is_ok_and(|v| close(v, 5.0))
    })
    .await;
    for (what, down_for) in [
        ("an outage", Duration::from_secs(12)),
        ("a restart", Duration::ZERO),
    ] {
        aggregator.kill();
        let down = Instant::now();
        while down.elapsed() < down_for {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        aggregator = Aggregator::start_on(grpc, &args);
        let mut scaler = Scaler::connect(aggregator.scaler_url()).await.unwrap();
        // From right after the restart: never a number other than 5.
        let back = Instant::now();
        let mut current = None;
        while back.elapsed() < Duration::from_secs(20) {
            match answer(&mut scaler, "8s").await {
                Ok(v) => {
                    assert!(close(v, 5.0), "after {what}: {v}, expected 5");
                    current.get_or_insert(back.elapsed());
                }
                Err(s) => {
                    assert_eq!(s.code(), tonic::Code::Unavailable, "after {what}: {s:?}");
                    assert!(current.is_none(), "after {what}: unavailable again: {s:?}");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let current = current.unwrap_or_else(|| panic!("no answer within 20 s after {what}"));
        println!("after {what}: 5 again {current:?} after the restart");
    }
}

fn invented(namespace: &str, pod: &str, workload: &str) -> ReportRequest {
    ReportRequest {
        report: Some(report_request::Report::Pod(PodReport {
            pod: Some(PodIdentity {
                namespace: namespace.into(),
                pod: pod.into(),
                workload: Some(WorkloadRef {
                    namespace: namespace.into(),
                    kind: "deployment".into(),
                    name: workload.into(),
                }),
                pod_ip: String::new(),
            }),
            interval: Some(Interval {
                start_unix_ms: now_ms() - 1000,
                length_ms: 1000,
            }),
            avg_concurrency: 1000.0,
            in_flight: 1000,
            requests: 0,
            responses: None,
            latency: None,
        })),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One peer names 10,000 invented workloads in 200 namespaces: the aggregator keeps at most
/// `--max-workloads` at a time (invented pods expire and their workloads are dropped, which makes
/// room for more), refuses the rest by reason, stays small, and the real workload reads what it
/// serves throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invented_names_is_bounded_and_leaves_the_real_workload_alone() {
    let aggregator = Aggregator::start(&[
        "--warm-up",
        "1s",
        "--stable-window",
        "4s",
        "--burst-window",
        "2s",
        "--max-window",
        "4s",
        "--max-workloads",
        "500",
        "--max-workloads-per-namespace",
        "100",
    ]);
    let proxy = proxy_in_front_of_demo_app(&aggregator.url(), "deployment/web", "web-1");
    let _three = hold(proxy, 3);
    let mut scaler = Scaler::connect(aggregator.scaler_url()).await.unwrap();
    eventually("3 in flight over a whole window", 60, async || {
        answer(&mut scaler, "4s").await.is_ok_and(|v| close(v, 3.0))
    })
    .await;
    let rss_before = rss_kib(aggregator.child.id());

    // Each stream sends names until one is refused, which ends it; the flooder opens the next.
    let mut client = IngestClient::connect(aggregator.url()).await.unwrap();
    let names: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("ns-{}", i % 200), format!("w-{i}")))
        .collect();
    let (mut sent, mut refused) = (0usize, HashMap::<String, u64>::new());
    while sent < names.len() {
        let batch: Vec<ReportRequest> = names[sent..(sent + 100).min(names.len())]
            .iter()
            .map(|(ns, w)| invented(ns, &format!("{w}-0"), w))
            .collect();
        match client.report(tokio_stream::iter(batch)).await {
            Ok(summary) => sent += usize::try_from(summary.into_inner().accepted).unwrap(),
            Err(status) => {
                let taken: usize = status
                    .message()
                    .split("; ")
                    .nth(1)
                    .and_then(|m| m.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{status:?}"));
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                let reason = status
                    .message()
                    .split(['(', ')'])
                    .nth(1)
                    .unwrap()
                    .to_owned();
                *refused.entry(reason).or_default() += 1;
                sent += taken + 1;
            }
        }
    }
    let refused_total: u64 = refused.values().sum();
    assert!(refused_total > 0, "{refused:?}");
    let workloads = aggregator.metric("inflight_aggregator_workloads").await;
    assert!(workloads.is_some_and(|w| w <= 500.0), "{workloads:?}");
    for (reason, n) in &refused {
        assert_eq!(
            aggregator
                .metric(&format!(
                    "inflight_aggregator_reports_rejected_total{{reason=\"{reason}\"}}"
                ))
                .await,
            Some(*n as f64),
            "{reason}"
        );
    }
    let grown = rss_kib(aggregator.child.id()).saturating_sub(rss_before);
    println!("flood: refused {refused:?}; resident memory grew {grown} KiB");
    assert!(grown < 32 * 1024, "resident memory grew {grown} KiB");
    // The real workload reads what it serves.
    for _ in 0..10 {
        let v = answer(&mut scaler, "4s").await.unwrap();
        assert!(close(v, 3.0), "the real workload reads {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
