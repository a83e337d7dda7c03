//! What is due, from what the Secrets hold and the time: which certificate to make again and why,
//! which CAs the bundles trust, and when to look again. Pure: times are Unix seconds, given.

use std::time::Duration;

use super::pki::Cert;
use super::stored::Read;

/// Lifetimes, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub cert_validity: i64,
    pub renew_before: i64,
    pub ca_validity: i64,
    pub ca_renew_before: i64,
    /// How long a replaced CA stays trusted after the last serving certificate left it.
    pub ca_overlap: i64,
}

/// Why a certificate is made (again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    Missing,
    Unreadable(String),
    NotACa,
    Expiring { not_after: i64 },
    Names { have: Vec<String> },
    OtherCa,
}

impl std::fmt::Display for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("the Secret does not exist"),
            Self::Unreadable(why) => write!(f, "the Secret is unreadable: {why}"),
            Self::NotACa => f.write_str("its certificate is not a CA"),
            Self::Expiring { not_after } => {
                write!(
                    f,
                    "it expires at {not_after} (Unix time), within the renewal window"
                )
            }
            Self::Names { have } => write!(f, "its DNS names are {have:?}"),
            Self::OtherCa => f.write_str("it is not signed by the current CA"),
        }
    }
}

/// The DNS names of a Service's serving certificate, the one its clients dial (`<svc>.<ns>.svc`,
/// which the API server uses) first.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Whether the CA is to be made anew.
pub fn ca_due(ca: &Read, now: i64, p: &Policy) -> Option<Due> {
    let cert = match ca {
        Read::Missing => return Some(Due::Missing),
        Read::Unreadable(why) => return Some(Due::Unreadable(why.clone())),
        Read::Found(s) => &s.pair.cert,
    };
    if !cert.is_ca {
        return Some(Due::NotACa);
    }
    expiring(cert, now, p.ca_renew_before)
}

/// Whether a serving certificate is to be made anew.
pub fn serving_due(leaf: &Read, ca: &Cert, names: &[String], now: i64, p: &Policy) -> Option<Due> {
    let cert = match leaf {
        Read::Missing => return Some(Due::Missing),
        Read::Unreadable(why) => return Some(Due::Unreadable(why.clone())),
        Read::Found(s) => &s.pair.cert,
    };
    if let Some(due) = expiring(cert, now, p.renew_before) {
        return Some(due);
    }
    let sorted = |n: &[String]| {
        let mut n = n.to_vec();
        n.sort();
        n.dedup();
        n
    };
    if sorted(&cert.dns_names) != sorted(names) {
        return Some(Due::Names {
            have: cert.dns_names.clone(),
        });
    }
    if !cert.signed_by(ca) {
        return Some(Due::OtherCa);
    }
    None
}

fn expiring(cert: &Cert, now: i64, renew_before: i64) -> Option<Due> {
    (now >= cert.not_after.saturating_sub(renew_before)).then_some(Due::Expiring {
        not_after: cert.not_after,
    })
}

/// The CAs other than `current` that may still be trusted: the CA the Secret held before and the
/// others of its bundle, unexpired, newest first.
pub fn earlier_cas(old: &Read, current: &Cert, now: i64) -> Vec<Cert> {
    let Some(stored) = old.stored() else {
        return Vec::new();
    };
    let mut cas: Vec<Cert> = Vec::new();
    for c in std::iter::once(&stored.pair.cert).chain(&stored.trusted) {
        if c.is_ca
            && c.not_after > now
            && c.der != current.der
            && !cas.iter().any(|k| k.der == c.der)
        {
            cas.push(c.clone());
        }
    }
    cas.sort_by_key(|c| std::cmp::Reverse(c.not_after));
    cas
}

/// The CA bundle: `current` first, then each earlier CA still needed, that is unexpired and
/// either signed a certificate being served now (`served`, before this pass writes anything), or
/// the move to `current` is recent: a certificate (`issued`, as they are after this pass) was made
/// less than the overlap ago, so pods may still serve the one it replaced until their Secret
/// volume and their server catch up.
pub fn bundle(
    current: &Cert,
    earlier: &[Cert],
    served: &[&Cert],
    issued: &[&Cert],
    now: i64,
    p: &Policy,
) -> Vec<Cert> {
    let recent = issued
        .iter()
        .any(|c| now < c.issued_at().saturating_add(p.ca_overlap));
    let mut bundle = vec![current.clone()];
    for ca in earlier {
        let serving = served
            .iter()
            .any(|c| !c.signed_by(current) && c.signed_by(ca));
        if ca.not_after > now && (serving || recent) {
            bundle.push(ca.clone());
        }
    }
    bundle
}

