//! A cold start on the bed, step by step: the first request for a workload at zero, from the moment
//! it is sent to its response, split into the steps it waits for, so that inflight's own share
//! stands beside what Kubernetes and KEDA take. Shared by the benchmarks that time it: the
//! activator's scene (`activator/examples/cold_start.rs`, `bench/cold-start.sh`) and the chart
//! installed with Helm (`e2e/examples/installed.rs`, `bench/installed.sh`).
//!
//! For one activation, [`Watches::start`] opens, before the request is sent, what this process
//! timestamps on its own monotonic clock as each step arrives:
//!
//!   sent        the request is sent (before the connect; the caller's);
//!   pushed      the aggregator pushes `true` on a StreamIsActive stream of this process's own,
//!               opened before with the ScaledObjectRef KEDA uses ([`scaled_object_ref`],
//!               [`inactive_stream`]): the same push KEDA gets;
//!   scaled      a watch event of the Deployment with `spec.replicas` ≥ 1 arrives;
//!   created     the first watch event of the new pod arrives (the ReplicaSet made it);
//!   scheduled   a pod event with `spec.nodeName`;
//!   proxy       a pod event with the inflight-proxy container (a native sidecar: an init
//!               container with restartPolicy Always) `state.running`;
//!   app         a pod event with the app container `state.running` (the kubelet starts it once
//!               the proxy's startup probe passed);
//!   ready       the pod's sidecar answers `GET :15090/readyz` 200 to this process, which polls it
//!               from the moment a pod event gives the pod's IP;
//!   answered    the response has arrived at the client (the caller's).
//!
//! Every component runs on this machine, and every step is an arrival at this process, so the
//! steps share one clock. Kubernetes' own timestamps (conditions' `lastTransitionTime`) have one
//! second's resolution and are not used: watch events are, which arrive a few milliseconds after
//! the change (the API server's write and fan-out). The kubelet, though, reports a pod's container
//! states in batches (its status updates follow its PLEG relisting, about once a second), so the
//! containers' own start is also taken from their logs ([`Activation::record`]): the time
//! containerd's CRI logger stamped (nanoseconds, this host's wall clock) on the proxy's
//! `inflight-proxy serving` line and the app's `inflight-demo-app serving` line, each written once
//! its port listens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures_util::StreamExt;
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::{IsActiveResponse, ScaledObjectRef};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::traffic::{admin_text, send, Outcome};
use crate::{kubectl_run, Layout, TestBed};

/// When each step was seen, on this process's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct Marks {
    pub pushed: Option<Instant>,
    pub scaled: Option<Instant>,
    pub created: Option<Instant>,
    pub scheduled: Option<Instant>,
    /// A pod event gave the pod's IP (its sandbox and network are up).
    pub pod_ip: Option<Instant>,
    pub proxy_running: Option<Instant>,
    pub app_running: Option<Instant>,
    pub ready: Option<Instant>,
    /// The pod's `Ready` condition `True` (the kubelet's probes), for comparison only.
    pub kubelet_ready: Option<Instant>,
}

