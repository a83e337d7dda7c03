//! The activator on the test bed, everything around it real: the injector (in this process,
//! behind a MutatingWebhookConfiguration of the test's own) adds inflight-proxy to the pods of a
//! labelled namespace's demo Deployment; the aggregator runs in the cluster and real KEDA scales on
//! it; the operator (in this process, on a runtime of its own thread) switches the Service `web`
//! between the activators and the pods; two replicas of the real `inflight-activator` image run in
//! the cluster under the chart's RBAC (`charts/inflight/templates/activator-rbac.yaml`), watching
//! only the test's namespace. Clients on this host call the Service's ClusterIP (the bed routes
//! the Service range to its node), with the Host a client in the cluster would send.
//!
//! The operator and the injector run in this process because Cargo builds their binaries only for
//! their own packages' tests; each gets the library's `run` with the flags its binary takes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser as _;
use inflight_testbed::images::image_ref;
use inflight_testbed::{eventually, TestBed};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bed has two cores: the tests of this file take turns rather than share them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A scheduling gate the second test puts on the workload's pods, so that the workload stays
/// without a ready pod (proxy mode) for as long as the test needs, after KEDA has woken it.
const HOLD_GATE: &str = "inflight.dev/test-hold";

const ACTIVATOR: &str = "inflight-activator";

// ---------------------------------------------------------------------------------------------
// Requests, sent by hand so that the test knows whether a failed one was ever sent.

/// What one request came to.
#[derive(Debug)]
enum Outcome {
    /// A response: its status, its `X-Inflight-Cold-Start` header, its body.
    Answered {
        status: u16,
        cold_start: Option<String>,
        body: String,
    },
    /// Nothing reached a server: the connection was refused, reset or unreachable before the
    /// request went out. The only failure a client may try again.
    NotSent(String),
    /// The request went out and no whole response came back.
    Failed(String),
}

/// `GET path` with `Host: host` on a new connection to `addr`, the answer read to its end.
async fn send(addr: SocketAddr, host: &str, path: &str, within: Duration) -> Outcome {
    let mut stream =
        match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Outcome::NotSent(format!("connect: {:?}", e.kind())),
            Err(_) => return Outcome::NotSent("connect: timed out".into()),
        };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        // The kernel refuses to queue the request only on a connection already reset.
        return Outcome::NotSent(format!("write: {:?}", e.kind()));
    }
    let mut raw = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut raw)).await {
        Err(_) => return Outcome::Failed(format!("no whole answer within {within:?}")),
        Ok(Err(e)) => {
            return Outcome::Failed(format!(
                "read after {} bytes: {e} ({:?})",
                raw.len(),
                e.kind()
            ))
        }
        Ok(Ok(_)) => {}
    }
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Failed(format!("no response head in {text:?}"));
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    let Some(status) = status else {
        return Outcome::Failed(format!("no status line in {head:?}"));
    };
    let cold_start = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("x-inflight-cold-start"))
        .map(|(_, value)| value.trim().to_owned());
    Outcome::Answered {
        status,
        cold_start,
        body: body.to_owned(),
    }
}

/// The JSON an admin port answers at `path`.
async fn admin_json(addr: SocketAddr, path: &str) -> Option<Value> {
    match send(addr, "admin", path, Duration::from_secs(5)).await {
        Outcome::Answered {
            status: 200, body, ..
        } => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

async fn admin_text(addr: SocketAddr, path: &str) -> Option<String> {
    match send(addr, "admin", path, Duration::from_secs(5)).await {
        Outcome::Answered {
            status: 200, body, ..
        } => Some(body),
        _ => None,
    }
}

/// Clients each sending `GET /` through the Service, one request after another on a new
/// connection each (kube-proxy picks an endpoint per connection), until stopped. A request
/// that was never sent is sent again, and counted; any other failure is recorded.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    cold_starts: AtomicU64,
    resent: AtomicU64,
    resent_why: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
}

struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, host: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let clients = (0..clients)
            .map(|_| {
                let (stop, tally, host) = (stop.clone(), tally.clone(), host.to_owned());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        one_request(addr, &host, &tally).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            tally,
            clients,
        }
    }

    fn answered(&self) -> u64 {
        self.tally.answered.load(Ordering::Relaxed)
    }

    /// Stops the clients once their requests are answered.
    async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        self.tally
    }
}

