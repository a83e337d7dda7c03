//! A stream's token, reviewed by the API server (`authentication.k8s.io/v1` TokenReview, with the
//! aggregator's audience), and the pod it is bound to, read from the API: the token's
//! `authentication.kubernetes.io/pod-name` and `pod-uid` name the pod, the pod's own
//! `inflight.dev/workload` label its workload.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;

use inflight_runtime::lock;

use super::cache::{digest, Cache};
use super::{claims, Caller, Refusal, ServiceAccount};

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Reviews at once: a storm of reconnecting reporters (an aggregator restart) waits its turn
/// rather than flooding the API server.
const CONCURRENT_REVIEWS: usize = 32;
/// How long one stream may wait for its review (and the pod's read), queue included.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// A cached review is used at most this long, even for a token that lives longer: a pod deleted
/// since (its token is then refused by the API server) is noticed within it.
const MAX_CACHED_MS: i64 = 10 * 60 * 1000;

pub struct Authenticator {
    client: kube::Client,
    audience: String,
    cache: Mutex<Cache>,
    reviews: Semaphore,
    /// TokenReviews asked for, by what came of them: `accepted` (the token's pod found), or the
    /// refusal's reason.
    pub reviewed: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("audience", &self.audience)
            .field("cached", &self.cached())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(client: kube::Client, audience: String, max_cached: usize) -> Self {
        Self {
            client,
            audience,
            cache: Mutex::new(Cache::new(max_cached)),
            reviews: Semaphore::new(CONCURRENT_REVIEWS),
            reviewed: Family::default(),
        }
    }

    pub fn cached(&self) -> usize {
        lock(&self.cache).len()
    }

    /// Who opened a stream, from its `authorization: Bearer` metadata.
    pub async fn authenticate(
        &self,
        metadata: &MetadataMap,
        now_ms: i64,
    ) -> Result<Arc<Caller>, Refusal> {
        let token = bearer(metadata).ok_or_else(|| match metadata.get("authorization") {
            None => Refusal::NoToken {
                audience: self.audience.clone(),
            },
            Some(_) => Refusal::Malformed,
        })?;
        let key = digest(token);
        if let Some(caller) = lock(&self.cache).get(&key, now_ms) {
            return Ok(caller);
        }
        let caller = tokio::time::timeout(REVIEW_TIMEOUT, self.review(token, now_ms))
            .await
            .map_err(|_| Refusal::Unavailable(format!("no answer within {REVIEW_TIMEOUT:?}")))
            .and_then(|reviewed| reviewed);
        let result = caller.as_ref().map_or_else(Refusal::reason, |_| "accepted");
        self.reviewed.get_or_create(&vec![("result", result)]).inc();
        let caller = caller?;
        let caller = Arc::new(caller);
        let until = caller
            .expires_unix_ms
            .min(now_ms.saturating_add(MAX_CACHED_MS));
        lock(&self.cache).insert(key, until, caller.clone(), now_ms);
        Ok(caller)
    }

    async fn review(&self, token: &str, now_ms: i64) -> Result<Caller, Refusal> {
        let _turn = self
            .reviews
            .acquire()
            .await
            .map_err(|_| Refusal::Unavailable("shutting down".into()))?;
        let invalid = |why: String| Refusal::Invalid {
            audience: self.audience.clone(),
            why,
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("TokenReview: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(invalid(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience))
        {
            return Err(invalid(format!(
                "the token is for {:?}",
                status.audiences.unwrap_or_default()
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let service_account: ServiceAccount = username
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .map(|(namespace, name)| ServiceAccount {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .ok_or_else(|| invalid(format!("{username:?} is not a ServiceAccount")))?;
        let extra = user.extra.unwrap_or_default();
        let one = |key: &str| {
            extra
                .get(key)
                .and_then(|v| v.first())
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let (Some(pod), Some(pod_uid)) = (one(POD_NAME), one(POD_UID)) else {
            return Err(Refusal::NotPodBound {
                service_account: service_account.to_string(),
            });
        };
        let gone = || Refusal::PodGone {
            namespace: service_account.namespace.clone(),
            pod: pod.clone(),
        };
        let found = Api::<Pod>::namespaced(self.client.clone(), &service_account.namespace)
            .get_opt(&pod)
            .await
            .map_err(|e| Refusal::Unavailable(format!("reading pod: {e}")))?
            .ok_or_else(gone)?;
        if found.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err(gone());
        }
        let workload = found
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(inflight_proto::names::WORKLOAD_LABEL))
            .and_then(|v| v.split_once('.'))
            .map(|(kind, name)| (kind.to_owned(), name.to_owned()));
        // A token without `exp` (none made by TokenRequest) is believed for the cache's time.
        let expires_unix_ms = claims::expiry(token)
            .map_or(now_ms.saturating_add(MAX_CACHED_MS), |s| {
                s.saturating_mul(1000)
            });
        Ok(Caller {
            service_account,
            pod,
            pod_uid,
            workload,
            expires_unix_ms,
        })
    }
}

/// The token of `authorization: Bearer <token>`, if that is what the metadata holds.
fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.len() <= claims::MAX_TOKEN_BYTES)
        .then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_a_bearer_token_of_bounded_size_is_taken() {
        let md = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("authorization", v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&md("Bearer abc.def.ghi")), Some("abc.def.ghi"));
        assert_eq!(bearer(&md("bearer  abc")), Some("abc"));
        assert_eq!(bearer(&md("Basic abc")), None);
        assert_eq!(bearer(&md("Bearer ")), None);
        assert_eq!(bearer(&md("Bearer")), None);
        assert_eq!(bearer(&md(&format!("Bearer {}", "a".repeat(20_000)))), None);
        assert_eq!(bearer(&MetadataMap::new()), None);
    }
}
