//! On the test bed: the API server takes the generated CRD, stores a valid HTTPAutoscaler with its
//! defaults filled in, lists it with the printer columns, and refuses invalid ones with the
//! message of the bound or CEL rule they break.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use inflight_testbed::{eventually, TestBed};

fn hta(name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "inflight.dev/v1alpha1", "kind": "HTTPAutoscaler",
        "metadata": {"name": name}, "spec": spec})
}

fn valid() -> serde_json::Value {
    serde_json::json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "web"},
        "service": {"name": "web", "port": 80, "targetPort": 8080},
        "maxReplicas": 10,
        "metric": {"type": "concurrency", "target": 10, "window": "60s"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_the_generated_crd_validates_httpautoscalers() {
    let tb = TestBed::shared().await.unwrap();
    let crd: serde_json::Value = serde_json::from_str(&inflight_api::crd_text()).unwrap();
    tb.apply(&crd).unwrap();
    eventually("the CRD to be Established", 60, || async {
        let status = tb
            .kubectl(&[
                "get",
                "crd",
                "httpautoscalers.inflight.dev",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ])
            .ok()?;
        (status == "True").then_some(())
    })
    .await;

    // Accepted, with the defaults the schema gives.
    eventually("a valid HTTPAutoscaler to be taken", 60, || async {
        tb.apply(&hta("web", valid())).ok()
    })
    .await;
    let stored: serde_json::Value =
        serde_json::from_str(&tb.kubectl(&["get", "hta", "web", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(stored["spec"]["minReplicas"], 0);
    assert_eq!(stored["spec"]["scaleToZeroAfter"], "300s");
    assert_eq!(stored["spec"]["activation"]["maxPendingRequests"], 1000);
    let table = tb.kubectl(&["get", "hta"]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TARGET",
            "MODE",
            "REPLICAS",
            "READY",
            "IN-FLIGHT",
            "AGE"
        ]
    );

    // Refused, each with the reason.
    let mut cases = Vec::new();
    let mut spec = valid();
    spec["minReplicas"] = 5.into();
    spec["maxReplicas"] = 2.into();
    cases.push((spec, "minReplicas must not be more than maxReplicas"));
    let mut spec = valid();
    spec["metric"]["window"] = "5s".into();
    cases.push((spec, "window must be at least 12s"));
    let mut spec = valid();
    spec["scaleTargetRef"]["kind"] = "DaemonSet".into();
    cases.push((spec, "Unsupported value: \"DaemonSet\""));
    let mut spec = valid();
    spec["maxReplicas"] = 0.into();
    cases.push((spec, "spec.maxReplicas"));
    let mut spec = valid();
    spec["scaleToZeroAfter"] = "five minutes".into();
    cases.push((spec, "spec.scaleToZeroAfter"));
    for (i, (spec, says)) in cases.into_iter().enumerate() {
        let refused = tb.apply(&hta(&format!("bad-{i}"), spec.clone()));
        let text = match &refused {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{spec} was taken"),
        };
        assert!(text.contains(says), "{spec}: {text} should say {says:?}");
    }
}
