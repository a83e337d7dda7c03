use inflight_proto::v1::{
    report_request, Interval, LatencyHistogram, PodIdentity, PodReport, ReportRequest, WorkloadRef,
};

use crate::validate;

use super::*;

const T0: i64 = 1_700_000_000_000;

fn registry(started_ms: i64) -> Registry {
    Registry::new(Settings {
        stable_ms: 60_000,
        burst_ms: 6_000,
        max_window_ms: 600_000,
        max_report_interval_ms: 10_000,
        started_ms,
        warm_up_ms: 15_000,
        limits: Limits::default(),
    })
}

fn report(
    pod: &str,
    workload: &str,
    start_ms: i64,
    concurrency: f64,
    in_flight: u32,
    requests: u64,
) -> ReportRequest {
    let (kind, name) = workload.split_once('/').unwrap();
    ReportRequest {
        report: Some(report_request::Report::Pod(PodReport {
            pod: Some(PodIdentity {
                namespace: "shop".into(),
                pod: pod.into(),
                workload: Some(WorkloadRef {
                    namespace: "shop".into(),
                    kind: kind.into(),
                    name: name.into(),
                }),
                pod_ip: "10.0.0.1".into(),
            }),
            interval: Some(Interval {
                start_unix_ms: start_ms,
                length_ms: 1000,
            }),
            avg_concurrency: concurrency,
            in_flight,
            requests,
            responses: None,
            latency: None,
        })),
    }
}

