//! The cluster's certificates, as kubeadm would lay them out: a cluster CA for every client and
//! serving certificate, a separate front-proxy CA for the aggregation layer, and the service-account
//! signing key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::layout::{Layout, CLUSTER_DOMAIN};
use crate::Error;

/// A certificate authority kept in memory while the PKI is written.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new(common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        Ok(Self {
            params,
            key: KeyPair::generate()?,
        })
    }

    fn write(&self, dir: &Path, stem: &str) -> Result<(), Error> {
        let cert = self.params.self_signed(&self.key)?;
        write(dir, &format!("{stem}.crt"), &cert.pem())?;
        write(dir, &format!("{stem}.key"), &self.key.serialize_pem())
    }

    /// Issues a leaf certificate and writes `<stem>.crt` and `<stem>.key`.
    fn issue(&self, dir: &Path, stem: &str, leaf: Leaf<'_>) -> Result<(), Error> {
        let mut params =
            CertificateParams::new(leaf.dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name = dn(leaf.common_name, leaf.organization);
        params
            .subject_alt_names
            .extend(leaf.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = leaf.usages.to_vec();
        validity(&mut params);
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        write(dir, &format!("{stem}.crt"), &cert.pem())?;
        write(dir, &format!("{stem}.key"), &key.serialize_pem())
    }
}

struct Leaf<'a> {
    common_name: &'a str,
    organization: Option<&'a str>,
    dns: &'a [&'a str],
    ips: &'a [IpAddr],
    usages: &'a [ExtendedKeyUsagePurpose],
}

const CLIENT: &[ExtendedKeyUsagePurpose] = &[ExtendedKeyUsagePurpose::ClientAuth];
const SERVER: &[ExtendedKeyUsagePurpose] = &[ExtendedKeyUsagePurpose::ServerAuth];

fn client<'a>(common_name: &'a str, organization: Option<&'a str>) -> Leaf<'a> {
    Leaf {
        common_name,
        organization,
        dns: &[],
        ips: &[],
        usages: CLIENT,
    }
}

/// The client identities of the cluster's own components, by file stem: (stem, user, group).
pub const CLIENTS: &[(&str, &str, Option<&str>)] = &[
    ("admin", "kubernetes-admin", Some("system:masters")),
    ("controller-manager", "system:kube-controller-manager", None),
    ("scheduler", "system:kube-scheduler", None),
    ("kube-proxy", "system:kube-proxy", None),
    (
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
    ),
];

/// Writes the whole PKI of a test bed under `layout.pki()`.
pub fn generate(layout: &Layout) -> Result<PathBuf, Error> {
    let dir = layout.pki();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;

    let ca = Ca::new("inflight-testbed-ca")?;
    ca.write(&dir, "ca")?;
    let svc = format!("kubernetes.default.svc.{CLUSTER_DOMAIN}");
    let api_ips = [
        IpAddr::V4(layout.node_ip()),
        IpAddr::V4(layout.api_service_ip()),
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    ];
    ca.issue(
        &dir,
        "apiserver",
        Leaf {
            common_name: "kube-apiserver",
            organization: None,
            dns: &[
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                &svc,
                "localhost",
            ],
            ips: &api_ips,
            usages: SERVER,
        },
    )?;
    for (stem, user, group) in CLIENTS {
        ca.issue(&dir, stem, client(user, *group))?;
    }
    let node_user = format!("system:node:{}", layout.node_name());
    ca.issue(&dir, "kubelet", client(&node_user, Some("system:nodes")))?;

    // The aggregation layer: the API server proves itself to extension API servers with a
    // certificate of a CA of its own, named in `--requestheader-allowed-names`.
    let front = Ca::new("inflight-testbed-front-proxy-ca")?;
    front.write(&dir, "front-proxy-ca")?;
    front.issue(
        &dir,
        "front-proxy-client",
        client("front-proxy-client", None),
    )?;

    let sa = KeyPair::generate()?;
    write(&dir, "sa.key", &sa.serialize_pem())?;
    write(&dir, "sa.pub", &sa.public_key_pem())?;
    Ok(dir)
}

/// A serving certificate signed by the cluster CA, for something inside the cluster (KEDA's
/// metrics API server and operator, later our own webhooks). Returns (cert PEM, key PEM).
pub fn serving_cert(layout: &Layout, dns: &[String]) -> Result<(String, String), Error> {
    let dir = layout.pki();
    let ca_key = read(&dir.join("ca.key"))?;
    let ca_cert = read(&dir.join("ca.crt"))?;
    let key = KeyPair::from_pem(&ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, key)?;
    let mut params = CertificateParams::new(dns.to_vec())?;
    params.distinguished_name = dn(dns.first().map_or("inflight", String::as_str), None);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params);
    let leaf = KeyPair::generate()?;
    let cert = params.signed_by(&leaf, &issuer)?;
    Ok((cert.pem(), leaf.serialize_pem()))
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Valid from yesterday (clock skew between host and nothing else, but harmless) for ten years.
fn validity(params: &mut CertificateParams) {
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(86_400)).into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
}

fn write(dir: &Path, file: &str, contents: &str) -> Result<(), Error> {
    let path = dir.join(file);
    std::fs::write(&path, contents).map_err(|e| Error::io(&path, e))
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}
