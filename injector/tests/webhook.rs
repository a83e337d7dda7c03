//! The real injector binary on loopback, over TLS, as the API server calls it: reviews answered
//! with a patch that applies, bad requests refused with the reason, slow clients cut off, the
//! certificate replaced without a dropped connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{review_of, send, Certs, Injector};
use tokio::io::AsyncReadExt;

fn deployment_pod() -> serde_json::Value {
    serde_json::json!({
        "metadata": {"generateName": "web-7d9f8c6b5-", "namespace": "default",
            "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5",
                                 "uid": "c0ffee", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"containers": [{"name": "app", "image": "demo",
            "ports": [{"containerPort": 8080, "name": "http"}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}}]}
    })
}

/// The patch in an AdmissionReview response, applied to `pod`.
fn patched(pod: &serde_json::Value, answer: &str) -> serde_json::Value {
    use base64::Engine as _;
    let review: serde_json::Value = serde_json::from_str(answer).unwrap();
    let response = &review["response"];
    assert_eq!(response["allowed"], true, "{answer}");
    assert_eq!(response["patchType"], "JSONPatch", "{answer}");
    // Go's []byte: base64 text, or (as kube-rs writes it) an array of numbers.
    let patch: Vec<u8> = match &response["patch"] {
        serde_json::Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        serde_json::Value::Array(bytes) => bytes
            .iter()
            .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
            .collect(),
        other => panic!("no patch in {answer}: {other}"),
    };
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

#[tokio::test]
async fn a_deployments_pod_gets_the_proxy_as_a_native_sidecar() {
    let certs = Certs::new("review");
    let injector = Injector::start(&certs, &["--aggregator", "agg.inflight:9090"]);
    let pod = deployment_pod();
    let (status, body) = injector.review(&certs.pem, &pod).await;
    assert_eq!(status, 200, "{body}");
    let review: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(
        review["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    let out = patched(&pod, &body);
    let proxy = &out["spec"]["initContainers"][0];
    assert_eq!(proxy["name"], "inflight-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    let env: std::collections::HashMap<String, serde_json::Value> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    assert_eq!(env["INFLIGHT_WORKLOAD"]["value"], "deployment/web");
    assert_eq!(env["INFLIGHT_UPSTREAM"]["value"], "127.0.0.1:8080");
    assert_eq!(env["INFLIGHT_AGGREGATOR"]["value"], "agg.inflight:9090");
    assert_eq!(env["INFLIGHT_APP_READY_PATH"]["value"], "/healthz");
    assert_eq!(env["INFLIGHT_APP_READY_PORT"]["value"], "8080");
    assert_eq!(
        env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        out["metadata"]["labels"]["inflight.dev/workload"],
        "deployment.web"
    );
    assert!(out["metadata"]["annotations"]["inflight.dev/injected"].is_string());
    assert_eq!(
        injector.metric("inflight_injector_injected_total").await,
        1.0
    );
    assert_eq!(
        injector.metric("inflight_injector_reviews_total").await,
        1.0
    );
}

#[tokio::test]
async fn what_is_not_an_admission_review_gets_400_with_the_reason() {
    let certs = Certs::new("bad");
    let injector = Injector::start(&certs, &[]);
    for (body, says) in [
        (b"\x00\xffnot json".to_vec(), "not an AdmissionReview"),
        (
            br#"{"apiVersion": "v1", "kind": "Pod"}"#.to_vec(),
            "expected kind AdmissionReview",
        ),
        (
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#.to_vec(),
            "no request",
        ),
    ] {
        let (status, text) = injector.call(&certs.pem, "POST", "/mutate", body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(says), "{text:?} should say {says:?}");
    }
    let (status, _) = injector
        .call(&certs.pem, "GET", "/mutate", Vec::new())
        .await;
    assert_eq!(status, 405);
    let (status, _) = injector
        .call(&certs.pem, "POST", "/validate", Vec::new())
        .await;
    assert_eq!(status, 404);
    let big = vec![b' '; 2 << 20];
    let injector = Injector::start(&certs, &["--max-body-bytes", "1048576"]);
    // The injector answers 413 once it has read 1 MiB and closes; the rest of the body, unread,
    // can make the kernel reset the connection before the client reads the answer.
    match injector.try_call(&certs.pem, "POST", "/mutate", big).await {
        Ok((status, text)) => assert_eq!(status, 413, "{text}"),
        Err(reset) => println!("the 413 was overtaken by a reset: {reset}"),
    }
    // Either way, the injector refused it for its size, and counted it.
    assert_eq!(
        injector
            .metric("inflight_injector_errors_total{kind=\"body_too_large\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_pod_that_cannot_be_injected_is_admitted_unchanged_with_a_warning() {
    let certs = Certs::new("skip");
    let injector = Injector::start(&certs, &[]);
    let no_port = serde_json::json!({"metadata": {"name": "batch"},
        "spec": {"containers": [{"name": "work", "image": "busybox"}]}});
    // A pod the API server accepted but whose fields do not read as a Pod (a string for a number).
    let unreadable = serde_json::json!({"metadata": {"name": "odd"},
        "spec": {"containers": [{"name": "app", "ports": [{"containerPort": "eighty"}]}]}});
    for (pod, reason) in [(no_port, "no_port"), (unreadable, "unreadable_pod")] {
        let (status, body) = injector.review(&certs.pem, &pod).await;
        assert_eq!(status, 200, "{body}");
        let review: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(review["response"]["allowed"], true, "{body}");
        assert!(review["response"].get("patch").is_none(), "{body}");
        let warning = review["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning.starts_with("inflight: pod not injected"),
            "{warning}"
        );
        assert_eq!(
            injector
                .metric(&format!(
                    "inflight_injector_skipped_total{{reason=\"{reason}\"}}"
                ))
                .await,
            1.0
        );
    }
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_cut_off() {
    let certs = Certs::new("slow");
    let injector = Injector::start(&certs, &["--header-read-timeout", "1s"]);
    // Completes the handshake, then says nothing: the server closes the connection.
    let tcp = tokio::net::TcpStream::connect(injector.addr).await.unwrap();
    let mut tls = common::tls_connector(&certs.pem)
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(60), tls.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection should be closed by the server, got {read:?}"
    );
    // One that never even starts TLS, likewise.
    let mut tcp = tokio::net::TcpStream::connect(injector.addr).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_and_open_ones_keep_working() {
    let certs = Certs::new("reload");
    let injector = Injector::start(&certs, &["--tls-reload-interval", "100ms"]);
    let old_pem = certs.pem.clone();
    let mut open = injector.connect(&old_pem).await;
    let review = review_of(&deployment_pod()).to_string().into_bytes();
    assert_eq!(
        send(&mut open, "POST", "/mutate", review.clone()).await.0,
        200
    );

    let certs = certs.rotate();
    // New connections get the new certificate: one trusting only it succeeds once it is read.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let tcp = tokio::net::TcpStream::connect(injector.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        if common::tls_connector(&certs.pem)
            .connect(name, tcp)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened under the old certificate still works.
    assert_eq!(send(&mut open, "POST", "/mutate", review).await.0, 200);
    assert_eq!(
        injector
            .metric("inflight_injector_tls_reloads_total{result=\"ok\"}")
            .await,
        1.0
    );
}
