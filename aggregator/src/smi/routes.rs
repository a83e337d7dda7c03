//! The paths of the SMI Traffic Metrics API (those smi-metrics served) and the documents they
//! answer with, built from the registry's figures.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use smi_types::{
    Direction, Edge, Metric, ObjectMeta, ObjectReference, Side, TrafficMetrics, TrafficMetricsList,
    GROUP, GROUP_VERSION, RESOURCES, VERSION,
};

use crate::registry::{Registry, WorkloadKey};
use crate::traffic::{Traffic, MAX_WINDOW_MS};

/// An object as (namespace, name); namespaces have none.
pub type Named = (Option<String>, String);

/// The default `?t=` window, as smi-metrics had it.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// What a path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    GroupList,
    Group,
    ResourceList,
    /// A list of a resource kind (plural), in a namespace or across all of them.
    List {
        plural: String,
        namespace: Option<String>,
    },
    Get {
        plural: String,
        namespace: Option<String>,
        name: String,
    },
    Edges {
        plural: String,
        namespace: Option<String>,
        name: String,
    },
}

impl Route {
    /// Parses a request path; `None` is a 404.
    pub fn parse(path: &str) -> Option<Self> {
        let rest = path.trim_end_matches('/');
        if rest == "/apis" {
            return Some(Self::GroupList);
        }
        let rest = rest.strip_prefix("/apis/")?;
        if rest == GROUP {
            return Some(Self::Group);
        }
        let rest = rest.strip_prefix(GROUP_VERSION)?;
        // The version is a whole segment: `v1alpha1pods` is not `v1alpha1/pods`.
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        let known = |p: &str| RESOURCES.iter().any(|(plural, _, _)| *plural == p);
        let own = |s: &str| s.to_owned();
        Some(match parts.as_slice() {
            [] => Self::ResourceList,
            ["namespaces"] => Self::List {
                plural: own("namespaces"),
                namespace: None,
            },
            ["namespaces", ns] => Self::Get {
                plural: own("namespaces"),
                namespace: None,
                name: own(ns),
            },
            ["namespaces", ns, "edges"] => Self::Edges {
                plural: own("namespaces"),
                namespace: None,
                name: own(ns),
            },
            [plural] if known(plural) => Self::List {
                plural: own(plural),
                namespace: None,
            },
            ["namespaces", ns, plural] if known(plural) && *plural != "namespaces" => Self::List {
                plural: own(plural),
                namespace: Some(own(ns)),
            },
            ["namespaces", ns, plural, name] if known(plural) && *plural != "namespaces" => {
                Self::Get {
                    plural: own(plural),
                    namespace: Some(own(ns)),
                    name: own(name),
                }
            }
            ["namespaces", ns, plural, name, "edges"]
                if known(plural) && *plural != "namespaces" =>
            {
                Self::Edges {
                    plural: own(plural),
                    namespace: Some(own(ns)),
                    name: own(name),
                }
            }
            _ => return None,
        })
    }

    /// What RBAC is asked about it. Discovery needs authentication only, as the API server's
    /// `system:discovery` role grants it to everyone.
    pub fn attributes(&self) -> Option<Attributes<'_>> {
        let (resource, subresource, verb, namespace, name) = match self {
            Self::GroupList | Self::Group | Self::ResourceList => return None,
            Self::List { plural, namespace } => (plural, "", "list", namespace, None),
            Self::Get {
                plural,
                namespace,
                name,
            } => (plural, "", "get", namespace, Some(name.as_str())),
            Self::Edges {
                plural,
                namespace,
                name,
            } => (plural, "edges", "get", namespace, Some(name.as_str())),
        };
        Some(Attributes {
            group: GROUP,
            version: VERSION,
            resource,
            subresource,
            verb,
            namespace: namespace.as_deref(),
            name,
            label_selector: None,
        })
    }

    /// The Kubernetes objects whose names a list answers with, which the caller must be allowed
    /// to list as well: a list enumerates them (the pods of a namespace, every namespace), and a
    /// label selector is matched against the objects themselves, which the aggregator lists
    /// with its own rights. A get or edges names its one object: the caller knows it already.
    pub fn objects<'a>(&'a self, label_selector: Option<&'a str>) -> Option<Attributes<'a>> {
        let Self::List { plural, namespace } = self else {
            return None;
        };
        let (group, version) = match plural.as_str() {
            "deployments" | "statefulsets" | "daemonsets" => ("apps", "v1"),
            _ => ("", "v1"),
        };
        Some(Attributes {
            group,
            version,
            resource: plural,
            subresource: "",
            verb: "list",
            // Namespaces are cluster-scoped; a list across namespaces is asked cluster-wide.
            namespace: if plural == "namespaces" {
                None
            } else {
                namespace.as_deref()
            },
            name: None,
            label_selector,
        })
    }
}

