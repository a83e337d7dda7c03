//! On the test bed: the API server trusts what the TLS bootstrap writes. `Bootstrap::ensure` runs
//! in this process against the bed; the real `inflight-injector` runs on this host with the files
//! of its Secret (swapped in as the kubelet does), behind a selector-less Service, called by the
//! API server through a MutatingWebhookConfiguration (`failurePolicy: Fail`) whose caBundle only
//! the bootstrap sets: a pod created in the test's namespace comes back with the proxy only if the
//! API server trusted the chain. So it stays through a renewal and a CA rotation. An APIService
//! backed by a server in this process with the aggregator's Secret answers `kubectl get --raw`
//! once the bootstrap has set its caBundle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use inflight_operator::certs::{Bootstrap, CertFlags};
use inflight_testbed::images::image_ref;
use inflight_testbed::{eventually, TestBed};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, PostParams};
use prometheus_client::registry::Registry;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

const CA: &str = "test-ca";
const INJECTOR_SECRET: &str = "injector-tls";
const INJECTOR_SERVICE: &str = "injector";
const AGGREGATOR_SECRET: &str = "aggregator-tls";
const AGGREGATOR_SERVICE: &str = "aggregator";

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    certs: CertFlags,
}

/// A test's object names: the Secrets and Services live in its namespace; the webhook
/// configuration and the APIService, cluster-wide, are named after it.
struct Names {
    ns: String,
    webhook: String,
    group: String,
    apiservice: String,
    /// KEDA's client Secret and the ClusterTriggerAuthentication, the test's own.
    keda: String,
}

impl Names {
    fn new(tb: &TestBed) -> Self {
        let ns = tb.namespace().to_owned();
        let group = format!("{ns}.certs.inflight.dev");
        Self {
            webhook: format!("inflight-certs-{ns}"),
            apiservice: format!("v1alpha1.{group}"),
            keda: format!("inflight-keda-{ns}"),
            group,
            ns,
        }
    }

    fn bootstrap(&self, tb: &TestBed, extra: &[&str]) -> (Bootstrap, Registry) {
        let mut args = vec![
            "inflight-operator",
            "--ca-secret",
            CA,
            "--injector-secret",
            INJECTOR_SECRET,
            "--injector-service",
            INJECTOR_SERVICE,
            "--webhook-configuration",
            &self.webhook,
            "--aggregator-secret",
            AGGREGATOR_SECRET,
            "--aggregator-service",
            AGGREGATOR_SERVICE,
            "--apiservice",
            &self.apiservice,
            "--keda-client-secret",
            &self.keda,
            "--trigger-authentication",
            &self.keda,
        ];
        args.extend_from_slice(extra);
        let flags = Cli::parse_from(args).certs;
        flags.check().unwrap();
        let mut registry = Registry::with_prefix("inflight");
        let bootstrap = Bootstrap::new(tb.client(), &self.ns, &flags, &mut registry);
        (bootstrap, registry)
    }

    fn dns(&self, service: &str) -> String {
        format!("{service}.{}.svc", self.ns)
    }
}

/// Deletes a cluster-scoped object when dropped, so that a failing test leaves no webhook with
/// `failurePolicy: Fail` or unavailable APIService behind on the shared bed.
struct Delete<'a> {
    tb: &'a TestBed,
    kind: &'static str,
    name: String,
}

