//! What the EndpointSlices of the Service clients call should hold (design: modes of a Service).
//! Pure functions of what the private Service's slices, the pods' `/readyz` answers and the
//! activator's slices say, so the switching rules are tested without a cluster.
//!
//! Two slices per Service, one per side, because a slice has one port list and the pods' proxies
//! (15080) and the activator listen on different ports. Serve mode: the pods whose proxy answered
//! `/readyz`. Proxy mode: the ready activator pods, while no pod is. The writer applies the slice of
//! the side that gains endpoints before it empties the other, so a switch never leaves the Service
//! with no endpoint while either side has a ready address.

use std::collections::{BTreeMap, HashSet};

use inflight_api::{HttpAutoscaler, Mode, AUTOSCALER_LABEL, SLICE_MANAGER};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The API server refuses a slice with more endpoints than this.
pub const MAX_ENDPOINTS: usize = 1000;

/// One address a slice says something about.
#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    pub ip: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub endpoint: Endpoint,
}

/// Every IPv4 address in `slices`, once each (a pod in two slices while they are rewritten
/// counts once, with what its first slice says).
pub fn addresses(slices: &[EndpointSlice]) -> Vec<Address> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        for e in &slice.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            // The API says to read an unknown `ready` as ready; `serving` follows `ready` when
            // unset, as it did before the field existed.
            let ready = c.ready.unwrap_or(true);
            let serving = c.serving.unwrap_or(ready);
            let terminating = c.terminating.unwrap_or(false);
            for ip in &e.addresses {
                if seen.insert(ip.clone()) {
                    out.push(Address {
                        ip: ip.clone(),
                        ready: ready && !terminating,
                        serving,
                        terminating,
                        endpoint: e.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The port of the activator's slices that carries traffic: the one named `http`, else the first.
pub fn activator_port(slices: &[EndpointSlice]) -> Option<i32> {
    let ports: Vec<&EndpointPort> = slices
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .collect();
    ports
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .or(ports.first())
        .and_then(|p| p.port)
}

/// What the two slices should hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub mode: Mode,
    pub serve: Vec<Endpoint>,
    pub proxy: Vec<Endpoint>,
    /// Pods Kubernetes calls ready whose proxy has not answered `/readyz` yet.
    pub waiting: usize,
    /// Pods whose proxy answered, in the serve slice.
    pub ready_pods: usize,
}

fn endpoint(from: &Address, ready: bool, serving: bool, terminating: bool) -> Endpoint {
    Endpoint {
        addresses: vec![from.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: None,
        node_name: from.endpoint.node_name.clone(),
        target_ref: from.endpoint.target_ref.clone(),
        zone: from.endpoint.zone.clone(),
        hints: None,
        deprecated_topology: None,
    }
}

/// The decision. `answered` are the pod IPs whose proxy answered `/readyz` with 200.
pub fn decide(pods: &[Address], answered: &HashSet<String>, activators: &[Address]) -> Desired {
    let mut serve = Vec::new();
    let mut waiting = 0;
    for p in pods {
        if p.ready && answered.contains(&p.ip) {
            serve.push(endpoint(p, true, true, false));
        } else if p.ready {
            waiting += 1;
        } else if p.terminating && p.serving {
            // Still finishing its requests: kube-proxy may use it when nothing is ready, which is
            // better than a refused connection.
            serve.push(endpoint(p, false, true, true));
        }
    }
    let ready_pods = serve
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .count();
    let mode = if ready_pods > 0 {
        Mode::Serve
    } else {
        Mode::Proxy
    };
    let proxy = match mode {
        Mode::Serve => Vec::new(),
        Mode::Proxy => activators
            .iter()
            .filter(|a| a.ready)
            .map(|a| endpoint(a, true, true, false))
            .collect(),
    };
    serve.truncate(MAX_ENDPOINTS);
    let mut proxy = proxy;
    proxy.truncate(MAX_ENDPOINTS);
    Desired {
        mode,
        serve,
        proxy,
        waiting,
        ready_pods,
    }
}

/// The slice of `hta`'s Service for `mode`, owned by the HTTPAutoscaler so it goes with it.
pub fn slice(
    hta: &HttpAutoscaler,
    owner: OwnerReference,
    mode: Mode,
    port_name: Option<String>,
    port: i32,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let labels = BTreeMap::from([
        (
            "kubernetes.io/service-name".to_owned(),
            hta.spec.service.name.clone(),
        ),
        (
            "endpointslice.kubernetes.io/managed-by".to_owned(),
            SLICE_MANAGER.to_owned(),
        ),
        (
            AUTOSCALER_LABEL.to_owned(),
            hta.metadata.name.clone().unwrap_or_default(),
        ),
    ]);
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(hta.slice_name(mode)),
            namespace: hta.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: port_name,
            port: Some(port),
            protocol: Some("TCP".to_owned()),
            app_protocol: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.to_owned()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            ..Endpoint::default()
        }
    }

    fn slices(endpoints: Vec<Endpoint>) -> Vec<EndpointSlice> {
        vec![EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            ..EndpointSlice::default()
        }]
    }

    fn ips(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(|e| e.addresses[0].clone()).collect()
    }

    fn answered(ips: &[&str]) -> HashSet<String> {
        ips.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn no_ready_pod_is_proxy_mode_on_the_ready_activators() {
        let pods = addresses(&slices(vec![ep("10.0.0.1", false, false, false)]));
        let act = addresses(&slices(vec![
            ep("10.1.0.1", true, true, false),
            ep("10.1.0.2", false, false, false),
        ]));
        let d = decide(&pods, &answered(&[]), &act);
        assert_eq!(d.mode, Mode::Proxy);
        assert!(d.serve.is_empty());
        assert_eq!(ips(&d.proxy), ["10.1.0.1"]);
    }

    #[test]
    fn a_pod_ready_to_kubernetes_serves_only_once_its_proxy_answers() {
        let pods = addresses(&slices(vec![ep("10.0.0.1", true, true, false)]));
        let act = addresses(&slices(vec![ep("10.1.0.1", true, true, false)]));
        let before = decide(&pods, &answered(&[]), &act);
        assert_eq!((before.mode, before.waiting), (Mode::Proxy, 1));
        assert_eq!(ips(&before.proxy), ["10.1.0.1"]);
        let after = decide(&pods, &answered(&["10.0.0.1"]), &act);
        assert_eq!(
            (after.mode, after.waiting, after.ready_pods),
            (Mode::Serve, 0, 1)
        );
        assert_eq!(ips(&after.serve), ["10.0.0.1"]);
        assert!(after.proxy.is_empty());
    }

    #[test]
    fn terminating_pods_stay_as_serving_not_ready() {
        let pods = addresses(&slices(vec![
            ep("10.0.0.1", true, true, false),
            ep("10.0.0.2", false, true, true),
            ep("10.0.0.3", false, false, true),
        ]));
        let d = decide(&pods, &answered(&["10.0.0.1", "10.0.0.2"]), &[]);
        assert_eq!(ips(&d.serve), ["10.0.0.1", "10.0.0.2"]);
        let c = d.serve[1].conditions.clone().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
        // Only terminating pods left: proxy mode, with them as the fallback.
        let d = decide(&pods[1..], &answered(&["10.0.0.2"]), &[]);
        assert_eq!(d.mode, Mode::Proxy);
        assert_eq!(ips(&d.serve), ["10.0.0.2"]);
    }

    #[test]
    fn an_address_in_two_slices_counts_once_and_ipv6_slices_are_left_alone() {
        let mut s = slices(vec![ep("10.0.0.1", true, true, false)]);
        s.extend(slices(vec![ep("10.0.0.1", false, false, false)]));
        s.push(EndpointSlice {
            address_type: "IPv6".into(),
            endpoints: vec![ep("fd00::1", true, true, false)],
            ..EndpointSlice::default()
        });
        let a = addresses(&s);
        assert_eq!(a.len(), 1);
        assert!(a[0].ready);
    }

    #[test]
    fn the_activator_port_is_the_one_named_http() {
        let mut s = slices(vec![]);
        s[0].ports = Some(vec![
            EndpointPort {
                name: Some("admin".into()),
                port: Some(15091),
                ..EndpointPort::default()
            },
            EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..EndpointPort::default()
            },
        ]);
        assert_eq!(activator_port(&s), Some(8080));
        s[0].ports = Some(vec![EndpointPort {
            name: None,
            port: Some(9000),
            ..EndpointPort::default()
        }]);
        assert_eq!(activator_port(&s), Some(9000));
        assert_eq!(activator_port(&[]), None);
    }
}
