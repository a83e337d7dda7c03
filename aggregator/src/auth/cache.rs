//! Reviewed tokens, by their SHA-256 (the tokens themselves are not kept): a reporter that opens
//! its stream again, or streams to several replicas' worth of reconnects, costs the API server one
//! TokenReview per token, not one per stream. Bounded: when full, expired entries go first, then
//! the ones that expire soonest.

use std::collections::HashMap;
use std::sync::Arc;

use super::Caller;

pub type Digest = [u8; 32];

pub fn digest(token: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[derive(Debug)]
pub struct Cache {
    max: usize,
    entries: HashMap<Digest, (i64, Arc<Caller>)>,
}

impl Cache {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            entries: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller of a token reviewed before, while its entry is good.
    pub fn get(&self, key: &Digest, now_ms: i64) -> Option<Arc<Caller>> {
        self.entries
            .get(key)
            .filter(|(until, _)| *until > now_ms)
            .map(|(_, caller)| caller.clone())
    }

    /// Keeps `caller` until `until_ms`.
    pub fn insert(&mut self, key: Digest, until_ms: i64, caller: Arc<Caller>, now_ms: i64) {
        if self.max == 0 {
            return;
        }
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (until, _)| *until > now_ms);
            while self.entries.len() >= self.max {
                let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (until, _))| *until)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, (until_ms, caller));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn caller(pod: &str) -> Arc<Caller> {
        Arc::new(Caller {
            service_account: "ns/sa".parse().unwrap(),
            pod: pod.into(),
            pod_uid: String::new(),
            workload: None,
            expires_unix_ms: 0,
        })
    }

    #[test]
    fn entries_last_until_their_time_and_the_cache_never_outgrows_its_bound() {
        let mut cache = Cache::new(3);
        cache.insert(digest("a"), 1_000, caller("a"), 0);
        assert_eq!(cache.get(&digest("a"), 999).unwrap().pod, "a");
        assert!(cache.get(&digest("a"), 1_000).is_none(), "expired");
        assert!(cache.get(&digest("b"), 0).is_none());
        for (i, t) in ["b", "c", "d", "e", "f"].iter().enumerate() {
            cache.insert(
                digest(t),
                5_000 + i64::try_from(i).unwrap(),
                caller(t),
                2_000,
            );
            assert!(cache.len() <= 3);
        }
        // The expired "a" went first, then those expiring soonest.
        assert!(cache.get(&digest("a"), 0).is_none());
        assert!(cache.get(&digest("b"), 2_000).is_none());
        assert_eq!(cache.get(&digest("f"), 2_000).unwrap().pod, "f");
        assert_ne!(digest("a"), digest("b"));
        let mut off = Cache::new(0);
        off.insert(digest("a"), 1_000, caller("a"), 0);
        assert!(off.is_empty());
    }
}
