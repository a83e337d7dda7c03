//! On the test bed: the real API server calls the real injector through a
//! MutatingWebhookConfiguration with its caBundle. Pods of a labelled namespace run the proxy as a
//! native sidecar, are Ready only when their app is, serve through port 15080 and report to an
//! aggregator under their Deployment; other namespaces are untouched; with the injector down, pods
//! are still created; a pod deleted under load, and a rolling update under load, lose no request
//! (the app's preStop hook drains its proxy before the app is stopped).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use clap::Parser as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use inflight_testbed::images::image_ref;
use inflight_testbed::TestBed;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use common::{free_port, Injector};
use inflight_testbed::eventually;

/// The real injector binary on the host end of the bed's network, with a serving certificate of
/// the cluster CA for that address; `auto` reads the cluster's version for native sidecars.
fn start_injector(tb: &TestBed, aggregator: Option<&str>) -> Injector {
    let host = tb.layout().host_ip();
    let dir = std::env::temp_dir().join(format!("inflight-injector-bed-{}", tb.namespace()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) =
        inflight_testbed::pki::serving_cert(tb.layout(), &[host.to_string()]).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    let image = image_ref("inflight-proxy");
    let mut args = vec![
        "--proxy-image",
        &image,
        "--proxy-image-pull-policy",
        "Never",
    ];
    if let Some(a) = aggregator {
        args.extend(["--aggregator", a]);
    }
    Injector::spawn(
        host.into(),
        &dir.join("tls.crt"),
        &dir.join("tls.key"),
        &args,
        Some(&tb.kubeconfig()),
    )
}

/// The webhook configuration as the chart writes it, with one more term in its namespace
/// selector so that each test's webhook sees only its own namespaces on the shared bed.
fn webhook_configuration(tb: &TestBed, url: &str) -> serde_json::Value {
    let ns = tb.namespace();
    let ca = std::fs::read(tb.layout().pki().join("ca.crt")).unwrap();
    serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": format!("inflight-injector-{ns}")},
        "webhooks": [{
            "name": "inject.inflight.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": url, "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"inflight.dev/inject": "enabled", "inflight.dev/webhook-test": ns}},
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded"
        }]
    })
}

/// Labels `ns` for injection by this test's webhook, and makes it enforce the `restricted` Pod
/// Security Standard: every injected pod of these tests shows the proxy the injector adds passes it.
fn label_namespace(tb: &TestBed, ns: &str) {
    let (key, value) = inflight_testbed::POD_SECURITY_RESTRICTED;
    tb.kubectl(&[
        "label",
        "namespace",
        ns,
        "inflight.dev/inject=enabled",
        &format!("inflight.dev/webhook-test={}", tb.namespace()),
        &format!("{key}={value}"),
        "--overwrite",
    ])
    .unwrap();
}

fn delete_webhook(tb: &TestBed) {
    let _ = tb.kubectl(&[
        "delete",
        "mutatingwebhookconfiguration",
        &format!("inflight-injector-{}", tb.namespace()),
        "--ignore-not-found",
    ]);
}

fn demo_deployment(name: &str, replicas: i32, ready_path: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 30, "containers": [{
                    "name": "app",
                    "image": image_ref("inflight-demo-app"),
                    "imagePullPolicy": "Never",
                    "args": ["serve", "--listen", "0.0.0.0:8080", "--latency", "5ms"],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "readinessProbe": {"httpGet": {"path": ready_path, "port": "http"}, "periodSeconds": 1},
                    "securityContext": inflight_testbed::manifests::restricted()
                }]}
            }
        }
    })
}

