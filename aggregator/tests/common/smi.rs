//! The aggregator's SMI API on loopback: the real binary with a serving certificate of our own
//! (so clients can verify it) and a requestheader CA of our own in a file
//! (`--requestheader-client-ca-file`), which stands for the API server's front-proxy CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::free_port;

/// Generous: the machine is a loaded 2-core box.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A certificate authority for client certificates.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// A client certificate and its key, PEM.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    /// A client certificate of this CA with common name `cn`.
    pub fn client(&self, cn: &str) -> ClientCert {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .unwrap();
        ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The aggregator binary, killed when dropped.
pub struct Smi {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Where `--requestheader-client-ca-file` points.
    pub ca_file: PathBuf,
    ca: CertificateDer<'static>,
    dir: PathBuf,
}

impl Smi {
    /// Started with `requestheader`'s PEM in the CA file (none: the file does not exist yet),
    /// without a Kubernetes API unless `env` names one. Returns once the process runs: the SMI
    /// port listens only once the CA file has been read.
    pub fn start(requestheader: Option<&Ca>, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "inflight-smi-loopback-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        let ca_file = dir.join("requestheader-ca.crt");
        if let Some(ca) = requestheader {
            std::fs::write(&ca_file, &ca.pem).unwrap();
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let local = |p: u16| format!("127.0.0.1:{p}");
        let child = Command::new(env!("CARGO_BIN_EXE_inflight-aggregator"))
            .args(["--grpc-listen", &local(free_port())])
            .args(["--scaler-listen", &local(free_port())])
            // These tests are the SMI API's; report streams are tests/ingest_auth.rs's, the
            // scaler's callers tests/scaler_tls.rs's.
            .args(["--ingest-auth", "none", "--scaler-auth", "none"])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--smi-listen", &addr.to_string()])
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .arg("--requestheader-client-ca-file")
            .arg(&ca_file)
            .args(extra)
            .env_remove("KUBECONFIG")
            .envs(env.iter().copied())
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(admin).is_err() {
            assert!(Instant::now() < until, "the admin port did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            addr,
            admin,
            ca_file,
            ca: cert.der().clone(),
            dir,
        }
    }

    /// Writes a new serving certificate (another key) over the files the aggregator was started
    /// with, as the kubelet updates a renewed Secret; [`Smi::connector`] trusts only the new one
    /// from now on.
    pub fn renew_serving_certificate(&mut self) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(self.dir.join("tls.key"), key.serialize_pem()).unwrap();
        std::fs::write(self.dir.join("tls.crt"), cert.pem()).unwrap();
        self.ca = cert.der().clone();
    }

    /// Waits until the SMI port accepts connections.
    pub fn wait_listening(&self) {
        let until = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < until,
                "the SMI API did not listen on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A TLS client offering `alpn`, with `client`'s certificate if any.
    pub fn connector(&self, alpn: &[u8], client: Option<&ClientCert>) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match client {
            Some(c) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    pub async fn tls(&self, connector: &TlsConnector) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// `GET path` of the admin port: the whole response.
    pub async fn admin_get(&self, path: &str) -> String {
        use tokio::io::AsyncWriteExt;
        let mut stream = TcpStream::connect(self.admin).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }
}

impl Drop for Smi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads until the server closes the connection (an error counts: a TLS peer that closes
/// without `close_notify`), or fails the test at the deadline.
pub async fn closed_by_server(mut stream: impl AsyncRead + Unpin) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server left the connection open");
}
