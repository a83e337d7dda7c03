//! `inflight-operator uninstall`: what `helm uninstall` runs first (a pre-delete hook), while the
//! operators still run. Every HTTPAutoscaler is deleted, and the operators' finalizers give
//! everything back (KEDA lets go, a workload at zero is scaled to at least one, an adopted Service
//! gets its selector back); then what the operators made outside the chart goes: the certificates
//! and KEDA's ClusterTriggerAuthentication, the Lease, and the CRD, so that nothing of inflight is
//! left in the cluster.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client, ResourceExt};

use inflight_api::HttpAutoscaler;

use crate::certs::CertFlags;

/// What to remove, and how long to wait for the finalizers.
#[derive(Debug, Clone, clap::Args)]
pub struct UninstallFlags {
    /// The namespace of the operators' own objects (the release's).
    #[arg(long, env = "POD_NAMESPACE", default_value = "inflight")]
    pub namespace: String,

    /// The operators' Lease.
    #[arg(long, env = "INFLIGHT_LEASE_NAME", default_value = "inflight-operator")]
    pub lease_name: String,

    /// The longest to wait for the HTTPAutoscalers to be gone (their finalizers wait for a
    /// workload at zero to have a ready pod, at most its activation timeout).
    #[arg(long, env = "INFLIGHT_UNINSTALL_TIMEOUT", default_value = "5m", value_parser = inflight_runtime::admin::positive_duration)]
    pub timeout: Duration,

    /// Leave the CRD (and so any HTTPAutoscaler that could not be deleted) in place.
    #[arg(long, env = "INFLIGHT_KEEP_CRD")]
    pub keep_crd: bool,

    /// The names of what the TLS bootstrap made.
    #[command(flatten)]
    pub certs: CertFlags,
}

/// The CRD's name.
const CRD: &str = "httpautoscalers.inflight.dev";

/// Removes everything, as the module says; an error names what was left.
pub async fn run(client: Client, flags: &UninstallFlags) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds.get_opt(CRD).await?.is_some() {
        delete_autoscalers(&client, flags.timeout).await?;
        if !flags.keep_crd {
            ignore_missing(crds.delete(CRD, &DeleteParams::default()).await)?;
            tracing::info!(crd = CRD, "deleted");
        }
    }
    let own: Api<Secret> = Api::namespaced(client.clone(), &flags.namespace);
    for name in [
        &flags.certs.ca_secret,
        &flags.certs.injector_secret,
        &flags.certs.aggregator_secret,
    ] {
        ignore_missing(own.delete(name, &DeleteParams::default()).await)?;
    }
    let keda: Api<Secret> = Api::namespaced(client.clone(), &flags.certs.keda_namespace);
    ignore_missing(
        keda.delete(&flags.certs.keda_client_secret, &DeleteParams::default())
            .await,
    )?;
    if !flags.certs.trigger_authentication.is_empty() {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "keda.sh",
            "v1alpha1",
            "ClusterTriggerAuthentication",
        ));
        let auths: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        ignore_missing(
            auths
                .delete(
                    &flags.certs.trigger_authentication,
                    &DeleteParams::default(),
                )
                .await,
        )?;
    }
    let leases: Api<Lease> = Api::namespaced(client, &flags.namespace);
    ignore_missing(
        leases
            .delete(&flags.lease_name, &DeleteParams::default())
            .await,
    )?;
    tracing::info!("certificates, KEDA's authentication and the Lease deleted");
    Ok(())
}

/// Deletes every HTTPAutoscaler and waits, up to `timeout`, until the finalizers have let them
/// go.
async fn delete_autoscalers(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let api: Api<HttpAutoscaler> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = api.list(&ListParams::default()).await?.items;
        if left.is_empty() {
            return Ok(());
        }
        for hta in left
            .iter()
            .filter(|h| h.metadata.deletion_timestamp.is_none())
        {
            let ns = hta.namespace().unwrap_or_default();
            let scoped: Api<HttpAutoscaler> = Api::namespaced(client.clone(), &ns);
            ignore_missing(
                scoped
                    .delete(&hta.name_any(), &DeleteParams::default())
                    .await,
            )?;
            tracing::info!(namespace = %ns, name = %hta.name_any(), "HTTPAutoscaler deleted");
        }
        if tokio::time::Instant::now() >= deadline {
            let names: Vec<String> = left
                .iter()
                .map(|h| format!("{}/{}", h.namespace().unwrap_or_default(), h.name_any()))
                .collect();
            anyhow::bail!(
                "HTTPAutoscalers still there after {timeout:?} (is an operator running? see their \
                 events): {}",
                names.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn ignore_missing<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
