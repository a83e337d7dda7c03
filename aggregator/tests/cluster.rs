//! On the test bed, with real KEDA: two aggregator replicas in the cluster; a Deployment whose pods
//! carry inflight-proxy beside the demo app (by hand, until the injector exists); a ScaledObject
//! with an `external-push` trigger to the aggregator. Load through the Service → KEDA and the HPA
//! scale the Deployment out to ceil(concurrency / target); idle → back to minReplicaCount.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use inflight_testbed::images::image_ref;
use inflight_testbed::TestBed;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;

fn apply(tb: &TestBed, manifest: &serde_json::Value) {
    let path =
        std::env::temp_dir().join(format!("inflight-aggregator-test-{}.json", tb.namespace()));
    std::fs::write(&path, manifest.to_string()).unwrap();
    let result = tb.kubectl(&["apply", "-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    result.unwrap();
}

async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < until,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> (i32, i32) {
    let d = deployments.get(name).await.unwrap();
    (
        d.spec.and_then(|s| s.replicas).unwrap_or(0),
        d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
    )
}

/// Two aggregator replicas with what an extension API server needs for the SMI API: a serving
/// certificate for its Service name, RBAC to read the requestheader CA, to review access and to
/// list objects for label selectors, and the APIService.
fn aggregator_manifests(tb: &TestBed) -> serde_json::Value {
    let ns = tb.namespace();
    let (cert, key) = inflight_testbed::pki::serving_cert(
        tb.layout(),
        &[format!("inflight-aggregator.{ns}.svc")],
    )
    .unwrap();
    let ca = std::fs::read(tb.layout().pki().join("ca.crt")).unwrap();
    let sa = serde_json::json!([{"kind": "ServiceAccount", "name": "inflight-aggregator", "namespace": ns}]);
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "inflight-aggregator"}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": "inflight-aggregator-tls"},
         "stringData": {"tls.crt": cert, "tls.key": key}},
        // system:auth-delegator: create on tokenreviews and subjectaccessreviews, which the SMI
        // API sends for each caller (and for a list, for the objects it names).
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": format!("inflight-aggregator-{ns}-auth-delegator")},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
         "subjects": sa},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": format!("inflight-aggregator-{ns}")},
         "rules": [{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list"]},
                   {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": format!("inflight-aggregator-{ns}")},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("inflight-aggregator-{ns}")},
         "subjects": sa},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "inflight-aggregator"},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "inflight-aggregator"}},
           "template": {"metadata": {"labels": {"app": "inflight-aggregator"}}, "spec": {
             "serviceAccountName": "inflight-aggregator",
             "containers": [{
               "name": "aggregator", "image": image_ref("inflight-aggregator"), "imagePullPolicy": "Never",
               // Who may call the scaler is the operator's and the activator's bed tests' to
               // show (mutual TLS with KEDA's certificate); here, plaintext.
               "args": ["--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key", "--scaler-auth", "none"],
               "ports": [{"containerPort": 9090, "name": "grpc"}, {"containerPort": 9091, "name": "scaler"},
                         {"containerPort": 6443, "name": "smi"},
                         {"containerPort": 15093, "name": "admin"}],
               "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": true}],
               "securityContext": inflight_testbed::manifests::restricted(),
               "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15093}, "periodSeconds": 1}}],
             "volumes": [{"name": "tls", "secret": {"secretName": "inflight-aggregator-tls"}}]}}}},
        // KEDA and the API server talk to either replica: both hold every report.
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "inflight-aggregator"},
         "spec": {"selector": {"app": "inflight-aggregator"},
                  "ports": [{"name": "scaler", "port": 9091}, {"name": "smi", "port": 443, "targetPort": 6443}]}},
        // Sidecars resolve every replica's address and report to each, a warming-up (not yet
        // ready) replica too.
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "inflight-aggregator-ingest"},
         "spec": {"clusterIP": "None", "publishNotReadyAddresses": true, "selector": {"app": "inflight-aggregator"}, "ports": [{"name": "grpc", "port": 9090}]}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1alpha1.metrics.smi-spec.io"},
         "spec": {"group": "metrics.smi-spec.io", "version": "v1alpha1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                  "service": {"namespace": ns, "name": "inflight-aggregator", "port": 443},
                  "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)}}
    ]})
}