impl Drop for Delete<'_> {
    fn drop(&mut self) {
        let _ = self.tb.kubectl(&[
            "delete",
            self.kind,
            &self.name,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// [`Delete`] for an object of another namespace (KEDA's).
struct DeleteIn<'a> {
    tb: &'a TestBed,
    namespace: &'static str,
    kind: &'static str,
    name: String,
}

impl Drop for DeleteIn<'_> {
    fn drop(&mut self) {
        let _ = inflight_testbed::api::kubectl_run(
            self.tb.layout(),
            &[
                "-n",
                self.namespace,
                "delete",
                self.kind,
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ],
        );
    }
}

fn metrics(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

fn metric(registry: &Registry, series: &str) -> f64 {
    metrics(registry)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn secret(tb: &TestBed, name: &str) -> Secret {
    Api::<Secret>::namespaced(tb.client(), tb.namespace())
        .get(name)
        .await
        .unwrap()
}

fn entry(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().unwrap();
    String::from_utf8(data[key].0.clone()).unwrap()
}

fn rv(secret: &Secret) -> String {
    secret.metadata.resource_version.clone().unwrap()
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect()
}

fn dns_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

fn is_ca(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).unwrap().1.is_ca()
}

/// Whether rustls (webpki), trusting `bundle_pem`, accepts `leaf` as the server `name` now:
/// chain, validity, serverAuth and name, as a TLS client in the cluster checks them.
fn verifies(bundle_pem: &str, leaf: &[u8], name: &str) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in ders(bundle_pem) {
        roots.add(CertificateDer::from(ca)).unwrap();
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_server_cert(
            &CertificateDer::from(leaf.to_vec()),
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Checks KEDA's client certificate: in KEDA's namespace, ours, trusting `bundle_pem` (so that
/// KEDA accepts the aggregator's certificate), its certificate a client certificate that a
/// server trusting `signer_pem` accepts; and the ClusterTriggerAuthentication handing it to KEDA.
async fn check_keda_client(tb: &TestBed, names: &Names, bundle_pem: &str, signer_pem: &str) {
    let s = Api::<Secret>::namespaced(tb.client(), "keda")
        .get(&names.keda)
        .await
        .unwrap();
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(entry(&s, "ca.crt"), bundle_pem);
    let mut roots = rustls::RootCertStore::empty();
    for ca in ders(signer_pem) {
        roots.add(CertificateDer::from(ca)).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let leaf = ders(&entry(&s, "tls.crt")).remove(0);
    verifier
        .verify_client_cert(&CertificateDer::from(leaf), &[], UnixTime::now())
        .expect("a client certificate of the signer");
    let cta = tb
        .kubectl(&[
            "get",
            "clustertriggerauthentication",
            &names.keda,
            "-o",
            "json",
        ])
        .unwrap();
    let cta: serde_json::Value = serde_json::from_str(&cta).unwrap();
    let refs: Vec<String> = cta["spec"]["secretTargetRef"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}={}/{}", r["parameter"], r["name"], r["key"]).replace('"', ""))
        .collect();
    let k = &names.keda;
    assert_eq!(
        refs,
        [
            format!("caCert={k}/ca.crt"),
            format!("tlsClientCert={k}/tls.crt"),
            format!("tlsClientKey={k}/tls.key")
        ]
    );
}

/// Checks a serving Secret: ours, `kubernetes.io/tls`, the four names of its Service, signed by
/// the CA in its `ca.crt` and accepted by a client trusting `bundle_pem`. Its certificate.
fn check_serving(names: &Names, s: &Secret, service: &str, bundle_pem: &str) -> Vec<u8> {
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        s.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "inflight-operator"
    );
    let leaf = ders(&entry(s, "tls.crt")).remove(0);
    let ns = &names.ns;
    let mut want = vec![
        service.to_owned(),
        format!("{service}.{ns}"),
        format!("{service}.{ns}.svc"),
        format!("{service}.{ns}.svc.cluster.local"),
    ];
    want.sort();
    assert_eq!(dns_names(&leaf), want);
    assert!(!is_ca(&leaf));
    verifies(&entry(s, "ca.crt"), &leaf, &names.dns(service)).unwrap();
    verifies(bundle_pem, &leaf, &names.dns(service)).unwrap();
    leaf
}

/// The caBundle of every webhook of the configuration.
async fn webhook_bundles(tb: &TestBed, name: &str) -> (Vec<String>, String) {
    let mwc = Api::<MutatingWebhookConfiguration>::all(tb.client())
        .get(name)
        .await
        .unwrap();
    let bundles = mwc
        .webhooks
        .unwrap()
        .iter()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| String::from_utf8(b.0.clone()).unwrap())
                .unwrap_or_default()
        })
        .collect();
    (bundles, mwc.metadata.resource_version.unwrap())
}

/// Files of a Secret volume as the kubelet writes them: the keys are links into `..data`, a link
/// to a directory of this version, swapped in one rename, so a reader sees all old or all new.
struct Volume {
    dir: PathBuf,
}

impl Volume {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("inflight-certs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    fn mount(&self, secret: &Secret) {
        static VERSION: AtomicU32 = AtomicU32::new(0);
        let version = format!("..v{}", VERSION.fetch_add(1, Ordering::Relaxed));
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        for (key, value) in secret.data.as_ref().unwrap() {
            std::fs::write(self.dir.join(&version).join(key), &value.0).unwrap();
            let link = self.dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(key), &link).unwrap();
            }
        }
        let staged = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(&version, &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `inflight-injector` binary of this build (built first, so it is current), from the
/// target directory this test binary runs from.
fn injector_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "-p",
            "inflight-injector",
            "--bin",
            "inflight-injector",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    // What cargo set for this test binary (its package's name, manifest, …) is not the build's
    // environment: build scripts that watch such variables (ring's) would run again, and every
    // other build after this one too.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_for_crates = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_", "CARGO_CFG_"]
            .iter()
            .any(|p| key.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&key.as_ref());
        if set_for_crates {
            build.env_remove(key.as_ref());
        }
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(
        status.success(),
        "cargo build -p inflight-injector: {status}"
    );
    profile_dir.join("inflight-injector")
}

/// The real injector on the host end of the bed's network, serving the files of `volume`; killed
/// when dropped.
struct Injector {
    child: Child,
    addr: SocketAddr,
}

impl Injector {
    async fn start(tb: &TestBed, volume: &Volume) -> Self {
        let binary = tokio::task::spawn_blocking(injector_binary).await.unwrap();
        let host = tb.layout().host_ip();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind((host, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let admin = std::net::TcpListener::bind(("127.0.0.1", 0))
                .unwrap()
                .local_addr()
                .unwrap();
            let addr = SocketAddr::from((host, port));
            let child = Command::new(&binary)
                .args(["--listen", &addr.to_string()])
                .args(["--admin-listen", &admin.to_string()])
                .arg("--tls-cert")
                .arg(volume.path("tls.crt"))
                .arg("--tls-key")
                .arg(volume.path("tls.key"))
                .args(["--tls-reload-interval", "200ms"])
                .args(["--proxy-image", &image_ref("inflight-proxy")])
                .args(["--native-sidecar", "always"])
                .env("RUST_LOG", "info")
                .env_remove("KUBECONFIG")
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            let child = std::sync::Mutex::new(child);
            let up = eventually("the injector to listen", 120, || async {
                if child.lock().unwrap().try_wait().unwrap().is_some() {
                    return Some(false);
                }
                tokio::net::TcpStream::connect(addr)
                    .await
                    .ok()
                    .map(|_| true)
            })
            .await;
            if up {
                let child = child.into_inner().unwrap();
                return Self { child, addr };
            }
        }
        panic!("inflight-injector exited at start three times");
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The certificate a TLS client trusting `bundle_pem` gets from `addr` as `name`: what the API
/// server checks when it calls there.
async fn served(addr: SocketAddr, bundle_pem: &str, name: &str) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in ders(bundle_pem) {
        roots.add(CertificateDer::from(ca)).ok()?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).ok()?, tcp)
        .await
        .ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
    Some(leaf)
}

/// A selector-less Service `name` (port 443) whose EndpointSlice is `port` on the host end.
fn host_service(tb: &TestBed, name: &str, port: u16) {
    tb.apply(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": format!("{name}-host"), "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [tb.layout().host_ip().to_string()], "conditions": {"ready": true}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}
    ]}))
    .unwrap();
}

