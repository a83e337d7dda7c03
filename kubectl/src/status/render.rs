//! A status [`Snapshot`] as lines of text: the spec, where the autoscaler is, the operator's
//! conditions, KEDA's ScaledObject, the value KEDA reads and what the HPA's formula makes of it,
//! the last Events. A part that could not be read says so, with the reason.

use inflight_api::{MetricType, Mode};
use k8s_openapi::jiff::Timestamp;

use super::{KedaValue, Snapshot};
use crate::format::{age, aligned, number, since};
use crate::formula::desired_replicas;

/// KEDA's conditions worth showing: whether it took the ScaledObject and whether the trigger is
/// active; a fallback or a pause only when on.
const KEDA_CONDITIONS: &[&str] = &["Ready", "Active"];

pub fn lines(s: &Snapshot) -> Vec<String> {
    let mut out = vec![format!("HTTPAutoscaler {}/{}", s.namespace, s.name)];
    spec(s, &mut out);
    status(s, &mut out);
    conditions(s, &mut out);
    scaled_object(s, &mut out);
    keda(s, &mut out);
    events(s, &mut out);
    out
}

fn field(out: &mut Vec<String>, name: &str, value: impl std::fmt::Display) {
    out.push(format!("  {:<18}{value}", format!("{name}:")));
}

fn spec(s: &Snapshot, out: &mut Vec<String>) {
    let spec = &s.spec;
    out.push("Spec:".into());
    let target = &spec.scale_target_ref;
    field(
        out,
        "Target",
        format!(
            "{:?}/{}, Service {}:{}",
            target.kind, target.name, spec.service.name, spec.service.port
        ),
    );
    let (metric, unit) = match spec.metric.type_ {
        MetricType::Concurrency => ("concurrency", "requests in flight"),
        MetricType::RequestRate => ("requestRate", "requests/s"),
    };
    field(
        out,
        "Metric",
        format!(
            "{metric}, target {} {unit} per replica, window {}",
            number(spec.metric.target),
            spec.metric
                .window
                .as_deref()
                .unwrap_or("the aggregator's (60s)")
        ),
    );
    field(
        out,
        "Replicas",
        format!("min {}, max {}", spec.min_replicas, spec.max_replicas),
    );
    field(
        out,
        "Scale to zero",
        format!("after {} idle", spec.scale_to_zero_after),
    );
}

fn status(s: &Snapshot, out: &mut Vec<String>) {
    let st = &s.status;
    out.push("Status:".into());
    field(
        out,
        "Mode",
        match st.mode {
            Some(Mode::Serve) => "Serve (the Service sends to the ready pods)",
            Some(Mode::Proxy) => "Proxy (the Service sends to the activator: no ready pod)",
            None => "- (not set by the operator yet)",
        },
    );
    field(
        out,
        "Replicas",
        format!("{} ({} ready)", st.replicas, st.ready_replicas),
    );
    field(out, "In flight", number(st.in_flight));
    field(
        out,
        "Last activation",
        st.last_activation_time
            .as_ref()
            .map_or("never".into(), |t| {
                format!("{} ago", age(since(s.now, t.0)))
            }),
    );
    if let (Some(seen), Some(generation)) = (st.observed_generation, s.generation) {
        if seen < generation {
            field(
                out,
                "Observed",
                format!("generation {seen} of {generation}: the operator has not caught up"),
            );
        }
    }
}

fn ago(now: Timestamp, then: Option<Timestamp>) -> String {
    then.map_or("-".into(), |t| age(since(now, t)))
}

