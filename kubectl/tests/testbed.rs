//! `kubectl-inflight` on the test bed, against an HTTPAutoscaler the operator (in the cluster,
//! under the chart's RBAC) has turned into a ScaledObject that real KEDA scales on the
//! aggregator's figures: `top --once` lists it with its mode and replicas, `status` shows the
//! operator's conditions, KEDA's ScaledObject and the value KEDA's metrics server gives the HPA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use inflight_testbed::manifests::{self, demo_app, deployment, proxied_demo, ACTIVATOR};
use inflight_testbed::query::{get, replicas};
use inflight_testbed::{chart, eventually, TestBed};
use serde_json::{json, Value};

/// `kubectl-inflight ARGS` with the bed's kubeconfig: (exit success, stdout, stderr).
async fn plugin(tb: &TestBed, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-inflight"))
        .args(args)
        .env("KUBECONFIG", tb.kubeconfig())
        .env_remove("RUST_BACKTRACE")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Takes the finalizers off the test's HTTPAutoscalers when the test ends, however it ends: the
/// operator goes with the namespace and could not remove them, and the namespace would never go.
struct Finalizers<'a>(&'a TestBed);

impl Drop for Finalizers<'_> {
    fn drop(&mut self) {
        let names = self.0.kubectl(&["get", "hta", "-o", "name"]);
        for name in names.unwrap_or_default().split_whitespace() {
            let _ = self.0.kubectl(&[
                "patch",
                name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
    }
}

/// The activator's stand-in under the name the operator's pod is given: a pod answering every
/// request (these tests send none).
fn activator_stand_in() -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        deployment(ACTIVATOR, 1, json!({"containers": [demo_app("0ms")]})),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": ACTIVATOR},
         "spec": {"selector": {"app": ACTIVATOR}, "ports": [{"name": "http", "port": 8080}]}}
    ]})
}

/// `web`: the demo app behind inflight-proxy, and the user's Service in front of it.
fn web(ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        proxied_demo(ns, "web", 1, "0ms"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    ]})
}

fn condition_true(hta: &Value, type_: &str) -> bool {
    hta["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == type_ && c["status"] == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_top_and_status_show_the_autoscaler_and_the_value_keda_reads() {
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    tb.enforce_restricted().await.unwrap();
    chart::install_crd(tb.layout()).unwrap();
    chart::apply_rbac(&tb, "aggregator-rbac.yaml").unwrap();
    chart::apply_rbac(&tb, "operator-rbac.yaml").unwrap();
    // The aggregator starts once the operator's TLS bootstrap has made its certificates.
    tb.apply(&manifests::aggregator(&[])).unwrap();
    tb.apply(&activator_stand_in()).unwrap();
    tb.apply(&manifests::operator(&ns)).unwrap();
    tb.apply(&web(&ns)).unwrap();
    let _finalizers = Finalizers(&tb);
    for app in ["inflight-aggregator", "inflight-operator", ACTIVATOR, "web"] {
        eventually(&format!("{app} ready"), 240, || async {
            (replicas(&tb, app).1 == 1).then_some(())
        })
        .await;
    }
    tb.apply(
        &json!({"apiVersion": "inflight.dev/v1alpha1", "kind": "HTTPAutoscaler",
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"},
                 "service": {"name": "web", "port": 80, "targetPort": 8080},
                 "minReplicas": 1, "maxReplicas": 4, "metric": {"target": 2, "window": "20s"},
                 "scaleToZeroAfter": "20s", "pollingInterval": "2s"}}),
    )
    .unwrap();
    eventually(
        "the autoscaler Ready in serve mode, KEDA's ScaledObject Ready",
        180,
        || async {
            let hta = get(&tb, &["hta/web"])?;
            let so = get(&tb, &["scaledobject/web"])?;
            let ready = ["Ready", "ScaledObjectReady", "TargetFound"]
                .iter()
                .all(|t| condition_true(&hta, t));
            (ready
                && hta["status"]["mode"] == "Serve"
                && hta["status"]["readyReplicas"] == 1
                && condition_true(&so, "Ready"))
            .then_some(())
        },
    )
    .await;

    // top: the autoscaler's row, with its mode and replicas.
    let (ok, out, err) = plugin(&tb, &["top", "--once", "-n", &ns]).await;
    println!("{out}{err}");
    assert!(ok, "top failed: {err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, inflight_kubectl::top::render::HEADERS);
    let row: Vec<&str> = lines
        .find(|l| l.split_whitespace().nth(1) == Some("web"))
        .expect("a row for web")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..5], [ns.as_str(), "web", "Serve", "1", "1"]);
    // In flight against the target of its one replica.
    assert!(row[5].ends_with("/2"), "{row:?}");

    // status: the operator's conditions, KEDA's ScaledObject, and the value KEDA reads (the
    // aggregator answers once it has observed the workload's window) once the HPA has acted on it.
    let hpa = "  HPA:              keda-hpa-web: current 1, desired 1 (min 1, max 4, target 2 per replica)";
    let status = eventually(
        "status with the value KEDA reads and the HPA's replicas",
        180,
        || async {
            let (ok, out, err) = plugin(&tb, &["status", "web", "-n", &ns]).await;
            assert!(ok, "status failed: {err}");
            (out.contains("  KEDA reads:       0 (") && out.contains(hpa)).then_some(out)
        },
    )
    .await;
    println!("{status}");
    for expected in [
        format!("HTTPAutoscaler {ns}/web"),
        "  Replicas:         min 1, max 4".to_owned(),
        "  Mode:             Serve".to_owned(),
        "  Replicas:         1 (1 ready)".to_owned(),
        "ScaledObject web (KEDA):".to_owned(),
        format!("(s0-inflight-{ns}-deployment-web, external metrics API)"),
        // Idle: the formula keeps the minimum, as the HPA does.
        "  Formula:          ceil(0 / 2) within [1, 4] = 1 replicas".to_owned(),
    ] {
        assert!(status.contains(&expected), "missing {expected:?}");
    }
    let conditions: Vec<Vec<&str>> = status
        .lines()
        .skip_while(|l| *l != "Conditions:")
        .skip(2)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    for type_ in ["Ready", "ScaledObjectReady", "TargetFound"] {
        assert!(
            conditions.contains(&vec![type_, "True"]),
            "{type_} in {conditions:?}"
        );
    }
    let keda: Vec<&str> = status
        .lines()
        .skip_while(|l| !l.starts_with("ScaledObject web"))
        .nth(2)
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect();
    assert_eq!(keda, ["Ready", "True"]);
    assert!(status.contains("Events (the last 10, newest last):"));
    assert!(status.contains("AdoptedService"), "the operator's Event");

    // Deleted while the operator runs, so that it gives the Service back and the namespace goes.
    tb.kubectl(&["delete", "hta", "web", "--wait=true", "--timeout=60s"])
        .unwrap();
}