/// Creates a pod (dry run: the webhooks are called, nothing is stored) and says whether it came
/// back with the proxy; an error names why the API server refused it (with `failurePolicy: Fail`,
/// a webhook it could not call or did not trust).
async fn created_with_proxy(tb: &TestBed, name: &str) -> Result<bool, String> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": image_ref("inflight-demo-app"),
                                 "imagePullPolicy": "Never", "ports": [{"containerPort": 8080}]}]}
    }))
    .unwrap();
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let pod = Api::<Pod>::namespaced(tb.client(), tb.namespace())
        .create(&params, &pod)
        .await
        .map_err(|e| e.to_string())?;
    let spec = pod.spec.unwrap();
    Ok(spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .any(|c| c.name == "inflight-proxy"))
}

/// Waits for pod creation to succeed with the proxy, printing each new reason it does not.
async fn until_injected(tb: &TestBed, what: &str) {
    let last = std::sync::Mutex::new(String::new());
    eventually(what, 60, || async {
        let outcome = created_with_proxy(tb, "probe").await;
        let said = format!("{outcome:?}");
        if *last.lock().unwrap() != said {
            eprintln!("{what}: {said}");
            *last.lock().unwrap() = said;
        }
        (outcome == Ok(true)).then_some(())
    })
    .await;
}

async fn assert_injected(tb: &TestBed, what: &str) {
    assert_eq!(created_with_proxy(tb, "probe").await, Ok(true), "{what}");
}

