//! The scaler port answers only a caller with a client certificate of `--scaler-client-ca` (KEDA,
//! with the certificate the operator issues it): a caller with no certificate, with one of
//! another CA, or in plaintext never gets to a call, and each refusal is counted. A new CA in the
//! file is taken without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Aggregator;
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::ScaledObjectRef;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A leaf (PEM certificate and key) for `names`, for a server or a client.
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        params.distinguished_name.push(DnType::CommonName, "keda");
        let issuer = rcgen::Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap();
        (
            params.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    fn client(&self) -> Identity {
        let (cert, key) = self.issue(&[], ExtendedKeyUsagePurpose::ClientAuth);
        Identity::from_pem(cert, key)
    }
}

/// A directory of the test's own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("inflight-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, file: &str, text: &str) -> String {
        let path = self.0.join(file);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The aggregator with a serving certificate of `ca` for `localhost`, accepting clients of the
/// CAs in `client_ca`.
fn mutual(dir: &Dir, ca: &Ca, client_ca: &Path) -> Aggregator {
    let (cert, key) = ca.issue(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let (cert, key) = (dir.write("tls.crt", &cert), dir.write("tls.key", &key));
    Aggregator::start(&[
        "--scaler-auth",
        "mtls",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--scaler-client-ca",
        &client_ca.display().to_string(),
    ])
}

/// A channel to the scaler port as KEDA opens it: trusting `ca`, presenting `identity`.
fn channel(aggregator: &Aggregator, ca: &Ca, identity: Option<Identity>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert.pem()))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(format!("https://localhost:{}", aggregator.scaler.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// One `GetMetricSpec`, as KEDA calls it when it builds the trigger.
async fn call(channel: Channel) -> Result<String, tonic::Status> {
    let reference = ScaledObjectRef {
        name: "web".into(),
        namespace: "shop".into(),
        scaler_metadata: HashMap::from([
            ("workload".to_owned(), "deployment/web".to_owned()),
            ("target".to_owned(), "10".to_owned()),
        ]),
    };
    let spec = ExternalScalerClient::new(channel)
        .get_metric_spec(reference)
        .await?
        .into_inner();
    Ok(spec.metric_specs[0].metric_name.clone())
}

async fn refused(aggregator: &Aggregator) -> f64 {
    aggregator
        .metric("inflight_aggregator_scaler_connections_total{result=\"refused\"}")
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_client_certificate_of_the_trusted_ca_gets_an_answer() {
    let dir = Dir::new("scaler-tls");
    let (ours, theirs) = (Ca::new("inflight"), Ca::new("someone else"));
    let client_ca = dir.write("ca.crt", &ours.cert.pem());
    let aggregator = mutual(&dir, &ours, Path::new(&client_ca));

    let answered = call(channel(&aggregator, &ours, Some(ours.client()))).await;
    assert!(
        answered.unwrap().contains("web"),
        "KEDA's certificate is answered"
    );
    let accepted = aggregator
        .metric("inflight_aggregator_scaler_connections_total{result=\"accepted\"}")
        .await;
    assert_eq!(accepted, Some(1.0));

    let before = refused(&aggregator).await;
    let none = call(channel(&aggregator, &ours, None)).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    let foreign = call(channel(&aggregator, &ours, Some(theirs.client()))).await;
    assert!(foreign.is_err(), "a certificate of another CA: {foreign:?}");
    let plain = Endpoint::from_shared(format!("http://{}", aggregator.scaler))
        .unwrap()
        .connect_lazy();
    let plain = call(plain).await;
    assert!(plain.is_err(), "plaintext: {plain:?}");
    // Each failed its handshake at the server, and was counted there.
    assert_eq!(refused(&aggregator).await, before + 3.0);
    let accepted = aggregator
        .metric("inflight_aggregator_scaler_connections_total{result=\"accepted\"}")
        .await;
    assert_eq!(accepted, Some(1.0), "no refused caller got a connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_ca_is_taken_without_a_restart() {
    let dir = Dir::new("scaler-tls-rotation");
    let (old, new) = (Ca::new("inflight"), Ca::new("inflight, renewed"));
    let client_ca = dir.write("ca.crt", &old.cert.pem());
    let aggregator = mutual(&dir, &old, Path::new(&client_ca));
    assert!(call(channel(&aggregator, &old, Some(new.client())))
        .await
        .is_err());

    // The operator's bundle during a rotation: both CAs.
    dir.write("ca.crt", &format!("{}{}", old.cert.pem(), new.cert.pem()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if call(channel(&aggregator, &old, Some(new.client())))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new CA's client is still refused"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still = call(channel(&aggregator, &old, Some(old.client()))).await;
    assert!(still.is_ok(), "the old CA's client too: {still:?}");
}

#[test]
fn without_its_certificate_files_the_scaler_does_not_start_open() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inflight-aggregator"))
        .env_remove("KUBECONFIG")
        .args(["--ingest-auth", "none", "--scaler-auth", "mtls"])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--scaler-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--smi-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--scaler-client-ca"), "{stderr}");
}