/// When something next falls due (Unix time): the CA's or a serving certificate's renewal, or an
/// earlier CA leaving the bundle.
pub fn next_due(bundle: &[Cert], issued: &[&Cert], p: &Policy) -> i64 {
    let mut due = i64::MAX;
    if let Some(ca) = bundle.first() {
        due = due.min(ca.not_after.saturating_sub(p.ca_renew_before));
    }
    for c in issued {
        due = due.min(c.not_after.saturating_sub(p.renew_before));
    }
    if bundle.len() > 1 {
        let last_issued = issued.iter().map(|c| c.issued_at()).max().unwrap_or(0);
        due = due.min(last_issued.saturating_add(p.ca_overlap));
        for ca in &bundle[1..] {
            due = due.min(ca.not_after);
        }
    }
    due
}

/// How long to wait for `due`: at least a second (a clock a second behind the certificate is not
/// a reason to spin), at most `cap`.
pub fn wait(due: i64, now: i64, cap: Duration) -> Duration {
    let secs = u64::try_from(due.saturating_sub(now)).unwrap_or(0);
    Duration::from_secs(secs).clamp(Duration::from_secs(1), cap.max(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::certs::pki::{new_ca, new_serving, KeyedCert};
    use crate::certs::stored::Stored;

    const NOW: i64 = 1_750_000_000;
    const DAY: i64 = 86_400;
    const P: Policy = Policy {
        cert_validity: 90 * DAY,
        renew_before: 30 * DAY,
        ca_validity: 1800 * DAY,
        ca_renew_before: 600 * DAY,
        ca_overlap: 300,
    };

    fn read(pair: &KeyedCert, trusted: &[&Cert]) -> Read {
        Read::Found(Stored {
            pair: pair.clone(),
            trusted: trusted.iter().map(|c| (*c).clone()).collect(),
        })
    }

    fn names() -> Vec<String> {
        service_names("web", "ns")
    }

    #[test]
    fn service_names_are_the_four_a_client_in_the_cluster_may_dial() {
        assert_eq!(
            names(),
            ["web.ns.svc", "web", "web.ns", "web.ns.svc.cluster.local"]
        );
    }

    #[test]
    fn a_ca_is_due_when_missing_unreadable_not_a_ca_or_in_its_renewal_window() {
        let ca = new_ca(NOW, 1800 * DAY).unwrap();
        assert_eq!(ca_due(&Read::Missing, NOW, &P), Some(Due::Missing));
        assert!(matches!(
            ca_due(&Read::Unreadable("x".into()), NOW, &P),
            Some(Due::Unreadable(_))
        ));
        assert_eq!(ca_due(&read(&ca, &[]), NOW, &P), None);
        let window = ca.cert.not_after - P.ca_renew_before;
        assert_eq!(ca_due(&read(&ca, &[]), window - 1, &P), None);
        assert_eq!(
            ca_due(&read(&ca, &[]), window, &P),
            Some(Due::Expiring {
                not_after: ca.cert.not_after
            })
        );
        let leaf = new_serving(&ca, &names(), NOW, 90 * DAY).unwrap();
        assert_eq!(ca_due(&read(&leaf, &[]), NOW, &P), Some(Due::NotACa));
    }

    #[test]
    fn a_serving_certificate_is_due_when_expiring_misnamed_or_of_another_ca() {
        let ca = new_ca(NOW, 1800 * DAY).unwrap();
        let leaf = new_serving(&ca, &names(), NOW, 90 * DAY).unwrap();
        let due = |r: &Read, ca: &Cert, now| serving_due(r, ca, &names(), now, &P);
        assert_eq!(due(&read(&leaf, &[]), &ca.cert, NOW), None);
        assert_eq!(due(&Read::Missing, &ca.cert, NOW), Some(Due::Missing));
        assert!(matches!(
            due(&Read::Unreadable("x".into()), &ca.cert, NOW),
            Some(Due::Unreadable(_))
        ));
        let window = leaf.cert.not_after - P.renew_before;
        assert_eq!(due(&read(&leaf, &[]), &ca.cert, window - 1), None);
        assert!(matches!(
            due(&read(&leaf, &[]), &ca.cert, window),
            Some(Due::Expiring { .. })
        ));

        // The same names in another order are the same names; one missing is not.
        let mut shuffled = names();
        shuffled.reverse();
        let reordered = new_serving(&ca, &shuffled, NOW, 90 * DAY).unwrap();
        assert_eq!(due(&read(&reordered, &[]), &ca.cert, NOW), None);
        let short = new_serving(&ca, &names()[..3], NOW, 90 * DAY).unwrap();
        assert!(matches!(
            due(&read(&short, &[]), &ca.cert, NOW),
            Some(Due::Names { .. })
        ));

        let other = new_ca(NOW, 1800 * DAY).unwrap();
        assert_eq!(due(&read(&leaf, &[]), &other.cert, NOW), Some(Due::OtherCa));
    }

    #[test]
    fn earlier_cas_are_the_old_ca_and_its_bundle_unexpired_without_the_current_one() {
        let old = new_ca(NOW - 1000 * DAY, 1800 * DAY).unwrap();
        let older = new_ca(NOW - 2000 * DAY, 2500 * DAY).unwrap();
        let expired = new_ca(NOW - 2000 * DAY, 1000 * DAY).unwrap();
        let new = new_ca(NOW, 1800 * DAY).unwrap();
        let before = read(&old, &[&old.cert, &older.cert, &expired.cert, &new.cert]);
        assert_eq!(
            earlier_cas(&before, &new.cert, NOW),
            vec![old.cert.clone(), older.cert.clone()]
        );
        // Nothing changed: the current CA is not an earlier one.
        assert_eq!(
            earlier_cas(&read(&new, &[&new.cert]), &new.cert, NOW),
            vec![]
        );
        assert_eq!(earlier_cas(&Read::Missing, &new.cert, NOW), vec![]);
    }

    #[test]
    fn during_a_ca_rotation_the_bundle_trusts_both_until_the_overlap_has_passed() {
        let old = new_ca(NOW - 1500 * DAY, 1800 * DAY).unwrap();
        let new = new_ca(NOW, 1800 * DAY).unwrap();
        let served = new_serving(&old, &names(), NOW - 10 * DAY, 90 * DAY).unwrap();
        let issued = new_serving(&new, &names(), NOW, 90 * DAY).unwrap();
        let earlier = [old.cert.clone()];

        // The pass that rotates: the pods serve a certificate of the old CA.
        let b = bundle(
            &new.cert,
            &earlier,
            &[&served.cert],
            &[&issued.cert],
            NOW,
            &P,
        );
        assert_eq!(b, vec![new.cert.clone(), old.cert.clone()]);
        // Next look: when the overlap ends.
        assert_eq!(next_due(&b, &[&issued.cert], &P), NOW + P.ca_overlap);

        // Within the overlap, the Secret already holds the new certificate: both still trusted.
        let later = NOW + P.ca_overlap - 1;
        let b = bundle(
            &new.cert,
            &earlier,
            &[&issued.cert],
            &[&issued.cert],
            later,
            &P,
        );
        assert_eq!(b.len(), 2);
        // Once it has passed, the old CA goes.
        let after = NOW + P.ca_overlap;
        let b = bundle(
            &new.cert,
            &earlier,
            &[&issued.cert],
            &[&issued.cert],
            after,
            &P,
        );
        assert_eq!(b, vec![new.cert.clone()]);
        assert_eq!(
            next_due(&b, &[&issued.cert], &P),
            issued.cert.not_after - P.renew_before
        );
    }

    #[test]
    fn an_earlier_ca_stays_while_a_certificate_it_signed_is_served_and_goes_when_it_expires() {
        let old = new_ca(NOW - 1500 * DAY, 1800 * DAY).unwrap();
        let new = new_ca(NOW - DAY, 1800 * DAY).unwrap();
        // A serving certificate could not be replaced (its write failed): the old CA stays.
        let stuck = new_serving(&old, &names(), NOW - 40 * DAY, 90 * DAY).unwrap();
        let renewed = new_serving(&new, &names(), NOW - DAY, 90 * DAY).unwrap();
        let earlier = [old.cert.clone()];
        let b = bundle(
            &new.cert,
            &earlier,
            &[&stuck.cert],
            &[&renewed.cert],
            NOW,
            &P,
        );
        assert_eq!(b.len(), 2);
        let b = bundle(
            &new.cert,
            &earlier,
            &[&stuck.cert],
            &[&renewed.cert],
            old.cert.not_after,
            &P,
        );
        assert_eq!(b, vec![new.cert.clone()], "expired: dropped");
    }

    #[test]
    fn the_wait_is_at_least_a_second_and_at_most_the_check_interval() {
        let hour = Duration::from_secs(3600);
        assert_eq!(wait(NOW + 60, NOW, hour), Duration::from_secs(60));
        assert_eq!(wait(NOW - 60, NOW, hour), Duration::from_secs(1));
        assert_eq!(wait(i64::MAX, NOW, hour), hour);
        assert_eq!(wait(NOW + 10, NOW, Duration::ZERO), Duration::from_secs(1));
    }
}