impl Marks {
    /// Every step seen (the push only where it is watched).
    fn complete(&self, pushes: bool) -> bool {
        (self.pushed.is_some() || !pushes)
            && [
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
    slot(&mut marks.lock().unwrap_or_else(PoisonError::into_inner)).get_or_insert(now);
}

/// The order of the steps, and each one's key in the JSON.
pub const CHAIN: &[&str] = &[
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

/// The pod's start as its containers' logs tell it (finer than the kubelet's status updates).
pub const LOG_CHAIN: &[&str] = &["scheduled", "proxy_serving", "app_serving", "ready"];

/// Each step's time after `sent`, in the summary, in the order they come.
pub const OFFSETS: &[&str] = &[
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
];

/// The ScaledObjectRef KEDA sends for ScaledObject `so` (its trigger metadata, its name).
pub fn scaled_object_ref(so: &Value) -> ScaledObjectRef {
    let scaler_metadata: HashMap<String, String> = so["spec"]["triggers"][0]["metadata"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    ScaledObjectRef {
        name: so["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        namespace: so["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        scaler_metadata,
    }
}

/// A StreamIsActive stream for `object`, once the aggregator has said on it that the workload is
/// inactive (it says the state now first): the push that follows is the activation's.
pub async fn inactive_stream(
    keda: &mut ExternalScalerClient<Channel>,
    object: &ScaledObjectRef,
) -> Result<tonic::Streaming<IsActiveResponse>, String> {
    let mut pushes = keda
        .stream_is_active(object.clone())
        .await
        .map_err(|s| format!("StreamIsActive: {s}"))?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match pushes.message().await {
                Ok(Some(m)) if !m.result => return Ok(()),
                Ok(Some(_)) => {}
                other => return Err(format!("StreamIsActive ended: {other:?}")),
            }
        }
    })
    .await;
    match first {
        Ok(Ok(())) => Ok(pushes),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the aggregator still says the workload is active".into()),
    }
}

/// What to watch for one activation of a Deployment.
#[derive(Clone)]
pub struct Target {
    pub client: kube::Client,
    pub namespace: String,
    pub deployment: String,
    /// The label selector of its pods (`app=web`).
    pub selector: String,
    /// Interval of the polls of the new pod's sidecar `/readyz`.
    pub readyz_poll: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("namespace", &self.namespace)
            .field("deployment", &self.deployment)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

/// The watches of one activation, open before its request is sent.
#[derive(Debug)]
pub struct Watches {
    marks: Shared,
    pushes: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl Watches {
    /// Opens the watches of the Deployment and its pods (returning once both have listed what
    /// is there), the poll of the new pod's `/readyz`, and, given one from [`inactive_stream`],
    /// the wait for the push on `pushes`.
    pub async fn start(
        target: &Target,
        pushes: Option<tonic::Streaming<IsActiveResponse>>,
    ) -> Self {
        let marks: Shared = Arc::default();
        let (ip_tx, ip_rx) = watch::channel(None);
        let (dep_ready, dep_listed) = oneshot::channel();
        let (pod_ready, pods_listed) = oneshot::channel();
        let deployments: Api<Deployment> =
            Api::namespaced(target.client.clone(), &target.namespace);
        let pods: Api<Pod> = Api::namespaced(target.client.clone(), &target.namespace);
        let mut tasks = vec![
            tokio::spawn(watch_deployment(
                deployments,
                target.deployment.clone(),
                marks.clone(),
                dep_ready,
            )),
            tokio::spawn(watch_pods(
                pods,
                target.selector.clone(),
                marks.clone(),
                ip_tx,
                pod_ready,
            )),
            tokio::spawn(poll_readyz(ip_rx, marks.clone(), target.readyz_poll)),
        ];
        let watched = pushes.is_some();
        if let Some(mut pushes) = pushes {
            let marks = marks.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(m)) = pushes.message().await {
                    if m.result {
                        mark(&marks, Instant::now(), |m| &mut m.pushed);
                        break;
                    }
                }
            }));
        }
        let _ = dep_listed.await;
        let _ = pods_listed.await;
        Self {
            marks,
            pushes: watched,
            tasks,
        }
    }

    /// Waits (at most `within`) for the steps not seen yet (watch events may come after the
    /// response), closes the watches, and gives what was seen.
    pub async fn finish(self, within: Duration) -> Marks {
        let until = Instant::now() + within;
        let seen = || *self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        while !seen().complete(self.pushes) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in &self.tasks {
            t.abort();
        }
        seen()
    }
}

