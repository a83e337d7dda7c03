//! inflight as a user gets it: the chart installed with `helm install` on the test bed (real
//! Kubernetes, real KEDA), every part its own image, and a workload in a namespace labelled
//! `inflight.dev/inject=enabled` under an HTTPAutoscaler with `minReplicas: 0`. One release per
//! cluster (the CRD, the webhook and the SMI APIService are the cluster's), so the scenes run one
//! after another in one test, on one installed system, and end with `helm uninstall`. Clients on
//! this host call the Service's ClusterIP (the bed routes the Service range to its node) with the
//! Host a client in the cluster would send.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use inflight_e2e::{
    app, at, at_zero, grpc_echo, hpa_replicas, hta, keda_value, raw, websocket_echo, Installed,
};
use inflight_testbed::query::{self, cluster_ip, get, pods, ready_pods, replicas};
use inflight_testbed::traffic::{admin_json, one_request, Load, Tally};
use inflight_testbed::{eventually, kubectl_run, TestBed};
use serde_json::{json, Value};

const TARGET: f64 = 5.0;
const MAX: i64 = 6;

/// The workload's autoscaling. KEDA decides on zero at each poll: polled every 2 s rather than
/// its default 30, the scenes that start at zero wait 10 s and a poll for it, not up to 50 s.
fn autoscaling() -> Value {
    json!({"minReplicas": 0, "maxReplicas": MAX, "scaleToZeroAfter": "10s", "pollingInterval": "2s"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_the_chart_installed_with_helm_end_to_end() {
    let tb = Arc::new(TestBed::shared().await.unwrap());
    let ns = tb.namespace().to_owned();
    let system = Installed::install(&tb, &[]).unwrap();
    every_part_ready_twice(&tb);

    // A user's workload: the demo app, 100 ms a request, under an HTTPAutoscaler from zero.
    tb.kubectl(&["label", "namespace", &ns, "inflight.dev/inject=enabled"])
        .unwrap();
    tb.apply(&app("app", 1, "100ms")).unwrap();
    // Its first pod before the HTTPAutoscaler: KEDA scales an idle workload to zero as soon as it
    // takes it, which can be before the ReplicaSet has made a pod to look at.
    injected(&tb).await;
    tb.apply(&hta("app", autoscaling())).unwrap();
    at_zero(&tb, "app", "with no traffic").await;

    let svc = at(&cluster_ip(&tb, "app"), 80);
    let host = format!("app.{ns}");

    // (1) gRPC (h2c) at zero: held by an activator until a pod is ready, then answered by it;
    // and again through the pod's own sidecar.
    let (message, pod) = grpc_echo(svc, &host, "at zero").await.unwrap();
    assert_eq!(message, "at zero");
    assert!(pod.starts_with("app-"), "{pod}");
    let (message, _) = grpc_echo(svc, &host, "awake").await.unwrap();
    assert_eq!(message, "awake");
    let (greeting, echo) = websocket_echo(svc, &host, "awake").await.unwrap();
    assert!(greeting.starts_with("connected to app-"), "{greeting}");
    assert_eq!(echo, "awake");
    println!("(1) gRPC at zero answered by {pod}, and again awake; a websocket awake");

    // (2) A steady load of 20 clients, each request 100 ms: the workload goes to the replicas
    // the HPA's formula gives for the value KEDA reads (about 4 at 5 per pod).
    let load = Load::start(svc, &host, "/", "on app-", 20);
    let (value, spec) = eventually("scaled out as the HPA's formula says", 300, || async {
        let value = keda_value(&tb, "app")?;
        let (spec, ready) = replicas(&tb, "app");
        let wanted = hpa_replicas(value, TARGET, 1, MAX);
        // The HPA leaves replicas alone within 10% of the target.
        #[allow(clippy::cast_precision_loss)]
        let within = (value / (TARGET * spec as f64) - 1.0).abs() <= 0.1;
        (spec >= 3 && ready == spec && (spec == wanted || within)).then_some((value, spec))
    })
    .await;
    println!("(2) KEDA reads {value} in flight: {spec} replicas at {TARGET} per pod");
    // gRPC and a websocket at scale, beside the load.
    let (message, pod) = grpc_echo(svc, &host, "at scale").await.unwrap();
    assert_eq!(
        (message.as_str(), pod.starts_with("app-")),
        ("at scale", true)
    );
    let (greeting, echo) = websocket_echo(svc, &host, "at scale").await.unwrap();
    assert!(greeting.starts_with("connected to app-"), "{greeting}");
    assert_eq!(echo, "at scale");

    // (3) The SMI API through the aggregation layer: the workload's traffic.
    let smi = eventually("the SMI API's figures for the app", 60, || async {
        let m = raw(
            &tb,
            &format!("/apis/metrics.smi-spec.io/v1alpha1/namespaces/{ns}/deployments/app"),
        )?;
        let success = metric(&m, "success_count")?;
        (m["kind"] == "TrafficMetrics" && success > 0.0).then_some(m)
    })
    .await;
    println!(
        "(3) SMI: {:?} requests succeeded, p99 {:?} s",
        metric(&smi, "success_count"),
        metric(&smi, "p99_response_latency")
    );

    // (4) An aggregator replica killed mid-load: KEDA never reads a false zero, the workload keeps
    // its pods, and no request is lost.
    let watch = Watch::start(&tb);
    let victim = ready_pods_in(&tb, "inflight", "inflight-aggregator")[0].clone();
    kill(&tb, &victim);
    eventually("a replacement aggregator ready", 120, || async {
        let ready = ready_pods_in(&tb, "inflight", "inflight-aggregator");
        (ready.len() == 2 && !ready.contains(&victim)).then_some(())
    })
    .await;
    // The replacement is ready once it has heard every pod (its warm-up): a few readings of
    // KEDA's value after that.
    watch.readings_after(10).await;
    let (least_value, least_replicas) = watch.stop();
    println!(
        "(4) aggregator {victim} killed: KEDA read at least {least_value}, replicas at least \
         {least_replicas}"
    );
    assert!(least_value > 0.0, "KEDA read a false zero");
    assert!(least_replicas >= 2, "the workload lost its pods");

    // (5) A pod deleted mid-load, then a rolling update: no request cut.
    let pod = pods(&tb, "app")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    tb.kubectl(&["delete", "pod", &pod]).unwrap();
    tb.kubectl(&["rollout", "restart", "deployment/app"])
        .unwrap();
    tb.kubectl(&["rollout", "status", "deployment/app", "--timeout=300s"])
        .unwrap();
    println!("(5) pod {pod} deleted and a rolling update, under load");

    // (6) `helm upgrade` under load: every part rolls (the log level is in their environment).
    system.upgrade(&["log.level=debug"]).unwrap();
    every_part_ready_twice(&tb);
    println!("(6) helm upgrade under load");

    let tally = load.finish().await;
    let failures = tally.failures();
    println!(
        "(2-6) under load: {} answered, {} never sent and sent again ({:?}), {} failed: {:?}",
        tally.answered(),
        tally.resent.load(Ordering::Relaxed),
        tally.resent_why.lock().unwrap(),
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(failures.is_empty(), "requests failed under load");
    assert!(tally.answered() > 500, "too little load to show anything");

    // (7) Idle: back to zero after scaleToZeroAfter. Then 200 requests at once: every one
    // answered, by the app, exactly once.
    at_zero(&tb, "app", "after the load stopped").await;
    let tally = Arc::new(Tally::default());
    let burst: Vec<_> = (0..200)
        .map(|_| {
            let (tally, host) = (tally.clone(), host.clone());
            tokio::spawn(async move { one_request(svc, &host, "/", "on app-", &tally).await })
        })
        .collect();
    for b in burst {
        b.await.unwrap();
    }
    assert_eq!(
        tally.failures(),
        Vec::<String>::new(),
        "first requests at zero failed"
    );
    assert_eq!(tally.answered(), 200);
    let served = served_by_sidecars(&tb, 200).await;
    println!(
        "(7) 200 requests at zero: {} answered, {} after a hold, {} never sent and sent again; \
         the app's sidecars served {served}",
        tally.answered(),
        tally.cold_starts.load(Ordering::Relaxed),
        tally.resent.load(Ordering::Relaxed)
    );
    assert_eq!(served, 200, "each request reached the app once");
    assert!(
        tally.cold_starts.load(Ordering::Relaxed) > 0,
        "none was held at zero"
    );

    // (8) At zero, a websocket and a steady trickle of requests wake the workload as the
    // operators' leader is killed: the websocket is held and then goes through, every request is
    // answered, and the other operator completes the switch to serve mode. The trickle keeps the
    // workload awake through the Lease's handover.
    at_zero(&tb, "app", "after the burst").await;
    let killed = leader(&tb);
    let load = Load::start(svc, &host, "/", "on app-", 2);
    let websocket = {
        let host = host.clone();
        tokio::spawn(async move { websocket_echo(svc, &host, "at zero").await })
    };
    kill(&tb, &killed);
    let (greeting, echo) = websocket.await.unwrap().unwrap();
    assert!(greeting.starts_with("connected to app-"), "{greeting}");
    assert_eq!(echo, "at zero");
    let (successor, ips) = eventually("another leader switches to serve mode", 180, || async {
        let successor = leader(&tb);
        let h = get(&tb, &["hta/app"])?;
        let ready = ready_pods(&tb, "app");
        let (serve, _) = query::slice_ready(&tb, "app-inflight-serve")?;
        let ips: Vec<String> = ready.iter().map(|(_, ip)| ip.clone()).collect();
        (successor != killed && h["status"]["mode"] == "Serve" && !ips.is_empty() && serve == ips)
            .then_some((successor, ips))
    })
    .await;
    let tally = load.finish().await;
    assert_eq!(
        tally.failures(),
        Vec::<String>::new(),
        "requests failed as the leader died"
    );
    println!(
        "(8) leader {killed} killed while waking: a websocket at zero ({greeting}) echoed, {} \
         requests answered, {successor} switched the Service to {ips:?}",
        tally.answered()
    );

    // (9) An activator killed while holding: only what it held is affected, the rest answered.
    // The workload's pod cannot be scheduled (a node selector no node has) until the test lets
    // it, so requests stay held as long as needed.
    at_zero(&tb, "app", "after the leader's death").await;
    let mut held = autoscaling();
    held["activation"] = json!({"timeout": "180s"});
    tb.apply(&hta("app", held)).unwrap();
    tb.kubectl(&[
        "patch",
        "deployment",
        "app",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"nodeSelector":{"inflight.dev/e2e":"hold"}}}}}"#,
    ])
    .unwrap();
    let clients = 20;
    let load = Load::start(svc, &host, "/", "on app-", clients);
    let activators = query::ready_pods_in(&tb, "inflight", "inflight-activator");
    let held = eventually("every client's request held", 120, || async {
        let mut held = Vec::new();
        for (name, ip) in &activators {
            let stats = admin_json(at(ip, 15091), "/stats").await?;
            held.push((stats["held_total"].as_u64()?, name.clone()));
        }
        (held.iter().map(|h| h.0).sum::<u64>() == clients as u64).then_some(held)
    })
    .await;
    let (victim_held, victim) = held.iter().max().cloned().unwrap();
    kill(&tb, &victim);
    eventually(
        "the Service's activators without the dead one",
        120,
        || async {
            let act = query::ready_pods_in(&tb, "inflight", "inflight-activator");
            let (proxy, _) = query::slice_ready(&tb, "app-inflight-proxy")?;
            let ips: Vec<String> = act.iter().map(|(_, ip)| ip.clone()).collect();
            (act.len() == 2 && !act.iter().any(|(n, _)| *n == victim) && proxy == ips).then_some(())
        },
    )
    .await;
    tb.kubectl(&[
        "patch",
        "deployment",
        "app",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]"#,
    ])
    .unwrap();
    eventually("the clients answered once a pod is ready", 180, || async {
        (load.tally().answered() >= clients as u64).then_some(())
    })
    .await;
    let tally = load.finish().await;
    let failures = tally.failures();
    println!(
        "(9) activator {victim} killed holding {victim_held} of {clients}: {} answered, {} \
         failed: {:?}",
        tally.answered(),
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        failures.len() as u64 <= victim_held,
        "more failed than the dead activator held"
    );

    // (10) `helm uninstall` with the workload at zero: nothing of inflight is left, and the
    // workload it scaled is given a pod and its Service back.
    at_zero(&tb, "app", "after the activator's death").await;
    system.uninstall().unwrap();
    nothing_left(&tb);
    let (spec, _) = replicas(&tb, "app");
    assert!(spec >= 1, "left at {spec} replicas");
    let svc = get(&tb, &["service/app"]).unwrap();
    assert_eq!(svc["spec"]["selector"], json!({"app": "app"}));
    eventually("the app answers through its own Service", 120, || async {
        let tally = Tally::default();
        one_request(svc_addr(&tb), &host, "/", "on app-", &tally).await;
        (tally.answered() == 1).then_some(())
    })
    .await;
    println!("(10) helm uninstall: nothing left; app at {spec} replicas behind its own Service");
}

