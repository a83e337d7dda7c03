//! A webhook body as any caller may send it, raw bytes read as the JSON AdmissionReview the API
//! server posts (seeded with the golden fixtures the test bed's API server sent).
//!
//! - never a panic; either a reason (the HTTP 400's body) or an AdmissionReview
//!   (`admission.k8s.io/v1`) whose response carries the request's uid and allows the pod: an
//!   injector never blocks one;
//! - a patch, when there is one, is a `JSONPatch` that applies to the request's pod, and a pod
//!   that read as a Pod is still one after it;
//! - the patched pod, reviewed again, gets no patch: injection happens once.
#![no_main]

use inflight_injector::metrics::Metrics;
use inflight_injector::review;
use inflight_injector::sidecar::{Settings, Tokens};
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn settings(native: bool) -> Settings {
    Settings {
        image: "inflight-proxy:fuzz".into(),
        pull_policy: None,
        aggregator: vec!["agg:9090".into()],
        native,
        resources: Default::default(),
        uid: 65532,
        drain_period: std::time::Duration::from_secs(5),
        version: "fuzz".into(),
        tokens: Tokens::Fixed("fuzz".into()),
    }
}

/// The response of an answer, after checking what every answer must be.
fn checked(answer: &[u8], uid: Option<&Value>) -> Value {
    let review: Value = serde_json::from_slice(answer).expect("the answer is JSON");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = review["response"].clone();
    assert_eq!(response["allowed"], true, "a pod blocked: {response}");
    assert!(
        response["uid"].as_str().is_some(),
        "no uid in the response: {response}"
    );
    if let Some(uid) = uid {
        assert_eq!(&response["uid"], uid, "the response is for another request");
    }
    response
}

fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let bytes = response["patch"].as_array()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes: Vec<u8> = bytes
        .iter()
        .map(|b| u8::try_from(b.as_u64().expect("a byte")).expect("a byte"))
        .collect();
    Some(serde_json::from_slice(&bytes).expect("a JSON patch"))
}

fuzz_target!(|body: &[u8]| {
    let native = body.first().is_some_and(|b| b & 1 == 1);
    let settings = settings(native);
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
    let answer = match review::answer(body, &settings, &metrics) {
        Ok(answer) => answer,
        Err(reason) => {
            assert!(!reason.is_empty());
            return;
        }
    };
    // serde_json skips the fields a typed parse ignores without checking their escapes (a lone
    // surrogate, say), so a body the review took may still not read as a `Value`: then only what
    // holds for any answer is checked.
    let request: Option<Value> = serde_json::from_slice(body).ok();
    // Read as a `Value`, a body with a key twice keeps the last of them, where the review's typed
    // parse may have kept the first: the uid compared is the typed parse's when they agree.
    let uid = request
        .as_ref()
        .map(|r| r["request"]["uid"].clone())
        .filter(Value::is_string);
    let response = checked(&answer, uid.as_ref());
    let Some(patch) = patch_of(&response) else {
        return;
    };
    let Some(mut request) = request else {
        return;
    };
    let mut pod = request["request"]["object"].clone();
    let was_a_pod = serde_json::from_value::<Pod>(pod.clone()).is_ok();
    json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod");
    if !was_a_pod {
        return;
    }
    serde_json::from_value::<Pod>(pod.clone()).expect("the patched pod is a Pod");

    request["request"]["object"] = pod;
    let again = serde_json::to_vec(&request).expect("a Value encodes");
    let answer = review::answer(&again, &settings, &metrics).expect("the same review, patched");
    let response = checked(&answer, uid.as_ref());
    assert!(
        patch_of(&response).is_none(),
        "injected twice: {}",
        response["patch"]
    );
});