/// The knobs of a cold-start benchmark's activations, the same for every scene that times them.
#[derive(Debug, Clone, clap::Args)]
pub struct Knobs {
    /// The HTTPAutoscaler's `scaleToZeroAfter` (idle time before KEDA takes the workload back
    /// to zero).
    #[arg(long, default_value = "10s")]
    pub scale_to_zero_after: String,
    /// KEDA's `pollingInterval` (how often it asks IsActive; the scale-down to zero waits for
    /// it, the wake-up does not: it is pushed).
    #[arg(long, default_value = "2s")]
    pub polling_interval: String,
    /// How long to wait, once the workload is at zero with no pod left, before sending the
    /// request (what went on before settles).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Interval of the polls of the new pod's sidecar `/readyz`.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    pub readyz_poll: Duration,
}

/// Where one activation's request goes, and what is read around it.
#[derive(Debug)]
pub struct Request<'a> {
    pub target: &'a Target,
    /// The Service the request is sent to (its ClusterIP:port), with `Host: host`.
    pub addr: SocketAddr,
    pub host: &'a str,
    /// What the body of a good answer contains (`on web-`).
    pub marker: &'a str,
    /// The injectors' admin ports ([`injector_reviews`]).
    pub injectors: &'a [SocketAddr],
}

/// Times activation `number` of a workload at zero: the watches opened (and the push awaited on
/// `pushes`, from [`inactive_stream`]), `GET /` sent and answered, then every figure recorded
/// ([`Activation::record`]).
pub async fn activate(
    tb: &TestBed,
    request: &Request<'_>,
    number: usize,
    pushes: Option<tonic::Streaming<IsActiveResponse>>,
    waited_for_zero: Duration,
) -> Value {
    let watches = Watches::start(request.target, pushes).await;
    let reviews_before = injector_reviews(request.injectors).await;
    let sent_wall = SystemTime::now();
    let sent = Instant::now();
    let answer = send(request.addr, request.host, "/", Duration::from_secs(120)).await;
    let answered = Instant::now();
    let marks = watches.finish(Duration::from_secs(15)).await;
    Activation {
        number,
        sent_wall,
        sent,
        answered,
        answer: &answer,
        marker: request.marker,
        marks,
        waited_for_zero,
        injector_review_ms: review_ms(reviews_before, injector_reviews(request.injectors).await),
    }
    .record(tb, &request.target.selector)
}

/// One activation as it went, to be recorded.
#[derive(Debug)]
pub struct Activation<'a> {
    pub number: usize,
    pub sent_wall: SystemTime,
    pub sent: Instant,
    pub answered: Instant,
    pub answer: &'a Outcome,
    /// What the body of a good answer contains (`on web-`).
    pub marker: &'a str,
    pub marks: Marks,
    pub waited_for_zero: Duration,
    /// The injector's own time on the new pod's admission ([`injector_reviews`]).
    pub injector_review_ms: Option<f64>,
}

impl Activation<'_> {
    /// Every figure of the activation as JSON (`ms`: each step's time after `sent`), the pod's
    /// containers' log lines read from the pod of `selector` in the bed's namespace.
    pub fn record(&self, tb: &TestBed, selector: &str) -> Value {
        let sent_wall = self
            .sent_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .ok()
            .and_then(|n| i128::try_from(n).ok());
        let since_sent = |ts: Option<i128>| {
            // Nanoseconds to tenths of a millisecond: well inside f64's precision.
            #[allow(clippy::cast_precision_loss)]
            Some(((ts? - sent_wall?) as f64 / 1e5).round() / 10.0)
        };
        let pod = crate::query::get(tb, &["pods", "-l", selector]).and_then(|l| {
            l["items"][0]["metadata"]["name"]
                .as_str()
                .map(str::to_owned)
        });
        let (proxy_serving, app_serving) = match &pod {
            Some(pod) => (
                since_sent(log_line_at(
                    tb,
                    pod,
                    "inflight-proxy",
                    "inflight-proxy serving",
                )),
                since_sent(log_line_at(tb, pod, "app", "inflight-demo-app serving")),
            ),
            None => (None, None),
        };
        let m = self.marks;
        let sent = self.sent;
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
        let (ok, status, cold_start, why) = match self.answer {
            Outcome::Answered {
                status,
                cold_start,
                body,
            } => {
                let header = cold_start
                    .as_deref()
                    .and_then(|v| v.strip_suffix("ms"))
                    .and_then(|v| v.parse::<f64>().ok());
                let ok = *status == 200 && header.is_some() && body.contains(self.marker);
                (ok, Some(*status), header, body.trim().to_owned())
            }
            Outcome::NotSent(why) | Outcome::Failed(why) => (false, None, None, why.clone()),
        };
        json!({
            "activation": self.number,
            "ok": ok,
            "why": (!ok).then_some(why),
            "pod": pod,
            "status": status,
            "cold_start_header_ms": cold_start,
            "waited_for_zero_s": self.waited_for_zero.as_secs_f64(),
            "injector_review_ms": self.injector_review_ms,
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
                "answered": ms(Some(self.answered)),
            },
        })
    }
}

