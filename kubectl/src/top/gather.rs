//! Reading a [`Snapshot`]: the HTTPAutoscalers (one bounded list), and their traffic from the SMI
//! API through the API server's aggregation layer (a list per namespace and workload kind, so a
//! namespace of many autoscalers costs two calls, not one each).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use inflight_api::HttpAutoscaler;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use smi_types::{TrafficMetrics, TrafficMetricsList, GROUP_VERSION};

use super::{More, Row, Scope, Snapshot, Traffic};
use crate::connect::{api_code, reason, Connection};
use crate::Error;
use smi_types::quantity;

/// The autoscalers of `scope` (at most `limit`) with their traffic.
pub async fn snapshot(
    connection: &Connection,
    scope: &Scope,
    limit: usize,
) -> Result<Snapshot, Error> {
    let (autoscalers, more) = list(connection, scope, limit).await?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let (traffic, traffic_note) = traffic(connection, scope, &autoscalers).await;
    let rows = autoscalers
        .iter()
        .map(|hta| {
            let status = hta.status.clone().unwrap_or_default();
            let namespace = hta.namespace().unwrap_or_default();
            let target = &hta.spec.scale_target_ref;
            Row {
                traffic: traffic
                    .get(&(
                        namespace.clone(),
                        target.kind.lowercase(),
                        target.name.clone(),
                    ))
                    .copied(),
                namespace,
                name: hta.name_any(),
                mode: status.mode,
                replicas: status.replicas,
                ready: status.ready_replicas,
                in_flight: status.in_flight,
                metric: hta.spec.metric.type_,
                target: hta.spec.metric.target,
                last_activation: status
                    .last_activation_time
                    .map(|t| crate::format::since(now, t.0)),
            }
        })
        .collect();
    Ok(Snapshot {
        scope: scope.clone(),
        rows,
        more,
        traffic_note,
    })
}

/// One page of at most `limit` autoscalers, and how many the API server left for the next.
pub async fn list(
    connection: &Connection,
    scope: &Scope,
    limit: usize,
) -> Result<(Vec<HttpAutoscaler>, More), Error> {
    let api: Api<HttpAutoscaler> = match scope {
        Scope::Namespace(ns) => Api::namespaced(connection.client.clone(), ns),
        Scope::All => Api::all(connection.client.clone()),
    };
    let params = ListParams::default().limit(u32::try_from(limit).unwrap_or(u32::MAX));
    let list = connection
        .bounded("listing HTTPAutoscalers", api.list(&params))
        .await
        .map_err(crd_missing)?;
    let more = match (
        list.metadata.continue_.as_deref(),
        list.metadata.remaining_item_count,
    ) {
        (None | Some(""), _) => More::None,
        (Some(_), Some(n)) => More::Exactly(u64::try_from(n).unwrap_or(0)),
        (Some(_), None) => More::Unknown,
    };
    let mut items = list.items;
    items.truncate(limit);
    Ok((items, more))
}

/// A 404 on the list of a resource is the API server not knowing it: the CRD is not there.
pub fn crd_missing(error: Error) -> Error {
    if api_code(&error) == Some(404) {
        Error::CrdMissing
    } else {
        error
    }
}

