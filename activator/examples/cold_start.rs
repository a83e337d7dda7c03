//! The cold-start breakdown on the test bed (issue 12), run by `bench/cold-start.sh`: the first
//! request for a workload at zero, from the moment it is sent to its response, split into the
//! steps it waits for, so that inflight's own share stands beside what Kubernetes and KEDA take.
//! Nothing here asserts a number: it prints each activation and writes every figure as JSON.
//!
//! The scene is the activator's test bed tests' (`tests/bed/mod.rs`): the aggregator and two
//! activator replicas in the cluster, the injector and the operator in this process, real KEDA,
//! the injected demo Deployment `web` (its app answering at once, `--latency 0s`) behind an
//! HTTPAutoscaler with minReplicas 0, maxReplicas 1. For each activation, once `web` is at zero
//! with no pod left and its Service on the activators, one request goes from this host to the
//! Service's ClusterIP, and this process timestamps, on its own monotonic clock, each step as it
//! sees it:
//!
//!   sent        the request is sent (before the connect);
//!   pushed      the aggregator pushes `true` on a StreamIsActive stream of this process's own,
//!               opened before, with the ScaledObjectRef KEDA uses (the ScaledObject's trigger
//!               metadata): the same push KEDA gets;
//!   scaled      a watch event of Deployment `web` with `spec.replicas` ≥ 1 arrives;
//!   created     the first watch event of the new pod arrives (the ReplicaSet made it);
//!   scheduled   a pod event with `spec.nodeName`;
//!   proxy       a pod event with the inflight-proxy container (a native sidecar: an init
//!               container with restartPolicy Always) `state.running`;
//!   app         a pod event with the app container `state.running` (the kubelet starts it once
//!               the proxy's startup probe passed);
//!   ready       the pod's sidecar answers `GET :15090/readyz` 200 to this process, which polls it
//!               every 2 ms from the moment a pod event gives the pod's IP;
//!   answered    the response (200 with `X-Inflight-Cold-Start`) has arrived at the client.
//!
//! Every component runs on this machine, and every step is an arrival at this process, so the
//! steps share one clock. Kubernetes' own timestamps (conditions' `lastTransitionTime`) have one
//! second's resolution and are not used: watch events are, which arrive a few milliseconds after
//! the change (the API server's write and fan-out). The kubelet, though, reports a pod's container
//! states in batches (its status updates follow its PLEG relisting, about once a second), so the
//! containers' own start is also taken from their logs: the time containerd's CRI logger stamped
//! (nanoseconds, this host's wall clock) on the proxy's `inflight-proxy serving` line and the app's
//! `inflight-demo-app serving` line, each written once its port listens:
//!
//!   proxy_serving, app_serving   those lines' timestamps, less the wall-clock time of `sent`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/bed/mod.rs"]
mod bed;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bed::{admin_text, at, get, send, Outcome, Scene};
use clap::Parser;
use futures_util::StreamExt;
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::ScaledObjectRef;
use inflight_testbed::{eventually, TestBed};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

#[derive(Debug, Parser)]
struct Args {
    /// Activations to time.
    #[arg(long, default_value_t = 20)]
    n: usize,
    /// Where to write every figure, as JSON.
    #[arg(long)]
    out: PathBuf,
    /// The HTTPAutoscaler's `scaleToZeroAfter` (idle time before KEDA takes `web` back to zero).
    #[arg(long, default_value = "10s")]
    scale_to_zero_after: String,
    /// KEDA's `pollingInterval` (how often it asks IsActive; the scale-down to zero waits for
    /// it, the wake-up does not: it is pushed).
    #[arg(long, default_value = "2s")]
    polling_interval: String,
    /// How long to wait, once `web` is at zero with no pod left, before sending the request
    /// (what went on before settles).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Interval of the polls of the new pod's sidecar `/readyz`.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    readyz_poll: Duration,
}

