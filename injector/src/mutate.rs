//! From a pod to the JSON Patch that adds the proxy: a plain function the webhook and the tests
//! call alike. It never fails: a pod it will not or cannot inject is said to be skipped, and why.

use json_patch::{AddOperation, Patch, PatchOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::Pod;

use inflight_proto::names::{INJECTED_ANNOTATION, INJECT_LABEL, PROXY_CONTAINER, WORKLOAD_LABEL};

use crate::app;
use crate::sidecar::{self, Settings};
use crate::workload::{self, Workload};

/// What the injector does with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Inject {
        patch: Patch,
        workload: Option<Workload>,
        warnings: Vec<String>,
    },
    Skip {
        /// The metric label (`opted_out`, `already_injected`, …).
        reason: &'static str,
        /// Told to the user when the skip is probably not what they meant.
        warning: Option<String>,
    },
}

/// The Kubernetes default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;

pub fn mutate(pod: &Pod, settings: &Settings) -> Outcome {
    let skip = |reason, warning: Option<String>| Outcome::Skip { reason, warning };
    let meta = &pod.metadata;
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
    let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key));
    // Every pod the API server admits has one; without either, the request's object may lack the
    // metadata a patch would add to (found by the fuzzer), so it is not touched.
    let named = |n: &Option<String>| n.as_deref().is_some_and(|n| !n.is_empty());
    if !named(&meta.name) && !named(&meta.generate_name) {
        return skip(
            "no_name",
            Some("inflight: pod not injected: it has neither a name nor a generateName".to_owned()),
        );
    }
    if annotation(INJECT_LABEL)
        .or_else(|| label(INJECT_LABEL))
        .is_some_and(|v| v == "disabled")
    {
        return skip("opted_out", None);
    }
    let spec = pod.spec.as_ref();
    let has_proxy = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
    });
    if annotation(INJECTED_ANNOTATION).is_some() || has_proxy {
        return skip("already_injected", None);
    }
    if spec.and_then(|s| s.host_network) == Some(true) {
        return skip(
            "host_network",
            Some("inflight: pod not injected: it uses hostNetwork, where the proxy's ports would be the node's".to_owned()),
        );
    }
    let app = match app::of(pod) {
        Ok(app) => app,
        Err(no) => return skip(no.reason(), Some(no.warning())),
    };
    let workload = workload::of(pod);
    let grace = spec
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    // The app's own preStop hook stays; then the proxy drains only at its SIGTERM, after the
    // app has exited, and keep-alive callers may meet a closed app in between.
    let app_container = spec.and_then(|s| s.containers.get(app.container));
    let lifecycle = app_container.and_then(|c| c.lifecycle.as_ref());
    let mut warnings = app.warnings.clone();
    let token = if lifecycle.is_some_and(|l| l.pre_stop.is_some()) {
        warnings.push(format!(
            "inflight: container {:?} has a preStop hook of its own, so the proxy cannot drain before it stops; callers may see errors while the pod shuts down",
            app_container.map_or("", |c| c.name.as_str())
        ));
        None
    } else {
        Some(settings.tokens.next())
    };
    let container = sidecar::container(settings, &app, workload.as_ref(), grace, token.as_deref());
    let hook = token.as_deref().map(sidecar::pre_stop);
    // Typed values always serialise; were one not to, the pod goes through untouched rather than
    // with a `null` where a container should be.
    let (Ok(container), Ok(hook), Ok(volume)) = (
        serde_json::to_value(container),
        serde_json::to_value(hook),
        serde_json::to_value(sidecar::token_volume()),
    ) else {
        return skip(
            "patch_encoding",
            Some("inflight: pod not injected: the proxy container could not be encoded".to_owned()),
        );
    };

    let mut ops = Vec::with_capacity(4);
    add_entry(
        &mut ops,
        "annotations",
        meta.annotations.is_some(),
        INJECTED_ANNOTATION,
        &settings.version,
    );
    if let Some(value) = workload.as_ref().and_then(Workload::label) {
        add_entry(
            &mut ops,
            "labels",
            meta.labels.is_some(),
            WORKLOAD_LABEL,
            &value,
        );
    }
    let volumes = spec.and_then(|s| s.volumes.as_ref());
    if volumes.is_some_and(|v| v.iter().any(|v| v.name == sidecar::TOKEN_VOLUME)) {
        // A second volume of the name would have the pod refused; one there (a pod made from an
        // injected pod's spec) is ours.
    } else if volumes.is_some() {
        ops.push(add(&["spec", "volumes", "-"], volume));
    } else {
        ops.push(add(
            &["spec", "volumes"],
            serde_json::Value::Array(vec![volume]),
        ));
    }
    if settings.native {
        // First among the init containers, so it starts before them all and the app.
        if spec.and_then(|s| s.init_containers.as_ref()).is_some() {
            ops.push(add(&["spec", "initContainers", "0"], container));
        } else {
            ops.push(add(
                &["spec", "initContainers"],
                serde_json::Value::Array(vec![container]),
            ));
        }
    } else {
        ops.push(add(&["spec", "containers", "-"], container));
    }
    if !hook.is_null() {
        let index = app.container.to_string();
        if lifecycle.is_some() {
            ops.push(add(
                &["spec", "containers", &index, "lifecycle", "preStop"],
                hook,
            ));
        } else {
            ops.push(add(
                &["spec", "containers", &index, "lifecycle"],
                serde_json::json!({ "preStop": hook }),
            ));
        }
    }
    Outcome::Inject {
        patch: Patch(ops),
        workload,
        warnings,
    }
}

