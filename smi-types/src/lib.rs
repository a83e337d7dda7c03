//! The SMI Traffic Metrics API, `metrics.smi-spec.io/v1alpha1`, as the spec describes it
//! (servicemeshinterface/smi-spec, `apis/traffic-metrics/v1alpha1/traffic-metrics.md`): the
//! `TrafficMetrics` and `TrafficMetricsList` kinds and the discovery documents an aggregated API
//! server answers with. The project archived the spec in 2023; these types are kept here, whole.

pub mod quantity;

use serde::{Deserialize, Serialize};

pub const GROUP: &str = "metrics.smi-spec.io";
pub const VERSION: &str = "v1alpha1";
pub const GROUP_VERSION: &str = "metrics.smi-spec.io/v1alpha1";

/// The resource kinds served, as (plural, Kind, namespaced).
pub const RESOURCES: &[(&str, &str, bool)] = &[
    ("namespaces", "Namespace", false),
    ("pods", "Pod", true),
    ("deployments", "Deployment", true),
    ("statefulsets", "StatefulSet", true),
    ("daemonsets", "DaemonSet", true),
];

/// A Kubernetes object reference, with only the fields the spec uses; empty fields are left out
/// (an edge's `resource: {}` means "any").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    From,
    To,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Client,
    Server,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub direction: Direction,
    pub side: Side,
    pub resource: ObjectReference,
}

/// One metric: latencies carry `unit: seconds` and a Kubernetes quantity (`10m`); counts carry no
/// unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficMetrics {
    pub kind: String,
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub timestamp: String,
    pub window: String,
    pub resource: ObjectReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<Edge>,
    pub metrics: Vec<Metric>,
}

/// `matchLabels`/`matchExpressions` as given in `?labelSelector=`, echoed back as the spec shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficMetricsList {
    pub kind: String,
    pub api_version: String,
    pub metadata: ListMeta,
    pub resource: ObjectReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    pub items: Vec<TrafficMetrics>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMeta {}

impl TrafficMetricsList {
    pub fn new(
        resource: ObjectReference,
        selector: Option<LabelSelector>,
        items: Vec<TrafficMetrics>,
    ) -> Self {
        Self {
            kind: "TrafficMetricsList".into(),
            api_version: GROUP_VERSION.into(),
            metadata: ListMeta {},
            resource,
            selector,
            items,
        }
    }
}

/// Discovery: `GET /apis/metrics.smi-spec.io/v1alpha1`.
pub fn api_resource_list() -> serde_json::Value {
    let mut resources = Vec::new();
    for (plural, _, namespaced) in RESOURCES {
        resources.push(serde_json::json!({
            "name": plural, "singularName": "", "namespaced": namespaced,
            "kind": "TrafficMetrics", "verbs": ["get", "list"]
        }));
        resources.push(serde_json::json!({
            "name": format!("{plural}/edges"), "singularName": "", "namespaced": namespaced,
            "kind": "TrafficMetricsList", "verbs": ["get"]
        }));
    }
    serde_json::json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": resources})
}

/// Discovery: `GET /apis/metrics.smi-spec.io` (an APIGroup) and `GET /apis` (an APIGroupList).
pub fn api_group() -> serde_json::Value {
    let version = serde_json::json!({"groupVersion": GROUP_VERSION, "version": VERSION});
    serde_json::json!({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
                       "versions": [version.clone()], "preferredVersion": version})
}

pub fn api_group_list() -> serde_json::Value {
    serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]})
}

/// A Kubernetes `Status` for errors (404, 403, 401, 400).
pub fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code})
}

/// A duration in seconds as a Kubernetes quantity in canonical form, the way the spec writes
/// latencies (`10m` is ten milliseconds): whole seconds, else milli-units, else micro-units.
pub fn seconds_quantity(seconds: f64) -> String {
    #[allow(clippy::cast_possible_truncation)]
    let micros = (seconds * 1e6).round() as i64;
    if micros % 1_000_000 == 0 {
        format!("{}", micros / 1_000_000)
    } else if micros % 1000 == 0 {
        format!("{}m", micros / 1000)
    } else {
        format!("{micros}u")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_round_trips() {
        let spec = r#"{"kind":"TrafficMetrics","apiVersion":"metrics.smi-spec.io/v1alpha1","metadata":{},
            "resource":{"kind":"Pod","namespace":"foobar","name":"foo-775b9cbd88-ntxsl"},
            "edge":{"direction":"to","side":"client","resource":{"kind":"Pod","namespace":"foobar","name":"baz-577db7d977-lsk2q"}},
            "timestamp":"2019-04-08T22:25:55Z","window":"30s",
            "metrics":[{"name":"p99_response_latency","unit":"seconds","value":"10m"},
                       {"name":"success_count","value":"100"}]}"#;
        let parsed: TrafficMetrics = serde_json::from_str(spec).unwrap();
        assert_eq!(
            parsed.edge.as_ref().map(|e| e.direction),
            Some(Direction::To)
        );
        let back = serde_json::to_value(&parsed).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(spec).unwrap()
        );
        // An empty edge resource is `{}`, as in the spec.
        let any = Edge {
            direction: Direction::From,
            side: Side::Server,
            resource: ObjectReference::default(),
        };
        assert_eq!(
            serde_json::to_string(&any).unwrap(),
            r#"{"direction":"from","side":"server","resource":{}}"#
        );
    }

    #[test]
    fn latencies_are_quantities() {
        assert_eq!(seconds_quantity(0.010), "10m");
        assert_eq!(seconds_quantity(0.0004), "400u");
        assert_eq!(seconds_quantity(0.00275), "2750u");
        assert_eq!(seconds_quantity(0.0), "0");
        assert_eq!(seconds_quantity(2.0), "2");
        assert_eq!(seconds_quantity(1.5), "1500m");
    }
}
