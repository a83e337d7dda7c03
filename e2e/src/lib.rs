//! What the end-to-end tests (`tests/`) put on the bed and read back: inflight installed with
//! Helm from `charts/inflight` as a user installs it ([`Installed`]), the demo app as a user's
//! workload (no sidecar of its own: the injector adds it) under an HTTPAutoscaler, and what a user
//! would look at: the value KEDA reads, the SMI API, a gRPC call through the Service.

use std::net::SocketAddr;
use std::time::Duration;

use inflight_proto::demo::v1::demo_client::DemoClient;
use inflight_proto::demo::v1::EchoRequest;
pub use inflight_testbed::traffic::at;
use inflight_testbed::{chart, eventually, manifests, query, TestBed};
use serde_json::{json, Value};

/// The release, installed for the life of this value: a panic in the test uninstalls it too, so
/// that the cluster's webhook does not go on injecting into other tests' namespaces.
#[derive(Debug)]
pub struct Installed<'a> {
    tb: &'a TestBed,
    installed: bool,
}

impl<'a> Installed<'a> {
    /// `helm upgrade --install` with the bed's images and `values` (`key=value`), waiting for
    /// every part to be ready.
    pub fn install(tb: &'a TestBed, values: &[&str]) -> Result<Self, inflight_testbed::Error> {
        chart::install(tb, values)?;
        Ok(Self {
            tb,
            installed: true,
        })
    }

    /// `helm upgrade` of the release with `values`, waiting for the rollout.
    pub fn upgrade(&self, values: &[&str]) -> Result<String, inflight_testbed::Error> {
        chart::install(self.tb, values)
    }

    /// `helm uninstall`, waiting for what it deletes to be gone.
    pub fn uninstall(mut self) -> Result<String, inflight_testbed::Error> {
        self.installed = false;
        chart::uninstall(self.tb)
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        if self.installed {
            let _ = chart::uninstall(self.tb);
        }
    }
}

/// The demo app as a user's Deployment `name`: `replicas` pods serving on 8080 (HTTP/1.1, h2c and
/// gRPC), each request taking `latency`, answering `hello from the inflight demo app on <pod>`;
/// restricted like any pod; no sidecar (the injector adds it in an injected namespace).
pub fn app(name: &str, replicas: i32, latency: &str) -> Value {
    let mut container = manifests::demo_app(latency);
    container["ports"] = json!([{"containerPort": 8080, "name": "http"}]);
    container["env"] =
        json!([{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);
    json!({"apiVersion": "v1", "kind": "List", "items": [
        manifests::deployment(name, replicas, json!({"containers": [container]})),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    ]})
}

/// An HTTPAutoscaler `name` for the Deployment and Service of [`app`], with `spec` over
/// concurrency 5 per pod and 1 to 6 replicas.
pub fn hta(name: &str, spec: Value) -> Value {
    let mut base = json!({
        "scaleTargetRef": {"kind": "Deployment", "name": name},
        "service": {"name": name, "port": 80, "targetPort": 8080},
        "minReplicas": 1, "maxReplicas": 6,
        "metric": {"type": "concurrency", "target": 5},
    });
    if let (Some(b), Some(extra)) = (base.as_object_mut(), spec.as_object()) {
        b.extend(extra.clone());
    }
    json!({"apiVersion": "inflight.dev/v1alpha1", "kind": "HTTPAutoscaler",
           "metadata": {"name": name}, "spec": base})
}

/// `kubectl get --raw <path>`, parsed.
pub fn raw(tb: &TestBed, path: &str) -> Option<Value> {
    inflight_testbed::kubectl_run(tb.layout(), &["get", "--raw", path])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// The value KEDA's metrics server gives the HPA of ScaledObject `name` (the external metric
/// its HPA names), or `None` while it has none.
pub fn keda_value(tb: &TestBed, name: &str) -> Option<f64> {
    let hpa = query::get(tb, &[&format!("hpa/keda-hpa-{name}")])?;
    let metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"].as_str()?;
    let ns = tb.namespace();
    let list = raw(
        tb,
        &format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector=scaledobject.keda.sh%2Fname%3D{name}"
        ),
    )?;
    smi_types::quantity::parse(list["items"][0]["value"].as_str()?)
}

/// The replicas the HPA's formula gives for `value` at `target` per pod, within `[min, max]`.
pub fn hpa_replicas(value: f64, target: f64, min: i64, max: i64) -> i64 {
    // The value is a small count of requests: the cast cannot overflow.
    #[allow(clippy::cast_possible_truncation)]
    let wanted = (value / target).ceil() as i64;
    wanted.clamp(min, max)
}

/// The `inflight.demo.v1.Demo/Echo` call through `addr` (a Service's ClusterIP:port) over h2c,
/// with `authority` as the request's `:authority` (the activator routes by it): the reply's
/// message and the pod that answered.
pub async fn grpc_echo(
    addr: SocketAddr,
    authority: &str,
    message: &str,
) -> Result<(String, String), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .origin(
            format!("http://{authority}")
                .parse()
                .map_err(|e| format!("{e}"))?,
        )
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(90));
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let reply = DemoClient::new(channel)
        .echo(EchoRequest {
            message: message.to_owned(),
            delay_ms: 0,
        })
        .await
        .map_err(|s| format!("{s:?}"))?;
    let reply = reply.into_inner();
    Ok((reply.message, reply.pod))
}

/// A websocket to `addr` (a Service's ClusterIP:port) with `Host: host`: the app's greeting
/// (`connected to <pod>`) and its echo of `message`.
pub async fn websocket_echo(
    addr: SocketAddr,
    host: &str,
    message: &str,
) -> Result<(String, String), String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut ws, response) =
            tokio_tungstenite::client_async(format!("ws://{host}/chat"), stream)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        if response.status() != 101 {
            return Err(format!("answered {}", response.status()));
        }
        let text = |m: Option<Result<Message, _>>| match m {
            Some(Ok(Message::Text(text))) => Ok(text.to_string()),
            other => Err(format!("{other:?}")),
        };
        let greeting = text(ws.next().await)?;
        ws.send(Message::text(message))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let echo = text(ws.next().await)?;
        Ok((greeting, echo))
    };
    tokio::time::timeout(Duration::from_secs(90), exchange)
        .await
        .map_err(|_| "no answer within 90s".to_owned())?
}

/// Waits until the workload `name` of [`app`] and [`hta`] is at zero, every pod gone, and its
/// Service in proxy mode (the activators take its requests); `when` names the moment in the
/// panic that ends the wait after 300 s.
pub async fn at_zero(tb: &TestBed, name: &str, when: &str) {
    let selector = format!("app={name}");
    eventually(&format!("{name} at zero {when}"), 300, || async {
        let h = query::get(tb, &[&format!("hta/{name}")])?;
        // No pod at all, a terminating one included: one still draining would answer.
        let left = query::get(tb, &["pods", "-l", &selector])?;
        let none = left["items"].as_array().is_some_and(Vec::is_empty);
        (h["status"]["mode"] == "Proxy" && query::replicas(tb, name) == (0, 0) && none)
            .then_some(())
    })
    .await;
}