/// One request, sent again only while it was never sent (at most 100 times).
async fn one_request(addr: SocketAddr, host: &str, tally: &Tally) {
    for _ in 0..100 {
        match send(addr, host, "/", Duration::from_secs(90)).await {
            Outcome::Answered {
                status: 200,
                cold_start,
                body,
            } if body.contains("on web-") => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
                if cold_start.is_some() {
                    tally.cold_starts.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Outcome::Answered { status, body, .. } => {
                tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{status}: {}", body.trim()));
                return;
            }
            Outcome::Failed(why) => {
                tally.failures.lock().unwrap().push(why);
                return;
            }
            Outcome::NotSent(why) => {
                tally.resent.fetch_add(1, Ordering::Relaxed);
                *tally.resent_why.lock().unwrap().entry(why).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tally
        .failures
        .lock()
        .unwrap()
        .push("never sent in 100 tries".into());
}

// ---------------------------------------------------------------------------------------------
// The cluster's side.

fn get(tb: &TestBed, what: &[&str]) -> Option<Value> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    tb.kubectl(&args)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// (spec.replicas, readyReplicas) of a Deployment.
fn replicas(tb: &TestBed, name: &str) -> (i64, i64) {
    let d = get(tb, &[&format!("deployment/{name}")]).unwrap_or_default();
    (
        d["spec"]["replicas"].as_i64().unwrap_or(0),
        d["status"]["readyReplicas"].as_i64().unwrap_or(0),
    )
}

fn cluster_ip(tb: &TestBed, svc: &str) -> String {
    tb.kubectl(&["get", "service", svc, "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap()
}

/// The ready addresses (sorted) and the port of an EndpointSlice.
fn slice_ready(tb: &TestBed, name: &str) -> Option<(Vec<String>, i64)> {
    let s = get(tb, &[&format!("endpointslice/{name}")])?;
    let port = s["ports"][0]["port"].as_i64().unwrap_or(0);
    let mut ips: Vec<String> = s["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter(|e| e["conditions"]["ready"] == json!(true))
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    Some((ips, port))
}

/// The pods labelled `app=<app>` that are not being deleted.
fn pods(tb: &TestBed, app: &str) -> Vec<Value> {
    let list = get(tb, &["pods", "-l", &format!("app={app}")]).unwrap_or_default();
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// (name, IP) of the ready pods of `app`, by IP.
fn ready_pods(tb: &TestBed, app: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = pods(tb, app)
        .iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_owned(),
                p["status"]["podIP"].as_str()?.to_owned(),
            ))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

fn ips(pods: &[(String, String)]) -> Vec<String> {
    pods.iter().map(|(_, ip)| ip.clone()).collect()
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// `inflight_aggregator_scaler_calls_total{method="<method>"}` in a `/metrics` text.
fn scaler_calls(metrics: &str, method: &str) -> u64 {
    let label = format!("method=\"{method}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("inflight_aggregator_scaler_calls_total{") && l.contains(&label))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The chart's RBAC for the activator, applied for the test's namespace: the ServiceAccount and
/// the ClusterRole as the chart has them, the ClusterRole bound by a RoleBinding in the test's
/// namespace instead of the chart's ClusterRoleBinding (which every test would rewrite for
/// itself). The activator pods then run with exactly the chart's rights.
fn chart_rbac(tb: &TestBed) {
    let ns = tb.namespace();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/inflight/templates/activator-rbac.yaml"
    ))
    .unwrap()
    .replace("{{ .Release.Namespace }}", ns);
    assert!(
        !text.contains("{{"),
        "a template the test cannot render: {text}"
    );
    let docs: Vec<&str> = text
        .split("\n---\n")
        .filter(|d| !d.contains("kind: ClusterRoleBinding"))
        .collect();
    assert_eq!(docs.len(), 2, "the ServiceAccount and the ClusterRole");
    let path = std::env::temp_dir().join(format!("inflight-activator-rbac-{ns}.yaml"));
    std::fs::write(&path, docs.join("\n---\n")).unwrap();
    tb.kubectl(&["apply", "-f", &path.display().to_string()])
        .unwrap();
    let _ = std::fs::remove_file(&path);
    tb.apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "inflight-activator-cluster-rules"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ACTIVATOR},
        "subjects": [{"kind": "ServiceAccount", "name": ACTIVATOR, "namespace": ns}]}))
        .unwrap();
}

/// A pod template's metadata that keeps the injector away (the aggregator and the activator are
/// not workloads inflight scales).
fn not_injected(mut deployment: Value) -> Value {
    deployment["spec"]["template"]["metadata"]["annotations"] =
        json!({"inflight.dev/inject": "disabled"});
    deployment
}

/// One aggregator (gRPC for KEDA and the reports), its Service for KEDA and the headless one
/// the proxies and the activators resolve to each replica.
fn aggregator() -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        not_injected(inflight_testbed::manifests::deployment("inflight-aggregator", 1, json!({"containers": [{
            "name": "aggregator", "image": image_ref("inflight-aggregator"), "imagePullPolicy": "Never",
            "ports": [{"containerPort": 9090, "name": "grpc"}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15093}, "periodSeconds": 1}}]}))),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "inflight-aggregator"},
         "spec": {"selector": {"app": "inflight-aggregator"}, "ports": [{"name": "grpc", "port": 9090}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "inflight-aggregator-ingest"},
         "spec": {"clusterIP": "None", "publishNotReadyAddresses": true,
                  "selector": {"app": "inflight-aggregator"}, "ports": [{"name": "grpc", "port": 9090}]}}
    ]})
}

