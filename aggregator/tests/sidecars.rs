//! 1,000 simulated sidecars, each on a report stream of its own over its own connection, against
//! the real aggregator binary: the figures add up, silent pods expire, and reports that contradict
//! themselves or are absurd are refused and change nothing. (Restarts and outages are driven with
//! the real proxy, in `signal.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Aggregator;
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use inflight_proto::v1::ingest_client::IngestClient;
use inflight_proto::v1::{
    report_request, Interval, PodIdentity, PodReport, ReportRequest, WorkloadRef,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

const PODS: usize = 1000;
const WORKLOADS: usize = 10;

fn now_ms() -> i64 {
    inflight_aggregator::now_ms()
}

fn report(pod: &str, workload: &str, start_ms: i64, concurrency: f64) -> ReportRequest {
    ReportRequest {
        report: Some(report_request::Report::Pod(PodReport {
            pod: Some(PodIdentity {
                namespace: "shop".into(),
                pod: pod.into(),
                workload: Some(WorkloadRef {
                    namespace: "shop".into(),
                    kind: "deployment".into(),
                    name: workload.into(),
                }),
                pod_ip: String::new(),
            }),
            interval: Some(Interval {
                start_unix_ms: start_ms,
                length_ms: 1000,
            }),
            avg_concurrency: concurrency,
            in_flight: 0,
            requests: 0,
            responses: None,
            latency: None,
        })),
    }
}

/// A sidecar that reports `concurrency` for every second since `t0_ms`, on one stream, and
/// reconnects (sending on from where it was) when the stream breaks, until `stop` says so.
async fn sidecar(
    url: String,
    pod: String,
    workload: String,
    t0_ms: i64,
    concurrency: f64,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = t0_ms;
    loop {
        let Ok(mut client) = IngestClient::connect(url.clone()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (tx, rx) = mpsc::channel(16);
        let call = tokio::spawn(async move { client.report(ReceiverStream::new(rx)).await });
        loop {
            while next + 1000 <= now_ms() {
                if tx
                    .send(report(&pod, &workload, next, concurrency))
                    .await
                    .is_err()
                {
                    break;
                }
                next += 1000;
            }
            if call.is_finished() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(u64::try_from(next + 1000 - now_ms()).unwrap_or(0).max(5))) => {}
                _ = stop.changed() => return,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reference(workload: &str, scale_to_zero_after: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        name: workload.into(),
        namespace: "shop".into(),
        scaler_metadata: HashMap::from([
            ("workload".to_owned(), format!("deployment/{workload}")),
            ("target".to_owned(), "10".to_owned()),
            (
                "scaleToZeroAfter".to_owned(),
                scale_to_zero_after.to_owned(),
            ),
        ]),
    }
}

async fn answer(
    scaler: &mut ExternalScalerClient<tonic::transport::Channel>,
    workload: &str,
) -> Result<f64, tonic::Status> {
    answer_over(scaler, workload, "60s").await
}

async fn answer_over(
    scaler: &mut ExternalScalerClient<tonic::transport::Channel>,
    workload: &str,
    window: &str,
) -> Result<f64, tonic::Status> {
    let mut r = reference(workload, "300s");
    r.scaler_metadata
        .insert("window".to_owned(), window.to_owned());
    let r = scaler
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(r),
            metric_name: "m".into(),
        })
        .await?
        .into_inner();
    Ok(r.metric_values[0].metric_value_float)
}

async fn value(
    scaler: &mut ExternalScalerClient<tonic::transport::Channel>,
    workload: &str,
) -> f64 {
    answer(scaler, workload).await.unwrap()
}

/// Until warm-up is over GetMetrics answers UNAVAILABLE, never a partial sum.
async fn warmed_up(scaler: &mut ExternalScalerClient<tonic::transport::Channel>, workload: &str) {
    eventually("warm-up", 30, async || {
        match answer(scaler, workload).await {
            Ok(_) => true,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                false
            }
        }
    })
    .await;
}

