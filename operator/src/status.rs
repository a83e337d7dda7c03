//! The HTTPAutoscaler's status: conditions that say exactly what is wrong, the mode, the replicas.

use inflight_api::{HttpAutoscaler, HttpAutoscalerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const SCALED_OBJECT_READY: &str = "ScaledObjectReady";
pub const TARGET_FOUND: &str = "TargetFound";

/// A condition's outcome: true, or false with a reason (`PascalCase`) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Ok(&'static str, String),
    Failed(&'static str, String),
    /// False for now, as expected (KEDA has not looked at a new ScaledObject yet): no warning.
    Pending(&'static str, String),
}

impl Check {
    pub fn ok(&self) -> bool {
        matches!(self, Check::Ok(..))
    }
    pub fn failed(reason: &'static str, message: impl Into<String>) -> Self {
        Check::Failed(reason, message.into())
    }
}

/// `type_` as `check` says, keeping `lastTransitionTime` when the status did not change: a
/// condition that is re-written every reconcile would hide when things went wrong.
pub fn condition(
    old: Option<&HttpAutoscalerStatus>,
    type_: &str,
    check: &Check,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let (status, reason, message) = match check {
        Check::Ok(reason, message) => ("True", *reason, message.as_str()),
        Check::Failed(reason, message) | Check::Pending(reason, message) => {
            ("False", *reason, message.as_str())
        }
    };
    let since = old
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        // The API server refuses longer messages.
        message: message.chars().take(32_000).collect(),
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// The reason a condition of `hta` had last time, to tell a new failure (worth an Event) from
/// one already reported.
pub fn previous_reason<'a>(hta: &'a HttpAutoscaler, type_: &str) -> Option<&'a str> {
    hta.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn the_transition_time_moves_only_when_the_status_does() {
        let t0 = Time(Timestamp::from_second(1_000).unwrap());
        let t1 = Time(Timestamp::from_second(2_000).unwrap());
        let first = condition(
            None,
            READY,
            &Check::failed("TargetNotFound", "x"),
            Some(1),
            &t0,
        );
        let old = HttpAutoscalerStatus {
            conditions: vec![first],
            ..HttpAutoscalerStatus::default()
        };
        let same = condition(
            Some(&old),
            READY,
            &Check::failed("Other", "y"),
            Some(2),
            &t1,
        );
        assert_eq!(same.last_transition_time, t0);
        assert_eq!(
            (same.reason.as_str(), same.observed_generation),
            ("Other", Some(2))
        );
        let flipped = condition(
            Some(&old),
            READY,
            &Check::Ok("Serving", String::new()),
            Some(2),
            &t1,
        );
        assert_eq!(
            (flipped.status.as_str(), flipped.last_transition_time),
            ("True", t1)
        );
    }
}
