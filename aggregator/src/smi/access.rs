//! Authorization by SubjectAccessReview, as an extension API server delegates it: "may this
//! caller do this?" asked of the API server, with the caller exactly as the API server passed it
//! (user, uid, groups, extra). Answers are kept briefly in a cache of a fixed size, as the API
//! server's own delegating authorizer keeps them, so a dashboard polling every second costs one
//! review per caller and question every [`TTL`], not one per request.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    LabelSelectorAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::Client;

use inflight_runtime::lock;

use super::auth::Caller;
use super::routes::Attributes;
use super::Figures;

/// How long an answer is kept, allowed or denied: the default of Kubernetes' delegating
/// authorizer for extension API servers (`--authorization-webhook-cache-authorized-ttl` and
/// `-unauthorized-ttl`, 10 s each). A right revoked is honoured within this.
pub const TTL: Duration = Duration::from_secs(10);

/// Answers kept at most. Each is a 32-byte digest and a deadline.
pub const MAX_ENTRIES: usize = 8192;

/// A review the API server does not answer within this is an error (503), not a hang: the
/// request holds its connection's place meanwhile.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Reviews, cached.
pub struct Access {
    client: Client,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").finish_non_exhaustive()
    }
}

impl Access {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::new(Cache::new(MAX_ENTRIES, TTL)),
        }
    }

    /// Whether `caller` may do `what`. Err: the API server could not be asked (a 503).
    pub async fn allowed(
        &self,
        caller: &Caller,
        what: Attributes<'_>,
        figures: &Figures,
    ) -> Result<bool, String> {
        let spec = spec(caller, what);
        // The whole question is the key: serde_json writes the fields in a fixed order and
        // `extra` is a sorted map. A digest keeps each entry small whatever the caller's headers.
        let key = digest(&serde_json::to_vec(&spec).map_err(|e| e.to_string())?);
        if let Some(allowed) = lock(&self.cache).get(&key, Instant::now()) {
            figures.review_cached();
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec,
            ..SubjectAccessReview::default()
        };
        let asked = tokio::time::timeout(
            REVIEW_TIMEOUT,
            Api::<SubjectAccessReview>::all(self.client.clone())
                .create(&PostParams::default(), &review),
        )
        .await;
        let answer = match asked {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                figures.review("error");
                return Err(format!("SubjectAccessReview: {e}"));
            }
            Err(_) => {
                figures.review("error");
                return Err(format!(
                    "SubjectAccessReview: no answer within {REVIEW_TIMEOUT:?}"
                ));
            }
        };
        let allowed = answer.status.is_some_and(|s| s.allowed);
        figures.review(if allowed { "allowed" } else { "denied" });
        lock(&self.cache).put(key, allowed, Instant::now());
        Ok(allowed)
    }
}