async fn pods(tb: &TestBed, ns: &str, app: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(tb.client(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The status of the pod's `inflight-proxy` (an init container status when native).
fn proxy_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == "inflight-proxy")
        .cloned()
}

async fn get(url: &str) -> Option<(u16, String)> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(url.parse().ok()?))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An aggregator in this process, on the host end of the bed's network, where the sidecars report:
/// its ingest and its (plaintext) scaler address.
async fn aggregator(tb: &TestBed) -> (SocketAddr, SocketAddr) {
    let grpc = SocketAddr::from((tb.layout().host_ip(), free_port()));
    let scaler = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = inflight_aggregator::Config::parse_from([
        "inflight-aggregator",
        "--grpc-listen",
        &grpc.to_string(),
        "--scaler-listen",
        &scaler.to_string(),
        "--smi-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--admin-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--warm-up",
        "1s",
        // Whether the injected proxy's token is accepted is the activator's bed test's to show
        // (an aggregator in the cluster); this one runs on the host, without the bed's API. Who
        // may call the scaler is the operator's and the activator's bed tests' to show.
        "--ingest-auth",
        "none",
        "--scaler-auth",
        "none",
    ]);
    tokio::spawn(inflight_aggregator::run(config, std::future::pending()));
    eventually("the aggregator to listen", 60, || async {
        tokio::net::TcpStream::connect(grpc).await.ok().map(|_| ())
    })
    .await;
    (grpc, scaler)
}

