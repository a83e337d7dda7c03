//! Whom the SMI API trusts, against the real aggregator binary on loopback: no connection is
//! accepted before the requestheader CA has been read; a connection made under a CA since
//! replaced must verify against the new one; and a Kubernetes API that never answers holds no
//! request. The CA comes from `--requestheader-client-ca-file` (the ConfigMap path is proven on
//! the test bed, `tests/smi.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::smi::{Ca, ClientCert, Smi, DEADLINE};
use hyper::body::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const FRONT_PROXY: &str = "front-proxy-client";

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP/2 connection to the SMI API, presenting `client`'s certificate.
async fn connect(smi: &Smi, client: &ClientCert) -> h2::client::SendRequest<Bytes> {
    let tls = smi.tls(&smi.connector(b"h2", Some(client))).await;
    let (h2, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    h2
}

/// `GET path` as the user `alice`, as the API server's front proxy would send it.
async fn get(h2: &mut h2::client::SendRequest<Bytes>, path: &str) -> (u16, String) {
    try_get(h2, path).await.unwrap()
}

/// As [`get`]; Err: the connection failed (under TLS 1.3 a client certificate the server refuses
/// shows only after the client's handshake is done, at the first read).
async fn try_get(
    h2: &mut h2::client::SendRequest<Bytes>,
    path: &str,
) -> Result<(u16, String), h2::Error> {
    let request = http::Request::get(format!("https://localhost{path}"))
        .header("x-remote-user", "alice")
        .header("x-remote-group", "system:authenticated")
        .body(())
        .unwrap();
    let mut ready = h2.clone().ready().await?;
    let (response, _) = ready.send_request(request, true)?;
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("no answer")?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

/// `GET path` on a connection of its own; `None` when the connection fails.
async fn get_once(smi: &Smi, client: &ClientCert, path: &str) -> Option<(u16, String)> {
    let tcp = TcpStream::connect(smi.addr).await.ok()?;
    let tls = smi
        .connector(b"h2", Some(client))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .ok()?;
    let (mut h2, connection) = h2::client::handshake(tls).await.ok()?;
    tokio::spawn(connection);
    try_get(&mut h2, path).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_is_accepted_until_the_requestheader_ca_is_read() {
    let ca = Ca::new("front-proxy-ca");
    let smi = Smi::start(None, &[], &[]);
    // The CA file is missing: once the aggregator has tried to read it and said so, its port
    // refuses connections (it is bound, not listening), rather than accept them unchecked.
    eventually("/readyz/smi to say why it is not ready", async || {
        let ready = smi.admin_get("/readyz/smi").await;
        assert!(ready.starts_with("HTTP/1.0 503"), "{ready}");
        ready.contains("requestheader-ca.crt")
    })
    .await;
    let refused = TcpStream::connect(smi.addr).await;
    assert!(refused.is_err(), "a connection was accepted before the CA");
    let ready = smi.admin_get("/readyz").await;
    assert!(
        !ready.contains("requestheader"),
        "scaling does not wait for it: {ready}"
    );

    std::fs::write(&smi.ca_file, &ca.pem).unwrap();
    eventually("/readyz/smi to be ready", async || {
        smi.admin_get("/readyz/smi")
            .await
            .starts_with("HTTP/1.0 200")
    })
    .await;
    // Every connection from now on is checked: the front proxy's certificate is taken (discovery
    // needs no authorization, so no Kubernetes API is needed for it) and no certificate is not.
    let front_proxy = ca.client(FRONT_PROXY);
    let (status, body) = get_once(&smi, &front_proxy, "/apis").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let mut tls = smi.tls(&smi.connector(b"http/1.1", None)).await;
    use tokio::io::AsyncWriteExt;
    tls.write_all(b"GET /apis HTTP/1.0\r\nHost: a\r\nX-Remote-User: alice\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.0 401"), "{answer}");
    assert!(answer.contains("\"reason\":\"Unauthorized\""), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_serving_certificate_is_served_without_a_restart() {
    let ca = Ca::new("front-proxy-ca");
    let client = ca.client(FRONT_PROXY);
    let mut smi = Smi::start(Some(&ca), &[], &[]);
    smi.wait_listening();
    assert!(get_once(&smi, &client, "/apis").await.is_some());
    // The operator renews the Secret two thirds into the certificate's life; the API server
    // must get the new one before the old expires, with no restart in between.
    smi.renew_serving_certificate();
    eventually("the renewed certificate served", async || {
        get_once(&smi, &client, "/apis").await.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_under_a_replaced_ca_must_verify_against_the_new_one() {
    let (old_ca, new_ca) = (Ca::new("front-proxy-ca-1"), Ca::new("front-proxy-ca-2"));
    let smi = Smi::start(Some(&old_ca), &["--smi-idle-timeout", "1h"], &[]);
    smi.wait_listening();
    let mut old = connect(&smi, &old_ca.client(FRONT_PROXY)).await;
    let (status, body) = get(&mut old, "/apis").await;
    assert_eq!(status, 200, "{body}");

    // The CA rotates: once the new one is in force, its certificates are taken…
    std::fs::write(&smi.ca_file, &new_ca.pem).unwrap();
    let new = new_ca.client(FRONT_PROXY);
    eventually("the new CA to be in force", async || {
        get_once(&smi, &new, "/apis")
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    // …and the connection still open from before is no longer: its certificate is checked again.
    let (status, body) = get(&mut old, "/apis").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("requestheader CA"), "{body}");
    let mut new = connect(&smi, &new).await;
    assert_eq!(get(&mut new, "/apis").await.0, 200);
}

/// A Kubernetes API on loopback that completes TLS and then never answers: its kubeconfig.
async fn silent_kubernetes_api(dir: &std::path::Path) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())];
    let cert = params.self_signed(&key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // Reads the request, answers nothing, keeps the connection.
                let mut buf = [0u8; 4096];
                while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let kubeconfig = dir.join("silent.kubeconfig");
    let ca = base64::engine::general_purpose::STANDARD.encode(cert.pem());
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: silent\n\
             clusters: [{{name: silent, cluster: {{server: 'https://{addr}', certificate-authority-data: {ca}}}}}]\n\
             users: [{{name: silent, user: {{token: not-a-real-token}}}}]\n\
             contexts: [{{name: silent, context: {{cluster: silent, user: silent}}}}]\n"
        ),
    )
    .unwrap();
    kubeconfig
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_api_that_never_answers_holds_no_request() {
    let dir = std::env::temp_dir().join(format!("inflight-smi-silent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = silent_kubernetes_api(&dir).await;
    let ca = Ca::new("front-proxy-ca");
    let smi = Smi::start(
        Some(&ca),
        &[],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    smi.wait_listening();
    // The SubjectAccessReview goes unanswered: the caller gets a 503 that says so, not a hang
    // (the Kubernetes client itself has no read timeout).
    let mut h2 = connect(&smi, &ca.client(FRONT_PROXY)).await;
    let (status, body) = get(
        &mut h2,
        "/apis/metrics.smi-spec.io/v1alpha1/namespaces/shop/pods/web-1",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("SubjectAccessReview: no answer"), "{body}");
    let metrics = smi.admin_get("/metrics").await;
    assert!(
        metrics
            .contains("inflight_aggregator_smi_requests_refused_total{reason=\"unavailable\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("inflight_aggregator_smi_access_reviews_total{answer=\"error\"} 1"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
