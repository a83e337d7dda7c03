//! Which workload a held request is for, from its Host (HTTP/1) or `:authority` (HTTP/2): every
//! name a client may use for the Service of an HTTPAutoscaler (`<svc>`, `<svc>.<ns>`,
//! `<svc>.<ns>.svc`, `<svc>.<ns>.svc.<cluster domain>`, with or without a port) and each of its
//! `spec.hosts`.
//!
//! In proxy mode the activator's pods are the endpoints of many Services, and kube-proxy has
//! already rewritten the Service's address: the name is all that is left to route by. A bare
//! `<svc>` claimed by HTTPAutoscalers of several namespaces is therefore ambiguous, and is
//! answered as such rather than guessed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use inflight_api::HttpAutoscaler;

/// The longest host name DNS allows.
pub const MAX_HOST: usize = 253;

/// Where requests for one HTTPAutoscaler go, and how they are held.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub namespace: String,
    /// The HTTPAutoscaler's name.
    pub name: String,
    /// `deployment/web`: what the activator reports as held.
    pub workload: String,
    /// The private Service whose slices list the workload's pods.
    pub pods_service: String,
    /// A held request waits at most this long for a ready pod.
    pub timeout: Duration,
    /// Requests held at once for this workload by one activator.
    pub max_pending: usize,
    /// Requests one pod is sent at once (0: no limit).
    pub container_concurrency: u32,
}

impl Route {
    /// `<namespace>/<kind>/<name>`: what requests are held under and reported as.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.workload)
    }

    /// Where the workload's pods are listed ([`crate::pods::Pods::key`]).
    pub fn backend(&self) -> String {
        crate::pods::Pods::key(&self.namespace, &self.pods_service)
    }

    /// `None` for an HTTPAutoscaler without a namespace or name (never from the API server).
    pub fn of(hta: &HttpAutoscaler) -> Option<Self> {
        let spec = &hta.spec;
        Some(Self {
            namespace: hta.metadata.namespace.clone()?,
            name: hta.metadata.name.clone()?,
            workload: hta.workload(),
            pods_service: hta.pods_service(),
            // The schema's pattern lets through only what parses; the default otherwise.
            timeout: inflight_api::parse_duration(&spec.activation.timeout)
                .unwrap_or(Duration::from_secs(30)),
            max_pending: usize::try_from(spec.activation.max_pending_requests.max(1)).unwrap_or(1),
            container_concurrency: u32::try_from(spec.container_concurrency).unwrap_or(0),
        })
    }
}

/// Why a request has no route; the 404's body says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    #[error("the request has no Host header or :authority")]
    NoHost,
    /// What was sent, escaped and cut to [`MAX_HOST`] characters: it goes back in the body.
    #[error("\"{0}\" is not a host name")]
    Invalid(String),
    #[error("no HTTPAutoscaler routes host {0:?}")]
    Unknown(String),
    #[error("host {host:?} is claimed by the HTTPAutoscalers {claims}: use <service>.<namespace>")]
    Ambiguous { host: String, claims: String },
}

#[derive(Debug, Clone)]
enum Entry {
    One(Arc<Route>),
    /// `namespace/name` of every claimant, sorted.
    Many(Vec<String>),
}

/// The routing table, rebuilt whole from the HTTPAutoscalers whenever one changes.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_host: HashMap<String, Entry>,
    /// By [`Route::key`], for the held requests of a workload.
    by_workload: HashMap<String, Arc<Route>>,
}