/// The review's spec: the caller, and the resource attributes the request would have had, had
/// it been made to the API server itself.
fn spec(caller: &Caller, a: Attributes<'_>) -> SubjectAccessReviewSpec {
    SubjectAccessReviewSpec {
        user: Some(caller.user.clone()),
        uid: caller.uid.clone(),
        groups: Some(caller.groups.clone()),
        extra: Some(caller.extra.clone()),
        resource_attributes: Some(ResourceAttributes {
            group: Some(a.group.to_owned()),
            version: Some(a.version.to_owned()),
            resource: Some(a.resource.to_owned()),
            subresource: (!a.subresource.is_empty()).then(|| a.subresource.to_owned()),
            verb: Some(a.verb.to_owned()),
            namespace: a.namespace.map(str::to_owned),
            name: a.name.map(str::to_owned),
            // For authorizers that look at selectors (Kubernetes ≥ 1.31); RBAC does not.
            label_selector: a.label_selector.map(|s| LabelSelectorAttributes {
                raw_selector: Some(s.to_owned()),
                requirements: None,
            }),
            ..ResourceAttributes::default()
        }),
        ..SubjectAccessReviewSpec::default()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    key
}

/// Answers until their deadline, at most `max` of them. Every answer lives as long, so the
/// order of insertion is the order of expiry: the oldest goes first, expired or evicted.
#[derive(Debug)]
struct Cache {
    answers: HashMap<[u8; 32], (bool, Instant)>,
    order: VecDeque<([u8; 32], Instant)>,
    max: usize,
    ttl: Duration,
}

impl Cache {
    fn new(max: usize, ttl: Duration) -> Self {
        Self {
            answers: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
            ttl,
        }
    }

    fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<bool> {
        self.expire(now);
        self.answers.get(key).map(|(allowed, _)| *allowed)
    }

    fn put(&mut self, key: [u8; 32], allowed: bool, now: Instant) {
        self.expire(now);
        while self.answers.len() >= self.max {
            let Some((oldest, at)) = self.order.pop_front() else {
                break;
            };
            self.forget(&oldest, at);
        }
        let until = now + self.ttl;
        self.answers.insert(key, (allowed, until));
        self.order.push_back((key, until));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front().copied() {
            if at > now {
                break;
            }
            self.order.pop_front();
            self.forget(&key, at);
        }
    }

    /// Removes `key` if its answer is the one queued at `at`: an answer stored again since (two
    /// requests asked at once) is queued again, and leaves with that later entry.
    fn forget(&mut self, key: &[u8; 32], at: Instant) {
        if self.answers.get(key).is_some_and(|(_, until)| *until == at) {
            self.answers.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.answers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> [u8; 32] {
        digest(&n.to_be_bytes())
    }

    #[test]
    fn answers_expire_and_the_oldest_make_room() {
        let start = Instant::now();
        let mut cache = Cache::new(3, Duration::from_secs(10));
        cache.put(key(1), true, start);
        cache.put(key(2), false, start + Duration::from_secs(1));
        cache.put(key(3), true, start + Duration::from_secs(2));
        assert_eq!(cache.get(&key(2), start), Some(false));
        // Full: the oldest leaves for the newcomer.
        cache.put(key(4), true, start + Duration::from_secs(3));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&key(1), start + Duration::from_secs(3)), None);
        assert_eq!(
            cache.get(&key(4), start + Duration::from_secs(3)),
            Some(true)
        );
        // Past their deadline, answers are gone.
        assert_eq!(cache.get(&key(2), start + Duration::from_secs(11)), None);
        assert_eq!(
            cache.get(&key(3), start + Duration::from_secs(11)),
            Some(true)
        );
        assert_eq!(cache.get(&key(4), start + Duration::from_secs(60)), None);
        assert_eq!(cache.len(), 0);
        assert!(cache.order.is_empty());
    }

    #[test]
    fn an_answer_stored_twice_lives_until_its_later_deadline() {
        let start = Instant::now();
        let mut cache = Cache::new(10, Duration::from_secs(10));
        cache.put(key(1), false, start);
        cache.put(key(1), true, start + Duration::from_secs(5));
        assert_eq!(
            cache.get(&key(1), start + Duration::from_secs(12)),
            Some(true)
        );
        assert_eq!(cache.get(&key(1), start + Duration::from_secs(16)), None);
        assert!(cache.order.is_empty());
    }

    #[test]
    fn thousands_of_callers_stay_within_the_bound() {
        let now = Instant::now();
        let mut cache = Cache::new(MAX_ENTRIES, TTL);
        for n in 0..(3 * MAX_ENTRIES as u32) {
            cache.put(key(n), n % 2 == 0, now);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert!(cache.order.len() <= MAX_ENTRIES);
    }

    #[test]
    fn every_part_of_the_caller_and_the_question_is_in_the_key() {
        let caller = Caller {
            user: "alice".into(),
            uid: Some("1".into()),
            groups: vec!["dev".into()],
            extra: [("scopes".to_owned(), vec!["a".to_owned()])].into(),
        };
        let what = Attributes {
            group: "",
            version: "v1",
            resource: "pods",
            subresource: "",
            verb: "list",
            namespace: Some("shop"),
            name: None,
            label_selector: Some("app=web"),
        };
        let k = |c: &Caller, a: Attributes<'_>| digest(&serde_json::to_vec(&spec(c, a)).unwrap());
        let base = k(&caller, what);
        let mut other = caller.clone();
        other.uid = Some("2".into());
        assert_ne!(k(&other, what), base);
        let mut other = caller.clone();
        other.extra.clear();
        assert_ne!(k(&other, what), base);
        let mut other = caller.clone();
        other.groups.push("admins".into());
        assert_ne!(k(&other, what), base);
        assert_ne!(
            k(
                &caller,
                Attributes {
                    namespace: None,
                    ..what
                }
            ),
            base
        );
        assert_ne!(
            k(
                &caller,
                Attributes {
                    label_selector: None,
                    ..what
                }
            ),
            base
        );
        assert_eq!(k(&caller.clone(), what), base);
    }
}
