//! Helpers shared by the test bed's tests: applying manifests and waiting for what Kubernetes does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use inflight_testbed::TestBed;

/// Applies a JSON manifest in the test's namespace with kubectl.
pub fn apply(tb: &TestBed, manifest: &serde_json::Value) {
    let path = std::env::temp_dir().join(format!(
        "inflight-test-{}-{}.json",
        tb.namespace(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&path, manifest.to_string()).unwrap();
    let result = tb.kubectl(&["apply", "-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    result.unwrap();
}

/// Polls `check` every 250 ms until it returns Some, or panics naming `what` after `secs`.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

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
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}
    })
}

pub fn service(name: &str, selector: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": selector}, "ports": [{"port": 80, "targetPort": 8080, "name": "http"}]}
    })
}