fn with_length(mut r: ReportRequest, length_ms: u32) -> ReportRequest {
    if let Some(report_request::Report::Pod(p)) = &mut r.report {
        p.interval = Some(Interval {
            start_unix_ms: p.interval.unwrap().start_unix_ms,
            length_ms,
        });
    }
    r
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn after_an_outage_longer_than_the_ring_the_answer_is_current() {
    let r = registry(T0 - 3_600_000);
    for s in 0..60 {
        let at = T0 + s * 1000;
        r.apply(
            &report("web-1", "deployment/web", at, 10.0, 10, 10),
            at + 1000,
        )
        .unwrap();
    }
    // The aggregator was unreachable for 70 s: the proxy sends one merged 70 s report.
    let start = T0 + 60_000;
    let merged = with_length(
        report("web-1", "deployment/web", start, 10.0, 10, 700),
        70_000,
    );
    let mut now = start + 70_000 + 20;
    r.apply(&merged, now).unwrap();
    assert!(close(
        r.value(&web(), Metric::Concurrency, 60_000, now).unwrap(),
        10.0
    ));
    // And every answer after it is current, not 70 s behind.
    for s in 0..5 {
        let at = start + 70_000 + s * 1000;
        now = at + 1000 + 20;
        r.apply(&report("web-1", "deployment/web", at, 10.0, 10, 10), now)
            .unwrap();
        let v = r.value(&web(), Metric::Concurrency, 60_000, now).unwrap();
        assert!(close(v, 10.0), "{s} s after the outage: {v}");
    }
}

#[test]
fn one_huge_interval_does_not_hold_the_window_back() {
    let r = registry(T0 - 3_600_000);
    let now = T0 + 1_000_000_000;
    let huge = u32::MAX;
    let start = now - i64::from(huge);
    r.apply(
        &with_length(report("web-1", "deployment/web", start, 4.0, 4, 0), huge),
        now,
    )
    .unwrap();
    let v = r.value(&web(), Metric::Concurrency, 60_000, now).unwrap();
    assert!(close(v, 4.0), "{v}");
}

fn web() -> WorkloadKey {
    WorkloadKey::new("shop", "deployment", "web")
}

#[test]
fn pods_add_up_and_the_burst_rule_answers_a_spike() {
    let r = registry(T0 - 3_600_000);
    for s in 0..60 {
        let at = T0 + s * 1000;
        r.apply(
            &report("web-1", "deployment/web", at, 1.0, 1, 10),
            at + 1000,
        )
        .unwrap();
        // The second pod gets a spike in the last 6 s: 10 in flight.
        let c = if s >= 54 { 10.0 } else { 1.0 };
        r.apply(&report("web-2", "deployment/web", at, c, 1, 10), at + 1000)
            .unwrap();
    }
    let now = T0 + 61_000; // figures complete up to now - 1 s
    let stable = 1.0 + (54.0 + 60.0) / 60.0;
    let burst = 11.0;
    assert!(burst >= 2.0 * stable);
    let v = r.value(&web(), Metric::Concurrency, 60_000, now).unwrap();
    assert!((v - burst).abs() < 1e-6, "{v}");
    let rate = r.value(&web(), Metric::RequestRate, 60_000, now).unwrap();
    assert!((rate - 20.0).abs() < 1e-6, "{rate}");
    assert_eq!(r.pods(&web()), vec!["web-1", "web-2"]);
}

#[test]
fn a_sustained_step_is_never_answered_with_less() {
    let r = registry(T0);
    let mut last = 0.0;
    for s in 0..150 {
        let at = T0 + s * 1000;
        // One in flight for a minute, then ten for as long as the test runs.
        let c = if s < 60 { 1.0 } else { 10.0 };
        let now = at + 1000;
        r.apply(&report("web-1", "deployment/web", at, c, 1, 1), now)
            .unwrap();
        let Ok(v) = r.value(&web(), Metric::Concurrency, 60_000, now) else {
            assert!(s < 15, "an answer once warmed up");
            continue;
        };
        if s < 60 {
            assert!(close(v, 1.0), "{s}: {v}");
        } else {
            assert!(v >= last - 1e-9, "{s} s: fell from {last} to {v}");
        }
        if s >= 66 {
            // The burst window holds only the step from 6 s on.
            assert!(close(v, 10.0), "{s} s: {v}");
        }
        last = v;
    }
}

fn pod(r: &mut ReportRequest) -> &mut PodReport {
    match &mut r.report {
        Some(report_request::Report::Pod(p)) => p,
        _ => unreachable!(),
    }
}

#[test]
fn absurd_figures_are_refused_and_change_nothing() {
    let r = registry(T0 - 3_600_000);
    let now = T0 + 1000;
    let good = || report("web-1", "deployment/web", T0, 3.0, 3, 30);
    let mut cases: Vec<(&str, ReportRequest)> = Vec::new();
    let mut c = good();
    pod(&mut c).avg_concurrency = 1e308;
    cases.push(("bad_concurrency", c));
    let mut c = good();
    pod(&mut c).in_flight = u32::MAX;
    cases.push(("bad_concurrency", c));
    let mut c = good();
    pod(&mut c).requests = u64::MAX;
    cases.push(("out_of_range", c));
    let mut c = good();
    pod(&mut c).responses = Some(inflight_proto::v1::Responses {
        class_2xx: u64::MAX,
        ..Default::default()
    });
    cases.push(("out_of_range", c));
    let mut c = good();
    pod(&mut c).latency = Some(LatencyHistogram {
        counts: vec![u64::MAX; inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1],
        sum_seconds: 1.0,
    });
    cases.push(("out_of_range", c));
    let mut c = good();
    pod(&mut c).latency = Some(LatencyHistogram {
        counts: vec![1; inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1],
        sum_seconds: 1e308,
    });
    cases.push(("bad_latency_sum", c));
    let mut c = good();
    pod(&mut c).interval = Some(Interval {
        start_unix_ms: i64::MAX - 10,
        length_ms: u32::MAX,
    });
    cases.push(("bad_interval", c));
    let mut c = good();
    pod(&mut c).interval = Some(Interval {
        start_unix_ms: i64::MIN,
        length_ms: 1000,
    });
    cases.push(("bad_interval", c));
    for (reason, c) in &cases {
        // Twice: a sum of two accepted absurd figures would overflow.
        for _ in 0..2 {
            assert_eq!(r.apply(c, now).unwrap_err().reason(), *reason, "{c:?}");
        }
    }
    assert_eq!(r.census(), Census::default(), "nothing was made");
    // The largest figures accepted add up without overflow or infinity.
    let mut big = good();
    pod(&mut big).avg_concurrency = validate::MAX_CONCURRENCY;
    pod(&mut big).requests = validate::MAX_REQUESTS_PER_SECOND;
    pod(&mut big).latency = Some(LatencyHistogram {
        counts: vec![
            validate::MAX_REQUESTS_PER_SECOND;
            inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1
        ],
        sum_seconds: validate::MAX_LATENCY_SUM_SECONDS,
    });
    for _ in 0..3 {
        r.apply(&big, now).unwrap();
    }
    let v = r.value(&web(), Metric::Concurrency, 60_000, now).unwrap();
    // 3 × 10⁶ in flight for one second: the burst window (6 s) reads 5 × 10⁵.
    assert!(close(v, 3e6 / 6.0), "{v}");
    assert!(r.export()[0].durations.sum_seconds.is_finite());
}

#[test]
fn a_pod_whose_clock_runs_fast_is_refused_and_wipes_nothing() {
    let r = registry(T0 - 3_600_000);
    let mut now = T0;
    for s in 0..60 {
        let at = T0 + s * 1000;
        now = at + 1000;
        for p in ["web-1", "web-2"] {
            r.apply(&report(p, "deployment/web", at, 2.0, 2, 2), now)
                .unwrap();
        }
    }
    assert!(close(
        r.value(&web(), Metric::Concurrency, 60_000, now).unwrap(),
        4.0
    ));
    // web-2's clock is 3 s fast: its next report ends 3 s after now.
    let ahead = report("web-2", "deployment/web", now + 2000, 9.0, 9, 9);
    assert_eq!(
        r.apply(&ahead, now).unwrap_err().reason(),
        "future_interval"
    );
    // A second ahead is allowed (a report is sent when its interval ends).
    r.apply(&report("web-1", "deployment/web", now, 2.0, 2, 2), now)
        .unwrap();
    let v = r.value(&web(), Metric::Concurrency, 60_000, now).unwrap();
    assert!(close(v, 4.0), "{v}");
}

#[test]
fn after_a_restart_no_answer_until_warmed_up_then_each_pod_over_its_own_span() {
    let r = registry(T0);
    // web-1 found this process at once, web-2 only 10 s later (its next DNS re-resolve).
    for s in 0..30 {
        let at = T0 + s * 1000;
        let now = at + 1000;
        r.apply(&report("web-1", "deployment/web", at, 5.0, 5, 5), now)
            .unwrap();
        if s >= 10 {
            r.apply(&report("web-2", "deployment/web", at, 5.0, 5, 5), now)
                .unwrap();
        }
        let v = r.value(&web(), Metric::Concurrency, 60_000, now);
        let nobody = r.value(
            &WorkloadKey::new("shop", "deployment", "nope"),
            Metric::Concurrency,
            60_000,
            now,
        );
        if now - T0 < 15_000 {
            assert!(v.is_err() && nobody.is_err(), "{s} s: {v:?} {nobody:?}");
            assert!(!r.warmed_up(now));
        } else {
            assert!(r.warmed_up(now));
            assert_eq!(nobody, Ok(0.0), "after warm-up, nobody reports for it: 0");
            // Not 5 + 5 × (s - 10) / s: web-2 is averaged over what was seen of it.
            let v = v.unwrap();
            assert!(close(v, 10.0), "{s} s: {v}");
            let rate = r.value(&web(), Metric::RequestRate, 60_000, now).unwrap();
            assert!(close(rate, 10.0), "{s} s: {rate}");
        }
    }
    // A pod first heard after warm-up is new: before it, it served nothing.
    let r = registry(T0 - 3_600_000);
    for s in 0..60 {
        let at = T0 + s * 1000;
        r.apply(&report("web-1", "deployment/web", at, 5.0, 5, 5), at + 1000)
            .unwrap();
    }
    let at = T0 + 60_000;
    r.apply(&report("web-1", "deployment/web", at, 5.0, 5, 5), at + 1000)
        .unwrap();
    r.apply(&report("web-2", "deployment/web", at, 6.0, 6, 6), at + 1000)
        .unwrap();
    let v = r
        .value(&web(), Metric::Concurrency, 60_000, at + 1000)
        .unwrap();
    assert!(close(v, 5.0 + 6.0 / 60.0), "{v}");
}

#[test]
fn a_restart_does_not_wake_a_workload_at_zero() {
    use inflight_proto::v1::{HeldReport, HeldWorkload};
    let r = registry(T0);
    // The activator lists the workload, holding nothing for it.
    let held = ReportRequest {
        report: Some(report_request::Report::Held(HeldReport {
            activator: Some(PodIdentity {
                namespace: "inflight".into(),
                pod: "activator-1".into(),
                ..PodIdentity::default()
            }),
            interval: Some(Interval {
                start_unix_ms: T0,
                length_ms: 1000,
            }),
            workloads: vec![HeldWorkload {
                workload: Some(WorkloadRef {
                    namespace: "shop".into(),
                    kind: "deployment".into(),
                    name: "web".into(),
                }),
                ..HeldWorkload::default()
            }],
        })),
    };
    r.apply(&held, T0 + 1000).unwrap();
    assert!(!r.is_active(&web(), 300_000, T0 + 1000));
}

#[test]
fn reports_out_of_phase_with_the_seconds_add_up() {
    // Reports every second at 437 ms past it, on a process started at 50 ms past a second.
    let t0 = T0 + 437;
    let r = registry(t0 + 2050);
    for s in 0..30 {
        let at = t0 + s * 1000;
        let now = at + 1000;
        for p in ["web-1", "web-2", "web-3"] {
            r.apply(&report(p, "deployment/web", at, 1.0, 1, 1), now)
                .unwrap();
        }
        if let Ok(v) = r.value(&web(), Metric::Concurrency, 60_000, now + 10) {
            assert!(close(v, 3.0), "{s}: {v}");
        }
    }
}

fn report_in(namespace: &str, pod_name: &str, kind: &str, name: &str) -> ReportRequest {
    let mut r = report(pod_name, "deployment/x", T0, 1.0, 1, 1);
    let p = pod(&mut r);
    let id = p.pod.as_mut().unwrap();
    id.namespace = namespace.into();
    id.workload = Some(WorkloadRef {
        namespace: namespace.into(),
        kind: kind.into(),
        name: name.into(),
    });
    r
}

#[test]
fn names_must_be_kubernetes_names() {
    let r = registry(T0 - 3_600_000);
    let now = T0 + 1000;
    let long = "a".repeat(254);
    let label_64 = "a".repeat(64);
    for (ns, pod, kind, name) in [
        ("Shop", "web-1", "deployment", "web"),
        (label_64.as_str(), "web-1", "deployment", "web"),
        ("shop", "web_1", "deployment", "web"),
        ("shop", long.as_str(), "deployment", "web"),
        ("shop", "-web", "deployment", "web"),
        ("shop", "web-1", "deploy ment", "web"),
        ("shop", "web-1", "deployment", "web/x"),
        ("shop", "web-1", "deployment", long.as_str()),
        ("shop", "web-1", "deployment", "Web"),
    ] {
        let e = r.apply(&report_in(ns, pod, kind, name), now).unwrap_err();
        assert_eq!(e.reason(), "bad_name", "{ns} {pod} {kind} {name}: {e}");
        assert!(
            e.to_string().len() < 400,
            "the message quotes at most a name"
        );
    }
    let mut ip = report("web-1", "deployment/web", T0, 1.0, 1, 1);
    pod(&mut ip).pod.as_mut().unwrap().pod_ip = "1".repeat(46);
    assert_eq!(r.apply(&ip, now).unwrap_err().reason(), "bad_name");
    // Real names pass: a subdomain pod name, an upper-case kind (lower-cased).
    r.apply(
        &report_in("shop", "web-7d4b9.x", "Deployment", "web.v2"),
        now,
    )
    .unwrap();
    assert_eq!(r.census().pods, 1);
}

#[test]
fn limits_on_pods_and_workloads_refuse_by_reason() {
    let r = Registry::new(Settings {
        limits: Limits {
            pods_per_workload: 2,
            workloads_per_namespace: 2,
            workloads: 3,
            pods: 4,
        },
        ..registry(T0 - 3_600_000).settings()
    });
    let now = T0 + 1000;
    let ok =
        |ns: &str, pod: &str, name: &str| r.apply(&report_in(ns, pod, "deployment", name), now);
    ok("a", "p1", "w1").unwrap();
    ok("a", "p2", "w1").unwrap();
    assert_eq!(
        ok("a", "p3", "w1").unwrap_err().reason(),
        "pods_per_workload"
    );
    // A pod already tracked goes on reporting.
    ok("a", "p1", "w1").unwrap();
    ok("a", "p4", "w2").unwrap();
    let e = ok("a", "p5", "w3").unwrap_err();
    assert_eq!(e.reason(), "workloads_per_namespace");
    assert!(e.is_limit());
    ok("b", "p6", "w1").unwrap();
    assert_eq!(ok("c", "p7", "w1").unwrap_err().reason(), "workloads");
    assert_eq!(ok("b", "p8", "w1").unwrap_err().reason(), "pods");
    assert_eq!(
        r.census(),
        Census {
            workloads: 3,
            pods: 4,
            activators: 0
        }
    );
    // Expired pods and emptied workloads (quiet for the longest window) make room again.
    let later = now + 700_000;
    assert_eq!(r.sweep(later), 4);
    assert_eq!(r.census(), Census::default());
    r.apply(&report_in("c", "p7", "deployment", "w1"), later)
        .unwrap();
}

#[test]
fn a_reporter_cannot_make_itself_immortal_with_a_long_interval() {
    let r = registry(T0 - 3_600_000);
    let now = T0 + 1_000_000_000;
    let huge = u32::MAX;
    r.apply(
        &with_length(
            report("web-1", "deployment/web", now - i64::from(huge), 1.0, 0, 0),
            huge,
        ),
        now,
    )
    .unwrap();
    assert_eq!(r.sweep(now + 29_000), 0);
    // Three intervals counted at most --max-report-interval (10 s).
    assert_eq!(r.sweep(now + 31_000), 1);
}

#[test]
fn a_name_squatted_by_a_stream_is_free_when_the_stream_ends() {
    let r = registry(T0 - 3_600_000);
    let now = T0 + 1000;
    let squatter = r.stream();
    squatter
        .apply(&report_in("shop", "db-0", "deployment", "fake"), now)
        .unwrap();
    let real = r.stream();
    let db = report_in("shop", "db-0", "statefulset", "db");
    assert_eq!(real.apply(&db, now).unwrap_err().reason(), "two_workloads");
    drop(squatter);
    real.apply(&db, now).unwrap();
    assert_eq!(
        r.pods(&WorkloadKey::new("shop", "statefulset", "db")),
        vec!["db-0"]
    );
    // Now the real pod's stream holds it.
    let other = r.stream();
    assert_eq!(
        other
            .apply(&report_in("shop", "db-0", "deployment", "fake"), now)
            .unwrap_err()
            .reason(),
        "two_workloads"
    );
}

fn held(start_ms: i64, workloads: &[(&str, u32, f64, u64)]) -> ReportRequest {
    use inflight_proto::v1::{HeldReport, HeldWorkload};
    ReportRequest {
        report: Some(report_request::Report::Held(HeldReport {
            activator: Some(PodIdentity {
                namespace: "inflight".into(),
                pod: "activator-1".into(),
                ..PodIdentity::default()
            }),
            interval: Some(Interval {
                start_unix_ms: start_ms,
                length_ms: 1000,
            }),
            workloads: workloads
                .iter()
                .map(|(name, held, avg_held, arrived)| HeldWorkload {
                    workload: Some(WorkloadRef {
                        namespace: "shop".into(),
                        kind: "deployment".into(),
                        name: (*name).into(),
                    }),
                    held: *held,
                    avg_held: *avg_held,
                    arrived: *arrived,
                })
                .collect(),
        })),
    }
}

#[test]
fn a_workload_is_no_longer_busy_when_its_activator_expires_or_omits_it() {
    let r = registry(T0 - 3_600_000);
    let api = WorkloadKey::new("shop", "deployment", "api");
    let web_busy = r.watch_busy(&web());
    let api_busy = r.watch_busy(&api);
    r.apply(
        &held(T0, &[("web", 2, 2.0, 2), ("api", 1, 1.0, 1)]),
        T0 + 1000,
    )
    .unwrap();
    assert!(*web_busy.borrow() && *api_busy.borrow());
    // The next report omits api: it holds nothing there any more.
    r.apply(&held(T0 + 1000, &[("web", 2, 2.0, 0)]), T0 + 2000)
        .unwrap();
    assert!(*web_busy.borrow());
    assert!(!*api_busy.borrow(), "an omitted workload holds 0");
    // The activator stops reporting: once it expires, web is not busy either.
    assert_eq!(r.sweep(T0 + 6000), 0);
    assert!(
        !*web_busy.borrow(),
        "busy recomputed when an activator expires"
    );
    assert_eq!(r.census().activators, 0);
}

#[test]
fn requests_held_then_served_are_counted_once() {
    let r = registry(T0 - 3_600_000);
    // 10 requests arrive at the activator in one second and are forwarded to web-1, whose
    // sidecar counts the same 10.
    r.apply(&held(T0, &[("web", 0, 0.5, 10)]), T0 + 1000)
        .unwrap();
    r.apply(
        &report("web-1", "deployment/web", T0, 0.5, 0, 10),
        T0 + 1000,
    )
    .unwrap();
    let rate = r
        .value(&web(), Metric::RequestRate, 10_000, T0 + 1000)
        .unwrap();
    assert!(close(rate, 1.0), "10 requests over 10 s, not 20: {rate}");
    // While no pod serves, the activator's arrivals are the rate.
    let api = WorkloadKey::new("shop", "deployment", "api");
    r.apply(&held(T0 + 1000, &[("api", 5, 5.0, 5)]), T0 + 2000)
        .unwrap();
    let rate = r
        .value(&api, Metric::RequestRate, 10_000, T0 + 2000)
        .unwrap();
    assert!(close(rate, 0.5), "{rate}");
}

#[test]
fn a_fractional_window_and_a_max_window_under_a_second() {
    let r = Registry::new(Settings {
        stable_ms: 2500,
        burst_ms: 1000,
        max_window_ms: 2500,
        ..registry(T0 - 3_600_000).settings()
    });
    for s in 0..10 {
        let at = T0 + s * 1000;
        r.apply(&report("web-1", "deployment/web", at, 2.0, 2, 2), at + 1000)
            .unwrap();
    }
    // The latest report ended 1.9 s ago: the window reads seconds 3 to 5.5 s back.
    let now = T0 + 11_900;
    let v = r.value(&web(), Metric::Concurrency, 2500, now).unwrap();
    assert!(close(v, 2.0), "{v}");
    // A max window under a second makes no call panic.
    let r = Registry::new(Settings {
        stable_ms: 500,
        burst_ms: 100,
        max_window_ms: 500,
        ..registry(T0 - 3_600_000).settings()
    });
    r.apply(&report("web-1", "deployment/web", T0, 2.0, 2, 2), T0 + 1000)
        .unwrap();
    let v = r
        .value(&web(), Metric::Concurrency, 60_000, T0 + 1000)
        .unwrap();
    assert!(close(v, 2.0), "{v}");
}

#[test]
fn a_bad_report_changes_nothing() {
    let r = registry(T0);
    r.apply(&report("web-1", "deployment/web", T0, 2.0, 2, 1), T0 + 1000)
        .unwrap();
    let before = r.value(&web(), Metric::Concurrency, 60_000, T0 + 2000);
    let mut bad = report("web-1", "deployment/web", T0 + 1000, f64::NAN, 0, 1);
    assert_eq!(
        r.apply(&bad, T0 + 2000).unwrap_err().reason(),
        "bad_concurrency"
    );
    if let Some(report_request::Report::Pod(p)) = &mut bad.report {
        p.avg_concurrency = 1.0;
        p.interval = Some(Interval {
            start_unix_ms: T0,
            length_ms: 0,
        });
    }
    assert_eq!(
        r.apply(&bad, T0 + 2000).unwrap_err().reason(),
        "zero_interval"
    );
    if let Some(report_request::Report::Pod(p)) = &mut bad.report {
        p.interval = Some(Interval {
            start_unix_ms: T0,
            length_ms: 1000,
        });
        p.latency = Some(LatencyHistogram {
            counts: vec![1, 2, 3],
            sum_seconds: 0.1,
        });
    }
    assert_eq!(
        r.apply(&bad, T0 + 2000).unwrap_err().reason(),
        "bad_histogram"
    );
    let other = report("web-1", "deployment/api", T0 + 1000, 5.0, 5, 5);
    assert_eq!(
        r.apply(&other, T0 + 2000).unwrap_err().reason(),
        "two_workloads"
    );
    assert_eq!(
        r.apply(&ReportRequest { report: None }, T0)
            .unwrap_err()
            .reason(),
        "empty"
    );
    assert_eq!(
        r.value(&web(), Metric::Concurrency, 60_000, T0 + 2000),
        before
    );
    assert_eq!(
        r.census(),
        Census {
            workloads: 1,
            pods: 1,
            activators: 0
        }
    );
}

#[test]
fn activity_after_a_restart_and_after_idling() {
    let delay = 300_000;
    // Started 10 s ago; the pod reports but has served nothing since.
    let r = registry(T0);
    r.apply(
        &report("web-1", "deployment/web", T0, 0.0, 0, 0),
        T0 + 10_000,
    )
    .unwrap();
    assert!(
        r.is_active(&web(), delay, T0 + 10_000),
        "no false zero before a whole delay since the restart"
    );
    assert!(
        !r.is_active(&web(), delay, T0 + delay + 1000),
        "idle for the whole delay"
    );
    // A request in flight makes it active at once, and the busy watch hears it.
    let busy = r.watch_busy(&web());
    r.apply(
        &report("web-1", "deployment/web", T0 + delay, 0.5, 1, 0),
        T0 + delay + 1000,
    )
    .unwrap();
    assert!(busy.has_changed().unwrap());
    assert!(r.is_active(&web(), delay, T0 + delay + 1000));
    // Unknown workloads are inactive.
    assert!(!r.is_active(&WorkloadKey::new("shop", "deployment", "nope"), delay, T0));
}

#[test]
fn a_held_request_wakes_a_workload_at_zero() {
    use inflight_proto::v1::{HeldReport, HeldWorkload};
    let r = registry(T0 - 3_600_000);
    let busy = r.watch_busy(&web());
    assert!(!r.is_active(&web(), 300_000, T0));
    let held = ReportRequest {
        report: Some(report_request::Report::Held(HeldReport {
            activator: Some(PodIdentity {
                namespace: "inflight".into(),
                pod: "activator-1".into(),
                ..PodIdentity::default()
            }),
            interval: Some(Interval {
                start_unix_ms: T0 - 1000,
                length_ms: 1000,
            }),
            workloads: vec![HeldWorkload {
                workload: Some(WorkloadRef {
                    namespace: "shop".into(),
                    kind: "deployment".into(),
                    name: "web".into(),
                }),
                held: 2,
                avg_held: 1.5,
                arrived: 2,
            }],
        })),
    };
    r.apply(&held, T0).unwrap();
    assert!(
        busy.has_changed().unwrap(),
        "StreamIsActive hears it at once"
    );
    assert!(r.is_active(&web(), 300_000, T0));
    // Held requests count as concurrency (no pod runs yet).
    // 1.5 held for one second: the burst window (6 s) reads 0.25, four times the stable one.
    let v = r
        .value(&web(), Metric::Concurrency, 60_000, T0 + 1000)
        .unwrap();
    assert!(close(v, 0.25), "{v}");
    assert_eq!(r.census().activators, 1);
}

#[test]
fn silent_pods_expire_after_three_intervals() {
    let r = registry(T0);
    r.apply(&report("web-1", "deployment/web", T0, 1.0, 1, 1), T0 + 1000)
        .unwrap();
    r.apply(&report("web-2", "deployment/web", T0, 1.0, 0, 1), T0 + 1000)
        .unwrap();
    assert_eq!(r.sweep(T0 + 3500), 0);
    r.apply(
        &report("web-2", "deployment/web", T0 + 3000, 1.0, 0, 1),
        T0 + 4000,
    )
    .unwrap();
    assert_eq!(r.sweep(T0 + 4500), 1, "web-1 missed 3 intervals");
    assert_eq!(r.pods(&web()), vec!["web-2"]);
    // A pod that expired may come back under another workload (a new pod with an old name).
    r.apply(
        &report("web-1", "deployment/api", T0 + 5000, 1.0, 0, 1),
        T0 + 6000,
    )
    .unwrap();
}
