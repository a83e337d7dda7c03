//! Reading a status [`Snapshot`]. The autoscaler must be there; everything else is read as far as
//! it can be: the ScaledObject, then the HPA it names, then the value KEDA's metrics server gives
//! that HPA, and beside them the Events.

use inflight_api::HttpAutoscaler;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::{Event, Hpa, KedaCondition, KedaValue, ScaledObject, Snapshot};
use crate::connect::{api_code, reason, Connection};
use crate::Error;
use smi_types::quantity;

/// The most Events shown.
pub const EVENTS: usize = 10;
/// The most Events read to choose them from.
const EVENTS_READ: u32 = 500;

pub async fn snapshot(connection: &Connection, ns: &str, name: &str) -> Result<Snapshot, Error> {
    let hta = autoscaler(connection, ns, name).await?;
    let keda = async {
        let so = scaled_object(connection, ns, name).await;
        let hpa_name = so
            .as_ref()
            .ok()
            .and_then(|so| so.hpa_name.clone())
            .unwrap_or_else(|| format!("keda-hpa-{name}"));
        let hpa = hpa(connection, ns, &hpa_name).await;
        // The metric the HPA asks for, else the one KEDA says it serves.
        let metric = match (&hpa, &so) {
            (
                Ok(Hpa {
                    metric: Some(m), ..
                }),
                _,
            ) => Ok(m.clone()),
            (_, Ok(so)) if !so.metric_names.is_empty() => Ok((
                so.metric_names[0].clone(),
                format!("scaledobject.keda.sh/name={name}"),
            )),
            (Err(e), _) => Err(format!("no HPA to read the metric's name from ({e})")),
            (Ok(_), _) => Err(format!("the HPA {hpa_name} has no external metric")),
        };
        let value = match metric {
            Ok((metric, selector)) => keda_value(connection, ns, &metric, &selector).await,
            Err(e) => Err(e),
        };
        (so, hpa, value)
    };
    let ((scaled_object, hpa, keda_value), events) =
        tokio::join!(keda, events(connection, ns, name));
    let status = hta.status.clone().unwrap_or_default();
    Ok(Snapshot {
        now: k8s_openapi::jiff::Timestamp::now(),
        namespace: ns.to_owned(),
        name: name.to_owned(),
        generation: hta.metadata.generation,
        spec: hta.spec,
        status,
        scaled_object,
        hpa,
        keda_value,
        events,
    })
}

