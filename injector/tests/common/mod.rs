//! Starting the real `inflight-injector` binary on loopback with a certificate of the test's own,
//! and talking to it over TLS as the API server does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed serving certificate for 127.0.0.1, in files of a directory of its own.
pub struct Certs {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub pem: String,
}

impl Certs {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "inflight-injector-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            dir,
            pem: String::new(),
        };
        certs.rotate()
    }

    /// Writes a new certificate (and key) over the files.
    pub fn rotate(mut self) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
        std::fs::write(&self.cert, cert.pem()).unwrap();
        self.pem = cert.pem();
        self
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `inflight-injector` binary, killed when dropped.
pub struct Injector {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Injector {
    /// On loopback, proxies as native sidecars, no cluster.
    pub fn start(certs: &Certs, extra: &[&str]) -> Self {
        let mut args = vec![
            "--proxy-image",
            "inflight-proxy:test",
            "--native-sidecar",
            "always",
        ];
        args.extend_from_slice(extra);
        Self::spawn(
            IpAddr::from([127, 0, 0, 1]),
            &certs.cert,
            &certs.key,
            &args,
            None,
        )
    }

    /// Listening on `ip`, serving `cert`, talking to the cluster of `kubeconfig` if any.
    pub fn spawn(
        ip: IpAddr,
        cert: &Path,
        key: &Path,
        args: &[&str],
        kubeconfig: Option<&Path>,
    ) -> Self {
        // A port picked free can be taken before the binary binds it: start again elsewhere.
        for _ in 0..3 {
            let addr = SocketAddr::from((ip, free_port()));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut command = Command::new(env!("CARGO_BIN_EXE_inflight-injector"));
            command
                .args([
                    "--listen",
                    &addr.to_string(),
                    "--admin-listen",
                    &admin.to_string(),
                ])
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .args(args)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null());
            match kubeconfig {
                Some(k) => command.env("KUBECONFIG", k),
                None => command.env_remove("KUBECONFIG"),
            };
            let mut child = command.spawn().unwrap();
            let until = Instant::now() + Duration::from_secs(120);
            while child.try_wait().unwrap().is_none() {
                if std::net::TcpStream::connect(addr).is_ok()
                    && std::net::TcpStream::connect(admin).is_ok()
                {
                    return Self { child, addr, admin };
                }
                assert!(Instant::now() < until, "inflight-injector did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("inflight-injector exited at start three times");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new HTTP/1.1 connection over TLS, trusting `ca_pem`.
    pub async fn connect(&self, ca_pem: &str) -> SendRequest<Full<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let tls = tls_connector(ca_pem)
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    }

    /// `method path` with `body` on a new connection: (status, body).
    pub async fn call(
        &self,
        ca_pem: &str,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, String) {
        let mut sender = self.connect(ca_pem).await;
        send(&mut sender, method, path, body).await
    }

    /// [`Injector::call`], for a body the injector may refuse before it has all been sent: the
    /// refusal can then arrive as a reset connection rather than as its answer.
    pub async fn try_call(
        &self,
        ca_pem: &str,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String), hyper::Error> {
        let mut sender = self.connect(ca_pem).await;
        try_send(&mut sender, method, path, body).await
    }

    /// An AdmissionReview of creating `pod`, POSTed to `/mutate`: (status, body).
    pub async fn review(&self, ca_pem: &str, pod: &serde_json::Value) -> (u16, String) {
        self.call(
            ca_pem,
            "POST",
            "/mutate",
            review_of(pod).to_string().into_bytes(),
        )
        .await
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let tcp = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::get("/metrics")
            .header("host", "admin")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// The value of the series `series` (name and labels as printed) in `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, String) {
    try_send(sender, method, path, body).await.unwrap()
}

pub async fn try_send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, String), hyper::Error> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// An AdmissionReview of the creation of `pod` (JSON), as the API server sends it.
pub fn review_of(pod: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default", "operation": "CREATE", "name": "",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}
