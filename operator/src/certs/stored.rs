//! What a certificate Secret holds, read and written: `tls.crt` (the certificate first), `tls.key`,
//! and `ca.crt` (the CAs to trust: the bundle, in the CA's Secret; the signing CA, in a serving
//! Secret), as cert-manager lays them out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::pki::{join_pem, Cert, KeyedCert};

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
/// The type of the Secrets the bootstrap makes.
pub const TLS_TYPE: &str = "kubernetes.io/tls";

/// A Secret's certificate, key and trusted CAs, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub pair: KeyedCert,
    pub trusted: Vec<Cert>,
}

/// A Secret as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Missing,
    /// It exists but is not a usable certificate and key: why.
    Unreadable(String),
    Found(Stored),
}

impl Read {
    pub fn of(secret: Option<&Secret>) -> Self {
        let Some(secret) = secret else {
            return Self::Missing;
        };
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        match stored(data) {
            Ok(s) => Self::Found(s),
            Err(why) => Self::Unreadable(why),
        }
    }

    pub fn stored(&self) -> Option<&Stored> {
        match self {
            Self::Found(s) => Some(s),
            _ => None,
        }
    }

    /// The certificate, if it was read.
    pub fn cert(&self) -> Option<&Cert> {
        self.stored().map(|s| &s.pair.cert)
    }
}

fn text<'a>(data: &'a BTreeMap<String, ByteString>, key: &str) -> Result<&'a str, String> {
    let bytes = data.get(key).ok_or_else(|| format!("no {key}"))?;
    std::str::from_utf8(&bytes.0).map_err(|_| format!("{key} is not PEM text"))
}

fn stored(data: &BTreeMap<String, ByteString>) -> Result<Stored, String> {
    let cert = Cert::from_pem(text(data, TLS_CRT)?).map_err(|why| format!("{TLS_CRT}: {why}"))?;
    let key_pem = text(data, TLS_KEY)?;
    if !cert.key_matches(key_pem) {
        return Err(format!(
            "{TLS_KEY} is not the key of {TLS_CRT} (or not a PKCS#8 key)"
        ));
    }
    // The trusted CAs are optional: a block that does not read is left out (the bundle is
    // rebuilt from what does).
    let trusted = match text(data, CA_CRT) {
        Ok(pem) => Cert::all_from_pem(pem).0,
        Err(_) => Vec::new(),
    };
    Ok(Stored {
        pair: KeyedCert {
            cert,
            key_pem: key_pem.to_owned(),
        },
        trusted,
    })
}

/// The data of a Secret holding `pair` and trusting `trusted`.
pub fn data(pair: &KeyedCert, trusted: &[Cert]) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        (TLS_CRT.to_owned(), ByteString(pair.cert.pem.clone().into())),
        (TLS_KEY.to_owned(), ByteString(pair.key_pem.clone().into())),
        (CA_CRT.to_owned(), ByteString(join_pem(trusted).into())),
    ])
}

/// Whether `secret` already holds every entry of `want` (other entries are someone else's).
pub fn holds(secret: Option<&Secret>, want: &BTreeMap<String, ByteString>) -> bool {
    let Some(have) = secret.and_then(|s| s.data.as_ref()) else {
        return false;
    };
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::certs::pki::{new_ca, new_serving};

    fn secret(data: BTreeMap<String, ByteString>) -> Secret {
        Secret {
            data: Some(data),
            ..Secret::default()
        }
    }

    #[test]
    fn what_is_written_reads_back() {
        let ca = new_ca(1_750_000_000, 86_400).unwrap();
        let leaf = new_serving(&ca, &["a".to_owned()], 1_750_000_000, 3_600).unwrap();
        let want = data(&leaf, std::slice::from_ref(&ca.cert));
        let s = secret(want.clone());
        assert_eq!(
            Read::of(Some(&s)),
            Read::Found(Stored {
                pair: leaf,
                trusted: vec![ca.cert]
            })
        );
        assert!(holds(Some(&s), &want));
        assert!(!holds(None, &want));
    }

    #[test]
    fn a_secret_that_is_not_a_certificate_and_its_key_says_why() {
        let ca = new_ca(1_750_000_000, 86_400).unwrap();
        let other = new_ca(1_750_000_000, 86_400).unwrap();
        let mut mismatched = data(&ca, &[]);
        mismatched.insert(TLS_KEY.to_owned(), ByteString(other.key_pem.into()));
        let mut garbage = data(&ca, &[]);
        garbage.insert(TLS_CRT.to_owned(), ByteString(vec![0xff, 0xfe]));
        for (s, says) in [
            (Secret::default(), "no tls.crt"),
            (secret(mismatched), "not the key"),
            (secret(garbage), "not PEM text"),
        ] {
            match Read::of(Some(&s)) {
                Read::Unreadable(why) => assert!(why.contains(says), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(Read::of(None), Read::Missing);
    }
}