/// Two replicas of the real activator under the chart's ServiceAccount, watching the test's
/// namespace, reporting to `aggregator`; and the Service the operator takes their addresses from.
fn activators(ns: &str, aggregator: &str) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let pod = json!({
        "serviceAccountName": ACTIVATOR,
        "terminationGracePeriodSeconds": 30,
        "containers": [{
            "name": "activator", "image": image_ref(ACTIVATOR), "imagePullPolicy": "Never",
            "args": ["--aggregator", aggregator],
            "env": [{"name": "WATCH_NAMESPACE", "value": ns},
                    {"name": "RUST_LOG", "value": "info,inflight_activator=debug"},
                    {"name": "NO_COLOR", "value": "1"},
                    {"name": "POD_NAME", "valueFrom": field("metadata.name")},
                    {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
                    {"name": "POD_IP", "valueFrom": field("status.podIP")}],
            "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 15091, "name": "admin"}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15091}, "periodSeconds": 1}}]});
    json!({"apiVersion": "v1", "kind": "List", "items": [
        not_injected(inflight_testbed::manifests::deployment(ACTIVATOR, 2, pod)),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": ACTIVATOR},
         "spec": {"selector": {"app": ACTIVATOR}, "ports": [{"name": "http", "port": 8080}]}}
    ]})
}

/// `web`: the demo app (each request takes 50 ms) as a user writes it, at zero replicas, and its
/// Service as it was before inflight. The injector adds the proxy to its pods.
fn web(gated: bool) -> Value {
    let mut pod = json!({"terminationGracePeriodSeconds": 30, "containers": [{
        "name": "app", "image": image_ref("inflight-demo-app"), "imagePullPolicy": "Never",
        "args": ["serve", "--listen", "0.0.0.0:8080", "--latency", "50ms"],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}}]});
    if gated {
        pod["schedulingGates"] = json!([{"name": HOLD_GATE}]);
    }
    json!({"apiVersion": "v1", "kind": "List", "items": [
        inflight_testbed::manifests::deployment("web", 0, pod),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    ]})
}

fn hta(spec: Value) -> Value {
    let mut base = json!({
        "scaleTargetRef": {"kind": "Deployment", "name": "web"},
        "service": {"name": "web", "port": 80, "targetPort": 8080},
        "minReplicas": 0,
        "activation": {"timeout": "120s"}
    });
    if let (Some(b), Some(extra)) = (base.as_object_mut(), spec.as_object()) {
        b.extend(extra.clone());
    }
    json!({"apiVersion": "inflight.dev/v1alpha1", "kind": "HTTPAutoscaler",
           "metadata": {"name": "web"}, "spec": base})
}

// ---------------------------------------------------------------------------------------------
// The parts that run in this process.

/// A server's `run` on a multi-threaded runtime of its own thread, stopped (its shutdown future
/// resolved, 15 s at most to finish) when dropped.
struct Background {
    name: &'static str,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let mut limit = stopped.clone();
                let mut shutdown = stopped;
                let result = rt.block_on(async move {
                    let shutdown = Box::pin(async move {
                        let _ = shutdown.wait_for(|s| *s).await;
                    });
                    tokio::select! {
                        result = run(shutdown) => result,
                        _ = async {
                            let _ = limit.wait_for(|s| *s).await;
                            tokio::time::sleep(Duration::from_secs(15)).await;
                        } => Err(anyhow::anyhow!("did not stop within 15 s")),
                    }
                });
                if let Err(error) = result {
                    eprintln!("{name}: {error:#}");
                }
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .unwrap();
        Self {
            name,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("{}: its thread panicked", self.name);
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What every test of this process shares: the admin kubeconfig in `KUBECONFIG` (the operator's
/// and the injector's `run` take their client from it, as their binaries do), and the log of
/// both in a file.
fn process_setup(tb: &TestBed) -> std::path::PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let log = std::env::temp_dir().join(format!(
        "inflight-activator-testbed-{}.log",
        std::process::id()
    ));
    let kubeconfig = tb.kubeconfig();
    let path = log.clone();
    ONCE.call_once(move || {
        std::env::set_var("KUBECONFIG", kubeconfig);
        use tracing_subscriber::filter::Targets;
        use tracing_subscriber::prelude::*;
        let file = std::fs::File::create(&path).unwrap();
        let filter = Targets::new()
            .with_target("inflight_operator", tracing::Level::DEBUG)
            .with_target("inflight_injector", tracing::Level::INFO)
            .with_default(tracing::Level::WARN);
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(Mutex::new(file)),
            )
            .try_init();
    });
    log
}

/// The real injector on the host end of the bed's network, with a serving certificate of the
/// cluster CA for that address, and a webhook configuration that sends it the pods of the test's
/// namespace only.
async fn injector(tb: &TestBed, aggregator: &str) -> Background {
    let host = tb.layout().host_ip();
    let dir = std::env::temp_dir().join(format!("inflight-activator-bed-{}", tb.namespace()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) =
        inflight_testbed::pki::serving_cert(tb.layout(), &[host.to_string()]).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    let listen = SocketAddr::from((host, free_port()));
    let config = inflight_injector::Config::try_parse_from([
        "inflight-injector",
        "--listen",
        &listen.to_string(),
        "--admin-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--tls-cert",
        &dir.join("tls.crt").display().to_string(),
        "--tls-key",
        &dir.join("tls.key").display().to_string(),
        "--proxy-image",
        &image_ref("inflight-proxy"),
        "--proxy-image-pull-policy",
        "Never",
        "--aggregator",
        aggregator,
    ])
    .unwrap();
    let running = Background::start("inflight-injector", move |shutdown| {
        inflight_injector::run(config, shutdown)
    });
    eventually("the injector to listen", 60, || async {
        TcpStream::connect(listen).await.ok().map(drop)
    })
    .await;
    let ns = tb.namespace();
    let ca = std::fs::read(tb.layout().pki().join("ca.crt")).unwrap();
    tb.apply(&json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": format!("inflight-injector-{ns}")},
        "webhooks": [{
            "name": "inject.inflight.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": format!("https://{listen}/mutate"),
                             "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"inflight.dev/inject": "enabled",
                                                  "inflight.dev/webhook-test": ns}},
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded"
        }]
    }))
    .unwrap();
    tb.kubectl(&[
        "label",
        "namespace",
        ns,
        "inflight.dev/inject=enabled",
        &format!("inflight.dev/webhook-test={ns}"),
        "--overwrite",
    ])
    .unwrap();
    running
}

