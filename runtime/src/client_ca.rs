//! Mutual TLS: the CAs a server accepts client certificates of, read from a PEM file and read again
//! when it changes (a Secret volume the kubelet updates as the CA rotates), so that a client with a
//! certificate of the new CA is accepted without a restart. Every client must present a
//! certificate of one of them; a handshake without one fails.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::tls::{provider, stamp, Error};
use crate::{read, write};

/// The client CAs of one file, kept current by [`ClientCaFile::watch`].
#[derive(Debug)]
pub struct ClientCaFile {
    path: PathBuf,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    seen: RwLock<Option<(SystemTime, u64)>>,
}

/// A verifier of client certificates of the CAs in `pem`.
fn verifier(path: &Path, pem: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let invalid = |why: String| Error::Pem {
        path: path.to_owned(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|e| invalid(e.to_string()))?)
            .map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| invalid(e.to_string()))
}

fn read_verifier(path: &Path) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let pem = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    verifier(path, &pem)
}

impl ClientCaFile {
    /// Reads the file once: a server does not start without knowing whom to accept.
    pub fn load(path: &Path) -> Result<Arc<Self>, Error> {
        let seen = stamp(path);
        let current = read_verifier(path)?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            current: RwLock::new(current),
            seen: RwLock::new(seen),
        }))
    }

    /// Reads the file again if it changed since last read. `Ok(false)`: unchanged. On an error the
    /// CAs in use stay.
    pub fn reload_if_changed(&self) -> Result<bool, Error> {
        let now = stamp(&self.path);
        if *read(&self.seen) == now {
            return Ok(false);
        }
        *write(&self.seen) = now;
        let fresh = read_verifier(&self.path)?;
        *write(&self.current) = fresh;
        Ok(true)
    }

    /// Looks at the file every `every` for ever.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => tracing::info!(ca = %self.path.display(), "client CAs reloaded"),
                Err(error) => {
                    tracing::warn!(%error, "client CAs not reloaded; the previous ones stay in use");
                }
            }
        }
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        read(&self.current).clone()
    }
}

impl ClientCertVerifier for ClientCaFile {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    // The hints would borrow from a verifier that may be replaced; none means "any certificate
    // you have", and the verification below is what decides.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        (params.self_signed(&key).unwrap(), key)
    }

    fn client(issuer: &(rcgen::Certificate, rcgen::KeyPair)) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keda");
        let issuer = rcgen::Issuer::from_ca_cert_der(issuer.0.der(), &issuer.1).unwrap();
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }

    #[test]
    fn a_client_of_the_current_ca_is_accepted_and_the_file_is_read_again_as_it_rotates() {
        let dir = std::env::temp_dir().join(format!("inflight-client-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.crt");
        let (old, new) = (ca("old"), ca("a newer CA"));
        std::fs::write(&path, old.0.pem()).unwrap();
        let cas = ClientCaFile::load(&path).unwrap();
        let now = UnixTime::now();
        assert!(cas.verify_client_cert(&client(&old), &[], now).is_ok());
        assert!(cas.verify_client_cert(&client(&new), &[], now).is_err());

        // The bundle during a rotation holds both; a different length is a change whatever the
        // clock's resolution.
        std::fs::write(&path, format!("{}{}", old.0.pem(), new.0.pem())).unwrap();
        assert!(cas.reload_if_changed().unwrap());
        assert!(cas.verify_client_cert(&client(&new), &[], now).is_ok());
        assert!(cas.verify_client_cert(&client(&old), &[], now).is_ok());

        std::fs::write(&path, "no certificate here, and of yet another length").unwrap();
        assert!(cas.reload_if_changed().is_err());
        assert!(
            cas.verify_client_cert(&client(&new), &[], now).is_ok(),
            "the CAs read last stay in use"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_without_a_certificate_is_refused_at_load() {
        let path = std::env::temp_dir().join(format!("inflight-no-ca-{}", std::process::id()));
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            ClientCaFile::load(&path),
            Err(Error::NoCertificate { .. })
        ));
        let _ = std::fs::remove_file(&path);
    }
}
