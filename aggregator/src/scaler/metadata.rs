//! The trigger's `metadata` of a ScaledObject, as KEDA passes it in `ScaledObjectRef`:
//!
//! ```yaml
//! triggers:
//! - type: external-push
//!   metadata:
//!     scalerAddress: inflight-aggregator.inflight.svc:9090
//!     workload: deployment/web        # required: KIND/NAME
//!     namespace: shop                 # default and only allowed value: the ScaledObject's
//!     metric: concurrency             # or requestRate
//!     target: "10"                    # per replica, required
//!     window: 60s                     # default --stable-window; at least --burst-window
//!     scaleToZeroAfter: 5m            # default 300s
//! ```

use std::time::Duration;

use inflight_proto::externalscaler::ScaledObjectRef;

use crate::registry::{Metric, WorkloadKey};
use crate::validate;

pub const DEFAULT_SCALE_TO_ZERO_AFTER: Duration = Duration::from_secs(300);

/// What the aggregator's flags allow a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--stable-window`: the window of a trigger that names none.
    pub default_window: Duration,
    /// `--burst-window`: a shorter trigger window would make the burst rule compare a window
    /// with a longer one.
    pub burst_window: Duration,
    /// `--max-window`: the ring keeps no more.
    pub max_window: Duration,
    /// `--allow-cross-namespace`: may a ScaledObject scale on another namespace's workload?
    pub allow_cross_namespace: bool,
}

/// A parsed trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub workload: WorkloadKey,
    pub metric: Metric,
    pub target: f64,
    pub window_ms: i64,
    pub scale_to_zero_after_ms: i64,
}

impl Trigger {
    /// The metric's name: stable per workload and valid as a Kubernetes metric name.
    pub fn metric_name(&self) -> String {
        let w = &self.workload;
        inflight_proto::names::scaler_metric_name(&w.namespace, &w.kind, &w.name)
    }
}

/// A metadata key that is missing or malformed; the gRPC status names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trigger metadata {key:?}: {why}")]
pub struct BadMetadata {
    pub key: &'static str,
    pub why: String,
}

fn bad(key: &'static str, why: impl Into<String>) -> BadMetadata {
    BadMetadata {
        key,
        why: why.into(),
    }
}

/// A duration as `60s`, `5m`, `1m30s`, or a bare number of seconds.
fn duration(key: &'static str, text: &str) -> Result<Duration, BadMetadata> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| bad(key, format!("{text:?} is not a duration ({e})")))
}