/// When each step was seen, on this process's clock.
#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    pushed: Option<Instant>,
    scaled: Option<Instant>,
    created: Option<Instant>,
    scheduled: Option<Instant>,
    /// A pod event gave the pod's IP (its sandbox and network are up).
    pod_ip: Option<Instant>,
    proxy_running: Option<Instant>,
    app_running: Option<Instant>,
    ready: Option<Instant>,
    /// The pod's `Ready` condition `True` (the kubelet's probes), for comparison only.
    kubelet_ready: Option<Instant>,
}

impl Marks {
    fn complete(&self) -> bool {
        [
            self.pushed,
            self.scaled,
            self.created,
            self.scheduled,
            self.pod_ip,
            self.proxy_running,
            self.app_running,
            self.ready,
            self.kubelet_ready,
        ]
        .iter()
        .all(Option::is_some)
    }
}

type Shared = Arc<Mutex<Marks>>;

fn mark(marks: &Shared, now: Instant, slot: fn(&mut Marks) -> &mut Option<Instant>) {
    slot(&mut marks.lock().unwrap()).get_or_insert(now);
}

/// The pod's start as its containers' logs tell it (finer than the kubelet's status updates).
const LOG_CHAIN: &[&str] = &["scheduled", "proxy_serving", "app_serving", "ready"];

