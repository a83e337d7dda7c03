//! A serving certificate read from PEM files, and read again when they change (a Secret volume the
//! kubelet updates, cert-manager renewing it), without dropping a connection: handshakes after the
//! change get the new certificate, connections already open keep going.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{read, write};

/// The process's TLS provider (ring, as every inflight binary uses).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and key, read from PEM files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}", path = path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}", path = path.display())]
    Pem { path: PathBuf, why: String },
    #[error("{path}: no certificate in it", path = path.display())]
    NoCertificate { path: PathBuf },
    #[error("{path}: the key does not match the certificate, or is of a kind not supported: {why}", path = path.display())]
    Key { path: PathBuf, why: String },
}

/// Reads the chain in `cert` and the key in `key` (PEM).
pub fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, Error> {
    let read_file = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read_file(cert)?, read_file(key)?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Pem {
            path: cert.to_owned(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| Error::Pem {
        path: key.to_owned(),
        why: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| Error::Key {
        path: key.to_owned(),
        why: e.to_string(),
    })
}

/// What says a file changed: its modification time and length, through symbolic links (a Secret
/// volume swaps a `..data` link rather than writing the files in place).
pub(crate) fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

type Stamps = (Option<(SystemTime, u64)>, Option<(SystemTime, u64)>);

/// The serving certificate of `cert` and `key`, kept current by [`CertFiles::watch`].
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: RwLock<Stamps>,
}

impl CertFiles {
    /// Reads the files once: a server does not start without a certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, Error> {
        let seen = (stamp(cert), stamp(key));
        let current = certified_key(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(current)),
            seen: RwLock::new(seen),
        }))
    }

    /// Reads the files again if they changed since last read. `Ok(false)`: unchanged. On an error
    /// the certificate in use stays (half-written files during a rotation are read again at the
    /// next look, as their stamp changes once more when the writer finishes).
    pub fn reload_if_changed(&self) -> Result<bool, Error> {
        let now = (stamp(&self.cert), stamp(&self.key));
        if *read(&self.seen) == now {
            return Ok(false);
        }
        *write(&self.seen) = now;
        let fresh = certified_key(&self.cert, &self.key)?;
        *write(&self.current) = Arc::new(fresh);
        Ok(true)
    }

    /// Looks at the files every `every` for ever, calling `reloaded` with each outcome of a change.
    pub async fn watch(self: Arc<Self>, every: Duration, reloaded: impl Fn(Result<(), &Error>)) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                    reloaded(Ok(()));
                }
                Err(error) => {
                    tracing::warn!(%error, "serving certificate not reloaded; the previous one stays in use");
                    reloaded(Err(&error));
                }
            }
        }
    }

    /// A rustls server configuration that serves the current certificate, offering `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, String> {
        self.config(Arc::new(rustls::server::NoClientAuth), alpn)
    }

    /// [`CertFiles::server_config`] for clients that must present a certificate `clients` accepts.
    pub fn mutual_config(
        self: &Arc<Self>,
        clients: Arc<crate::client_ca::ClientCaFile>,
        alpn: &[&[u8]],
    ) -> Result<rustls::ServerConfig, String> {
        self.config(clients, alpn)
    }

    fn config(
        self: &Arc<Self>,
        clients: Arc<dyn rustls::server::danger::ClientCertVerifier>,
        alpn: &[&[u8]],
    ) -> Result<rustls::ServerConfig, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(clients)
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(read(&self.current).clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn leaf(files: &CertFiles) -> Vec<u8> {
        read(&files.current).cert[0].to_vec()
    }

    #[test]
    fn changed_files_are_read_again_and_bad_ones_leave_the_old_certificate() {
        let dir = std::env::temp_dir().join(format!("inflight-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let (c1, k1) = self_signed("one.example");
        std::fs::write(&cert, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let files = CertFiles::load(&cert, &key).unwrap();
        let first = leaf(&files);
        assert!(!files.reload_if_changed().unwrap(), "nothing changed");

        // A different length is a change whatever the clock's resolution.
        let (c2, k2) = self_signed("a-longer-name-than-before.example");
        std::fs::write(&cert, &c2).unwrap();
        std::fs::write(&key, &k2).unwrap();
        assert!(files.reload_if_changed().unwrap());
        let second = leaf(&files);
        assert_ne!(first, second);

        std::fs::write(&cert, "not a certificate, and of yet another length").unwrap();
        assert!(files.reload_if_changed().is_err());
        assert_eq!(leaf(&files), second, "the good certificate stays in use");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_at_load() {
        let dir =
            std::env::temp_dir().join(format!("inflight-tls-mismatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let (c1, _) = self_signed("one.example");
        let (_, k2) = self_signed("two.example");
        std::fs::write(&cert, c1).unwrap();
        std::fs::write(&key, k2).unwrap();
        assert!(matches!(
            CertFiles::load(&cert, &key),
            Err(Error::Key { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
