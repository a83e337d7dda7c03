//! The SMI Traffic Metrics API on the test bed: the aggregator (on the host end of the bed's veth,
//! with the bed's kubeconfig) registered as the `v1alpha1.metrics.smi-spec.io` APIService and read
//! with `kubectl get --raw`: discovery, get, list, edges, label selector, 404 — compared with golden
//! JSON shaped after the SMI spec — and callers refused when unauthenticated (401) or not allowed
//! by RBAC (403).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::free_port;
use inflight_proto::v1::ingest_client::IngestClient;
use inflight_proto::v1::{
    report_request, Interval, LatencyHistogram, PodIdentity, PodReport, ReportRequest, Responses,
    WorkloadRef,
};
use inflight_testbed::{pki, TestBed};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn apply(tb: &TestBed, manifest: &serde_json::Value) {
    let path = std::env::temp_dir().join(format!("inflight-smi-test-{}.json", tb.namespace()));
    std::fs::write(&path, manifest.to_string()).unwrap();
    let r = tb.kubectl(&["apply", "-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    r.unwrap();
}

fn report(
    ns: &str,
    pod: &str,
    workload: &str,
    start_ms: i64,
    ok: u64,
    failed: u64,
) -> ReportRequest {
    // Latencies: all in the 4th bucket (see LATENCY_BOUNDS_SECONDS).
    let mut counts = vec![0; inflight_proto::LATENCY_BOUNDS_SECONDS.len() + 1];
    counts[3] = ok + failed;
    ReportRequest {
        report: Some(report_request::Report::Pod(PodReport {
            pod: Some(PodIdentity {
                namespace: ns.into(),
                pod: pod.into(),
                workload: Some(WorkloadRef {
                    namespace: ns.into(),
                    kind: "deployment".into(),
                    name: workload.into(),
                }),
                pod_ip: String::new(),
            }),
            interval: Some(Interval {
                start_unix_ms: start_ms,
                length_ms: 1000,
            }),
            avg_concurrency: 1.0,
            in_flight: 0,
            requests: ok + failed,
            responses: Some(Responses {
                class_2xx: ok,
                class_5xx: failed,
                ..Responses::default()
            }),
            latency: Some(LatencyHistogram {
                counts,
                sum_seconds: 0.01,
            }),
        })),
    }
}

/// A JSON document with what changes from run to run (time, namespace) replaced by placeholders.
fn normalized(text: &str, ns: &str) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    fn walk(v: &mut serde_json::Value, ns: &str) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if k == "timestamp" || k == "creationTimestamp" {
                        *child = "TIMESTAMP".into();
                    } else {
                        walk(child, ns);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| walk(i, ns)),
            serde_json::Value::String(s) if s == ns => *s = "NAMESPACE".into(),
            _ => {}
        }
    }
    walk(&mut v, ns);
    v
}

fn golden(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smi")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn raw(tb: &TestBed, path: &str) -> Result<String, inflight_testbed::Error> {
    tb.kubectl(&["get", "--raw", path])
}

/// Tests of this file register the one `v1alpha1.metrics.smi-spec.io` APIService (cluster-wide)
/// each for its own aggregator: one at a time.
static APISERVICE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The aggregator on the host end of the bed's veth with the bed's admin kubeconfig, traffic
/// reported for web-1, web-2 (deployment web) and api-1, Pod objects of those names labelled
/// `app=web` / `app=api`, and the APIService pointing at the aggregator, Available.
struct Scene {
    tb: TestBed,
    ns: String,
    host: std::net::Ipv4Addr,
    smi: u16,
    admin: std::net::SocketAddr,
    dir: std::path::PathBuf,
    _aggregator: Killed,
    _apiservice: tokio::sync::MutexGuard<'static, ()>,
}