fn add(tokens: &[&str], value: serde_json::Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

/// Sets `key` in `metadata.<map>`, creating the map when the pod has none. The key is one
/// token of the pointer, escaped as RFC 6901 says (`/` as `~1`, `~` as `~0`).
fn add_entry(ops: &mut Vec<PatchOperation>, map: &str, exists: bool, key: &str, value: &str) {
    if exists {
        ops.push(add(&["metadata", map, key], value.into()));
    } else {
        ops.push(add(&["metadata", map], serde_json::json!({ key: value })));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(native: bool) -> Settings {
        Settings {
            image: "inflight-proxy:test".into(),
            pull_policy: Some("Never".into()),
            aggregator: vec!["inflight-aggregator-ingest.inflight:9090".into()],
            native,
            resources: Default::default(),
            uid: 65532,
            drain_period: std::time::Duration::from_secs(5),
            version: "0.1.0".into(),
            tokens: sidecar::Tokens::Fixed("t0ken".into()),
        }
    }

    fn apply(raw: &serde_json::Value, outcome: &Outcome) -> serde_json::Value {
        let Outcome::Inject { patch, .. } = outcome else {
            panic!("not injected: {outcome:?}")
        };
        let mut doc = raw.clone();
        json_patch::patch(&mut doc, patch).unwrap();
        doc
    }

    #[test]
    fn the_proxy_alone_mounts_a_token_for_the_aggregator_and_the_volume_is_added_once() {
        let token_volumes = |out: &serde_json::Value| {
            out["spec"]["volumes"].as_array().map_or(0, |v| {
                v.iter()
                    .filter(|v| v["name"] == sidecar::TOKEN_VOLUME)
                    .count()
            })
        };
        for volumes in [
            None,
            Some(serde_json::json!([{"name": "data", "emptyDir": {}}])),
        ] {
            let mut raw = serde_json::json!({"metadata": {"name": "p"},
                "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}});
            if let Some(v) = &volumes {
                raw["spec"]["volumes"] = v.clone();
            }
            let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
            let out = apply(&raw, &mutate(&pod, &settings(true)));
            assert_eq!(token_volumes(&out), 1, "{out}");
            let volume = out["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == sidecar::TOKEN_VOLUME)
                .unwrap();
            let projection = &volume["projected"]["sources"][0]["serviceAccountToken"];
            assert_eq!(projection["audience"], "inflight.dev/aggregator");
            assert_eq!(projection["expirationSeconds"], 3600);
            assert_eq!(projection["path"], "token");
            assert_eq!(
                out["spec"]["initContainers"][0]["volumeMounts"][0]["mountPath"],
                inflight_proto::names::TOKEN_DIR
            );
            assert!(out["spec"]["containers"][0].get("volumeMounts").is_none());
            if volumes.is_some() {
                assert_eq!(out["spec"]["volumes"][0]["name"], "data");
            }
            // A pod made from an injected pod's spec keeps its one token volume.
            let mut copied = out.clone();
            copied["metadata"]["annotations"] = serde_json::json!({});
            copied["spec"]["initContainers"] = serde_json::json!([]);
            let pod: Pod = serde_json::from_value(copied.clone()).unwrap();
            let again = apply(&copied, &mutate(&pod, &settings(true)));
            assert_eq!(token_volumes(&again), 1);
        }
    }

    #[test]
    fn a_pod_without_annotations_or_labels_gets_both_maps() {
        let raw = serde_json::json!({"metadata": {"name": "bare"},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}});
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        let out = apply(&raw, &mutate(&pod, &settings(true)));
        assert_eq!(out["metadata"]["annotations"][INJECTED_ANNOTATION], "0.1.0");
        assert_eq!(out["metadata"]["labels"][WORKLOAD_LABEL], "pod.bare");
        assert_eq!(out["spec"]["initContainers"][0]["name"], PROXY_CONTAINER);
        assert_eq!(out["spec"]["initContainers"][0]["restartPolicy"], "Always");
        // The app drains the proxy before it is stopped, with the token the proxy was given.
        let hook = &out["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"];
        assert_eq!(hook["path"], "/drain");
        assert_eq!(hook["port"], 15090);
        assert_eq!(hook["httpHeaders"][0]["value"], "t0ken");
        let env = out["spec"]["initContainers"][0]["env"].as_array().unwrap();
        assert!(env
            .iter()
            .any(|e| e["name"] == "INFLIGHT_DRAIN_TOKEN" && e["value"] == "t0ken"));
    }

    #[test]
    fn an_apps_own_prestop_hook_is_kept_and_the_user_warned() {
        let raw = serde_json::json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}],
                "lifecycle": {"preStop": {"sleep": {"seconds": 5}}, "postStart": {"sleep": {"seconds": 1}}}}]}});
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        let outcome = mutate(&pod, &settings(true));
        let Outcome::Inject { warnings, .. } = &outcome else {
            panic!()
        };
        assert!(
            warnings.iter().any(|w| w.contains("preStop")),
            "{warnings:?}"
        );
        let out = apply(&raw, &outcome);
        assert_eq!(
            out["spec"]["containers"][0]["lifecycle"],
            raw["spec"]["containers"][0]["lifecycle"]
        );
        let env = out["spec"]["initContainers"][0]["env"].as_array().unwrap();
        assert!(!env.iter().any(|e| e["name"] == "INFLIGHT_DRAIN_TOKEN"));
    }

    #[test]
    fn a_lifecycle_without_prestop_gets_the_hook_beside_what_it_has() {
        let raw = serde_json::json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}],
                "lifecycle": {"postStart": {"sleep": {"seconds": 1}}}}]}});
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        let out = apply(&raw, &mutate(&pod, &settings(true)));
        let lifecycle = &out["spec"]["containers"][0]["lifecycle"];
        assert_eq!(lifecycle["postStart"]["sleep"]["seconds"], 1);
        assert_eq!(lifecycle["preStop"]["httpGet"]["path"], "/drain");
    }

    #[test]
    fn keys_with_slashes_and_tildes_are_escaped() {
        let raw = serde_json::json!({"metadata": {"name": "p",
                "annotations": {"a~b/c": "1"}, "labels": {"x/y": "2"}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}]}],
                     "initContainers": [{"name": "setup"}]}});
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        let outcome = mutate(&pod, &settings(true));
        let Outcome::Inject { patch, .. } = &outcome else {
            panic!()
        };
        let paths: Vec<String> = patch
            .0
            .iter()
            .map(|op| match op {
                PatchOperation::Add(a) => a.path.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            paths.contains(&"/metadata/annotations/inflight.dev~1injected".to_owned()),
            "{paths:?}"
        );
        let out = apply(&raw, &outcome);
        assert_eq!(out["metadata"]["annotations"]["a~b/c"], "1");
        assert_eq!(out["metadata"]["labels"]["x/y"], "2");
        // First among init containers; the user's own stays, second.
        assert_eq!(out["spec"]["initContainers"][0]["name"], PROXY_CONTAINER);
        assert_eq!(out["spec"]["initContainers"][1]["name"], "setup");
    }

    #[test]
    fn before_native_sidecars_the_proxy_is_a_last_container() {
        let raw = serde_json::json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}]}]}});
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        let out = apply(&raw, &mutate(&pod, &settings(false)));
        assert_eq!(out["spec"]["containers"][1]["name"], PROXY_CONTAINER);
        assert!(out["spec"]["containers"][1].get("restartPolicy").is_none());
        assert!(out["spec"].get("initContainers").is_none());
    }

    #[test]
    fn injecting_the_result_again_changes_nothing() {
        let raw = serde_json::json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}]}]}});
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        let once = apply(&raw, &mutate(&pod, &settings(true)));
        let again: Pod = serde_json::from_value(once).unwrap();
        assert_eq!(
            mutate(&again, &settings(true)),
            Outcome::Skip {
                reason: "already_injected",
                warning: None
            }
        );
    }

    #[test]
    fn a_pod_without_metadata_is_not_patched() {
        let raw = serde_json::json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}]}]}});
        let pod: Pod = serde_json::from_value(raw).unwrap();
        assert!(matches!(
            mutate(&pod, &settings(true)),
            Outcome::Skip {
                reason: "no_name",
                ..
            }
        ));
    }

    #[test]
    fn opted_out_and_host_network_pods_are_left_alone() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p",
            "annotations": {INJECT_LABEL: "disabled"}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}]}]}}))
        .unwrap();
        assert!(matches!(
            mutate(&pod, &settings(true)),
            Outcome::Skip {
                reason: "opted_out",
                ..
            }
        ));
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"},
            "spec": {"hostNetwork": true, "containers": [{"name": "app", "ports": [{"containerPort": 80}]}]}})).unwrap();
        assert!(matches!(
            mutate(&pod, &settings(true)),
            Outcome::Skip {
                reason: "host_network",
                warning: Some(_)
            }
        ));
    }
}
