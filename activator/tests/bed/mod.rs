//! The scene the activator's test bed tests and the cold-start benchmark
//! (`examples/cold_start.rs`, `bench/cold-start.sh`) stand on, everything around the activator
//! real: the injector (in this process, behind a MutatingWebhookConfiguration of the scene's own)
//! adds inflight-proxy to the pods of a labelled namespace's demo Deployment; the aggregator runs
//! in the cluster and real KEDA scales on it; the operator (in this process, on a runtime of its
//! own thread) switches the Service `web` between the activators and the pods; two replicas of the
//! real `inflight-activator` image run in the cluster under the chart's RBAC
//! (`charts/inflight/templates/activator-rbac.yaml`, and `aggregator-rbac.yaml` for the aggregator), watching only the scene's namespace. Clients
//! on this host call the Service's ClusterIP (the bed routes the Service range to its node), with
//! the Host a client in the cluster would send.
//!
//! The operator and the injector run in this process because Cargo builds their binaries only for
//! their own packages' tests; each gets the library's `run` with the flags its binary takes.
//!
//! Included by `tests/testbed.rs` (`mod bed;`) and by `examples/cold_start.rs` (`#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use clap::Parser as _;
use inflight_testbed::images::image_ref;
use inflight_testbed::{eventually, TestBed};
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// A scheduling gate the second test puts on the workload's pods, so that the workload stays
/// without a ready pod (proxy mode) for as long as the test needs, after KEDA has woken it.
pub const HOLD_GATE: &str = "inflight.dev/test-hold";

pub use inflight_testbed::manifests::ACTIVATOR;

// ---------------------------------------------------------------------------------------------
// Requests, sent by hand so that the test knows whether a failed one was ever sent.
pub use inflight_testbed::traffic::{admin_json, admin_text, at, send, Outcome};

pub use inflight_testbed::query::{cluster_ip, get, pods, ready_pods, replicas, slice_ready};

pub fn ips(pods: &[(String, String)]) -> Vec<String> {
    pods.iter().map(|(_, ip)| ip.clone()).collect()
}

