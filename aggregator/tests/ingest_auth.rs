//! Report streams are authenticated against the test bed's real API server: an aggregator on this
//! host reviews each stream's token (TokenReview, as the bed's admin), and tokens are minted by
//! the API server for real pods of the test's namespace (TokenRequest, bound to the pod). Every
//! refusal is shown to leave the figures as they were; then the real proxy, with a token file the
//! test rotates, reports on one stream after another and is never refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{admin_get, proxy_reporting, Aggregator};
use inflight_proto::v1::ingest_client::IngestClient;
use inflight_proto::v1::report_request::Report;
use inflight_proto::v1::{
    HeldReport, HeldWorkload, Interval, PodIdentity, PodReport, ReportRequest, WorkloadRef,
};
use inflight_testbed::images::image_ref;
use inflight_testbed::{eventually, TestBed};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;
use tonic::Code;

const AUDIENCE: &str = "inflight.dev/aggregator";

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A pod of the test's namespace that exists (it need not run): a token can be bound to it.
fn pod(name: &str, service_account: &str, workload: Option<&str>) -> serde_json::Value {
    let mut labels = json!({"app": name});
    if let Some(w) = workload {
        labels["inflight.dev/workload"] = json!(w);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"serviceAccountName": service_account, "automountServiceAccountToken": false,
          "containers": [{"name": "app", "image": image_ref("inflight-demo-app"),
                          "imagePullPolicy": "Never", "args": ["serve", "--listen", "0.0.0.0:8080"]}]}})
}

/// A token the API server makes for `service_account`, bound to pod `pod`, for `audience`.
async fn token(tb: &TestBed, service_account: &str, pod: &str, audience: &str) -> String {
    let uid = Api::<Pod>::namespaced(tb.client(), tb.namespace())
        .get(pod)
        .await
        .unwrap()
        .metadata
        .uid;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_owned()],
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.to_owned()),
                uid,
            }),
        },
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(tb.client(), tb.namespace())
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

fn identity(ns: &str, pod: &str, workload: Option<(&str, &str)>) -> PodIdentity {
    PodIdentity {
        namespace: ns.into(),
        pod: pod.into(),
        workload: workload.map(|(kind, name)| WorkloadRef {
            namespace: ns.into(),
            kind: kind.into(),
            name: name.into(),
        }),
        pod_ip: String::new(),
    }
}

fn interval() -> Option<Interval> {
    Some(Interval {
        start_unix_ms: now_ms() - 1000,
        length_ms: 1000,
    })
}

fn pod_report(ns: &str, pod: &str, workload: (&str, &str)) -> ReportRequest {
    ReportRequest {
        report: Some(Report::Pod(PodReport {
            pod: Some(identity(ns, pod, Some(workload))),
            interval: interval(),
            avg_concurrency: 3.0,
            in_flight: 3,
            requests: 30,
            ..PodReport::default()
        })),
    }
}

fn held_report(ns: &str, activator: &str) -> ReportRequest {
    ReportRequest {
        report: Some(Report::Held(HeldReport {
            activator: Some(identity(ns, activator, None)),
            interval: interval(),
            workloads: vec![HeldWorkload {
                workload: Some(WorkloadRef {
                    namespace: ns.into(),
                    kind: "deployment".into(),
                    name: "web".into(),
                }),
                held: 5,
                avg_held: 5.0,
                arrived: 5,
            }],
        })),
    }
}

/// One stream with `authorization` set to `header` (if any), carrying `report`: how it ended.
async fn stream(
    aggregator: &Aggregator,
    header: Option<String>,
    report: ReportRequest,
) -> Result<u64, tonic::Status> {
    let mut client = IngestClient::connect(aggregator.url()).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::iter(vec![report]));
    if let Some(header) = header {
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
    }
    client
        .report(request)
        .await
        .map(|r| r.into_inner().accepted)
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

/// What the figures are, as `/metrics` tells them.
async fn figures(aggregator: &Aggregator) -> [f64; 4] {
    let mut out = [0.0; 4];
    for (i, series) in [
        "inflight_aggregator_reports_total",
        "inflight_aggregator_workloads",
        "inflight_aggregator_pods",
        "inflight_aggregator_activators",
    ]
    .iter()
    .enumerate()
    {
        out[i] = aggregator.metric(series).await.unwrap_or(0.0);
    }
    out
}

async fn refused(aggregator: &Aggregator, reason: &str) -> f64 {
    aggregator
        .metric(&format!(
            "inflight_aggregator_ingest_refusals_total{{reason=\"{reason}\"}}"
        ))
        .await
        .unwrap_or(0.0)
}

