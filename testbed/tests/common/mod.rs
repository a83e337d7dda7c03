//! Helpers shared by the test bed's tests: applying manifests and waiting for what Kubernetes does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use inflight_testbed::TestBed;

/// Applies a JSON manifest in the test's namespace with kubectl.
pub fn apply(tb: &TestBed, manifest: &serde_json::Value) {
    tb.apply(manifest).unwrap();
}

pub use inflight_testbed::eventually;

/// A Deployment of the demo app, `replicas` replicas, readiness on /healthz.
pub fn demo_deployment(name: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [demo_container()], "terminationGracePeriodSeconds": 30}
            }
        }
    })
}

pub fn demo_container() -> serde_json::Value {
    serde_json::json!({
        "name": "app",
        "image": inflight_testbed::images::image_ref("inflight-demo-app"),
        "imagePullPolicy": "Never",
        "args": ["serve", "--listen", "0.0.0.0:8080", "--latency", "5ms"],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
        "securityContext": inflight_testbed::manifests::restricted()
    })
}

pub fn service(name: &str, selector: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": selector}, "ports": [{"port": 80, "targetPort": 8080, "name": "http"}]}
    })
}
