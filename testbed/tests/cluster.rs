//! The cluster does what a Kubernetes user expects: Deployments become ready pods, Services and DNS
//! reach them from other pods, deleted pods get SIGTERM and leave the EndpointSlice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{apply, demo_container, demo_deployment, eventually, service};
use futures_util::{StreamExt, TryStreamExt};
use inflight_testbed::TestBed;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, WatchEvent, WatchParams};

async fn ready_pod_ips(pods: &Api<Pod>, app: &str) -> BTreeSet<String> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.status?.pod_ip)
        .collect()
}

/// Addresses of the Service's EndpointSlices that are ready.
async fn slice_ips(slices: &Api<EndpointSlice>, svc: &str) -> BTreeSet<String> {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap();
    list.items
        .into_iter()
        .flat_map(|s| s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .flat_map(|e| e.addresses)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_deployment_service_dns_from_another_pod() {
    let tb = TestBed::shared().await.unwrap();
    let nodes =
        inflight_testbed::kubectl_run(tb.layout(), &["get", "nodes", "--no-headers"]).unwrap();
    assert!(
        nodes
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("Ready")),
        "no Ready node:\n{nodes}"
    );

    apply(&tb, &demo_deployment("demo", 2));
    apply(&tb, &service("demo", "demo"));
    let pods: Api<Pod> = Api::namespaced(tb.client(), tb.namespace());
    let slices: Api<EndpointSlice> = Api::namespaced(tb.client(), tb.namespace());
    let ips = eventually("2 ready demo pods", 120, || async {
        let ips = ready_pod_ips(&pods, "demo").await;
        (ips.len() == 2).then_some(ips)
    })
    .await;
    eventually("the EndpointSlice to list both pod IPs", 60, || async {
        (slice_ips(&slices, "demo").await == ips).then_some(())
    })
    .await;

    // kube-proxy programs the ClusterIP shortly after the EndpointSlice changes (until then it
    // rejects): wait for that from the host, which routes the Service range into the bed.
    let cluster_ip = tb
        .kubectl(&["get", "service", "demo", "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap();
    eventually("kube-proxy to route the ClusterIP", 60, || async {
        tokio::net::TcpStream::connect((cluster_ip.as_str(), 80))
            .await
            .ok()
            .map(drop)
    })
    .await;

    // Another pod calls the Service by its DNS name: CoreDNS, kube-proxy's ClusterIP rules and the
    // pod network all have to work for this.
    let url = format!("http://demo.{}.svc.cluster.local/", tb.namespace());
    let mut client = demo_container();
    client["name"] = "client".into();
    client["args"] = serde_json::json!(["get", url, "--count", "5"]);
    client.as_object_mut().unwrap().remove("readinessProbe");
    apply(
        &tb,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {"restartPolicy": "Never", "containers": [client]}
        }),
    );
    let phase = eventually("the client pod to finish", 120, || async {
        let p = pods.get("client").await.ok()?;
        let phase = p.status?.phase?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let logs = tb.kubectl(&["logs", "client"]).unwrap();
    assert_eq!(phase, "Succeeded", "client pod output:\n{logs}");
    let names: BTreeSet<String> = pods
        .list(&ListParams::default().labels("app=demo"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let answers: Vec<&str> = logs.lines().collect();
    assert_eq!(answers.len(), 5, "{logs}");
    for line in answers {
        let pod = line
            .strip_prefix("200 hello from the inflight demo app on ")
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            names.contains(pod),
            "answer from {pod}, not one of {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_deleted_pod_gets_sigterm_and_leaves_the_endpointslice() {
    let tb = TestBed::shared().await.unwrap();
    const GRACE: i64 = 60;
    for name in ["term-a", "term-b"] {
        let mut container = demo_container();
        container["name"] = "app".into();
        apply(
            &tb,
            &serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "term"}},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": GRACE}
            }),
        );
    }
    apply(&tb, &service("term", "term"));
    let pods: Api<Pod> = Api::namespaced(tb.client(), tb.namespace());
    let slices: Api<EndpointSlice> = Api::namespaced(tb.client(), tb.namespace());
    let ips = eventually("2 ready pods", 120, || async {
        let ips = ready_pod_ips(&pods, "term").await;
        (ips.len() == 2).then_some(ips)
    })
    .await;
    eventually("both in the EndpointSlice", 60, || async {
        (slice_ips(&slices, "term").await == ips).then_some(())
    })
    .await;

    let victim = pods.get("term-a").await.unwrap();
    let victim_ip = victim.status.and_then(|s| s.pod_ip).unwrap();
    let version = victim.metadata.resource_version.unwrap();
    let mut events = pods
        .watch(
            &WatchParams::default().fields("metadata.name=term-a"),
            &version,
        )
        .await
        .unwrap()
        .boxed();
    let started = Instant::now();
    pods.delete("term-a", &DeleteParams::default())
        .await
        .unwrap();

    // The kubelet publishes the container's end before the pod object goes: exit code 0 means the
    // app ended on its own after SIGTERM (SIGKILL at the end of the grace period would be 137).
    let mut exit_codes = Vec::new();
    let deadline = Duration::from_secs(u64::try_from(GRACE).unwrap() + 30);
    loop {
        let event = tokio::time::timeout(
            deadline.saturating_sub(started.elapsed()),
            events.try_next(),
        )
        .await
        .expect("pod not gone within its grace period plus 30 s")
        .unwrap();
        match event {
            Some(WatchEvent::Modified(p)) => {
                for cs in p
                    .status
                    .and_then(|s| s.container_statuses)
                    .unwrap_or_default()
                {
                    if let Some(t) = cs.state.and_then(|s| s.terminated) {
                        exit_codes.push(t.exit_code);
                    }
                }
            }
            Some(WatchEvent::Deleted(_)) => break,
            Some(WatchEvent::Error(e)) => panic!("watch error: {e:?}"),
            Some(_) => {}
            None => panic!("watch ended before the pod was deleted"),
        }
    }
    let gone_after = started.elapsed();
    assert!(
        gone_after < Duration::from_secs(u64::try_from(GRACE).unwrap()),
        "pod took {gone_after:?}, its whole grace period: SIGTERM did not end it"
    );
    assert!(
        exit_codes.contains(&0),
        "container exit codes seen: {exit_codes:?} (expected 0 after SIGTERM)"
    );

    let left = eventually("the EndpointSlice to shrink to one address", 60, || async {
        let now = slice_ips(&slices, "term").await;
        (now.len() == 1).then_some(now)
    })
    .await;
    assert!(!left.contains(&victim_ip), "{victim_ip} still in {left:?}");
}
