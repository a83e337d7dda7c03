//! The real `inflight-operator` binary on this host against the test bed's API server, and the
//! workloads its tests scale: an in-cluster aggregator, a stand-in activator, a Deployment whose
//! pods carry inflight-proxy.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use inflight_testbed::manifests::{demo_app, deployment, proxied_demo};
use inflight_testbed::TestBed;
use serde_json::{json, Value};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One operator process; killed when dropped, and then the finalizers it would have removed are
/// taken off the test's HTTPAutoscalers, or its namespace could never be deleted.
pub struct Operator {
    child: Child,
    layout: inflight_testbed::layout::Layout,
    namespace: String,
    pub admin: u16,
    pub identity: String,
    pub log: PathBuf,
}

impl Operator {
    /// Starts the operator for the test's namespace only, with its Lease there too.
    pub fn start(tb: &TestBed, identity: &str, extra: &[&str]) -> Self {
        Self::start_with(tb, tb.kubeconfig(), identity, extra)
    }

    pub fn start_with(tb: &TestBed, kubeconfig: PathBuf, identity: &str, extra: &[&str]) -> Self {
        Self::spawn(tb.layout(), tb.namespace(), kubeconfig, identity, extra)
    }

    /// On any bed (`layout`), for namespace `ns`.
    pub fn spawn(
        layout: &inflight_testbed::layout::Layout,
        ns: &str,
        kubeconfig: PathBuf,
        identity: &str,
        extra: &[&str],
    ) -> Self {
        let admin = free_port();
        let log = std::env::temp_dir().join(format!("inflight-operator-{ns}-{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_inflight-operator"))
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args([
                "--watch-namespace",
                ns,
                "--namespace",
                ns,
                "--identity",
                identity,
            ])
            .args(["--activator-service", &format!("{ns}/activator")])
            .args(["--resync-interval", "10s"])
            // The bootstrap makes the aggregator's certificates and KEDA's client certificate
            // under the test's own names, and leaves the cluster's webhook and APIService (which
            // other tests use) alone; certs.rs tests the bootstrap itself.
            .args(inflight_testbed::chart::operator_args(ns))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,inflight_operator=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        println!("operator {identity}: log {}", log.display());
        Self {
            child,
            layout: layout.clone(),
            namespace: ns.to_owned(),
            admin,
            identity: identity.to_owned(),
            log,
        }
    }

    /// `/metrics` of its admin server, or `None` while it does not answer.
    pub fn metrics(&self) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    }

    /// Whether it says it leads (`inflight_operator_leader 1`).
    pub fn leads(&self) -> bool {
        self.metrics()
            .is_some_and(|m| m.lines().any(|l| l == "inflight_operator_leader 1"))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        let ns = self.namespace.as_str();
        let names =
            inflight_testbed::kubectl_run(&self.layout, &["-n", ns, "get", "hta", "-o", "name"]);
        for name in names.unwrap_or_default().split_whitespace() {
            let _ = inflight_testbed::kubectl_run(
                &self.layout,
                &[
                    "-n",
                    ns,
                    "patch",
                    name,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ],
            );
        }
    }
}

/// One aggregator (gRPC only) under the chart's RBAC, and the Services KEDA and the proxies use.
/// The operator's tests send no held requests: no activator ServiceAccount is named.
pub fn aggregator(tb: &TestBed) -> Value {
    inflight_testbed::chart::apply_rbac(tb, "aggregator-rbac.yaml").unwrap();
    inflight_testbed::manifests::aggregator(&[])
}

/// The activator's stand-in until the activator exists: a pod that answers every request.
pub fn activator() -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        deployment("activator", 1, json!({"containers": [demo_app("0ms")]})),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "activator"},
         "spec": {"selector": {"app": "activator"}, "ports": [{"name": "http", "port": 8080}]}}
    ]})
}

/// `web`: the demo app (each request takes `latency`) behind inflight-proxy as the injector adds
/// it, and the user's Service `web` with a selector, as it was before inflight.
pub fn web(ns: &str, replicas: i32, latency: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        proxied_demo(ns, "web", replicas, latency),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    ]})
}