fn conditions(s: &Snapshot, out: &mut Vec<String>) {
    out.push("Conditions:".into());
    if s.status.conditions.is_empty() {
        out.push("  none yet (the operator has not reconciled it)".into());
        return;
    }
    let mut rows = vec![["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
        .map(str::to_owned)
        .to_vec()];
    for c in &s.status.conditions {
        rows.push(vec![
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            ago(s.now, Some(c.last_transition_time.0)),
            c.message.clone(),
        ]);
    }
    out.extend(aligned(&rows, "  "));
}

fn scaled_object(s: &Snapshot, out: &mut Vec<String>) {
    match &s.scaled_object {
        Err(why) => {
            out.push("ScaledObject (KEDA):".into());
            out.push(format!("  unavailable: {why}"));
        }
        Ok(so) => {
            out.push(format!("ScaledObject {} (KEDA):", so.name));
            let shown: Vec<_> = so
                .conditions
                .iter()
                .filter(|c| {
                    KEDA_CONDITIONS.contains(&c.type_.as_str())
                        || (matches!(c.type_.as_str(), "Fallback" | "Paused") && c.status == "True")
                })
                .collect();
            if shown.is_empty() {
                out.push("  no conditions yet (KEDA has not looked at it)".into());
                return;
            }
            let mut rows = vec![["TYPE", "STATUS", "REASON", "MESSAGE"]
                .map(str::to_owned)
                .to_vec()];
            for c in shown {
                rows.push(vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                ]);
            }
            out.extend(aligned(&rows, "  "));
        }
    }
}

fn keda(s: &Snapshot, out: &mut Vec<String>) {
    out.push("Scaling (KEDA's HPA):".into());
    match &s.keda_value {
        Ok(KedaValue { metric, value }) => {
            field(
                out,
                "KEDA reads",
                format!("{} ({metric}, external metrics API)", number(*value)),
            );
            let formula = desired_replicas(
                *value,
                s.spec.metric.target,
                s.spec.min_replicas,
                s.spec.max_replicas,
            )
            .map_or("-".into(), |d| d.to_string());
            field(
                out,
                "Formula",
                format!(
                    "ceil({} / {}) within [{}, {}] = {formula} replicas",
                    number(*value),
                    number(s.spec.metric.target),
                    s.spec.min_replicas,
                    s.spec.max_replicas
                ),
            );
        }
        Err(why) => field(out, "KEDA reads", format!("unavailable: {why}")),
    }
    match &s.hpa {
        Ok(hpa) => field(
            out,
            "HPA",
            format!(
                "{}: current {}, desired {} (min {}, max {}, target {} per replica)",
                hpa.name,
                hpa.current.map_or("-".into(), |c| c.to_string()),
                hpa.desired,
                hpa.min.map_or("1".into(), |m| m.to_string()),
                hpa.max,
                hpa.target.as_deref().unwrap_or("-"),
            ),
        ),
        Err(why) => field(out, "HPA", format!("unavailable: {why}")),
    }
}

