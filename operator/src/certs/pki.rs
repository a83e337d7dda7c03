//! Certificates made and read: a CA, the serving and client certificates it signs, and what the
//! bootstrap looks at in a PEM it is given (validity, DNS names, whether it is a CA, who signed
//! it). Times are Unix seconds; nothing here reads the clock.

use std::time::{Duration, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// How far back a new certificate's `notBefore` is set, so that a peer whose clock is a little
/// behind ours accepts it at once.
pub const BACKDATE_SECS: i64 = 5 * 60;

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// A certificate, kept as the PEM it came in (one block, normalised) with what was read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    pub pem: String,
    pub der: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
    pub is_ca: bool,
    pub subject: String,
}

/// A certificate with its private key (PKCS#8 PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedCert {
    pub cert: Cert,
    pub key_pem: String,
}

/// The certificate blocks of a PEM text, each normalised (LF line ends, no blank lines, a final
/// LF), in order; anything between blocks is ignored.
pub fn cert_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some(end) = after.find(END) else { break };
        let body: Vec<&str> = after[..end]
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        blocks.push(format!("{BEGIN}\n{}\n{END}\n", body.join("\n")));
        rest = &after[end + END.len()..];
    }
    blocks
}

/// A bundle of certificates as one PEM text, in the order given.
pub fn join_pem(certs: &[Cert]) -> String {
    certs.iter().map(|c| c.pem.as_str()).collect()
}

impl Cert {
    /// The first certificate of a PEM text.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let block = cert_blocks(text)
            .into_iter()
            .next()
            .ok_or_else(|| "no PEM CERTIFICATE block".to_owned())?;
        Self::from_block(block)
    }

    /// Every certificate of a PEM text; the blocks that are not certificates, each with the reason.
    pub fn all_from_pem(text: &str) -> (Vec<Self>, Vec<String>) {
        let mut certs = Vec::new();
        let mut bad = Vec::new();
        for block in cert_blocks(text) {
            match Self::from_block(block) {
                Ok(c) => certs.push(c),
                Err(why) => bad.push(why),
            }
        }
        (certs, bad)
    }

    fn from_block(block: String) -> Result<Self, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(block.as_bytes())
            .map_err(|e| format!("not PEM: {e}"))?;
        let der = pem.contents;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let dns_names = match x509.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some((*name).to_owned()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(format!("unreadable subjectAltName: {e}")),
        };
        Ok(Self {
            not_before: x509.validity().not_before.timestamp(),
            not_after: x509.validity().not_after.timestamp(),
            is_ca: x509.is_ca(),
            subject: x509.subject().to_string(),
            dns_names,
            der: der.clone(),
            pem: block,
        })
    }

    /// When it was made: `notBefore` as this module sets it, [`BACKDATE_SECS`] early.
    pub fn issued_at(&self) -> i64 {
        self.not_before.saturating_add(BACKDATE_SECS)
    }

    /// Whether `ca`'s key made this certificate's signature.
    pub fn signed_by(&self, ca: &Cert) -> bool {
        let (Some(me), Some(ca)) = (parse(&self.der), parse(&ca.der)) else {
            return false;
        };
        me.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// Whether `key_pem` is the private key of this certificate's public key.
    pub fn key_matches(&self, key_pem: &str) -> bool {
        let (Some(me), Ok(key)) = (parse(&self.der), KeyPair::from_pem(key_pem)) else {
            return false;
        };
        me.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    }
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c)
}

/// A certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate just made does not read back: {0}")]
    Readback(String),
}

/// `unix` seconds as a time rcgen takes for validity (before 1970 is 1970).
fn at(unix: i64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0))
}