impl Scene {
    async fn new() -> Self {
        let apiservice_lock = APISERVICE.lock().await;
        let tb = TestBed::shared().await.unwrap();
        let ns = tb.namespace().to_owned();
        let host = tb.layout().host_ip();

        // A serving certificate of the cluster CA for its Service name.
        let (cert, key) = pki::serving_cert(tb.layout(), &[format!("smi-api.{ns}.svc")]).unwrap();
        let dir = std::env::temp_dir().join(format!("inflight-smi-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &cert).unwrap();
        std::fs::write(dir.join("tls.key"), &key).unwrap();
        let (grpc, smi) = (free_port(), free_port());
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let aggregator = Killed(
            Command::new(env!("CARGO_BIN_EXE_inflight-aggregator"))
                .args([
                    "--grpc-listen",
                    &format!("{host}:{grpc}"),
                    "--smi-listen",
                    &format!("{host}:{smi}"),
                ])
                .args(["--admin-listen", &admin.to_string()])
                // Its reports are sent without tokens and KEDA is not its caller: the SMI API is
                // what is tested here.
                .args(["--ingest-auth", "none", "--scaler-auth", "none"])
                .args(["--scaler-listen", &format!("{host}:{}", free_port())])
                .args(["--tls-cert", &dir.join("tls.crt").display().to_string()])
                .args(["--tls-key", &dir.join("tls.key").display().to_string()])
                .env("KUBECONFIG", tb.kubeconfig())
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((host, grpc)).is_err() {
            assert!(Instant::now() < until, "aggregator did not start");
            std::thread::sleep(Duration::from_millis(50));
        }

        // Traffic: web-1 and web-2 of deployment/web (90 ok + 10 failed each, per report) and api-1.
        let mut client = IngestClient::connect(format!("http://{host}:{grpc}"))
            .await
            .unwrap();
        let now = inflight_aggregator::now_ms() / 1000 * 1000;
        let mut reports = Vec::new();
        for s in 1..=3 {
            let t = now - s * 1000;
            reports.push(report(&ns, "web-1", "web", t, 90, 10));
            reports.push(report(&ns, "web-2", "web", t, 90, 10));
            reports.push(report(&ns, "api-1", "api", t, 10, 0));
        }
        let summary = client
            .report(tokio_stream::iter(reports))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(summary.accepted, 9);

        // Pod objects for the label selector (the metrics are not labelled, the objects are).
        for (pod, app) in [("web-1", "web"), ("web-2", "web"), ("api-1", "api")] {
            apply(
                &tb,
                &serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "labels": {"app": app}},
                    "spec": {"containers": [{"name": "app", "image": inflight_testbed::images::image_ref("inflight-demo-app"),
                                             "imagePullPolicy": "Never", "args": ["serve"]}]}}),
            );
        }

        // The APIService, backed by a selector-less Service whose EndpointSlice is the host end.
        apply(
            &tb,
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "smi-api"},
                 "spec": {"ports": [{"name": "https", "port": 443, "targetPort": smi}]}},
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "smi-api-1", "labels": {"kubernetes.io/service-name": "smi-api"}},
                 "addressType": "IPv4", "endpoints": [{"addresses": [host.to_string()], "conditions": {"ready": true}}],
                 "ports": [{"name": "https", "port": smi, "protocol": "TCP"}]}
            ]}),
        );
        let ca = std::fs::read(tb.layout().pki().join("ca.crt")).unwrap();
        let apiservice = serde_json::json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1alpha1.metrics.smi-spec.io"},
            "spec": {"group": "metrics.smi-spec.io", "version": "v1alpha1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                     "service": {"namespace": ns, "name": "smi-api", "port": 443},
                     "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)}});
        apply(&tb, &apiservice);
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let available = tb
                .kubectl(&[
                    "get",
                    "apiservice",
                    "v1alpha1.metrics.smi-spec.io",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
                ])
                .unwrap_or_default();
            if available == "True" {
                break;
            }
            assert!(
                Instant::now() < until,
                "APIService not Available: {available}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Self {
            tb,
            ns,
            host,
            smi,
            admin,
            dir,
            _aggregator: aggregator,
            _apiservice: apiservice_lock,
        }
    }

    /// One sample of the aggregator's `/metrics` (exact name with labels), 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        let out = Command::new("curl")
            .args(["-sS", &format!("http://{}/metrics", self.admin)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = self
            .tb
            .kubectl(&["delete", "apiservice", "v1alpha1.metrics.smi-spec.io"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_smi_traffic_metrics_through_the_aggregation_layer() {
    let scene = Scene::new().await;
    let (tb, ns, host, smi) = (&scene.tb, scene.ns.as_str(), scene.host, scene.smi);
    let base = "/apis/metrics.smi-spec.io/v1alpha1";
    let check = |path: &str, fixture: &str| {
        let body = raw(tb, path).unwrap_or_else(|e| panic!("{path}: {e}"));
        if std::env::var_os("INFLIGHT_BLESS").is_some() {
            // Writes the fixture from this run: review it against the SMI spec before committing.
            let file = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/smi")
                .join(fixture);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(
                &file,
                serde_json::to_string_pretty(&normalized(&body, ns)).unwrap() + "\n",
            )
            .unwrap();
            return;
        }
        assert_eq!(
            normalized(&body, ns),
            golden(fixture),
            "{path} differs from tests/fixtures/smi/{fixture}:\n{body}"
        );
    };
    check(base, "discovery.json");
    check(&format!("{base}/namespaces/{ns}/pods/web-1"), "pod.json");
    check(
        &format!("{base}/namespaces/{ns}/deployments"),
        "deployments.json",
    );
    check(
        &format!("{base}/namespaces/{ns}/deployments/web/edges"),
        "edges.json",
    );
    check(
        &format!("{base}/namespaces/{ns}/pods?labelSelector=app%3Dweb"),
        "pods-selected.json",
    );
    check(&format!("{base}/namespaces/{ns}?t=1m"), "namespace.json");
    let missing = raw(tb, &format!("{base}/namespaces/{ns}/pods/nope"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("NotFound") || missing.contains("not found"),
        "{missing}"
    );

    // Straight to the aggregator: no client certificate → 401; the API server's front-proxy
    // certificate but a user RBAC does not allow → 403; the admin → 200.
    let pki_dir = tb.layout().pki();
    let curl = |extra: &[&str]| -> (String, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--cacert",
                &pki_dir.join("ca.crt").display().to_string(),
                "-w",
                "\n%{http_code}",
            ])
            .args(["--resolve", &format!("smi-api.{ns}.svc:{smi}:{host}")])
            .args(extra)
            .arg(format!(
                "https://smi-api.{ns}.svc:{smi}{base}/namespaces/{ns}/pods/web-1"
            ))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (body.to_owned(), code.to_owned())
    };
    let (body, code) = curl(&["-H", "X-Remote-User: kubernetes-admin"]);
    assert_eq!(code, "401", "{body}");
    assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
    let proxy_cert = [
        "--cert",
        &pki_dir.join("front-proxy-client.crt").display().to_string(),
        "--key",
        &pki_dir.join("front-proxy-client.key").display().to_string(),
    ]
    .map(str::to_owned);
    let with = |user: &str, group: &str| {
        let mut args: Vec<String> = proxy_cert.to_vec();
        args.extend([
            "-H".into(),
            format!("X-Remote-User: {user}"),
            "-H".into(),
            format!("X-Remote-Group: {group}"),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs)
    };
    let (body, code) = with("nobody", "system:authenticated");
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("\"reason\":\"Forbidden\""), "{body}");
    let (body, code) = with("kubernetes-admin", "system:masters");
    assert_eq!(code, "200", "{body}");
}

/// A token of the ServiceAccount `sa` of the test's namespace. Each token is a credential of
/// its own (its id is in the caller's `extra`), so a caller asking again uses the same one.
fn token(scene: &Scene, sa: &str) -> String {
    scene
        .tb
        .kubectl(&["create", "token", sa, "--duration", "10m"])
        .unwrap()
        .trim()
        .to_owned()
}

/// `GET path` on the API server with `token` (not the admin's certificate): (body, HTTP code).
fn as_service_account(scene: &Scene, token: &str, path: &str) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            &scene.tb.layout().pki().join("ca.crt").display().to_string(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("{}{path}", scene.tb.layout().api_url()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_owned(), code.to_owned())
}

/// The names of a `TrafficMetricsList`'s items.
fn item_names(body: &str) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {body}"))
        .iter()
        .map(|i| i["resource"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_a_caller_who_may_read_smi_pods_but_not_list_pods_cannot_enumerate_them_with_a_label_selector(
) {
    let scene = Scene::new().await;
    let ns = scene.ns.clone();
    // smi-reader may read pods.metrics.smi-spec.io and nothing else; pod-lister may list pods too.
    let smi_pods = serde_json::json!({"apiGroups": ["metrics.smi-spec.io"], "resources": ["pods", "pods/edges"], "verbs": ["get", "list"]});
    let mut items = Vec::new();
    for (sa, rules) in [
        ("smi-reader", serde_json::json!([smi_pods])),
        (
            "pod-lister",
            serde_json::json!([smi_pods, {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]),
        ),
    ] {
        items.push(serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}));
        items.push(
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": sa}, "rules": rules}),
        );
        items.push(
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}),
        );
    }
    apply(
        &scene.tb,
        &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
    );
    let base = "/apis/metrics.smi-spec.io/v1alpha1";
    let selected = format!("{base}/namespaces/{ns}/pods?labelSelector=app%3Dweb");
    let (reader, lister) = (token(&scene, "smi-reader"), token(&scene, "pod-lister"));

    // The reader may read one pod's metrics by name: RBAC took effect, the caller is as meant.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (body, code) = as_service_account(
            &scene,
            &reader,
            &format!("{base}/namespaces/{ns}/pods/web-1"),
        );
        if code == "200" {
            break;
        }
        assert!(
            Instant::now() < until,
            "smi-reader cannot get pods/web-1: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // But it may not list core pods, so it learns nothing of their labels or names.
    let (body, code) = as_service_account(&scene, &reader, &selected);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("\"reason\":\"Forbidden\""), "{body}");
    assert!(
        body.contains("cannot list resource \\\"pods\\\" in API group \\\"\\\""),
        "{body}"
    );
    assert!(!body.contains("web-2") && !body.contains("api-1"), "{body}");
    // Nor by listing without a selector: the list names the pods as well.
    let (body, code) = as_service_account(&scene, &reader, &format!("{base}/namespaces/{ns}/pods"));
    assert_eq!(code, "403", "{body}");
    assert!(!body.contains("web-2") && !body.contains("api-1"), "{body}");
    assert!(
        scene.metric("inflight_aggregator_smi_requests_refused_total{reason=\"forbidden_list\"}")
            >= 2.0
    );

    // Whoever may list pods gets the ones the selector matches, and only those.
    let (body, code) = as_service_account(&scene, &lister, &selected);
    assert_eq!(code, "200", "{body}");
    assert_eq!(item_names(&body), ["web-1", "web-2"]);

    // A dashboard asking again and again is answered from the cache, not a review each time.
    let until = Instant::now() + Duration::from_secs(60);
    while scene.metric("inflight_aggregator_smi_access_reviews_cached_total") < 1.0 {
        let (body, code) = as_service_account(&scene, &lister, &selected);
        assert_eq!(code, "200", "{body}");
        assert!(Instant::now() < until, "no answer came from the cache");
    }
}