/// The webhook configuration as the chart would write it, without a caBundle, calling the
/// injector's Service, for this test's namespace only; a second webhook that selects no pod shows
/// that every webhook gets the bundle.
fn webhook_configuration(names: &Names) -> serde_json::Value {
    let webhook = |name: &str, object_selector: serde_json::Value| {
        serde_json::json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"service": {"namespace": names.ns, "name": INJECTOR_SERVICE, "path": "/mutate", "port": 443}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": names.ns, "inflight.dev/inject": "enabled"}},
            "objectSelector": object_selector,
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 5
        })
    };
    serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": names.webhook},
        "webhooks": [
            webhook("inject.inflight.dev", serde_json::json!({})),
            webhook("never.inflight.dev", serde_json::json!({"matchLabels": {"inflight.dev/never": "true"}})),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_the_api_server_trusts_the_injector_through_the_bootstrap_renewal_and_ca_rotation()
{
    let tb = TestBed::shared().await.unwrap();
    let names = Names::new(&tb);
    tb.kubectl(&[
        "label",
        "namespace",
        &names.ns,
        "inflight.dev/inject=enabled",
    ])
    .unwrap();

    // First pass: nothing exists, not even the webhook configuration or the APIService (logged,
    // counted, not an error).
    let (first, registry) = names.bootstrap(&tb, &[]);
    let next = first.ensure().await.unwrap();
    assert!(next <= Duration::from_secs(3600), "{next:?}");
    let ca = secret(&tb, CA).await;
    assert_eq!(ca.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca_cert = entry(&ca, "tls.crt");
    assert!(is_ca(&ders(&ca_cert)[0]));
    assert_eq!(entry(&ca, "ca.crt"), ca_cert, "one CA trusted");
    let injector_secret = secret(&tb, INJECTOR_SECRET).await;
    check_serving(&names, &injector_secret, INJECTOR_SERVICE, &ca_cert);
    check_serving(
        &names,
        &secret(&tb, AGGREGATOR_SECRET).await,
        AGGREGATOR_SERVICE,
        &ca_cert,
    );
    for s in [CA, INJECTOR_SECRET, AGGREGATOR_SECRET, &names.keda] {
        let series = format!("inflight_operator_certificates_issued_total{{secret=\"{s}\"}}");
        assert_eq!(metric(&registry, &series), 1.0, "{}", metrics(&registry));
    }
    let _cta = Delete {
        tb: &tb,
        kind: "clustertriggerauthentication",
        name: names.keda.clone(),
    };
    let _keda_secret = DeleteIn {
        tb: &tb,
        namespace: "keda",
        kind: "secret",
        name: names.keda.clone(),
    };
    check_keda_client(&tb, &names, &ca_cert, &ca_cert).await;
    assert!(
        metric(
            &registry,
            "inflight_operator_certificate_errors_total{kind=\"missing\"}"
        ) >= 2.0
    );

    // The injector serves the Secret's files; the API server calls it through its Service.
    let volume = Volume::new(&names.ns);
    volume.mount(&injector_secret);
    let injector = Injector::start(&tb, &volume).await;
    host_service(&tb, INJECTOR_SERVICE, injector.addr.port());
    let _webhook = Delete {
        tb: &tb,
        kind: "mutatingwebhookconfiguration",
        name: names.webhook.clone(),
    };
    tb.apply(&webhook_configuration(&names)).unwrap();
    // Without a caBundle, the API server does not trust the injector (once it sees the webhook).
    let refused = eventually("the webhook to be called", 60, || async {
        created_with_proxy(&tb, "before").await.err()
    })
    .await;
    assert!(refused.contains("x509"), "{refused}");

    first.ensure().await.unwrap();
    let (bundles, _) = webhook_bundles(&tb, &names.webhook).await;
    assert_eq!(
        bundles,
        vec![ca_cert.clone(), ca_cert.clone()],
        "every webhook"
    );
    until_injected(&tb, "a pod created through the webhook to get the proxy").await;

    // Nothing due: a second pass writes nothing.
    let before = [
        rv(&secret(&tb, CA).await),
        rv(&secret(&tb, INJECTOR_SECRET).await),
        rv(&secret(&tb, AGGREGATOR_SECRET).await),
        webhook_bundles(&tb, &names.webhook).await.1,
    ];
    first.ensure().await.unwrap();
    let after = [
        rv(&secret(&tb, CA).await),
        rv(&secret(&tb, INJECTOR_SECRET).await),
        rv(&secret(&tb, AGGREGATOR_SECRET).await),
        webhook_bundles(&tb, &names.webhook).await.1,
    ];
    assert_eq!(before, after, "resourceVersions of a pass with nothing due");

    // Renewal: with a renewal window longer than what the certificates have left, both serving
    // certificates are made again under the same CA; the CA and the caBundles stay.
    let (renewing, _) =
        names.bootstrap(&tb, &["--cert-validity", "200d", "--renew-before", "100d"]);
    renewing.ensure().await.unwrap();
    let renewed = secret(&tb, INJECTOR_SECRET).await;
    assert_ne!(rv(&renewed), before[1]);
    assert_ne!(rv(&secret(&tb, AGGREGATOR_SECRET).await), before[2]);
    assert_eq!(rv(&secret(&tb, CA).await), before[0], "the CA stays");
    assert_eq!(webhook_bundles(&tb, &names.webhook).await.1, before[3]);
    let new_leaf = check_serving(&names, &renewed, INJECTOR_SERVICE, &ca_cert);
    assert_injected(&tb, "the old certificate, still served, is still trusted").await;
    volume.mount(&renewed);
    let dns = names.dns(INJECTOR_SERVICE);
    eventually(
        "the injector to serve the renewed certificate",
        30,
        || async { (served(injector.addr, &ca_cert, &dns).await? == new_leaf).then_some(()) },
    )
    .await;
    assert_injected(&tb, "the renewed certificate is trusted").await;

    // CA rotation: a CA within its (longer) renewal window is replaced; during the overlap the
    // caBundle trusts both, the serving certificates move to the new CA.
    let (rotating, registry) = names.bootstrap(
        &tb,
        &[
            "--ca-validity",
            "3650d",
            "--ca-renew-before",
            "3000d",
            "--ca-overlap",
            "20s",
        ],
    );
    let next = rotating.ensure().await.unwrap();
    assert!(
        next <= Duration::from_secs(20),
        "next pass at the overlap's end: {next:?}"
    );
    assert_eq!(
        metric(
            &registry,
            &format!("inflight_operator_certificates_issued_total{{secret=\"{CA}\"}}")
        ),
        1.0
    );
    let rotated_ca = secret(&tb, CA).await;
    let new_ca = entry(&rotated_ca, "tls.crt");
    assert_ne!(new_ca, ca_cert);
    let both = entry(&rotated_ca, "ca.crt");
    assert_eq!(
        both,
        format!("{new_ca}{ca_cert}"),
        "new CA first, then the old one"
    );
    let (bundles, _) = webhook_bundles(&tb, &names.webhook).await;
    assert_eq!(bundles, vec![both.clone(), both.clone()]);
    let moved = secret(&tb, INJECTOR_SECRET).await;
    let moved_leaf = check_serving(&names, &moved, INJECTOR_SERVICE, &both);
    assert_eq!(entry(&moved, "ca.crt"), new_ca);
    assert!(
        verifies(&ca_cert, &moved_leaf, &dns).is_err(),
        "signed by the new CA only"
    );
    // KEDA's client certificate moved to the new CA too, and KEDA trusts both meanwhile.
    check_keda_client(&tb, &names, &both, &new_ca).await;
    assert_injected(
        &tb,
        "the old CA's certificate, still served, is trusted during the overlap",
    )
    .await;
    volume.mount(&moved);
    eventually(
        "the injector to serve the new CA's certificate",
        30,
        || async { (served(injector.addr, &new_ca, &dns).await? == moved_leaf).then_some(()) },
    )
    .await;
    assert_injected(&tb, "the new CA's certificate is trusted").await;

    // Once the overlap has passed, the old CA leaves the bundles.
    let alone = eventually("the old CA to leave the caBundle", 90, || async {
        rotating.ensure().await.ok()?;
        let (bundles, _) = webhook_bundles(&tb, &names.webhook).await;
        (ders(&bundles[0]).len() == 1).then_some(bundles)
    })
    .await;
    assert_eq!(alone, vec![new_ca.clone(), new_ca.clone()]);
    assert_eq!(entry(&secret(&tb, CA).await, "ca.crt"), new_ca);
    assert_injected(&tb, "after the overlap").await;
    assert_eq!(
        secret(&tb, INJECTOR_SECRET).await.metadata.resource_version,
        moved.metadata.resource_version,
        "the serving certificate was not made again"
    );
}

/// A tiny extension API server for `group_version` serving `cert`/`key`.
async fn extension_server(
    tb: &TestBed,
    cert_pem: &str,
    key_pem: &str,
    group_version: String,
) -> (u16, tokio::task::JoinHandle<()>) {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        chain,
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((tb.layout().host_ip(), 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, gv) = (acceptor.clone(), group_version.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let found = req.uri().path() == format!("/apis/{gv}");
                        let body = if found {
                            serde_json::json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": []})
                        } else {
                            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
                        };
                        let mut response =
                            hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                        if !found {
                            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                        }
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        async move { Ok::<_, Infallible>(response) }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_the_aggregation_layer_trusts_the_apiservice_bundle_the_bootstrap_sets() {
    let tb = TestBed::shared().await.unwrap();
    let names = Names::new(&tb);
    let (bootstrap, _) = names.bootstrap(&tb, &[]);
    bootstrap.ensure().await.unwrap();

    let serving = secret(&tb, AGGREGATOR_SECRET).await;
    let group_version = format!("{}/v1alpha1", names.group);
    let (port, server) = extension_server(
        &tb,
        &entry(&serving, "tls.crt"),
        &entry(&serving, "tls.key"),
        group_version.clone(),
    )
    .await;
    host_service(&tb, AGGREGATOR_SERVICE, port);
    let _apiservice = Delete {
        tb: &tb,
        kind: "apiservice",
        name: names.apiservice.clone(),
    };
    tb.apply(&serde_json::json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": names.apiservice},
        "spec": {"group": names.group, "version": "v1alpha1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                 "service": {"namespace": names.ns, "name": AGGREGATOR_SERVICE, "port": 443}}}))
    .unwrap();

    bootstrap.ensure().await.unwrap();
    let api = Api::<APIService>::all(tb.client());
    let patched = api.get(&names.apiservice).await.unwrap();
    let bundle = entry(&secret(&tb, CA).await, "ca.crt");
    assert_eq!(
        patched.spec.as_ref().unwrap().ca_bundle.as_ref().unwrap().0,
        bundle.as_bytes()
    );

    // The API server proxies to the server only if the bundle verifies its certificate.
    let path = format!("/apis/{group_version}");
    let last = std::sync::Mutex::new(String::new());
    let raw = eventually("kubectl get --raw through the APIService", 90, || async {
        match tb.kubectl(&["get", "--raw", &path]) {
            Ok(raw) => Some(raw),
            Err(e) => {
                let e = e.to_string();
                if *last.lock().unwrap() != e {
                    eprintln!("get --raw {path}: {e}");
                    *last.lock().unwrap() = e;
                }
                None
            }
        }
    })
    .await;
    let list: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(list["groupVersion"], group_version.as_str(), "{raw}");

    // Nothing due: the APIService is not written again.
    let rv = patched.metadata.resource_version.clone();
    bootstrap.ensure().await.unwrap();
    assert_eq!(
        api.get(&names.apiservice)
            .await
            .unwrap()
            .metadata
            .resource_version,
        rv
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_an_unreadable_secret_is_replaced_counted_and_keeps_its_type() {
    let tb = TestBed::shared().await.unwrap();
    let names = Names::new(&tb);
    // Someone's Opaque Secret, with a key that is not a key.
    tb.apply(&serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": INJECTOR_SECRET},
        "stringData": {"tls.crt": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "tls.key": "nope", "note": "kept"}}))
    .unwrap();
    let (bootstrap, registry) = names.bootstrap(&tb, &[]);
    bootstrap.ensure().await.unwrap();
    assert_eq!(
        metric(
            &registry,
            "inflight_operator_certificate_errors_total{kind=\"unreadable\"}"
        ),
        1.0
    );
    let replaced = secret(&tb, INJECTOR_SECRET).await;
    assert_eq!(
        replaced.type_.as_deref(),
        Some("Opaque"),
        "a Secret's type cannot change"
    );
    assert_eq!(
        entry(&replaced, "note"),
        "kept",
        "keys that are not ours stay"
    );
    let leaf = ders(&entry(&replaced, "tls.crt")).remove(0);
    let ca = entry(&secret(&tb, CA).await, "tls.crt");
    verifies(&ca, &leaf, &names.dns(INJECTOR_SERVICE)).unwrap();
    let series =
        format!("inflight_operator_certificate_expiry_seconds{{secret=\"{INJECTOR_SECRET}\"}}");
    let left = metric(&registry, &series);
    assert!(left > 89.0 * 86_400.0 && left <= 90.0 * 86_400.0, "{left}");
}
