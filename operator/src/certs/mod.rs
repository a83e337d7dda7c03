//! TLS bootstrap: unless cert-manager supplies them (`--tls-bootstrap false`), the operator makes
//! a CA of its own and the serving certificates of the injector's webhook and the aggregator (its
//! APIService and its scaler port), keeps them in Secrets of its namespace (`kubernetes.io/tls`:
//! `tls.crt`, `tls.key`, `ca.crt`), sets the CA bundle in the webhooks' and the APIService's
//! `caBundle`, and renews them before they expire. KEDA gets a client certificate of the same CA
//! for the scaler port, in a Secret of KEDA's namespace with the bundle as its `ca.crt`, through a
//! ClusterTriggerAuthentication; the aggregator accepts clients of the bundle's CAs. The injector
//! and the aggregator read their files again when the kubelet updates the Secret volumes, so a
//! renewal restarts nothing.
//!
//! A pass walks down: `stored` reads the Secrets, `plan` says what is due and which CAs the
//! bundle trusts, `pki` makes what is due, `cluster` writes it (the CA's Secret first, then per
//! server its caBundle before its Secret, so that the API server trusts a new CA before any pod can
//! serve a certificate of it). A CA being replaced stays in the bundle until every serving
//! certificate has moved off it and the pods have had `--ca-overlap` to pick the new one up.

mod cluster;
mod flags;
mod metrics;
mod pki;
mod plan;
mod stored;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::Client;
use prometheus_client::registry::Registry;

pub use flags::CertFlags;
use metrics::{Kind, Metrics};
pub use pki::IssueError;
use pki::{join_pem, Cert, KeyedCert};
use plan::{Due, Policy};
use stored::Read;

/// The common name of KEDA's client certificate.
pub const KEDA_CLIENT_NAME: &str = "keda";

/// The longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A pass that did not do all it had to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} {kind} {name}: {source}")]
    Api {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("making the certificate of Secret {secret}: {source}")]
    Issue {
        secret: String,
        #[source]
        source: IssueError,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Incomplete(Vec<Error>),
}

/// Where a serving certificate goes and who must trust its CA.
#[derive(Debug, Clone, Copy)]
enum Truster<'a> {
    Webhooks(&'a str),
    ApiService(&'a str),
    /// Nothing registered to set a bundle in (`--apiservice ""`).
    Nobody,
}

#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    secret: &'a str,
    service: &'a str,
    truster: Truster<'a>,
}

/// A serving Secret as read, and the certificate to replace it with if one is due.
#[derive(Debug)]
struct Step<'a> {
    target: Target<'a>,
    secret: Option<Secret>,
    read: Read,
    fresh: Option<KeyedCert>,
}

/// The TLS bootstrap of one operator (only the elected leader runs it).
pub struct Bootstrap {
    client: Client,
    namespace: String,
    flags: CertFlags,
    policy: Policy,
    metrics: Metrics,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("namespace", &self.namespace)
            .field("flags", &self.flags)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Bootstrap {
    /// Flags that disagree with each other (see [`CertFlags::check`], which start-up should call)
    /// are logged and replaced by the default lifetimes.
    pub fn new(
        client: Client,
        namespace: &str,
        flags: &CertFlags,
        registry: &mut Registry,
    ) -> Self {
        let policy = flags.policy().unwrap_or_else(|why| {
            tracing::error!(%why, "certificate lifetimes refused; using the defaults");
            const DAY: i64 = 86_400;
            Policy {
                cert_validity: 90 * DAY,
                renew_before: 30 * DAY,
                ca_validity: 1825 * DAY,
                ca_renew_before: 1825 * DAY / 3,
                ca_overlap: i64::try_from(flags.ca_overlap.as_secs()).unwrap_or(300),
            }
        });
        Self {
            client,
            namespace: namespace.to_owned(),
            flags: flags.clone(),
            policy,
            metrics: Metrics::new(registry),
        }
    }

    fn targets(&self) -> Vec<Target<'_>> {
        let f = &self.flags;
        let mut targets = Vec::with_capacity(2);
        if !f.webhook_configuration.is_empty() {
            targets.push(Target {
                secret: &f.injector_secret,
                service: &f.injector_service,
                truster: Truster::Webhooks(&f.webhook_configuration),
            });
        }
        targets.push(Target {
            secret: &f.aggregator_secret,
            service: &f.aggregator_service,
            truster: if f.apiservice.is_empty() {
                Truster::Nobody
            } else {
                Truster::ApiService(&f.apiservice)
            },
        });
        targets
    }

