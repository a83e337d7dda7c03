//! Captures the golden fixtures of `tests/golden.rs` from the test bed's real API server: a
//! webhook of its own records the AdmissionReview of every pod created in a namespace of its own
//! (admitting each unchanged), while it creates the pods the fixtures cover; each review is
//! written to `tests/fixtures/<case>.request.json`. Then `INFLIGHT_BLESS=1 cargo test -p
//! inflight-injector --test golden` writes the expected answers, to be read before committing.
//!
//!     cargo run -p inflight-injector --example capture_fixtures     (root; brings the bed up)

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use inflight_testbed::images::image_ref;
use inflight_testbed::TestBed;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

type Seen = Arc<Mutex<BTreeMap<String, serde_json::Value>>>;

/// Each case: the fixture's name, and the manifest whose pod it captures. The pod's name (or,
/// for a controller's pod, its generateName) says which case a review belongs to.
fn cases() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    let app = |ports: serde_json::Value| {
        serde_json::json!({"name": "app", "image": image_ref("inflight-demo-app"), "imagePullPolicy": "Never",
            "args": ["serve", "--listen", "0.0.0.0:8080"], "ports": ports})
    };
    let http = serde_json::json!([{"containerPort": 8080, "name": "http"}]);
    let template = |name: &str| serde_json::json!({"metadata": {"labels": {"app": name}}, "spec": {"containers": [app(http.clone())]}});
    let pod = |name: &str, metadata: serde_json::Value, spec: serde_json::Value| {
        let mut metadata = metadata;
        metadata["name"] = name.into();
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
    };
    let mut probe_app = app(
        serde_json::json!([{"containerPort": 8080, "name": "http"}, {"containerPort": 8081, "name": "health"}]),
    );
    probe_app["readinessProbe"] =
        serde_json::json!({"httpGet": {"path": "/healthz", "port": "health"}, "timeoutSeconds": 2});
    let injected_spec = serde_json::json!({"containers": [app(http.clone()),
        {"name": "inflight-proxy", "image": image_ref("inflight-proxy"), "imagePullPolicy": "Never"}]});
    vec![
        (
            "deployment",
            "web-",
            serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template("web")}}),
        ),
        (
            "statefulset",
            "db-0",
            serde_json::json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": template("db")}}),
        ),
        (
            "job",
            "batch-",
            serde_json::json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "batch"},
            "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": "batch"}},
                "spec": {"restartPolicy": "Never", "containers": [app(http.clone())]}}}}),
        ),
        (
            "bare-pod",
            "bare",
            pod(
                "bare",
                serde_json::json!({"labels": {"app": "bare"}, "annotations": {"team": "payments"}}),
                serde_json::json!({"containers": [app(http.clone())]}),
            ),
        ),
        (
            "opted-out",
            "opted-out",
            pod(
                "opted-out",
                serde_json::json!({"annotations": {"inflight.dev/inject": "disabled"}}),
                serde_json::json!({"containers": [app(http.clone())]}),
            ),
        ),
        (
            "already-injected",
            "already-injected",
            pod(
                "already-injected",
                serde_json::json!({"annotations": {"inflight.dev/injected": "0.0.9"}}),
                injected_spec,
            ),
        ),
        (
            "host-network",
            "host-network",
            pod(
                "host-network",
                serde_json::json!({}),
                serde_json::json!({"hostNetwork": true, "containers": [app(serde_json::json!([{"containerPort": 18080}]))]}),
            ),
        ),
        (
            "no-ports",
            "no-ports",
            pod(
                "no-ports",
                serde_json::json!({}),
                serde_json::json!({"containers": [app(serde_json::Value::Null)]}),
            ),
        ),
        (
            "named-port-probe",
            "named-port-probe",
            pod(
                "named-port-probe",
                serde_json::json!({}),
                serde_json::json!({"containers": [probe_app]}),
            ),
        ),
        (
            "no-annotations-or-labels",
            "plain",
            pod(
                "plain",
                serde_json::json!({}),
                serde_json::json!({"containers": [app(http.clone())]}),
            ),
        ),
        (
            "keys-to-escape",
            "escaping",
            pod(
                "escaping",
                serde_json::json!({"labels": {"example.com/tier": "web", "app.kubernetes.io/name": "escaping"},
                               "annotations": {"example.com/owner": "team-a/b", "inflight.dev/port": "http"}}),
                serde_json::json!({"containers": [app(http.clone())]}),
            ),
        ),
    ]
}