async fn all_refusals(aggregator: &Aggregator) -> f64 {
    aggregator
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("inflight_aggregator_ingest_refusals_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_report_streams_are_held_to_the_pod_and_workload_their_token_is_bound_to() {
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    tb.apply(&json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "inflight-activator"}},
        pod("web-1", "web", Some("deployment.web")),
        pod("web-2", "web", Some("deployment.web")),
        pod("act-1", "inflight-activator", None),
    ]}))
    .unwrap();
    let activators = format!("{ns}/inflight-activator");
    let aggregator = Aggregator::start_reviewing(
        &tb.kubeconfig(),
        &[
            "--activator-service-accounts",
            &activators,
            "--warm-up",
            "0s",
        ],
    );
    let web_1 = token(&tb, "web", "web-1", AUDIENCE).await;
    let before = figures(&aggregator).await;
    assert_eq!(before, [0.0; 4], "a fresh aggregator");

    // Each refusal: its code, its reason counted, and no figure changed.
    let cases = [
        (
            "no token",
            None,
            pod_report(&ns, "web-1", ("deployment", "web")),
            Code::Unauthenticated,
            "no_token",
        ),
        (
            "not a bearer token",
            Some(format!("Basic {web_1}")),
            pod_report(&ns, "web-1", ("deployment", "web")),
            Code::Unauthenticated,
            "malformed",
        ),
        (
            "a token the API server did not make",
            bearer("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln"),
            pod_report(&ns, "web-1", ("deployment", "web")),
            Code::Unauthenticated,
            "invalid_token",
        ),
        (
            "web-1's token for another audience",
            bearer(&token(&tb, "web", "web-1", "https://kubernetes.default.svc").await),
            pod_report(&ns, "web-1", ("deployment", "web")),
            Code::Unauthenticated,
            "invalid_token",
        ),
        (
            "web-1's token, reporting as web-2",
            bearer(&web_1),
            pod_report(&ns, "web-2", ("deployment", "web")),
            Code::PermissionDenied,
            "other_pod",
        ),
        (
            "web-1's token, reporting as a pod of another namespace",
            bearer(&web_1),
            pod_report("kube-system", "web-1", ("deployment", "web")),
            Code::PermissionDenied,
            "other_pod",
        ),
        (
            "web-1's token, reporting for another workload",
            bearer(&web_1),
            pod_report(&ns, "web-1", ("deployment", "checkout")),
            Code::PermissionDenied,
            "other_workload",
        ),
        (
            "web-1's token (not an activator's), reporting held requests",
            bearer(&web_1),
            held_report(&ns, "web-1"),
            Code::PermissionDenied,
            "not_activator",
        ),
    ];
    for (what, header, report, code, reason) in cases {
        let counted = refused(&aggregator, reason).await;
        let status = stream(&aggregator, header, report).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(reason), "{what}: {status:?}");
        assert_eq!(refused(&aggregator, reason).await, counted + 1.0, "{what}");
        assert_eq!(
            figures(&aggregator).await,
            before,
            "{what} changed a figure"
        );
        println!("refused, {what}: {}", status.message());
    }

    // The activator's ServiceAccount may report what it holds, as its own pod.
    let act_1 = token(&tb, "inflight-activator", "act-1", AUDIENCE).await;
    let taken = stream(&aggregator, bearer(&act_1), held_report(&ns, "act-1")).await;
    assert_eq!(taken.map_err(|s| s.to_string()), Ok(1));
    let status = stream(&aggregator, bearer(&act_1), held_report(&ns, "act-2"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The real proxy, as web-1 with its token file: accepted, stream after stream as the file
    // is rotated.
    let dir = std::env::temp_dir().join(format!("inflight-token-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    let write = |token: &str| {
        // As kubelet does: a new file put in place by a rename.
        let next = dir.join("token.next");
        std::fs::write(&next, token).unwrap();
        std::fs::rename(&next, &file).unwrap();
    };
    write(&web_1);
    let refusals_before_the_proxy = all_refusals(&aggregator).await;
    let file_arg = file.display().to_string();
    let (_proxy, proxy_admin) = proxy_reporting(
        &aggregator.url(),
        "deployment/web",
        &ns,
        "web-1",
        &["--token-file", &file_arg, "--report-interval", "200ms"],
    );
    let accepted = |n: f64| {
        let aggregator = &aggregator;
        async move {
            let reviewed = aggregator
                .metric("inflight_aggregator_token_reviews_total{result=\"accepted\"}")
                .await
                .unwrap_or(0.0);
            (reviewed >= n && aggregator.metric("inflight_aggregator_pods").await == Some(1.0))
                .then_some(())
        }
    };
    // web-1's token (reviewed once already when refused above, and cached) and act-1's.
    eventually("the proxy's reports taken", 30, || accepted(2.0)).await;
    let reports = aggregator
        .metric("inflight_aggregator_reports_total")
        .await
        .unwrap();

    write(&token(&tb, "web", "web-1", AUDIENCE).await);
    eventually("the rotated token reviewed and taken", 30, || accepted(3.0)).await;
    eventually("reports after the rotation", 30, || async {
        let now = aggregator
            .metric("inflight_aggregator_reports_total")
            .await?;
        (now >= reports + 5.0).then_some(())
    })
    .await;
    let proxy_metrics = admin_get(proxy_admin, "/metrics").await;
    let failures = proxy_metrics
        .lines()
        .find_map(|l| l.strip_prefix("inflight_report_stream_failures_total "))
        .map(|v| v.trim().parse::<f64>().unwrap());
    assert_eq!(failures, Some(0.0), "the proxy's streams: {proxy_metrics}");
    assert_eq!(
        all_refusals(&aggregator).await,
        refusals_before_the_proxy,
        "the proxy was refused"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