    /// Whether KEDA gets a client certificate (a trigger authentication is named).
    fn keda_client(&self) -> bool {
        !self.flags.trigger_authentication.is_empty()
    }

    /// Runs [`Bootstrap::ensure`] for ever: after a pass, when the next is due; after a failure,
    /// again after a backoff of 1 s doubling up to 5 min (and never longer than the check
    /// interval). With `--tls-bootstrap false` it does nothing and never returns.
    pub async fn run(self) {
        if !self.flags.tls_bootstrap {
            tracing::info!(
                "TLS bootstrap off: the certificate Secrets and caBundles are left to cert-manager"
            );
            return std::future::pending().await;
        }
        let mut failures: u32 = 0;
        loop {
            let wait = match self.ensure().await {
                Ok(next) => {
                    failures = 0;
                    tracing::debug!(next_in = ?next, "certificates checked");
                    next
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures, self.flags.cert_check_interval);
                    tracing::warn!(%error, retry_in = ?wait, "TLS bootstrap pass incomplete");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One pass: makes every Secret and caBundle right; returns when the next pass is due (the
    /// earliest renewal, or an old CA leaving the bundle, capped by `--cert-check-interval`). With
    /// nothing due it writes nothing. A webhook configuration or APIService that does not exist
    /// is logged and counted, and the rest is done; any other failure is returned after the rest
    /// is done, and the next pass tries again.
    pub async fn ensure(&self) -> Result<Duration, Error> {
        if !self.flags.tls_bootstrap {
            return Ok(self.flags.cert_check_interval);
        }
        let now = inflight_runtime::time::now_ms() / 1000;
        let p = &self.policy;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);

        // Everything is read before anything is written: a CA is never replaced, nor a bundle
        // shrunk, on a partial view.
        let ca_name = self.flags.ca_secret.as_str();
        let ca_secret = self.get(&secrets, ca_name).await?;
        let ca_read = self.read(ca_name, ca_secret.as_ref());
        let mut steps = Vec::new();
        for target in self.targets() {
            let secret = self.get(&secrets, target.secret).await?;
            let read = self.read(target.secret, secret.as_ref());
            steps.push(Step {
                target,
                secret,
                read,
                fresh: None,
            });
        }

        let keda_secrets: Api<Secret> =
            Api::namespaced(self.client.clone(), &self.flags.keda_namespace);
        let keda_name = self.flags.keda_client_secret.as_str();
        let keda_secret = if self.keda_client() {
            self.get(&keda_secrets, keda_name).await?
        } else {
            None
        };
        let keda_read = self.read(keda_name, keda_secret.as_ref());

        // The CA, made anew if due.
        let (ca, new_ca) = match (plan::ca_due(&ca_read, now, p), ca_read.stored()) {
            (None, Some(s)) => (s.pair.clone(), None),
            (due, _) => {
                let why = due.unwrap_or(Due::Missing);
                let ca = pki::new_ca(now, p.ca_validity).map_err(|source| {
                    self.metrics.error(Kind::Issue);
                    Error::Issue {
                        secret: ca_name.to_owned(),
                        source,
                    }
                })?;
                (ca, Some(why))
            }
        };
        let earlier = plan::earlier_cas(&ca_read, &ca.cert, now);

        // The serving certificates due, made in memory.
        let mut failures = Vec::new();
        for step in &mut steps {
            let names = plan::service_names(step.target.service, &self.namespace);
            let Some(why) = plan::serving_due(&step.read, &ca.cert, &names, now, p) else {
                continue;
            };
            match pki::new_serving(&ca, &names, now, p.cert_validity) {
                Ok(fresh) => {
                    tracing::info!(secret = step.target.secret, reason = %why, "making a new serving certificate");
                    step.fresh = Some(fresh);
                }
                Err(source) => {
                    self.metrics.error(Kind::Issue);
                    failures.push(Error::Issue {
                        secret: step.target.secret.to_owned(),
                        source,
                    });
                }
            }
        }

        // KEDA's client certificate, made in memory if due.
        let mut keda_fresh = None;
        if self.keda_client() {
            if let Some(why) = plan::serving_due(&keda_read, &ca.cert, &[], now, p) {
                match pki::new_client(&ca, KEDA_CLIENT_NAME, now, p.cert_validity) {
                    Ok(fresh) => {
                        tracing::info!(secret = keda_name, reason = %why, "making a new client certificate for KEDA");
                        keda_fresh = Some(fresh);
                    }
                    Err(source) => {
                        self.metrics.error(Kind::Issue);
                        failures.push(Error::Issue {
                            secret: keda_name.to_owned(),
                            source,
                        });
                    }
                }
            }
        }
        let keda_pair = keda_fresh
            .as_ref()
            .or(keda_read.stored().map(|s| &s.pair))
            .filter(|_| self.keda_client());

        // A CA stays in the bundle while a certificate of it is in use, the client's too: the
        // aggregator trusts KEDA's certificate by the same bundle.
        let served: Vec<&Cert> = steps
            .iter()
            .filter_map(|s| s.read.cert())
            .chain(keda_read.cert().filter(|_| self.keda_client()))
            .collect();
        let after: Vec<&Cert> = steps
            .iter()
            .filter_map(|s| s.fresh.as_ref().map(|f| &f.cert).or(s.read.cert()))
            .chain(keda_pair.map(|p| &p.cert))
            .collect();
        let bundle = plan::bundle(&ca.cert, &earlier, &served, &after, now, p);
        let bundle_pem = join_pem(&bundle);
        let due = plan::next_due(&bundle, &after, p);

        // The CA's Secret first: nothing is signed by a CA that is not stored.
        let wrote = cluster::put_secret(
            &secrets,
            ca_name,
            ca_secret.as_ref(),
            &stored::data(&ca, &bundle),
        )
        .await
        .map_err(|e| self.api_error("writing", "Secret", ca_name, e))?;
        if let Some(why) = &new_ca {
            self.metrics.issued(ca_name);
            tracing::info!(secret = ca_name, reason = %why, subject = %ca.cert.subject, "made a new CA");
        } else if wrote {
            tracing::info!(
                secret = ca_name,
                trusted = bundle.len(),
                "CA bundle changed"
            );
        }
        self.metrics.expires_in(ca_name, ca.cert.not_after - now);

        for step in steps {
            let target = step.target;
            let trusted = match self.trust(target.truster, bundle_pem.as_bytes()).await {
                Ok(()) => true,
                Err(e) => {
                    failures.push(e);
                    false
                }
            };
            let Some(fresh) = step.fresh else {
                if let Some(c) = step.read.cert() {
                    self.metrics.expires_in(target.secret, c.not_after - now);
                }
                continue;
            };
            // A working certificate is not replaced by one of a CA its client may not trust yet:
            // that waits for the caBundle. A missing or unreadable one has nothing to lose.
            let safe = step.read.cert().is_none_or(|c| c.signed_by(&ca.cert));
            if !trusted && !safe {
                tracing::warn!(
                    secret = target.secret,
                    "serving certificate not replaced until its caBundle is written"
                );
                continue;
            }
            let data = stored::data(&fresh, std::slice::from_ref(&ca.cert));
            match cluster::put_secret(&secrets, target.secret, step.secret.as_ref(), &data).await {
                Ok(_) => {
                    self.metrics.issued(target.secret);
                    self.metrics
                        .expires_in(target.secret, fresh.cert.not_after - now);
                    tracing::info!(
                        secret = target.secret,
                        not_after = fresh.cert.not_after,
                        "serving certificate written"
                    );
                }
                Err(e) => failures.push(self.api_error("writing", "Secret", target.secret, e)),
            }
        }

        if let Some(pair) = keda_pair {
            // KEDA checks the aggregator's certificate by the bundle, which may hold a CA being
            // replaced; the client certificate is always of the current CA.
            let data = stored::data(pair, &bundle);
            match cluster::put_secret(&keda_secrets, keda_name, keda_secret.as_ref(), &data).await {
                Ok(wrote) => {
                    if keda_fresh.is_some() {
                        self.metrics.issued(keda_name);
                        tracing::info!(secret = keda_name, namespace = %self.flags.keda_namespace, "KEDA's client certificate written");
                    } else if wrote {
                        tracing::info!(secret = keda_name, "KEDA's trusted CAs changed");
                    }
                    self.metrics
                        .expires_in(keda_name, pair.cert.not_after - now);
                }
                Err(e) => failures.push(self.api_error("writing", "Secret", keda_name, e)),
            }
            let name = self.flags.trigger_authentication.as_str();
            match cluster::put_trigger_authentication(&self.client, name, keda_name).await {
                Ok(cluster::Trust::Missing) => {
                    self.metrics.error(Kind::Missing);
                    tracing::warn!(
                        name,
                        "KEDA's ClusterTriggerAuthentication kind is not installed: KEDA cannot \
                         be given its client certificate until it is"
                    );
                }
                Ok(cluster::Trust::Unchanged) => {}
                Ok(cluster::Trust::Written) => {
                    tracing::info!(name, "ClusterTriggerAuthentication written");
                }
                Err(e) => failures.push(self.api_error(
                    "writing",
                    "ClusterTriggerAuthentication",
                    name,
                    e,
                )),
            }
        }

        if !failures.is_empty() {
            return Err(Error::Incomplete(failures));
        }
        Ok(plan::wait(due, now, self.flags.cert_check_interval))
    }

    async fn get(&self, api: &Api<Secret>, name: &str) -> Result<Option<Secret>, Error> {
        api.get_opt(name)
            .await
            .map_err(|e| self.api_error("reading", "Secret", name, e))
    }

    /// The Secret read; an unreadable one is logged and counted (it is made again).
    fn read(&self, name: &str, secret: Option<&Secret>) -> Read {
        let read = Read::of(secret);
        if let Read::Unreadable(why) = &read {
            tracing::warn!(
                secret = name,
                namespace = %self.namespace,
                %why,
                "certificate Secret unreadable: a new certificate replaces it"
            );
            self.metrics.error(Kind::Unreadable);
        }
        read
    }

    /// Sets the bundle where `truster` reads it. A missing object is logged and counted, not an
    /// error: it is looked for again next pass.
    async fn trust(&self, truster: Truster<'_>, bundle: &[u8]) -> Result<(), Error> {
        let (kind, name, outcome) = match truster {
            Truster::Webhooks(name) => (
                "MutatingWebhookConfiguration",
                name,
                cluster::trust_webhooks(&self.client, name, bundle).await,
            ),
            Truster::ApiService(name) => (
                "APIService",
                name,
                cluster::trust_apiservice(&self.client, name, bundle).await,
            ),
            Truster::Nobody => return Ok(()),
        };
        match outcome {
            Ok(cluster::Trust::Missing) => {
                self.metrics.error(Kind::Missing);
                tracing::warn!(kind, name, "not found: its caBundle is set once it exists");
                Ok(())
            }
            Ok(cluster::Trust::Unchanged) => Ok(()),
            Ok(cluster::Trust::Written) => {
                tracing::info!(kind, name, "caBundle set");
                Ok(())
            }
            Err(e) => Err(self.api_error("setting the caBundle of", kind, name, e)),
        }
    }

    fn api_error(
        &self,
        verb: &'static str,
        kind: &'static str,
        name: &str,
        source: kube::Error,
    ) -> Error {
        self.metrics.error(Kind::Api);
        Error::Api {
            verb,
            kind,
            name: name.to_owned(),
            source,
        }
    }
}

/// 1 s after the first failure, doubling, at most [`MAX_BACKOFF`] and at most `cap`.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let doubling = Duration::from_secs(1u64 << failures.saturating_sub(1).min(16));
    doubling.min(MAX_BACKOFF).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_a_second_and_is_capped() {
        let hour = Duration::from_secs(3600);
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n, hour).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX, hour), MAX_BACKOFF);
        assert_eq!(backoff(9, Duration::from_secs(10)), Duration::from_secs(10));
    }
}