/// The operator, reconciling the test's namespace, with the activator Service of the test.
fn operator(tb: &TestBed, aggregator_address: &str) -> Background {
    let ns = tb.namespace();
    let config = inflight_operator::Config::try_parse_from([
        "inflight-operator",
        "--admin-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--watch-namespace",
        ns,
        "--namespace",
        ns,
        "--identity",
        "activator-testbed",
        "--activator-service",
        &format!("{ns}/{ACTIVATOR}"),
        "--aggregator-address",
        aggregator_address,
        "--resync-interval",
        "10s",
        // The cluster's webhook and APIService are other tests' business.
        "--tls-bootstrap",
        "false",
    ])
    .unwrap();
    Background::start("inflight-operator", move |shutdown| {
        inflight_operator::run(config, shutdown)
    })
}

// ---------------------------------------------------------------------------------------------
// The scene both tests stand on.

struct Scene {
    tb: TestBed,
    /// The Service `web`'s ClusterIP and port.
    web: SocketAddr,
    /// What a client in the cluster would send as Host.
    host: String,
    aggregator_admin: SocketAddr,
    operator: Option<Background>,
    injector: Option<Background>,
}

impl Scene {
    /// Everything up, the HTTPAutoscaler `web` with `spec` made, and `web` at zero with its
    /// Service on the two activators.
    async fn start(tb: TestBed, spec: Value, gated: bool) -> Self {
        let log = process_setup(&tb);
        let ns = tb.namespace().to_owned();
        println!(
            "namespace {ns}; the operator's and the injector's log: {}",
            log.display()
        );
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        // Made first, so that whatever fails from here on is cleaned up (and diagnosed).
        let mut scene = Self {
            tb,
            web: unknown,
            host: format!("web.{ns}"),
            aggregator_admin: unknown,
            operator: None,
            injector: None,
        };
        let tb = &scene.tb;
        let crd: Value = serde_json::from_str(&inflight_api::crd_text()).unwrap();
        tb.apply_in("default", &crd).unwrap();
        tb.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/httpautoscalers.inflight.dev",
        ])
        .unwrap();
        let ingest = format!("http://inflight-aggregator-ingest.{ns}.svc.cluster.local:9090");
        scene.injector = Some(injector(tb, &ingest).await);
        chart_rbac(tb);
        tb.apply(&aggregator()).unwrap();
        tb.apply(&activators(&ns, &ingest)).unwrap();
        tb.apply(&web(gated)).unwrap();
        eventually("the aggregator and two activators ready", 180, || async {
            (replicas(tb, "inflight-aggregator").1 == 1 && replicas(tb, ACTIVATOR).1 == 2)
                .then_some(())
        })
        .await;
        let aggregator_ip = ready_pods(tb, "inflight-aggregator")[0].1.clone();
        let aggregator_address = format!("{}:9090", cluster_ip(tb, "inflight-aggregator"));
        scene.web = at(&cluster_ip(tb, "web"), 80);
        scene.aggregator_admin = at(&aggregator_ip, 15093);
        scene.operator = Some(operator(&scene.tb, &aggregator_address));
        scene.tb.apply(&hta(spec)).unwrap();
        eventually("a ScaledObject KEDA calls Ready", 180, || async {
            let so = get(&scene.tb, &["scaledobject/web"])?;
            so["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        })
        .await;
        scene.at_zero_on_the_activators(60).await;
        scene
    }

    /// Waits until `web` has no replica, its Service's slice holds the ready activators (at
    /// their port 8080) and nothing else, each activator routes `web`, and a connection to the
    /// Service's ClusterIP reaches an activator (kube-proxy has caught up). Returns the
    /// activators.
    async fn at_zero_on_the_activators(&self, secs: u64) -> Vec<(String, String)> {
        let tb = &self.tb;
        let activators = eventually(
            "web at zero, its Service on the two activators, mode Proxy",
            secs,
            || async {
                let act = ready_pods(tb, ACTIVATOR);
                let (proxy, port) = slice_ready(tb, "web-inflight-proxy")?;
                let (serve, _) = slice_ready(tb, "web-inflight-serve")?;
                let h = get(tb, &["hta/web"])?;
                (replicas(tb, "web").0 == 0
                    && act.len() == 2
                    && proxy == ips(&act)
                    && port == 8080
                    && serve.is_empty()
                    && h["status"]["mode"] == "Proxy")
                    .then_some(act)
            },
        )
        .await;
        for (name, ip) in &activators {
            eventually(&format!("{name} to route web"), 30, || async {
                let stats = admin_json(at(ip, 15091), "/stats").await?;
                (stats["routes"].as_u64()? >= 1).then_some(())
            })
            .await;
        }
        // A host no HTTPAutoscaler claims is answered 404 by an activator, and wakes nothing.
        eventually("the Service to reach an activator", 30, || async {
            for _ in 0..4 {
                match send(self.web, "nobody.invalid", "/", Duration::from_secs(5)).await {
                    Outcome::Answered {
                        status: 404, body, ..
                    } if body.starts_with("inflight-activator:") => {}
                    _ => return None,
                }
            }
            Some(())
        })
        .await;
        activators
    }

    /// The sum of `requests_total` over the `/stats` of the proxies of every pod of `web`.
    async fn web_requests(&self) -> u64 {
        let mut total = 0;
        for pod in pods(&self.tb, "web") {
            let Some(ip) = pod["status"]["podIP"].as_str() else {
                continue;
            };
            if let Some(stats) = admin_json(at(ip, 15090), "/stats").await {
                total += stats["requests_total"].as_u64().unwrap_or(0);
            }
        }
        total
    }

    /// What an engineer would look at first, printed when a test fails.
    fn diagnose(&self) {
        let tb = &self.tb;
        for args in [
            &["get", "pods", "-o", "wide"][..],
            &["get", "hta", "web", "-o", "yaml"],
            &["get", "endpointslices", "-o", "wide"],
            &["get", "scaledobject", "web", "-o", "yaml"],
            &[
                "logs",
                "-l",
                "app=inflight-activator",
                "--tail",
                "60",
                "--prefix",
            ],
            &["logs", "-l", "app=inflight-aggregator", "--tail", "30"],
        ] {
            println!("--- kubectl {}", args.join(" "));
            match tb.kubectl(args) {
                Ok(out) => println!("{out}"),
                Err(e) => println!("{e}"),
            }
        }
        // Dropped inside the test's runtime, which cannot be blocked on: a thread of its own.
        let activators = ready_pods(tb, ACTIVATOR);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            for (name, ip) in activators {
                let stats = rt.block_on(admin_json(at(&ip, 15091), "/stats"));
                println!("--- {name} /stats: {stats:?}");
            }
            Some(())
        })
        .join();
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.diagnose();
        }
        self.operator.take();
        // The finalizer the operator would have removed, or the namespace could never go.
        let _ = self.tb.kubectl(&[
            "patch",
            "hta",
            "web",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
        let _ = self.tb.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            &format!("inflight-injector-{}", self.tb.namespace()),
            "--ignore-not-found",
        ]);
        self.injector.take();
    }
}

