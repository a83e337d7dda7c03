//! KEDA's `ScaledObject` (`keda.sh/v1alpha1`), typed with only the fields the operator writes and
//! reads (no crate of KEDA's types works with kube 5), and how an HTTPAutoscaler becomes one.

use std::collections::BTreeMap;

use inflight_api::{HttpAutoscaler, MetricType, TargetKind};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// What KEDA's CRD calls a ScaledObject, as far as the operator sets it. Fields left `None` are
/// not sent, so a server-side apply claims only what is ours.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keda.sh",
    version = "v1alpha1",
    kind = "ScaledObject",
    namespaced,
    status = "ScaledObjectStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: KedaTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_period: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i32>,
    #[serde(default)]
    pub triggers: Vec<Trigger>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KedaTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_ref: Option<AuthenticationRef>,
}

/// The (Cluster)TriggerAuthentication a trigger takes its secrets from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AuthenticationRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ScaledObjectStatus {
    #[serde(default)]
    pub conditions: Vec<KedaCondition>,
}

/// KEDA's conditions have no `lastTransitionTime` or `observedGeneration`, so not the standard
/// type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct KedaCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl ScaledObject {
    /// KEDA's `Ready` condition: `Some((true, ""))`, or false with KEDA's reason and message;
    /// `None` while KEDA has not looked at it.
    pub fn ready(&self) -> Option<(bool, String)> {
        let ready = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "True" => Some((true, String::new())),
            // KEDA writes Unknown before its first check.
            Some(c) if c.status == "Unknown" => None,
            Some(c) => Some((
                false,
                format!(
                    "KEDA: {}: {}",
                    c.reason.as_deref().unwrap_or("not ready"),
                    c.message.as_deref().unwrap_or("")
                ),
            )),
            None => None,
        }
    }
}

