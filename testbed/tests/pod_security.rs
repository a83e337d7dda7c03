//! Every component of inflight runs under the `restricted` Pod Security Standard with a read-only
//! root filesystem. In a namespace labelled `pod-security.kubernetes.io/enforce: restricted`, the
//! API server first refuses a pod running as root and the demo app without the securityContext the
//! manifests give it (so the admission below is the standard's doing, not an open door); then the
//! aggregator, the two activators, the injector, the operator, the demo app behind a hand-made
//! proxy sidecar, and a Deployment whose proxy the in-cluster injector adds (through a webhook
//! configuration naming its Service) are each admitted and become Ready, every container of them
//! with `readOnlyRootFilesystem: true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::eventually;
use inflight_testbed::manifests::{self, ACTIVATOR};
use inflight_testbed::query::{is_ready, pods};
use inflight_testbed::{chart, TestBed};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

/// The API server's answer to creating `pod` in the test's namespace: `Err` carries its message.
async fn create(tb: &TestBed, pod: Value) -> Result<(), String> {
    let pod: Pod = serde_json::from_value(pod).unwrap();
    Api::<Pod>::namespaced(tb.client(), tb.namespace())
        .create(&PostParams::default(), &pod)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

fn pod(name: &str, container: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [container]}})
}

/// Deletes the cluster-wide webhook configuration the test made, however the test ends.
struct Webhook<'a>(&'a TestBed, String);

impl Drop for Webhook<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            &self.1,
            "--ignore-not-found",
        ]);
    }
}

/// The injector's webhook, reached as the chart reaches it: through its Service in `ns`, for the
/// pods of `ns` only once it is labelled (other tests' namespaces never match).
fn webhook(tb: &TestBed, name: &str) -> Value {
    let ns = tb.namespace();
    let ca = std::fs::read(tb.layout().pki().join("ca.crt")).unwrap();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.inflight.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "service": {"namespace": ns, "name": "inflight-injector", "path": "/mutate", "port": 443},
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"inflight.dev/inject": "enabled",
                                                  "inflight.dev/webhook-test": ns}},
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded"
        }]
    })
}

/// Every container of a pod (init containers too): (name, readOnlyRootFilesystem).
fn read_only_roots(pod: &Value) -> Vec<(String, bool)> {
    let spec = &pod["spec"];
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| spec[list].as_array())
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("?").to_owned(),
                c["securityContext"]["readOnlyRootFilesystem"] == true,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed (root; see README: cargo test -- --ignored)"]
async fn testbed_every_component_is_admitted_and_ready_where_restricted_is_enforced() {
    let tb = TestBed::shared().await.unwrap();
    let ns = tb.namespace().to_owned();
    tb.enforce_restricted().await.unwrap();

    // Enforcement is on: root is refused, and so is our own demo app without its securityContext.
    let root = json!({"name": "root", "image": manifests::demo_app("0ms")["image"],
                      "imagePullPolicy": "Never", "securityContext": {"runAsUser": 0}});
    let refused = create(&tb, pod("root", root)).await.unwrap_err();
    assert!(
        refused.contains("violates PodSecurity \"restricted:latest\"")
            && refused.contains("runAsNonRoot"),
        "{refused}"
    );
    let mut bare = manifests::demo_app("0ms");
    bare.as_object_mut().unwrap().remove("securityContext");
    let refused = create(&tb, pod("bare", bare)).await.unwrap_err();
    assert!(
        refused.contains("violates PodSecurity \"restricted:latest\"")
            && refused.contains("allowPrivilegeEscalation != false"),
        "{refused}"
    );
    // The same container with it is admitted: the standard is what decides.
    create(&tb, pod("app", manifests::demo_app("0ms")))
        .await
        .unwrap();

    // The components, each under the chart's RBAC where the chart has one.
    let crd = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/inflight/crds/httpautoscalers.inflight.dev.yaml");
    inflight_testbed::kubectl_run(tb.layout(), &["apply", "-f", &crd.display().to_string()])
        .unwrap();
    for rbac in [
        "aggregator-rbac.yaml",
        "activator-rbac.yaml",
        "operator-rbac.yaml",
    ] {
        chart::apply_rbac(&tb, rbac).unwrap();
    }
    let ingest = format!("http://inflight-aggregator-ingest.{ns}.svc.cluster.local:9090");
    let (cert, key) =
        inflight_testbed::pki::serving_cert(tb.layout(), &[format!("inflight-injector.{ns}.svc")])
            .unwrap();
    tb.apply(&manifests::aggregator(&[
        "--activator-service-accounts",
        &format!("{ns}/{ACTIVATOR}"),
    ]))
    .unwrap();
    tb.apply(&manifests::activators(&ns, &ingest)).unwrap();
    tb.apply(&manifests::injector(&cert, &key, &ingest))
        .unwrap();
    // The aggregator starts once the operator's bootstrap has made its certificates.
    tb.apply(&manifests::operator(&ns)).unwrap();
    tb.apply(&manifests::proxied_demo(&ns, "hand", 1, "0ms"))
        .unwrap();
    let expected = [
        ("inflight-aggregator", 1),
        (ACTIVATOR, 2),
        ("inflight-injector", 1),
        ("inflight-operator", 1),
        ("hand", 1),
    ];
    eventually("every component's pods Ready", 240, || async {
        expected
            .iter()
            .all(|(app, n)| {
                let pods = pods(&tb, app);
                pods.len() == *n && pods.iter().all(is_ready)
            })
            .then_some(())
    })
    .await;

    // A Deployment a user writes, its proxy added by the injector running in the namespace.
    let name = format!("inflight-injector-{ns}");
    tb.apply(&webhook(&tb, &name)).unwrap();
    let _webhook = Webhook(&tb, name);
    tb.kubectl(&[
        "label",
        "namespace",
        &ns,
        "inflight.dev/inject=enabled",
        &format!("inflight.dev/webhook-test={ns}"),
    ])
    .unwrap();
    let mut app = manifests::demo_app("0ms");
    app["ports"] = json!([{"containerPort": 8080, "name": "http"}]);
    tb.apply(&manifests::deployment(
        "web",
        1,
        json!({"containers": [app]}),
    ))
    .unwrap();
    let web = eventually(
        "web's pod Ready, with the proxy the injector added",
        240,
        || async {
            let pods = pods(&tb, "web");
            let injected = pods.len() == 1
                && pods[0]["metadata"]["annotations"]["inflight.dev/injected"].is_string()
                && is_ready(&pods[0]);
            injected.then(|| pods[0].clone())
        },
    )
    .await;
    let names: Vec<_> = read_only_roots(&web).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"inflight-proxy".to_owned()), "{names:?}");

    // Every container of every pod ran with a read-only root filesystem.
    let all = tb.kubectl(&["get", "pods", "-o", "json"]).unwrap();
    let all: Value = serde_json::from_str(&all).unwrap();
    let all = all["items"].as_array().unwrap();
    // `app`, the pods of `expected`, and `web`.
    let components: usize = expected.iter().map(|(_, n)| n).sum();
    assert_eq!(all.len(), 1 + components + 1, "{all:?}");
    for pod in all {
        for (container, read_only) in read_only_roots(pod) {
            assert!(
                read_only,
                "{}/{container}: a writable root filesystem",
                pod["metadata"]["name"]
            );
        }
    }
}