/// A new self-signed CA, valid from a little before `now` for `validity_secs`. Its name carries
/// the time it was made, so that an old and a new CA are told apart by a reader too.
pub fn new_ca(now: i64, validity_secs: i64) -> Result<KeyedCert, IssueError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "inflight");
    name.push(DnType::CommonName, format!("inflight-ca@{now}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = at(now.saturating_sub(BACKDATE_SECS)).into();
    params.not_after = at(now.saturating_add(validity_secs)).into();
    let cert = params.self_signed(&key)?;
    Ok(KeyedCert {
        cert: Cert::from_pem(&cert.pem()).map_err(IssueError::Readback)?,
        key_pem: key.serialize_pem(),
    })
}

/// A new serving certificate for `dns_names` (the first is its common name), signed by `ca`,
/// valid from a little before `now` for `validity_secs` but never beyond the CA.
pub fn new_serving(
    ca: &KeyedCert,
    dns_names: &[String],
    now: i64,
    validity_secs: i64,
) -> Result<KeyedCert, IssueError> {
    let params = CertificateParams::new(dns_names.to_vec())?;
    let common_name = dns_names.first().map(String::as_str);
    leaf(
        ca,
        params,
        common_name,
        ExtendedKeyUsagePurpose::ServerAuth,
        now,
        validity_secs,
    )
}

/// A client certificate of `ca` for `common_name` (no DNS names), as KEDA presents it to the
/// aggregator's scaler port.
pub fn new_client(
    ca: &KeyedCert,
    common_name: &str,
    now: i64,
    validity_secs: i64,
) -> Result<KeyedCert, IssueError> {
    let params = CertificateParams::default();
    leaf(
        ca,
        params,
        Some(common_name),
        ExtendedKeyUsagePurpose::ClientAuth,
        now,
        validity_secs,
    )
}

/// A certificate of `params` (its names) for `usage`, signed by `ca`, with a new key, valid from a
/// little before `now` for `validity_secs` but never beyond the CA.
fn leaf(
    ca: &KeyedCert,
    mut params: CertificateParams,
    common_name: Option<&str>,
    usage: ExtendedKeyUsagePurpose,
    now: i64,
    validity_secs: i64,
) -> Result<KeyedCert, IssueError> {
    let issuer = Issuer::from_ca_cert_pem(&ca.cert.pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let key = KeyPair::generate()?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "inflight");
    if let Some(cn) = common_name {
        name.push(DnType::CommonName, cn);
    }
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.not_before = at(now.saturating_sub(BACKDATE_SECS)).into();
    params.not_after = at(now.saturating_add(validity_secs).min(ca.cert.not_after)).into();
    let cert = params.signed_by(&key, &issuer)?;
    Ok(KeyedCert {
        cert: Cert::from_pem(&cert.pem()).map_err(IssueError::Readback)?,
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: i64 = 1_750_000_000;
    const DAY: i64 = 86_400;

    fn names() -> Vec<String> {
        ["web.ns.svc", "web", "web.ns"].map(str::to_owned).to_vec()
    }

    #[test]
    fn a_serving_certificate_reads_back_with_its_names_validity_and_signer() {
        let ca = new_ca(NOW, 365 * DAY).unwrap();
        assert!(ca.cert.is_ca);
        assert!(ca.cert.subject.contains(&format!("inflight-ca@{NOW}")));
        assert_eq!(ca.cert.not_after, NOW + 365 * DAY);
        assert_eq!(ca.cert.issued_at(), NOW);
        assert!(ca.cert.signed_by(&ca.cert));
        assert!(ca.cert.key_matches(&ca.key_pem));

        let leaf = new_serving(&ca, &names(), NOW, 90 * DAY).unwrap();
        assert!(!leaf.cert.is_ca);
        assert_eq!(leaf.cert.dns_names, names());
        assert_eq!(leaf.cert.not_before, NOW - BACKDATE_SECS);
        assert_eq!(leaf.cert.not_after, NOW + 90 * DAY);
        assert!(leaf.cert.signed_by(&ca.cert));
        assert!(leaf.cert.key_matches(&leaf.key_pem));
        assert!(!leaf.cert.key_matches(&ca.key_pem));
        assert!(!leaf.cert.key_matches("not a key"));

        let other = new_ca(NOW, 365 * DAY).unwrap();
        assert!(!leaf.cert.signed_by(&other.cert));
    }

    #[test]
    fn a_client_certificate_has_no_names_and_is_signed_by_its_ca() {
        let ca = new_ca(NOW, 10 * DAY).unwrap();
        let client = new_client(&ca, "keda", NOW, 90 * DAY).unwrap();
        assert!(client.cert.dns_names.is_empty());
        assert!(
            client.cert.subject.contains("CN=keda"),
            "{}",
            client.cert.subject
        );
        assert!(!client.cert.is_ca);
        assert!(client.cert.signed_by(&ca.cert));
        assert!(client.cert.key_matches(&client.key_pem));
        assert_eq!(
            client.cert.not_after, ca.cert.not_after,
            "never outlives its CA"
        );
    }

    #[test]
    fn a_serving_certificate_never_outlives_its_ca() {
        let ca = new_ca(NOW, 10 * DAY).unwrap();
        let leaf = new_serving(&ca, &names(), NOW, 90 * DAY).unwrap();
        assert_eq!(leaf.cert.not_after, ca.cert.not_after);
    }

    #[test]
    fn pem_blocks_are_split_normalised_and_bad_ones_named() {
        let a = new_ca(NOW, DAY).unwrap().cert;
        let b = new_ca(NOW + 1, DAY).unwrap().cert;
        let messy = format!(
            "junk before\r\n{}\r\n\r\n{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            a.pem.replace('\n', "\r\n"),
            b.pem
        );
        let (certs, bad) = Cert::all_from_pem(&messy);
        assert_eq!(certs, vec![a.clone(), b.clone()]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(join_pem(&certs), format!("{}{}", a.pem, b.pem));
        assert!(Cert::from_pem("no certificate here").is_err());
        assert!(Cert::from_pem(&b.pem[..b.pem.len() - 10]).is_err());
    }
}