// ---------------------------------------------------------------------------------------------

/// (a) A request at zero is held, KEDA wakes `web` on the activator's report (not on its polling,
/// which is 30 s apart), and the request is answered 200 by the app with the cold-start header;
/// (c) idle, `web` goes back to zero and its Service back to the activators; (b) 200 requests at
/// once at zero are all answered 200, and the app's proxies counted exactly 200: none was lost
/// or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_requests_at_zero_are_held_until_keda_wakes_the_workload_and_each_is_answered_once()
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let polling = Duration::from_secs(30);
    let scene = Scene::start(
        TestBed::shared().await.unwrap(),
        json!({"maxReplicas": 2, "metric": {"target": 10, "window": "12s"},
               "scaleToZeroAfter": "10s", "pollingInterval": "30s"}),
        false,
    )
    .await;
    let tb = &scene.tb;

    // (a) KEDA polls the aggregator every 30 s: the request goes right after a poll, so that a
    // wake-up within the next 30 s can only be the push.
    let aggregator_admin = scene.aggregator_admin;
    let calls = move |method: &'static str| async move {
        let metrics = admin_text(aggregator_admin, "/metrics").await?;
        Some(scaler_calls(&metrics, method))
    };
    eventually("KEDA's StreamIsActive stream open", 60, || async {
        (calls("StreamIsActive").await? >= 1).then_some(())
    })
    .await;
    let before = eventually("the aggregator's metrics", 30, || calls("IsActive")).await;
    let polled = eventually(
        "KEDA to poll IsActive",
        2 * polling.as_secs() + 10,
        || async { (calls("IsActive").await? > before).then(Instant::now) },
    )
    .await;
    let answer = send(scene.web, &scene.host, "/", Duration::from_secs(120)).await;
    let took = polled.elapsed();
    println!("(a) one request at zero: {answer:?}, {took:?} after KEDA's last poll");
    let (cold_start, body) = match answer {
        Outcome::Answered {
            status: 200,
            cold_start: Some(cold_start),
            body,
        } => (cold_start, body),
        other => panic!("not answered 200 with X-Inflight-Cold-Start: {other:?}"),
    };
    assert!(
        body.contains("hello from the inflight demo app on web-"),
        "{body}"
    );
    assert!(cold_start.ends_with("ms"), "{cold_start}");
    assert!(
        took + Duration::from_secs(1) < polling,
        "answered {took:?} after KEDA's poll: the wake-up may have waited for the next poll"
    );
    assert!(replicas(tb, "web").0 >= 1);
    // The pod the app answered from carries the proxy the injector added.
    let woken = pods(tb, "web");
    assert!(
        woken.iter().all(|p| {
            p["metadata"]["annotations"]["inflight.dev/injected"].is_string()
                && p["spec"]["initContainers"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["name"] == "inflight-proxy"))
        }),
        "web's pods were not injected"
    );
    let mut held = 0;
    for (_, ip) in ready_pods(tb, ACTIVATOR) {
        let stats = admin_json(at(&ip, 15091), "/stats").await.unwrap();
        held += stats["requests"]["forwarded_held"].as_u64().unwrap_or(0);
    }
    assert_eq!(held, 1, "the activators' forwarded_held");
    eventually("serve mode on web's pod", 60, || async {
        let (serve, _) = slice_ready(tb, "web-inflight-serve")?;
        let h = get(tb, &["hta/web"])?;
        (!serve.is_empty() && h["status"]["mode"] == "Serve").then_some(())
    })
    .await;

    // (c) Nothing more: KEDA takes web back to zero after scaleToZeroAfter, and the operator the
    // Service back to the activators.
    let idle = Instant::now();
    scene.at_zero_on_the_activators(180).await;
    println!(
        "(c) back at zero on the activators {:?} after idle",
        idle.elapsed()
    );

    // (b) 200 first requests at once.
    let started = Instant::now();
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let (web, host) = (scene.web, scene.host.clone());
            tokio::spawn(async move { send(web, &host, "/", Duration::from_secs(120)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.unwrap());
    }
    println!("(b) 200 at once answered within {:?}", started.elapsed());
    let wrong: Vec<&Outcome> = answers
        .iter()
        .filter(|a| {
            !matches!(a, Outcome::Answered { status: 200, cold_start: Some(_), body }
                if body.contains("on web-"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of 200 not answered 200 by web with the cold-start header: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Each reached the app exactly once: the proxies in front of it counted 200, no more.
    let counted = scene.web_requests().await;
    assert_eq!(counted, 200, "requests web's proxies counted");
}

/// (d) While both activators hold requests (the workload woken by KEDA, its pod held back by a
/// scheduling gate), the one holding most is deleted: it drains, the Service's slice follows its
/// replacement, and once the pod may start every request of every client is answered 200: none
/// fails. A client may send a request again only when it never went out (refused, reset or
/// unreachable before sending); those are counted and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_an_activator_deleted_while_holding_under_load_loses_no_request_and_the_slice_follows_its_replacement(
) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let scene = Scene::start(
        TestBed::shared().await.unwrap(),
        json!({"maxReplicas": 1, "scaleToZeroAfter": "30s", "pollingInterval": "2s"}),
        true,
    )
    .await;
    let tb = &scene.tb;
    let before = ready_pods(tb, ACTIVATOR);

    let clients = 8;
    let load = Load::start(scene.web, &scene.host, clients);
    // KEDA wakes web; its pod waits at the gate, so every client's request stays held.
    let gated = eventually("web woken, its pod held at the gate", 60, || async {
        let p = pods(tb, "web");
        let gated = p.len() == 1 && p[0]["spec"]["schedulingGates"][0]["name"] == HOLD_GATE;
        (replicas(tb, "web").0 == 1 && gated).then(|| p[0]["metadata"]["name"].clone())
    })
    .await;
    let held = eventually("all clients' requests held", 60, || async {
        let mut held = Vec::new();
        for (name, ip) in &before {
            let stats = admin_json(at(ip, 15091), "/stats").await?;
            held.push((stats["held_total"].as_u64()?, name.clone(), ip.clone()));
        }
        (held.iter().map(|h| h.0).sum::<u64>() == clients as u64).then_some(held)
    })
    .await;
    let (victim_held, victim, victim_ip) = held.iter().max().cloned().unwrap();
    println!("holding {held:?}; deleting {victim}");
    tb.kubectl(&["delete", "pod", &victim, "--wait=false"])
        .unwrap();
    // More clients arrive while it drains and the slice changes: wherever kube-proxy sends them,
    // they are held too.
    let late = Load::start(scene.web, &scene.host, 4);
    let after = eventually(
        "the Service's slice on the survivor and the replacement",
        90,
        || async {
            let act = ready_pods(tb, ACTIVATOR);
            let (proxy, _) = slice_ready(tb, "web-inflight-proxy")?;
            (act.len() == 2 && !ips(&act).contains(&victim_ip) && proxy == ips(&act)).then_some(act)
        },
    )
    .await;
    println!("slice follows: {:?} -> {:?}", ips(&before), ips(&after));
    assert_eq!(replicas(tb, "web").1, 0, "still no web pod ready");
    assert_eq!(
        load.answered() + late.answered(),
        0,
        "answered before any pod was ready"
    );

    // The pod may start: what every activator holds (the deleted one's too, while it drains) is
    // answered, and the clients go on through the Service in serve mode.
    let pod = gated.as_str().unwrap();
    tb.kubectl(&[
        "patch",
        "pod",
        pod,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/schedulingGates"}]"#,
    ])
    .unwrap();
    let woke = Instant::now();
    eventually(
        "every held request answered, then more in serve mode",
        120,
        || async { (load.answered() >= clients as u64 + 200).then_some(()) },
    )
    .await;
    eventually("the late clients answered too", 60, || async {
        (late.answered() >= 4).then_some(())
    })
    .await;
    let took = woke.elapsed();
    let (tally, late) = (load.finish().await, late.finish().await);
    let mut failures = tally.failures.lock().unwrap().clone();
    failures.extend(late.failures.lock().unwrap().iter().cloned());
    let count = |f: fn(&Tally) -> &AtomicU64| {
        f(&tally).load(Ordering::Relaxed) + f(&late).load(Ordering::Relaxed)
    };
    let mut resent_why = tally.resent_why.lock().unwrap().clone();
    for (why, n) in late.resent_why.lock().unwrap().iter() {
        *resent_why.entry(why.clone()).or_default() += n;
    }
    println!(
        "(d) {} answered ({} after a hold) within {took:?} of the pod's start; {} sent again \
         (never sent before): {resent_why:?}; {} failed: {:?}; the deleted activator held \
         {victim_held}",
        count(|t| &t.answered),
        count(|t| &t.cold_starts),
        count(|t| &t.resent),
        failures.len(),
        &failures[..failures.len().min(10)],
    );
    assert!(failures.is_empty(), "requests failed");
    assert!(count(|t| &t.cold_starts) >= clients as u64 + 4);
}
