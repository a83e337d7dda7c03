//! The activator's routing by Host (`:authority`): a table built from a few HTTPAutoscalers of any
//! names and `spec.hosts`, then any authorities looked up in it (structured input, `arbitrary`;
//! the names are often drawn from a small set, so that they collide and route).
//!
//! - a host name is normalized once and for all: its normal form is its own, in lower case,
//!   without a port or a final dot, at most 253 bytes of DNS labels; case, a port and a final dot
//!   do not change it;
//! - a lookup that routes goes to the one HTTPAutoscaler that claims the name (the Service's four
//!   names or one of its `spec.hosts`), with that autoscaler's namespace, name and workload; a name
//!   two claim is ambiguous and says who; an unclaimed one is unknown; what does not parse is
//!   invalid, and the reason quotes at most 253 characters of it;
//! - every name an autoscaler alone claims routes to it, with or without a port.
#![no_main]

use arbitrary::Arbitrary;
use inflight_activator::routes::{normalize, NoRoute, Routes, MAX_HOST};
use inflight_api::HttpAutoscaler;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 6] = ["web", "shop", "api", "Web", "example.com", "cluster.local"];

#[derive(Debug, Arbitrary)]
enum Name {
    Common(u8),
    Any(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Self::Common(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
            Self::Any(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Autoscaler {
    namespace: Name,
    name: Name,
    service: Name,
    stateful: bool,
    hosts: Vec<Name>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    autoscalers: Vec<Autoscaler>,
    cluster_domain: Name,
    authorities: Vec<Name>,
    port: u16,
}

/// A DNS-1123 label, or with `dots` a subdomain: the API server admits no other namespace or
/// object name, whereas `spec.service.name` and `spec.hosts` are any text the schema lets by.
fn dns(s: &str, dots: bool) -> bool {
    s.len() <= if dots { 253 } else { 63 }
        && s.split('.').enumerate().all(|(i, l)| {
            (dots || i == 0)
                && (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn hta(a: &Autoscaler) -> Option<HttpAutoscaler> {
    if !dns(&a.namespace.text(), false) || !dns(&a.name.text(), true) {
        return None;
    }
    let kind = if a.stateful {
        "StatefulSet"
    } else {
        "Deployment"
    };
    let hosts: Vec<String> = a.hosts.iter().take(8).map(Name::text).collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "inflight.dev/v1alpha1", "kind": "HTTPAutoscaler",
        "metadata": {"name": a.name.text(), "namespace": a.namespace.text()},
        "spec": {"scaleTargetRef": {"kind": kind, "name": a.name.text()},
                 "service": {"name": a.service.text(), "port": 80}, "maxReplicas": 3,
                 "hosts": hosts}
    }))
    .ok()
}

/// The normal names an autoscaler claims, as the design page lists them.
fn claims(h: &HttpAutoscaler, cluster_domain: &str) -> Vec<String> {
    let svc = &h.spec.service.name;
    let ns = h.metadata.namespace.as_deref().unwrap_or_default();
    let mut names = vec![
        svc.clone(),
        format!("{svc}.{ns}"),
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.{cluster_domain}"),
    ];
    names.extend(h.spec.hosts.iter().cloned());
    names.iter().filter_map(|n| normalize(n).ok()).collect()
}

fn check_normal(authority: &str, host: &str, port: u16) {
    assert!(!host.is_empty() && host.len() <= MAX_HOST, "{host:?}");
    assert!(!host.ends_with('.') && !host.contains(':'), "{host:?}");
    assert!(!host.bytes().any(|b| b.is_ascii_uppercase()), "{host:?}");
    assert!(
        host.split('.').all(|l| !l.is_empty() && l.len() <= 63),
        "{host:?}"
    );
    assert_eq!(normalize(host).as_deref(), Ok(host), "of {authority:?}");
    assert_eq!(
        normalize(&format!("{host}:{port}")).as_deref(),
        Ok(host),
        "with a port"
    );
    assert_eq!(
        normalize(&format!("{}.", host.to_ascii_uppercase())).as_deref(),
        Ok(host),
        "in upper case with a final dot"
    );
}

fuzz_target!(|input: Input| {
    let htas: Vec<HttpAutoscaler> = input.autoscalers.iter().take(6).filter_map(hta).collect();
    // The API server never holds two autoscalers of one namespace and name.
    let mut ids: Vec<(&Option<String>, &Option<String>)> = htas
        .iter()
        .map(|h| (&h.metadata.namespace, &h.metadata.name))
        .collect();
    ids.sort();
    ids.dedup();
    if ids.len() != htas.len() {
        return;
    }
    let domain = input.cluster_domain.text();
    let routes = Routes::build(&htas, &domain);
    let claimants = |host: &str| -> Vec<&HttpAutoscaler> {
        htas.iter()
            .filter(|h| claims(h, &domain).iter().any(|c| c == host))
            .collect()
    };

    let mut authorities: Vec<String> = input.authorities.iter().map(Name::text).collect();
    for h in &htas {
        for c in claims(h, &domain) {
            authorities.push(format!("{c}:{}", input.port));
            authorities.push(c);
        }
    }
    for authority in authorities.iter().take(64) {
        let normal = normalize(authority);
        if let Ok(host) = &normal {
            check_normal(authority, host, input.port);
        }
        match (routes.lookup(Some(authority)), normal) {
            (Ok(route), Ok(host)) => {
                let who = claimants(&host);
                assert_eq!(who.len(), 1, "{host:?} routed, claimed by {}", who.len());
                let h = who[0];
                assert_eq!(Some(&route.namespace), h.metadata.namespace.as_ref());
                assert_eq!(Some(&route.name), h.metadata.name.as_ref());
                assert_eq!(route.workload, h.workload());
                assert_eq!(route.pods_service, h.pods_service());
            }
            (
                Err(NoRoute::Ambiguous {
                    host: named,
                    claims,
                }),
                Ok(host),
            ) => {
                assert_eq!(named, host);
                let who = claimants(&host);
                assert!(
                    who.len() >= 2,
                    "{host:?} ambiguous with {} claims",
                    who.len()
                );
                for h in who {
                    let id = format!(
                        "{}/{}",
                        h.metadata.namespace.as_deref().unwrap_or_default(),
                        h.metadata.name.as_deref().unwrap_or_default()
                    );
                    assert!(claims.split(", ").any(|c| c == id), "{id} not in {claims}");
                }
            }
            (Err(NoRoute::Unknown(named)), Ok(host)) => {
                assert_eq!(named, host);
                assert!(claimants(&host).is_empty(), "{host:?} claimed yet unknown");
            }
            // An IPv6 literal: named as what it is, never routed.
            (Err(NoRoute::Unknown(named)), Err(NoRoute::Unknown(literal))) => {
                assert_eq!(named, literal);
                assert!(named.starts_with('[') && named.ends_with(']'), "{named:?}");
            }
            (Err(NoRoute::Invalid(quoted)), Err(NoRoute::Invalid(again))) => {
                assert_eq!(quoted, again);
                assert!(quoted.chars().count() <= MAX_HOST, "{quoted:?}");
            }
            (got, normal) => panic!("{authority:?}: lookup {got:?}, normal form {normal:?}"),
        }
    }
    assert_eq!(routes.lookup(None), Err(NoRoute::NoHost));
});
