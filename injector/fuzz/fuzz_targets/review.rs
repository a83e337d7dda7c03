//! A webhook body as any caller may send it: never a panic; either a reason (HTTP 400) or an
//! AdmissionReview that allows the pod; and when it carries a patch, the patch applies to the
//! request's pod and gives a Pod.
#![no_main]

use inflight_injector::metrics::Metrics;
use inflight_injector::review;
use inflight_injector::sidecar::{Settings, Tokens};
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let settings = Settings {
        image: "inflight-proxy:fuzz".into(),
        pull_policy: None,
        aggregator: vec!["agg:9090".into()],
        native: body.first().is_some_and(|b| b & 1 == 1),
        resources: Default::default(),
        uid: 65532,
        drain_period: std::time::Duration::from_secs(5),
        version: "fuzz".into(),
        tokens: Tokens::Fixed("fuzz".into()),
    };
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
    let Ok(answer) = review::answer(body, &settings, &metrics) else {
        return;
    };
    let response: serde_json::Value = serde_json::from_slice(&answer).expect("a review");
    assert_eq!(response["response"]["allowed"], true);
    let Some(bytes) = response["response"]["patch"].as_array() else {
        return;
    };
    let bytes: Vec<u8> = bytes.iter().map(|b| b.as_u64().expect("a byte") as u8).collect();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");
    // serde_json skips the fields a typed parse ignores without checking their escapes (a lone
    // surrogate, say), so a body the review took may still not read as a `Value`: nothing to
    // apply the patch to then.
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let mut pod = request["request"]["object"].clone();
    // Read as a `Value`, a body with a key twice keeps the last of them, where the review's typed
    // parse may have kept the first: only a pod that reads as a Pod here too must still be one.
    let was_a_pod = serde_json::from_value::<Pod>(pod.clone()).is_ok();
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    if was_a_pod {
        serde_json::from_value::<Pod>(pod).expect("a Pod");
    }
});
