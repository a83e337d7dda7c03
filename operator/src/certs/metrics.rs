//! The bootstrap's figures (prefix `inflight_operator_`): certificates made per Secret, errors by
//! kind, and the seconds each Secret's certificate has left.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

type BySecret = Vec<(&'static str, String)>;
type ByKind = Vec<(&'static str, &'static str)>;

/// What went wrong, as the `kind` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Secret that is not a usable certificate and key (made again).
    Unreadable,
    /// A MutatingWebhookConfiguration or an APIService to patch that does not exist.
    Missing,
    /// A read or a write the API server refused or did not answer.
    Api,
    /// A certificate that could not be made.
    Issue,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::Missing => "missing",
            Self::Api => "api",
            Self::Issue => "issue",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    issued: Family<BySecret, Counter>,
    errors: Family<ByKind, Counter>,
    expiry: Family<BySecret, Gauge>,
}

impl Metrics {
    pub fn new(prometheus: &mut Registry) -> Self {
        let m = Self::default();
        let p = prometheus.sub_registry_with_prefix("operator");
        p.register(
            "certificates_issued",
            "Certificates made by the TLS bootstrap, by Secret",
            m.issued.clone(),
        );
        p.register(
            "certificate_errors",
            "TLS bootstrap failures, by kind: unreadable (a Secret made again), missing (a webhook configuration or APIService to patch), api, issue",
            m.errors.clone(),
        );
        p.register_with_unit(
            "certificate_expiry",
            "Time left before the certificate in each Secret expires",
            Unit::Seconds,
            m.expiry.clone(),
        );
        m
    }

    pub fn issued(&self, secret: &str) {
        self.issued
            .get_or_create(&vec![("secret", secret.to_owned())])
            .inc();
    }

    pub fn error(&self, kind: Kind) {
        self.errors
            .get_or_create(&vec![("kind", kind.label())])
            .inc();
    }

    pub fn expires_in(&self, secret: &str, seconds: i64) {
        self.expiry
            .get_or_create(&vec![("secret", secret.to_owned())])
            .set(seconds);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_names_are_the_operators() {
        let mut registry = Registry::with_prefix("inflight");
        let m = Metrics::new(&mut registry);
        m.issued("inflight-ca");
        m.error(Kind::Missing);
        m.expires_in("inflight-ca", 42);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "inflight_operator_certificates_issued_total{secret=\"inflight-ca\"} 1",
            "inflight_operator_certificate_errors_total{kind=\"missing\"} 1",
            "inflight_operator_certificate_expiry_seconds{secret=\"inflight-ca\"} 42",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