pub fn hta(name: &str, target: &str, spec: Value) -> Value {
    let mut base = json!({
        "scaleTargetRef": {"kind": "Deployment", "name": target},
        "service": {"name": "web", "port": 80, "targetPort": 8080},
        "maxReplicas": 4
    });
    if let (Some(b), Some(extra)) = (base.as_object_mut(), spec.as_object()) {
        b.extend(extra.clone());
    }
    json!({"apiVersion": "inflight.dev/v1alpha1", "kind": "HTTPAutoscaler",
           "metadata": {"name": name}, "spec": base})
}

/// The CRD, applied by every test that needs it (kubectl apply is idempotent).
pub fn install_crd(tb: &TestBed) {
    inflight_testbed::chart::install_crd(tb.layout()).unwrap();
}

/// `kubectl get` of one object as JSON, `None` when it does not exist.
pub use inflight_testbed::query::{cluster_ip, get, ready_ips, replicas, slice_ready};

/// A condition of the HTTPAutoscaler `name`: (status, reason).
pub fn condition(tb: &TestBed, name: &str, type_: &str) -> Option<(String, String)> {
    let h = get(tb, &[&format!("httpautoscaler/{name}")])?;
    h["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// Reasons of the Events about the HTTPAutoscaler `name`.
pub fn event_reasons(tb: &TestBed, name: &str) -> Vec<String> {
    let events = get(tb, &["events.events.k8s.io"]).unwrap_or_default();
    events["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|e| {
                    e["regarding"]["kind"] == "HTTPAutoscaler" && e["regarding"]["name"] == name
                })
                .filter_map(|e| e["reason"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The chart's RBAC for the operator, applied for the test's namespace, and a kubeconfig that
/// acts as its ServiceAccount: the operator then runs with exactly the chart's rights. The main
/// ClusterRole is the chart's; it is bound by a RoleBinding in the test's namespace instead of
/// the chart's ClusterRoleBinding, which every test would otherwise rewrite for itself. The
/// rules naming KEDA's client certificate are the test's own (see `render_rbac`) and bound
/// cluster-wide, as a ClusterTriggerAuthentication is.
pub fn chart_rbac_kubeconfig(tb: &TestBed) -> PathBuf {
    let ns = tb.namespace();
    let text = inflight_testbed::chart::render_rbac("operator-rbac.yaml", ns).unwrap();
    let docs: Vec<&str> = text
        .split("\n---\n")
        .filter(|d| {
            !(d.contains("kind: ClusterRoleBinding")
                && d.contains("  kind: ClusterRole\n  name: inflight-operator\n"))
        })
        .collect();
    let path = std::env::temp_dir().join(format!("inflight-operator-rbac-{ns}.yaml"));
    std::fs::write(&path, docs.join("\n---\n")).unwrap();
    // No `-n`: each namespaced object names its namespace (KEDA's, for its client Secret).
    inflight_testbed::api::kubectl_run(tb.layout(), &["apply", "-f", &path.display().to_string()])
        .unwrap();
    tb.apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "inflight-operator-cluster-rules"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "inflight-operator"},
        "subjects": [{"kind": "ServiceAccount", "name": "inflight-operator", "namespace": ns}]}))
        .unwrap();
    let token = tb
        .kubectl(&["create", "token", "inflight-operator", "--duration=2h"])
        .unwrap();
    let admin: Value = serde_json::from_str(
        &tb.kubectl(&["config", "view", "--raw", "--minify", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let cluster = admin["clusters"][0]["cluster"].clone();
    let config = json!({"apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "bed", "cluster": cluster}],
        "users": [{"name": "inflight-operator", "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "bed", "user": "inflight-operator", "namespace": ns}}],
        "current-context": "sa"});
    let out = std::env::temp_dir().join(format!("inflight-operator-kubeconfig-{ns}.json"));
    std::fs::write(&out, config.to_string()).unwrap();
    out
}