async fn concurrency(scaler: SocketAddr, ns: &str, workload: &str) -> Result<f64, tonic::Status> {
    let mut scaler = ExternalScalerClient::connect(format!("http://{scaler}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let reference = ScaledObjectRef {
        name: "web".into(),
        namespace: ns.into(),
        scaler_metadata: HashMap::from([
            ("workload".to_owned(), workload.to_owned()),
            ("target".to_owned(), "1".to_owned()),
            ("window".to_owned(), "6s".to_owned()),
        ]),
    };
    let answer = scaler
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(reference),
            metric_name: "concurrency".into(),
        })
        .await?
        .into_inner();
    Ok(answer
        .metric_values
        .first()
        .map_or(0.0, |m| m.metric_value_float))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_a_labelled_namespaces_pods_run_the_proxy_as_a_native_sidecar_and_serve_through_it()
{
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    let (grpc, scaler) = aggregator(&tb).await;
    let injector = start_injector(&tb, Some(&format!("http://{grpc}")));
    tb.apply(&webhook_configuration(
        &tb,
        &format!("https://{}/mutate", injector.addr),
    ))
    .unwrap();
    label_namespace(&tb, &ns);
    tb.apply(&demo_deployment("web", 2, "/healthz")).unwrap();
    // An app that never passes its readiness check: its proxy must not be Ready either.
    tb.apply(&demo_deployment("sick", 1, "/status/503"))
        .unwrap();

    let web = eventually("two Ready pods of web", 240, || async {
        let pods = pods(&tb, &ns, "web").await;
        (pods.len() == 2 && pods.iter().all(is_ready)).then_some(pods)
    })
    .await;
    for pod in &web {
        let spec = pod.spec.as_ref().unwrap();
        let proxy = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(proxy.name, "inflight-proxy");
        assert_eq!(
            proxy.restart_policy.as_deref(),
            Some("Always"),
            "a native sidecar"
        );
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["inflight.dev/workload"], "deployment.web");
        assert!(pod
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key("inflight.dev/injected"));
        let env: HashMap<_, _> = proxy
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone()))
            .collect();
        assert_eq!(env["INFLIGHT_WORKLOAD"].as_deref(), Some("deployment/web"));
        assert_eq!(env["INFLIGHT_APP_READY_PATH"].as_deref(), Some("/healthz"));
        let status = proxy_status(pod).unwrap();
        assert!(status.ready, "{status:?}");
    }

    // The sick pod: the app runs, the proxy started (its startup probe checks the proxy alone)
    // but is not Ready, because its /readyz repeats the app's failing check.
    let sick = eventually("the sick pod's proxy to be started", 240, || async {
        let pods = pods(&tb, &ns, "sick").await;
        let pod = pods.into_iter().next()?;
        let proxy = proxy_status(&pod)?;
        proxy.started.unwrap_or(false).then_some(pod)
    })
    .await;
    let sick_ip = sick.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let (status, body) = eventually("the sick proxy's /readyz", 60, || async {
        get(&format!("http://{sick_ip}:15090/readyz")).await
    })
    .await;
    assert_eq!(status, 503, "{body}");
    let sick = pods(&tb, &ns, "sick").await.remove(0);
    assert!(!is_ready(&sick));
    assert!(!proxy_status(&sick).unwrap().ready);

    // Through each pod's port 15080 to its app, counted by its proxy.
    for pod in &web {
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let (status, _) = get(&format!("http://{ip}:15080/")).await.unwrap();
        assert_eq!(status, 200);
        let (_, stats) = get(&format!("http://{ip}:15090/stats")).await.unwrap();
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert!(stats["requests_total"].as_u64().unwrap() >= 1, "{stats}");
    }

    // Reports reach the aggregator under deployment/web: requests held open in both pods show
    // as concurrency there, and nothing under another name.
    let ips: Vec<String> = web
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();
    let load: Vec<_> = (0..4)
        .map(|i| {
            let url = format!("http://{}:15080/sleep/20000", ips[i % 2]);
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let seen = eventually(
        "concurrency of deployment/web at the aggregator",
        60,
        || async {
            concurrency(scaler, &ns, "deployment/web")
                .await
                .ok()
                .filter(|c| *c >= 1.0)
        },
    )
    .await;
    assert!(seen >= 1.0);
    let other = concurrency(scaler, &ns, "deployment/sick")
        .await
        .unwrap_or(0.0);
    assert_eq!(other, 0.0, "nothing is in flight in sick");
    for l in load {
        l.abort();
    }

    // A namespace without the label: its pods are not touched.
    let plain = format!("{ns}-plain");
    tb.kubectl(&["create", "namespace", &plain]).unwrap();
    tb.kubectl(&["label", "namespace", &plain, "inflight.dev/test=true"])
        .unwrap();
    tb.apply_in(&plain, &demo_deployment("web", 1, "/healthz"))
        .unwrap();
    let untouched = eventually("a pod in the unlabelled namespace", 120, || async {
        pods(&tb, &plain, "web").await.into_iter().next()
    })
    .await;
    let spec = untouched.spec.as_ref().unwrap();
    assert!(spec.init_containers.is_none(), "{spec:?}");
    assert_eq!(spec.containers.len(), 1);
    assert!(untouched
        .metadata
        .annotations
        .as_ref()
        .is_none_or(|a| !a.contains_key("inflight.dev/injected")));

    delete_webhook(&tb);
    let _ = tb.kubectl(&["delete", "namespace", &plain, "--wait=false"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_with_the_injector_stopped_pods_are_still_created() {
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    let mut injector = start_injector(&tb, None);
    let url = format!("https://{}/mutate", injector.addr);
    tb.apply(&webhook_configuration(&tb, &url)).unwrap();
    label_namespace(&tb, &ns);
    injector.stop();
    // failurePolicy: Ignore: the API server cannot reach the webhook and admits the pods as they are.
    tb.apply(&demo_deployment("web", 2, "/healthz")).unwrap();
    let created = eventually("two Ready pods of web", 240, || async {
        let pods = pods(&tb, &ns, "web").await;
        (pods.len() == 2 && pods.iter().all(is_ready)).then_some(pods)
    })
    .await;
    for pod in created {
        assert!(pod.spec.as_ref().unwrap().init_containers.is_none());
    }
    delete_webhook(&tb);
}

/// Keep-alive clients in a loop through a Service to the pods' port 15080, as callers in the
/// cluster would; every failure (an error or a status other than 200) is kept.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|_| {
                let (stop, ok, failed, url) =
                    (stop.clone(), ok.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let client: Client<HttpConnector, Empty<Bytes>> =
                        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
                    let uri: hyper::Uri = url.parse().unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(uri.clone()).await {
                            Ok(r) => {
                                let status = r.status();
                                let body = r.into_body().collect().await;
                                if status == 200 && body.is_ok() {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    failed.lock().unwrap().push(format!("{status} {body:?}"));
                                }
                            }
                            Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            clients,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests have succeeded from now.
    async fn served(&self, more: u64, what: &str) {
        let from = self.ok();
        eventually(what, 120, || async {
            (self.ok() >= from + more).then_some(())
        })
        .await;
    }

    /// Stops the clients; panics listing the failures, if any.
    async fn stop_expecting_no_failure(self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            let _ = c.await;
        }
        let failed = self.failed.lock().unwrap().clone();
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {failed:?}",
            failed.len(),
            ok + failed.len() as u64
        );
    }
}

/// An injected Deployment `web` of `replicas` behind a Service `web` whose port 80 is the pods'
/// port 15080 (through their sidecars), with load running on it.
async fn web_under_load(tb: &TestBed, replicas: i32) -> (Injector, Load) {
    let ns = tb.namespace().to_owned();
    let injector = start_injector(tb, None);
    tb.apply(&webhook_configuration(
        tb,
        &format!("https://{}/mutate", injector.addr),
    ))
    .unwrap();
    label_namespace(tb, &ns);
    let mut deployment = demo_deployment("web", replicas, "/healthz");
    deployment["spec"]["strategy"] = serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    tb.apply(&deployment).unwrap();
    tb.apply(&serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 15080}]}})).unwrap();
    eventually("all pods of web Ready", 240, || async {
        let pods = pods(tb, &ns, "web").await;
        (pods.len() == replicas as usize && pods.iter().all(is_ready)).then_some(())
    })
    .await;
    let ip = tb
        .kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap();
    let load = Load::start(format!("http://{ip}/"), 6);
    load.served(200, "load flowing through the Service").await;
    (injector, load)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_deleting_a_pod_under_load_through_its_sidecar_cuts_no_request() {
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    let (_injector, load) = web_under_load(&tb, 3).await;
    let victim = pods(&tb, &ns, "web").await.remove(0);
    let name = victim.metadata.name.clone().unwrap();
    tb.kubectl(&["delete", "pod", &name, "--wait=false"])
        .unwrap();
    // Its proxy drains (the app's preStop hook), then the app stops, then the proxy: the pod is
    // gone once all of it is done.
    let api = Api::<Pod>::namespaced(tb.client(), &ns);
    eventually("the deleted pod to be gone", 120, || async {
        api.get_opt(&name).await.unwrap().is_none().then_some(())
    })
    .await;
    load.served(200, "load after the pod is gone").await;
    load.stop_expecting_no_failure().await;
    delete_webhook(&tb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_a_rolling_update_under_load_through_the_sidecars_loses_no_request() {
    let tb = TestBed::shared().await.unwrap();
    let (_injector, load) = web_under_load(&tb, 2).await;
    tb.kubectl(&["set", "env", "deployment/web", "ROLLOUT=2"])
        .unwrap();
    tb.kubectl(&["rollout", "status", "deployment/web", "--timeout=300s"])
        .unwrap();
    // Every pod is a new one, injected too.
    let ns = tb.namespace().to_owned();
    eventually("only new pods left", 120, || async {
        let pods = pods(&tb, &ns, "web").await;
        let new = |p: &Pod| {
            p.spec.as_ref().is_some_and(|s| {
                s.containers[0]
                    .env
                    .iter()
                    .flatten()
                    .any(|e| e.name == "ROLLOUT")
                    && s.init_containers
                        .iter()
                        .flatten()
                        .any(|c| c.name == "inflight-proxy")
            })
        };
        (pods.len() == 2 && pods.iter().all(new)).then_some(())
    })
    .await;
    load.served(200, "load after the rollout").await;
    load.stop_expecting_no_failure().await;
    delete_webhook(&tb);
}
