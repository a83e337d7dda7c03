//! The `HTTPAutoscaler` custom resource (`inflight.dev/v1alpha1`, short name `hta`): what a user
//! asks of inflight for one workload. The operator turns it into a KEDA ScaledObject and the
//! Service's endpoints; the activator reads it to route and hold requests. The CRD is generated
//! from these types (`inflight-crdgen`), never written by hand.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The burst window of the aggregator (6 s): a window shorter than twice it leaves burst mode
/// nothing to compare.
pub const MIN_WINDOW: &str = "12s";

/// A Go-style duration as the API server's CEL `duration()` reads it: `300s`, `5m`, `1h30m`.
const DURATION: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// How one workload scales on its requests in flight, and how its Service is switched between the
/// activator (no pod ready) and the pods.
// Each `printcolumn(...)` repeats `type_ = …`, which clippy takes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "inflight.dev",
    version = "v1alpha1",
    kind = "HTTPAutoscaler",
    root = "HttpAutoscaler",
    plural = "httpautoscalers",
    shortname = "hta",
    category = "inflight",
    namespaced,
    status = "HttpAutoscalerStatus",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.scaleTargetRef.name"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.mode"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "In-flight", type_ = "number", json_path = ".status.inFlight"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not be more than maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct HttpAutoscalerSpec {
    /// The workload to scale.
    pub scale_target_ref: ScaleTargetRef,
    /// The Service clients call; the operator owns its endpoints.
    pub service: ServiceRef,
    /// Host names besides the Service's own that the activator routes here (ingress names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub hosts: Vec<String>,
    /// Replicas when idle: 0 scales to zero.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    #[serde(default)]
    pub metric: Metric,
    /// How long without a request before the workload goes to `minReplicas` (KEDA's cooldown).
    #[serde(default = "default_scale_to_zero_after")]
    #[schemars(regex(pattern = DURATION))]
    pub scale_to_zero_after: String,
    /// How often KEDA asks for the figure (default: KEDA's own, 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub polling_interval: Option<String>,
    #[serde(default)]
    pub activation: Activation,
    /// The most requests one pod serves at once; more wait in the activator (0: no limit).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub container_concurrency: i32,
}

fn default_scale_to_zero_after() -> String {
    "300s".to_owned()
}

/// The workload: a Deployment or a StatefulSet in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// `apps/v1`.
    #[serde(default = "default_apps_v1")]
    pub api_version: String,
    pub kind: TargetKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn default_apps_v1() -> String {
    "apps/v1".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TargetKind {
    Deployment,
    StatefulSet,
}

/// The Service clients call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// At most 54 characters: the private Service beside it is named `<name>-inflight`.
    #[schemars(length(min = 1, max = 54))]
    pub name: String,
    /// The Service's port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The app's port behind it (default: `port`); traffic reaches it through each pod's proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<i32>,
}

/// What is scaled on, and to what target per replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.window) || duration(self.window) >= duration('12s')").message("window must be at least 12s, twice the aggregator's burst window"))]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    #[serde(rename = "type", default)]
    pub type_: MetricType,
    /// Per replica: requests in flight (concurrency) or requests per second (requestRate).
    #[schemars(range(min = 0.001))]
    pub target: f64,
    /// The stable window (default: the aggregator's, 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub window: Option<String>,
}

