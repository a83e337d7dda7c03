//! The bootstrap's reads and writes: Secrets in the operator's namespace and KEDA's, the caBundle
//! of every webhook of a MutatingWebhookConfiguration and of an APIService, and the
//! ClusterTriggerAuthentication that gives KEDA its client certificate. Every write is a server-side
//! apply by the field manager `inflight-operator`, made only when something differs, and carries
//! the resourceVersion read, so it neither creates what vanished nor overwrites what changed since
//! (the API server answers 409 and the next pass reads again).

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use super::stored::{holds, TLS_TYPE};

pub const FIELD_MANAGER: &str = "inflight-operator";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

fn apply() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Writes `data` into Secret `name` (made `kubernetes.io/tls` if new; an existing one keeps its
/// type, which cannot change), labelled as ours, unless it already holds it. `Ok(true)`: written.
pub async fn put_secret(
    api: &Api<Secret>,
    name: &str,
    current: Option<&Secret>,
    data: &BTreeMap<String, ByteString>,
) -> Result<bool, kube::Error> {
    if holds(current, data) {
        return Ok(false);
    }
    let type_ = current.and_then(|s| s.type_.as_deref()).unwrap_or(TLS_TYPE);
    let mut metadata = json!({"name": name, "labels": {MANAGED_BY: FIELD_MANAGER}});
    if let Some(rv) = current.and_then(|s| s.metadata.resource_version.as_deref()) {
        metadata["resourceVersion"] = json!(rv);
    }
    let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": type_, "data": data});
    api.patch(name, &apply(), &Patch::Apply(&body)).await?;
    Ok(true)
}

/// What became of a caBundle to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The object does not exist (yet): nothing to patch.
    Missing,
    Unchanged,
    Written,
}

/// Sets `caBundle` of every webhook of the MutatingWebhookConfiguration `name` to `bundle`.
pub async fn trust_webhooks(
    client: &Client,
    name: &str,
    bundle: &[u8],
) -> Result<Trust, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(current) = api.get_opt(name).await? else {
        return Ok(Trust::Missing);
    };
    let want = ByteString(bundle.to_vec());
    let webhooks = current.webhooks.as_deref().unwrap_or_default();
    if webhooks
        .iter()
        .all(|w| w.client_config.ca_bundle.as_ref() == Some(&want))
    {
        return Ok(Trust::Unchanged);
    }
    // Every webhook, not only those that differ: a field this manager applied before and leaves
    // out now would be taken away.
    let items: Vec<_> = webhooks
        .iter()
        .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": want}}))
        .collect();
    let body = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "resourceVersion": current.metadata.resource_version},
        "webhooks": items,
    });
    api.patch(name, &apply(), &Patch::Apply(&body)).await?;
    Ok(Trust::Written)
}

/// Sets `spec.caBundle` of the APIService `name` to `bundle`.
pub async fn trust_apiservice(
    client: &Client,
    name: &str,
    bundle: &[u8],
) -> Result<Trust, kube::Error> {
    let api: Api<APIService> = Api::all(client.clone());
    let Some(current) = api.get_opt(name).await? else {
        return Ok(Trust::Missing);
    };
    let want = ByteString(bundle.to_vec());
    if current.spec.as_ref().and_then(|s| s.ca_bundle.as_ref()) == Some(&want) {
        return Ok(Trust::Unchanged);
    }
    let body = json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": name, "resourceVersion": current.metadata.resource_version},
        "spec": {"caBundle": want},
    });
    api.patch(name, &apply(), &Patch::Apply(&body)).await?;
    Ok(Trust::Written)
}

/// The ClusterTriggerAuthentication `name`, handing KEDA the `caCert`, `tlsClientCert` and
/// `tlsClientKey` of Secret `secret` (in KEDA's own namespace, where KEDA reads the Secrets of
/// cluster-wide authentications). `Missing`: KEDA's CRD is not installed.
pub async fn put_trigger_authentication(
    client: &Client,
    name: &str,
    secret: &str,
) -> Result<Trust, kube::Error> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "keda.sh",
        "v1alpha1",
        "ClusterTriggerAuthentication",
    ));
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let refs = [
        ("caCert", super::stored::CA_CRT),
        ("tlsClientCert", super::stored::TLS_CRT),
        ("tlsClientKey", super::stored::TLS_KEY),
    ];
    let spec = json!({"secretTargetRef": refs
        .iter()
        .map(|(parameter, key)| json!({"parameter": parameter, "name": secret, "key": key}))
        .collect::<Vec<_>>()});
    let current = match api.get_opt(name).await {
        Ok(current) => current,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Trust::Missing),
        Err(e) => return Err(e),
    };
    if current.as_ref().and_then(|c| c.data.get("spec")) == Some(&spec) {
        return Ok(Trust::Unchanged);
    }
    let body = json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ClusterTriggerAuthentication",
        "metadata": {"name": name, "labels": {MANAGED_BY: FIELD_MANAGER}},
        "spec": spec,
    });
    match api.patch(name, &apply(), &Patch::Apply(&body)).await {
        Ok(_) => Ok(Trust::Written),
        // No such kind: KEDA's CRDs are not installed (yet).
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Trust::Missing),
        Err(e) => Err(e),
    }
}
