//! What the activator learns from the Kubernetes API: the routes, from every HTTPAutoscaler, and
//! the pods of each workload, from the EndpointSlices Kubernetes keeps for its private Service
//! (found by the `inflight.dev/pods-of` label the operator puts on that Service, which
//! Kubernetes copies to them). They list every pod with an address, ready or not: the activator
//! asks the others' proxies itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures_util::StreamExt;
use inflight_api::{HttpAutoscaler, PODS_OF_LABEL};
use inflight_proto::names::{PROXY_ADMIN_PORT, PROXY_PORT};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::{reflector, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use crate::dispatch::Activator;
use crate::pods::{Endpoint, Pods};
use crate::routes::Routes;

/// The label Kubernetes puts on a Service's EndpointSlices.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Keeps `activator`'s routes and pods up to date until the process ends.
pub async fn watch(
    client: Client,
    activator: Arc<Activator>,
    namespace: Option<String>,
    cluster_domain: String,
) {
    let routes = watch_routes(
        api(&client, namespace.as_deref()),
        activator.clone(),
        cluster_domain,
    );
    let slices = watch_slices(api(&client, namespace.as_deref()), activator);
    tokio::join!(routes, slices);
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn watch_routes(api: Api<HttpAutoscaler>, activator: Arc<Activator>, cluster_domain: String) {
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    futures_util::pin_mut!(stream);
    let mut failures = 0u32;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init | Event::InitApply(_)) => {}
            Ok(_) => {
                failures = 0;
                // Rebuilt whole: a host may move between HTTPAutoscalers.
                let htas = reader.state();
                let routes = Routes::build(htas.iter().map(|h| &**h), &cluster_domain);
                activator
                    .metrics
                    .routes
                    .set(i64::try_from(routes.len()).unwrap_or(i64::MAX));
                activator.set_routes(routes);
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if failures <= 3 {
                    tracing::warn!(%error, "watching HTTPAutoscalers failed; retrying");
                }
            }
        }
    }
}

async fn watch_slices(api: Api<EndpointSlice>, activator: Arc<Activator>) {
    let config = watcher::Config::default().labels(PODS_OF_LABEL);
    let stream = watcher(api, config).default_backoff();
    futures_util::pin_mut!(stream);
    let mut relist = Vec::new();
    let mut failures = 0u32;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => relist.clear(),
            Ok(Event::InitApply(slice)) => relist.extend(entry(&slice)),
            Ok(Event::InitDone) => {
                failures = 0;
                activator.pods.replace_all(std::mem::take(&mut relist));
                activator.dispatch_all();
            }
            Ok(Event::Apply(slice)) => {
                if let Some((backend, name, endpoints)) = entry(&slice) {
                    activator.pods.set_slice(&backend, &name, endpoints);
                    activator.dispatch_all();
                }
            }
            Ok(Event::Delete(slice)) => {
                if let Some((backend, name, _)) = entry(&slice) {
                    activator.pods.remove_slice(&backend, &name);
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if failures <= 3 {
                    tracing::warn!(%error, "watching EndpointSlices failed; retrying");
                }
            }
        }
    }
}

/// A slice as [`Pods`] keeps it: `(backend, slice name, endpoints)`.
fn entry(slice: &EndpointSlice) -> Option<(String, String, Vec<Endpoint>)> {
    let namespace = slice.namespace()?;
    let service = slice.labels().get(SERVICE_NAME_LABEL)?;
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|e| {
            let ip: IpAddr = e.addresses.first()?.parse().ok()?;
            let conditions = e.conditions.clone().unwrap_or_default();
            Some(Endpoint {
                data: SocketAddr::new(ip, PROXY_PORT),
                admin: SocketAddr::new(ip, PROXY_ADMIN_PORT),
                pod: e.target_ref.as_ref().and_then(|r| r.name.clone()),
                // Unknown is ready, as the API documents it.
                ready: conditions.ready.unwrap_or(true),
                terminating: conditions.terminating.unwrap_or(false),
            })
        })
        .collect();
    Some((Pods::key(&namespace, service), slice.name_any(), endpoints))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_lists_each_pod_at_its_proxy_with_its_conditions() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-inflight-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web-inflight", "inflight.dev/pods-of": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.7"], "conditions": {"ready": false, "serving": false, "terminating": false},
                 "targetRef": {"kind": "Pod", "name": "web-1"}},
                {"addresses": ["10.0.0.8"]},
                {"addresses": ["not an ip"]}
            ]
        }))
        .unwrap_or_default();
        let (backend, name, endpoints) = entry(&slice).unwrap_or_default();
        assert_eq!(backend, "shop/web-inflight");
        assert_eq!(name, "web-inflight-abcde");
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].data, SocketAddr::from(([10, 0, 0, 7], 15080)));
        assert_eq!(endpoints[0].admin, SocketAddr::from(([10, 0, 0, 7], 15090)));
        assert_eq!(endpoints[0].pod.as_deref(), Some("web-1"));
        assert!(!endpoints[0].ready && endpoints[1].ready);
    }
}