/// One line for a [`Activation::record`]: each step's time after `sent`, the header, ok or why.
pub fn line(record: &Value, n: usize) -> String {
    let steps: Vec<String> = CHAIN[1..]
        .iter()
        .map(|k| format!("{k} {}", record["ms"][*k]))
        .collect();
    let verdict = if record["ok"] == true {
        "ok".to_owned()
    } else {
        format!("NOT OK: {}", record["why"].as_str().unwrap_or_default())
    };
    format!(
        "activation {}/{n}: {}; header {}; {verdict}",
        record["activation"],
        steps.join(", "),
        record["cold_start_header_ms"]
            .as_f64()
            .map_or("-".into(), |c| format!("{c}ms")),
    )
}

/// The figures over the good activations' records: each step from the one before (`steps`,
/// `log_steps`), each step after `sent` (`after_sent`), ours ((pushed − sent) + (answered −
/// ready)), Kubernetes and KEDA's (ready − pushed), the total, the activator's own header and
/// the injector's review. Without a push (`pushed` unknown) ours and theirs are not split.
pub fn summarise(activations: &[Value]) -> Value {
    let good: Vec<&Value> = activations.iter().filter(|a| a["ok"] == true).collect();
    let at = |a: &Value, k: &str| a["ms"][k].as_f64();
    let between = |from: &str, to: &str| -> Vec<f64> {
        good.iter()
            .filter_map(|a| Some(at(a, to)? - at(a, from)?))
            .collect()
    };
    let steps: Vec<Value> = CHAIN
        .windows(2)
        .map(|w| json!({"from": w[0], "to": w[1], "ms": summary(between(w[0], w[1]))}))
        .collect();
    let log_steps: Vec<Value> = LOG_CHAIN
        .windows(2)
        .map(|w| json!({"from": w[0], "to": w[1], "ms": summary(between(w[0], w[1]))}))
        .collect();
    let ours: Vec<f64> = good
        .iter()
        .filter_map(|a| Some(at(a, "pushed")? + (at(a, "answered")? - at(a, "ready")?)))
        .collect();
    let field = |k: &str| -> Vec<f64> { good.iter().filter_map(|a| a[k].as_f64()).collect() };
    let offsets: serde_json::Map<String, Value> = OFFSETS
        .iter()
        .map(|k| ((*k).to_owned(), summary(between("sent", k))))
        .collect();
    json!({
        "n": activations.len(),
        "ok": good.len(),
        "steps": steps,
        "log_steps": log_steps,
        "after_sent": offsets,
        "ours": summary(ours),
        "kubernetes_and_keda": summary(between("pushed", "ready")),
        "total": summary(between("sent", "answered")),
        "cold_start_header": summary(field("cold_start_header_ms")),
        "injector_review": summary(field("injector_review_ms")),
    })
}

/// Deployment `name`'s events: the first with `spec.replicas` ≥ 1 is KEDA's scaling from zero.
async fn watch_deployment(
    api: Api<Deployment>,
    name: String,
    marks: Shared,
    listed: oneshot::Sender<()>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
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
            Err(e) => eprintln!("cold start: the Deployment's watch: {e}"),
        }
    }
}

