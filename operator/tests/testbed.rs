//! The operator on the test bed, with real KEDA: an HTTPAutoscaler becomes a ScaledObject KEDA
//! accepts and a Service switched between a stand-in activator and the pods' proxies; load scales
//! the workload out, idleness to zero; deleting gives everything back. Where the operator writes,
//! it runs under the chart's RBAC (`chart_rbac_kubeconfig`), not as the admin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use inflight_testbed::{eventually, TestBed};
use serde_json::json;

/// The test's aggregator, activator stand-in and CRD, the activator ready (the aggregator starts
/// once the operator has made its certificates), in a namespace that enforces the `restricted` Pod
/// Security Standard; the operator's flags to reach the aggregator: KEDA in the cluster at its
/// Service's name, the operator on this host at its ClusterIP.
async fn base(tb: &TestBed) -> Vec<String> {
    // Every pod of these tests (the aggregator, the proxied demo) passes the restricted standard.
    tb.enforce_restricted().await.unwrap();
    install_crd(tb);
    tb.apply(&aggregator(tb)).unwrap();
    tb.apply(&activator()).unwrap();
    eventually("activator ready", 180, || async {
        (replicas(tb, "activator").1 == 1).then_some(())
    })
    .await;
    let dial = format!("{}:9091", cluster_ip(tb, "inflight-aggregator"));
    vec!["--aggregator-dial".to_owned(), dial]
}

