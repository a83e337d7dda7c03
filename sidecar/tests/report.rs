//! Reports reach a real Ingest server with the right figures; an aggregator
//! that is down or stuck never holds up requests, and is caught up with once
//! it is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http::{Request, Response};
use inflight_proto::v1::PodReport;
use inflight_proto::LATENCY_BUCKETS;

/// `/status/N` answers N; `/sleep/MS` answers 200 after MS milliseconds.
async fn app(request: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').split('/');
    match (
        parts.next(),
        parts.next().and_then(|n| n.parse::<u64>().ok()),
    ) {
        (Some("status"), Some(code)) => Response::builder()
            .status(code as u16)
            .body(full(""))
            .unwrap(),
        (Some("sleep"), Some(ms)) => slow_ok(Duration::from_millis(ms)).await,
        _ => Response::new(full("ok")),
    }
}

fn total(reports: &[PodReport], f: impl Fn(&PodReport) -> u64) -> u64 {
    reports.iter().map(f).sum()
}

fn responses(r: &PodReport) -> inflight_proto::v1::Responses {
    r.responses.unwrap_or_default()
}

/// Request-seconds in a report: its average concurrency times its length.
fn request_seconds(r: &PodReport) -> f64 {
    r.avg_concurrency * f64::from(r.interval.unwrap().length_ms) / 1000.0
}

#[tokio::test]
async fn reports_carry_identity_and_the_right_figures() {
    let mut sink = IngestSink::start().await;
    let app = App::start(app).await;
    let proxy = Proxy::start(
        app.addr,
        &[
            "--aggregator",
            &format!("http://{}", sink.addr),
            "--workload",
            "deployment/web",
            "--report-interval",
            "200ms",
        ],
    )
    .await;
    for path in [
        "/ok",
        "/ok",
        "/ok",
        "/ok",
        "/ok",
        "/status/404",
        "/status/404",
        "/status/503",
    ] {
        get(proxy.addr, path).await.unwrap();
    }
    let reports = sink
        .until(Duration::from_secs(10), |all| {
            total(all, |r| r.requests) == 8
                && total(all, |r| {
                    responses(r).class_2xx + responses(r).class_4xx + responses(r).class_5xx
                }) == 8
        })
        .await;

    let pod = reports[0].pod.clone().unwrap();
    assert_eq!(pod.namespace, "shop");
    assert_eq!(pod.pod, "web-7d9f-abcde");
    assert_eq!(pod.pod_ip, "10.1.2.3");
    let workload = pod.workload.unwrap();
    assert_eq!(
        (
            workload.namespace.as_str(),
            workload.kind.as_str(),
            workload.name.as_str()
        ),
        ("shop", "deployment", "web")
    );

    assert_eq!(total(&reports, |r| responses(r).class_2xx), 5);
    assert_eq!(total(&reports, |r| responses(r).class_4xx), 2);
    assert_eq!(total(&reports, |r| responses(r).class_5xx), 1);
    assert_eq!(total(&reports, |r| responses(r).cancelled), 0);
    for r in &reports {
        let latency = r.latency.clone().unwrap();
        assert_eq!(latency.counts.len(), LATENCY_BUCKETS);
        assert!(r.interval.unwrap().length_ms > 0);
    }
    assert_eq!(
        total(&reports, |r| r.latency.clone().unwrap().counts.iter().sum()),
        8
    );
    // Consecutive reports tile time exactly, each ending at the wall clock
    // when it was sent: not later than it arrived.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for pair in reports.windows(2) {
        let (a, b) = (pair[0].interval.unwrap(), pair[1].interval.unwrap());
        let gap = b.start_unix_ms - (a.start_unix_ms + i64::from(a.length_ms));
        assert_eq!(gap, 0, "gap between {a:?} and {b:?}");
        assert!(
            b.start_unix_ms + i64::from(b.length_ms) <= now_ms,
            "{b:?} ends after {now_ms}"
        );
    }
}

