//! Whom the SMI API trusts to call it: the API server's front proxy, by a client certificate of
//! the requestheader CA. The CA is read before the first connection is accepted (a connection
//! accepted without it would carry no certificate check for its whole life) and read again as it
//! rotates; a connection made under a CA since replaced has its certificate checked against the
//! current one before its next request is served.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use inflight_runtime::tls::provider;
use inflight_runtime::{lock, read, write};

use super::auth::{self, RequestHeader, Source};
use super::Identity;

/// The requestheader settings in force, and the TLS that checks callers against them.
pub struct Trust {
    /// Counts the changes: a connection remembers the one it was last checked against.
    pub generation: u64,
    pub requestheader: RequestHeader,
    verifier: Arc<dyn ClientCertVerifier>,
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// TLS that asks for a client certificate of the requestheader CA but lets other callers
    /// finish the handshake, so they get a Kubernetes `Status` 401 rather than a TLS alert.
    pub fn new(
        identity: &Identity,
        requestheader: RequestHeader,
        generation: u64,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(requestheader.client_ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| format!("requestheader CA: {e}"))?)
                .map_err(|e| format!("requestheader CA: {e}"))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("requestheader CA: {e}"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(identity.resolver());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            generation,
            requestheader,
            verifier,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// The trust in force: `None` until the requestheader CA has been read once.
pub type Current = Arc<RwLock<Option<Arc<Trust>>>>;

/// The client certificate a connection presented, verified at its handshake.
#[derive(Debug)]
pub struct Peer {
    chain: Vec<CertificateDer<'static>>,
    common_name: Option<String>,
    /// The generation of the trust it was last found good under; 0, none yet.
    good_under: std::sync::Mutex<u64>,
}

impl Peer {
    /// What the handshake established. Which trust checked it is not known here (it may have
    /// been replaced during the handshake), so the first request checks it against the one in
    /// force then: a chain verification per connection, and the API server keeps its
    /// connections.
    pub fn new(tls: &rustls::ServerConnection) -> Self {
        let chain: Vec<CertificateDer<'static>> = tls
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let common_name = chain.first().and_then(|c| auth::common_name(c));
        Self {
            chain,
            common_name,
            good_under: std::sync::Mutex::new(0),
        }
    }

    /// The certificate's common name if it verifies against `trust` (none: no certificate, or
    /// one the current CA no longer vouches for). Checked again only when the CA has changed.
    pub fn common_name(&self, trust: &Trust) -> Option<&str> {
        let (end_entity, intermediates) = self.chain.split_first()?;
        let mut good_under = lock(&self.good_under);
        if *good_under != trust.generation {
            trust
                .verifier
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
                .ok()?;
            *good_under = trust.generation;
        }
        self.common_name.as_deref()
    }
}

/// Whether the SMI API may take callers, and if not why: `/readyz/smi`.
pub type Ready = watch::Receiver<Result<(), String>>;

/// Reads the requestheader settings from `source` now and again for ever, keeping `current`
/// (and `ready`) up to date; a failed read keeps the settings in force.
pub async fn keep_current(
    source: Source,
    identity: Identity,
    current: Current,
    ready: watch::Sender<Result<(), String>>,
) {
    // The API server rewrites the ConfigMap when it rotates the CA; a file is cheap to read.
    let every = match source {
        Source::ConfigMap(_) => Duration::from_secs(30),
        Source::File { .. } => Duration::from_secs(1),
    };
    // Generations start at 1: a connection's 0 is "never checked".
    let mut generation = 0;
    loop {
        let loaded = source.load().await;
        let in_force = read(&current).clone();
        let outcome = match loaded {
            Ok(rh) if in_force.as_ref().is_some_and(|t| t.requestheader == rh) => Ok(()),
            Ok(rh) => {
                generation += 1;
                Trust::new(&identity, rh, generation).map(|trust| {
                    *write(&current) = Some(Arc::new(trust));
                    if in_force.is_none() {
                        tracing::info!(from = ?source, "SMI API: requestheader CA read; accepting callers");
                    } else {
                        tracing::info!(from = ?source, "SMI API: requestheader CA changed; connections made under the old one are checked again");
                    }
                })
            }
            Err(why) => Err(why),
        };
        match outcome {
            Ok(()) => {
                ready.send_modify(|r| *r = Ok(()));
                tokio::time::sleep(every).await;
            }
            Err(error) if in_force.is_some() => {
                tracing::warn!(%error, from = ?source, "SMI API: cannot read the requestheader settings again; the ones read before stay in force");
                tokio::time::sleep(every).await;
            }
            Err(error) => {
                tracing::warn!(%error, from = ?source, "SMI API: cannot read the requestheader settings; no connection is accepted until it can");
                let why = format!("the requestheader client CA is not read yet: {error}");
                ready.send_modify(|r| *r = Err(why));
                tokio::time::sleep(every.min(Duration::from_secs(5))).await;
            }
        }
    }
}