/// Whole seconds, at least one: KEDA's fields are integers.
fn seconds(d: std::time::Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// The ScaledObject spec for `hta`: an `external-push` trigger to the aggregator carrying the
/// metadata keys the aggregator reads (see `aggregator/src/scaler/metadata.rs`), and the
/// ClusterTriggerAuthentication `authentication` (KEDA's client certificate for the scaler port)
/// if there is one. Fails on a duration the schema let through but that does not parse.
pub fn spec_for(
    hta: &HttpAutoscaler,
    aggregator: &str,
    authentication: Option<&str>,
) -> Result<ScaledObjectSpec, String> {
    let spec = &hta.spec;
    let kind = match spec.scale_target_ref.kind {
        TargetKind::Deployment => "Deployment",
        TargetKind::StatefulSet => "StatefulSet",
    };
    let cooldown = inflight_api::parse_duration(&spec.scale_to_zero_after)
        .map_err(|e| format!("scaleToZeroAfter: {e}"))?;
    let polling = spec
        .polling_interval
        .as_deref()
        .map(inflight_api::parse_duration)
        .transpose()
        .map_err(|e| format!("pollingInterval: {e}"))?;
    let mut metadata = BTreeMap::from([
        ("scalerAddress".to_owned(), aggregator.to_owned()),
        ("workload".to_owned(), hta.workload()),
        (
            "metric".to_owned(),
            match spec.metric.type_ {
                MetricType::Concurrency => "concurrency",
                MetricType::RequestRate => "requestRate",
            }
            .to_owned(),
        ),
        ("target".to_owned(), spec.metric.target.to_string()),
        (
            "scaleToZeroAfter".to_owned(),
            format!("{}s", cooldown.as_secs()),
        ),
    ]);
    if let Some(window) = &spec.metric.window {
        let w = inflight_api::parse_duration(window).map_err(|e| format!("metric.window: {e}"))?;
        metadata.insert("window".to_owned(), format!("{}s", w.as_secs()));
    }
    Ok(ScaledObjectSpec {
        scale_target_ref: KedaTarget {
            api_version: Some(spec.scale_target_ref.api_version.clone()),
            kind: Some(kind.to_owned()),
            name: spec.scale_target_ref.name.clone(),
        },
        polling_interval: polling.map(seconds),
        cooldown_period: Some(seconds(cooldown)),
        min_replica_count: Some(spec.min_replicas),
        max_replica_count: Some(spec.max_replicas),
        triggers: vec![Trigger {
            type_: "external-push".to_owned(),
            metadata,
            authentication_ref: authentication.map(|name| AuthenticationRef {
                name: name.to_owned(),
                kind: Some("ClusterTriggerAuthentication".to_owned()),
            }),
        }],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hta(spec: serde_json::Value) -> HttpAutoscaler {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "inflight.dev/v1alpha1", "kind": "HTTPAutoscaler",
            "metadata": {"name": "web", "namespace": "shop"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn the_trigger_carries_what_the_aggregator_reads() {
        let h = hta(serde_json::json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "service": {"name": "web", "port": 80}, "maxReplicas": 7,
            "metric": {"type": "requestRate", "target": 2.5, "window": "1m30s"},
            "scaleToZeroAfter": "5m", "pollingInterval": "2s"
        }));
        let s = spec_for(&h, "agg.inflight.svc:9091", Some("inflight-aggregator")).unwrap();
        assert_eq!(s.scale_target_ref.kind.as_deref(), Some("Deployment"));
        assert_eq!(s.min_replica_count, Some(0));
        assert_eq!(s.max_replica_count, Some(7));
        assert_eq!(s.cooldown_period, Some(300));
        assert_eq!(s.polling_interval, Some(2));
        let t = &s.triggers[0];
        assert_eq!(t.type_, "external-push");
        let m: Vec<_> = t.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            m,
            [
                "metric=requestRate",
                "scaleToZeroAfter=300s",
                "scalerAddress=agg.inflight.svc:9091",
                "target=2.5",
                "window=90s",
                "workload=deployment/web"
            ]
        );
        // KEDA's client certificate, from the cluster-wide authentication.
        assert_eq!(
            serde_json::to_value(t).unwrap()["authenticationRef"],
            serde_json::json!({"name": "inflight-aggregator", "kind": "ClusterTriggerAuthentication"})
        );
    }

    #[test]
    fn unset_polling_interval_is_left_to_keda() {
        let h = hta(serde_json::json!({
            "scaleTargetRef": {"kind": "StatefulSet", "name": "db"},
            "service": {"name": "db", "port": 80}, "maxReplicas": 1
        }));
        let s = spec_for(&h, "a:9090", None).unwrap();
        assert_eq!(s.polling_interval, None);
        assert!(!serde_json::to_string(&s)
            .unwrap()
            .contains("pollingInterval"));
        assert_eq!(s.triggers[0].metadata["workload"], "statefulset/db");
        assert!(!s.triggers[0].metadata.contains_key("window"));
        assert!(!serde_json::to_string(&s)
            .unwrap()
            .contains("authenticationRef"));
    }

    #[test]
    fn readiness_reads_kedas_condition() {
        let mut so = ScaledObject::new(
            "web",
            spec_for(
                &hta(serde_json::json!({
                    "scaleTargetRef": {"kind": "Deployment", "name": "web"},
                    "service": {"name": "web", "port": 80}, "maxReplicas": 1
                })),
                "a:1",
                None,
            )
            .unwrap(),
        );
        assert_eq!(so.ready(), None);
        so.status = Some(ScaledObjectStatus {
            conditions: vec![KedaCondition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: Some("ScaledObjectCheckFailed".into()),
                message: Some("no scalerAddress".into()),
            }],
        });
        assert_eq!(
            so.ready(),
            Some((
                false,
                "KEDA: ScaledObjectCheckFailed: no scalerAddress".to_owned()
            ))
        );
        so.status.as_mut().unwrap().conditions[0].status = "True".into();
        assert_eq!(so.ready(), Some((true, String::new())));
    }
}