#[tokio::test]
async fn time_weighted_average_matches_a_known_schedule() {
    let mut sink = IngestSink::start().await;
    let app = App::start(app).await;
    let proxy = Proxy::start(
        app.addr,
        &[
            "--aggregator",
            &sink.addr.to_string(),
            "--report-interval",
            "250ms",
        ],
    )
    .await;
    // 4 requests of 600 ms, 2 of 1500 ms and 3 of 2500 ms, all at once:
    // 4*0.6 + 2*1.5 + 3*2.5 = 12.9 request-seconds, and exactly 3 in flight
    // from 1.5 s to 2.5 s.
    let mut calls = Vec::new();
    for (n, ms) in [(4, 600), (2, 1500), (3, 2500)] {
        for _ in 0..n {
            let addr = proxy.addr;
            calls.push(tokio::spawn(async move {
                get(addr, &format!("/sleep/{ms}")).await.unwrap().0
            }));
        }
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    let reports = sink
        .until(Duration::from_secs(10), |all| {
            total(all, |r| responses(r).class_2xx) == 9
                && all.last().is_some_and(|r| r.in_flight == 0)
        })
        .await;
    let measured: f64 = reports.iter().map(request_seconds).sum();
    assert!(
        (measured - 12.9).abs() / 12.9 < 0.05,
        "measured {measured} request-seconds, expected 12.9"
    );
    // An interval that starts and ends with 3 in flight, and saw no request
    // start or end, averages 3.
    let steady: Vec<_> = reports
        .windows(2)
        .filter(|w| w[0].in_flight == 3 && w[1].in_flight == 3 && w[1].requests == 0)
        .map(|w| w[1].avg_concurrency)
        .collect();
    assert!(!steady.is_empty(), "no steady interval in {reports:#?}");
    for avg in steady {
        assert!(
            (avg - 3.0).abs() / 3.0 < 0.05,
            "steady interval averaged {avg}"
        );
    }
}

#[tokio::test]
async fn a_wake_up_is_reported_at_once_not_at_the_next_interval() {
    let mut sink = IngestSink::start().await;
    let app = App::start(app).await;
    let proxy = Proxy::start(
        app.addr,
        &[
            "--aggregator",
            &sink.addr.to_string(),
            "--report-interval",
            "60s",
        ],
    )
    .await;
    proxy
        .wait_stats(Duration::from_secs(5), |s| {
            s["aggregators"][0]["connected"] == true
        })
        .await;
    let addr = proxy.addr;
    let call = tokio::spawn(async move { get(addr, "/sleep/3000").await.unwrap().0 });
    // The next periodic report is a minute away; this one is the wake-up.
    let report = sink.next(Duration::from_secs(10)).await;
    assert_eq!(report.in_flight, 1);
    assert_eq!(report.requests, 1);
    assert_eq!(call.await.unwrap(), 200);
}

#[tokio::test]
async fn aggregator_down_then_up_gets_every_request_merged() {
    let port = free_port();
    let app = App::start(app).await;
    let proxy = Proxy::start(
        app.addr,
        &[
            "--aggregator",
            &format!("127.0.0.1:{port}"),
            "--report-interval",
            "100ms",
        ],
    )
    .await;
    let mut ok = 0;
    for _ in 0..300 {
        if get(proxy.addr, "/ok").await.unwrap().0 == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 300, "every request served while the aggregator is down");
    let stats = proxy.stats().await;
    assert_eq!(stats["aggregators"][0]["connected"], false);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let mut sink = IngestSink::on(listener);
    let reports = sink
        .until(Duration::from_secs(15), |all| {
            total(all, |r| r.requests) >= 300
        })
        .await;
    assert_eq!(total(&reports, |r| r.requests), 300);
    assert_eq!(total(&reports, |r| responses(r).class_2xx), 300);
    // What piled up while it was down arrives as one merged report.
    let first = reports[0].interval.unwrap();
    assert!(
        first.length_ms >= 500,
        "first report after the outage covers {first:?}"
    );
    proxy
        .wait_stats(Duration::from_secs(5), |s| {
            s["aggregators"][0]["connected"] == true
        })
        .await;
}

#[tokio::test]
async fn a_stuck_aggregator_does_not_hold_up_requests() {
    // Accepts connections and never says a word.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let (s, _) = stuck.accept().await.unwrap();
            open.push(s);
        }
    });
    let app = App::start(app).await;
    let proxy = Proxy::start(
        app.addr,
        &[
            "--aggregator",
            &stuck_addr.to_string(),
            "--report-interval",
            "100ms",
        ],
    )
    .await;
    let mut workers = Vec::new();
    for _ in 0..8 {
        let addr = proxy.addr;
        workers.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..100 {
                if get(addr, "/ok").await.map(|r| r.0) == Some(200) {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for w in workers {
        ok += w.await.unwrap();
    }
    assert_eq!(ok, 800);
    let stats = proxy.stats().await;
    assert_eq!(stats["requests_total"], 800);
    // The stream counts as open (TCP and HTTP/2 preface went out); HTTP/2
    // keep-alive pings close it after 15 s of silence.
    held.abort();
}

#[tokio::test]
async fn every_aggregator_replica_gets_every_report() {
    let mut first = IngestSink::start().await;
    let mut second = IngestSink::start().await;
    let app = App::start(app).await;
    let proxy = Proxy::start(
        app.addr,
        &[
            "--aggregator",
            &format!("http://{},{}", first.addr, second.addr),
            "--report-interval",
            "100ms",
        ],
    )
    .await;
    for _ in 0..25 {
        assert_eq!(get(proxy.addr, "/ok").await.unwrap().0, 200);
    }
    for sink in [&mut first, &mut second] {
        let reports = sink
            .until(Duration::from_secs(10), |all| {
                total(all, |r| r.requests) >= 25
            })
            .await;
        assert_eq!(total(&reports, |r| r.requests), 25);
        assert_eq!(total(&reports, |r| responses(r).class_2xx), 25);
    }
    let stats = proxy.stats().await;
    assert_eq!(stats["aggregators"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn reporting_without_a_namespace_refuses_to_start_with_the_reason() {
    if std::path::Path::new(inflight_proxy::config::SERVICE_ACCOUNT_NAMESPACE).exists() {
        // In a pod the service account's namespace is the fallback.
        eprintln!("skipped: this machine has a service account namespace");
        return;
    }
    let sink = IngestSink::start().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_inflight-proxy"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--upstream", "127.0.0.1:1"])
        .args(["--aggregator", &format!("http://{}", sink.addr)])
        .env("POD_NAME", "web-1")
        .env_remove("POD_NAMESPACE")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the proxy exits rather than serving")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("POD_NAMESPACE is not set"), "{stderr}");
}
