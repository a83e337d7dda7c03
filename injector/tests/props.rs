//! Properties (`proptest`): arbitrary bytes and arbitrary JSON never panic the review and always
//! get a bad-request reason or a well-formed AdmissionReview; the patch for any pod the generator
//! makes applies cleanly, gives a Pod with exactly one proxy, and injecting that pod again changes
//! nothing. Cases per property: 2,000 (raise with `PROPTEST_CASES`).
#![allow(clippy::unwrap_used)]

use inflight_injector::metrics::Metrics;
use inflight_injector::mutate::{mutate, Outcome};
use inflight_injector::review;
use inflight_injector::sidecar::{Settings, Tokens};
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{json, Value};

fn settings(native: bool) -> Settings {
    Settings {
        image: "inflight-proxy:prop".into(),
        pull_policy: None,
        aggregator: vec!["agg:9090".into()],
        native,
        resources: Default::default(),
        uid: 65532,
        drain_period: std::time::Duration::from_secs(5),
        version: "prop".into(),
        tokens: Tokens::Fixed("prop".into()),
    }
}

fn metrics() -> Metrics {
    Metrics::new(&mut prometheus_client::registry::Registry::default())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(2000),
        ..ProptestConfig::default()
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z/~.]{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn review_of(object: Value, operation: &str) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "ns", "operation": operation, "name": "", "userInfo": {},
        "object": object}})
}

/// Checks what any answer must be: a reason, or an AdmissionReview allowing the pod (an injector
/// never denies one) for the request's uid.
fn well_formed(answer: Result<Vec<u8>, String>) -> Result<(), TestCaseError> {
    match answer {
        Err(reason) => prop_assert!(!reason.is_empty()),
        Ok(bytes) => {
            let review: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(&review["kind"], "AdmissionReview");
            prop_assert_eq!(&review["response"]["allowed"], true);
        }
    }
    Ok(())
}

/// A key as Kubernetes allows in labels and annotations, often with a prefix (and so a `/`).
fn key() -> impl Strategy<Value = String> {
    (
        prop::option::of("[a-z]{1,6}\\.(io|dev|com)"),
        "[a-z][a-z0-9._-]{0,8}[a-z0-9]",
    )
        .prop_map(|(prefix, name)| prefix.map_or(name.clone(), |p| format!("{p}/{name}")))
}

fn map() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(
        prop::collection::btree_map(key(), "[a-z0-9~/]{0,8}", 0..4)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k, json!(v))).collect())),
    )
}

fn probe() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop_oneof![
        (
            "/[a-z]{0,6}",
            prop_oneof![
                (1i32..65536).prop_map(|p| json!(p)),
                "[a-z]{1,5}".prop_map(|n| json!(n))
            ]
        )
            .prop_map(|(path, port)| json!({"httpGet": {"path": path, "port": port}})),
        (1i32..65536).prop_map(|p| json!({"tcpSocket": {"port": p}})),
        Just(json!({"exec": {"command": ["true"]}})),
    ])
}

fn container(name: String) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec((1i32..65536, prop::option::of("[a-z]{1,5}")), 0..3),
        probe(),
        prop::option::of(prop_oneof![
            Just(json!({})),
            Just(json!({"preStop": {"sleep": {"seconds": 1}}})),
            Just(json!({"postStart": {"sleep": {"seconds": 1}}})),
        ]),
    )
        .prop_map(move |(ports, probe, lifecycle)| {
            let mut c = json!({"name": name, "image": "app"});
            if !ports.is_empty() {
                c["ports"] = ports
                    .into_iter()
                    .map(|(p, n)| match n {
                        Some(n) => json!({"containerPort": p, "name": n}),
                        None => json!({"containerPort": p}),
                    })
                    .collect();
            }
            if let Some(p) = probe {
                c["readinessProbe"] = p;
            }
            if let Some(l) = lifecycle {
                c["lifecycle"] = l;
            }
            c
        })
}

fn owner() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(
        (
            prop_oneof![
                Just("ReplicaSet"),
                Just("StatefulSet"),
                Just("DaemonSet"),
                Just("Job"),
                Just("Rollout")
            ],
            "[a-z]{1,8}(-[a-z0-9]{1,10})?",
            any::<bool>(),
        )
            .prop_map(|(kind, name, controller)| {
                json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "x", "controller": controller}])
            }),
    )
}