/// The order of the steps, and each one's key in the JSON.
const CHAIN: &[&str] = &[
    "sent",
    "pushed",
    "scaled",
    "created",
    "scheduled",
    "proxy_running",
    "app_running",
    "ready",
    "answered",
];

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let spec = json!({"maxReplicas": 1, "scaleToZeroAfter": args.scale_to_zero_after,
                      "pollingInterval": args.polling_interval});
    let scene =
        Scene::start_with_latency(TestBed::shared().await.unwrap(), spec.clone(), false, "0s")
            .await;
    let ns = scene.tb.namespace().to_owned();

    // The ScaledObjectRef KEDA sends: the operator's trigger metadata, the ScaledObject's name.
    let so = get(&scene.tb, &["scaledobject/web"]).expect("the ScaledObject web");
    let scaler_metadata: HashMap<String, String> = so["spec"]["triggers"][0]["metadata"]
        .as_object()
        .expect("trigger metadata")
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    let object = ScaledObjectRef {
        name: so["metadata"]["name"].as_str().unwrap().to_owned(),
        namespace: so["metadata"]["namespace"].as_str().unwrap().to_owned(),
        scaler_metadata: scaler_metadata.clone(),
    };
    let grpc = format!("http://{}:9090", scene.aggregator_admin.ip());
    let mut keda = ExternalScalerClient::connect(grpc.clone()).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(scene.tb.client(), &ns);
    let pods: Api<Pod> = Api::namespaced(scene.tb.client(), &ns);
    println!(
        "cold_start: {} activations of web in {ns}; StreamIsActive from {grpc} with {:?}",
        args.n, scaler_metadata
    );

    let mut activations = Vec::new();
    let begun = Instant::now();
    for i in 1..=args.n {
        // At zero, on the activators, and nothing of the last pod left (its shutdown would
        // share the two cores with the next start).
        let cycle = Instant::now();
        scene.at_zero_on_the_activators(300).await;
        eventually("no pod of web left", 180, || async {
            let list = get(&scene.tb, &["pods", "-l", "app=web"])?;
            list["items"].as_array()?.is_empty().then_some(())
        })
        .await;
        let waited = cycle.elapsed();
        tokio::time::sleep(args.settle).await;

        let marks: Shared = Arc::default();
        // The push stream, opened before the request; the aggregator says the state now first.
        let mut pushes = keda
            .stream_is_active(object.clone())
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match pushes.message().await {
                    Ok(Some(m)) if !m.result => return,
                    Ok(Some(_)) => {}
                    other => panic!("StreamIsActive ended: {other:?}"),
                }
            }
        })
        .await;
        assert!(first.is_ok(), "the aggregator still says web is active");
        let (ip_tx, ip_rx) = watch::channel(None);
        let (dep_ready, dep_listed) = oneshot::channel();
        let (pod_ready, pods_listed) = oneshot::channel();
        let tasks = vec![
            tokio::spawn(watch_deployment(
                deployments.clone(),
                marks.clone(),
                dep_ready,
            )),
            tokio::spawn(watch_pods(pods.clone(), marks.clone(), ip_tx, pod_ready)),
            tokio::spawn({
                let marks = marks.clone();
                async move {
                    while let Ok(Some(m)) = pushes.message().await {
                        if m.result {
                            mark(&marks, Instant::now(), |m| &mut m.pushed);
                            break;
                        }
                    }
                }
            }),
            tokio::spawn(poll_readyz(ip_rx, marks.clone(), args.readyz_poll)),
        ];
        dep_listed.await.unwrap();
        pods_listed.await.unwrap();
        let reviews_before = injector_reviews(scene.injector_admin).await;

        let sent_wall = SystemTime::now();
        let sent = Instant::now();
        let answer = send(scene.web, &scene.host, "/", Duration::from_secs(120)).await;
        let answered = Instant::now();
        // Watch events may come after the response: wait a little for the rest.
        let until = Instant::now() + Duration::from_secs(15);
        while !marks.lock().unwrap().complete() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in &tasks {
            t.abort();
        }
        // The injector's own time on the new pod's admission (inside "scaled → created").
        let review = match (reviews_before, injector_reviews(scene.injector_admin).await) {
            (Some((s0, n0)), Some((s1, n1))) if n1 > n0 => {
                Some(((s1 - s0) * 1e4).round() / 10.0 / (n1 - n0))
            }
            _ => None,
        };
        // The containers' own start, from their logs' timestamps.
        let since_sent = |ts: Option<i128>| {
            let wall = sent_wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_nanos();
            Some(((ts? - i128::try_from(wall).ok()?) as f64 / 1e5).round() / 10.0)
        };
        let pod = get(&scene.tb, &["pods", "-l", "app=web"]).and_then(|l| {
            l["items"][0]["metadata"]["name"]
                .as_str()
                .map(str::to_owned)
        });
        let (proxy_serving, app_serving) = match &pod {
            Some(pod) => (
                since_sent(log_line_at(
                    &scene.tb,
                    pod,
                    "inflight-proxy",
                    "inflight-proxy serving",
                )),
                since_sent(log_line_at(
                    &scene.tb,
                    pod,
                    "app",
                    "inflight-demo-app serving",
                )),
            ),
            None => (None, None),
        };
        let m = *marks.lock().unwrap();
        let ms = |t: Option<Instant>| {
            t.map(|t| {
                let d = if t >= sent {
                    t.duration_since(sent).as_secs_f64()
                } else {
                    -sent.duration_since(t).as_secs_f64()
                };
                (d * 1e4).round() / 10.0
            })
        };
        let (ok, status, cold_start, why) = match &answer {
            Outcome::Answered {
                status,
                cold_start,
                body,
            } => {
                let header = cold_start
                    .as_deref()
                    .and_then(|v| v.strip_suffix("ms"))
                    .and_then(|v| v.parse::<f64>().ok());
                let ok = *status == 200 && header.is_some() && body.contains("on web-");
                (ok, Some(*status), header, body.trim().to_owned())
            }
            Outcome::NotSent(why) | Outcome::Failed(why) => (false, None, None, why.clone()),
        };
        let record = json!({
            "activation": i,
            "ok": ok,
            "pod": pod,
            "status": status,
            "cold_start_header_ms": cold_start,
            "waited_for_zero_s": waited.as_secs_f64(),
            "injector_review_ms": review,
            "ms": {
                "sent": 0.0,
                "pushed": ms(m.pushed),
                "scaled": ms(m.scaled),
                "created": ms(m.created),
                "scheduled": ms(m.scheduled),
                "pod_ip": ms(m.pod_ip),
                "proxy_serving": proxy_serving,
                "proxy_running": ms(m.proxy_running),
                "app_serving": app_serving,
                "app_running": ms(m.app_running),
                "ready": ms(m.ready),
                "kubelet_ready": ms(m.kubelet_ready),
                "answered": ms(Some(answered)),
            },
        });
        let at_ms = &record["ms"];
        let line: Vec<String> = CHAIN[1..]
            .iter()
            .map(|k| format!("{k} {}", at_ms[*k]))
            .collect();
        println!(
            "activation {i}/{}: {}; header {}; {}{}",
            args.n,
            line.join(", "),
            cold_start.map_or("-".into(), |c| format!("{c}ms")),
            if ok { "ok" } else { "NOT OK: " },
            if ok { String::new() } else { why }
        );
        activations.push(record);
    }

    let good: Vec<&Value> = activations.iter().filter(|a| a["ok"] == true).collect();
    let at = |a: &Value, k: &str| a["ms"][k].as_f64();
    let between = |from: &str, to: &str| -> Vec<f64> {
        good.iter()
            .filter_map(|a| Some(at(a, to)? - at(a, from)?))
            .collect()
    };
    let mut steps = Vec::new();
    for w in CHAIN.windows(2) {
        steps.push(json!({"from": w[0], "to": w[1], "ms": summary(between(w[0], w[1]))}));
    }
    let mut log_steps = Vec::new();
    for w in LOG_CHAIN.windows(2) {
        log_steps.push(json!({"from": w[0], "to": w[1], "ms": summary(between(w[0], w[1]))}));
    }
    let ours: Vec<f64> = good
        .iter()
        .filter_map(|a| Some(at(a, "pushed")? + (at(a, "answered")? - at(a, "ready")?)))
        .collect();
    let theirs = between("pushed", "ready");
    let total = between("sent", "answered");
    let field = |k: &str| -> Vec<f64> { good.iter().filter_map(|a| a[k].as_f64()).collect() };
    let offsets: serde_json::Map<String, Value> = [
        "pushed",
        "scaled",
        "created",
        "scheduled",
        "pod_ip",
        "proxy_serving",
        "proxy_running",
        "app_serving",
        "app_running",
        "ready",
        "kubelet_ready",
        "answered",
    ]
    .iter()
    .map(|k| (k.to_string(), summary(between("sent", k))))
    .collect();
    let result = json!({
        "n": args.n,
        "ok": good.len(),
        "namespace": ns,
        "hta_spec": spec,
        "web_latency": "0s",
        "readyz_poll_ms": args.readyz_poll.as_secs_f64() * 1e3,
        "settle_s": args.settle.as_secs_f64(),
        "scaler_metadata": scaler_metadata,
        "seconds": begun.elapsed().as_secs_f64(),
        "steps": steps,
        "log_steps": log_steps,
        "after_sent": offsets,
        "ours": summary(ours),
        "kubernetes_and_keda": summary(theirs),
        "total": summary(total),
        "cold_start_header": summary(field("cold_start_header_ms")),
        "injector_review": summary(field("injector_review_ms")),
        "activations": activations,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!(
        "cold_start: {} of {} activations answered 200 with X-Inflight-Cold-Start; ours {}, \
         Kubernetes+KEDA {}, total {}; figures in {}",
        good.len(),
        args.n,
        result["ours"],
        result["kubernetes_and_keda"],
        result["total"],
        args.out.display()
    );
}

/// Deployment `web`'s events: the first with `spec.replicas` ≥ 1 is KEDA's scaling from zero.
async fn watch_deployment(api: Api<Deployment>, marks: Shared, listed: oneshot::Sender<()>) {
    let config = watcher::Config::default().fields("metadata.name=web");
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listed = Some(listed);
    while let Some(event) = events.next().await {
        let now = Instant::now();
        match event {
            Ok(watcher::Event::InitDone) => {
                if let Some(l) = listed.take() {
                    let _ = l.send(());
                }
            }
            Ok(watcher::Event::Apply(d)) => {
                if d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) >= 1 {
                    mark(&marks, now, |m| &mut m.scaled);
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("cold_start: the Deployment's watch: {e}"),
        }
    }
}

/// The events of `web`'s pods (none exists when it starts): created, scheduled, IP, containers
/// running, Ready.
async fn watch_pods(
    api: Api<Pod>,
    marks: Shared,
    ip: watch::Sender<Option<String>>,
    listed: oneshot::Sender<()>,
) {
    let config = watcher::Config::default().labels("app=web");
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listed = Some(listed);
    let running = |statuses: Option<&Vec<ContainerStatus>>, name: &str| {
        statuses.is_some_and(|s| {
            s.iter()
                .any(|c| c.name == name && c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
    };
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let pod = match event {
            Ok(watcher::Event::InitDone) => {
                if let Some(l) = listed.take() {
                    let _ = l.send(());
                }
                continue;
            }
            Ok(watcher::Event::Apply(pod)) => pod,
            Ok(_) => continue,
            Err(e) => {
                eprintln!("cold_start: the pods' watch: {e}");
                continue;
            }
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        mark(&marks, now, |m| &mut m.created);
        if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
            mark(&marks, now, |m| &mut m.scheduled);
        }
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        if let Some(pod_ip) = status.pod_ip.as_ref().filter(|i| !i.is_empty()) {
            mark(&marks, now, |m| &mut m.pod_ip);
            ip.send_if_modified(|current| {
                let new = current.is_none();
                if new {
                    *current = Some(pod_ip.clone());
                }
                new
            });
        }
        // A native sidecar is an init container; on clusters before 1.29 it is a container.
        if running(status.init_container_statuses.as_ref(), "inflight-proxy")
            || running(status.container_statuses.as_ref(), "inflight-proxy")
        {
            mark(&marks, now, |m| &mut m.proxy_running);
        }
        if running(status.container_statuses.as_ref(), "app") {
            mark(&marks, now, |m| &mut m.app_running);
        }
        if status
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        {
            mark(&marks, now, |m| &mut m.kubelet_ready);
        }
    }
}

/// Once the pod has an IP: `GET /readyz` on its sidecar's admin port every `every`, until 200.
async fn poll_readyz(mut ip: watch::Receiver<Option<String>>, marks: Shared, every: Duration) {
    let ip = loop {
        if let Some(ip) = ip.borrow_and_update().clone() {
            break ip;
        }
        if ip.changed().await.is_err() {
            return;
        }
    };
    let admin = at(&ip, 15090);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            send(admin, "readyz", "/readyz", Duration::from_millis(500)),
        )
        .await;
        if let Ok(Outcome::Answered { status: 200, .. }) = answer {
            mark(&marks, Instant::now(), |m| &mut m.ready);
            return;
        }
    }
}

/// When (ns since the epoch, this host's wall clock) the first line of `container`'s log in `pod`
/// that contains `needle` was stamped by containerd's CRI logger.
fn log_line_at(tb: &TestBed, pod: &str, container: &str, needle: &str) -> Option<i128> {
    let text = tb
        .kubectl(&["logs", pod, "-c", container, "--timestamps"])
        .ok()?;
    let line = text.lines().find(|l| l.contains(needle))?;
    let stamp = line.split_whitespace().next()?;
    Some(
        stamp
            .parse::<k8s_openapi::jiff::Timestamp>()
            .ok()?
            .as_nanosecond(),
    )
}

/// (sum of seconds, count) of the injector's `review_duration` histogram.
async fn injector_reviews(admin: SocketAddr) -> Option<(f64, f64)> {
    let text = admin_text(admin, "/metrics").await?;
    let value = |suffix: &str| {
        text.lines().find_map(|l| {
            let (name, value) = l.split_once(' ')?;
            let name = name.split('{').next()?;
            name.ends_with(suffix)
                .then(|| value.trim().parse::<f64>().ok())?
        })
    };
    Some((
        value("injector_review_duration_seconds_sum")?,
        value("injector_review_duration_seconds_count")?,
    ))
}

/// Nearest rank: with 20 values p99 is the largest.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({
        "n": ms.len(),
        "p50_ms": percentile(&ms, 50.0),
        "p99_ms": percentile(&ms, 99.0),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
        "min_ms": ms.first().copied().unwrap_or(f64::NAN),
    })
}