/// A SubjectAccessReview's resource attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// API group, `""` for the core group.
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub verb: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub label_selector: Option<&'a str>,
}

impl Attributes<'_> {
    /// What was refused, worded as the API server words its own 403s.
    pub fn forbidden(&self, user: &str) -> String {
        let what = if self.subresource.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let qualified = if self.group.is_empty() {
            what.clone()
        } else {
            format!("{what}.{}", self.group)
        };
        let named = self.name.map_or_else(String::new, |n| format!(" {n:?}"));
        let scope = self.namespace.map_or_else(
            || "at the cluster scope".to_owned(),
            |ns| format!("in the namespace {ns:?}"),
        );
        format!(
            "{qualified}{named} is forbidden: User {user:?} cannot {} resource {what:?} in API group {:?} {scope}",
            self.verb, self.group
        )
    }
}

/// `Kind` of a plural (`pods` → `Pod`).
pub fn kind_of(plural: &str) -> &'static str {
    RESOURCES
        .iter()
        .find(|(p, _, _)| *p == plural)
        .map_or("", |(_, k, _)| k)
}

/// The workload kind the registry keys by (`deployments` → `deployment`).
fn workload_kind(plural: &str) -> Option<&'static str> {
    match plural {
        "deployments" => Some("deployment"),
        "statefulsets" => Some("statefulset"),
        "daemonsets" => Some("daemonset"),
        _ => None,
    }
}