/// The aggregator's scaler port answered KEDA (Ready says so, and the port counts only TLS
/// connections with a client certificate of the operator's CA as accepted), and refuses a caller
/// that trusts the same CA and dials the same name but has no client certificate, and a caller
/// with a certificate of another CA.
async fn only_keda_reaches_the_scaler(tb: &TestBed) {
    use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
    use inflight_proto::externalscaler::ScaledObjectRef;
    use k8s_openapi::api::core::v1::Secret;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let ns = tb.namespace();
    let secrets: kube::Api<Secret> = kube::Api::namespaced(tb.client(), ns);
    let ca = secrets.get("inflight-ca").await.unwrap();
    let data = ca.data.unwrap();
    let bundle = data["ca.crt"].0.clone();
    let call = async |identity: Option<Identity>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&bundle))
            .domain_name(format!("inflight-aggregator.{ns}.svc"));
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        let ip = cluster_ip(tb, "inflight-aggregator");
        let channel = Endpoint::from_shared(format!("https://{ip}:9091"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .connect_lazy();
        let reference = ScaledObjectRef {
            name: "web".into(),
            namespace: ns.to_owned(),
            scaler_metadata: [("workload", "deployment/web"), ("target", "2")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        ExternalScalerClient::new(channel)
            .get_metric_spec(reference)
            .await
    };
    let none = call(None).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    // A CA of the test's own making (not the operator's) signs this one.
    let (cert, key) = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let other = p.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(other.der(), &key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
        (leaf.pem(), leaf_key.serialize_pem())
    };
    let foreign = call(Some(Identity::from_pem(cert, key))).await;
    assert!(foreign.is_err(), "a certificate of another CA: {foreign:?}");
    // The operator's own client: KEDA's certificate, from the Secret KEDA reads.
    let keda: kube::Api<Secret> = kube::Api::namespaced(tb.client(), "keda");
    let keda = keda.get(&format!("inflight-keda-{ns}")).await.unwrap();
    let keda = keda.data.unwrap();
    let with = call(Some(Identity::from_pem(
        &keda["tls.crt"].0,
        &keda["tls.key"].0,
    )))
    .await;
    assert!(with.is_ok(), "KEDA's certificate: {with:?}");

    let pod_ip = ready_ips(tb, "inflight-aggregator")[0].clone();
    let metrics = admin_text(&format!("{pod_ip}:15093"), "/metrics").await;
    let count = |result: &str| {
        let series =
            format!("inflight_aggregator_scaler_connections_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(count("refused") >= 2.0, "{metrics}");
    assert!(count("accepted") >= 2.0, "KEDA's and ours: {metrics}");
}

/// `GET path` of an admin port, head and body.
async fn admin_text(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.0\r\nHost: a\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

fn dial(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The aggregator ready, once the operator has made its certificates.
async fn aggregator_ready(tb: &TestBed) {
    eventually("aggregator ready", 180, || async {
        (replicas(tb, "inflight-aggregator").1 == 1).then_some(())
    })
    .await;
}

/// The body of a 2xx answer to `GET /` (the demo app names its pod in it).
async fn body(client: &Client<HttpConnector, Empty<Bytes>>, ip: &str) -> Option<String> {
    let uri: hyper::Uri = format!("http://{ip}/").parse().unwrap();
    let r = client
        .get(uri)
        .await
        .ok()
        .filter(|r| r.status().is_success())?;
    let bytes = r.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Clients each sending `GET /` one after another through the Service until stopped, counting
/// answers and failures and which pods answered.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    seen: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(ip: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let clients = (0..clients)
            .map(|_| {
                let (stop, ok, failed, seen) =
                    (stop.clone(), ok.clone(), failed.clone(), seen.clone());
                let ip = ip.to_owned();
                tokio::spawn(async move {
                    // A connection per request: kube-proxy picks an endpoint per connection,
                    // and a kept-alive one would stay with the side it first reached.
                    let client = Client::builder(TokioExecutor::new())
                        .pool_max_idle_per_host(0)
                        .build(connector());
                    while !stop.load(Ordering::Relaxed) {
                        match body(&client, &ip).await {
                            Some(b) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                // "hello from the inflight demo app on <pod>": who answered.
                                let pod = b.split_whitespace().last().unwrap_or_default();
                                let side = pod.split('-').next().unwrap_or_default().to_owned();
                                seen.lock().unwrap().insert(side);
                            }
                            None => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            seen,
            clients,
        }
    }

    /// Stops the clients: (answers, failures, the Deployments whose pods answered).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        let seen = self.seen.lock().unwrap().iter().cloned().collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            seen,
        )
    }
}

fn http() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(connector())
}

/// A connection to an address nothing answers at (a pod just deleted, kube-proxy not yet
/// caught up) fails after a while rather than waiting for TCP to give up, so that the callers'
/// deadlines hold.
fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(Duration::from_secs(3)));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_httpautoscaler_adopts_the_service_scales_with_keda_and_gives_everything_back() {
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    let aggregator = base(&tb).await;
    tb.apply(&web(&ns, 1, "500ms")).unwrap();
    eventually("web ready", 180, || async {
        (replicas(&tb, "web").1 == 1).then_some(())
    })
    .await;
    let rbac = chart_rbac_kubeconfig(&tb);
    let _operator = Operator::start_with(&tb, rbac, "solo", &dial(&aggregator));
    aggregator_ready(&tb).await;
    tb.apply(&hta(
        "web",
        "web",
        json!({"minReplicas": 1, "metric": {"target": 2, "window": "20s"},
               "scaleToZeroAfter": "20s", "pollingInterval": "2s"}),
    ))
    .unwrap();

    // KEDA takes the ScaledObject: its trigger reaches the aggregator.
    let so = eventually("a ScaledObject KEDA calls Ready", 180, || async {
        let so = get(&tb, &["scaledobject/web"])?;
        let ready = so["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(so)
    })
    .await;
    let trigger = &so["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "external-push");
    assert_eq!(
        trigger["metadata"]["scalerAddress"],
        format!("inflight-aggregator.{ns}.svc:9091")
    );
    // KEDA dials it with the client certificate the operator made, over TLS.
    assert_eq!(
        trigger["authenticationRef"],
        json!({"name": format!("inflight-keda-{ns}"), "kind": "ClusterTriggerAuthentication"})
    );
    only_keda_reaches_the_scaler(&tb).await;
    assert_eq!(trigger["metadata"]["workload"], "deployment/web");
    assert_eq!(trigger["metadata"]["target"], "2");
    assert_eq!(so["spec"]["minReplicaCount"], 1);
    assert_eq!(so["spec"]["maxReplicaCount"], 4);
    assert_eq!(so["spec"]["cooldownPeriod"], 20);
    assert_eq!(
        so["metadata"]["ownerReferences"][0]["kind"],
        "HTTPAutoscaler"
    );

    // The user's Service is adopted: selector kept aside, endpoints the operator's.
    let svc = eventually("web adopted", 60, || async {
        let svc = get(&tb, &["service/web"])?;
        svc["spec"]["selector"].is_null().then_some(svc)
    })
    .await;
    assert_eq!(
        svc["metadata"]["annotations"]["inflight.dev/adopted-selector"],
        r#"{"app":"web"}"#
    );
    let web_ip = ready_ips(&tb, "web");
    eventually(
        "serve slice on the pod's proxy, proxy slice empty",
        60,
        || async {
            let (serve, port) = slice_ready(&tb, "web-inflight-serve")?;
            let (proxy, _) = slice_ready(&tb, "web-inflight-proxy")?;
            (serve == web_ip && port == 15080 && proxy.is_empty()).then_some(())
        },
    )
    .await;
    // Kubernetes' own slices of the selector it had, and the mirror of its legacy Endpoints, are
    // gone: nothing sends to the app's port beside the proxies.
    let only_ours = || async {
        let names = tb
            .kubectl(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "name",
            ])
            .ok()?;
        let mut names: Vec<&str> = names.split_whitespace().collect();
        names.sort_unstable();
        (names
            == [
                "endpointslice.discovery.k8s.io/web-inflight-proxy",
                "endpointslice.discovery.k8s.io/web-inflight-serve",
            ])
        .then_some(())
    };
    eventually("only the operator's slices for web", 60, only_ours).await;
    eventually("status Ready in serve mode", 60, || async {
        let h = get(&tb, &["hta/web"])?;
        let ok = ["Ready", "ScaledObjectReady", "TargetFound"]
            .iter()
            .all(|t| condition(&tb, "web", t).is_some_and(|(s, _)| s == "True"));
        (ok && h["status"]["mode"] == "Serve" && h["status"]["readyReplicas"] == 1).then_some(())
    })
    .await;
    let printed = tb.kubectl(&["get", "hta", "web"]).unwrap();
    println!("{printed}");
    let mut lines = printed.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
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
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], ["web", "web", "Serve", "1", "1"]);

    // Load through the Service: six requests of 500 ms in flight, target 2 → 3 replicas.
    let ip = cluster_ip(&tb, "web");
    let load = Load::start(&ip, 6);
    eventually("KEDA to scale web to 3 ready replicas", 240, || async {
        (replicas(&tb, "web") == (3, 3)).then_some(())
    })
    .await;
    eventually(
        "three pods in the serve slice and in-flight in the status",
        60,
        || async {
            let (serve, _) = slice_ready(&tb, "web-inflight-serve")?;
            let h = get(&tb, &["hta/web"])?;
            (serve.len() == 3 && h["status"]["inFlight"].as_f64()? >= 1.0).then_some(())
        },
    )
    .await;
    eventually("still only the operator's slices for web", 10, only_ours).await;
    let (ok, failed, _) = load.finish().await;
    println!("load: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "requests failed while scaling out");

    // Idle, and allowed to zero (held at one until now: a fresh aggregator has seen no request,
    // so KEDA would have taken web to zero before the load began): KEDA takes web to zero and
    // the Service to the activator. The edit reaches the ScaledObject.
    tb.kubectl(&[
        "patch",
        "hta",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minReplicas":0}}"#,
    ])
    .unwrap();
    eventually("minReplicaCount 0 on the ScaledObject", 30, || async {
        let so = get(&tb, &["scaledobject/web"])?;
        (so["spec"]["minReplicaCount"] == 0).then_some(())
    })
    .await;
    eventually("web at zero", 300, || async {
        (replicas(&tb, "web").0 == 0).then_some(())
    })
    .await;
    let act_ip = ready_ips(&tb, "activator");
    eventually("proxy slice on the activator, mode Proxy", 120, || async {
        let (proxy, port) = slice_ready(&tb, "web-inflight-proxy")?;
        let (serve, _) = slice_ready(&tb, "web-inflight-serve")?;
        let h = get(&tb, &["hta/web"])?;
        (proxy == act_ip && port == 8080 && serve.is_empty() && h["status"]["mode"] == "Proxy")
            .then_some(())
    })
    .await;
    // kube-proxy follows the slices within its sync period: the first answer may take that long.
    eventually(
        "the activator answering through the Service at zero",
        30,
        || async {
            body(&http(), &ip)
                .await
                .filter(|b| b.contains("on activator-"))
        },
    )
    .await;
    let events = eventually("ScaledToZero and ProxyMode Events", 30, || async {
        let e = event_reasons(&tb, "web");
        (e.iter().any(|r| r == "ScaledToZero") && e.iter().any(|r| r == "ProxyMode")).then_some(e)
    })
    .await;
    assert!(events.iter().any(|r| r == "AdoptedService"), "{events:?}");

    // Deleting at zero: KEDA lets go, web gets a replica, the Service its selector.
    tb.kubectl(&["delete", "hta", "web", "--wait=false"])
        .unwrap();
    eventually("the HTTPAutoscaler gone", 180, || async {
        get(&tb, &["hta/web"]).is_none().then_some(())
    })
    .await;
    assert!(replicas(&tb, "web").0 >= 1, "web left at zero");
    let svc = get(&tb, &["service/web"]).unwrap();
    assert_eq!(svc["spec"]["selector"], json!({"app": "web"}));
    assert!(svc["metadata"]["annotations"]["inflight.dev/adopted-selector"].is_null());
    eventually("owned objects gone", 120, || async {
        let gone = get(&tb, &["scaledobject/web"]).is_none()
            && get(&tb, &["service/web-inflight"]).is_none()
            && get(&tb, &["endpointslice/web-inflight-serve"]).is_none()
            && get(&tb, &["endpointslice/web-inflight-proxy"]).is_none();
        gone.then_some(())
    })
    .await;
    eventually(
        "web serving through its own selector again",
        120,
        || async { body(&http(), &ip).await.filter(|b| b.contains("on web-")) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_at_zero_the_slice_follows_a_new_activator_and_flips_back_once_a_pod_is_ready() {
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    let aggregator = base(&tb).await;
    tb.apply(&web(&ns, 0, "10ms")).unwrap();
    let rbac = chart_rbac_kubeconfig(&tb);
    let _operator = Operator::start_with(&tb, rbac, "solo", &dial(&aggregator));
    aggregator_ready(&tb).await;
    tb.apply(&hta(
        "web",
        "web",
        json!({"minReplicas": 0, "pollingInterval": "2s"}),
    ))
    .unwrap();
    let first = ready_ips(&tb, "activator");
    eventually("proxy mode on the activator", 120, || async {
        let (proxy, _) = slice_ready(&tb, "web-inflight-proxy")?;
        let h = get(&tb, &["hta/web"])?;
        (proxy == first && h["status"]["mode"] == "Proxy").then_some(())
    })
    .await;
    let ip = cluster_ip(&tb, "web");
    eventually(
        "the activator answering through the Service",
        30,
        || async {
            body(&http(), &ip)
                .await
                .filter(|b| b.contains("on activator-"))
        },
    )
    .await;

    // The activator restarts elsewhere: the slice follows its new address (KubeElasti #175).
    tb.kubectl(&["delete", "pod", "-l", "app=activator", "--wait=false"])
        .unwrap();
    let second = eventually("a new activator pod ready", 120, || async {
        let ips = ready_ips(&tb, "activator");
        (!ips.is_empty() && ips != first).then_some(ips)
    })
    .await;
    eventually("the proxy slice on the new activator", 60, || async {
        let (proxy, _) = slice_ready(&tb, "web-inflight-proxy")?;
        (proxy == second).then_some(())
    })
    .await;
    // kube-proxy follows the slice a moment later; until it has, a connection may still go to
    // the old activator's address, where nothing answers (the load below would wait on it).
    eventually(
        "the new activator answering through the Service",
        60,
        || async {
            body(&http(), &ip)
                .await
                .filter(|b| b.contains("on activator-"))
        },
    )
    .await;

    // A wake-up (KEDA told to hold web at one replica, standing in for the activator's push):
    // serve mode once the pod's proxy answers, with the time and an Event. Requests sent all the
    // while are answered by the activator, then by web, and none fails at the switch.
    let load = Load::start(&ip, 2);
    tb.kubectl(&[
        "annotate",
        "scaledobject",
        "web",
        "autoscaling.keda.sh/paused-replicas=1",
    ])
    .unwrap();
    eventually("serve mode on the woken pod", 180, || async {
        let ips = ready_ips(&tb, "web");
        let (serve, _) = slice_ready(&tb, "web-inflight-serve")?;
        let (proxy, _) = slice_ready(&tb, "web-inflight-proxy")?;
        let h = get(&tb, &["hta/web"])?;
        (!ips.is_empty()
            && serve == ips
            && proxy.is_empty()
            && h["status"]["mode"] == "Serve"
            && h["status"]["lastActivationTime"].is_string())
        .then_some(())
    })
    .await;
    eventually("web answering through the Service", 30, || async {
        body(&http(), &ip).await.filter(|b| b.contains("on web-"))
    })
    .await;
    let (ok, failed, seen) = load.finish().await;
    println!("across the wake-up: {ok} answered by {seen:?}, {failed} failed");
    assert_eq!(failed, 0, "requests failed across the switch to serve mode");
    assert_eq!(seen, ["activator", "web"]);
    let events = eventually("WakingUp and ServeMode Events", 30, || async {
        let e = event_reasons(&tb, "web");
        (e.iter().any(|r| r == "WakingUp") && e.iter().any(|r| r == "ServeMode")).then_some(e)
    })
    .await;
    println!("events: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_a_missing_target_or_a_wrong_port_is_a_condition_and_an_event() {
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    let aggregator = base(&tb).await;
    let _operator = Operator::start(&tb, "solo", &dial(&aggregator));
    tb.apply(&hta("web", "web", json!({}))).unwrap();
    eventually("TargetFound False: TargetNotFound", 60, || async {
        let found = condition(&tb, "web", "TargetFound")?;
        let ready = condition(&tb, "web", "Ready")?;
        (found == ("False".into(), "TargetNotFound".into()) && ready.0 == "False").then_some(())
    })
    .await;
    eventually("a TargetNotFound Event", 30, || async {
        event_reasons(&tb, "web")
            .iter()
            .any(|r| r == "TargetNotFound")
            .then_some(())
    })
    .await;
    // Nothing of the user's is touched while the target is missing.
    assert!(get(&tb, &["service/web"]).is_none());

    // The target appears, with a Service that lacks the port the HTTPAutoscaler names.
    tb.apply(&web(&ns, 1, "10ms")).unwrap();
    tb.kubectl(&[
        "patch",
        "service",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ports/0/port","value":81}]"#,
    ])
    .unwrap();
    eventually("Ready False: InvalidService", 60, || async {
        let found = condition(&tb, "web", "TargetFound")?;
        let ready = condition(&tb, "web", "Ready")?;
        (found.0 == "True" && ready == ("False".into(), "InvalidService".into())).then_some(())
    })
    .await;
    eventually("an InvalidService Event", 30, || async {
        event_reasons(&tb, "web")
            .iter()
            .any(|r| r == "InvalidService")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_two_operators_elect_one_leader_and_the_other_takes_over_when_it_dies() {
    let tb = TestBed::shared().await.unwrap();
    let lease = ["--lease-name", "op-test", "--lease-duration", "6s"];
    let mut a = Operator::start(&tb, "a", &lease);
    let mut b = Operator::start(&tb, "b", &lease);
    let leader = eventually("one leader", 60, || async {
        match (a.leads(), b.leads()) {
            (true, false) => Some("a"),
            (false, true) => Some("b"),
            _ => None,
        }
    })
    .await;
    let holder = tb
        .kubectl(&[
            "get",
            "lease",
            "op-test",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap();
    assert_eq!(holder, leader);
    // Still exactly one after a few renewals.
    let renewed = tb
        .kubectl(&[
            "get",
            "lease",
            "op-test",
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
        .unwrap();
    eventually("a renewal", 30, || async {
        let now = tb
            .kubectl(&[
                "get",
                "lease",
                "op-test",
                "-o",
                "jsonpath={.spec.renewTime}",
            ])
            .ok()?;
        (now != renewed).then_some(())
    })
    .await;
    assert!(a.leads() != b.leads(), "two leaders or none");

    // SIGKILL: no release; the follower waits the lease out, then leads.
    let (dead, heir) = if leader == "a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    dead.kill();
    let started = std::time::Instant::now();
    eventually("the follower to lead", 60, || async {
        heir.leads().then_some(())
    })
    .await;
    println!("took over after {:?} (lease 6s)", started.elapsed());
    let holder = tb
        .kubectl(&[
            "get",
            "lease",
            "op-test",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap();
    assert_eq!(holder, heir.identity);
}

/// A second, smaller bed without KEDA: the condition says what is missing, and nothing crashes.
/// Its own bed because taking KEDA's CRD away from the shared one would break every other test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_without_keda_the_condition_says_to_install_it() {
    use inflight_testbed::cluster::{self, UpOptions};
    let name = "nokeda";
    let layout = tokio::task::spawn_blocking(move || {
        cluster::up(
            name,
            &UpOptions {
                keda: false,
                ..UpOptions::default()
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    struct Down(&'static str);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = cluster::down(self.0);
        }
    }
    let _down = Down(name);
    let kubectl = |args: &[&str]| inflight_testbed::kubectl_run(&layout, args);
    inflight_testbed::chart::install_crd(&layout).unwrap();
    let manifest = std::env::temp_dir().join("inflight-nokeda.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
         "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"containers": [{"name": "app", "image": "inflight.local/none:dev"}]}}}},
        hta("web", "web", json!({}))
    ]});
    std::fs::write(&manifest, list.to_string()).unwrap();
    let mut operator = Operator::spawn(&layout, "default", layout.kubeconfig(), "nokeda", &[]);
    kubectl(&[
        "-n",
        "default",
        "apply",
        "-f",
        &manifest.display().to_string(),
    ])
    .unwrap();
    let field = |path: &str| {
        let jsonpath = format!("jsonpath={path}");
        kubectl(&["-n", "default", "get", "hta", "web", "-o", &jsonpath]).ok()
    };
    eventually("ScaledObjectReady False: KEDANotInstalled", 60, || async {
        let reason = field(r#"{.status.conditions[?(@.type=="ScaledObjectReady")].reason}"#)?;
        (reason == "KEDANotInstalled").then_some(())
    })
    .await;
    let message = field(r#"{.status.conditions[?(@.type=="Ready")].message}"#).unwrap();
    assert!(message.contains("install KEDA"), "{message}");
    eventually("a KEDANotInstalled Event", 30, || async {
        let jsonpath = "jsonpath={.items[*].reason}";
        let out = kubectl(&[
            "-n",
            "default",
            "get",
            "events.events.k8s.io",
            "-o",
            jsonpath,
        ])
        .ok()?;
        out.contains("KEDANotInstalled").then_some(())
    })
    .await;
    // Still running, and still reconciling the rest: the Service is there, in proxy mode.
    assert!(!operator.exited(), "the operator stopped");
    eventually("the Service made in proxy mode", 60, || async {
        (field("{.status.mode}")? == "Proxy").then_some(())
    })
    .await;
    let _ = kubectl(&["-n", "default", "delete", "hta", "web", "--wait=false"]);
}