/// Pods of every shape the injector meets: with and without maps, names, owners, ports, probes,
/// hooks, init containers, hostNetwork, annotations naming ports.
fn pod() -> impl Strategy<Value = Value> {
    (
        (
            prop::option::of("[a-z]{1,10}"),
            map(),
            map(),
            owner(),
            prop::option::of(prop_oneof![
                "[0-9]{1,5}".prop_map(|p| p),
                "[a-z]{1,5}".prop_map(|n| n)
            ]),
        ),
        (
            prop::collection::vec(container("app".into()), 1..3),
            prop::option::of(prop::collection::vec(container("init".into()), 0..2)),
            prop::option::of(any::<bool>()),
            prop::option::of(-5i64..100_000),
        ),
    )
        .prop_map(
            |((name, labels, annotations, owners, port), (containers, inits, host, grace))| {
                let mut meta = json!({});
                if let Some(n) = name {
                    meta["name"] = json!(n);
                }
                if let Some(l) = labels {
                    meta["labels"] = l;
                }
                if let Some(mut a) = annotations {
                    if let Some(p) = port {
                        a["inflight.dev/port"] = json!(p);
                    }
                    meta["annotations"] = a;
                }
                if let Some(o) = owners {
                    meta["ownerReferences"] = o;
                }
                // Container names are unique in a pod.
                let containers: Vec<Value> = containers
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut c)| {
                        c["name"] = json!(format!("app{i}"));
                        c
                    })
                    .collect();
                let mut spec = json!({"containers": containers});
                if let Some(inits) = inits {
                    let inits: Vec<Value> = inits
                        .into_iter()
                        .enumerate()
                        .map(|(i, mut c)| {
                            c["name"] = json!(format!("init{i}"));
                            c
                        })
                        .collect();
                    spec["initContainers"] = json!(inits);
                }
                if let Some(h) = host {
                    spec["hostNetwork"] = json!(h);
                }
                if let Some(g) = grace {
                    spec["terminationGracePeriodSeconds"] = json!(g);
                }
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_get_a_reason_or_a_review(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        well_formed(review::answer(&bytes, &settings(true), &metrics()))?;
    }

    #[test]
    fn arbitrary_json_as_the_pod_gets_a_review_whose_patch_applies(object in any_json(), op in prop_oneof![Just("CREATE"), Just("UPDATE")]) {
        let body = review_of(object.clone(), op).to_string();
        let answer = review::answer(body.as_bytes(), &settings(true), &metrics());
        if let Ok(bytes) = &answer {
            let review: Value = serde_json::from_slice(bytes).unwrap();
            if let Some(patch) = review["response"]["patch"].as_array() {
                let patch: Vec<u8> = patch.iter().map(|b| b.as_u64().unwrap() as u8).collect();
                let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
                let mut doc = object;
                json_patch::patch(&mut doc, &patch).map_err(|e| TestCaseError::fail(format!("{e}: {patch:?}")))?;
            }
        }
        well_formed(answer)?;
    }

    #[test]
    fn any_pods_patch_applies_and_injects_once(raw in pod(), native in any::<bool>()) {
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        let settings = settings(native);
        // Through the whole review too: it must be well-formed whatever the outcome.
        well_formed(review::answer(review_of(raw.clone(), "CREATE").to_string().as_bytes(), &settings, &metrics()))?;
        match mutate(&pod, &settings) {
            Outcome::Skip { reason, .. } => prop_assert!(!reason.is_empty()),
            Outcome::Inject { patch, .. } => {
                let mut doc = raw.clone();
                json_patch::patch(&mut doc, &patch).map_err(|e| TestCaseError::fail(format!("{e}: {patch:?}")))?;
                let patched: Pod = serde_json::from_value(doc.clone()).unwrap();
                let spec = patched.spec.as_ref().unwrap();
                let proxies = spec.containers.iter().chain(spec.init_containers.iter().flatten())
                    .filter(|c| c.name == "inflight-proxy").count();
                prop_assert_eq!(proxies, 1);
                // What was there is still there.
                for (k, v) in raw["metadata"]["annotations"].as_object().into_iter().flatten() {
                    prop_assert_eq!(&doc["metadata"]["annotations"][k], v);
                }
                for (k, v) in raw["metadata"]["labels"].as_object().into_iter().flatten() {
                    prop_assert_eq!(&doc["metadata"]["labels"][k], v);
                }
                let is_skip = matches!(mutate(&patched, &settings), Outcome::Skip { reason: "already_injected", .. });
                prop_assert!(is_skip);
            }
        }
    }
}

/// The generator must make pods that are injected, or the property above proves little: a good
/// share of them are, and some of every kind of skip.
#[test]
fn the_pod_generator_covers_injection_and_skips() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut injected, mut skips) = (0, std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let raw = pod().new_tree(&mut runner).unwrap().current();
        let pod: Pod = serde_json::from_value(raw).unwrap();
        match mutate(&pod, &settings(true)) {
            Outcome::Inject { .. } => injected += 1,
            Outcome::Skip { reason, .. } => {
                skips.insert(reason);
            }
        }
    }
    assert!(
        injected >= 200,
        "only {injected} of 1000 generated pods injected"
    );
    for reason in ["host_network", "no_port", "invalid_port_annotation"] {
        assert!(skips.contains(reason), "no {reason} among {skips:?}");
    }
}