/// A workload as the SMI API names it: namespace, kind (`deployment`), name.
pub type WorkloadId = (String, &'static str, String);

/// The traffic of every workload of `scope` the SMI API knows, and why there is none if it
/// could not answer. A failure here never fails the view.
async fn traffic(
    connection: &Connection,
    scope: &Scope,
    autoscalers: &[HttpAutoscaler],
) -> (HashMap<WorkloadId, Traffic>, Option<String>) {
    let mut found = HashMap::new();
    if autoscalers.is_empty() {
        return (found, None);
    }
    // The (namespace, kind) pairs to ask for; across namespaces, one call per kind.
    let mut asks: BTreeSet<(Option<String>, &'static str)> = BTreeSet::new();
    for hta in autoscalers {
        let ns = match scope {
            Scope::All => None,
            Scope::Namespace(_) => hta.namespace(),
        };
        asks.insert((ns, hta.spec.scale_target_ref.kind.lowercase()));
    }
    let calls = asks.into_iter().map(|(ns, kind)| async move {
        let plural = format!("{kind}s");
        let path = match &ns {
            Some(ns) => format!("/apis/{GROUP_VERSION}/namespaces/{ns}/{plural}"),
            None => format!("/apis/{GROUP_VERSION}/{plural}"),
        };
        (kind, connection.get_raw::<TrafficMetricsList>(&path).await)
    });
    let mut note = None;
    for (kind, answer) in futures_util::future::join_all(calls).await {
        match answer {
            Ok(list) => {
                for item in &list.items {
                    if let Some(t) = from_smi(item) {
                        let r = &item.resource;
                        found.insert((r.namespace.clone(), kind, r.name.clone()), t);
                    }
                }
            }
            Err(e) => note = Some(smi_unavailable(&e)),
        }
    }
    (found, note)
}

/// Why the SMI API gave nothing, said for the view's footer.
fn smi_unavailable(error: &Error) -> String {
    let why = match api_code(error) {
        Some(404) => "the SMI API is not served (no APIService for metrics.smi-spec.io)".to_owned(),
        Some(503) => format!(
            "the aggregator behind the SMI API does not answer: {}",
            reason(error)
        ),
        _ => format!("the SMI API: {}", reason(error)),
    };
    format!("requests/s and p99 unavailable: {why}")
}

/// Requests per second (successes and failures over the window) and the p99 latency of one
/// TrafficMetrics; `None` if its window or counts do not read.
pub fn from_smi(metrics: &TrafficMetrics) -> Option<Traffic> {
    let window = humantime::parse_duration(&metrics.window).ok()?;
    if window.is_zero() {
        return None;
    }
    let figure = |name: &str| {
        metrics
            .metrics
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| quantity::parse(&m.value))
    };
    let requests = figure("success_count").unwrap_or(0.0) + figure("failure_count").unwrap_or(0.0);
    let p99 = figure("p99_response_latency")
        .filter(|s| *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok());
    Some(Traffic {
        rps: requests / window.as_secs_f64(),
        p99,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_per_second_are_counts_over_the_window_and_p99_a_quantity() {
        let m: TrafficMetrics = serde_json::from_value(serde_json::json!({
            "kind": "TrafficMetrics", "apiVersion": GROUP_VERSION,
            "metadata": {"name": "web", "namespace": "shop"},
            "timestamp": "2026-01-01T00:00:00Z", "window": "30s",
            "resource": {"kind": "Deployment", "namespace": "shop", "name": "web"},
            "metrics": [
                {"name": "p99_response_latency", "unit": "seconds", "value": "12m"},
                {"name": "p50_response_latency", "unit": "seconds", "value": "3m"},
                {"name": "success_count", "value": "285"},
                {"name": "failure_count", "value": "15"}
            ]
        }))
        .unwrap();
        let t = from_smi(&m).unwrap();
        assert!((t.rps - 10.0).abs() < 1e-9);
        assert_eq!(t.p99, Some(Duration::from_millis(12)));
    }

    #[test]
    fn no_requests_have_no_latency_and_a_bad_window_no_figures() {
        let mut m: TrafficMetrics = serde_json::from_value(serde_json::json!({
            "kind": "TrafficMetrics", "apiVersion": GROUP_VERSION, "metadata": {},
            "timestamp": "", "window": "1m", "resource": {"kind": "Deployment", "name": "web"},
            "metrics": [{"name": "success_count", "value": "0"}, {"name": "failure_count", "value": "0"}]
        }))
        .unwrap();
        assert_eq!(
            from_smi(&m),
            Some(Traffic {
                rps: 0.0,
                p99: None
            })
        );
        m.window = "soon".into();
        assert_eq!(from_smi(&m), None);
    }
}