fn events(s: &Snapshot, out: &mut Vec<String>) {
    out.push(format!(
        "Events (the last {}, newest last):",
        super::gather::EVENTS
    ));
    match &s.events {
        Err(why) => out.push(format!("  unavailable: {why}")),
        Ok(events) if events.is_empty() => out.push("  none".into()),
        Ok(events) => {
            let mut rows = vec![["AGE", "TYPE", "REASON", "MESSAGE"]
                .map(str::to_owned)
                .to_vec()];
            for e in events {
                let age = if e.count > 1 {
                    format!("{} (x{})", ago(s.now, e.time), e.count)
                } else {
                    ago(s.now, e.time)
                };
                rows.push(vec![age, e.type_.clone(), e.reason.clone(), e.note.clone()]);
            }
            out.extend(aligned(&rows, "  "));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use inflight_api::{HttpAutoscalerSpec, HttpAutoscalerStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::super::{Event, Hpa, KedaCondition, ScaledObject};
    use super::*;

    fn at(secs_before: u64, now: Timestamp) -> Timestamp {
        now - Duration::from_secs(secs_before)
    }

    fn snapshot() -> Snapshot {
        let now: Timestamp = "2026-12-03T16:30:00Z".parse().unwrap();
        let spec: HttpAutoscalerSpec = serde_json::from_value(serde_json::json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "service": {"name": "web", "port": 80}, "minReplicas": 1, "maxReplicas": 4,
            "metric": {"target": 2, "window": "20s"}, "scaleToZeroAfter": "20s"
        }))
        .unwrap();
        let condition = |type_: &str, reason: &str, message: &str| Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(at(90, now)),
            observed_generation: Some(1),
        };
        Snapshot {
            now,
            namespace: "shop".into(),
            name: "web".into(),
            spec,
            status: HttpAutoscalerStatus {
                conditions: vec![
                    condition("Ready", "Serving", "2 ready pods serve web"),
                    condition("ScaledObjectReady", "KEDAReady", ""),
                ],
                mode: Some(Mode::Serve),
                replicas: 3,
                ready_replicas: 2,
                in_flight: 5.2,
                last_activation_time: Some(Time(at(300, now))),
                observed_generation: Some(1),
            },
            generation: Some(1),
            scaled_object: Ok(ScaledObject {
                name: "web".into(),
                conditions: vec![
                    KedaCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        reason: "ScaledObjectReady".into(),
                        message: "ready for scaling".into(),
                    },
                    KedaCondition {
                        type_: "Active".into(),
                        status: "True".into(),
                        reason: "ScalerActive".into(),
                        message: "Scaling is performed because triggers are active".into(),
                    },
                    KedaCondition {
                        type_: "Paused".into(),
                        status: "False".into(),
                        ..KedaCondition::default()
                    },
                ],
                hpa_name: Some("keda-hpa-web".into()),
                metric_names: vec!["s0-inflight-shop-deployment-web".into()],
            }),
            hpa: Ok(Hpa {
                name: "keda-hpa-web".into(),
                min: Some(1),
                max: 4,
                current: Some(3),
                desired: 3,
                metric: Some((
                    "s0-inflight-shop-deployment-web".into(),
                    "scaledobject.keda.sh/name=web".into(),
                )),
                target: Some("2".into()),
            }),
            keda_value: Ok(KedaValue {
                metric: "s0-inflight-shop-deployment-web".into(),
                value: 5.2,
            }),
            events: Ok(vec![Event {
                time: Some(at(40, now)),
                type_: "Normal".into(),
                reason: "ModeChanged".into(),
                note: "Proxy → Serve: web has a ready pod".into(),
                count: 1,
            }]),
        }
    }

    fn text(s: &Snapshot) -> String {
        lines(s).join("\n")
    }

    #[test]
    fn status_shows_the_spec_where_it_is_and_why() {
        let t = text(&snapshot());
        for expected in [
            "HTTPAutoscaler shop/web",
            "  Target:           Deployment/web, Service web:80",
            "  Metric:           concurrency, target 2 requests in flight per replica, window 20s",
            "  Replicas:         min 1, max 4",
            "  Scale to zero:    after 20s idle",
            "  Mode:             Serve",
            "  Replicas:         3 (2 ready)",
            "  In flight:        5.2",
            "  Last activation:  5m ago",
            "  Ready               True     Serving     90s   2 ready pods serve web",
            "ScaledObject web (KEDA):",
            "  Active   True     ScalerActive",
            "  KEDA reads:       5.2 (s0-inflight-shop-deployment-web, external metrics API)",
            "  Formula:          ceil(5.2 / 2) within [1, 4] = 3 replicas",
            "  HPA:              keda-hpa-web: current 3, desired 3 (min 1, max 4, target 2 per replica)",
            "  40s   Normal   ModeChanged   Proxy → Serve: web has a ready pod",
        ] {
            assert!(t.contains(expected), "missing {expected:?} in\n{t}");
        }
        // KEDA's pause is shown only when on.
        assert!(!t.contains("Paused"), "{t}");
    }

    #[test]
    fn what_cannot_be_read_is_said_with_its_reason() {
        let mut s = snapshot();
        s.scaled_object = Err("KEDA has no ScaledObject web".into());
        s.hpa = Err("no HPA keda-hpa-web: KEDA makes it once the ScaledObject is ready".into());
        s.keda_value = Err("KEDA's metrics server: service unavailable (503)".into());
        s.events = Err("events are forbidden (403)".into());
        s.status = HttpAutoscalerStatus::default();
        let t = text(&s);
        for expected in [
            "  unavailable: KEDA has no ScaledObject web",
            "  KEDA reads:       unavailable: KEDA's metrics server: service unavailable (503)",
            "  HPA:              unavailable: no HPA keda-hpa-web",
            "  unavailable: events are forbidden (403)",
            "  none yet (the operator has not reconciled it)",
            "  Mode:             - (not set by the operator yet)",
            "  Last activation:  never",
        ] {
            assert!(t.contains(expected), "missing {expected:?} in\n{t}");
        }
        assert!(!t.contains("Formula"), "{t}");
    }

    #[test]
    fn an_operator_behind_the_spec_is_pointed_out() {
        let mut s = snapshot();
        s.generation = Some(3);
        assert!(text(&s).contains("generation 1 of 3: the operator has not caught up"));
    }
}