/// The events of the pods of `selector` (none exists when it starts): created, scheduled, IP,
/// containers running, Ready.
async fn watch_pods(
    api: Api<Pod>,
    selector: String,
    marks: Shared,
    ip: watch::Sender<Option<String>>,
    listed: oneshot::Sender<()>,
) {
    let config = watcher::Config::default().labels(&selector);
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
                eprintln!("cold start: the pods' watch: {e}");
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
    let Ok(ip) = ip.parse() else {
        return;
    };
    let admin = SocketAddr::new(ip, 15090);
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
/// (in the bed's namespace) that contains `needle` was stamped by containerd's CRI logger.
pub fn log_line_at(tb: &TestBed, pod: &str, container: &str, needle: &str) -> Option<i128> {
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

/// (sum of seconds, count) of the `review_duration` histogram of the injectors at `admins`
/// (their admin ports), added up; `None` if one does not answer.
pub async fn injector_reviews(admins: &[SocketAddr]) -> Option<(f64, f64)> {
    let mut total = (0.0, 0.0);
    for admin in admins {
        let text = admin_text(*admin, "/metrics").await?;
        let value = |suffix: &str| {
            text.lines().find_map(|l| {
                let (name, value) = l.split_once(' ')?;
                let name = name.split('{').next()?;
                name.ends_with(suffix)
                    .then(|| value.trim().parse::<f64>().ok())?
            })
        };
        total.0 += value("injector_review_duration_seconds_sum")?;
        total.1 += value("injector_review_duration_seconds_count")?;
    }
    Some(total)
}

/// The injector's mean time a review (ms, to a tenth) between two readings of
/// [`injector_reviews`], if it reviewed anything in between.
pub fn review_ms(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> Option<f64> {
    match (before, after) {
        (Some((s0, n0)), Some((s1, n1))) if n1 > n0 => {
            Some(((s1 - s0) * 1e4).round() / 10.0 / (n1 - n0))
        }
        _ => None,
    }
}

/// Nearest rank: with 20 values p99 is the largest.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // A rank within the slice's length: the casts cannot overflow.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// n, p50, p99, max and min (ms) of `ms`.
pub fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({
        "n": ms.len(),
        "p50_ms": percentile(&ms, 50.0),
        "p99_ms": percentile(&ms, 99.0),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
        "min_ms": ms.first().copied().unwrap_or(f64::NAN),
    })
}

/// A client of the aggregator's scaler Service as KEDA is one: the Service `inflight-aggregator`'s
/// ClusterIP, port 9091, in `namespace`, with mutual TLS: the client certificate and CA the
/// operator wrote to KEDA's Secret `keda/<secret>`, the server known by its Service name.
pub async fn scaler_client(
    layout: &Layout,
    secret: &str,
    namespace: &str,
) -> Result<ExternalScalerClient<Channel>, String> {
    let text = kubectl_run(
        layout,
        &["-n", "keda", "get", "secret", secret, "-o", "json"],
    )
    .map_err(|e| format!("the Secret keda/{secret}: {e}"))?;
    let secret: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let field = |k: &str| -> Result<Vec<u8>, String> {
        let text = secret["data"][k].as_str().ok_or(format!("no {k}"))?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("{k}: {e}"))
    };
    let ip = kubectl_run(
        layout,
        &[
            "-n",
            namespace,
            "get",
            "service",
            "inflight-aggregator",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )
    .map_err(|e| e.to_string())?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(field("ca.crt")?))
        .identity(Identity::from_pem(field("tls.crt")?, field("tls.key")?))
        .domain_name(format!("inflight-aggregator.{namespace}.svc"));
    let channel = Endpoint::from_shared(format!("https://{}:9091", ip.trim()))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    Ok(ExternalScalerClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let ms: Vec<f64> = (1..=20).map(f64::from).collect();
        assert!((percentile(&ms, 50.0) - 10.0).abs() < f64::EPSILON);
        assert!((percentile(&ms, 99.0) - 20.0).abs() < f64::EPSILON);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
