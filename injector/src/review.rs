//! An AdmissionReview in, an AdmissionReview out. A body that is not one is a bad request with
//! the reason; a pod that cannot be read or will not be injected is admitted unchanged, with a
//! warning the user sees and a counted metric: an injector never blocks a deployment.

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;

use crate::metrics::Metrics;
use crate::mutate::{mutate, Outcome};
use crate::sidecar::Settings;

/// The API version of the reviews the webhook is configured for (`admissionReviewVersions`).
const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// The answer to `body`: the response review's JSON, or why `body` is a bad request.
pub fn answer(body: &[u8], settings: &Settings, metrics: &Metrics) -> Result<Vec<u8>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    if review.types.api_version != REVIEW_API_VERSION || review.types.kind != "AdmissionReview" {
        return Err(format!(
            "expected kind AdmissionReview of {REVIEW_API_VERSION}, got {:?} of {:?}",
            review.types.kind, review.types.api_version
        ));
    }
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_owned())?;
    let response = respond(&request, settings, metrics);
    metrics.reviewed();
    serde_json::to_vec(&response.into_review())
        .map_err(|e| format!("cannot encode the response: {e}"))
}

fn respond(
    request: &AdmissionRequest<DynamicObject>,
    settings: &Settings,
    metrics: &Metrics,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let is_pod_create = request.operation == Operation::Create
        && request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.sub_resource.is_none();
    let Some(object) = request.object.as_ref().filter(|_| is_pod_create) else {
        metrics.skipped("not_a_pod_create");
        return response;
    };
    let pod = serde_json::to_value(object).and_then(serde_json::from_value::<Pod>);
    let pod = match pod {
        Ok(pod) => pod,
        Err(error) => {
            metrics.error("unreadable_pod");
            metrics.skipped("unreadable_pod");
            return with_warnings(
                response,
                vec![format!(
                    "inflight: pod not injected: it could not be read: {error}"
                )],
            );
        }
    };
    match mutate(&pod, settings) {
        Outcome::Inject {
            patch, warnings, ..
        } => match response.clone().with_patch(patch) {
            Ok(patched) => {
                metrics.injected();
                with_warnings(patched, warnings)
            }
            Err(error) => {
                metrics.error("patch_encoding");
                metrics.skipped("patch_encoding");
                with_warnings(
                    response,
                    vec![format!("inflight: pod not injected: {error}")],
                )
            }
        },
        Outcome::Skip { reason, warning } => {
            metrics.skipped(reason);
            with_warnings(response, warning.into_iter().collect())
        }
    }
}

fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}