/// `inflight_aggregator_scaler_calls_total{method="<method>"}` in a `/metrics` text.
pub fn scaler_calls(metrics: &str, method: &str) -> u64 {
    let label = format!("method=\"{method}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("inflight_aggregator_scaler_calls_total{") && l.contains(&label))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The activators (two replicas, the chart's ServiceAccount) and their Service, as
/// [`inflight_testbed::manifests::activators`] has them.
pub use inflight_testbed::manifests::activators;

/// `web`: the demo app (each request takes `latency`; the tests' takes 50 ms) as a user writes it,
/// at zero replicas, and its Service as it was before inflight. The injector adds the proxy to its
/// pods.
pub fn web(gated: bool, latency: &str) -> Value {
    let mut pod = json!({"terminationGracePeriodSeconds": 30, "containers": [{
        "name": "app", "image": image_ref("inflight-demo-app"), "imagePullPolicy": "Never",
        "args": ["serve", "--listen", "0.0.0.0:8080", "--latency", latency],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "securityContext": inflight_testbed::manifests::restricted(),
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

pub fn hta(spec: Value) -> Value {
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
pub struct Background {
    name: &'static str,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    pub fn start<F, Fut>(name: &'static str, run: F) -> Self
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What every test of this process shares: the admin kubeconfig in `KUBECONFIG` (the operator's
/// and the injector's `run` take their client from it, as their binaries do), and the log of
/// both in a file.
pub fn process_setup(tb: &TestBed) -> std::path::PathBuf {
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
/// namespace only. Returns it and its admin address.
pub async fn injector(tb: &TestBed, aggregator: &str) -> (Background, SocketAddr) {
    let host = tb.layout().host_ip();
    let dir = std::env::temp_dir().join(format!("inflight-activator-bed-{}", tb.namespace()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) =
        inflight_testbed::pki::serving_cert(tb.layout(), &[host.to_string()]).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    let listen = SocketAddr::from((host, free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = inflight_injector::Config::try_parse_from([
        "inflight-injector",
        "--listen",
        &listen.to_string(),
        "--admin-listen",
        &admin.to_string(),
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
    (running, admin)
}

/// The operator, reconciling the test's namespace, with the activator Service of the test; its
/// TLS bootstrap makes the aggregator's certificates and KEDA's client certificate.
pub fn operator(tb: &TestBed, aggregator_dial: &str) -> Background {
    let ns = tb.namespace();
    let mut args = vec![
        "inflight-operator".to_owned(),
        "--admin-listen".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        "--watch-namespace".to_owned(),
        ns.to_owned(),
        "--namespace".to_owned(),
        ns.to_owned(),
        "--identity".to_owned(),
        "activator-testbed".to_owned(),
        "--activator-service".to_owned(),
        format!("{ns}/{ACTIVATOR}"),
        "--resync-interval".to_owned(),
        "10s".to_owned(),
    ];
    args.extend(inflight_testbed::chart::operator_args(ns));
    args.extend(["--aggregator-dial".to_owned(), aggregator_dial.to_owned()]);
    let config = inflight_operator::Config::try_parse_from(args).unwrap();
    Background::start("inflight-operator", move |shutdown| {
        inflight_operator::run(config, shutdown)
    })
}

// ---------------------------------------------------------------------------------------------
// The scene the tests and the cold-start benchmark stand on.

pub struct Scene {
    pub tb: TestBed,
    /// The Service `web`'s ClusterIP and port.
    pub web: SocketAddr,
    /// What a client in the cluster would send as Host.
    pub host: String,
    /// The aggregator pod's admin port (its ingest port, 9090, and scaler port, 9091, are on the
    /// same IP).
    pub aggregator_admin: SocketAddr,
    /// The injector's admin port (in this process).
    pub injector_admin: SocketAddr,
    operator: Option<Background>,
    injector: Option<Background>,
}

impl Scene {
    /// Everything up, the HTTPAutoscaler `web` with `spec` made, and `web` at zero with its
    /// Service on the two activators; `web`'s app takes 50 ms a request.
    pub async fn start(tb: TestBed, spec: Value, gated: bool) -> Self {
        Self::start_with_latency(tb, spec, gated, "50ms").await
    }

    /// [`Scene::start`] with `web`'s app taking `latency` (a humantime duration) a request.
    pub async fn start_with_latency(tb: TestBed, spec: Value, gated: bool, latency: &str) -> Self {
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
            injector_admin: unknown,
            operator: None,
            injector: None,
        };
        let tb = &scene.tb;
        // Every pod of the scene (the aggregator, the activators, web with the proxy the
        // injector adds) passes the restricted Pod Security Standard, or it would not be admitted.
        tb.enforce_restricted().await.unwrap();
        inflight_testbed::chart::install_crd(tb.layout()).unwrap();
        let ingest = format!("http://inflight-aggregator-ingest.{ns}.svc.cluster.local:9090");
        let (injector, injector_admin) = injector(tb, &ingest).await;
        scene.injector = Some(injector);
        scene.injector_admin = injector_admin;
        // The activators and the aggregator under the chart's rights; the aggregator reviews
        // every report's token, and takes held requests from the activators' ServiceAccount only.
        for rbac in ["activator-rbac.yaml", "aggregator-rbac.yaml"] {
            inflight_testbed::chart::apply_rbac(tb, rbac).unwrap();
        }
        let activators_sa = format!("{ns}/{ACTIVATOR}");
        tb.apply(&inflight_testbed::manifests::aggregator(&[
            "--activator-service-accounts",
            &activators_sa,
        ]))
        .unwrap();
        tb.apply(&activators(&ns, &ingest)).unwrap();
        tb.apply(&web(gated, latency)).unwrap();
        // The operator first: the aggregator starts once it has its certificates.
        let aggregator_dial = format!("{}:9091", cluster_ip(tb, "inflight-aggregator"));
        scene.operator = Some(operator(&scene.tb, &aggregator_dial));
        let tb = &scene.tb;
        eventually("the aggregator and two activators ready", 180, || async {
            (replicas(tb, "inflight-aggregator").1 == 1 && replicas(tb, ACTIVATOR).1 == 2)
                .then_some(())
        })
        .await;
        let aggregator_ip = ready_pods(tb, "inflight-aggregator")[0].1.clone();
        scene.web = at(&cluster_ip(tb, "web"), 80);
        scene.aggregator_admin = at(&aggregator_ip, 15093);
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
    pub async fn at_zero_on_the_activators(&self, secs: u64) -> Vec<(String, String)> {
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
    pub async fn web_requests(&self) -> u64 {
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
    pub fn diagnose(&self) {
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