fn svc_addr(tb: &TestBed) -> std::net::SocketAddr {
    at(&cluster_ip(tb, "app"), 80)
}

/// Each of the four parts has two ready replicas, and a PodDisruptionBudget.
fn every_part_ready_twice(tb: &TestBed) {
    for part in ["operator", "aggregator", "activator", "injector"] {
        let name = format!("inflight-{part}");
        let d = in_release(tb, &["deployment", &name]);
        assert_eq!(d["status"]["readyReplicas"], 2, "{name}");
        assert_eq!(d["status"]["updatedReplicas"], 2, "{name}");
        let pdb = in_release(tb, &["pdb", &name]);
        assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{name}");
    }
}

fn in_release(tb: &TestBed, what: &[&str]) -> Value {
    let mut args = vec!["-n", "inflight", "get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl_run(tb.layout(), &args).unwrap()).unwrap()
}

fn ready_pods_in(tb: &TestBed, ns: &str, app: &str) -> Vec<String> {
    query::ready_pods_in(tb, ns, app)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Kills a pod of the release at once (SIGKILL, no grace): what a node's failure does to it.
fn kill(tb: &TestBed, pod: &str) {
    kubectl_run(
        tb.layout(),
        &[
            "-n",
            "inflight",
            "delete",
            "pod",
            pod,
            "--grace-period=0",
            "--force",
        ],
    )
    .unwrap();
}

/// The operator whose name the Lease holds.
fn leader(tb: &TestBed) -> String {
    let lease = in_release(tb, &["lease", "inflight-operator"]);
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The app's pods were created with the sidecar the injector adds, labelled with their workload.
async fn injected(tb: &TestBed) {
    let pods = eventually("the app's first pod", 60, || async {
        let pods = pods(tb, "app");
        (!pods.is_empty()).then_some(pods)
    })
    .await;
    for pod in pods {
        let names: Vec<&str> = pod["spec"]["initContainers"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(names.contains(&"inflight-proxy"), "{names:?}");
        assert_eq!(
            pod["metadata"]["labels"]["inflight.dev/workload"],
            "deployment.app"
        );
    }
}

/// The requests the app's pods have served through their sidecars (`/stats` on each admin
/// port), once they add up to at least `expected`: the activator forwards to a pod as soon as its
/// sidecar is ready, before the kubelet marks it Ready, so every pod with an address is asked.
/// Nothing else sends the app requests meanwhile, so the sum only grows.
async fn served_by_sidecars(tb: &TestBed, expected: u64) -> u64 {
    eventually("the sidecars to account for the requests", 60, || async {
        let mut total = 0;
        for pod in pods(tb, "app") {
            let ip = pod["status"]["podIP"].as_str()?;
            let stats = admin_json(at(ip, 15090), "/stats").await?;
            total += stats["requests_total"].as_u64()?;
        }
        (total >= expected).then_some(total)
    })
    .await
}

fn metric(m: &Value, name: &str) -> Option<f64> {
    m["metrics"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == name)
        .and_then(|x| x["value"].as_str())
        .and_then(smi_types::quantity::parse)
}

/// What KEDA reads and the replicas the app has, read again and again in the background: the
/// least of each seen, and how many readings.
struct Watch {
    stop: Arc<AtomicBool>,
    least: Arc<Mutex<(f64, i64)>>,
    readings: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(tb: &Arc<TestBed>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let least = Arc::new(Mutex::new((f64::MAX, i64::MAX)));
        let readings = Arc::new(AtomicI64::new(0));
        let task = {
            let (stop, least, readings, tb) =
                (stop.clone(), least.clone(), readings.clone(), tb.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // kubectl runs as a process: on a thread of its own, off the load's.
                    let read = tokio::task::block_in_place(|| {
                        Some((keda_value(&tb, "app")?, replicas(&tb, "app").0))
                    });
                    // No value (the metrics server asked a replica that is gone) is not a zero:
                    // the HPA keeps its replicas on an error.
                    if let Some((value, spec)) = read {
                        let mut l = least.lock().unwrap();
                        *l = (l.0.min(value), l.1.min(spec));
                        readings.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
            })
        };
        Self {
            stop,
            least,
            readings,
            task,
        }
    }

    /// Waits for `n` more readings.
    async fn readings_after(&self, n: i64) {
        let from = self.readings.load(Ordering::Relaxed);
        eventually("more readings of KEDA's value", 120, || async {
            (self.readings.load(Ordering::Relaxed) >= from + n).then_some(())
        })
        .await;
    }

    fn stop(self) -> (f64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
        *self.least.lock().unwrap()
    }
}

/// After `helm uninstall`: no object of inflight anywhere.
fn nothing_left(tb: &TestBed) {
    let kubectl = |args: &[&str]| kubectl_run(tb.layout(), args);
    for (what, name) in [
        ("crd", "httpautoscalers.inflight.dev"),
        ("apiservice", "v1alpha1.metrics.smi-spec.io"),
        ("mutatingwebhookconfiguration", "inflight-injector"),
        ("clustertriggerauthentication", "inflight-keda"),
        ("clusterrole", "inflight-operator"),
        ("clusterrole", "inflight-aggregator"),
        ("clusterrole", "inflight-activator"),
        ("clusterrole", "inflight-uninstall"),
    ] {
        let out = kubectl(&["get", what, name, "--ignore-not-found", "-o", "name"]).unwrap();
        assert!(out.trim().is_empty(), "{what}/{name} left: {out}");
    }
    let out = kubectl(&[
        "-n",
        "keda",
        "get",
        "secret",
        "inflight-keda",
        "--ignore-not-found",
        "-o",
        "name",
    ])
    .unwrap();
    assert!(
        out.trim().is_empty(),
        "KEDA's client certificate left: {out}"
    );
    let out = kubectl(&[
        "-n", "inflight", "get",
        "deployments,services,secrets,leases,jobs,poddisruptionbudgets,networkpolicies,serviceaccounts,roles",
        "-o", "name",
    ])
    .unwrap();
    let ours: Vec<&str> = out.lines().filter(|l| l.contains("inflight")).collect();
    assert!(ours.is_empty(), "left in the release's namespace: {ours:?}");
    let out = tb.kubectl(&["get", "scaledobjects", "-o", "name"]).unwrap();
    assert!(out.trim().is_empty(), "ScaledObjects left: {out}");
}