impl Routes {
    pub fn build<'a>(
        htas: impl IntoIterator<Item = &'a HttpAutoscaler>,
        cluster_domain: &str,
    ) -> Self {
        let mut claims: BTreeMap<String, Vec<Arc<Route>>> = BTreeMap::new();
        let mut by_workload = HashMap::new();
        for hta in htas {
            let Some(route) = Route::of(hta) else {
                continue;
            };
            let route = Arc::new(route);
            by_workload.insert(route.key(), route.clone());
            let svc = &hta.spec.service.name;
            let ns = &route.namespace;
            let mut names = vec![
                svc.clone(),
                format!("{svc}.{ns}"),
                format!("{svc}.{ns}.svc"),
                format!("{svc}.{ns}.svc.{cluster_domain}"),
            ];
            names.extend(hta.spec.hosts.iter().cloned());
            let mut mine: Vec<String> = names.iter().filter_map(|n| normalize(n).ok()).collect();
            mine.sort_unstable();
            mine.dedup();
            for name in mine {
                claims.entry(name).or_default().push(route.clone());
            }
        }
        let by_host = claims
            .into_iter()
            .map(|(host, mut routes)| {
                let entry = if routes.len() == 1 {
                    Entry::One(routes.remove(0))
                } else {
                    let mut who: Vec<String> = routes
                        .iter()
                        .map(|r| format!("{}/{}", r.namespace, r.name))
                        .collect();
                    who.sort_unstable();
                    Entry::Many(who)
                };
                (host, entry)
            })
            .collect();
        Self {
            by_host,
            by_workload,
        }
    }

    /// The route of the workload `key` ([`Route::key`]).
    pub fn workload(&self, key: &str) -> Option<Arc<Route>> {
        self.by_workload.get(key).cloned()
    }

    /// The route for a request's Host or `:authority` (`None`: it had neither).
    pub fn lookup(&self, authority: Option<&str>) -> Result<Arc<Route>, NoRoute> {
        let host = normalize(authority.ok_or(NoRoute::NoHost)?)?;
        match self.by_host.get(&host) {
            Some(Entry::One(route)) => Ok(route.clone()),
            Some(Entry::Many(who)) => Err(NoRoute::Ambiguous {
                host,
                claims: who.join(", "),
            }),
            None => Err(NoRoute::Unknown(host)),
        }
    }

    pub fn len(&self) -> usize {
        self.by_host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// A Host header's name as the table keys it: without the port, lower case, without a final dot.
pub fn normalize(authority: &str) -> Result<String, NoRoute> {
    let invalid = || NoRoute::Invalid(authority.escape_debug().take(MAX_HOST).collect());
    let text = authority.trim();
    let host = if let Some(rest) = text.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`. Never a route, but named as what it is.
        let (inner, _) = rest.split_once(']').ok_or_else(invalid)?;
        let literal = inner.len() <= 45
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        return Err(if literal {
            NoRoute::Unknown(format!("[{inner}]"))
        } else {
            invalid()
        });
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                host
            }
            Some(_) => return Err(invalid()),
            None => text,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= MAX_HOST
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        });
    if valid {
        Ok(host)
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hta(ns: &str, name: &str, svc: &str, hosts: &[&str]) -> HttpAutoscaler {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "inflight.dev/v1alpha1", "kind": "HTTPAutoscaler",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": name},
                     "service": {"name": svc, "port": 80}, "maxReplicas": 3, "hosts": hosts,
                     "activation": {"timeout": "5s", "maxPendingRequests": 7}}
        }))
        .unwrap()
    }

    #[test]
    fn every_name_of_the_service_and_each_host_route_with_or_without_a_port() {
        let all = [hta("shop", "web", "web", &["Shop.Example.com"])];
        let routes = Routes::build(&all, "cluster.local");
        for host in [
            "web",
            "web:80",
            "web.shop",
            "WEB.shop.svc:8080",
            "web.shop.svc.cluster.local",
            "web.shop.svc.cluster.local.",
            "shop.example.com",
            "shop.example.com:443",
        ] {
            let r = routes
                .lookup(Some(host))
                .unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(
                (r.namespace.as_str(), r.workload.as_str()),
                ("shop", "deployment/web")
            );
            assert_eq!((r.timeout, r.max_pending), (Duration::from_secs(5), 7));
            assert_eq!(r.pods_service, "web-inflight");
        }
    }

    #[test]
    fn unknown_missing_and_malformed_hosts_say_which() {
        let routes = Routes::build(&[hta("shop", "web", "web", &[])], "cluster.local");
        assert_eq!(routes.lookup(None), Err(NoRoute::NoHost));
        assert_eq!(
            routes.lookup(Some("api.shop")),
            Err(NoRoute::Unknown("api.shop".into()))
        );
        assert_eq!(
            routes.lookup(Some("web.blog")),
            Err(NoRoute::Unknown("web.blog".into()))
        );
        for bad in [
            "",
            "web:http",
            "we b",
            "a..b",
            "web:80:80",
            "[web]:80",
            "[::1",
        ] {
            assert!(
                matches!(routes.lookup(Some(bad)), Err(NoRoute::Invalid(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            routes.lookup(Some("[::1]:80")),
            Err(NoRoute::Unknown("[::1]".into()))
        );
        let long = "a.".repeat(200);
        assert!(
            matches!(routes.lookup(Some(&long)), Err(NoRoute::Invalid(t)) if t.len() <= MAX_HOST)
        );
    }

    #[test]
    fn a_bare_name_in_two_namespaces_is_ambiguous_but_the_qualified_ones_route() {
        let all = [
            hta("shop", "web", "web", &[]),
            hta("blog", "web", "web", &[]),
        ];
        let routes = Routes::build(&all, "cluster.local");
        assert_eq!(
            routes.lookup(Some("web:80")),
            Err(NoRoute::Ambiguous {
                host: "web".into(),
                claims: "blog/web, shop/web".into()
            })
        );
        assert_eq!(routes.lookup(Some("web.blog")).unwrap().namespace, "blog");
        assert_eq!(
            routes.lookup(Some("web.shop.svc")).unwrap().namespace,
            "shop"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_authority_gets_a_route_or_a_bounded_reason(text in ".{0,600}") {
            let routes = Routes::build(&[hta("shop", "web", "web", &[])], "cluster.local");
            match routes.lookup(Some(&text)) {
                Ok(r) => proptest::prop_assert_eq!(r.namespace.as_str(), "shop"),
                // At most MAX_HOST characters of the input come back, each at most 4 bytes.
                Err(e) => proptest::prop_assert!(e.to_string().len() <= 4 * MAX_HOST + 100),
            }
        }

        #[test]
        fn case_port_and_a_final_dot_do_not_change_the_route(
            upper in proptest::bool::ANY, port in proptest::option::of(1u16..), dot in proptest::bool::ANY,
        ) {
            let routes = Routes::build(&[hta("shop", "web", "web", &[])], "cluster.local");
            let mut host = if upper { "WEB.Shop.SVC".to_owned() } else { "web.shop.svc".to_owned() };
            if dot { host.push('.'); }
            if let Some(p) = port { host = format!("{host}:{p}"); }
            proptest::prop_assert!(routes.lookup(Some(&host)).is_ok(), "{}", host);
        }
    }
}
