//! The two Services of an HTTPAutoscaler: the one clients call, which the operator makes
//! selector-less (creating it, or adopting the user's and keeping its selector in an annotation
//! to give back), and the private one with the workload's selector, whose EndpointSlices
//! Kubernetes keeps and the operator reads for readiness.

use std::collections::BTreeMap;

use inflight_api::{HttpAutoscaler, ADOPTED_SELECTOR_ANNOTATION, AUTOSCALER_LABEL, PODS_OF_LABEL};
use inflight_proto::names::{PROXY_PORT, PROXY_PORT_NAME};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

/// The private Service: the workload's pods, at their proxies' port.
pub fn private(
    hta: &HttpAutoscaler,
    owner: OwnerReference,
    selector: BTreeMap<String, String>,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(hta.pods_service()),
            namespace: hta.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([(
                PODS_OF_LABEL.to_owned(),
                hta.metadata.name.clone().unwrap_or_default(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(PROXY_PORT_NAME.to_owned()),
                port: i32::from(PROXY_PORT),
                target_port: Some(IntOrString::Int(i32::from(PROXY_PORT))),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Service clients call, when none exists: selector-less, owned, so it goes with the
/// HTTPAutoscaler.
pub fn public(hta: &HttpAutoscaler, owner: OwnerReference) -> Service {
    let s = &hta.spec.service;
    Service {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            namespace: hta.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([(
                AUTOSCALER_LABEL.to_owned(),
                hta.metadata.name.clone().unwrap_or_default(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: s.port,
                target_port: Some(IntOrString::Int(s.target_port.unwrap_or(s.port))),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The name of `svc`'s port `port`, which the slices' port must carry (`None` for a Service's
/// single unnamed port).
pub fn port_name(svc: &Service, port: i32) -> Result<Option<String>, String> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    ports
        .iter()
        .find(|p| p.port == port)
        .map(|p| p.name.clone().filter(|n| !n.is_empty()))
        .ok_or_else(|| {
            let have: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
            format!(
                "Service {} has no port {port} (it has {})",
                svc.metadata.name.as_deref().unwrap_or_default(),
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            )
        })
}

/// Who the existing Service belongs to, as far as the operator is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Ownership {
    /// Made by the operator for this HTTPAutoscaler.
    Ours,
    /// The user's, already adopted by this HTTPAutoscaler.
    Adopted,
    /// The user's, with a selector (or none) to be kept and removed: the merge patch that does it.
    ToAdopt(Value),
    /// Adopted by another HTTPAutoscaler.
    Taken(String),
}

pub fn ownership(svc: &Service, hta: &HttpAutoscaler, uid: &str) -> Ownership {
    let meta = &svc.metadata;
    if meta.owner_references.iter().flatten().any(|o| o.uid == uid) {
        return Ownership::Ours;
    }
    let name = hta.metadata.name.clone().unwrap_or_default();
    let label = meta.labels.as_ref().and_then(|l| l.get(AUTOSCALER_LABEL));
    let annotated = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ADOPTED_SELECTOR_ANNOTATION));
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty());
    match (label, annotated, selector) {
        (Some(other), true, _) if *other != name => Ownership::Taken(other.clone()),
        (Some(_), true, None) => Ownership::Adopted,
        // Adopted, and since given a selector again (a `kubectl apply` of the user's manifest):
        // keep that one instead, and take it off again.
        (Some(_), true, Some(selector)) => Ownership::ToAdopt(adopt_patch(&name, &selector)),
        (_, _, selector) => Ownership::ToAdopt(adopt_patch(&name, &selector.unwrap_or_default())),
    }
}

fn adopt_patch(hta: &str, selector: &BTreeMap<String, String>) -> Value {
    json!({
        "metadata": {
            "labels": {AUTOSCALER_LABEL: hta},
            "annotations": {ADOPTED_SELECTOR_ANNOTATION: serde_json::to_string(selector).unwrap_or_default()},
        },
        "spec": {"selector": null},
    })
}

/// The merge patch that gives an adopted Service back its selector, if it is adopted.
pub fn restore_patch(svc: &Service) -> Option<Value> {
    let kept = svc
        .metadata
        .annotations
        .as_ref()?
        .get(ADOPTED_SELECTOR_ANNOTATION)?;
    // A selector the user edited into something unreadable is not restored rather than guessed.
    let selector: Option<BTreeMap<String, String>> = serde_json::from_str(kept)
        .ok()
        .filter(|s: &BTreeMap<_, _>| !s.is_empty());
    Some(json!({
        "metadata": {
            "labels": {AUTOSCALER_LABEL: null},
            "annotations": {ADOPTED_SELECTOR_ANNOTATION: null},
        },
        "spec": {"selector": selector},
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hta() -> HttpAutoscaler {
        serde_json::from_value(json!({
            "apiVersion": "inflight.dev/v1alpha1", "kind": "HTTPAutoscaler",
            "metadata": {"name": "web-hta", "namespace": "shop", "uid": "u1"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"},
                     "service": {"name": "web", "port": 80, "targetPort": 8080}, "maxReplicas": 3}
        }))
        .unwrap()
    }

    fn svc(v: Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_users_service_is_adopted_and_given_back_its_selector() {
        let user = svc(json!({"metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}}));
        let Ownership::ToAdopt(patch) = ownership(&user, &hta(), "u1") else {
            panic!("not to adopt")
        };
        assert_eq!(patch["spec"]["selector"], Value::Null);
        assert_eq!(patch["metadata"]["labels"][AUTOSCALER_LABEL], "web-hta");
        // As the API server would merge it:
        let mut merged = serde_json::to_value(&user).unwrap();
        json_patch::merge(&mut merged, &patch);
        let adopted = svc(merged);
        assert_eq!(ownership(&adopted, &hta(), "u1"), Ownership::Adopted);
        let restore = restore_patch(&adopted).unwrap();
        assert_eq!(restore["spec"]["selector"], json!({"app": "web"}));
        assert_eq!(
            restore["metadata"]["annotations"][ADOPTED_SELECTOR_ANNOTATION],
            Value::Null
        );
        assert!(restore_patch(&user).is_none());
    }

    #[test]
    fn a_selector_put_back_on_an_adopted_service_is_adopted_again() {
        let back = svc(
            json!({"metadata": {"name": "web", "labels": {AUTOSCALER_LABEL: "web-hta"},
            "annotations": {ADOPTED_SELECTOR_ANNOTATION: "{\"app\":\"old\"}"}},
            "spec": {"selector": {"app": "new"}}}),
        );
        let Ownership::ToAdopt(patch) = ownership(&back, &hta(), "u1") else {
            panic!("not to adopt")
        };
        assert_eq!(
            patch["metadata"]["annotations"][ADOPTED_SELECTOR_ANNOTATION],
            "{\"app\":\"new\"}"
        );
        let other = svc(
            json!({"metadata": {"name": "web", "labels": {AUTOSCALER_LABEL: "other"},
            "annotations": {ADOPTED_SELECTOR_ANNOTATION: "{}"}}}),
        );
        assert_eq!(
            ownership(&other, &hta(), "u1"),
            Ownership::Taken("other".into())
        );
    }

    #[test]
    fn the_slices_port_is_named_as_the_services() {
        let s = public(&hta(), OwnerReference::default());
        assert_eq!(port_name(&s, 80).unwrap().as_deref(), Some("http"));
        let e = port_name(&s, 81).unwrap_err();
        assert!(e.contains("has no port 81 (it has 80)"), "{e}");
        let p = private(
            &hta(),
            OwnerReference::default(),
            BTreeMap::from([("app".into(), "web".into())]),
        );
        assert_eq!(p.metadata.name.as_deref(), Some("web-inflight"));
        assert_eq!(p.spec.unwrap().ports.unwrap()[0].port, 15080);
    }
}
