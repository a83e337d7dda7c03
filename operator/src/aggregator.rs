//! Requests in flight for the status, asked of the aggregator the way KEDA asks it
//! (`externalscaler.GetMetrics`, over mutual TLS with KEDA's client certificate), so `kubectl get
//! hta` shows the figure KEDA scales on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use inflight_api::HttpAutoscaler;
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use inflight_proto::names::scaler_metric_name;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The Secret with the client certificate the operator presents, KEDA's own: the scaler port
/// answers no one else.
#[derive(Debug, Clone)]
pub struct ClientSecret {
    pub secrets: Api<Secret>,
    pub name: String,
}

/// How long a client is used before its Secret is looked at again (a renewed certificate).
const REREAD: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Cached {
    /// The Secret's resourceVersion the client was made from.
    version: Option<String>,
    read_at: Instant,
    client: ExternalScalerClient<Channel>,
}

#[derive(Debug)]
pub struct Aggregator {
    /// The scaler address as KEDA dials it; its host is the name the certificate is checked for.
    address: String,
    /// Where this process dials it (`--aggregator-dial`), if not there.
    dial: Option<String>,
    tls: Option<ClientSecret>,
    timeout: Duration,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl Aggregator {
    /// A client for `address` (HOST:PORT), dialled at `dial` if given, over mutual TLS with the
    /// certificate of `tls` if given; connected on first use. An address that is not HOST:PORT
    /// leaves the figure unknown rather than stopping the operator.
    pub fn new(
        address: &str,
        dial: Option<&str>,
        tls: Option<ClientSecret>,
        timeout: Duration,
    ) -> Self {
        Self {
            address: address.to_owned(),
            dial: dial.map(str::to_owned),
            tls,
            timeout,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The client, made again when its Secret changed; `None` while there is no certificate to
    /// present or the address is not usable.
    async fn client(&self) -> Option<ExternalScalerClient<Channel>> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.read_at.elapsed() < REREAD) {
            return Some(c.client.clone());
        }
        let (version, tls) = match &self.tls {
            None => (None, None),
            Some(source) => {
                let read = tokio::time::timeout(self.timeout, source.secrets.get_opt(&source.name));
                match read.await {
                    Ok(Ok(Some(secret))) => {
                        let host = self
                            .address
                            .rsplit_once(':')
                            .map_or(&*self.address, |(h, _)| h);
                        let Some(tls) = client_tls(&secret, host) else {
                            tracing::warn!(secret = %source.name, "the client certificate Secret lacks tls.crt, tls.key or ca.crt: in-flight figures stay unknown");
                            return None;
                        };
                        (secret.metadata.resource_version.clone(), Some(tls))
                    }
                    Ok(Ok(None)) => {
                        tracing::debug!(secret = %source.name, "no client certificate yet");
                        return None;
                    }
                    // The API is away: the client made last stays in use.
                    _ => return cached.as_ref().map(|c| c.client.clone()),
                }
            }
        };
        if let Some(c) = cached.as_mut().filter(|c| c.version == version) {
            c.read_at = Instant::now();
            return Some(c.client.clone());
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let at = self.dial.as_deref().unwrap_or(&self.address);
        let endpoint = Channel::from_shared(format!("{scheme}://{at}"))
            .map_err(|e| tracing::warn!(address = %at, error = %e, "the aggregator's address is not HOST:PORT: in-flight figures stay unknown"))
            .ok()?;
        let endpoint = match tls {
            Some(tls) => endpoint
                .tls_config(tls)
                .map_err(|e| tracing::warn!(error = %e, "the client certificate is not usable: in-flight figures stay unknown"))
                .ok()?,
            None => endpoint,
        };
        let client =
            ExternalScalerClient::new(endpoint.connect_timeout(self.timeout).connect_lazy());
        *cached = Some(Cached {
            version,
            read_at: Instant::now(),
            client: client.clone(),
        });
        Some(client)
    }

    /// The workload's concurrency (requests in flight, windowed) in `namespace`, or `None` when the
    /// aggregator cannot say (down, or not yet a full window since it started).
    pub async fn in_flight(&self, hta: &HttpAutoscaler) -> Option<f64> {
        let mut client = self.client().await?;
        let namespace = hta.metadata.namespace.as_deref()?;
        let name = hta.metadata.name.as_deref()?;
        let target = &hta.spec.scale_target_ref;
        let workload = hta.workload();
        let metric_name = scaler_metric_name(namespace, target.kind.lowercase(), &target.name);
        let request = GetMetricsRequest {
            scaled_object_ref: Some(ScaledObjectRef {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                scaler_metadata: HashMap::from([
                    ("workload".to_owned(), workload.clone()),
                    ("metric".to_owned(), "concurrency".to_owned()),
                    ("target".to_owned(), "1".to_owned()),
                ]),
            }),
            metric_name,
        };
        let answer = tokio::time::timeout(self.timeout, client.get_metrics(request))
            .await
            .ok()?
            .map_err(|status| tracing::debug!(%status, %workload, "aggregator gave no figure"))
            .ok()?;
        let value = answer.into_inner().metric_values.into_iter().next()?;
        let v = if value.metric_value_float > 0.0 {
            value.metric_value_float
        } else {
            value.metric_value as f64
        };
        v.is_finite().then_some(v)
    }
}

/// TLS as KEDA speaks it to the scaler port: trusting the Secret's `ca.crt`, presenting its
/// `tls.crt` and `tls.key`, checking the certificate for `host`.
fn client_tls(secret: &Secret, host: &str) -> Option<ClientTlsConfig> {
    let data = secret.data.as_ref()?;
    let field = |key: &str| data.get(key).map(|b| b.0.clone());
    let (ca, cert, key) = (field("ca.crt")?, field("tls.crt")?, field("tls.key")?);
    Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(host),
    )
}