/// Reading the requestheader CA: a RoleBinding in kube-system (applied without the test's
/// namespace, which kubectl would otherwise insist on).
fn requestheader_reader(ns: &str) -> serde_json::Value {
    let sa = serde_json::json!([{"kind": "ServiceAccount", "name": "inflight-aggregator", "namespace": ns}]);
    serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": format!("inflight-aggregator-{ns}"), "namespace": "kube-system"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"},
         "subjects": sa})
}

fn web_manifests(ns: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        inflight_testbed::manifests::proxied_demo(ns, "web", 1, "500ms"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 15080}]}},
        {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "web"},
         "spec": {"scaleTargetRef": {"name": "web"}, "minReplicaCount": 1, "maxReplicaCount": 6,
           "pollingInterval": 2, "cooldownPeriod": 10,
           "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
             "scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}]},
             "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Percent", "value": 200, "periodSeconds": 5}]}}}},
           "triggers": [{"type": "external-push", "metadata": {
             "scalerAddress": format!("inflight-aggregator.{ns}.svc.cluster.local:9091"),
             "workload": "deployment/web", "target": "2", "window": "20s", "scaleToZeroAfter": "30s"}}]}}
    ]})
}

/// The tests of this file take turns: the SMI APIService is the cluster's, one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The two aggregator replicas of [`aggregator_manifests`] in the test's namespace, ready.
async fn aggregators(tb: &TestBed) {
    let ns = tb.namespace();
    let reader = std::env::temp_dir().join(format!("inflight-aggregator-rb-{ns}.json"));
    std::fs::write(&reader, requestheader_reader(ns).to_string()).unwrap();
    inflight_testbed::kubectl_run(tb.layout(), &["apply", "-f", &reader.display().to_string()])
        .unwrap();
    let _ = std::fs::remove_file(&reader);
    apply(tb, &aggregator_manifests(tb));
    let deployments: Api<Deployment> = Api::namespaced(tb.client(), ns);
    eventually("2 aggregator replicas ready", 120, || async {
        replicas(&deployments, "inflight-aggregator").await.1 == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_keda_scales_on_concurrency_through_the_aggregator() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let tb = TestBed::shared().await.unwrap();
    // The aggregators and the proxied demo pass the restricted Pod Security Standard.
    tb.enforce_restricted().await.unwrap();
    aggregators(&tb).await;
    keda_scales_web(&tb).await;
}

/// The proxied demo `web` under a ScaledObject on the aggregators: six requests in flight scale it
/// to 3 through KEDA (the value KEDA's metrics adapter reads is not 0), the SMI API answers
/// through the aggregation layer with the requests the proxies reported, and idle, it goes back
/// to 1. Every request through the Service is answered.
async fn keda_scales_web(tb: &TestBed) {
    let ns = tb.namespace().to_owned();
    let deployments: Api<Deployment> = Api::namespaced(tb.client(), &ns);
    apply(tb, &web_manifests(&ns));
    eventually("web ready", 120, || async {
        replicas(&deployments, "web").await.1 >= 1
    })
    .await;

    // Six clients in a loop on a 500 ms endpoint: six requests in flight at all times. With a
    // target of 2 per replica, KEDA's HPA asks for ceil(6 / 2) = 3 replicas.
    let svc = tb
        .kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (stop, ok, failed, svc) = (stop.clone(), ok.clone(), failed.clone(), svc.clone());
        clients.push(tokio::spawn(async move {
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let uri: hyper::Uri = format!("http://{svc}/").parse().unwrap();
            while !stop.load(Ordering::Relaxed) {
                match client.get(uri.clone()).await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    eventually(
        "KEDA and the HPA to scale web to 3 ready replicas",
        180,
        || async { replicas(&deployments, "web").await == (3, 3) },
    )
    .await;
    // The value KEDA's metrics adapter reads from the aggregator, through the API server.
    let raw = tb
        .kubectl(&[
            "get",
            "--raw",
            &format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/s0-inflight-{ns}-deployment-web?labelSelector=scaledobject.keda.sh%2Fname%3Dweb"),
        ])
        .unwrap();
    let metrics: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let value = metrics["items"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!("external metric while loaded: {value}");
    assert!(!value.is_empty() && value != "0", "{raw}");
    // The SMI API of the in-cluster aggregators, through the aggregation layer.
    let mut smi = String::new();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Ok(body) = tb.kubectl(&[
            "get",
            "--raw",
            &format!("/apis/metrics.smi-spec.io/v1alpha1/namespaces/{ns}/deployments/web"),
        ]) {
            smi = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let tm: serde_json::Value =
        serde_json::from_str(&smi).unwrap_or_else(|e| panic!("SMI API: {e}: {smi:?}"));
    assert_eq!(tm["kind"], "TrafficMetrics", "{smi}");
    assert_eq!(tm["resource"]["name"], "web");
    let success = tm["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "success_count")
        .unwrap()["value"]
        .clone();
    println!("SMI: deployments/web success_count {success} in the last 30 s");
    assert!(
        success.as_str().unwrap().parse::<u64>().unwrap() > 0,
        "{smi}"
    );

    // It holds there: more replicas do not change the total in flight.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(replicas(&deployments, "web").await.0, 3);

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    println!(
        "load: {} ok, {} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while scaling out"
    );
    eventually("web back to minReplicaCount 1", 180, || async {
        replicas(&deployments, "web").await.0 == 1
    })
    .await;
}

/// Whether `client` (a demo app pod in `from`'s namespace) opens a TCP connection to `addr`
/// within 3 s: its `get` either has an answer, or fails after connecting (each port speaks
/// something else than HTTP/1.1: h2 or TLS), or fails to connect (refused, or no answer to the
/// connection within the bound). `None` when `kubectl exec` itself failed: asked again.
fn opens(from: &TestBed, addr: &str) -> Option<bool> {
    let url = format!("http://{addr}/");
    match from.kubectl(&[
        "exec",
        "client",
        "--",
        "/inflight-demo-app",
        "get",
        &url,
        "--timeout",
        "3s",
    ]) {
        Ok(_) => Some(true),
        Err(e) => {
            let e = e.to_string();
            if !e.contains(&format!("request 0 to {url}")) {
                return None;
            }
            Some(!(e.contains("ConnectError") || e.contains("no answer within")))
        }
    }
}

/// Waits until `from`'s client opens (`open`) or cannot open a connection to `addr`.
async fn client_opens(from: &TestBed, addr: &str, open: bool) {
    let what = format!("{}/client to open {addr}: {open}", from.namespace());
    eventually(&what, 60, || async { opens(from, addr) == Some(open) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_with_the_charts_network_policies_strangers_are_kept_out_and_keda_still_scales() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let tb = TestBed::shared_with_network_policies().await.unwrap();
    tb.enforce_restricted().await.unwrap();
    let stranger = TestBed::shared().await.unwrap();
    stranger.enforce_restricted().await.unwrap();
    let mut client = inflight_testbed::manifests::demo_app("0ms");
    client["name"] = serde_json::json!("client");
    apply(
        &stranger,
        &serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
            "spec": {"containers": [client], "terminationGracePeriodSeconds": 1}}),
    );
    aggregators(&tb).await;
    eventually("the stranger's client pod Ready", 120, || async {
        inflight_testbed::query::get(&stranger, &["pod", "client"])
            .is_some_and(|p| inflight_testbed::query::is_ready(&p))
    })
    .await;
    let ip = inflight_testbed::query::ready_pods(&tb, "inflight-aggregator")[0]
        .1
        .clone();
    let ports = [("ingest", 9090), ("scaler", 9091), ("SMI", 6443)];
    // Without a policy, the probe opens each port (so a refusal below is the policy's).
    for (_, port) in ports {
        client_opens(&stranger, &format!("{ip}:{port}"), true).await;
    }

    inflight_testbed::chart::apply_network_policies(&tb).unwrap();
    for (_, port) in ports {
        client_opens(&stranger, &format!("{ip}:{port}"), false).await;
    }

    // What must talk still does: the proxies report (their figures scale web and fill the SMI
    // answer), KEDA calls the scaler, the API server calls the SMI API.
    keda_scales_web(&tb).await;

    // And the stranger is still kept out of each port.
    for (name, port) in ports {
        let addr = format!("{ip}:{port}");
        let opened = (0..10).find_map(|_| opens(&stranger, &addr));
        assert_eq!(
            opened,
            Some(false),
            "a pod of another namespace and the {name} port {addr} (true: it opened it)"
        );
    }
}