/// The autoscaler, or why there is none: a 404 naming it is the object missing, one without a
/// name is the API server not knowing the resource (no CRD).
async fn autoscaler(
    connection: &Connection,
    ns: &str,
    name: &str,
) -> Result<HttpAutoscaler, Error> {
    let api: Api<HttpAutoscaler> = Api::namespaced(connection.client.clone(), ns);
    match connection
        .bounded(
            &format!("reading HTTPAutoscaler {ns}/{name}"),
            api.get(name),
        )
        .await
    {
        Err(Error::Kube {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 404 => {
            if status.details.as_ref().is_some_and(|d| !d.name.is_empty()) {
                Err(Error::NotFound {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            } else {
                Err(Error::CrdMissing)
            }
        }
        other => other,
    }
}

async fn scaled_object(
    connection: &Connection,
    ns: &str,
    name: &str,
) -> Result<ScaledObject, String> {
    let path = format!("/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{name}");
    match connection.get_raw::<Value>(&path).await {
        Ok(so) => Ok(parse_scaled_object(name, &so)),
        Err(e) if api_code(&e) == Some(404) => Err(format!(
            "KEDA has no ScaledObject {name} (the operator makes it; is KEDA installed?): {}",
            reason(&e)
        )),
        Err(e) => Err(reason(&e)),
    }
}

/// The fields status shows of a ScaledObject's JSON.
pub fn parse_scaled_object(name: &str, so: &Value) -> ScaledObject {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let status = &so["status"];
    ScaledObject {
        name: name.to_owned(),
        conditions: status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| KedaCondition {
                type_: text(&c["type"]),
                status: text(&c["status"]),
                reason: text(&c["reason"]),
                message: text(&c["message"]),
            })
            .collect(),
        hpa_name: status["hpaName"].as_str().map(str::to_owned),
        metric_names: status["externalMetricNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect(),
    }
}

async fn hpa(connection: &Connection, ns: &str, name: &str) -> Result<Hpa, String> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(connection.client.clone(), ns);
    match connection
        .bounded(&format!("reading HPA {name}"), api.get(name))
        .await
    {
        Ok(hpa) => Ok(parse_hpa(&hpa)),
        Err(e) if api_code(&e) == Some(404) => Err(format!(
            "no HPA {name}: KEDA makes it once the ScaledObject is ready"
        )),
        Err(e) => Err(reason(&e)),
    }
}

/// The fields status shows of the HPA: bounds, current and desired, its external metric.
pub fn parse_hpa(hpa: &HorizontalPodAutoscaler) -> Hpa {
    let spec = hpa.spec.clone().unwrap_or_default();
    let status = hpa.status.clone().unwrap_or_default();
    let external = spec
        .metrics
        .iter()
        .flatten()
        .find_map(|m| m.external.as_ref());
    let metric = external.map(|e| {
        let labels = e
            .metric
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .map(|l| {
                l.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        (e.metric.name.clone(), labels)
    });
    Hpa {
        name: hpa.metadata.name.clone().unwrap_or_default(),
        min: spec.min_replicas,
        max: spec.max_replicas,
        current: status.current_replicas,
        desired: status.desired_replicas,
        metric,
        target: external.and_then(|e| e.target.average_value.as_ref().map(|q| q.0.clone())),
    }
}

/// What KEDA's metrics server answers the HPA: `GET
/// /apis/external.metrics.k8s.io/v1beta1/namespaces/NS/METRIC?labelSelector=…`.
async fn keda_value(
    connection: &Connection,
    ns: &str,
    metric: &str,
    selector: &str,
) -> Result<KedaValue, String> {
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector={}",
        encode(selector)
    );
    let list: Value = connection
        .get_raw(&path)
        .await
        .map_err(|e| format!("KEDA's metrics server: {}", reason(&e)))?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let values: Vec<f64> = items
        .iter()
        .filter_map(|i| quantity::parse(i["value"].as_str()?))
        .collect();
    if values.is_empty() {
        return Err(format!("KEDA's metrics server gave no value for {metric}"));
    }
    // One item per ScaledObject; the HPA sums what it gets.
    Ok(KedaValue {
        metric: metric.to_owned(),
        value: values.iter().sum(),
    })
}

/// Percent-encodes a query value (label selectors have `/`, `=`, `,`).
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The last [`EVENTS`] Events regarding the autoscaler (events.k8s.io/v1), oldest first.
async fn events(connection: &Connection, ns: &str, name: &str) -> Result<Vec<Event>, String> {
    let api: Api<KubeEvent> = Api::namespaced(connection.client.clone(), ns);
    let params = ListParams::default()
        .fields(&format!(
            "regarding.kind=HTTPAutoscaler,regarding.name={name}"
        ))
        .limit(EVENTS_READ);
    let list = connection
        .bounded("listing Events", api.list(&params))
        .await
        .map_err(|e| reason(&e))?;
    let mut events: Vec<Event> = list.items.iter().map(event).collect();
    events.sort_by_key(|e| e.time);
    let skip = events.len().saturating_sub(EVENTS);
    Ok(events.split_off(skip))
}

/// An Event's time (its series' last, else its own, else the old fields), type, reason, note.
pub fn event(e: &KubeEvent) -> Event {
    let time = e
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    Event {
        time,
        type_: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        note: e.note.clone().unwrap_or_default(),
        count: e
            .series
            .as_ref()
            .map(|s| s.count)
            .or(e.deprecated_count)
            .unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_label_selector_is_encoded_for_the_query() {
        assert_eq!(
            encode("scaledobject.keda.sh/name=web"),
            "scaledobject.keda.sh%2Fname%3Dweb"
        );
    }

    #[test]
    fn kedas_scaled_object_and_hpa_read_as_keda_writes_them() {
        let so = parse_scaled_object(
            "app",
            &serde_json::json!({"status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "ScaledObjectReady", "message": "ready for scaling"},
                    {"type": "Active", "status": "False", "reason": "ScalerNotActive", "message": "not active"},
                    {"type": "Paused", "status": "False"}],
                "externalMetricNames": ["s0-inflight-demo-deployment-app"],
                "hpaName": "keda-hpa-app"}}),
        );
        assert_eq!(so.hpa_name.as_deref(), Some("keda-hpa-app"));
        assert_eq!(so.metric_names, ["s0-inflight-demo-deployment-app"]);
        assert_eq!(so.conditions[1].reason, "ScalerNotActive");
        assert_eq!(so.conditions[2].message, "");

        let hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "keda-hpa-app"},
            "spec": {"minReplicas": 1, "maxReplicas": 10,
                     "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                     "metrics": [{"type": "External", "external": {
                        "metric": {"name": "s0-inflight-demo-deployment-app",
                                   "selector": {"matchLabels": {"scaledobject.keda.sh/name": "app"}}},
                        "target": {"type": "AverageValue", "averageValue": "5"}}}]},
            "status": {"currentReplicas": 2, "desiredReplicas": 3}
        }))
        .unwrap();
        let hpa = parse_hpa(&hpa);
        assert_eq!(
            hpa.metric,
            Some((
                "s0-inflight-demo-deployment-app".into(),
                "scaledobject.keda.sh/name=app".into()
            ))
        );
        assert_eq!(
            (hpa.min, hpa.max, hpa.current, hpa.desired),
            (Some(1), 10, Some(2), 3)
        );
        assert_eq!(hpa.target.as_deref(), Some("5"));
    }
}