/// `?t=` as a window: `30s`, `1m`, or seconds; at least 1 s, at most what pods keep.
pub fn window(query: Option<&str>) -> Result<Duration, String> {
    let found = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "t")
            .map(|(_, v)| v.into_owned())
    });
    let Some(t) = found else {
        return Ok(DEFAULT_WINDOW);
    };
    let t = t.as_str();
    let d = t
        .parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(t))
        .map_err(|e| format!("t={t}: {e}"))?;
    let max = Duration::from_millis(u64::try_from(MAX_WINDOW_MS).unwrap_or(60_000));
    // Below a second, the document would say `30ms` over counts of whole 10 s slots: a window
    // it does not hold.
    if d < Duration::from_secs(1) || d > max {
        return Err(format!(
            "t={t}: the window must be between 1s and {}",
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// Builds the documents of one request.
#[derive(Debug)]
pub struct Answer<'a> {
    pub registry: &'a Registry,
    pub window: Duration,
    pub now: SystemTime,
}

impl Answer<'_> {
    fn now_ms(&self) -> i64 {
        inflight_runtime::time::unix_ms(self.now)
    }

    fn window_ms(&self) -> i64 {
        inflight_runtime::time::millis(self.window)
    }

    /// The traffic of one object, `None` when nothing of it reports.
    pub fn traffic(&self, plural: &str, namespace: Option<&str>, name: &str) -> Option<Traffic> {
        let (w, now) = (self.window_ms(), self.now_ms());
        match (plural, namespace) {
            ("namespaces", _) => self.registry.namespace_traffic(name, w, now),
            ("pods", Some(ns)) => self.registry.pod_traffic(ns, name, w, now),
            (p, Some(ns)) => {
                let kind = workload_kind(p)?;
                self.registry
                    .workload_traffic(&WorkloadKey::new(ns, kind, name), w, now)
            }
            _ => None,
        }
    }

    /// The objects of a kind that report.
    pub fn names(&self, plural: &str, namespace: Option<&str>) -> Vec<Named> {
        match plural {
            "namespaces" => self
                .registry
                .namespaces()
                .into_iter()
                .map(|n| (None, n))
                .collect(),
            "pods" => self
                .registry
                .pods_in(namespace)
                .into_iter()
                .map(|(ns, p)| (Some(ns), p))
                .collect(),
            p => workload_kind(p).map_or_else(Vec::new, |kind| {
                self.registry
                    .workloads_in(namespace, Some(kind))
                    .into_iter()
                    .map(|k| (Some(k.namespace), k.name))
                    .collect()
            }),
        }
    }

    /// One `TrafficMetrics`: all the traffic the object received (edge from any source, observed
    /// at the server side: the pods' own proxies).
    pub fn metrics(
        &self,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        traffic: &Traffic,
    ) -> TrafficMetrics {
        let mut metrics = Vec::new();
        for (label, q) in [
            ("p99_response_latency", 0.99),
            ("p90_response_latency", 0.90),
            ("p50_response_latency", 0.5),
        ] {
            if let Some(seconds) = traffic.quantile(q) {
                metrics.push(Metric {
                    name: label.into(),
                    unit: Some("seconds".into()),
                    value: smi_types::seconds_quantity(seconds),
                });
            }
        }
        metrics.push(Metric {
            name: "success_count".into(),
            unit: None,
            value: traffic.success.to_string(),
        });
        metrics.push(Metric {
            name: "failure_count".into(),
            unit: None,
            value: traffic.failure.to_string(),
        });
        let resource = ObjectReference {
            kind: kind_of(plural).into(),
            namespace: namespace.unwrap_or_default().into(),
            name: name.into(),
        };
        let timestamp = humantime::format_rfc3339_seconds(self.now).to_string();
        TrafficMetrics {
            kind: "TrafficMetrics".into(),
            api_version: GROUP_VERSION.into(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: namespace.unwrap_or_default().into(),
                creation_timestamp: timestamp.clone(),
            },
            timestamp,
            window: humantime::format_duration(self.window).to_string(),
            resource,
            edge: Some(Edge {
                direction: Direction::From,
                side: Side::Server,
                resource: ObjectReference::default(),
            }),
            metrics,
        }
    }

    /// A list of a kind, keeping only the objects in `only` (namespace, name) when a label
    /// selector narrowed them.
    pub fn list(
        &self,
        plural: &str,
        namespace: Option<&str>,
        only: Option<&HashSet<Named>>,
        selector: Option<smi_types::LabelSelector>,
    ) -> TrafficMetricsList {
        let items = self
            .names(plural, namespace)
            .into_iter()
            .filter(|named| only.is_none_or(|o| o.contains(named)))
            .filter_map(|(ns, name)| {
                let t = self.traffic(plural, ns.as_deref(), &name)?;
                Some(self.metrics(plural, ns.as_deref(), &name, &t))
            })
            .collect();
        let resource = ObjectReference {
            kind: kind_of(plural).into(),
            namespace: namespace.unwrap_or_default().into(),
            name: String::new(),
        };
        TrafficMetricsList::new(resource, selector, items)
    }

    /// The edges of one object. Sidecars see the traffic they serve, not who sent it, so there is
    /// one edge: from any source, observed at the server side.
    pub fn edges(
        &self,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        traffic: &Traffic,
    ) -> TrafficMetricsList {
        let resource = ObjectReference {
            kind: kind_of(plural).into(),
            namespace: namespace.unwrap_or_default().into(),
            name: name.into(),
        };
        TrafficMetricsList::new(
            resource,
            None,
            vec![self.metrics(plural, namespace, name, traffic)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = |s: &str| Route::parse(s);
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(p("/apis"), Some(Route::GroupList));
        assert_eq!(p("/apis/metrics.smi-spec.io"), Some(Route::Group));
        assert_eq!(
            p("/apis/metrics.smi-spec.io/v1alpha1/"),
            Some(Route::ResourceList)
        );
        assert_eq!(
            p("/apis/metrics.smi-spec.io/v1alpha1/namespaces"),
            Some(Route::List {
                plural: "namespaces".into(),
                namespace: None
            })
        );
        assert_eq!(
            p("/apis/metrics.smi-spec.io/v1alpha1/namespaces/shop"),
            Some(Route::Get {
                plural: "namespaces".into(),
                namespace: None,
                name: "shop".into()
            })
        );
        assert_eq!(
            p("/apis/metrics.smi-spec.io/v1alpha1/pods"),
            Some(Route::List {
                plural: "pods".into(),
                namespace: None
            })
        );
        assert_eq!(
            p("/apis/metrics.smi-spec.io/v1alpha1/namespaces/shop/deployments/web/edges"),
            Some(Route::Edges {
                plural: "deployments".into(),
                namespace: some("shop"),
                name: "web".into()
            })
        );
        assert_eq!(
            p("/apis/metrics.smi-spec.io/v1alpha1/namespaces/shop/services"),
            None
        );
        assert_eq!(p("/apis/metrics.smi-spec.io/v1beta1"), None);
        assert_eq!(p("/healthz"), None);
    }

    #[test]
    fn a_list_asks_to_list_the_objects_it_names_and_a_get_does_not() {
        let p = |s: &str| Route::parse(s).unwrap();
        let base = "/apis/metrics.smi-spec.io/v1alpha1";
        let pods = p(&format!("{base}/namespaces/shop/pods"));
        let o = pods.objects(Some("app=web")).unwrap();
        assert_eq!(
            (o.group, o.resource, o.verb, o.namespace, o.label_selector),
            ("", "pods", "list", Some("shop"), Some("app=web"))
        );
        let all = p(&format!("{base}/deployments"));
        let o = all.objects(None).unwrap();
        assert_eq!(
            (o.group, o.resource, o.namespace),
            ("apps", "deployments", None)
        );
        let namespaces = p(&format!("{base}/namespaces"));
        let o = namespaces.objects(None).unwrap();
        assert_eq!((o.group, o.resource, o.namespace), ("", "namespaces", None));
        assert_eq!(
            p(&format!("{base}/namespaces/shop/pods/web-1")).objects(None),
            None
        );
        assert_eq!(p(&format!("{base}/namespaces/shop")).objects(None), None);
        assert_eq!(p(base).objects(None), None);
        assert_eq!(
            o.forbidden("bob"),
            r#"namespaces is forbidden: User "bob" cannot list resource "namespaces" in API group "" at the cluster scope"#
        );
        let smi = pods.attributes().unwrap();
        assert_eq!(
            smi.forbidden("bob"),
            r#"pods.metrics.smi-spec.io is forbidden: User "bob" cannot list resource "pods" in API group "metrics.smi-spec.io" in the namespace "shop""#
        );
    }

    #[test]
    fn the_version_is_a_whole_segment() {
        // Found by the fuzzer (`smi_routes`): the version and the next segment run together
        // were read as two segments, so this path was served as the namespace `shop`.
        for path in [
            "/apis/metrics.smi-spec.io/v1alpha1namespaces/shop",
            "/apis/metrics.smi-spec.io/v1alpha1pods",
            "/apis/metrics.smi-spec.io/v1alpha12/pods",
        ] {
            assert_eq!(Route::parse(path), None, "{path}");
        }
        assert_eq!(
            Route::parse("/apis/metrics.smi-spec.io/v1alpha1"),
            Some(Route::ResourceList)
        );
    }

    #[test]
    fn windows() {
        assert_eq!(window(None), Ok(DEFAULT_WINDOW));
        assert_eq!(window(Some("t=1m")), Ok(Duration::from_secs(60)));
        assert_eq!(
            window(Some("labelSelector=a%3Db&t=10")),
            Ok(Duration::from_secs(10))
        );
        assert!(window(Some("t=2h")).is_err());
        assert!(window(Some("t=soon")).is_err());
    }

    #[test]
    fn a_window_under_a_second_is_refused_as_the_reason_says() {
        // Found by the fuzzer (`smi_routes`): `?t=30ms` was taken as a 30 ms window.
        for t in ["t=30ms", "t=999ms", "t=0"] {
            let why = window(Some(t)).unwrap_err();
            assert!(why.contains("between 1s and"), "{t}: {why}");
        }
        assert_eq!(window(Some("t=1000ms")), Ok(Duration::from_secs(1)));
    }
}