fn tls(tb: &TestBed) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let (cert, key) =
        inflight_testbed::pki::serving_cert(tb.layout(), &[tb.layout().host_ip().to_string()])?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>()?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Records the review and admits the pod unchanged.
async fn record(request: hyper::Request<Incoming>, seen: Seen) -> hyper::Response<Full<Bytes>> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let uid = review["request"]["uid"].clone();
    let object = &review["request"]["object"]["metadata"];
    let name = object["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or_else(|| object["generateName"].as_str());
    if let Some(name) = name {
        if let Ok(mut seen) = seen.lock() {
            seen.insert(name.to_owned(), review.clone());
        }
    }
    let answer = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true}});
    hyper::Response::new(Full::new(Bytes::from(answer.to_string())))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tb = TestBed::shared().await?;
    let ns = tb.namespace().to_owned();
    let listener = tokio::net::TcpListener::bind((tb.layout().host_ip(), 0)).await?;
    let addr = listener.local_addr()?;
    let acceptor = tls(&tb)?;
    let seen: Seen = Arc::default();
    let server = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |r| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(record(r, seen).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    };
    let ca = std::fs::read(tb.layout().pki().join("ca.crt"))?;
    let webhook = format!("inflight-capture-{ns}");
    let config = serde_json::json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": webhook},
        "webhooks": [{"name": "capture.inflight.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://{addr}/mutate"), "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}]});
    let apply = |manifest: &serde_json::Value| -> anyhow::Result<()> {
        let path = std::env::temp_dir().join(format!("inflight-capture-{ns}.json"));
        std::fs::write(&path, manifest.to_string())?;
        tb.kubectl(&["apply", "-f", &path.display().to_string()])?;
        Ok(())
    };
    apply(&config)?;
    // The API server takes a moment to start calling a new webhook: a pod made before then
    // would not be seen. Probe with throwaway pods until one is.
    let until = Instant::now() + Duration::from_secs(120);
    for i in 0.. {
        let probe = format!("probe-{i}");
        apply(
            &serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": probe},
            "spec": {"containers": [{"name": "app", "image": image_ref("inflight-demo-app"), "imagePullPolicy": "Never"}]}}),
        )?;
        if seen.lock().map(|s| s.contains_key(&probe)).unwrap_or(false) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "the API server never called the capture webhook"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cases = cases();
    for (_, _, manifest) in &cases {
        apply(manifest)?;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::create_dir_all(&dir)?;
    let until = Instant::now() + Duration::from_secs(180);
    for (case, key, _) in &cases {
        let review = loop {
            // A controller's pod is known by its generateName's start (`web-` of `web-7d9f8c6b5-`).
            let found = seen.lock().ok().and_then(|s| {
                s.get(*key).cloned().or_else(|| {
                    key.ends_with('-')
                        .then(|| {
                            s.iter()
                                .find(|(k, _)| k.starts_with(*key))
                                .map(|(_, r)| r.clone())
                        })
                        .flatten()
                })
            });
            if let Some(r) = found {
                break r;
            }
            anyhow::ensure!(
                Instant::now() < until,
                "no review of the {case} pod ({key}) came"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let path = dir.join(format!("{case}.request.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&review)? + "\n")
            .with_context(|| path.display().to_string())?;
        println!("{}", path.display());
    }
    tb.kubectl(&["delete", "mutatingwebhookconfiguration", &webhook])?;
    server.abort();
    Ok(())
}
