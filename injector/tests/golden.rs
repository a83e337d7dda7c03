//! Golden fixtures: AdmissionReview requests captured from the test bed's API server (see the
//! README: `cargo run -p inflight-injector --example capture_fixtures`), each with the exact
//! response expected and the pod the response's patch makes. `INFLIGHT_BLESS=1` rewrites the
//! expected files from what the injector answers now (read the diff before committing it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use inflight_injector::metrics::Metrics;
use inflight_injector::review;
use inflight_injector::sidecar::{Settings, Tokens};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The settings the expected files were made with: fixed, so they never drift.
fn settings() -> Settings {
    Settings {
        image: "inflight-proxy:golden".into(),
        pull_policy: Some("IfNotPresent".into()),
        aggregator: vec!["http://inflight-aggregator-ingest.inflight.svc:9090".into()],
        native: true,
        resources: serde_json::from_value(serde_json::json!({
            "requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}
        }))
        .unwrap(),
        uid: 65532,
        drain_period: std::time::Duration::from_secs(5),
        version: "golden".into(),
        tokens: Tokens::Fixed("golden-drain-token".into()),
    }
}

/// Go's `[]byte` in JSON: base64 text, or an array of numbers (as kube-rs writes it).
fn patch_bytes(value: &serde_json::Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match value {
        serde_json::Value::String(b64) => {
            base64::engine::general_purpose::STANDARD.decode(b64).ok()
        }
        serde_json::Value::Array(bytes) => bytes
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect(),
        _ => None,
    }
}

fn check_or_bless(path: &Path, actual: &serde_json::Value, bless: bool) -> Option<String> {
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if bless {
        std::fs::write(path, text).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (INFLIGHT_BLESS=1 writes it)", path.display()));
    let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
    (expected != *actual).then(|| {
        format!(
            "{} differs:\n--- expected\n{}\n--- actual\n{}",
            path.display(),
            serde_json::to_string_pretty(&expected).unwrap(),
            text
        )
    })
}

#[test]
fn every_captured_review_gets_the_expected_response_and_pod() {
    let bless = std::env::var_os("INFLIGHT_BLESS").is_some();
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
    let mut requests: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".request.json"))
        .collect();
    requests.sort();
    assert!(requests.len() >= 11, "fixtures missing: {requests:?}");
    let mut failures = Vec::new();
    for request_path in &requests {
        let name = request_path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".request.json")
            .to_owned();
        let body = std::fs::read(request_path).unwrap();
        let answer = review::answer(&body, &settings(), &metrics)
            .unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        let response: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        failures.extend(check_or_bless(
            &fixtures().join(format!("{name}.response.json")),
            &response,
            bless,
        ));
        // The pod after the patch (the request's pod when there is none): what the API server
        // would go on to validate and store.
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut pod = request["request"]["object"].clone();
        if let Some(bytes) = patch_bytes(&response["response"]["patch"]) {
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut pod, &patch)
                .unwrap_or_else(|e| panic!("{name}: the patch does not apply: {e}"));
            // And the patched pod still reads as a Pod.
            serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod.clone())
                .unwrap_or_else(|e| panic!("{name}: the patched pod is not a Pod: {e}"));
        }
        failures.extend(check_or_bless(
            &fixtures().join(format!("{name}.pod.json")),
            &pod,
            bless,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
