//! The API server's aggregation layer works: an APIService of this test's own, backed by a tiny
//! extension API server in the test (TLS with a serving certificate from the cluster CA, the API
//! server's front-proxy client certificate required), answers `kubectl get --raw`, and the API
//! server passes the caller's identity in `X-Remote-User` / `X-Remote-Group`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::{apply, eventually};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use inflight_testbed::{pki, TestBed};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// (path, X-Remote-User, X-Remote-Group values) of every request the extension server got.
type Seen = Arc<Mutex<Vec<(String, String, Vec<String>)>>>;

fn tls_config(tb: &TestBed, service_dns: &str) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = pki::serving_cert(tb.layout(), &[service_dns.to_owned()]).unwrap();
    let front_proxy_ca = std::fs::read(tb.layout().pki().join("front-proxy-ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&front_proxy_ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let chain: Vec<_> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain,
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn answer(req: &Request<Incoming>, group_version: &str, seen: &Seen) -> Response<Full<Bytes>> {
    let header = |name: &str| -> Vec<String> {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let path = req.uri().path().to_owned();
    seen.lock().unwrap().push((
        path.clone(),
        header("x-remote-user").join(","),
        header("x-remote-group"),
    ));
    let (status, body) = if path == format!("/apis/{group_version}") {
        (
            200,
            serde_json::json!({
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                "resources": [{"name": "probes", "singularName": "probe", "namespaced": true,
                               "kind": "Probe", "verbs": ["get", "list"]}]
            }),
        )
    } else {
        (
            404,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_apiservice_of_our_own_answers_kubectl_get_raw() {
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    let group = format!("{ns}.probe.inflight.dev");
    let group_version = format!("{group}/v1alpha1");
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&tb, &format!("probe-api.{ns}.svc"))));
    let listener = tokio::net::TcpListener::bind((tb.layout().host_ip(), 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let server = {
        let (seen, group_version) = (seen.clone(), group_version.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen, gv) = (acceptor.clone(), seen.clone(), group_version.clone());
                tokio::spawn(async move {
                    // A caller without the front-proxy client certificate fails here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let response = answer(&req, &gv, &seen);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        })
    };

    // A Service without selector whose EndpointSlice points at the host end of the veth pair.
    apply(
        &tb,
        &serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe-api"},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}}),
    );
    apply(
        &tb,
        &serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "probe-api-1", "labels": {"kubernetes.io/service-name": "probe-api"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [tb.layout().host_ip().to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}),
    );
    let ca = std::fs::read(tb.layout().pki().join("ca.crt")).unwrap();
    let apiservice = format!("v1alpha1.{group}");
    apply(
        &tb,
        &serde_json::json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": apiservice},
            "spec": {"group": group, "version": "v1alpha1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                     "service": {"namespace": ns, "name": "probe-api", "port": 443},
                     "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)}}),
    );
    eventually("the APIService to be Available", 60, || async {
        let status = tb
            .kubectl(&[
                "get",
                "apiservice",
                &apiservice,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
            ])
            .ok()?;
        (status == "True").then_some(())
    })
    .await;

    let raw = tb
        .kubectl(&["get", "--raw", &format!("/apis/{group_version}")])
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(list["kind"], "APIResourceList", "{raw}");
    assert_eq!(list["groupVersion"], group_version.as_str());
    assert_eq!(list["resources"][0]["name"], "probes");

    // A 404 of the extension server comes back through the API server as a 404.
    let missing = tb.kubectl(&[
        "get",
        "--raw",
        &format!("/apis/{group_version}/namespaces/{ns}/probes/nope"),
    ]);
    assert!(format!("{missing:?}").contains("NotFound"), "{missing:?}");

    let requests = seen.lock().unwrap().clone();
    let (_, user, groups) = requests
        .iter()
        .find(|(path, user, _)| {
            path == &format!("/apis/{group_version}")
                && !user.is_empty()
                && user != "system:kube-aggregator"
        })
        .unwrap_or_else(|| panic!("no proxied kubectl request among {requests:?}"));
    assert_eq!(user, "kubernetes-admin");
    assert!(groups.iter().any(|g| g == "system:masters"), "{groups:?}");

    tb.kubectl(&["delete", "apiservice", &apiservice]).unwrap();
    server.abort();
}