impl Default for Metric {
    fn default() -> Self {
        Self {
            type_: MetricType::Concurrency,
            target: 10.0,
            window: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MetricType {
    #[default]
    Concurrency,
    RequestRate,
}

/// How requests for a workload at zero are held while it wakes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Activation {
    /// A held request waits at most this long for a ready pod, then gets 504.
    #[serde(default = "default_activation_timeout")]
    #[schemars(regex(pattern = DURATION))]
    pub timeout: String,
    /// Requests held at once for this workload; more get 503 with Retry-After.
    #[serde(default = "default_max_pending")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_pending_requests: i32,
}

fn default_activation_timeout() -> String {
    "30s".to_owned()
}

fn default_max_pending() -> i32 {
    1000
}

impl Default for Activation {
    fn default() -> Self {
        Self {
            timeout: default_activation_timeout(),
            max_pending_requests: default_max_pending(),
        }
    }
}

/// Which side the Service's endpoints point at.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Mode {
    /// The ready pods' proxies.
    Serve,
    /// The activator, while no pod is ready.
    Proxy,
}

/// What the operator last saw and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpAutoscalerStatus {
    /// `Ready`, `ScaledObjectReady`, `TargetFound`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Requests in flight across the workload, as the aggregator last said.
    #[serde(default)]
    pub in_flight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activation_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Label on the private Service the operator makes for a workload's pods (and so, copied there by
/// Kubernetes, on its EndpointSlices): the name of the HTTPAutoscaler it serves.
pub const PODS_OF_LABEL: &str = "inflight.dev/pods-of";
/// Label on the objects the operator manages for an HTTPAutoscaler: its name.
pub const AUTOSCALER_LABEL: &str = "inflight.dev/httpautoscaler";
/// Annotation on an adopted Service: the selector it had (JSON), restored when the HTTPAutoscaler
/// is deleted.
pub const ADOPTED_SELECTOR_ANNOTATION: &str = "inflight.dev/adopted-selector";
/// `endpointslice.kubernetes.io/managed-by` of the EndpointSlices the operator writes (a label
/// value: no `/`, so not `inflight.dev/operator`; Kubernetes names its own the same way,
/// `endpointslice-controller.k8s.io`).
pub const SLICE_MANAGER: &str = "operator.inflight.dev";

impl TargetKind {
    /// As the workload's identity spells it (`deployment`, `statefulset`).
    pub fn lowercase(self) -> &'static str {
        match self {
            TargetKind::Deployment => "deployment",
            TargetKind::StatefulSet => "statefulset",
        }
    }
}

impl HttpAutoscaler {
    /// The workload as the sidecars report it and the aggregator keys it: `deployment/web`.
    pub fn workload(&self) -> String {
        let t = &self.spec.scale_target_ref;
        format!("{}/{}", t.kind.lowercase(), t.name)
    }

    /// The private Service with the workload's selector, whose EndpointSlices say which pods are
    /// ready: the operator and the activator both read them.
    pub fn pods_service(&self) -> String {
        format!("{}-inflight", self.spec.service.name)
    }

    /// The EndpointSlice of the Service clients call in `mode`.
    pub fn slice_name(&self, mode: Mode) -> String {
        let side = match mode {
            Mode::Serve => "serve",
            Mode::Proxy => "proxy",
        };
        format!("{}-inflight-{side}", self.spec.service.name)
    }
}

/// Parses a duration of the spec (`300s`, `5m`, `1h30m`, as the schema's pattern allows).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

/// The CRD, as pretty JSON (which is YAML too: the chart's `crds/` takes it as it is).
pub fn crd_text() -> String {
    let crd = HttpAutoscaler::crd();
    serde_json::to_string_pretty(&crd).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_crd_names_and_columns_are_the_designs() {
        let crd = HttpAutoscaler::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("httpautoscalers.inflight.dev")
        );
        assert_eq!(crd.spec.names.kind, "HTTPAutoscaler");
        assert_eq!(crd.spec.names.short_names, Some(vec!["hta".to_owned()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Target", "Mode", "Replicas", "Ready", "In-flight", "Age"]
        );
        let text = crd_text();
        for rule in [
            "self.minReplicas <= self.maxReplicas",
            "!has(self.window) || duration(self.window) >= duration('12s')",
        ] {
            assert!(
                text.contains(&serde_json::to_string(rule).unwrap()),
                "{rule} missing"
            );
        }
    }

    #[test]
    fn defaults_fill_what_a_user_leaves_out() {
        let spec: HttpAutoscalerSpec = serde_json::from_value(serde_json::json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "service": {"name": "web", "port": 80},
            "maxReplicas": 10
        }))
        .unwrap();
        assert_eq!(spec.min_replicas, 0);
        assert_eq!(spec.scale_to_zero_after, "300s");
        assert_eq!(spec.metric, Metric::default());
        assert_eq!(spec.activation.max_pending_requests, 1000);
        assert_eq!(spec.scale_target_ref.api_version, "apps/v1");
    }

    #[test]
    fn spec_durations_parse_as_the_pattern_allows() {
        for (text, secs) in [("300s", 300), ("5m", 300), ("1h30m", 5400), ("1.5s", 1)] {
            assert_eq!(parse_duration(text).unwrap().as_secs(), secs, "{text}");
        }
        assert!(parse_duration("soon").is_err());
    }
}