async fn eventually(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sidecars_expiry_and_bad_reports() {
    let t0 = now_ms() - 2000;
    let aggregator = Aggregator::start(&["--warm-up", "3s"]);
    let url = aggregator.url();

    // 1,000 pods in 10 workloads, each pod averaging 1.0 in flight; workload "idle" has one idle pod.
    let mut stops = Vec::new();
    for i in 0..PODS {
        let (tx, rx) = watch::channel(false);
        stops.push(tx);
        let w = format!("w{}", i % WORKLOADS);
        tokio::spawn(sidecar(url.clone(), format!("pod-{i}"), w, t0, 1.0, rx));
    }
    let (_idle_stop, idle_rx) = watch::channel(false);
    tokio::spawn(sidecar(
        url.clone(),
        "idle-0".into(),
        "idle".into(),
        t0,
        0.0,
        idle_rx,
    ));

    eventually("1,001 pods and 1,001 streams", 60, async || {
        aggregator.metric("inflight_aggregator_pods").await == Some(1001.0)
            && aggregator
                .metric("inflight_aggregator_report_streams")
                .await
                == Some(1001.0)
    })
    .await;
    assert_eq!(
        aggregator.metric("inflight_aggregator_workloads").await,
        Some(11.0)
    );

    // Each workload: 100 pods × 1.0 — averaged over what this aggregator observed.
    let mut scaler = ExternalScalerClient::connect(aggregator.scaler_url())
        .await
        .unwrap();
    warmed_up(&mut scaler, "w0").await;
    for w in 0..WORKLOADS {
        let v = value(&mut scaler, &format!("w{w}")).await;
        assert!((v - 100.0).abs() < 1e-6, "w{w}: {v}, expected 100");
    }

    // Half the pods stop reporting: after 3 missed intervals they are gone.
    for stop in &stops[..PODS / 2] {
        stop.send(true).unwrap();
    }
    eventually("500 silent pods to expire", 20, async || {
        aggregator.metric("inflight_aggregator_pods").await == Some(501.0)
    })
    .await;
    assert_eq!(
        aggregator
            .metric("inflight_aggregator_pods_expired_total")
            .await,
        Some(500.0)
    );

    // Reports that contradict themselves or are absurd: refused with INVALID_ARGUMENT naming the
    // reason, counted, and nothing changes. Checked on a fresh workload with a large value, read
    // exactly before and after (over a 6 s window, the shortest a trigger may ask for with the
    // default burst window, whole once it has reported for 7 s).
    let (_big_stop, big_rx) = watch::channel(false);
    tokio::spawn(sidecar(
        url.clone(),
        "big-0".into(),
        "big".into(),
        now_ms() - 1000,
        1000.0,
        big_rx,
    ));
    let big_since = now_ms();
    eventually("the fresh workload's window to fill", 30, async || {
        now_ms() - big_since > 7000
            && answer_over(&mut scaler, "big", "6s").await.ok() == Some(1000.0)
    })
    .await;
    let mut client = IngestClient::connect(url.clone()).await.unwrap();
    let t = now_ms() - 1000;
    let with = |f: &dyn Fn(&mut PodReport)| {
        let mut r = report("big-0", "big", t, 5000.0);
        if let Some(report_request::Report::Pod(p)) = &mut r.report {
            f(p);
        }
        r
    };
    let bad = [
        ("bad_concurrency", report("big-0", "big", t, f64::NAN)),
        ("bad_concurrency", report("big-0", "big", t, -1.0)),
        ("bad_concurrency", report("big-0", "big", t, 1e308)),
        // Ends 3 s after now: a clock running fast.
        (
            "future_interval",
            report("big-0", "big", now_ms() + 2000, 5000.0),
        ),
        (
            "bad_interval",
            with(&|p| {
                p.interval = Some(Interval {
                    start_unix_ms: i64::MAX - 10,
                    length_ms: u32::MAX,
                });
            }),
        ),
        ("out_of_range", with(&|p| p.requests = u64::MAX)),
        (
            "zero_interval",
            with(&|p| {
                p.interval = Some(Interval {
                    start_unix_ms: t,
                    length_ms: 0,
                });
            }),
        ),
        ("two_workloads", report("big-0", "w4", t, 5000.0)),
        ("bad_name", report("Big-0!", "big", t, 5000.0)),
        (
            "missing_identity",
            ReportRequest {
                report: Some(report_request::Report::Pod(PodReport::default())),
            },
        ),
    ];
    for (reason, r) in bad {
        let status = client.report(tokio_stream::iter([r])).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{reason}: {status:?}"
        );
        assert!(
            status.message().contains(reason),
            "{reason} not in {:?}",
            status.message()
        );
    }
    for (reason, n) in [
        ("bad_concurrency", 3.0),
        ("future_interval", 1.0),
        ("bad_interval", 1.0),
        ("out_of_range", 1.0),
        ("two_workloads", 1.0),
        ("bad_name", 1.0),
    ] {
        assert_eq!(
            aggregator
                .metric(&format!(
                    "inflight_aggregator_reports_rejected_total{{reason=\"{reason}\"}}"
                ))
                .await,
            Some(n),
            "{reason}"
        );
    }
    let after = answer_over(&mut scaler, "big", "6s").await.unwrap();
    assert!(
        (after - 1000.0).abs() < 1e-6,
        "big moved from 1000 to {after}"
    );
    assert_eq!(
        aggregator.metric("inflight_aggregator_workloads").await,
        Some(12.0),
        "no workload made by a refused report"
    );
}

/// HA: two aggregators, every sidecar reporting to each (as the proxy does for every address a
/// headless Service resolves to): either one gives KEDA the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_give_the_same_answers() {
    let t0 = now_ms() - 2000;
    let a = Aggregator::start(&["--warm-up", "3s"]);
    let b = Aggregator::start(&["--warm-up", "3s"]);
    let (_stop, rx) = watch::channel(false);
    for i in 0..40 {
        let w = format!("w{}", i % 4);
        let c = f64::from(i % 5);
        for url in [a.url(), b.url()] {
            tokio::spawn(sidecar(
                url,
                format!("pod-{i}"),
                w.clone(),
                t0,
                c,
                rx.clone(),
            ));
        }
    }
    for agg in [&a, &b] {
        eventually("40 pods on each replica", 30, async || {
            agg.metric("inflight_aggregator_pods").await == Some(40.0)
        })
        .await;
    }
    let mut sa = ExternalScalerClient::connect(a.scaler_url()).await.unwrap();
    let mut sb = ExternalScalerClient::connect(b.scaler_url()).await.unwrap();
    warmed_up(&mut sa, "w0").await;
    warmed_up(&mut sb, "w0").await;
    for w in 0..4 {
        let name = format!("w{w}");
        let (va, vb) = (value(&mut sa, &name).await, value(&mut sb, &name).await);
        // Each pod reports i % 5; the ten pods of w{w} sum to 20 whichever the workload.
        assert!((va - 20.0).abs() < 1e-6, "{name} on replica a: {va}");
        assert!((vb - 20.0).abs() < 1e-6, "{name} on replica b: {vb}");
        let active = |s: &mut ExternalScalerClient<tonic::transport::Channel>| {
            let r = reference(&name, "300s");
            let mut s = s.clone();
            async move { s.is_active(r).await.unwrap().into_inner().result }
        };
        assert_eq!(active(&mut sa).await, active(&mut sb).await);
    }
}
