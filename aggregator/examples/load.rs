//! Load generator for the aggregator benchmark (`bench/aggregator.sh`): simulated pods streaming
//! reports over loopback.
//!
//!   load ingest  --target URL --pods N --workloads W --streams S --seconds D
//!       sends reports for N pods round-robin over S streams as fast as the aggregator takes them;
//!       prints reports sent per second
//!   load hold    --target URL --pods N --workloads W --streams S --seconds D
//!       every pod reports once per second (each stream carries N/S pods) for D seconds
//!   load latency --target URL --workloads W --calls C
//!       C sequential GetMetrics calls across W workloads; prints p50, p99 and max in µs
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use inflight_proto::v1::ingest_client::IngestClient;
use inflight_proto::v1::{
    report_request, Interval, LatencyHistogram, PodIdentity, PodReport, ReportRequest, Responses,
    WorkloadRef,
};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.windows(2)
        .find(|w| w[0] == name)
        .map_or(default.to_owned(), |w| w[1].clone())
}

fn latency_counts() -> Vec<u64> {
    let mut counts = vec![0; inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1];
    counts[6] = 12;
    counts[9] = 7;
    counts[12] = 1;
    counts
}

fn report(pod: usize, workloads: usize, start_ms: i64) -> ReportRequest {
    ReportRequest {
        report: Some(report_request::Report::Pod(PodReport {
            pod: Some(PodIdentity {
                namespace: "bench".into(),
                pod: format!("pod-{pod}"),
                workload: Some(WorkloadRef {
                    namespace: "bench".into(),
                    kind: "deployment".into(),
                    name: format!("w{}", pod % workloads),
                }),
                pod_ip: format!("10.0.{}.{}", pod / 256 % 256, pod % 256),
            }),
            interval: Some(Interval {
                start_unix_ms: start_ms,
                length_ms: 1000,
            }),
            avg_concurrency: 1.5,
            in_flight: 1,
            requests: 20,
            // As a serving pod reports: classes and a latency histogram (so the SMI figures of
            // every pod are kept too, the costlier case for memory).
            responses: Some(Responses {
                class_2xx: 19,
                class_5xx: 1,
                ..Responses::default()
            }),
            latency: Some(LatencyHistogram {
                counts: latency_counts(),
                sum_seconds: 0.4,
            }),
        })),
    }
}

fn now_ms() -> i64 {
    inflight_aggregator::now_ms()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let target = arg(&args, "--target", "http://127.0.0.1:9090");
    let pods: usize = arg(&args, "--pods", "1000").parse().unwrap();
    let workloads: usize = arg(&args, "--workloads", "100").parse().unwrap();
    let streams: usize = arg(&args, "--streams", "16").parse().unwrap();
    let seconds: u64 = arg(&args, "--seconds", "10").parse().unwrap();
    match mode.as_str() {
        "ingest" | "hold" => {
            let hold = mode == "hold";
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for s in 0..streams {
                let target = target.clone();
                tasks.push(tokio::spawn(async move {
                    let mut client = IngestClient::connect(target).await.unwrap();
                    let mine: Vec<usize> = (s..pods).step_by(streams).collect();
                    let stream = async_stream(mine, workloads, deadline, hold);
                    let summary = client.report(stream).await.unwrap().into_inner();
                    summary.accepted
                }));
            }
            let started = Instant::now();
            let mut accepted = 0;
            for t in tasks {
                accepted += t.await.unwrap();
            }
            let secs = started.elapsed().as_secs_f64();
            println!("accepted {accepted} reports in {secs:.2} s: {:.0} reports/s", accepted as f64 / secs);
        }
        "latency" => {
            let calls: usize = arg(&args, "--calls", "20000").parse().unwrap();
            let mut client = ExternalScalerClient::connect(target).await.unwrap();
            let mut micros = Vec::with_capacity(calls);
            for i in 0..calls {
                let r = ScaledObjectRef {
                    name: "x".into(),
                    namespace: "bench".into(),
                    scaler_metadata: HashMap::from([
                        ("workload".to_owned(), format!("deployment/w{}", i % workloads)),
                        ("target".to_owned(), "10".to_owned()),
                    ]),
                };
                let at = Instant::now();
                client
                    .get_metrics(GetMetricsRequest { scaled_object_ref: Some(r), metric_name: "m".into() })
                    .await
                    .unwrap();
                micros.push(at.elapsed().as_secs_f64() * 1e6);
            }
            micros.sort_by(f64::total_cmp);
            let q = |p: f64| micros[((micros.len() as f64 * p) as usize).min(micros.len() - 1)];
            println!("GetMetrics over {calls} calls: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs", q(0.5), q(0.99), q(1.0));
        }
        _ => eprintln!("usage: load ingest|hold|latency [--target URL] [--pods N] [--workloads W] [--streams S] [--seconds D] [--calls C]"),
    }
}

/// The reports of one stream: as fast as it goes (`ingest`), or one per pod per second (`hold`).
fn async_stream(
    mine: Vec<usize>,
    workloads: usize,
    deadline: Instant,
    hold: bool,
) -> impl tokio_stream::Stream<Item = ReportRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let mut second = now_ms() / 1000 * 1000 - 1000;
        while Instant::now() < deadline {
            for &pod in &mine {
                if tx.send(report(pod, workloads, second)).await.is_err() {
                    return;
                }
            }
            if hold {
                second += 1000;
                let wait = (second + 1000 - now_ms()).max(0);
                tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
            } else {
                // As fast as it goes: every round reports the last whole second again.
                second = now_ms() / 1000 * 1000 - 1000;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