pub fn parse(r: &ScaledObjectRef, limits: &Limits) -> Result<Trigger, BadMetadata> {
    let m = &r.scaler_metadata;
    let workload = m
        .get("workload")
        .ok_or_else(|| bad("workload", "missing (KIND/NAME, e.g. deployment/web)"))?;
    let (kind, name) = workload
        .split_once('/')
        .filter(|(k, n)| !k.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| {
            bad(
                "workload",
                format!("{workload:?} is not KIND/NAME (e.g. deployment/web)"),
            )
        })?;
    validate::workload(kind, name).map_err(|e| bad("workload", e.to_string()))?;
    let namespace = match m.get("namespace") {
        Some(ns) if ns.is_empty() => return Err(bad("namespace", "empty")),
        // Scaling on another namespace's traffic is reading it: only when the operator said so.
        Some(ns) if *ns != r.namespace && !limits.allow_cross_namespace => {
            return Err(bad(
                "namespace",
                format!(
                    "{ns:?} is not the ScaledObject's namespace {:?} (the aggregator runs without --allow-cross-namespace)",
                    r.namespace
                ),
            ))
        }
        Some(ns) => ns.as_str(),
        None if r.namespace.is_empty() => {
            return Err(bad("namespace", "missing, and the ScaledObject has none"))
        }
        None => r.namespace.as_str(),
    };
    validate::namespace(namespace).map_err(|e| bad("namespace", e.to_string()))?;
    let metric = match m.get("metric").map(String::as_str) {
        None | Some("concurrency") => Metric::Concurrency,
        Some("requestRate") => Metric::RequestRate,
        Some(other) => {
            return Err(bad(
                "metric",
                format!("{other:?} is neither \"concurrency\" nor \"requestRate\""),
            ))
        }
    };
    let target = m
        .get("target")
        .ok_or_else(|| bad("target", "missing (a number per replica)"))?;
    let target = target
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|t| t.is_finite() && *t > 0.0)
        .ok_or_else(|| bad("target", format!("{target:?} is not a number above 0")))?;
    let window = m
        .get("window")
        .map_or(Ok(limits.default_window), |w| duration("window", w))?;
    let shortest = limits.burst_window.max(Duration::from_secs(1));
    if window < shortest || window > limits.max_window {
        return Err(bad(
            "window",
            format!(
                "{window:?} is not between {shortest:?} (--burst-window) and {:?} (--max-window)",
                limits.max_window
            ),
        ));
    }
    let scale_to_zero_after = m
        .get("scaleToZeroAfter")
        .map_or(Ok(DEFAULT_SCALE_TO_ZERO_AFTER), |d| {
            duration("scaleToZeroAfter", d)
        })?;
    Ok(Trigger {
        workload: WorkloadKey::new(namespace, kind, name),
        metric,
        target,
        window_ms: inflight_runtime::time::millis(window),
        scale_to_zero_after_ms: inflight_runtime::time::millis(scale_to_zero_after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(pairs: &[(&str, &str)]) -> ScaledObjectRef {
        ScaledObjectRef {
            name: "web".into(),
            namespace: "shop".into(),
            scaler_metadata: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    const LIMITS: Limits = Limits {
        default_window: Duration::from_secs(60),
        burst_window: Duration::from_secs(6),
        max_window: Duration::from_secs(600),
        allow_cross_namespace: false,
    };

    #[test]
    fn defaults() {
        let t = parse(
            &reference(&[("workload", "Deployment/web"), ("target", "10")]),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(t.workload, WorkloadKey::new("shop", "deployment", "web"));
        assert_eq!(t.metric, Metric::Concurrency);
        assert_eq!(t.target, 10.0);
        assert_eq!(t.window_ms, 60_000);
        assert_eq!(t.scale_to_zero_after_ms, 300_000);
        assert_eq!(t.metric_name(), "inflight-shop-deployment-web");
    }

    #[test]
    fn every_key() {
        let t = parse(
            &reference(&[
                ("workload", "statefulset/db"),
                ("namespace", "data"),
                ("metric", "requestRate"),
                ("target", "2.5"),
                ("window", "2m"),
                ("scaleToZeroAfter", "30"),
            ]),
            &Limits {
                allow_cross_namespace: true,
                ..LIMITS
            },
        )
        .unwrap();
        assert_eq!(t.workload, WorkloadKey::new("data", "statefulset", "db"));
        assert_eq!(
            (t.metric, t.target, t.window_ms, t.scale_to_zero_after_ms),
            (Metric::RequestRate, 2.5, 120_000, 30_000)
        );
    }

    #[test]
    fn each_bad_key_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("target", "1")], "workload"),
            (&[("workload", "web"), ("target", "1")], "workload"),
            (&[("workload", "deployment/"), ("target", "1")], "workload"),
            (&[("workload", "deployment/web")], "target"),
            (&[("workload", "deployment/web"), ("target", "0")], "target"),
            (
                &[("workload", "deployment/web"), ("target", "ten")],
                "target",
            ),
            (
                &[("workload", "deployment/web"), ("target", "NaN")],
                "target",
            ),
            (
                &[
                    ("workload", "deployment/web"),
                    ("target", "1"),
                    ("metric", "rps"),
                ],
                "metric",
            ),
            (
                &[
                    ("workload", "deployment/web"),
                    ("target", "1"),
                    ("window", "soon"),
                ],
                "window",
            ),
            (
                &[
                    ("workload", "deployment/web"),
                    ("target", "1"),
                    ("window", "1h"),
                ],
                "window",
            ),
            (
                &[
                    ("workload", "deployment/web"),
                    ("target", "1"),
                    ("scaleToZeroAfter", "-1"),
                ],
                "scaleToZeroAfter",
            ),
            (
                &[
                    ("workload", "deployment/web"),
                    ("target", "1"),
                    ("namespace", ""),
                ],
                "namespace",
            ),
        ];
        for (pairs, key) in cases {
            let e = parse(&reference(pairs), &LIMITS).unwrap_err();
            assert_eq!(e.key, *key, "{pairs:?}: {e}");
        }
    }

    #[test]
    fn a_workload_no_report_can_name_is_refused() {
        // Found by the fuzzer (`scaler_metadata`): any text was taken as the namespace, kind and
        // name, so a trigger for `deployment/Web` read the figures of a workload no sidecar can
        // report (names are DNS-1123, lower case) and answered 0 forever.
        let allowed = Limits {
            allow_cross_namespace: true,
            ..LIMITS
        };
        for (pairs, key) in [
            (&[("workload", "deployment/Web")][..], "workload"),
            (&[("workload", "deployment/web app")], "workload"),
            (&[("workload", "deploy ment/web")], "workload"),
            (
                &[("workload", "deployment/web."), ("namespace", "shop")],
                "workload",
            ),
            (
                &[("workload", "deployment/web"), ("namespace", "Shop")],
                "namespace",
            ),
            (
                &[("workload", "deployment/web"), ("namespace", "a.b")],
                "namespace",
            ),
        ] {
            let mut pairs = pairs.to_vec();
            pairs.push(("target", "1"));
            let e = parse(&reference(&pairs), &allowed).unwrap_err();
            assert_eq!(e.key, key, "{pairs:?}: {e}");
            assert!(e.why.contains("not a Kubernetes name"), "{e}");
        }
        let bad_object = ScaledObjectRef {
            namespace: "Shop".into(),
            ..reference(&[("workload", "deployment/web"), ("target", "1")])
        };
        assert_eq!(parse(&bad_object, &LIMITS).unwrap_err().key, "namespace");
        let t = parse(
            &reference(&[("workload", "StatefulSet/db-0.primary"), ("target", "1")]),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            t.workload,
            WorkloadKey::new("shop", "statefulset", "db-0.primary")
        );
    }

    #[test]
    fn the_default_window_is_the_stable_window() {
        let limits = Limits {
            default_window: Duration::from_secs(20),
            ..LIMITS
        };
        let t = parse(
            &reference(&[("workload", "deployment/web"), ("target", "1")]),
            &limits,
        )
        .unwrap();
        assert_eq!(t.window_ms, 20_000);
    }

    #[test]
    fn a_window_shorter_than_the_burst_window_is_refused() {
        let r = |w: &str| {
            reference(&[
                ("workload", "deployment/web"),
                ("target", "1"),
                ("window", w),
            ])
        };
        let e = parse(&r("5s"), &LIMITS).unwrap_err();
        assert_eq!(e.key, "window", "{e}");
        assert!(e.why.contains("--burst-window"), "{e}");
        assert_eq!(parse(&r("6s"), &LIMITS).unwrap().window_ms, 6_000);
    }

    #[test]
    fn another_namespace_only_when_allowed() {
        let r = reference(&[
            ("workload", "deployment/web"),
            ("target", "1"),
            ("namespace", "payments"),
        ]);
        let e = parse(&r, &LIMITS).unwrap_err();
        assert_eq!(e.key, "namespace", "{e}");
        assert!(e.why.contains("--allow-cross-namespace"), "{e}");
        let same = reference(&[
            ("workload", "deployment/web"),
            ("target", "1"),
            ("namespace", "shop"),
        ]);
        assert_eq!(parse(&same, &LIMITS).unwrap().workload.namespace, "shop");
        let allowed = Limits {
            allow_cross_namespace: true,
            ..LIMITS
        };
        assert_eq!(
            parse(&r, &allowed).unwrap().workload,
            WorkloadKey::new("payments", "deployment", "web")
        );
    }
}
